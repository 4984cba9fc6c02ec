extern crate std;
use super::*;
use hakmem_route::class_of;
use hakmem_superslab::HeapOs;
use hakmem_superslab::{key_word, set_key_word};
use std::boxed::Box;
use std::collections::HashSet;
use std::vec::Vec;

/// The workspace's helper that runs a test again in a child process.
#[path = "../../../tests/src/child.rs"]
mod child;

std::thread_local! {
    // Reports seen by this test thread alone: tests run in parallel, so a process-wide count
    // would also see other tests' reports.
    static MINE: core::cell::RefCell<Vec<Corrupt>> = const { core::cell::RefCell::new(Vec::new()) };
}

fn count_report(c: Corrupt) {
    // Validation runs in these (debug) tests at every refill, adoption and exit: a broken
    // invariant fails the test that broke it.
    assert!(
        !matches!(c, Corrupt::Invariant { .. }),
        "validation failed: {c:?}"
    );
    MINE.with(|m| m.borrow_mut().push(c));
}

/// The reports this thread has seen since the last call.
fn my_reports() -> Vec<Corrupt> {
    MINE.with(|m| core::mem::take(&mut *m.borrow_mut()))
}

fn ctx(chunks: usize, check: bool) -> &'static Ctx {
    crate::test_ctx(chunks, check, count_report)
}

/// Frees `p` the way the facade does: through the registry.
///
/// # Safety
/// `h` is this thread's heap, and `p` a block of `h`'s context that the caller gives up.
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

/// `n` blocks of `class` that a thread allocated on its own heap before it exited (its heap
/// retired with them out, so their superslab is abandoned).
fn blocks_left_by_an_exited_thread(ctx: &'static Ctx, class: SizeClass, n: usize) -> Vec<usize> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let h = heap(ctx);
            // SAFETY: the heap is this thread's own.
            let kept: Vec<usize> = (0..n).map(|_| unsafe { h.alloc(class) } as usize).collect();
            // SAFETY: the thread "exits" with blocks out.
            unsafe { ctx.retire_heap(NonNull::from(h)) };
            kept
        })
        .join()
        .unwrap()
    })
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
    assert_eq!(s.held(c.index()), 0);
    assert_eq!(ctx.lru.usage().0, 1);
}

#[test]
fn remote_frees_are_reclaimed_by_the_owner() {
    let ctx = ctx(16, false);
    let h = heap(ctx);
    let c = class_of(32).unwrap();
    // Most of a superslab (2 MiB of 32-byte blocks is 65 536), so the second round cannot be
    // served from slabs the first left untouched: it needs the drained blocks, which the
    // owner finds through the remote hint (SS15 in hakmem-superslab).
    const N: usize = 60_000;
    // SAFETY: the heap is this test thread's own, and every block is ours, freed once.
    let blocks: Vec<usize> = (0..N).map(|_| unsafe { h.alloc(c) } as usize).collect();
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
    assert_eq!(ctx.snapshot().count(Event::RemoteFree), N as u64);
    // The owner gets its blocks back through drains instead of new superslabs.
    // SAFETY: the heap is this test thread's own, and every block is ours, freed once.
    let again: Vec<*mut u8> = (0..N).map(|_| unsafe { h.alloc(c) }).collect();
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
    assert_eq!(ctx.snapshot().held(c.index()), 0);
}

