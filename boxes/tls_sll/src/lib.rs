//! # hakmem-tls-sll: one thread's intrusive free lists, one per size class
//!
//! One job: the LIFO lists the fast path pops from and pushes to. A free block's first word is
//! the link to the next block, and its second word holds the caller's free key (a per-process
//! random word) while it is on a list; nothing else in the block is touched.
//!
//! The `N` lists of a thread live in one [`Lists`], stored as arrays (heads, rooms, bounds)
//! rather than an array of list structs, so a fast path reaches a class's head and room with
//! the class index alone, scaled by the addressing mode: no multiplication, no extra register.
//!
//! ```
//! use hakmem_tls_sll::Lists;
//! // Three 16-byte, 16-aligned "blocks" this thread owns.
//! #[repr(align(16))]
//! struct Block([u8; 16]);
//! let mut blocks = [Block([0; 16]), Block([0; 16]), Block([0; 16])];
//! let ptrs = blocks.each_mut().map(|b| b.0.as_mut_ptr());
//! let mut lists = Lists::<4>::new([2; 4]);
//! for &p in &ptrs[..2] {
//!     // SAFETY: a free block of ours, 16 bytes and aligned, on no other list (L3, L4, L5).
//!     assert!(unsafe { lists.try_push(1, p, 0x5eed) });
//! }
//! // The third block must go elsewhere (L2): the push is refused and nothing changes.
//! // SAFETY: as above.
//! assert!(!unsafe { lists.try_push(1, ptrs[2], 0x5eed) });
//! assert_eq!(lists.len(1), 2);
//! // SAFETY: the list's blocks are still free and linked (L4).
//! let last = unsafe { lists.pop(1) };
//! assert_eq!(last, ptrs[1]);
//! assert_eq!((lists.len(1), lists.len(0)), (1, 0));
//! // A block on a list carries the key in its second word; a popped one has it cleared.
//! assert_eq!(blocks[0].0[8..].iter().filter(|&&b| b != 0).count(), 2);
//! assert_eq!(blocks[1].0[8..], [0; 8]);
//! ```
//!
//! ## Invariants
//! - **L1 (count).** For each class, `len(c) = cap(c) - room(c)` is exactly the number of
//!   blocks reachable from its head.
//! - **L2 (bound).** `len(c) <= cap(c)`: [`Lists::try_push`] refuses a push past the bound, and
//!   [`Lists::set_cap`] a bound below the length. Only the unsafe [`Lists::push`] and
//!   [`Lists::splice`] trust the caller to have checked room.
//! - **L3 (one owner).** The lists belong to one thread and hold only blocks that thread owns;
//!   nothing here is atomic.
//! - **L4 (links).** Every block is at least 16 bytes and 8-byte aligned; its first word is the
//!   link while it sits on a list, and is the user's again once popped.
//! - **L5 (key).** A block pushed carries the caller's key in its second word; [`Lists::pop`]
//!   clears that word to 0 before it hands the block out, so a block that carries the key is
//!   (almost surely) free. The caller compares [`key`] with its key before a push to catch a
//!   double free, one load and one compare.
#![deny(unsafe_op_in_unsafe_fn)]
#![no_std]

use core::ptr::null_mut;

/// Reads the link word of a free block.
///
/// # Safety
/// `block` must be a free block (L4).
#[inline(always)]
pub unsafe fn next(block: *mut u8) -> *mut u8 {
    // SAFETY: the caller guarantees `block` is a free, aligned block of at least 8 bytes.
    unsafe { block.cast::<*mut u8>().read() }
}

/// Writes the link word of a free block.
///
/// # Safety
/// `block` must be a free block (L4) that nobody else is reading.
#[inline(always)]
pub unsafe fn set_next(block: *mut u8, next: *mut u8) {
    // SAFETY: the caller guarantees `block` is a free, aligned block of at least 8 bytes.
    unsafe { block.cast::<*mut u8>().write(next) }
}

/// Reads the key word (the second word) of a block.
///
/// # Safety
/// `block` must be a block of at least 16 bytes that the caller may read.
#[inline(always)]
pub unsafe fn key(block: *mut u8) -> usize {
    // SAFETY: forwarded.
    unsafe { block.cast::<usize>().add(1).read() }
}

/// A chain of linked free blocks taken off a list: `head ..= tail`, `len` blocks.
#[derive(Clone, Copy, Debug)]
pub struct Chain {
    /// First block.
    pub head: *mut u8,
    /// Last block; its link is unspecified.
    pub tail: *mut u8,
    /// Number of blocks.
    pub len: u32,
}

