//! The allocation fast paths: a block from the thread list, or the cache, and the hand-out
//! (H2, FK2).
use super::*;
use crate::check::check_index;

impl Heap {
    /// A block of `class`, or null when the OS refuses memory (H2). Out of line: the
    /// allocators' fast paths are [`Heap::alloc_fast`] and [`Heap::alloc_tiny_fast`], and
    /// their callers come here after a miss, where a second inlined copy of the fast pop would
    /// only make their fast paths bigger.
    ///
    /// # Safety
    /// Only the heap's thread calls this.
    #[inline(never)]
    pub unsafe fn alloc(&mut self, class: SizeClass) -> *mut u8 {
        // SAFETY: forwarded.
        let p = unsafe { Heap::alloc_fast(self, class) };
        if !p.is_null() {
            return p;
        }
        // SAFETY: forwarded.
        unsafe { self.alloc_slow(class) }
    }

    /// A block of `class` from its thread list, or null when the list is empty or its head's
    /// link leads neither into the head's superslab nor into a superslab of the heap's
    /// owned-superslab table (nothing else is tried: the caller then takes [`Heap::alloc`]'s
    /// way, whose slow path pops such a head with every check, H16). The fast path of both
    /// lanes (H2).
    ///
    /// `this` may be an [`EmptyHeap`]'s pointer (H9): its lists are empty and its table holds
    /// no superslab, so the result is null and nothing is written.
    ///
    /// # Safety
    /// `this` is a heap of the calling thread or an empty heap.
    #[inline(always)]
    pub unsafe fn alloc_fast(this: *mut Heap, class: SizeClass) -> *mut u8 {
        // SAFETY: a class's index is below CLASSES (route RT5); the list holds free blocks this
        // heap owns (H1). Through the raw pointer: an empty heap is shared, and is only read
        // (H9), its table as well. The check reads the table only, never through the link
        // (H16). The lists count the pop themselves (tls_sll L6): the heap's allocations from
        // its lists (H13).
        unsafe {
            let bases = &(*this).owned_bases;
            Lists::pop_raw(&raw mut (*this).sll, class.index(), |n| {
                in_owned_superslab(bases, n)
            })
        }
    }

    /// [`Heap::alloc_fast`]'s miss, before a refill: null when the list is empty (an empty
    /// heap's always is, and is only read, H9); otherwise the head's link is the list's end,
    /// or leaves the owned-superslab table's superslabs (a table slot shared by two owned
    /// superslabs holds one of them), or is corrupted, and the checked pop
    /// ([`Heap::pop_list`]) decides and reports (H16).
    ///
    /// # Safety
    /// As [`Heap::alloc_fast`].
    #[cold]
    #[inline(never)]
    unsafe fn pop_far(this: *mut Heap, class: SizeClass) -> *mut u8 {
        // SAFETY: a read through the raw pointer (an empty heap is shared, H9).
        if unsafe { (*this).sll.is_empty(class.index()) } {
            return null_mut();
        }
        // SAFETY: a list with a block: a real heap (H9), this thread's, used by it alone.
        unsafe { &mut *this }.pop_list(class)
    }

    /// [`Heap::alloc_fast`] for a tiny size rather than a class: the class comes from the
    /// heap's own copy of the route box's table (H12). The C malloc's fast path: here a head
    /// the fast pop leaves on the list goes to a cold call (`Heap::pop_far`, H16), and null
    /// means the list is empty.
    ///
    /// # Safety
    /// `this` is a heap of the calling thread or an empty heap, and `size <= MAX_TINY`.
    #[inline(always)]
    pub unsafe fn alloc_tiny_fast(this: *mut Heap, size: usize) -> *mut u8 {
        debug_assert!(size <= MAX_TINY);
        // SAFETY: `size <= MAX_TINY` by the contract, within the table; a read through the raw
        // pointer (an empty heap is shared, H9), of a table nobody writes after `init` (H12).
        let class = unsafe { *(&raw const (*this).tiny).cast::<SizeClass>().add(size) };
        // SAFETY: forwarded.
        let p = unsafe { Heap::alloc_fast(this, class) };
        if !p.is_null() {
            return p;
        }
        // SAFETY: forwarded.
        unsafe { Heap::pop_far(this, class) }
    }

