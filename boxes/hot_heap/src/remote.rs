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

    #[cold]
    #[inline(never)]
    pub(crate) unsafe fn free_remote(
        &mut self,
        ss: &'static Superslab,
        slab: &SlabMeta,
        class: usize,
        p: *mut u8,
    ) {
        let ctx = self.ctx();
        if !Self::remote_free_allowed(ctx, ss, p) {
            return;
        }
        self.stats.on_free(class);
        self.stats.on_remote_free();
        // SAFETY: the caller gives up `p`, a block of `slab` in `ss`.
        unsafe { Self::push_remote(ctx, ss, slab, p) }
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
