//! # hakmem-registry: is this address inside a live region of ours, and which one?
//!
//! One job: map any address to the region (superslab or large region) that covers it, in O(1),
//! lock-free, without allocating.
//!
//! The registry is a two-level table over a 48-bit address space at 2 MiB ("chunk")
//! granularity, like jemalloc's rtree and mimalloc's page map. A small root of
//! [`ROOT_LEN`] leaf pointers is held inline; a leaf of [`LEAF_CHUNKS`] words (512 KiB of
//! address space, covering 128 GiB) is mapped through a [`LeafSource`] the first time a region
//! is registered in its range. A region is 2 MiB-aligned, and every chunk it covers holds
//! `base | kind`. A lookup is a bounds check, a root load and a leaf load: a root entry without
//! a leaf points to a shared empty one, so there is no null check, and entries are biased so
//! the leaf is indexed by the chunk number without a mask. A process whose regions lie in one
//! 128 GiB window reserves one leaf, and commits one page of it per GiB of regions.
//!
//! ```text
//! address bits: | 47 ..... 37 | 36 ....... 21 | 20 ...... 0 |
//!               |  root index |  leaf index   | in the chunk|
//! root[2048] --> leaf[65536] of (region base | kind), 0 = not ours
//!          `---> (no leaf yet) the shared empty leaf: all 0
//! ```
//!
//! ## Example
//! ```
//! use core::alloc::Layout;
//! use core::ptr::NonNull;
//! use hakmem_registry::{Kind, LeafSource, Registry, CHUNK};
//!
//! /// Leaves from the std heap (the allocator itself maps them with mmap).
//! struct StdLeaves;
//! // SAFETY: `map` returns fresh zeroed memory of the layout, or `None`; `unmap` frees what
//! // `map` returned, with the same layout.
//! unsafe impl LeafSource for StdLeaves {
//!     fn map(&self, layout: Layout) -> Option<NonNull<u8>> {
//!         if layout.size() == 0 {
//!             return None;
//!         }
//!         // SAFETY: a non-zero size.
//!         NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })
//!     }
//!     unsafe fn unmap(&self, leaf: NonNull<u8>, layout: Layout) {
//!         // SAFETY: allocated by `map` with this layout (the caller's contract).
//!         unsafe { std::alloc::dealloc(leaf.as_ptr(), layout) }
//!     }
//! }
//!
//! let registry = Registry::new(&StdLeaves);
//! assert_eq!(registry.leaves(), 0, "nothing mapped until the first region");
//!
//! // A large region of three chunks at 6 MiB (only its address matters here).
//! let base = 3 * CHUNK;
//! // SAFETY: this registry is never handed to code that reads headers (such as
//! // `hakmem_route::classify`), so nothing dereferences `base`.
//! unsafe { registry.register(base, 2 * CHUNK + 4096, Kind::Large) }.unwrap();
//! assert_eq!(registry.leaves(), 1);
//!
//! assert_eq!(registry.lookup(base + CHUNK + 7), Some((base, Kind::Large)));
//! assert_eq!(registry.lookup(base - 1), None);
//! // Any address at all can be asked about: a missing leaf, or an address beyond the
//! // covered space, is simply not ours.
//! assert_eq!(registry.lookup(usize::MAX), None);
//! assert_eq!(registry.lookup(0x7000_0000_0000), None);
//!
//! registry.unregister(base, 2 * CHUNK + 4096);
//! assert_eq!(registry.lookup(base), None);
//! ```
//!
//! Registering is `unsafe`, since readers dereference what is registered as a header:
//! ```compile_fail,E0133
//! # use hakmem_registry::{Kind, Registry};
//! fn publish_anything(registry: &Registry) {
//!     // error[E0133]: call to unsafe function requires unsafe block
//!     let _ = registry.register(0x20_0000, 0x20_0000, Kind::Superslab);
//! }
//! ```
//!
//! ## Invariants
//! - **R1 (publication).** A region's creator initialises its header *before*
//!   [`Registry::register`], which stores with `Release`; [`Registry::lookup`] loads with
//!   `Acquire`. So a lookup that finds a region also sees its header fully initialised.
//! - **R2 (withdrawal).** A region is unregistered *before* it is unmapped or reused. After
//!   [`Registry::unregister`] happens-before a lookup, that lookup reports the chunks as not ours.
//!   [`Registry::unregister`] returns only after a grace period (R6), so nothing a lookup
//!   section found is unmapped or reused while the section is open.
//! - **R3 (exclusive chunks).** A chunk belongs to at most one registered region; registering an
//!   occupied chunk is refused and changes nothing.
//! - **R4 (no allocation, no fault).** A lookup never allocates, locks or faults, for any
//!   address: one beyond the covered space, or under a leaf not mapped yet, is not ours.
//!   Nothing here allocates except [`Registry::register`] and [`Registry::prepare`], which map
//!   a missing leaf through the [`LeafSource`] (and report [`RegisterError::NoMemory`] when it
//!   refuses).
//! - **R5 (leaves stay).** Every root entry points to a leaf: at first the shared empty leaf,
//!   which is never written. A leaf of its own is installed once, by a compare-and-swap from
//!   the empty leaf (`Release`, so a lookup that loads the root entry with `Acquire` sees the
//!   leaf zeroed); a thread that loses the race unmaps its own, never-published leaf. An
//!   installed leaf is never unmapped while the registry lives (in the allocator: while the
//!   process lives), so a leaf a lookup loaded stays valid without any lock or pin.
//! - **R6 (lookup sections).** A reader that goes on to read the memory of a region it looked
//!   up, without holding a block of it, does so inside a [`Section`] ([`Registry::section`]):
//!   every withdrawal ([`Registry::unregister`], and the undoing of a refused
//!   [`Registry::register`]) waits, after its entries are cleared, until every section that was
//!   open has closed. So memory a section's lookup found stays mapped, and is not reused, until
//!   the section closes; a block a section proved live pins its region after that. A section
//!   is short (lookups and reads only): it never takes a lock, never waits, and never
//!   unregisters (a withdrawal inside a section would wait for itself). The protocol, two
//!   phase counters per stripe and an epoch, and why it needs no fence, is in `section.rs`;
//!   the loom model `lookup_section` checks it.
#![deny(unsafe_op_in_unsafe_fn)]
#![no_std]

