//! # hakmem-medium: the medium tier
//!
//! Blocks of [`MAX_SMALL`]` + 1 ..= `[`MEDIUM_MAX`] bytes (alignment up to
//! [`MEDIUM_ALIGN`], 64 KiB), whole 4 KiB granules out of shared 2 MiB regions, instead of a dedicated 2 MiB-aligned
//! mapping each.
//!
//! A medium region is 2 MiB, 2 MiB-aligned and registered as [`Kind::Medium`], so a pointer
//! finds it by the registry as any other. Its first granule holds the `Region` header: list
//! link and [`SpanMap`], the page-granular map of its other 511 granules (bitmaps of the used,
//! possibly dirty and freed-block-start granules, and the length of the block starting at each
//! granule). A block is a run of granules with its length at its first one: no per-block header,
//! one address per block. Every region's map is read and written under one process-wide lock
//! (medium calls are rare next to small ones); nothing else touches it.
//!
//! ## Invariants
//! - **M1 (exact frees).** A free, `usable_size` or `realloc` of a pointer into a medium region
//!   is accepted only when it is a live block start (the length table says so, under the
//!   lock); a granule start that was a block start and has not been handed out since is a
//!   double free, anything else an invalid pointer (reported as the small tier's).
//! - **M2 (no event under the lock).** Nothing under the lock maps, unmaps, purges, registers or
//!   reports (a region is unregistered under it: M4): those may raise events whose subscriber
//!   allocates. Regions are mapped and released, and granules purged, with the lock released. A purge first reserves its runs
//!   (marks them used, with no block), so nothing hands them out while their pages go.
//! - **M3 (resident for reuse, purged in time).** A freed run keeps its pages. With the lru's
//!   purging on, a run free and dirty at two purge ticks one purge delay apart is purged
//!   (`MADV_DONTNEED`) at the second: pages of a freed run go back within one to two delays of
//!   the next medium call (or background purge tick). [`collect`] purges every free dirty run
//!   at once.
//! - **M4 (empty regions).** A region goes back to the lru (unregistered first) only when no
//!   block of it is held and no purge of it is in flight. One empty region is kept for the next
//!   medium block; [`collect`] releases it too. It is unregistered under the lock, as it is
//!   unlinked (the one registry call made under it: it raises no event, and the grace period
//!   it waits for (registry R6) waits for lookup sections, which never take this lock). So a
//!   free, `usable_size` or `realloc` that looks its pointer up again under the lock, and finds
//!   the same region, reads a region that stays mapped until the lock is released: a pointer
//!   found by a lookup whose region went away meanwhile is reported, never followed (F7).
//! - **M6 (longest-run bound).** A region's `max_run` is at least its longest free run: a
//!   search that finds no fit sets it to the longest run it saw, and every free (a block, a
//!   shrink's tail, a purge's reservation ending) raises it to the run the freed granules
//!   coalesced into. So a request longer than the bound skips the region without a search, and
//!   a region with a fitting run is never skipped.
//! - **M5 (zeroed).** A granule is clean (reads as zero) when fresh from the OS or purged; a
//!   zeroed request whose granules are all clean is not written again.
//! - **M7 (huge pages for a dense tier).** A new region is advised for huge pages before its
//!   header's write, its first touch, so that one fault serves its 2 MiB instead of 512
//!   (through the context's `first_touch`, hot_heap HG1, which times it and stops the advice
//!   for a while after a slow one), when the tier holds at least [`HUGE_AFTER`] regions and at
//!   least 7/8 of their granules have been touched: in a block, or free and dirty. An advised
//!   region is resident whole, so a tier whose regions hold little stays in base pages. The
//!   advice is taken back (the region is served in base pages after it) before the first purge
//!   of any of the region's runs, which splits the huge page, and before the region goes back
//!   to the lru, so a region the lru hands on carries no advice its next owner did not ask
//!   for. A region's `huge` flag is read and written under the lock, or by the one thread that
//!   holds the region once it is unlinked and unregistered.
//! - **M8 (search hints).** A request of `n` granules searches the region list from the hint
//!   of its size bucket (`n` from 2^b to 2^(b+1) - 1 granules is bucket b), not from its
//!   head: every region before the hint has fewer free granules than 2^b or a longest-run
//!   bound (M6) below it, so it holds no request of the bucket, and the search skips no region
//!   with a fitting run (it picks the region a search from the head would). A search moves
//!   the hint past the regions at its front that it finds cannot hold the bucket; a free, a
//!   shrink or a purge's end that raises a region's bound above 2^b moves the bucket's hint
//!   back to that region when it comes earlier in the list (regions keep the order they were
//!   pushed in: a push order number says which comes first); a new region becomes the hint of
//!   each bucket that had none, and an unlinked one passes its hints to the next region. So a
//!   tier of many full regions serves a block without reading each of them.
//!
//! The tier owns its lock and list ([`lock_for_fork`] and [`force_unlock`] are for the
//! facade's fork handlers) and reports nothing itself: what the caller passes in (the context,
//! this thread's stats [`Row`]) is all it uses, and a pointer it does not accept comes back as
//! an error ([`Bad`]) for the caller to report. Its regions belong to the first context one is
//! made for (registered in its registry, given back to its lru): a call with another context
//! makes no region and purges nothing.
#![deny(unsafe_op_in_unsafe_fn)]

