//! # hakmem-registry: is this address inside a live region of ours, and which one?
//!
//! One job: map any address to the region (superslab or large region) that covers it, in O(1),
//! lock-free, without allocating.
//!
//! The registry is a flat table with one word per 2 MiB chunk of the address space. A region is
//! 2 MiB-aligned; every chunk it covers holds `base | kind`. A lookup is one shift and one load.
//! The table's memory comes from the caller (a `MAP_NORESERVE` mapping in the allocator, so only
//! pages under live regions are ever committed; a small array in tests and models).
//!
//! ## Invariants
//! - **R1 (publication).** A region's creator initialises its header *before* [`Registry::register`],
//!   which stores with `Release`; [`Registry::lookup`] loads with `Acquire`. So a lookup that finds
//!   a region also sees its header fully initialised.
//! - **R2 (withdrawal).** A region is unregistered *before* it is unmapped or reused. After
//!   [`Registry::unregister`] happens-before a lookup, that lookup reports the chunks as not ours.
//! - **R3 (exclusive chunks).** A chunk belongs to at most one registered region; registering an
//!   occupied chunk is refused and changes nothing.
//! - **R4 (no allocation).** Nothing here allocates or locks; a lookup never faults for any
//!   address, covered by the table or not.
#![deny(unsafe_op_in_unsafe_fn)]
#![no_std]

mod sync;
pub use sync::AtomicUsize;
use sync::Ordering;

/// log2 of the chunk size: every region is aligned to, and registered in units of, 2 MiB.
pub const CHUNK_SHIFT: u32 = 21;
/// The chunk size.
pub const CHUNK: usize = 1 << CHUNK_SHIFT;
/// Entries needed to cover a 47-bit user address space.
pub const FULL_ENTRIES: usize = 1 << (47 - CHUNK_SHIFT);

const KIND_MASK: usize = 0b11;

/// What a region is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A superslab of small blocks.
    Superslab = 1,
    /// A large region holding one user block.
    Large = 2,
}

/// Why [`Registry::register`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterError {
    /// The region is not 2 MiB-aligned, or is empty.
    Misaligned,
    /// The region lies (partly) beyond the table.
    OutOfRange,
    /// A chunk already belongs to a registered region (R3).
    Occupied,
}

/// The flat address-to-region table.
pub struct Registry {
    table: *const AtomicUsize,
    first: usize,
    len: usize,
}

// SAFETY: the table is only ever accessed through atomics; the raw pointer is immutable.
unsafe impl Sync for Registry {}
// SAFETY: as above, the registry owns no thread-affine state.
unsafe impl Send for Registry {}

impl Registry {
    /// A registry over `table`; entry `i` covers addresses `[i << 21, (i + 1) << 21)`.
    pub fn new(table: &'static [AtomicUsize]) -> Self {
        Self::with_window(table, 0)
    }

    /// A registry over `table` covering only chunks `first..first + table.len()` (for models
    /// and tests whose regions live in one small arena).
    pub fn with_window(table: &'static [AtomicUsize], first: usize) -> Self {
        Self {
            table: table.as_ptr(),
            first,
            len: table.len(),
        }
    }

    /// A registry over `len` zeroed words at `table`.
    ///
    /// # Safety
    /// `table` must point to `len` words of zeroed memory, valid for the rest of the program
    /// (zeroed memory is a valid `AtomicUsize` holding 0).
    pub const unsafe fn from_raw(table: *const AtomicUsize, len: usize) -> Self {
        Self {
            table,
            first: 0,
            len,
        }
    }

    /// The number of chunks covered.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the table covers nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline(always)]
    fn slot(&self, chunk: usize) -> Option<&AtomicUsize> {
        let index = chunk.wrapping_sub(self.first);
        if index < self.len {
            // SAFETY: index < len, and the table is valid for len words for the program's life.
            Some(unsafe { &*self.table.add(index) })
        } else {
            None
        }
    }

    /// The region covering `addr`, as `(base, kind)`, or `None` when not ours (R1, R4).
    #[inline(always)]
    pub fn lookup(&self, addr: usize) -> Option<(usize, Kind)> {
        let e = self.slot(addr >> CHUNK_SHIFT)?.load(Ordering::Acquire);
        match e & KIND_MASK {
            1 => Some((e & !KIND_MASK, Kind::Superslab)),
            2 => Some((e & !KIND_MASK, Kind::Large)),
            _ => None,
        }
    }

    fn chunks(&self, base: usize, len: usize) -> Result<core::ops::Range<usize>, RegisterError> {
        if base & (CHUNK - 1) != 0 || len == 0 {
            return Err(RegisterError::Misaligned);
        }
        let first = base >> CHUNK_SHIFT;
        let last = (base + len - 1) >> CHUNK_SHIFT;
        if first < self.first || last - self.first >= self.len {
            return Err(RegisterError::OutOfRange);
        }
        Ok(first..last + 1)
    }

