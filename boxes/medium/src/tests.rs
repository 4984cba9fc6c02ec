//! The span map alone: allocation, coalescing, bounds, double frees, resizing and purging.
use super::*;

fn map() -> Box<SpanMap> {
    Box::new(SpanMap::new(true))
}

#[test]
fn blocks_are_disjoint_runs_after_the_header() {
    let mut m = map();
    let (a, dirty) = m.alloc(17).unwrap();
    assert_eq!(
        (a, dirty),
        (HEADER_GRANULES, false),
        "fresh granules are clean"
    );
    let (b, _) = m.alloc(1).unwrap();
    assert_eq!(b, a + 17);
    assert_eq!(m.block(a), Ok(17));
    assert_eq!(m.block(b), Ok(1));
    assert_eq!(m.live(), 2);
    assert_eq!(m.free_granules(), GRANULES - HEADER_GRANULES - 18);
    for g in a + 1..a + 17 {
        assert_eq!(
            m.block(g),
            Err(Bad::NotABlock),
            "inside a block: granule {g}"
        );
    }
    assert_eq!(m.block(0), Err(Bad::NotABlock), "the header is no block");
    assert_eq!(m.block(GRANULES), Err(Bad::NotABlock), "past the region");
}

#[test]
fn sizes_are_bounded_and_two_of_the_largest_fit() {
    let mut m = map();
    assert_eq!(m.alloc(0), None);
    assert_eq!(m.alloc(MAX_GRANULES + 1), None);
    let (a, _) = m.alloc(MAX_GRANULES).unwrap();
    let (b, _) = m.alloc(MAX_GRANULES).unwrap();
    assert_eq!(b, a + MAX_GRANULES);
    assert_eq!(
        m.free_granules(),
        GRANULES - HEADER_GRANULES - 2 * MAX_GRANULES
    );
    assert_eq!(m.alloc(2), None, "one granule left");
    assert!(m.alloc(1).is_some());
    assert_eq!(m.alloc(1), None, "full");
}

#[test]
fn double_free_and_non_start_are_told_apart() {
    let mut m = map();
    let (a, _) = m.alloc(20).unwrap();
    assert_eq!(m.free(a + 3), Err(Bad::NotABlock));
    assert_eq!(m.free(a), Ok(20));
    assert_eq!(m.free(a), Err(Bad::DoubleFree));
    assert_eq!(m.block(a), Err(Bad::DoubleFree));
    assert_eq!(m.free(a + 1), Err(Bad::NotABlock), "never a block start");
    assert_eq!(m.live(), 0);
    // Handed out again (a block over the old start): a live start, then no freed mark.
    let (b, dirty) = m.alloc(40).unwrap();
    assert_eq!(
        (b, dirty),
        (a, true),
        "the freed granules come back, with their data"
    );
    assert_eq!(m.free(b), Ok(40));
    let (c, _) = m.alloc(10).unwrap();
    assert_eq!(c, a);
    assert_eq!(m.free(a + 5), Err(Bad::NotABlock));
}

#[test]
fn freed_neighbours_coalesce_into_one_run() {
    let mut m = map();
    let x: Vec<usize> = (0..5).map(|_| m.alloc(30).unwrap().0).collect();
    let free_before = m.free_granules();
    m.free(x[1]).unwrap();
    m.free(x[3]).unwrap();
    // No hole of 60 granules yet: best fit takes the tail of the region.
    let (y, _) = m.alloc(60).unwrap();
    assert!(y > x[4], "no 60-granule hole between blocks");
    m.free(y).unwrap();
    m.free(x[2]).unwrap();
    // x[1..=3] is one free run of 90 granules now.
    let (z, _) = m.alloc(90).unwrap();
    assert_eq!(z, x[1]);
    assert_eq!(m.free_granules(), free_before);
}

#[test]
fn best_fit_prefers_the_smallest_hole() {
    let mut m = map();
    let x: Vec<usize> = (0..6).map(|i| m.alloc(10 + i).unwrap().0).collect();
    m.free(x[1]).unwrap(); // 11 granules
    m.free(x[3]).unwrap(); // 13 granules
    let (g, _) = m.alloc(12).unwrap();
    assert_eq!(g, x[3], "the 13-granule hole, not the 11 nor the tail");
    let (g, _) = m.alloc(11).unwrap();
    assert_eq!(g, x[1], "an exact fit");
}

