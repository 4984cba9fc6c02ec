//! # hakmem-lru: a cache of empty regions, asked before the OS
//!
//! One job: keep recently released regions (empty superslabs and freed large regions) mapped for
//! a while, so the next request reuses one instead of calling mmap and faulting its pages in
//! again, without holding on to memory the program no longer needs.
//!
//! A region enters with its pages (it stays *resident*). Its pages are given back
//! (`MADV_DONTNEED`, a *purge*) once the cache has gone `purge_delay_ns` without being used (the
//! program went quiet), or sooner when the resident bytes pass a budget that follows the
//! program's recent working set; the region itself is unmapped once it has waited `decay_ns`.
//! (While the program keeps putting and taking regions it is about to reuse what is cached, so
//! only the budget purges then: a purge there would only be faulted in again.) Every deadline is
//! kept in one atomic, so any slow path can run what is due with [`Lru::purge_if_due`]: one
//! load, and a clock read only when something is cached.
//!
//! Cached regions that lie end to end are merged into one (C10), so the two pieces of a split,
//! or neighbours freed one after the other, serve a later, larger request without a new mapping;
//! regions apart are joined for it by moving their pages onto a new mapping (C11).
//!
//! The cache owns the [`Os`] its regions came from, and gives them back through it only.
//!
//! ```
//! use hakmem_lru::{now_ns, GlobalStats, LibcOs, Lru, LruConfig, Os, SS_SIZE};
//!
//! static OS: LibcOs = LibcOs;
//! let stats = GlobalStats::new();
//! let lru = Lru::new(&OS, LruConfig::default());
//!
//! // A 6 MiB region the program is done with goes to the cache instead of munmap.
//! let region = OS.map(6 << 20, SS_SIZE, &stats).expect("mmap");
//! // SAFETY: a whole region of `OS`, 2 MiB-aligned, that nothing uses any more.
//! unsafe { lru.put(&stats, region, 6 << 20, now_ns()) };
//!
//! // A 3 MiB request takes its first 4 MiB (whole 2 MiB steps); the other 2 MiB stay cached.
//! let got = lru.take(&stats, 3 << 20, false, now_ns()).expect("cached");
//! assert_eq!((got.base, got.len), (region, 4 << 20));
//! assert_eq!(lru.usage(), (1, 2 << 20));
//!
//! // Give everything cached back now, as `hakmem::collect()` does.
//! assert_eq!(lru.flush(&stats), 2 << 20);
//! // SAFETY: the part we took is ours; nothing uses it.
//! unsafe { OS.unmap(got.base, got.len, &stats) };
//! ```
//!
//! ## Invariants
//! - **C1 (only the dead).** A region enters the cache only after it was retired: unregistered,
//!   with no block held anywhere. The cache never looks inside a region.
//! - **C2 (one hand-over).** Every cached region leaves exactly once: taken by one thread for
//!   reuse, or unmapped (by decay, by eviction, or by [`Lru::flush`]). Both happen under the lock,
//!   so a region is never both reused and unmapped. A region taken out to be purged is out of
//!   the cache (nobody can take it) until it is put back.
//! - **C3 (bounded).** At most [`MAX_ENTRIES`] regions and `max_bytes` bytes are cached; the oldest
//!   is evicted to make room, and a region larger than `max_bytes` is refused.
//! - **C4 (pages given back in time).** With `purge` on (the default), a cached region keeps its
//!   pages until `purge_delay_ns` have passed since the later of its entry and the cache's last use
//!   ([`Lru::put`], [`Lru::take`] or [`Lru::lend`]; so at most `purge_delay_ns` once the program
//!   stops using the cache, and never past its decay, C5), and after every [`Lru::put`],
//!   [`Lru::take`] and [`Lru::lend`] the resident bytes cached stay within the resident budget.
//!   With *peak* the largest amount of memory the program held through this cache (taken, asked
//!   for, or grown with [`Lru::lend`], not yet given back) over the last one or two `decay_ns`
//!   windows, the budget is three quarters of *peak*, or *peak* less what it holds now if that is
//!   more; at least `hot_bytes`, at most `max_bytes`: a program that churns at a steady size keeps
//!   three quarters of its working set resident for reuse, and one that gives back more than that
//!   keeps all it gave back, for a reuse of the same size. After [`Lru::lend`] (a block grew
//!   outside the cache, which did not serve it) the three-quarter floor does not count: what the
//!   program holds plus what is cached resident then stays within its recent peak. Past the budget,
//!   the oldest resident regions are purged first. A purged region reads as zero when reused.
//! - **C5 (decay).** A region cached for longer than `decay_ns` is unmapped.
//! - **C6 (due).** C4's delay and C5 are enforced by the next cache operation or
//!   [`Lru::purge_if_due`] after the deadline; [`Lru::next_due`] is never later than the
//!   earliest deadline of a cached region.
//! - **C7 (only its own Os).** Every region is unmapped and purged through the [`Os`] the cache
//!   was made with, which [`Lru::put`]'s contract says mapped it.
//! - **C8 (fit).** [`Lru::take`] hands out the smallest cached region that fits. Past what was
//!   asked it hands over at most 2 MiB, and at most what was asked again; the rest of the
//!   region stays cached as a region of its own from its first 2 MiB boundary on (when there is
//!   room), and what lies before that boundary is unmapped.
//! - **C9 (counted).** Every region entering (a remainder too), leaving for reuse, and unmapped
//!   from here counts as a superslab cached, reused and released. (Merged regions (C10) leave
//!   as one: a merge is not counted, so after merges fewer leave than entered.)
//! - **C10 (merged).** No two cached regions in the same state (resident, or purged) lie end to
//!   end: a region entering the cache ([`Lru::put`], or put back purged) is merged with such
//!   neighbours into one entry, which is as old as its oldest part (so C4's delay and C5 hold
//!   for every part) and is 2 MiB-aligned as its first part is. A merged region is unmapped and
//!   purged as one range: it may span mappings made by separate [`Os::map`] calls that lie end
//!   to end, which [`Os::unmap`] and [`Os::purge`] accept; [`Os::remap`] on a block over such a
//!   range may refuse, and the caller then copies. Regions in different states stay apart until
//!   the resident one is purged (at most `purge_delay_ns`), so a reuse never mixes
//!   zeroed and dirty pages.
//! - **C11 (joined).** When no cached region fits a request of more than 2 MiB ([`Lru::take`]
//!   without `exact`), the largest resident regions that are whole 2 MiB steps (at most
//!   [`MAX_JOIN`], when together they cover the request rounded up to a step; the last one's
//!   rest stays cached) are taken out, and their pages are moved onto one new mapping of that length with
//!   [`Os::relocate`], 2 MiB at a time: a program whose large blocks change size reuses the
//!   pages it freed instead of faulting new ones in. What does not move goes back to the cache
//!   (C2 holds: every piece is out of the cache while it moves), and the new mapping's own zero
//!   pages stand in for it; a joined region reads as zero only when nothing moved.
#![deny(unsafe_op_in_unsafe_fn)]
#![no_std]

