#![cfg(not(loom))]
extern crate std;
use super::*;
use hakmem_registry::Kind;
use std::boxed::Box;
use std::vec::Vec;

struct World {
    os: HeapOs,
    registry: Registry,
    stats: GlobalStats,
}

impl World {
    fn new() -> Box<Self> {
        let os = HeapOs::new(32);
        let registry = os.registry();
        Box::new(World {
            os,
            registry,
            stats: GlobalStats::new(),
        })
    }
    fn env(&self) -> Env<'_> {
        Env {
            os: &self.os,
            registry: &self.registry,
            stats: &self.stats,
        }
    }
}

#[test]
fn header_fits_and_pointers_find_their_superslab_and_slab() {
    let w = World::new();
    let ss = Superslab::create(&w.env(), 7).unwrap();
    assert_eq!(ss.base() % SS_SIZE, 0);
    assert_eq!(
        w.registry.lookup(ss.base() + 12345),
        Some((ss.base(), Kind::Superslab))
    );
    // SAFETY: we own the superslab.
    let slab = unsafe { ss.alloc_slab(3, 64) }.unwrap();
    let mut blocks = Vec::new();
    // SAFETY: we own the slab.
    let (n, _) = unsafe { slab.alloc_batch(10, |b| blocks.push(b)) };
    assert_eq!(n, 10);
    for &b in &blocks {
        assert_eq!(b as usize % 16, 0);
        // SAFETY: b lies in a live superslab.
        let found = unsafe { Superslab::of(b) };
        assert_eq!(found.base(), ss.base());
        assert!(core::ptr::eq(found.slab_of(b), slab));
        // SAFETY: we own the slab; the second address is only compared, never dereferenced.
        let (start, inner) = unsafe { (slab.is_block(b), slab.is_block(b.add(16))) };
        assert!(start && !inner);
    }
    // Slab 0 starts at the base (SS14), and the header never overlaps a block.
    assert_eq!(blocks[0] as usize, ss.base());
    let header = ss as *const Superslab as usize;
    assert_eq!(header, ss.base() + SLAB_SIZE - HEADER_SIZE);
    assert!(blocks.iter().all(|&b| b as usize + 64 <= header));
    assert_eq!(slab.owner(), 7);
}

#[test]
fn slab_zero_fills_up_to_the_header_and_every_slab_starts_at_its_base() {
    // SS14: for sizes that divide the slab and sizes that do not, slab 0 holds exactly the
    // blocks below the header, and every block is found by its low bits.
    for size in [16u32, 48, 1024, 3072, 16384] {
        let w = World::new();
        let ss = Superslab::create(&w.env(), 1).unwrap();
        let header = ss as *const Superslab as usize;
        // SAFETY: we own the superslab and its slabs.
        unsafe {
            let s0 = ss.alloc_slab(2, size).unwrap();
            let s1 = ss.alloc_slab(2, size).unwrap();
            let mut b0 = Vec::new();
            let mut b1 = Vec::new();
            s0.alloc_batch(u32::MAX, |b| b0.push(b as usize));
            s1.alloc_batch(u32::MAX, |b| b1.push(b as usize));
            assert_eq!(
                b0.len(),
                (SLAB_SIZE - HEADER_SIZE) / size as usize,
                "size {size}"
            );
            assert_eq!(b1.len(), SLAB_SIZE / size as usize, "size {size}");
            assert_eq!((b0[0], b1[0]), (ss.base(), ss.base() + SLAB_SIZE));
            assert!(
                b0.iter().all(|&b| b + size as usize <= header),
                "size {size}"
            );
            for (slab, blocks) in [(s0, &b0), (s1, &b1)] {
                assert_eq!(slab.carved(), blocks.len() as u64);
                for (i, &b) in blocks.iter().enumerate() {
                    assert_eq!(slab.block_index(b as *const u8), i as u64);
                    if size > 16 {
                        assert!(slab.block_index((b + 16) as *const u8) >= 1 << 32);
                    }
                }
            }
            // The header's own addresses are no block of slab 0.
            let carved = b0.len() as u64;
            for a in (header..ss.base() + SLAB_SIZE).step_by(16) {
                assert!(
                    s0.block_index(a as *const u8) >= carved,
                    "size {size} at {a:#x}"
                );
            }
        }
    }
}

#[test]
fn slab_accounting_and_double_free_detection() {
    let w = World::new();
    let ss = Superslab::create(&w.env(), 1).unwrap();
    // SAFETY: we own everything here.
    unsafe {
        let slab = ss.alloc_slab(0, 16).unwrap();
        let mut b = Vec::new();
        slab.alloc_batch(3, |x| b.push(x));
        assert_eq!(slab.local().used, 3);
        assert_eq!(slab.free_local(b[0]), Ok(false));
        assert_eq!(
            slab.free_local(b[0]),
            Err(Corrupt::DoubleFree(b[0] as usize))
        );
        assert_eq!(slab.free_local(b[1]), Ok(false));
        assert_eq!(slab.free_local(b[2]), Ok(true));
        assert_eq!(
            slab.free_local(b[2]),
            Err(Corrupt::DoubleFree(b[2] as usize))
        );
        // Freed blocks come back before new ones are carved (LIFO).
        let mut again = Vec::new();
        slab.alloc_batch(2, |x| again.push(x));
        assert_eq!(again, std::vec![b[2], b[1]]);
    }
}

#[test]
fn a_run_of_blocks_comes_back_at_once_and_a_run_too_long_is_refused() {
    let w = World::new();
    let ss = Superslab::create(&w.env(), 1).unwrap();
    // SAFETY: we own everything here.
    unsafe {
        let slab = ss.alloc_slab(0, 16).unwrap();
        let mut b = Vec::new();
        slab.alloc_batch(5, |x| b.push(x));
        // A run of three, linked b[0] -> b[1] -> b[2], keyed as the hot heap's lists key them.
        for i in 0..3 {
            crate::set_key_word(b[i], crate::free_key());
            crate::link_key().set_next(b[i], b[(i + 1) % 5]);
        }
        assert_eq!(slab.free_local_run(b[0], b[2], 3), Ok(false));
        let l = slab.local();
        assert_eq!((l.used, l.free_len, l.free), (2, 3, b[0]));
        assert!((0..3).all(|i| slab.free_list_contains(b[i])));
        // Three more than the two still out: a double free, and nothing changes.
        assert_eq!(
            slab.free_local_run(b[3], b[4], 3),
            Err(Corrupt::DoubleFree(b[3] as usize))
        );
        assert_eq!(slab.local().used, 2);
        crate::link_key().set_next(b[3], b[4]);
        assert_eq!(slab.free_local_run(b[3], b[4], 2), Ok(true), "empty now");
        // The whole list, in order: the second run, then the first.
        let mut again = Vec::new();
        slab.alloc_batch(5, |x| again.push(x));
        assert_eq!(again, std::vec![b[3], b[4], b[0], b[1], b[2]]);
    }
}

