//! # hakmem-tls-sll: one thread's intrusive free lists, one per size class
//!
//! One job: the LIFO lists the fast path pops from and pushes to. A free block's first word is
//! the link to the next block, stored encoded with a secret key ([`LinkKey`], L8), and its
//! second word holds the caller's free key (a per-process random word) while it is on a list;
//! nothing else in the block is touched.
//!
//! The `N` lists of a thread live in one [`Lists`], stored as arrays (counter words, heads,
//! bounds) rather than an array of list structs, so a fast path reaches a class's head and
//! counter word with the class index alone, scaled by the addressing mode: no multiplication,
//! no extra register.
//!
//! Each fast path updates one word per class, with one read-modify-write: the word holds the
//! list's room and its count of pushes, so a push is one add (room down, pushes up) whose sign
//! says "full", and a pop one add (room up). The lists therefore count their own traffic:
//! [`Lists::counts`] gives the blocks pushed (the thread's frees onto its lists) and popped
//! (its allocations from them), exactly, derived from the word and from what the slow
//! operations moved (L6), and other threads may read them while the owner works (L7).
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
//!   blocks reachable from its head. `room(c)` is the top 13 bits of the class's word, signed,
//!   so a bound is at most [`MAX_CAP`] (4095).
//! - **L2 (bound).** `len(c) <= cap(c)`: [`Lists::try_push`] refuses a push past the bound, and
//!   [`Lists::set_cap`] a bound below the length. Only the unsafe [`Lists::push`] and
//!   [`Lists::splice`] trust the caller to have checked room.
//! - **L3 (one owner).** The lists belong to one thread and hold only blocks that thread owns.
//!   Only the owner writes anything here; the counter words and the counts' other parts are
//!   atomics (written with loads and stores, never a locked read-modify-write) so that other
//!   threads may read the counts (L7).
//! - **L4 (links).** Every block is at least 16 bytes and 8-byte aligned; its first word is the
//!   link while it sits on a list (stored encoded, L8), and is the user's again once popped.
//! - **L5 (key).** A block pushed carries the caller's key in its second word; [`Lists::pop`]
//!   clears that word to 0 before it hands the block out, so a block that carries the key is
//!   (almost surely) free. The caller compares [`key`] with its key before a push to catch a
//!   double free, one load and one compare.
//! - **L6 (counts).** For each class, `pushes(c)` counts the blocks pushed one by one
//!   ([`Lists::try_push`], [`Lists::push`]) and `pops(c)` the blocks popped, since the lists were
//!   made or their counts last handed over ([`Lists::take_counts`]). Moves of whole chains
//!   ([`Lists::splice`], [`Lists::take`], [`Lists::put`], [`Lists::exchange`]) and bound changes count as neither:
//!   they add to `moved(c)`, so that `pops = pushes + moved + room` at every moment no slow
//!   operation is under way. `pushes` is the low 50 bits of the word, plus 2^50 for a set guard
//!   bit (bit 50, which a wrap of the low bits sets), plus what earlier slow operations folded
//!   out of it. So a class must see a slow operation (a refill, a spill, a bound change) at
//!   least once per 2^51 pushes, or the second wrap's carry would reach the room: two months
//!   of a loop that only frees and reallocates one size at full speed, touching nothing else.
//! - **L7 (readable counts).** The owner makes every slow operation's change to the word,
//!   `folded` and `moved` inside one write of a sequence lock (`seq` odd during it), and the
//!   fast paths change only the word, by steps that keep L6. So [`Lists::counts_of`], which
//!   reads the word once between two equal even readings of `seq`, sees a moment when L6
//!   held: counts another thread reads are exact as of some moment during its read. Every
//!   write ends, as its thread runs on; only a fork can freeze one, for a thread that does not
//!   exist in the child, which therefore ends it ([`Lists::end_write_after_fork`]).
//! - **L8 (encoded, checked links).** A block `b` whose next block is `n` (the [`end`] block
//!   at the list's end) holds `n * mul ^ b` in its first word, `mul` the lists' [`LinkKey`]
//!   (an odd multiplier, secret per process when the caller sets one with
//!   [`Lists::set_link_key`]); no link is ever stored raw, so a word the user overwrote
//!   decodes to a scattered value ([`LinkKey`]): a word set to 0 or to the block's own address
//!   never decodes to the block itself. The fast pop ([`Lists::pop_raw`]) follows a link
//!   when the caller's `far` check accepts it, tested first (so a check that accepts every
//!   block of the caller's, near or far, makes its branch go the same way whatever the mix of
//!   near and far links), or else when the next block lies in the head's own 2 MiB region
//!   ([`NEAR_SHIFT`]); otherwise it returns null and changes nothing. An empty list's head is
//!   the [`end`] block, whose stored word decodes far under every key and which `far`
//!   refuses, so that pop has no test for emptiness. Every other read of a link
//!   ([`Lists::pop_checked`], [`Lists::take`], [`Lists::contains`]) follows a link that
//!   leaves its block's 2 MiB region only when it is the end block or the caller's `far`
//!   check accepts it; at a link that fails, a pop or take drops the rest of the list
//!   (its blocks are abandoned where they are, counted as moved out, L6) and names the block
//!   that held it, and `contains` stops. So with `far` checks that accept only blocks of the
//!   caller's, no link the user wrote ever makes a list hand out an address outside the
//!   caller's memory.
#![deny(unsafe_op_in_unsafe_fn)]
#![no_std]

use core::ptr::null_mut;

mod sync;
use sync::{fence, spin, AtomicI64, AtomicU64, Ordering::*};

/// The README's examples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// `x` itself, through a register the compiler cannot see into: it cannot tell the result is
/// `x`, so it cannot fold arithmetic on it back into a value it computed before (see
/// [`Lists::pop_raw`]). Costs nothing where it is used: an empty `asm` on the register that
/// holds `x`. Only x86_64 needs it, whose XOR overwrites its operand (so a value kept past it
/// costs a copy); elsewhere it is `x`.
#[inline(always)]
fn opaque(x: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        let mut x = x;
        // SAFETY: an empty template that only names the register holding `x`: it reads and
        // writes nothing else, no memory, no stack, no flags.
        unsafe {
            core::arch::asm!(
                "/* {0} */",
                inout(reg) x,
                options(pure, nomem, nostack, preserves_flags)
            )
        };
        x
    }
    #[cfg(not(target_arch = "x86_64"))]
    x
}

/// The largest bound a list may have (L1): the room is a signed 13-bit field.
pub const MAX_CAP: u32 = (1 << 12) - 1;

