//! What the facade's heap profiler needs of a heap: its credit (H19), its holder, a second set
//! of thread lists that only the profiler fills (H21), and the holder's blocks given back
//! (H22).
use super::*;
use hakmem_tls_sll::MAX_CAP;

/// A fill that walks blocks (a refill, a chain) takes at most the credit over this (H19), so
/// that the credit shrinks with the countdown instead of running out while the holder still
/// holds much of it; an exchange, one step whatever its length, may take all the credit
/// covers. (c/random-mixed/w400 under callgrind: 84.1 M instructions at 8 against 98.7 M at 2,
/// 83.7 M at 16 and 88.6 M at 32, before exchanges took the whole credit.)
const FILL_SHARE: i64 = 8;

/// Where the holder lies in its mapping. Heaps and holders are mapped page-aligned, so without
/// a skew a holder's list heads sit at the same offsets within a page as its heap's, and the
/// next allocation's load of the holder's head after a free's store to the heap's (4 KiB
/// apart, or a multiple) is held back as if it read the stored word (the store buffer matches
/// on the low 12 address bits). Half a page and two lines apart, they never match.
const HOLDER_SKEW: usize = 2048 + 128;
const _: () = assert!(HOLDER_SKEW.is_multiple_of(core::mem::align_of::<Heap>()));

/// What the profiler tallies of a heap's sample interval, to choose how the next one counts
/// (H24): the facade's policy, kept with the heap as its credit is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProfTally {
    /// Every allocation is counted one by one (the holder stays empty), instead of the
    /// holder serving them uncounted.
    pub counting: bool,
    /// Slow allocations the holder could not serve in its recent intervals (halved at each
    /// interval's end).
    pub events: u32,
    /// Give-backs of the holder's lists for a credit that ran short, in the same intervals.
    pub trims: u32,
    /// Blocks the holder gained less those it gave back, and allocations counted, in the
    /// same intervals: about their small allocations.
    pub blocks: u64,
    /// Intervals left to count one by one before the holder is tried again.
    pub left: u32,
    /// How many intervals the next switch to counting lasts.
    pub period: u32,
    /// Switches to counting since the profiler started on the heap.
    pub switches: u32,
    /// Sample intervals ended since the profiler started on the heap (at most `u32::MAX`).
    pub intervals: u32,
}

impl ProfTally {
    /// A heap's tally when the profiler starts on it: the holder serves.
    pub const NEW: ProfTally = ProfTally {
        counting: false,
        events: 0,
        trims: 0,
        blocks: 0,
        left: 0,
        period: 1,
        switches: 0,
        intervals: 0,
    };
}

impl Heap {
    /// Starts the profiler's credit at `credit` bytes (H19) with an empty holder (H21),
    /// mapped at the first start on this heap. False when the holder could not be mapped: the
    /// credit runs, and the caller counts every allocation itself.
    pub fn prof_start(&mut self, credit: i64) -> bool {
        self.prof_give_back();
        self.prof_credit = credit;
        self.prof_started = true;
        if self.prof_holder.is_null() {
            let ctx = self.ctx();
            let page = ctx.os.page_size();
            let len = (core::mem::size_of::<Heap>() + HOLDER_SKEW + page - 1) & !(page - 1);
            let Some(m) = ctx.os.map(len, page, &ctx.stats) else {
                return false;
            };
            // SAFETY: within the mapping of `len` bytes, which holds a `Heap` past the skew.
            let hold = unsafe { m.as_ptr().add(HOLDER_SKEW) }.cast::<Heap>();
            // Under the heap list's lock: a snapshot reads the pointer under it (H21).
            ctx.heaps.with(|_| self.prof_holder = hold);
        }
        let check = self.ctx().check;
        let this: *mut Heap = self;
        // SAFETY: the holder is this heap's alone (fresh zeroed memory, a valid `Heap`, or the
        // holder of an earlier life, emptied by `prof_give_back` above); its lists' counts are
        // read by a snapshot under the heap list's lock, which is held while they are made.
        self.ctx().heaps.with(|_| unsafe {
            let hold = &mut *(*this).prof_holder;
            hold.sll = Lists::new(if check {
                [0; CLASSES]
            } else {
                [MAX_CAP; CLASSES]
            });
            let linked = hold.sll.set_link_key((*this).sll.link_key());
            debug_assert!(linked, "new lists are empty");
            hold.key = (*this).key;
            hold.ctx = (*this).ctx;
            hold.tiny = (*this).tiny;
            hold.owned_slabs = [EMPTY_SLOT; OWNED_CACHE];
            hold.owned_bases = (*this).owned_bases;
            hold.id = EMPTY_ID;
            hold.prof_owner = this;
        });
        self.prof_listed = [0; 2];
        self.prof_tally = ProfTally::NEW;
        true
    }