use core::ptr::{addr_of_mut, null_mut, NonNull};
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use hakmem_hot_heap::Ctx;
use hakmem_lru::now_ns;
use hakmem_registry::Kind;
use hakmem_route::{CLASSES, MAX_SMALL};
use hakmem_stats::{Event, ThreadStats};
use hakmem_superslab::{SpinLock, PAGE, SS_SIZE};

/// The README's examples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// The stats row the large and medium tiers count in.
pub const LARGE_ROW: usize = CLASSES;

/// Where a block of the large row is counted: this thread's heap's counters, or `None` for a
/// thread without a live heap (then the context's shared ones).
pub type Row<'a> = Option<&'a ThreadStats>;

/// Counts a block of the large row (large and medium blocks) in `row`, else in `ctx`'s stats.
#[inline]
pub fn count(ctx: &Ctx, row: Row<'_>, alloc: bool) {
    match (row, alloc) {
        (Some(stats), true) => stats.on_alloc(LARGE_ROW),
        (Some(stats), false) => stats.on_free(LARGE_ROW),
        (None, true) => ctx.stats.count_alloc(LARGE_ROW),
        (None, false) => ctx.stats.count_free(LARGE_ROW),
    }
}

/// The granule: blocks are whole granules, at granule-aligned addresses.
pub const GRANULE: usize = PAGE;
/// Granules in a region.
const GRANULES: usize = SS_SIZE / GRANULE;
const WORDS: usize = GRANULES / 64;
/// Granules the header takes, at the start of a region.
const HEADER_GRANULES: usize = 1;
/// The largest block in granules: half of a region's data, so two always fit.
const MAX_GRANULES: usize = (GRANULES - HEADER_GRANULES) / 2;
/// The largest medium block (1020 KiB).
pub const MEDIUM_MAX: usize = MAX_GRANULES * GRANULE;
/// The largest alignment the tier serves: a block starts at a granule whose index is a multiple
/// of `align / GRANULE` (regions are 2 MiB-aligned). A fresh region still fits the largest block
/// at that alignment.
pub const MEDIUM_ALIGN: usize = 64 * 1024;
const _: () = assert!(MEDIUM_ALIGN / GRANULE + MAX_GRANULES <= GRANULES);
/// Most runs one purge pass reserves before it releases the lock.
const BATCH: usize = 64;
/// Regions the tier holds before a new one may be advised for huge pages (M7): 8 MiB.
pub const HUGE_AFTER: usize = 4;
/// Size buckets of the search hints (M8): a block is at most `MAX_GRANULES` (255) granules.
const BUCKETS: usize = 8;
const _: () = assert!(MAX_GRANULES < 1 << BUCKETS);

/// The search-hint bucket of a request of `n` granules (`1..=MAX_GRANULES`, M8).
fn bucket(n: usize) -> usize {
    (usize::BITS - 1 - n.max(1).leading_zeros()) as usize
}

const MAGIC: usize = 0x4841_4b4d_4d45_0001; // "HAKMME" v1

const _: () = assert!(GRANULES.is_multiple_of(64) && GRANULES <= u16::MAX as usize);
const _: () = assert!(core::mem::size_of::<Region>() <= HEADER_GRANULES * GRANULE);
const _: () = assert!(MEDIUM_MAX > MAX_SMALL);

/// True when the medium tier serves `size` bytes at `align`.
#[inline]
pub fn serves(ctx: &Ctx, size: usize, align: usize) -> bool {
    size > MAX_SMALL
        && size <= MEDIUM_MAX
        && align <= MEDIUM_ALIGN
        // Purges and mappings are in the OS's pages: the tier runs where those are granules.
        && ctx.env().os.page_size() == GRANULE
}

/// What is wrong with a pointer into a medium region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bad {
    /// Not a block start this region handed out.
    NotABlock,
    /// A block start already freed, not handed out since.
    DoubleFree,
}

/// A set of granules, one bit each.
type Bits = [u64; WORDS];

fn bit(b: &Bits, i: usize) -> bool {
    b[i / 64] >> (i % 64) & 1 == 1
}

/// The bits of word `w` that fall in `[g, g + n)`.
#[inline]
fn word_mask(w: usize, g: usize, n: usize) -> u64 {
    let (lo, hi) = (g.max(w * 64), (g + n).min(w * 64 + 64));
    if lo >= hi {
        return 0;
    }
    let len = hi - lo;
    let ones = if len == 64 { !0 } else { (1u64 << len) - 1 };
    ones << (lo - w * 64)
}

/// Sets (`on`) or clears the bits of `[g, g + n)`, a word at a time.
fn set_range(b: &mut Bits, g: usize, n: usize, on: bool) {
    if n == 0 {
        return;
    }
    let (first, last) = (g / 64, (g + n - 1) / 64);
    for (word, w) in b[first..=last].iter_mut().zip(first..) {
        let m = word_mask(w, g, n);
        if on {
            *word |= m;
        } else {
            *word &= !m;
        }
    }
}

