//! # hakmem-stats: cheap per-thread counters, merged globally
//!
//! One job: count what the allocator does, without slowing it down or allocating.
//!
//! ```
//! use hakmem_stats::{Event, GlobalStats, ThreadStats};
//! let global = GlobalStats::new();
//! let mine = ThreadStats::new();
//! mine.on_alloc(3);
//! mine.on_alloc(3);
//! mine.on_free(3);
//! global.event(Event::SsCreated, 0);
//! global.merge(&mine); // a thread's counts move to the global ones (S2)
//! let s = global.snapshot();
//! assert_eq!((s.class(3).allocs, s.class(3).frees, s.live(3)), (2, 1, 1));
//! assert_eq!(s.count(Event::SsCreated), 1);
//! assert_eq!(s.classes().map(|(c, _)| c).collect::<Vec<_>>(), [3]);
//! ```
//!
//! ## Invariants
//! - **S1 (owner-only hot counters).** A [`ThreadStats`] is written by one thread only (its owner),
//!   with a relaxed load and a relaxed store: no read-modify-write, no fence, no lock on the fast
//!   path. Other threads may read it at any time (a snapshot) and see a recent value.
//! - **S2 (merge once).** [`GlobalStats::merge`] moves a thread's counts into the global atomics and
//!   zeroes the thread's. The caller makes merge and snapshot mutually exclusive (the heap list lock),
//!   so no count is seen twice or lost across a thread's exit.
//! - **S3 (held and peak).** `held[c]` counts blocks of class `c` outside their slabs (held by users,
//!   thread lists, caches or remote stacks). It changes only on slow paths, in batches, and
//!   `peak_held[c] >= held[c]` at every moment a snapshot can observe.
//! - **S4 (no allocation).** Nothing here allocates; a [`Snapshot`] is a plain `Copy` value of
//!   fixed-size arrays, so it can be taken inside the allocator or in a signal-free exit hook.
//!   Its counters are read by name ([`Snapshot::class`], [`Snapshot::event`], and the
//!   iterators [`Snapshot::classes`] and [`Snapshot::events`]), never as raw arrays.
//! - **S5 (hook: cold, and off by default).** With the `hook` feature, [`GlobalStats::event`]
//!   calls the function set with `hook::set` for the lifecycle events only
//!   ([`Event::is_lifecycle`]), after counting them. Without the feature there is no hook and no
//!   code for it; the hot per-thread counters never call it.
#![deny(unsafe_op_in_unsafe_fn)]
#![no_std]

mod sync;
use sync::{AtomicI64, AtomicU64, Ordering};

/// The README's examples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// Upper bound on the number of size classes a client may count (the route box asserts it fits).
/// A power of two, so the fast path indexes with a mask instead of a bounds check.
pub const MAX_CLASSES: usize = 128;
const CLASS_MASK: usize = MAX_CLASSES - 1;
const _: () = assert!(MAX_CLASSES.is_power_of_two());

/// Events counted globally: OS calls with their bytes, and the life of superslabs and slabs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum Event {
    /// An `mmap` (bytes: the length mapped).
    Mmap,
    /// A `munmap` (bytes: the length unmapped, trims included), a reservation that a moving
    /// `mremap` replaced with the grown mapping, or the range whose pages a relocation moved
    /// away (`Os::relocate`).
    Munmap,
    /// An `madvise(MADV_DONTNEED)`: a purge (bytes: the length given back).
    Madvise,
    /// A superslab mapped fresh from the OS.
    SsCreated,
    /// A superslab that entered the lru cache (retired).
    SsCached,
    /// A superslab taken back out of the lru cache.
    SsReused,
    /// A cached region unmapped for good.
    SsReleased,
    /// A block freed by a thread that did not own its slab.
    RemoteFree,
    /// A superslab abandoned by an exiting thread while it still held blocks.
    Abandon,
    /// An abandoned superslab adopted by another thread's refill.
    Adopt,
    /// An abandoned superslab adopted by a thread that freed a block into it.
    AdoptByFree,
    /// A large region handed to a user (bytes: its mapped length), or a medium block (bytes: its
    /// whole pages; an in-place resize counts as a free and an alloc).
    LargeAlloc,
    /// A large region given back by a user (bytes: its mapped length), or a medium block.
    LargeFree,
    /// A large region grown by moving its pages (`mremap`) instead of copying (bytes: growth),
    /// or pages moved onto another range of ours (`Os::relocate`; bytes: 0, nothing grew).
    Mremap,
    /// Address space reserved but not memory in use, such as the registry's table mapped
    /// `MAP_NORESERVE` (bytes: the length). Not counted as [`Event::Mmap`].
    Reserve,
    /// The OS refused to map memory (bytes: the length asked for).
    OsRefused,
    /// A corruption reported: an invalid pointer or a double free given to `free`.
    Corrupt,
}