#[test]
fn resize_in_place_grows_over_free_granules_only() {
    let mut m = map();
    let (a, _) = m.alloc(10).unwrap();
    let (b, _) = m.alloc(10).unwrap();
    assert!(!m.resize(a, 11), "b follows a");
    assert!(m.resize(b, 100), "free granules follow b");
    assert_eq!(m.block(b), Ok(100));
    assert!(m.resize(b, 5), "shrinks");
    assert_eq!(m.block(b), Ok(5));
    let (c, _) = m.alloc(95).unwrap();
    assert_eq!(c, b + 5, "the tail freed by the shrink is reused");
    assert!(!m.resize(b, MAX_GRANULES + 1));
    assert!(!m.resize(b + 1, 6), "not a block start");
    m.free(a).unwrap();
    assert!(!m.resize(a, 10), "a freed block is not resized");
    assert_eq!(m.live(), 2);
}

#[test]
fn a_block_cannot_grow_past_the_region() {
    let mut m = map();
    let (_, _) = m.alloc(MAX_GRANULES).unwrap();
    let (b, _) = m.alloc(MAX_GRANULES).unwrap();
    assert_eq!(b + MAX_GRANULES, GRANULES - 1);
    assert!(m.resize(b, MAX_GRANULES), "same size");
    assert!(!m.resize(b, MAX_GRANULES + 2));
}

#[test]
fn purging_takes_two_ticks_and_reserves_its_runs() {
    let mut m = map();
    let (a, _) = m.alloc(8).unwrap();
    let (b, _) = m.alloc(8).unwrap();
    m.free(a).unwrap();
    let mut out = [(0, 0); 4];
    assert_eq!(m.reserve_purge(false, &mut out), 0, "first tick: only aged");
    assert!(m.waits());
    assert_eq!(m.reserve_purge(false, &mut out), 1, "second tick: purged");
    assert_eq!(out[0], (a, 8));
    // Reserved: not handed out, not releasable, though no block is live there.
    assert_eq!(
        m.alloc(8).map(|(g, _)| g),
        Some(b + 8),
        "not over the reserved run"
    );
    m.free(b).unwrap();
    m.free(b + 8).unwrap();
    assert_eq!(m.live(), 0);
    assert!(!m.releasable(), "a purge in flight");
    m.end_purge(a, 8, true);
    assert!(m.releasable());
    // Purged granules read as zero: a block over them only is clean.
    let (c, dirty) = m.alloc(8).unwrap();
    assert_eq!((c, dirty), (a, false));
}

#[test]
fn a_granule_reused_between_ticks_is_not_purged() {
    let mut m = map();
    let (a, _) = m.alloc(8).unwrap();
    m.free(a).unwrap();
    let mut out = [(0, 0); 4];
    assert_eq!(m.reserve_purge(false, &mut out), 0);
    let (b, _) = m.alloc(8).unwrap();
    assert_eq!(b, a);
    assert_eq!(m.reserve_purge(false, &mut out), 0, "in use: not purged");
    m.free(b).unwrap();
    assert_eq!(
        m.reserve_purge(false, &mut out),
        0,
        "freed again: aged anew"
    );
    assert_eq!(m.reserve_purge(true, &mut out), 1, "all at once");
    m.end_purge(out[0].0, out[0].1, false);
    assert!(m.waits(), "a failed purge leaves the run dirty");
}

#[test]
fn purges_stop_at_the_room_given() {
    let mut m = map();
    let x: Vec<usize> = (0..10).map(|_| m.alloc(2).unwrap().0).collect();
    for &g in x.iter().step_by(2) {
        m.free(g).unwrap();
    }
    let mut out = [(0, 0); 3];
    assert_eq!(m.reserve_purge(true, &mut out), 3);
    assert_eq!(out.map(|(g, _)| g), [x[0], x[2], x[4]]);
    for (g, n) in out {
        m.end_purge(g, n, true);
    }
    let mut out = [(0, 0); 8];
    assert_eq!(m.reserve_purge(true, &mut out), 2);
    assert_eq!(&out[..2], &[(x[6], 2), (x[8], 2)]);
}