/// True when some bit of `[g, g + n)` is set.
fn any_in(b: &Bits, g: usize, n: usize) -> bool {
    n != 0 && (g / 64..=(g + n - 1) / 64).any(|w| b[w] & word_mask(w, g, n) != 0)
}

/// The first granule at or after `from` whose bit is `one`; [`GRANULES`] when there is none.
fn next(b: &Bits, from: usize, one: bool) -> usize {
    let mut i = from;
    while i < GRANULES {
        let w = if one { b[i / 64] } else { !b[i / 64] } >> (i % 64);
        if w != 0 {
            return (i + w.trailing_zeros() as usize).min(GRANULES);
        }
        i = (i / 64 + 1) * 64;
    }
    GRANULES
}

/// The last granule before `before` whose bit is set; `None` when there is none.
fn prev_set(b: &Bits, before: usize) -> Option<usize> {
    let mut end = before.min(GRANULES);
    while end > 0 {
        let w = (end - 1) / 64;
        let v = b[w] & word_mask(w, w * 64, end - w * 64);
        if v != 0 {
            return Some(w * 64 + 63 - v.leading_zeros() as usize);
        }
        end = w * 64;
    }
    None
}

/// The span map of one region: which granules are blocks, which are free, which may hold
/// data. Plain data: the caller serialises access (the tier's lock).
///
/// The counts come first: with the region header's list link they share its first cache line,
/// so a search that skips a region (too few free granules, or too short a longest run, M6)
/// reads one line of it.
#[repr(C)]
pub struct SpanMap {
    /// Granules neither used nor reserved.
    free: u32,
    /// Live blocks.
    live: u32,
    /// Purge reservations in flight.
    reserved: u32,
    /// At least the longest free run (M6): exact after a search that found no fit, raised to
    /// the coalesced run by every free, so a region it rules out is skipped without a search.
    max_run: u32,
    /// Granules in a block, in the header, or reserved by a purge in flight.
    used: Bits,
    /// Granules that may be nonzero (handed out since the OS last zeroed them).
    dirty: Bits,
    /// Free granules that were dirty at the last purge tick (M3).
    aged: Bits,
    /// Granules that are the start of a freed block not handed out since (M1).
    freed: Bits,
    /// At a live block's first granule, its length in granules; 0 everywhere else.
    len: [u16; GRANULES],
}

impl SpanMap {
    /// A map of a region whose granules are all clean (`zeroed`) or may all hold data.
    pub fn new(zeroed: bool) -> Self {
        let mut m = SpanMap {
            used: [0; WORDS],
            dirty: [if zeroed { 0 } else { !0 }; WORDS],
            aged: [0; WORDS],
            freed: [0; WORDS],
            len: [0; GRANULES],
            free: (GRANULES - HEADER_GRANULES) as u32,
            live: 0,
            reserved: 0,
            max_run: (GRANULES - HEADER_GRANULES) as u32,
        };
        set_range(&mut m.used, 0, HEADER_GRANULES, true);
        set_range(&mut m.dirty, 0, HEADER_GRANULES, true);
        m
    }

    /// Live blocks.
    pub fn live(&self) -> u32 {
        self.live
    }

    /// Free granules (not in a block, the header or a purge in flight).
    pub fn free_granules(&self) -> usize {
        self.free as usize
    }

    /// A place for `n` granules starting at a multiple of `step` (a power of two) in the smallest
    /// free run that holds them, best fit: that first granule.
    fn find(&mut self, n: usize, step: usize) -> Option<usize> {
        if n == 0 || n > self.free as usize || n > self.max_run as usize {
            return None;
        }
        let mut best: Option<(usize, usize)> = None;
        let mut longest = 0;
        let mut g = next(&self.used, 0, false);
        while g < GRANULES {
            let end = next(&self.used, g, true);
            let run = end - g;
            let at = g.next_multiple_of(step);
            if run == n && at == g {
                return Some(g);
            }
            if at + n <= end && best.is_none_or(|(_, r)| run < r) {
                best = Some((at, run));
            }
            longest = longest.max(run);
            g = next(&self.used, end, false);
        }
        if best.is_none() {
            // Every run was looked at: the bound is exact now (M6).
            self.max_run = longest as u32;
        }
        best.map(|(g, _)| g)
    }

    /// Raises the longest-run bound (M6) to the free run that now holds granule `g`.
    fn note_free_run(&mut self, g: usize) {
        let start = prev_set(&self.used, g).map_or(0, |u| u + 1);
        let end = next(&self.used, g, true);
        self.max_run = self.max_run.max((end - start) as u32);
    }

    /// The longest-run bound (M6), for tests.
    #[cfg(test)]
    fn max_run(&self) -> usize {
        self.max_run as usize
    }

    /// Hands out a block of `n` granules (`1..=MAX_GRANULES`): its first granule and whether
    /// any of its granules may hold data. `None` when no free run is long enough.
    #[cfg(test)]
    pub fn alloc(&mut self, n: usize) -> Option<(usize, bool)> {
        self.alloc_aligned(n, 1)
    }