/// Where the room sits in a class's word (L1).
const ROOM_SHIFT: u32 = 51;
/// The guard bit a wrap of the push count sets (L6).
const GUARD: u64 = 1 << 50;
/// The push count's bits below the guard.
const LOW: u64 = GUARD - 1;
/// A push: room down by one, pushes up by one (L6).
const PUSH: u64 = 1u64.wrapping_sub(1 << ROOM_SHIFT);
/// A pop: room up by one.
const POP: u64 = 1 << ROOM_SHIFT;

/// The room in a word (L1): its top 13 bits, signed.
#[inline(always)]
const fn room_of(w: u64) -> i64 {
    (w as i64) >> ROOM_SHIFT
}

/// The pushes a word holds (L6): the low bits, plus the guard's 2^50.
#[inline(always)]
const fn pushes_of(w: u64) -> u64 {
    (w & LOW) + (w & GUARD)
}

/// `(pushes, pops)` from a class's word, folded pushes and moves (L6).
#[inline(always)]
const fn counts_of_parts(w: u64, folded: u64, moved: i64) -> (u64, u64) {
    let pushes = folded + pushes_of(w);
    (pushes, (pushes as i64 + moved + room_of(w)) as u64)
}

/// A word with room `room` and no pushes.
#[inline(always)]
const fn word(room: i64) -> u64 {
    (room as u64) << ROOM_SHIFT
}

/// log2 of the span a link may cross and still pass the pop's one-compare check (L8): 2 MiB,
/// a superslab. A link to a block farther away (or a list's end) is checked by the caller.
pub const NEAR_SHIFT: u32 = 21;

/// The link encoding (L8): a per-process secret odd multiplier and its inverse modulo 2^64.
/// A free block's first word holds `next * mul ^ block`, its link multiplied, XOR its own
/// address. Decoding XORs the block's address back and multiplies by the inverse. A word the
/// user wrote (an overflow from the block before, a write after free) decodes to a value spread
/// over all 64 bits by the multiplication, which lands within [`NEAR_SHIFT`] bits of the block's
/// own address with a chance of about 2^-43 for any fixed word; a change confined to the low
/// three bytes of a valid link leaves it near only for a multiplier among about 2^-33 of them,
/// and a change in any higher byte never does. In particular a word set to 0 (a freed block's
/// link "cleared" through a dangling pointer) decodes to `block * inv`, almost never a
/// canonical address and near only by that chance, and a word set to the block's own address
/// decodes to null: neither is ever a link to the block itself. Null is stored as the block's
/// own address, so where null is a list's end (the superslab's lists) such a word ends the list
/// there; the thread lists end at [`end`] instead and refuse null.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkKey {
    mul: u64,
    inv: u64,
}

impl LinkKey {
    /// The key whose multiplier is `secret` made odd.
    pub const fn new(secret: u64) -> Self {
        let mul = secret | 1;
        // Newton's iteration doubles the correct low bits: mul * mul = 1 (mod 8) gives 3.
        let mut inv = mul;
        let mut i = 0;
        while i < 5 {
            inv = inv.wrapping_mul(2u64.wrapping_sub(mul.wrapping_mul(inv)));
            i += 1;
        }
        Self { mul, inv }
    }

    /// The multiplier (odd).
    pub const fn mul(self) -> u64 {
        self.mul
    }

    /// The multiplier's inverse modulo 2^64.
    pub const fn inv(self) -> u64 {
        self.inv
    }

    /// The key with this multiplier and inverse, when they are each other's inverse modulo
    /// 2^64 (so the multiplier is odd); `None` otherwise.
    #[inline(always)]
    pub const fn from_parts(mul: u64, inv: u64) -> Option<Self> {
        if mul.wrapping_mul(inv) == 1 {
            Some(Self { mul, inv })
        } else {
            None
        }
    }

    /// The stored form of a link from `at` to `next` (null for a list's end).
    #[inline(always)]
    pub fn encode(self, next: *mut u8, at: *mut u8) -> usize {
        (next as u64).wrapping_mul(self.mul) as usize ^ at as usize
    }

    /// The link from `at` whose stored form is `stored`, unchecked.
    #[inline(always)]
    pub fn decode(self, stored: usize, at: *mut u8) -> *mut u8 {
        ((stored ^ at as usize) as u64).wrapping_mul(self.inv) as usize as *mut u8
    }

    /// The link from `at` whose stored form is `stored`, when it lies in the same 2 MiB
    /// (`NEAR_SHIFT`) region as `at`; `None` for a list's end, a block farther away or a
    /// corrupted word.
    #[inline(always)]
    pub fn decode_near(self, stored: usize, at: *mut u8) -> Option<*mut u8> {
        let next = self.decode(stored, at);
        if (next as usize ^ at as usize) >> NEAR_SHIFT != 0 {
            return None;
        }
        Some(next)
    }

    /// Reads the link of a free block, unchecked.
    ///
    /// # Safety
    /// `block` is a free block (L4) whose link was written with this key.
    #[inline(always)]
    pub unsafe fn next(self, block: *mut u8) -> *mut u8 {
        // SAFETY: the caller guarantees `block` is a free, aligned block of at least 8 bytes.
        self.decode(unsafe { block.cast::<usize>().read() }, block)
    }

    /// Writes the link of a free block.
    ///
    /// # Safety
    /// `block` must be a free block (L4) that nobody else is reading.
    #[inline(always)]
    pub unsafe fn set_next(self, block: *mut u8, next: *mut u8) {
        // SAFETY: the caller guarantees `block` is a free, aligned block of at least 8 bytes.
        unsafe { block.cast::<usize>().write(self.encode(next, block)) }
    }
}

/// The key [`Lists::new`] starts with, until [`Lists::set_link_key`] sets the process's.
pub const DEFAULT_LINK_KEY: LinkKey = LinkKey::new(0x9E37_79B9_7F4A_7C15);

/// The block every list ends at (L8): a read-only pair of words whose first word is its own
/// address with bit 63 flipped, so that its link decodes under every key to `2^63` (the word
/// XOR the address is `2^63`, and `2^63` times an odd inverse is `2^63`), never a canonical
/// address and never near: the fast pop reads the head's link with no test for an empty list,
/// and an empty list's head, this block, always sends it to [`Lists::pop_checked`]. It lies in
/// this library's static data, never within 2 MiB of a block of a region the caller maps
/// aligned. The word is a constant the loader relocates, never written at run time.
#[repr(C, align(16))]
struct EndBlock([*const u8; 2]);

