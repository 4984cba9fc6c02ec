//! # hakmem-tls-sll: one thread's intrusive free lists, one per size class
//!
//! One job: the LIFO list the fast path pops from and pushes to. A free block's first word is
//! the link to the next block, and its second word holds the caller's free key (a per-process
//! random word) while it is on the list; nothing else in the block is touched.
//!
//! ```
//! use hakmem_tls_sll::List;
//! // Three 16-byte, 16-aligned "blocks" this thread owns.
//! #[repr(align(16))]
//! struct Block([u8; 16]);
//! let mut blocks = [Block([0; 16]), Block([0; 16]), Block([0; 16])];
//! let ptrs = blocks.each_mut().map(|b| b.0.as_mut_ptr());
//! let mut list = List::new(2);
//! for &p in &ptrs[..2] {
//!     assert!(!list.is_full());
//!     // SAFETY: a free block of ours, 16 bytes and aligned, on no other list (L3, L4, L5).
//!     unsafe { list.push(p, 0x5eed) };
//! }
//! assert!(list.is_full()); // the third block must go elsewhere (L2)
//! // SAFETY: the list's blocks are still free and linked (L4).
//! let last = unsafe { list.pop() };
//! assert_eq!(last, ptrs[1]);
//! assert_eq!(list.len(), 1);
//! // A block on the list carries the key in its second word; a popped one has it cleared.
//! assert_eq!(blocks[0].0[8..].iter().filter(|&&b| b != 0).count(), 2);
//! assert_eq!(blocks[1].0[8..], [0; 8]);
//! ```
//!
//! ## Invariants
//! - **L1 (count).** `len() = cap - room` is exactly the number of blocks reachable from `head`.
//! - **L2 (bound).** `len <= cap` whenever the owner checks [`List::is_full`] before a push, as
//!   the hot heap does; [`List::push`] itself never grows past `cap` silently in debug builds,
//!   and [`List::set_cap`] refuses a bound below the length.
//! - **L3 (one owner).** A list belongs to one thread and holds only blocks that thread owns;
//!   nothing here is atomic.
//! - **L4 (links).** Every block is at least 16 bytes and 8-byte aligned; its first word is the
//!   link while it sits on a list, and is the user's again once popped.
//! - **L5 (key).** A block pushed with [`List::push`] carries the caller's key in its second
//!   word; [`List::pop`] clears that word to 0 before it hands the block out, so a block that
//!   carries the key is (almost surely) free. The caller compares [`key`] with its key before a
//!   push to catch a double free, one load and one compare.
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

/// Why [`List::set_cap`] refused: the new bound is below the list's length (or beyond
/// `i32::MAX`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bound {cap} is below the {len} blocks on the list (L2)")]
pub struct CapBelowLen {
    /// The bound asked for.
    pub cap: u32,
    /// The blocks on the list.
    pub len: u32,
}

/// One class's list.
#[derive(Debug)]
#[repr(C)]
pub struct List {
    head: *mut u8,
    /// `cap - len`, kept instead of `len` so the fast path tests and updates one word; never
    /// negative (L2; [`List::set_cap`] refuses a bound below the length).
    room: i32,
    cap: u32,
}

impl List {
    /// An empty list bounded by `cap` blocks.
    pub const fn new(cap: u32) -> Self {
        Self {
            head: null_mut(),
            room: cap as i32,
            cap,
        }
    }

    /// Blocks on the list (L1).
    #[inline(always)]
    pub fn len(&self) -> u32 {
        (self.cap as i32 - self.room) as u32
    }