#[test]
fn an_exited_threads_superslab_is_adopted_and_never_leaked() {
    let ctx = ctx(16, false);
    let c = class_of(100).unwrap();
    let kept = blocks_left_by_an_exited_thread(ctx, c, 100);
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
fn a_thread_that_frees_into_an_abandoned_superslab_adopts_it() {
    let ctx = ctx(16, false);
    let c = class_of(100).unwrap();
    let kept = blocks_left_by_an_exited_thread(ctx, c, 100);
    assert_eq!(ctx.abandoned.len(), 1);
    // SAFETY: a block of ours, so a live superslab covers it.
    let ss = unsafe { Superslab::of(kept[0] as *const u8) };
    assert_eq!(ss.owner(), 0, "abandoned: no owner");
    // A heap that never allocated frees one block into it: it adopts the superslab (H10).
    let h = heap(ctx);
    // SAFETY: handed over; freed once.
    unsafe { free(h, kept[0] as *mut u8) };
    assert_eq!(ss.owner(), h.id(), "the freer owns the superslab");
    assert!(!ss.is_abandoned());
    assert_eq!(ctx.abandoned.len(), 0, "taken off the abandoned list");
    let s = ctx.snapshot();
    assert_eq!((s.count(Event::AdoptByFree), s.count(Event::Adopt)), (1, 0));
    // It is in the freer's owned cache (H8): the lean fast path takes the next frees.
    for &b in &kept[1..] {
        // SAFETY: handed over; freed once.
        let local = unsafe { Heap::try_free_owned(h, b as *mut u8) };
        assert!(local, "an owner-local free");
        // The list fills up; spill it through the full path, which is local too.
        if h.sll.is_full(c.index()) {
            h.spill(c);
        }
    }
    assert_eq!(
        ctx.snapshot().count(Event::RemoteFree),
        0,
        "no free was remote"
    );
    // And its memory serves the freer's allocations before any new superslab.
    // SAFETY: the heap is this test thread's own.
    let p = unsafe { h.alloc(c) };
    assert_eq!(p as usize & !(SS_SIZE - 1), ss.base());
    assert_eq!(ctx.snapshot().count(Event::SsCreated), 1);
    // SAFETY: ours, freed once; the heap is not used again.
    unsafe {
        free(h, p);
        ctx.retire_heap(NonNull::from(h));
    }
    assert_eq!(ctx.snapshot().held(c.index()), 0);
}

#[test]
fn a_heap_that_owns_four_superslabs_frees_into_an_abandoned_one_without_adopting_it() {
    let ctx = ctx(16, false);
    let c = class_of(100).unwrap();
    // The freer's heap fills superslabs until it owns CLAIM_BELOW of them.
    let h = heap(ctx);
    let big = class_of(16384).unwrap();
    let mut held = Vec::new();
    while h.owned_count < CLAIM_BELOW {
        // SAFETY: the heap is this test thread's own.
        let p = unsafe { h.alloc(big) };
        assert!(!p.is_null());
        held.push(p);
    }
    let kept = blocks_left_by_an_exited_thread(ctx, c, 2);
    assert_eq!(ctx.abandoned.len(), 1);
    // SAFETY: a block of ours, so a live superslab covers it.
    let ss = unsafe { Superslab::of(kept[0] as *const u8) };
    // SAFETY: handed over; freed once.
    unsafe { free(h, kept[0] as *mut u8) };
    assert_eq!(ss.owner(), 0, "not claimed past the bound (H10)");
    assert_eq!(
        ctx.abandoned.len(),
        1,
        "collected and put back: a block is still out"
    );
    assert_eq!(ctx.snapshot().count(Event::AdoptByFree), 0);
    // SAFETY: ours, each freed once; the heap is not used again.
    unsafe {
        free(h, kept[1] as *mut u8);
        assert_eq!(ctx.abandoned.len(), 0, "its last free released it");
        for p in held {
            free(h, p);
        }
        ctx.retire_heap(NonNull::from(h));
    }
}

#[test]
fn abandoned_superslab_goes_back_with_its_last_remote_free() {
    let ctx = ctx(16, false);
    let c = class_of(48).unwrap();
    let kept = blocks_left_by_an_exited_thread(ctx, c, 10);
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
    assert_eq!(s.live(c.index()), 0);
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
    my_reports();
    // SAFETY: the heap is this test thread's own, and every block is ours, freed once.
    unsafe {
        free(h, a);
        free(h, b);
        free(h, a); // not at the head of any list
    }
    assert_eq!(my_reports(), std::vec![Corrupt::DoubleFree(a as usize)]);
}

fn remote_free(ctx: &'static Ctx, p: *mut u8) {
    // SAFETY: the test hands `p` over (or frees it twice on purpose); `p` is a block of ours.
    match unsafe { hakmem_route::classify(&ctx.registry, p) } {
        // SAFETY: as above.
        hakmem_route::PtrRoute::Small(ss, slab) => unsafe { Heap::free_orphan(ctx, ss, slab, p) },
        _ => unreachable!(),
    }
}

#[test]
fn a_double_free_not_at_the_head_is_caught_by_default() {
    // glibc's "double free detected in tcache 2" case: free(a); free(b); free(a).
    let ctx = ctx(8, false);
    let h = heap(ctx);
    let c = class_of(48).unwrap();
    my_reports();
    // SAFETY: the heap is this test thread's own; the second free of `a` is the bug under test.
    unsafe {
        let a = h.alloc(c);
        let b = h.alloc(c);
        assert_eq!(key_word(a), 0, "FK2: handed out unkeyed");
        free(h, a);
        free(h, b);
        assert_eq!(key_word(a), h.key, "FK1: keyed while free");
        free(h, a);
        assert_eq!(my_reports(), std::vec![Corrupt::DoubleFree(a as usize)]);
        // The report dropped the second free: the next allocations are distinct.
        let x = h.alloc(c);
        let y = h.alloc(c);
        let z = h.alloc(c);
        assert!(x != y && y != z && x != z);
    }
}

/// Allocates and frees enough blocks of `c` that freeing them all fills the thread list, spills
/// into the cache, and flushes the cache's oldest to their slabs' free lists; returns a block
/// found on the thread list, one in the cache, and one on a slab's free list.
fn free_blocks_everywhere(h: &mut Heap, c: SizeClass) -> [Option<*mut u8>; 3] {
    // SAFETY: the heap is this test thread's own, and every block is ours.
    let blocks: Vec<*mut u8> = (0..4000).map(|_| unsafe { h.alloc(c) }).collect();
    for &b in &blocks {
        // SAFETY: ours, freed once.
        unsafe { free(h, b) };
    }
    let on_list = blocks
        .iter()
        .copied()
        // SAFETY: the list's blocks are free and linked.
        .find(|&b| unsafe { h.sll.contains(c.index(), b, |_| true) });
    let in_cache = blocks
        .iter()
        .copied()
        .find(|&b| h.cache.contains(c.index(), b));
    let on_slab = blocks.iter().copied().find(|&b| {
        // SAFETY: our blocks, in live superslabs we own.
        unsafe { Superslab::of(b).slab_of(b).free_list_contains(b) }
    });
    [on_list, in_cache, on_slab]
}

#[test]
fn a_double_free_is_caught_wherever_the_block_sits() {
    let ctx = ctx(16, false);
    let h = heap(ctx);
    let c = class_of(64).unwrap();
    let [on_list, in_cache, on_slab] = free_blocks_everywhere(h, c);
    my_reports();
    for p in [on_list, in_cache, on_slab] {
        let p = p.expect("a block in each place");
        // SAFETY: a second free of a free block: the bug under test.
        unsafe { free(h, p) };
        assert_eq!(my_reports(), std::vec![Corrupt::DoubleFree(p as usize)]);
    }
}

#[test]
fn a_double_free_of_a_block_on_a_remote_stack_is_caught_by_owner_and_non_owner() {
    let ctx = ctx(8, false);
    let h = heap(ctx);
    let c = class_of(32).unwrap();
    // SAFETY: the heap is this test thread's own.
    let (a, b) = unsafe { (h.alloc(c), h.alloc(c)) };
    // Another thread (no heap) frees both: they wait on the slab's remote stack.
    let (au, bu) = (a as usize, b as usize);
    std::thread::scope(|s| {
        s.spawn(move || {
            let (a, b) = (au as *mut u8, bu as *mut u8);
            remote_free(ctx, a);
            remote_free(ctx, b);
            my_reports();
            remote_free(ctx, a); // the non-owner frees it again
            assert_eq!(my_reports(), std::vec![Corrupt::DoubleFree(a as usize)]);
        });
    });
    my_reports();
    // SAFETY: the owner frees it again: the bug under test.
    unsafe { free(h, b) };
    assert_eq!(my_reports(), std::vec![Corrupt::DoubleFree(b as usize)]);
}

#[test]
fn user_data_that_matches_the_key_is_not_a_double_free() {
    let ctx = ctx(8, false);
    let h = heap(ctx);
    let c = class_of(16).unwrap();
    my_reports();
    // SAFETY: our blocks; the user writes the key into its own block, then frees it once.
    unsafe {
        let p = h.alloc(c);
        set_key_word(p, h.key);
        free(h, p);
        assert!(my_reports().is_empty(), "not confirmed: the free proceeds");
        assert_eq!(h.alloc(c), p, "and the block is reused");
    }
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

#[test]
fn a_heap_whose_thread_is_gone_is_reaped_in_turn() {
    let ctx = ctx(8, false);
    let orphan = heap(ctx);
    let c = class_of(40).unwrap();
    // SAFETY: this test thread plays the orphan's thread, then "ends" without retiring it.
    let kept = unsafe { orphan.alloc(c) };
    // SAFETY: made by new_heap, live.
    unsafe { ctx.set_tag(NonNull::from(&mut *orphan), 7) };
    let live = heap(ctx);
    // SAFETY: as above.
    unsafe { ctx.set_tag(NonNull::from(&mut *live), 8) };
    assert_eq!(ctx.live_heaps(), 2);
    // Only tag 7's thread is gone; the look goes round the live heaps in turn.
    let mut reaped = 0;
    for _ in 0..4 {
        // SAFETY: tag 7's "thread" (this test, for the orphan) uses it no more.
        reaped += unsafe { ctx.reap_one(|t| t == 7) } as usize;
    }
    assert_eq!(reaped, 1, "retired once");
    assert_eq!(ctx.live_heaps(), 1);
    // Its block was out: its superslab is abandoned, and adopted by the live heap's refill.
    assert_eq!(ctx.abandoned.len(), 1);
    // SAFETY: the live heap is this thread's own; `kept` was handed over.
    unsafe {
        let p = live.alloc(class_of(2000).unwrap());
        assert!(!p.is_null());
        free(live, kept);
        free(live, p);
        ctx.retire_heap(NonNull::from(live));
    }
    assert_eq!(ctx.live_heaps(), 0);
}

#[test]
fn a_reap_leaves_a_heap_handed_out_again_under_the_same_tag() {
    let ctx = ctx(8, false);
    let first = heap(ctx);
    let first_at = NonNull::from(&mut *first);
    // SAFETY: made by new_heap, live.
    unsafe { ctx.set_tag(first_at, 7) };
    let other = heap(ctx);
    // SAFETY: as above.
    unsafe { ctx.set_tag(NonNull::from(&mut *other), 8) };
    // The reaper reads tag 7; while it asks whether tag 7's thread is gone, that thread exits
    // (retiring its own heap) and a new thread with the same tag (a reused thread id) gets the
    // same heap. Its test answers true: it is made before the new thread starts.
    let again = core::cell::Cell::new(None);
    // SAFETY: tag 7's first thread has ended when the test answers; the second, which starts
    // after the answer, has a heap with a new id, which the reap must leave alone (H15).
    let reaped = unsafe {
        ctx.reap_one(|t| {
            assert_eq!(t, 7);
            ctx.retire_heap(first_at);
            let h = ctx.new_heap().expect("memory for the heap");
            assert_eq!(h, first_at, "the retired heap is handed out again");
            ctx.set_tag(h, 7);
            again.set(Some(h));
            true
        })
    };
    assert!(!reaped, "the new thread's heap is not retired");
    assert_eq!(ctx.live_heaps(), 2);
    // SAFETY: both heaps are this thread's to retire.
    unsafe {
        ctx.retire_heap(again.get().unwrap());
        ctx.retire_heap(NonNull::from(other));
    }
    assert_eq!(ctx.live_heaps(), 0);
}

#[test]
fn a_non_owners_double_free_of_a_block_the_owner_holds_free_is_caught() {
    let ctx = ctx(16, false);
    let h = heap(ctx);
    let c = class_of(64).unwrap();
    let [on_list, in_cache, on_slab] = free_blocks_everywhere(h, c);
    let dups: Vec<usize> = [on_list, in_cache, on_slab]
        .into_iter()
        .map(|p| p.expect("a block in each place") as usize)
        .collect();
    // Another thread frees each again: the key tells it the block is free.
    let d = dups.clone();
    std::thread::scope(|s| {
        s.spawn(move || {
            for &p in &d {
                remote_free(ctx, p as *mut u8);
            }
            let got: Vec<Corrupt> = my_reports();
            let want: Vec<Corrupt> = d.iter().map(|&p| Corrupt::DoubleFree(p)).collect();
            assert_eq!(got, want, "each reported, and dropped");
        });
    });
    // The owner's structures were not touched: nothing is handed out twice.
    let mut seen = HashSet::new();
    for _ in 0..6000 {
        // SAFETY: this thread's heap.
        let p = unsafe { h.alloc(c) };
        assert!(seen.insert(p as usize), "a block handed out twice");
    }
}

#[test]
fn a_superslab_emptied_by_remote_frees_stays_with_its_heap() {
    // A producer whose blocks all come back through another thread's frees, round after
    // round: its emptied superslab is kept (H4) and reused, not retired to the lru and taken
    // back each round.
    let ctx = ctx(16, false);
    let h = heap(ctx);
    let c = class_of(64).unwrap();
    const ROUNDS: usize = 6;
    for _ in 0..ROUNDS {
        // About 1.5 superslabs of 64-byte blocks.
        // SAFETY: the heap is this test thread's own.
        let blocks: Vec<usize> = (0..48_000)
            .map(|_| unsafe { h.alloc(c) } as usize)
            .collect();
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
    }
    let s = ctx.snapshot();
    assert!(
        s.count(Event::SsCached) + s.count(Event::SsReused) < ROUNDS as u64,
        "emptied superslabs churned through the lru: {} cached, {} reused in {ROUNDS} rounds",
        s.count(Event::SsCached),
        s.count(Event::SsReused)
    );
    // SAFETY: not used again.
    unsafe { ctx.retire_heap(NonNull::from(h)) };
    assert_eq!(ctx.snapshot().held(c.index()), 0);
}

#[test]
fn heaps_run_on_a_kernel_with_64_kib_pages() {
    // HeapOs panics on any range that is not whole 64 KiB pages: the heap's own mapping, its
    // superslabs, and the lru's purges and unmaps are all checked.
    let os: &'static HeapOs = Box::leak(Box::new(HeapOs::with_page_size(16, 64 << 10)));
    let registry = os.registry();
    let ctx: &'static Ctx = Box::leak(Box::new(Ctx::new(
        os,
        registry,
        LruConfig {
            decay_ns: 0,
            ..LruConfig::default()
        },
        false,
        count_report,
    )));
    let h = heap(ctx);
    for size in [16, 700, 5000, 40_000] {
        let c = class_of(size).unwrap();
        // SAFETY: this thread's heap.
        let blocks: Vec<*mut u8> = (0..300).map(|_| unsafe { h.alloc(c) }).collect();
        assert!(blocks.iter().all(|b| !b.is_null()));
        for b in blocks {
            // SAFETY: ours, freed once.
            unsafe { free(h, b) };
        }
    }
    // SAFETY: not used again; its superslabs go to the lru, which unmaps them at once.
    unsafe { ctx.retire_heap(NonNull::from(h)) };
    ctx.lru.flush(&ctx.stats);
    assert!(my_reports().is_empty());
}

