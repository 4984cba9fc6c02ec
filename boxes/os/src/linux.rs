//! The Linux side of the platform layer: every system call hakmem makes goes through this
//! file. A port to another OS writes this file again, with the same items.
use crate::{Event, GlobalStats, Os, Relocation, PAGE};
use core::ffi::CStr;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

/// The real OS: anonymous private mappings through libc.
#[derive(Clone, Copy, Debug, Default)]
pub struct LibcOs;

/// The lowest aligned mapping made so far: the next one is asked for just below it. The kernel
/// places mappings top-down, so that address is usually free, and the mapping comes back aligned
/// at the first system call instead of the three an over-map and trim takes.
static HINT: AtomicUsize = AtomicUsize::new(0);

impl LibcOs {
    /// Maps `len` bytes, at `hint` if that range is free (a hint, never MAP_FIXED). The mapping
    /// is committed (no `MAP_NORESERVE`): under the kernel's overcommit policy, a length it
    /// would refuse is refused here, not met by the OOM killer on first touch.
    fn mmap_at(hint: usize, len: usize, stats: &GlobalStats) -> Option<usize> {
        // SAFETY: an anonymous private mapping, without MAP_FIXED, never replaces existing
        // memory: at `hint` only if that range is free, else where the kernel chooses.
        let p = unsafe {
            libc::mmap(
                hint as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            stats.event(Event::OsRefused, len);
            return None;
        }
        stats.event(Event::Mmap, len);
        Some(p as usize)
    }

    /// Maps `len` bytes of metadata (such as a registry leaf): address space that only the
    /// pages touched under live regions ever use, so `MAP_NORESERVE` (never refused by the
    /// overcommit policy, and not counted against it). Page-aligned. Counted by the caller.
    pub fn map_reserved(&self, len: usize) -> Option<NonNull<u8>> {
        // SAFETY: as in `mmap_at`: a fresh anonymous private mapping replaces nothing.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        NonNull::new(p.cast())
    }

    /// Reserves address space for `[start, start + len)` with `start + offset` aligned to
    /// `align`: an inaccessible range (`PROT_NONE`: no memory, and nothing committed, since only
    /// writable private mappings are), over-mapped by the alignment and trimmed. `None`, at once,
    /// when the address space cannot hold it.
    fn reserve_shifted(len: usize, align: usize, offset: usize, page: usize) -> Option<usize> {
        let over = len.checked_add(align)?;
        // SAFETY: a fresh anonymous mapping without MAP_FIXED replaces nothing.
        let q = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                over,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if q == libc::MAP_FAILED {
            return None;
        }
        let q = q as usize;
        // The first `start >= q` with `start + offset` aligned (`offset` taken modulo `align`):
        // `start - q < align`, so the range lies inside the reservation; page-aligned, as `q`,
        // `align` and `offset` are.
        let shift = offset & (align - 1);
        let Some(start) = (q + shift).checked_next_multiple_of(align) else {
            Self::trim(q, over);
            return None;
        };
        let start = start - shift;
        debug_assert!(start.is_multiple_of(page) && start >= q);
        Self::trim(q, start - q);
        Self::trim(start + len, q + over - (start + len));
        Some(start)
    }

    /// Unmaps part of a reservation (or a refused one): never counted, it held no memory.
    fn trim(addr: usize, len: usize) {
        if len == 0 {
            return;
        }
        // SAFETY: whole pages of a reservation this layer made and no one uses.
        let rc = unsafe { libc::munmap(addr as *mut libc::c_void, len) };
        debug_assert_eq!(rc, 0, "munmap of our own reservation cannot fail");
    }

    /// Makes the reservation `[start, start + len)` readable and writable: the kernel commits
    /// it then, under its overcommit policy. On a refusal the reservation (unchanged: a refused
    /// `mprotect` changes nothing) is given back.
    fn commit(start: usize, len: usize, stats: &GlobalStats) -> Option<usize> {
        // SAFETY: `[start, start + len)` is our own reservation, used by nothing; it reads as
        // zero once accessible (fresh anonymous memory).
        let rc = unsafe {
            libc::mprotect(
                start as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        if rc != 0 {
            Self::trim(start, len);
            stats.event(Event::OsRefused, len);
            return None;
        }
        stats.event(Event::Mmap, len);
        Some(start)
    }

    fn munmap(addr: usize, len: usize, stats: &GlobalStats) {
        if len == 0 {
            return;
        }
        // SAFETY: callers pass whole pages of a mapping this layer made and no longer uses.
        let rc = unsafe { libc::munmap(addr as *mut libc::c_void, len) };
        debug_assert_eq!(rc, 0, "munmap of our own mapping cannot fail");
        stats.event(Event::Munmap, len);
    }
}

// SAFETY: `map` and `map_offset` return fresh anonymous private mappings (zeroed, exclusive),
// placed at the alignment (a trimmed reservation made accessible when the first guess
// misses); `purge` is MADV_DONTNEED on private anonymous memory (reads zero after); `remap`
// is mremap, which keeps the contents; nothing is unmapped except through `unmap`.
unsafe impl Os for LibcOs {
    /// The system's page size ([`page_size`]).
    fn page_size(&self) -> usize {
        page_size()
    }

    fn map(&self, len: usize, align: usize, stats: &GlobalStats) -> Option<NonNull<u8>> {
        let page = self.page_size();
        debug_assert!(len.is_multiple_of(page) && align.is_power_of_two() && align >= page);
        if align <= page {
            return NonNull::new(Self::mmap_at(0, len, stats)? as *mut u8);
        }
        // First ask for the aligned range just below the lowest one we made (see HINT).
        let low = HINT.load(Ordering::Relaxed);
        let want = low.checked_sub(len).map_or(0, |a| a & !(align - 1));
        let p = Self::mmap_at(want, len, stats)?;
        if p & (align - 1) != 0 {
            // Missed: commit the length over an aligned reservation.
            Self::munmap(p, len, stats);
            let start = self.map_offset(len, align, 0, stats)?.as_ptr() as usize;
            HINT.store(start, Ordering::Relaxed);
            return NonNull::new(start as *mut u8);
        }
        if low == 0 || p < low {
            HINT.store(p, Ordering::Relaxed);
        }
        NonNull::new(p as *mut u8)
    }

    fn map_offset(
        &self,
        len: usize,
        align: usize,
        offset: usize,
        stats: &GlobalStats,
    ) -> Option<NonNull<u8>> {
        let page = self.page_size();
        debug_assert!(len.is_multiple_of(page) && align.is_power_of_two() && align >= page);
        debug_assert!(offset.is_multiple_of(page));
        let Some(start) = Self::reserve_shifted(len, align, offset, page) else {
            stats.event(Event::OsRefused, len);
            return None;
        };
        NonNull::new(Self::commit(start, len, stats)? as *mut u8)
    }

    unsafe fn unmap(&self, ptr: NonNull<u8>, len: usize, stats: &GlobalStats) {
        Self::munmap(ptr.as_ptr() as usize, len, stats);
    }

    unsafe fn remap(
        &self,
        ptr: NonNull<u8>,
        len: usize,
        new_len: usize,
        align: usize,
        stats: &GlobalStats,
    ) -> Option<NonNull<u8>> {
        let old = ptr.as_ptr().cast::<libc::c_void>();
        // In place, if the range after the mapping is free.
        // SAFETY: the caller owns the whole mapping; without MREMAP_MAYMOVE the kernel either
        // extends it where it is or fails and leaves it unchanged.
        let p = unsafe { libc::mremap(old, len, new_len, 0) };
        if p == old {
            stats.event(Event::Mremap, new_len - len);
            return Some(ptr);
        }
        // Else reserve an aligned range (address space only), and move the pages onto it: the
        // grown mapping is committed by mremap, which the overcommit policy may refuse.
        let target = Self::reserve_shifted(new_len, align, 0, self.page_size())?;
        // SAFETY: `target` is our fresh reservation of `new_len` bytes; MREMAP_FIXED replaces it
        // with the old pages (and removes the old mapping) or fails and changes nothing.
        let p = unsafe {
            libc::mremap(
                old,
                len,
                new_len,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                target as *mut libc::c_void,
            )
        };
        if p as usize == target {
            stats.event(Event::Mremap, new_len - len);
            return NonNull::new(target as *mut u8);
        }
        // Refused (the overcommit policy, or an old range that spans mappings the kernel kept
        // apart). The reservation is not unmapped here: Linux unmaps an MREMAP_FIXED destination
        // before every check that can fail after the arguments' own (the charge, the old range's
        // checks), so it is gone already, and another thread may have been given that range
        // since. (Only the map-count pre-check, near vm.max_map_count, fails before: then the
        // inaccessible reservation stays, address space without memory.)
        stats.event(Event::OsRefused, new_len);
        None
    }

    unsafe fn relocate(
        &self,
        from: NonNull<u8>,
        to: NonNull<u8>,
        len: usize,
        stats: &GlobalStats,
    ) -> Relocation {
        let (old, new) = (from.as_ptr().cast::<libc::c_void>(), to.as_ptr().cast());
        // SAFETY: both ranges are the caller's, page-aligned and apart; MREMAP_FIXED moves the
        // page tables of `from` (huge pages whole, when both ends are 2 MiB-aligned) onto `to`,
        // replacing what was there, or fails with `from` unchanged.
        let p = unsafe {
            libc::mremap(
                old,
                len,
                len,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                new,
            )
        };
        if p == new {
            stats.event(Event::Mremap, 0);
            stats.event(Event::Munmap, len);
            return Relocation::Moved;
        }
        // Refused. Linux may have unmapped the target already (see `remap`): map it again, but
        // only where nothing else was mapped since (MAP_FIXED_NOREPLACE; a kernel without it
        // takes the address as a hint, and a mapping elsewhere is given back).
        // SAFETY: a fresh anonymous private mapping that replaces nothing.
        let q = unsafe {
            libc::mmap(
                new,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        stats.event(Event::OsRefused, len);
        if q == new {
            return Relocation::Refused;
        }
        if q != libc::MAP_FAILED {
            Self::trim(q as usize, len);
            return Relocation::LostTarget;
        }
        // EEXIST: something is mapped there: the target still (the kernel refused before
        // unmapping it), or another thread's mapping made since. Nothing tells the two apart,
        // so the range counts as lost: the caller leaves it alone (at worst, address space of
        // ours that nothing touches stays mapped).
        Relocation::LostTarget
    }

    unsafe fn advise_huge(&self, ptr: NonNull<u8>, len: usize) {
        // SAFETY: the caller's own mapping; MADV_HUGEPAGE changes how later faults are served,
        // never the contents. A refusal (THP off or unsupported) leaves it as it was.
        unsafe { libc::madvise(ptr.as_ptr().cast(), len, libc::MADV_HUGEPAGE) };
    }

    unsafe fn resident(&self, ptr: NonNull<u8>, len: usize) -> Option<usize> {
        const CHUNK: usize = 512;
        let page = page_size();
        let mut v = [0u8; CHUNK];
        let (mut at, mut pages) = (0, 0);
        while at < len {
            let n = (len - at).div_ceil(page).min(CHUNK);
            // SAFETY: the caller's own mapping, page-aligned; `v` holds `n` bytes; mincore
            // only reads the page tables.
            let rc = unsafe {
                libc::mincore(
                    ptr.as_ptr().add(at).cast(),
                    (n * page).min(len - at),
                    v.as_mut_ptr(),
                )
            };
            if rc != 0 {
                return None;
            }
            pages += v[..n].iter().filter(|&&b| b & 1 != 0).count();
            at += n * page;
        }
        Some(pages * page)
    }

    unsafe fn advise_no_huge(&self, ptr: NonNull<u8>, len: usize) {
        // SAFETY: as for `advise_huge`: MADV_NOHUGEPAGE changes how later faults are served.
        unsafe { libc::madvise(ptr.as_ptr().cast(), len, libc::MADV_NOHUGEPAGE) };
    }

    unsafe fn purge(&self, ptr: NonNull<u8>, len: usize, stats: &GlobalStats) -> bool {
        // SAFETY: the caller guarantees the range is ours and its contents are dead. On private
        // anonymous memory MADV_DONTNEED frees the pages at once and later reads see zeros.
        let rc = unsafe { libc::madvise(ptr.as_ptr().cast(), len, libc::MADV_DONTNEED) };
        stats.event(Event::Madvise, len);
        rc == 0
    }
}

/// The system's page size: `sysconf(_SC_PAGESIZE)`, read once (it does not allocate), then the
/// same value forever (OS3); [`PAGE`] if the system answers something that is not a power of
/// two of at least [`PAGE`].
pub fn page_size() -> usize {
    static SIZE: AtomicUsize = AtomicUsize::new(0);
    let cached = SIZE.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    // SAFETY: sysconf only reads a value the kernel gave the process at start.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let page = usize::try_from(page)
        .ok()
        .filter(|p| p.is_power_of_two() && *p >= PAGE)
        .unwrap_or(PAGE);
    // Every thread computes the same value, so a race stores it twice, equal.
    SIZE.store(page, Ordering::Relaxed);
    page
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer to a timespec; both clocks read here exist on every Linux
    // hakmem runs on (2.6.32 and later), so the call cannot fail and leaves `ts` set.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// The monotonic clock (`CLOCK_MONOTONIC`) in nanoseconds: a vDSO read, no system call, no
/// allocation. Never runs backwards (OS4).
#[inline]
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// The same clock as [`monotonic_ns`], read cheaply (`CLOCK_MONOTONIC_COARSE`: the time of the
/// last scheduler tick, a few milliseconds behind at most). Never runs backwards.
#[inline]
pub fn monotonic_coarse_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC_COARSE)
}

/// A random 64-bit secret for a per-process key: from `getrandom` (non-blocking), else from the
/// kernel's `AT_RANDOM` bytes (word `salt % 2` of the two) mixed with the clock and the address
/// of a static (which address-space randomisation moves), and with `salt`. Callers draw once and
/// mix further; different `salt`s give different words on the fallback path.
pub fn secret(salt: u64) -> u64 {
    let mut r: u64 = 0;
    // SAFETY: getrandom writes at most 8 bytes into `r`.
    let got = unsafe {
        libc::getrandom(
            (&mut r as *mut u64).cast(),
            core::mem::size_of::<u64>(),
            libc::GRND_NONBLOCK,
        )
    };
    if got == core::mem::size_of::<u64>() as isize {
        return r;
    }
    static ANCHOR: u8 = 0;
    // SAFETY: getauxval reads the auxiliary vector the kernel gave the process.
    let a = unsafe { libc::getauxval(libc::AT_RANDOM) } as *const u64;
    let word = if a.is_null() {
        0
    } else {
        // SAFETY: AT_RANDOM, when present, points at 16 random bytes the kernel put on the
        // initial stack, which stay for the life of the process: words 0 and 1 are in it.
        unsafe { a.add((salt & 1) as usize).read_unaligned() }
    };
    word ^ monotonic_ns().rotate_left(17 + 12 * (salt & 1) as u32)
        ^ (&ANCHOR as *const u8 as u64)
        ^ salt.rotate_left(41)
}

/// The environment variable `name`, as bytes (without its NUL), or `None` when it is not set.
/// Calls `getenv`, which does not allocate, and copies nothing.
///
/// The bytes live in the environment: glibc's `setenv` never frees a value it made (so a
/// later change leaves them readable), and a value the program gave `putenv` is the program's
/// to keep alive, as for every reader of the environment. Read them at once and copy what is
/// kept.
pub fn getenv(name: &CStr) -> Option<&'static [u8]> {
    // SAFETY: `name` is NUL-terminated; getenv returns null or a NUL-terminated string in the
    // environment (see above for how long it stays).
    let v = unsafe { libc::getenv(name.as_ptr()) };
    if v.is_null() {
        return None;
    }
    // SAFETY: `v` is a non-null NUL-terminated string (above).
    Some(unsafe { CStr::from_ptr(v) }.to_bytes())
}

/// This process's id.
pub fn pid() -> u32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() as u32 }
}

/// The calling thread's id (`gettid`): unique among the process's live threads; the kernel may
/// give it to a new thread once this one has ended.
pub fn thread_id() -> u32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

/// The CPU time the calling thread has used, user and system, in nanoseconds
/// (`CLOCK_THREAD_CPUTIME_ID`): unlike [`monotonic_ns`], it does not run while the thread waits
/// for a core. Never runs backwards for one thread; 0 when the clock cannot be read.
pub fn thread_cpu_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid, writable timespec; the clock id is a constant the kernel knows.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) } != 0 {
        return 0;
    }
    (t.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(t.tv_nsec as u64)
}

