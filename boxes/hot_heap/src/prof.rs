//! What the facade's heap profiler needs of a heap (H19): the debit, and frees and drains that
//! keep blocks off the thread lists.
use super::*;

/// What the credit holds above the true credit while the profiler counts every allocation
/// itself (H19, [`Heap::prof_enter_counted`]): far above any countdown, so that
/// [`Heap::free_own_profiled`] lists every block, and far below the wrap.
pub const PROF_COUNTED: i64 = 1 << 62;

impl Heap {
    /// Adds `n` blocks of `class` to the debit (H19), or takes them off for a negative `n`.
    #[inline(always)]
    pub(crate) fn debit_add(&mut self, class: SizeClass, n: i64) {
        self.debit = self
            .debit
            .wrapping_add((n as u64).wrapping_mul(class.size() as u64));
        if n > 0 {
            self.mark_listed(class.index());
        }
    }

    /// Notes that class `class`'s list may hold blocks (H19: what [`Heap::drain_lists`]
    /// looks at).
    #[inline(always)]
    fn mark_listed(&mut self, class: usize) {
        self.prof_listed[(class / 64) & 1] |= 1 << (class % 64);
    }

    /// The debit (H19): bytes moved onto the thread lists as chains, less those taken off as
    /// chains, plus those the slow free pushed and those handed out other than by a pop;
    /// wrapping, so only differences mean anything.
    pub fn debit(&self) -> u64 {
        self.debit
    }

    /// The profiler's credit (H19): `None` until [`Heap::prof_start`].
    #[inline(always)]
    pub fn prof_credit(&self) -> Option<i64> {
        self.prof_started
            .then(|| self.prof_base.wrapping_sub(self.debit) as i64)
    }

    /// Starts the profiler's credit at `credit` bytes (H19), with the thread lists drained
    /// first, so that the credit is the countdown.
    pub fn prof_start(&mut self, credit: i64) {
        // Every list: the fast paths' pushes before now marked none.
        for class in SizeClass::all() {
            self.drain_list(class);
        }
        self.prof_listed = [0; 2];
        self.prof_base = self.debit.wrapping_add(credit as u64);
        self.prof_started = true;
    }

    /// True while the profiler counts every allocation itself (H19: between
    /// [`Heap::prof_enter_counted`] and [`Heap::prof_leave_counted`]).
    #[inline(always)]
    pub fn prof_counted(&self) -> bool {
        self.prof_credit().is_some_and(|c| c > PROF_COUNTED / 2)
    }

    /// The profiler starts counting every allocation itself (H19): returns the countdown (the
    /// credit plus the bytes on the lists), kept from now on in [`Heap::prof_left`], and adds
    /// [`PROF_COUNTED`] to the credit, so that the profiler's frees list every block. Nothing
    /// when counting already or not started.
    pub fn prof_enter_counted(&mut self) {
        if let Some(c) = self.prof_credit() {
            if c <= PROF_COUNTED / 2 {
                self.prof_left = c + self.listed_bytes() as i64;
                self.prof_add(PROF_COUNTED);
            }
        }
    }

    /// Leaves [`Heap::prof_enter_counted`]'s mode when the true credit (the countdown less the
    /// bytes on the lists) is at least `min`, so that pops may go uncounted again (H19); true
    /// when it left (or was not counting).
    pub fn prof_leave_counted(&mut self, min: i64) -> bool {
        let Some(c) = self.prof_credit() else {
            return true;
        };
        if c <= PROF_COUNTED / 2 {
            return true;
        }
        let k = c - PROF_COUNTED;
        debug_assert_eq!(
            k + self.listed_bytes() as i64,
            self.prof_left,
            "the credit and the countdown agree (H19)"
        );
        if k < min {
            return false;
        }
        self.prof_add(-PROF_COUNTED);
        true
    }

    /// The countdown while the profiler counts every allocation ([`Heap::prof_enter_counted`]).
    #[inline(always)]
    pub fn prof_left(&self) -> i64 {
        self.prof_left
    }

    /// Sets [`Heap::prof_left`].
    #[inline(always)]
    pub fn set_prof_left(&mut self, left: i64) {
        self.prof_left = left;
    }

    /// Adds `delta` bytes to the profiler's credit (H19).
    #[inline(always)]
    pub fn prof_add(&mut self, delta: i64) {
        self.prof_base = self.prof_base.wrapping_add(delta as u64);
    }

