//! HakMem as this test binary's global allocator: sizes, alignments, contents, realloc,
//! cross-thread frees, thread churn, and the stats that show it.
use std::alloc::{alloc, alloc_zeroed, dealloc, realloc, Layout};
use std::sync::mpsc;
use std::sync::Mutex;

#[global_allocator]
static A: hakmem::HakMem = hakmem::HakMem;

/// Tests that read global counters run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

// `alone(name, env)` runs test `name` again in a child process of its own, so that the
// process-wide counters it reads change only by its own doing.
mod common;
use common::alone;

/// The pattern's word `i`; byte `j` of a block is byte `j % 8` (little-endian) of word `j / 8`,
/// so any prefix of a block carries the same bytes whatever the block's length.
fn word(seed: u64, i: usize) -> u64 {
    seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn pattern(p: *mut u8, n: usize, seed: u64) {
    let w = p.cast::<u64>();
    for i in 0..n / 8 {
        // SAFETY: inside the block.
        unsafe { w.add(i).write_unaligned(word(seed, i)) };
    }
    for j in n / 8 * 8..n {
        // SAFETY: inside the block.
        unsafe { p.add(j).write((word(seed, j / 8) >> (8 * (j % 8))) as u8) };
    }
}

fn verify(p: *const u8, n: usize, seed: u64) {
    let w = p.cast::<u64>();
    for i in 0..n / 8 {
        // SAFETY: inside the block.
        let v = unsafe { w.add(i).read_unaligned() };
        assert_eq!(v, word(seed, i), "word {i} of {n}-byte block {p:p}");
    }
    for j in n / 8 * 8..n {
        // SAFETY: inside the block.
        let b = unsafe { p.add(j).read() };
        assert_eq!(
            b,
            (word(seed, j / 8) >> (8 * (j % 8))) as u8,
            "byte {j} of {n}-byte block {p:p}"
        );
    }
}

/// Sizes from 1 B to 64 MiB: every size up to 40 000 (every small class and its edges), then
/// steps of 1/8 with their neighbours.
fn sizes() -> Vec<usize> {
    let mut v: Vec<usize> = (1..=40_000).collect();
    let mut s = 40_000usize;
    while s < 64 << 20 {
        s += s / 8;
        v.extend([s - 1, s, s + 1]);
    }
    v.push(64 << 20);
    v
}

#[test]
fn every_size_and_alignment_keeps_its_contents() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let all = sizes();
    // Every size at the default alignment, a window of blocks live at once.
    let mut live: Vec<(*mut u8, Layout, u64)> = Vec::new();
    for (i, &size) in all.iter().enumerate() {
        let layout = Layout::from_size_align(size, 8).unwrap();
        // SAFETY: a non-zero size.
        let p = unsafe { alloc(layout) };
        assert!(!p.is_null(), "size {size}");
        assert_eq!(
            p as usize % if size >= 16 { 16 } else { 8 },
            0,
            "size {size}"
        );
        pattern(p, size, i as u64);
        live.push((p, layout, i as u64));
        if live.len() > 64 {
            let (q, l, seed) = live.remove(i % 64);
            verify(q, l.size(), seed);
            // SAFETY: ours, with its layout.
            unsafe { dealloc(q, l) };
        }
    }
    for (q, l, seed) in live.drain(..) {
        verify(q, l.size(), seed);
        // SAFETY: ours.
        unsafe { dealloc(q, l) };
    }
    // Every alignment from 1 B to 2 MiB, over sizes spread across the tiers.
    for shift in 0..=21 {
        let align = 1usize << shift;
        for &size in all
            .iter()
            .step_by(997)
            .chain([1, 15, 16, 17, 4096, 32_768, 32_769, 3 << 20].iter())
        {
            let layout = Layout::from_size_align(size, align).unwrap();
            // SAFETY: a non-zero size.
            let p = unsafe { alloc(layout) };
            assert!(!p.is_null(), "size {size} align {align}");
            assert_eq!(p as usize % align, 0, "size {size} align {align}");
            pattern(p, size.min(1 << 16), size as u64);
            verify(p, size.min(1 << 16), size as u64);
            // SAFETY: ours.
            unsafe { dealloc(p, layout) };
        }
    }
}

#[test]
fn zeroed_blocks_are_zero_even_when_reused() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for &size in &[8usize, 100, 1000, 4096, 30_000, 100_000, 5 << 20] {
        for _ in 0..3 {
            let l = Layout::from_size_align(size, 16).unwrap();
            // SAFETY: non-zero size.
            let p = unsafe { alloc_zeroed(l) };
            // SAFETY: `size` bytes of ours.
            let bytes = unsafe { std::slice::from_raw_parts(p, size) };
            assert!(bytes.iter().all(|&b| b == 0), "size {size}");
            // SAFETY: ours.
            unsafe {
                p.write_bytes(0xA5, size);
                dealloc(p, l);
            }
        }
    }
}

