//! Refill: finding a slab with free blocks in the refill order, filling the thread list or the
//! cache from slabs, and draining remote frees.
use super::*;

impl Heap {
    /// Fills the cache for `class` halfway from slabs, in the refill order.
    ///
    /// # Safety
    /// This is a real heap (not an [`EmptyHeap`], H9) whose only user is the calling thread
    /// (its own thread, the holder of the late heap's lock, or the one retiring it).
    pub(crate) unsafe fn refill_cache(&mut self, class: SizeClass) {
        let want = (self.cache.cap(class.index()) / 2).max(1);
        let mut got = 0;
        while got < want {
            // SAFETY: only the heap's thread gets here.
            let Some(slab) = (unsafe { self.slab_with_free(class) }) else {
                break;
            };
            let (cache, key) = (&mut self.cache, self.key);
            // SAFETY: the slab is ours (H3); never-carved blocks get the key here (FK1).
            let (n, bad) = unsafe {
                slab.alloc_batch(want - got, |b| {
                    set_key_word(b, key);
                    assert!(cache.push(class.index(), b))
                })
            };
            if let Some(e) = bad {
                self.ctx().report(e);
            }
            got += n;
            self.ctx().stats.held_add(class.index(), n as usize);
            // SAFETY: as above.
            if unsafe { !slab.has_free() } {
                self.ring_remove(class, slab);
            }
        }
    }

    /// Puts up to `want` blocks of `class` (no more than the list has room for) straight from
    /// slabs onto its thread list, in the refill order, one run per slab. The blocks are linked
    /// into one chain in the order the slabs hand them out (free list first, then carved in
    /// address order) and spliced at once, so they are handed out in that order.
    ///
    /// # Safety
    /// This is a real heap (not an [`EmptyHeap`], H9) whose only user is the calling thread
    /// (its own thread, the holder of the late heap's lock, or the one retiring it).
    pub(crate) unsafe fn refill_list(&mut self, class: SizeClass, want: u32) {
        let want = want.min(self.sll.cap(class.index()) - self.sll.len(class.index()));
        let key = self.key;
        let link = self.sll.link_key();
        let (mut head, mut tail) = (null_mut::<u8>(), null_mut::<u8>());
        let mut got = 0;
        while got < want {
            // SAFETY: only the heap's thread gets here.
            let Some(slab) = (unsafe { self.slab_with_free(class) }) else {
                break;
            };
            // Several slabs' free lists walked at once when each holds its share (H23).
            if want - got >= SPREAD_MIN {
                // SAFETY: as this function's; the slab is one of `class` we own (H3).
                let spread =
                    unsafe { self.refill_spread(class, slab, want - got, &mut head, &mut tail) };
                if let Some(n) = spread {
                    got += n;
                    if n != 0 {
                        continue;
                    }
                }
            }
            // The free list's front first, as it is linked and keyed (SS9, FK1): nothing is
            // written to its blocks.
            let mut n = 0;
            // SAFETY: the slab is ours (H3).
            match unsafe { slab.take_free_chain(want - got) } {
                Ok(Some((h, t, k))) => {
                    if head.is_null() {
                        head = h;
                    } else {
                        // SAFETY: `tail` is a free block of the chain, ours.
                        unsafe { link.set_next(tail, h) };
                    }
                    tail = t;
                    n = k;
                }
                Ok(None) => {}
                Err(e) => self.ctx().report(e),
            }
            // Then never-carved blocks, if still wanted.
            if got + n < want {
                // SAFETY: the slab is ours (H3); each block it hands out is free, ours and on
                // no list: keyed here (FK1) and linked after the chain's tail.
                let (k, bad) = unsafe {
                    slab.alloc_batch(want - got - n, |b| {
                        set_key_word(b, key);
                        if head.is_null() {
                            head = b;
                        } else {
                            link.set_next(tail, b);
                        }
                        tail = b;
                    })
                };
                n += k;
                if let Some(e) = bad {
                    self.ctx().report(e);
                }
            }
            got += n;
            self.ctx().stats.held_add(class.index(), n as usize);
            // SAFETY: as above.
            if unsafe { !slab.has_free() } {
                self.ring_remove(class, slab);
            }
        }
        if got != 0 {
            let chain = hakmem_tls_sll::Chain {
                head,
                tail,
                len: got,
            };
            // SAFETY: free blocks of ours, keyed, linked head..=tail, on no list; the list has
            // room for them (L2: `want` was bounded by it).
            unsafe { self.sll.splice(class.index(), chain) };
        }
    }