    /// True once [`Heap::prof_start`] ran on this heap (its thread's or an earlier thread's:
    /// a parked heap keeps its credit, H18).
    #[inline(always)]
    pub fn prof_started(&self) -> bool {
        self.prof_started
    }

    /// The holder (H21) while the profiler runs on this heap: what the thread's allocation
    /// slot holds. `None` before [`Heap::prof_start`] or when the holder could not be mapped.
    #[inline(always)]
    pub fn prof_holder(&self) -> Option<*mut Heap> {
        (self.prof_started && !self.prof_holder.is_null()).then_some(self.prof_holder)
    }

    /// The profiler's tally of this heap's sample interval (H24).
    #[inline(always)]
    pub fn prof_tally(&mut self) -> &mut ProfTally {
        &mut self.prof_tally
    }

    /// Whether the profiler counts every allocation of the heap at `this` (H24): false for an
    /// empty heap, which is only read (H9).
    ///
    /// # Safety
    /// `this` is a heap of the calling thread or an empty heap.
    #[inline(always)]
    pub unsafe fn prof_counting(this: *const Heap) -> bool {
        // SAFETY: the caller's contract: a read of a heap no other thread writes.
        unsafe { (*this).prof_tally.counting }
    }

    /// The profiler's credit (H19): the countdown less the bytes on the holder's lists.
    #[inline(always)]
    pub fn prof_credit(&self) -> i64 {
        self.prof_credit
    }

    /// Adds `delta` bytes to the profiler's credit (H19): a counted allocation's `-size`, a
    /// sample's new interval.
    #[inline(always)]
    pub fn prof_add(&mut self, delta: i64) {
        self.prof_credit += delta;
    }

    /// The holder's lists' blocks of `class` (H21).
    pub fn prof_held(&self, class: SizeClass) -> u32 {
        match self.prof_holder() {
            // SAFETY: this heap's holder, used by its thread alone.
            Some(hold) => unsafe { (*hold).sll.len(class.index()) },
            None => 0,
        }
    }

    /// The bytes on the holder's lists (H19): the countdown is the credit plus these.
    pub fn prof_held_bytes(&self) -> u64 {
        let Some(hold) = self.prof_holder() else {
            return 0;
        };
        let mut bytes = 0;
        for w in 0..2 {
            let mut m = self.prof_listed[w];
            while m != 0 {
                let i = w * 64 + m.trailing_zeros() as usize;
                m &= m - 1;
                if let Some(class) = SizeClass::new(i) {
                    // SAFETY: this heap's holder, used by its thread alone.
                    let n = unsafe { (*hold).sll.len(i) };
                    bytes += u64::from(n) * class.size() as u64;
                }
            }
        }
        bytes
    }

