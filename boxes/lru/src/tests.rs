extern crate std;
use super::*;
use hakmem_stats::GlobalStats;
use hakmem_superslab::{HeapOs, Os, SS_SIZE};
use std::sync::Arc;
use std::vec::Vec;

pub(crate) struct World {
    pub os: Arc<HeapOs>,
    pub stats: GlobalStats,
}

impl World {
    pub fn new(chunks: usize) -> World {
        World {
            os: Arc::new(HeapOs::new(chunks)),
            stats: GlobalStats::new(),
        }
    }
    pub fn lru(&self, config: LruConfig) -> Lru<Arc<HeapOs>> {
        Lru::new(self.os.clone(), config)
    }
    pub fn region(&self, len: usize) -> NonNull<u8> {
        self.os.map(len, SS_SIZE, &self.stats).unwrap()
    }
    /// A region with an unused 2 MiB mapping after it, so that it is no cached region's
    /// neighbour (C10 would merge them).
    #[cfg(not(loom))]
    pub fn apart(&self, len: usize) -> NonNull<u8> {
        let r = self.region(len);
        self.region(SS_SIZE);
        r
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
        let lru = w.lru(eager());
        let r = w.region(SS_SIZE);
        // SAFETY: a dirty "retired" region.
        unsafe {
            r.as_ptr().write_bytes(9, 100);
            assert!(lru.put(&w.stats, r, SS_SIZE, 0));
        }
        assert_eq!(lru.usage(), (1, SS_SIZE));
        let got = lru.take(&w.stats, SS_SIZE, true, 10).unwrap();
        assert_eq!(got.base, r);
        assert!(got.zeroed);
        // SAFETY: purged memory of ours.
        assert_eq!(unsafe { *got.base.as_ptr() }, 0, "C4: reads as zero");
        assert!(
            lru.take(&w.stats, SS_SIZE, true, 10).is_none(),
            "C2: handed out once"
        );
        let s = w.stats.snapshot();
        assert_eq!((s.count(Event::SsCached), s.count(Event::SsReused)), (1, 1));
        assert_eq!(s.count(Event::Madvise), 1);
    }

    #[test]
    fn purge_can_be_switched_off() {
        let w = World::new(4);
        let lru = w.lru(LruConfig {
            purge: false,
            ..LruConfig::default()
        });
        let r = w.region(SS_SIZE);
        // SAFETY: a retired region.
        unsafe { assert!(lru.put(&w.stats, r, SS_SIZE, 0)) };
        assert!(!lru.take(&w.stats, SS_SIZE, true, 0).unwrap().zeroed);
        assert_eq!(w.stats.snapshot().count(Event::Madvise), 0);
    }

    #[test]
    fn regions_keep_their_pages_until_the_delay_or_the_budget() {
        let w = World::new(8);
        let config = LruConfig {
            hot_bytes: SS_SIZE,
            purge_delay_ns: 100,
            ..LruConfig::default()
        };
        let lru = w.lru(config);
        let (a, b) = (w.apart(SS_SIZE), w.apart(SS_SIZE));
        // SAFETY: retired regions.
        unsafe {
            assert!(lru.put(&w.stats, a, SS_SIZE, 0)); // within the budget: keeps its pages
            assert_eq!(w.stats.snapshot().count(Event::Madvise), 0);
            assert!(lru.put(&w.stats, b, SS_SIZE, 1)); // past it: the oldest is purged
        }
        assert_eq!(w.stats.snapshot().count(Event::Madvise), 1);
        assert_eq!(lru.resident(), SS_SIZE);
        // Reused soon: no system call, not zeroed.
        let got = lru.take(&w.stats, SS_SIZE, true, 50).unwrap();
        assert_eq!(
            (got.base, got.zeroed),
            (b, false),
            "among equals, pages still there first"
        );
        let got = lru.take(&w.stats, SS_SIZE, true, 50).unwrap();
        assert_eq!((got.base, got.zeroed), (a, true));
        // SAFETY: given back again.
        unsafe { assert!(lru.put(&w.stats, a, SS_SIZE, 60)) };
        assert_eq!(lru.next_due(), 161, "C6: due once the delay has passed");
        assert_eq!(lru.decay_now(&w.stats, 160), 0, "not yet");
        assert_eq!(lru.decay_now(&w.stats, 161), SS_SIZE);
        assert_eq!(
            w.stats.snapshot().count(Event::Madvise),
            2,
            "purged once the delay passed"
        );
        assert_eq!(lru.resident(), 0);
        assert_eq!(
            lru.next_due(),
            60 + config.decay_ns + 1,
            "C6: then its decay"
        );
        assert!(lru.take(&w.stats, SS_SIZE, true, 200).unwrap().zeroed);
        assert_eq!(lru.next_due(), u64::MAX, "nothing cached, nothing due");
    }