    /// [`Heap::refill_list`]'s walk of [`WALKS`] free lists in step (H23): `slab`, the first in
    /// the refill order, and the slabs after it on its ring give `left` blocks in equal shares
    /// when each free list holds its share; their chains are linked after `tail` (or start it,
    /// at `head`), in ring order. Returns how many blocks it took, or `None` (having changed
    /// nothing) when the ring has fewer such slabs.
    ///
    /// # Safety
    /// As [`Heap::refill_list`], and `slab` is a slab of `class` this heap owns.
    unsafe fn refill_spread(
        &mut self,
        class: SizeClass,
        slab: &'static SlabMeta,
        left: u32,
        head: &mut *mut u8,
        tail: &mut *mut u8,
    ) -> Option<u32> {
        let mut slabs = [slab; WALKS];
        let mut want = [0u32; WALKS];
        for i in 0..WALKS {
            want[i] = (left + i as u32) / WALKS as u32;
            if i > 0 {
                // SAFETY: ours (H3); ring members are slabs this heap owns.
                slabs[i] = unsafe { slabs[i - 1].local().next.as_ref()? };
                if core::ptr::eq(slabs[i], slab) {
                    return None;
                }
            }
            // SAFETY: as above.
            if unsafe { slabs[i].local().free_len } < want[i] {
                return None;
            }
        }
        let link = self.sll.link_key();
        // SAFETY: different slabs (the ring's next ones, before it closes), ours.
        let chains = unsafe { SlabMeta::take_free_chains(slabs, want) };
        let mut got = 0;
        for (s, chain) in slabs.into_iter().zip(chains) {
            match chain {
                Ok(Some((h, t, k))) => {
                    if head.is_null() {
                        *head = h;
                    } else {
                        // SAFETY: `tail` is a free block of the chain, ours.
                        unsafe { link.set_next(*tail, h) };
                    }
                    *tail = t;
                    got += k;
                }
                Ok(None) => {}
                Err(e) => self.ctx().report(e),
            }
            // SAFETY: as above.
            if unsafe { !s.has_free() } {
                self.ring_remove(class, s);
            }
        }
        self.ctx().stats.held_add(class.index(), got as usize);
        Some(got)
    }