/// The adaptive bounds' books agree with the lists (H11): the extra bytes are exactly the sum
/// of every list's bound beyond its base, within the budget.
fn assert_adapt_books(h: &Heap) {
    if h.ctx().check() {
        return;
    }
    let mut extra = 0;
    for (c, &base) in LIST_CAPS.iter().enumerate() {
        let cap = h.list_cap(SizeClass::new(c).unwrap());
        assert!(cap >= base, "class {c}: bound {cap} below its base {base}");
        assert!(h.sll.len(c) <= cap, "L2 in class {c}");
        extra += (cap - base) as usize * SizeClass::new(c).unwrap().size();
    }
    assert_eq!(h.adapt_extra_bytes(), extra);
    assert!(extra <= adapt::ADAPT_BUDGET);
}

/// Rounds of "allocate `n` blocks of `class`, then free them in order" (glibc's
/// bench-malloc-simple).
fn batch_rounds(h: &mut Heap, class: SizeClass, n: usize, rounds: usize) {
    let mut v = Vec::with_capacity(n);
    for _ in 0..rounds {
        for _ in 0..n {
            // SAFETY: this thread's heap.
            let p = unsafe { h.alloc(class) };
            assert!(!p.is_null());
            v.push(p);
        }
        let distinct: HashSet<_> = v.iter().collect();
        assert_eq!(distinct.len(), n, "every block handed out once");
        for p in v.drain(..) {
            // SAFETY: the heap is this test thread's own, and every block is ours, freed once.
            unsafe { free(h, p) };
        }
        assert_adapt_books(h);
    }
}

#[test]
fn a_list_that_keeps_overflowing_grows_within_its_budget_and_decays_when_quiet() {
    let ctx = ctx(16, false);
    let h = heap(ctx);
    let a = class_of(64).unwrap();
    batch_rounds(h, a, 1600, 20);
    assert!(
        h.list_cap(a) >= 1600,
        "grown to hold the batch: {}",
        h.list_cap(a)
    );
    // Every block is back: out of its slab only while on the list or in the cache, and the
    // batched returns to slabs counted each one (stats S3).
    assert_eq!(
        ctx.snapshot().held(a.index()),
        (h.sll.len(a.index()) + h.cache.len(a.index())) as _
    );
    // Several large classes that want more than the budget: the quietest give theirs back.
    for size in [256, 512, 1024, 2048] {
        batch_rounds(h, class_of(size).unwrap(), 1024, 12);
    }
    assert!(h.list_cap(class_of(2048).unwrap()) > class_of(2048).unwrap().list_cap());
    // Slow-path events of another class only: the first class is quiet, so it decays back to
    // its base bound and then gives every block back to its slabs.
    let b = class_of(8192).unwrap();
    let mut rounds = 0;
    while h.list_cap(a) > a.list_cap() || ctx.snapshot().held(a.index()) != 0 {
        batch_rounds(h, b, 64, 1);
        rounds += 1;
        assert!(
            rounds < 10_000,
            "class {a:?} never decayed: bound {}",
            h.list_cap(a)
        );
    }
    assert_eq!(h.sll.len(a.index()) + h.cache.len(a.index()), 0);
    assert!(my_reports().is_empty());
    // SAFETY: this thread's heap, not used again.
    unsafe { ctx.retire_heap(NonNull::from(h)) };
    assert_eq!(ctx.snapshot().held(a.index()), 0);
}

#[test]
fn frees_past_a_full_list_and_cache_go_straight_to_their_slabs_each_once() {
    // H20: once the list and the cache are full, a run of overflowing frees goes straight to
    // the slabs; every free is counted once (H13), every block is out of its slab only while
    // a user, the list or the cache holds it (stats S3), and a second free of a block that went
    // straight to its slab is caught (FK3).
    let ctx = ctx(16, false);
    let h = heap(ctx);
    let c = class_of(64).unwrap();
    let i = c.index();
    let n = 4 * (h.list_cap(c) + h.cache.cap(i)) as usize;
    // SAFETY: this thread's heap.
    let mut v: Vec<*mut u8> = (0..n).map(|_| unsafe { h.alloc(c) }).collect();
    // A fixed shuffle, so that the frees land in their slabs in no order.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for k in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(k, (x % (k as u64 + 1)) as usize);
    }
    let before = ctx.snapshot().class(i);
    let mut straight = Vec::new();
    for (k, &p) in v.iter().enumerate() {
        let was_straight = h.adapt.direct[i] != 0 && h.sll.is_full(i);
        // Every other free by the C free's fast path, which frees straight too, then by the
        // full path when that refuses.
        // SAFETY: the heap is this test thread's own, and every block is ours, freed once.
        if k % 2 == 1 || !unsafe { Heap::try_free_owned(h, p) } {
            // SAFETY: as above.
            unsafe { free(h, p) };
        }
        if was_straight {
            straight.push(p);
        }
    }
    assert!(
        !straight.is_empty(),
        "some frees went straight to their slabs"
    );
    let after = ctx.snapshot().class(i);
    assert_eq!(
        after.frees - before.frees,
        n as u64,
        "every free counted once"
    );
    let on_heap = (h.sll.len(i) + h.cache.len(i)) as i64;
    assert_eq!(after.held, on_heap, "held by the list and the cache only");
    assert!(my_reports().is_empty());
    // A block freed straight to its slab, freed again: reported, and nothing changes.
    let p = straight[straight.len() / 2];
    // SAFETY: the test frees a free block on purpose; the slow path confirms it (FK3).
    unsafe { free(h, p) };
    assert_eq!(my_reports(), [Corrupt::DoubleFree(p as usize)]);
    assert_eq!(ctx.snapshot().class(i).held, on_heap);
    // No block comes back twice.
    // SAFETY: this thread's heap.
    let again: HashSet<usize> = (0..n).map(|_| unsafe { h.alloc(c) } as usize).collect();
    assert_eq!(again.len(), n, "every block handed out once");
    for p in again {
        // SAFETY: the heap is this test thread's own, and every block is ours, freed once.
        unsafe { free(h, p as *mut u8) };
    }
    assert!(my_reports().is_empty());
    // SAFETY: this thread's heap, not used again.
    unsafe { ctx.retire_heap(NonNull::from(h)) };
    assert_eq!(ctx.snapshot().held(i), 0);
}