/// Number of [`Event`] kinds.
pub const EVENTS: usize = Event::Corrupt as usize + 1;

impl Event {
    /// Every event, in declaration order.
    pub const ALL: [Event; EVENTS] = [
        Event::Mmap,
        Event::Munmap,
        Event::Madvise,
        Event::SsCreated,
        Event::SsCached,
        Event::SsReused,
        Event::SsReleased,
        Event::RemoteFree,
        Event::Abandon,
        Event::Adopt,
        Event::AdoptByFree,
        Event::LargeAlloc,
        Event::LargeFree,
        Event::Mremap,
        Event::Reserve,
        Event::OsRefused,
        Event::Corrupt,
    ];

    /// A short lowercase name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Event::Mmap => "mmap",
            Event::Munmap => "munmap",
            Event::Madvise => "madvise",
            Event::SsCreated => "superslabs created",
            Event::SsCached => "superslabs cached",
            Event::SsReused => "superslabs reused",
            Event::SsReleased => "superslabs released",
            Event::RemoteFree => "remote frees",
            Event::Abandon => "abandons",
            Event::Adopt => "adopts",
            Event::AdoptByFree => "adopts by a freer",
            Event::LargeAlloc => "large allocs",
            Event::LargeFree => "large frees",
            Event::Mremap => "mremap",
            Event::Reserve => "reserve",
            Event::OsRefused => "os refusals",
            Event::Corrupt => "corruptions",
        }
    }

    /// A name for serialised data: lowercase, one word with underscores.
    pub fn key(self) -> &'static str {
        match self {
            Event::Mmap => "mmap",
            Event::Munmap => "munmap",
            Event::Madvise => "madvise",
            Event::SsCreated => "superslabs_created",
            Event::SsCached => "superslabs_cached",
            Event::SsReused => "superslabs_reused",
            Event::SsReleased => "superslabs_released",
            Event::RemoteFree => "remote_frees",
            Event::Abandon => "abandons",
            Event::Adopt => "adopts",
            Event::AdoptByFree => "adopts_by_free",
            Event::LargeAlloc => "large_allocs",
            Event::LargeFree => "large_frees",
            Event::Mremap => "mremap",
            Event::Reserve => "reserve",
            Event::OsRefused => "os_refusals",
            Event::Corrupt => "corruptions",
        }
    }

    /// True for the rare events in the life of a region that the `hook` hears of: a superslab
    /// mapped, retired to the cache, unmapped, abandoned or adopted; a purge; an OS refusal.
    #[inline(always)]
    pub const fn is_lifecycle(self) -> bool {
        matches!(
            self,
            Event::SsCreated
                | Event::SsCached
                | Event::SsReleased
                | Event::Abandon
                | Event::Adopt
                | Event::AdoptByFree
                | Event::Madvise
                | Event::OsRefused
        )
    }
}

/// A counter written only by its owning thread (S1).
#[derive(Default)]
pub struct LocalCounter(AtomicU64);

impl LocalCounter {
    /// Adds `n`. Only the owning thread may call this.
    #[inline(always)]
    pub fn add(&self, n: u64) {
        // S1: a single writer, so load + store cannot lose an update; readers tolerate staleness.
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// The current value.
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Returns the value and zeroes it. Only the owning thread may call this.
    fn take(&self) -> u64 {
        let v = self.0.load(Ordering::Relaxed);
        self.0.store(0, Ordering::Relaxed);
        v
    }
}

/// The per-thread half: hot counters bumped on the fast path.
pub struct ThreadStats {
    allocs: [LocalCounter; MAX_CLASSES],
    frees: [LocalCounter; MAX_CLASSES],
    remote_frees: LocalCounter,
}

impl Default for ThreadStats {
    fn default() -> Self {
        Self::new()
    }
}

impl ThreadStats {
    /// All zero.
    pub fn new() -> Self {
        Self {
            allocs: core::array::from_fn(|_| LocalCounter::default()),
            frees: core::array::from_fn(|_| LocalCounter::default()),
            remote_frees: LocalCounter::default(),
        }
    }