#[test]
fn realloc_up_and_down_keeps_contents() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for align in [8usize, 64, 4096] {
        let mut size = 24usize;
        let l = Layout::from_size_align(size, align).unwrap();
        // SAFETY: non-zero size.
        let mut p = unsafe { alloc(l) };
        pattern(p, size, 7);
        // Up to 16 MiB by doubling, then back down.
        let mut steps: Vec<usize> = (0..20).map(|i| 24usize << (i + 1)).collect();
        steps.extend(steps.clone().iter().rev().skip(1).copied());
        steps.extend([100, 17, 1]);
        for next in steps {
            // SAFETY: a live block of `size` bytes with this alignment.
            let q = unsafe { realloc(p, Layout::from_size_align(size, align).unwrap(), next) };
            assert!(!q.is_null());
            assert_eq!(q as usize % align, 0);
            verify(q, size.min(next), 7);
            pattern(q, next, 7);
            p = q;
            size = next;
        }
        // SAFETY: ours.
        unsafe { dealloc(p, Layout::from_size_align(size, align).unwrap()) };
    }
    // In place within a class: same pointer.
    let l = Layout::from_size_align(100, 8).unwrap();
    // SAFETY: non-zero size.
    let p = unsafe { alloc(l) };
    // SAFETY: ours.
    let q = unsafe { realloc(p, l, 110) };
    assert_eq!(p, q, "100 and 110 share a class");
    // SAFETY: ours.
    unsafe { dealloc(q, Layout::from_size_align(110, 8).unwrap()) };
}

/// A small block shrinks in place down to half its block, whichever thread allocated it (this
/// thread's own blocks are found by the owned cache, another thread's by the registry), and
/// moves below that; the shrunk block is freed with its new layout.
#[test]
fn realloc_shrinks_a_small_block_in_place_down_to_half() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sizes = [
        (4096usize, 2100usize, true),
        (4096, 2000, false),
        (640, 330, true),
    ];
    for (old, new, kept) in sizes {
        for foreign in [false, true] {
            let l = Layout::from_size_align(old, 16).unwrap();
            let make = move || {
                // SAFETY: non-zero size.
                let p = unsafe { alloc(l) };
                assert!(!p.is_null());
                pattern(p, old, 3);
                p as usize
            };
            let p = if foreign {
                std::thread::spawn(make).join().unwrap()
            } else {
                make()
            } as *mut u8;
            // SAFETY: a live block of `old` bytes.
            let q = unsafe { realloc(p, l, new) };
            assert!(!q.is_null());
            assert_eq!(p == q, kept, "{old} -> {new} (another thread's: {foreign})");
            verify(q, new, 3);
            // SAFETY: ours, with its new layout.
            unsafe { dealloc(q, Layout::from_size_align(new, 16).unwrap()) };
        }
    }
}

#[test]
fn eight_threads_free_each_others_blocks() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const THREADS: usize = 8;
    const PER: usize = 20_000;
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..THREADS)
        .map(|_| mpsc::channel::<(usize, usize, u64)>())
        .unzip();
    std::thread::scope(|s| {
        for (t, rx) in rxs.into_iter().enumerate() {
            let next = txs[(t + 1) % THREADS].clone();
            s.spawn(move || {
                let mut rng = 0x1234_5678u64 ^ t as u64;
                for i in 0..PER {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let size = 1 + (rng % 2000) as usize;
                    let seed = (t * PER + i) as u64;
                    let v = vec![0u8; size].into_boxed_slice();
                    let p = Box::into_raw(v) as *mut u8;
                    pattern(p, size, seed);
                    // The consumer is the next thread: every block is freed by a non-owner.
                    next.send((p as usize, size, seed)).unwrap();
                    while let Ok((q, n, sd)) = rx.try_recv() {
                        verify(q as *const u8, n, sd);
                        // SAFETY: produced by a Box<[u8]> of n bytes, handed over once.
                        drop(unsafe {
                            Box::from_raw(std::ptr::slice_from_raw_parts_mut(q as *mut u8, n))
                        });
                    }
                }
                drop(next);
                for (q, n, sd) in rx {
                    verify(q as *const u8, n, sd);
                    // SAFETY: as above.
                    drop(unsafe {
                        Box::from_raw(std::ptr::slice_from_raw_parts_mut(q as *mut u8, n))
                    });
                }
            });
        }
        drop(txs);
    });
    assert!(hakmem::stats().count(hakmem::Event::RemoteFree) >= (THREADS * PER) as u64 / 2);
}