// SAFETY: the block is read-only (nothing is ever written there, see [`end`]); its words are
// plain values that no one dereferences.
unsafe impl Sync for EndBlock {}

static END_BLOCK: EndBlock = EndBlock([
    (&raw const END_BLOCK)
        .cast::<u8>()
        .wrapping_byte_add(1 << 63),
    core::ptr::null(),
]);

/// The end of every list (L8): the address of a static block whose link decodes far under
/// every key. Nothing is ever written there.
#[inline(always)]
pub const fn end() -> *mut u8 {
    (&raw const END_BLOCK).cast_mut().cast()
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
    /// The new bound is below the list's length (or beyond [`MAX_CAP`]).
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
    /// How links are stored in the blocks (L8).
    key: LinkKey,
    /// Per class: the room (top 13 bits, signed; never negative between operations, L2) and
    /// the pushes (L6). The fast paths' one read-modify-write.
    words: [AtomicU64; N],
    caps: [u32; N],
    /// Pushes folded out of the words' guard bits (L6).
    folded: [AtomicU64; N],
    /// Blocks moved in as chains, less those taken out, less the bound (L6).
    moved: [AtomicI64; N],
    /// The sequence lock of the slow operations (L7): odd while one is under way.
    seq: AtomicU64,
}

impl<const N: usize> Lists<N> {
    /// Empty lists with these bounds (each at most [`MAX_CAP`]).
    pub fn new(caps: [u32; N]) -> Self {
        assert!(caps.iter().all(|&c| c <= MAX_CAP), "a bound beyond MAX_CAP");
        Self {
            words: core::array::from_fn(|c| AtomicU64::new(word(i64::from(caps[c])))),
            heads: [end(); N],
            key: DEFAULT_LINK_KEY,
            caps,
            folded: core::array::from_fn(|_| AtomicU64::new(0)),
            moved: core::array::from_fn(|c| AtomicI64::new(-i64::from(caps[c]))),
            seq: AtomicU64::new(0),
        }
    }

    /// Class `c`'s word (only the owner writes it, L3).
    #[inline(always)]
    fn word(&self, c: usize) -> u64 {
        self.words[c].load(Relaxed)
    }

    /// Class `c`'s room (L1).
    #[inline(always)]
    fn room(&self, c: usize) -> i64 {
        room_of(self.word(c))
    }