    /// One allocation of class `class`.
    #[inline(always)]
    pub fn on_alloc(&self, class: usize) {
        self.allocs[class & CLASS_MASK].add(1);
    }

    /// One free of class `class` (by any thread).
    #[inline(always)]
    pub fn on_free(&self, class: usize) {
        self.frees[class & CLASS_MASK].add(1);
    }

    /// `allocs` allocations and `frees` frees of class `class` at once: those a client counted
    /// elsewhere first (the hot heap's thread lists count their own traffic) and now hands over.
    /// Only the owning thread may call this.
    pub fn add_counts(&self, class: usize, allocs: u64, frees: u64) {
        self.allocs[class & CLASS_MASK].add(allocs);
        self.frees[class & CLASS_MASK].add(frees);
    }

    /// One free pushed onto another thread's slab.
    #[inline]
    pub fn on_remote_free(&self) {
        self.remote_frees.add(1);
    }
}

/// The global half: merged thread counts, events, and held blocks.
pub struct GlobalStats {
    allocs: [AtomicU64; MAX_CLASSES],
    frees: [AtomicU64; MAX_CLASSES],
    held: [AtomicI64; MAX_CLASSES],
    peak_held: [AtomicU64; MAX_CLASSES],
    events: [AtomicU64; EVENTS],
    event_bytes: [AtomicU64; EVENTS],
}

impl Default for GlobalStats {
    fn default() -> Self {
        Self::new()
    }
}

impl GlobalStats {
    /// All zero.
    pub fn new() -> Self {
        Self {
            allocs: core::array::from_fn(|_| AtomicU64::new(0)),
            frees: core::array::from_fn(|_| AtomicU64::new(0)),
            held: core::array::from_fn(|_| AtomicI64::new(0)),
            peak_held: core::array::from_fn(|_| AtomicU64::new(0)),
            events: core::array::from_fn(|_| AtomicU64::new(0)),
            event_bytes: core::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Counts one `event` of `bytes` bytes (0 where bytes mean nothing).
    #[inline]
    pub fn event(&self, event: Event, bytes: usize) {
        self.events[event as usize].fetch_add(1, Ordering::Relaxed);
        if bytes != 0 {
            self.event_bytes[event as usize].fetch_add(bytes as u64, Ordering::Relaxed);
        }
        #[cfg(feature = "hook")]
        if event.is_lifecycle() {
            hook::call(event, bytes);
        }
    }

    /// One allocation of `class` by a thread without a heap (counted straight into the globals).
    #[inline]
    pub fn count_alloc(&self, class: usize) {
        self.allocs[class].fetch_add(1, Ordering::Relaxed);
    }

    /// One free of `class` by a thread without a heap (counted straight into the globals).
    #[inline]
    pub fn count_free(&self, class: usize) {
        self.frees[class].fetch_add(1, Ordering::Relaxed);
    }

    /// `n` blocks of `class` left their slab (S3). Updates the peak.
    #[inline]
    pub fn held_add(&self, class: usize, n: usize) {
        let now = self.held[class].fetch_add(n as i64, Ordering::Relaxed) + n as i64;
        if now > 0 {
            self.peak_held[class].fetch_max(now as u64, Ordering::Relaxed);
        }
    }

    /// `n` blocks of `class` came back to their slab (S3).
    #[inline]
    pub fn held_sub(&self, class: usize, n: usize) {
        self.held[class].fetch_sub(n as i64, Ordering::Relaxed);
    }

    /// Moves a thread's counts into the globals and zeroes them (S2). Only the thread owning
    /// `t` may call this, or any thread once the owner is gone; never during a snapshot.
    pub fn merge(&self, t: &ThreadStats) {
        for c in 0..MAX_CLASSES {
            let a = t.allocs[c].take();
            let f = t.frees[c].take();
            if a != 0 {
                self.allocs[c].fetch_add(a, Ordering::Relaxed);
            }
            if f != 0 {
                self.frees[c].fetch_add(f, Ordering::Relaxed);
            }
        }
        let r = t.remote_frees.take();
        if r != 0 {
            self.events[Event::RemoteFree as usize].fetch_add(r, Ordering::Relaxed);
        }
    }

    /// The global counts, without any live thread's share (see [`Snapshot::add_thread`]).
    pub fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot::default();
        for (c, row) in s.classes.iter_mut().enumerate() {
            let held = self.held[c].load(Ordering::Relaxed);
            // `held_add` raises `held` before the peak: a snapshot in between must still see a
            // peak no lower than what it read (S3).
            let peak = self.peak_held[c].load(Ordering::Relaxed);
            *row = ClassCounts {
                allocs: self.allocs[c].load(Ordering::Relaxed),
                frees: self.frees[c].load(Ordering::Relaxed),
                held,
                peak_held: peak.max(held.max(0) as u64),
            };
        }
        for (e, row) in s.events.iter_mut().enumerate() {
            *row = EventCounts {
                count: self.events[e].load(Ordering::Relaxed),
                bytes: self.event_bytes[e].load(Ordering::Relaxed),
            };
        }
        s
    }
}

/// The lifecycle hook (feature `hook`): one function, set once, told of every event for which
/// [`Event::is_lifecycle`] holds, on the thread where it happened (S5). Without the feature
/// there is no hook and no code for it.
#[cfg(feature = "hook")]
pub mod hook {
    use super::Event;
    // Not a protocol under test: a pointer published once, so core's atomic even under loom.
    use core::sync::atomic::{AtomicPtr, Ordering};

