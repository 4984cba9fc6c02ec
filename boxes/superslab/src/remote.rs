//! The remote-free stack: how a thread that does not own a slab gives a block back to it.
//!
//! The head word holds the top block's address, in its low bit the **abandoned flag** (blocks
//! are 16-byte aligned, so the low bits of a block address are free), and in its top 16 bits
//! the **count** of blocks on the stack (block addresses lie below 2^48, the registry's
//! address space): each push adds one in the CAS that links its block, and the owner's swap
//! takes the count with the chain, so the owner learns the chain's length without reading
//! its blocks, which another core wrote last (SS6). An owner that
//! abandons its superslab sets the flag with the same swap that takes the stack, so a pusher's
//! one CAS sees either "owned, and my block will be drained by the owner" or "abandoned, and I
//! must pin and collect": there is no window between the check and the push (SS7).
use crate::sync::{AtomicUsize, Ordering, StaticAtomicUsize};
use crate::LinkKey;
use core::ptr::null_mut;
use hakmem_registry::ADDRESS_BITS;

/// The abandoned flag in the head word.
const FLAG: usize = 1;

/// Where the count starts in the head word: above every address a superslab can have (its
/// registration refuses any beyond `ADDRESS_BITS`).
const COUNT_SHIFT: u32 = ADDRESS_BITS;

/// One more block on the stack, added to the head word.
const ONE: usize = 1 << COUNT_SHIFT;

/// The head word's block address.
const ADDRESS: usize = ONE - 1 - FLAG;

// Every block of a slab fits the count (a slab's 16-byte blocks, with room to spare).
const _: () = assert!(crate::SLAB_SIZE / 16 < 1 << (usize::BITS - COUNT_SHIFT));

/// A chain taken off a [`RemoteStack`]: its top block (null when the stack was empty) and the
/// number of blocks linked from it, as the pushes counted them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Taken {
    /// The most recently pushed block; the rest follow through first words (stored with the
    /// link key, SS18), to a null.
    pub head: *mut u8,
    /// How many blocks the chain holds.
    pub count: u32,
}

impl Taken {
    fn of(word: usize) -> Self {
        Self {
            head: (word & ADDRESS) as *mut u8,
            count: (word >> COUNT_SHIFT) as u32,
        }
    }
}

/// Failed CASes in [`RemoteStack::push`], process-wide (for `docs/SCALING.md`). Only a retry
/// touches it, so an uncontended push, and the owner, never do.
static PUSH_RETRIES: StaticAtomicUsize = StaticAtomicUsize::new(0);

/// A lock-free LIFO of blocks, linked through each block's first word.
///
/// Non-owners push with a CAS loop (Release on success); only the owner (or the one thread
/// holding an abandoned superslab) takes, and it takes the whole stack at once with one swap
/// (Acquire). With a single taker that never pops one node at a time there is no ABA: a pusher's
/// CAS can only fail because the head changed, and then it retries with the new head. A pushed
/// block carries the free key (see [`crate::free_key`]) in its second word.
pub struct RemoteStack {
    head: AtomicUsize,
}

impl Default for RemoteStack {
    fn default() -> Self {
        Self::new()
    }
}

/// A push refused because the stack is flagged abandoned (see [`RemoteStack::try_push`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Abandoned;

impl RemoteStack {
    /// An empty stack, not flagged.
    pub fn new() -> Self {
        Self {
            head: AtomicUsize::new(0),
        }
    }

    /// Pushes `block` unless the stack is flagged abandoned: one CAS when uncontended, no lock.
    /// `Ok(true)` when the stack was empty before the push (the owner must hear of it: SS15).
    /// On `Err` nothing was pushed; the caller must pin the superslab and then [`Self::push`].
    ///
    /// # Safety
    /// `block` is a 16-byte aligned block of at least 16 bytes of this stack's slab, at an
    /// address below 2^`ADDRESS_BITS` (hakmem-registry's), that the caller held and now gives
    /// up: nobody else reads or writes it until the owner takes it.
    #[inline]
    pub unsafe fn try_push(&self, block: *mut u8) -> Result<bool, Abandoned> {
        // SAFETY: forwarded.
        unsafe { self.push_inner(block, true, crate::link_key()) }
    }

    /// [`Self::try_push`] with the link key given: `key` is [`crate::link_key`]'s.
    ///
    /// # Safety
    /// As for [`Self::try_push`], and `key` is the process's link key (from
    /// [`crate::link_key`] or [`crate::link_key_drawn`]): with another the owner would follow
    /// a wrong link.
    #[inline]
    pub unsafe fn try_push_keyed(&self, block: *mut u8, key: LinkKey) -> Result<bool, Abandoned> {
        // SAFETY: forwarded.
        unsafe { self.push_inner(block, true, key) }
    }

    /// Pushes `block` whether or not the stack is flagged (the flag is kept).
    ///
    /// # Safety
    /// As for [`Self::try_push`].
    #[inline]
    pub unsafe fn push(&self, block: *mut u8) {
        // SAFETY: forwarded.
        let r = unsafe { self.push_inner(block, false, crate::link_key()) };
        debug_assert!(r.is_ok());
    }

