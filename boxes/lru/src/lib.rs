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
//!   reads as zero when reused.
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
    /// Give pages back with `MADV_DONTNEED` as a region enters (C4).
    pub purge: bool,
}

impl Default for LruConfig {
    fn default() -> Self {
        Self {
            max_bytes: 256 << 20,
            decay_ns: 1_000_000_000,
            purge: true,
        }
    }
}

#[derive(Clone, Copy)]
struct Entry {
    base: usize,
    len: usize,
    zeroed: bool,
    since: u64,
}

struct Inner {
    entries: [Entry; MAX_ENTRIES],
    len: usize,
    bytes: usize,
    config: LruConfig,
}

/// A region handed out of the cache.
#[derive(Clone, Copy, Debug)]
pub struct Reused {
    /// The region (2 MiB-aligned, `len` bytes as asked).
    pub base: NonNull<u8>,
    /// True when it reads as zero.
    pub zeroed: bool,
}

/// Regions to unmap once the lock is dropped (no system call under the lock).
struct Doomed {
    list: [(usize, usize); MAX_ENTRIES + 1],
    n: usize,
}

impl Doomed {
    fn new() -> Self {
        Self {
            list: [(0, 0); MAX_ENTRIES + 1],
            n: 0,
        }
    }
    fn push(&mut self, base: usize, len: usize) {
        self.list[self.n] = (base, len);
        self.n += 1;
    }
    fn unmap(&self, env: &Env<'_>) {
        for &(base, len) in &self.list[..self.n] {
            // SAFETY: each range was a cached region (C1) removed from the cache under the lock,
            // so nobody else can reach it (C2).
            unsafe {
                env.os.unmap(
                    NonNull::new(base as *mut u8).expect("non-null"),
                    len,
                    env.stats,
                )
            };
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
        e
    }

    fn decay(inner: &mut Inner, now: u64, doomed: &mut Doomed) {
        // Entries are kept oldest first.
        while inner.len > 0 && now.saturating_sub(inner.entries[0].since) > inner.config.decay_ns {
            let e = Self::remove(inner, 0);
            doomed.push(e.base, e.len);
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
        let mut doomed = Doomed::new();
        if len > config.max_bytes {
            doomed.push(base.as_ptr() as usize, len);
            doomed.unmap(env);
            return false;
        }
        // SAFETY: the caller gives up the region; its contents are dead.
        let zeroed = config.purge && unsafe { env.os.purge(base, len, env.stats) };
        self.inner.with(|inner| {
            Self::decay(inner, now, &mut doomed);
            while inner.len == MAX_ENTRIES || inner.bytes + len > inner.config.max_bytes {
                let e = Self::remove(inner, 0);
                doomed.push(e.base, e.len);
            }
            inner.entries[inner.len] = Entry {
                base: base.as_ptr() as usize,
                len,
                zeroed,
                since: now,
            };
            inner.len += 1;
            inner.bytes += len;
        });
        env.stats.event(Event::SsCached, 0);
        doomed.unmap(env);
        true
    }

    /// Takes a cached region of at least `len` bytes (a multiple of the page size), trimming the
    /// excess from its tail, or `None` when none fits. The best fit is chosen.
    pub fn take(&self, env: &Env<'_>, len: usize, now: u64) -> Option<Reused> {
        let mut doomed = Doomed::new();
        let got = self.inner.with(|inner| {
            Self::decay(inner, now, &mut doomed);
            let mut best: Option<usize> = None;
            for i in 0..inner.len {
                let e = inner.entries[i];
                if e.len >= len && best.is_none_or(|b| e.len < inner.entries[b].len) {
                    best = Some(i);
                }
            }
            best.map(|i| Self::remove(inner, i))
        });
        doomed.unmap(env);
        let e = got?;
        if e.len > len {
            // SAFETY: the tail is part of a region we just took out of the cache (C2).
            unsafe {
                env.os.unmap(
                    NonNull::new((e.base + len) as *mut u8)?,
                    e.len - len,
                    env.stats,
                );
            }
        }
        env.stats.event(Event::SsReused, 0);
        Some(Reused {
            base: NonNull::new(e.base as *mut u8)?,
            zeroed: e.zeroed,
        })
    }

    /// Unmaps every region that has decayed by `now`.
    pub fn decay_now(&self, env: &Env<'_>, now: u64) {
        let mut doomed = Doomed::new();
        self.inner
            .with(|inner| Self::decay(inner, now, &mut doomed));
        doomed.unmap(env);
    }

    /// Unmaps every cached region.
    pub fn flush(&self, env: &Env<'_>) {
        self.decay_now(env, u64::MAX);
    }

    /// Takes the lock and keeps it (fork's `prepare`).
    #[cfg(not(loom))]
    pub fn lock(&self) {
        self.inner.lock();
    }

    /// Releases [`Lru::lock`] (fork's `parent` and `child`).
    #[cfg(not(loom))]
    pub fn unlock(&self) {
        self.inner.unlock();
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