#[test]
fn remote_frees_come_back_on_drain() {
    let w = World::new();
    let ss = Superslab::create(&w.env(), 1).unwrap();
    let list = AbandonedList::new();
    // SAFETY: we own the slab; the other threads act as non-owners.
    unsafe {
        let slab = ss.alloc_slab(2, 48).unwrap();
        let mut b = Vec::new();
        slab.alloc_batch(100, |x| b.push(x as usize));
        std::thread::scope(|s| {
            for chunk in b.chunks(25) {
                let (list, stats) = (&list, &w.stats);
                s.spawn(move || {
                    for &x in chunk {
                        assert_eq!(ss.free_remote(slab, x as *mut u8, list, stats), Ok(false));
                    }
                });
            }
        });
        assert_eq!(slab.drain_remote(), Ok(100));
        assert!(slab.is_empty());
        assert_eq!(slab.local().free_len, 100);
    }
}

/// The slab's local free list, front first.
///
/// # Safety
/// The caller owns the slab.
unsafe fn free_list(slab: &SlabMeta) -> Vec<usize> {
    // SAFETY: forwarded; the list's blocks are free and linked through first words.
    unsafe {
        let l = slab.local();
        let mut out = Vec::new();
        let mut b = l.free;
        while !b.is_null() && out.len() <= l.free_len as usize {
            out.push(b as usize);
            b = crate::link_key().next(b);
        }
        out
    }
}

#[test]
fn a_drained_chain_joins_the_free_list_by_its_count() {
    let w = World::new();
    let ss = Superslab::create(&w.env(), 1).unwrap();
    // SAFETY: this thread owns the slab; the pushes give up blocks it allocated, each once
    // (but the last, which is pushed twice on purpose).
    unsafe {
        let slab = ss.alloc_slab(1, 32).unwrap();
        let mut b = Vec::new();
        slab.alloc_batch(12, |x| b.push(x as usize));
        let push = |i: usize| slab.remote.push(b[i] as *mut u8);
        let local = |i: usize| slab.free_local(b[i] as *mut u8).unwrap();
        // An empty free list becomes the chain, newest push first.
        for i in 0..3 {
            push(i);
        }
        assert_eq!(slab.drain_remote(), Ok(3));
        assert_eq!(free_list(slab), [b[2], b[1], b[0]]);
        assert_eq!((slab.local().free_len, slab.local().used), (3, 9));
        // A longer chain goes after a shorter free list.
        let _ = slab.take_free_chain(3).unwrap().unwrap();
        local(3);
        for i in 4..7 {
            push(i);
        }
        assert_eq!(slab.drain_remote(), Ok(3));
        assert_eq!(free_list(slab), [b[3], b[6], b[5], b[4]]);
        // A shorter chain goes before a longer free list.
        push(7);
        assert_eq!(slab.drain_remote(), Ok(1));
        assert_eq!(free_list(slab), [b[7], b[3], b[6], b[5], b[4]]);
        assert_eq!((slab.local().free_len, slab.local().used), (5, 7));
        // A block pushed twice makes a chain longer than its count: found when the chain is
        // the list that is read.
        push(8);
        push(8);
        assert_eq!(slab.drain_remote(), Err(Corrupt::DoubleFree(b[8])));
    }
}

#[test]
fn the_remote_hint_is_set_by_a_push_onto_an_empty_stack_and_taken_once() {
    let w = World::new();
    let ss = Superslab::create(&w.env(), 1).unwrap();
    let list = AbandonedList::new();
    // SAFETY: this thread owns the superslab and drains after every take that returns true;
    // the frees give up blocks it allocated, each once.
    unsafe {
        let (a, b) = (ss.alloc_slab(0, 16).unwrap(), ss.alloc_slab(1, 32).unwrap());
        let mut blocks = Vec::new();
        for slab in [a, b] {
            slab.alloc_batch(2, |x| blocks.push(x as usize));
        }
        assert!(!ss.take_remote_hint(), "nothing pushed yet");
        std::thread::scope(|s| {
            s.spawn(|| {
                assert!(ss.try_free_remote(a, blocks[0] as *mut u8));
                assert!(ss.try_free_remote(a, blocks[1] as *mut u8));
            });
        });
        assert!(ss.take_remote_hint(), "a push found the stack empty");
        assert!(!ss.take_remote_hint(), "taken once");
        assert_eq!(a.drain_remote(), Ok(2));
        // After the drain, the next push finds the stack empty again, in any slab and through
        // either entry.
        std::thread::scope(|s| {
            s.spawn(|| {
                assert_eq!(
                    ss.free_remote(b, blocks[2] as *mut u8, &list, &w.stats),
                    Ok(false)
                )
            });
        });
        assert!(ss.take_remote_hint());
        assert_eq!(b.drain_remote(), Ok(1));
        b.free_local(blocks[3] as *mut u8).unwrap();
        assert!(a.is_empty() && b.is_empty());
    }
}

#[test]
fn an_abandoned_superslab_is_collected_by_its_last_remote_free() {
    let w = World::new();
    let env = w.env();
    let list = AbandonedList::new();
    let ss = Superslab::create(&env, 1).unwrap();
    let mut b = Vec::new();
    // SAFETY: we own the superslab until we abandon it.
    unsafe {
        let slab = ss.alloc_slab(0, 16).unwrap();
        slab.alloc_batch(2, |x| b.push(x));
        assert_eq!(ss.abandon(&list, &w.stats), Ok(false));
        assert!(slab.remote.is_flagged(), "abandon flags the stacks");
    }
    assert_eq!(list.len(), 1);
    assert_eq!(ss.owner(), 0);
    let slab = ss.slab_of(b[0]);
    // SAFETY: we hold both blocks and give them up.
    unsafe {
        assert_eq!(ss.free_remote(slab, b[0], &list, &w.stats), Ok(false));
        assert_eq!(list.len(), 1, "still holds a block: put back");
        assert_eq!(
            ss.free_remote(slab, b[1], &list, &w.stats),
            Ok(true),
            "the last block retires it"
        );
    }
    assert_eq!(list.len(), 0);
    // SAFETY: free_remote returned true: ours to retire.
    let region = unsafe { ss.retire(&env) };
    assert_eq!(w.registry.lookup(region.as_ptr() as usize), None);
    // SAFETY: retired, so unused.
    unsafe { env.os.unmap(region, SS_SIZE, env.stats) };
    assert_eq!(w.os.unmaps(), 1);
}