    /// The push of [`Self::try_push`] (`refuse_flagged`) and [`Self::push`]: keys `block`, links
    /// it on top and adds one to the count, in one CAS; `Err` only when `refuse_flagged` and
    /// the stack is flagged, having linked nothing.
    ///
    /// # Safety
    /// As for [`Self::try_push_keyed`].
    #[inline]
    unsafe fn push_inner(
        &self,
        block: *mut u8,
        refuse_flagged: bool,
        key: LinkKey,
    ) -> Result<bool, Abandoned> {
        debug_assert_eq!(block as usize & (15 | !ADDRESS), 0);
        // SAFETY: the caller gave `block` up; its second word is the key while it is free.
        unsafe { crate::set_key_word(block, crate::free_key()) };
        #[cfg(not(hakmem_seeded_bug = "plain_store"))]
        {
            let mut head = self.head.load(Ordering::Relaxed);
            loop {
                if refuse_flagged && head & FLAG != 0 {
                    return Err(Abandoned);
                }
                // SAFETY: the caller gave `block` up to this stack; its first word is the link,
                // stored encoded (SS18).
                unsafe { key.set_next(block, (head & ADDRESS) as *mut u8) };
                // The flag stays, and the count goes one up: SS4 bounds it by the slab's blocks,
                // and a count run past that by double frees wraps within its own bits.
                #[cfg(not(hakmem_seeded_bug = "count_after_push"))]
                let new = (head & !ADDRESS).wrapping_add(ONE) | block as usize;
                // Seeded bug: the count goes up after the push, so a take in between gets a
                // chain longer than its count.
                #[cfg(hakmem_seeded_bug = "count_after_push")]
                let new = (head & !ADDRESS) | block as usize;
                match self.head.compare_exchange_weak(
                    head,
                    new,
                    Ordering::Release,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        #[cfg(hakmem_seeded_bug = "count_after_push")]
                        self.head.fetch_add(ONE, Ordering::Relaxed);
                        return Ok(head & ADDRESS == 0);
                    }
                    Err(now) => {
                        PUSH_RETRIES.fetch_add(1, Ordering::Relaxed);
                        head = now;
                    }
                }
            }
        }
        #[cfg(hakmem_seeded_bug = "plain_store")]
        {
            // Seeded bug: a plain store where a CAS is needed; a concurrent push is lost.
            let head = self.head.load(Ordering::Relaxed);
            if refuse_flagged && head & FLAG != 0 {
                return Err(Abandoned);
            }
            // SAFETY: as above.
            unsafe { key.set_next(block, (head & ADDRESS) as *mut u8) };
            self.head.store(
                (head & !ADDRESS).wrapping_add(ONE) | block as usize,
                Ordering::Release,
            );
            Ok(head & ADDRESS == 0)
        }
    }

    /// Takes every block pushed so far, as a chain linked through first words with its count,
    /// and clears the abandoned flag. Only the slab's owner calls this.
    #[inline]
    pub fn take_all(&self) -> Taken {
        if self.head.load(Ordering::Relaxed) == 0 {
            return Taken {
                head: null_mut(),
                count: 0,
            };
        }
        Taken::of(self.head.swap(0, Ordering::Acquire))
    }

    /// Takes every block pushed so far and leaves the stack flagged abandoned, in one swap:
    /// every push before it is in the returned chain, and every push after it sees the flag.
    /// Only the thread that owns the slab, or holds its abandoned superslab, calls this.
    #[inline]
    pub fn take_all_flagged(&self) -> Taken {
        Taken::of(self.head.swap(FLAG, Ordering::Acquire))
    }

    /// Empties the stack and clears the flag, dropping whatever it held: for a slab being
    /// (re)initialised, whose blocks were all back, so anything still here was freed twice.
    pub(crate) fn reset(&self) {
        self.head.store(0, Ordering::Relaxed);
    }

    /// How many times, process-wide, a push's CAS failed and was retried (another push, or
    /// the owner's take, changed the head in between). Pushes are made by non-owners only.
    pub fn push_retries() -> u64 {
        PUSH_RETRIES.load(Ordering::Relaxed) as u64
    }

    /// True when no block is waiting (a hint: a push may land right after).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.head.load(Ordering::Relaxed) & ADDRESS == 0
    }

    /// True when the stack is flagged abandoned.
    #[inline]
    pub fn is_flagged(&self) -> bool {
        self.head.load(Ordering::Relaxed) & FLAG != 0
    }

    /// True when `p` is on the stack now, looking at no more than `limit` blocks. Every link is
    /// followed only if it lies in `[lo, hi)` and is 16-byte aligned, so a chain taken and
    /// reused by the owner while this reads it can mislead the answer but never the reads.
    ///
    /// A true answer means `p` is free (it was on the stack after the caller's look began).
    ///
    /// # Safety
    /// `[lo, hi)` is mapped memory (the slab) for the duration of the call.
    pub unsafe fn contains(&self, p: *mut u8, lo: usize, hi: usize, limit: u32) -> bool {
        let mut b = self.head.load(Ordering::Acquire) & ADDRESS;
        let key = crate::link_key();
        let mut n = 0;
        while b != 0 && n < limit {
            if b < lo || b >= hi || b & 15 != 0 {
                return false;
            }
            if b == p as usize {
                return true;
            }
            // SAFETY: `b` lies in the mapped range; a racing reuse only changes the value read,
            // and the read is atomic, so it is not a data race.
            let stored =
                unsafe { (*(b as *const core::sync::atomic::AtomicUsize)).load(Ordering::Relaxed) };
            // Decoded (SS18); whatever it gives is bounds-checked above before it is followed.
            b = key.decode(stored, b as *mut u8) as usize;
            n += 1;
        }
        false
    }
}