#[test]
fn range_operations_match_the_bit_by_bit_definition() {
    // Every range that starts and ends within the first three words and at a few places
    // further on, against a bitmap written and read one bit at a time.
    let starts = (0..192).chain([255, 256, 300, 447, 448, 500]);
    for g in starts {
        for n in [0, 1, 2, 5, 31, 63, 64, 65, 127, 128, 129, 200] {
            if g + n > GRANULES {
                continue;
            }
            let mut fast: Bits = [0x5555_5555_5555_5555; WORDS];
            let mut slow = fast;
            for on in [true, false] {
                set_range(&mut fast, g, n, on);
                for i in g..g + n {
                    if on {
                        slow[i / 64] |= 1 << (i % 64);
                    } else {
                        slow[i / 64] &= !(1 << (i % 64));
                    }
                }
                assert_eq!(fast, slow, "set_range({g}, {n}, {on})");
            }
            let probe: Bits = core::array::from_fn(|w| if w % 2 == 0 { 1 << 63 } else { 0 });
            assert_eq!(
                any_in(&probe, g, n),
                (g..g + n).any(|i| bit(&probe, i)),
                "any_in({g}, {n})"
            );
        }
    }
}

/// The longest free run, by brute force.
fn longest_free_run(m: &SpanMap) -> usize {
    let (mut best, mut run) = (0, 0);
    for g in 0..GRANULES {
        run = if bit(&m.used, g) { 0 } else { run + 1 };
        best = best.max(run);
    }
    best
}

#[test]
fn the_longest_run_bound_never_rules_out_a_fitting_run() {
    // Random allocations, frees, shrinks and purges: an allocation fails exactly when no free
    // run is long enough, and the bound stays at or above the longest run (M6).
    let mut m = map();
    let mut live: Vec<(usize, usize)> = Vec::new();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = |k: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % k as u64) as usize
    };
    let (mut fits, mut misses) = (0, 0);
    for step in 0..20_000 {
        match rand(8) {
            0..=3 => {
                let span = if rand(4) == 0 { MAX_GRANULES } else { 40 };
                let n = 1 + rand(span);
                let could = longest_free_run(&m) >= n;
                let got = m.alloc(n);
                assert_eq!(
                    got.is_some(),
                    could,
                    "step {step}: alloc({n}) against the longest free run"
                );
                match got {
                    Some((g, _)) => {
                        live.push((g, n));
                        fits += 1;
                    }
                    None => misses += 1,
                }
            }
            4..=6 if !live.is_empty() => {
                let (g, n) = live.swap_remove(rand(live.len()));
                if rand(3) == 0 && n > 1 {
                    let k = 1 + rand(n - 1);
                    assert!(m.resize(g, k));
                    live.push((g, k));
                } else {
                    assert_eq!(m.free(g), Ok(n));
                }
            }
            _ => {
                let mut out = [(0, 0); 8];
                let k = m.reserve_purge(rand(2) == 0, &mut out);
                for &(g, n) in &out[..k] {
                    m.end_purge(g, n, true);
                }
            }
        }
        assert!(
            m.max_run() >= longest_free_run(&m),
            "step {step}: bound below the longest run"
        );
    }
    assert!(
        fits > 1000 && misses > 100,
        "both outcomes exercised: {fits} fits, {misses} misses"
    );
}

#[test]
fn aligned_blocks_start_at_multiples_of_their_step() {
    let mut m = map();
    // Granule 0 is the header: a block aligned to 16 granules starts at 16 at the earliest.
    let (a, _) = m.alloc_aligned(3, 16).unwrap();
    assert_eq!(a, 16);
    // The granules before it stay free for unaligned blocks.
    let (b, _) = m.alloc(15).unwrap();
    assert_eq!(b, 1);
    let (c, _) = m.alloc_aligned(1, 8).unwrap();
    assert_eq!(c % 8, 0);
    assert!(c >= 24, "not inside {a}'s block");
    // The largest block fits a fresh region at the largest alignment the tier serves.
    let mut fresh = map();
    let step = MEDIUM_ALIGN / GRANULE;
    let (d, _) = fresh.alloc_aligned(MAX_GRANULES, step).unwrap();
    assert_eq!(d % step, 0);
    for (g, n) in [(a, 3), (b, 15), (c, 1)] {
        assert_eq!(m.free(g), Ok(n));
    }
    assert_eq!(m.free_granules(), GRANULES - HEADER_GRANULES);
}