    /// Publishes `[base, base + len)` as a region of `kind` (R1, R3). The header at `base` must be
    /// fully written before this call.
    pub fn register(&self, base: usize, len: usize, kind: Kind) -> Result<(), RegisterError> {
        let chunks = self.chunks(base, len)?;
        let entry = base | kind as usize;
        for (n, i) in chunks.clone().enumerate() {
            let slot = self.slot(i).expect("chunks() checked the range");
            if slot
                .compare_exchange(0, entry, PUBLISH, Ordering::Relaxed)
                .is_err()
            {
                // R3: undo what this call claimed, leave others' entries alone.
                for j in chunks.start..chunks.start + n {
                    self.slot(j).expect("in range").store(0, Ordering::Release);
                }
                return Err(RegisterError::Occupied);
            }
        }
        Ok(())
    }

    /// Withdraws `[base, base + len)`; call before the region is unmapped or reused (R2).
    /// Chunks that hold another region's entry are left alone.
    pub fn unregister(&self, base: usize, len: usize) {
        let Ok(chunks) = self.chunks(base, len) else {
            return;
        };
        for i in chunks {
            let slot = self.slot(i).expect("chunks() checked the range");
            let e = slot.load(Ordering::Relaxed);
            if e & !KIND_MASK == base {
                slot.store(0, Ordering::Release);
            }
        }
    }
}

/// R1's ordering. The seeded bug `relaxed_order` weakens it to show the model catches it.
#[cfg(not(hakmem_seeded_bug = "relaxed_order"))]
const PUBLISH: Ordering = Ordering::Release;
#[cfg(hakmem_seeded_bug = "relaxed_order")]
const PUBLISH: Ordering = Ordering::Relaxed;

#[cfg(all(test, not(loom)))]
mod tests {
    extern crate std;
    use super::*;
    use std::{boxed::Box, vec::Vec};

    fn registry(chunks: usize) -> Registry {
        let v: Vec<AtomicUsize> = (0..chunks).map(|_| AtomicUsize::new(0)).collect();
        Registry::new(Box::leak(v.into_boxed_slice()))
    }

    #[test]
    fn lookup_finds_every_address_of_a_registered_region() {
        let r = registry(16);
        let base = 3 * CHUNK;
        r.register(base, 2 * CHUNK + 4096, Kind::Large).unwrap();
        for addr in [base, base + 1, base + CHUNK + 7, base + 2 * CHUNK + 100] {
            assert_eq!(r.lookup(addr), Some((base, Kind::Large)), "addr {addr:#x}");
        }
        assert_eq!(r.lookup(base - 1), None);
        assert_eq!(r.lookup(base + 3 * CHUNK), None);
    }

    #[test]
    fn unregister_withdraws_and_leaves_neighbours() {
        let r = registry(16);
        r.register(CHUNK, CHUNK, Kind::Superslab).unwrap();
        r.register(2 * CHUNK, CHUNK, Kind::Superslab).unwrap();
        r.unregister(CHUNK, CHUNK);
        assert_eq!(r.lookup(CHUNK + 5), None);
        assert_eq!(r.lookup(2 * CHUNK + 5), Some((2 * CHUNK, Kind::Superslab)));
    }

    #[test]
    fn occupied_misaligned_and_out_of_range_are_refused() {
        let r = registry(8);
        r.register(2 * CHUNK, CHUNK, Kind::Superslab).unwrap();
        assert_eq!(
            r.register(CHUNK, 2 * CHUNK, Kind::Large),
            Err(RegisterError::Occupied)
        );
        // The refused call left no trace of itself.
        assert_eq!(r.lookup(CHUNK), None);
        assert_eq!(r.lookup(2 * CHUNK), Some((2 * CHUNK, Kind::Superslab)));
        assert_eq!(
            r.register(CHUNK + 4096, CHUNK, Kind::Large),
            Err(RegisterError::Misaligned)
        );
        assert_eq!(
            r.register(7 * CHUNK, 2 * CHUNK, Kind::Large),
            Err(RegisterError::OutOfRange)
        );
        // Addresses beyond the table are simply not ours.
        assert_eq!(r.lookup(usize::MAX), None);
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    extern crate std;
    use super::*;
    use loom::cell::UnsafeCell;
    use loom::sync::Arc;
    use std::{boxed::Box, vec::Vec};

    struct Region {
        header: UnsafeCell<usize>,
    }

    fn registry(chunks: usize) -> Registry {
        let v: Vec<AtomicUsize> = (0..chunks).map(|_| AtomicUsize::new(0)).collect();
        Registry::new(Box::leak(v.into_boxed_slice()))
    }

    /// Model: registry publication (R1, R2). A creator writes a region's header and registers
    /// it; a concurrent lookup that finds the region must see the header written. After the
    /// creator unregisters, a lookup ordered after it reports the region as not ours.
    #[test]
    fn publication() {
        loom::model(|| {
            let reg = Arc::new(registry(4));
            let region = Arc::new(Region {
                header: UnsafeCell::new(0),
            });
            let base = CHUNK;
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
            reg.register(base, CHUNK, Kind::Superslab).unwrap();
            reader.join().unwrap();
            reg.unregister(base, CHUNK);
            assert_eq!(reg.lookup(base + 64), None);
        });
    }
}
