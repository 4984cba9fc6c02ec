//! The medium tier (64 KiB + 1 up to 1020 KiB) through the C-style API: sizes, usable sizes,
//! realloc in place and moved, zeroing, shared regions, threads, memory given back, and bad
//! pointers. Each case whose answer depends on what else the process holds runs in a fresh
//! child process (this test binary again, one ignored test selected).
mod common;
use common::child;
use hakmem::raw;
use std::process::Output;

#[global_allocator]
static A: hakmem::HakMem = hakmem::HakMem;

const KIB: usize = 1024;
const REGION: usize = 2 << 20;
const PAGE: usize = 4096;
/// The largest medium block.
const MEDIUM_MAX: usize = 1020 * KIB;

/// Writes `seed + i` at every 251st byte `i` of the first `n` and at the last one.
fn fill(p: *mut u8, n: usize, seed: u8) {
    for i in (0..n).step_by(251).chain([n - 1]) {
        // SAFETY: `i < n`, inside the caller's block of at least `n` bytes.
        unsafe { p.add(i).write(seed.wrapping_add(i as u8)) };
    }
}

/// True when the first `m` bytes hold what [`fill`] wrote at its 251st bytes.
fn holds(p: *const u8, m: usize, seed: u8) -> bool {
    // SAFETY: `i < m`, inside the caller's block of at least `m` bytes.
    (0..m)
        .step_by(251)
        .all(|i| unsafe { p.add(i).read() } == seed.wrapping_add(i as u8))
}

fn ok(out: &Output, says: &str) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(says),
        "{out:?}\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_medium_size_is_a_page_aligned_block_that_holds_its_bytes() {
    let mut size = 64 * KIB + 1;
    while size <= MEDIUM_MAX {
        // SAFETY: the C-style API on blocks of our own.
        unsafe {
            let p = raw::malloc(size);
            assert!(!p.is_null());
            assert_eq!(p as usize % PAGE, 0, "size {size}: whole pages");
            let usable = raw::usable_size(p);
            assert!(
                usable >= size && usable < size + PAGE,
                "size {size}: usable {usable}"
            );
            fill(p, usable, size as u8);
            assert!(holds(p, usable, size as u8));
            raw::free(p);
        }
        size += size / 7 + 13;
    }
    // SAFETY: as above.
    unsafe {
        let p = raw::malloc(MEDIUM_MAX);
        assert_eq!(raw::usable_size(p), MEDIUM_MAX);
        raw::free(p);
    }
}

#[test]
fn calloc_reads_zero_over_granules_used_before() {
    // SAFETY: the C-style API on blocks of our own.
    unsafe {
        for round in 0..20u8 {
            let n = 100 * KIB + round as usize * 9000;
            let p = raw::malloc(n);
            p.write_bytes(0xAB, n);
            raw::free(p);
            let z = raw::calloc(1, n);
            assert!(!z.is_null());
            assert!(
                std::slice::from_raw_parts(z, n).iter().all(|&b| b == 0),
                "round {round}"
            );
            raw::free(z);
        }
    }
}

#[test]
#[ignore = "run by medium_blocks_share_regions"]
fn child_blocks_share_regions() {
    // SAFETY: the C-style API on blocks of our own.
    unsafe {
        let ps: Vec<*mut u8> = (0..10).map(|_| raw::malloc(100 * KIB)).collect();
        let mut bases: Vec<usize> = ps.iter().map(|&p| p as usize & !(REGION - 1)).collect();
        bases.sort();
        bases.dedup();
        // 10 x 25 granules fit one region's 511.
        assert_eq!(bases.len(), 1, "one 2 MiB region, not one each");
        for p in ps {
            raw::free(p);
        }
    }
    println!("shared");
}

#[test]
fn medium_blocks_share_regions() {
    ok(&child("child_blocks_share_regions", &[]), "shared");
}

#[test]
#[ignore = "run by realloc_grows_and_shrinks_in_place_when_it_can"]
fn child_realloc_in_place() {
    // SAFETY: the C-style API on blocks of our own.
    unsafe {
        let a = raw::malloc(100 * KIB);
        fill(a, 100 * KIB, 1);
        // Nothing follows it in a fresh region: it grows in place.
        let b = raw::realloc(a, 300 * KIB);
        assert_eq!(b, a, "grown in place");
        assert!(holds(b, 100 * KIB, 1));
        assert!(raw::usable_size(b) >= 300 * KIB);
        // A block right after it: growing further moves it, contents kept.
        let c = raw::malloc(100 * KIB);
        assert_eq!(c as usize, b as usize + 300 * KIB, "best fit: right after");
        let d = raw::realloc(b, 400 * KIB);
        assert_ne!(d, b, "moved");
        assert!(holds(d, 100 * KIB, 1));
        // Shrinking in place frees the tail: the next block fits there.
        let e = raw::realloc(d, 72 * KIB);
        assert_eq!(e, d, "shrunk in place");
        assert_eq!(raw::usable_size(e), 72 * KIB);
        assert!(holds(e, 72 * KIB, 1));
        // Past the medium sizes, or below them, it moves.
        let f = raw::realloc(e, 2 << 20);
        assert_ne!(f, e);
        assert!(holds(f, 72 * KIB, 1));
        let g = raw::realloc(f, 100 * KIB);
        assert!(holds(g, 72 * KIB, 1));
        let h = raw::realloc(g, 1000);
        assert!(raw::usable_size(h) < 64 * KIB, "a small block now");
        raw::free(h);
        raw::free(c);
    }
    println!("in place");
}

