//! Thread exit (H5): every block back, remote frees drained, empty superslabs released and the
//! rest abandoned.
use super::*;

impl Heap {
    /// Returns every block on the thread lists and in the cache to its slab, one run per slab,
    /// as a spill returns them (H11): a thread's exit and a private heap's collect.
    pub(crate) fn return_lists_and_cache(&mut self) {
        for class in SizeClass::all() {
            let chain = self.take_list(class, u32::MAX);
            if chain.len != 0 {
                self.return_chain(class, chain.head, chain.len);
            }
            let cached = self.cache.len(class.index());
            if cached != 0 {
                self.flush_cache(class, cached);
            }
        }
    }

    /// Everything back (H5): lists and cache to slabs, remote frees drained, empty slabs and
    /// superslabs released, the rest abandoned.
    ///
    /// # Safety
    /// This is a real heap (not an [`EmptyHeap`], H9), handed over by its thread, which never
    /// uses it again; nobody else uses it. Afterwards it owns nothing and must not be used but
    /// by [`Heap::init`] again.
    pub(crate) unsafe fn teardown(&mut self) {
        self.validate_if_checking();
        // Nothing stays on the profiler's holder (H22).
        self.prof_give_back();
        // Everything owned is released or abandoned below, the kept superslab too (H4, H5).
        self.kept_empty = null();
        self.return_lists_and_cache();
        self.current = [null(); CLASSES];
        while let Some(ss) = NonNull::new(self.owned as *mut Superslab) {
            // SAFETY: owned superslabs are live and ours.
            let ss: &'static Superslab = unsafe { &*ss.as_ptr() };
            // SAFETY: ours; the rings are dissolved (current is cleared above).
            for slab in unsafe { ss.slabs_in_use() } {
                // SAFETY: ours.
                unsafe {
                    slab.with_local(|l| {
                        l.next = null();
                        l.prev = null();
                    })
                };
            }
            let ctx = self.ctx();
            // SAFETY: ours.
            let empty = match unsafe { ss.collect(|c, n| ctx.stats.held_sub(c, n as usize)) } {
                Ok(e) => e,
                Err(e) => {
                    ctx.report(e);
                    false
                }
            };
            self.unlink_owned(ss);
            if empty {
                // SAFETY: the owner's reference, given up as the superslab leaves the heap.
                if unsafe { ss.unpin() } {
                    // SAFETY: the last reference was ours.
                    unsafe { ctx.release_superslab(ss) };
                }
            } else {
                // Slabs aged at a tick at least one purge delay ago give their pages back now;
                // the rest wait for an adopter's tick (H14).
                // SAFETY: ours until abandoned below.
                unsafe { ss.purge_free_slabs(&ctx.env(), now_ns(), ctx.slab_purge_delay) };
                ctx.stats.event(Event::Abandon, 0);
                // SAFETY: ours, and forgotten from here on.
                match unsafe { ss.abandon(&ctx.abandoned, &ctx.stats) } {
                    // SAFETY: emptied by abandon's last drain, and the last reference was ours.
                    Ok(true) => unsafe { ctx.release_superslab(ss) },
                    Ok(false) => {}
                    Err(e) => ctx.report(e),
                }
            }
        }
        self.cursor = null();
    }
}
