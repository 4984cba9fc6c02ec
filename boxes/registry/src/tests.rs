extern crate std;
use super::*;
use std::boxed::Box;
use std::sync::atomic::{AtomicBool, AtomicUsize as StdAtomic, Ordering::SeqCst};

/// Heap leaves that count maps and unmaps, and refuse while `refuse` is set.
#[derive(Default)]
struct Counting {
    maps: StdAtomic,
    unmaps: StdAtomic,
    refuse: AtomicBool,
}

// SAFETY: forwards to HeapLeaves, which upholds the contract.
unsafe impl LeafSource for Counting {
    fn map(&self, layout: Layout) -> Option<NonNull<u8>> {
        if self.refuse.load(SeqCst) {
            return None;
        }
        let p = HeapLeaves.map(layout)?;
        self.maps.fetch_add(1, SeqCst);
        Some(p)
    }
    unsafe fn unmap(&self, leaf: NonNull<u8>, layout: Layout) {
        self.unmaps.fetch_add(1, SeqCst);
        // SAFETY: forwarded.
        unsafe { HeapLeaves.unmap(leaf, layout) }
    }
}

fn counting() -> &'static Counting {
    Box::leak(Box::default())
}

/// A leaf's span of address space.
const LEAF_SPAN: usize = LEAF_CHUNKS * CHUNK;

/// Registers a region no reader dereferences.
fn register(r: &Registry, base: usize, len: usize, kind: Kind) -> Result<(), RegisterError> {
    // SAFETY: these registries are read only through `lookup`; nothing reads a header.
    unsafe { r.register(base, len, kind) }
}

#[test]
fn lookup_finds_every_address_of_a_registered_region() {
    let r = Registry::new(&HeapLeaves);
    let base = 3 * CHUNK;
    register(&r, base, 2 * CHUNK + 4096, Kind::Large).unwrap();
    for addr in [base, base + 1, base + CHUNK + 7, base + 2 * CHUNK + 100] {
        assert_eq!(r.lookup(addr), Some((base, Kind::Large)), "addr {addr:#x}");
    }
    assert_eq!(r.lookup(base - 1), None);
    assert_eq!(r.lookup(base + 3 * CHUNK), None);
}

#[test]
fn every_kind_reads_back_as_registered() {
    let r = Registry::new(&HeapLeaves);
    for (i, kind) in [Kind::Superslab, Kind::Large, Kind::Medium]
        .into_iter()
        .enumerate()
    {
        let base = (5 + i) * CHUNK;
        register(&r, base, CHUNK, kind).unwrap();
        assert_eq!(r.lookup(base + CHUNK - 1), Some((base, kind)), "{kind:?}");
    }
    r.unregister(7 * CHUNK, CHUNK);
    assert_eq!(r.lookup(7 * CHUNK), None);
    assert_eq!(r.lookup(6 * CHUNK), Some((6 * CHUNK, Kind::Large)));
}

#[test]
fn unregister_withdraws_and_leaves_neighbours() {
    let r = Registry::new(&HeapLeaves);
    register(&r, CHUNK, CHUNK, Kind::Superslab).unwrap();
    register(&r, 2 * CHUNK, CHUNK, Kind::Superslab).unwrap();
    r.unregister(CHUNK, CHUNK);
    assert_eq!(r.lookup(CHUNK + 5), None);
    assert_eq!(r.lookup(2 * CHUNK + 5), Some((2 * CHUNK, Kind::Superslab)));
    // Withdrawing where no leaf was ever mapped is a no-op.
    r.unregister(5 * LEAF_SPAN, CHUNK);
}

#[test]
fn occupied_misaligned_and_out_of_range_are_refused() {
    let r = Registry::new(&HeapLeaves);
    register(&r, 2 * CHUNK, CHUNK, Kind::Superslab).unwrap();
    assert_eq!(
        register(&r, CHUNK, 2 * CHUNK, Kind::Large),
        Err(RegisterError::Occupied)
    );
    // The refused call left no trace of itself.
    assert_eq!(r.lookup(CHUNK), None);
    assert_eq!(r.lookup(2 * CHUNK), Some((2 * CHUNK, Kind::Superslab)));
    assert_eq!(
        register(&r, CHUNK + 4096, CHUNK, Kind::Large),
        Err(RegisterError::Misaligned)
    );
    assert_eq!(
        register(&r, 4 * CHUNK, 0, Kind::Large),
        Err(RegisterError::Misaligned)
    );
    let top = 1usize << ADDRESS_BITS;
    assert_eq!(
        register(&r, top - CHUNK, 2 * CHUNK, Kind::Large),
        Err(RegisterError::OutOfRange)
    );
    assert_eq!(
        register(&r, top, CHUNK, Kind::Large),
        Err(RegisterError::OutOfRange)
    );
    assert_eq!(
        register(&r, usize::MAX & !(CHUNK - 1), 2 * CHUNK, Kind::Large),
        Err(RegisterError::OutOfRange)
    );
    // The last chunk of the covered space is usable.
    register(&r, top - CHUNK, CHUNK, Kind::Large).unwrap();
    assert_eq!(r.lookup(top - 1), Some((top - CHUNK, Kind::Large)));
    assert_eq!(r.lookup(top), None);
    // Addresses beyond the covered space are simply not ours.
    assert_eq!(r.lookup(usize::MAX), None);
}