#[test]
fn adopt_takes_ownership_of_every_slab_in_use() {
    let w = World::new();
    let list = AbandonedList::new();
    let ss = Superslab::create(&w.env(), 1).unwrap();
    // SAFETY: we own it until abandoned.
    let (s0, s1) = unsafe {
        let s0 = ss.alloc_slab(0, 16).unwrap();
        let s1 = ss.alloc_slab(5, 96).unwrap();
        s0.alloc_batch(1, |_| ());
        s1.alloc_batch(1, |_| ());
        assert_eq!(ss.abandon(&list, &w.stats), Ok(false));
        (s0, s1)
    };
    assert_eq!((s0.owner(), s1.owner()), (0, 0));
    // SAFETY: 9 is this test thread's id alone.
    let got = unsafe { list.adopt(9) }.unwrap();
    assert!(core::ptr::eq(got, ss));
    assert_eq!((ss.owner(), s0.owner(), s1.owner()), (9, 9, 9));
    assert!(
        // SAFETY: as above.
        unsafe { list.adopt(10) }.is_none(),
        "adopted by exactly one"
    );
    assert!(!ss.is_abandoned());
}

#[test]
fn carve_zeroed_only_on_fresh_slabs() {
    let w = World::new();
    let ss = Superslab::create(&w.env(), 1).unwrap();
    // SAFETY: we own it.
    unsafe {
        let slab = ss.alloc_slab(0, 1024).unwrap();
        let b = slab.carve_zeroed().unwrap();
        assert!(core::slice::from_raw_parts(b, 1024).iter().all(|&x| x == 0));
        b.write_bytes(0xAB, 1024);
        assert_eq!(slab.free_local(b), Ok(true));
        // Re-used for another class, the slab is no longer fresh.
        assert!(ss.free_slab(slab));
        let again = ss.alloc_slab(1, 2048).unwrap();
        assert!(core::ptr::eq(again, slab));
        assert!(again.carve_zeroed().is_none());
    }
}

#[test]
fn large_regions_are_found_past_their_first_chunk() {
    let w = World::new();
    let env = w.env();
    for (size, align) in [
        (3 * SS_SIZE + 5, 16),
        (100_000, SS_SIZE),
        (4096, 4 * SS_SIZE),
    ] {
        let layout = LargeLayout::new(size, align, PAGE).unwrap();
        let region = env
            .os
            .map_offset(layout.len, layout.align, layout.offset, env.stats)
            .unwrap();
        // SAFETY: a fresh region of the layout's size and alignment.
        let user = unsafe { LargeHeader::init(&env, region, layout) }.unwrap();
        assert_eq!(user.as_ptr() as usize % align, 0);
        let last = user.as_ptr() as usize + size - 1;
        let (base, kind) = w.registry.lookup(last).unwrap();
        assert_eq!((base, kind), (region.as_ptr() as usize, Kind::Large));
        // SAFETY: the registry reports it live and we hold its block.
        let h = unsafe { LargeHeader::at(base) };
        assert_eq!(h.user(), user.as_ptr() as usize);
        assert!(h.usable() >= size);
        // SAFETY: we give the block up.
        let (b, len) = unsafe { h.retire(&env) };
        assert_eq!(w.registry.lookup(last), None);
        // SAFETY: retired.
        unsafe { env.os.unmap(b, len, env.stats) };
    }
}

#[test]
fn libc_os_maps_aligned_and_counts_calls() {
    let stats = GlobalStats::new();
    let p = LibcOs.map(SS_SIZE, SS_SIZE, &stats).unwrap();
    assert_eq!(p.as_ptr() as usize % SS_SIZE, 0);
    // SAFETY: our mapping.
    unsafe {
        p.as_ptr().write_bytes(7, SS_SIZE);
        assert!(LibcOs.purge(p, SS_SIZE, &stats));
        assert_eq!(
            *p.as_ptr().add(SS_SIZE - 1),
            0,
            "MADV_DONTNEED reads back zero"
        );
        LibcOs.unmap(p, SS_SIZE, &stats);
    }
    let s = stats.snapshot();
    assert!(s.count(hakmem_stats::Event::Mmap) >= 1);
    assert_eq!(s.count(hakmem_stats::Event::Madvise), 1);
    assert!(s.bytes(hakmem_stats::Event::Munmap) >= SS_SIZE as u64);
}

#[test]
fn huge_alignments_map_the_block_alone_and_impossible_ones_fail_at_once() {
    // Above 2 MiB the block starts one 2 MiB step past the base: the region is that step and the
    // block, whatever the alignment.
    for shift in 22..=46 {
        let layout = LargeLayout::new(100, 1 << shift, PAGE).unwrap();
        assert_eq!((layout.len, layout.user_offset), (SS_SIZE + PAGE, SS_SIZE));
        assert_eq!((layout.align, layout.offset), (1 << shift, SS_SIZE));
    }
    let layout = LargeLayout::new(100, SS_SIZE, PAGE).unwrap();
    assert_eq!((layout.align, layout.offset), (SS_SIZE, 0));
    let stats = GlobalStats::new();
    for shift in [22, 30, 40] {
        let align = 1usize << shift;
        let p = LibcOs
            .map_offset(2 * PAGE, align, SS_SIZE, &stats)
            .expect("address space for one aligned block");
        assert_eq!((p.as_ptr() as usize + SS_SIZE) % align, 0);
        // SAFETY: our fresh mapping of two pages.
        unsafe {
            assert_eq!(*p.as_ptr().add(2 * PAGE - 1), 0);
            p.as_ptr().write_bytes(1, 2 * PAGE);
            LibcOs.unmap(p, 2 * PAGE, &stats);
        }
    }
    // More than the address space holds: refused, nothing mapped.
    for shift in [48, 62, 63] {
        assert!(LibcOs.map_offset(PAGE, 1 << shift, 0, &stats).is_none());
    }
    let s = stats.snapshot();
    assert_eq!(s.bytes(hakmem_stats::Event::Mmap), 3 * 2 * PAGE as u64);
    assert_eq!(s.bytes(hakmem_stats::Event::Munmap), 3 * 2 * PAGE as u64);
}