    /// Runs a slow operation's changes to the counts inside the sequence lock's write (L7).
    #[inline]
    fn write<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        let s = self.seq.load(Relaxed);
        self.seq.store(s + 1, Relaxed);
        // Orders the odd sequence before the changes: a reader that sees any of them sees it.
        fence(Release);
        let r = f(self);
        self.seq.store(s + 2, Release);
        r
    }

    /// Adds `room` to class `c`'s room and `moved` to its moves, folding a wrapped push count
    /// (L6); inside a write (L7).
    fn adjust(&mut self, c: usize, room: i64, moved: i64) {
        let mut w = self.word(c).wrapping_add((room as u64) << ROOM_SHIFT);
        if w & GUARD != 0 {
            w -= GUARD;
            self.folded[c].store(self.folded[c].load(Relaxed) + GUARD, Relaxed);
        }
        self.words[c].store(w, Relaxed);
        if moved != 0 {
            self.moved[c].store(self.moved[c].load(Relaxed) + moved, Relaxed);
        }
    }

    /// Blocks on class `c`'s list (L1).
    #[inline(always)]
    pub fn len(&self, c: usize) -> u32 {
        (i64::from(self.caps[c]) - self.room(c)) as u32
    }

    /// Class `c`'s counts as `(pushes, pops)` (L6): the thread's frees onto the list and its
    /// allocations from it, since the lists were made or last handed their counts over.
    pub fn counts(&self, c: usize) -> (u64, u64) {
        counts_of_parts(
            self.word(c),
            self.folded[c].load(Relaxed),
            self.moved[c].load(Relaxed),
        )
    }

    /// [`Lists::counts`] read by any thread while the owner may be working (L7): exact as of
    /// some moment during the call.
    ///
    /// # Safety
    /// `this` points to lists that stay valid during the call; `c < N`.
    pub unsafe fn counts_of(this: *const Self, c: usize) -> (u64, u64) {
        // SAFETY: valid by the caller's contract; only atomics are read, through the pointer.
        let (seq, word, folded, moved) = unsafe {
            (
                &(*this).seq,
                &*(&raw const (*this).words).cast::<AtomicU64>().add(c),
                &*(&raw const (*this).folded).cast::<AtomicU64>().add(c),
                &*(&raw const (*this).moved).cast::<AtomicI64>().add(c),
            )
        };
        loop {
            let s = seq.load(Acquire);
            let (w, f, m) = (
                word.load(Relaxed),
                folded.load(Relaxed),
                moved.load(Relaxed),
            );
            // Orders the reads above before the second look at the sequence.
            fence(Acquire);
            #[cfg(not(hakmem_seeded_bug = "torn_counts"))]
            let unchanged = s & 1 == 0 && seq.load(Relaxed) == s;
            #[cfg(hakmem_seeded_bug = "torn_counts")]
            let unchanged = true;
            if unchanged {
                return counts_of_parts(w, f, m);
            }
            spin();
        }
    }

    /// Ends a slow operation that will never finish: in a forked child, the lists of a thread
    /// that did not survive the fork may have been mid-write (L7), and a reader would wait for
    /// them forever. Their counts may be torn; they belong to a thread that is gone.
    ///
    /// # Safety
    /// `this` points to valid lists whose owner no longer runs (a forked child's copy of
    /// another thread's lists), and nobody else writes them.
    pub unsafe fn end_write_after_fork(this: *mut Self) {
        // SAFETY: valid by the caller's contract; an atomic.
        let seq = unsafe { &(*this).seq };
        let s = seq.load(Relaxed);
        if s & 1 != 0 {
            seq.store(s + 1, Release);
        }
    }

    /// Returns class `c`'s counts ([`Lists::counts`]) and starts them again from zero, the list
    /// unchanged: how a thread's counts move into a total.
    pub fn take_counts(&mut self, c: usize) -> (u64, u64) {
        let counts = self.counts(c);
        self.write(|l| {
            let room = l.room(c);
            l.words[c].store(word(room), Relaxed);
            l.folded[c].store(0, Relaxed);
            l.moved[c].store(-room, Relaxed);
        });
        counts
    }

    /// True when class `c`'s list is empty.
    #[inline(always)]
    pub fn is_empty(&self, c: usize) -> bool {
        self.heads[c] == end()
    }

    /// Makes lists of zeroed memory (no room, no counts) empty lists with the default key:
    /// every head the end block (L8). For a `const` value that is never pushed to, such as an
    /// empty heap's.
    pub const fn make_empty(&mut self) {
        let mut c = 0;
        while c < N {
            self.heads[c] = end();
            c += 1;
        }
        self.key = DEFAULT_LINK_KEY;
    }

    /// The link of `b`, checked (L8): a block in `b`'s 2 MiB region, the end block, or a
    /// non-null block `far` accepts; `None` otherwise.
    ///
    /// # Safety
    /// `b` is a free block of the caller's (its first word is read).
    #[inline]
    unsafe fn next_checked(
        &self,
        b: *mut u8,
        far: &mut impl FnMut(*mut u8) -> bool,
    ) -> Option<*mut u8> {
        // SAFETY: the caller's contract: a block of at least 16 bytes.
        let stored = unsafe { b.cast::<usize>().read() };
        if let Some(n) = self.key.decode_near(stored, b) {
            return Some(n);
        }
        let n = self.key.decode(stored, b);
        (n == end() || (!n.is_null() && far(n))).then_some(n)
    }

    /// The key the lists' links are stored with (L8).
    #[inline(always)]
    pub fn link_key(&self) -> LinkKey {
        self.key
    }

    /// Sets the key the lists' links are stored with (L8): refused (false, nothing changed)
    /// while any list holds a block, whose link was stored with the old key.
    pub fn set_link_key(&mut self, key: LinkKey) -> bool {
        if self.heads.iter().any(|&h| h != end()) {
            return false;
        }
        self.key = key;
        true
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
        if cap < len || cap > MAX_CAP {
            return Err(CapError::BelowLen { cap, len });
        }
        let more = i64::from(cap) - i64::from(self.caps[c]);
        self.write(|l| l.adjust(c, more, -more));
        self.caps[c] = cap;
        Ok(())
    }

    /// True when a push to class `c` would exceed the bound.
    #[inline(always)]
    pub fn is_full(&self, c: usize) -> bool {
        self.room(c) <= 0
    }

    /// Class `c`'s first block, or null when the list is empty.
    #[inline(always)]
    pub fn head(&self, c: usize) -> *mut u8 {
        if self.is_empty(c) {
            null_mut()
        } else {
            self.heads[c]
        }
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
        // Take the room (and count the push) first, and give the room back on the rare
        // refusal: one read-modify-write whose sign decides.
        // SAFETY: `c < N` by the caller's contract.
        if !unsafe { self.take_room(c) } {
            return false;
        }
        // SAFETY: `c < N`; the block is free and the caller's (L4).
        unsafe { self.link(c, block, key) };
        true
    }

    /// Adds a push to class `c`'s word (room down, pushes up, L6) and returns true when the
    /// room was not spent; when it was (the new room is negative), takes the push back and
    /// returns false. On x86_64 one `add` to memory and one `js`: an
    /// atomic load and an atomic store of the word, as x86_64 makes every aligned 8-byte access,
    /// which is all a word written by its owner alone needs (L3); Rust's atomics would spend a
    /// load, an add and a store, since the sign must come from the add.
    ///
    /// # Safety
    /// `c < N`.
    #[inline(always)]
    unsafe fn take_room(&mut self, c: usize) -> bool {
        #[cfg(all(target_arch = "x86_64", not(loom)))]
        {
            // SAFETY: `words` is the offset of the words and `c < N`, so the address is
            // class `c`'s word, an aligned AtomicU64 that only this thread writes (L3); the
            // asm touches nothing else, and leaves the flags, which it declares clobbered.
            unsafe {
                core::arch::asm!(
                    "add qword ptr [{lists} + {c} * 8 + {words}], {push}",
                    "js {spent}",
                    lists = in(reg) self as *mut Self,
                    c = in(reg) c,
                    words = const core::mem::offset_of!(Self, words),
                    push = in(reg) PUSH,
                    spent = label {
                        // The undo in asm as well, with the same constant, so the compiler
                        // has no second one to derive the pop's from (which would cost the
                        // pop its single add to memory).
                        // SAFETY: the same word as above; only this thread writes it.
                        unsafe {
                            core::arch::asm!(
                                "sub qword ptr [{lists} + {c} * 8 + {words}], {push}",
                                lists = in(reg) self as *mut Self,
                                c = in(reg) c,
                                words = const core::mem::offset_of!(Self, words),
                                push = in(reg) PUSH,
                                options(nostack),
                            );
                        }
                        return false;
                    },
                    options(nostack),
                );
            }
            true
        }
        #[cfg(not(all(target_arch = "x86_64", not(loom))))]
        {
            // SAFETY: `c < N` by the caller's contract.
            let w = unsafe { self.words.get_unchecked(c) };
            let v = w.load(Relaxed).wrapping_add(PUSH);
            if room_of(v) < 0 {
                return false;
            }
            w.store(v, Relaxed);
            true
        }
    }

    /// Pushes `block` onto class `c`'s list without checking room: the caller has made room
    /// (L2).
    ///
    /// # Safety
    /// `block` is a free block owned by this thread and on no list (L3, L4), and the list has
    /// room.
    #[inline(always)]
    pub unsafe fn push(&mut self, c: usize, block: *mut u8, key: usize) {
        debug_assert!(self.room(c) > 0, "L2: push past the bound");
        // Indexing checks `c < N`.
        let w = &self.words[c];
        w.store(w.load(Relaxed).wrapping_add(PUSH), Relaxed);
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
            self.key.set_next(block, *head);
            block.cast::<usize>().add(1).write(key);
        }
        *head = block;
    }

    /// Pops class `c`'s most recently pushed block, with its key word cleared (L5), or returns
    /// null. The link to the next block is trusted (decoded, not checked: L8).
    ///
    /// # Safety
    /// The list's blocks must still be free and linked (L4).
    #[inline(always)]
    pub unsafe fn pop(&mut self, c: usize) -> *mut u8 {
        // SAFETY: forwarded; every link is accepted.
        unsafe { self.pop_checked(c, |_| true).0 }
    }

    /// Pops class `c`'s most recently pushed block, with its key word cleared (L5), or returns
    /// null, checking the link to the next block (L8): a link to a block in the same 2 MiB
    /// region or the list's end passes, and a link farther away only if `far` accepts it.
    /// When the link fails, the block is popped all the same, the rest of the list is dropped
    /// (its blocks are abandoned where they are, counted as moved out: L6), and the second
    /// value is true: the caller reports the block whose link was bad.
    ///
    /// # Safety
    /// The list's blocks must be free (L4); the head must be a block of the caller's (its
    /// link is read).
    pub unsafe fn pop_checked(
        &mut self,
        c: usize,
        mut far: impl FnMut(*mut u8) -> bool,
    ) -> (*mut u8, bool) {
        let b = self.heads[c];
        if b == end() {
            return (null_mut(), false);
        }
        // SAFETY: `b` is a free block on the list (the caller's contract).
        let (next, bad) = match unsafe { self.next_checked(b, &mut far) } {
            Some(n) => (n, false),
            None => (end(), true),
        };
        self.heads[c] = next;
        // SAFETY: as above; the block goes to the caller: unkeyed (L5).
        unsafe { b.cast::<usize>().add(1).write(0) };
        let w = &self.words[c];
        w.store(w.load(Relaxed).wrapping_add(POP), Relaxed);
        if bad {
            let left = i64::from(self.len(c));
            self.write(|l| l.adjust(c, left, -left));
        }
        (b, bad)
    }

    /// [`Lists::pop`] without the range check, through a raw pointer: the malloc fast path's
    /// pop. It follows the head's link when `far` accepts it or, failing that, when the next
    /// block lies in the head's own 2 MiB region (L8); otherwise (the list's end, a block
    /// neither accepts, or a corrupted word) it returns null and changes nothing, and the
    /// caller pops with [`Lists::pop_checked`]. It writes nothing when the list is empty, so
    /// `this` may point to lists that other threads read at the same time, as long as nobody
    /// writes them and they hold no block (an empty heap's).
    ///
    /// `far` is called first, on every pop, with the decoded link whatever it is (the end
    /// block's link, a near block, any word at all): a check that accepts every block of the
    /// caller's, near or far (a table of the caller's regions), makes the pop's first branch
    /// go the same way whatever mix of near and far links the list holds, where a near test
    /// first would be taken at random by such a mix. So `far` must be cheap, must not read
    /// through its argument, and must accept only blocks of the caller's, never the end
    /// block or null.
    ///
    /// # Safety
    /// `this` points to valid lists; `c < N`; the list's blocks must still be free and linked
    /// (L4), and if it has any, the caller's thread owns the lists (L3).
    #[inline(always)]
    pub unsafe fn pop_raw(this: *mut Self, c: usize, far: impl FnOnce(*mut u8) -> bool) -> *mut u8 {
        // SAFETY: `c < N` and `this` is valid, by the caller's contract; a read only.
        let head = unsafe { (&raw mut (*this).heads).cast::<*mut u8>().add(c) };
        // SAFETY: as above.
        let b = unsafe { *head };
        // No test for an empty list: its head is the end block, whose link is never near (L8)
        // and which `far` refuses.
        // SAFETY: the key is read through the valid `this`; `b` is a free block on the list, of
        // at least two words, whose first word is its link (L4), or the end block.
        let next = unsafe {
            let key = (*this).key;
            ((b.cast::<usize>().read() ^ b as usize) as u64).wrapping_mul(key.inv) as usize
        } as *mut u8;
        // The caller's check first, the near test only when it refuses (see above). The near
        // test is on `next ^ b`, formed there from `next` through [`opaque`], so that the
        // compiler cannot fold it into a value of the fast path's: the fast path keeps no copy
        // of anything for it.
        if !far(next) {
            core::hint::cold_path();
            if (opaque(next as usize) ^ b as usize) >> NEAR_SHIFT != 0 {
                return null_mut();
            }
        }
        // SAFETY: a block, not the end block (whose link is neither near nor accepted): the
        // lists are this thread's (the contract); `b` is a free block on the list, of at least
        // two words.
        unsafe {
            *head = next;
            b.cast::<usize>().add(1).write(0);
            // The owner alone writes the word (L3): an atomic load and store, which the
            // compiler makes one add to memory.
            let w = &*(&raw const (*this).words).cast::<AtomicU64>().add(c);
            w.store(w.load(Relaxed).wrapping_add(POP), Relaxed);
        }
        b
    }

    /// True when `block` is on class `c`'s list (a walk of at most `len` blocks: the cold
    /// confirmation of a suspected double free). The walk stops, false, at a link that fails
    /// its check (L8; `far` decides about links that leave their block's 2 MiB region).
    ///
    /// # Safety
    /// The list's blocks must be free (L4); the head must be a block of the caller's.
    pub unsafe fn contains(
        &self,
        c: usize,
        block: *mut u8,
        mut far: impl FnMut(*mut u8) -> bool,
    ) -> bool {
        let mut b = self.heads[c];
        let mut n = 0;
        while b != end() && n <= self.len(c) {
            if b == block {
                return true;
            }
            // SAFETY: `b` is a free block on this list: the head, or a link that passed.
            match unsafe { self.next_checked(b, &mut far) } {
                Some(next) => b = next,
                None => return false,
            }
            n += 1;
        }
        false
    }

    /// Pushes a whole chain onto class `c`'s list at once.
    ///
    /// # Safety
    /// The chain's blocks are free, linked `head ..= tail`, `len` of them, owned by this thread,
    /// on no list, and the list has room for them (L2).
    pub unsafe fn splice(&mut self, c: usize, chain: Chain) {
        if chain.len == 0 {
            return;
        }
        debug_assert!(
            self.room(c) >= i64::from(chain.len),
            "L2: splice past the bound"
        );
        // SAFETY: the tail is a free block of the chain handed over by the caller.
        unsafe { self.key.set_next(chain.tail, self.heads[c]) };
        self.heads[c] = chain.head;
        let n = i64::from(chain.len);
        self.write(|l| l.adjust(c, -n, n));
    }

    /// Exchanges class `c`'s whole list with `other`'s, in one step whatever their lengths
    /// (nothing is read through a link): both sides count it as a move (L6). For a thread that
    /// keeps two sets of lists (hot_heap H21). Returns the blocks `self` received.
    ///
    /// # Safety
    /// Both lists belong to the calling thread, use the same [`LinkKey`] (L8), and each has
    /// room for the other's blocks (L2).
    pub unsafe fn exchange(&mut self, other: &mut Self, c: usize) -> u32 {
        assert!(c < N, "class out of range");
        debug_assert!(self.key.mul == other.key.mul, "L8: one link key");
        let (a, b) = (self.len(c), other.len(c));
        debug_assert!(
            self.room(c) + i64::from(a) >= i64::from(b)
                && other.room(c) + i64::from(b) >= i64::from(a),
            "L2: an exchange past a bound"
        );
        core::mem::swap(&mut self.heads[c], &mut other.heads[c]);
        let d = i64::from(b) - i64::from(a);
        self.write(|l| l.adjust(c, -d, d));
        other.write(|l| l.adjust(c, d, -d));
        b
    }

    /// Puts one block on class `c`'s list as a move, not a push (L6): a block that comes from
    /// elsewhere in the thread (its cache), not from a free.
    ///
    /// # Safety
    /// As [`Lists::push`].
    pub unsafe fn put(&mut self, c: usize, block: *mut u8, key: usize) {
        assert!(c < N, "class out of range");
        debug_assert!(self.room(c) > 0, "L2: put past the bound");
        // SAFETY: forwarded: `c < N` (indexed above) and the block is the caller's.
        unsafe { self.link(c, block, key) };
        self.write(|l| l.adjust(c, -1, 1));
    }

    /// Takes up to `n` blocks off the top of class `c`'s list as a chain, checking every link
    /// it follows (L8; `far` decides about links that leave their block's 2 MiB region). When
    /// a link fails, the chain ends at the block that holds it, the rest of the list is
    /// dropped (abandoned where it is, counted as moved out: L6), and that block comes back
    /// as the second value, for the caller to report.
    ///
    /// # Safety
    /// The list's blocks must be free (L4); the head must be a block of the caller's.
    pub unsafe fn take(
        &mut self,
        c: usize,
        n: u32,
        mut far: impl FnMut(*mut u8) -> bool,
    ) -> (Chain, Option<*mut u8>) {
        let head = self.heads[c];
        let mut tail = null_mut();
        let mut len = 0;
        let mut bad = None;
        while len < n && self.heads[c] != end() {
            tail = self.heads[c];
            len += 1;
            // SAFETY: `tail` is a free block on this list: the head, or a link that passed.
            match unsafe { self.next_checked(tail, &mut far) } {
                Some(next) => self.heads[c] = next,
                None => {
                    self.heads[c] = end();
                    bad = Some(tail);
                }
            }
        }
        let n = i64::from(len);
        let dropped = if bad.is_some() {
            i64::from(self.len(c)) - n
        } else {
            0
        };
        self.write(|l| l.adjust(c, n + dropped, -n - dropped));
        let chain = Chain {
            head: if len == 0 { null_mut() } else { head },
            tail,
            len,
        };
        (chain, bad)
    }

    /// Takes every block of class `c` ([`Lists::take`]).
    ///
    /// # Safety
    /// As [`Lists::take`].
    pub unsafe fn take_all(
        &mut self,
        c: usize,
        far: impl FnMut(*mut u8) -> bool,
    ) -> (Chain, Option<*mut u8>) {
        // SAFETY: forwarded from the caller.
        unsafe { self.take(c, u32::MAX, far) }
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

    /// L1, L6: an exchange moves whole lists both ways, and counts as a move on both sides
    /// (the pops after it are counted where they happen).
    #[test]
    fn exchange_moves_whole_lists_and_counts_as_a_move() {
        let mut mem = blocks(5);
        let ptrs: Vec<*mut u8> = mem.iter_mut().map(|b| b.as_mut_ptr().cast()).collect();
        let mut a = Lists::<2>::new([4, 4]);
        let mut b = Lists::<2>::new([8, 8]);
        // SAFETY: the test's blocks are free, aligned and owned by this thread; both lists
        // share the default link key and have room for each other's blocks.
        unsafe {
            for &p in &ptrs[..3] {
                assert!(a.try_push(1, p, 7));
            }
            assert!(b.try_push(1, ptrs[3], 7));
            assert_eq!(a.exchange(&mut b, 1), 1);
            assert_eq!((a.len(1), b.len(1)), (1, 3));
            assert_eq!(a.pop(1), ptrs[3]);
            assert_eq!(b.pop(1), ptrs[2], "LIFO order kept across the exchange");
            assert_eq!(b.pop(1), ptrs[1]);
            assert_eq!(b.pop(1), ptrs[0]);
            assert!(a.is_empty(1) && b.is_empty(1));
        }
        // L6: pops = pushes + moved + room - cap, per side: a pushed 3 and popped 1, b pushed
        // 1 and popped 3.
        assert_eq!(a.counts(1), (3, 1));
        assert_eq!(b.counts(1), (1, 3));
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
            let (k, on) = unsafe { (key(p), l.contains(0, p, |_| true)) };
            assert_eq!((k, on), (7, true), "L5: keyed while on the list");
        }
        for &p in ptrs.iter().rev() {
            // SAFETY: the test's blocks are free, aligned and owned by this thread.
            assert_eq!(unsafe { l.pop(0) }, p);
            // SAFETY: as above.
            let (k, on) = unsafe { (key(p), l.contains(0, p, |_| true)) };
            assert_eq!((k, on), (0, false), "L5: popped, unkeyed");
        }
        assert!(l.is_empty(0));
        // SAFETY: the test's blocks are free, aligned and owned by this thread.
        assert!(unsafe { l.pop(0) }.is_null());
        assert_eq!(l.len(0), 0);
    }

    #[test]
    fn counts_are_exact_through_moves_bound_changes_and_hand_overs() {
        let mut mem = blocks(6);
        let p: Vec<*mut u8> = mem.iter_mut().map(|b| b.as_mut_ptr().cast()).collect();
        let mut l = Lists::<2>::new([4, 0]);
        // SAFETY: the test's blocks are free, aligned and owned by this thread, on one list at a
        // time, in every call below.
        unsafe {
            assert!(l.try_push(0, p[0], 7) && l.try_push(0, p[1], 7));
            l.put(0, p[2], 7);
            assert_eq!((l.counts(0), l.len(0)), ((2, 0), 3));
            assert!(l.try_push(0, p[3], 7));
            assert!(!l.try_push(0, p[4], 7), "full: refused, and not counted");
            assert!(!l.try_push(1, p[4], 7), "bound 0: refused, and not counted");
            assert_eq!((l.counts(0), l.counts(1)), ((3, 0), (0, 0)));
            assert_eq!(l.pop(0), p[3]);
            assert_eq!(l.pop(0), p[2]);
            assert_eq!(l.counts(0), (3, 2));
            let chain = l.take(0, 2, |_| true).0;
            assert_eq!((chain.len, l.len(0), l.counts(0)), (2, 0, (3, 2)));
            l.set_cap(0, 9).unwrap();
            l.splice(0, chain);
            l.push(0, p[5], 7);
            assert_eq!((l.len(0), l.counts(0)), (3, (4, 2)));
            assert_eq!(l.take_counts(0), (4, 2));
            assert_eq!((l.counts(0), l.len(0), l.cap(0)), ((0, 0), 3, 9));
            assert!(!l.pop(0).is_null());
            // SAFETY: the lists are valid and this thread's.
            assert_eq!(Lists::counts_of(&l, 0), (0, 1));
        }
    }

    /// Odd multipliers to test the encoding with: the default one and a few fixed draws.
    fn keys() -> Vec<LinkKey> {
        let mut x = 0x0123_4567_89AB_CDEFu64;
        let mut keys = std::vec![DEFAULT_LINK_KEY];
        for _ in 0..16 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            keys.push(LinkKey::new(x));
        }
        keys
    }

    #[test]
    fn links_round_trip_and_the_end_block_is_never_near() {
        let base = 0x7f12_3456_0000usize as *mut u8;
        for k in keys() {
            assert_eq!(k.mul().wrapping_mul(k.inv()), 1);
            for (at, next) in [(0x10, 0x20), (0x1f_fff0, 0x10), (0x40, 0x40_0000)] {
                let (at, next) = (base.wrapping_add(at), base.wrapping_add(next));
                let stored = k.encode(next, at);
                assert_eq!(k.decode(stored, at), next);
                let near = (at as usize ^ next as usize) >> NEAR_SHIFT == 0;
                assert_eq!(k.decode_near(stored, at), near.then_some(next));
            }
            // The end block's word is far under every key (L8): it decodes to 2^63.
            // SAFETY: the end block is static and readable; it is only read.
            let word = unsafe { end().cast::<usize>().read() };
            assert_eq!(word ^ end() as usize, 1 << 63);
            assert_eq!(k.decode(word, end()) as usize, 1 << 63);
            assert_eq!(k.decode_near(word, end()), None);
        }
    }

    #[test]
    fn a_zeroed_or_self_addressed_link_is_never_a_link_to_the_block() {
        // A block freed and then written through a dangling pointer: its first word set to 0
        // (a "cleared" next pointer) or to its own address (a node linked to itself). Neither
        // may decode to the block itself, or every later pop would hand it out again (L8).
        let mut mem = blocks(4);
        let p: Vec<*mut u8> = mem.iter_mut().map(|b| b.as_mut_ptr().cast()).collect();
        for k in keys() {
            for &b in &p {
                for word in [0, b as usize] {
                    assert_ne!(k.decode(word, b), b, "key {:#x}", k.mul());
                    assert_eq!(k.decode_near(word, b), None, "key {:#x}", k.mul());
                }
                assert!(k.decode(b as usize, b).is_null());
            }
        }
        let mut l = Lists::<1>::new([8]);
        assert!(l.set_link_key(LinkKey::new(0x5151_7272_9393_b4b5)));
        for zero in [true, false] {
            // SAFETY: the test's blocks are free, aligned and owned by this thread.
            unsafe {
                for &b in &p[..3] {
                    assert!(l.try_push(0, b, 7));
                }
                // p[2] -> p[1] -> p[0] -> end; p[2]'s link overwritten.
                let w = if zero { 0 } else { p[2] as usize };
                p[2].cast::<usize>().write(w);
                // The fast pop refuses (with a `far` check that accepts every block of ours),
                // and changes nothing.
                assert!(Lists::pop_raw(&mut l, 0, |n| p.contains(&n)).is_null());
                assert_eq!((l.len(0), l.head(0)), (3, p[2]));
                // The checked pop hands the head out once, names it, and drops the rest: no
                // later pop returns it.
                assert_eq!(l.pop_checked(0, |n| p.contains(&n)), (p[2], true));
                assert!(l.is_empty(0));
                assert!(Lists::pop_raw(&mut l, 0, |n| p.contains(&n)).is_null());
                assert!(l.pop(0).is_null());
            }
        }
    }

    #[test]
    fn a_change_in_any_byte_of_a_near_link_makes_it_far() {
        // Every change of one byte of a near link's stored word, under each test key, for links
        // at a few distances: none decodes near again (L8).
        let base = 0x7f12_3456_0000usize;
        for k in keys() {
            for (at, next) in [(0x100, 0x120), (0x1_0000, 0x20), (0x1f_ffe0, 0x1f_fff0)] {
                let (at, next) = ((base + at) as *mut u8, (base + next) as *mut u8);
                let stored = k.encode(next, at);
                for byte in 0..8 {
                    for v in 1..=255usize {
                        let bad = stored ^ (v << (8 * byte));
                        assert_eq!(
                            k.decode_near(bad, at),
                            None,
                            "key {:#x}, byte {byte}, xor {v:#x}",
                            k.mul()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_corrupted_link_is_never_followed() {
        // Memory outside the lists' blocks, which a forged link names.
        static OUTSIDE: [u64; 8] = [0; 8];
        let mut mem = blocks(4);
        let p: Vec<*mut u8> = mem.iter_mut().map(|b| b.as_mut_ptr().cast()).collect();
        let mut l = Lists::<1>::new([8]);
        assert!(l.set_link_key(LinkKey::new(0x5151_7272_9393_b4b5)));
        let forged = [
            None,
            Some(0x4141_4141_4141_4141usize),
            Some(&raw const OUTSIDE as usize),
        ];
        for word in forged {
            // SAFETY: the test's blocks are free, aligned and owned by this thread.
            unsafe {
                for &b in &p[..3] {
                    assert!(l.try_push(0, b, 7));
                }
                // p[2] -> p[1] -> p[0] -> end; p[2]'s link overwritten.
                let link = p[2].cast::<usize>();
                link.write(word.unwrap_or(link.read() ^ 0x40));
                // The fast pop refuses, and changes nothing, also with a `far` check that
                // accepts the block the link named before.
                assert!(Lists::pop_raw(&mut l, 0, |n| n == p[1]).is_null());
                assert_eq!((l.len(0), l.head(0)), (3, p[2]));
                // A walk stops at the bad link.
                assert!(!l.contains(0, p[1], |_| false));
                // The checked pop hands the head out, names it, and drops the rest.
                assert_eq!(l.pop_checked(0, |_| false), (p[2], true));
                assert!(l.is_empty(0));
                assert_eq!(l.len(0), 0);
                assert!(l.pop(0).is_null());
                // The lists take blocks again (the dropped ones are the caller's to forget).
                assert!(l.try_push(0, p[3], 7));
                assert!(l.try_push(0, p[2], 7));
                link.write(0x4141_4141_4141_4141);
                let (chain, bad) = l.take_all(0, |_| false);
                assert_eq!((chain.head, chain.len, bad), (p[2], 1, Some(p[2])));
                assert!(l.is_empty(0) && l.len(0) == 0);
            }
        }
    }

    #[test]
    fn the_fast_pop_follows_a_far_link_only_when_far_accepts_it() {
        // 5 MiB of blocks: the first and the last lie in different 2 MiB regions.
        let mut mem = blocks(5 << 16);
        let last = mem.len() - 1;
        let a = mem[0].as_mut_ptr().cast::<u8>();
        let z = mem[last].as_mut_ptr().cast::<u8>();
        assert_ne!(a as usize >> NEAR_SHIFT, z as usize >> NEAR_SHIFT);
        let mut l = Lists::<1>::new([8]);
        // SAFETY: the test's blocks are free, aligned and owned by this thread.
        unsafe {
            assert!(l.try_push(0, a, 7));
            assert!(l.try_push(0, z, 7));
            // z -> a, a far link: refused and nothing changed, then followed once accepted.
            let mut seen = Vec::new();
            assert!(Lists::pop_raw(&mut l, 0, |n| {
                seen.push(n);
                false
            })
            .is_null());
            assert_eq!(seen, [a], "`far` sees the decoded link");
            assert_eq!((l.len(0), l.head(0)), (2, z));
            assert_eq!(Lists::pop_raw(&mut l, 0, |n| n == a), z);
            assert_eq!((l.len(0), l.head(0), key(z)), (1, a, 0));
            // a -> the end: neither near nor accepted, so the checked pop takes it.
            assert!(Lists::pop_raw(&mut l, 0, |n| n == a).is_null());
            assert_eq!(l.pop_checked(0, |_| false), (a, false));
            // An empty list: nothing is written.
            assert!(Lists::pop_raw(&mut l, 0, |_| false).is_null());
            assert!(l.is_empty(0));
        }
    }

    #[test]
    fn a_wrapped_push_count_is_folded_by_the_next_slow_operation() {
        let mut mem = blocks(2);
        let p: Vec<*mut u8> = mem.iter_mut().map(|b| b.as_mut_ptr().cast()).collect();
        let mut l = Lists::<1>::new([4]);
        // Three pushes short of a wrap of the low bits, as if that many had been pushed and
        // popped: the pops follow from L6 (pops = pushes + moved + room).
        l.words[0].store(word(4) | (LOW - 2), Relaxed);
        let before = l.counts(0);
        assert_eq!(before, (LOW - 2, LOW - 2));
        // SAFETY: the test's blocks are free, aligned and owned by this thread.
        unsafe {
            assert!(l.try_push(0, p[0], 7) && l.try_push(0, p[1], 7));
            assert_eq!(l.pop(0), p[1]);
            assert!(l.try_push(0, p[1], 7));
        }
        // The low bits wrapped into the guard: the counts are still exact.
        assert_ne!(l.words[0].load(Relaxed) & GUARD, 0);
        assert_eq!(l.counts(0), (LOW + 1, LOW - 1));
        // SAFETY: as above.
        let chain = unsafe { l.take(0, 1, |_| true).0 };
        assert_eq!(chain.len, 1);
        assert_eq!(l.words[0].load(Relaxed) & GUARD, 0, "folded");
        assert_eq!((l.counts(0), l.len(0)), ((LOW + 1, LOW - 1), 1));
    }

    #[test]
    fn a_write_cut_short_by_a_fork_is_ended_for_the_readers() {
        let mut l = Lists::<1>::new([4]);
        // As if the owner was inside a slow operation when another thread forked.
        l.seq.store(7, Relaxed);
        // SAFETY: valid lists that no other thread writes.
        unsafe { Lists::end_write_after_fork(&mut l) };
        assert_eq!(l.seq.load(Relaxed) & 1, 0, "even again");
        // SAFETY: as above; a reader now finishes.
        assert_eq!(unsafe { Lists::counts_of(&l, 0) }, (0, 0));
        // An even sequence is left alone.
        // SAFETY: as above.
        unsafe { Lists::end_write_after_fork(&mut l) };
        assert_eq!(l.seq.load(Relaxed), 8);
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
        let chain = unsafe { a.take(0, 4, |_| true).0 };
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
        let rest = unsafe { a.take_all(0, |_| true).0 };
        assert_eq!((rest.len, a.len(0), a.is_empty(0)), (6, 0, true));
        // SAFETY: the test's blocks are free, aligned and owned by this thread.
        let none = unsafe { a.take(0, 3, |_| true).0 };
        assert_eq!(none.len, 0);
        assert!(none.head.is_null());
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    extern crate std;
    use std::boxed::Box;

    /// Model: counts read by another thread (L7). The owner pushes, splices a chain, pops,
    /// takes a chain back and raises the bound, while another thread reads the counts: every
    /// reading is one the owner passed through, (0, 0), (1, 0) or (1, 1), never a mix of a slow
    /// operation's halves (caught by the seeded bug `torn_counts`).
    #[test]
    fn counts_read_during_slow_operations() {
        loom::model(|| {
            let lists = Box::into_raw(Box::new(Lists::<1>::new([4])));
            let blocks = Box::into_raw(Box::new([[0u64; 2]; 3]));
            let at = lists as usize;
            let reader = loom::thread::spawn(move || {
                // SAFETY: the lists outlive the thread (joined before they are freed).
                unsafe { Lists::counts_of(at as *const Lists<1>, 0) }
            });
            // SAFETY: this thread owns the lists and the blocks (free, aligned, 16 bytes); the
            // reader only reads the counts' atomics.
            unsafe {
                let l = &mut *lists;
                let b = |i: usize| (*blocks)[i].as_mut_ptr().cast::<u8>();
                assert!(l.try_push(0, b(0), 7));
                l.link_key().set_next(b(1), b(2));
                l.splice(
                    0,
                    Chain {
                        head: b(1),
                        tail: b(2),
                        len: 2,
                    },
                );
                assert_eq!(l.pop(0), b(1));
                assert_eq!(l.take(0, 2, |_| true).0.len, 2);
                l.set_cap(0, 6).unwrap();
                assert_eq!(l.counts(0), (1, 1));
            }
            let seen = reader.join().unwrap();
            assert!([(0, 0), (1, 0), (1, 1)].contains(&seen), "read {seen:?}");
            // SAFETY: both were boxed above and nobody uses them any more.
            unsafe {
                drop(Box::from_raw(lists));
                drop(Box::from_raw(blocks));
            }
        });
    }
}