    #[test]
    fn the_delay_waits_for_the_cache_to_go_unused() {
        let w = World::new(16);
        let lru = w.lru(LruConfig {
            purge_delay_ns: 100,
            ..LruConfig::default()
        });
        let (a, b) = (w.apart(SS_SIZE), w.apart(2 * SS_SIZE));
        // SAFETY: retired regions.
        unsafe { assert!(lru.put(&w.stats, a, SS_SIZE, 0)) };
        // The program goes on using the cache (b out and back) within the delay each time.
        for t in [60, 120, 180] {
            // SAFETY: as above; b is taken back out below.
            unsafe { assert!(lru.put(&w.stats, b, 2 * SS_SIZE, t)) };
            let got = lru.take(&w.stats, 2 * SS_SIZE, true, t + 10).unwrap();
            assert_eq!((got.base, got.zeroed), (b, false));
        }
        assert_eq!(
            lru.resident(),
            SS_SIZE,
            "a kept its pages while the cache was in use"
        );
        assert_eq!(w.stats.snapshot().count(Event::Madvise), 0);
        assert_eq!(
            lru.next_due(),
            190 + 100 + 1,
            "C6: due once unused for the delay"
        );
        assert_eq!(lru.decay_now(&w.stats, 290), 0, "not yet");
        assert_eq!(
            lru.decay_now(&w.stats, 291),
            SS_SIZE,
            "unused for the delay: purged"
        );
        assert_eq!(lru.resident(), 0);
        assert!(lru.take(&w.stats, SS_SIZE, true, 300).unwrap().zeroed);
    }

    #[test]
    fn the_budget_follows_the_working_set() {
        let w = World::new(64);
        let lru = w.lru(LruConfig {
            hot_bytes: SS_SIZE,
            purge_delay_ns: u64::MAX / 4,
            decay_ns: 1000,
            ..LruConfig::default()
        });
        assert_eq!(lru.budget(), SS_SIZE, "the floor");
        // The program asks for 16 regions (none cached: it maps them itself).
        for _ in 0..16 {
            assert!(lru.take(&w.stats, SS_SIZE, true, 10).is_none());
        }
        assert_eq!(
            lru.budget(),
            12 * SS_SIZE,
            "three quarters of the working set"
        );
        // It gives 14 back: more than three quarters, all of which may stay resident.
        for t in 0..14 {
            // SAFETY: retired regions.
            unsafe { assert!(lru.put(&w.stats, w.apart(SS_SIZE), SS_SIZE, 20 + t)) };
        }
        assert_eq!(lru.budget(), 14 * SS_SIZE, "the peak less what it holds");
        assert_eq!(lru.resident(), 14 * SS_SIZE);
        assert_eq!(w.stats.snapshot().count(Event::Madvise), 0, "all kept");
        // A miss: it maps 4 regions more itself, so the oldest cached ones give their pages
        // back down to three quarters of the peak.
        assert!(lru.take(&w.stats, 4 * SS_SIZE, true, 40).is_none());
        assert_eq!(lru.resident(), 12 * SS_SIZE);
        assert_eq!(w.stats.snapshot().count(Event::Madvise), 2, "past it");
        // A block grown outside the cache counts too, and the cache did not serve it: then
        // held plus cached stays within the peak.
        lru.lend(&w.stats, 2 * SS_SIZE, 41);
        assert_eq!(lru.resident(), 8 * SS_SIZE);
        assert_eq!(w.stats.snapshot().count(Event::Madvise), 6);
        // Two quiet windows later the peak is what is still out (8 regions).
        lru.decay_now(&w.stats, 1050);
        lru.decay_now(&w.stats, 2060);
        assert_eq!(lru.budget(), 6 * SS_SIZE);
    }

