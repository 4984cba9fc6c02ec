//! A `hakmem::Heap` gives back the pages of a big block that a bigger one superseded (the old
//! buffer of a collection that grew), as the block goes, rather than caching them. One test in
//! its own binary: no other test's thread allocates big blocks meanwhile, so nothing else can
//! take the freed region out of the cache and touch it before the check.
use allocator_api2::vec::Vec as HVec;
use hakmem::Heap;

#[global_allocator]
static A: hakmem::HakMem = hakmem::HakMem;

/// How many of the whole pages inside `[at, at + len)` are resident (`mincore`), and how many
/// there are.
fn resident_pages(at: usize, len: usize) -> (usize, usize) {
    let page = 4096;
    let start = at.next_multiple_of(page);
    let end = (at + len) & !(page - 1);
    let n = (end - start) / page;
    let mut vec = vec![0u8; n];
    // SAFETY: `[start, end)` lies in a mapping of hakmem's (a cached region stays mapped);
    // `vec` has one byte per page.
    let rc = unsafe { libc::mincore(start as *mut libc::c_void, end - start, vec.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore");
    (vec.iter().filter(|&&b| b & 1 != 0).count(), n)
}

#[test]
fn a_grown_collections_old_big_buffers_go_back_to_the_os() {
    let heap = Heap::new();
    // A medium block (256 KiB), then a large one (4 MiB), each filled, each superseded by a
    // bigger buffer when the vector grows past it.
    for (old_len, new_len) in [(256 << 10, 1 << 20), (4 << 20, 16 << 20)] {
        let mut v: HVec<u8, &Heap> = HVec::with_capacity_in(old_len, &heap);
        v.resize(old_len, 7);
        let old = v.as_ptr() as usize;
        let (resident, pages) = resident_pages(old, old_len);
        assert!(pages >= old_len / 4096 - 1);
        assert_eq!(resident, pages, "filled");
        v.reserve_exact(new_len - old_len);
        assert_ne!(v.as_ptr() as usize, old, "moved to a new block");
        assert_eq!(
            resident_pages(old, old_len).0,
            0,
            "the old buffer's pages went back"
        );
        assert!(v.iter().all(|&b| b == 7), "the contents moved whole");
    }
}