mod sync;

use core::ops::Deref;
use core::ptr::NonNull;
use hakmem_os::Relocation;
use hakmem_stats::Event;
use hakmem_superslab::SpinLock;
use sync::{AtomicU64, Ordering};

/// Re-exported from hakmem-stats: the counters every call of the cache takes.
pub use hakmem_stats::GlobalStats;
/// Re-exported from hakmem-superslab: the OS layer the cache owns and gives regions back
/// through, the real one, and the region alignment ([`Lru::put`] takes 2 MiB-aligned regions).
pub use hakmem_superslab::{LibcOs, Os, SS_SIZE};

/// The README's examples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// Most regions cached at once.
pub const MAX_ENTRIES: usize = 64;

/// Most cached regions one joined region is made of (C11).
pub const MAX_JOIN: usize = 8;

/// How the cache behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LruConfig {
    /// Most bytes cached at once; 0 turns the cache off.
    pub max_bytes: usize,
    /// A cached region is unmapped after this many nanoseconds.
    pub decay_ns: u64,
    /// Give pages back with `MADV_DONTNEED` (C4); off, a region keeps its pages until it decays.
    pub purge: bool,
    /// The least resident budget (C4), in bytes.
    pub hot_bytes: usize,
    /// How long the cache goes unused before its regions give their pages back, in
    /// nanoseconds (C4).
    pub purge_delay_ns: u64,
}

