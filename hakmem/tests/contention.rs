//! `hakmem::internal::contention()`: the shared locks' counts move when the paths that take them run.
//! This binary has hakmem as its global allocator and one test, so no other test's threads
//! take the locks meanwhile (the harness's own may, which only raises the counts).
use std::sync::mpsc;

#[global_allocator]
static A: hakmem::HakMem = hakmem::HakMem;

#[test]
fn each_lock_counts_the_paths_that_take_it() {
    drop(Box::new(1u64)); // the allocator is up, and this thread has a heap
    let before = hakmem::internal::contention();
    let names: Vec<&str> = before.iter().map(|c| c.0).collect();
    assert_eq!(
        names,
        [
            "heap list",
            "abandoned list",
            "lru",
            "remote push",
            "medium"
        ]
    );

    // A thread starts (its heap joins the heap list) and exits with a block still out (its
    // heap is parked whole, hot_heap H18); `collect` retires the parked heap (its superslab
    // goes to the abandoned list); this thread frees that block.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(Box::new([7u8; 48]) as Box<[u8]>).unwrap())
        .join()
        .unwrap();
    hakmem::collect();
    let orphan = rx.recv().unwrap();
    assert_eq!(orphan[47], 7);
    drop(orphan);
    // A large block, freed: it is cached or unmapped through the lru.
    let big = vec![1u8; 4 << 20];
    assert_eq!(big[(4 << 20) - 1], 1);
    drop(big);
    // A medium block (64 KiB to 1020 KiB): the medium tier's lock.
    let medium = vec![2u8; 100 << 10];
    assert_eq!(medium[(100 << 10) - 1], 2);
    drop(medium);

    let after = hakmem::internal::contention();
    for (b, a) in before.iter().zip(&after) {
        let (name, b, a) = (b.0, b.1, a.1);
        assert!(a.acquired >= b.acquired, "{name}: {b:?} -> {a:?}");
        assert!(a.contended >= b.contended, "{name}: {b:?} -> {a:?}");
        assert!(
            a.contended <= a.acquired || name == "remote push",
            "{name}: {a:?}"
        );
        assert!(a.max_wait_ns <= a.waited_ns, "{name}: {a:?}");
    }
    assert!(after[0].1.acquired > before[0].1.acquired, "heap list");
    assert!(after[1].1.acquired > before[1].1.acquired, "abandoned list");
    assert!(after[2].1.acquired > before[2].1.acquired, "lru");
    assert!(after[4].1.acquired > before[4].1.acquired, "medium");
    // Remote pushes count only their CAS retries.
    assert_eq!(after[3].1.acquired, 0);
}