#[test]
fn errors_say_what_went_wrong() {
    use std::string::ToString;
    assert_eq!(
        RegisterError::NoMemory.to_string(),
        "the OS refused memory for a registry leaf"
    );
    let e: &dyn core::error::Error = &RegisterError::Occupied;
    assert!(e.to_string().contains("already belongs"));
}

#[test]
fn leaves_are_mapped_only_where_regions_are() {
    let src = counting();
    let r = Registry::new(src);
    assert_eq!((r.leaves(), src.maps.load(SeqCst)), (0, 0));
    // Lookups anywhere map nothing.
    for addr in [0, CHUNK, 7 * LEAF_SPAN + 3, usize::MAX] {
        assert_eq!(r.lookup(addr), None);
    }
    assert_eq!(src.maps.load(SeqCst), 0);
    let w = 1000 * LEAF_SPAN;
    register(&r, w + CHUNK, CHUNK, Kind::Superslab).unwrap();
    register(&r, w + 9 * CHUNK, CHUNK, Kind::Superslab).unwrap();
    assert_eq!(r.leaves(), 1, "one leaf for regions in one 128 GiB window");
    register(&r, 3 * LEAF_SPAN, CHUNK, Kind::Large).unwrap();
    assert_eq!(r.leaves(), 2);
    // A region across a leaf boundary maps both leaves, and is found through both.
    let across = 6 * LEAF_SPAN - CHUNK;
    register(&r, across, 2 * CHUNK, Kind::Large).unwrap();
    assert_eq!(r.leaves(), 4);
    assert_eq!(r.lookup(across), Some((across, Kind::Large)));
    assert_eq!(r.lookup(across + CHUNK + 1), Some((across, Kind::Large)));
    // A refusal across a leaf boundary undoes the claim in the first leaf.
    register(&r, 9 * LEAF_SPAN, CHUNK, Kind::Superslab).unwrap();
    let clash = 9 * LEAF_SPAN - 2 * CHUNK;
    assert_eq!(
        register(&r, clash, 3 * CHUNK, Kind::Large),
        Err(RegisterError::Occupied)
    );
    assert_eq!((r.lookup(clash), r.lookup(clash + CHUNK)), (None, None));
    assert_eq!(
        r.lookup(9 * LEAF_SPAN),
        Some((9 * LEAF_SPAN, Kind::Superslab))
    );
    // Installed leaves answer "not ours" for their empty chunks.
    assert_eq!(r.lookup(w + 2 * CHUNK), None);
    assert_eq!(src.maps.load(SeqCst), 6);
    drop(r);
    assert_eq!(
        src.unmaps.load(SeqCst),
        6,
        "a dropped registry gives its leaves back"
    );
}

#[test]
fn a_refused_leaf_is_an_error_that_leaves_nothing_behind() {
    let src = counting();
    let r = Registry::new(src);
    src.refuse.store(true, SeqCst);
    let base = 77 * LEAF_SPAN;
    assert_eq!(
        register(&r, base, CHUNK, Kind::Superslab),
        Err(RegisterError::NoMemory)
    );
    assert_eq!(r.prepare(base, CHUNK), Err(RegisterError::NoMemory));
    assert_eq!(r.lookup(base), None);
    assert_eq!(r.leaves(), 0);
    // Not permanent: once the OS gives memory again, the same call succeeds.
    src.refuse.store(false, SeqCst);
    register(&r, base, CHUNK, Kind::Superslab).unwrap();
    assert_eq!(r.lookup(base + 1), Some((base, Kind::Superslab)));
    // A region needing a second leaf while the OS refuses: nothing of it is registered, even
    // in the leaf that exists.
    src.refuse.store(true, SeqCst);
    let across = 78 * LEAF_SPAN - CHUNK;
    assert_eq!(
        register(&r, across, 2 * CHUNK, Kind::Large),
        Err(RegisterError::NoMemory)
    );
    assert_eq!(r.lookup(across), None);
    // After `prepare`, registering needs no memory.
    src.refuse.store(false, SeqCst);
    r.prepare(across, 2 * CHUNK).unwrap();
    src.refuse.store(true, SeqCst);
    register(&r, across, 2 * CHUNK, Kind::Large).unwrap();
    assert_eq!(r.lookup(across + CHUNK), Some((across, Kind::Large)));
}