mod section;
mod sync;
pub use section::{Section, STRIPES};
pub use sync::AtomicUsize;
use sync::{AtomicPtr, Ordering};

use core::alloc::Layout;
use core::ops::Range;
use core::ptr::NonNull;

/// The README's examples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// log2 of the chunk size: every region is aligned to, and registered in units of, 2 MiB.
pub const CHUNK_SHIFT: u32 = 21;
/// The chunk size.
pub const CHUNK: usize = 1 << CHUNK_SHIFT;
/// Bits of user address space covered: 48, as on x86_64 (47) and aarch64 (48) Linux.
pub const ADDRESS_BITS: u32 = 48;

/// log2 of the chunks per leaf. Under loom the geometry is tiny (see [`Registry::with_origin`]).
#[cfg(not(loom))]
const LEAF_BITS: u32 = 16;
#[cfg(loom)]
const LEAF_BITS: u32 = 1;
#[cfg(not(loom))]
const ROOT_BITS: u32 = ADDRESS_BITS - CHUNK_SHIFT - LEAF_BITS;
#[cfg(loom)]
const ROOT_BITS: u32 = 2;

/// Chunks one leaf covers (65 536: 128 GiB).
pub const LEAF_CHUNKS: usize = 1 << LEAF_BITS;
/// Leaves the root can point to (2048).
pub const ROOT_LEN: usize = 1 << ROOT_BITS;
/// Chunks the registry covers: the whole 48-bit space.
pub const COVERED_CHUNKS: usize = ROOT_LEN * LEAF_CHUNKS;
/// The size and alignment of one leaf, as asked of the [`LeafSource`] (512 KiB).
pub const LEAF_LAYOUT: Layout = Layout::new::<Leaf>();

const KIND_MASK: usize = 0b11;

#[cfg(not(loom))]
const _: () = assert!(COVERED_CHUNKS == 1 << (ADDRESS_BITS - CHUNK_SHIFT));

/// One leaf: an entry per chunk. Zeroed memory is a valid leaf of empty entries.
#[repr(C)]
struct Leaf {
    entries: [AtomicUsize; LEAF_CHUNKS],
}

/// What a region is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A superslab of small blocks.
    Superslab = 1,
    /// A large region holding one user block.
    Large = 2,
    /// A 2 MiB region of medium blocks (whole pages), each with its span map entry in the
    /// region's header (the facade's medium tier).
    Medium = 3,
}

