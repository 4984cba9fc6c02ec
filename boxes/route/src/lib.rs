//! # hakmem-route: which tier serves a request, and what a pointer is
//!
//! One job: map a (size, alignment) request to a size class or to the large tier, and map a
//! pointer to a small block, a large region, or "not ours".
//!
//! Tiers: **tiny** classes up to 1 KiB, **small** classes up to [`MAX_SMALL`] (the largest block a
//! 64 KiB slab holds), and **large** beyond ([`Route::Large`]). The facade serves a large request
//! up to about 1 MiB (alignment up to 64 KiB) from its medium tier, whole pages out of shared
//! 2 MiB regions ([`PtrRoute::Medium`]), and the rest from dedicated 2 MiB-aligned regions.
//! Aligned requests up to [`MAX_SLAB_ALIGN`] (64 KiB) and [`MAX_SMALL`] bytes take a slab class,
//! so even a great many of them share superslabs instead of taking a mapping each.
//!
//! Classes: multiples of 16 up to 128 B, then eight classes per doubling (`2^k + i * 2^(k-3)`,
//! `i = 1..=8`), all multiples of 16.
//!
//! ```
//! use hakmem_route::{class_of, route, Route, SizeClass, CLASSES, MAX_SMALL};
//! // A 100-byte request takes the 112-byte class; a 1 MiB one goes to the large tier.
//! let Route::Small(c) = route(100, 8) else { unreachable!() };
//! assert_eq!(c.size(), 112);
//! assert_eq!(route(1 << 20, 8), Route::Large);
//! // Alignments up to 64 KiB are served by a class whose block size they divide (RT2).
//! let Route::Small(c) = route(3000, 1024) else { unreachable!() };
//! assert_eq!(c.size() % 1024, 0);
//! let Route::Small(c) = route(64, 8192) else { unreachable!() };
//! assert_eq!(c.size(), 8192);
//! // Every small size has a class, and classes grow with size (RT1, RT3).
//! assert_eq!(class_of(MAX_SMALL), SizeClass::new(CLASSES - 1));
//! assert_eq!(class_of(MAX_SMALL + 1), None);
//! // A class is made only here: by routing, or from an index that is checked.
//! assert_eq!(SizeClass::new(CLASSES), None);
//! assert_eq!(SizeClass::all().count(), CLASSES);
//! ```
//!
//! ## Invariants
//! - **RT1 (fit).** `block_size(class_of(s)) >= s`, and for `s > 128` the waste
//!   `block_size - s` is below `s / 8` (12.5%). Between 64 and 128 B the 16-byte step is the bound
//!   (a block must stay 16-byte aligned).
//! - **RT2 (alignment).** Every block size is a multiple of 16, so every block is 16-byte
//!   aligned; a request with `align <= MAX_SLAB_ALIGN` (64 KiB) and `size <= MAX_SMALL` gets a
//!   class whose block size is a multiple of `align` (slabs start 64 KiB-aligned, and blocks
//!   start at their slab's base), else the large tier.
//! - **RT3 (monotone).** Block sizes strictly increase with the class index.
//! - **RT4 (cheap).** [`route`] for `size <= 1024, align <= 16` is one table load; nothing here
//!   divides, locks or allocates.
//! - **RT5 (classes are valid).** Every [`SizeClass`] value's index is below [`CLASSES`]. Only
//!   this box makes one: the routing functions ([`route`], [`class_of`], [`tiny_class`] and the
//!   table [`TINY_CLASS_OF`]), [`SizeClass::new`], which checks the index, and
//!   [`SizeClass::all`]; its field is private. So code that holds a `SizeClass` needs no proof
//!   that it is in range: [`SizeClass::index`] tells the compiler, which drops the bounds
//!   checks of arrays of `CLASSES` entries, and [`SizeClass::size`] reads its table without one.
#![deny(unsafe_op_in_unsafe_fn)]
#![no_std]

use hakmem_registry::Kind;
use hakmem_superslab::SLAB_SIZE;

/// Re-exported from hakmem-registry: the table [`classify`] looks pointers up in, so a user
/// needs no other box to call it.
pub use hakmem_registry::Registry;
/// Re-exported from hakmem-superslab: what [`is_block_start`] takes and [`PtrRoute`] holds.
pub use hakmem_superslab::{LargeHeader, SlabMeta, Superslab};