    #[test]
    fn neighbours_are_merged() {
        let w = World::new(16);
        // Purge off, so that the next deadline is the merged region's decay (C5).
        let lru = w.lru(LruConfig {
            purge: false,
            ..LruConfig::default()
        });
        // Three mappings end to end; the middle one is freed last.
        let (a, b, c) = (w.region(SS_SIZE), w.region(2 * SS_SIZE), w.region(SS_SIZE));
        w.region(SS_SIZE); // not cached: c has no neighbour after it
                           // SAFETY: retired regions.
        unsafe {
            assert!(lru.put(&w.stats, a, SS_SIZE, 0));
            assert!(lru.put(&w.stats, c, SS_SIZE, 5));
            assert_eq!(lru.usage(), (2, 2 * SS_SIZE), "not neighbours yet");
            assert!(lru.put(&w.stats, b, 2 * SS_SIZE, 9));
        }
        assert_eq!(lru.usage(), (1, 4 * SS_SIZE), "C10: one region");
        assert_eq!(
            lru.next_due(),
            1_000_000_001,
            "C10: as old as its oldest part"
        );
        // A request for all of it takes it whole, without a new mapping.
        let got = lru.take(&w.stats, 4 * SS_SIZE, true, 10).unwrap();
        assert_eq!((got.base, got.len, got.zeroed), (a, 4 * SS_SIZE, false));
        // SAFETY: given back, then unmapped as one range over three mappings.
        unsafe { assert!(lru.put(&w.stats, a, 4 * SS_SIZE, 20)) };
        assert_eq!(lru.flush(&w.stats), 4 * SS_SIZE);
        assert_eq!(w.os.unmaps(), 1);
        assert!(!w.os.is_mapped(a.as_ptr() as usize, PAGE));
        assert!(!w.os.is_mapped(c.as_ptr() as usize, PAGE));
    }

    #[test]
    fn split_pieces_are_merged_again() {
        let w = World::new(16);
        let lru = w.lru(LruConfig::default());
        let r = w.apart(6 * SS_SIZE);
        // SAFETY: a retired region.
        unsafe { assert!(lru.put(&w.stats, r, 6 * SS_SIZE, 0)) };
        let head = lru.take(&w.stats, 2 * SS_SIZE, true, 1).unwrap();
        let next = lru.take(&w.stats, 3 * SS_SIZE, true, 2).unwrap();
        assert_eq!(lru.usage(), (1, SS_SIZE));
        // SAFETY: both pieces given back.
        unsafe {
            assert!(lru.put(&w.stats, next.base, next.len, 3));
            assert!(lru.put(&w.stats, head.base, head.len, 4));
        }
        assert_eq!(lru.usage(), (1, 6 * SS_SIZE), "C10: whole again");
        let all = lru.take(&w.stats, 6 * SS_SIZE, true, 5).unwrap();
        assert_eq!((all.base, all.len), (r, 6 * SS_SIZE));
        assert_eq!(lru.usage(), (0, 0));
    }

