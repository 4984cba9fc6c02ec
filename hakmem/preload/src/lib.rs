//! # libhakmem.so: hakmem as the malloc of any program
//!
//! `LD_PRELOAD=/path/to/libhakmem.so program` puts these C symbols ahead of glibc's, so the
//! program, its libraries, the dynamic loader and glibc itself all allocate from hakmem.
//!
//! This crate is only the C face: each export applies glibc's rules for its arguments and for
//! `errno`, and hands the work to [`hakmem::raw`]. The allocator initialises itself from static
//! state on the first call (which can come from the dynamic loader, before any constructor), and
//! registers its own thread-exit and fork handlers.
//!
//! ## Contract (glibc's)
//! - Every failure returns NULL and sets `errno` to `ENOMEM`; nothing aborts on out-of-memory.
//! - `malloc(0)` returns a unique pointer; `free(NULL)` does nothing.
//! - `realloc(NULL, n)` is `malloc(n)`; `realloc(p, 0)` frees `p` and returns NULL (errno
//!   untouched); a failed `realloc` leaves `p` as it was.
//! - `calloc` and `reallocarray` fail with `ENOMEM` when `n * size` overflows.
//! - `posix_memalign` returns `EINVAL` unless the alignment is a power of two and a multiple of
//!   `sizeof(void *)`, returns `ENOMEM` on failure, and never changes `errno` or, on failure,
//!   `*memptr`.
//! - `aligned_alloc` takes any power-of-two alignment, and fails with `EINVAL` otherwise (as
//!   glibc 2.38 and later do). `memalign` rounds an alignment that is not a power of two up to
//!   the next one, as glibc does. `valloc` and `pvalloc` align to the page; `pvalloc` also
//!   rounds the size up to a whole page.
//! - `malloc_usable_size(NULL)` is 0, and otherwise at least the size asked for.
//! - `malloc_trim(pad)` gives every cached empty region back now and returns 1 if there was
//!   any, 0 otherwise (`pad` is ignored: there is no heap top to keep).
//! - The `__libc_*` names glibc also exports for these functions are exported too, so a caller
//!   that uses them directly gets the same allocator as everyone else.
//! - On x86_64, C++'s `operator new` and `operator delete` are hakmem's too (module `cxx`),
//!   with C++'s out-of-memory rules: the new handler, then `std::bad_alloc`.
//!
//! With `HAKMEM_STATS=1` the allocator's report is written to stderr (or `HAKMEM_STATS_FILE`)
//! when the process exits, once (see [`on_exit`]).
#![deny(unsafe_op_in_unsafe_fn)]

use core::ffi::{c_int, c_void};
use core::ptr;
use hakmem::raw;

#[cfg(target_arch = "x86_64")]
mod cxx;

/// Sets the calling thread's `errno`.
#[inline]
fn set_errno(e: c_int) {
    // SAFETY: `__errno_location` returns the calling thread's errno slot, valid for the whole
    // life of the thread, and never fails.
    unsafe { *libc::__errno_location() = e };
}

/// The calling thread's `errno`.
#[inline]
fn errno() -> c_int {
    // SAFETY: as in `set_errno`.
    unsafe { *libc::__errno_location() }
}

/// Passes a block through, setting `errno` to `ENOMEM` if it is NULL.
#[inline(always)]
fn or_enomem(p: *mut u8) -> *mut c_void {
    if p.is_null() {
        set_errno(libc::ENOMEM);
    }
    p.cast()
}

/// Fails with `errno` set to `e`.
#[cold]
fn fail(e: c_int) -> *mut c_void {
    set_errno(e);
    ptr::null_mut()
}

/// The page size ([`hakmem_os::page_size`]: read once, without allocating).
fn page_size() -> usize {
    hakmem_os::page_size()
}

/// The alignment every block has anyway; `memalign` below it is plain `malloc`.
const MIN_ALIGN: usize = 16;

/// Allocates `size` bytes; NULL with `ENOMEM` on failure; `malloc(0)` is a unique pointer.
///
/// # Safety
/// Callable from any thread at any time, as C's `malloc`.
#[no_mangle]
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    let p = raw::malloc_fast(size);
    if !p.is_null() {
        return p.cast();
    }
    // SAFETY: as above.
    unsafe { malloc_full(size) }
}

