//! # hakmem: a general-purpose memory allocator
//!
//! hakmem is a fast, lean allocator with no per-block headers, a heap per thread, lock-free
//! cross-thread frees, and checks that catch double frees, invalid frees and overwritten free
//! lists by default. Use it as Rust's global allocator with one line:
//!
//! ```no_run
//! #[global_allocator]
//! static A: hakmem::HakMem = hakmem::HakMem;
//! ```
//!
//! C and C++ programs get the same allocator through `libhakmem.so` (crate `hakmem-preload`,
//! `LD_PRELOAD`); this crate never exports `malloc` itself.
//!
//! ## Settings
//!
//! Every setting has a default that suits most programs, can be set from code with
//! [`HakMem::with`], and is overridden by its `HAKMEM_*` environment variable when that is set.
//! A value out of its range gets a warning naming its source, and the default is used.
//! [`settings()`] tells what is in force and where each value came from:
//!
//! ```
//! use hakmem::{HakMem, Settings, Source};
//!
//! #[global_allocator]
//! static A: HakMem = HakMem::with(Settings { lru_mb: 64, ..Settings::DEFAULT });
//!
//! let v = vec![1u8; 1000]; // the first allocation starts hakmem with these settings
//! let s = hakmem::settings();
//! if std::env::var_os("HAKMEM_LRU_MB").is_none() {
//!     assert_eq!(s.lru_mb, 64);
//!     assert_eq!(s.source("HAKMEM_LRU_MB"), Some(Source::Code));
//! }
//! assert_eq!(s.source("HAKMEM_NO_SUCH_SETTING"), None);
//! # drop(v);
//! ```
//!
//! ## Statistics
//!
//! [`stats()`] takes a [`Stats`] snapshot of every counter without allocating: live blocks and
//! bytes, memory mapped, cached and resident, per size class and per event. Its `Display` is the
//! report `HAKMEM_STATS=1` prints at exit.
//!
//! ```
//! #[global_allocator]
//! static A: hakmem::HakMem = hakmem::HakMem;
//!
//! let held: Vec<Box<[u8; 100]>> = (0..1000).map(|_| Box::new([0u8; 100])).collect();
//! let s = hakmem::stats();
//! assert!(s.live_blocks() >= 1000);
//! assert!(s.total_allocs() >= 1000 && s.mapped_bytes() > 0);
//! let row = s.classes().find(|c| c.block_size >= 100 && c.live > 0).unwrap();
//! assert_eq!(row.tier, hakmem::Tier::Small);
//! println!("{s}"); // the report
//! drop(held);
//! ```
//!
//! [`collect()`] gives cached memory back to the OS at once (memory goes back on its own
//! after a short delay anyway).
//!
//! ## The C-style API
//!
//! [`raw`] has `malloc`, `calloc`, `aligned_alloc`, `realloc`, `free` and `usable_size` with
//! glibc's semantics, whether or not hakmem is the global allocator:
//!
//! ```
//! let p = hakmem::raw::malloc(24);
//! assert!(!p.is_null());
//! // SAFETY: `p` is a live block of 24 bytes (or more: see `usable_size`).
//! unsafe {
//!     p.write_bytes(7, 24);
//!     assert!(hakmem::raw::usable_size(p) >= 24);
//!     let q = hakmem::raw::realloc(p, 4000);
//!     assert_eq!(*q.add(23), 7);
//!     hakmem::raw::free(q);
//! }
//! ```
//!
//! How it is built (the boxes, their invariants and the facade's) is in
//! `docs/ARCHITECTURE.md`; the invariants of this crate are stated at the top of its
//! `src/lib.rs`.
//!
//! ## Features
//! - `serde`: [`Stats`] (and [`ClassStats`], [`Source`]) implement `serde::Serialize`.
//! - `tracing`: the cold lifecycle events (a superslab mapped, retired, unmapped, abandoned or
//!   adopted; a purge; an OS refusal; a corruption report) are emitted as `tracing` events with
//!   target `hakmem`. A subscriber may allocate: a thread-local guard stops recursion, and its
//!   allocations bypass the heap of the thread the event happened on. Events come from
//!   inside allocations: a subscriber that takes a lock must not allocate while holding that
//!   lock elsewhere (the allocation may raise an event that waits for the lock).
#![deny(unsafe_op_in_unsafe_fn)]

