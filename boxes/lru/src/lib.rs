//! # hakmem-lru: a cache of empty regions, asked before the OS
//!
//! One job: keep recently released regions (empty superslabs and freed large regions) mapped for
//! a while, so the next request reuses one instead of calling mmap, without holding on to memory.
//!
//! ## Invariants
//! - **C1 (only the dead).** A region enters the cache only after it was retired: unregistered,
//!   with no block held anywhere. The cache never looks inside a region.
//! - **C2 (one hand-over).** Every cached region leaves exactly once: taken by one thread for
//!   reuse, or unmapped (by decay, by eviction, or by [`Lru::flush`]). Both happen under the lock,
//!   so a region is never both reused and unmapped.
//! - **C3 (bounded).** At most [`MAX_ENTRIES`] regions and `max_bytes` bytes are cached; the oldest
//!   is evicted to make room, and a region larger than `max_bytes` is refused.
//! - **C4 (pages given back).** With `purge` on (the default), a region's pages are given back
//!   (`MADV_DONTNEED`) as it enters, so a cached region costs address space but no memory, and
//!   reads as zero when reused. One bounded exception keeps reuse cheap: the most recently cached
//!   regions, up to `hot_bytes` in all, keep their pages for at most `purge_delay_ns`, and are
//!   purged at the first cache operation after that (a region that is reused sooner costs no
//!   system call and no page fault).
//! - **C5 (decay).** A region cached for longer than `decay_ns` is unmapped at the next cache
//!   operation.
//! - **C6 (counted).** Every region entering, leaving for reuse, and unmapped from here counts
//!   as a superslab cached, reused and released; large regions count too, as the regions they
//!   are.
#![deny(unsafe_op_in_unsafe_fn)]
#![no_std]

use core::ptr::NonNull;
use hakmem_stats::Event;
use hakmem_superslab::{Env, SpinLock};

/// Most regions cached at once.
pub const MAX_ENTRIES: usize = 64;

/// How the cache behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LruConfig {
    /// Most bytes cached at once; 0 turns the cache off.
    pub max_bytes: usize,
    /// A cached region is unmapped after this many nanoseconds.
    pub decay_ns: u64,
    /// Give pages back with `MADV_DONTNEED` (C4).
    pub purge: bool,
    /// Most bytes of recently cached regions whose purge is deferred (C4).
    pub hot_bytes: usize,
    /// How long a deferred purge waits, in nanoseconds.
    pub purge_delay_ns: u64,
}

impl Default for LruConfig {
    fn default() -> Self {
        Self {
            max_bytes: 256 << 20,
            decay_ns: 1_000_000_000,
            purge: true,
            hot_bytes: 64 << 20,
            purge_delay_ns: 200_000_000,
        }
    }
}

#[derive(Clone, Copy)]
struct Entry {
    base: usize,
    len: usize,
    /// Reads as zero (purged, or never touched since it was mapped).
    zeroed: bool,
    since: u64,
}

struct Inner {
    /// Oldest first.
    entries: [Entry; MAX_ENTRIES],
    len: usize,
    bytes: usize,
    /// Bytes of entries whose purge is deferred.
    hot: usize,
    config: LruConfig,
}

/// A region handed out of the cache.
#[derive(Clone, Copy, Debug)]
pub struct Reused {
    /// The region (2 MiB-aligned).
    pub base: NonNull<u8>,
    /// Its length: what was asked for, or (when not exact) up to twice that.
    pub len: usize,
    /// True when it reads as zero.
    pub zeroed: bool,
}

/// Regions to unmap or purge once the lock is dropped (no system call under the lock).
struct Batch {
    list: [(usize, usize, u64); MAX_ENTRIES + 1],
    n: usize,
}

impl Batch {
    fn new() -> Self {
        Self {
            list: [(0, 0, 0); MAX_ENTRIES + 1],
            n: 0,
        }
    }
    fn push(&mut self, e: Entry) {
        self.list[self.n] = (e.base, e.len, e.since);
        self.n += 1;
    }
    fn iter(&self) -> impl Iterator<Item = (NonNull<u8>, usize, u64)> + '_ {
        self.list[..self.n].iter().map(|&(b, l, t)| {
            (
                NonNull::new(b as *mut u8).expect("cached regions are never at 0"),
                l,
                t,
            )
        })
    }
    fn unmap(&self, env: &Env<'_>) {
        for (base, len, _) in self.iter() {
            // SAFETY: each range was a cached region (C1) removed from the cache under the lock,
            // so nobody else can reach it (C2).
            unsafe { env.os.unmap(base, len, env.stats) };
            env.stats.event(Event::SsReleased, 0);
        }
    }
}