/// Why [`Lists::set_cap`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CapError {
    /// The new bound is below the list's length (or beyond `i32::MAX`).
    #[error("bound {cap} is below the {len} blocks on the list (L2)")]
    BelowLen {
        /// The bound asked for.
        cap: u32,
        /// The blocks on the list.
        len: u32,
    },
}

/// One thread's `N` lists, one per class (`0..N`). Safe methods check the class index and
/// panic on one out of range; the `_unchecked` fast forms trust the caller.
#[derive(Debug)]
#[repr(C)]
pub struct Lists<const N: usize> {
    heads: [*mut u8; N],
    /// `cap - len` per class, kept instead of `len` so the fast paths test and update one word;
    /// never negative (L2).
    rooms: [i32; N],
    caps: [u32; N],
}

impl<const N: usize> Lists<N> {
    /// Empty lists with these bounds (each at most `i32::MAX`).
    pub const fn new(caps: [u32; N]) -> Self {
        let mut rooms = [0i32; N];
        let mut i = 0;
        while i < N {
            assert!(caps[i] <= i32::MAX as u32, "a bound beyond i32::MAX");
            rooms[i] = caps[i] as i32;
            i += 1;
        }
        Self {
            heads: [null_mut(); N],
            rooms,
            caps,
        }
    }

    /// Blocks on class `c`'s list (L1).
    #[inline(always)]
    pub fn len(&self, c: usize) -> u32 {
        (self.caps[c] as i32 - self.rooms[c]) as u32
    }

    /// True when class `c`'s list is empty.
    #[inline(always)]
    pub fn is_empty(&self, c: usize) -> bool {
        self.heads[c].is_null()
    }

    /// Class `c`'s bound (L2).
    #[inline(always)]
    pub fn cap(&self, c: usize) -> u32 {
        self.caps[c]
    }

    /// Changes class `c`'s bound. A bound below the blocks already on the list would break L2,
    /// so it is refused and nothing changes: pop (or [`Lists::take`]) the excess first.
    ///
    /// ```
    /// use hakmem_tls_sll::{CapError, Lists};
    /// let mut blocks = [[0u64; 2]; 3];
    /// let mut lists = Lists::<1>::new([4]);
    /// for b in &mut blocks {
    ///     // SAFETY: each block is 16 bytes, aligned, ours, and on no other list.
    ///     assert!(unsafe { lists.try_push(0, b.as_mut_ptr().cast(), 0x5eed) });
    /// }
    /// assert_eq!(lists.set_cap(0, 1), Err(CapError::BelowLen { cap: 1, len: 3 }));
    /// assert_eq!((lists.len(0), lists.cap(0)), (3, 4));
    /// assert_eq!(lists.set_cap(0, 8), Ok(()));
    /// ```
    pub fn set_cap(&mut self, c: usize, cap: u32) -> Result<(), CapError> {
        let len = self.len(c);
        if cap < len || cap > i32::MAX as u32 {
            return Err(CapError::BelowLen { cap, len });
        }
        self.rooms[c] = (cap - len) as i32;
        self.caps[c] = cap;
        Ok(())
    }

    /// True when a push to class `c` would exceed the bound.
    #[inline(always)]
    pub fn is_full(&self, c: usize) -> bool {
        self.rooms[c] <= 0
    }

    /// Class `c`'s first block, or null.
    #[inline(always)]
    pub fn head(&self, c: usize) -> *mut u8 {
        self.heads[c]
    }

    /// Pushes `block` onto class `c`'s list when it has room, writing `key` into the block's
    /// second word (L5); false (and nothing changes) when the list is full (L2).
    ///
    /// # Safety
    /// `block` is a free block owned by this thread and on no list (L3, L4).
    #[inline(always)]
    pub unsafe fn try_push(&mut self, c: usize, block: *mut u8, key: usize) -> bool {
        assert!(c < N, "class out of range");
        // SAFETY: `c < N`, checked above; the block is the caller's to give.
        unsafe { self.try_push_unchecked(c, block, key) }
    }

    /// [`Lists::try_push`] without the range check: the free path's push.
    ///
    /// # Safety
    /// `c < N`, and `block` is a free block owned by this thread and on no list (L3, L4).
    #[inline(always)]
    pub unsafe fn try_push_unchecked(&mut self, c: usize, block: *mut u8, key: usize) -> bool {
        // SAFETY: `c < N` by the caller's contract.
        let room = unsafe { self.rooms.get_unchecked_mut(c) };
        // Take the room first and give it back on the rare refusal: one read-modify-write
        // whose sign decides.
        *room -= 1;
        if *room < 0 {
            // Volatile, so the compiler cannot keep the old value around for the undo, which
            // would cost the decrement its single read-modify-write.
            let room: *mut i32 = room;
            // SAFETY: `room` is a valid, exclusive place (the `&mut` above).
            unsafe { room.write_volatile(room.read_volatile() + 1) };
            return false;
        }
        // SAFETY: `c < N`; the block is free and the caller's (L4).
        unsafe { self.link(c, block, key) };
        true
    }