#[test]
fn check_bitmap_catches_a_double_free() {
    let w = World::new();
    let ss = Superslab::create(&w.env(), 1).unwrap();
    assert!(ss.check_mark_held(3, 100));
    assert!(!ss.check_mark_held(3, 100));
    assert!(ss.check_mark_freed(3, 100));
    assert!(
        !ss.check_mark_freed(3, 100),
        "second free of the same block"
    );
}

#[test]
fn abandon_drains_what_was_pushed_and_flags_the_rest() {
    let w = World::new();
    let env = w.env();
    let list = AbandonedList::new();
    let ss = Superslab::create(&env, 1).unwrap();
    let mut b = Vec::new();
    // SAFETY: we own the superslab until we abandon it; then we act as remote freers.
    unsafe {
        let slab = ss.alloc_slab(0, 16).unwrap();
        slab.alloc_batch(2, |x| b.push(x));
        // A remote free that lands while the owner still owns it (before the flag).
        assert_eq!(ss.free_remote(slab, b[0], &list, &w.stats), Ok(false));
        assert_eq!(ss.abandon(&list, &w.stats), Ok(false));
        assert_eq!(
            slab.local().used,
            1,
            "the early push was drained by abandon"
        );
        assert!(slab.remote.is_empty() && slab.remote.is_flagged());
        // SS7: the push after the flag sees it in the same CAS, pins and collects: the last
        // block retires the superslab, nothing is stranded on the stack.
        assert_eq!(ss.free_remote(slab, b[1], &list, &w.stats), Ok(true));
    }
    assert_eq!(list.len(), 0);
    // SAFETY: free_remote returned true.
    let region = unsafe { ss.retire(&env) };
    // SAFETY: retired.
    unsafe { env.os.unmap(region, SS_SIZE, env.stats) };
}

#[test]
fn abandon_of_a_superslab_emptied_by_its_last_drain_hands_it_back() {
    let w = World::new();
    let env = w.env();
    let list = AbandonedList::new();
    let ss = Superslab::create(&env, 1).unwrap();
    // SAFETY: as above.
    unsafe {
        let slab = ss.alloc_slab(0, 16).unwrap();
        let mut b = Vec::new();
        slab.alloc_batch(1, |x| b.push(x));
        assert_eq!(ss.free_remote(slab, b[0], &list, &w.stats), Ok(false));
        assert_eq!(
            ss.abandon(&list, &w.stats),
            Ok(true),
            "empty: the caller retires it"
        );
        assert_eq!(list.len(), 0);
        let region = ss.retire(&env);
        env.os.unmap(region, SS_SIZE, env.stats);
    }
}

#[test]
fn a_stale_remote_stack_does_not_survive_into_the_slabs_next_life() {
    // SS9: a block freed twice, the second time after its slab went back (owner 0), goes to the
    // free slab's remote stack; re-initialising the slab must drop it, or it would be handed out
    // again, in another class, beside a live block.
    let w = World::new();
    let list = AbandonedList::new();
    let ss = Superslab::create(&w.env(), 1).unwrap();
    // SAFETY: we own the superslab; the second free plays a non-owner's double free.
    unsafe {
        let slab = ss.alloc_slab(0, 64).unwrap();
        let mut b = Vec::new();
        slab.alloc_batch(1, |x| b.push(x));
        assert_eq!(slab.free_local(b[0]), Ok(true));
        let _ = ss.free_slab(slab);
        assert_eq!(slab.owner(), 0);
        assert_eq!(slab.carved(), 0, "a free slab has no valid block start");
        let _ = ss.free_remote(slab, b[0], &list, &w.stats);
        assert!(
            !slab.remote.is_empty(),
            "the double free sits on the free slab's stack"
        );
        let again = ss.alloc_slab(3, 256).unwrap();
        assert!(
            core::ptr::eq(again, slab),
            "the same slab, in its next life"
        );
        assert!(again.remote.is_empty(), "SS9: init reset the stack");
        assert_eq!(again.drain_remote(), Ok(0));
        assert_eq!(again.local().used, 0);
    }
}

#[test]
fn the_carve_mark_is_shared_and_covers_only_handed_out_blocks() {
    let w = World::new();
    let ss = Superslab::create(&w.env(), 1).unwrap();
    // SAFETY: we own the slab.
    unsafe {
        let slab = ss.alloc_slab(1, 32).unwrap();
        assert_eq!(slab.carved(), 0);
        slab.alloc_batch(5, |_| ());
        assert_eq!(slab.carved(), 5);
        let z = ss.alloc_slab(1, 32).unwrap();
        assert!(z.carve_zeroed().is_some());
        assert_eq!(z.carved(), 1);
    }
}

#[test]
fn free_structures_carry_the_key_and_can_be_searched() {
    let k = init_free_key();
    assert_ne!(k, 0);
    assert_eq!(init_free_key(), k, "one key per process");
    let w = World::new();
    let list = AbandonedList::new();
    let ss = Superslab::create(&w.env(), 1).unwrap();
    // SAFETY: we own the slab; the remote free plays a non-owner.
    unsafe {
        let slab = ss.alloc_slab(0, 16).unwrap();
        let mut b = Vec::new();
        slab.alloc_batch(4, |x| b.push(x));
        assert_eq!(slab.free_local(b[0]), Ok(false));
        assert_eq!(key_word(b[0]), k);
        assert!(slab.free_list_contains(b[0]) && !slab.free_list_contains(b[1]));
        assert_eq!(ss.free_remote(slab, b[1], &list, &w.stats), Ok(false));
        assert_eq!(key_word(b[1]), k);
        assert!(slab.remote_contains(b[1]) && !slab.remote_contains(b[2]));
        assert_eq!(slab.drain_remote(), Ok(1));
        assert!(!slab.remote_contains(b[1]) && slab.free_list_contains(b[1]));
    }
}