/// `malloc` past its fast path: out of line, so the fast path keeps no frame.
///
/// # Safety
/// None beyond `malloc`'s: any size (an `unsafe fn` as the C entry points it serves are).
#[cold]
#[inline(never)]
unsafe fn malloc_full(size: usize) -> *mut c_void {
    or_enomem(raw::malloc_after_fast(size))
}

/// Frees a block from any of these functions; `free(NULL)` does nothing. A pointer that is not
/// the start of a live block is reported on stderr and aborts the process (see the facade's
/// `HAKMEM_INVALID_FREE` and `HAKMEM_CHECK`).
///
/// # Safety
/// `p` is NULL or a block from this allocator that was not freed yet, as for C's `free`.
#[no_mangle]
pub unsafe extern "C" fn free(p: *mut c_void) {
    // SAFETY: the caller's contract is the facade's: NULL, or a live block of ours (the facade
    // checks and reports anything else).
    unsafe { raw::free(p.cast()) }
}

/// Allocates `n * size` zeroed bytes; NULL with `ENOMEM` on overflow or failure.
///
/// # Safety
/// As C's `calloc`.
#[no_mangle]
pub unsafe extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
    or_enomem(raw::calloc(n, size))
}

/// Resizes `p` to `size` bytes, keeping its contents up to the smaller size. `realloc(NULL, n)`
/// is `malloc(n)`; `realloc(p, 0)` frees `p` and returns NULL; on failure `p` is left as it was
/// and NULL comes back with `ENOMEM`.
///
/// # Safety
/// `p` is NULL or a live block from this allocator, as for C's `realloc`.
#[no_mangle]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: the caller passes NULL or a live block of ours; the facade implements the
    // NULL and zero-size rules.
    let q = unsafe { raw::realloc(p.cast(), size) };
    if q.is_null() && (size != 0 || p.is_null()) {
        set_errno(libc::ENOMEM);
    }
    q.cast()
}

/// `realloc(p, n * size)`, failing with `ENOMEM` (and `p` untouched) if the product overflows.
///
/// # Safety
/// As `realloc`.
#[no_mangle]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        // SAFETY: the caller's contract is realloc's.
        Some(total) => unsafe { realloc(p, total) },
        None => fail(libc::ENOMEM),
    }
}

/// Stores a block of `size` bytes aligned to `align` in `*memptr` and returns 0; returns
/// `EINVAL` if `align` is not a power of two multiple of `sizeof(void *)`, `ENOMEM` on failure.
/// Never changes `errno`, nor `*memptr` on failure.
///
/// # Safety
/// `memptr` is valid for a write of one pointer, as for C's `posix_memalign`.
#[no_mangle]
pub unsafe extern "C" fn posix_memalign(
    memptr: *mut *mut c_void,
    align: usize,
    size: usize,
) -> c_int {
    if !align.is_power_of_two() || !align.is_multiple_of(core::mem::size_of::<*mut c_void>()) {
        return libc::EINVAL;
    }
    // The facade leaves errno alone, but the system calls under it may not.
    let saved = errno();
    let p = raw::aligned_alloc(align, size);
    set_errno(saved);
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: the caller gives a pointer valid for this write.
    unsafe { memptr.write(p.cast()) };
    0
}

/// A block of `size` bytes aligned to `align`, which must be a power of two (else NULL with
/// `EINVAL`); NULL with `ENOMEM` on failure.
///
/// # Safety
/// As C's `aligned_alloc`.
#[no_mangle]
pub unsafe extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        return fail(libc::EINVAL);
    }
    or_enomem(raw::aligned_alloc(align, size))
}

/// glibc's `memalign`: an alignment up to 16 is `malloc`; one that is not a power of two is
/// rounded up to the next; one above `SIZE_MAX / 2 + 1` fails with `EINVAL`.
///
/// # Safety
/// As C's `memalign`.
#[no_mangle]
pub unsafe extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    if align <= MIN_ALIGN {
        // SAFETY: as for malloc.
        return unsafe { malloc(size) };
    }
    match align.checked_next_power_of_two() {
        Some(a) => or_enomem(raw::aligned_alloc(a, size)),
        None => fail(libc::EINVAL),
    }
}