    /// What the hook is: the event, and its bytes (0 where bytes mean nothing).
    pub type Hook = fn(Event, usize);

    static HOOK: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());

    /// Sets the hook (replacing any earlier one). The hook runs inside the allocator, on cold
    /// paths but possibly in the middle of an operation.
    ///
    /// # Safety
    /// `h` (and all it calls) never re-enters an allocator whose events these are while that
    /// allocator is in the middle of an operation: a hook that allocates or frees through it
    /// must be one the allocator guards against re-entry (hakmem's tracing hook is: it defers
    /// events raised on a thread whose heap is in use). A re-entered heap would be used
    /// through two live `&mut` at once.
    ///
    /// ```compile_fail,E0133
    /// fn install(h: hakmem_stats::hook::Hook) {
    ///     hakmem_stats::hook::set(h); // error: an `unsafe fn`
    /// }
    /// ```
    pub unsafe fn set(h: Hook) {
        HOOK.store(h as *mut (), Ordering::Release);
    }

    /// Calls the hook, if any.
    #[cold]
    #[inline(never)]
    pub(crate) fn call(e: Event, bytes: usize) {
        let p = HOOK.load(Ordering::Acquire);
        if !p.is_null() {
            // SAFETY: only `set` stores a non-null value, and it stores a `Hook`; a function
            // pointer round-trips through a data pointer on every platform Rust supports.
            let h = unsafe { core::mem::transmute::<*mut (), Hook>(p) };
            h(e, bytes);
        }
    }
}

/// One class's counts in a [`Snapshot`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassCounts {
    /// Allocations.
    pub allocs: u64,
    /// Frees.
    pub frees: u64,
    /// Blocks outside their slabs now (S3): held by users, thread lists, caches or remote
    /// stacks.
    pub held: i64,
    /// The most blocks ever outside their slabs at once: an upper bound on the peak of live
    /// blocks, not the peak itself.
    pub peak_held: u64,
}

impl ClassCounts {
    /// Allocated and not yet freed.
    pub fn live(&self) -> i64 {
        self.allocs as i64 - self.frees as i64
    }

    fn is_zero(&self) -> bool {
        *self == Self::default()
    }
}

/// One event's counts in a [`Snapshot`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventCounts {
    /// How many times it happened.
    pub count: u64,
    /// The bytes it moved (0 where bytes mean nothing).
    pub bytes: u64,
}

/// A plain copy of every counter (S4), read through named accessors.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    classes: [ClassCounts; MAX_CLASSES],
    events: [EventCounts; EVENTS],
}

impl Default for Snapshot {
    fn default() -> Self {
        Self {
            classes: [ClassCounts::default(); MAX_CLASSES],
            events: [EventCounts::default(); EVENTS],
        }
    }
}

