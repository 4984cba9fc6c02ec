//! Refill: finding a slab with free blocks in the refill order, the per-class rings of slabs
//! (H3), the owned list and its cache (H7, H8), draining remote frees, and giving empty slabs
//! and superslabs back (H4).
use super::*;

impl Heap {
    /// Fills the cache for `class` halfway from slabs, in the refill order.
    ///
    /// # Safety
    /// This is a real heap (not an [`EmptyHeap`], H9) whose only user is the calling thread
    /// (its own thread, the holder of the late heap's lock, or the one retiring it), and
    /// `class` is below `CLASSES`.
    pub(crate) unsafe fn refill_cache(&mut self, class: usize) {
        let want = (self.cache.cap(class) / 2).max(1);
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
                    assert!(cache.push(class, b))
                })
            };
            if let Some(e) = bad {
                self.ctx().report(e);
            }
            got += n;
            self.ctx().stats.held_add(class, n as usize);
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
    /// (its own thread, the holder of the late heap's lock, or the one retiring it), and
    /// `class` is below `CLASSES`.
    pub(crate) unsafe fn refill_list(&mut self, class: usize, want: u32) {
        let want = want.min(self.sll.cap(class) - self.sll.len(class));
        let key = self.key;
        let link = self.sll.link_key();
        let (mut head, mut tail) = (null_mut::<u8>(), null_mut::<u8>());
        let mut got = 0;
        while got < want {
            // SAFETY: only the heap's thread gets here.
            let Some(slab) = (unsafe { self.slab_with_free(class) }) else {
                break;
            };
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
            self.ctx().stats.held_add(class, n as usize);
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
            unsafe { self.sll.splice(class, chain) };
        }
    }

    /// A slab of `class` with a free block, in the refill order (module docs).
    ///
    /// # Safety
    /// This is a real heap (not an [`EmptyHeap`], H9) whose only user is the calling thread
    /// (its own thread, the holder of the late heap's lock, or the one retiring it), and
    /// `class` is below `CLASSES`. Its id is used to adopt abandoned superslabs: no other
    /// running thread uses it.
    pub(crate) unsafe fn slab_with_free(&mut self, class: usize) -> Option<&'static SlabMeta> {
        // 1. Own slabs with free blocks.
        if let Some(s) = self.current(class) {
            return Some(s);
        }
        // 2. Remote frees, drained from a few own superslabs.
        self.collect_owned(SCAN_PER_REFILL);
        if let Some(s) = self.current(class) {
            return Some(s);
        }
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
        // 6. the OS.
        let bs = block_size_of(class) as u32;
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
            let slab = unsafe { s.alloc_slab(class as u32, bs) };
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
        let s = self.ctx().superslab_for(self.id)?;
        self.link_owned(s, true);
        // SAFETY: ours, fresh: every slab is free.
        let slab = unsafe { s.alloc_slab(class as u32, bs) }?;
        self.ring_insert(class, slab);
        Some(slab)
    }

    #[inline]
    pub(crate) fn current(&self, class: usize) -> Option<&'static SlabMeta> {
        // SAFETY: ring slabs are live and ours (H3).
        unsafe { self.current[class].as_ref() }
    }

    pub(crate) fn in_ring(slab: &SlabMeta) -> bool {
        // SAFETY: only called on slabs this heap owns.
        unsafe { !slab.local().next.is_null() }
    }

    pub(crate) fn ring_insert(&mut self, class: usize, slab: &SlabMeta) {
        let cur = self.current[class];
        // SAFETY: ring members are slabs this heap owns; only this thread touches their locals.
        unsafe {
            if cur.is_null() {
                slab.with_local(|l| {
                    l.next = slab;
                    l.prev = slab;
                });
                self.current[class] = slab;
            } else {
                let prev = (*cur).local().prev;
                slab.with_local(|l| {
                    l.next = cur;
                    l.prev = prev;
                });
                (*prev).with_local(|l| l.next = slab);
                (*cur).with_local(|l| l.prev = slab);
            }
        }
    }

    pub(crate) fn ring_remove(&mut self, class: usize, slab: &SlabMeta) {
        // SAFETY: as in ring_insert.
        unsafe {
            let l = slab.local();
            if l.next.is_null() {
                return;
            }
            if core::ptr::eq(l.next, slab) {
                self.current[class] = null();
            } else {
                (*l.prev).with_local(|p| p.next = l.next);
                (*l.next).with_local(|n| n.prev = l.prev);
                if core::ptr::eq(self.current[class], slab) {
                    self.current[class] = l.next;
                }
            }
            slab.with_local(|x| {
                x.next = null();
                x.prev = null();
            });
        }
    }

    /// Links `ss` into the owned list: at the front if it has a free slab, else at the back
    /// (H7); it is owned from now on, so its slabs enter the owned cache (H8).
    pub(crate) fn link_owned(&mut self, ss: &Superslab, front: bool) {
        self.list_link(ss, front);
        self.owned_count += 1;
        self.owned_bases[owned_ss_slot(ss.base())] = ss.base();
        for i in 0..SLABS {
            let base = ss.base() + i * SLAB_SIZE;
            self.owned_slabs[owned_slot(slab_number(base))] = ss.slab_of(base as *const u8);
        }
    }

    /// Moves `ss`, owned, to the front or the back of the owned list (H7); it stays owned, and
    /// the owned cache (H8) is left as it is.
    pub(crate) fn move_owned(&mut self, ss: &Superslab, front: bool) {
        self.list_unlink(ss);
        self.list_link(ss, front);
    }

    /// Links `ss` into the owned list's chain alone.
    fn list_link(&mut self, ss: &Superslab, front: bool) {
        // SAFETY: `ss` is now owned by this heap; the list's superslabs are too.
        unsafe {
            if front {
                ss.set_heap_links(self.owned, null());
                match self.owned.as_ref() {
                    Some(o) => o.set_heap_links(o.heap_links().0, ss),
                    None => self.owned_tail = ss,
                }
                self.owned = ss;
            } else {
                ss.set_heap_links(null(), self.owned_tail);
                match self.owned_tail.as_ref() {
                    Some(t) => t.set_heap_links(ss, t.heap_links().1),
                    None => self.owned = ss,
                }
                self.owned_tail = ss;
            }
        }
    }

    /// Takes `ss` out of the owned list and its slabs out of the owned cache (H8): it is no
    /// longer owned by this heap.
    pub(crate) fn unlink_owned(&mut self, ss: &Superslab) {
        self.list_unlink(ss);
        self.owned_count -= 1;
        let slot = owned_ss_slot(ss.base());
        if self.owned_bases[slot] == ss.base() {
            self.owned_bases[slot] = 0;
        }
        for i in 0..SLABS {
            let base = ss.base() + i * SLAB_SIZE;
            let slot = owned_slot(slab_number(base));
            if core::ptr::eq(self.owned_slabs[slot], ss.slab_of(base as *const u8)) {
                self.owned_slabs[slot] = EMPTY_SLOT;
            }
        }
    }

    /// Takes `ss` out of the owned list's chain alone (the rotating cursor moves past it).
    fn list_unlink(&mut self, ss: &Superslab) {
        // SAFETY: `ss` and its neighbours are owned by this heap.
        unsafe {
            let (next, prev) = ss.heap_links();
            match prev.as_ref() {
                Some(p) => p.set_heap_links(next, p.heap_links().1),
                None => self.owned = next,
            }
            match next.as_ref() {
                Some(n) => n.set_heap_links(n.heap_links().0, prev),
                None => self.owned_tail = prev,
            }
            if core::ptr::eq(self.cursor, ss) {
                self.cursor = next;
            }
            ss.set_heap_links(null(), null());
        }
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
            let class = slab.class();
            if drained != 0 {
                self.ctx().stats.held_sub(class, drained as usize);
            }
            // SAFETY: ours.
            let (empty, has_free) = unsafe { (slab.is_empty(), slab.has_free()) };
            if empty && !core::ptr::eq(self.current[class], slab) {
                if self.free_slab(ss, class, slab) {
                    return true;
                }
            } else if has_free && !Self::in_ring(slab) {
                self.ring_insert(class, slab);
            }
        }
        false
    }

    /// Returns an empty slab to its superslab; true when that released the superslab.
    pub(crate) fn free_slab(
        &mut self,
        ss: &'static Superslab,
        class: usize,
        slab: &SlabMeta,
    ) -> bool {
        self.ring_remove(class, slab);
        // SAFETY: ours and empty.
        let all_free = unsafe { ss.free_slab(slab) };
        if all_free && !self.keep_empty(ss) {
            self.unlink_owned(ss);
            // SAFETY: the owner's reference (H5: a heap holds one per owned superslab), given up
            // with the superslab, which just left the owned list.
            if unsafe { ss.unpin() } {
                // SAFETY: the last reference was ours.
                unsafe { self.ctx().release_superslab(ss) };
            }
            return true;
        }
        // Kept (H4) or with a free slab now: to the front (H7). The slab's pages go back at a
        // later purge tick unless it is taken again first (H14).
        self.move_owned(ss, true);
        self.arm_slab_purge();
        false
    }

    /// Schedules a purge tick of the free slabs (H14), if none is scheduled and purging is on.
    pub(crate) fn arm_slab_purge(&mut self) {
        let delay = self.ctx().slab_purge_delay;
        if self.purge_due == u64::MAX && delay != u64::MAX {
            self.purge_due = now_ns().saturating_add(delay);
        }
    }

    /// Runs what is due of the lru's purges and decay (lru C6) and of this heap's purge tick
    /// (H14): what every slow path of the heap does first.
    #[inline]
    pub(crate) fn purge_if_due(&mut self) {
        self.ctx().lru.purge_if_due(&self.ctx().stats);
        self.purge_slabs_if_due();
    }

    /// Runs the purge tick of the free slabs if it is due (H14): one load and compare when none
    /// is scheduled, and a clock read when one is.
    #[inline]
    fn purge_slabs_if_due(&mut self) {
        if self.purge_due == u64::MAX {
            return;
        }
        let now = now_ns();
        if now >= self.purge_due {
            self.purge_slabs(now);
        }
    }

    /// A purge tick (H14): every owned superslab gives back the pages of its slabs that have
    /// been free since the last tick; the next tick is due one delay on if any slab waits.
    #[cold]
    fn purge_slabs(&mut self, now: u64) {
        let env = self.ctx().env();
        let mut waiting = false;
        let mut ss = self.owned;
        // SAFETY: owned superslabs are live and ours.
        while let Some(s) = unsafe { ss.as_ref() } {
            // SAFETY: ours.
            waiting |= unsafe { s.purge_free_slabs(&env) }.1;
            // SAFETY: ours.
            ss = unsafe { s.heap_links().0 };
        }
        self.purge_due = if waiting {
            now.saturating_add(self.ctx().slab_purge_delay)
        } else {
            u64::MAX
        };
    }

    /// Whether the heap keeps `ss`, which has just become empty (H4): yes unless it already
    /// keeps another superslab that is still empty.
    pub(crate) fn keep_empty(&mut self, ss: &'static Superslab) -> bool {
        // SAFETY: a kept superslab is owned by this heap (it is released only by teardown, which
        // clears this first, or by `free_slab` when it is not the kept one).
        if let Some(k) = unsafe { self.kept_empty.as_ref() } {
            // SAFETY: ours.
            if !core::ptr::eq(k, ss) && unsafe { k.is_empty() } {
                return false;
            }
        }
        self.kept_empty = ss;
        true
    }
}
