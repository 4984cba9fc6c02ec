extern crate std;
use super::*;
use hakmem_registry::Registry;
use hakmem_stats::GlobalStats;
use hakmem_superslab::{HeapOs, Os, SS_SIZE};
use std::vec::Vec;

pub(crate) struct World {
    pub os: HeapOs,
    pub registry: Registry,
    pub stats: GlobalStats,
}

impl World {
    pub fn new(chunks: usize) -> World {
        let os = HeapOs::new(chunks);
        let registry = os.registry();
        World {
            os,
            registry,
            stats: GlobalStats::new(),
        }
    }
    pub fn env(&self) -> Env<'_> {
        Env {
            os: &self.os,
            registry: &self.registry,
            stats: &self.stats,
        }
    }
    pub fn region(&self, len: usize) -> NonNull<u8> {
        self.os.map(len, SS_SIZE, &self.stats).unwrap()
    }
}

#[cfg(not(loom))]
mod plain {
    use super::*;
    use hakmem_stats::Event;
    use hakmem_superslab::PAGE;

    /// Purges on entry: no hot budget.
    fn eager() -> LruConfig {
        LruConfig {
            hot_bytes: 0,
            ..LruConfig::default()
        }
    }

    #[test]
    fn reuse_before_the_os_with_pages_given_back() {
        let w = World::new(8);
        let env = w.env();
        let lru = Lru::new(eager());
        let r = w.region(SS_SIZE);
        // SAFETY: a dirty "retired" region.
        unsafe {
            r.as_ptr().write_bytes(9, 100);
            assert!(lru.put(&env, r, SS_SIZE, 0));
        }
        assert_eq!(lru.usage(), (1, SS_SIZE));
        let got = lru.take(&env, SS_SIZE, true, 10).unwrap();
        assert_eq!(got.base, r);
        assert!(got.zeroed);
        // SAFETY: purged memory of ours.
        assert_eq!(unsafe { *got.base.as_ptr() }, 0, "C4: reads as zero");
        assert!(
            lru.take(&env, SS_SIZE, true, 10).is_none(),
            "C2: handed out once"
        );
        let s = w.stats.snapshot();
        assert_eq!((s.count(Event::SsCached), s.count(Event::SsReused)), (1, 1));
        assert_eq!(s.count(Event::Madvise), 1);
    }

    #[test]
    fn purge_can_be_switched_off() {
        let w = World::new(4);
        let env = w.env();
        let lru = Lru::new(LruConfig {
            purge: false,
            ..LruConfig::default()
        });
        let r = w.region(SS_SIZE);
        // SAFETY: a retired region.
        unsafe { assert!(lru.put(&env, r, SS_SIZE, 0)) };
        assert!(!lru.take(&env, SS_SIZE, true, 0).unwrap().zeroed);
        assert_eq!(w.stats.snapshot().count(Event::Madvise), 0);
    }

    #[test]
    fn recent_regions_are_purged_after_a_short_delay() {
        let w = World::new(8);
        let env = w.env();
        let config = LruConfig {
            hot_bytes: SS_SIZE,
            purge_delay_ns: 100,
            ..LruConfig::default()
        };
        let lru = Lru::new(config);
        let (a, b) = (w.region(SS_SIZE), w.region(SS_SIZE));
        // SAFETY: retired regions.
        unsafe {
            assert!(lru.put(&env, a, SS_SIZE, 0)); // within the hot budget: purge deferred
            assert!(lru.put(&env, b, SS_SIZE, 0)); // beyond it: purged on entry
        }
        assert_eq!(w.stats.snapshot().count(Event::Madvise), 1);
        // Reused soon: no system call, not zeroed.
        let got = lru.take(&env, SS_SIZE, true, 50).unwrap();
        assert_eq!(
            (got.base, got.zeroed),
            (a, false),
            "among equals, pages still there first"
        );
        let got = lru.take(&env, SS_SIZE, true, 50).unwrap();
        assert_eq!((got.base, got.zeroed), (b, true));
        // SAFETY: given back again.
        unsafe { assert!(lru.put(&env, a, SS_SIZE, 60)) };
        lru.decay_now(&env, 200);
        assert_eq!(
            w.stats.snapshot().count(Event::Madvise),
            2,
            "purged once the delay passed"
        );
        assert!(lru.take(&env, SS_SIZE, true, 200).unwrap().zeroed);
    }