/// A page-aligned block of `size` bytes.
///
/// # Safety
/// As C's `valloc`.
#[no_mangle]
pub unsafe extern "C" fn valloc(size: usize) -> *mut c_void {
    or_enomem(raw::aligned_alloc(page_size(), size))
}

/// A page-aligned block of `size` rounded up to whole pages; `ENOMEM` if that overflows.
///
/// # Safety
/// As C's `pvalloc`.
#[no_mangle]
pub unsafe extern "C" fn pvalloc(size: usize) -> *mut c_void {
    let page = page_size();
    match size.checked_add(page - 1) {
        Some(s) => or_enomem(raw::aligned_alloc(page, s & !(page - 1))),
        None => fail(libc::ENOMEM),
    }
}

/// The number of bytes usable in block `p` (at least the size asked for); 0 for NULL.
///
/// # Safety
/// `p` is NULL or a live block from this allocator.
#[no_mangle]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
    // SAFETY: the caller passes NULL or a live block of ours.
    unsafe { raw::usable_size(p.cast()) }
}

/// Gives free memory back to the OS now, as glibc's `malloc_trim` does: every cached empty
/// region is unmapped ([`hakmem::collect`]). Returns 1 when memory was given back, 0 when there
/// was none to give. `pad` (the free space glibc leaves at the top of its heap) has no meaning
/// here: hakmem has no heap top, and keeps nothing back.
#[no_mangle]
pub extern "C" fn malloc_trim(pad: usize) -> c_int {
    let _ = pad;
    c_int::from(hakmem::collect() > 0)
}

/// glibc's other names for the same functions.
mod libc_names {
    use core::ffi::c_void;

    /// # Safety
    /// As `malloc`.
    #[no_mangle]
    pub unsafe extern "C" fn __libc_malloc(size: usize) -> *mut c_void {
        // SAFETY: same contract.
        unsafe { super::malloc(size) }
    }

    /// # Safety
    /// As `free`.
    #[no_mangle]
    pub unsafe extern "C" fn __libc_free(p: *mut c_void) {
        // SAFETY: same contract.
        unsafe { super::free(p) }
    }

    /// # Safety
    /// As `calloc`.
    #[no_mangle]
    pub unsafe extern "C" fn __libc_calloc(n: usize, size: usize) -> *mut c_void {
        // SAFETY: same contract.
        unsafe { super::calloc(n, size) }
    }

    /// # Safety
    /// As `realloc`.
    #[no_mangle]
    pub unsafe extern "C" fn __libc_realloc(p: *mut c_void, size: usize) -> *mut c_void {
        // SAFETY: same contract.
        unsafe { super::realloc(p, size) }
    }

    /// # Safety
    /// As `memalign`.
    #[no_mangle]
    pub unsafe extern "C" fn __libc_memalign(align: usize, size: usize) -> *mut c_void {
        // SAFETY: same contract.
        unsafe { super::memalign(align, size) }
    }

    /// # Safety
    /// As `valloc`.
    #[no_mangle]
    pub unsafe extern "C" fn __libc_valloc(size: usize) -> *mut c_void {
        // SAFETY: same contract.
        unsafe { super::valloc(size) }
    }

    /// # Safety
    /// As `pvalloc`.
    #[no_mangle]
    pub unsafe extern "C" fn __libc_pvalloc(size: usize) -> *mut c_void {
        // SAFETY: same contract.
        unsafe { super::pvalloc(size) }
    }
}

extern "C" {
    /// glibc's exit-handler registration (what `atexit` is built on).
    fn __cxa_atexit(
        f: unsafe extern "C" fn(*mut c_void),
        arg: *mut c_void,
        dso: *mut c_void,
    ) -> c_int;
}

/// The exit handler: with `HAKMEM_STATS=1`, the report on stderr (or in `HAKMEM_STATS_FILE`).
/// It formats on the stack and writes without allocating, so it works from whichever thread
/// calls `exit`, while other threads still allocate, and after every other exit handler and
/// destructor.
unsafe extern "C" fn on_exit(_: *mut c_void) {
    saved_stderr::restore_if_closed();
    hakmem::internal::report_stats_if_enabled();
}