    /// Pushes `block` onto class `c`'s list without checking room: the caller has made room
    /// (L2).
    ///
    /// # Safety
    /// `block` is a free block owned by this thread and on no list (L3, L4), and the list has
    /// room.
    #[inline(always)]
    pub unsafe fn push(&mut self, c: usize, block: *mut u8, key: usize) {
        debug_assert!(self.rooms[c] > 0, "L2: push past the bound");
        // Indexing checks `c < N`.
        self.rooms[c] -= 1;
        // SAFETY: `c < N`; the block is free and the caller's (L4).
        unsafe { self.link(c, block, key) };
    }

    /// Links `block` in as class `c`'s head, keyed.
    ///
    /// # Safety
    /// `c < N`; `block` is a free block the caller gives, at least 16 bytes (L4).
    #[inline(always)]
    unsafe fn link(&mut self, c: usize, block: *mut u8, key: usize) {
        // SAFETY: `c < N` by the caller's contract.
        let head = unsafe { self.heads.get_unchecked_mut(c) };
        // SAFETY: the caller hands over a free block nobody else reads; it has two words.
        unsafe {
            set_next(block, *head);
            block.cast::<usize>().add(1).write(key);
        }
        *head = block;
    }

    /// Pops class `c`'s most recently pushed block, with its key word cleared (L5), or returns
    /// null.
    ///
    /// # Safety
    /// The list's blocks must still be free and linked (L4).
    #[inline(always)]
    pub unsafe fn pop(&mut self, c: usize) -> *mut u8 {
        assert!(c < N, "class out of range");
        // SAFETY: `c < N`, checked above; `&mut self` owns the lists; the rest is the
        // caller's contract.
        unsafe { Self::pop_raw(self, c) }
    }

    /// [`Lists::pop`] without the range check, through a raw pointer: the malloc fast path's
    /// pop. It writes nothing when the list is empty, so `this` may point to lists that other
    /// threads read at the same time, as long as nobody writes them and they hold no block (an
    /// empty heap's).
    ///
    /// # Safety
    /// `this` points to valid lists; `c < N`; the list's blocks must still be free and linked
    /// (L4), and if it has any, the caller's thread owns the lists (L3).
    #[inline(always)]
    pub unsafe fn pop_raw(this: *mut Self, c: usize) -> *mut u8 {
        // SAFETY: `c < N` and `this` is valid, by the caller's contract; a read only.
        let head = unsafe { (&raw mut (*this).heads).cast::<*mut u8>().add(c) };
        // SAFETY: as above.
        let b = unsafe { *head };
        if !b.is_null() {
            // SAFETY: a block: the lists are this thread's (the contract); `b` is a free block
            // on the list, of at least two words.
            unsafe {
                *head = next(b);
                b.cast::<usize>().add(1).write(0);
                *(&raw mut (*this).rooms).cast::<i32>().add(c) += 1;
            }
        }
        b
    }

    /// True when `block` is on class `c`'s list (a walk of at most `len` blocks: the cold
    /// confirmation of a suspected double free).
    ///
    /// # Safety
    /// The list's blocks must still be free and linked (L4).
    pub unsafe fn contains(&self, c: usize, block: *mut u8) -> bool {
        let mut b = self.heads[c];
        let mut n = 0;
        while !b.is_null() && n <= self.len(c) {
            if b == block {
                return true;
            }
            // SAFETY: `b` is a free block on this list.
            b = unsafe { next(b) };
            n += 1;
        }
        false
    }

    /// Pushes a whole chain onto class `c`'s list at once.
    ///
    /// # Safety
    /// The chain's blocks are free, linked `head ..= tail`, owned by this thread, on no list,
    /// and the list has room for them (L2).
    pub unsafe fn splice(&mut self, c: usize, chain: Chain) {
        if chain.len == 0 {
            return;
        }
        // SAFETY: the tail is a free block of the chain handed over by the caller.
        unsafe { set_next(chain.tail, self.heads[c]) };
        self.heads[c] = chain.head;
        self.rooms[c] -= chain.len as i32;
    }