    /// The owner's free of `p`, a block of its own `slab`, while the profiler's credit runs
    /// (H19): onto the thread list when the credit covers its bytes (a push the debit counts,
    /// [`Heap::free_own_listed`]), else kept off the lists ([`Heap::free_own_unlisted`]).
    /// False, having done nothing, when the credit has not started ([`Heap::prof_start`]).
    ///
    /// A push onto a non-empty list leaves the listed classes' mask alone: a class whose list
    /// holds blocks is marked already (H19: the first block of an empty list is put there by
    /// a slow operation or by this free's push onto an empty list, which mark it (and refill
    /// the list first when the credit takes half a list's worth), and only a drain, which
    /// empties the list, takes the mark).
    ///
    /// # Safety
    /// As [`Heap::free_own`].
    #[inline(always)]
    pub unsafe fn free_own_profiled(&mut self, slab: &SlabMeta, p: *mut u8) -> bool {
        if !self.prof_started {
            return false;
        }
        // SAFETY: our own slab.
        let (class, _) = unsafe { slab.class_and_carved_owned() };
        let Some(c) = SizeClass::new(class) else {
            // SAFETY: forwarded; it reports the slab's bad class.
            unsafe { self.free_local_slow(class, p) };
            return true;
        };
        let size = c.size() as u64;
        if self.prof_base.wrapping_sub(self.debit) as i64 >= size as i64 {
            if self.sll.is_empty(class) {
                // SAFETY: forwarded.
                unsafe { self.free_own_onto_empty(c, p) };
                return true;
            }
            let key = self.key;
            // SAFETY: `p` is a block of at least 16 bytes of our own slab, given up.
            let keyed = unsafe { key_word(p) } == key;
            // SAFETY: as in `free_own`: the class is below CLASSES, `p` is ours and (FK3) not
            // free.
            if !keyed && unsafe { self.sll.try_push_unchecked(class, p, key) } {
                self.debit = self.debit.wrapping_add(size);
                return true;
            }
            // SAFETY: forwarded; its push adds to the debit.
            unsafe { self.free_local_slow(class, p) };
            return true;
        }
        // SAFETY: forwarded.
        unsafe { self.free_own_unlisted(slab, p) };
        true
    }

    /// [`Heap::free_own_profiled`] onto an empty list, whose credit covers `p`'s bytes: the
    /// push marks the class listed (H19), and when the credit also takes half a list's worth
    /// the list is refilled first ([`Heap::refill_short_list`]), so that the allocations after
    /// it pop on the fast path instead of taking a lone block by the C fast path's cold call
    /// (H16) at every `malloc` of a free-then-allocate loop.
    ///
    /// # Safety
    /// As [`Heap::free_own`], with `p` a block of class `c`.
    #[cold]
    #[inline(never)]
    unsafe fn free_own_onto_empty(&mut self, c: SizeClass, p: *mut u8) {
        let i = c.index();
        let refill = (u64::from(self.sll.cap(i) / 2) + 1) * c.size() as u64;
        if self.prof_base.wrapping_sub(self.debit) as i64 >= refill as i64 {
            // SAFETY: a real heap, its thread's alone (the caller's contract); the refill's
            // splice or moves add to the debit.
            unsafe { self.refill_short_list(c) };
        }
        let key = self.key;
        // SAFETY: `p` is a block of at least 16 bytes of our own slab, given up.
        let keyed = unsafe { key_word(p) } == key;
        // SAFETY: as in `free_own`: the class is below CLASSES, `p` is ours and (FK3) not free.
        if !keyed && unsafe { self.sll.try_push_unchecked(i, p, key) } {
            self.debit_add(c, 1);
            return;
        }
        // SAFETY: forwarded; its push adds to the debit.
        unsafe { self.free_local_slow(i, p) }
    }

