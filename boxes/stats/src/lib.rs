//! # hakmem-stats: cheap per-thread counters, merged globally
//!
//! One job: count what the allocator does, without slowing it down or allocating.
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
#![deny(unsafe_op_in_unsafe_fn)]
#![no_std]

mod sync;
use sync::{AtomicI64, AtomicU64, Ordering};

/// Upper bound on the number of size classes a client may count (the route box asserts it fits).
/// A power of two, so the fast path indexes with a mask instead of a bounds check.
pub const MAX_CLASSES: usize = 128;
const CLASS_MASK: usize = MAX_CLASSES - 1;
const _: () = assert!(MAX_CLASSES.is_power_of_two());

/// Events counted globally: OS calls with their bytes, and the life of superslabs and slabs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Event {
    /// An `mmap` (bytes: the length mapped).
    Mmap,
    /// A `munmap` (bytes: the length unmapped, trims included).
    Munmap,
    /// An `madvise(MADV_DONTNEED)` (bytes: the length given back).
    Madvise,
    /// A superslab mapped fresh from the OS.
    SsCreated,
    /// A superslab that entered the lru cache.
    SsCached,
    /// A superslab taken back out of the lru cache.
    SsReused,
    /// A superslab unmapped for good.
    SsReleased,
    /// A block freed by a thread that did not own its slab.
    RemoteFree,
    /// A superslab abandoned by an exiting thread while it still held blocks.
    Abandon,
    /// An abandoned superslab adopted by another thread.
    Adopt,
    /// A large region handed to a user (bytes: its mapped length).
    LargeAlloc,
    /// A large region given back by a user (bytes: its mapped length).
    LargeFree,
    /// A large region grown by moving its pages (`mremap`) instead of copying (bytes: growth).
    Mremap,
}

/// Number of [`Event`] kinds.
pub const EVENTS: usize = Event::Mremap as usize + 1;

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
        Event::LargeAlloc,
        Event::LargeFree,
        Event::Mremap,
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
            Event::LargeAlloc => "large allocs",
            Event::LargeFree => "large frees",
            Event::Mremap => "mremap",
        }
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
        for c in 0..MAX_CLASSES {
            s.allocs[c] = self.allocs[c].load(Ordering::Relaxed);
            s.frees[c] = self.frees[c].load(Ordering::Relaxed);
            s.held[c] = self.held[c].load(Ordering::Relaxed);
            // `held_add` raises `held` before the peak: a snapshot in between must still see a
            // peak no lower than what it read (S3).
            let peak = self.peak_held[c].load(Ordering::Relaxed);
            s.peak_held[c] = peak.max(s.held[c].max(0) as u64);
        }
        for e in 0..EVENTS {
            s.events[e] = self.events[e].load(Ordering::Relaxed);
            s.event_bytes[e] = self.event_bytes[e].load(Ordering::Relaxed);
        }
        s
    }
}

/// A plain copy of every counter (S4).
#[derive(Clone, Copy, Debug)]
pub struct Snapshot {
    /// Allocations per class.
    pub allocs: [u64; MAX_CLASSES],
    /// Frees per class.
    pub frees: [u64; MAX_CLASSES],
    /// Blocks per class outside their slabs now (S3).
    pub held: [i64; MAX_CLASSES],
    /// The most blocks per class ever outside their slabs at once.
    pub peak_held: [u64; MAX_CLASSES],
    /// Event counts, indexed by `Event as usize`.
    pub events: [u64; EVENTS],
    /// Event bytes, indexed by `Event as usize`.
    pub event_bytes: [u64; EVENTS],
}

impl Default for Snapshot {
    fn default() -> Self {
        Self {
            allocs: [0; MAX_CLASSES],
            frees: [0; MAX_CLASSES],
            held: [0; MAX_CLASSES],
            peak_held: [0; MAX_CLASSES],
            events: [0; EVENTS],
            event_bytes: [0; EVENTS],
        }
    }
}

impl Snapshot {
    /// Adds a live thread's not-yet-merged counts.
    pub fn add_thread(&mut self, t: &ThreadStats) {
        for c in 0..MAX_CLASSES {
            self.allocs[c] += t.allocs[c].get();
            self.frees[c] += t.frees[c].get();
        }
        self.events[Event::RemoteFree as usize] += t.remote_frees.get();
    }

    /// Blocks of `class` allocated and not yet freed.
    pub fn live(&self, class: usize) -> i64 {
        self.allocs[class] as i64 - self.frees[class] as i64
    }

    /// The count of `e`.
    pub fn count(&self, e: Event) -> u64 {
        self.events[e as usize]
    }

    /// The bytes of `e`.
    pub fn bytes(&self, e: Event) -> u64 {
        self.event_bytes[e as usize]
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
        assert_eq!((s.allocs[3], s.frees[3]), (2, 1));
        assert_eq!(s.count(Event::RemoteFree), 1);
    }

    #[test]
    fn peak_tracks_the_maximum_held() {
        let g = GlobalStats::new();
        g.held_add(1, 10);
        g.held_sub(1, 7);
        g.held_add(1, 2);
        let s = g.snapshot();
        assert_eq!(s.held[1], 5);
        assert_eq!(s.peak_held[1], 10);
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
            assert!(s.peak_held[0] as i64 >= s.held[0]);
            for h in hs {
                h.join().unwrap();
            }
            let s = g.snapshot();
            for i in 0..2 {
                assert_eq!((s.allocs[i], s.frees[i]), (2, 1));
            }
            assert_eq!(s.held[0], 2);
            assert!(s.peak_held[0] >= 2);
        });
    }
}