    #[test]
    fn only_neighbours_in_the_same_state_are_merged() {
        let w = World::new(16);
        let lru = w.lru(LruConfig {
            purge_delay_ns: 100,
            ..LruConfig::default()
        });
        let (a, b) = (w.region(SS_SIZE), w.apart(SS_SIZE));
        // SAFETY: retired regions.
        unsafe { assert!(lru.put(&w.stats, a, SS_SIZE, 0)) };
        lru.decay_now(&w.stats, 150);
        assert_eq!(lru.resident(), 0, "a purged");
        // SAFETY: as above.
        unsafe { assert!(lru.put(&w.stats, b, SS_SIZE, 150)) };
        assert_eq!(lru.usage(), (2, 2 * SS_SIZE), "dirty and zeroed stay apart");
        // Once b is purged too, it is put back merged.
        lru.decay_now(&w.stats, 300);
        assert_eq!(
            lru.usage(),
            (1, 2 * SS_SIZE),
            "C10: merged once both are purged"
        );
        let got = lru.take(&w.stats, 2 * SS_SIZE, true, 310).unwrap();
        assert_eq!((got.base, got.zeroed), (a, true));
    }

    #[test]
    fn purge_if_due_runs_what_is_due() {
        let w = World::new(4);
        let lru = w.lru(LruConfig {
            purge_delay_ns: 0,
            ..LruConfig::default()
        });
        assert!(!lru.purge_if_due(&w.stats), "nothing cached");
        let since = now_ns() - 10;
        // SAFETY: a retired region.
        unsafe { assert!(lru.put(&w.stats, w.region(SS_SIZE), SS_SIZE, since)) };
        assert_eq!(lru.next_due(), since + 1);
        assert!(lru.purge_if_due(&w.stats));
        assert_eq!(lru.resident(), 0);
        assert_eq!(w.stats.snapshot().count(Event::Madvise), 1);
        assert_eq!(lru.usage().0, 1, "purged, still cached");
    }

    #[test]
    fn a_larger_region_is_split_at_a_2mib_step() {
        let w = World::new(8);
        let lru = w.lru(LruConfig::default());
        let r = w.region(6 * SS_SIZE + PAGE);
        // SAFETY: a retired region.
        unsafe { lru.put(&w.stats, r, 6 * SS_SIZE + PAGE, 0) };
        let got = lru.take(&w.stats, 3 * SS_SIZE / 2, false, 0).unwrap();
        assert_eq!(
            (got.base, got.len),
            (r, 2 * SS_SIZE),
            "C8: up to the next step"
        );
        assert_eq!(
            lru.usage(),
            (1, 4 * SS_SIZE + PAGE),
            "the rest stays cached"
        );
        let rest = lru.take(&w.stats, SS_SIZE, true, 0).unwrap();
        assert_eq!(
            rest.base.as_ptr() as usize,
            r.as_ptr() as usize + 2 * SS_SIZE
        );
        assert_eq!(lru.usage(), (1, 3 * SS_SIZE + PAGE));
        // A small request takes only what it asked for when the region is much larger; the
        // rest stays cached from its first 2 MiB boundary on, the part before it is unmapped.
        let small = lru.take(&w.stats, 40 * PAGE, false, 0).unwrap();
        assert_eq!(small.len, 40 * PAGE);
        let r = r.as_ptr() as usize;
        assert_eq!(lru.usage(), (1, 2 * SS_SIZE + PAGE), "C8: the aligned rest");
        assert!(
            !w.os.is_mapped(r + 3 * SS_SIZE + 40 * PAGE, PAGE),
            "the gap went"
        );
        let last = lru.take(&w.stats, 2 * SS_SIZE, false, 0).unwrap();
        assert_eq!(
            (last.base.as_ptr() as usize, last.len),
            (r + 4 * SS_SIZE, 2 * SS_SIZE + PAGE)
        );
        let s = w.stats.snapshot();
        assert_eq!(
            s.count(Event::SsCached),
            s.count(Event::SsReused) + s.count(Event::SsReleased),
            "C9: every region that entered left once"
        );
        assert!(w.os.is_mapped(r, 3 * SS_SIZE + 40 * PAGE));
    }