    /// Hands out a block of `n` granules (`1..=MAX_GRANULES`) whose first granule is a multiple
    /// of `step` (a power of two, at most `MEDIUM_ALIGN / GRANULE`): its first granule and
    /// whether any of its granules may hold data. `None` when no free run fits it.
    pub fn alloc_aligned(&mut self, n: usize, step: usize) -> Option<(usize, bool)> {
        if n > MAX_GRANULES {
            return None;
        }
        let g = self.find(n, step)?;
        let dirty = any_in(&self.dirty, g, n);
        self.claim(g, n);
        self.len[g] = n as u16;
        self.live += 1;
        Some((g, dirty))
    }

    /// Marks the free run `[g, g + n)` used and dirty, no longer a freed start nor aged.
    fn claim(&mut self, g: usize, n: usize) {
        set_range(&mut self.used, g, n, true);
        set_range(&mut self.dirty, g, n, true);
        set_range(&mut self.freed, g, n, false);
        set_range(&mut self.aged, g, n, false);
        self.free -= n as u32;
    }

    /// The length in granules of the live block starting at granule `g` (M1).
    pub fn block(&self, g: usize) -> Result<usize, Bad> {
        match self.len.get(g) {
            Some(&n) if n != 0 => Ok(n as usize),
            Some(_) if bit(&self.freed, g) => Err(Bad::DoubleFree),
            _ => Err(Bad::NotABlock),
        }
    }

    /// Frees the live block starting at granule `g`; its length in granules (M1).
    pub fn free(&mut self, g: usize) -> Result<usize, Bad> {
        let n = self.block(g)?;
        self.len[g] = 0;
        set_range(&mut self.used, g, n, false);
        set_range(&mut self.freed, g, 1, true);
        self.free += n as u32;
        self.live -= 1;
        self.note_free_run(g);
        Ok(n)
    }

    /// Resizes the live block at `g` to `n` granules (`1..=MAX_GRANULES`) in place: shrinking
    /// frees its tail, growing takes the free granules right after it. False, with nothing
    /// changed, when those are not free.
    pub fn resize(&mut self, g: usize, n: usize) -> bool {
        let Ok(old) = self.block(g) else {
            return false;
        };
        if n == 0 || n > MAX_GRANULES {
            return false;
        }
        if n < old {
            set_range(&mut self.used, g + n, old - n, false);
            self.free += (old - n) as u32;
            self.note_free_run(g + n);
        } else if n > old {
            let extra = n - old;
            if g + n > GRANULES || any_in(&self.used, g + old, extra) {
                return false;
            }
            self.claim(g + old, extra);
        }
        self.len[g] = n as u16;
        true
    }

    /// Reserves up to `out.len()` runs of free dirty granules for a purge (all of them with
    /// `all`, else those that were already free and dirty at the last tick), and ages what is
    /// free and dirty now for the next tick (M3). Returns how many runs were written to `out`.
    pub fn reserve_purge(&mut self, all: bool, out: &mut [(usize, usize)]) -> usize {
        let mut cand = [0u64; WORDS];
        for (w, c) in cand.iter_mut().enumerate() {
            let free_dirty = self.dirty[w] & !self.used[w];
            *c = if all {
                free_dirty
            } else {
                free_dirty & self.aged[w]
            };
        }
        let mut k = 0;
        let mut g = next(&cand, 0, true);
        while g < GRANULES && k < out.len() {
            let end = next(&cand, g, false);
            out[k] = (g, end - g);
            k += 1;
            set_range(&mut self.used, g, end - g, true);
            self.free -= (end - g) as u32;
            self.reserved += 1;
            g = next(&cand, end, true);
        }
        for w in 0..WORDS {
            self.aged[w] = self.dirty[w] & !self.used[w];
        }
        k
    }

    /// Ends the reservation of the run `[g, g + n)`: free again, and clean when `purged`.
    pub fn end_purge(&mut self, g: usize, n: usize, purged: bool) {
        set_range(&mut self.used, g, n, false);
        self.note_free_run(g);
        if purged {
            set_range(&mut self.dirty, g, n, false);
            set_range(&mut self.aged, g, n, false);
        }
        self.free += n as u32;
        self.reserved -= 1;
    }

    /// True when some free granule still waits for a purge tick.
    fn waits(&self) -> bool {
        (0..WORDS).any(|w| self.dirty[w] & !self.used[w] != 0)
    }

    /// False when no block of `n` granules fits: fewer free granules, or a longest-run bound
    /// below `n` (M6).
    fn may_hold(&self, n: usize) -> bool {
        self.free as usize >= n && self.max_run as usize >= n
    }

    /// Granules touched: in a block, the header or a purge in flight, or free and dirty (M7).
    pub fn touched(&self) -> usize {
        (0..WORDS)
            .map(|w| (self.used[w] | self.dirty[w]).count_ones() as usize)
            .sum()
    }

    /// True when no block is held and no purge is in flight (M4).
    fn releasable(&self) -> bool {
        self.live == 0 && self.reserved == 0
    }
}