impl Snapshot {
    /// Adds a live thread's not-yet-merged counts.
    pub fn add_thread(&mut self, t: &ThreadStats) {
        for (c, row) in self.classes.iter_mut().enumerate() {
            row.allocs += t.allocs[c].get();
            row.frees += t.frees[c].get();
        }
        self.events[Event::RemoteFree as usize].count += t.remote_frees.get();
    }

    /// Adds allocations and frees of `class` counted outside any [`ThreadStats`] (a live
    /// thread's share its client keeps elsewhere); nothing for a class out of range.
    pub fn add_counts(&mut self, class: usize, allocs: u64, frees: u64) {
        if let Some(row) = self.classes.get_mut(class) {
            row.allocs += allocs;
            row.frees += frees;
        }
    }

    /// The counts of `class` (all zero for a class out of range).
    pub fn class(&self, class: usize) -> ClassCounts {
        self.classes.get(class).copied().unwrap_or_default()
    }

    /// Every class that has counted anything, as `(class, counts)`.
    pub fn classes(&self) -> impl Iterator<Item = (usize, ClassCounts)> + '_ {
        self.classes
            .iter()
            .copied()
            .enumerate()
            .filter(|(_, c)| !c.is_zero())
    }

    /// Blocks of `class` allocated and not yet freed.
    pub fn live(&self, class: usize) -> i64 {
        self.class(class).live()
    }

    /// Blocks of `class` outside their slabs now (S3).
    pub fn held(&self, class: usize) -> i64 {
        self.class(class).held
    }

    /// The counts of `e`.
    pub fn event(&self, e: Event) -> EventCounts {
        self.events[e as usize]
    }

    /// Every event, in declaration order, with its counts.
    pub fn events(&self) -> impl Iterator<Item = (Event, EventCounts)> + '_ {
        Event::ALL.iter().map(|&e| (e, self.events[e as usize]))
    }

    /// The count of `e`.
    pub fn count(&self, e: Event) -> u64 {
        self.events[e as usize].count
    }

    /// The bytes of `e`.
    pub fn bytes(&self, e: Event) -> u64 {
        self.events[e as usize].bytes
    }
}