#[test]
fn lookups_of_any_address_never_fault() {
    let r = Registry::new(&HeapLeaves);
    register(&r, 5 * CHUNK, CHUNK, Kind::Superslab).unwrap();
    register(&r, (1 << 47) - CHUNK, CHUNK, Kind::Large).unwrap();
    // A cheap pseudo-random walk over the whole 64-bit space, plus the edges.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut found = 0;
    for i in 0..200_000u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let addr = match i % 4 {
            0 => x as usize,
            1 => (x as usize) & ((1 << 48) - 1),
            2 => (x as usize) & ((1 << 24) - 1),
            _ => (1usize << 47) - 1 - ((x as usize) & ((1 << 22) - 1)),
        };
        found += usize::from(r.lookup(addr).is_some());
    }
    assert!(found > 0, "the walk hit the registered regions");
    for addr in [0, 1, usize::MAX, 1 << 63, 1 << 48, (1 << 48) - 1] {
        assert_eq!(r.lookup(addr), None, "{addr:#x}");
    }
}

#[test]
fn threads_racing_for_one_leaf_install_exactly_one() {
    for _ in 0..20 {
        let src = counting();
        let r = Registry::new(src);
        let base = 42 * LEAF_SPAN;
        std::thread::scope(|s| {
            for t in 0..4 {
                let r = &r;
                s.spawn(move || {
                    for i in 0..8 {
                        let b = base + (t * 8 + i) * CHUNK;
                        register(r, b, CHUNK, Kind::Superslab).unwrap();
                    }
                });
            }
        });
        assert_eq!(r.leaves(), 1);
        assert_eq!(
            src.maps.load(SeqCst) - src.unmaps.load(SeqCst),
            1,
            "losers unmapped their leaves"
        );
        for c in 0..32 {
            let b = base + c * CHUNK;
            assert_eq!(r.lookup(b + 100), Some((b, Kind::Superslab)));
        }
        drop(r);
        assert_eq!(src.maps.load(SeqCst), src.unmaps.load(SeqCst));
    }
}

#[test]
fn the_root_is_small_and_a_leaf_covers_128_gib() {
    // The root, and the lookup sections' stripes (R6), one 128-byte line each.
    assert!(core::mem::size_of::<Registry>() <= ROOT_LEN * 8 + (STRIPES + 2) * 128);
    assert_eq!(ROOT_LEN * 8, 16 * 1024);
    assert_eq!(LEAF_LAYOUT.size(), 512 * 1024);
    assert_eq!(LEAF_CHUNKS * CHUNK, 128 << 30);
}

/// R6: `unregister` returns only once a section open before it has closed, on any stripe; a
/// section opened after it sees the region gone.
#[test]
fn unregister_waits_for_open_sections() {
    use std::sync::Arc;
    static LEAVES: HeapLeaves = HeapLeaves;
    let reg = Arc::new(Registry::new(&LEAVES));
    let base = 5 * CHUNK;
    for hint in [0, 1, STRIPES - 1, usize::MAX] {
        // SAFETY: nothing reads a header through this registry.
        unsafe { reg.register(base, CHUNK, Kind::Superslab) }.unwrap();
        let closed = Arc::new(AtomicBool::new(false));
        let section = reg.section(hint);
        assert!(reg.lookup(base).is_some());
        let (r2, c2) = (reg.clone(), closed.clone());
        let withdrawer = std::thread::spawn(move || {
            r2.unregister(base, CHUNK);
            assert!(
                c2.load(SeqCst),
                "unregister returned while a section was open (hint {hint})"
            );
        });
        // However long this thread takes, the withdrawal waits.
        for _ in 0..100 {
            std::thread::yield_now();
        }
        closed.store(true, SeqCst);
        drop(section);
        withdrawer.join().unwrap();
        let _after = reg.section(hint);
        assert_eq!(reg.lookup(base), None);
    }
}
