//! Giving empty memory back: an empty slab to its superslab, an empty superslab kept or
//! released (H4), and the purge tick of free slabs' pages (H14).
use super::*;

impl Heap {
    /// Returns an empty slab to its superslab; true when that released the superslab.
    pub(crate) fn free_slab(
        &mut self,
        ss: &'static Superslab,
        class: SizeClass,
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
    /// (H14), and retires the parked heaps that are due (H18): what every slow path of the heap
    /// does first.
    #[inline]
    pub(crate) fn purge_if_due(&mut self) {
        self.ctx().lru.purge_if_due(&self.ctx().stats);
        self.ctx().expire_parked();
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
        let delay = self.ctx().slab_purge_delay;
        let mut waiting = false;
        let mut ss = self.owned;
        // SAFETY: owned superslabs are live and ours.
        while let Some(s) = unsafe { ss.as_ref() } {
            // SAFETY: ours.
            waiting |= unsafe { s.purge_free_slabs(&env, now, delay) }.1;
            // SAFETY: ours.
            ss = unsafe { s.heap_links().0 };
        }
        self.purge_due = if waiting {
            now.saturating_add(delay)
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