#[test]
fn ten_thousand_short_lived_threads_leave_nothing_behind() {
    // The counts below are process-wide, and the test harness's own threads (other tests, and
    // the harness's thread per test) make and retire heaps too. So the case runs alone, in a
    // child process. The lru's decay is set beyond the test's length there, so that a stall of
    // the machine between two threads cannot unmap a cached superslab (and count a new one).
    if !alone(
        "ten_thousand_short_lived_threads_leave_nothing_behind",
        &[("HAKMEM_LRU_DECAY_MS", "3600000")],
    ) {
        return;
    }
    // Warm up, then measure from a baseline.
    std::thread::spawn(|| drop(vec![0u8; 100])).join().unwrap();
    let before = hakmem::stats();
    for i in 0..10_000usize {
        std::thread::spawn(move || {
            let mut v: Vec<Box<[u8]>> = Vec::new();
            for k in 0..20 {
                v.push(vec![i as u8; 16 + (k * 97 + i) % 3000].into_boxed_slice());
            }
            std::hint::black_box(&v);
        })
        .join()
        .unwrap();
    }
    let after = hakmem::stats();
    let created = after.count(hakmem::Event::SsCreated) - before.count(hakmem::Event::SsCreated);
    assert!(
        created <= 4,
        "superslab count stays bounded: {created} created for 10 000 threads"
    );
    // Live bytes come back to the baseline (thread bookkeeping of std is freed by exit).
    let drift = after.live_bytes() - before.live_bytes();
    assert!(drift.abs() < 64 * 1024, "live bytes drifted by {drift}");
    assert_eq!(
        after.threads(),
        before.threads(),
        "every exited thread's heap was retired"
    );
}

#[test]
fn a_large_free_shows_up_as_cached_or_released() {
    // Alone in a child process: another test's large allocation could take the cached region
    // (and so skip its purge) between this test's free and its look at the counters.
    if !alone("a_large_free_shows_up_as_cached_or_released", &[]) {
        return;
    }
    let before = hakmem::stats();
    let l = Layout::from_size_align(8 << 20, 16).unwrap();
    // Through black_box: an optimised build may otherwise drop an allocation nobody reads.
    // SAFETY: non-zero size.
    let p = std::hint::black_box(unsafe { alloc(l) });
    // SAFETY: 8 MiB of ours.
    unsafe {
        p.write_bytes(1, 8 << 20);
        dealloc(std::hint::black_box(p), l);
    }
    let after = hakmem::stats();
    let cached = after.count(hakmem::Event::SsCached) - before.count(hakmem::Event::SsCached);
    let released = after.count(hakmem::Event::SsReleased) - before.count(hakmem::Event::SsReleased);
    assert!(
        cached + released >= 1,
        "cached {cached} released {released}"
    );
    assert_eq!(
        after.count(hakmem::Event::LargeFree),
        before.count(hakmem::Event::LargeFree) + 1
    );
    // Its pages go back at once, or (for the most recently cached few MiB) within the lru's
    // purge delay, at the next cache operation.
    std::thread::sleep(std::time::Duration::from_millis(250));
    let q = Layout::from_size_align(16 << 20, 16).unwrap();
    // SAFETY: non-zero size; freed at once.
    unsafe { dealloc(std::hint::black_box(alloc(q)), q) };
    let later = hakmem::stats();
    assert!(
        later.bytes(hakmem::Event::Madvise) >= before.bytes(hakmem::Event::Madvise) + (8 << 20),
        "pages given back"
    );
}

#[test]
fn growing_a_large_block_moves_its_pages_instead_of_copying() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let before = hakmem::stats();
    let mut size = 1 << 20;
    let l = Layout::from_size_align(size, 16).unwrap();
    // SAFETY: non-zero size.
    let mut p = unsafe { alloc(l) };
    pattern(p, size, 99);
    while size < 64 << 20 {
        let next = size * 2 + 12_345;
        // SAFETY: a live block of `size` bytes.
        p = unsafe { realloc(p, Layout::from_size_align(size, 16).unwrap(), next) };
        assert!(!p.is_null());
        verify(p, size, 99);
        pattern(p, next, 99);
        size = next;
    }
    // SAFETY: ours.
    unsafe { dealloc(p, Layout::from_size_align(size, 16).unwrap()) };
    let after = hakmem::stats();
    assert!(after.count(hakmem::Event::Mremap) > before.count(hakmem::Event::Mremap));
    // The test harness allocates a little meanwhile; unaccounted growth would show as MiBs.
    let drift = after.live_bytes() - before.live_bytes();
    assert!(
        drift.abs() < 64 * 1024,
        "growth is accounted and given back: drift {drift}"
    );
}