impl Default for LruConfig {
    fn default() -> Self {
        Self {
            max_bytes: 256 << 20,
            decay_ns: 1_000_000_000,
            purge: true,
            hot_bytes: 32 << 20,
            purge_delay_ns: 100_000_000,
        }
    }
}

#[derive(Clone, Copy)]
struct Entry {
    base: usize,
    len: usize,
    /// Reads as zero (purged): no resident pages.
    zeroed: bool,
    since: u64,
}

const NO_ENTRY: Entry = Entry {
    base: 0,
    len: 0,
    zeroed: false,
    since: 0,
};

struct Inner {
    /// Oldest first.
    entries: [Entry; MAX_ENTRIES],
    len: usize,
    bytes: usize,
    /// Bytes of entries that keep their pages.
    resident: usize,
    /// Bytes taken out of (or asked of) the cache and not put back: the working set it sees.
    out: usize,
    /// The largest `out` in this window and the one before.
    peak: usize,
    prev_peak: usize,
    window: u64,
    /// The last [`Lru::put`], [`Lru::take`] or [`Lru::lend`]: the time-based purge waits for
    /// the cache to go unused that long (C4).
    last_use: u64,
    config: LruConfig,
}

impl Inner {
    fn remove(&mut self, i: usize) -> Entry {
        let e = self.entries[i];
        self.entries.copy_within(i + 1..self.len, i);
        self.len -= 1;
        self.bytes -= e.len;
        if !e.zeroed {
            self.resident -= e.len;
        }
        e
    }

    /// Inserts where its age says (oldest first). The caller made room.
    fn insert(&mut self, e: Entry) {
        let at = self.entries[..self.len]
            .iter()
            .position(|x| x.since > e.since)
            .unwrap_or(self.len);
        self.entries.copy_within(at..self.len, at + 1);
        self.entries[at] = e;
        self.len += 1;
        self.bytes += e.len;
        if !e.zeroed {
            self.resident += e.len;
        }
    }

    /// Inserts `e` merged with the cached regions right before and right after it that are in
    /// the same state (both resident, or both purged): one entry, as old as the older (C10).
    /// The caller made room for `e` as if it were not merged.
    fn insert_merged(&mut self, mut e: Entry) {
        let same = |x: &Entry, e: &Entry| x.zeroed == e.zeroed;
        if let Some(i) = (0..self.len).find(|&i| {
            self.entries[i].base + self.entries[i].len == e.base && same(&self.entries[i], &e)
        }) {
            let before = self.remove(i);
            e = Entry {
                base: before.base,
                len: before.len + e.len,
                since: before.since.min(e.since),
                ..e
            };
        }
        if let Some(i) = (0..self.len)
            .find(|&i| e.base + e.len == self.entries[i].base && same(&self.entries[i], &e))
        {
            let after = self.remove(i);
            e = Entry {
                len: e.len + after.len,
                since: after.since.min(e.since),
                ..e
            };
        }
        self.insert(e);
    }

    fn has_room(&self, len: usize) -> bool {
        self.len < MAX_ENTRIES && self.bytes + len <= self.config.max_bytes
    }

    /// Moves the working-set window on to `now`.
    fn tick(&mut self, now: u64) {
        if now.saturating_sub(self.window) >= self.config.decay_ns {
            self.prev_peak = self.peak;
            self.peak = self.out;
            self.window = now;
        }
    }

    /// Notes a use of the cache by the program at `now` (C4's delay counts from the last).
    fn used(&mut self, now: u64) {
        self.last_use = self.last_use.max(now);
    }

    fn lent(&mut self, len: usize) {
        self.out = self.out.saturating_add(len);
        self.peak = self.peak.max(self.out);
    }

    /// The resident budget (C4): three quarters of what the program held at its recent peak,
    /// or what it held then and does not hold now if that is more.
    fn budget(&self) -> usize {
        let peak = self.peak.max(self.prev_peak);
        self.clamp(peak.saturating_sub(self.out).max(peak / 4 * 3))
    }

    /// The budget after memory grown outside the cache ([`Lru::lend`]): the recent peak less
    /// what is held now, without the three-quarter floor (C4).
    fn budget_grown(&self) -> usize {
        self.clamp(self.peak.max(self.prev_peak).saturating_sub(self.out))
    }

    fn clamp(&self, budget: usize) -> usize {
        budget.max(self.config.hot_bytes).min(self.config.max_bytes)
    }