/// A context over an arena of `chunks` 2 MiB chunks.
fn context(chunks: usize) -> &'static Ctx {
    use hakmem_superslab::HeapOs;
    let os: &'static HeapOs = Box::leak(Box::new(HeapOs::new(chunks)));
    let registry = os.registry();
    Box::leak(Box::new(Ctx::new(
        os,
        registry,
        hakmem_lru::LruConfig::default(),
        false,
        |c| panic!("corruption: {c:?}"),
    )))
}

// The only test that uses the tier's statics (the others test a span map of their own).
#[test]
fn blocks_come_and_go_and_a_second_context_releases_nothing() {
    let (a, b) = (context(8), context(8));
    let size = 100_000;
    assert!(serves(a, size, 16));
    let p = alloc(a, None, size, 16, true);
    assert!(!p.is_null());
    let base = p as usize & !(SS_SIZE - 1);
    assert_eq!(a.registry.lookup(p as usize), Some((base, Kind::Medium)));
    let usable_bytes = size.div_ceil(GRANULE) * GRANULE;
    // SAFETY: found in a's registry just above; `p` is held.
    assert_eq!(unsafe { usable(a, base, p) }, Some(usable_bytes));
    // SAFETY: as above; one granule in, not a block start.
    assert_eq!(unsafe { usable(a, base, p.wrapping_add(GRANULE)) }, None);
    // The tier's regions are a's: b's collect gives none of them to b's lru, and b gets no
    // region of its own (its blocks come from a's regions while they have room).
    assert_eq!(collect(b), 0);
    // SAFETY: as above.
    assert_eq!(unsafe { usable(a, base, p) }, Some(usable_bytes));
    let r = alloc(a, None, MEDIUM_MAX, 16, false);
    assert_eq!(
        r as usize & !(SS_SIZE - 1),
        base,
        "two blocks fit one region"
    );
    let q = alloc(b, None, MEDIUM_MAX, 16, false);
    assert!(
        q.is_null(),
        "no room left for the largest block, and no region made for b"
    );
    // SAFETY: as above; `p` and `r` are given up.
    unsafe {
        assert_eq!(free(a, None, base, r), Ok(()));
        assert_eq!(free(a, None, base, p), Ok(()));
    }
    // SAFETY: the region is still registered (one empty region is kept, M4); freed already.
    assert_eq!(unsafe { free(a, None, base, p) }, Err(Bad::DoubleFree));
    // a's collect releases the empty region: unregistered, and its pages back to the OS.
    assert!(collect(a) >= SS_SIZE);
    assert_eq!(a.registry.lookup(p as usize), None);
}

/// A region header of its own, for the search hints' test (its data granules are never
/// touched: the span map only counts them).
fn test_region() -> *mut Region {
    Box::into_raw(Box::new(Region {
        magic: MAGIC,
        next: null_mut(),
        ticked: 0,
        huge: false,
        seq: 0,
        map: SpanMap::new(true),
    }))
}

/// The push order of `r`, a live region of a test's list.
fn seq_of(r: *mut Region) -> u64 {
    // SAFETY: the test's regions live until they are unlinked and dropped.
    unsafe { (*r).seq }
}

/// The region after `r`, a live region of a test's list.
fn next_of(r: *mut Region) -> *mut Region {
    // SAFETY: as for `seq_of`.
    unsafe { (*r).next }
}

/// The search without hints: the first region of the list, from its head, that fits.
fn first_fit(s: &mut State, n: usize, step: usize) -> Option<(*mut Region, usize, bool)> {
    let mut r = s.head;
    while !r.is_null() {
        // SAFETY: a live region of the test's list.
        let map = unsafe { &mut (*r).map };
        if map.free_granules() >= n {
            if let Some((g, dirty)) = map.alloc_aligned(n, step) {
                return Some((r, g, dirty));
            }
        }
        // SAFETY: as above.
        r = next_of(r);
    }
    None
}

fn new_state() -> State {
    State {
        head: null_mut(),
        empty: 0,
        tick: 0,
        seq: 0,
        hint: [null_mut(); BUCKETS],
    }
}