/// Only what counted something: classes by number, events by name.
impl core::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        struct Classes<'a>(&'a Snapshot);
        impl core::fmt::Debug for Classes<'_> {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.debug_map().entries(self.0.classes()).finish()
            }
        }
        struct Events<'a>(&'a Snapshot);
        impl core::fmt::Debug for Events<'_> {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.debug_map()
                    .entries(
                        self.0
                            .events()
                            .filter(|(_, c)| c.count != 0)
                            .map(|(e, c)| (e.key(), c)),
                    )
                    .finish()
            }
        }
        f.debug_struct("Snapshot")
            .field("classes", &Classes(self))
            .field("events", &Events(self))
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn thread_counts_merge_once() {
        let g = GlobalStats::new();
        let t = ThreadStats::new();
        t.on_alloc(3);
        t.on_alloc(3);
        t.on_free(3);
        t.on_remote_free();
        let mut s = g.snapshot();
        s.add_thread(&t);
        assert_eq!(s.live(3), 1);
        assert_eq!(s.count(Event::RemoteFree), 1);
        g.merge(&t);
        let mut s = g.snapshot();
        s.add_thread(&t); // zeroed by the merge: nothing counted twice
        assert_eq!((s.class(3).allocs, s.class(3).frees), (2, 1));
        assert_eq!(s.count(Event::RemoteFree), 1);
    }

    #[test]
    fn peak_tracks_the_maximum_held() {
        let g = GlobalStats::new();
        g.held_add(1, 10);
        g.held_sub(1, 7);
        g.held_add(1, 2);
        let s = g.snapshot();
        assert_eq!(s.held(1), 5);
        assert_eq!(s.class(1).peak_held, 10);
    }

    #[test]
    fn snapshot_reads_by_name_and_debug_shows_only_what_counted() {
        let g = GlobalStats::new();
        let t = ThreadStats::new();
        t.on_alloc(5);
        g.merge(&t);
        g.event(Event::SsCreated, 0);
        g.event(Event::Reserve, 1 << 20);
        let s = g.snapshot();
        let classes: [(usize, ClassCounts); 1] = [(
            5,
            ClassCounts {
                allocs: 1,
                frees: 0,
                held: 0,
                peak_held: 0,
            },
        )];
        assert!(s.classes().eq(classes));
        assert_eq!(s.class(MAX_CLASSES + 7), ClassCounts::default());
        let counted: [(Event, u64, u64); 2] =
            [(Event::SsCreated, 1, 0), (Event::Reserve, 1, 1 << 20)];
        assert!(s
            .events()
            .filter(|(_, c)| c.count != 0)
            .map(|(e, c)| (e, c.count, c.bytes))
            .eq(counted));
        struct Len(usize);
        impl core::fmt::Write for Len {
            fn write_str(&mut self, s: &str) -> core::fmt::Result {
                self.0 += s.len();
                Ok(())
            }
        }
        let mut n = Len(0);
        core::fmt::write(&mut n, format_args!("{s:?}")).unwrap();
        assert!(
            n.0 < 400,
            "Debug lists only what counted, not 128-entry arrays"
        );
    }

    #[test]
    fn lifecycle_events_are_the_rare_ones() {
        assert!(Event::SsCreated.is_lifecycle() && Event::OsRefused.is_lifecycle());
        assert!(!Event::RemoteFree.is_lifecycle() && !Event::Mmap.is_lifecycle());
        for e in Event::ALL {
            assert!(!e.key().contains(' '));
        }
    }

    #[cfg(feature = "hook")]
    #[test]
    fn the_hook_hears_lifecycle_events_only() {
        use core::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        // Other tests count events in parallel: only this test's distinctive byte counts count.
        const MARK: usize = 0x5eed_0000;
        static HEARD: AtomicUsize = AtomicUsize::new(0);
        fn hook(e: Event, bytes: usize) {
            if bytes & !0xff == MARK {
                assert!(e.is_lifecycle());
                HEARD.fetch_add(bytes & 0xff, SeqCst);
            }
        }
        // SAFETY: the hook allocates nothing and calls into no allocator.
        unsafe { hook::set(hook) };
        let g = GlobalStats::new();
        g.event(Event::Madvise, MARK | 1);
        g.event(Event::OsRefused, MARK | 2);
        g.event(Event::Mmap, MARK | 4);
        assert_eq!(HEARD.load(SeqCst), 3);
        assert_eq!(g.snapshot().count(Event::Mmap), 1, "still counted");
    }

    #[test]
    fn events_count_calls_and_bytes() {
        let g = GlobalStats::new();
        g.event(Event::Mmap, 4096);
        g.event(Event::Mmap, 8192);
        g.event(Event::Adopt, 0);
        let s = g.snapshot();
        assert_eq!((s.count(Event::Mmap), s.bytes(Event::Mmap)), (2, 12288));
        assert_eq!((s.count(Event::Adopt), s.bytes(Event::Adopt)), (1, 0));
        assert_eq!(Event::ALL.len(), EVENTS);
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use loom::sync::Arc;

    /// Model: the global merge. Two threads count and merge at exit while a third takes
    /// snapshots; the final totals are exact and `peak_held` never falls below `held`.
    #[test]
    fn merge_and_held_are_exact() {
        // Every counter of every class is an atomic: a merge or a snapshot walks all of them,
        // so this bounded model needs more branches than loom's default.
        let mut model = loom::model::Builder::new();
        model.max_branches = 20_000;
        model.check(|| {
            let g = Arc::new(GlobalStats::new());
            let hs: [_; 2] = core::array::from_fn(|i| {
                let g = g.clone();
                loom::thread::spawn(move || {
                    let t = ThreadStats::new();
                    t.on_alloc(i);
                    t.on_alloc(i);
                    g.held_add(0, 2);
                    t.on_free(i);
                    g.held_sub(0, 1);
                    g.merge(&t);
                })
            });
            let s = g.snapshot();
            assert!(s.class(0).peak_held as i64 >= s.held(0));
            for h in hs {
                h.join().unwrap();
            }
            let s = g.snapshot();
            for i in 0..2 {
                assert_eq!((s.class(i).allocs, s.class(i).frees), (2, 1));
            }
            assert_eq!(s.held(0), 2);
            assert!(s.class(0).peak_held >= 2);
        });
    }
}
