//! `hakmem::Heap`: collections in a private heap, single frees reused, remote frees through
//! the global free, big blocks, reset, collect, moving a heap between threads, and drops with
//! live blocks and remote frees still waiting. Every check reads the heap's own stats, which
//! no other test's thread changes.
use allocator_api2::boxed::Box as HBox;
use allocator_api2::vec::Vec as HVec;
use hakmem::Heap;
use std::collections::HashSet;

#[global_allocator]
static A: hakmem::HakMem = hakmem::HakMem;

const SS: u64 = 2 << 20;

#[test]
fn single_frees_are_reused_within_the_heap() {
    let heap = Heap::new();
    let a = HBox::new_in([1u64; 8], &heap);
    let at = &*a as *const [u64; 8] as usize;
    assert_eq!(heap.stats().live_blocks(), 1);
    assert_eq!(heap.stats().live_bytes(), 64);
    assert_eq!(heap.stats().mapped_bytes(), SS);
    drop(a);
    assert_eq!(heap.stats().live_blocks(), 0);
    let b = HBox::new_in([2u64; 8], &heap);
    assert_eq!(
        &*b as *const [u64; 8] as usize, at,
        "the freed block comes back"
    );
}

#[test]
fn blocks_of_a_heap_are_its_own_and_distinct() {
    let heap = Heap::new();
    let mut boxes: Vec<HBox<[u8; 48], &Heap>> = Vec::new();
    for i in 0..20_000u32 {
        boxes.push(HBox::new_in([i as u8; 48], &heap));
    }
    let addrs: HashSet<usize> = boxes.iter().map(|b| b.as_ptr() as usize).collect();
    assert_eq!(addrs.len(), boxes.len());
    for (i, b) in boxes.iter().enumerate() {
        assert!(b.iter().all(|&x| x == i as u8), "block {i} was overwritten");
    }
    let s = heap.stats();
    assert_eq!(s.live_blocks(), 20_000);
    assert_eq!(s.live_bytes(), 20_000 * 48);
    // The thread's own heap did not serve them: the global allocator's blocks are elsewhere.
    let global = Box::new([0u8; 48]);
    assert!(!addrs.contains(&(global.as_ptr() as usize)));
}