/// The header at the base of a medium region.
#[repr(C)]
struct Region {
    magic: usize,
    /// The next region of the list.
    next: *mut Region,
    /// The last purge tick that visited this region.
    ticked: u64,
    /// Advised for huge pages, and the advice not taken back since (M7).
    huge: bool,
    /// Its push order (M8): a region earlier in the list has a smaller number.
    seq: u64,
    map: SpanMap,
}

/// The tier's shared state, under [`MEDIUM`].
struct State {
    head: *mut Region,
    /// Regions in the list with no live block.
    empty: usize,
    /// Purge ticks so far.
    tick: u64,
    /// The next region's push order number (M8).
    seq: u64,
    /// Per size bucket, the region the search starts at (M8); null when no region can hold a
    /// request of the bucket.
    hint: [*mut Region; BUCKETS],
}

// SAFETY: the regions the list points to are reached only under the lock.
unsafe impl Send for State {}

static MEDIUM: SpinLock<State> = SpinLock::new(State {
    head: null_mut(),
    empty: 0,
    tick: 0,
    seq: 0,
    hint: [null_mut(); BUCKETS],
});

/// How often the medium tier's lock was taken and found held.
pub fn contention() -> hakmem_superslab::LockCounts {
    MEDIUM.contention()
}

/// The next purge tick (as [`now_ns`]); `u64::MAX` when no free granule waits for one.
static DUE: AtomicU64 = AtomicU64::new(u64::MAX);

/// The context the tier's regions belong to: the first one a region is made for. Regions are
/// registered in its registry, mapped by its `Os` and given back to its lru, so a call with
/// another context makes no region and purges nothing (its blocks come from the regions there
/// are, or from none).
static OWNER: AtomicPtr<Ctx> = AtomicPtr::new(null_mut());

/// True when the tier's regions belong to `ctx`; the first call with `claim` makes them.
fn owned_by(ctx: &Ctx, claim: bool) -> bool {
    let me = ctx as *const Ctx as *mut Ctx;
    match OWNER.load(Ordering::Acquire) {
        o if o == me => true,
        o if o.is_null() && claim => {
            match OWNER.compare_exchange(null_mut(), me, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => true,
                Err(o) => o == me,
            }
        }
        _ => false,
    }
}

impl State {
    /// Appends `r` (last: older regions are asked first, so a new one empties first); it
    /// becomes the hint of every bucket that had none (M8).
    fn push(&mut self, r: *mut Region) {
        let mut at: *mut *mut Region = &mut self.head;
        // SAFETY: every region in the list is live and reached under the lock; `r` is a live
        // region the caller hands over.
        unsafe {
            (*r).seq = self.seq;
            while !(*at).is_null() {
                at = addr_of_mut!((**at).next);
            }
            *at = r;
        }
        self.seq += 1;
        self.empty += 1;
        for h in self.hint.iter_mut().filter(|h| h.is_null()) {
            *h = r;
        }
    }

    fn unlink(&mut self, r: *mut Region) {
        // SAFETY: a region of the list, under the lock.
        let next = unsafe { (*r).next };
        for h in self.hint.iter_mut().filter(|h| **h == r) {
            *h = next;
        }
        let mut at: *mut *mut Region = &mut self.head;
        // SAFETY: as in `push`.
        unsafe {
            while !(*at).is_null() {
                if *at == r {
                    *at = next;
                    return;
                }
                at = addr_of_mut!((**at).next);
            }
        }
    }

    /// After `r`'s longest-run bound may have risen (a free, a shrink, a purge's end): it
    /// becomes the hint of each bucket it may now hold and comes before the bucket's hint in
    /// the list (M8).
    fn note_room(&mut self, r: *mut Region) {
        // SAFETY: a live region of the list, under the lock.
        let (seq, map) = unsafe { ((*r).seq, &(*r).map) };
        for (b, h) in self.hint.iter_mut().enumerate() {
            // SAFETY: a hint is null or a live region of the list.
            if map.may_hold(1 << b) && (h.is_null() || seq < unsafe { (**h).seq }) {
                *h = r;
            }
        }
    }

    /// A block of `n` granules at a multiple of `step` granules from the first region with
    /// room: (region, granule, dirty). The search starts at the hint of `n`'s bucket (M8).
    fn alloc(&mut self, n: usize, step: usize) -> Option<(*mut Region, usize, bool)> {
        let b = bucket(n);
        let mut r = self.hint[b];
        let mut front = true;
        while !r.is_null() {
            // SAFETY: a live region of the list, under the lock.
            let region = unsafe { &mut *r };
            let map = &mut region.map;
            if map.free_granules() >= n {
                if let Some((g, dirty)) = map.alloc_aligned(n, step) {
                    if map.live() == 1 {
                        self.empty -= 1;
                    }
                    return Some((r, g, dirty));
                }
            }
            // The regions at the front of the search that hold no request of the bucket are
            // passed over for good (a failed search made the bound exact).
            front &= !map.may_hold(1 << b);
            r = region.next;
            if front {
                self.hint[b] = r;
            }
        }
        None
    }

