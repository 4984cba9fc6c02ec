extern crate std;
use super::*;
use hakmem_route::class_of;
use hakmem_superslab::HeapOs;
use std::boxed::Box;
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize as StdAtomic, Ordering::SeqCst};
use std::vec::Vec;

static REPORTS: StdAtomic = StdAtomic::new(0);

fn count_report(_: Corrupt) {
    REPORTS.fetch_add(1, SeqCst);
}

fn ctx(chunks: usize, check: bool) -> &'static Ctx {
    let os: &'static HeapOs = Box::leak(Box::new(HeapOs::new(chunks)));
    let registry = os.registry();
    Box::leak(Box::new(Ctx::new(
        os,
        registry,
        LruConfig::default(),
        check,
        count_report,
    )))
}

/// Frees `p` the way the facade does: through the registry.
unsafe fn free(h: &mut Heap, p: *mut u8) {
    // SAFETY: the heap is this test thread's own, and every block is ours, freed once.
    match unsafe { hakmem_route::classify(&h.ctx().registry, p) } {
        // SAFETY: the heap is this test thread's own, and every block is ours, freed once.
        hakmem_route::PtrRoute::Small(ss, slab) => unsafe { h.free_small(ss, slab, p) },
        _ => panic!("not a small block: {p:?}"),
    }
}

