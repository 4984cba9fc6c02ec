//! Frees by a thread that does not own the block's slab: one CAS onto its remote stack (H1).
use super::*;
use crate::check::check_index;

impl Heap {
    /// The non-owner's check of a key match (FK3). A non-owner may read only one free structure
    /// of another heap, the slab's remote stack; the block may also sit on the owner's thread
    /// list, cache or free list, where a push would overwrite its link and corrupt them. So a
    /// match counts as a double free whether or not it is on the remote stack: the block carries
    /// the per-process random key only while it is free (FK1, FK2), unless its user copied the
    /// key out of freed memory.
    #[inline(always)]
    pub(crate) fn remote_double_free(p: *mut u8) -> bool {
        // SAFETY: `p` lies in a superslab the registry (or the caller's layout) found live, and
        // is a block of at least 16 bytes.
        unsafe { key_word(p) == free_key() }
    }

    /// The non-owner's double-free checks: the free key (FK3), and the bitmap in check mode
    /// (H6). False, with the free reported and dropped, when one of them says "already free".
    fn remote_free_allowed(ctx: &Ctx, ss: &Superslab, p: *mut u8) -> bool {
        if Self::remote_double_free(p) {
            ctx.report(Corrupt::DoubleFree(p as usize));
            return false;
        }
        if ctx.check {
            let (s, g) = check_index(ss, p);
            if !ss.check_mark_freed(s, g) {
                ctx.report(Corrupt::DoubleFree(p as usize));
                return false;
            }
        }
        true
    }

    /// Pushes `p` onto its slab's remote stack, and releases the superslab when that dropped
    /// its last reference.
    ///
    /// # Safety
    /// The caller gives up `p`, a block of `slab` in `ss`, which belongs to `ctx`.
    unsafe fn push_remote(ctx: &Ctx, ss: &'static Superslab, slab: &SlabMeta, p: *mut u8) {
        // SAFETY: forwarded.
        match unsafe { ss.free_remote(slab, p, &ctx.abandoned, &ctx.stats) } {
            // SAFETY: we dropped the last reference.
            Ok(true) => unsafe { ctx.release_superslab(ss) },
            Ok(false) => {}
            Err(e) => ctx.report(e),
        }
    }

    /// The non-owner's free of `p`, a block of `slab` in `ss` (of `class`) that another heap
    /// owns: the double-free check (FK3) and one CAS onto the slab's remote stack. Everything
    /// else (an abandoned superslab, to claim or to collect: H10; a key match; check mode) goes
    /// to [`Heap::free_remote_slow`], which decides as before.
    ///
    /// # Safety
    /// The caller gives up `p`, a block of `slab` in `ss`; only the heap's thread calls this.
    #[inline(never)]
    pub(crate) unsafe fn free_remote(
        &mut self,
        ss: &'static Superslab,
        slab: &SlabMeta,
        class: usize,
        p: *mut u8,
    ) {
        if slab.owner() == 0 || Self::remote_double_free(p) || self.ctx().check {
            // SAFETY: forwarded.
            return unsafe { self.free_remote_slow(ss, slab, class, p) };
        }
        self.stats.on_free(class);
        self.stats.on_remote_free();
        // The key was drawn before any block was linked, so `p`'s heap drew it; its draw stays
        // out of this path, which then makes no call but a tail call and saves no registers.
        if let Some(key) = hakmem_superslab::link_key_drawn() {
            // SAFETY: the caller gives up `p`, a block of `slab` in `ss`; the process's key.
            if unsafe { ss.try_free_remote_keyed(slab, p, key) } {
                return;
            }
        }
        // Flagged abandoned since the owner check: the full push pins and collects.
        // SAFETY: as above; the block was not pushed.
        unsafe { Self::push_remote_cold(self.ctx(), ss, slab, p) }
    }

    /// [`Heap::push_remote`] out of line, for [`Heap::free_remote`]'s rare case: a tail call,
    /// so that the common case (one CAS) saves no registers for it.
    ///
    /// # Safety
    /// As [`Heap::push_remote`].
    #[cold]
    #[inline(never)]
    unsafe fn push_remote_cold(ctx: &Ctx, ss: &'static Superslab, slab: &SlabMeta, p: *mut u8) {
        // SAFETY: forwarded.
        unsafe { Self::push_remote(ctx, ss, slab, p) }
    }

    /// [`Heap::free_remote`]'s rare cases: an abandoned superslab (claimed, H10, or pushed to
    /// and collected), a key match (reported: FK3), check mode (the bitmap: H6).
    ///
    /// # Safety
    /// As [`Heap::free_remote`].
    #[cold]
    #[inline(never)]
    unsafe fn free_remote_slow(
        &mut self,
        ss: &'static Superslab,
        slab: &SlabMeta,
        class: usize,
        p: *mut u8,
    ) {
        let ctx = self.ctx();
        // H10: a block of an in-use slab with no owner is a block of an abandoned superslab:
        // claim it, and free as its owner, unless this heap already owns CLAIM_BELOW superslabs.
        // A block carrying the free key is not claimed for (the non-owner's path reports it,
        // FK3), and a lost claim (another thread holds the superslab) takes the non-owner's path.
        if slab.owner() == 0
            && self.owned_count < CLAIM_BELOW
            && slab.carved() != 0
            && !Self::remote_double_free(p)
            && self.claim(ss)
            && slab.owner() == self.id
        {
            // SAFETY: forwarded; the slab is ours now, so this takes the owner's path.
            return unsafe { self.free_small(ss, slab, p) };
        }
        if !Self::remote_free_allowed(ctx, ss, p) {
            return;
        }
        self.stats.on_free(class);
        self.stats.on_remote_free();
        // SAFETY: the caller gives up `p`, a block of `slab` in `ss`.
        unsafe { Self::push_remote(ctx, ss, slab, p) }
    }

    /// Adoption by a freer (H10): takes `ss` off the abandoned list if it is still there, makes
    /// it this heap's (owned list and cache, H7, H8), and drains its remote frees, which clears
    /// the abandoned flags. False, having changed nothing, when another thread holds it.
    #[cold]
    #[inline(never)]
    fn claim(&mut self, ss: &'static Superslab) -> bool {
        let ctx = self.ctx();
        // SAFETY: this heap's id, used by this thread alone; the caller holds a block of `ss`,
        // which keeps it alive, and the context's list is the only one it can be on.
        if !unsafe { ctx.abandoned.claim(ss, self.id) } {
            return false;
        }
        ctx.stats.event(Event::AdoptByFree, 0);
        // SAFETY: claimed: ours.
        let has_free = unsafe { ss.has_free_slab() };
        self.link_owned(ss, has_free);
        self.arm_slab_purge();
        // The caller's block is out, so this cannot release the superslab (SS4).
        self.collect_one(ss);
        self.validate_superslab_if_checking(ss);
        true
    }

    /// Frees `p` from a thread that has no heap (or no longer has one): always the remote path.
    ///
    /// # Safety
    /// As for [`Heap::free_small`]; `ctx` is the context `ss` belongs to.
    pub unsafe fn free_orphan(ctx: &Ctx, ss: &'static Superslab, slab: &SlabMeta, p: *mut u8) {
        if !Self::remote_free_allowed(ctx, ss, p) {
            return;
        }
        ctx.stats.count_free(slab.class());
        ctx.stats.event(Event::RemoteFree, 0);
        // SAFETY: the caller gives up `p`, a block of `slab` in `ss`.
        unsafe { Self::push_remote(ctx, ss, slab, p) }
    }
}
