//! The owner's frees: the fast paths (H2, H8), the free key's confirmation (FK3), and spilling
//! a full thread list into the cache and the slabs.
use super::*;
use core::mem::MaybeUninit;

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

    /// [`Heap::free_small`] for a block of a slab this heap does not own (the caller compared
    /// the slab's owner with [`Heap::id_of`]): the non-owner's path, one CAS in the common case.
    ///
    /// # Safety
    /// `slab` is in `ss` and not this heap's; `p` is one of its blocks, which the caller gives
    /// up; only the heap's thread calls this.
    #[inline(always)]
    pub unsafe fn free_foreign(&mut self, ss: &'static Superslab, slab: &SlabMeta, p: *mut u8) {
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
        // SAFETY: a slab's class is written by `alloc_slab` from a `SizeClass`'s index, below
        // CLASSES (route RT5), and cannot change while `p`, one of its blocks, is out; `p` is
        // ours, given up, and (FK3) not free.
        if !keyed && unsafe { self.sll.try_push_unchecked(class, p, key) } {
            // The lists count the push (H13).
            return;
        }
        // SAFETY: forwarded.
        unsafe { self.free_local_slow(class, p) }
    }

    /// [`Heap::free_own`] for a block whose slab the owned cache (H8) did not hold (another
    /// owned superslab's slab with the same low byte had the entry): the slab takes the entry
    /// first, so the frees of its blocks that follow take the fast path (the last slab freed
    /// into wins, not only the last superslab linked).
    ///
    /// # Safety
    /// As [`Heap::free_own`].
    #[inline(always)]
    pub unsafe fn free_own_recached(&mut self, slab: &'static SlabMeta, p: *mut u8) {
        // SAFETY: a live slab's metadata, which starts with its number (SS13).
        let n = unsafe { SlabMeta::number_at(slab) };
        // H8: `slab` is in use by this heap, so its superslab is on the owned list.
        self.owned_slabs[owned_slot(n)] = slab;
        // SAFETY: forwarded.
        unsafe { self.free_own(slab, p) }
    }

    /// The C free's fast path (H8): frees `p` when it is a block this heap handed out of a
    /// superslab in its owned cache and the block does not carry the free key, onto its thread
    /// list for the class if that has room, else straight to its slab if a run of straight
    /// frees is under way (H20). False, having changed nothing, for anything else: a pointer
    /// that is not ours or not a block start, a block of another heap, a full list outside a
    /// run, a possible double free, check mode. The caller then takes the full path, which
    /// decides.
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
        // SAFETY: forwarded.
        let Some((_, class)) = (unsafe { Heap::owned_block(this, p) }) else {
            return false;
        };
        // SAFETY: a hit: `this` is a real heap (H9), this thread's, used by it alone.
        let h = unsafe { &mut *this };
        let key = h.key;
        // SAFETY: `p` is a block (at least 16 bytes) of our slab, handed out at some time.
        if unsafe { key_word(p) } == key {
            return false;
        }
        // SAFETY: an in-use slab's class is a `SizeClass`'s index, below CLASSES (route RT5,
        // `alloc_slab`); a block of our own slab, given up by the caller, and (FK3) not free.
        // The lists count the push (H13).
        if unsafe { h.sll.try_push_unchecked(class, p, key) } {
            return true;
        }
        // SAFETY: a block start of our own slab of this class (`owned_block`), given up, and
        // not carrying the key.
        unsafe { h.free_straight_cold(class, p) }
    }

    /// The slab of `p` and its class when `p` is a block this heap handed out of a superslab
    /// in its owned cache (H8): the owned-cache lookup of [`Heap::try_free_owned`] and
    /// [`Heap::owned_slab`]. `None` for anything else, any address included (nothing is read
    /// through `p`), and always for an [`EmptyHeap`] (H9).
    ///
    /// # Safety
    /// `this` is a heap of the calling thread or an empty heap.
    #[inline(always)]
    pub(crate) unsafe fn owned_block(
        this: *mut Heap,
        p: *mut u8,
    ) -> Option<(&'static SlabMeta, usize)> {
        let n = slab_number(p as usize);
        // SAFETY: the slot is below OWNED_CACHE; read through the raw pointer, as an empty heap
        // is shared (H9).
        let entry = unsafe {
            *(&raw const (*this).owned_slabs)
                .cast::<*const SlabMeta>()
                .add(owned_slot(n))
        };
        // SAFETY: every entry is `SlabMeta::NONE` or the metadata of a slab of a superslab this
        // heap owns, live while owned (H8).
        if unsafe { SlabMeta::number_at(entry) } != n {
            return None;
        }
        // SAFETY: a match, so not NONE (superslab SS13): a live slab's metadata, which stays
        // while its superslab is owned (and a block of it is out).
        let slab: &'static SlabMeta = unsafe { &*entry };
        // SAFETY: every slab of an owned superslab is this heap's to read as owner: an in-use
        // one is ours (H8), and a free one has carve mark 0, which no index is below.
        let (class, carved) = unsafe { slab.class_and_carved_owned() };
        // SAFETY: as above.
        if unsafe { slab.block_index(p) } >= carved {
            return None;
        }
        Some((slab, class))
    }

    /// The owner's slow free of `p`: a free in a run of straight frees (H20) goes to its slab
    /// here, with no slow-path event; anything else takes [`Heap::free_local_full`].
    ///
    /// # Safety
    /// This is a real heap (not an [`EmptyHeap`], H9) whose only user is the calling thread
    /// (its own thread, the holder of the late heap's lock, or the one retiring it), and
    /// `p` is the start of a block of a slab this heap owns (H1), of class index `class` (the
    /// slab's), which the caller gives up (a block that is free already is told apart by the
    /// key's confirmation, FK3, and reported, not pushed).
    #[cold]
    #[inline(never)]
    pub(crate) unsafe fn free_local_slow(&mut self, class: usize, p: *mut u8) {
        // A block carrying the key takes the full path, to its confirmation (FK3).
        // SAFETY: `p` is a block of at least 16 bytes the caller gives up; forwarded.
        if unsafe { key_word(p) } != self.key && unsafe { self.free_straight(class, p) } {
            return;
        }
        // SAFETY: forwarded.
        unsafe { self.free_local_full(class, p) }
    }

    /// Frees `p` straight to its slab when a run of straight frees is under way for its class
    /// and the class's list is full (H20); false, having changed nothing, otherwise.
    ///
    /// # Safety
    /// As [`Heap::free_local_slow`], and `p` does not carry the free key.
    #[inline(always)]
    unsafe fn free_straight(&mut self, class: usize, p: *mut u8) -> bool {
        if class >= CLASSES {
            return false;
        }
        let left = self.adapt.direct[class];
        if left == 0 || !self.sll.is_full(class) {
            return false;
        }
        self.adapt.direct[class] = left - 1;
        // SAFETY: forwarded from the caller; the class is the slab's.
        unsafe { self.free_direct(class, p) };
        true
    }

    /// [`Heap::free_straight`] off the C free's fast path ([`Heap::try_free_owned`]), whose
    /// list was full: a straight free there saves the full path's second look at the block.
    ///
    /// # Safety
    /// As [`Heap::free_straight`].
    #[cold]
    #[inline(never)]
    unsafe fn free_straight_cold(&mut self, class: usize, p: *mut u8) -> bool {
        // SAFETY: forwarded.
        unsafe { self.free_straight(class, p) }
    }

    /// The owner's slow free of `p` that is not a straight one: confirms a key match (FK3),
    /// returns it through the bitmap in check mode (H6), else counts the overflow (H11) and
    /// spills the full list, or starts a run of straight frees (H20), and pushes it.
    ///
    /// The class of an owned slab's block `p` that is being freed, or `None` once `p` is
    /// reported: the slab's class word names no class (a slab's class is a class's index,
    /// `alloc_slab`, so only corrupted metadata fails this), or `p` carries the free key and is
    /// free here already (FK3: a double free).
    ///
    /// # Safety
    /// `p` is a block of at least 16 bytes of a slab of this heap, given up by the caller.
    pub(crate) unsafe fn class_of_freed(&self, class: usize, p: *mut u8) -> Option<SizeClass> {
        let Some(class) = SizeClass::new(class) else {
            self.ctx().report(Corrupt::NotABlock(p as usize));
            return None;
        };
        // SAFETY: `p` is a block of at least 16 bytes (the caller's contract).
        if unsafe { key_word(p) } == self.key && self.is_free_here(class, p) {
            self.ctx().report(Corrupt::DoubleFree(p as usize));
            return None;
        }
        Some(class)
    }

    /// # Safety
    /// As [`Heap::free_local_slow`].
    #[cold]
    #[inline(never)]
    unsafe fn free_local_full(&mut self, class: usize, p: *mut u8) {
        // SAFETY: as this function's.
        let Some(class) = (unsafe { self.class_of_freed(class, p) }) else {
            return;
        };
        self.purge_if_due();
        if self.ctx().check {
            // SAFETY: the caller gives `p` up; it lies in a live superslab of ours.
            unsafe { self.return_checked(class, p) };
            return;
        }
        self.on_overflow(class);
        let i = class.index();
        if self.sll.is_full(i) {
            let n = self.spill_len(class);
            // The list's head is the block freed before this one: in another slab, the frees
            // come in no order, and a spill's runs would be single blocks.
            let scattered = (self.sll.head(i) as usize ^ p as usize) >> SLAB_SHIFT != 0;
            if scattered && self.cache.room(i) < n.min(self.cache.cap(i)) {
                // The spill would flush the cache's oldest blocks to their slabs: this block
                // and the class's next `n - 1` overflowing frees go to their slabs instead,
                // each once, while its line is warm (H20).
                self.adapt.direct[i] = (n - 1).min(u32::from(u16::MAX)) as u16;
                // SAFETY: forwarded from the caller.
                unsafe { self.free_direct(i, p) };
                return;
            }
            self.spill(class);
        }
        // SAFETY: the list has room now; `p` is ours and given up.
        unsafe { self.sll.push(i, p, self.key) };
    }

    /// The cold confirmation of a key match (FK3): true when `p`, a block of our own `slab`, is
    /// on one of the free structures it could be on: the class's thread list, the cache, the
    /// slab's free list or its remote stack. False means the user's data matched the key.
    #[cold]
    #[inline(never)]
    pub(crate) fn is_free_here(&self, class: SizeClass, p: *mut u8) -> bool {
        // SAFETY: `p` lies in a live superslab of ours (the caller found its slab owned by us).
        let (_, slab) = unsafe { Superslab::slab_of_block(p) };
        // SAFETY: the lists and the slab are ours; the remote stack is read within the slab,
        // which is mapped while it is ours.
        unsafe {
            self.sll.contains(class.index(), p, |n| {
                far_block_ok(&self.owned_slabs, &self.ctx().registry, self.id, class, n)
            }) || self.cache.contains(class.index(), p)
                || slab.free_list_contains(p)
                || slab.remote_contains(p)
        }
    }

    /// The blocks a spill of `class` moves: half its list's bound.
    #[inline]
    fn spill_len(&self, class: SizeClass) -> u32 {
        (self.sll.cap(class.index()) / 2).max(1)
    }

    /// Frees `p` straight to its slab's free list (H20): the owner's free when the class's
    /// list is full and a spill would send cached blocks to their slabs anyway. One write of
    /// the block (its link and key, FK1) and one update of the slab's counts; a slab that
    /// emptied or is off its ring takes [`Heap::after_direct`].
    ///
    /// # Safety
    /// As [`Heap::free_local_slow`], and `p` is not free (it does not carry the key, or FK3
    /// confirmed it is not on a free structure).
    #[inline(always)]
    unsafe fn free_direct(&mut self, class: usize, p: *mut u8) {
        // SAFETY: `p` lies in a live superslab we own (the caller's contract).
        let (ss, slab) = unsafe { Superslab::slab_of_block(p) };
        // SAFETY: ours, and the block is given up; the heap's keys are the process's (FK1,
        // H16: its link key is the superslab box's, set when the heap was made).
        match unsafe { slab.free_local_keyed(p, self.key, self.sll.link_key()) } {
            Some(used) => {
                // Not a push: the thread's counters count the free (H13).
                self.stats.on_free(class);
                self.ctx().stats.held_sub(class, 1);
                if used == 0 || !Self::in_ring(slab) {
                    self.after_direct(ss, class, slab, used == 0);
                }
            }
            None => Self::report_double_free(self.ctx, p),
        }
    }

    /// Reports the double free of `p` that a straight free found (H20), off its path.
    #[cold]
    #[inline(never)]
    fn report_double_free(ctx: *const Ctx, p: *mut u8) {
        // SAFETY: a real heap's context, which lives for the program.
        unsafe { &*ctx }.report(Corrupt::DoubleFree(p as usize));
    }

    /// A straight free's rare ends (H20): its slab emptied (H4) or was off its ring (H3).
    #[cold]
    #[inline(never)]
    fn after_direct(&mut self, ss: &'static Superslab, class: usize, slab: &SlabMeta, empty: bool) {
        let Some(class) = SizeClass::new(class) else {
            return;
        };
        if empty && !core::ptr::eq(self.current[class.index()], slab) {
            self.free_slab(ss, class, slab);
        } else if !Self::in_ring(slab) {
            self.ring_insert(class, slab);
        }
    }

    /// Moves half a thread list out: into the cache while it has room (flushing the cache's
    /// oldest blocks to their slabs first if it has too little), the rest straight to their
    /// slabs, one run per slab ([`Heap::return_chain`]).
    pub(crate) fn spill(&mut self, class: SizeClass) {
        let n = self.spill_len(class);
        let cache_cap = self.cache.cap(class.index());
        if self.cache.room(class.index()) < n.min(cache_cap) {
            self.flush_cache(class, n.max(cache_cap / 2).min(cache_cap));
        }
        let chain = self.take_list(class, n);
        self.dispose_chain(class, chain, true);
    }

    /// Returns the `n` oldest blocks of the cache for `class` to their slabs.
    pub(crate) fn flush_cache(&mut self, class: SizeClass, n: u32) {
        let mut left = n;
        // Not zeroed first: a flush often moves a few blocks, and 2 KiB of zeroes per call
        // were most of its cost for the classes whose caches hold a handful.
        let mut batch = [MaybeUninit::<*mut u8>::uninit(); RUN_BATCH];
        while left > 0 {
            let mut k = 0;
            let took = self
                .cache
                .drain_oldest(class.index(), left.min(RUN_BATCH as u32), |b| {
                    batch[k].write(b);
                    k += 1;
                });
            if took == 0 {
                break;
            }
            left -= took;
            // SAFETY: the first `k` entries were written just above.
            let blocks = unsafe { core::slice::from_raw_parts(batch.as_ptr().cast(), k) };
            self.return_blocks(class, blocks);
        }
    }

    /// Puts a chain taken off the class's thread list into the cache while it has room (if
    /// `to_cache`), and returns the rest to their slabs in runs ([`Heap::return_chain`]).
    pub(crate) fn dispose_chain(
        &mut self,
        class: SizeClass,
        chain: hakmem_tls_sll::Chain,
        to_cache: bool,
    ) {
        let mut b = chain.head;
        let mut left = chain.len;
        let key = self.sll.link_key();
        while to_cache && left > 0 && self.cache.room(class.index()) > 0 {
            // SAFETY: a block of the chain, linked through its first word (checked when the
            // chain was taken, H16).
            let next = unsafe { key.next(b) };
            self.cache.push(class.index(), b);
            b = next;
            left -= 1;
        }
        self.return_chain(class, b, left);
    }

    /// Gives `left` free blocks of `class`, linked from `b` through their first words (off this
    /// heap's thread list, so keyed: FK1), back to their slabs: each run of consecutive blocks
    /// of one slab is validated block by block (a block start below the carve mark: one
    /// multiplication) and spliced onto the slab's free list as it is linked, with one update of
    /// its counts, of its ring place (H3) and, if it emptied, one return of the slab (H4); the
    /// held count drops once for the whole chain.
    pub(crate) fn return_chain(&mut self, class: SizeClass, mut b: *mut u8, mut left: u32) {
        let mut returned = 0usize;
        let key = self.sll.link_key();
        while left > 0 {
            let chunk = b as usize & !(SLAB_SIZE - 1);
            // SAFETY: blocks on our lists lie in live superslabs we own (H1).
            let ss = unsafe { Superslab::of(b) };
            let slab = ss.slab_of(b);
            let carved = slab.carved();
            let (head, mut tail, mut n) = (b, b, 0u32);
            loop {
                // SAFETY: the slab is ours; `block_index` reads only its metadata.
                if unsafe { slab.block_index(b) } >= carved {
                    break;
                }
                tail = b;
                n += 1;
                left -= 1;
                if left == 0 {
                    break;
                }
                // SAFETY: a block of the chain; its link is read before the run is spliced
                // (which overwrites the tail's link).
                b = unsafe { key.next(tail) };
                if b as usize & !(SLAB_SIZE - 1) != chunk {
                    break;
                }
            }
            if n == 0 {
                // `b` is not a block: reported and skipped.
                self.ctx().report(Corrupt::NotABlock(b as usize));
                left -= 1;
                if left > 0 {
                    // SAFETY: linked through its first word, like every block of the chain.
                    b = unsafe { key.next(b) };
                }
                continue;
            }
            // SAFETY: ours; the run's blocks are given up, keyed (FK1), linked head..=tail.
            returned += unsafe { self.splice_run(ss, class, slab, head, tail, n) };
        }
        if returned != 0 {
            self.ctx().stats.held_sub(class.index(), returned);
        }
    }

    /// Splices a run of `n` blocks of `slab` (linked `head..=tail`) onto its free list, then
    /// gives the slab back if it emptied (H4) or puts it on its ring (H3); the blocks returned
    /// (0 when the slab refused the run, which is reported).
    ///
    /// # Safety
    /// `slab` is ours, in `ss`; the run's blocks are its own, given up, keyed (FK1), and linked
    /// `head..=tail`.
    unsafe fn splice_run(
        &mut self,
        ss: &'static Superslab,
        class: SizeClass,
        slab: &SlabMeta,
        head: *mut u8,
        tail: *mut u8,
        n: u32,
    ) -> usize {
        // SAFETY: forwarded from the caller.
        match unsafe { slab.free_local_run(head, tail, n) } {
            Ok(empty) => {
                if empty && !core::ptr::eq(self.current[class.index()], slab) {
                    self.free_slab(ss, class, slab);
                } else if !Self::in_ring(slab) {
                    self.ring_insert(class, slab);
                }
                n as usize
            }
            Err(e) => {
                self.ctx().report(e);
                0
            }
        }
    }

    /// Gives free blocks of `class` (off this heap's thread list or cache, so keyed: FK1) back
    /// to their slabs: each run of consecutive blocks of one slab is validated block by block
    /// (a block start below the carve mark: one multiplication) and spliced onto the slab's
    /// free list at once, with one update of its counts, of its ring place (H3) and, if it
    /// emptied, one return of the slab (H4); the held count drops once for the whole batch.
    pub(crate) fn return_blocks(&mut self, class: SizeClass, blocks: &[*mut u8]) {
        let mut returned = 0usize;
        let mut i = 0;
        while i < blocks.len() {
            let first = blocks[i];
            let chunk = first as usize & !(SLAB_SIZE - 1);
            // SAFETY: blocks in our lists and cache lie in live superslabs we own (H1).
            let ss = unsafe { Superslab::of(first) };
            let slab = ss.slab_of(first);
            let carved = slab.carved();
            let (mut head, mut tail, mut n) = (null_mut::<u8>(), null_mut::<u8>(), 0u32);
            while i < blocks.len() && blocks[i] as usize & !(SLAB_SIZE - 1) == chunk {
                let b = blocks[i];
                i += 1;
                // SAFETY: the slab is ours; `block_index` reads only its metadata.
                if unsafe { slab.block_index(b) } >= carved {
                    self.ctx().report(Corrupt::NotABlock(b as usize));
                    continue;
                }
                if n == 0 {
                    head = b;
                } else {
                    // SAFETY: `tail` is a free block of ours, given up, on no list now.
                    unsafe { self.sll.link_key().set_next(tail, b) };
                }
                tail = b;
                n += 1;
            }
            if n == 0 {
                continue;
            }
            // SAFETY: ours; the run's blocks are given up, keyed (FK1), linked head..=tail.
            returned += unsafe { self.splice_run(ss, class, slab, head, tail, n) };
        }
        if returned != 0 {
            self.ctx().stats.held_sub(class.index(), returned);
        }
    }

    /// Gives one block back to its slab's free list; validates it first.
    pub(crate) fn return_to_slab(&mut self, class: SizeClass, b: *mut u8) {
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
                self.ctx().stats.held_sub(class.index(), 1);
                if empty && !core::ptr::eq(self.current[class.index()], slab) {
                    self.free_slab(ss, class, slab);
                } else if !Self::in_ring(slab) {
                    self.ring_insert(class, slab);
                }
            }
            Err(e) => self.ctx().report(e),
        }
    }
}
