//! Private heaps (H17): heaps held as values by their users rather than by a thread, emptied
//! and destroyed whole.
use super::*;
use hakmem_superslab::DestroyedSlab;

/// What a private heap holds ([`Heap::usage`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Blocks handed out and not freed (through the heap, or by anyone through the remote
    /// path).
    pub live_blocks: u64,
    /// Their bytes, counted by block size (the class's, not the size asked for).
    pub live_bytes: u64,
    /// Bytes of the superslabs the heap owns.
    pub mapped_bytes: u64,
}

impl Ctx {
    /// A private heap (H17): a heap like a thread's, whose user holds it as a value, moves it
    /// between threads (one at a time) and ends it with [`Ctx::destroy_heap`]. It never adopts
    /// an abandoned superslab, so every block of its superslabs is one it handed out, and it
    /// is never reaped (its tag is 0). `None` when the OS refuses memory.
    pub fn new_private_heap(&'static self) -> Option<NonNull<Heap>> {
        let heap = self.new_heap()?;
        // SAFETY: just made, ours alone.
        unsafe { (*heap.as_ptr()).private = true };
        Some(heap)
    }

    /// Destroys a private heap (H17): every superslab it owns goes back at once, its blocks not
    /// walked ([`Superslab::destroy_slabs`]); its counts are merged as a retired heap's, with
    /// every block still out counted as freed; the heap's memory is kept for the next
    /// [`Ctx::new_heap`].
    ///
    /// # Safety
    /// `heap` came from [`Ctx::new_private_heap`] and is not destroyed yet; nobody uses it
    /// again; and every block it handed out is given up: no user holds one, and every free of
    /// one by another thread has returned (happened before this call).
    pub unsafe fn destroy_heap(&self, heap: NonNull<Heap>) {
        let h = heap.as_ptr();
        let mut lists = [0u32; CLASSES];
        self.heaps.with(|_| {
            // SAFETY: ours, handed over; under the lock, as a snapshot reads the list counts
            // (H13): folded into the heap's counters once.
            unsafe {
                (*h).fold_list_counts();
                for (c, n) in lists.iter_mut().enumerate() {
                    *n = (*h).sll.len(c);
                }
            }
        });
        // SAFETY: the caller hands the heap over, with every block given up.
        unsafe { (*h).destroy(&lists) };
        self.heaps.with(|l| {
            // SAFETY: under the lock; `h` and its neighbours are on the live list.
            unsafe {
                self.stats.merge(&(*h).stats);
                Self::unlink_live(l, h);
                (*h).next = l.free;
                (*h).id = 0;
                (*h).tag = 0;
                (*h).private = false;
            }
            l.free = h;
            l.live_count -= 1;
        });
    }
}

impl Heap {
    /// True for a private heap (H17).
    pub fn is_private(&self) -> bool {
        self.private
    }