// Each call maps a new heap, so the `&mut` is unique.
#[allow(clippy::mut_from_ref)]
fn heap(ctx: &'static Ctx) -> &'static mut Heap {
    let h = ctx.new_heap().unwrap();
    // SAFETY: a fresh heap, used by this test's thread only.
    unsafe { &mut *h.as_ptr() }
}

#[test]
fn blocks_are_distinct_aligned_and_keep_their_contents() {
    let ctx = ctx(16, false);
    let h = heap(ctx);
    let mut live: Vec<(*mut u8, usize, u8)> = Vec::new();
    for i in 0..5000usize {
        let size = 1 + (i * 37) % 3000;
        let c = class_of(size).unwrap();
        // SAFETY: this thread's heap.
        let p = unsafe { h.alloc(c) };
        assert!(!p.is_null());
        assert_eq!(p as usize % 16, 0);
        // SAFETY: a block of at least `size` bytes.
        unsafe { p.write_bytes(i as u8, size) };
        live.push((p, size, i as u8));
        if i % 3 == 0 {
            let (q, n, v) = live.swap_remove(i % live.len());
            // SAFETY: our block.
            assert!(unsafe { core::slice::from_raw_parts(q, n) }
                .iter()
                .all(|&x| x == v));
            // SAFETY: the heap is this test thread's own, and every block is ours, freed once.
            unsafe { free(h, q) };
        }
    }
    let mut seen = HashSet::new();
    for &(p, n, v) in &live {
        assert!(seen.insert(p as usize), "a block handed out twice");
        // SAFETY: our block.
        assert!(
            // SAFETY: the heap is this test thread's own, and every block is ours, freed once.
            unsafe { core::slice::from_raw_parts(p, n) }
                .iter()
                .all(|&x| x == v),
            "contents survive"
        );
    }
    let s = ctx.snapshot();
    let live_count: i64 = (0..CLASSES).map(|c| s.live(c)).sum();
    assert_eq!(live_count, live.len() as i64);
}

#[test]
fn freeing_everything_gives_the_superslab_back_to_the_lru() {
    let ctx = ctx(8, false);
    let h = heap(ctx);
    let c = class_of(64).unwrap();
    // Enough blocks to fill several slabs and overflow the thread list and cache.
    // SAFETY: the heap is this test thread's own, and every block is ours, freed once.
    let blocks: Vec<*mut u8> = (0..5000).map(|_| unsafe { h.alloc(c) }).collect();
    for &b in &blocks {
        // SAFETY: our blocks, freed once.
        unsafe { free(h, b) };
    }
    // Everything left is on the thread list or in the cache, or back in slabs; at exit all
    // goes back and the superslab is retired.
    // SAFETY: this thread's heap, not used again.
    unsafe { ctx.retire_heap(NonNull::from(h)) };
    let s = ctx.snapshot();
    assert_eq!(s.count(Event::SsCreated), 1);
    assert_eq!(
        s.count(Event::SsCached),
        1,
        "empty superslab went to the lru"
    );
    assert_eq!(s.count(Event::Abandon), 0);
    assert_eq!(s.held(c), 0);
    assert_eq!(ctx.lru.usage().0, 1);
}

#[test]
fn remote_frees_are_reclaimed_by_the_owner() {
    let ctx = ctx(16, false);
    let h = heap(ctx);
    let c = class_of(32).unwrap();
    // SAFETY: the heap is this test thread's own, and every block is ours, freed once.
    let blocks: Vec<usize> = (0..3000).map(|_| unsafe { h.alloc(c) } as usize).collect();
    std::thread::scope(|s| {
        s.spawn(|| {
            let other = heap(ctx);
            for &b in &blocks {
                // SAFETY: handed over by the owner; freed once.
                unsafe { free(other, b as *mut u8) };
            }
            // SAFETY: this thread's heap, not used again.
            unsafe { ctx.retire_heap(NonNull::from(other)) };
        });
    });
    assert_eq!(ctx.snapshot().count(Event::RemoteFree), 3000);
    // The owner gets its blocks back through drains instead of new superslabs.
    // SAFETY: the heap is this test thread's own, and every block is ours, freed once.
    let again: Vec<*mut u8> = (0..3000).map(|_| unsafe { h.alloc(c) }).collect();
    assert_eq!(
        ctx.snapshot().count(Event::SsCreated),
        1,
        "reused, not grown"
    );
    for b in again {
        // SAFETY: ours.
        unsafe { free(h, b) };
    }
    // SAFETY: not used again.
    unsafe { ctx.retire_heap(NonNull::from(h)) };
    assert_eq!(ctx.snapshot().held(c), 0);
}

#[test]
fn an_exited_threads_superslab_is_adopted_and_never_leaked() {
    let ctx = ctx(16, false);
    let c = class_of(100).unwrap();
    let kept: Vec<usize> = std::thread::scope(|s| {
        s.spawn(|| {
            let h = heap(ctx);
            // SAFETY: the heap is this test thread's own, and every block is ours, freed once.
            let kept: Vec<usize> = (0..100).map(|_| unsafe { h.alloc(c) } as usize).collect();
            // SAFETY: the thread "exits" with blocks out.
            unsafe { ctx.retire_heap(NonNull::from(h)) };
            kept
        })
        .join()
        .unwrap()
    });
    assert_eq!(ctx.snapshot().count(Event::Abandon), 1);
    assert_eq!(ctx.abandoned.len(), 1);
    let h = heap(ctx);
    // A new thread's refill adopts before it maps.
    // SAFETY: the heap is this test thread's own, and every block is ours, freed once.
    let p = unsafe { h.alloc(c) };
    assert!(!p.is_null());
    let s = ctx.snapshot();
    assert_eq!((s.count(Event::Adopt), s.count(Event::SsCreated)), (1, 1));
    // The adopter owns the old blocks now: its frees are local.
    for &b in &kept {
        // SAFETY: handed over; freed once.
        unsafe { free(h, b as *mut u8) };
    }
    // SAFETY: the heap is this test thread's own, and every block is ours, freed once.
    unsafe { free(h, p) };
    // SAFETY: not used again.
    unsafe { ctx.retire_heap(NonNull::from(h)) };
    let s = ctx.snapshot();
    assert_eq!(s.count(Event::SsCached), 1);
    assert_eq!(ctx.abandoned.len(), 0);
}

#[test]
fn abandoned_superslab_goes_back_with_its_last_remote_free() {
    let ctx = ctx(16, false);
    let c = class_of(48).unwrap();
    let kept: Vec<usize> = std::thread::scope(|s| {
        s.spawn(|| {
            let h = heap(ctx);
            // SAFETY: the heap is this test thread's own, and every block is ours, freed once.
            let kept: Vec<usize> = (0..10).map(|_| unsafe { h.alloc(c) } as usize).collect();
            // SAFETY: exits with blocks out.
            unsafe { ctx.retire_heap(NonNull::from(h)) };
            kept
        })
        .join()
        .unwrap()
    });
    // A thread with no heap frees them all: the last free collects and retires it.
    for &b in &kept {
        let p = b as *mut u8;
        // SAFETY: the heap is this test thread's own, and every block is ours, freed once.
        match unsafe { hakmem_route::classify(&ctx.registry, p) } {
            // SAFETY: handed over, freed once.
            hakmem_route::PtrRoute::Small(ss, slab) => unsafe {
                Heap::free_orphan(ctx, ss, slab, p)
            },
            _ => unreachable!(),
        }
    }
    let s = ctx.snapshot();
    assert_eq!(s.count(Event::SsCached), 1);
    assert_eq!(ctx.abandoned.len(), 0);
    assert_eq!(s.live(c), 0);
}

#[test]
fn check_mode_catches_every_double_free() {
    let ctx = ctx(8, true);
    let h = heap(ctx);
    let c = class_of(256).unwrap();
    // SAFETY: the heap is this test thread's own, and every block is ours, freed once.
    let a = unsafe { h.alloc(c) };
    // SAFETY: the heap is this test thread's own, and every block is ours, freed once.
    let b = unsafe { h.alloc(c) };
    let before = REPORTS.load(SeqCst);
    // SAFETY: the heap is this test thread's own, and every block is ours, freed once.
    unsafe {
        free(h, a);
        free(h, b);
        free(h, a); // not at the head of any list: only the bitmap sees it
    }
    assert_eq!(REPORTS.load(SeqCst), before + 1);
}

#[test]
fn out_of_memory_returns_null() {
    // One chunk for the heap itself, one for a single superslab.
    let ctx = ctx(2, false);
    let h = heap(ctx);
    let c = class_of(32 * 1024).unwrap();
    let mut n = 0;
    loop {
        // SAFETY: the heap is this test thread's own, and every block is ours, freed once.
        let p = unsafe { h.alloc(c) };
        if p.is_null() {
            break;
        }
        n += 1;
        assert!(n < 100, "a 2 MiB arena holds far fewer 32 KiB blocks");
    }
    assert!(n > 0);
}

#[test]
fn zeroed_allocation_skips_fresh_memory_and_zeroes_the_rest() {
    let ctx = ctx(8, false);
    let h = heap(ctx);
    let c = class_of(4096).unwrap();
    // SAFETY: the heap is this test thread's own, and every block is ours, freed once.
    let p = unsafe { h.alloc_zeroed(c) };
    // SAFETY: our block of 4096 bytes.
    unsafe {
        assert!(core::slice::from_raw_parts(p, 4096).iter().all(|&x| x == 0));
        p.write_bytes(0xEE, 4096);
        free(h, p);
        let q = h.alloc_zeroed(c);
        assert!(core::slice::from_raw_parts(q, 4096).iter().all(|&x| x == 0));
    }
}