/// The library constructor. A preloaded library's constructors run before the program's start
/// code registers the dynamic loader's finaliser, so a handler registered here runs after the
/// program's atexit handlers and after every library's destructors: the report counts the frees
/// those make. No DSO handle is given, so no `__cxa_finalize` runs it early; the library is
/// linked `-z nodelete`, so its code is still mapped when `exit` calls it.
extern "C" fn on_load() {
    // This handler, not the one hakmem registers at start-up, writes the report: it runs later.
    hakmem::internal::exit_report_by_caller();
    saved_stderr::save_if_stats_requested();
    // Registration fails only when the handler list cannot grow: the report is then lost, and
    // nothing else is, so the result is not checked.
    // SAFETY: `on_exit` is a valid handler for the whole life of the process (the library is
    // never unloaded); `__cxa_atexit` takes a NULL argument and a NULL DSO handle.
    unsafe { __cxa_atexit(on_exit, ptr::null_mut(), ptr::null_mut()) };
}

/// Runs `on_load` when the library is loaded.
#[used]
#[link_section = ".init_array"]
static ON_LOAD: extern "C" fn() = on_load;

/// Keeps the report's way out. Many programs close stderr in their own exit handlers (every
/// GNU coreutils program does, through `close_stdout`), which run before the report. So when
/// statistics are asked for, the constructor keeps a close-on-exec duplicate of the stderr the
/// process started with, on a high descriptor number, and the exit handler puts it back on fd 2
/// if, and only if, fd 2 is closed by then and the duplicate is still the same open file (a
/// program may have closed it and reused the number).
mod saved_stderr {
    use core::sync::atomic::{AtomicI32, AtomicU64, Ordering};

    /// The lowest descriptor number the duplicate may take, out of the way of programs that
    /// expect their first `open` to return 3.
    const HIGH_FD: libc::c_int = 512;

    static FD: AtomicI32 = AtomicI32::new(-1);
    static DEV: AtomicU64 = AtomicU64::new(0);
    static INO: AtomicU64 = AtomicU64::new(0);

    /// The identity (device, inode) of an open descriptor.
    fn identity(fd: libc::c_int) -> Option<(u64, u64)> {
        // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
        let mut st: libc::stat = unsafe { core::mem::zeroed() };
        // SAFETY: `st` is a valid, writable `stat`; fstat on a closed descriptor just fails.
        if unsafe { libc::fstat(fd, &mut st) } != 0 {
            return None;
        }
        Some((st.st_dev, st.st_ino))
    }

    /// Whether `HAKMEM_STATS` is set to something other than empty or "0".
    fn stats_requested() -> bool {
        let Some(v) = hakmem_os::getenv(c"HAKMEM_STATS") else {
            return false;
        };
        !v.is_empty() && v != b"0"
    }

    /// In the constructor: keep a duplicate of stderr if the report will be wanted.
    pub(super) fn save_if_stats_requested() {
        if !stats_requested() {
            return;
        }
        // SAFETY: duplicating a descriptor has no memory effects; failure returns -1.
        let fd = unsafe { libc::fcntl(2, libc::F_DUPFD_CLOEXEC, HIGH_FD) };
        if fd < 0 {
            return;
        }
        match identity(fd) {
            Some((dev, ino)) => {
                DEV.store(dev, Ordering::Relaxed);
                INO.store(ino, Ordering::Relaxed);
                FD.store(fd, Ordering::Release);
            }
            // SAFETY: `fd` is the duplicate made above, owned by nobody else.
            None => unsafe {
                libc::close(fd);
            },
        }
    }

    /// At exit: if fd 2 is closed, put the kept stderr back on it.
    pub(super) fn restore_if_closed() {
        let fd = FD.load(Ordering::Acquire);
        if fd < 0 {
            return;
        }
        // SAFETY: F_GETFD only queries the descriptor table.
        if unsafe { libc::fcntl(2, libc::F_GETFD) } != -1 {
            return; // fd 2 is open: the report goes wherever the program left stderr
        }
        let kept = (DEV.load(Ordering::Relaxed), INO.load(Ordering::Relaxed));
        if identity(fd) != Some(kept) {
            return; // the program closed the duplicate and the number now names another file
        }
        // SAFETY: both descriptors are checked above; dup2 onto the free number 2 has no
        // memory effects.
        unsafe { libc::dup2(fd, 2) };
    }
}
