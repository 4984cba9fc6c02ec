//! The shared context: the heap list (making, parking, taking, reaping and retiring heaps),
//! releasing superslabs, snapshots and the fork locks.
use super::*;

impl Ctx {
    /// A context over `os` and `registry`. `check` turns on full double-free checks (H6);
    /// `report` hears of every corruption found (it may abort; if it returns, the offending
    /// block is dropped and the allocator goes on; if it panics, the process aborts, see
    /// [`Ctx::report`]).
    pub fn new(
        os: &'static dyn Os,
        registry: Registry,
        lru: LruConfig,
        check: bool,
        report: fn(Corrupt),
    ) -> Self {
        // Draw the free key at start-up, before any heap exists (FK1).
        init_free_key();
        Self {
            os,
            registry,
            stats: GlobalStats::new(),
            lru: Lru::new(os, lru),
            abandoned: AbandonedList::new(),
            check,
            report,
            corrupted: AtomicUsize::new(0),
            heaps: SpinLock::new(Heaps {
                live: null_mut(),
                tail: null_mut(),
                free: null_mut(),
                live_count: 0,
                parked: [null_mut(); PARK_MAX],
                parked_at: [0; PARK_MAX],
                parked_takes: [0; PARK_MAX],
                parked_count: 0,
                takes: 0,
            }),
            parked_due: AtomicU64::new(u64::MAX),
            next_id: AtomicUsize::new(1),
            slab_purge_delay: if lru.purge {
                lru.purge_delay_ns
            } else {
                u64::MAX
            },
            huge_skip: AtomicUsize::new(0),
            huge_slow_ns: HUGE_SLOW_NS,
        }
    }