/// The cache.
pub struct Lru {
    inner: SpinLock<Inner>,
}

impl Lru {
    /// An empty cache.
    pub fn new(config: LruConfig) -> Self {
        Self {
            inner: SpinLock::new(Inner {
                entries: [Entry {
                    base: 0,
                    len: 0,
                    zeroed: false,
                    since: 0,
                }; MAX_ENTRIES],
                len: 0,
                bytes: 0,
                hot: 0,
                config,
            }),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> LruConfig {
        self.inner.with(|i| i.config)
    }

    /// `(regions, bytes)` cached now.
    pub fn usage(&self) -> (usize, usize) {
        self.inner.with(|i| (i.len, i.bytes))
    }

    fn remove(inner: &mut Inner, i: usize) -> Entry {
        let e = inner.entries[i];
        inner.entries.copy_within(i + 1..inner.len, i);
        inner.len -= 1;
        inner.bytes -= e.len;
        if !e.zeroed && inner.config.purge {
            inner.hot -= e.len;
        }
        e
    }

    fn insert(inner: &mut Inner, e: Entry) {
        // Keep oldest first: entries put back after a purge go where their age says.
        let at = inner.entries[..inner.len]
            .iter()
            .position(|x| x.since > e.since)
            .unwrap_or(inner.len);
        inner.entries.copy_within(at..inner.len, at + 1);
        inner.entries[at] = e;
        inner.len += 1;
        inner.bytes += e.len;
        if !e.zeroed && inner.config.purge {
            inner.hot += e.len;
        }
    }

    /// Under the lock: takes out what decayed (to unmap) and what waited long enough for its
    /// purge (to purge and put back).
    fn expire(inner: &mut Inner, now: u64, doomed: &mut Batch, to_purge: &mut Batch) {
        while inner.len > 0 && now.saturating_sub(inner.entries[0].since) > inner.config.decay_ns {
            doomed.push(Self::remove(inner, 0));
        }
        if !inner.config.purge {
            return;
        }
        let mut i = 0;
        while i < inner.len {
            let e = inner.entries[i];
            if !e.zeroed && now.saturating_sub(e.since) > inner.config.purge_delay_ns {
                to_purge.push(Self::remove(inner, i));
            } else {
                i += 1;
            }
        }
    }

    /// Purges what `expire` took out and puts it back, as zeroed.
    fn finish(&self, env: &Env<'_>, doomed: &Batch, to_purge: &Batch) {
        doomed.unmap(env);
        for (base, len, since) in to_purge.iter() {
            // SAFETY: out of the cache under the lock, so nobody else can reach it (C2).
            let zeroed = unsafe { env.os.purge(base, len, env.stats) };
            let e = Entry {
                base: base.as_ptr() as usize,
                len,
                zeroed,
                since,
            };
            let put_back = self.inner.with(|inner| {
                let fits = inner.len < MAX_ENTRIES && inner.bytes + len <= inner.config.max_bytes;
                if fits {
                    Self::insert(inner, e);
                }
                fits
            });
            if !put_back {
                let mut b = Batch::new();
                b.push(e);
                b.unmap(env);
            }
        }
    }

    /// Caches a retired region (C1) at time `now` (ns); unmaps it instead when it cannot be
    /// cached. Returns true when it was cached.
    ///
    /// # Safety
    /// `[base, base + len)` is a whole retired region of `env.os`, 2 MiB-aligned, that nothing
    /// refers to any more.
    pub unsafe fn put(&self, env: &Env<'_>, base: NonNull<u8>, len: usize, now: u64) -> bool {
        let config = self.config();
        let mut doomed = Batch::new();
        let mut to_purge = Batch::new();
        let entry = Entry {
            base: base.as_ptr() as usize,
            len,
            zeroed: false,
            since: now,
        };
        if len > config.max_bytes {
            doomed.push(entry);
            doomed.unmap(env);
            return false;
        }
        // Purge at once unless the hot budget has room for it (C4).
        let defer = config.purge && self.inner.with(|i| i.hot + len <= i.config.hot_bytes);
        let zeroed = config.purge && !defer && {
            // SAFETY: the caller gives up the region; its contents are dead.
            unsafe { env.os.purge(base, len, env.stats) }
        };
        self.inner.with(|inner| {
            Self::expire(inner, now, &mut doomed, &mut to_purge);
            while inner.len == MAX_ENTRIES || inner.bytes + len > inner.config.max_bytes {
                doomed.push(Self::remove(inner, 0));
            }
            Self::insert(inner, Entry { zeroed, ..entry });
        });
        env.stats.event(Event::SsCached, 0);
        self.finish(env, &doomed, &to_purge);
        true
    }

    /// Takes a cached region of at least `len` bytes (a multiple of the page size), or `None`
    /// when none fits; the best fit is chosen. With `exact`, any excess is unmapped from its
    /// tail; without, a region up to twice `len` is handed over whole (see [`Reused::len`]).
    pub fn take(&self, env: &Env<'_>, len: usize, exact: bool, now: u64) -> Option<Reused> {
        let mut doomed = Batch::new();
        let mut to_purge = Batch::new();
        let got = self.inner.with(|inner| {
            Self::expire(inner, now, &mut doomed, &mut to_purge);
            // Best fit; among equals, one whose pages are still there (no faults), then the newest.
            let rank = |e: &Entry| (e.len, e.zeroed);
            let mut best: Option<usize> = None;
            for i in 0..inner.len {
                let e = inner.entries[i];
                if e.len >= len && best.is_none_or(|b| rank(&e) <= rank(&inner.entries[b])) {
                    best = Some(i);
                }
            }
            #[cfg(not(hakmem_seeded_bug = "lru_double_take"))]
            let got = best.map(|i| Self::remove(inner, i));
            // Seeded bug: hand the region out but leave it cached, so it can go out twice.
            #[cfg(hakmem_seeded_bug = "lru_double_take")]
            let got = best.map(|i| inner.entries[i]);
            got
        });
        self.finish(env, &doomed, &to_purge);
        let e = got?;
        let keep = if exact || e.len > 2 * len { len } else { e.len };
        if e.len > keep {
            // SAFETY: the tail is part of a region we just took out of the cache (C2).
            unsafe {
                env.os.unmap(
                    NonNull::new((e.base + keep) as *mut u8)?,
                    e.len - keep,
                    env.stats,
                )
            };
        }
        env.stats.event(Event::SsReused, 0);
        Some(Reused {
            base: NonNull::new(e.base as *mut u8)?,
            len: keep,
            zeroed: e.zeroed,
        })
    }

    /// Unmaps what has decayed and purges what has waited long enough, as of `now`.
    pub fn decay_now(&self, env: &Env<'_>, now: u64) {
        let mut doomed = Batch::new();
        let mut to_purge = Batch::new();
        self.inner
            .with(|inner| Self::expire(inner, now, &mut doomed, &mut to_purge));
        self.finish(env, &doomed, &to_purge);
    }

    /// Unmaps every cached region.
    pub fn flush(&self, env: &Env<'_>) {
        let mut doomed = Batch::new();
        self.inner.with(|inner| {
            while inner.len > 0 {
                doomed.push(Self::remove(inner, 0));
            }
        });
        doomed.unmap(env);
    }

    /// Takes the lock and keeps it (fork's `prepare`).
    #[cfg(not(loom))]
    pub fn lock_for_fork(&self) {
        self.inner.lock_for_fork();
    }

    /// Releases [`Lru::lock_for_fork`] (fork's `parent` and `child`).
    ///
    /// # Safety
    /// As [`hakmem_superslab::SpinLock::force_unlock`]: the lock was taken by `lock_for_fork`.
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

/// The instant the lru measures decay from: `CLOCK_MONOTONIC_COARSE` in nanoseconds (a vDSO
/// read, no system call, no allocation).
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer to a timespec; this clock always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests;
