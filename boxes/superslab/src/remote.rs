//! The remote-free stack: how a thread that does not own a slab gives a block back to it.
use crate::sync::{AtomicPtr, Ordering, StaticAtomicUsize};
use core::ptr::null_mut;

/// Failed CASes in [`RemoteStack::push`], process-wide (for `docs/SCALING.md`). Only a retry
/// touches it, so an uncontended push, and the owner, never do.
static PUSH_RETRIES: StaticAtomicUsize = StaticAtomicUsize::new(0);

/// A lock-free LIFO of blocks, linked through each block's first word.
///
/// Non-owners push with a CAS loop (Release on success); only the owner takes, and it takes the
/// whole stack at once with `swap(null, Acquire)`. With a single taker that never pops one node at
/// a time there is no ABA: a pusher's CAS can only fail because the head changed, and then it
/// retries with the new head.
pub struct RemoteStack {
    head: AtomicPtr<u8>,
}

impl Default for RemoteStack {
    fn default() -> Self {
        Self::new()
    }
}

impl RemoteStack {
    /// An empty stack.
    pub fn new() -> Self {
        Self {
            head: AtomicPtr::new(null_mut()),
        }
    }

    /// Pushes `block`: one CAS when uncontended, no lock.
    ///
    /// # Safety
    /// `block` is a block of this stack's slab that the caller held and now gives up: nobody
    /// else reads or writes it until the owner takes it.
    #[inline]
    pub unsafe fn push(&self, block: *mut u8) {
        #[cfg(not(hakmem_seeded_bug = "plain_store"))]
        {
            let mut head = self.head.load(Ordering::Relaxed);
            loop {
                // SAFETY: the caller gave `block` up to this stack; its first word is the link.
                unsafe { block.cast::<*mut u8>().write(head) };
                match self.head.compare_exchange_weak(
                    head,
                    block,
                    Ordering::Release,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return,
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
            // SAFETY: as above.
            unsafe { block.cast::<*mut u8>().write(head) };
            self.head.store(block, Ordering::Release);
        }
    }

    /// Takes every block pushed so far, as a chain linked through first words (null if none).
    /// Only the slab's owner calls this.
    #[inline]
    pub fn take_all(&self) -> *mut u8 {
        if self.head.load(Ordering::Relaxed).is_null() {
            return null_mut();
        }
        self.head.swap(null_mut(), Ordering::Acquire)
    }

    /// How many times, process-wide, a push's CAS failed and was retried (another push, or
    /// the owner's take, changed the head in between). Pushes are made by non-owners only.
    pub fn push_retries() -> u64 {
        PUSH_RETRIES.load(Ordering::Relaxed) as u64
    }

    /// True when no block is waiting (a hint: a push may land right after).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.head.load(Ordering::Relaxed).is_null()
    }
}