    /// Takes out what decayed (to unmap), what kept its pages long enough, and the oldest
    /// resident regions past the budget (to purge and put back).
    fn expire(&mut self, now: u64, work: &mut Batch) {
        self.expire_to(now, self.budget(), work);
    }

    /// [`Inner::expire`] with the resident budget `budget`.
    fn expire_to(&mut self, now: u64, budget: usize, work: &mut Batch) {
        self.tick(now);
        while self.len > 0 && now.saturating_sub(self.entries[0].since) > self.config.decay_ns {
            let e = self.remove(0);
            work.push(e, Act::Unmap);
        }
        if !self.config.purge {
            return;
        }
        let mut i = 0;
        while i < self.len {
            let e = self.entries[i];
            let idle = now.saturating_sub(e.since.max(self.last_use));
            let late = idle > self.config.purge_delay_ns;
            if !e.zeroed && (late || self.resident > budget) {
                let e = self.remove(i);
                work.push(e, Act::Purge);
            } else {
                i += 1;
            }
        }
    }

    /// Takes out the resident regions a request of `len` bytes (more than 2 MiB) that no one
    /// region fits is joined from (C11): whole 2 MiB steps, the largest first, at most
    /// [`MAX_JOIN`] of them, together `len` rounded up to a 2 MiB step; the last one's unused
    /// rest stays cached. `None` (and nothing taken out) when they do not cover it.
    fn plan_join(&mut self, len: usize) -> Option<Join> {
        let total = len.checked_next_multiple_of(SS_SIZE)?;
        let mut join = Join {
            pieces: [NO_ENTRY; MAX_JOIN],
            n: 0,
            len: total,
            rest_cached: false,
        };
        let mut got = 0;
        while got < total && join.n < MAX_JOIN {
            let Some(i) = (0..self.len)
                .filter(|&i| {
                    let e = &self.entries[i];
                    !e.zeroed && e.len.is_multiple_of(SS_SIZE)
                })
                .max_by_key(|&i| self.entries[i].len)
            else {
                break;
            };
            let mut e = self.remove(i);
            let need = total - got;
            if e.len > need {
                // The rest starts on a 2 MiB step and stays cached (there is room: `e` left).
                self.insert(Entry {
                    base: e.base + need,
                    len: e.len - need,
                    ..e
                });
                e.len = need;
                join.rest_cached = true;
            }
            got += e.len;
            join.pieces[join.n] = e;
            join.n += 1;
        }
        if got < total {
            // Not covered: put them back as they were (none was cut, and none lay next to
            // another in the same state, C10). A partial join would hand over fresh pages that
            // a zeroed request then writes whole.
            for &e in &join.pieces[..join.n] {
                self.insert(e);
            }
            return None;
        }
        Some(join)
    }

    /// The earliest deadline of a cached region (C6); `u64::MAX` when none is cached.
    fn next_due(&self) -> u64 {
        let Some(oldest) = self.entries[..self.len].first() else {
            return u64::MAX;
        };
        let mut due = oldest.since.saturating_add(self.config.decay_ns);
        if self.config.purge {
            if let Some(e) = self.entries[..self.len].iter().find(|e| !e.zeroed) {
                let idle_from = e.since.max(self.last_use);
                due = due.min(idle_from.saturating_add(self.config.purge_delay_ns));
            }
        }
        // `expire` acts once a deadline is passed, not reached.
        due.saturating_add(1)
    }
}

/// A region handed out of the cache.
#[derive(Clone, Copy, Debug)]
pub struct Reused {
    /// The region (2 MiB-aligned).
    pub base: NonNull<u8>,
    /// Its length: at least what was asked for (see C8).
    pub len: usize,
    /// True when it reads as zero.
    pub zeroed: bool,
}

/// Cached regions taken out to be joined into one (C11), in the order they go into it.
struct Join {
    pieces: [Entry; MAX_JOIN],
    n: usize,
    /// The joined region's length: the request rounded up to a 2 MiB step.
    len: usize,
    /// The last piece's rest stayed cached (counted as entering, C9).
    rest_cached: bool,
}

/// What to do with a region taken out of the cache, once the lock is dropped.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Act {
    /// Unmap it, counted as released (C9).
    Unmap,
    /// Unmap it, uncounted: the rest of a region reused, which counts as that region.
    Trim,
    /// Purge it and put it back.
    Purge,
}