    /// Takes up to `n` blocks off the top of class `c`'s list as a chain.
    ///
    /// # Safety
    /// The list's blocks must still be free and linked (L4).
    pub unsafe fn take(&mut self, c: usize, n: u32) -> Chain {
        let head = self.heads[c];
        let mut tail = null_mut();
        let mut len = 0;
        while len < n && !self.heads[c].is_null() {
            tail = self.heads[c];
            // SAFETY: `tail` is a free block on this list.
            self.heads[c] = unsafe { next(tail) };
            len += 1;
        }
        self.rooms[c] += len as i32;
        Chain {
            head: if len == 0 { null_mut() } else { head },
            tail,
            len,
        }
    }

    /// Takes every block of class `c`.
    ///
    /// # Safety
    /// The list's blocks must still be free and linked (L4).
    pub unsafe fn take_all(&mut self, c: usize) -> Chain {
        // SAFETY: forwarded from the caller.
        unsafe { self.take(c, u32::MAX) }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    fn blocks(n: usize) -> Vec<[u64; 2]> {
        std::vec![[0u64; 2]; n]
    }

    #[test]
    fn lifo_with_exact_counts() {
        let mut mem = blocks(4);
        let ptrs: Vec<*mut u8> = mem.iter_mut().map(|b| b.as_mut_ptr().cast()).collect();
        let mut l = Lists::<2>::new([4, 0]);
        for &p in &ptrs {
            assert!(!l.is_full(0));
            // SAFETY: the test's blocks are free, aligned and owned by this thread.
            assert!(unsafe { l.try_push(0, p, 7) });
        }
        assert!(l.is_full(0));
        assert_eq!(l.len(0), 4);
        // L2: a full list and a list with bound 0 refuse, and change nothing.
        // SAFETY: as above; a refused push touches nothing.
        assert!(!unsafe { l.try_push(0, ptrs[0], 9) } && !unsafe { l.try_push(1, ptrs[0], 9) });
        assert_eq!((l.len(0), l.len(1), l.head(0)), (4, 0, ptrs[3]));
        for &p in &ptrs {
            // SAFETY: the test's blocks are free, aligned and owned by this thread.
            let (k, on) = unsafe { (key(p), l.contains(0, p)) };
            assert_eq!((k, on), (7, true), "L5: keyed while on the list");
        }
        for &p in ptrs.iter().rev() {
            // SAFETY: the test's blocks are free, aligned and owned by this thread.
            assert_eq!(unsafe { l.pop(0) }, p);
            // SAFETY: as above.
            let (k, on) = unsafe { (key(p), l.contains(0, p)) };
            assert_eq!((k, on), (0, false), "L5: popped, unkeyed");
        }
        assert!(l.is_empty(0));
        // SAFETY: the test's blocks are free, aligned and owned by this thread.
        assert!(unsafe { l.pop(0) }.is_null());
        assert_eq!(l.len(0), 0);
    }

    #[test]
    fn take_and_splice_move_batches() {
        let mut mem = blocks(10);
        let ptrs: Vec<*mut u8> = mem.iter_mut().map(|b| b.as_mut_ptr().cast()).collect();
        let mut a = Lists::<1>::new([16]);
        for &p in &ptrs {
            // SAFETY: the test's blocks are free, aligned and owned by this thread.
            unsafe { a.push(0, p, 7) };
        }
        // SAFETY: the test's blocks are free, aligned and owned by this thread.
        let chain = unsafe { a.take(0, 4) };
        assert_eq!((chain.len, a.len(0)), (4, 6));
        assert_eq!((chain.head, chain.tail), (ptrs[9], ptrs[6]));
        let mut b = Lists::<1>::new([16]);
        // SAFETY: the test's blocks are free, aligned and owned by this thread.
        unsafe { b.push(0, ptrs[0], 7) };
        // ptrs[0] is on both lists now only in this test's bookkeeping: pop it back first.
        // SAFETY: the test's blocks are free, aligned and owned by this thread.
        assert_eq!(unsafe { b.pop(0) }, ptrs[0]);
        // SAFETY: the test's blocks are free, aligned and owned by this thread.
        unsafe { b.splice(0, chain) };
        assert_eq!(b.len(0), 4);
        let mut seen = Vec::new();
        while !b.is_empty(0) {
            // SAFETY: the test's blocks are free, aligned and owned by this thread.
            seen.push(unsafe { b.pop(0) });
        }
        assert_eq!(seen, std::vec![ptrs[9], ptrs[8], ptrs[7], ptrs[6]]);
        // SAFETY: the test's blocks are free, aligned and owned by this thread.
        let rest = unsafe { a.take_all(0) };
        assert_eq!((rest.len, a.len(0), a.is_empty(0)), (6, 0, true));
        // SAFETY: the test's blocks are free, aligned and owned by this thread.
        let none = unsafe { a.take(0, 3) };
        assert_eq!(none.len, 0);
        assert!(none.head.is_null());
    }
}
