//! First-class heaps: [`Heap`], a private heap that collections allocate in and that gives
//! every block back when dropped.
use crate::global::ctx_or_init;
use crate::HakMem;
use allocator_api2::alloc::{AllocError, Allocator};
use core::alloc::{GlobalAlloc, Layout};
use core::cell::Cell;
use core::fmt;
use core::marker::PhantomData;
use core::ptr::NonNull;
use hakmem_hot_heap as hot;
use hakmem_route::{route, Route, SizeClass, MAX_SLAB_ALIGN, MAX_SMALL};
use hakmem_superslab::Superslab;

/// A private heap: collections allocate in it through `&Heap` (it implements
/// [`allocator_api2::alloc::Allocator`], the stable-Rust allocator trait that `hashbrown` and
/// `bumpalo` use), single blocks are freed and reused as in any heap, and dropping it gives
/// back every small block still in it at once, without visiting them (as `mi_heap_destroy`
/// does).
///
/// ```
/// use allocator_api2::boxed::Box;
/// use allocator_api2::vec::Vec;
/// use hakmem::Heap;
///
/// let heap = Heap::new();
/// let mut v = Vec::new_in(&heap);
/// v.extend(0..1000u32);
/// let b = Box::new_in([7u8; 100], &heap);
/// let mut map = hashbrown::HashMap::new_in(&heap);
/// for i in 0..1000u32 {
///     map.insert(i, i * 2);
/// }
/// map.remove(&7); // single frees go back to the heap, for its next allocations
/// assert_eq!(map[&500], 1000);
/// assert!(heap.stats().live_blocks() >= 2);
/// // Dropped whole: the collections are forgotten, the heap gives their blocks back at once.
/// core::mem::forget((v, b, map));
/// drop(heap);
/// ```
///
/// Safe code cannot reach a block after its heap is gone: collections hold `&Heap`, so the
/// heap outlives them. The heap may be moved while nothing borrows it:
///
/// ```compile_fail,E0505
/// let heap = hakmem::Heap::new();
/// let v = allocator_api2::vec::Vec::<u8, _>::with_capacity_in(10, &heap);
/// drop(heap); // error: `heap` is borrowed by `v`
/// drop(v);
/// ```
///
/// # Threads
/// A `Heap` is [`Send`] but not [`Sync`]: one thread at a time allocates in it, with no lock
/// and no atomic read-modify-write (the same paths as a thread's own heap), and the whole heap
/// can move to another thread once nothing borrows it. A collection in a heap holds `&Heap`,
/// which is not `Send`, so it stays on the heap's thread:
///
/// ```compile_fail,E0277
/// let heap = hakmem::Heap::new();
/// let v = allocator_api2::vec::Vec::<u8, _>::new_in(&heap);
/// std::thread::scope(|s| {
///     s.spawn(move || drop(v)); // error: `Cell<()>` cannot be shared between threads
/// });
/// ```
///
/// A block handed to another thread or to C code as a raw pointer may be freed there with
/// hakmem's global free (C's `free` under `libhakmem.so`, or [`crate::raw::free`]): a small
/// block goes onto its slab's remote stack, found by mask and shift as any heap's block is,
/// and the heap takes it back when it next drains its remote frees (a refill, [`Heap::stats`],
/// [`Heap::collect`]). Such a free must return before the heap is dropped or reset (it is a
/// use of the block).
///
/// # Small blocks and big ones
/// Requests the small tier serves (up to 64 KiB, aligned up to 64 KiB) come from the heap's own
/// superslabs. Bigger ones are served by the global medium and large tiers, as
/// [`HakMem`](struct@crate::HakMem) serves them, and go back when their collection frees them:
/// a collection that is forgotten before the heap is dropped leaks its big blocks (a leak,
/// never a dangling block). [`Heap::stats`] counts the small blocks only. A big block freed
/// while the heap's latest big allocation is bigger (the old buffer of a collection that grew:
/// a `Vec`'s, or a hash map's table, which is freed after its successor is filled) gives its
/// pages back to the OS as it goes, rather than waiting in the process's cache of empty
/// regions: the collection holds its bigger successor, so the memory it needs next is larger.
///
/// # Drop, reset and collect
/// - Dropping the heap frees every small block in it at once: each of its superslabs goes back
///   whole to the process's cache of empty regions (from which the OS gets it back after the
///   usual decay), with one look per slab and none per block. Remote frees still waiting on
///   its slabs are dropped with them (they were counted as frees when they happened).
/// - [`Heap::reset`] does the same and leaves an empty heap in place.
/// - [`Heap::collect`] keeps every live block and gives back what the heap holds beyond them:
///   freed blocks return to their slabs, remote frees are drained, empty slabs go back to
///   their superslabs and empty superslabs to the cache of empty regions.
pub struct Heap {
    heap: NonNull<hot::Heap>,
    /// The size of the latest big block (served by the global tiers) allocated in the heap.
    last_big: Cell<usize>,
    /// Not `Sync`: one thread at a time allocates in the heap.
    _not_sync: PhantomData<Cell<()>>,
}