/// Why [`Registry::register`] or [`Registry::prepare`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// The region is not 2 MiB-aligned, or is empty.
    #[error("region is empty or not 2 MiB-aligned")]
    Misaligned,
    /// The region lies (partly) beyond the covered address space.
    #[error("region lies beyond the 48-bit address space the registry covers")]
    OutOfRange,
    /// A chunk already belongs to a registered region (R3).
    #[error("a chunk of the region already belongs to a registered region")]
    Occupied,
    /// The [`LeafSource`] refused memory for a leaf (R4).
    #[error("the OS refused memory for a registry leaf")]
    NoMemory,
}

/// Where the registry's leaves come from: the allocator maps them from the OS; tests and models
/// use the heap.
///
/// # Safety
/// The registry trusts what `map` returns: `None`, or a pointer to `layout.size()` bytes aligned
/// to `layout.align()`, reading as zero, that nothing else uses until it is passed back to
/// `unmap`.
pub unsafe trait LeafSource: Sync {
    /// Fresh zeroed memory for `layout`, or `None` when the OS refuses.
    fn map(&self, layout: Layout) -> Option<NonNull<u8>>;

    /// Gives back what `map` returned.
    ///
    /// # Safety
    /// `leaf` came from this source's `map` with the same `layout`, and nothing uses it any
    /// more.
    unsafe fn unmap(&self, leaf: NonNull<u8>, layout: Layout);
}

#[cfg(any(test, loom, feature = "std"))]
pub use heap_leaves::HeapLeaves;

#[cfg(any(test, loom, feature = "std"))]
mod heap_leaves {
    extern crate std;
    use super::*;

    /// Leaves from the std heap (zeroed), for tests and models: feature `std`.
    #[derive(Clone, Copy, Debug, Default)]
    pub struct HeapLeaves;

    // SAFETY: `alloc_zeroed` returns fresh zeroed memory of the layout (or null, reported as
    // `None`); `unmap` frees it with the same layout.
    unsafe impl LeafSource for HeapLeaves {
        fn map(&self, layout: Layout) -> Option<NonNull<u8>> {
            if layout.size() == 0 {
                return None;
            }
            // SAFETY: a non-zero size (checked above).
            NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })
        }

        unsafe fn unmap(&self, leaf: NonNull<u8>, layout: Layout) {
            // SAFETY: the caller passes back what `map` allocated, with its layout.
            unsafe { std::alloc::dealloc(leaf.as_ptr(), layout) }
        }
    }
}

/// The leaf every root entry without a leaf of its own points to: all empty, never written (R5).
#[cfg(not(loom))]
static EMPTY: Leaf = Leaf {
    entries: [const { AtomicUsize::new(0) }; LEAF_CHUNKS],
};

/// The two-level address-to-region table.
pub struct Registry {
    /// Root entry `r` points to its leaf's entries *biased* by `-(r << LEAF_BITS)` (computed
    /// with wrapping pointer arithmetic, and only ever dereferenced back inside the leaf), so
    /// that a lookup indexes it by the whole chunk number, without masking. Before a leaf is
    /// installed, the entry points (biased alike) to the shared empty leaf, so a lookup needs
    /// no null check either.
    root: [AtomicPtr<AtomicUsize>; ROOT_LEN],
    /// The empty leaf (a static; under loom, one per registry, since loom atomics are built
    /// inside a model).
    empty: *const Leaf,
    source: &'static dyn LeafSource,
    /// Leaves installed: a statistic, not part of any protocol (so not a loom atomic).
    leaves: core::sync::atomic::AtomicUsize,
    /// Open lookup sections, and the grace periods withdrawals wait for (R6).
    sections: section::Sections,
    /// Under loom, the first chunk covered (see [`Registry::with_origin`]).
    #[cfg(loom)]
    first: usize,
}

// SAFETY: the root and the leaves are accessed only through atomics; `empty` points to a leaf
// that is never written, and `source` is `Sync`.
unsafe impl Sync for Registry {}
// SAFETY: as above; the registry holds no thread-affine state.
unsafe impl Send for Registry {}

/// `leaf`'s entries, biased for root index `r`.
#[inline(always)]
fn biased(leaf: *const Leaf, r: usize) -> *mut AtomicUsize {
    leaf.cast::<AtomicUsize>()
        .cast_mut()
        .wrapping_sub(r << LEAF_BITS)
}