/// M8: a search from the hints picks the region and granule a search from the head picks, over
/// random allocations (sizes and alignments), frees, shrinks, purges and unlinks of empty
/// regions; and every region before a bucket's hint holds no request of the bucket.
#[test]
fn the_search_hints_skip_no_region_that_fits() {
    for seed in 1..=40u64 {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut rnd = move |k: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % k as u64) as usize
        };
        let (mut hinted, mut plain) = (new_state(), new_state());
        // Live blocks: (push order of the region, granule).
        let mut live: Vec<(u64, usize)> = Vec::new();
        let region_of = |s: &State, seq: u64| {
            let mut r = s.head;
            while seq_of(r) != seq {
                r = next_of(r);
            }
            r
        };
        for _ in 0..3000 {
            match rnd(10) {
                0..=4 => {
                    let most = if rnd(4) == 0 { MAX_GRANULES } else { 64 };
                    let n = 1 + rnd(most);
                    let step = [1, 2, 4, 16][rnd(4)];
                    let (a, b) = (hinted.alloc(n, step), first_fit(&mut plain, n, step));
                    let seqs = |g: Option<(*mut Region, usize, bool)>| {
                        g.map(|(r, g, d)| (seq_of(r), g, d))
                    };
                    assert_eq!(seqs(a), seqs(b), "seed {seed}: {n} granules at {step}");
                    match a {
                        Some((r, g, _)) => live.push((seq_of(r), g)),
                        None => {
                            for s in [&mut hinted, &mut plain] {
                                s.push(test_region());
                            }
                            let (r, g, _) = hinted.alloc(n, step).expect("a fresh region fits");
                            let (q, h, _) = first_fit(&mut plain, n, step).unwrap();
                            // SAFETY: as above.
                            assert_eq!((seq_of(r), seq_of(q)), (hinted.seq - 1, plain.seq - 1));
                            assert_eq!(g, h);
                            live.push((hinted.seq - 1, g));
                        }
                    }
                }
                5..=7 if !live.is_empty() => {
                    let (seq, g) = live.swap_remove(rnd(live.len()));
                    for (s, hint) in [(&mut hinted, true), (&mut plain, false)] {
                        let r = region_of(s, seq);
                        // SAFETY: a live region of the list.
                        unsafe { (*r).map.free(g) }.unwrap();
                        // SAFETY: as above.
                        if unsafe { (*r).map.live() } == 0 {
                            s.empty += 1;
                        }
                        if hint {
                            s.note_room(r);
                        }
                    }
                }
                8 if !live.is_empty() => {
                    let (seq, g) = live[rnd(live.len())];
                    for (s, hint) in [(&mut hinted, true), (&mut plain, false)] {
                        let r = region_of(s, seq);
                        // SAFETY: as above.
                        let map = unsafe { &mut (*r).map };
                        let n = map.block(g).unwrap();
                        assert!(map.resize(g, n.div_ceil(2)));
                        if hint {
                            s.note_room(r);
                        }
                    }
                }
                _ => {
                    // A purge of every region's free dirty runs, and the unlink of an empty one.
                    for (s, hint) in [(&mut hinted, true), (&mut plain, false)] {
                        let mut r = s.head;
                        let mut empty = null_mut();
                        while !r.is_null() {
                            // SAFETY: as above.
                            let map = unsafe { &mut (*r).map };
                            let mut runs = [(0, 0); 8];
                            let k = map.reserve_purge(true, &mut runs);
                            for &(g, n) in &runs[..k] {
                                map.end_purge(g, n, true);
                            }
                            if hint {
                                s.note_room(r);
                            }
                            if map.live() == 0 && map.releasable() {
                                empty = r;
                            }
                            // SAFETY: as above.
                            r = next_of(r);
                        }
                        if !empty.is_null() {
                            s.empty -= 1;
                            s.unlink(empty);
                            // SAFETY: unlinked: not reached again.
                            drop(unsafe { Box::from_raw(empty) });
                        }
                    }
                }
            }
            // Every region before a bucket's hint holds no request of the bucket.
            for (b, &h) in hinted.hint.iter().enumerate() {
                let mut r = hinted.head;
                while r != h {
                    // SAFETY: a live region of the test's list (a hint is null or in it).
                    let map = unsafe { &(*r).map };
                    assert!(!map.may_hold(1 << b), "seed {seed}: bucket {b}");
                    r = next_of(r);
                }
            }
        }
        for s in [hinted, plain] {
            let mut r = s.head;
            while !r.is_null() {
                let next = next_of(r);
                // SAFETY: the test's region, made by `test_region`, dropped once.
                drop(unsafe { Box::from_raw(r) });
                r = next;
            }
        }
    }
}