#[test]
fn a_refill_walks_several_scattered_free_lists_in_step() {
    // H23: with several slabs of the class holding long free lists, a refill takes equal
    // shares from the first four on the ring, chained in ring order; every block is handed
    // out once and the held count follows (stats S3).
    let ctx = ctx(16, false);
    let h = heap(ctx);
    let c = class_of(64).unwrap();
    let i = c.index();
    let per_slab = hakmem_superslab::SLAB_SIZE / 64;
    let n = 6 * per_slab;
    // SAFETY: this thread's heap.
    let mut v: Vec<*mut u8> = (0..n).map(|_| unsafe { h.alloc(c) }).collect();
    // One block in ten stays out, so that no slab empties and each stays on the ring.
    let kept: Vec<*mut u8> = v.iter().copied().step_by(10).collect();
    v.retain(|p| !kept.contains(p));
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for k in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(k, (x % (k as u64 + 1)) as usize);
    }
    for &p in &v {
        // SAFETY: the heap is this test thread's own, and every block is ours, freed once.
        unsafe { free(h, p) };
    }
    h.drain_class(c);
    assert_eq!((h.sll.len(i), h.cache.len(i)), (0, 0));
    let out = kept.len() as i64;
    assert_eq!(ctx.snapshot().held(i), out, "only the kept blocks are out");
    let want = 4 * SPREAD_MIN;
    // SAFETY: this thread's heap.
    unsafe { h.refill_list(c, want) };
    assert_eq!(h.sll.len(i), want);
    assert_eq!(ctx.snapshot().held(i), out + i64::from(want));
    // SAFETY: this thread's heap; the list holds `want` blocks.
    let first: Vec<*mut u8> = (0..want).map(|_| unsafe { h.alloc(c) }).collect();
    let slab_of = |p: &*mut u8| *p as usize >> hakmem_superslab::SLAB_SHIFT;
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for s in first.iter().map(slab_of) {
        match runs.last_mut() {
            Some((last, len)) if *last == s => *len += 1,
            _ => runs.push((s, 1)),
        }
    }
    let share = want as usize / WALKS;
    assert_eq!(runs.len(), WALKS, "one run per slab walked: {runs:?}");
    assert!(runs.iter().all(|&(_, len)| len == share), "{runs:?}");
    let slabs: HashSet<usize> = runs.iter().map(|&(s, _)| s).collect();
    assert_eq!(slabs.len(), WALKS, "four different slabs");
    // No block is handed out twice, nor one still out, the first ones included.
    // SAFETY: this thread's heap.
    let rest: Vec<*mut u8> = (0..v.len() - first.len())
        .map(|_| unsafe { h.alloc(c) })
        .collect();
    let again: HashSet<usize> = first.iter().chain(&rest).map(|&p| p as usize).collect();
    assert_eq!(again.len(), v.len(), "every block handed out once");
    assert!(kept.iter().all(|&p| !again.contains(&(p as usize))));
    assert!(my_reports().is_empty());
    for &p in first.iter().chain(&rest).chain(&kept) {
        // SAFETY: as above.
        unsafe { free(h, p) };
    }
    // SAFETY: this thread's heap, not used again.
    unsafe { ctx.retire_heap(NonNull::from(h)) };
    assert_eq!(ctx.snapshot().held(i), 0);
}

#[test]
fn check_mode_lists_never_grow() {
    let ctx = ctx(16, true);
    let h = heap(ctx);
    let a = class_of(64).unwrap();
    batch_rounds(h, a, 400, 5);
    assert_eq!(h.list_cap(a), 0, "H6: no room in check mode");
    assert_eq!(h.adapt_extra_bytes(), 0);
    assert!(my_reports().is_empty());
}

#[test]
fn classes_in_use_do_not_take_each_others_budget() {
    let ctx = ctx(16, false);
    let h = heap(ctx);
    // Three classes whose lists would each grow to 256 KiB: more than the budget together.
    let classes = [4096, 8192, 16384].map(|s| class_of(s).unwrap());
    let caps = |h: &Heap| classes.map(|c| h.list_cap(c));
    for _ in 0..20 {
        for &c in &classes {
            batch_rounds(h, c, 96, 1);
        }
    }
    let settled = caps(h);
    assert!(settled
        .iter()
        .zip(&classes)
        .any(|(&cap, &c)| cap > c.list_cap()));
    // All three stay in use: no bound moves any more (no spill of one to grow another).
    for _ in 0..20 {
        for &c in &classes {
            batch_rounds(h, c, 96, 1);
            assert_eq!(caps(h), settled);
        }
    }
    assert!(my_reports().is_empty());
}

/// Allocates 16 KiB blocks (four to a slab) from `h` until `ctx` has made nine superslabs and
/// the last slab is full: 288 slabs or more for the owned cache's 256 entries (H8).
fn nine_superslabs_of_16_kib_blocks(ctx: &Ctx, h: &mut Heap) -> (SizeClass, Vec<*mut u8>) {
    let c = class_of(16 * 1024).unwrap();
    let mut blocks = Vec::new();
    while ctx.snapshot().count(Event::SsCreated) < 9 || blocks.len() % 4 != 0 {
        // SAFETY: the heap is this test thread's own.
        let p = unsafe { h.alloc(c) };
        assert!(!p.is_null());
        blocks.push(p);
    }
    (c, blocks)
}

#[test]
fn the_owned_cache_serves_what_it_holds_and_sends_the_rest_to_the_full_path() {
    // Nine superslabs of 16 KiB blocks: 288 slabs for the cache's 256 entries, so (pigeonhole)
    // at least 32 slabs are not in it (H8). Every block is freed the C way: the owned cache's
    // fast path first, the full path (the registry) when it says no. Both must free each block
    // exactly once, and the misses must be there.
    let ctx = ctx(24, false);
    let h = heap(ctx);
    let (c, blocks) = nine_superslabs_of_16_kib_blocks(ctx, h);
    // A pointer that is not a block start, and one that is not ours: refused, nothing written.
    let mut local = [0u64; 4];
    // SAFETY: any address may be offered; neither is freed.
    unsafe {
        assert!(!Heap::try_free_owned(h, blocks[0].add(16)));
        assert!(!Heap::try_free_owned(h, local.as_mut_ptr().cast()));
    }
    let (mut hits, mut misses) = (0, 0);
    for &p in &blocks {
        // SAFETY: ours, handed over, freed once (by one of the two paths).
        if unsafe { Heap::try_free_owned(h, p) } {
            hits += 1;
        } else {
            misses += 1;
            // SAFETY: as above.
            unsafe { free(h, p) };
        }
        if h.sll.is_full(c.index()) {
            h.spill(c);
        }
    }
    assert!(hits > 0 && misses > 0, "hits {hits}, misses {misses}");
    assert_eq!(my_reports(), Vec::<Corrupt>::new());
    // SAFETY: the heap is not used again.
    unsafe { ctx.retire_heap(NonNull::from(h)) };
    assert_eq!(
        ctx.snapshot().held(c.index()),
        0,
        "every block came back once"
    );
}