impl Registry {
    /// An empty registry over the whole 48-bit address space; leaves come from `source` when
    /// regions are registered. Costs no memory beyond the inline root (16 KiB).
    pub fn new(source: &'static dyn LeafSource) -> Self {
        #[cfg(not(loom))]
        let empty: *const Leaf = &EMPTY;
        #[cfg(loom)]
        let empty: *const Leaf = {
            extern crate std;
            std::boxed::Box::leak(std::boxed::Box::new(Leaf {
                entries: core::array::from_fn(|_| AtomicUsize::new(0)),
            }))
        };
        Self {
            root: core::array::from_fn(|r| AtomicPtr::new(biased(empty, r))),
            empty,
            source,
            leaves: core::sync::atomic::AtomicUsize::new(0),
            sections: section::Sections::new(),
            #[cfg(loom)]
            first: 0,
        }
    }

    /// A registry for regions that lie in one arena starting at chunk `first_chunk`. The same
    /// as [`Registry::new`] in a normal build. Under `--cfg loom`, where every atomic is
    /// modelled, the geometry shrinks to a root of 4 leaves of 2 chunks, counted from
    /// `first_chunk`, and every leaf is installed up front: the models of the boxes above then
    /// explore their own protocols, not the leaf installation (this crate's models cover it).
    pub fn with_origin(source: &'static dyn LeafSource, first_chunk: usize) -> Self {
        #[cfg_attr(not(loom), allow(unused_mut))]
        let mut r = Self::new(source);
        #[cfg(loom)]
        {
            r.first = first_chunk;
            for i in 0..ROOT_LEN {
                r.own_leaf(i).expect("model leaves come from the heap");
            }
        }
        let _ = first_chunk;
        r
    }

    /// Leaves mapped so far (each [`LEAF_LAYOUT`]`.size()` bytes of address space).
    pub fn leaves(&self) -> usize {
        self.leaves.load(core::sync::atomic::Ordering::Relaxed)
    }

    /// The chunk index of `addr`, relative to the covered space.
    #[inline(always)]
    fn chunk_of(&self, addr: usize) -> usize {
        #[cfg(not(loom))]
        let chunk = addr >> CHUNK_SHIFT;
        #[cfg(loom)]
        let chunk = (addr >> CHUNK_SHIFT).wrapping_sub(self.first);
        chunk
    }

    /// Root entry `r`'s leaf (biased), or `None` while it has none of its own.
    #[inline(always)]
    fn installed(&self, r: usize) -> Option<*mut AtomicUsize> {
        let leaf = self.root.get(r)?.load(Ordering::Acquire);
        (leaf != biased(self.empty, r)).then_some(leaf)
    }

    /// Entry `chunk` of `leaf`, root entry `chunk >> LEAF_BITS`'s biased leaf.
    ///
    /// # Safety
    /// `leaf` was loaded from that root entry (R5: it stays valid while `self` lives).
    #[inline(always)]
    unsafe fn entry(&self, leaf: *mut AtomicUsize, chunk: usize) -> &AtomicUsize {
        // SAFETY: root entry `r = chunk >> LEAF_BITS` is a leaf's entries biased by
        // `-(r << LEAF_BITS)`, so adding `chunk` lands on entry `chunk % LEAF_CHUNKS` of that
        // leaf: the empty leaf, or one installed (zeroed or built before its `Release` install,
        // which the `Acquire` load of the root entry pairs with) and never unmapped while
        // `self` lives (R5).
        unsafe { &*leaf.wrapping_add(chunk) }
    }

    /// The region covering `addr`, as `(base, kind)`, or `None` when not ours (R1, R4): a
    /// bounds check, a root load and a leaf load.
    #[inline(always)]
    pub fn lookup(&self, addr: usize) -> Option<(usize, Kind)> {
        let chunk = self.chunk_of(addr);
        let leaf = self.root.get(chunk >> LEAF_BITS)?.load(Ordering::Acquire);
        // SAFETY: loaded from root entry `chunk >> LEAF_BITS` just now.
        let e = unsafe { self.entry(leaf, chunk) }.load(Ordering::Acquire);
        match e & KIND_MASK {
            1 => Some((e & !KIND_MASK, Kind::Superslab)),
            2 => Some((e & !KIND_MASK, Kind::Large)),
            3 => Some((e & !KIND_MASK, Kind::Medium)),
            _ => None,
        }
    }