/// The README's examples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// Classes up to 128 B (16-byte steps).
const LINEAR: usize = 8;
/// Classes per doubling above 128 B.
const PER_DOUBLING: usize = 8;
/// Largest tiny block.
pub const MAX_TINY: usize = 1024;
/// Largest small block: one fills a 64 KiB slab (the never-touched tail of a slab costs address
/// space, not memory).
pub const MAX_SMALL: usize = 64 * 1024;
/// Number of tiny classes.
pub const TINY_CLASSES: usize = class_of_const(MAX_TINY) + 1;
/// Number of size classes (tiny and small).
pub const CLASSES: usize = class_of_const(MAX_SMALL) + 1;
/// Largest alignment served inside slabs: the slab size, as slabs start on its multiples.
pub const MAX_SLAB_ALIGN: usize = hakmem_superslab::SLAB_SIZE;

const _: () = assert!(
    MAX_SLAB_ALIGN == MAX_SMALL,
    "every size and alignment up to MAX_SMALL routes to a slab"
);

const _: () = assert!(
    CLASSES < hakmem_stats::MAX_CLASSES,
    "stats count every class and large"
);

const _: () = assert!(
    CLASSES <= 1 << u8::BITS,
    "a class index fits a SizeClass's byte"
);

/// A size class: an index below [`CLASSES`] (RT5). Only this box makes one; a box below it
/// (the thread lists, the unified cache, the stats) takes the class as `index()`.
///
/// ```
/// use hakmem_route::{class_of, SizeClass, CLASSES};
/// let c = class_of(100).unwrap();
/// assert_eq!((c.index(), c.size()), (6, 112));
/// assert_eq!(SizeClass::new(6), Some(c));
/// assert_eq!(SizeClass::new(CLASSES), None);
/// assert!(SizeClass::all().all(|c| c.index() < CLASSES));
/// ```
///
/// No other crate can make one out of a bare index (RT5):
///
/// ```compile_fail,E0603
/// let c = hakmem_route::SizeClass(200);
/// ```
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SizeClass(u8);

impl SizeClass {
    /// The class of index `i`, or `None` when `i >= CLASSES`.
    #[inline(always)]
    pub const fn new(i: usize) -> Option<SizeClass> {
        if i < CLASSES {
            Some(SizeClass(i as u8))
        } else {
            None
        }
    }

    /// Every class, smallest first.
    pub fn all() -> impl DoubleEndedIterator<Item = SizeClass> + ExactSizeIterator + Clone {
        (0..CLASSES as u8).map(SizeClass)
    }

    /// The class's index, below [`CLASSES`] (RT5): an array of `CLASSES` entries indexed by it
    /// needs no bounds check, and the compiler drops it.
    #[inline(always)]
    pub const fn index(self) -> usize {
        let i = self.0 as usize;
        // SAFETY: every SizeClass is made by this box with an index below CLASSES (RT5).
        unsafe { core::hint::assert_unchecked(i < CLASSES) };
        i
    }

    /// The class's block size (RT1, RT2): one table load.
    #[inline(always)]
    pub const fn size(self) -> usize {
        BLOCK_SIZES[self.index()] as usize
    }

    /// The class's thread-list bound ([`list_cap`]).
    #[inline(always)]
    pub const fn list_cap(self) -> u32 {
        LIST_CAPS[self.index()]
    }
}

/// The class for `size` (1..=MAX_SMALL), computed without division or table.
const fn class_of_const(size: usize) -> usize {
    let s = if size == 0 { 1 } else { size };
    if s <= 128 {
        return s.div_ceil(16) - 1;
    }
    // s in (2^k, 2^(k+1)], k >= 7.
    let k = (usize::BITS - 1 - (s - 1).leading_zeros()) as usize;
    let step_shift = k - 3;
    let idx = ((s - (1 << k)) + (1 << step_shift) - 1) >> step_shift; // 1..=8
    LINEAR + (k - 7) * PER_DOUBLING + idx - 1
}