    /// An abandoned superslab for refill step 3, or `None`: a private heap adopts none (H17).
    ///
    /// # Safety
    /// As [`hakmem_superslab::AbandonedList::adopt`]: this heap's id is used by this thread
    /// alone.
    #[inline]
    pub(crate) unsafe fn adopt_abandoned(&self) -> Option<&'static Superslab> {
        if self.private {
            return None;
        }
        // SAFETY: forwarded.
        unsafe { self.ctx().abandoned.adopt(self.id) }
    }

    /// The body of [`Ctx::destroy_heap`]: the lists (whose lengths are `lists`) and the cache
    /// are forgotten, and every owned superslab is unlinked, its slabs freed without a walk,
    /// and released. The blocks users held are counted as freed by this heap.
    ///
    /// # Safety
    /// As [`Ctx::destroy_heap`].
    unsafe fn destroy(&mut self, lists: &[u32; CLASSES]) {
        let ctx = self.ctx();
        // Blocks of each class out of their slabs that no user holds: on the lists, in the
        // cache, on remote stacks (the last are added per slab below).
        let mut not_held = [0u64; CLASSES];
        for (c, n) in not_held.iter_mut().enumerate() {
            let cached = self.cache.len(c);
            if cached != 0 {
                self.cache.drain_oldest(c, cached, |_| {});
            }
            *n = u64::from(lists[c]) + u64::from(cached);
        }
        let mut out = [0u64; CLASSES];
        self.kept_empty = null();
        self.current = [null(); CLASSES];
        self.purge_due = u64::MAX;
        while let Some(ss) = NonNull::new(self.owned as *mut Superslab) {
            // SAFETY: owned superslabs are live and ours.
            let ss: &'static Superslab = unsafe { &*ss.as_ptr() };
            self.unlink_owned(ss);
            let on_slab = |d: DestroyedSlab| {
                ctx.stats.held_sub(d.class, d.used as usize);
                out[d.class] += u64::from(d.used);
                // The remote frees were counted by their freers.
                #[cfg(not(hakmem_seeded_bug = "destroy_skips_remote"))]
                {
                    not_held[d.class] += u64::from(d.remote);
                }
            };
            // SAFETY: ours; the caller gives every block up (every remote free returned).
            unsafe { ss.destroy_slabs(ctx.check, on_slab) };
            // SAFETY: the owner's reference, given up; nobody else pins a superslab that was
            // never abandoned, but if someone did, their unpin releases it.
            if unsafe { ss.unpin() } {
                // SAFETY: the last reference was ours.
                unsafe { ctx.release_superslab(ss) };
            }
        }
        self.cursor = null();
        for c in 0..CLASSES {
            let freed = out[c].saturating_sub(not_held[c]);
            if freed != 0 {
                self.stats.add_counts(c, 0, freed);
            }
        }
    }

    /// What the heap holds (H17): the remote frees waiting for it are drained first, so they
    /// count as freed.
    ///
    /// # Safety
    /// A real heap (H9), used by the calling thread alone.
    pub unsafe fn usage(&mut self) -> Usage {
        self.drain_owned();
        let mut u = Usage {
            mapped_bytes: (self.owned_count * SS_SIZE) as u64,
            ..Usage::default()
        };
        let mut ss = self.owned;
        // SAFETY: owned superslabs are live and ours.
        while let Some(s) = unsafe { ss.as_ref() } {
            // SAFETY: ours.
            for slab in unsafe { s.slabs_in_use() } {
                // SAFETY: ours.
                let l = unsafe { slab.local() };
                u.live_blocks += u64::from(l.used);
                u.live_bytes += u64::from(l.used) * u64::from(l.block_size);
            }
            // SAFETY: ours.
            ss = unsafe { s.heap_links().0 };
        }
        for c in SizeClass::all() {
            let free = u64::from(self.sll.len(c.index())) + u64::from(self.cache.len(c.index()));
            // Saturating: after a corruption report the counts may disagree; they never wrap.
            u.live_blocks = u.live_blocks.saturating_sub(free);
            u.live_bytes = u.live_bytes.saturating_sub(free * c.size() as u64);
        }
        u
    }

    /// Drains the remote frees of every owned superslab whose remote hint is set (SS15), each
    /// visited once: a collect moves a superslab to the front of the list or releases it, so
    /// its successor is read first.
    fn drain_owned(&mut self) {
        let mut ss = self.owned;
        // SAFETY: owned superslabs are live and ours.
        while let Some(s) = unsafe { ss.as_ref() } {
            // SAFETY: ours; read before the collect, which may move or release `s`.
            let next = unsafe { s.heap_links().0 };
            // SAFETY: ours; a take is followed by the drain of every in-use slab.
            if unsafe { s.take_remote_hint() } {
                self.collect_one(s);
            }
            ss = next;
        }
    }

    /// Gives back what a private heap keeps beyond its live blocks (H17): every block on its
    /// lists and in its cache returns to its slab, remote frees are drained, empty slabs go back
    /// to their superslabs and empty superslabs to the lru (the one H4 keeps included).
    ///
    /// # Safety
    /// A real heap (H9), used by the calling thread alone.
    pub unsafe fn collect_all(&mut self) {
        self.return_lists_and_cache();
        self.drain_owned();
        // The current slabs that are empty, and then the kept superslab.
        for class in SizeClass::all() {
            if let Some(slab) = self.current(class) {
                // SAFETY: ours.
                if unsafe { slab.is_empty() } {
                    // SAFETY: a slab of ours lies in a live superslab of ours.
                    let ss = unsafe { Superslab::of(slab.local().start) };
                    self.free_slab(ss, class, slab);
                }
            }
        }
        // SAFETY: a kept superslab is owned by this heap (H4).
        if let Some(k) = unsafe { self.kept_empty.as_ref() } {
            self.kept_empty = null();
            // SAFETY: ours.
            if unsafe { k.is_empty() } {
                self.unlink_owned(k);
                // SAFETY: the owner's reference, given up with the superslab.
                if unsafe { k.unpin() } {
                    // SAFETY: the last reference was ours.
                    unsafe { self.ctx().release_superslab(k) };
                }
            }
        }
        self.ctx().lru.purge_if_due(&self.ctx().stats);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    fn ctx(chunks: usize) -> &'static Ctx {
        crate::test_ctx(chunks, false, |c| panic!("corruption: {c:?}"))
    }

    /// Frees `p`, a block of `ctx`, from a thread with no heap (the remote path).
    ///
    /// # Safety
    /// `p` is a live small block of `ctx`, given up.
    unsafe fn free_remote(ctx: &Ctx, p: *mut u8) {
        // SAFETY: a live block of ours.
        match unsafe { classify(&ctx.registry, p) } {
            // SAFETY: given up by the caller.
            PtrRoute::Small(ss, slab) => unsafe { Heap::free_orphan(ctx, ss, slab, p) },
            _ => panic!("not a small block"),
        }
    }

    #[test]
    fn destroy_gives_back_every_superslab_and_counts_every_block_freed() {
        let ctx = ctx(16);
        let heap = ctx.new_private_heap().unwrap();
        let h = heap.as_ptr();
        let mut blocks = Vec::new();
        for i in 0..30_000usize {
            let class = class_of(16 + (i % 40) * 16).unwrap();
            // SAFETY: this thread is the heap's one user.
            let p = unsafe { (*h).alloc(class) };
            assert!(!p.is_null());
            blocks.push(p as usize);
        }
        // Some freed by the owner (onto its lists and cache), some remotely (onto the stacks).
        for &p in blocks.iter().step_by(5) {
            // SAFETY: a live block of the heap, given up; this thread is its one user.
            unsafe {
                let (ss, slab) = Superslab::slab_of_block(p as *mut u8);
                (*h).free_small(ss, slab, p as *mut u8);
            }
        }
        for &p in blocks.iter().skip(1).step_by(5) {
            // SAFETY: a live block, given up once.
            unsafe { free_remote(ctx, p as *mut u8) };
        }
        // SAFETY: this thread is the heap's one user.
        let u = unsafe { (*h).usage() };
        assert_eq!(u.live_blocks, 18_000);
        assert!(u.mapped_bytes >= SS_SIZE as u64);
        // SAFETY: every block is given up (the rest are dropped with the heap).
        unsafe { ctx.destroy_heap(heap) };
        let s = ctx.snapshot();
        for c in 0..CLASSES {
            assert_eq!(s.live(c), 0, "class {c}: every block counted freed once");
            assert_eq!(s.held(c), 0, "class {c}: every block back in its slab");
        }
        assert_eq!(
            s.count(Event::SsCreated),
            s.count(Event::SsCached),
            "every superslab went back to the lru"
        );
        assert_eq!(ctx.live_heaps(), 0);
        // The next heap reuses the memory: every block distinct.
        let heap = ctx.new_private_heap().unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20_000 {
            // SAFETY: this thread is the heap's one user.
            let p = unsafe { (*heap.as_ptr()).alloc(class_of(64).unwrap()) };
            assert!(seen.insert(p as usize));
        }
        // SAFETY: every block is given up.
        unsafe { ctx.destroy_heap(heap) };
    }

    #[test]
    fn a_private_heap_adopts_no_abandoned_superslab() {
        let ctx = ctx(8);
        let class = class_of(32).unwrap();
        let thread = ctx.new_heap().unwrap();
        // SAFETY: this thread is the heap's one user; it exits (is retired) with a block out.
        let kept = unsafe { (*thread.as_ptr()).alloc(class) };
        // SAFETY: as above.
        unsafe { ctx.retire_heap(thread) };
        assert_eq!(ctx.abandoned.len(), 1);
        let heap = ctx.new_private_heap().unwrap();
        // SAFETY: this thread is the heap's one user.
        let p = unsafe { (*heap.as_ptr()).alloc(class) };
        assert_ne!(p as usize & !(SS_SIZE - 1), kept as usize & !(SS_SIZE - 1));
        assert_eq!(
            ctx.abandoned.len(),
            1,
            "still abandoned: not the private heap's"
        );
        // SAFETY: every block of the private heap is given up.
        unsafe { ctx.destroy_heap(heap) };
        // The abandoned superslab and its block are untouched.
        assert_eq!(ctx.abandoned.len(), 1);
        // SAFETY: a live block, given up once.
        unsafe { free_remote(ctx, kept) };
        assert_eq!(ctx.abandoned.len(), 0, "its last block freed, it went back");
    }

    #[test]
    fn collect_gives_back_empty_memory_and_keeps_live_blocks() {
        let ctx = ctx(8);
        let heap = ctx.new_private_heap().unwrap();
        // SAFETY: a fresh heap; this thread is its one user.
        let h = unsafe { &mut *heap.as_ptr() };
        let class = class_of(128).unwrap();
        let blocks: Vec<usize> = (0..40_000)
            // SAFETY: this thread is the heap's one user.
            .map(|_| unsafe { h.alloc(class) } as usize)
            .collect();
        let keep = blocks[12_345];
        for &p in &blocks {
            if p != keep {
                // SAFETY: a live block of the heap, given up.
                unsafe {
                    let (ss, slab) = Superslab::slab_of_block(p as *mut u8);
                    h.free_small(ss, slab, p as *mut u8);
                }
            }
        }
        // SAFETY: as above.
        unsafe { h.collect_all() };
        // SAFETY: as above.
        let u = unsafe { h.usage() };
        assert_eq!((u.live_blocks, u.mapped_bytes), (1, SS_SIZE as u64));
        // SAFETY: every block is given up.
        unsafe { ctx.destroy_heap(heap) };
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    //! Loom model of a private heap's destruction (H17) against a remote free still on a
    //! slab's remote stack. Run: `RUSTFLAGS="--cfg loom" cargo test -p hakmem-hot-heap`.
    extern crate std;
    use super::*;
    use crate::loom_models::ctx;

    /// A private heap hands block `x` to another thread, which frees it through the remote
    /// path, while the heap's thread allocates and frees (its refill may or may not drain the
    /// push). After the freer's free returned (joined), the heap is destroyed with `x` either
    /// drained or still on its slab's remote stack, and `y` still live. Whatever the order:
    /// every block is counted freed exactly once (live 0, held 0), the superslab goes back to
    /// the lru exactly once, and a new heap that reuses it hands out distinct blocks, none
    /// of them twice (the stack's block is not drained into the new life). The seeded bug
    /// `destroy_skips_remote` counts the blocks on the remote stack as freed by the drop
    /// too: it is caught only when the destroy finds `x` still on the stack.
    #[test]
    fn destroy_against_a_remote_free_on_the_stack() {
        let mut model = loom::model::Builder::new();
        model.max_branches = 1 << 20;
        // The body runs on a thread of its own, with a stack big enough for the debug build's
        // validation at the refills (hot_heap `validate`), which the model thread's stack is not.
        model.check(|| {
            loom::thread::Builder::new()
                .stack_size(8 << 20)
                .spawn(body)
                .unwrap()
                .join()
                .unwrap();
        });
        fn body() {
            let ctx = ctx();
            let heap = ctx.new_private_heap().expect("arena has room");
            let h = heap.as_ptr();
            let class = SizeClass::new(0).unwrap();
            // SAFETY (the heap's calls): this thread is the heap's one user.
            let (x, y) = unsafe { ((*h).alloc(class), (*h).alloc(class)) };
            let xa = x as usize;
            let freer = loom::thread::spawn(move || {
                let x = xa as *mut u8;
                // SAFETY: `x` is a live block of the heap, given up by this thread.
                unsafe {
                    let (ss, slab) = Superslab::slab_of_block(x);
                    Heap::free_orphan(ctx, ss, slab, x);
                }
            });
            // The owner goes on: a free and a collect that may drain the push, or not.
            // SAFETY: `y` stays live; the collect is the owner's.
            unsafe {
                let z = (*h).alloc(class);
                let (ss, slab) = Superslab::slab_of_block(z);
                (*h).free_small(ss, slab, z);
                (*h).collect_owned(1);
            }
            freer.join().unwrap();
            let _ = y;
            // SAFETY: every block is given up: `y` by this thread, `x` by the freer, whose free
            // returned (joined).
            unsafe { ctx.destroy_heap(heap) };
            let s = ctx.snapshot();
            assert_eq!(s.held(class.index()), 0, "every block back in its slab");
            assert_eq!(
                s.live(class.index()),
                0,
                "every block counted freed exactly once"
            );
            assert_eq!(s.count(Event::SsCached), 1, "released once, to the lru");
            let again = ctx.new_private_heap().expect("a heap to reuse");
            // SAFETY: this thread is the new heap's one user.
            let (a, b, c) = unsafe {
                let g = again.as_ptr();
                ((*g).alloc(class), (*g).alloc(class), (*g).alloc(class))
            };
            assert!(a != b && b != c && a != c, "a block handed out twice");
            // SAFETY: every block is given up.
            unsafe { ctx.destroy_heap(again) };
        }
    }
}