    /// A zeroed block of `class`: a never-carved block of a fresh slab needs no zeroing.
    ///
    /// # Safety
    /// Only the heap's thread calls this.
    pub unsafe fn alloc_zeroed(&mut self, class: SizeClass) -> *mut u8 {
        if self.sll.is_empty(class.index()) && self.cache.is_empty(class.index()) {
            if let Some(slab) = NonNull::new(self.current[class.index()] as *mut SlabMeta) {
                // SAFETY: current slabs are owned by this heap.
                let slab = unsafe { slab.as_ref() };
                // SAFETY: as above.
                if let Some(p) = unsafe { slab.carve_zeroed() } {
                    self.ctx().stats.held_add(class.index(), 1);
                    self.on_handed_out(class, p);
                    return p;
                }
            }
        }
        // SAFETY: forwarded.
        let p = unsafe { self.alloc(class) };
        if !p.is_null() {
            // SAFETY: a block of at least block_size bytes, ours.
            unsafe { p.write_bytes(0, class.size()) };
        }
        p
    }

    /// A block handed out other than by a pop from the lists (which count their pops, H13):
    /// counted, unkeyed (FK2) and, in check mode, marked held.
    pub(crate) fn on_handed_out(&mut self, class: SizeClass, p: *mut u8) {
        self.stats.on_alloc(class.index());
        self.on_popped(p);
    }

    /// A block going to the user: unkeyed (FK2) and, in check mode, marked held. Counted by
    /// the caller, or by the lists that it was popped from (H13).
    fn on_popped(&mut self, p: *mut u8) {
        // SAFETY: a block of at least 16 bytes, ours, going to the user: unkeyed (FK2).
        unsafe { set_key_word(p, 0) };
        if self.ctx().check {
            // SAFETY: `p` is a block of a live superslab of ours.
            let ss = unsafe { Superslab::of(p) };
            let (s, g) = check_index(ss, p);
            if !ss.check_mark_held(s, g) {
                self.ctx().report(Corrupt::DoubleFree(p as usize));
            }
        }
    }

    /// The slow path of an allocation of `class`: refills the thread list (or the cache) from
    /// slabs in the refill order and hands a block out; null when the OS refuses memory.
    ///
    /// # Safety
    /// This is a real heap (not an [`EmptyHeap`], H9) whose only user is the calling thread
    /// (its own thread, the holder of the late heap's lock, or the one retiring it).
    #[cold]
    #[inline(never)]
    pub(crate) unsafe fn alloc_slow(&mut self, class: SizeClass) -> *mut u8 {
        // A head the fast pop left on the list (its link leaves its superslab, H16).
        // SAFETY: this heap, on its own thread.
        let p = unsafe { Heap::pop_far(self, class) };
        if !p.is_null() {
            return p;
        }
        self.purge_if_due();
        let now = self.adapt_tick();
        self.mark_active(class, now);
        let cap = self.sll.cap(class.index());
        if self.cache.is_empty(class.index()) && cap > 0 {
            // Half a list's worth (the block handed out among them), straight from slabs onto the
            // list, one run per slab.
            // SAFETY: only the heap's thread gets here.
            unsafe { self.refill_list(class, (cap / 2).max(1)) };
            self.validate_class_if_checking(class);
            let p = self.pop_list(class);
            if !p.is_null() {
                self.on_popped(p);
            }
            return p;
        }
        if self.cache.is_empty(class.index()) {
            // SAFETY: only the heap's thread gets here.
            unsafe { self.refill_cache(class) };
            self.validate_class_if_checking(class);
        }
        let Some(p) = self.cache.pop(class.index()) else {
            return null_mut();
        };
        let batch = (cap / 2).min(self.cache.len(class.index()));
        for _ in 0..batch {
            let Some(b) = self.cache.pop(class.index()) else {
                break;
            };
            // SAFETY: a free block this heap owns, on no list; a move, not a free (H13).
            unsafe { self.sll.put(class.index(), b, self.key) };
        }
        self.on_handed_out(class, p);
        p
    }
}