/// The block size of `class`.
pub const fn block_size(class: usize) -> usize {
    if class < LINEAR {
        return 16 * (class + 1);
    }
    let g = (class - LINEAR) / PER_DOUBLING;
    let i = (class - LINEAR) % PER_DOUBLING + 1;
    let k = 7 + g;
    (1 << k) + i * (1 << (k - 3))
}

/// The class of every tiny size, indexed by the size itself (1 KiB): the lookup is one load,
/// with no rounding. A client may keep its own copy next to its other hot data (the hot heap
/// does, so its malloc path indexes the table from the heap pointer it already holds).
pub const TINY_CLASS_OF: [SizeClass; MAX_TINY + 1] = {
    let mut t = [SizeClass(0); MAX_TINY + 1];
    let mut i = 0;
    while i < t.len() {
        t[i] = SizeClass(class_of_const(if i == 0 { 1 } else { i }) as u8);
        i += 1;
    }
    t
};

/// The one shared instance of [`TINY_CLASS_OF`] that [`tiny_class`] reads.
static TINY_TABLE: [SizeClass; MAX_TINY + 1] = TINY_CLASS_OF;

const BLOCK_SIZES: [u32; CLASSES] = {
    let mut t = [0u32; CLASSES];
    let mut c = 0;
    while c < CLASSES {
        t[c] = block_size(c) as u32;
        c += 1;
    }
    t
};

/// Block sizes by class index, as a table, for a class index from a box below this one (a
/// slab's class, a stats row); [`SizeClass::size`] for a class. Panics when
/// `class >= CLASSES`.
#[inline(always)]
pub fn block_size_of(class: usize) -> usize {
    BLOCK_SIZES[class] as usize
}

/// The class for `size` bytes at the default alignment; `None` beyond [`MAX_SMALL`].
#[inline(always)]
pub fn class_of(size: usize) -> Option<SizeClass> {
    if size <= MAX_TINY {
        Some(TINY_TABLE[size])
    } else if size <= MAX_SMALL {
        Some(SizeClass(class_of_const(size) as u8))
    } else {
        None
    }
}

/// The class of a tiny request (`size <= MAX_TINY`, alignment 16 or less): one table load, the
/// malloc fast path's lookup (RT4). `None` for larger sizes.
#[inline(always)]
pub fn tiny_class(size: usize) -> Option<SizeClass> {
    // The size is compared before it is rounded, so a size near usize::MAX cannot wrap into
    // the table.
    if size > MAX_TINY {
        return None;
    }
    TINY_TABLE.get(size).copied()
}

/// Where a request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// A block of this class, in a slab.
    Small(SizeClass),
    /// A dedicated large region.
    Large,
}

/// The tier and class for `size` bytes aligned to `align` (a power of two) (RT1, RT2).
#[inline(always)]
pub fn route(size: usize, align: usize) -> Route {
    if align <= 16 {
        return match class_of(size) {
            Some(c) => Route::Small(c),
            None => Route::Large,
        };
    }
    route_aligned(size, align)
}

#[cold]
fn route_aligned(size: usize, align: usize) -> Route {
    if align > MAX_SLAB_ALIGN {
        return Route::Large;
    }
    let Some(first) = class_of(size.max(align)) else {
        return Route::Large;
    };
    match SizeClass::all()
        .skip(first.index())
        .find(|c| c.size() & (align - 1) == 0)
    {
        Some(c) => Route::Small(c),
        None => Route::Large,
    }
}

/// Per-class bound of a thread list: about 16 KiB of blocks, between 2 and 256.
pub const fn list_cap(class: usize) -> u32 {
    let n = 16 * 1024 / block_size(class);
    (if n < 2 {
        2
    } else if n > 256 {
        256
    } else {
        n
    }) as u32
}

/// Per-class bound of the unified cache: the same budget as the thread list.
pub const fn cache_cap(class: usize) -> u32 {
    list_cap(class)
}

/// Total unified-cache slots over every class.
pub const CACHE_SLOTS: usize = {
    let mut n = 0;
    let mut c = 0;
    while c < CLASSES {
        n += cache_cap(c) as usize;
        c += 1;
    }
    n
};

/// Per-class list bounds, as an array.
pub const LIST_CAPS: [u32; CLASSES] = {
    let mut t = [0u32; CLASSES];
    let mut c = 0;
    while c < CLASSES {
        t[c] = list_cap(c);
        c += 1;
    }
    t
};

