//! The per-class rings of slabs with free blocks (H3), and each class's current slab.
use super::*;

impl Heap {
    #[inline]
    pub(crate) fn current(&self, class: SizeClass) -> Option<&'static SlabMeta> {
        // SAFETY: ring slabs are live and ours (H3).
        unsafe { self.current[class.index()].as_ref() }
    }

    pub(crate) fn in_ring(slab: &SlabMeta) -> bool {
        // SAFETY: only called on slabs this heap owns.
        unsafe { !slab.local().next.is_null() }
    }

    pub(crate) fn ring_insert(&mut self, class: SizeClass, slab: &SlabMeta) {
        let cur = self.current[class.index()];
        // SAFETY: ring members are slabs this heap owns; only this thread touches their locals.
        unsafe {
            if cur.is_null() {
                slab.with_local(|l| {
                    l.next = slab;
                    l.prev = slab;
                });
                self.current[class.index()] = slab;
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

    pub(crate) fn ring_remove(&mut self, class: SizeClass, slab: &SlabMeta) {
        // SAFETY: as in ring_insert.
        unsafe {
            let l = slab.local();
            if l.next.is_null() {
                return;
            }
            if core::ptr::eq(l.next, slab) {
                self.current[class.index()] = null();
            } else {
                (*l.prev).with_local(|p| p.next = l.next);
                (*l.next).with_local(|n| n.prev = l.prev);
                if core::ptr::eq(self.current[class.index()], slab) {
                    self.current[class.index()] = l.next;
                }
            }
            slab.with_local(|x| {
                x.next = null();
                x.prev = null();
            });
        }
    }
}
