//! A large block grows over the cached region right after it (a split of a larger freed block
//! leaves it there): in place, without a system call, its contents kept.
mod common;
use common::child;
use hakmem::Event;

#[global_allocator]
static A: hakmem::HakMem = hakmem::HakMem;

#[test]
#[ignore = "run by a_large_block_grows_over_the_cached_region_after_it"]
fn child_grows_over_a_cached_region() {
    // The 1 MiB block must take the front of a freed 64 MiB region, with the rest cached right
    // after it. Another empty region cached meanwhile (a superslab the heap's purge tick gives
    // back once its delay has passed, which a busy machine can make happen at any point) would
    // fit the block better and take it instead; and on a loaded machine the front of the
    // cached rest is sometimes gone by the time the block grows (seen in about one run of
    // three at a load average of 20; not yet explained: an open question). Either way the
    // attempt starts over, with nothing else cached; the growth must be in place in one of
    // them, and whenever it is, it makes no system call and keeps the contents.
    for attempt in 0.. {
        assert!(attempt < 50, "the block never grew in place");
        hakmem::collect();
        // A 64 MiB block, freed: the lru caches its region.
        let big = vec![1u8; 64 << 20];
        let front = big.as_ptr();
        drop(big);
        // A 1 MiB block takes the first 2 MiB of it; the rest stays cached right after.
        let mut v: Vec<u8> = Vec::with_capacity(1 << 20);
        if v.as_ptr() != front {
            continue;
        }
        v.extend((0..1 << 20).map(|i| i as u8));
        let (before, mremaps) = (v.as_ptr(), hakmem::stats().count(Event::Mremap));
        let live = hakmem::stats().live_bytes();
        // Growing to 8 MiB takes the region after it out of the lru and grows over it.
        v.reserve_exact((8 << 20) - v.len());
        if v.as_ptr() != before {
            continue;
        }
        let grown = hakmem::stats().live_bytes() - live;
        assert!(
            (6 << 20..=8 << 20).contains(&grown),
            "the growth is counted live: {grown}"
        );
        assert_eq!(
            hakmem::stats().count(Event::Mremap),
            mremaps,
            "no system call"
        );
        assert!(
            v.iter().enumerate().all(|(i, &b)| b == i as u8),
            "contents kept"
        );
        v.resize(8 << 20, 9);
        assert!(v[(1 << 20)..].iter().all(|&b| b == 9));
        break;
    }
    println!("grew in place");
}

#[test]
fn a_large_block_grows_over_the_cached_region_after_it() {
    let out = child("child_grows_over_a_cached_region", &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("grew in place"),
        "{out:?}"
    );
}

/// The `VmFlags` of the mapping that holds `addr`, from `/proc/self/smaps`.
fn vm_flags(addr: usize) -> String {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut inside = false;
    for line in smaps.lines() {
        let range = line
            .split_whitespace()
            .next()
            .and_then(|r| r.split_once('-'));
        if let Some((lo, hi)) = range.filter(|_| !line.starts_with("VmFlags")) {
            if let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
            {
                inside = lo <= addr && addr < hi;
                continue;
            }
        }
        if inside {
            if let Some(flags) = line.strip_prefix("VmFlags:") {
                return flags.to_string();
            }
        }
    }
    panic!("no mapping holds {addr:#x}")
}

#[test]
#[ignore = "run by large_regions_ask_for_huge_pages_and_grow_in_2_mib_steps"]
fn child_huge_pages() {
    hakmem::collect();
    let mut v: Vec<u8> = vec![1; 9 << 18];
    // SAFETY: a live block of ours.
    let usable = unsafe { hakmem::raw::usable_size(v.as_mut_ptr()) };
    assert_eq!(
        usable,
        (9 << 18) + 4096 - 64,
        "a whole 2 MiB step would add more than half (2.25 MiB to 4 MiB)"
    );
    let mut u: Vec<u8> = vec![3; 3 << 20];
    // SAFETY: as above.
    let usable = unsafe { hakmem::raw::usable_size(u.as_mut_ptr()) };
    assert_eq!(
        usable,
        (4 << 20) - 64,
        "a whole 2 MiB step adds a third: at most half"
    );
    let mut w: Vec<u8> = vec![2; 15 << 20];
    // SAFETY: as above.
    let usable = unsafe { hakmem::raw::usable_size(w.as_mut_ptr()) };
    assert_eq!(
        usable,
        (16 << 20) - 64,
        "a whole 2 MiB step adds less than an eighth"
    );
    let fresh = vm_flags(v.as_ptr() as usize);
    assert!(
        fresh.split_whitespace().any(|f| f == "hg"),
        "fresh: {fresh}"
    );
    // Grown past 2 MiB: to a whole 2 MiB step, so its last huge page is whole.
    v.reserve_exact((5 << 20) - v.len());
    // SAFETY: a live block of ours.
    let usable = unsafe { hakmem::raw::usable_size(v.as_mut_ptr()) };
    assert_eq!(
        usable,
        (6 << 20) - 64,
        "the region is 6 MiB, less the header"
    );
    let grown = vm_flags(v.as_ptr() as usize);
    assert!(
        grown.split_whitespace().any(|f| f == "hg"),
        "grown: {grown}"
    );
    assert!(v.iter().all(|&b| b == 1), "contents kept");
    println!("huge");
}

#[test]
fn large_regions_ask_for_huge_pages_and_grow_in_2_mib_steps() {
    // Without transparent huge pages in the kernel, madvise refuses and there is no flag.
    if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage/enabled").exists() {
        return;
    }
    let out = child("child_huge_pages", &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("huge"), "{out:?}");
}

#[test]
#[ignore = "run by freed_blocks_apart_are_joined_for_a_larger_one"]
fn child_joins_cached_regions() {
    // Two 6 MiB blocks freed with a live one between them are cached as two regions apart; a
    // 10 MiB block fits neither, so the lru moves the pages of both onto one new mapping (lru
    // C11): no page of it is faulted in fresh. A region cached meanwhile (a superslab given
    // back by the heap's purge tick) may take part or fit instead: then the attempt starts
    // over.
    for attempt in 0.. {
        assert!(attempt < 50, "the regions were never joined");
        hakmem::collect();
        let a = vec![1u8; 6 << 20];
        let b = vec![2u8; 6 << 20];
        let c = vec![3u8; 6 << 20];
        drop(a);
        drop(c);
        let before = hakmem::stats();
        let mut v: Vec<u8> = Vec::with_capacity(10 << 20);
        let after = hakmem::stats();
        let moves = after.count(Event::Mremap) - before.count(Event::Mremap);
        // The 10 MiB block's region is 12 MiB (its header's page, rounded to 2 MiB steps), and
        // each freed block's 8 MiB: all of one and half of the other move, a step at a time.
        if moves != 6 {
            continue;
        }
        assert_eq!(
            after.bytes(Event::Mremap),
            before.bytes(Event::Mremap),
            "a move grows nothing"
        );
        assert_eq!(
            after.bytes(Event::Munmap) - before.bytes(Event::Munmap),
            12 << 20,
            "the moved steps count as unmapped where they were"
        );
        assert_eq!(
            after.count(Event::SsReused) - before.count(Event::SsReused),
            2
        );
        v.resize(10 << 20, 7);
        assert!(v.iter().all(|&x| x == 7));
        assert!(b.iter().all(|&x| x == 2), "the block between is untouched");
        break;
    }
    println!("joined");
}

#[test]
fn freed_blocks_apart_are_joined_for_a_larger_one() {
    let out = child("child_joins_cached_regions", &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("joined"), "{out:?}");
}