/// Per-class cache bounds, as an array.
pub const CACHE_CAPS: [u32; CLASSES] = {
    let mut t = [0u32; CLASSES];
    let mut c = 0;
    while c < CLASSES {
        t[c] = cache_cap(c);
        c += 1;
    }
    t
};

/// What a pointer is.
pub enum PtrRoute<'a> {
    /// Inside a superslab: the slab it falls in. Whether it is a block start, and its class,
    /// are for the slab's owner to say.
    Small(&'a Superslab, &'a SlabMeta),
    /// Inside a large region.
    Large(&'a LargeHeader),
    /// Inside a medium region (registered as [`Kind::Medium`]) based at this address: which
    /// block, if any, is for the medium tier's span map to say, under its lock.
    Medium(usize),
    /// Not inside any live region of ours.
    NotOurs,
}

/// Classifies `p` through the registry: O(1), lock-free, safe for any address.
///
/// It reads the header of the region the registry reports. That is sound because
/// [`Registry::register`] is `unsafe`: whoever registered a region promised a fully written
/// header of its kind at its base, kept until the region is unregistered (the registry's R1).
///
/// # Safety
/// Every region in `registry` was registered by the superslab box (a [`Superslab`] or a
/// [`LargeHeader`] at its base), or is a medium region (whose header this does not read). The
/// caller holds `p`'s block (or a pin), or has a lookup section open ([`Registry::section`],
/// registry R6) until it is done with what this returns, so the region is not unmapped or
/// reused meanwhile; for a pointer that is not ours the answer is `NotOurs` and nothing is
/// dereferenced.
#[inline(always)]
pub unsafe fn classify<'a>(registry: &Registry, p: *const u8) -> PtrRoute<'a> {
    match registry.lookup(p as usize) {
        Some((base, Kind::Superslab)) => {
            // SAFETY: the registry reports a live superslab at `base` (R1: header visible).
            let ss = unsafe { Superslab::at(base) };
            PtrRoute::Small(ss, ss.slab_of(p))
        }
        // SAFETY: the registry reports a live large region at `base` (R1).
        Some((base, Kind::Large)) => PtrRoute::Large(unsafe { LargeHeader::at(base) }),
        Some((base, Kind::Medium)) => PtrRoute::Medium(base),
        None => PtrRoute::NotOurs,
    }
}

/// `ceil(2^32 / block_size)` by class: `off * RECIP >> 32` is `off / block_size` exactly for any
/// offset inside a slab (`off < 2^16`, block sizes below `2^16`), without a division.
const RECIPROCALS: [u64; CLASSES] = {
    let mut t = [0u64; CLASSES];
    let mut c = 0;
    while c < CLASSES {
        t[c] = (1u64 << 32).div_ceil(block_size(c) as u64);
        c += 1;
    }
    t
};