// SAFETY: the hot heap is used only by the thread that holds the `Heap` (it is not `Sync`, so
// `&Heap` never crosses threads); a move hands it over whole, with the happens-before the move
// itself carries. Nothing in it is tied to a thread: a private heap has no tag and no
// thread-local slot (hot_heap H17).
unsafe impl Send for Heap {}

impl Heap {
    /// A new, empty heap. Aborts through [`std::alloc::handle_alloc_error`] when the OS refuses
    /// the memory for it (see [`Heap::try_new`]).
    pub fn new() -> Heap {
        match Heap::try_new() {
            Some(h) => h,
            None => std::alloc::handle_alloc_error(Layout::new::<hot::Heap>()),
        }
    }

    /// A new, empty heap, or `None` when the OS refuses the memory for it.
    pub fn try_new() -> Option<Heap> {
        let heap = ctx_or_init()?.new_private_heap()?;
        Some(Heap {
            heap,
            last_big: Cell::new(0),
            _not_sync: PhantomData,
        })
    }

    /// The hot heap, for the calling thread's exclusive use within one call.
    #[allow(clippy::mut_from_ref)]
    #[inline(always)]
    fn hot(&self) -> &mut hot::Heap {
        // SAFETY: live until drop; the `Heap` is not `Sync`, so only this thread reaches it, and
        // each method uses the reference within its call, never across a call that could
        // re-enter it (the hot heap never calls back into a `Heap`).
        unsafe { &mut *self.heap.as_ptr() }
    }

    /// Frees every block of the heap at once and leaves it empty, as a drop followed by
    /// [`Heap::new`] would (the superslabs go back whole; see the type's docs).
    pub fn reset(&mut self) {
        let ctx = crate::context::ctx().expect("a heap exists, so the context does");
        let Some(fresh) = ctx.new_private_heap() else {
            std::alloc::handle_alloc_error(Layout::new::<hot::Heap>())
        };
        let old = core::mem::replace(&mut self.heap, fresh);
        // SAFETY: `&mut self`: nothing borrows the heap, so no collection holds a block of it;
        // a free of one by another thread has returned (the type's contract on raw pointers).
        unsafe { ctx.destroy_heap(old) };
    }

    /// Gives back what the heap holds beyond its live blocks (see the type's docs); the live
    /// blocks stay.
    pub fn collect(&self) {
        // SAFETY: a real heap, used by this thread alone.
        unsafe { self.hot().collect_all() }
    }

    /// What the heap holds now: live small blocks and their bytes, and the bytes it has mapped.
    /// Blocks freed by other threads are taken back first, so they do not count.
    pub fn stats(&self) -> HeapStats {
        // SAFETY: a real heap, used by this thread alone.
        let u = unsafe { self.hot().usage() };
        HeapStats {
            live_blocks: u.live_blocks,
            live_bytes: u.live_bytes,
            mapped_bytes: u.mapped_bytes,
        }
    }