#[test]
fn a_free_that_misses_the_owned_cache_puts_its_slab_back_in_it() {
    // Nine superslabs of 16 KiB blocks (four to a slab), as above, so some slabs are not in
    // the cache (H8). The facade frees a missed block of its own heap by `free_own_recached`:
    // its slab takes the entry, so the next block of that slab hits, and the cache still
    // names only slabs of owned superslabs.
    let ctx = ctx(24, false);
    let h = heap(ctx);
    let (c, blocks) = nine_superslabs_of_16_kib_blocks(ctx, h);
    let slab_of = |p: *mut u8| p as usize >> SLAB_SHIFT;
    // Two blocks of a slab the cache does not hold (the lookup reads only the cache).
    let (a, b) = blocks
        .iter()
        .enumerate()
        .find_map(|(i, &a)| {
            let b = *blocks[i + 1..]
                .iter()
                .find(|&&b| slab_of(b) == slab_of(a))?;
            // SAFETY: the heap is this thread's; any address may be looked up.
            unsafe { Heap::owned_block(h, a) }
                .is_none()
                .then_some((a, b))
        })
        .expect("a slab outside the cache");
    let slab: &'static SlabMeta = {
        // SAFETY: `a` is a block of a live superslab of ours.
        unsafe { &*Superslab::slab_meta_addr(a) }
    };
    // SAFETY: this heap's own block, given up once.
    unsafe { h.free_own_recached(slab, a) };
    assert_eq!(h.validate(), Ok(()), "H8 holds");
    // SAFETY: ours, given up once.
    let hit = unsafe { Heap::try_free_owned(h, b) };
    assert!(hit, "the slab is cached again");
    for &p in &blocks {
        if p != a && p != b {
            // SAFETY: ours, freed once.
            unsafe { free(h, p) };
            if h.sll.is_full(c.index()) {
                h.spill(c);
            }
        }
    }
    assert_eq!(my_reports(), Vec::<Corrupt>::new());
    // SAFETY: the heap is not used again.
    unsafe { ctx.retire_heap(NonNull::from(h)) };
    assert_eq!(
        ctx.snapshot().held(c.index()),
        0,
        "every block came back once"
    );
}

#[test]
fn list_counts_show_in_snapshots_of_a_live_heap_and_survive_its_exit_exactly() {
    // H13: the fast paths are counted by the lists themselves; a snapshot adds a live heap's
    // list counts, and the exit folds them into the totals, each allocation and free once.
    let ctx = ctx(8, false);
    let h = heap(ctx);
    let c = class_of(48).unwrap();
    let mut live = Vec::new();
    for i in 0..3000usize {
        // SAFETY: the heap is this test thread's own.
        live.push(unsafe { h.alloc(c) });
        if i % 3 == 2 {
            let p = live.swap_remove(i % live.len());
            // SAFETY: ours, freed once.
            unsafe { free(h, p) };
        }
    }
    let s = ctx.snapshot();
    assert_eq!(
        (s.class(c.index()).allocs, s.class(c.index()).frees),
        (3000, 1000)
    );
    for p in live.drain(..) {
        // SAFETY: ours, freed once.
        unsafe { free(h, p) };
    }
    let s = ctx.snapshot();
    assert_eq!(
        (s.class(c.index()).allocs, s.class(c.index()).frees),
        (3000, 3000)
    );
    // SAFETY: the heap is not used again.
    unsafe { ctx.retire_heap(NonNull::from(h)) };
    let s = ctx.snapshot();
    assert_eq!(
        (s.class(c.index()).allocs, s.class(c.index()).frees),
        (3000, 3000),
        "folded once"
    );
}

#[test]
fn free_slabs_of_a_superslab_in_use_give_their_pages_back_at_the_heaps_purge_ticks() {
    // A purge delay of 0: each slow path after a slab goes back runs a tick (H14).
    let os: &'static HeapOs = Box::leak(Box::new(HeapOs::new(16)));
    let registry = os.registry();
    let lru = LruConfig {
        purge_delay_ns: 0,
        ..LruConfig::default()
    };
    let ctx: &'static Ctx = Box::leak(Box::new(Ctx::new(os, registry, lru, false, count_report)));
    let h = heap(ctx);
    let c = class_of(1024).unwrap();
    // SAFETY: the heap is this thread's own.
    let keep = unsafe { h.alloc(class_of(16).unwrap()) };
    // Sixteen slabs of 1 KiB blocks, all freed: beyond what the list and cache keep, the
    // blocks go back to their slabs, and the emptied slabs to the superslab, still in use.
    // SAFETY: the heap is this thread's own.
    let blocks: Vec<*mut u8> = (0..16 * 64).map(|_| unsafe { h.alloc(c) }).collect();
    for b in blocks {
        // SAFETY: ours, freed once.
        unsafe { free(h, b) };
    }
    // A few slow paths of other classes: ticks age the free slabs, then purge them.
    for size in [2048, 4096, 8192, 16384] {
        // SAFETY: the heap is this thread's own; the block is ours, freed once.
        unsafe {
            let p = h.alloc(class_of(size).unwrap());
            free(h, p);
        }
    }
    let purged = ctx.snapshot().bytes(Event::Madvise);
    assert!(
        purged >= 8 * SLAB_SIZE as u64,
        "free slabs of a superslab in use kept their pages: {purged} bytes purged"
    );
    // SAFETY: ours, freed once.
    unsafe { free(h, keep) };
    // SAFETY: not used again.
    unsafe { ctx.retire_heap(NonNull::from(h)) };
    assert_eq!(ctx.snapshot().held(c.index()), 0);
}

/// A superslab passed from one exiting heap to the next within a purge delay keeps the pages of
/// its free slabs: an exit's tick purges only slabs aged at least one delay before (H14, SS16).
/// With a delay of 0, the second exit purges what the first one aged.
#[test]
fn exits_closer_than_a_purge_delay_keep_the_pages_of_free_slabs() {
    const HOUR_NS: u64 = 3_600_000_000_000;
    for delay in [HOUR_NS, 0] {
        let os: &'static HeapOs = Box::leak(Box::new(HeapOs::new(16)));
        let registry = os.registry();
        let lru = LruConfig {
            purge_delay_ns: delay,
            ..LruConfig::default()
        };
        let ctx: &'static Ctx =
            Box::leak(Box::new(Ctx::new(os, registry, lru, false, count_report)));
        let c = class_of(1024).unwrap();
        // A heap fills eight slabs of 1 KiB blocks, frees all but one block and exits: its
        // superslab is abandoned with seven free, dirty slabs, aged by its exit's tick.
        let h = heap(ctx);
        // SAFETY: the heap is this thread's own.
        let blocks: Vec<*mut u8> = (0..8 * 64).map(|_| unsafe { h.alloc(c) }).collect();
        for &b in &blocks[1..] {
            // SAFETY: ours, freed once.
            unsafe { free(h, b) };
        }
        // SAFETY: the heap "exits" with one block out.
        unsafe { ctx.retire_heap(NonNull::from(h)) };
        assert_eq!(ctx.snapshot().count(Event::Abandon), 1);
        // The next heap adopts it (for another class), and exits at once too.
        let h = heap(ctx);
        // SAFETY: the heap is this thread's own; the block is ours, freed once.
        unsafe {
            let p = h.alloc(class_of(16).unwrap());
            free(h, p);
        }
        assert_eq!(ctx.snapshot().count(Event::Adopt), 1);
        // SAFETY: not used again.
        unsafe { ctx.retire_heap(NonNull::from(h)) };
        let purged = ctx.snapshot().bytes(Event::Madvise);
        if delay == HOUR_NS {
            assert_eq!(purged, 0, "two exits a moment apart purged free slabs");
        } else {
            assert!(
                purged >= 6 * SLAB_SIZE as u64,
                "the aged free slabs kept their pages: {purged} bytes purged"
            );
        }
        // The last block goes back through a third heap, which adopts the superslab.
        let h = heap(ctx);
        // SAFETY: handed over; freed once.
        unsafe { free(h, blocks[0]) };
        // SAFETY: not used again.
        unsafe { ctx.retire_heap(NonNull::from(h)) };
        assert_eq!(ctx.abandoned.len(), 0);
    }
}

