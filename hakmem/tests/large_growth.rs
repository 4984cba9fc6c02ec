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
    // A 64 MiB block, freed: the lru caches its region.
    drop(vec![1u8; 64 << 20]);
    // A 1 MiB block takes the first 2 MiB of it; the rest stays cached right after.
    let mut v: Vec<u8> = Vec::with_capacity(1 << 20);
    v.extend((0..1 << 20).map(|i| i as u8));
    let (before, mremaps) = (v.as_ptr(), hakmem::stats().count(Event::Mremap));
    // Growing to 8 MiB takes the region after it out of the lru and grows over it.
    v.reserve_exact((8 << 20) - v.len());
    assert_eq!(v.as_ptr(), before, "grown in place");
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