#[test]
fn large_regions_and_their_growth_keep_to_the_os_page_size() {
    // As on a 16 KiB- and a 64 KiB-page kernel: HeapOs panics on any range that is not whole
    // pages, so every map, unmap and remap below is checked.
    for page in [16 << 10, 64 << 10] {
        let os: &'static HeapOs = Box::leak(Box::new(HeapOs::with_page_size(32, page)));
        let (registry, stats) = (os.registry(), GlobalStats::new());
        let env = Env {
            os,
            registry: &registry,
            stats: &stats,
        };
        for size in [1, 4097, 100_000, 3 * SS_SIZE + 5] {
            let layout = LargeLayout::new(size, 16, env.os.page_size()).unwrap();
            assert_eq!(layout.len % page, 0, "page {page:#x} size {size}");
            let region = env
                .os
                .map_offset(layout.len, layout.align, layout.offset, env.stats)
                .unwrap();
            // SAFETY: a fresh region of the layout's size and alignment.
            let user = unsafe { LargeHeader::init(&env, region, layout) }.unwrap();
            // SAFETY: the registry reports it live and we hold its block.
            let h = unsafe { LargeHeader::at(region.as_ptr() as usize) };
            assert!(h.usable() >= size);
            assert_eq!(h.user(), user.as_ptr() as usize);
            // SAFETY: we give the block up.
            let (b, len) = unsafe { h.retire(&env) };
            // SAFETY: retired.
            unsafe { env.os.unmap(b, len, env.stats) };
        }
        let ss = Superslab::create(&env, 1).expect("a superslab on big pages");
        // SAFETY: heap 1 is this thread.
        let slab = unsafe { ss.alloc_slab(0, 16) }.unwrap();
        // SAFETY: as above.
        assert_eq!(unsafe { slab.alloc_batch(4, |_| {}) }, (4, None));
    }
}

