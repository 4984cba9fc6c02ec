//! Check mode (H6): the per-slab bitmap that catches every double free.
use super::*;

/// Where a block's check-bitmap bit lives: `(slab index, 16-byte granule in the slab)`.
pub(crate) fn check_index(ss: &Superslab, p: *mut u8) -> (usize, usize) {
    let off = p as usize - ss.base();
    (off >> SLAB_SHIFT, (off & (SLAB_SIZE - 1)) >> 4)
}

impl Heap {
    /// Check mode: validates `p` against its slab and the bitmap, then returns it to the slab.
    ///
    /// # Safety
    /// This is a real heap (not an [`EmptyHeap`], H9) whose only user is the calling thread
    /// (its own thread, the holder of the late heap's lock, or the one retiring it), and
    /// `p` is a block of `class` of a slab this heap owns (so its superslab is live), which the
    /// caller gives up.
    pub(crate) unsafe fn return_checked(&mut self, class: SizeClass, p: *mut u8) {
        // SAFETY: `p` lies in a live superslab of ours.
        let ss = unsafe { Superslab::of(p) };
        let (s, g) = check_index(ss, p);
        if !ss.check_mark_freed(s, g) {
            self.ctx().report(Corrupt::DoubleFree(p as usize));
            return;
        }
        self.stats.on_free(class.index());
        self.return_to_slab(class, p);
    }
}