/// True when thread `tid` of process `pid` has ended: the kernel answers "no such thread"
/// (`tgkill` with signal 0, which sends nothing). False for any other answer, and for a `pid`
/// that is not this process's (OS5).
pub fn thread_gone(pid: u32, tid: u32) -> bool {
    if pid != self::pid() {
        return false;
    }
    // SAFETY: signal 0 only checks that the thread exists; nothing is sent.
    let r = unsafe { libc::syscall(libc::SYS_tgkill, pid as libc::pid_t, tid as libc::pid_t, 0) };
    // SAFETY: errno is this thread's own variable.
    r == -1 && unsafe { *libc::__errno_location() } == libc::ESRCH
}

/// Lets another thread run (`sched_yield`): a waiter whose holder may be preempted.
#[inline]
pub fn yield_now() {
    // SAFETY: sched_yield has no preconditions and does not allocate.
    unsafe { libc::sched_yield() };
}

/// Writes all of `bytes` to the file descriptor `fd` (`write`, retried after a short write or
/// an interruption), without allocating. False when the descriptor refuses (closed, full,
/// not open for writing): then part of `bytes` may have been written.
pub fn write_fd(fd: i32, bytes: &[u8]) -> bool {
    let mut at = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        // SAFETY: `rest` is initialised memory of `rest.len()` bytes, only read.
        let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
        if n < 0 {
            // SAFETY: errno is this thread's own variable.
            if unsafe { *libc::__errno_location() } == libc::EINTR {
                continue;
            }
            return false;
        }
        if n == 0 {
            return false;
        }
        at += n as usize;
    }
    true
}

