//! The public statistics snapshot and its report.
use core::fmt::{self, Write};
use hakmem_route::{block_size_of, CLASSES};
use hakmem_stats::{Event, Snapshot};

use crate::large::LARGE_ROW;

/// A snapshot of every counter, taken by [`crate::stats`]. Plain data: taking and reading one
/// allocates nothing.
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    snap: Snapshot,
    lru_regions: usize,
    lru_bytes: usize,
    abandoned: usize,
    threads: usize,
}

/// One row of the per-class table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassStats {
    /// Block size in bytes; 0 for the large tier's row.
    pub block_size: usize,
    /// Allocations.
    pub allocs: u64,
    /// Frees.
    pub frees: u64,
    /// Allocated and not yet freed.
    pub live: i64,
    /// The most blocks ever held outside their slabs at once (by users, thread lists, caches
    /// and remote stacks): an upper bound on the peak live count.
    pub peak_held: u64,
}

impl Stats {
    pub(crate) fn new(
        snap: Snapshot,
        lru: (usize, usize),
        abandoned: usize,
        threads: usize,
    ) -> Self {
        Self {
            snap,
            lru_regions: lru.0,
            lru_bytes: lru.1,
            abandoned,
            threads,
        }
    }

    /// An all-zero snapshot (before the first allocation).
    pub(crate) fn empty() -> Self {
        Self::new(Snapshot::default(), (0, 0), 0, 0)
    }

    /// The small classes, then the large tier (block size 0).
    pub fn classes(&self) -> impl Iterator<Item = ClassStats> + '_ {
        (0..=CLASSES).map(move |c| ClassStats {
            block_size: if c == LARGE_ROW { 0 } else { block_size_of(c) },
            allocs: self.snap.allocs[c],
            frees: self.snap.frees[c],
            live: self.snap.live(c),
            peak_held: self.snap.peak_held[c],
        })
    }

    /// Blocks allocated and not yet freed, small and large.
    pub fn live_blocks(&self) -> i64 {
        self.classes().map(|c| c.live).sum()
    }

    /// Bytes of those blocks: block sizes for small blocks, mapped bytes for large ones.
    pub fn live_bytes(&self) -> i64 {
        let small: i64 = self
            .classes()
            .filter(|c| c.block_size != 0)
            .map(|c| c.live * c.block_size as i64)
            .sum();
        small + self.bytes(Event::LargeAlloc) as i64 + self.bytes(Event::Mremap) as i64
            - self.bytes(Event::LargeFree) as i64
    }

    /// Every allocation so far.
    pub fn total_allocs(&self) -> u64 {
        self.classes().map(|c| c.allocs).sum()
    }

    /// Every free so far.
    pub fn total_frees(&self) -> u64 {
        self.classes().map(|c| c.frees).sum()
    }

    /// How many times `e` happened.
    pub fn count(&self, e: Event) -> u64 {
        self.snap.count(e)
    }

    /// The bytes `e` moved (OS calls, large regions).
    pub fn bytes(&self, e: Event) -> u64 {
        self.snap.bytes(e)
    }

    /// `(regions, bytes)` in the lru now.
    pub fn lru(&self) -> (usize, usize) {
        (self.lru_regions, self.lru_bytes)
    }

    /// Superslabs waiting on the abandoned list now.
    pub fn abandoned_now(&self) -> usize {
        self.abandoned
    }

    /// Threads that have a heap now.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Writes the report `HAKMEM_STATS=1` prints at exit.
    pub fn write_report(&self, w: &mut impl Write) -> fmt::Result {
        writeln!(w, "hakmem: statistics")?;
        writeln!(
            w,
            "  class   block        allocs         frees        live   peak held"
        )?;
        for (i, c) in self
            .classes()
            .enumerate()
            .filter(|(_, c)| c.allocs != 0 || c.frees != 0)
        {
            if c.block_size == 0 {
                write!(w, "  large       -")?;
            } else {
                write!(w, "  {i:5} {:7}", c.block_size)?;
            }
            writeln!(
                w,
                " {:13} {:13} {:11} {:11}",
                c.allocs, c.frees, c.live, c.peak_held
            )?;
        }
        writeln!(
            w,
            "  total allocs {}, frees {}, live {}",
            self.total_allocs(),
            self.total_frees(),
            self.live_blocks()
        )?;
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        for e in [Event::Mmap, Event::Munmap, Event::Madvise, Event::Mremap] {
            writeln!(
                w,
                "  os {:8} {:10} calls {:12.1} MiB",
                e.name(),
                self.count(e),
                mib(self.bytes(e))
            )?;
        }
        writeln!(
            w,
            "  superslabs created {}, cached {}, reused {}, released {}; lru holds {} regions ({:.1} MiB)",
            self.count(Event::SsCreated),
            self.count(Event::SsCached),
            self.count(Event::SsReused),
            self.count(Event::SsReleased),
            self.lru_regions,
            mib(self.lru_bytes as u64),
        )?;
        writeln!(
            w,
            "  large allocs {} ({:.1} MiB), frees {}",
            self.count(Event::LargeAlloc),
            mib(self.bytes(Event::LargeAlloc)),
            self.count(Event::LargeFree),
        )?;
        writeln!(
            w,
            "  remote frees {}, abandons {}, adopts {}, abandoned now {}, threads with a heap {}",
            self.count(Event::RemoteFree),
            self.count(Event::Abandon),
            self.count(Event::Adopt),
            self.abandoned,
            self.threads,
        )?;
        writeln!(w, "  peak RSS {:.1} MiB", peak_rss_kib() as f64 / 1024.0)
    }
}

/// The process's peak resident set, in KiB (`getrusage`).
pub fn peak_rss_kib() -> u64 {
    // SAFETY: a zeroed rusage is a valid out-parameter.
    let mut ru: libc::rusage = unsafe { core::mem::zeroed() };
    // SAFETY: a valid pointer to an rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_maxrss.max(0) as u64
}
