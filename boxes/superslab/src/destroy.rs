//! The owner's destruction of a superslab whose blocks are all given up at once (SS19): every
//! in-use slab back to the superslab without a walk of its blocks.
use crate::sync::Ordering;
use crate::Superslab;

/// What [`Superslab::destroy_slabs`] found in one slab before it freed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DestroyedSlab {
    /// The slab's size class.
    pub class: usize,
    /// Blocks of it out of its free list (`used`: held by users, thread lists, caches or its
    /// remote stack, SS4).
    pub used: u32,
    /// Blocks of them that were on its remote stack (already freed by non-owners).
    pub remote: u32,
}

impl Superslab {
    /// Frees every in-use slab of the superslab at once (SS19), its blocks not walked: each
    /// slab's remote stack is taken with one swap (Acquire, so every push it holds happened
    /// before) and dropped, and `on_slab` hears what each slab held. With `check`, the slabs'
    /// check bitmaps are cleared. Afterwards every slab is free, as if each block had come
    /// back, and the caller, still the owner, gives up its reference.
    ///
    /// # Safety
    /// The caller owns the superslab (SS5) and every block of it is given up: no user, thread
    /// list or cache holds one any more, and every non-owner's free of one has returned (it
    /// happened before this call), so nothing but this call touches the slabs.
    pub unsafe fn destroy_slabs(&self, check: bool, mut on_slab: impl FnMut(DestroyedSlab)) {
        // SAFETY: the caller owns the superslab.
        for slab in unsafe { self.slabs_in_use() } {
            // SAFETY: as above; the slab is ours.
            let used = unsafe { slab.local() }.used;
            let remote = slab.remote.take_all().count;
            on_slab(DestroyedSlab {
                class: slab.class(),
                used,
                remote,
            });
            if check {
                self.check_clear(self.slab_index(slab));
            }
            // SAFETY: ours, and empty as the caller says: every block is given up.
            let _ = unsafe { self.free_slab(slab) };
        }
    }

    /// Clears slab `slab`'s check bitmap (`HAKMEM_CHECK`): none of its blocks is held.
    fn check_clear(&self, slab: usize) {
        for w in &self.check[slab] {
            w.store(0, Ordering::Release);
        }
    }
}