/// Writes all of `bytes` to standard error ([`write_fd`] on descriptor 2).
pub fn write_stderr(bytes: &[u8]) -> bool {
    write_fd(2, bytes)
}

/// Ends the process at once with `SIGABRT` (`abort`), without unwinding, running exit hooks or
/// allocating: for an error after which the process must not go on (a corrupted heap).
pub fn abort() -> ! {
    // SAFETY: abort has no preconditions and never returns.
    unsafe { libc::abort() }
}

/// The process's resident set now, in bytes, from `/proc/self/statm` (read into a stack
/// buffer); 0 when it cannot be read.
pub fn resident_bytes() -> u64 {
    let mut buf = [0u8; 128];
    // SAFETY: a NUL-terminated path; open has no memory effects.
    let fd = unsafe {
        libc::open(
            c"/proc/self/statm".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return 0;
    }
    // SAFETY: reads at most `buf.len()` bytes into our buffer.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    // SAFETY: our descriptor, closed once.
    unsafe { libc::close(fd) };
    let Ok(n) = usize::try_from(n) else { return 0 };
    // "size resident shared ...", in pages.
    let pages = buf[..n]
        .split(|&b| b == b' ')
        .nth(1)
        .and_then(|f| core::str::from_utf8(f).ok())
        .and_then(|f| f.parse::<u64>().ok())
        .unwrap_or(0);
    pages.saturating_mul(page_size() as u64)
}

/// The process's peak resident set in bytes, as the kernel counts it (`getrusage`'s
/// `ru_maxrss`); 0 when it cannot be read. It may lag [`resident_bytes`] slightly.
pub fn peak_resident_bytes() -> u64 {
    // SAFETY: rusage is plain integers, for which all zeroes is a valid value.
    let mut ru: libc::rusage = unsafe { core::mem::zeroed() };
    // SAFETY: a valid pointer to an rusage, which getrusage fills.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0;
    }
    u64::try_from(ru.ru_maxrss)
        .unwrap_or(0)
        .saturating_mul(1024)
}