/// Regions to unmap or purge once the lock is dropped (no system call under the lock). One
/// operation takes out at most every cached region plus one (a new region, or the rest of a
/// reused one), so `MAX_ENTRIES + 1` slots always suffice. (Kept small: it lives on the stack
/// of allocator paths, and of loom's threads.)
struct Batch {
    list: [(Entry, Act); MAX_ENTRIES + 1],
    n: usize,
}

impl Batch {
    fn new() -> Self {
        Self {
            list: [(NO_ENTRY, Act::Unmap); MAX_ENTRIES + 1],
            n: 0,
        }
    }
    fn push(&mut self, e: Entry, act: Act) {
        self.list[self.n] = (e, act);
        self.n += 1;
    }
}

fn ptr(base: usize) -> NonNull<u8> {
    NonNull::new(base as *mut u8).expect("cached regions are never at 0")
}

/// The cache, over the [`Os`] that `O` points to (`&'static dyn Os` in the allocator; any
/// `&T`, `Arc<T>` or `Box<T>` of an `Os` elsewhere).
pub struct Lru<O = &'static dyn Os>
where
    O: Deref,
    O::Target: Os,
{
    os: O,
    inner: SpinLock<Inner>,
    /// `Inner::next_due`, readable without the lock (C6).
    due: AtomicU64,
}