#[test]
fn a_free_slab_gives_its_pages_back_after_a_whole_tick_and_the_header_stays() {
    let w = World::new();
    let env = w.env();
    let ss = Superslab::create(&env, 1).unwrap();
    let base = ss.base();
    // SAFETY: every address read below lies in the superslab, mapped for the whole test.
    let byte = |at: usize| unsafe { *(at as *const u8) };
    let purged = || w.stats.snapshot().bytes(hakmem_stats::Event::Madvise);
    // SAFETY: this thread owns the superslab; blocks are freed once, after their writes.
    unsafe {
        // Slabs 0, 1 and 2 written all over, then 0 and 1 freed; 2 keeps a block.
        let slabs: Vec<&SlabMeta> = (0..3).map(|_| ss.alloc_slab(0, 1024).unwrap()).collect();
        assert_eq!(
            slabs.iter().map(|s| ss.slab_index(s)).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        for s in &slabs {
            let mut blocks = Vec::new();
            s.alloc_batch(u32::MAX, |b| blocks.push(b));
            for &b in &blocks {
                b.write_bytes(0xAB, 1024);
            }
            for &b in &blocks[usize::from(ss.slab_index(s) == 2)..] {
                s.free_local(b).unwrap();
            }
        }
        assert!(!ss.free_slab(slabs[0]) && !ss.free_slab(slabs[1]));
        // Ticks at times in ns, with a minimum age of 100.
        const AGE: u64 = 100;
        // First tick: nothing was free at the one before, so nothing goes; both age.
        assert_eq!(ss.purge_free_slabs(&env, 1000, AGE), (0, true));
        assert_eq!(byte(base + SLAB_SIZE + 100), 0xAB);
        // Slab 0 is taken and freed again between the ticks: it loses its age.
        let again = ss.alloc_slab(0, 1024).unwrap();
        assert!(core::ptr::eq(again, slabs[0]));
        assert!(!ss.free_slab(again));
        // A tick sooner than the minimum age after the one that aged them purges nothing, and
        // keeps their age (slab 0 is not aged by it).
        assert_eq!(ss.purge_free_slabs(&env, 1099, AGE), (0, true));
        assert_eq!(byte(base + SLAB_SIZE + 100), 0xAB);
        assert_eq!(purged(), 0);
        // Second tick: slab 1 stayed free, so its pages go, and it reads as zero; slab 0 waits.
        assert_eq!(ss.purge_free_slabs(&env, 1100, AGE), (SLAB_SIZE, true));
        assert_eq!(purged(), SLAB_SIZE as u64);
        assert_eq!(byte(base + SLAB_SIZE + 100), 0);
        assert_eq!(byte(base + 100), 0xAB);
        // Third tick: slab 0's pages below the header go; the header is whole and the
        // superslab works on, and slab 0 comes back fresh (SS8).
        assert_eq!(
            ss.purge_free_slabs(&env, 1200, AGE),
            (SLAB_SIZE - HEADER_SIZE, false)
        );
        assert_eq!(byte(base + 100), 0);
        assert!(core::ptr::eq(Superslab::of((base + 100) as *const u8), ss));
        assert!(w.registry.lookup(base).is_some());
        let fresh = ss.alloc_slab(0, 1024).unwrap();
        assert!(core::ptr::eq(fresh, slabs[0]) && fresh.local().fresh);
        // Nothing free and dirty is left: a tick has nothing to do.
        assert_eq!(ss.purge_free_slabs(&env, 1300, AGE), (0, false));
        assert_eq!(
            byte(base + 2 * SLAB_SIZE + 100),
            0xAB,
            "a slab in use is never purged"
        );
    }
}

#[test]
fn the_free_lists_front_comes_off_as_one_keyed_chain() {
    let w = World::new();
    let ss = Superslab::create(&w.env(), 1).unwrap();
    // SAFETY: this thread owns the superslab; each block is freed once and taken once.
    unsafe {
        let slab = ss.alloc_slab(0, 32).unwrap();
        assert!(
            slab.take_free_chain(4).unwrap().is_none(),
            "nothing freed yet"
        );
        let mut blocks = Vec::new();
        slab.alloc_batch(10, |b| blocks.push(b));
        for &b in &blocks[..6] {
            slab.free_local(b).unwrap();
        }
        let (used, free_len, carve) =
            (slab.local().used, slab.local().free_len, slab.local().carve);
        assert_eq!((used, free_len, carve), (4, 6, 10));
        // Four off the front, linked as they lay (the last freed first), each still keyed.
        let (head, tail, n) = slab.take_free_chain(4).unwrap().unwrap();
        assert_eq!(n, 4);
        let mut got = Vec::from([head]);
        while *got.last().unwrap() != tail {
            got.push(crate::link_key().next(*got.last().unwrap()));
        }
        assert_eq!(got, [blocks[5], blocks[4], blocks[3], blocks[2]]);
        assert!(got.iter().all(|&b| crate::key_word(b) == crate::free_key()));
        assert_eq!((slab.local().used, slab.local().free_len), (8, 2));
        // Asking for more than there is takes what there is; the carve mark never moves.
        let (head, tail, n) = slab.take_free_chain(100).unwrap().unwrap();
        assert_eq!((head, tail, n), (blocks[1], blocks[0], 2));
        assert_eq!(
            (slab.local().used, slab.local().free_len, slab.local().carve),
            (10, 0, 10)
        );
        assert!(slab.take_free_chain(1).unwrap().is_none());
        for &b in &blocks {
            slab.free_local(b).unwrap();
        }
        assert!(slab.is_empty());
    }
}

/// The blocks of a chain `head ..= tail` of `n` blocks, front first.
///
/// # Safety
/// The chain's blocks are free and linked through first words.
unsafe fn chain(head: *mut u8, tail: *mut u8, n: u32) -> Vec<*mut u8> {
    let mut got = Vec::from([head]);
    while got.len() < n as usize {
        // SAFETY: forwarded.
        got.push(unsafe { crate::link_key().next(*got.last().unwrap()) });
    }
    assert_eq!(*got.last().unwrap(), tail);
    got
}

/// SS18: walks in step cut the same chains as walks one after another, each with its own
/// checks: a bad link drops its own slab's list only.
#[test]
fn free_lists_walked_in_step_give_what_single_walks_give_and_catch_bad_links_alone() {
    let w = World::new();
    let ss = Superslab::create(&w.env(), 1).unwrap();
    // SAFETY: this thread owns the superslab; each block is freed once and taken once (the
    // test writes into one free block only to play the user's overflow).
    unsafe {
        let slabs: Vec<&SlabMeta> = (0..3).map(|_| ss.alloc_slab(2, 48).unwrap()).collect();
        let mut blocks: Vec<Vec<*mut u8>> = Vec::new();
        for (i, s) in slabs.iter().enumerate() {
            let mut b = Vec::new();
            s.alloc_batch(12, |x| b.push(x));
            // Freed in a scattered order: 3 + 2i blocks on each list.
            for j in (0..3 + 2 * i).rev() {
                s.free_local(b[(j * 5) % 12]).unwrap();
            }
            blocks.push(b);
        }
        let lists: Vec<Vec<usize>> = slabs.iter().map(|&s| free_list(s)).collect();
        // Shares that stop short of a list's end, at it, and past it (the list's length).
        let got = SlabMeta::take_free_chains([slabs[0], slabs[1], slabs[2]], [2, 5, 9]);
        for (i, r) in got.into_iter().enumerate() {
            let (h, t, n) = r.unwrap().unwrap();
            let want = [2, 5, 7][i];
            assert_eq!(n, want);
            let c: Vec<usize> = chain(h, t, n).into_iter().map(|b| b as usize).collect();
            assert_eq!(
                c,
                lists[i][..want as usize],
                "slab {i}: the list's front, as it lay"
            );
            assert!(c
                .iter()
                .all(|&b| crate::key_word(b as *mut u8) == crate::free_key()));
            assert_eq!(free_list(slabs[i]), lists[i][want as usize..]);
            assert_eq!(local_counts(slabs[i]).0, 12 - lists[i].len() as u32 + want);
        }
        // Empty lists and zero shares give nothing and change nothing.
        let got = SlabMeta::take_free_chains([slabs[0], slabs[2]], [0, 3]);
        assert!(got.iter().all(|r| matches!(r, Ok(None))));
        assert_eq!(local_counts(slabs[0]), (11, 1, false));
        // A bad link in the second list: that list is dropped, the first is cut as asked.
        let mut more = Vec::new();
        slabs[1].alloc_batch(3, |x| more.push(x));
        for &x in &more {
            slabs[1].free_local(x).unwrap();
        }
        more[1].cast::<u64>().write(0x4141_4141_4141_4141);
        let before = local_counts(slabs[1]);
        let got = SlabMeta::take_free_chains([slabs[0], slabs[1]], [1, 3]);
        assert_eq!(got[1], Err(Corrupt::FreeList(more[1] as usize)));
        assert_eq!(local_counts(slabs[1]), (before.0 + before.1, 0, true));
        let (h, t, n) = got[0].unwrap().unwrap();
        assert_eq!(
            (h, t, n),
            (lists[0][2] as *mut u8, lists[0][2] as *mut u8, 1)
        );
        assert_eq!(local_counts(slabs[0]), (12, 0, true));
    }
}

/// SS17: a list takes off only the superslabs on it. Safe code that hands one list another
/// list's superslab gets false and changes neither list; a remote free given the wrong list
/// leaves both alone; each list's superslab is adopted once, from its own list.
#[test]
fn a_list_leaves_another_lists_superslab_alone() {
    let w = World::new();
    let (a, b) = (AbandonedList::new(), AbandonedList::new());
    let abandoned_with_a_block = |owner, list: &AbandonedList| {
        let ss = Superslab::create(&w.env(), owner).unwrap();
        let mut held = Vec::new();
        // SAFETY: `owner` owns the superslab; it abandons it with one block out, and forgets it.
        unsafe {
            let slab = ss.alloc_slab(0, 64).unwrap();
            slab.alloc_batch(1, |x| held.push(x));
            assert_eq!(ss.abandon(list, &w.stats), Ok(false), "a block is out");
        }
        (ss, held[0])
    };
    let (on_a, block) = abandoned_with_a_block(1, &a);
    let (on_b, _) = abandoned_with_a_block(2, &b);
    assert!(!a.try_remove(on_b), "on b, not on a");
    assert!(!b.try_remove(on_a), "on a, not on b");
    // SAFETY: heap 3 is this thread's, used by no other.
    let claimed = unsafe { a.claim(on_b, 3) };
    assert!(!claimed, "a claim through the wrong list");
    // SAFETY: the block is on_a's, held, and given up here (through the wrong list).
    let last = unsafe { on_a.free_remote(on_a.slab_of(block), block, &b, &w.stats) };
    assert_eq!(
        last,
        Ok(false),
        "not collected: b holds no superslab of a's"
    );
    assert_eq!((a.len(), b.len()), (1, 1));
    assert!(on_a.is_abandoned() && on_b.is_abandoned());
    // SAFETY: heaps 3 and 4 are this thread's, used by no other.
    unsafe {
        assert!(core::ptr::eq(a.adopt(3).unwrap(), on_a));
        assert!(a.adopt(3).is_none(), "a held only its own");
        assert!(core::ptr::eq(b.adopt(4).unwrap(), on_b));
        assert!(b.adopt(4).is_none());
        // The adopter's drain finds the block the wrong-list free left on the stack.
        assert_eq!(on_a.collect(|_, _| ()), Ok(true), "its one block came back");
    }
    assert_eq!((on_a.owner(), on_b.owner()), (3, 4));
    // Off every list: neither list takes it again.
    assert!(!a.try_remove(on_a) && !b.try_remove(on_b));
}

/// A slab's owner-side counts: blocks out, blocks on the free list, and whether the list is
/// empty.
///
/// # Safety
/// The calling thread owns the slab.
unsafe fn local_counts(slab: &SlabMeta) -> (u32, u32, bool) {
    // SAFETY: the caller owns the slab.
    let l = unsafe { slab.local() };
    (l.used, l.free_len, l.free.is_null())
}

#[test]
fn a_bad_link_on_a_free_list_or_a_remote_chain_is_caught_and_its_list_dropped() {
    // Memory outside the slab, which a forged link names.
    static OUTSIDE: [u64; 8] = [0; 8];
    let w = World::new();
    let ss = Superslab::create(&w.env(), 1).unwrap();
    // SAFETY: this thread owns the superslab; each block is freed once (the test writes into
    // free blocks only to play the user's overflow).
    unsafe {
        let slab = ss.alloc_slab(1, 32).unwrap();
        let mut b = Vec::new();
        slab.alloc_batch(8, |x| b.push(x));
        // The free list b[2] -> b[1] -> b[0], b[2]'s link overwritten: the walk names b[2] and
        // drops the list, whose blocks stay out (SS18).
        for &x in &b[..3] {
            slab.free_local(x).unwrap();
        }
        b[2].cast::<u64>().write(0x4141_4141_4141_4141);
        assert_eq!(
            slab.take_free_chain(8),
            Err(Corrupt::FreeList(b[2] as usize))
        );
        assert_eq!(local_counts(slab), (8, 0, true));
        assert!(!slab.free_list_contains(b[1]));
        // A link to memory outside the slab: the block holding it is handed out, the rest
        // dropped, and the batch carves on.
        slab.free_local(b[3]).unwrap();
        slab.free_local(b[4]).unwrap();
        b[4].cast::<usize>().write(&raw const OUTSIDE as usize);
        let mut got = Vec::new();
        let (n, bad) = slab.alloc_batch(2, |x| got.push(x));
        assert_eq!((n, bad), (2, Some(Corrupt::FreeList(b[4] as usize))));
        assert_eq!(got[0], b[4]);
        assert_eq!(slab.block_index(got[1]), 8, "carved, not the forged link");
        assert_eq!(local_counts(slab), (9, 0, true));
        // A remote chain that becomes the free list as it is: its link is checked when used.
        slab.remote.push(b[5]);
        b[5].cast::<u64>().write(b[5].cast::<u64>().read() ^ 0x40);
        assert_eq!(slab.drain_remote(), Ok(1));
        assert_eq!(
            slab.take_free_chain(4),
            Err(Corrupt::FreeList(b[5] as usize))
        );
        assert_eq!(local_counts(slab), (9, 0, true));
        // A remote chain the drain walks (the free list is longer): the chain is dropped.
        slab.free_local(b[6]).unwrap();
        slab.free_local(got[1]).unwrap();
        slab.remote.push(b[7]);
        b[7].cast::<u64>().write(0x4141_4141_4141_4141);
        assert_eq!(slab.drain_remote(), Err(Corrupt::FreeList(b[7] as usize)));
        assert_eq!(local_counts(slab), (7, 2, false));
        assert!(slab.free_list_contains(b[6]) && slab.free_list_contains(got[1]));
    }
}

#[test]
fn a_zeroed_or_self_addressed_link_on_a_free_list_never_hands_a_block_out_twice() {
    // A block freed and then written through a dangling pointer: its first word set to 0
    // (decodes to a scattered address, refused) or to its own address (decodes to the list's
    // end, before the list's count is reached). Either way the block holding it is reported and
    // the rest of the list dropped, its blocks out for good (SS18); no block is handed out
    // twice.
    let w = World::new();
    let ss = Superslab::create(&w.env(), 1).unwrap();
    // SAFETY: this thread owns the superslab; each block is freed once (the test writes into
    // free blocks only to play the user's write after free).
    unsafe {
        let slab = ss.alloc_slab(1, 32).unwrap();
        let mut b = Vec::new();
        slab.alloc_batch(12, |x| b.push(x));
        for (i, zero) in [(0, true), (3, false)] {
            // The free list b[i+2] -> b[i+1] -> b[i], b[i+2]'s first word overwritten.
            for &x in &b[i..i + 3] {
                slab.free_local(x).unwrap();
            }
            let top = b[i + 2];
            top.cast::<usize>()
                .write(if zero { 0 } else { top as usize });
            let used = local_counts(slab).0;
            let mut got = Vec::new();
            let (n, bad) = slab.alloc_batch(3, |x| got.push(x));
            assert_eq!((n, bad), (3, Some(Corrupt::FreeList(top as usize))));
            assert_eq!(got[0], top);
            assert!(
                got[1..].iter().all(|x| !b.contains(x)),
                "carved, new blocks"
            );
            assert_eq!(local_counts(slab), (used + 3 + 2, 0, true));
        }
        // The chain take reports the same, and hands nothing out.
        for (i, zero) in [(6, true), (9, false)] {
            for &x in &b[i..i + 3] {
                slab.free_local(x).unwrap();
            }
            let top = b[i + 2];
            top.cast::<usize>()
                .write(if zero { 0 } else { top as usize });
            let used = local_counts(slab).0;
            assert_eq!(
                slab.take_free_chain(8),
                Err(Corrupt::FreeList(top as usize))
            );
            assert_eq!(local_counts(slab), (used + 3, 0, true));
        }
    }
}

/// `validate`'s answer, as the invariant's ID (or the report of a bad link).
fn broken(r: Result<(), Corrupt>) -> Option<&'static str> {
    match r {
        Ok(()) => None,
        Err(Corrupt::Invariant { id, .. }) => Some(id),
        Err(Corrupt::FreeList(_)) => Some("SS18 link"),
        Err(e) => panic!("not a validation report: {e:?}"),
    }
}