    /// True when a new region is to be advised for huge pages (M7): the tier holds at least
    /// [`HUGE_AFTER`] regions and at least 7/8 of their granules have been touched.
    fn dense(&self) -> bool {
        let (mut regions, mut touched) = (0, 0);
        let mut r = self.head;
        while !r.is_null() {
            // SAFETY: a live region of the list, under the lock.
            let region = unsafe { &*r };
            touched += region.map.touched();
            regions += 1;
            r = region.next;
        }
        regions >= HUGE_AFTER && touched * 8 >= regions * GRANULES * 7
    }
}

/// The region at `base` and the granule of `p` in it, if `p` is on a granule boundary past the
/// header.
fn granule_of(base: usize, p: *const u8) -> Option<usize> {
    let off = (p as usize).checked_sub(base)?;
    (off.is_multiple_of(GRANULE) && (HEADER_GRANULES * GRANULE..SS_SIZE).contains(&off))
        .then_some(off / GRANULE)
}

/// Sets the purge tick if none is set and purging is on (the context's purge delay: the lru's,
/// when `HAKMEM_SS_LAZY_ZERO` is on).
fn arm(ctx: &Ctx) {
    if DUE.load(Ordering::Relaxed) == u64::MAX {
        if let Some(delay) = ctx.purge_delay() {
            DUE.store(now_ns().saturating_add(delay), Ordering::Relaxed);
        }
    }
}

/// A block of `size` bytes aligned to `align` (as [`serves`] accepts), zeroed when `zero`,
/// counted in `row`; null when the OS refuses.
#[inline(never)]
pub fn alloc(ctx: &Ctx, row: Row<'_>, size: usize, align: usize, zero: bool) -> *mut u8 {
    let n = size.div_ceil(GRANULE);
    let step = align.div_ceil(GRANULE);
    let got = match MEDIUM.with(|s| s.alloc(n, step).ok_or_else(|| s.dense())) {
        Ok(got) => got,
        Err(dense) => {
            let Some(r) = new_region(ctx, dense) else {
                return null_mut();
            };
            // A fresh region's data is free, and the largest block fits it at any alignment
            // the tier serves.
            match MEDIUM.with(|s| {
                s.push(r);
                s.alloc(n, step)
            }) {
                Some(got) => got,
                None => return null_mut(),
            }
        }
    };
    let (r, g, dirty) = got;
    let user = (r as usize + g * GRANULE) as *mut u8;
    if zero && dirty {
        // SAFETY: the block's granules are ours now, inside the region.
        unsafe { user.write_bytes(0, size) };
    }
    ctx.stats.event(Event::LargeAlloc, n * GRANULE);
    count(ctx, row, true);
    purge_if_due(ctx);
    user
}

/// A new region, registered, from the lru or the OS, advised for huge pages when the tier is
/// `dense` (M7); `None` when the OS refuses.
#[cold]
fn new_region(ctx: &Ctx, dense: bool) -> Option<*mut Region> {
    if !owned_by(ctx, true) {
        return None;
    }
    let env = ctx.env();
    let (base, zeroed) = match ctx.lru.take(env.stats, SS_SIZE, true, now_ns()) {
        Some(got) => (got.base, got.zeroed),
        None => (map_or_collect(ctx, SS_SIZE, SS_SIZE, 0)?, true),
    };
    let r = base.as_ptr().cast::<Region>();
    ctx.first_touch(dense, |huge| {
        if huge {
            // SAFETY: a whole unused region of our `Os`; the advice changes no contents.
            unsafe { env.os.advise_huge(base, SS_SIZE) };
        }
        // SAFETY: a whole unused region of ours, 2 MiB; the header fits its first granule.
        // Written before the region is published (R1).
        unsafe {
            addr_of_mut!((*r).magic).write(MAGIC);
            addr_of_mut!((*r).next).write(null_mut());
            addr_of_mut!((*r).ticked).write(0);
            addr_of_mut!((*r).huge).write(huge);
            addr_of_mut!((*r).seq).write(0);
            addr_of_mut!((*r).map).write(SpanMap::new(zeroed));
        }
    });
    // SAFETY: the region is ours until released (which unregisters it first), with its header
    // written above; `classify` reads no medium header.
    if unsafe {
        env.registry
            .register(base.as_ptr() as usize, SS_SIZE, Kind::Medium)
    }
    .is_err()
    {
        // SAFETY: never published.
        unsafe { env.os.unmap(base, SS_SIZE, env.stats) };
        return None;
    }
    Some(r)
}

/// Gives an unlinked region, unregistered under the lock (M4), back to the lru, its huge-page
/// advice taken back first (M7).
fn release(ctx: &Ctx, r: *mut Region) {
    let env = ctx.env();
    let base = NonNull::new(r.cast::<u8>()).expect("never at 0");
    // SAFETY: unlinked and unregistered: this thread is the region's only user.
    if unsafe { (*r).huge } {
        // SAFETY: a whole region of our `Os`; the advice changes no contents.
        unsafe { env.os.advise_no_huge(base, SS_SIZE) };
    }
    // SAFETY: retired: unregistered, no block held, unlinked, so nothing refers to it.
    unsafe { ctx.lru.put(env.stats, base, SS_SIZE, now_ns()) };
}

