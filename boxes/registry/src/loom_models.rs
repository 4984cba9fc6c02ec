//! Loom models of the registry's lock-free protocols: publication (R1, R2) and the leaf
//! install race (R5). Run: `RUSTFLAGS="--cfg loom" cargo test -p hakmem-registry --release`.
//! Under loom the geometry is 4 leaves of 2 chunks, counted from chunk 0 by `Registry::new`
//! (whose leaves, unlike `with_origin`'s, start missing): the model's "regions" are addresses
//! only, their headers separate cells.
extern crate std;
use super::*;
use loom::cell::UnsafeCell;
use loom::sync::Arc;
use std::boxed::Box;
use std::sync::atomic::{AtomicUsize as StdAtomic, Ordering::SeqCst};

struct Region {
    header: UnsafeCell<usize>,
}

/// Heap leaves counting maps and unmaps (std atomics: scaffolding, not modelled).
#[derive(Default)]
struct Counting {
    maps: StdAtomic,
    unmaps: StdAtomic,
}

// SAFETY: forwards to HeapLeaves, which upholds the contract.
unsafe impl LeafSource for Counting {
    fn map(&self, layout: Layout) -> Option<NonNull<u8>> {
        self.maps.fetch_add(1, SeqCst);
        HeapLeaves.map(layout)
    }
    unsafe fn unmap(&self, leaf: NonNull<u8>, layout: Layout) {
        self.unmaps.fetch_add(1, SeqCst);
        // SAFETY: forwarded.
        unsafe { HeapLeaves.unmap(leaf, layout) }
    }
}

/// Model: registry publication (R1, R2). A creator writes a region's header and registers
/// it; a concurrent lookup that finds the region must see the header written. After the
/// creator unregisters, a lookup ordered after it reports the region as not ours. The leaf is
/// mapped beforehand, so the entry's own ordering is all that publishes the header (a leaf
/// installed by the creator would publish it too, and hide a weak entry store).
#[test]
fn publication() {
    loom::model(|| {
        let reg = Arc::new(Registry::new(&HeapLeaves));
        let region = Arc::new(Region {
            header: UnsafeCell::new(0),
        });
        let base = CHUNK;
        reg.prepare(base, CHUNK).unwrap();
        let (r2, g2) = (reg.clone(), region.clone());
        let reader = loom::thread::spawn(move || {
            if let Some((b, kind)) = r2.lookup(base + 64) {
                assert_eq!((b, kind), (base, Kind::Superslab));
                // R1: a causality violation here is what a weak ordering produces.
                let h = g2.header.with(|p| unsafe { *p });
                assert_eq!(h, 0x5eed);
            }
        });
        region.header.with_mut(|p| unsafe { *p = 0x5eed });
        // SAFETY: the model's reader reads the header cell only after finding the region.
        unsafe { reg.register(base, CHUNK, Kind::Superslab) }.unwrap();
        reader.join().unwrap();
        reg.unregister(base, CHUNK);
        assert_eq!(reg.lookup(base + 64), None);
    });
}

/// Model: the leaf install race (R4, R5). Two creators register regions under the same
/// missing leaf at once while a reader looks one up. Both succeed, exactly one leaf is
/// installed, the loser's leaf goes back unpublished, and a reader that finds a region sees
/// its header.
#[test]
fn leaf_install() {
    loom::model(|| {
        let src: &'static Counting = Box::leak(Box::default());
        let reg = Arc::new(Registry::new(src));
        let region = Arc::new(Region {
            header: UnsafeCell::new(0),
        });
        // Chunks 2 and 3: one leaf of the model geometry.
        let (a, b) = (2 * CHUNK, 3 * CHUNK);
        let (r2, g2) = (reg.clone(), region.clone());
        let creator = loom::thread::spawn(move || {
            g2.header.with_mut(|p| unsafe { *p = 0xa });
            // SAFETY: the header cell is written; only the model's reader reads it.
            unsafe { r2.register(a, CHUNK, Kind::Superslab) }.unwrap();
        });
        let (r3, g3) = (reg.clone(), region.clone());
        let reader = loom::thread::spawn(move || {
            if let Some(found) = r3.lookup(a + 8) {
                assert_eq!(found, (a, Kind::Superslab));
                assert_eq!(g3.header.with(|p| unsafe { *p }), 0xa);
            }
        });
        // SAFETY: nothing reads a header for this region.
        unsafe { reg.register(b, CHUNK, Kind::Large) }.unwrap();
        creator.join().unwrap();
        reader.join().unwrap();
        assert_eq!(reg.lookup(a), Some((a, Kind::Superslab)));
        assert_eq!(reg.lookup(b + 1), Some((b, Kind::Large)));
        assert_eq!(reg.leaves(), 1, "exactly one leaf installed");
        assert_eq!(
            src.maps.load(SeqCst) - src.unmaps.load(SeqCst),
            1,
            "a loser gives its leaf back"
        );
        drop(reg);
        assert_eq!(src.maps.load(SeqCst), src.unmaps.load(SeqCst));
    });
}

/// Model: lookup sections against withdrawals (R2, R6). A reader opens a section, looks up two
/// regions and reads the header of each one it finds; the owner withdraws one region, then
/// the other, and "unmaps" each (writes its header cell) once `unregister` returns. A header
/// read that is not ordered before its unmap is a causality violation: a section that saw a
/// region must be waited for. Two withdrawals in a row make the reader's phase matter: a
/// reader that stalls between its epoch load and its increment must not count in a phase the
/// second grace period does not wait for (the seeded bug `section_no_recheck`).
#[test]
fn lookup_section() {
    loom::model(|| {
        let reg = Arc::new(Registry::new(&HeapLeaves));
        let regions = Arc::new([
            Region {
                header: UnsafeCell::new(0),
            },
            Region {
                header: UnsafeCell::new(0),
            },
        ]);
        let bases = [CHUNK, 2 * CHUNK];
        for (i, &base) in bases.iter().enumerate() {
            regions[i].header.with_mut(|p| unsafe { *p = 0x5eed });
            // SAFETY: the model's reader reads the header cell only inside a section.
            unsafe { reg.register(base, CHUNK, Kind::Large) }.unwrap();
        }
        let (r2, g2) = (reg.clone(), regions.clone());
        let reader = loom::thread::spawn(move || {
            let _section = r2.section(1);
            for (i, &base) in bases.iter().enumerate() {
                if let Some(found) = r2.lookup(base + 64) {
                    assert_eq!(found, (base, Kind::Large));
                    // R6: read while the section is open; the owner's unmap must wait.
                    let h = g2[i].header.with(|p| unsafe { *p });
                    assert_eq!(h, 0x5eed, "a header read after its region went away");
                }
            }
        });
        for (i, &base) in bases.iter().enumerate() {
            reg.unregister(base, CHUNK);
            // The unmap: a write no open section may race with.
            regions[i].header.with_mut(|p| unsafe { *p = 0xdead });
        }
        reader.join().unwrap();
        assert_eq!(reg.lookup(bases[0]), None);
        assert_eq!(reg.lookup(bases[1]), None);
    });
}
