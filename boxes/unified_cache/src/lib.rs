//! # hakmem-unified-cache: per-class bounded arrays between the thread lists and the slabs
//!
//! One job: stage blocks in batches, so that the thread lists (hakmem-tls-sll) rarely talk to
//! slabs, and slabs are refilled from and flushed to in runs rather than one block at a time.
//! The cache stores block addresses in an array, so it never writes into the blocks themselves.
//!
//! Every method is safe: the cache only stores and returns addresses, and never reads or writes
//! through them. What a popped address may be used for is the caller's business (U3).
//!
//! ```
//! use hakmem_unified_cache::{TooManySlots, UnifiedCache};
//! // Two classes sharing 8 slots: class 0 holds up to 2 blocks, class 1 up to 6.
//! let mut cache = UnifiedCache::<2, 8>::new(&[2, 6]).unwrap();
//! let mut blocks = [0u64; 3];
//! let [a, b, c] = blocks.each_mut().map(|x| core::ptr::from_mut(x).cast::<u8>());
//! assert!(cache.push(0, a) && cache.push(0, b));
//! assert!(!cache.push(0, c), "class 0 is full (U1)");
//! assert_eq!(cache.pop(0), Some(b));
//! let mut flushed = 0;
//! cache.drain_oldest(0, 8, |_| flushed += 1);
//! assert_eq!((flushed, cache.len(0)), (1, 0));
//! // Capacities that do not fit the slots are refused.
//! assert_eq!(
//!     UnifiedCache::<2, 8>::new(&[4, 6]).err(),
//!     Some(TooManySlots { wanted: 10, available: 8 })
//! );
//! ```
//!
//! ## Invariants
//! - **U1 (bounded).** Class `c` holds at most `cap(c)` blocks; a push to a full class is refused.
//! - **U2 (disjoint storage).** Each class has its own slice of one fixed array; classes never
//!   overlap, and nothing here allocates.
//! - **U3 (one owner).** A cache belongs to one thread and holds only blocks that thread owns.
#![deny(unsafe_op_in_unsafe_fn)]
#![no_std]

use core::ptr::null_mut;

/// The README's examples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// The cache for `CLASSES` classes sharing `SLOTS` slots.
pub struct UnifiedCache<const CLASSES: usize, const SLOTS: usize> {
    slots: [*mut u8; SLOTS],
    start: [u32; CLASSES],
    len: [u32; CLASSES],
    cap: [u32; CLASSES],
}

/// Why [`UnifiedCache::new`] refused a set of capacities.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the capacities ask for {wanted} slots, but the cache has {available}")]
pub struct TooManySlots {
    /// Slots asked for.
    pub wanted: usize,
    /// Slots available.
    pub available: usize,
}

impl<const CLASSES: usize, const SLOTS: usize> UnifiedCache<CLASSES, SLOTS> {
    /// A cache whose class `c` holds up to `caps[c]` blocks (U1, U2).
    pub fn new(caps: &[u32; CLASSES]) -> Result<Self, TooManySlots> {
        let wanted: usize = caps.iter().map(|&c| c as usize).sum();
        if wanted > SLOTS {
            return Err(TooManySlots {
                wanted,
                available: SLOTS,
            });
        }
        let mut start = [0u32; CLASSES];
        let mut at = 0u32;
        for c in 0..CLASSES {
            start[c] = at;
            at += caps[c];
        }
        Ok(Self {
            slots: [null_mut(); SLOTS],
            start,
            len: [0; CLASSES],
            cap: *caps,
        })
    }

    /// Re-lays the classes out for `caps`, in place, on an empty cache (or zeroed memory, which
    /// is a valid empty cache with no room): no large value moves through the stack.
    pub fn set_caps(&mut self, caps: &[u32; CLASSES]) -> Result<(), TooManySlots> {
        let wanted: usize = caps.iter().map(|&c| c as usize).sum();
        if wanted > SLOTS {
            return Err(TooManySlots {
                wanted,
                available: SLOTS,
            });
        }
        debug_assert!(
            self.len.iter().all(|&n| n == 0),
            "set_caps on a non-empty cache"
        );
        let mut at = 0u32;
        for (c, &cap) in caps.iter().enumerate() {
            self.start[c] = at;
            self.len[c] = 0;
            self.cap[c] = cap;
            at += cap;
        }
        Ok(())
    }