// The facade's invariants (for maintainers; docs/ARCHITECTURE.md points here).
// - **F1 (never calls itself).** Start-up, alloc and free use no std collection, no heap
//   formatting, no `std::env`: memory comes from mmap, settings from `hakmem_os::getenv`,
//   messages are formatted on the stack.
// - **F2 (one address per block).** The pointer a user gets is the block; [`raw::free`] finds
//   its region through the registry and its slab by shift.
// - **F3 (no abort on out-of-memory).** When the OS refuses memory, allocations return null.
// - **F4 (bad pointers are reported).** A pointer that is not ours, or not the start of a block
//   its slab has handed out (below the slab's carve mark, SS10), is reported as
//   `hakmem: free(): invalid pointer 0x…`; a double free found by the free key (FK3), or a
//   medium block start freed twice (medium M1), as `hakmem: free(): double free detected
//   0x…`. Either aborts (`HAKMEM_INVALID_FREE=warn` reports, drops the free and goes on).
// - **F5 (thread exit).** A thread's heap lives until glibc's last pass over the TSD
//   destructors (the exit destructor re-arms its key), so destructors that run after hakmem's
//   allocate and free on it; at the last pass it is retired (H5), and later calls take the
//   orphan paths, which leave nothing owned.
// - **F6 (settings before first use).** Every setting holds from the very first call, error
//   paths included: settings are read lazily by whatever needs them first (see `settings.rs`).
//   Settings from code ride on `&self` of the [`HakMem`](struct@HakMem) to the cold start-up
//   path only; the fast paths carry nothing more than a pointer they never read.
// - **F7 (stale pointers are reported, not followed).** A free, realloc or
//   `malloc_usable_size` that finds its pointer through the registry reads the region only
//   inside a lookup section (the registry's R6), which every unmap or reuse of a once-registered
//   region waits for. The section closes once the block is proven live (a small block of this
//   thread's heap; another heap's block start without the free key, FK1; a large block whose
//   header names it), since a held block keeps its region, or once the pointer is reported. A
//   medium pointer is checked again under the medium tier's lock, under which its regions are
//   withdrawn (medium M4). So a stale or bad pointer is reported as F4 says even while other
//   threads unmap the memory it points into. The owner's fast free (H8) and `dealloc` with a
//   small layout use no registry, so no section.
// - **F8 (fork during start-up).** While start-up runs, its state word holds the initialising
//   process's id, so a child forked from another thread during start-up claims start-up
//   afresh instead of waiting for a thread its process does not have (`global.rs`).
// - **F9 (profiling off the fast paths).** The heap profiler (`profile/`) is reached only from
//   slow paths: an allocation fast path's miss, the foreign and orphan frees, the medium and
//   large tiers, a moving realloc. While it runs, every thread's allocation slot holds its
//   heap's holder (tls T5, hot_heap H21), a second set of lists that the profiler fills on
//   the allocation slow path with no more bytes than the countdown to the next sample (hot_heap
//   H19), and its free slot its heap, so the free fast paths are unchanged. A sampled small
//   block comes from the late heap, so its free misses the owner's fast free and reaches the
//   foreign free; a block's sample is dropped before the block goes back, so an address
//   reused by another allocation never carries an old sample.
//

mod context;
mod global;
mod heap;
mod out;
pub mod profile;
mod purge;
mod settings;
mod stats;
mod tls;
#[cfg(feature = "tracing")]
mod trace;

use context::ctx;
use core::alloc::{GlobalAlloc, Layout};
use core::ptr::null_mut;
use global::{ctx_or_init_with, heap_ptr, heap_slow, invalid_pointer};
use hakmem_hot_heap::Heap as HotHeap;
use hakmem_large as large;
use hakmem_medium as medium;
use hakmem_route::{
    block_size_of, classify, route, PtrRoute, Route, SizeClass, MAX_SLAB_ALIGN, MAX_SMALL,
};
use hakmem_superslab::{SlabMeta, Superslab, SS_SIZE};
use tls::DEAD;

pub use hakmem_stats::Event;
pub use heap::{Heap, HeapStats};
pub use settings::{OnInvalid, Settings, SettingsInForce, Source, NAMES as SETTING_NAMES};
pub use stats::{peak_rss_kib, ClassStats, Stats, Tier};

/// The allocator, for `#[global_allocator]`: `hakmem::HakMem` (the settings from the
/// environment, over the defaults), or `hakmem::HakMem::with(settings)` (the environment still
/// overrides each one it sets).
#[derive(Clone, Copy, Debug, Default)]
pub struct HakMem {
    settings: Option<Settings>,
}

/// The allocator with no settings from code: `static A: hakmem::HakMem = hakmem::HakMem;`.
#[allow(non_upper_case_globals)]
pub const HakMem: HakMem = HakMem { settings: None };

impl HakMem {
    /// The allocator with `settings` from code. They apply from the first allocation through
    /// it, which starts hakmem up; each `HAKMEM_*` variable that is set overrides its field. A
    /// value out of its range gets a warning and the default (see [`Settings`]).
    pub const fn with(settings: Settings) -> HakMem {
        HakMem {
            settings: Some(settings),
        }
    }

    /// The settings given in code, if any.
    pub const fn code_settings(&self) -> Option<Settings> {
        self.settings
    }
}

/// Settings from code for the cold start-up path: no settings (the C-style API, realloc).
const NO_CODE: &Option<Settings> = &None;

