//! The owner's frees: the fast paths (H2, H8), the free key's confirmation (FK3), and spilling
//! a full thread list into the cache and the slabs.
use super::*;

impl Heap {
    /// Frees `p`, a block in `slab` of `ss` (H1, H2, FK3). The caller found both through the
    /// registry and checked `p` is 16-byte aligned.
    ///
    /// # Safety
    /// `p` is a block the caller holds and gives up; only the heap's thread calls this.
    #[inline(always)]
    pub unsafe fn free_small(&mut self, ss: &'static Superslab, slab: &SlabMeta, p: *mut u8) {
        if slab.owner() == self.id {
            // SAFETY: forwarded: the slab is ours.
            return unsafe { self.free_own(slab, p) };
        }
        let class = slab.class();
        debug_assert!(class < CLASSES);
        // SAFETY: forwarded.
        unsafe { self.free_remote(ss, slab, class, p) }
    }

    /// [`Heap::free_small`] for a block of a slab this heap owns (the caller compared the
    /// slab's owner with [`Heap::id_of`]): the Rust lane's free fast path (H2, FK3).
    ///
    /// # Safety
    /// `slab` is in use by this heap, `p` one of its blocks that the caller gives up; only the
    /// heap's thread calls this.
    #[inline(always)]
    pub unsafe fn free_own(&mut self, slab: &SlabMeta, p: *mut u8) {
        // SAFETY: our own slab.
        let (class, _) = unsafe { slab.class_and_carved_owned() };
        debug_assert!(class < CLASSES);
        let key = self.key;
        // SAFETY: `p` is a block of at least 16 bytes of our own slab, which the caller gives up.
        let keyed = unsafe { key_word(p) } == key;
        // SAFETY: a slab's class is written by `alloc_slab` from the route box's classes, all
        // below CLASSES, and cannot change while `p`, one of its blocks, is out; `p` is ours,
        // given up, and (FK3) not free.
        if !keyed && unsafe { self.sll.try_push_unchecked(class, p, key) } {
            // SAFETY: the class is below CLASSES (as above), and CLASSES < MAX_CLASSES (route).
            unsafe { self.stats.on_free_unchecked(class) };
            return;
        }
        // SAFETY: forwarded.
        unsafe { self.free_local_slow(class, p) }
    }

    /// The C free's fast path (H8): frees `p` when it is a block this heap handed out of a
    /// superslab in its owned cache, its thread list for the class has room, and the block does
    /// not carry the free key. False, having changed nothing, for anything else: a pointer that
    /// is not ours or not a block start, a block of another heap, a full list, a possible double
    /// free, check mode. The caller then takes the full path, which decides.
    ///
    /// `this` may be an [`EmptyHeap`]'s pointer (H9): its owned cache holds no superslab, so
    /// the result is false and nothing is written.
    ///
    /// # Safety
    /// `this` is a heap of the calling thread or an empty heap, and if `p` is a live block of
    /// this allocator, the caller gives it up. `p` may be any address: nothing is read through
    /// it before the cache says it lies in a live superslab of ours.
    #[inline(always)]
    pub unsafe fn try_free_owned(this: *mut Heap, p: *mut u8) -> bool {
        let base = p as usize & !(SLAB_SIZE - 1);
        let slot = owned_slot(base);
        // SAFETY: the index is masked below OWNED_CACHE; read through the raw pointer, as an
        // empty heap is shared (H9).
        let cached = unsafe { *(&raw const (*this).owned_cache).cast::<usize>().add(slot) };
        if cached != base {
            return false;
        }
        // SAFETY: a hit: `this` is a real heap (H9), this thread's, used by it alone.
        let h = unsafe { &mut *this };
        // SAFETY: the cache holds only slabs of superslabs this heap owns, live while owned
        // (H8), with their own metadata.
        let slab = unsafe {
            &**(&raw const (*this).owned_meta)
                .cast::<*const SlabMeta>()
                .add(slot)
        };
        // SAFETY: every slab of an owned superslab is this heap's to read as owner: an in-use
        // one is ours (H8), and a free one has carve mark 0, which no index is below.
        let (class, carved) = unsafe { slab.class_and_carved_owned() };
        // SAFETY: as above.
        if unsafe { slab.block_index(p) } >= carved {
            return false;
        }
        let key = h.key;
        // SAFETY: `p` is a block (at least 16 bytes) of our slab, handed out at some time.
        if unsafe { key_word(p) } == key {
            return false;
        }
        // SAFETY: an in-use slab's class is one of the route box's, below CLASSES; a block of
        // our own slab, given up by the caller, and (FK3) not free.
        if !unsafe { h.sll.try_push_unchecked(class, p, key) } {
            return false;
        }
        // SAFETY: CLASSES < MAX_CLASSES (route box).
        unsafe { h.stats.on_free_unchecked(class) };
        true
    }

