//! The owned list of superslabs (H7) and its caches: the owned-slab cache (H8) and the
//! owned-superslab table (H16).
use super::*;

impl Heap {
    /// Links `ss` into the owned list: at the front if it has a free slab, else at the back
    /// (H7); it is owned from now on, so its slabs enter the owned cache (H8).
    pub(crate) fn link_owned(&mut self, ss: &Superslab, front: bool) {
        self.list_link(ss, front);
        self.owned_count += 1;
        self.owned_bases[owned_ss_slot(ss.base())] = ss.base();
        self.prof_mirror_base(owned_ss_slot(ss.base()), ss.base());
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
            self.owned_bases[slot] = NO_SS;
            self.prof_mirror_base(slot, NO_SS);
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
}