#[test]
fn validate_names_the_invariant_a_corrupted_header_or_slab_breaks() {
    let w = World::new();
    let ss = Superslab::create(&w.env(), 1).unwrap();
    // SAFETY: we are heap 1, the owner; each change is undone before the next, and the
    // superslab is dropped with its memory at the end of the test.
    unsafe {
        assert_eq!(broken(ss.validate(1)), None, "a fresh superslab");
        let slab = ss.alloc_slab(3, 64).unwrap();
        let mut blocks = Vec::new();
        slab.alloc_batch(20, |b| blocks.push(b));
        for &b in &blocks[..10] {
            slab.free_local(b).unwrap();
        }
        assert_eq!(
            broken(ss.validate(1)),
            None,
            "blocks out and on the free list"
        );
        assert_eq!(broken(ss.validate_slab(slab, 1)), None);
        assert_eq!(broken(ss.validate(2)), Some("SS5"), "another heap's");

        slab.with_local(|l| l.used += 1);
        assert_eq!(broken(ss.validate(1)), Some("SS4"), "a count off by one");
        slab.with_local(|l| l.used -= 1);

        slab.with_local(|l| {
            l.carve -= 1;
            l.used -= 1;
        });
        assert_eq!(
            broken(ss.validate_slab(slab, 1)),
            Some("SS10"),
            "carve mark"
        );
        slab.with_local(|l| {
            l.carve += 1;
            l.used += 1;
        });

        slab.with_local(|l| l.free_len -= 1);
        assert_eq!(
            broken(ss.validate(1)),
            Some("SS4"),
            "a list longer than its count"
        );
        slab.with_local(|l| l.free_len += 1);

        slab.with_local(|l| l.start = l.start.add(16));
        assert_eq!(
            broken(ss.validate(1)),
            Some("SS14"),
            "blocks off the slab base"
        );
        slab.with_local(|l| l.start = l.start.sub(16));

        // A link the user overwrote is reported as the walks report it, naming its block.
        let head = slab.local().free;
        let link = head.cast::<usize>().read();
        head.cast::<usize>().write(0x1234_5670);
        assert_eq!(ss.validate(1), Err(Corrupt::FreeList(head as usize)));
        head.cast::<usize>().write(link);

        ss.list.store(99, sync::Ordering::Relaxed);
        assert_eq!(
            broken(ss.validate(1)),
            Some("SS17"),
            "on a list while owned"
        );
        ss.list.store(0, sync::Ordering::Relaxed);

        let other = &ss.slabs[5];
        assert_eq!(broken(ss.validate_slab(other, 1)), None, "a free slab");
        other.set_owner(1);
        assert_eq!(
            broken(ss.validate(1)),
            Some("SS5"),
            "a free slab with an owner"
        );
        other.set_owner(0);

        assert_eq!(broken(ss.validate(1)), None, "every change undone");
    }
}