    /// True when empty.
    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.head.is_null()
    }

    /// The bound (L2).
    #[inline(always)]
    pub fn cap(&self) -> u32 {
        self.cap
    }

    /// Changes the bound. A bound below the blocks already on the list would break L2, so it is
    /// refused and nothing changes: pop (or [`List::take`]) the excess first.
    ///
    /// ```
    /// use hakmem_tls_sll::{CapBelowLen, List};
    /// let mut blocks = [[0u64; 2]; 3];
    /// let mut list = List::new(4);
    /// for b in &mut blocks {
    ///     // SAFETY: each block is 16 bytes, aligned, ours, and on no other list.
    ///     unsafe { list.push(b.as_mut_ptr().cast(), 0x5eed) };
    /// }
    /// assert_eq!(list.set_cap(1), Err(CapBelowLen { cap: 1, len: 3 }));
    /// assert_eq!((list.len(), list.cap()), (3, 4));
    /// assert_eq!(list.set_cap(8), Ok(()));
    /// ```
    pub fn set_cap(&mut self, cap: u32) -> Result<(), CapBelowLen> {
        let len = self.len();
        if cap < len || cap > i32::MAX as u32 {
            return Err(CapBelowLen { cap, len });
        }
        self.room = (cap - len) as i32;
        self.cap = cap;
        Ok(())
    }

    /// True when a push would exceed the bound.
    #[inline(always)]
    pub fn is_full(&self) -> bool {
        self.room <= 0
    }

    /// The first block, or null.
    #[inline(always)]
    pub fn head(&self) -> *mut u8 {
        self.head
    }

    /// Pushes `block`, writing `key` into its second word (L5).
    ///
    /// # Safety
    /// `block` is a free block owned by this thread and on no list (L3, L4).
    #[inline(always)]
    pub unsafe fn push(&mut self, block: *mut u8, key: usize) {
        debug_assert!(self.room > 0 || self.cap == 0, "L2: push past the bound");
        // SAFETY: the caller hands over a free block nobody else reads; it has two words.
        unsafe {
            set_next(block, self.head);
            block.cast::<usize>().add(1).write(key);
        }
        self.head = block;
        self.room -= 1;
    }

    /// Pops the most recently pushed block, with its key word cleared (L5), or returns null.
    ///
    /// # Safety
    /// The list's blocks must still be free and linked (L4).
    #[inline(always)]
    pub unsafe fn pop(&mut self) -> *mut u8 {
        let b = self.head;
        if !b.is_null() {
            // SAFETY: `b` is a free block on this list, of at least two words.
            unsafe {
                self.head = next(b);
                b.cast::<usize>().add(1).write(0);
            }
            self.room += 1;
        }
        b
    }

    /// True when `block` is on the list (a walk of at most `len` blocks: the cold confirmation
    /// of a suspected double free).
    ///
    /// # Safety
    /// The list's blocks must still be free and linked (L4).
    pub unsafe fn contains(&self, block: *mut u8) -> bool {
        let mut b = self.head;
        let mut n = 0;
        while !b.is_null() && n <= self.len() {
            if b == block {
                return true;
            }
            // SAFETY: `b` is a free block on this list.
            b = unsafe { next(b) };
            n += 1;
        }
        false
    }

    /// Pushes a whole chain at once.
    ///
    /// # Safety
    /// The chain's blocks are free, linked `head ..= tail`, owned by this thread, on no list.
    pub unsafe fn splice(&mut self, chain: Chain) {
        if chain.len == 0 {
            return;
        }
        // SAFETY: the tail is a free block of the chain handed over by the caller.
        unsafe { set_next(chain.tail, self.head) };
        self.head = chain.head;
        self.room -= chain.len as i32;
    }

    /// Takes up to `n` blocks off the top as a chain.
    ///
    /// # Safety
    /// The list's blocks must still be free and linked (L4).
    pub unsafe fn take(&mut self, n: u32) -> Chain {
        let head = self.head;
        let mut tail = null_mut();
        let mut len = 0;
        while len < n && !self.head.is_null() {
            tail = self.head;
            // SAFETY: `tail` is a free block on this list.
            self.head = unsafe { next(tail) };
            len += 1;
        }
        self.room += len as i32;
        Chain {
            head: if len == 0 { null_mut() } else { head },
            tail,
            len,
        }
    }

    /// Takes every block.
    ///
    /// # Safety
    /// The list's blocks must still be free and linked (L4).
    pub unsafe fn take_all(&mut self) -> Chain {
        // SAFETY: forwarded from the caller.
        unsafe { self.take(u32::MAX) }
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
        let mut l = List::new(4);
        for &p in &ptrs {
            assert!(!l.is_full());
            // SAFETY: the test's blocks are free, aligned and owned by this thread.
            unsafe { l.push(p, 7) };
        }
        assert!(l.is_full());
        assert_eq!(l.len(), 4);
        for &p in &ptrs {
            // SAFETY: the test's blocks are free, aligned and owned by this thread.
            let (k, on) = unsafe { (key(p), l.contains(p)) };
            assert_eq!((k, on), (7, true), "L5: keyed while on the list");
        }
        for &p in ptrs.iter().rev() {
            // SAFETY: the test's blocks are free, aligned and owned by this thread.
            assert_eq!(unsafe { l.pop() }, p);
            // SAFETY: as above.
            let (k, on) = unsafe { (key(p), l.contains(p)) };
            assert_eq!((k, on), (0, false), "L5: popped, unkeyed");
        }
        assert!(l.is_empty());
        // SAFETY: the test's blocks are free, aligned and owned by this thread.
        assert!(unsafe { l.pop() }.is_null());
        assert_eq!(l.len(), 0);
    }

    #[test]
    fn take_and_splice_move_batches() {
        let mut mem = blocks(10);
        let ptrs: Vec<*mut u8> = mem.iter_mut().map(|b| b.as_mut_ptr().cast()).collect();
        let mut a = List::new(16);
        for &p in &ptrs {
            // SAFETY: the test's blocks are free, aligned and owned by this thread.
            unsafe { a.push(p, 7) };
        }
        // SAFETY: the test's blocks are free, aligned and owned by this thread.
        let chain = unsafe { a.take(4) };
        assert_eq!((chain.len, a.len()), (4, 6));
        assert_eq!((chain.head, chain.tail), (ptrs[9], ptrs[6]));
        let mut b = List::new(16);
        // SAFETY: the test's blocks are free, aligned and owned by this thread.
        unsafe { b.push(ptrs[0], 7) };
        // ptrs[0] is on both lists now only in this test's bookkeeping: pop it back first.
        // SAFETY: the test's blocks are free, aligned and owned by this thread.
        assert_eq!(unsafe { b.pop() }, ptrs[0]);
        // SAFETY: the test's blocks are free, aligned and owned by this thread.
        unsafe { b.splice(chain) };
        assert_eq!(b.len(), 4);
        let mut seen = Vec::new();
        while !b.is_empty() {
            // SAFETY: the test's blocks are free, aligned and owned by this thread.
            seen.push(unsafe { b.pop() });
        }
        assert_eq!(seen, std::vec![ptrs[9], ptrs[8], ptrs[7], ptrs[6]]);
        // SAFETY: the test's blocks are free, aligned and owned by this thread.
        let rest = unsafe { a.take_all() };
        assert_eq!((rest.len, a.len(), a.is_empty()), (6, 0, true));
        // SAFETY: the test's blocks are free, aligned and owned by this thread.
        let none = unsafe { a.take(3) };
        assert_eq!(none.len, 0);
        assert!(none.head.is_null());
    }
}