    #[test]
    fn flush_gives_everything_back() {
        let w = World::new(8);
        let lru = w.lru(LruConfig::default());
        // SAFETY: retired regions.
        unsafe {
            lru.put(&w.stats, w.apart(SS_SIZE), SS_SIZE, 0);
            lru.put(&w.stats, w.apart(2 * SS_SIZE), 2 * SS_SIZE, 0);
        }
        assert_eq!(lru.flush(&w.stats), 3 * SS_SIZE);
        assert_eq!(lru.usage(), (0, 0));
        assert_eq!(lru.flush(&w.stats), 0);
        assert_eq!(w.os.unmaps(), 2);
    }

    #[test]
    fn the_fork_lock_holds_until_forced() {
        let w = World::new(4);
        let lru = w.lru(LruConfig::default());
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            // Fork's prepare: the lock stays taken until force_unlock.
            lru.lock_for_fork();
            let t = s.spawn(|| {
                let _ = lru.usage();
                done.load(std::sync::atomic::Ordering::SeqCst)
            });
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            // SAFETY: taken by lock_for_fork above; released once.
            unsafe { lru.force_unlock() };
            assert!(t.join().unwrap(), "usage waited for the lock");
        });
        assert_eq!(lru.usage(), (0, 0));
    }

    #[test]
    fn takes_and_trims_keep_to_the_os_page_size() {
        // A 64 KiB-page OS panics on any range that is not whole pages.
        let w = World {
            os: Arc::new(HeapOs::with_page_size(16, 64 << 10)),
            stats: GlobalStats::new(),
        };
        let lru = w.lru(LruConfig::default());
        let big = w.region(4 * SS_SIZE);
        // SAFETY: a retired region of ours.
        assert!(unsafe { lru.put(&w.stats, big, 4 * SS_SIZE, 0) });
        // An odd size is rounded to whole 64 KiB pages, and the rest is cut on a page.
        let got = lru.take(&w.stats, 100_000, true, 0).expect("fits");
        assert_eq!(got.len, 128 << 10);
        // SAFETY: ours now.
        unsafe { w.os.unmap(got.base, got.len, &w.stats) };
        lru.flush(&w.stats);
    }

    #[test]
    fn decay_unmaps_old_regions() {
        let w = World::new(8);
        let lru = w.lru(LruConfig {
            decay_ns: 100,
            ..LruConfig::default()
        });
        let (a, b) = (w.apart(SS_SIZE), w.apart(SS_SIZE));
        // SAFETY: retired regions.
        unsafe {
            lru.put(&w.stats, a, SS_SIZE, 0);
            lru.put(&w.stats, b, SS_SIZE, 80);
        }
        lru.decay_now(&w.stats, 150);
        assert_eq!(lru.usage(), (1, SS_SIZE), "C5: the older one went");
        assert!(!w.os.is_mapped(a.as_ptr() as usize, SS_SIZE));
        assert!(w.os.is_mapped(b.as_ptr() as usize, SS_SIZE));
        lru.flush(&w.stats);
        assert_eq!(lru.usage(), (0, 0));
        assert_eq!(w.os.unmaps(), 2);
        assert_eq!(w.stats.snapshot().count(Event::SsReleased), 2);
    }

    #[test]
    fn bounded_by_bytes_and_count() {
        let w = World::new(80);
        let lru = w.lru(LruConfig {
            max_bytes: 3 * SS_SIZE,
            ..LruConfig::default()
        });
        let regions: Vec<_> = (0..4).map(|_| w.apart(SS_SIZE)).collect();
        for (t, &r) in regions.iter().enumerate() {
            // SAFETY: retired regions.
            unsafe { assert!(lru.put(&w.stats, r, SS_SIZE, t as u64)) };
        }
        assert_eq!(lru.usage(), (3, 3 * SS_SIZE), "C3: the oldest was evicted");
        assert!(!w.os.is_mapped(regions[0].as_ptr() as usize, SS_SIZE));
        let big = w.region(4 * SS_SIZE);
        // SAFETY: a retired region, too big to cache: unmapped instead.
        unsafe { assert!(!lru.put(&w.stats, big, 4 * SS_SIZE, 5)) };
        assert!(!w.os.is_mapped(big.as_ptr() as usize, 4 * SS_SIZE));
        let off = w.lru(LruConfig {
            max_bytes: 0,
            ..LruConfig::default()
        });
        // SAFETY: as above.
        unsafe { assert!(!off.put(&w.stats, regions[1], SS_SIZE, 0)) };
        let _ = MAX_ENTRIES;
    }

    #[test]
    fn take_trims_a_larger_region() {
        let w = World::new(8);
        let lru = w.lru(LruConfig::default());
        let r = w.region(3 * SS_SIZE);
        // SAFETY: a retired region.
        unsafe { lru.put(&w.stats, r, 3 * SS_SIZE, 0) };
        // Exact: no region fits, and none is joined (C11).
        assert!(lru.take(&w.stats, 4 * SS_SIZE, true, 0).is_none());
        // Within twice the length asked: handed over whole.
        let got = lru.take(&w.stats, 2 * SS_SIZE, false, 0).unwrap();
        assert_eq!((got.base, got.len), (r, 3 * SS_SIZE));
        // SAFETY: given back.
        unsafe { lru.put(&w.stats, r, 3 * SS_SIZE, 0) };
        let got = lru.take(&w.stats, SS_SIZE + PAGE, true, 0).unwrap();
        assert_eq!((got.base, got.len), (r, SS_SIZE + PAGE));
        assert!(w.os.is_mapped(r.as_ptr() as usize, SS_SIZE + PAGE));
        let tail = r.as_ptr() as usize + SS_SIZE + PAGE;
        assert!(!w.os.is_mapped(tail, PAGE), "tail given back");
    }

    #[test]
    fn regions_apart_are_joined_for_a_larger_request() {
        let w = World::new(32);
        let lru = w.lru(LruConfig::default());
        let (a, b, c) = (
            w.apart(2 * SS_SIZE),
            w.apart(3 * SS_SIZE),
            w.apart(2 * SS_SIZE),
        );
        let fill = |r: NonNull<u8>, len: usize, v: u8| {
            // SAFETY: a region of ours, about to be retired.
            unsafe { r.as_ptr().write_bytes(v, len) };
        };
        fill(a, 2 * SS_SIZE, 1);
        fill(b, 3 * SS_SIZE, 2);
        fill(c, 2 * SS_SIZE, 3);
        // SAFETY: retired regions, apart from each other.
        unsafe {
            lru.put(&w.stats, a, 2 * SS_SIZE, 0);
            lru.put(&w.stats, b, 3 * SS_SIZE, 0);
            lru.put(&w.stats, c, 2 * SS_SIZE, 0);
        }
        // No one region fits 5 steps less a page: the largest (b) and then one of the others
        // are moved onto a new region of 5 steps.
        let got = lru.take(&w.stats, 5 * SS_SIZE - PAGE, false, 0).unwrap();
        assert_eq!(got.len, 5 * SS_SIZE, "C11: the request in whole steps");
        assert!(!got.zeroed, "pages moved");
        let at = |off: usize| {
            // SAFETY: inside the region handed over.
            unsafe { *got.base.as_ptr().add(off) }
        };
        assert_eq!((at(0), at(3 * SS_SIZE - 1)), (2, 2), "b's pages first");
        let second = at(3 * SS_SIZE);
        assert!(second == 1 || second == 3);
        assert_eq!(at(5 * SS_SIZE - 1), second, "then 2 steps of a or c");
        assert!(!w.os.is_mapped(b.as_ptr() as usize, PAGE), "moved away");
        assert_eq!(lru.usage(), (1, 2 * SS_SIZE), "the other one stays");
        let s = w.stats.snapshot();
        assert_eq!(s.count(Event::SsReused), 2);
        assert_eq!(s.count(Event::Mremap), 5, "moved a step at a time");
        assert!(w.os.is_mapped(got.base.as_ptr() as usize, got.len));

        // The last piece is cut, its rest stays cached from a step on; a region purged since
        // is not joined, and regions that do not cover a request are not taken out.
        // SAFETY: handed over above; given back whole.
        unsafe { lru.put(&w.stats, got.base, got.len, 1) };
        assert_eq!(lru.usage(), (2, 7 * SS_SIZE));
        let big = lru.take(&w.stats, 6 * SS_SIZE, false, 2).unwrap();
        assert_eq!(big.len, 6 * SS_SIZE);
        assert_eq!(
            lru.usage(),
            (1, SS_SIZE),
            "one step of the last piece is left"
        );
        let s = w.stats.snapshot();
        assert_eq!(
            s.count(Event::SsCached),
            s.count(Event::SsReused) + s.count(Event::SsReleased) + 1,
            "C9: every region that entered left once, but the one cached"
        );
        let purged = lru.decay_now(&w.stats, 2 + LruConfig::default().purge_delay_ns + 1);
        assert_eq!(purged, SS_SIZE);
        assert_eq!(lru.resident(), 0);
        // SAFETY: handed over above.
        unsafe { lru.put(&w.stats, big.base, big.len, 3) };
        let w2 = World::new(32);
        let region = w2.apart(4 * SS_SIZE);
        let other = w2.apart(4 * SS_SIZE);
        let lru2 = w2.lru(LruConfig::default());
        // SAFETY: retired regions, apart.
        unsafe {
            lru2.put(&w2.stats, region, 4 * SS_SIZE, 0);
            lru2.put(&w2.stats, other, 4 * SS_SIZE, 0);
        }
        assert!(lru2.take(&w2.stats, 9 * SS_SIZE, false, 1).is_none());
        assert_eq!(
            lru2.usage(),
            (2, 8 * SS_SIZE),
            "not covered: nothing taken out"
        );
        let again = lru.take(&w.stats, 7 * SS_SIZE, false, 4);
        assert!(again.is_none(), "6 steps resident, 1 purged: not covered");
        assert_eq!(lru.usage(), (2, 7 * SS_SIZE), "both still cached");
        assert_eq!(lru.resident(), 6 * SS_SIZE);
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
            let lru = Arc::new(w.lru(LruConfig {
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
                        lru.put(&w.stats, NonNull::new(base as *mut u8).unwrap(), SS_SIZE, 0)
                    };
                })
            };
            let takers: Vec<_> = [1u64, 10]
                .into_iter()
                .map(|now| {
                    let (w, lru) = (w.clone(), lru.clone());
                    loom::thread::spawn(move || lru.take(&w.stats, SS_SIZE, true, now).is_some())
                })
                .collect();
            putter.join().unwrap();
            let taken = takers
                .into_iter()
                .map(|t| t.join().unwrap())
                .filter(|&x| x)
                .count();
            lru.flush(&w.stats);
            let unmapped = w.os.unmaps();
            assert_eq!(taken + unmapped, 1, "taken {taken}, unmapped {unmapped}");
            assert_eq!(w.os.is_mapped(base, SS_SIZE), taken == 1);
        });
    }

    /// Model: joining and the hand-over (C2, C11). Regions `a` and `b` lie apart in the cache;
    /// one thread asks for two steps (no one region fits: both are joined) while another asks
    /// for one step. No region goes to both: what the single taker got is still mapped and
    /// holds its old bytes, and the joined region holds the other's, or fresh pages.
    #[test]
    fn join_hand_over() {
        loom::model(|| {
            let w = Arc::new(World::new(8));
            let lru = Arc::new(w.lru(LruConfig::default()));
            let a = w.region(SS_SIZE);
            w.region(SS_SIZE);
            let b = w.region(SS_SIZE);
            for (r, v) in [(a, 1u8), (b, 2)] {
                // SAFETY: regions of ours, then retired into the cache once each.
                unsafe {
                    r.as_ptr().write(v);
                    lru.put(&w.stats, r, SS_SIZE, 0);
                }
            }
            let joiner = {
                let (w, lru) = (w.clone(), lru.clone());
                loom::thread::spawn(move || {
                    lru.take(&w.stats, 2 * SS_SIZE, false, 1)
                        .map(|r| (r.base.as_ptr() as usize, r.len))
                })
            };
            let single = {
                let (w, lru) = (w.clone(), lru.clone());
                loom::thread::spawn(move || {
                    lru.take(&w.stats, SS_SIZE, true, 1)
                        .map(|r| r.base.as_ptr() as usize)
                })
            };
            let joined = joiner.join().unwrap();
            let single = single.join().unwrap();
            // SAFETY: reads of the first byte of each step handed over, checked mapped first.
            let byte = |p: usize| {
                assert!(w.os.is_mapped(p, SS_SIZE), "handed out but not mapped");
                unsafe { *(p as *const u8) }
            };
            let mut seen = Vec::new();
            if let Some(p) = single {
                seen.push(byte(p));
            }
            if let Some((p, n)) = joined {
                assert_eq!(n, 2 * SS_SIZE);
                seen.extend([byte(p), byte(p + SS_SIZE)].into_iter().filter(|&v| v != 0));
            }
            let mut unique = seen.clone();
            unique.sort_unstable();
            unique.dedup();
            assert_eq!(
                unique.len(),
                seen.len(),
                "a region handed out twice: {seen:?}"
            );
        });
    }

    /// Model: merging and the hand-over (C2, C10). Region `a` is cached; one thread caches its
    /// neighbour `b` (merged with `a`) while one thread asks for both at once and another for
    /// one. Every byte leaves the cache once: the takers get disjoint ranges, and the flush
    /// unmaps exactly what nobody took.
    #[test]
    fn merge_hand_over() {
        loom::model(|| {
            let w = Arc::new(World::new(2));
            let lru = Arc::new(w.lru(LruConfig::default()));
            let (a, b) = (w.region(SS_SIZE), w.region(SS_SIZE));
            let base = a.as_ptr() as usize;
            assert_eq!(b.as_ptr() as usize, base + SS_SIZE);
            // SAFETY: a retired region handed to the cache once.
            unsafe { lru.put(&w.stats, a, SS_SIZE, 0) };
            let putter = {
                let (w, lru) = (w.clone(), lru.clone());
                loom::thread::spawn(move || {
                    let b = NonNull::new((base + SS_SIZE) as *mut u8).unwrap();
                    // SAFETY: as above.
                    unsafe { lru.put(&w.stats, b, SS_SIZE, 1) };
                })
            };
            let takers: Vec<_> = [2 * SS_SIZE, SS_SIZE]
                .into_iter()
                .map(|len| {
                    let (w, lru) = (w.clone(), lru.clone());
                    loom::thread::spawn(move || {
                        lru.take(&w.stats, len, true, 2)
                            .map(|r| (r.base.as_ptr() as usize, r.len))
                    })
                })
                .collect();
            putter.join().unwrap();
            let taken: Vec<(usize, usize)> = takers
                .into_iter()
                .filter_map(|t| t.join().unwrap())
                .collect();
            if let [(p, n), (q, m)] = taken[..] {
                assert!(p + n <= q || q + m <= p, "handed out twice: {taken:?}");
            }
            lru.flush(&w.stats);
            for chunk in [base, base + SS_SIZE] {
                let held = taken.iter().any(|&(p, n)| p <= chunk && chunk < p + n);
                assert_eq!(w.os.is_mapped(chunk, SS_SIZE), held, "{taken:?}");
            }
        });
    }
}