    /// Fills the holder's list of `class` when it holds at most one block (the fast pop never
    /// takes a list's last block, H16) and the credit covers two blocks or more (H19, H21):
    /// this heap's list, refilled from the cache or the slabs when it holds half its bound or
    /// less (up to its bound, or an eighth of the credit: `FILL_SHARE`), changes places with
    /// the holder's by one [`Lists::exchange`] when the credit covers it (the holder's lone
    /// block, if any, comes to this heap's list), else a chain of that share moves from its
    /// top. The credit falls by the bytes the holder gains, and stays at least 0. Returns the
    /// blocks moved; 0 in check mode, whose lists have no room (H6), and when the OS refuses
    /// memory.
    ///
    /// # Safety
    /// This is a real heap whose only user is the calling thread.
    pub unsafe fn prof_fill(&mut self, class: SizeClass) -> u32 {
        let Some(hold) = self.prof_holder() else {
            return 0;
        };
        let i = class.index();
        let b = class.size() as i64;
        let cap = self.sll.cap(i);
        // SAFETY: this heap's holder, used by its thread alone.
        let held = unsafe { (*hold).sll.len(i) };
        // The blocks the holder may hold after the fill: what the credit covers (beyond
        // `held`) for an exchange, which costs one step; for a refill or a chain, which cost a
        // step per block, an eighth of the credit at most (at least two blocks), so that the
        // credit runs short only near the sample point however many classes the holder holds.
        let cover = self.prof_credit / b + i64::from(held);
        let share = (self.prof_credit / (FILL_SHARE * b)).max(2) + i64::from(held);
        let most = cover.min(share).min(i64::from(MAX_CAP)) as u32;
        if cap < 2 || held > 1 || most < 2 {
            return 0;
        }
        let want = cap.min(most);
        let len = self.sll.len(i);
        if len < want / 2 + 1 {
            // A slow-path event of the class's, as `alloc_slow`'s refill is (H11, H14).
            self.purge_if_due();
            let now = self.adapt_tick();
            self.mark_active(class, now);
            let batch = (want - len).min(self.cache.len(i));
            for _ in 0..batch {
                let Some(p) = self.cache.pop(i) else {
                    break;
                };
                // SAFETY: a free block this heap owns, on no list, keyed (FK1); a move, not a
                // free (H13); the list is below `want`, at most its bound.
                unsafe { self.sll.put(i, p, self.key) };
            }
            let len = self.sll.len(i);
            if len < want {
                // SAFETY: only the heap's thread gets here.
                unsafe { self.refill_list(class, want - len) };
            }
        }
        let len = self.sll.len(i);
        if len <= held {
            return 0;
        }
        let gained = if i64::from(len) <= cover {
            // SAFETY: both lists are this thread's and share the link key (`prof_start`); the
            // holder's bound is MAX_CAP, at least any list's length, and this list's takes the
            // holder's one block at most, as it held more.
            unsafe { (*hold).sll.exchange(&mut self.sll, i) };
            len - held
        } else {
            // The lone block goes back first (the credit rises by it), then the holder gains
            // the whole chain.
            if held == 1 {
                self.prof_give_back_class(class);
            }
            let chain = self.take_list(class, most);
            // SAFETY: free blocks of ours, keyed, linked head..=tail, on no list; the holder's
            // list is empty and its bound is MAX_CAP.
            unsafe { (*hold).sll.splice(i, chain) };
            chain.len
        };
        self.prof_credit -= i64::from(gained) * b;
        self.prof_tally.blocks += u64::from(gained);
        self.prof_listed[i / 64] |= 1 << (i % 64);
        gained
    }

    /// A block of `class` from the holder's list with every link checked (H16, H21), or null
    /// when it is empty: the block the fast pop leaves (a list's last, or one whose link
    /// leaves the owned-superslab table). The credit is unchanged (H19).
    ///
    /// # Safety
    /// This is a real heap whose only user is the calling thread.
    pub unsafe fn prof_pop(&mut self, class: SizeClass) -> *mut u8 {
        match self.prof_holder() {
            // SAFETY: this heap's holder, used by its thread alone; its checked pop checks far
            // links against this heap (H21).
            Some(hold) if !unsafe { (*hold).sll.is_empty(class.index()) } => unsafe {
                (*hold).pop_list(class)
            },
            _ => null_mut(),
        }
    }