impl<O> Lru<O>
where
    O: Deref,
    O::Target: Os,
{
    /// An empty cache whose regions come from (and go back to) `os`.
    pub fn new(os: O, config: LruConfig) -> Self {
        Self {
            os,
            inner: SpinLock::new(Inner {
                entries: [NO_ENTRY; MAX_ENTRIES],
                len: 0,
                bytes: 0,
                resident: 0,
                out: 0,
                peak: 0,
                prev_peak: 0,
                window: 0,
                last_use: 0,
                config,
            }),
            due: AtomicU64::new(u64::MAX),
        }
    }

    /// The OS the cached regions belong to.
    pub fn os(&self) -> &O::Target {
        &self.os
    }

    /// The configuration in force.
    pub fn config(&self) -> LruConfig {
        self.inner.with(|i| i.config)
    }

    /// `(regions, bytes)` cached now.
    pub fn usage(&self) -> (usize, usize) {
        self.inner.with(|i| (i.len, i.bytes))
    }

    /// Bytes cached that still have their pages.
    pub fn resident(&self) -> usize {
        self.inner.with(|i| i.resident)
    }

    /// The resident budget in force now (C4).
    pub fn budget(&self) -> usize {
        self.inner.with(|i| i.budget())
    }

    /// The instant (as [`now_ns`]) from which [`Lru::purge_if_due`] has work; `u64::MAX` when
    /// nothing is cached.
    pub fn next_due(&self) -> u64 {
        self.due.load(Ordering::Relaxed)
    }

    fn publish_due(&self, inner: &Inner) {
        self.due.store(inner.next_due(), Ordering::Relaxed);
    }

    /// Unmaps `e`, counting it as released when `count` (C9).
    fn unmap(&self, stats: &GlobalStats, e: Entry, count: bool) {
        // SAFETY: a region of `self.os` (C7) that was cached (C1) and was removed from the
        // cache under the lock (or is the rest of one), so nobody else can reach it (C2).
        unsafe { self.os.unmap(ptr(e.base), e.len, stats) };
        if count {
            stats.event(Event::SsReleased, 0);
        }
    }

    /// Does what `work` says: unmaps, or purges and puts back as zeroed (unmapping what no
    /// longer fits). Returns the bytes given back.
    fn finish(&self, stats: &GlobalStats, work: &Batch) -> usize {
        let mut bytes = 0;
        for &(e, act) in &work.list[..work.n] {
            bytes += e.len;
            match act {
                Act::Unmap | Act::Trim => self.unmap(stats, e, act == Act::Unmap),
                Act::Purge => {
                    // SAFETY: out of the cache under the lock, so nobody else can reach it
                    // (C2); a region of `self.os` (C7) whose contents are dead (C1).
                    let zeroed = unsafe { self.os.purge(ptr(e.base), e.len, stats) };
                    self.put_back(stats, Entry { zeroed, ..e });
                }
            }
        }
        bytes
    }

    /// Puts back a region that was taken out of the cache (to purge it, or to join it), or
    /// unmaps it when there is no room for it any more.
    fn put_back(&self, stats: &GlobalStats, e: Entry) {
        let put_back = self.inner.with(|inner| {
            let fits = inner.has_room(e.len);
            if fits {
                inner.insert_merged(e);
                self.publish_due(inner);
            }
            fits
        });
        if !put_back {
            self.unmap(stats, e, true);
        }
    }

    /// Makes the region `join` describes (C11): a new mapping of `join.len` bytes, advised for
    /// huge pages (only large blocks ask for more than 2 MiB), onto which the pieces' pages are
    /// moved 2 MiB at a time ([`Os::relocate`]); what does not move stays cached (or is
    /// unmapped when there is no room), and the new mapping's own pages stand in for it.
    /// `None` when the OS refuses the mapping, or takes part of it away ([`Relocation::LostTarget`]).
    fn join(&self, stats: &GlobalStats, join: &Join) -> Option<Reused> {
        let pieces = &join.pieces[..join.n];
        if join.rest_cached {
            stats.event(Event::SsCached, 0);
        }
        let Some(to) = self.os.map(join.len, SS_SIZE, stats) else {
            for &e in pieces {
                self.put_back(stats, e);
            }
            return None;
        };
        let to = to.as_ptr() as usize;
        // SAFETY: our fresh mapping; the advice never changes its contents.
        unsafe { self.os.advise_huge(ptr(to), join.len) };
        let (mut off, mut moved) = (0, 0);
        let mut lost = None;
        for &e in pieces {
            let mut done = 0;
            while lost.is_none() && done < e.len {
                // SAFETY: `e` was taken out of the cache under the lock (C2), so it is ours and
                // dead (C1); a 2 MiB step of it lies in one mapping (every region the cache
                // holds starts on a step, C8, so mappings meet on steps only); the target is a
                // step of our new mapping, apart from every cached region.
                let r = unsafe {
                    self.os
                        .relocate(ptr(e.base + done), ptr(to + off + done), SS_SIZE, stats)
                };
                match r {
                    Relocation::Moved => done += SS_SIZE,
                    Relocation::Refused => break,
                    Relocation::LostTarget => lost = Some(to + off + done),
                }
            }
            if done > 0 {
                stats.event(Event::SsReused, 0);
            }
            if done < e.len {
                self.put_back(
                    stats,
                    Entry {
                        base: e.base + done,
                        len: e.len - done,
                        ..e
                    },
                );
            }
            moved += done;
            off += e.len;
        }
        if let Some(hole) = lost {
            // Give back the new mapping around the step that is no longer ours (and the pages
            // moved onto it: nothing holds them).
            let end = to + join.len;
            for (base, len) in [(to, hole - to), (hole + SS_SIZE, end - hole - SS_SIZE)] {
                if len > 0 {
                    // SAFETY: parts of our own new mapping (moved pages included) that nothing
                    // uses.
                    unsafe { self.os.unmap(ptr(base), len, stats) };
                }
            }
            return None;
        }
        Some(Reused {
            base: ptr(to),
            len: join.len,
            zeroed: moved == 0,
        })
    }

    /// Caches a retired region (C1) at time `now` (ns, as [`now_ns`]); unmaps it instead when
    /// it cannot be cached. Returns true when it was cached.
    ///
    /// # Safety
    /// `[base, base + len)` is a whole retired region mapped by this cache's `Os`, 2 MiB-aligned,
    /// `len` a multiple of the `Os`'s page size ([`Os::page_size`]), that nothing refers to any
    /// more and that is not cached yet.
    pub unsafe fn put(&self, stats: &GlobalStats, base: NonNull<u8>, len: usize, now: u64) -> bool {
        let mut work = Batch::new();
        let entry = Entry {
            base: base.as_ptr() as usize,
            len,
            zeroed: false,
            since: now,
        };
        let cached = self.inner.with(|inner| {
            inner.out = inner.out.saturating_sub(len);
            if len > inner.config.max_bytes {
                return false;
            }
            inner.expire(now, &mut work);
            inner.used(now);
            while !inner.has_room(len) {
                let e = inner.remove(0);
                work.push(e, Act::Unmap);
            }
            inner.insert_merged(entry);
            // Past the budget now? Then the oldest resident regions are purged (C4).
            if inner.config.purge && inner.resident > inner.budget() {
                inner.expire(now, &mut work);
            }
            self.publish_due(inner);
            true
        });
        if cached {
            stats.event(Event::SsCached, 0);
        } else {
            work.push(entry, Act::Unmap);
        }
        self.finish(stats, &work);
        cached
    }

    /// Takes the smallest cached region of at least `len` bytes (rounded up to whole pages), or
    /// `None` when none fits (the caller then maps `len` bytes itself, which the working set
    /// counts). With `exact`, exactly `len` bytes are handed over; without, up to the next 2 MiB
    /// step, or the whole region when what is left is short (C8). The rest stays cached when it
    /// starts 2 MiB-aligned, and is unmapped otherwise.
    pub fn take(&self, stats: &GlobalStats, len: usize, exact: bool, now: u64) -> Option<Reused> {
        self.take_from(stats, None, len, exact, now)
    }

    /// Takes the cached region that starts at `at`, if there is one of at least `len` bytes
    /// (rounded up to whole pages), as [`Lru::take`] would hand it over without `exact`: for a
    /// large block that grows over the region right after it, whose pages may still be there.
    /// `None` when no cached region starts there, or it is too short.
    pub fn take_at(&self, stats: &GlobalStats, at: usize, len: usize, now: u64) -> Option<Reused> {
        self.take_from(stats, Some(at), len, false, now)
    }

    /// Counts `len` bytes the program took from the OS outside the cache (a large block grown in
    /// place or moved by [`Os::remap`]) in the working set the resident budget follows (C4), as
    /// of `now`. The cache did not serve that growth, so it then keeps resident at most the
    /// recent peak less what is held now (not three quarters of the peak), and purges the rest.
    /// Any value is sound: it only moves the budget.
    pub fn lend(&self, stats: &GlobalStats, len: usize, now: u64) {
        let mut work = Batch::new();
        self.inner.with(|inner| {
            // What is due by time first (the cache was unused until now), then the budget.
            inner.expire_to(now, usize::MAX, &mut work);
            inner.used(now);
            inner.lent(len);
            let budget = inner.budget_grown();
            if inner.config.purge && inner.resident > budget {
                inner.expire_to(now, budget, &mut work);
            }
            self.publish_due(inner);
        });
        self.finish(stats, &work);
    }

    fn take_from(
        &self,
        stats: &GlobalStats,
        at: Option<usize>,
        len: usize,
        exact: bool,
        now: u64,
    ) -> Option<Reused> {
        let page = self.os.page_size();
        let len = len.max(1).checked_add(page - 1)? & !(page - 1);
        let mut work = Batch::new();
        let mut rest_cached = false;
        let mut joined = None;
        let got = self.inner.with(|inner| {
            inner.expire(now, &mut work);
            inner.used(now);
            // Best fit; among equals, one whose pages are still there (no faults), then the newest.
            let rank = |e: &Entry| (e.len, e.zeroed);
            let mut best: Option<usize> = None;
            for i in 0..inner.len {
                let e = inner.entries[i];
                let fits = e.len >= len && at.is_none_or(|a| e.base == a);
                if fits && best.is_none_or(|b| rank(&e) <= rank(&inner.entries[b])) {
                    best = Some(i);
                }
            }
            let Some(i) = best else {
                if at.is_none() && !exact && len > SS_SIZE {
                    if let Some(join) = inner.plan_join(len) {
                        inner.lent(join.len);
                        self.publish_due(inner);
                        joined = Some(join);
                        return None;
                    }
                }
                // The caller maps `len` bytes now: the cache keeps fewer pages (C4).
                inner.lent(len);
                if inner.config.purge && inner.resident > inner.budget() {
                    inner.expire(now, &mut work);
                }
                self.publish_due(inner);
                return None;
            };
            #[cfg(not(hakmem_seeded_bug = "lru_double_take"))]
            let e = inner.remove(i);
            // Seeded bug: hand the region out but leave it cached, so it can go out twice.
            #[cfg(hakmem_seeded_bug = "lru_double_take")]
            let e = inner.entries[i];
            let steps = len.checked_add(SS_SIZE - 1).map(|l| l & !(SS_SIZE - 1));
            let keep = match steps {
                _ if exact => len,
                // Little to spare: the whole region.
                _ if e.len - len <= SS_SIZE.min(len) => e.len,
                // Up to the next 2 MiB step; the rest stays cached.
                Some(s) if s < e.len && s - len <= len => s,
                _ => len,
            };
            if keep < e.len {
                // The rest stays cached from its first 2 MiB boundary on; the part before that
                // boundary is unmapped (C8).
                let cut = e.base + keep;
                let end = e.base + e.len;
                let boundary = cut.next_multiple_of(SS_SIZE);
                let mut trim_to = end;
                if boundary < end && inner.has_room(end - boundary) {
                    inner.insert(Entry {
                        base: boundary,
                        len: end - boundary,
                        ..e
                    });
                    rest_cached = true;
                    trim_to = boundary;
                }
                if cut < trim_to {
                    let gap = Entry {
                        base: cut,
                        len: trim_to - cut,
                        ..e
                    };
                    work.push(gap, Act::Trim);
                }
            }
            inner.lent(keep);
            self.publish_due(inner);
            Some(Reused {
                base: ptr(e.base),
                len: keep,
                zeroed: e.zeroed,
            })
        });
        if let Some(join) = joined {
            self.finish(stats, &work);
            return self.join(stats, &join);
        }
        if rest_cached {
            stats.event(Event::SsCached, 0);
        }
        if got.is_some() {
            stats.event(Event::SsReused, 0);
        }
        self.finish(stats, &work);
        got
    }

    /// Runs what is due (C6), if anything: one atomic load when nothing is cached, and one clock
    /// read when nothing is due. For any slow path. Returns true when it did work.
    #[inline]
    pub fn purge_if_due(&self, stats: &GlobalStats) -> bool {
        let due = self.due.load(Ordering::Relaxed);
        if due == u64::MAX {
            return false;
        }
        let now = now_ns();
        if now < due {
            return false;
        }
        self.decay_now(stats, now);
        true
    }

    /// Unmaps what has decayed and purges what has waited long enough (or is past the budget),
    /// as of `now`. Returns the bytes given back.
    pub fn decay_now(&self, stats: &GlobalStats, now: u64) -> usize {
        let mut work = Batch::new();
        self.inner.with(|inner| {
            inner.expire(now, &mut work);
            self.publish_due(inner);
        });
        self.finish(stats, &work)
    }

    /// Unmaps every cached region. Returns the bytes unmapped.
    pub fn flush(&self, stats: &GlobalStats) -> usize {
        let mut work = Batch::new();
        self.inner.with(|inner| {
            while inner.len > 0 {
                let e = inner.remove(0);
                work.push(e, Act::Unmap);
            }
            self.publish_due(inner);
        });
        self.finish(stats, &work)
    }

    /// Takes the lock and keeps it (fork's `prepare`; [`Lru::force_unlock`] in `parent` and
    /// `child` releases it). Every other operation on the cache waits until then.
    #[cfg(not(loom))]
    pub fn lock_for_fork(&self) {
        self.inner.lock_for_fork();
    }

    /// Releases [`Lru::lock_for_fork`] (fork's `parent` and `child`).
    ///
    /// # Safety
    /// As [`hakmem_superslab::SpinLock::force_unlock`]: the lock was taken by `lock_for_fork`.
    ///
    /// Safe code cannot release a lock another thread holds:
    /// ```compile_fail
    /// use hakmem_lru::{Lru, LruConfig};
    /// let lru = Lru::new(&hakmem_superslab::LibcOs, LruConfig::default());
    /// lru.force_unlock(); // error: an `unsafe fn`
    /// ```
    #[cfg(not(loom))]
    pub unsafe fn force_unlock(&self) {
        // SAFETY: forwarded from the caller.
        unsafe { self.inner.force_unlock() };
    }

    /// How often the cache's lock was taken, and how often a taker had to wait (for
    /// `docs/SCALING.md`).
    #[cfg(not(loom))]
    pub fn contention(&self) -> hakmem_superslab::LockCounts {
        self.inner.contention()
    }
}

/// The instant the lru measures decay from: the platform's monotonic clock, read cheaply
/// ([`hakmem_os::monotonic_coarse_ns`]), in nanoseconds.
pub fn now_ns() -> u64 {
    hakmem_os::monotonic_coarse_ns()
}

#[cfg(test)]
mod tests;