/// A `report` that panics would unwind out of the middle of a heap operation; the context
/// aborts instead. Run in a child process (this test binary, filtered to this test).
#[test]
fn a_report_that_panics_aborts_the_process() {
    const NAME: &str = "tests::a_report_that_panics_aborts_the_process";
    if child::is_child(NAME) {
        let os: &'static HeapOs = Box::leak(Box::new(HeapOs::new(2)));
        let registry = os.registry();
        let ctx = Ctx::new(os, registry, LruConfig::default(), false, |_| {
            panic!("the report panics")
        });
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            ctx.report(Corrupt::DoubleFree(16))
        }));
        // Reached only if the panic unwound out of `report`.
        std::process::exit(if unwound.is_err() { 3 } else { 4 });
    }
    let out = child::output(child::command(NAME, false, &[]));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(6), // SIGABRT
        "{:?}: {}",
        out.status,
        std::string::String::from_utf8_lossy(&out.stderr)
    );
}

/// H8: a superslab's slabs leave the owned cache when the superslab leaves the heap, here by
/// being abandoned at exit with a block out; the heap that claims it enters them in its own.
#[test]
fn a_superslab_given_up_leaves_no_entry_in_the_owned_cache() {
    let ctx = ctx(8, false);
    let h = heap(ctx);
    let c = class_of(100).unwrap();
    // SAFETY: the heap is this test thread's own.
    let kept = unsafe { h.alloc(c) };
    let entered = |cache: &[*const SlabMeta]| {
        cache
            .iter()
            .filter(|&&e| !core::ptr::eq(e, EMPTY_SLOT))
            .count()
    };
    assert!(
        entered(&h.owned_slabs) > 0,
        "its superslab's slabs are entered"
    );
    let at = NonNull::from(h);
    // SAFETY: the heap's "thread" is done with it; `kept` stays out, so its superslab is
    // abandoned.
    unsafe { ctx.retire_heap(at) };
    assert_eq!(ctx.abandoned.len(), 1);
    // SAFETY: a retired heap's memory stays mapped (and unused until the next new_heap).
    let cache = unsafe { (*at.as_ptr()).owned_slabs };
    assert_eq!(
        entered(&cache),
        0,
        "no entry left for the abandoned superslab"
    );
    let other = heap(ctx);
    // SAFETY: the new heap is this thread's; `kept` is handed over and freed once (a claim).
    unsafe { free(other, kept) };
    assert_eq!(ctx.abandoned.len(), 0, "claimed");
    assert!(entered(&other.owned_slabs) > 0, "entered by its new owner");
    // SAFETY: not used again.
    unsafe { ctx.retire_heap(NonNull::from(other)) };
    assert!(my_reports().is_empty());
}

/// `validate`'s answer, as the invariant's ID (or the report of a bad link).
fn broken(r: Result<(), Corrupt>) -> Option<&'static str> {
    match r {
        Ok(()) => None,
        Err(Corrupt::Invariant { id, .. }) => Some(id),
        Err(Corrupt::FreeList(_)) => Some("H16 link"),
        Err(e) => panic!("not a validation report: {e:?}"),
    }
}

#[test]
fn validate_names_the_invariant_a_corrupted_heap_breaks() {
    let ctx = ctx(16, false);
    let h = heap(ctx);
    let class = class_of(64).unwrap();
    // SAFETY: the heap is this test thread's own; every block is freed once.
    let blocks: Vec<*mut u8> = (0..200).map(|_| unsafe { h.alloc(class) }).collect();
    for &p in &blocks[..100] {
        // SAFETY: as above.
        unsafe { free(h, p) };
    }
    assert_eq!(broken(h.validate()), None, "a heap in use");
    assert_eq!(broken(h.validate_class(class)), None);
    assert!(h.sll.len(class.index()) >= 2, "blocks on the thread list");

    let tiny = h.tiny[3];
    h.tiny[3] = SizeClass::new(tiny.index() ^ 1).unwrap();
    assert_eq!(broken(h.validate()), Some("H12"), "the tiny table");
    h.tiny[3] = tiny;

    h.owned_count += 1;
    assert_eq!(broken(h.validate()), Some("H7"), "the owned count");
    h.owned_count -= 1;

    let cap = h.sll.cap(class.index());
    h.sll.set_cap(class.index(), cap + 1).unwrap();
    assert_eq!(
        broken(h.validate_class(class)),
        Some("H11"),
        "a bound not booked"
    );
    h.sll.set_cap(class.index(), cap).unwrap();

    // A free slab of an owned superslab as another class's ring.
    // SAFETY: owned: live and ours.
    let ss = unsafe { &*h.owned };
    let free_slab: *const SlabMeta = &ss.slabs[SLABS - 1];
    // SAFETY: ours.
    assert!(!unsafe { (*free_slab).local() }.in_use);
    let other = class_of(1000).unwrap();
    assert!(h.current[other.index()].is_null());
    h.current[other.index()] = free_slab;
    assert_eq!(
        broken(h.validate_class(other)),
        Some("H3"),
        "a free slab on a ring"
    );
    h.current[other.index()] = null();

    // An owned-cache entry naming a slab of a superslab the heap does not own.
    let h2 = heap(ctx);
    // SAFETY: the second heap is this thread's too.
    let q = unsafe { h2.alloc(class) };
    let foreign = Superslab::slab_meta_addr(q);
    let slot = owned_slot(slab_number(q as usize));
    let saved = h.owned_slabs[slot];
    h.owned_slabs[slot] = foreign;
    assert_eq!(broken(h.validate()), Some("H8"), "the owned cache");
    h.owned_slabs[slot] = saved;

    // A thread list's link overwritten: reported as the checked pop reports it.
    let head = h.sll.head(class.index());
    // SAFETY: a free block of ours on the list.
    let link = unsafe { head.cast::<usize>().read() };
    // SAFETY: as above; restored below.
    unsafe { head.cast::<usize>().write(0x1234_5670) };
    assert_eq!(h.validate(), Err(Corrupt::FreeList(head as usize)));
    // SAFETY: as above.
    unsafe { head.cast::<usize>().write(link) };

    assert_eq!(broken(h.validate()), None, "every change undone");
    for &p in &blocks[100..] {
        // SAFETY: as above.
        unsafe { free(h, p) };
    }
    // SAFETY: as above.
    unsafe { free(h2, q) };
    // SAFETY: the heaps' last use.
    unsafe {
        ctx.retire_heap(NonNull::from(h));
        ctx.retire_heap(NonNull::from(h2));
    }
    assert!(my_reports().is_empty());
}

/// H7's exception: a superslab whose only free slab is slab 0 (too short for the largest
/// classes) goes to the back of the owned list, behind full ones; validation accepts it there.
#[test]
fn a_superslab_with_only_slab_0_free_may_follow_a_full_one() {
    let ctx = ctx(16, false);
    let h = heap(ctx);
    let big = class_of(60 * 1024).unwrap();
    assert!(big.size() > SLAB_SIZE - hakmem_superslab::HEADER_SIZE);
    // Slab 0 of the first superslab goes to a small class, then large blocks fill the rest.
    // SAFETY: the heap is this test thread's own; each block is freed once, below.
    let small = unsafe { h.alloc(class_of(64).unwrap()) };
    let mut blocks = Vec::new();
    while h.owned_count < 3 {
        // SAFETY: as above.
        blocks.push(unsafe { h.alloc(big) });
        assert_eq!(broken(h.validate()), None, "after {} blocks", blocks.len());
    }
    // The order is then: the newest superslab (free slabs), the first (full), the second (only
    // slab 0 free).
    // SAFETY: owned superslabs are live and ours.
    let tail = unsafe { &*h.owned_tail };
    // SAFETY: ours.
    let in_use = unsafe { tail.slabs_in_use() }.count();
    assert_eq!(in_use, SLABS - 1, "only slab 0 free at the back");
    for p in blocks {
        // SAFETY: as above.
        unsafe { free(h, p) };
    }
    // SAFETY: as above.
    unsafe { free(h, small) };
    // SAFETY: the heap's last use.
    unsafe { ctx.retire_heap(NonNull::from(h)) };
    assert!(my_reports().is_empty());
}