    /// The slab of `p` when it is a block this heap handed out of a superslab in its owned
    /// cache (H8), as [`Heap::try_free_owned`] finds it; `None` for anything else, any address
    /// included (nothing is read through `p`), and always for an [`EmptyHeap`] (H9).
    ///
    /// # Safety
    /// `this` is a live heap of the calling thread, or an empty heap.
    #[inline(always)]
    pub unsafe fn owned_slab(this: *mut Heap, p: *mut u8) -> Option<&'static SlabMeta> {
        // SAFETY: forwarded.
        unsafe { Heap::owned_block(this, p) }.map(|(slab, _)| slab)
    }

    /// The owner's free of `p`, a block of its own `slab`, onto the thread list (H19: the
    /// debit counts the push, whichever path makes it). [`Heap::free_own`] with the count.
    ///
    /// # Safety
    /// As [`Heap::free_own`].
    pub unsafe fn free_own_listed(&mut self, slab: &SlabMeta, p: *mut u8) {
        // SAFETY: our own slab.
        let (class, _) = unsafe { slab.class_and_carved_owned() };
        let key = self.key;
        // SAFETY: `p` is a block of at least 16 bytes of our own slab, which the caller gives up.
        let keyed = unsafe { key_word(p) } == key;
        // SAFETY: as in `free_own`: the class is below CLASSES, `p` is ours and (FK3) not free.
        if !keyed && unsafe { self.sll.try_push_unchecked(class, p, key) } {
            if let Some(c) = SizeClass::new(class) {
                self.debit_add(c, 1);
            }
            return;
        }
        // SAFETY: forwarded; its push adds to the debit.
        unsafe { self.free_local_slow(class, p) }
    }

    /// The owner's free of `p`, a block of its own `slab`, kept off the thread lists (H19): to
    /// the cache while it has room, else to the slab; a double free is caught as on the
    /// owner's slow path (FK3), and check mode returns it through the bitmap (H6).
    ///
    /// # Safety
    /// As [`Heap::free_own`].
    #[cold]
    #[inline(never)]
    pub unsafe fn free_own_unlisted(&mut self, slab: &SlabMeta, p: *mut u8) {
        // SAFETY: our own slab.
        let (class, _) = unsafe { slab.class_and_carved_owned() };
        // SAFETY: `p` is a block of our own slab that the caller gives up.
        let Some(class) = (unsafe { self.class_of_freed(class, p) }) else {
            return;
        };
        if self.ctx().check {
            // SAFETY: the caller gives `p` up; it lies in a live superslab of ours.
            unsafe { self.return_checked(class, p) };
            return;
        }
        // Counted here, not by the lists (H13).
        self.stats.on_free(class.index());
        if self.cache.room(class.index()) > 0 {
            // SAFETY: a free block of ours, going into the cache: keyed (FK1).
            unsafe { set_key_word(p, self.key) };
            self.cache.push(class.index(), p);
        } else {
            self.return_to_slab(class, p);
        }
    }

    /// Moves every block on the thread lists of the classes a slow operation put blocks on
    /// since the last drain (or [`Heap::prof_start`]) to the cache while it has room, the rest
    /// to their slabs (H19). After the profiler's start only its own frees and the slow paths
    /// put blocks on the lists, so the lists hold nothing after it.
    pub fn drain_lists(&mut self) {
        for w in 0..2 {
            let mut m = core::mem::take(&mut self.prof_listed[w]);
            while m != 0 {
                let i = w * 64 + m.trailing_zeros() as usize;
                m &= m - 1;
                if let Some(class) = SizeClass::new(i) {
                    self.drain_list(class);
                }
            }
        }
    }

    /// The bytes on the thread lists of the classes a slow operation put blocks on since the
    /// last drain (H19): after the profiler's start, every byte on the lists.
    pub fn listed_bytes(&self) -> u64 {
        let mut bytes = 0;
        for w in 0..2 {
            let mut m = self.prof_listed[w];
            while m != 0 {
                let i = w * 64 + m.trailing_zeros() as usize;
                m &= m - 1;
                if let Some(class) = SizeClass::new(i) {
                    bytes += u64::from(self.sll.len(i)) * class.size() as u64;
                }
            }
        }
        bytes
    }

    /// Moves blocks off the thread lists of the classes a slow operation put blocks on, to the
    /// cache while it has room and the rest to their slabs, until at least `bytes` bytes have
    /// gone or those lists are empty (H19); the bytes moved.
    pub fn trim_lists(&mut self, bytes: u64) -> u64 {
        let mut moved = 0;
        for w in 0..2 {
            let mut m = self.prof_listed[w];
            while m != 0 && moved < bytes {
                let i = w * 64 + m.trailing_zeros() as usize;
                m &= m - 1;
                if let Some(class) = SizeClass::new(i) {
                    let size = class.size() as u64;
                    let n = (bytes - moved).div_ceil(size).min(u64::from(u32::MAX)) as u32;
                    moved += u64::from(self.trim_list(class, n)) * size;
                }
            }
        }
        moved
    }

    /// Moves every block of the thread list of `class` to the cache while it has room, the
    /// rest to their slabs.
    fn drain_list(&mut self, class: SizeClass) {
        if !self.sll.is_empty(class.index()) {
            let chain = self.take_list(class, u32::MAX);
            self.dispose_chain(class, chain, true);
        }
    }

    /// The blocks on the thread list of `class`.
    pub fn list_len(&self, class: SizeClass) -> u32 {
        self.sll.len(class.index())
    }

    /// A block of `class` handed out from the cache (refilled from slabs when empty), none
    /// put on the thread list (H19: when the credit cannot take a refill); null when the OS
    /// refuses memory.
    ///
    /// # Safety
    /// This is a real heap whose only user is the calling thread.
    pub unsafe fn alloc_unlisted(&mut self, class: SizeClass) -> *mut u8 {
        self.purge_if_due();
        if self.cache.is_empty(class.index()) {
            // SAFETY: only the heap's thread gets here.
            unsafe { self.refill_cache(class) };
        }
        let Some(p) = self.cache.pop(class.index()) else {
            return null_mut();
        };
        self.on_handed_out(class, p);
        p
    }

    /// Refills the thread list of `class` with half a list's worth when it holds at most one
    /// block (H19), as [`Heap::alloc`]'s slow path does for an empty one: from the cache, or
    /// from slabs when the cache has none. For the profiler's slow allocations while its credit
    /// can take a refill: a list left at one block, which the fast pop does not take (H16) and
    /// the slow path takes without a refill, would make every allocation of a free-then-alloc
    /// loop slow.
    ///
    /// # Safety
    /// This is a real heap whose only user is the calling thread.
    pub unsafe fn refill_short_list(&mut self, class: SizeClass) {
        let i = class.index();
        let cap = self.sll.cap(i);
        if self.sll.len(i) > 1 || cap < 2 {
            return;
        }
        if self.cache.is_empty(i) {
            // SAFETY: only the heap's thread gets here; its splice adds to the debit.
            unsafe { self.refill_list(class, cap / 2) };
            return;
        }
        let batch = (cap / 2).min(self.cache.len(i));
        for _ in 0..batch {
            let Some(b) = self.cache.pop(i) else {
                break;
            };
            // SAFETY: a free block this heap owns, on no list, keyed (FK1); a move, not a free
            // (H13); the list had at most one block, so it has room.
            unsafe { self.sll.put(i, b, self.key) };
            self.debit_add(class, 1);
        }
    }

    /// Moves up to `n` blocks off the thread list of `class`, to the cache while it has room,
    /// the rest to their slabs (H19); the blocks moved.
    pub fn trim_list(&mut self, class: SizeClass, n: u32) -> u32 {
        let chain = self.take_list(class, n);
        let moved = chain.len;
        self.dispose_chain(class, chain, true);
        moved
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    fn no_report(c: Corrupt) {
        panic!("unexpected report: {c:?}");
    }

    /// The bytes on the thread lists, all classes.
    fn listed(h: &Heap) -> u64 {
        SizeClass::all()
            .map(|c| u64::from(h.sll.len(c.index())) * c.size() as u64)
            .sum()
    }

    /// H19: over any sequence of slow operations, allocations and frees (fast or slow),
    /// `bytes allocated + bytes on the lists` changes exactly as the debit does, plus the
    /// pushes the debit does not see (the fast path's `try_free_owned`), and every block the
    /// lists give up by a drain or trim goes to the cache or its slab (none lost).
    #[test]
    fn the_debit_tracks_allocated_plus_listed_bytes() {
        let ctx = crate::test_ctx(8, false, no_report);
        let h = ctx.new_heap().unwrap().as_ptr();
        // SAFETY: a fresh heap, this test thread's alone, retired at the end; every block is
        // freed once.
        unsafe {
            let d0 = (*h).debit();
            let mut allocated: u64 = 0;
            let mut fast_pushed: u64 = 0;
            let mut live: Vec<(*mut u8, SizeClass)> = Vec::new();
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            for i in 0..20_000u32 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // A few classes, in phases of mostly allocations then mostly frees, so that
                // lists fill and spill (the slow free's push) and refills run often.
                let size = 16 + (x % 48) as usize;
                let c = class_of(size).unwrap();
                let op = if (i / 2000) % 2 == 0 {
                    x >> 60
                } else {
                    (x >> 60) + 5
                };
                match op.min(15) {
                    0..=6 => {
                        let p = (*h).alloc(c);
                        assert!(!p.is_null());
                        allocated += c.size() as u64;
                        live.push((p, c));
                    }
                    7..=12 if !live.is_empty() => {
                        let (p, _) = live.swap_remove((x >> 8) as usize % live.len());
                        let slab = Heap::owned_slab(h, p).expect("a block of ours");
                        if x & 1 == 0 {
                            (*h).free_own_listed(slab, p);
                        } else {
                            (*h).free_own_unlisted(slab, p);
                        }
                    }
                    13 if !live.is_empty() => {
                        let (p, c) = live.swap_remove((x >> 8) as usize % live.len());
                        if Heap::try_free_owned(h, p) {
                            fast_pushed += c.size() as u64;
                        } else {
                            let slab = Heap::owned_slab(h, p).expect("a block of ours");
                            (*h).free_own_listed(slab, p);
                        }
                    }
                    14 => {
                        (*h).trim_list(c, (x >> 32) as u32 % 8);
                    }
                    _ if i % 97 == 0 => (*h).drain_lists(),
                    _ => {}
                }
                let debit = (*h).debit().wrapping_sub(d0);
                assert_eq!(
                    allocated + listed(&*h),
                    debit.wrapping_add(fast_pushed),
                    "step {i}"
                );
            }
            // More frees of one class than any list bound (tls_sll MAX_CAP): the slow free
            // spills and pushes.
            let c = class_of(16).unwrap();
            let many: Vec<*mut u8> = (0..5000).map(|_| (*h).alloc(c)).collect();
            allocated += 5000 * c.size() as u64;
            for p in many {
                let slab = Heap::owned_slab(h, p).expect("a block of ours");
                (*h).free_own_listed(slab, p);
                let debit = (*h).debit().wrapping_sub(d0);
                assert_eq!(allocated + listed(&*h), debit.wrapping_add(fast_pushed));
            }
            // Every list (the fast pushes above marked none for `drain_lists`).
            for class in SizeClass::all() {
                (*h).drain_list(class);
            }
            assert_eq!(listed(&*h), 0, "a drain empties every list");
            for (p, _) in live {
                let slab = Heap::owned_slab(h, p).expect("a block of ours");
                (*h).free_own_unlisted(slab, p);
            }
            let s = ctx.snapshot();
            let live_count: i64 = (0..CLASSES).map(|c| s.live(c)).sum();
            assert_eq!(live_count, 0, "every allocation freed once, counted once");
            ctx.retire_heap(NonNull::new_unchecked(h));
        }
    }

    /// H19: the counted mode's countdown starts as the credit plus the listed bytes, the
    /// credit it keeps meanwhile lists every free, and leaving gives the true credit back only
    /// when it is at least the minimum; a list left at one block is refilled, the debit
    /// counting the refill.
    #[test]
    fn the_counted_mode_keeps_the_countdown_and_a_short_list_is_refilled() {
        let ctx = crate::test_ctx(8, false, no_report);
        let h = ctx.new_heap().unwrap().as_ptr();
        let c = class_of(32).unwrap();
        // SAFETY: a fresh heap, this test thread's alone, retired at the end; every block is
        // freed once.
        unsafe {
            assert!(!(*h).prof_counted(), "not started");
            (*h).prof_start(100_000);
            let a: Vec<*mut u8> = (0..40).map(|_| (*h).alloc(c)).collect();
            for &p in &a[..20] {
                let slab = Heap::owned_slab(h, p).expect("a block of ours");
                assert!((*h).free_own_profiled(slab, p));
            }
            let k = (*h).prof_credit().unwrap();
            let lb = (*h).listed_bytes() as i64;
            assert!(lb > 0);
            (*h).prof_enter_counted();
            assert!((*h).prof_counted());
            assert_eq!((*h).prof_left(), k + lb, "the countdown");
            (*h).prof_enter_counted();
            assert_eq!((*h).prof_left(), k + lb, "entering twice changes nothing");
            // Counted: every free is listed, whatever the true credit.
            let before = listed(&*h);
            for &p in &a[20..] {
                let slab = Heap::owned_slab(h, p).expect("a block of ours");
                assert!((*h).free_own_profiled(slab, p));
            }
            assert_eq!(listed(&*h), before + 20 * c.size() as u64);
            let k2 = k - 20 * c.size() as i64;
            (*h).set_prof_left(k2 + (*h).listed_bytes() as i64);
            assert!(
                !(*h).prof_leave_counted(k2 + 1),
                "a credit below the minimum"
            );
            assert!((*h).prof_counted());
            assert!((*h).prof_leave_counted(k2));
            assert!(!(*h).prof_counted());
            assert_eq!((*h).prof_credit(), Some(k2), "the true credit back");
            // A list drained to one block is refilled by half a list's worth, counted.
            (*h).drain_lists();
            let one = (*h).alloc(c);
            // The refill that served it, off the list.
            (*h).trim_list(c, (*h).sll.len(c.index()));
            let slab = Heap::owned_slab(h, one).expect("a block of ours");
            (*h).free_own_listed(slab, one);
            assert_eq!((*h).sll.len(c.index()), 1);
            let (d0, l0) = ((*h).debit(), listed(&*h));
            (*h).refill_short_list(c);
            let got = listed(&*h) - l0;
            assert!((*h).sll.len(c.index()) > 1, "refilled");
            assert_eq!(
                (*h).debit().wrapping_sub(d0),
                got,
                "the debit counts the refill"
            );
            for class in SizeClass::all() {
                (*h).drain_list(class);
            }
            ctx.retire_heap(NonNull::new_unchecked(h));
        }
    }

    /// H19: the profiled free's push onto an empty list marks the class (so the listed bytes
    /// count it) and refills the list first when the credit takes half a list's worth, the
    /// debit counting both; a credit short of the refill pushes the block alone; a push onto a
    /// list that holds blocks keeps them counted without a mark of its own.
    #[test]
    fn a_profiled_push_onto_an_empty_list_marks_and_refills_it() {
        let ctx = crate::test_ctx(8, false, no_report);
        let h = ctx.new_heap().unwrap().as_ptr();
        let c = class_of(48).unwrap();
        let i = c.index();
        let size = c.size() as u64;
        // SAFETY: a fresh heap, this test thread's alone, retired at the end; every block is
        // freed once.
        unsafe {
            let a: Vec<*mut u8> = (0..8).map(|_| (*h).alloc(c)).collect();
            // A credit that takes a refill: the first free refills, then pushes.
            (*h).prof_start(1 << 30);
            assert!((*h).sll.is_empty(i), "the start drains the lists");
            let (d0, k0) = ((*h).debit(), (*h).prof_credit().unwrap());
            let slab = Heap::owned_slab(h, a[0]).expect("a block of ours");
            assert!((*h).free_own_profiled(slab, a[0]));
            let n = (*h).sll.len(i);
            assert!(n > 1, "refilled: {n} blocks");
            assert_eq!((*h).debit().wrapping_sub(d0), u64::from(n) * size);
            assert_eq!((*h).listed_bytes(), u64::from(n) * size, "marked");
            assert_eq!(
                (*h).prof_credit().unwrap(),
                k0 - (u64::from(n) * size) as i64
            );
            // Onto a list with blocks: counted, and still every listed byte.
            let slab = Heap::owned_slab(h, a[1]).expect("a block of ours");
            assert!((*h).free_own_profiled(slab, a[1]));
            assert_eq!((*h).sll.len(i), n + 1);
            assert_eq!((*h).listed_bytes(), listed(&*h));
            assert_eq!((*h).debit().wrapping_sub(d0), u64::from(n + 1) * size);
            // A credit that covers one block but no refill: the block alone.
            (*h).drain_lists();
            assert_eq!((*h).listed_bytes(), 0);
            let k = (*h).prof_credit().unwrap();
            (*h).prof_add(size as i64 - k);
            let d1 = (*h).debit();
            let slab = Heap::owned_slab(h, a[2]).expect("a block of ours");
            assert!((*h).free_own_profiled(slab, a[2]));
            assert_eq!((*h).sll.len(i), 1, "no refill");
            assert_eq!((*h).listed_bytes(), size, "marked");
            assert_eq!((*h).debit().wrapping_sub(d1), size);
            assert_eq!((*h).prof_credit(), Some(0));
            // No credit left: off the lists.
            let slab = Heap::owned_slab(h, a[3]).expect("a block of ours");
            assert!((*h).free_own_profiled(slab, a[3]));
            assert_eq!((*h).sll.len(i), 1);
            for &p in &a[4..] {
                let slab = Heap::owned_slab(h, p).expect("a block of ours");
                (*h).free_own_unlisted(slab, p);
            }
            for class in SizeClass::all() {
                (*h).drain_list(class);
            }
            let s = ctx.snapshot();
            let live_count: i64 = (0..CLASSES).map(|c| s.live(c)).sum();
            assert_eq!(live_count, 0, "every allocation freed once, counted once");
            ctx.retire_heap(NonNull::new_unchecked(h));
        }
    }
}