#[test]
fn realloc_grows_and_shrinks_in_place_when_it_can() {
    ok(&child("child_realloc_in_place", &[]), "in place");
}

#[test]
#[ignore = "run by empty_regions_go_back_and_collect_gives_everything_back"]
fn child_empty_regions_go_back() {
    let mapped = || hakmem::stats().mapped_bytes() as usize;
    let rss = || {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * PAGE
    };
    // Warm up what every process maps (its heap, the registry's leaf).
    // SAFETY: the C-style API on blocks of our own.
    unsafe { raw::free(raw::malloc(100)) };
    let (base_mapped, base_rss) = (mapped(), rss());
    // SAFETY: as above.
    unsafe {
        let ps: Vec<*mut u8> = (0..200).map(|i| raw::malloc(300 * KIB + i * 100)).collect();
        for &p in &ps {
            fill(p, 300 * KIB, 7);
        }
        assert!(mapped() >= base_mapped + 50 * REGION / 2);
        for p in ps {
            raw::free(p);
        }
    }
    // At most one empty region stays mapped outside the lru; the lru holds the rest until its
    // decay, and collect gives all of it back.
    let given = hakmem::collect();
    println!(
        "mapped {} -> {} KiB, rss {} -> {} KiB, collect gave {} KiB",
        base_mapped / KIB,
        mapped() / KIB,
        base_rss / KIB,
        rss() / KIB,
        given / KIB
    );
    assert!(given > 0);
    assert!(mapped() <= base_mapped + REGION, "regions unmapped");
    assert!(rss() <= base_rss + 8 * REGION, "pages given back");
    assert_eq!(hakmem::collect(), 0, "nothing left to give back");
    println!("back");
}

#[test]
fn empty_regions_go_back_and_collect_gives_everything_back() {
    ok(&child("child_empty_regions_go_back", &[]), "back");
}

#[test]
fn threads_allocate_resize_and_free_each_others_medium_blocks() {
    let handles: Vec<_> = (0..4u64)
        .map(|t| {
            std::thread::spawn(move || {
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ t;
                let mut live: Vec<(usize, usize, u8)> = Vec::new();
                let mut out = Vec::new();
                for i in 0..3000u32 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let size = 64 * KIB + 1 + (x >> 20) as usize % (MEDIUM_MAX - 64 * KIB);
                    let seed = i as u8;
                    // SAFETY: the C-style API on blocks of our own, each checked before freed.
                    unsafe {
                        match x % 4 {
                            0 | 1 => {
                                let p = raw::malloc(size);
                                assert!(!p.is_null());
                                fill(p, size, seed);
                                live.push((p as usize, size, seed));
                            }
                            2 if !live.is_empty() => {
                                let j = (x >> 8) as usize % live.len();
                                let (p, n, s) = live[j];
                                let q = raw::realloc(p as *mut u8, size);
                                assert!(holds(q, n.min(size), s));
                                fill(q, size, seed);
                                live[j] = (q as usize, size, seed);
                            }
                            _ if !live.is_empty() => {
                                let (p, n, s) = live.swap_remove((x >> 8) as usize % live.len());
                                assert!(holds(p as *const u8, n, s));
                                out.push(p);
                            }
                            _ => {}
                        }
                        if live.len() > 40 {
                            let (p, n, s) = live.swap_remove(0);
                            assert!(holds(p as *const u8, n, s));
                            raw::free(p as *mut u8);
                        }
                    }
                }
                for (p, n, s) in live {
                    assert!(holds(p as *const u8, n, s));
                    out.push(p);
                }
                out
            })
        })
        .collect();
    // The blocks each thread gave up are freed here, by another thread.
    for h in handles {
        for p in h.join().unwrap() {
            // SAFETY: live blocks of ours, handed over.
            unsafe { raw::free(p as *mut u8) };
        }
    }
}

/// Runs `case` in a child expecting it to abort with `message`.
fn aborts_with(case: &str, message: &str) {
    use std::os::unix::process::ExitStatusExt;
    let out = child(case, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{stderr}");
    assert!(stderr.contains(message), "{stderr}");
}

#[test]
#[ignore = "run by a_pointer_inside_a_medium_block_is_invalid"]
fn child_interior_free() {
    // SAFETY: the free of a pointer inside a block is the bug under test.
    unsafe {
        let p = raw::malloc(200 * KIB);
        raw::free(p.add(2 * PAGE));
    }
}

#[test]
#[ignore = "run by a_pointer_inside_a_medium_block_is_invalid"]
fn child_interior_usable_size() {
    // SAFETY: as above.
    unsafe {
        let p = raw::malloc(200 * KIB);
        raw::usable_size(p.add(16));
    }
}

#[test]
fn a_pointer_inside_a_medium_block_is_invalid() {
    aborts_with("child_interior_free", "hakmem: free(): invalid pointer 0x");
    aborts_with(
        "child_interior_usable_size",
        "hakmem: malloc_usable_size(): invalid pointer 0x",
    );
}

#[test]
#[ignore = "run by a_medium_double_free_aborts"]
fn child_double_free() {
    // SAFETY: the second free is the bug under test.
    unsafe {
        let p = raw::malloc(200 * KIB);
        let keep = raw::malloc(100 * KIB);
        raw::free(p);
        raw::free(p);
        raw::free(keep);
    }
}

#[test]
fn a_medium_double_free_aborts() {
    aborts_with(
        "child_double_free",
        "hakmem: free(): double free detected 0x",
    );
}