    /// Gives the holder's blocks back to this heap (H22) until at least `bytes` bytes went
    /// back or the holder is empty; the credit rises by them (H19). First by exchanges, one
    /// step per class whatever its length: a holder list longer than this heap's list of its
    /// class changes places with it (the holder keeps the shorter list), then from the tops of
    /// the holder's lists. Returns the bytes given back.
    pub fn prof_trim(&mut self, bytes: u64) -> u64 {
        let mut moved = 0;
        let hold = self.prof_holder;
        if hold.is_null() {
            return 0;
        }
        for w in 0..2 {
            let mut m = self.prof_listed[w];
            while m != 0 && moved < bytes {
                let i = w * 64 + m.trailing_zeros() as usize;
                m &= m - 1;
                // SAFETY: this heap's holder, used by its thread alone.
                let (h, r) = unsafe { ((*hold).sll.len(i), self.sll.len(i)) };
                if h > r && self.sll.cap(i) >= h {
                    if let Some(class) = SizeClass::new(i) {
                        // SAFETY: both lists are this thread's and share the link key; each
                        // bound takes the other's blocks (the holder's is MAX_CAP).
                        unsafe { self.sll.exchange(&mut (*hold).sll, i) };
                        let gone = u64::from(h - r) * class.size() as u64;
                        self.prof_credit += gone as i64;
                        self.prof_tally.blocks =
                            self.prof_tally.blocks.saturating_sub(u64::from(h - r));
                        moved += gone;
                        if r == 0 {
                            self.prof_listed[w] &= !(1 << (i % 64));
                        }
                    }
                }
            }
        }
        for w in 0..2 {
            while self.prof_listed[w] != 0 && moved < bytes {
                let i = w * 64 + self.prof_listed[w].trailing_zeros() as usize;
                if let Some(class) = SizeClass::new(i) {
                    let size = class.size() as u64;
                    let n = (bytes - moved).div_ceil(size).min(u64::from(u32::MAX)) as u32;
                    moved += self.prof_give_back_blocks(class, n);
                    if self.prof_held(class) != 0 {
                        // The class keeps blocks (and its mark), and `bytes` went back.
                        break;
                    }
                }
                self.prof_listed[w] &= !(1 << (i % 64));
            }
        }
        moved
    }

    /// Gives every block on the holder's lists back to this heap (H22): before the heap is
    /// parked (H18) or torn down (H5), and at each start of the profiler on it.
    pub fn prof_give_back(&mut self) {
        self.prof_trim(u64::MAX);
    }

    /// Gives the holder's list of `class` back (H22) ([`Heap::prof_give_back_blocks`]).
    fn prof_give_back_class(&mut self, class: SizeClass) -> u64 {
        self.prof_give_back_blocks(class, u32::MAX)
    }

    /// Gives up to `max` blocks from the top of the holder's list of `class` back (H22): the
    /// whole list by one exchange onto this heap's list when that is empty and its bound takes
    /// them, else onto it as a chain when it has room, else to the cache while it has room and
    /// the rest to their slabs. The credit rises by their bytes (H19); returns them.
    fn prof_give_back_blocks(&mut self, class: SizeClass, max: u32) -> u64 {
        let hold = self.prof_holder;
        if hold.is_null() {
            return 0;
        }
        let i = class.index();
        // SAFETY: this heap's holder, used by its thread alone.
        let before = unsafe { (*hold).sll.len(i) };
        let n = before.min(max);
        if n == 0 {
            return 0;
        }
        if n == before && self.sll.is_empty(i) && self.sll.cap(i) >= n {
            // SAFETY: both lists are this thread's and share the link key; this list is empty
            // and its bound takes the holder's blocks; the holder's bound takes nothing.
            unsafe { self.sll.exchange(&mut (*hold).sll, i) };
        } else {
            let registry = &self.ctx().registry;
            // SAFETY: the holder's list holds free blocks of ours (H21); every link followed
            // is checked against this heap, as `take_list` checks its own.
            let (chain, bad) = unsafe {
                (*hold).sll.take(i, n, |b| {
                    in_owned_superslab(&self.owned_bases, b)
                        || far_block_ok(&self.owned_slabs, registry, self.id, class, b)
                })
            };
            if let Some(b) = bad {
                self.ctx().report(Corrupt::FreeList(b as usize));
            }
            if i64::from(chain.len) <= i64::from(self.sll.cap(i)) - i64::from(self.sll.len(i)) {
                // SAFETY: free blocks of ours, keyed, linked head..=tail, on no list; the list
                // has room for them (L2).
                unsafe { self.sll.splice(i, chain) };
            } else {
                self.dispose_chain(class, chain, true);
            }
        }
        // What left the holder (a bad link drops the rest of its list, tls_sll L8).
        // SAFETY: as above.
        let gone = before - unsafe { (*hold).sll.len(i) };
        let bytes = u64::from(gone) * class.size() as u64;
        self.prof_credit += bytes as i64;
        self.prof_tally.blocks = self.prof_tally.blocks.saturating_sub(u64::from(gone));
        bytes
    }