    #[cold]
    #[inline(never)]
    pub(crate) unsafe fn free_local_slow(&mut self, class: usize, p: *mut u8) {
        // SAFETY: `p` is a block of at least 16 bytes the caller gives up.
        if unsafe { key_word(p) } == self.key && self.is_free_here(class, p) {
            self.ctx().report(Corrupt::DoubleFree(p as usize));
            return;
        }
        self.ctx().lru.purge_if_due(&self.ctx().stats);
        if self.ctx().check {
            // SAFETY: the caller gives `p` up; it lies in a live superslab of ours.
            unsafe { self.return_checked(class, p) };
            return;
        }
        self.spill(class);
        // SAFETY: the list has room now; `p` is ours and given up.
        unsafe { self.sll.push(class, p, self.key) };
        self.stats.on_free(class);
    }

    /// The cold confirmation of a key match (FK3): true when `p`, a block of our own `slab`, is
    /// on one of the free structures it could be on: the class's thread list, the cache, the
    /// slab's free list or its remote stack. False means the user's data matched the key.
    #[cold]
    #[inline(never)]
    pub(crate) fn is_free_here(&self, class: usize, p: *mut u8) -> bool {
        // SAFETY: `p` lies in a live superslab of ours (the caller found its slab owned by us).
        let (_, slab) = unsafe { Superslab::slab_of_block(p) };
        // SAFETY: the lists and the slab are ours; the remote stack is read within the slab,
        // which is mapped while it is ours.
        unsafe {
            self.sll.contains(class, p)
                || self.cache.contains(class, p)
                || slab.free_list_contains(p)
                || slab.remote_contains(p)
        }
    }

    /// Moves half a thread list into the cache, flushing the cache's oldest blocks to their
    /// slabs first if it has no room.
    pub(crate) fn spill(&mut self, class: usize) {
        let n = (self.sll.cap(class) / 2).max(1);
        if self.cache.room(class) < n {
            let flush = n.max(self.cache.cap(class) / 2);
            let mut batch = [null_mut(); 256];
            let mut k = 0;
            self.cache.drain_oldest(class, flush, |b| {
                batch[k] = b;
                k += 1;
            });
            for &b in &batch[..k] {
                self.return_to_slab(class, b);
            }
        }
        // SAFETY: the list holds free blocks of ours.
        let chain = unsafe { self.sll.take(class, n) };
        let mut b = chain.head;
        for _ in 0..chain.len {
            // SAFETY: a block of the chain, linked through its first word.
            let next = unsafe { hakmem_tls_sll::next(b) };
            if !self.cache.push(class, b) {
                self.return_to_slab(class, b);
            }
            b = next;
        }
    }

    /// Gives one block back to its slab's free list; validates it first.
    pub(crate) fn return_to_slab(&mut self, class: usize, b: *mut u8) {
        // SAFETY: blocks in our lists and cache lie in live superslabs we own (H1).
        let ss = unsafe { Superslab::of(b) };
        let slab = ss.slab_of(b);
        // SAFETY: ours.
        if !unsafe { slab.is_block(b) } {
            self.ctx().report(Corrupt::NotABlock(b as usize));
            return;
        }
        // SAFETY: ours, and the block is given up.
        match unsafe { slab.free_local(b) } {
            Ok(empty) => {
                self.ctx().stats.held_sub(class, 1);
                if empty && !core::ptr::eq(self.current[class], slab) {
                    self.free_slab(ss, class, slab);
                } else if !Self::in_ring(slab) {
                    self.ring_insert(class, slab);
                }
            }
            Err(e) => self.ctx().report(e),
        }
    }
}