/// True when the registry still has `p` in the medium region at `base`: called under the lock,
/// it proves the region live until the lock is released (M4).
fn still_there(ctx: &Ctx, base: usize, p: *const u8) -> bool {
    ctx.registry.lookup(p as usize) == Some((base, Kind::Medium))
}

/// Unlinks `r`, an empty region of the list, and withdraws it from the registry, under the
/// lock (M4); the caller then gives it to [`release`].
fn unlink_and_unregister(ctx: &Ctx, s: &mut State, r: *mut Region) {
    s.unlink(r);
    ctx.registry.unregister(r as usize, SS_SIZE);
}

/// Frees the medium block `p` of the region at `base`, counted in `row`; what is wrong with `p`
/// when it is not a live block start (M1), for the caller to report, and nothing changed.
///
/// # Safety
/// A lookup in `ctx`'s registry found `p` in the medium region at `base` (it may have gone
/// since: this looks again under the lock), and the caller gives `p` up.
#[inline(never)]
pub unsafe fn free(ctx: &Ctx, row: Row<'_>, base: usize, p: *mut u8) -> Result<(), Bad> {
    let r = base as *mut Region;
    let Some(g) = granule_of(base, p) else {
        return Err(Bad::NotABlock);
    };
    let mut gone = null_mut();
    let freed = MEDIUM.with(|s| {
        if !still_there(ctx, base, p) {
            return Err(Bad::NotABlock);
        }
        // SAFETY: a live region (registered, and withdrawn only under this lock: M4), under
        // the lock.
        let region = unsafe { &mut *r };
        debug_assert_eq!(region.magic, MAGIC);
        let map = &mut region.map;
        let n = map.free(g)?;
        let (empty, releasable) = (map.live() == 0, map.releasable());
        s.note_room(r);
        if empty {
            s.empty += 1;
            if s.empty > 1 && releasable {
                s.empty -= 1;
                unlink_and_unregister(ctx, s, r);
                gone = r;
            }
        }
        Ok(n)
    });
    let n = freed?;
    ctx.stats.event(Event::LargeFree, n * GRANULE);
    count(ctx, row, false);
    if !gone.is_null() {
        release(ctx, gone);
    } else {
        arm(ctx);
    }
    purge_if_due(ctx);
    Ok(())
}

/// Bytes usable at the medium block `p` of the region at `base`; `None` (for the caller to
/// report) when `p` is not a live block start (M1).
///
/// # Safety
/// A lookup in `ctx`'s registry found `p` in the medium region at `base` (it may have gone
/// since: this looks again under the lock).
pub unsafe fn usable(ctx: &Ctx, base: usize, p: *mut u8) -> Option<usize> {
    let got = granule_of(base, p).and_then(|g| {
        MEDIUM.with(|_| {
            if !still_there(ctx, base, p) {
                return None;
            }
            // SAFETY: a live region (registered, and withdrawn only under this lock: M4),
            // under the lock.
            unsafe { (*(base as *mut Region)).map.block(g) }.ok()
        })
    });
    got.map(|n| n * GRANULE)
}

/// Resizes the medium block `p` (of the region at `base`) to hold `size` bytes (as [`serves`]
/// accepts) in place; false when the granules after it are taken (the caller then moves it).
///
/// # Safety
/// `base` is a live medium region and `p` a live block start of it that the caller holds.
pub unsafe fn resize(ctx: &Ctx, base: usize, p: *mut u8, size: usize) -> bool {
    let Some(g) = granule_of(base, p) else {
        return false;
    };
    let n = size.div_ceil(GRANULE);
    let old = MEDIUM.with(|s| {
        let r = base as *mut Region;
        // SAFETY: a live region (the caller's contract), under the lock.
        let map = unsafe { &mut (*r).map };
        let old = map.block(g).ok()?;
        let done = map.resize(g, n);
        if done && n < old {
            s.note_room(r);
        }
        done.then_some(old)
    });
    let Some(old) = old else {
        return false;
    };
    if old != n {
        // The live bytes follow the block: an in-place resize counts as a free and an alloc.
        ctx.stats.event(Event::LargeFree, old * GRANULE);
        ctx.stats.event(Event::LargeAlloc, n * GRANULE);
        if n < old {
            arm(ctx);
        }
    }
    true
}

/// Runs the purge tick if it is due (M3): one atomic load when nothing waits.
#[inline]
pub fn purge_if_due(ctx: &Ctx) {
    let due = DUE.load(Ordering::Relaxed);
    if due == u64::MAX {
        return;
    }
    let now = now_ns();
    // One caller runs a due tick: two ticks at once would age and purge runs in one go.
    if now >= due
        && DUE
            .compare_exchange(due, u64::MAX, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        purge(ctx, false, now);
    }
}