    /// The environment superslab operations need.
    #[inline(always)]
    pub fn env(&self) -> Env<'_> {
        Env {
            os: self.os,
            registry: &self.registry,
            stats: &self.stats,
        }
    }

    /// The purge delay of free pages kept for reuse (free slabs, H14; the medium tier's free
    /// runs): the lru's, or `None` when its purging is off.
    pub fn purge_delay(&self) -> Option<u64> {
        (self.slab_purge_delay != u64::MAX).then_some(self.slab_purge_delay)
    }

    /// True in check mode.
    pub fn check(&self) -> bool {
        self.check
    }

    /// Reports a corruption (see [`Ctx::new`]). A `report` that unwinds (panics) aborts the
    /// process instead: it may run in the middle of a heap operation (a drain, a teardown),
    /// and unwinding out of one would leave the heap half changed for its next user.
    #[cold]
    pub fn report(&self, c: Corrupt) {
        /// Panics again when dropped during the unwind of a panic, which aborts.
        struct AbortOnUnwind;
        impl Drop for AbortOnUnwind {
            fn drop(&mut self) {
                panic!("hakmem: a corruption report unwound; aborting");
            }
        }
        let guard = AbortOnUnwind;
        if !matches!(c, Corrupt::Invariant { .. }) {
            self.corrupted.store(1, Ordering::Relaxed);
        }
        (self.report)(c);
        core::mem::forget(guard);
    }

    /// A heap for a new thread: the most recently parked heap (H18), whole, with the blocks and
    /// superslabs its last thread left; else as [`Ctx::new_heap`]. Only for a thread's own heap,
    /// never for a private one. `None` when the OS refuses memory.
    pub fn take_or_new_heap(&'static self) -> Option<NonNull<Heap>> {
        self.expire_parked();
        let taken = self.heaps.with(|l| {
            if l.parked_count == 0 {
                return null_mut();
            }
            l.parked_count -= 1;
            let h = l.parked[l.parked_count];
            l.takes = l.takes.wrapping_add(1);
            self.set_parked_due(l);
            // SAFETY: under the lock; a parked heap is ours and on no list.
            unsafe { Self::push_live(l, h) };
            l.live_count += 1;
            h
        });
        match NonNull::new(taken) {
            Some(h) => Some(h),
            None => self.new_heap(),
        }
    }

    /// Parks a thread's heap whole for the next thread that starts (H18), or retires it (H5)
    /// when the set of parked heaps is full.
    ///
    /// # Safety
    /// As [`Ctx::retire_heap`]: `heap` came from [`Ctx::take_or_new_heap`] (a thread's own
    /// heap), its thread will not use it again, and nobody else does.
    pub unsafe fn park_heap(&'static self, heap: NonNull<Heap>) {
        let h = heap.as_ptr();
        // SAFETY: handed over by the caller. Nothing stays on the holder (H22).
        unsafe { (*h).prof_give_back() };
        let now = now_ns();
        let parked = self.heaps.with(|l| {
            if l.parked_count == PARK_MAX {
                return false;
            }
            // SAFETY: under the lock; `h` and its neighbours are on the live list.
            unsafe {
                (*h).fold_list_counts();
                self.stats.merge(&(*h).stats);
                Self::unlink_live(l, h);
                (*h).next = null_mut();
                (*h).prev = null_mut();
                (*h).tag = 0;
            }
            l.parked[l.parked_count] = h;
            l.parked_at[l.parked_count] = now;
            l.parked_takes[l.parked_count] = l.takes;
            l.parked_count += 1;
            l.live_count -= 1;
            self.set_parked_due(l);
            true
        });
        if !parked {
            // SAFETY: forwarded from the caller.
            unsafe { self.retire_heap(heap) };
        }
        self.expire_parked();
    }

    /// Retires the heaps parked at least one purge delay ago (H18). One atomic load while none
    /// is due: the slow paths and the background purge call it.
    pub fn expire_parked(&'static self) {
        if self.parked_due.load(Ordering::Relaxed) <= now_ns() {
            self.retire_parked_before(now_ns().saturating_sub(self.slab_purge_delay));
        }
    }

    /// Retires every parked heap (H18): `collect`, `malloc_trim`.
    pub fn retire_parked(&'static self) {
        self.retire_parked_before(u64::MAX);
    }

    /// Retires the parked heaps parked at or before `limit`.
    fn retire_parked_before(&'static self, limit: u64) {
        while self.retire_oldest_parked_if(|l| l.parked_at[0] <= limit) {}
    }

    /// Retires the oldest parked heap if no thread has taken a parked heap since it was
    /// parked (H18): a running heap is about to map a superslab, and that heap's superslabs
    /// (empty ones to the lru, the rest abandoned for adoption) serve it better than a bet on
    /// a thread that has not started. While threads keep starting, the parked heaps stay
    /// for them. True when a heap was retired.
    pub(crate) fn retire_unclaimed_parked(&'static self) -> bool {
        self.retire_oldest_parked_if(|l| l.parked_takes[0] == l.takes)
    }

    /// Retires the oldest parked heap if there is one and `cond` holds for the set (read under
    /// the lock, with at least one heap parked). True when a heap was retired.
    fn retire_oldest_parked_if(&'static self, cond: impl Fn(&Heaps) -> bool) -> bool {
        let h = self.heaps.with(|l| {
            if l.parked_count == 0 || !cond(l) {
                return null_mut();
            }
            #[cfg(not(hakmem_seeded_bug = "park_peek"))]
            let h = self.unpark_oldest(l);
            // Seeded bug: the oldest is read here and taken off the set in a second
            // critical section, so a thread may take it in between.
            #[cfg(hakmem_seeded_bug = "park_peek")]
            let h = l.parked[0];
            h
        });
        if h.is_null() {
            return false;
        }
        #[cfg(hakmem_seeded_bug = "park_peek")]
        self.heaps.with(|l| {
            if l.parked_count != 0 && l.parked[0] == h {
                self.unpark_oldest(l);
            }
        });
        // SAFETY: taken off the set under the lock: nobody else has it (H18).
        unsafe { self.retire_unparked(h) };
        true
    }

    /// Tears a heap taken off the parked set down (H5) and puts it on the free list.
    ///
    /// # Safety
    /// `h` was taken off the parked set under the lock by the caller, so nobody else has it.
    unsafe fn retire_unparked(&self, h: *mut Heap) {
        // SAFETY: as the caller says.
        unsafe { (*h).teardown() };
        self.heaps.with(|l| {
            // SAFETY: under the lock; `h` is on no list.
            unsafe {
                (*h).next = l.free;
                (*h).id = 0;
                (*h).tag = 0;
            }
            l.free = h;
        });
    }

    /// Takes the oldest parked heap off the set. Under the heap list's lock.
    fn unpark_oldest(&self, l: &mut Heaps) -> *mut Heap {
        let h = l.parked[0];
        l.parked.copy_within(1.., 0);
        l.parked_at.copy_within(1.., 0);
        l.parked_takes.copy_within(1.., 0);
        l.parked_count -= 1;
        self.set_parked_due(l);
        h
    }

    /// When the oldest parked heap is due for retirement (H18). Under the heap list's lock.
    fn set_parked_due(&self, l: &Heaps) {
        let due = if l.parked_count == 0 {
            u64::MAX
        } else {
            l.parked_at[0].saturating_add(self.slab_purge_delay)
        };
        self.parked_due.store(due, Ordering::Relaxed);
    }

    /// A heap for a new thread: recycled from an exited thread, or mapped. `None` when the OS
    /// refuses memory. Never a parked heap (H18).
    pub fn new_heap(&'static self) -> Option<NonNull<Heap>> {
        self.lru.purge_if_due(&self.stats);
        let recycled = self.heaps.with(|h| {
            let f = h.free;
            if !f.is_null() {
                // SAFETY: heaps on the free list are ours and unused.
                h.free = unsafe { (*f).next };
            }
            f
        });
        let heap = match NonNull::new(recycled) {
            Some(h) => h,
            None => {
                let page = self.os.page_size();
                let len = (core::mem::size_of::<Heap>() + page - 1) & !(page - 1);
                self.os.map(len, page, &self.stats)?.cast::<Heap>()
            }
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // SAFETY: fresh zeroed memory or a retired heap (left empty by `retire_heap`), both
        // valid `Heap`s (a zeroed Heap is valid: every field is an integer or a pointer).
        unsafe { Heap::init(heap.as_ptr(), self) };
        self.heaps.with(|h| {
            // SAFETY: under the lock; `heap` is ours, the list's heaps are live. The id is
            // written under the lock, as a reaper that still holds this heap's address from its
            // last life reads it (H15).
            unsafe {
                (*heap.as_ptr()).id = id;
                Self::push_live(h, heap.as_ptr());
            }
            h.live_count += 1;
        });
        Some(heap)
    }

    /// Links `heap` at the front of the live list.
    ///
    /// # Safety
    /// Under the heaps lock; `heap` is ours and on no list.
    pub(crate) unsafe fn push_live(h: &mut Heaps, heap: *mut Heap) {
        // SAFETY: as the caller says; the list's heaps are live.
        unsafe {
            (*heap).next = h.live;
            (*heap).prev = null_mut();
            match h.live.as_mut() {
                Some(l) => l.prev = heap,
                None => h.tail = heap,
            }
        }
        h.live = heap;
    }

    /// Unlinks `heap` from the live list.
    ///
    /// # Safety
    /// Under the heaps lock; `heap` is on the live list.
    pub(crate) unsafe fn unlink_live(h: &mut Heaps, heap: *mut Heap) {
        // SAFETY: as the caller says; its neighbours are live heaps.
        unsafe {
            let (next, prev) = ((*heap).next, (*heap).prev);
            match prev.as_mut() {
                Some(p) => p.next = next,
                None => h.live = next,
            }
            match next.as_mut() {
                Some(n) => n.prev = prev,
                None => h.tail = prev,
            }
        }
    }

    /// Sets the tag of `heap`: an opaque word naming its thread, for [`Ctx::reap_one`] (0: none).
    ///
    /// # Safety
    /// `heap` came from [`Ctx::new_heap`] and is not retired.
    pub unsafe fn set_tag(&self, heap: NonNull<Heap>, tag: u64) {
        // SAFETY: under the lock, as `reap_one` reads it.
        self.heaps.with(|_| unsafe { (*heap.as_ptr()).tag = tag });
    }

    /// Looks at the live heap looked at least recently (one per call, in turn), and retires it
    /// when `gone(tag)` says its thread has ended without retiring it (a heap made during the
    /// thread's last pass over TSD destructors is never handed to the exit destructor: H5 would
    /// fail without this). True when a heap was retired.
    ///
    /// The heap is retired only if, after `gone` answered, it still is the heap it was when its
    /// tag was read (the same id: a heap retired meanwhile and handed to a new thread has a new
    /// one, even when the new thread's tag is the same, as a reused thread id makes it; H15).
    ///
    /// # Safety
    /// `gone(tag)` answers true only when the thread whose heap [`Ctx::set_tag`] tagged `tag`
    /// has ended and never runs again (a thread that starts after the answer and is given the
    /// same tag is another one, whose heap the reap leaves alone, H15). A `gone` that says so
    /// of a live thread retires its heap under it, and the next [`Ctx::new_heap`] hands the same
    /// memory to another thread.
    ///
    /// ```compile_fail,E0133
    /// fn reap_anyone(ctx: &'static hakmem_hot_heap::Ctx) -> bool {
    ///     ctx.reap_one(|_| true) // error: an `unsafe fn`
    /// }
    /// ```
    pub unsafe fn reap_one(&'static self, gone: impl Fn(u64) -> bool) -> bool {
        let (heap, tag, id, takes) = self.heaps.with(|h| {
            let t = h.tail;
            if t.is_null() || t == h.live {
                return (null_mut(), 0, 0, 0);
            }
            // SAFETY: under the lock; `t` is live. It moves to the front: checked last.
            unsafe {
                Self::unlink_live(h, t);
                Self::push_live(h, t);
                (t, (*t).tag, (*t).id, h.takes)
            }
        });
        if heap.is_null() || tag == 0 || !gone(tag) {
            return false;
        }
        // Claim it: only one reaper retires it, and only the heap whose thread `gone` spoke of
        // (a heap's memory is never unmapped, so `heap` is readable; the id is 0 once retired,
        // and a new one when the heap was handed out again).
        let claimed = self.heaps.with(|l| {
            // A parked heap keeps its id when taken (H18): a take in between may have handed
            // this very heap to a new thread of the same tag.
            #[cfg(not(hakmem_seeded_bug = "reap_after_take"))]
            if l.takes != takes {
                return false;
            }
            #[cfg(hakmem_seeded_bug = "reap_after_take")]
            let _ = (l, takes);
            // SAFETY: under the lock.
            unsafe {
                #[cfg(not(hakmem_seeded_bug = "reap_by_tag"))]
                let ok = (*heap).tag == tag && (*heap).id == id && id != 0;
                // Seeded bug: the tag alone names the heap, so a heap retired and handed to a
                // new thread with the same tag (a reused thread id) is retired under it.
                #[cfg(hakmem_seeded_bug = "reap_by_tag")]
                let ok = id != 0 && (*heap).tag == tag && (*heap).id != 0;
                if ok {
                    (*heap).tag = 0;
                }
                ok
            }
        });
        if !claimed {
            return false;
        }
        // SAFETY: its thread has ended (the caller's contract: `gone` said so of every thread
        // of this tag, and the id shows the heap was not handed out since), so nobody else uses
        // it, and the claim above made this thread its only reaper.
        unsafe { self.retire_heap(NonNull::new_unchecked(heap)) };
        true
    }

    /// Tears a thread's heap down (H5), merges its counts, and keeps its memory for the next
    /// thread.
    ///
    /// # Safety
    /// `heap` came from [`Ctx::new_heap`], its thread will not use it again, and nobody else does.
    pub unsafe fn retire_heap(&self, heap: NonNull<Heap>) {
        let h = heap.as_ptr();
        // SAFETY: the caller hands the heap over.
        unsafe { (*h).teardown() };
        self.heaps.with(|l| {
            // SAFETY: under the lock; `h` and its neighbours are on the live list.
            unsafe {
                (*h).fold_list_counts();
                self.stats.merge(&(*h).stats);
                Self::unlink_live(l, h);
                (*h).next = l.free;
                (*h).id = 0;
                (*h).tag = 0;
            }
            l.free = h;
            l.live_count -= 1;
        });
    }

    /// Every counter: the global ones plus each live heap's.
    pub fn snapshot(&self) -> Snapshot {
        self.heaps.with(|l| {
            let mut s = self.stats.snapshot();
            let mut h = l.live;
            // Each heap is reached through its raw pointer, field by field, never as a `&Heap`:
            // its thread may hold a `&mut Heap` meanwhile, and reads only atomics of it.
            while !h.is_null() {
                // SAFETY: under the lock, live heaps stay on the list; their counters are
                // atomics, which their thread writes with atomic stores.
                s.add_thread(unsafe { &(*h).stats });
                for c in 0..CLASSES {
                    // SAFETY: a live heap's lists (as above), read through a raw pointer: only
                    // the atomics of their counts, under their sequence lock (tls_sll L7).
                    let (frees, allocs) = unsafe { Lists::counts_of(&raw const (*h).sll, c) };
                    s.add_counts(c, allocs, frees);
                    // The holder's pops are the heap's allocations too (H21); its pointer is
                    // written under this lock.
                    // SAFETY: as above; a holder, once mapped, stays.
                    let hold = unsafe { (*h).prof_holder };
                    if !hold.is_null() {
                        // SAFETY: as above.
                        let (frees, allocs) =
                            unsafe { Lists::counts_of(&raw const (*hold).sll, c) };
                        s.add_counts(c, allocs, frees);
                    }
                }
                // SAFETY: `next` is written only under the lock, which is held.
                h = unsafe { (*h).next };
            }
            s
        })
    }

    /// Live heaps (threads that have allocated and not exited).
    pub fn live_heaps(&self) -> usize {
        self.heaps.with(|l| l.live_count)
    }

    /// The counts of every lock heaps share, named: the heap list, the abandoned list, the lru
    /// (see `docs/SCALING.md`). Reading them takes no lock.
    #[cfg(not(loom))]
    pub fn lock_counts(&self) -> [(&'static str, hakmem_superslab::LockCounts); 3] {
        [
            ("heap list", self.heaps.contention()),
            ("abandoned list", self.abandoned.contention()),
            ("lru", self.lru.contention()),
        ]
    }

    /// Retires a superslab whose last reference was dropped, into the lru.
    ///
    /// # Safety
    /// The caller got `true` from [`Superslab::unpin`] or [`Superslab::free_remote`].
    pub unsafe fn release_superslab(&self, ss: &Superslab) {
        let env = self.env();
        // SAFETY: forwarded from the caller.
        let region = unsafe { ss.retire(&env) };
        // SAFETY: retired: unregistered, no block or reference left.
        unsafe { self.lru.put(&self.stats, region, SS_SIZE, now_ns()) };
    }

    /// A superslab for heap `owner` from the lru, if it holds one.
    pub(crate) fn superslab_from_lru(
        &'static self,
        owner: usize,
        huge: bool,
    ) -> Option<&'static Superslab> {
        let r = self.lru.take(&self.stats, SS_SIZE, true, now_ns())?;
        let env = self.env();
        let ss = self.first_touch(huge, |huge| {
            // SAFETY: a cached region is ours, whole and unused (lru C2), a mapping of our `Os`.
            unsafe { Superslab::init_advised(&env, r.base, r.zeroed, owner, huge) }
        });
        match ss {
            Ok(ss) => Some(ss),
            Err(region) => {
                // SAFETY: never published.
                unsafe { self.os.unmap(region, SS_SIZE, &self.stats) };
                None
            }
        }
    }

    /// A superslab for heap `owner` fresh from the OS.
    pub(crate) fn superslab_from_os(
        &'static self,
        owner: usize,
        huge: bool,
    ) -> Option<&'static Superslab> {
        self.first_touch(huge, |huge| {
            Superslab::create_advised(&self.env(), owner, huge)
        })
    }

    /// Runs `touch`, the first touch of a 2 MiB region that `want`s huge-page advice (HG1: a
    /// superslab, or a medium region), telling it whether to advise the region first: `want`,
    /// unless a slow first touch stopped the advice for a while (this region counts as one of
    /// the 64 that then go without). An advised touch is timed in the thread's CPU time, and a
    /// slow one (over 1 ms) stops the advice for the next 64 regions that want it.
    pub fn first_touch<T>(&self, want: bool, touch: impl FnOnce(bool) -> T) -> T {
        let huge = want && self.huge_allowed();
        let t = if huge {
            FirstTouch::start()
        } else {
            FirstTouch::NONE
        };
        let out = touch(huge);
        if huge {
            self.huge_touched(t.ns());
        }
        out
    }

    /// False while superslabs go without huge-page advice after a slow first touch (HG1),
    /// counting this one.
    fn huge_allowed(&self) -> bool {
        self.huge_skip
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_err()
    }

    /// Hears how long an advised superslab's first touch took (HG1, in the thread's CPU time;
    /// `None`: not known): a slow one stops the advice for the next [`HUGE_BACKOFF`]
    /// superslabs.
    pub(crate) fn huge_touched(&self, ns: Option<u64>) {
        if ns.is_some_and(|ns| ns > self.huge_slow_ns) {
            self.huge_skip.store(HUGE_BACKOFF, Ordering::Relaxed);
        }
    }

    /// Takes every lock a forking thread must not leave held (fork's `prepare`).
    #[cfg(not(loom))]
    pub fn lock_all(&self) {
        self.heaps.lock_for_fork();
        self.abandoned.lock_for_fork();
        self.lru.lock_for_fork();
    }

    /// In a forked child, before [`Ctx::unlock_all`]: the other threads' heaps stay on the live
    /// list, and one of them may have been in the middle of a slow list operation, whose count
    /// lock would then stay held forever (tls_sll L7); ends those, so a snapshot in the child
    /// cannot wait for a thread that is gone.
    ///
    /// # Safety
    /// Only in a forked child, while the heap list's lock taken by [`Ctx::lock_all`] is held,
    /// and only the calling thread runs.
    #[cfg(not(loom))]
    pub unsafe fn after_fork_in_child(&self) {
        // SAFETY: the caller holds the heap list's lock (taken before the fork) and is the one
        // thread left, so nobody else touches the list or its heaps.
        let mut h = unsafe { self.heaps.peek_for_fork().live };
        // SAFETY: as above: live heaps stay valid while the lock is held.
        while let Some(heap) = unsafe { h.as_mut() } {
            // SAFETY: a live heap's lists; their owner did not survive the fork (or is this
            // thread, which is not inside a list operation during the fork).
            unsafe { Lists::end_write_after_fork(&raw mut heap.sll) };
            if !heap.prof_holder.is_null() {
                // SAFETY: as above, the heap's holder's lists (H21).
                unsafe { Lists::end_write_after_fork(&raw mut (*heap.prof_holder).sll) };
            }
            h = heap.next;
        }
    }

    /// Releases what [`Ctx::lock_all`] took (fork's `parent` and `child`).
    ///
    /// # Safety
    /// [`Ctx::lock_all`] was called, by this thread or (in a forked child) by the parent's
    /// forking thread, and not yet matched by a call of this.
    #[cfg(not(loom))]
    pub unsafe fn unlock_all(&self) {
        // SAFETY: forwarded: each lock was taken by lock_all's lock_for_fork.
        unsafe {
            self.lru.force_unlock();
            self.abandoned.force_unlock();
            self.heaps.force_unlock();
        }
    }
}

/// The timing of an advised superslab's first touch (HG1), in the thread's CPU time: a wait for
/// a core (most slow touches on a busy machine) does not count; the fault's work, and a VM's
/// host supplying the memory under it, do.
struct FirstTouch {
    at: u64,
}

impl FirstTouch {
    /// No timing.
    const NONE: Self = Self { at: 0 };

    fn start() -> Self {
        Self {
            at: hakmem_os::thread_cpu_ns(),
        }
    }

    /// The thread's CPU ns since [`FirstTouch::start`]; `None` when the clock cannot be read.
    fn ns(&self) -> Option<u64> {
        let now = hakmem_os::thread_cpu_ns();
        (now != 0).then(|| now.saturating_sub(self.at))
    }
}