#[test]
fn the_fast_path_follows_links_into_owned_superslabs_only() {
    let ctx = ctx(16, false);
    let c = class_of(1024).unwrap();
    let h = heap(ctx);
    let other = heap(ctx);
    let ss = |p: *mut u8| p as usize & !(SS_SIZE - 1);
    // SAFETY: both heaps are this test thread's own; the blocks are freed by their owner, each
    // while it is out; links are rewritten only in blocks on `h`'s list.
    unsafe {
        // `h` owns two superslabs: `first` in one, `far` in the other.
        let first = h.alloc(c);
        let mut held = Vec::new();
        let far = loop {
            let p = h.alloc(c);
            assert!(!p.is_null());
            if ss(p) != ss(first) {
                break p;
            }
            held.push(p);
        };
        while !h.sll.is_empty(c.index()) {
            held.push(h.alloc(c));
        }
        assert!(h.sll.cap(c.index()) >= 2);
        let q = other.alloc(c);
        assert!(
            ss(q) != ss(first) && ss(q) != ss(far),
            "another heap's superslab"
        );

        // far -> first: a link into another superslab of `h`'s, followed on the fast path.
        free(h, first);
        free(h, far);
        assert_eq!(Heap::alloc_fast(h, c), far);
        // first -> the end: left to the slow path, which pops it.
        assert!(Heap::alloc_fast(h, c).is_null());
        assert_eq!(h.alloc(c), first);
        assert!(my_reports().is_empty());

        // Forged links, each correctly encoded: into another heap's superslab, and to an
        // address in an owned superslab that is no block start. The fast path refuses them
        // and changes nothing; the slow path hands the head out, reports it and drops the rest.
        let key = h.sll.link_key();
        for forged in [q, first.add(8)] {
            let next = held.pop().unwrap();
            free(h, next);
            free(h, far);
            key.set_next(far, forged);
            assert!(Heap::alloc_fast(h, c).is_null());
            assert_eq!((h.sll.head(c.index()), h.sll.len(c.index())), (far, 2));
            assert_eq!(h.alloc(c), far);
            assert_eq!(my_reports(), std::vec![Corrupt::FreeList(far as usize)]);
            assert!(
                h.sll.is_empty(c.index()),
                "the rest dropped ({next:?} leaks)"
            );
        }
        free(other, q);
        ctx.retire_heap(NonNull::from(other));
        ctx.retire_heap(NonNull::from(h));
    }
}

/// H18: an exiting thread's heap is parked whole and the next thread's `take_or_new_heap` gets
/// it back with its blocks, superslab and id; remote frees made while it was parked wait on
/// its remote stacks for the taker; `new_heap` never hands it out; and `retire_parked` retires
/// it as an exit does (H5), abandoning what still holds blocks.
#[test]
fn a_parked_heap_goes_whole_to_the_next_thread_and_only_to_it() {
    let ctx = ctx(16, false);
    let c = class_of(48).unwrap();
    let first = ctx.take_or_new_heap().unwrap();
    // SAFETY: this test thread is the heap's only user until it parks it.
    let (id, held) = unsafe {
        let h = &mut *first.as_ptr();
        let blocks: Vec<usize> = (0..1000).map(|_| h.alloc(c) as usize).collect();
        for &b in &blocks[..500] {
            free(h, b as *mut u8);
        }
        (h.id(), blocks[500..].to_vec())
    };
    assert_eq!(ctx.live_heaps(), 1);
    // SAFETY: made by take_or_new_heap; not used again by this "thread".
    unsafe { ctx.park_heap(first) };
    assert_eq!(ctx.live_heaps(), 0, "a parked heap is no live thread's");
    assert_eq!(ctx.snapshot().count(Event::Abandon), 0, "nothing abandoned");
    // Remote frees into the parked heap's superslab go onto its remote stacks.
    for &b in &held[..250] {
        remote_free(ctx, b as *mut u8);
    }
    // A private heap never gets a parked one.
    let private = ctx.new_heap().unwrap();
    assert_ne!(private, first);
    let next = ctx.take_or_new_heap().unwrap();
    assert_eq!(next, first, "the next thread takes the parked heap");
    assert_eq!(ctx.live_heaps(), 2);
    // SAFETY: the taker is this thread now, the heap's only user.
    let h = unsafe { &mut *next.as_ptr() };
    assert_eq!(h.id(), id, "its slabs' owner");
    // Its own blocks are freed as its owner frees them, and its allocations reuse its blocks
    // (the lists it kept, then the drained remote frees) without a new superslab.
    for &b in &held[250..] {
        // SAFETY: ours, freed once.
        match unsafe { hakmem_route::classify(&ctx.registry, b as *mut u8) } {
            hakmem_route::PtrRoute::Small(_, slab) => assert_eq!(slab.owner(), id),
            _ => unreachable!(),
        }
        // SAFETY: ours, freed once.
        unsafe { free(h, b as *mut u8) };
    }
    // SAFETY: ours.
    let again: Vec<*mut u8> = (0..1000).map(|_| unsafe { h.alloc(c) }).collect();
    assert_eq!(
        ctx.snapshot().count(Event::SsCreated),
        1,
        "reused, not grown"
    );
    // Parked again with blocks out, then retired by `retire_parked`: abandoned, as at exit.
    // SAFETY: made by take_or_new_heap; not used again.
    unsafe {
        ctx.retire_heap(private);
        ctx.park_heap(next);
    }
    ctx.retire_parked();
    assert_eq!(ctx.snapshot().count(Event::Abandon), 1);
    let fresh = ctx.take_or_new_heap().unwrap();
    // SAFETY: this thread's heap.
    let f = unsafe { &mut *fresh.as_ptr() };
    assert_ne!(f.id(), id, "a retired heap is made anew, with a new id");
    for p in again {
        // SAFETY: blocks of the retired heap, each freed once (orphan or adopter frees).
        unsafe { free(f, p) };
    }
    // SAFETY: not used again.
    unsafe { ctx.retire_heap(fresh) };
    assert_eq!(ctx.snapshot().held(c.index()), 0);
    assert!(my_reports().is_empty());
}

/// H18: at most `PARK_MAX` heaps wait; an exit that finds the set full retires its heap (H5).
#[test]
fn a_full_set_of_parked_heaps_retires_the_next_exit() {
    let ctx = ctx(16, false);
    let c = class_of(100).unwrap();
    let heaps: Vec<NonNull<Heap>> = (0..PARK_MAX + 1)
        .map(|_| ctx.take_or_new_heap().unwrap())
        .collect();
    let mut out = Vec::new();
    for h in &heaps {
        // SAFETY: each heap is this thread's alone here.
        out.push(unsafe { (*h.as_ptr()).alloc(c) });
    }
    for h in &heaps {
        // SAFETY: made by take_or_new_heap; not used again.
        unsafe { ctx.park_heap(*h) };
    }
    assert_eq!(
        ctx.snapshot().count(Event::Abandon),
        1,
        "the exit past the bound"
    );
    ctx.retire_parked();
    assert_eq!(ctx.snapshot().count(Event::Abandon), PARK_MAX as u64 + 1);
    for p in out {
        remote_free(ctx, p);
    }
    assert_eq!(ctx.snapshot().held(c.index()), 0);
    assert!(my_reports().is_empty());
}

/// Allocates blocks of `c` on `h` until it maps a superslab or adopts one, and returns them.
fn alloc_until_growth(ctx: &'static Ctx, h: &mut Heap, c: SizeClass) -> Vec<*mut u8> {
    let before = ctx.snapshot();
    let grew = |s: &Snapshot| {
        s.count(Event::SsCreated) > before.count(Event::SsCreated)
            || s.count(Event::Adopt) > before.count(Event::Adopt)
    };
    let mut out = Vec::new();
    while !grew(&ctx.snapshot()) {
        assert!(out.len() < 100_000, "the heap never grew");
        // SAFETY: this thread's heap.
        out.push(unsafe { h.alloc(c) });
    }
    out
}