    /// The holder's mirror of the owned-superslab table's slot `slot` (H21): set to `base`.
    #[inline(always)]
    pub(crate) fn prof_mirror_base(&mut self, slot: usize, base: usize) {
        // SAFETY: this heap's holder (mapped for good once made), used by its thread alone.
        if let Some(hold) = unsafe { self.prof_holder.as_mut() } {
            hold.owned_bases[slot] = base;
        }
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
}

#[cfg(all(test, not(loom)))]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    fn no_report(c: Corrupt) {
        panic!("unexpected report: {c:?}");
    }

    /// Frees `p`, a block of `h`'s, by the owner's fast free or, when that declines, its
    /// full free.
    ///
    /// # Safety
    /// `h` is this thread's heap and `p` one of its blocks, given up.
    unsafe fn free(h: *mut Heap, p: *mut u8) {
        // SAFETY: the caller's contract.
        unsafe {
            if !Heap::try_free_owned(h, p) {
                let slab = Heap::owned_slab(h, p).expect("a block of ours");
                (*h).free_own(slab, p);
            }
        }
    }

    /// A block of `c` from `h`'s holder `hold`: its fast pop, or when that declines its checked
    /// pop; null when the holder's list is empty.
    ///
    /// # Safety
    /// `h` is this thread's heap and `hold` its holder.
    unsafe fn pop_held(h: *mut Heap, hold: *mut Heap, c: SizeClass) -> *mut u8 {
        // SAFETY: the caller's contract.
        unsafe {
            let p = Heap::alloc_fast(hold, c);
            if p.is_null() {
                (*h).prof_pop(c)
            } else {
                p
            }
        }
    }

    /// H19: fills lower the credit by the bytes they move and never below 0, pops from the
    /// holder (fast or checked) leave it alone, frees onto the heap's own lists do not touch
    /// it, and a give-back raises it by the bytes it moves: so the credit plus the holder's
    /// bytes falls by exactly the bytes handed out from the holder.
    #[test]
    fn the_credit_is_the_countdown_less_the_held_bytes() {
        let ctx = crate::test_ctx(8, false, no_report);
        let h = ctx.new_heap().unwrap().as_ptr();
        let c = class_of(32).unwrap();
        let b = c.size() as i64;
        // SAFETY: a fresh heap, this test thread's alone, retired at the end; every block is
        // freed once.
        unsafe {
            assert!((*h).prof_start(100 * b));
            let hold = (*h).prof_holder().unwrap();
            let mut countdown = 100 * b;
            let mut out = Vec::new();
            for round in 0..1000 {
                let moved = (*h).prof_fill(c);
                assert!((*h).prof_credit() >= 0, "round {round}");
                assert_eq!(
                    (*h).prof_credit() + (*h).prof_held_bytes() as i64,
                    countdown,
                    "a fill moves credit to the holder"
                );
                if moved == 0 {
                    break;
                }
                loop {
                    let p = pop_held(h, hold, c);
                    if p.is_null() {
                        break;
                    }
                    countdown -= b;
                    out.push(p);
                    assert_eq!(
                        (*h).prof_credit() + (*h).prof_held_bytes() as i64,
                        countdown
                    );
                }
                // Frees go to the heap's own lists, outside the credit.
                for p in out.drain(..out.len() / 2) {
                    free(h, p);
                }
                assert_eq!(
                    (*h).prof_credit() + (*h).prof_held_bytes() as i64,
                    countdown
                );
            }
            assert!(
                countdown < 2 * b,
                "filled until the credit ran out: {countdown}"
            );
            (*h).prof_fill(c);
            let before = (*h).prof_credit();
            let given = (*h).prof_trim(u64::MAX);
            assert_eq!((*h).prof_credit(), before + given as i64);
            assert_eq!((*h).prof_held_bytes(), 0);
            for p in out {
                free(h, p);
            }
            ctx.retire_heap(NonNull::new_unchecked(h));
        }
    }

    /// H21: the holder's owned-superslab table follows the heap's as superslabs are linked,
    /// so the fast pop from the holder follows links into every superslab the heap owns; and
    /// the holder's checked pop checks far links against the heap (no false report).
    #[test]
    fn the_holder_mirrors_the_owned_superslab_table() {
        let ctx = crate::test_ctx(16, false, no_report);
        let h = ctx.new_heap().unwrap().as_ptr();
        let c = class_of(1024).unwrap();
        // SAFETY: a fresh heap, this test thread's alone, retired at the end; every block is
        // freed once.
        unsafe {
            assert!((*h).prof_start(1 << 40));
            let hold = (*h).prof_holder().unwrap();
            // More than one superslab's worth of blocks: new superslabs are linked while the
            // holder exists.
            let n = 3 * SS_SIZE / c.size();
            let blocks: Vec<*mut u8> = (0..n).map(|_| (*h).alloc(c)).collect();
            assert!((*h).owned_count > 2);
            assert_eq!((*hold).owned_bases, (*h).owned_bases, "mirrored");
            // Frees in an order that interleaves superslabs, so links cross them.
            for &p in blocks
                .iter()
                .step_by(2)
                .chain(blocks.iter().skip(1).step_by(2))
            {
                let slab = Heap::owned_slab(h, p).unwrap();
                (*h).free_own(slab, p);
            }
            let mut got = 0;
            while (*h).prof_fill(c) > 0 {
                loop {
                    let p = pop_held(h, hold, c);
                    if p.is_null() {
                        break;
                    }
                    got += 1;
                    let slab = Heap::owned_slab(h, p).expect("a block of ours");
                    (*h).free_own(slab, p);
                }
                if got > 4 * n {
                    break;
                }
            }
            assert!(got > n, "{got} pops from the holder");
            (*h).prof_give_back();
            ctx.retire_heap(NonNull::new_unchecked(h));
        }
    }

    /// H22: the holder's blocks go back when the heap is retired (and parked), so nothing
    /// stays held: after the retirement every superslab is released (none abandoned) and
    /// the stats count every block freed.
    #[test]
    fn the_holder_gives_its_blocks_back_at_retirement_and_park() {
        let ctx = crate::test_ctx(8, false, no_report);
        let c = class_of(64).unwrap();
        for park in [false, true] {
            let h = ctx.take_or_new_heap().unwrap();
            let hp = h.as_ptr();
            // SAFETY: this test thread's heap alone; every block is freed once.
            unsafe {
                assert!((*hp).prof_start(1 << 30));
                let p = (*hp).alloc(c);
                let slab = Heap::owned_slab(hp, p).unwrap();
                (*hp).free_own(slab, p);
                assert!((*hp).prof_fill(c) > 0);
                assert!((*hp).prof_held(c) > 0);
                if park {
                    ctx.park_heap(h);
                    assert_eq!((*hp).prof_held(c), 0, "given back at park");
                    ctx.retire_parked();
                } else {
                    ctx.retire_heap(h);
                    assert_eq!((*hp).prof_held(c), 0, "given back at retirement");
                }
            }
            let s = ctx.snapshot();
            assert_eq!(
                s.count(Event::Abandon),
                0,
                "nothing held, nothing abandoned"
            );
            let held: i64 = (0..CLASSES).map(|c| s.held(c)).sum();
            assert_eq!(held, 0, "no block held anywhere");
        }
    }
}