#[test]
fn collections_grow_and_shrink_in_a_heap() {
    let heap = Heap::new();
    let mut v = HVec::new_in(&heap);
    for i in 0..300_000u64 {
        v.push(i); // past the small tier: its big buffers come from the global tiers
    }
    assert_eq!(v.iter().sum::<u64>(), 300_000 * 299_999 / 2);
    v.truncate(10);
    v.shrink_to_fit();
    assert_eq!(&v[..], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    let mut map = hashbrown::HashMap::new_in(&heap);
    for i in 0..50_000u32 {
        map.insert(i, i.to_string());
    }
    for i in 0..50_000u32 {
        if i % 3 != 0 {
            map.remove(&i);
        }
    }
    assert_eq!(map.len(), 16_667);
    assert_eq!(map[&300], "300");
    drop(map);
    drop(v);
    assert_eq!(heap.stats().live_blocks(), 0);
}

#[test]
fn a_block_freed_by_another_thread_through_the_global_free_is_taken_back() {
    let heap = Heap::new();
    let blocks: Vec<usize> = (0..1000)
        .map(|i| HBox::into_raw(HBox::new_in([i as u8; 32], &heap)) as *mut u8 as usize)
        .collect();
    assert_eq!(heap.stats().live_blocks(), 1000);
    let (mine, theirs) = blocks.split_at(400);
    let theirs = theirs.to_vec();
    std::thread::spawn(move || {
        for p in theirs {
            // SAFETY: a live block of hakmem's, given up (the heap outlives this thread's join).
            unsafe { hakmem::raw::free(p as *mut u8) };
        }
    })
    .join()
    .unwrap();
    assert_eq!(
        heap.stats().live_blocks(),
        400,
        "the remote frees are drained"
    );
    for &p in mine {
        // SAFETY: blocks of this heap, given back with their layout.
        drop(unsafe { HBox::from_raw_in(p as *mut [u8; 32], &heap) });
    }
    assert_eq!(heap.stats().live_blocks(), 0);
    heap.collect();
    assert_eq!(
        heap.stats().mapped_bytes(),
        0,
        "collect gives the empty superslab back"
    );
}

#[test]
fn dropping_a_heap_with_live_blocks_and_waiting_remote_frees() {
    for round in 0..3 {
        let heap = Heap::new();
        let blocks: Vec<usize> = (0..50_000)
            .map(|i| HBox::into_raw(HBox::new_in([i as u64; 4], &heap)) as *mut u8 as usize)
            .collect();
        let remote: Vec<usize> = blocks.iter().step_by(7).copied().collect();
        std::thread::spawn(move || {
            for p in remote {
                // SAFETY: a live block of hakmem's, given up before the heap's drop.
                unsafe { hakmem::raw::free(p as *mut u8) };
            }
        })
        .join()
        .unwrap();
        // Dropped whole: the remote frees still wait on their stacks; the rest are live.
        drop(heap);
        // The superslabs are reused (from the cache of empty regions) by a new heap, whose
        // blocks must all be distinct and keep what is written to them.
        let heap = Heap::new();
        let boxes: Vec<_> = (0..60_000u64)
            .map(|i| HBox::new_in([i ^ round; 4], &heap))
            .collect();
        let addrs: HashSet<usize> = boxes.iter().map(|b| b.as_ptr() as usize).collect();
        assert_eq!(addrs.len(), boxes.len());
        for (i, b) in boxes.iter().enumerate() {
            assert_eq!(b[3], i as u64 ^ round);
        }
        assert_eq!(heap.stats().live_blocks(), 60_000);
        core::mem::forget(boxes);
    }
}

#[test]
fn reset_empties_the_heap_and_keeps_it() {
    let mut heap = Heap::new();
    {
        let mut v = HVec::new_in(&heap);
        for i in 0..10_000 {
            v.push(HBox::new_in(i, &heap));
        }
        core::mem::forget(v);
    }
    // The boxes; the vector's buffer (160 KB) is a big block of the global tiers.
    assert_eq!(heap.stats().live_blocks(), 10_000);
    heap.reset();
    let s = heap.stats();
    assert_eq!((s.live_blocks(), s.mapped_bytes()), (0, 0));
    let b = HBox::new_in(5u32, &heap);
    assert_eq!(*b, 5);
    assert_eq!(heap.stats().live_blocks(), 1);
}

#[test]
fn a_heap_moves_to_another_thread() {
    let heap = Heap::new();
    let kept = HBox::into_raw(HBox::new_in(41u64, &heap)) as usize;
    let heap = std::thread::spawn(move || {
        // SAFETY: the block of this heap allocated above, given back with its layout.
        let b = unsafe { HBox::from_raw_in(kept as *mut u64, &heap) };
        assert_eq!(*b, 41);
        drop(b);
        let v: HVec<u32, &Heap> = {
            let mut v = HVec::new_in(&heap);
            v.extend(0..100);
            v
        };
        assert_eq!(v.len(), 100);
        drop(v);
        heap
    })
    .join()
    .unwrap();
    assert_eq!(heap.stats().live_blocks(), 0);
}

#[test]
fn zeroed_and_aligned_requests() {
    use allocator_api2::alloc::Allocator;
    use core::alloc::Layout;
    let heap = Heap::new();
    let a = &heap;
    for (size, align) in [
        (1, 1),
        (24, 8),
        (100, 64),
        (4000, 4096),
        (70_000, 16),
        (3, 65536),
    ] {
        let layout = Layout::from_size_align(size, align).unwrap();
        let p = a.allocate(layout).unwrap();
        assert!(p.len() >= size);
        let p = p.cast::<u8>();
        assert_eq!(p.as_ptr() as usize % align, 0, "{size} aligned to {align}");
        // SAFETY: `size` bytes of the block just allocated.
        unsafe { p.as_ptr().write_bytes(0xAB, size) };
        // SAFETY: allocated above with this layout.
        unsafe { a.deallocate(p, layout) };
        let z = a.allocate_zeroed(layout).unwrap().cast::<u8>();
        // SAFETY: `size` bytes of the block just allocated.
        assert!((0..size).all(|i| unsafe { *z.as_ptr().add(i) } == 0));
        // SAFETY: allocated above with this layout.
        unsafe { a.deallocate(z, layout) };
    }
    assert_eq!(heap.stats().live_blocks(), 0);
}