// SAFETY: every method upholds GlobalAlloc's contract: blocks are at least `layout.size()`
// bytes, aligned to `layout.align()`, disjoint while live, and null is returned on failure.
unsafe impl GlobalAlloc for HakMem {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        unsafe { alloc_impl(layout.size(), layout.align(), false, &self.settings) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // GlobalAlloc's contract hands back the layout the block was allocated with, and every
        // layout of at most MAX_SMALL bytes aligned to at most MAX_SLAB_ALIGN routes to a slab
        // (route RT2), so the block's slab is found by mask and shift alone, without the
        // registry. Or-ing the two tests into one compare can only send a few small blocks to
        // the registry path, which is also right.
        const _: () = assert!(MAX_SLAB_ALIGN == MAX_SMALL);
        if layout.size() | layout.align() <= MAX_SMALL {
            // SAFETY: a small block of ours, live until now: its superslab is live.
            let (ss, slab) = unsafe { Superslab::slab_of_block(ptr) };
            // SAFETY: given up by the caller.
            return unsafe { free_small_in(ss, slab, ptr) };
        }
        // SAFETY: `ptr` came from this allocator and is given up.
        unsafe { dealloc_other(ptr) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        unsafe { alloc_impl(layout.size(), layout.align(), true, &self.settings) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` is a live block of this allocator with `layout`.
        unsafe { realloc_impl(ptr, new_size, layout.align()) }
    }
}

/// A snapshot of every counter (allocates nothing).
pub fn stats() -> Stats {
    // The late heap (global.rs) belongs to no thread.
    stats::snapshot(global::late_heap_made())
}

/// Gives memory back to the OS now: unmaps every cached empty region (purged or not), so
/// nothing waits for a purge delay or a decay. Returns the bytes given back (0 when there was
/// nothing to give). `libhakmem.so`'s `malloc_trim` calls it.
///
/// Memory is given back on time without it: any allocator slow path runs the purges that are
/// due, and `HAKMEM_BACKGROUND_PURGE_MS` covers a program that goes fully idle. Call it when a
/// program knows it is done with a burst, for example before a long wait.
///
/// ```
/// #[global_allocator]
/// static A: hakmem::HakMem = hakmem::HakMem;
///
/// let burst: Vec<Vec<u8>> = (0..50).map(|_| vec![1u8; 1 << 20]).collect();
/// drop(burst);
/// let given_back = hakmem::collect();
/// assert_eq!(hakmem::collect(), 0, "nothing left to give back");
/// # let _ = given_back;
/// ```
pub fn collect() -> usize {
    match ctx() {
        Some(c) => {
            // Heaps parked by exited threads (hot_heap H18) are retired first, so what they
            // leave empty goes back too.
            c.retire_parked();
            medium::collect(c)
        }
        None => 0,
    }
}

/// The settings in force, and where each came from (default, code or environment). They are
/// read by the first call that needs them; settings from code count once the first allocation
/// through a [`HakMem::with`] allocator has been made.
pub fn settings() -> SettingsInForce {
    *settings::in_force()
}

/// The C-style API `libhakmem.so` exports, with glibc's semantics where they differ from
/// `GlobalAlloc`'s. Pointers are 16-byte aligned at least.
pub mod raw {
    use super::*;

    /// `size` bytes (a unique block for 0), or null when the OS refuses.
    ///
    /// ```
    /// let p = hakmem::raw::malloc(100);
    /// assert!(!p.is_null() && p as usize % 16 == 0);
    /// // SAFETY: `p` is a live block of hakmem's, given up once.
    /// unsafe { hakmem::raw::free(p) };
    /// ```
    #[inline]
    pub fn malloc(size: usize) -> *mut u8 {
        // SAFETY: every size is a valid request (alloc_impl's contract needs nothing more).
        unsafe { alloc_impl(size, 16, false, NO_CODE) }
    }

    /// [`malloc`] for a size that [`malloc_fast`] just answered with null: the same result,
    /// without trying the thread's list again for a tiny size (its miss, then the slow paths).
    ///
    /// ```
    /// let n = 24;
    /// let mut p = hakmem::raw::malloc_fast(n);
    /// if p.is_null() {
    ///     p = hakmem::raw::malloc_after_fast(n);
    /// }
    /// assert!(!p.is_null());
    /// // SAFETY: `p` is a live block of hakmem's, given up once.
    /// unsafe { hakmem::raw::free(p) };
    /// ```
    #[inline]
    pub fn malloc_after_fast(size: usize) -> *mut u8 {
        if size <= hakmem_route::MAX_TINY {
            if let Route::Small(class) = route(size, 16) {
                return alloc_small_miss(size, class, false, NO_CODE);
            }
        }
        malloc(size)
    }

    /// `malloc`'s fast path alone: a block from this thread's list for a tiny size, or null
    /// when that cannot serve it (the list is empty, the size is not tiny, the thread has no
    /// heap yet). Null is not a failure: the caller then calls [`malloc`], which decides.
    #[inline(always)]
    pub fn malloc_fast(size: usize) -> *mut u8 {
        if size > hakmem_route::MAX_TINY {
            return null_mut();
        }
        // SAFETY: this thread's heap or an empty one (tls T2), on its own thread; a tiny size.
        unsafe { HotHeap::alloc_tiny_fast(crate::tls::raw(), size) }
    }

    /// `n * size` zeroed bytes, or null on overflow or when the OS refuses. Memory fresh from
    /// the OS is not zeroed again.
    ///
    /// ```
    /// let p = hakmem::raw::calloc(10, 8);
    /// // SAFETY: 80 bytes of a live block.
    /// assert!(unsafe { core::slice::from_raw_parts(p, 80) }.iter().all(|&b| b == 0));
    /// assert!(hakmem::raw::calloc(usize::MAX, 2).is_null(), "overflow");
    /// // SAFETY: a live block of hakmem's, given up once.
    /// unsafe { hakmem::raw::free(p) };
    /// ```
    pub fn calloc(n: usize, size: usize) -> *mut u8 {
        match n.checked_mul(size) {
            // SAFETY: every size is a valid request.
            Some(total) => unsafe { alloc_impl(total, 16, true, NO_CODE) },
            None => null_mut(),
        }
    }

    /// `size` bytes aligned to `align` (any power of two), or null (also for a bad `align`).
    ///
    /// ```
    /// let p = hakmem::raw::aligned_alloc(4096, 100);
    /// assert_eq!(p as usize % 4096, 0);
    /// assert!(hakmem::raw::aligned_alloc(3, 100).is_null(), "not a power of two");
    /// // SAFETY: a live block of hakmem's, given up once.
    /// unsafe { hakmem::raw::free(p) };
    /// ```
    pub fn aligned_alloc(align: usize, size: usize) -> *mut u8 {
        if !align.is_power_of_two() {
            return null_mut();
        }
        // SAFETY: a power-of-two alignment and any size are a valid request.
        unsafe { alloc_impl(size, align.max(16), false, NO_CODE) }
    }

    /// Gives `p` back; null is ignored.
    ///
    /// # Safety
    /// `p` is null or a live block of this allocator, given up.
    #[inline(always)]
    pub unsafe fn free(p: *mut u8) {
        // The fast path (H8 in hakmem-hot-heap): a block of a superslab this thread's heap owns,
        // proved by its owned cache instead of the registry; anything else, null included,
        // takes the full path.
        // SAFETY: this thread's heap or an empty one (tls T2), on its own thread; `p` is given
        // up, and any address is accepted (the heap reads nothing through it before proving it
        // ours).
        if unsafe { HotHeap::try_free_owned(crate::tls::raw_free(), p) } {
            return;
        }
        // SAFETY: forwarded.
        unsafe { free_full(p) }
    }

    /// glibc's realloc: null `p` allocates; size 0 frees `p` and returns null; on failure `p`
    /// is left alone and null comes back.
    ///
    /// # Safety
    /// `p` is null or a live block of this allocator.
    pub unsafe fn realloc(p: *mut u8, size: usize) -> *mut u8 {
        if p.is_null() {
            return malloc(size);
        }
        if size == 0 {
            // SAFETY: forwarded.
            unsafe { free_impl(p, "realloc") };
            return null_mut();
        }
        // SAFETY: forwarded.
        unsafe { realloc_impl(p, size, 16) }
    }

    /// Bytes usable at `p` (at least what was asked); 0 for null.
    ///
    /// # Safety
    /// `p` is null or a live block of this allocator.
    pub unsafe fn usable_size(p: *mut u8) -> usize {
        if p.is_null() {
            return 0;
        }
        // SAFETY: forwarded.
        match unsafe { lookup(p, "malloc_usable_size") } {
            Some(Block::Small(usable)) => usable,
            Some(Block::Large(h)) => h.usable(),
            Some(Block::Medium(_, usable)) => usable,
            None => 0,
        }
    }
}

/// `code`: the settings from code of the [`HakMem`](struct@HakMem) called, read only on the
/// cold path that starts hakmem up.
///
/// # Safety
/// `size` and `align` are as `route` takes them (`align` a power of two); called from the
/// allocator's entry points, on the calling thread's own heap.
#[inline(always)]
unsafe fn alloc_impl(size: usize, align: usize, zero: bool, code: &Option<Settings>) -> *mut u8 {
    match route(size, align) {
        Route::Small(class) => {
            if !zero {
                // SAFETY: this thread's heap or an empty one (tls T2), on its own thread.
                let p = unsafe { HotHeap::alloc_fast(crate::tls::raw(), class) };
                if !p.is_null() {
                    return p;
                }
            }
            alloc_small_miss(size, class, zero, code)
        }
        Route::Large => match ctx_or_init_with(code) {
            // Heap profiling: out of line, so that this function keeps its tail calls (and
            // saves no more registers on its fast path).
            Some(ctx) if profile::active() => alloc_large_profiled(ctx, size, align, zero),
            Some(ctx) if medium::serves(ctx, size, align) => {
                medium::alloc(ctx, row(), size, align, zero)
            }
            Some(ctx) => large::alloc(ctx, row(), size, align, zero),
            None => null_mut(),
        },
    }
}

/// A medium or large allocation while heap profiling runs, counted (`profile` module docs).
#[cold]
#[inline(never)]
fn alloc_large_profiled(
    ctx: &'static hakmem_hot_heap::Ctx,
    size: usize,
    align: usize,
    zero: bool,
) -> *mut u8 {
    let p = if medium::serves(ctx, size, align) {
        medium::alloc(ctx, row(), size, align, zero)
    } else {
        large::alloc(ctx, row(), size, align, zero)
    };
    if !p.is_null() {
        profile::on_alloc(p, size);
    }
    p
}

/// A small allocation past the fast path's miss: from this thread's heap, else
/// [`alloc_small_slow`]. Out of line, so that the fast path stays small where it is inlined.
#[inline(never)]
fn alloc_small_miss(size: usize, class: SizeClass, zero: bool, code: &Option<Settings>) -> *mut u8 {
    if profile::active() {
        return alloc_small_miss_profiled(size, class, zero, code);
    }
    let h = heap_ptr();
    if h as usize > DEAD as usize {
        // SAFETY: this thread's live heap, used on its own thread.
        return unsafe { heap_alloc(&mut *h, class, zero) };
    }
    alloc_small_slow(size, class, zero, code)
}

/// [`alloc_small_miss`] while heap profiling runs: the profiler decides (the `profile` module
/// docs).
#[inline(always)]
fn alloc_small_miss_profiled(
    size: usize,
    class: SizeClass,
    zero: bool,
    code: &Option<Settings>,
) -> *mut u8 {
    // Counting every allocation (hot_heap H24), each one comes here: the free slot as it is
    // (the heap, or an empty heap, which never counts), without the sentinels' tests.
    let h = tls::raw_free();
    // SAFETY: this thread's heap or an empty heap, on its own thread.
    if unsafe { HotHeap::prof_counting(h) } {
        // SAFETY: a counting heap is a live heap (never an empty one), this thread's.
        return unsafe { profile::alloc_counting(h, class, size, zero) };
    }
    let h = heap_ptr();
    if h as usize > DEAD as usize {
        // SAFETY: this thread's live heap, used on its own thread, which does not count (the
        // test above); one block of `class`.
        return unsafe { profile::alloc_small_held(h, class, size, zero) };
    }
    alloc_small_slow(size, class, zero, code)
}

/// An allocation of `size` bytes, class `class`, past the heap's fast path: counted by the
/// heap profiler while it runs, and served by [`alloc_small_any_heap`].
#[cold]
#[inline(never)]
fn alloc_small_slow(size: usize, class: SizeClass, zero: bool, code: &Option<Settings>) -> *mut u8 {
    if profile::active() {
        // The thread's first allocation, or one after its heap is gone.
        if let Some(h) = heap_slow() {
            let h = h.as_ptr();
            // SAFETY: this thread's live heap, used on its own thread; one block of `class`.
            return unsafe { profile::alloc_small(h, class, size, zero) };
        }
        let p = alloc_small_any_heap(class, zero, code);
        if !p.is_null() {
            profile::on_alloc(p, size);
        }
        return p;
    }
    alloc_small_any_heap(class, zero, code)
}

/// A block of `class` from this thread's heap, made on first use, else the late heap, else a
/// heap made for this one block.
#[inline(always)]
fn alloc_small_any_heap(class: SizeClass, zero: bool, code: &Option<Settings>) -> *mut u8 {
    if ctx().is_none() {
        settings::apply_code(code);
    }
    if let Some(h) = heap_slow() {
        // SAFETY: this thread's live heap, on its own thread.
        return unsafe { heap_alloc(&mut *h.as_ptr(), class, zero) };
    }
    // After this thread's exit clean-up (or when no heap could be mapped): the process's late
    // heap, under its lock; if another thread holds it (or this one, re-entering from a
    // tracing subscriber), a heap for this one block, torn down at once. Either way nothing is
    // left owned by a thread that is going away.
    let Some(ctx) = ctx_or_init_with(code) else {
        return null_mut();
    };
    // SAFETY: the late heap's thread-only methods run under its lock.
    if let Some(p) = global::with_late_heap(ctx, |h| unsafe { heap_alloc(h, class, zero) }) {
        return p;
    }
    let Some(h) = ctx.new_heap() else {
        return null_mut();
    };
    // SAFETY: a fresh heap used by this thread only, retired right after.
    unsafe {
        let p = heap_alloc(&mut *h.as_ptr(), class, zero);
        ctx.retire_heap(h);
        p
    }
}

/// A block of `class` from `h`, zeroed when `zero`.
///
/// # Safety
/// `h` is a live heap whose only user is the calling thread (its own, or the late heap under
/// its lock).
#[inline(always)]
unsafe fn heap_alloc(h: &mut HotHeap, class: SizeClass, zero: bool) -> *mut u8 {
    // SAFETY: the caller runs on the heap's thread.
    unsafe {
        if zero {
            h.alloc_zeroed(class)
        } else {
            h.alloc(class)
        }
    }
}

/// This thread's counters for the medium and large tiers' blocks: its live heap's, or `None`
/// (the context's) for a thread without one. Used within the call that reads it.
#[inline(always)]
fn row<'a>() -> medium::Row<'a> {
    let h = heap_ptr();
    // SAFETY: a live heap of this thread (neither null nor DEAD), which lives past the tier call
    // it is passed to (only this thread's exit retires it); its counters are written by this
    // thread only.
    (h as usize > DEAD as usize).then(|| unsafe { &(*h).stats })
}

enum Block {
    /// A small block: its usable bytes (the class's block size).
    Small(usize),
    Large(&'static hakmem_superslab::LargeHeader),
    /// A medium block: its region's base and its usable bytes.
    Medium(usize, usize),
}

/// This thread's lookup-section stripe (R6 in hakmem-registry): its heap's address, mixed, so
/// threads with heaps of their own count on different cache lines (any value is correct).
#[inline(always)]
fn stripe(h: *mut HotHeap) -> usize {
    (h as usize).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58
}

/// What a lookup section learns of a block start `p` of `slab` (in `ss`) that another heap
/// owns, or none: whether it is proven live, so that its superslab stays after the section.
enum Foreign {
    /// Not free (it carries no free key, FK1) and still a block start of its slab: someone
    /// holds it, and a superslab with a block out is not released (superslab SS4).
    Live,
    /// It carries the free key: free, as the non-owner's free would report (FK3).
    Keyed,
    /// Its slab stopped handing it out between the two looks (its slab went back meanwhile).
    Gone,
}

/// Reads `p`'s key word inside the caller's lookup section (R6), then checks again that `p` is
/// a block start below its slab's carve mark, since a slab that went back while the key was
/// read may read as zeros.
///
/// # Safety
/// A lookup section is open on this thread, and its lookup found `ss` holding `p`, a block
/// start of `slab`.
#[inline(always)]
unsafe fn foreign_state(ss: &Superslab, slab: &SlabMeta, p: *mut u8) -> Foreign {
    // SAFETY: a block start (so 16 bytes of the superslab) that the open section keeps mapped.
    if unsafe { hakmem_superslab::key_word(p) } == hakmem_superslab::free_key() {
        return Foreign::Keyed;
    }
    if hakmem_route::is_block_start(ss, slab, p) {
        Foreign::Live
    } else {
        Foreign::Gone
    }
}

/// The block `p` is, or a report for `op` and `None` when it is not one of ours. The lookup and
/// everything it reads run in a lookup section (R6 in hakmem-registry), until the block is
/// proven live (then it keeps its region) or reported: whatever another thread frees and
/// unmaps meanwhile, nothing unmapped is read.
///
/// # Safety
/// The caller holds `p` if it is a block of ours (it may be any address otherwise).
unsafe fn lookup(p: *mut u8, op: &str) -> Option<Block> {
    let Some(ctx) = ctx() else {
        invalid_pointer(op, p);
        return None;
    };
    let h = crate::tls::raw_free();
    let section = ctx.registry.section(stripe(h));
    // SAFETY: the open section keeps whatever the registry reports mapped; for a pointer that
    // is not ours nothing is dereferenced.
    let found = match unsafe { classify(&ctx.registry, p) } {
        // With HAKMEM_CHECK, a block the bitmap does not hold (freed, or never handed out) is
        // no block to resize or measure.
        PtrRoute::Small(ss, slab)
            if hakmem_route::is_block_start(ss, slab, p) && (!ctx.check() || ss.check_held(p)) =>
        {
            // SAFETY: this thread's heap or an empty one (tls T2), whose id no slab has.
            let own = slab.owner() == unsafe { HotHeap::id_of(h) };
            // Another heap's block must be proven live before the section ends (its
            // superslab may go as soon as it is free); this heap's superslabs go only when
            // this thread releases them.
            // SAFETY: the section is open; `p` is a block start of `slab`.
            if own || matches!(unsafe { foreign_state(ss, slab, p) }, Foreign::Live) {
                Some(Block::Small(block_size_of(slab.class())))
            } else {
                None
            }
        }
        PtrRoute::Large(lh) if lh.user() == p as usize => Some(Block::Large(lh)),
        PtrRoute::Medium(base) => {
            drop(section);
            // SAFETY: checked again under the medium tier's lock (the region may have gone
            // since the lookup); reported there if `p` is not one of its live blocks.
            let usable = unsafe { medium::usable(ctx, base, p) };
            if usable.is_none() {
                invalid_pointer(op, p);
            }
            return usable.map(|usable| Block::Medium(base, usable));
        }
        _ => None,
    };
    drop(section);
    if found.is_none() {
        invalid_pointer(op, p);
    }
    found
}

/// `dealloc` of a block whose layout does not route to a slab: out of line, so that `dealloc`
/// itself stays small enough to be inlined into its callers.
///
/// # Safety
/// As [`free_impl`].
#[inline(never)]
unsafe fn dealloc_other(p: *mut u8) {
    // SAFETY: forwarded. A pointer that is not ours is reported as `dealloc`'s.
    unsafe { free_impl(p, "dealloc") }
}

/// Frees `p` (reported for `op` when it is not a live block of ours).
///
/// # Safety
/// The caller gives `p` up if it is a block of ours (it may be any address otherwise).
#[inline(always)]
unsafe fn free_impl(p: *mut u8, op: &str) {
    let Some(ctx) = ctx() else {
        invalid_pointer(op, p);
        return;
    };
    let h = crate::tls::raw_free();
    // R6 (hakmem-registry): what the lookup finds stays mapped while the section is open; it
    // closes once the block is proven live (a block out keeps its region) or before a report,
    // and always before anything that may take a lock or release a region.
    let section = ctx.registry.section(stripe(h));
    // SAFETY: the open section keeps whatever the registry reports mapped; for a pointer not
    // ours nothing is dereferenced.
    match unsafe { classify(&ctx.registry, p) } {
        PtrRoute::Small(ss, slab) if hakmem_route::is_block_start(ss, slab, p) => {
            // SAFETY: this thread's heap or an empty one (tls T2); an empty heap's id is no
            // slab's owner (hot_heap H9), so a match is this thread's live heap.
            if slab.owner() == unsafe { HotHeap::id_of(h) } {
                drop(section);
                // SAFETY: this thread's live heap, whose superslabs only this thread releases;
                // `p` is a block of its own `slab`, given up. Its free missed the owned cache
                // (H8) on the fast path, so the slab takes the cache's entry.
                return unsafe { (*h).free_own_recached(slab, p) };
            }
            // SAFETY: the section is open; `p` is a block start of `slab`.
            let state = unsafe { foreign_state(ss, slab, p) };
            drop(section);
            match state {
                // SAFETY: a block start of another heap's slab, held (so its superslab stays)
                // and given up.
                Foreign::Live => unsafe { free_small_other(ss, slab, p) },
                // What the non-owner's free reports for a keyed block (FK3), decided here,
                // where the block's memory could still be read.
                Foreign::Keyed => ctx.report(hakmem_superslab::Corrupt::DoubleFree(p as usize)),
                Foreign::Gone => invalid_pointer(op, p),
            }
        }
        PtrRoute::Large(lh) if lh.user() == p as usize => {
            drop(section);
            if profile::active() {
                profile::on_free(p);
            }
            // SAFETY: the registry said `lh` is live, its block starts at `p`, and the caller
            // gives it up.
            unsafe { large::free(ctx, row(), lh) }
        }
        PtrRoute::Medium(base) => {
            drop(section);
            if profile::active() {
                profile::on_free(p);
            }
            // SAFETY: checked again under the medium tier's lock; `p` is given up.
            match unsafe { medium::free(ctx, row(), base, p) } {
                Ok(()) => {}
                Err(medium::Bad::DoubleFree) => {
                    ctx.report(hakmem_superslab::Corrupt::DoubleFree(p as usize))
                }
                Err(medium::Bad::NotABlock) => invalid_pointer(op, p),
            }
        }
        _ => {
            drop(section);
            invalid_pointer(op, p)
        }
    }
}

/// `free`'s full path: null, foreign and bad pointers, large blocks, other heaps' blocks, full
/// thread lists and suspected double frees.
///
/// # Safety
/// As [`free_impl`]; `p` may be null.
#[cold]
#[inline(never)]
unsafe fn free_full(p: *mut u8) {
    // Heap profiling: a profiling thread's own blocks by the profiler's free, found by the
    // owned cache (H8) without the registry; both calls are tail calls.
    // SAFETY: forwarded.
    unsafe { free_registry(p) }
}

/// [`free_full`] past the profiler: through the registry.
///
/// # Safety
/// As [`free_impl`]; `p` may be null.
#[inline(never)]
unsafe fn free_registry(p: *mut u8) {
    if !p.is_null() {
        // SAFETY: forwarded.
        unsafe { free_impl(p, "free") }
    }
}

/// Frees a small block whose slab is known.
///
/// # Safety
/// `p` is a block start of `slab`, a slab of the live superslab `ss`, that the caller gives up.
#[inline(always)]
unsafe fn free_small_in(ss: &'static Superslab, slab: &SlabMeta, p: *mut u8) {
    let h = crate::tls::raw_free();
    // SAFETY: this thread's heap or an empty one (tls T2); an empty heap's id is no slab's
    // owner (hot_heap H9), so a match is this thread's live heap.
    if slab.owner() == unsafe { HotHeap::id_of(h) } {
        // SAFETY: this thread's live heap; `p` is a block of its own `slab`, given up.
        return unsafe { (*h).free_own(slab, p) };
    }
    // SAFETY: forwarded.
    unsafe { free_small_other(ss, slab, p) }
}

/// `free_small_in` for a block of another heap's slab (or an orphan's), or a thread without a
/// live heap.
///
/// # Safety
/// As [`free_small_in`], and this thread's heap does not own `slab`.
#[inline(never)]
unsafe fn free_small_other(ss: &'static Superslab, slab: &SlabMeta, p: *mut u8) {
    // Heap profiling: a sampled small block is another heap's (the late heap's, `profile`
    // module docs), so its free comes here, and its sample goes first.
    if profile::active() {
        // SAFETY: forwarded.
        return unsafe { free_small_other_profiled(ss, slab, p) };
    }
    // SAFETY: forwarded.
    unsafe { free_small_other_rest(ss, slab, p) }
}

/// [`free_small_other`] while heap profiling runs: the block's sample goes first. Out of
/// line, so that [`free_small_other`] saves no registers for the sample's call.
///
/// # Safety
/// As [`free_small_other`].
#[inline(never)]
unsafe fn free_small_other_profiled(ss: &'static Superslab, slab: &SlabMeta, p: *mut u8) {
    profile::on_free(p);
    // SAFETY: forwarded.
    unsafe { free_small_other_rest(ss, slab, p) }
}

/// [`free_small_other`] past the profiler.
///
/// # Safety
/// As [`free_small_other`].
#[inline(always)]
unsafe fn free_small_other_rest(ss: &'static Superslab, slab: &SlabMeta, p: *mut u8) {
    let h = crate::tls::raw_free();
    // SAFETY: this thread's heap or an empty one (tls T2); only empty heaps have EMPTY_ID.
    if unsafe { HotHeap::id_of(h) } != hakmem_hot_heap::EMPTY_ID {
        // SAFETY: this thread's live heap, which does not own `slab` (the caller compared);
        // `p` is a block of `slab` given up.
        return unsafe { (*h).free_foreign(ss, slab, p) };
    }
    // SAFETY: forwarded.
    unsafe { free_small_slow(p) }
}

/// `free_small_in` for a thread without a live heap. It takes `p` alone, and finds its slab
/// again by mask and shift, so the inlined fast path passes one register.
///
/// # Safety
/// `p` is a block start in a live superslab, of a slab this thread's heap does not own, that the
/// caller gives up.
#[cold]
#[inline(never)]
unsafe fn free_small_slow(p: *mut u8) {
    // SAFETY: the caller found `p` in a live superslab (by the registry or its layout).
    let (ss, slab) = unsafe { Superslab::slab_of_block(p) };
    let Some(ctx) = ctx() else {
        return invalid_pointer("free", p);
    };
    let h = heap_ptr();
    if h.is_null() {
        if let Some(h) = heap_slow() {
            // SAFETY: this thread's new heap; `p` is given up.
            return unsafe { (*h.as_ptr()).free_small(ss, slab, p) };
        }
    }
    // SAFETY: forwarded: a thread without a heap frees as a non-owner.
    unsafe { HotHeap::free_orphan(ctx, ss, slab, p) }
}

/// Whether a block of `usable` bytes serves a resize to `new_size` bytes where it is: the new
/// size fits, and at most half the block goes unused (glibc and mimalloc also shrink in place
/// down to half). Also the C lane's common case: a block resized within its own class.
#[inline(always)]
fn fits_in_place(usable: usize, new_size: usize) -> bool {
    new_size <= usable && new_size >= usable / 2
}

/// Resizes the block `p` to `new_size` bytes at `align`, in place or by a move.
///
/// A small block stays where it is when [`fits_in_place`] (its address already has the
/// alignment, and any size up to its block size routes to a slab, so `dealloc`'s mask and shift
/// still find it). A block of this thread's own heap is found by the owned cache (hot_heap H8),
/// as `free`'s fast path finds it, without the registry; a moved small block is freed by its
/// slab, found once.
///
/// # Safety
/// The caller holds `p` if it is a block of ours (it may be any address otherwise, which is
/// reported), and gives it up when the result is not null.
unsafe fn realloc_impl(p: *mut u8, new_size: usize, align: usize) -> *mut u8 {
    // SAFETY: this thread's heap or an empty one (tls T2), on its own thread; any address is
    // accepted (nothing is read through `p` before the cache proves it a block of ours).
    let owned = unsafe { HotHeap::owned_slab(crate::tls::raw_free(), p) };
    // In check mode the registry's lookup also proves the block held (its bitmap).
    let owned = owned.filter(|_| ctx().is_some_and(|c| !c.check()));
    let (old_usable, small) = if let Some(slab) = owned {
        (block_size_of(slab.class()), true)
    } else {
        // SAFETY: the caller holds `p`.
        match unsafe { lookup(p, "realloc") } {
            Some(Block::Small(usable)) => (usable, true),
            Some(Block::Large(h)) => {
                let usable = h.usable();
                // Growing a large block: move its pages rather than copy them. (A large block
                // exists, so the context does too.)
                // (A block aligned above 2 MiB is moved instead: its pages would move to an
                // address aligned to 2 MiB only.)
                if let (true, Some(ctx)) = (
                    new_size > usable && align <= SS_SIZE && route(new_size, align) == Route::Large,
                    ctx(),
                ) {
                    // SAFETY: the caller holds the block.
                    if let Some(q) = unsafe { large::grow(ctx, h as *const _ as usize, new_size) } {
                        if profile::active() {
                            profile::on_free(p);
                            profile::on_alloc(q, new_size);
                        }
                        return q;
                    }
                }
                if new_size > MAX_SMALL && fits_in_place(usable, new_size) {
                    return p;
                }
                (usable, false)
            }
            Some(Block::Medium(base, usable)) => {
                // Resized over its own granules and the free ones after it, while it stays
                // medium.
                if let Some(ctx) = ctx() {
                    if medium::serves(ctx, new_size, align) {
                        // SAFETY: the caller holds the block, a live block start of the region.
                        if unsafe { medium::resize(ctx, base, p, new_size) } {
                            return p;
                        }
                    }
                }
                (usable, false)
            }
            None => return null_mut(),
        }
    };
    if small && fits_in_place(old_usable, new_size) {
        return p;
    }
    // SAFETY: forwarded.
    let q = unsafe { alloc_impl(new_size, align, false, NO_CODE) };
    if q.is_null() {
        return null_mut();
    }
    // SAFETY: both blocks hold at least the bytes copied, and they are distinct live blocks.
    unsafe { core::ptr::copy_nonoverlapping(p, q, old_usable.min(new_size)) };
    if small {
        // SAFETY: a small block of ours that the caller held until now (proved above, by the
        // owned cache or the registry), so its superslab is live; given up.
        unsafe {
            let (ss, slab) = Superslab::slab_of_block(p);
            free_small_in(ss, slab, p);
        }
    } else {
        // SAFETY: the caller gives `p` up.
        unsafe { free_impl(p, "realloc") };
    }
    q
}

/// Hooks for hakmem's own crates (`libhakmem.so`'s exit report, the scaling example's lock
/// counts): not an API to build on, and outside semver.
#[doc(hidden)]
pub mod internal {
    use super::*;

    /// With `HAKMEM_STATS=1`, writes the report (to `HAKMEM_STATS_FILE`, or stderr) without
    /// allocating; at most once per process. hakmem calls this itself at exit (registered at
    /// start-up); `libhakmem.so` calls it from its own, later, exit handler.
    pub fn report_stats_if_enabled() {
        stats::report_once(|| {
            // So the report counts only what live threads hold.
            global::reap_ended_threads();
            stats()
        });
    }

    /// For `libhakmem.so`: the caller registers its own exit handler that calls
    /// [`report_stats_if_enabled`], so hakmem's own handler stays silent.
    pub fn exit_report_by_caller() {
        stats::exit_report_by_caller();
    }

    /// How often each shared lock was taken and found held, named, then the remote-free stacks'
    /// CAS retries as `("remote push", acquired: 0, contended: retries)` (remote frees themselves
    /// are counted in [`stats`]), then the medium tier's lock. Process-wide, for measurements
    /// (`docs/SCALING.md`); takes no lock and allocates nothing. All zero before the first
    /// allocation.
    pub fn contention() -> [(&'static str, hakmem_superslab::LockCounts); 5] {
        use hakmem_superslab::{LockCounts, RemoteStack};
        let [a, b, c] = match ctx() {
            Some(c) => c.lock_counts(),
            None => [
                ("heap list", LockCounts::default()),
                ("abandoned list", LockCounts::default()),
                ("lru", LockCounts::default()),
            ],
        };
        let remote = LockCounts {
            contended: RemoteStack::push_retries(),
            ..LockCounts::default()
        };
        [
            a,
            b,
            c,
            ("remote push", remote),
            ("medium", medium::contention()),
        ]
    }
}