    /// A slab of `class` with a free block, in the refill order (module docs).
    ///
    /// # Safety
    /// This is a real heap (not an [`EmptyHeap`], H9) whose only user is the calling thread
    /// (its own thread, the holder of the late heap's lock, or the one retiring it). Its id is
    /// used to adopt abandoned superslabs: no other running thread uses it.
    pub(crate) unsafe fn slab_with_free(&mut self, class: SizeClass) -> Option<&'static SlabMeta> {
        // 1. Own slabs with free blocks.
        if let Some(s) = self.current(class) {
            return Some(s);
        }
        // 2. Remote frees, drained from a few own superslabs.
        self.collect_owned(SCAN_PER_REFILL);
        if let Some(s) = self.current(class) {
            return Some(s);
        }
        let bs = class.size() as u32;
        let s = loop {
            // 3. Abandoned superslabs, adopted until one serves: it has a slab of this class with
            // a free block, or a free slab for step 4. Adopting more would strand their free space
            // in this heap while other threads grow.
            // SAFETY: this heap's id, used by this thread alone.
            while let Some(ss) = unsafe { self.adopt_abandoned() } {
                self.ctx().stats.event(Event::Adopt, 0);
                // SAFETY: adopted: ours.
                let has_free = unsafe { ss.has_free_slab() };
                self.link_owned(ss, has_free);
                // Its free slabs may hold pages: they wait for this heap's purge tick (H14).
                self.arm_slab_purge();
                let released = self.collect_one(ss);
                if !released {
                    self.validate_superslab_if_checking(ss);
                }
                if let Some(s) = self.current(class) {
                    return Some(s);
                }
                // SAFETY: ours (still mapped: not released).
                if !released && unsafe { ss.has_free_slab() } {
                    break;
                }
            }
            // Before asking for a new superslab, drain more own superslabs.
            self.collect_owned(SCAN_BEFORE_GROWING);
            if let Some(s) = self.current(class) {
                return Some(s);
            }
            // 4. A new slab in an own superslab (H7: those with free slabs come first); 5. the lru;
            // 6. a parked heap no thread took since it was parked, retired (H18), and back to 3
            // for what it abandoned; 7. the OS.
            for _ in 0..4 {
                // SAFETY: owned superslabs are live and ours.
                let Some(s) = (unsafe { self.owned.as_ref() }) else {
                    break;
                };
                // SAFETY: ours.
                if unsafe { !s.has_free_slab() } {
                    break; // the first is full, so all are (H7)
                }
                // SAFETY: ours.
                let slab = unsafe { s.alloc_slab(class.index() as u32, bs) };
                // SAFETY: ours.
                if slab.is_none() || unsafe { !s.has_free_slab() } {
                    // Full now (or its only free slab, slab 0, is too short for this class).
                    self.move_owned(s, false);
                }
                if let Some(slab) = slab {
                    self.ring_insert(class, slab);
                    return Some(slab);
                }
            }
            let huge = self.huge_run < HUGE_RUN && self.fills_its_memory();
            self.huge_run = if huge { self.huge_run + 1 } else { 0 };
            if let Some(s) = self.ctx().superslab_from_lru(self.id, huge) {
                break s;
            }
            // A private heap adopts nothing (H17): a retirement would not serve it.
            if self.private || !self.ctx().retire_unclaimed_parked() {
                break self.ctx().superslab_from_os(self.id, huge)?;
            }
        };
        self.link_owned(s, true);
        // SAFETY: ours, fresh: every slab is free.
        let slab = unsafe { s.alloc_slab(class.index() as u32, bs) }?;
        self.ring_insert(class, slab);
        Some(slab)
    }

    /// True when the heap's next superslab is to be advised for huge pages (HG1): it owns at
    /// least [`HUGE_AFTER`] superslabs ([`HUGE_AFTER_PRIVATE`] for a private heap), and the
    /// most recently filled of them (at most [`HUGE_SAMPLE`], from the back of the owned list,
    /// where a superslab goes when it fills, H7) that are served in base pages have at least 7/8
    /// of their bytes touched; false when none of them is.
    pub(crate) fn fills_its_memory(&self) -> bool {
        let after = if self.private {
            HUGE_AFTER_PRIVATE
        } else {
            HUGE_AFTER
        };
        if self.owned_count < after {
            return false;
        }
        let os = self.ctx().os;
        let (mut touched, mut n, mut read, mut ss) = (0, 0, 0, self.owned_tail);
        while read < HUGE_SAMPLE {
            // SAFETY: owned superslabs are live and ours.
            let Some(s) = (unsafe { ss.as_ref() }) else {
                break;
            };
            read += 1;
            // SAFETY: ours; the region is a mapping of the context's `Os`. An advised
            // superslab is resident whole: it says nothing.
            unsafe {
                ss = s.heap_links().1;
                if s.is_huge() {
                    continue;
                }
                let base = NonNull::new(s.base() as *mut u8).expect("never at 0");
                touched += os
                    .resident(base, SS_SIZE)
                    .unwrap_or_else(|| s.carved_bytes());
            }
            n += 1;
        }
        n != 0 && touched * 8 >= n * SS_SIZE * 7
    }

    /// Drains remote frees from up to `n` own superslabs, rotating, so every one is visited.
    /// Bounded by the number owned, since collecting may release the superslab it started at.
    /// A superslab whose remote hint is not set (SS15 in hakmem-superslab) has nothing to drain
    /// and is passed over after one load, so a heap with no remote frees pays next to nothing.
    pub(crate) fn collect_owned(&mut self, n: usize) {
        let mut left = n.min(self.owned_count);
        let mut ss = if self.cursor.is_null() {
            self.owned
        } else {
            self.cursor
        };
        while left > 0 {
            // SAFETY: owned superslabs are live and ours.
            let Some(s) = (unsafe { ss.as_ref() }) else {
                break;
            };
            // SAFETY: ours. Read before collecting, which may unlink `s` (never `next`).
            let next = unsafe { s.heap_links().0 };
            // SAFETY: ours; a take is followed by the drain of every in-use slab.
            if unsafe { s.take_remote_hint() } {
                self.collect_one(s);
            }
            left -= 1;
            ss = if next.is_null() { self.owned } else { next };
        }
        self.cursor = ss;
    }

    /// Drains the remote stacks of `ss`'s slabs into their free lists; fixes rings; gives back
    /// empty slabs and, when all are empty, the superslab (H3, H4). True when `ss` was released
    /// (it must not be touched again).
    pub(crate) fn collect_one(&mut self, ss: &'static Superslab) -> bool {
        // SAFETY: `ss` is owned by this heap.
        for slab in unsafe { ss.slabs_in_use() } {
            // SAFETY: ours.
            let drained = match unsafe { slab.drain_remote() } {
                Ok(n) => n,
                Err(e) => {
                    self.ctx().report(e);
                    continue;
                }
            };
            // A slab's class is a class's index (`alloc_slab`): only a corrupted metadata
            // word fails this, and that slab is left as it is.
            let Some(class) = SizeClass::new(slab.class()) else {
                continue;
            };
            if drained != 0 {
                self.ctx().stats.held_sub(class.index(), drained as usize);
            }
            // SAFETY: ours.
            let (empty, has_free) = unsafe { (slab.is_empty(), slab.has_free()) };
            if empty && !core::ptr::eq(self.current[class.index()], slab) {
                if self.free_slab(ss, class, slab) {
                    return true;
                }
            } else if has_free && !Self::in_ring(slab) {
                self.ring_insert(class, slab);
            }
        }
        false
    }
}