    /// A small block of `class`, zeroed when `zero`, or null.
    #[inline(always)]
    fn alloc_small(&self, class: SizeClass, zero: bool) -> *mut u8 {
        let h = self.hot();
        if zero {
            // SAFETY: the heap's one user is this thread.
            return unsafe { h.alloc_zeroed(class) };
        }
        // SAFETY: a real heap of this thread's, used by it alone: the fast pop inline, and
        // `alloc` (out of line) after a miss.
        unsafe {
            let p = hot::Heap::alloc_fast(h, class);
            if !p.is_null() {
                return p;
            }
            h.alloc(class)
        }
    }

    #[inline(always)]
    fn allocate_impl(&self, layout: Layout, zero: bool) -> Result<NonNull<[u8]>, AllocError> {
        let p = match route(layout.size(), layout.align()) {
            Route::Small(class) => self.alloc_small(class, zero),
            Route::Large => self.alloc_big(layout, zero),
        };
        let p = NonNull::new(p).ok_or(AllocError)?;
        // The size asked for: no table lookup (and no bounds check) on the fast path.
        Ok(NonNull::slice_from_raw_parts(p, layout.size()))
    }
}

impl Heap {
    /// A big block from the global tiers, its size remembered as the latest big allocation.
    #[inline(never)]
    fn alloc_big(&self, layout: Layout, zero: bool) -> *mut u8 {
        // SAFETY: a layout of nonzero size (the small tier takes size 0).
        let p = unsafe {
            if zero {
                HakMem.alloc_zeroed(layout)
            } else {
                HakMem.alloc(layout)
            }
        };
        if !p.is_null() {
            self.last_big.set(layout.size());
        }
        p
    }

    /// Frees a big block (the global tiers'): its whole pages are given back first when the
    /// latest big allocation is bigger (see the type's docs).
    ///
    /// # Safety
    /// `p` is a live big block this heap handed out with `layout`, given up.
    #[inline(never)]
    unsafe fn free_big(&self, p: *mut u8, layout: Layout) {
        if layout.size() < self.last_big.get() {
            if let Some(ctx) = crate::context::ctx() {
                let env = ctx.env();
                let page = env.os.page_size();
                let start = (p as usize).next_multiple_of(page);
                let end = (p as usize + layout.size()) & !(page - 1);
                if let Some(at) = NonNull::new(start as *mut u8).filter(|_| end > start) {
                    // SAFETY: whole pages inside the block, which the caller gives up (its
                    // contents are dead), in a region the global tiers mapped through this
                    // `Os`. The tier's free below writes its own records after this (none
                    // lie inside a block's bytes), and a purged page reads as zero, which
                    // the tiers never take for zeroed memory they did not purge themselves.
                    unsafe { env.os.purge(at, end - start, env.stats) };
                }
            }
        }
        // SAFETY: a block of hakmem's, given up, with its layout.
        unsafe { HakMem.dealloc(p, layout) }
    }
}

impl Default for Heap {
    fn default() -> Heap {
        Heap::new()
    }
}

impl Drop for Heap {
    fn drop(&mut self) {
        if let Some(ctx) = crate::context::ctx() {
            // SAFETY: the heap came from `new_private_heap` and is dropped once; nothing
            // borrows it any more, so no collection holds a block of it, and a free of one by
            // another thread has returned (the type's contract on raw pointers).
            unsafe { ctx.destroy_heap(self.heap) };
        }
    }
}

impl fmt::Debug for Heap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Heap")
            .field("id", &self.hot().id())
            .finish_non_exhaustive()
    }
}