    #[test]
    fn decay_unmaps_old_regions() {
        let w = World::new(8);
        let env = w.env();
        let lru = Lru::new(LruConfig {
            decay_ns: 100,
            ..LruConfig::default()
        });
        let (a, b) = (w.region(SS_SIZE), w.region(SS_SIZE));
        // SAFETY: retired regions.
        unsafe {
            lru.put(&env, a, SS_SIZE, 0);
            lru.put(&env, b, SS_SIZE, 80);
        }
        lru.decay_now(&env, 150);
        assert_eq!(lru.usage(), (1, SS_SIZE), "C5: the older one went");
        assert!(!w.os.is_mapped(a.as_ptr() as usize, SS_SIZE));
        assert!(w.os.is_mapped(b.as_ptr() as usize, SS_SIZE));
        lru.flush(&env);
        assert_eq!(lru.usage(), (0, 0));
        assert_eq!(w.os.unmaps(), 2);
        assert_eq!(w.stats.snapshot().count(Event::SsReleased), 2);
    }

    #[test]
    fn bounded_by_bytes_and_count() {
        let w = World::new(80);
        let env = w.env();
        let lru = Lru::new(LruConfig {
            max_bytes: 3 * SS_SIZE,
            ..LruConfig::default()
        });
        let regions: Vec<_> = (0..4).map(|_| w.region(SS_SIZE)).collect();
        for (t, &r) in regions.iter().enumerate() {
            // SAFETY: retired regions.
            unsafe { assert!(lru.put(&env, r, SS_SIZE, t as u64)) };
        }
        assert_eq!(lru.usage(), (3, 3 * SS_SIZE), "C3: the oldest was evicted");
        assert!(!w.os.is_mapped(regions[0].as_ptr() as usize, SS_SIZE));
        let big = w.region(4 * SS_SIZE);
        // SAFETY: a retired region, too big to cache: unmapped instead.
        unsafe { assert!(!lru.put(&env, big, 4 * SS_SIZE, 5)) };
        assert!(!w.os.is_mapped(big.as_ptr() as usize, 4 * SS_SIZE));
        let off = Lru::new(LruConfig {
            max_bytes: 0,
            ..LruConfig::default()
        });
        // SAFETY: as above.
        unsafe { assert!(!off.put(&env, regions[1], SS_SIZE, 0)) };
        let _ = MAX_ENTRIES;
    }

    #[test]
    fn take_trims_a_larger_region() {
        let w = World::new(8);
        let env = w.env();
        let lru = Lru::new(LruConfig::default());
        let r = w.region(3 * SS_SIZE);
        // SAFETY: a retired region.
        unsafe { lru.put(&env, r, 3 * SS_SIZE, 0) };
        assert!(lru.take(&env, 4 * SS_SIZE, false, 0).is_none());
        // Within twice the length asked: handed over whole.
        let got = lru.take(&env, 2 * SS_SIZE, false, 0).unwrap();
        assert_eq!((got.base, got.len), (r, 3 * SS_SIZE));
        // SAFETY: given back.
        unsafe { lru.put(&env, r, 3 * SS_SIZE, 0) };
        let got = lru.take(&env, SS_SIZE + PAGE, true, 0).unwrap();
        assert_eq!((got.base, got.len), (r, SS_SIZE + PAGE));
        assert!(w.os.is_mapped(r.as_ptr() as usize, SS_SIZE + PAGE));
        let tail = r.as_ptr() as usize + SS_SIZE + PAGE;
        assert!(!w.os.is_mapped(tail, PAGE), "tail given back");
    }

    #[test]
    fn clock_moves_forward() {
        let a = now_ns();
        let b = now_ns();
        assert!(b >= a && a > 0);
    }
}

#[cfg(loom)]
mod loom_models {
    use super::*;
    use loom::sync::Arc;

    /// Model: the lru hand-over (C2). One thread caches a retired superslab while two threads
    /// race to take it and a third unmaps everything that decayed. The region leaves the cache
    /// exactly once: reused by one taker, or unmapped once.
    #[test]
    fn hand_over() {
        loom::model(|| {
            let w = Arc::new(World::new(2));
            let lru = Arc::new(Lru::new(LruConfig {
                decay_ns: 5,
                ..LruConfig::default()
            }));
            let r = w.region(SS_SIZE);
            let base = r.as_ptr() as usize;
            let putter = {
                let (w, lru) = (w.clone(), lru.clone());
                loom::thread::spawn(move || {
                    // SAFETY: a retired region handed to the cache once.
                    unsafe {
                        lru.put(&w.env(), NonNull::new(base as *mut u8).unwrap(), SS_SIZE, 0)
                    };
                })
            };
            let takers: Vec<_> = [1u64, 10]
                .into_iter()
                .map(|now| {
                    let (w, lru) = (w.clone(), lru.clone());
                    loom::thread::spawn(move || lru.take(&w.env(), SS_SIZE, true, now).is_some())
                })
                .collect();
            putter.join().unwrap();
            let taken = takers
                .into_iter()
                .map(|t| t.join().unwrap())
                .filter(|&x| x)
                .count();
            lru.flush(&w.env());
            let unmapped = w.os.unmaps();
            assert_eq!(taken + unmapped, 1, "taken {taken}, unmapped {unmapped}");
            assert_eq!(w.os.is_mapped(base, SS_SIZE), taken == 1);
        });
    }
}