/// True when `p`, inside `ss` and its slab `slab`, is the start of a block of the slab's class
/// that the slab has handed out at some time (below its shared carve mark; a block start beyond
/// it was never handed out, so it is not a block). Needs no owner: it reads only the slab's
/// shared class and carve words and the fixed slab layout, and costs two multiplications and a
/// compare, no division.
#[inline(always)]
pub fn is_block_start(ss: &Superslab, slab: &SlabMeta, p: *const u8) -> bool {
    // Every slab's blocks start at its base (superslab SS14).
    debug_assert!(p as usize - ss.base() < hakmem_superslab::SS_SIZE);
    let off = p as usize & (SLAB_SIZE - 1);
    let c = slab.class();
    match (BLOCK_SIZES.get(c), RECIPROCALS.get(c)) {
        (Some(&bs), Some(&r)) if off < SLAB_SIZE => {
            let index = (off as u64 * r) >> 32;
            index * bs as u64 == off as u64 && index < slab.carved()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_class_agrees_with_class_of_and_never_wraps() {
        for size in 0..=MAX_TINY {
            assert_eq!(tiny_class(size), class_of(size), "size {size}");
        }
        for size in [
            MAX_TINY + 1,
            MAX_SMALL,
            usize::MAX,
            usize::MAX - 5,
            usize::MAX - 15,
        ] {
            assert_eq!(tiny_class(size), None, "size {size}");
        }
    }

    #[test]
    fn every_size_fits_with_bounded_waste() {
        for s in 1..=MAX_SMALL {
            let c = class_of(s).unwrap();
            let b = c.size();
            assert_eq!(b, block_size_of(c.index()));
            assert!(b >= s, "RT1 fit: size {s} class {c:?} block {b}");
            assert_eq!(b % 16, 0, "RT2: block {b}");
            if s > 128 {
                assert!((b - s) * 8 < s, "RT1 waste: size {s} block {b}");
            } else {
                assert!(b - s < 16, "RT1 16-byte step: size {s} block {b}");
            }
            if c.index() > 0 {
                assert!(
                    block_size_of(c.index() - 1) < s,
                    "smallest fitting class: size {s}"
                );
            }
        }
        assert_eq!(class_of(0), SizeClass::new(0));
        assert_eq!(class_of(MAX_SMALL + 1), None);
        assert_eq!(block_size_of(CLASSES - 1), MAX_SMALL);
        assert_eq!(block_size_of(TINY_CLASSES - 1), MAX_TINY);
    }

    #[test]
    fn block_sizes_increase() {
        for c in 1..CLASSES {
            assert!(block_size_of(c) > block_size_of(c - 1), "RT3 at {c}");
        }
    }

    #[test]
    fn aligned_requests_get_aligned_classes_or_large() {
        for shift in 0..=22 {
            let align = 1usize << shift;
            for size in [1, 7, 16, 100, 1000, 4096, 5000, 20_000, 32_768, 40_000] {
                match route(size, align) {
                    Route::Small(c) => {
                        let b = c.size();
                        assert!(
                            b >= size && b.is_multiple_of(align.max(16)),
                            "size {size} align {align} block {b}"
                        );
                        assert!(align <= MAX_SLAB_ALIGN);
                    }
                    Route::Large => assert!(size > MAX_SMALL || align > 16),
                }
            }
        }
        assert_eq!(route(10, 4096), Route::Small(class_of(4096).unwrap()));
        assert_eq!(route(10, 8192), Route::Small(class_of(8192).unwrap()));
        assert_eq!(
            route(64, MAX_SLAB_ALIGN),
            Route::Small(SizeClass::new(CLASSES - 1).unwrap())
        );
        assert_eq!(route(10, 2 * MAX_SLAB_ALIGN), Route::Large);
        // Every size and alignment up to MAX_SMALL takes a slab.
        for shift in 0..=16 {
            for size in (0..=MAX_SMALL).step_by(997) {
                assert!(matches!(route(size, 1 << shift), Route::Small(_)));
            }
        }
        assert_eq!(route(MAX_SMALL + 1, 8), Route::Large);
    }

    #[test]
    fn reciprocals_divide_exactly_inside_a_slab() {
        for (c, &r) in RECIPROCALS.iter().enumerate() {
            let bs = block_size_of(c) as u64;
            for off in 0..SLAB_SIZE as u64 {
                assert_eq!((off * r) >> 32, off / bs, "class {c} offset {off}");
            }
        }
    }

    #[test]
    fn size_classes_are_exactly_the_indices_below_classes() {
        let all: [usize; CLASSES] = core::array::from_fn(|i| i);
        assert!(SizeClass::all().map(SizeClass::index).eq(all));
        for i in 0..=2 * CLASSES {
            assert_eq!(
                SizeClass::new(i).map(SizeClass::index),
                (i < CLASSES).then_some(i)
            );
        }
        assert_eq!(SizeClass::new(usize::MAX), None);
        assert_eq!(SizeClass::new(CLASSES + 256), None, "no wrap into a byte");
        for c in SizeClass::all() {
            assert_eq!(c.size(), block_size(c.index()));
            assert_eq!(c.list_cap(), list_cap(c.index()));
        }
    }

    #[test]
    fn caps_are_bounded() {
        for c in 0..CLASSES {
            assert!((2..=256).contains(&list_cap(c)));
        }
        assert_eq!(
            CACHE_SLOTS,
            CACHE_CAPS.iter().map(|&x| x as usize).sum::<usize>()
        );
    }
}