    /// Blocks cached for `class`.
    #[inline]
    pub fn len(&self, class: usize) -> u32 {
        self.len[class]
    }

    /// True when `class` has no block.
    #[inline]
    pub fn is_empty(&self, class: usize) -> bool {
        self.len[class] == 0
    }

    /// The bound of `class` (U1).
    #[inline]
    pub fn cap(&self, class: usize) -> u32 {
        self.cap[class]
    }

    /// Free room in `class`.
    #[inline]
    pub fn room(&self, class: usize) -> u32 {
        self.cap[class] - self.len[class]
    }

    /// Caches `block`; false when `class` is full (U1).
    #[inline]
    pub fn push(&mut self, class: usize, block: *mut u8) -> bool {
        let n = self.len[class];
        if n >= self.cap[class] {
            return false;
        }
        self.slots[(self.start[class] + n) as usize] = block;
        self.len[class] = n + 1;
        true
    }

    /// True when `block` is cached for `class` (a walk of that class's slice, for the cold
    /// confirmation of a suspected double free).
    pub fn contains(&self, class: usize, block: *mut u8) -> bool {
        let s = self.start[class] as usize;
        self.slots[s..s + self.len[class] as usize].contains(&block)
    }

    /// The most recently cached block of `class`, taken out; `None` when the class is empty.
    #[inline]
    pub fn pop(&mut self, class: usize) -> Option<*mut u8> {
        let n = self.len[class].checked_sub(1)?;
        self.len[class] = n;
        Some(self.slots[(self.start[class] + n) as usize])
    }

    /// Removes up to `n` blocks of `class`, oldest first, handing each to `f`. Returns how many.
    /// Oldest-first keeps the recently freed (cache-warm) blocks for the thread lists.
    pub fn drain_oldest(&mut self, class: usize, n: u32, mut f: impl FnMut(*mut u8)) -> u32 {
        let take = n.min(self.len[class]);
        let s = self.start[class] as usize;
        for i in 0..take as usize {
            f(self.slots[s + i]);
        }
        let keep = (self.len[class] - take) as usize;
        self.slots
            .copy_within(s + take as usize..s + take as usize + keep, s);
        self.len[class] = keep as u32;
        take
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(i: usize) -> *mut u8 {
        (i * 16) as *mut u8
    }

    #[test]
    fn classes_are_bounded_and_disjoint() {
        let mut c = UnifiedCache::<3, 8>::new(&[2, 0, 5]).unwrap();
        assert!(c.push(0, p(1)));
        assert!(c.push(0, p(2)));
        assert!(!c.push(0, p(3)), "U1: class 0 holds two");
        assert!(!c.push(1, p(4)), "U1: class 1 holds none");
        for i in 0..5 {
            assert!(c.push(2, p(10 + i)));
        }
        assert_eq!((c.len(0), c.len(2), c.room(2)), (2, 5, 0));
        assert!(c.contains(0, p(2)) && c.contains(2, p(14)) && !c.contains(0, p(14)));
        assert_eq!(c.pop(0), Some(p(2)));
        assert_eq!(c.pop(2), Some(p(14)));
        assert!(!c.contains(2, p(14)));
        assert_eq!(c.pop(0), Some(p(1)));
        assert_eq!(c.pop(0), None);
        assert!(c.is_empty(1));
    }

    #[test]
    fn drain_oldest_takes_from_the_bottom() {
        let mut c = UnifiedCache::<1, 8>::new(&[8]).unwrap();
        for i in 0..6 {
            c.push(0, p(i + 1));
        }
        let mut got = [core::ptr::null_mut(); 4];
        let mut k = 0;
        assert_eq!(
            c.drain_oldest(0, 4, |b| {
                got[k] = b;
                k += 1
            }),
            4
        );
        assert_eq!(got, [p(1), p(2), p(3), p(4)]);
        assert_eq!(c.len(0), 2);
        assert_eq!((c.pop(0), c.pop(0)), (Some(p(6)), Some(p(5))));
    }

    #[test]
    fn too_many_slots_is_refused() {
        assert_eq!(
            UnifiedCache::<2, 4>::new(&[3, 2]).err(),
            Some(TooManySlots {
                wanted: 5,
                available: 4
            })
        );
    }
}