// SAFETY: blocks are at least `layout.size()` bytes (the returned length), aligned to `layout.align()` (the route box picks a class
// whose blocks are so aligned, or the large tier), disjoint while live, and valid until freed
// or until the heap is dropped or reset, which the `&Heap` borrow keeps from happening while a
// collection holds one. `deallocate` takes back exactly what `allocate` gave.
unsafe impl Allocator for &Heap {
    #[inline]
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        self.allocate_impl(layout, false)
    }

    #[inline]
    fn allocate_zeroed(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        self.allocate_impl(layout, true)
    }

    #[inline]
    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        let p = ptr.as_ptr();
        const _: () = assert!(MAX_SLAB_ALIGN == MAX_SMALL);
        // Every layout of at most MAX_SMALL bytes aligned to at most MAX_SLAB_ALIGN routes to a
        // slab (route RT2): this heap's, found by mask and shift.
        if layout.size() | layout.align() <= MAX_SMALL {
            // SAFETY: a small block this heap handed out, live until now: its superslab is
            // live.
            let (_, slab) = unsafe { Superslab::slab_of_block(p) };
            let h = self.hot();
            if slab.owner() == h.id() {
                // SAFETY: a block of this heap's own slab, given up; this thread is the heap's
                // one user.
                return unsafe { h.free_own(slab, p) };
            }
        }
        if route(layout.size(), layout.align()) == Route::Large {
            // SAFETY: a big block of this heap's (`allocate` gave it from the global tiers),
            // given up.
            return unsafe { self.free_big(p, layout) };
        }
        // A small block of 64 KiB, or one whose slab is not this heap's, which `allocate`
        // never hands out: the global free routes either.
        // SAFETY: a block of hakmem's, given up, with its layout.
        unsafe { HakMem.dealloc(p, layout) }
    }

    #[inline]
    unsafe fn grow(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: forwarded (the trait's contract).
        unsafe { self.resize(ptr, old, new, false) }
    }

    #[inline]
    unsafe fn grow_zeroed(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: forwarded (the trait's contract).
        unsafe { self.resize(ptr, old, new, true) }
    }

    #[inline]
    unsafe fn shrink(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: forwarded (the trait's contract).
        unsafe { self.resize(ptr, old, new, false) }
    }
}

impl Heap {
    /// `grow`, `grow_zeroed` and `shrink`: in place when both layouts route to the same small
    /// class; otherwise a new block, the bytes copied, the old block freed.
    ///
    /// # Safety
    /// As [`Allocator::grow`]: `ptr` is a live block of this heap with layout `old`.
    unsafe fn resize(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
        zero: bool,
    ) -> Result<NonNull<[u8]>, AllocError> {
        if let Route::Small(c) = route(old.size(), old.align()) {
            if route(new.size(), new.align()) == Route::Small(c) {
                if zero && new.size() > old.size() {
                    // SAFETY: within the block (its class's size is at least `new.size()`).
                    unsafe {
                        ptr.as_ptr()
                            .add(old.size())
                            .write_bytes(0, new.size() - old.size())
                    };
                }
                return Ok(NonNull::slice_from_raw_parts(ptr, new.size()));
            }
        }
        let fresh = self.allocate_impl(new, zero)?;
        // SAFETY: both blocks are live and disjoint, each at least `min` bytes.
        unsafe {
            let min = old.size().min(new.size());
            core::ptr::copy_nonoverlapping(ptr.as_ptr(), fresh.as_ptr().cast::<u8>(), min);
            (&self).deallocate(ptr, old);
        }
        Ok(fresh)
    }
}

/// What a [`Heap`] holds, in the style of [`Stats`](crate::Stats): its live small blocks,
/// their bytes (by block size), and the bytes of its superslabs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct HeapStats {
    live_blocks: u64,
    live_bytes: u64,
    mapped_bytes: u64,
}

impl HeapStats {
    /// Small blocks handed out and not freed.
    pub fn live_blocks(&self) -> u64 {
        self.live_blocks
    }

    /// Their bytes, by block size (the class's, which may exceed the size asked for).
    pub fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    /// Bytes of the superslabs the heap owns (2 MiB each).
    pub fn mapped_bytes(&self) -> u64 {
        self.mapped_bytes
    }
}

impl fmt::Display for HeapStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "heap: {} live blocks, {} live bytes, {} bytes mapped",
            self.live_blocks, self.live_bytes, self.mapped_bytes
        )
    }
}