    /// Opens a lookup section (R6) on stripe `hint % STRIPES` (threads that pass different
    /// hints count on different cache lines; any value is correct). Until the returned guard is
    /// dropped, no region a lookup of this thread finds is unmapped or reused. Do not
    /// unregister, or wait for anything, while it is open.
    #[inline(always)]
    pub fn section(&self, hint: usize) -> Section<'_> {
        self.sections.enter(hint)
    }

    /// Forgets every open section and running grace period: for a forked child, where the
    /// threads that had them open no longer exist.
    ///
    /// # Safety
    /// The calling thread is the only one that uses the registry, and has no section open.
    pub unsafe fn forget_sections(&self) {
        self.sections.reset();
    }

    fn chunks(&self, base: usize, len: usize) -> Result<Range<usize>, RegisterError> {
        if base & (CHUNK - 1) != 0 || len == 0 {
            return Err(RegisterError::Misaligned);
        }
        let end = base.checked_add(len - 1).ok_or(RegisterError::OutOfRange)?;
        let (first, last) = (self.chunk_of(base), self.chunk_of(end));
        if first > last || last >= COVERED_CHUNKS {
            return Err(RegisterError::OutOfRange);
        }
        Ok(first..last + 1)
    }

    /// Root entry `r`'s own leaf (biased), mapped and installed now if it has none (R4, R5).
    #[inline]
    fn own_leaf(&self, r: usize) -> Result<*mut AtomicUsize, RegisterError> {
        let empty = biased(self.empty, r);
        let leaf = self.root[r].load(Ordering::Acquire);
        if leaf != empty {
            return Ok(leaf);
        }
        self.install_leaf(r, empty)
    }

    #[cold]
    fn install_leaf(
        &self,
        r: usize,
        empty: *mut AtomicUsize,
    ) -> Result<*mut AtomicUsize, RegisterError> {
        let mem = self
            .source
            .map(LEAF_LAYOUT)
            .ok_or(RegisterError::NoMemory)?;
        let fresh = mem.as_ptr().cast::<Leaf>();
        // Zeroed memory is a valid leaf; loom's atomics must be built.
        #[cfg(loom)]
        for i in 0..LEAF_CHUNKS {
            // SAFETY: fresh memory of the leaf's layout, ours alone until installed.
            unsafe { core::ptr::addr_of_mut!((*fresh).entries[i]).write(AtomicUsize::new(0)) };
        }
        let ours = biased(fresh, r);
        #[cfg(not(hakmem_seeded_bug = "leaf_store"))]
        let installed =
            self.root[r].compare_exchange(empty, ours, Ordering::AcqRel, Ordering::Acquire);
        // The seeded bug `leaf_store`: install with a plain store, so a racing installer's
        // leaf (and what was registered in it) is lost.
        #[cfg(hakmem_seeded_bug = "leaf_store")]
        let installed = {
            self.root[r].store(ours, Ordering::Release);
            Ok::<_, *mut AtomicUsize>(empty)
        };
        match installed {
            Ok(_) => {
                self.leaves
                    .fetch_add(1, core::sync::atomic::Ordering::Relaxed);
                Ok(ours)
            }
            Err(winner) => {
                // SAFETY: our leaf was never published: nobody else saw it. The winner's leaf
                // is installed and stays (R5).
                unsafe {
                    drop_leaf(fresh);
                    self.source.unmap(mem, LEAF_LAYOUT);
                }
                Ok(winner)
            }
        }
    }

    /// Installs the leaves of `chunks`, and returns the first one's (biased).
    fn prepare_chunks(&self, chunks: &Range<usize>) -> Result<*mut AtomicUsize, RegisterError> {
        let (first, last) = (chunks.start >> LEAF_BITS, (chunks.end - 1) >> LEAF_BITS);
        let leaf = self.own_leaf(first)?;
        for r in first + 1..=last {
            self.own_leaf(r)?;
        }
        Ok(leaf)
    }

    /// Maps the leaves covering `[base, base + len)` without registering anything, so that a
    /// later [`Registry::register`] of a region there cannot fail for want of memory.
    pub fn prepare(&self, base: usize, len: usize) -> Result<(), RegisterError> {
        self.prepare_chunks(&self.chunks(base, len)?).map(drop)
    }

    /// Calls `f` with the entry of every chunk in `chunks` whose leaf is installed, loading
    /// each root entry once (`first` is the first chunk's leaf, when already loaded); stops
    /// when `f` says so.
    fn each_entry(
        &self,
        chunks: Range<usize>,
        mut first: Option<*mut AtomicUsize>,
        mut f: impl FnMut(usize, &AtomicUsize) -> bool,
    ) {
        let mut r = chunks.start >> LEAF_BITS;
        for i in chunks {
            if i >> LEAF_BITS != r {
                r = i >> LEAF_BITS;
                first = None;
            }
            let leaf = match first {
                Some(l) => l,
                None => match self.installed(r) {
                    Some(l) => l,
                    None => continue,
                },
            };
            first = Some(leaf);
            // SAFETY: `leaf` was loaded from root entry `r = i >> LEAF_BITS`.
            if !f(i, unsafe { self.entry(leaf, i) }) {
                return;
            }
        }
    }

    /// Publishes `[base, base + len)` as a region of `kind` (R1, R3), mapping a leaf first if
    /// its range has none (R4). On an error nothing is registered.
    ///
    /// # Safety
    /// Readers trust what is registered: a lookup hands `base` to code that reads the region's
    /// header there (`hakmem_route::classify` reads a superslab or a large-region header). So,
    /// until the region is unregistered, `[base, base + len)` is memory the caller owns and
    /// keeps mapped, and at `base` lies a fully written header of `kind`, in the layout every
    /// reader of this registry expects (R1: written before this call).
    pub unsafe fn register(
        &self,
        base: usize,
        len: usize,
        kind: Kind,
    ) -> Result<(), RegisterError> {
        let chunks = self.chunks(base, len)?;
        let leaf = self.prepare_chunks(&chunks)?;
        let entry = base | kind as usize;
        let mut claimed = chunks.start;
        self.each_entry(chunks.clone(), Some(leaf), |i, slot| {
            let ok = slot
                .compare_exchange(0, entry, PUBLISH, Ordering::Relaxed)
                .is_ok();
            if ok {
                claimed = i + 1;
            }
            ok
        });
        if claimed == chunks.end {
            return Ok(());
        }
        // R3: undo what this call claimed, leave others' entries alone.
        self.each_entry(chunks.start..claimed, Some(leaf), |_, slot| {
            slot.store(0, Ordering::Release);
            true
        });
        // R6: a section may have found what was briefly registered; the caller unmaps it next.
        self.sections.grace();
        Err(RegisterError::Occupied)
    }

    /// Withdraws `[base, base + len)`; call before the region is unmapped or reused (R2).
    /// Chunks that hold another region's entry are left alone. Returns after a grace period:
    /// every lookup section open at the withdrawal has closed (R6). So it must not be called
    /// inside a section, nor while holding a lock that a section's thread may wait for.
    pub fn unregister(&self, base: usize, len: usize) {
        let Ok(chunks) = self.chunks(base, len) else {
            return;
        };
        self.each_entry(chunks, None, |_, slot| {
            let e = slot.load(Ordering::Relaxed);
            if e != 0 && e & !KIND_MASK == base {
                slot.store(0, Ordering::Release);
            }
            true
        });
        self.sections.grace();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // `&mut self`: no lookup can be running, so the leaves can go back (R5 ends here).
        for r in 0..ROOT_LEN {
            let leaf = self.root[r]
                .load(Ordering::Acquire)
                .wrapping_add(r << LEAF_BITS)
                .cast::<Leaf>();
            if core::ptr::eq(leaf, self.empty) {
                continue;
            }
            if let Some(mem) = NonNull::new(leaf.cast::<u8>()) {
                // SAFETY: an installed leaf, mapped by our source with LEAF_LAYOUT; nothing can
                // reach it once the registry is gone.
                unsafe {
                    drop_leaf(leaf);
                    self.source.unmap(mem, LEAF_LAYOUT);
                }
            }
        }
    }
}

/// Ends the lives of a leaf's atomics before its memory goes back (only loom's need it).
///
/// # Safety
/// `leaf` is a built leaf that nothing uses any more.
unsafe fn drop_leaf(leaf: *mut Leaf) {
    #[cfg(loom)]
    // SAFETY: forwarded.
    unsafe {
        core::ptr::drop_in_place(leaf)
    };
    let _ = leaf;
}

/// R1's ordering. The seeded bug `relaxed_order` weakens it to show the model catches it.
#[cfg(not(hakmem_seeded_bug = "relaxed_order"))]
const PUBLISH: Ordering = Ordering::Release;
#[cfg(hakmem_seeded_bug = "relaxed_order")]
const PUBLISH: Ordering = Ordering::Relaxed;

#[cfg(all(test, not(loom)))]
mod tests;

#[cfg(all(test, loom))]
mod loom_models;
