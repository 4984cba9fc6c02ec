//! Memory helpers shared by the workloads. Blocks are `Box<[MaybeUninit<u8>]>`: allocated
//! through the global allocator without zeroing, freed on drop, `Send`, and written to
//! without any `unsafe`.
use std::hint::black_box;
use std::mem::MaybeUninit;

/// One heap block, as a program would hold it.
pub type Block = Box<[MaybeUninit<u8>]>;

/// Allocate `size` bytes (one `alloc` of a `[u8; size]` layout). `black_box` keeps the
/// compiler from eliding the allocation.
#[inline(always)]
pub fn block(size: usize) -> Block {
    black_box(Box::new_uninit_slice(size))
}

/// Write the first and the last byte, the least a program does with a fresh block.
#[inline(always)]
pub fn touch_ends(b: &mut Block, v: u8) {
    let n = b.len();
    b[0].write(v);
    b[n - 1].write(v);
}

/// Write one byte per cache line over the first 4 KiB, then one per page, then the last
/// byte: small objects are used whole, large ones get their pages faulted in.
#[inline]
pub fn touch(b: &mut Block, v: u8) {
    touch_slice(b, v);
}

/// [`touch`] on any byte slice (also used on a `Vec`'s spare capacity).
#[inline]
pub fn touch_slice(b: &mut [MaybeUninit<u8>], v: u8) {
    let n = b.len();
    if n == 0 {
        return;
    }
    let mut i = 0;
    while i < n.min(4096) {
        b[i].write(v);
        i += 64;
    }
    while i < n {
        b[i].write(v);
        i += 4096;
    }
    b[n - 1].write(v);
}

fn status_kib(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// This process's peak resident set (VmHWM), in KiB.
pub fn peak_rss_kib() -> Option<u64> {
    status_kib("VmHWM:")
}

/// This process's current resident set, in KiB, from /proc/self/statm.
pub fn current_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size() / 1024)
}

fn page_size() -> u64 {
    // SAFETY: sysconf only reads a constant of the running system; no memory is passed.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(v).unwrap_or(4096)
}

/// A heap block that can be reallocated (what C code does with `realloc`): allocated,
/// resized and freed through the global allocator's `alloc`, `realloc` and `dealloc`.
pub struct RawBlock {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: a RawBlock owns its block exclusively, as a Box does; the global allocator may be
// called from any thread, so the block may be freed on another thread.
unsafe impl Send for RawBlock {}

impl RawBlock {
    const ALIGN: usize = 8;

    fn layout(len: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(len, Self::ALIGN)
            .expect("a block size below isize::MAX")
    }

    /// Allocate `len` (at least 1) bytes, uninitialised.
    pub fn new(len: usize) -> Self {
        assert!(len > 0, "a RawBlock has at least one byte");
        let layout = Self::layout(len);
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { std::alloc::alloc(layout) };
        let ptr =
            std::ptr::NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        RawBlock { ptr, len }
    }

    /// Resize to `len` (at least 1) bytes with the global allocator's `realloc`; the first
    /// min(old, new) bytes are kept.
    pub fn realloc(&mut self, len: usize) {
        assert!(len > 0, "a RawBlock has at least one byte");
        let new = Self::layout(len);
        // SAFETY: `ptr` was allocated by the global allocator with `layout(self.len)`, and the
        // new size is non-zero and (checked by `layout`) does not overflow isize when rounded
        // up to the alignment.
        let p = unsafe { std::alloc::realloc(self.ptr.as_ptr(), Self::layout(self.len), len) };
        self.ptr = std::ptr::NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(new));
        self.len = len;
    }

    /// The block's bytes.
    pub fn bytes(&mut self) -> &mut [MaybeUninit<u8>] {
        // SAFETY: the block is `len` bytes, owned by self and borrowed mutably for the slice's
        // life; MaybeUninit<u8> needs no initialisation.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().cast(), self.len) }
    }
}

impl Drop for RawBlock {
    fn drop(&mut self) {
        // SAFETY: `ptr` was allocated by the global allocator with `layout(self.len)` and is
        // freed once, here.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.len)) }
    }
}