/// SS20: a superslab made with `huge` is advised before its header is written; the purge tick
/// that purges one of its free slabs takes the advice back first, and so does its retirement;
/// one made without is never advised.
#[test]
fn huge_advice_comes_before_the_first_touch_and_goes_with_the_first_purge_or_the_retirement() {
    let w = World::new();
    let env = w.env();
    let plain = Superslab::create(&env, 1).unwrap();
    let huge = Superslab::create_advised(&env, 1, true).unwrap();
    let kept = Superslab::create_advised(&env, 1, true).unwrap();
    assert!(!w.os.is_huge(plain.base()));
    assert!(w.os.is_huge(huge.base()) && w.os.is_huge(huge.base() + SS_SIZE - 1));
    assert_eq!(
        w.os.late_advice(),
        0,
        "advised after the header was written"
    );
    // SAFETY: this thread owns the superslabs; every block is freed once.
    unsafe {
        assert!(!plain.is_huge() && huge.is_huge() && kept.is_huge());
        // A slab used and freed: the tick that ages it purges nothing and keeps the advice;
        // the next one purges it, and takes the advice back first.
        let slab = huge.alloc_slab(0, 1024).unwrap();
        let mut blocks = Vec::new();
        slab.alloc_batch(u32::MAX, |b| blocks.push(b));
        for &b in &blocks {
            b.write_bytes(0xAB, 1024);
            slab.free_local(b).unwrap();
        }
        assert!(huge.free_slab(slab), "every slab is free");
        assert_eq!(huge.purge_free_slabs(&env, 1000, 100), (0, true));
        assert!(huge.is_huge() && w.os.is_huge(huge.base()));
        let (purged, _) = huge.purge_free_slabs(&env, 2000, 100);
        assert!(purged > 0);
        assert!(!huge.is_huge() && !w.os.is_huge(huge.base()));
        // A tick with nothing to purge leaves the advice alone.
        assert_eq!(kept.purge_free_slabs(&env, 3000, 100), (0, false));
        assert!(kept.is_huge() && w.os.is_huge(kept.base()));
        // The retirement of an advised superslab takes the advice back.
        assert!(kept.unpin());
        let region = kept.retire(&env);
        assert!(!w.os.is_huge(region.as_ptr() as usize));
        w.os.unmap(region, SS_SIZE, &w.stats);
        // A region reused with advice (as the lru's) gets it again before its header.
        let plain_base = plain.base();
        assert!(plain.unpin());
        let region = plain.retire(&env);
        let again = Superslab::init_advised(&env, region, false, 2, true).unwrap();
        assert!(again.is_huge() && w.os.is_huge(plain_base));
        assert!(again.unpin());
        let region = again.retire(&env);
        w.os.unmap(region, SS_SIZE, &w.stats);
        assert!(huge.unpin());
        let region = huge.retire(&env);
        w.os.unmap(region, SS_SIZE, &w.stats);
    }
}