/// H18: a running heap about to map a superslab first retires a parked heap that no thread
/// took since it was parked, and adopts what it abandoned; a parked heap with a take after it
/// (threads still starting) stays parked for the next thread.
#[test]
fn a_growing_heap_retires_a_parked_heap_no_thread_came_for() {
    let ctx = ctx(16, false);
    let c = class_of(8192).unwrap();
    let running = ctx.take_or_new_heap().unwrap();
    // SAFETY: this thread's heap.
    let r = unsafe { &mut *running.as_ptr() };
    // SAFETY: a second "thread's" heap, used by this thread alone until parked.
    let exited = unsafe { &mut *ctx.take_or_new_heap().unwrap().as_ptr() };
    // The exited thread leaves one block out (held by the running one), the rest freed.
    // SAFETY: its own heap; its own blocks, freed once.
    let kept = unsafe {
        let its: Vec<*mut u8> = (0..10).map(|_| exited.alloc(c)).collect();
        for &p in &its[1..] {
            free(exited, p);
        }
        its[0]
    };
    // SAFETY: made by take_or_new_heap; not used again.
    unsafe { ctx.park_heap(NonNull::from(exited)) };
    // The running heap needs a superslab: the parked heap is retired (its superslab
    // abandoned: `kept` is out) and adopted, not a fresh one mapped.
    let created = ctx.snapshot().count(Event::SsCreated);
    let mut all = alloc_until_growth(ctx, r, c);
    let s = ctx.snapshot();
    assert_eq!(s.count(Event::Abandon), 1, "the parked heap was retired");
    assert_eq!(s.count(Event::Adopt), 1, "and its superslab adopted");
    assert_eq!(s.count(Event::SsCreated), created, "nothing mapped");
    // Now with a take after the park: a thread started since, so the parked heap stays.
    // SAFETY: as above, one "thread" after another.
    let (a, b, kept_a) = unsafe {
        let a = ctx.take_or_new_heap().unwrap();
        let b = ctx.take_or_new_heap().unwrap();
        let kept_a = (*a.as_ptr()).alloc(c);
        ctx.park_heap(a);
        ctx.park_heap(b);
        (a, b, kept_a)
    };
    // SAFETY: parked: nobody uses it.
    let a_id = unsafe { (*a.as_ptr()).id() };
    let again = ctx.take_or_new_heap().unwrap();
    assert_eq!(again, b, "the most recent is taken");
    let created = ctx.snapshot().count(Event::SsCreated);
    all.extend(alloc_until_growth(ctx, r, c));
    let s = ctx.snapshot();
    assert_eq!(s.count(Event::Abandon), 1, "nothing retired");
    assert_eq!(
        s.count(Event::SsCreated),
        created + 1,
        "a fresh superslab instead"
    );
    let taken = ctx.take_or_new_heap().unwrap();
    // SAFETY: this thread's heap now.
    let t = unsafe { &mut *taken.as_ptr() };
    assert_eq!((taken, t.id()), (a, a_id), "still parked, and taken");
    // SAFETY: its own block, freed once.
    unsafe { free(t, kept_a) };
    for p in all {
        // SAFETY: the running heap's blocks, each freed once.
        unsafe { free(r, p) };
    }
    // SAFETY: the parked-and-taken heaps and the running one, not used again.
    unsafe {
        free(r, kept);
        ctx.retire_heap(a);
        ctx.retire_heap(again);
        ctx.retire_heap(running);
    }
    assert_eq!(ctx.snapshot().held(c.index()), 0);
    assert!(my_reports().is_empty());
}

/// The superslabs a heap has taken, in order, while it allocates `class` until it has
/// `n` of them; the blocks allocated.
fn alloc_until_superslabs(h: &mut Heap, class: SizeClass, n: usize) -> (Vec<usize>, Vec<*mut u8>) {
    let (mut bases, mut blocks) = (Vec::new(), Vec::new());
    while bases.len() < n {
        // SAFETY: the heap is this thread's own.
        let p = unsafe { h.alloc(class) };
        assert!(!p.is_null(), "the arena holds {n} superslabs");
        let base = p as usize & !(SS_SIZE - 1);
        if !bases.contains(&base) {
            bases.push(base);
        }
        blocks.push(p);
    }
    (bases, blocks)
}

/// HG1: a thread's heap that fills its superslabs has each one after its fourth advised for
/// huge pages before its first touch, but for one in every `HUGE_RUN + 1`, which goes without;
/// one whose slabs are carved sparsely (one 36 KiB block per 64 KiB slab) is not; a private
/// heap's are from its second one on. Freed and retired, their advice is gone.
#[test]
fn a_heap_that_fills_its_superslabs_gets_huge_pages_and_a_sparse_one_does_not() {
    for (size, private) in [(1024, false), (36 << 10, false), (1024, true)] {
        let os: &'static HeapOs = Box::leak(Box::new(HeapOs::new(24)));
        let mut ctx = Ctx::new(os, os.registry(), LruConfig::default(), false, count_report);
        // No first touch counts as slow: the outcome does not depend on the clock.
        ctx.huge_slow_ns = u64::MAX;
        let ctx: &'static Ctx = Box::leak(Box::new(ctx));
        let heap = if private {
            ctx.new_private_heap().unwrap()
        } else {
            ctx.new_heap().unwrap()
        };
        // SAFETY: a fresh heap, used by this thread only.
        let h = unsafe { &mut *heap.as_ptr() };
        let c = class_of(size).unwrap();
        let (bases, blocks) = alloc_until_superslabs(h, c, HUGE_AFTER + HUGE_RUN + 2);
        let advised: Vec<bool> = bases.iter().map(|&b| os.is_huge(b)).collect();
        let after = match (size, private) {
            (1024, false) => HUGE_AFTER,
            (1024, true) => HUGE_AFTER_PRIVATE,
            _ => usize::MAX,
        };
        let want: Vec<bool> = (0..bases.len())
            .map(|i| i >= after && (i - after) % (HUGE_RUN + 1) != HUGE_RUN)
            .collect();
        assert_eq!(advised, want, "{size}-byte blocks, private: {private}");
        assert_eq!(os.late_advice(), 0, "advice after the first touch");
        for b in blocks {
            // SAFETY: ours, freed once.
            unsafe { free(h, b) };
        }
        // SAFETY: not used again.
        unsafe {
            if private {
                ctx.destroy_heap(heap);
            } else {
                ctx.retire_heap(heap);
            }
        }
        assert!(
            bases.iter().all(|&b| !os.is_huge(b)),
            "a released superslab keeps its advice"
        );
        assert_eq!(my_reports(), []);
    }
}

/// HG1: after a slow first touch of an advised superslab, the next `HUGE_BACKOFF` superslabs a
/// heap would advise go without; an unknown time counts for nothing. (The growth path's own
/// timings count as fast here: the clock does not decide the outcome.)
#[test]
fn a_slow_huge_first_touch_stops_the_advice_for_a_while() {
    let os: &'static HeapOs = Box::leak(Box::new(HeapOs::new(16)));
    let mut ctx = Ctx::new(os, os.registry(), LruConfig::default(), false, count_report);
    ctx.huge_slow_ns = u64::MAX - 1;
    let ctx: &'static Ctx = Box::leak(Box::new(ctx));
    ctx.huge_touched(None);
    assert_eq!(ctx.huge_skip.load(Ordering::Relaxed), 0);
    ctx.huge_touched(Some(u64::MAX));
    assert_eq!(ctx.huge_skip.load(Ordering::Relaxed), HUGE_BACKOFF);
    let h = heap(ctx);
    let c = class_of(1024).unwrap();
    let (mut bases, mut blocks) = alloc_until_superslabs(h, c, HUGE_AFTER + 2);
    assert!(
        bases.iter().all(|&b| !os.is_huge(b)),
        "advised while backing off"
    );
    // Only the superslabs a heap would have advised count.
    assert_eq!(ctx.huge_skip.load(Ordering::Relaxed), HUGE_BACKOFF - 2);
    // Once the back-off has run out, the advice comes back.
    ctx.huge_skip.store(1, Ordering::Relaxed);
    while bases.len() < HUGE_AFTER + 4 {
        // SAFETY: the heap is this thread's own.
        let p = unsafe { h.alloc(c) };
        let base = p as usize & !(SS_SIZE - 1);
        if !bases.contains(&base) {
            bases.push(base);
        }
        blocks.push(p);
    }
    assert!(
        !os.is_huge(bases[HUGE_AFTER + 2]),
        "the back-off's last superslab"
    );
    assert!(os.is_huge(bases[HUGE_AFTER + 3]), "the advice is back");
    for b in blocks {
        // SAFETY: ours, freed once.
        unsafe { free(h, b) };
    }
    // SAFETY: not used again.
    unsafe { ctx.retire_heap(NonNull::from(h)) };
    assert_eq!(my_reports(), []);
}