/// Purges free dirty runs (those aged a tick, or all of them with `all`) and, with `all`,
/// releases every empty region to the lru. Returns the bytes purged.
///
/// One call is one tick: it visits each region once (with `all`, until nothing of it is left
/// to purge), in passes of at most [`BATCH`] runs, each pass from the list's head, since a
/// region may leave the list while the lock is released.
fn purge(ctx: &Ctx, all: bool, now: u64) -> usize {
    if !owned_by(ctx, false) {
        return 0;
    }
    let env = ctx.env();
    let mut given = 0;
    let tick = MEDIUM.with(|s| {
        s.tick += 1;
        s.tick
    });
    loop {
        let mut runs = [(null_mut::<Region>(), 0usize, 0usize); BATCH];
        // The runs before whose purge their region's huge-page advice is taken back (M7).
        let mut unadvise = [false; BATCH];
        let mut k = 0;
        let mut more = false;
        let mut gone: *mut Region = null_mut();
        MEDIUM.with(|s| {
            let mut buf = [(0usize, 0usize); BATCH];
            let mut r = s.head;
            while !r.is_null() && k < BATCH {
                // SAFETY: a live region of the list, under the lock.
                let region = unsafe { &mut *r };
                let next = region.next;
                if region.ticked == tick {
                    r = next;
                    continue;
                }
                if all && region.map.releasable() {
                    // The reference to the region ends here; `unlink` writes through the list.
                    unlink_and_unregister(ctx, s, r);
                    s.empty -= 1;
                    gone = r;
                    more = true;
                    break;
                }
                let room = BATCH - k;
                let got = region.map.reserve_purge(all, &mut buf[..room]);
                if got > 0 && region.huge {
                    region.huge = false;
                    unadvise[k] = true;
                }
                for &(g, n) in &buf[..got] {
                    runs[k] = (r, g, n);
                    k += 1;
                }
                // With `all`, a region whose runs did not all fit is visited again.
                if !(all && got == room) {
                    region.ticked = tick;
                }
                r = next;
            }
            more |= !r.is_null();
        });
        // A reserved run keeps its region in the list (M4) until it ends below.
        let mut failed = false;
        let mut done = [false; BATCH];
        for (i, &(r, g, n)) in runs[..k].iter().enumerate() {
            if unadvise[i] {
                let base = NonNull::new(r.cast::<u8>()).expect("never at 0");
                // SAFETY: a live region of our `Os` (its reservations keep it, M4); the advice
                // changes no contents.
                unsafe { env.os.advise_no_huge(base, SS_SIZE) };
            }
            let at = NonNull::new((r as usize + g * GRANULE) as *mut u8).expect("never at 0");
            // SAFETY: reserved above: free granules of ours that nothing hands out meanwhile.
            done[i] = unsafe { env.os.purge(at, n * GRANULE, env.stats) };
            if done[i] {
                given += n * GRANULE;
            } else {
                failed = true;
            }
        }
        if k > 0 {
            MEDIUM.with(|s| {
                for (i, &(r, g, n)) in runs[..k].iter().enumerate() {
                    // SAFETY: live (its reservation keeps it), under the lock.
                    unsafe { (*r).map.end_purge(g, n, done[i]) };
                    s.note_room(r);
                }
            });
        }
        if !gone.is_null() {
            release(ctx, gone);
        }
        if !more || failed {
            break;
        }
    }
    // The next tick, if any free granule is still dirty (a free meanwhile arms it too).
    let delay = ctx.purge_delay();
    MEDIUM.with(|s| {
        let mut waits = false;
        let mut r = s.head;
        while !r.is_null() {
            // SAFETY: a live region of the list, under the lock.
            let region = unsafe { &*r };
            waits |= region.map.waits();
            r = region.next;
        }
        let due = match delay {
            Some(delay) if waits => now.saturating_add(delay),
            _ => u64::MAX,
        };
        DUE.store(due, Ordering::Relaxed);
    });
    given
}

/// Gives memory back to the OS now: purges every free dirty run, releases every empty region to
/// the lru, then flushes the lru (unmaps every region it caches). Returns the bytes purged and
/// given back.
pub fn collect(ctx: &Ctx) -> usize {
    // Empty medium regions go to the lru first, to be unmapped with the rest.
    purge(ctx, true, now_ns()) + ctx.lru.flush(&ctx.stats)
}

/// Maps `len` bytes with `base + offset` at `align` ([`hakmem_superslab::Os::map_offset`]); when
/// the OS refuses (an address-space limit, say), gives every cached empty region back
/// ([`collect`]: the lru's, and this tier's empty regions) and asks once more.
pub fn map_or_collect(ctx: &Ctx, len: usize, align: usize, offset: usize) -> Option<NonNull<u8>> {
    let env = ctx.env();
    if let Some(p) = env.os.map_offset(len, align, offset, env.stats) {
        return Some(p);
    }
    if collect(ctx) == 0 {
        return None;
    }
    env.os.map_offset(len, align, offset, env.stats)
}

/// Takes the tier's lock and keeps it (fork's `prepare`).
pub fn lock_for_fork() {
    MEDIUM.lock_for_fork();
}

/// Releases [`lock_for_fork`] (fork's `parent` and `child`).
///
/// # Safety
/// The lock was taken by [`lock_for_fork`] on this thread.
pub unsafe fn force_unlock() {
    // SAFETY: forwarded.
    unsafe { MEDIUM.force_unlock() };
}

#[cfg(test)]
mod tests;
