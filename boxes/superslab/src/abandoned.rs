//! The abandoned list: superslabs whose owner exited while blocks were still out.
use crate::superslab::Superslab;
use crate::sync::{AtomicUsize, Ordering, StaticAtomicUsize};
#[cfg(not(loom))]
use crate::LockCounts;
use crate::SpinLock;
use core::ptr::null;

struct Inner {
    head: *const Superslab,
}

// SAFETY: the pointers are only followed under the lock, and superslabs are shared memory.
unsafe impl Send for Inner {}

/// Ids of lists made so far: each list's id is its own for the life of the process (SS17), so
/// no list, not even one at the address of a dropped one, takes another's superslab.
static NEXT_ID: StaticAtomicUsize = StaticAtomicUsize::new(1);

/// A doubly linked list of abandoned superslabs under a spin lock. Being on the list is a
/// reference (the one the exiting owner held). Taking a superslab off the list, by
/// [`AbandonedList::adopt`] or [`AbandonedList::try_remove`], is what makes its taker the only
/// thread that may touch its slabs.
///
/// A superslab records which list it is on (SS17), and a list takes off only its own: given a
/// superslab that sits on another list, [`AbandonedList::try_remove`] and
/// [`AbandonedList::claim`] answer false and touch no link.
pub struct AbandonedList {
    inner: SpinLock<Inner>,
    len: AtomicUsize,
    /// This list's id (never 0), which its superslabs hold in their `list` word.
    id: usize,
}

impl Default for AbandonedList {
    fn default() -> Self {
        Self::new()
    }
}

impl AbandonedList {
    /// An empty list.
    pub fn new() -> Self {
        Self {
            inner: SpinLock::new(Inner { head: null() }),
            len: AtomicUsize::new(0),
            id: NEXT_ID.fetch_add(1, core::sync::atomic::Ordering::Relaxed),
        }
    }

    /// How many superslabs wait (a hint).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// True when none waits (a hint).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn push(&self, ss: &Superslab) {
        self.push_then(ss, || ());
    }

    /// Lists `ss`, then runs `f` while still holding the lock: while the lock is held nobody can
    /// take `ss` off the list, so `f` may still touch it. `ss` is on no list (its caller holds
    /// it: as its owner, or taken off this list).
    pub(crate) fn push_then<R>(&self, ss: &Superslab, f: impl FnOnce() -> R) -> R {
        let r = self.inner.with(|inner| {
            // On no list, so no other lock guards its links (SS17).
            assert!(
                ss.list.load(Ordering::Relaxed) == 0,
                "hakmem: a superslab listed twice"
            );
            ss.list.store(self.id, Ordering::Relaxed);
            let old = inner.head;
            // SAFETY: list links are only touched under this lock; `old` is listed, hence live.
            unsafe {
                ss.link.with_mut(|l| {
                    (*l).next = old;
                    (*l).prev = null();
                });
                if let Some(o) = old.as_ref() {
                    o.link.with_mut(|l| (*l).prev = ss);
                }
            }
            inner.head = ss;
            f()
        });
        self.len.fetch_add(1, Ordering::Relaxed);
        r
    }

    /// Takes `ss` off the list.
    ///
    /// # Safety
    /// Under this list's lock (`inner` is its value), and `ss` is on this list (its `list`
    /// word holds this list's id).
    unsafe fn unlink(&self, inner: &mut Inner, ss: &Superslab) {
        debug_assert_eq!(ss.list.load(Ordering::Relaxed), self.id);
        ss.list.store(0, Ordering::Relaxed);
        // SAFETY: under the lock (the caller's word); `ss` and its neighbours are on this list,
        // hence live, and their links are this lock's.
        unsafe {
            let (next, prev) = ss.link.with_mut(|l| ((*l).next, (*l).prev));
            match prev.as_ref() {
                Some(p) => p.link.with_mut(|l| (*l).next = next),
                None => inner.head = next,
            }
            if let Some(n) = next.as_ref() {
                n.link.with_mut(|l| (*l).prev = prev);
            }
        }
    }

    /// Takes `ss` off the list if it is still on it. True means the caller now holds it
    /// exclusively, with the list's reference. False, having touched nothing, when `ss` is on
    /// no list or on another one (SS17).
    pub fn try_remove(&self, ss: &Superslab) -> bool {
        let removed = self.inner.with(|inner| {
            // Only this list's holder writes this id into `list` or takes it out, and it holds
            // the lock now: seeing it means `ss` is on this list until the lock is released.
            let ours = ss.list.load(Ordering::Relaxed) == self.id;
            if ours {
                // SAFETY: under this list's lock, and `ss` is on this list (above).
                unsafe { self.unlink(inner, ss) };
            }
            ours
        });
        if removed {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// Takes the most recently abandoned superslab and makes `owner` its owner, with the list's
    /// reference. The caller should then collect its remote frees.
    ///
    /// # Safety
    /// `owner` is the calling thread's own heap id, which no other running thread uses: the
    /// adopted superslab's owner-only fields (SS5) are then this thread's alone.
    ///
    /// ```compile_fail,E0133
    /// fn take_any(list: &hakmem_superslab::AbandonedList) {
    ///     let _ = list.adopt(42); // error: an `unsafe fn`
    /// }
    /// ```
    pub unsafe fn adopt(&self, owner: usize) -> Option<&Superslab> {
        if self.is_empty() {
            return None;
        }
        let ss = self.inner.with(|inner| {
            // SAFETY: listed superslabs are live while the list holds their reference.
            let ss = unsafe { inner.head.as_ref()? };
            #[cfg(not(hakmem_seeded_bug = "adopt_no_take"))]
            // SAFETY: under this list's lock; its head is on it.
            unsafe {
                self.unlink(inner, ss)
            };
            Some(ss)
        })?;
        #[cfg(not(hakmem_seeded_bug = "adopt_no_take"))]
        self.len.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: taken off the list above, so held exclusively.
        unsafe { ss.take_ownership(owner) };
        // SAFETY: a listed superslab is live; its reference moved to the caller.
        Some(unsafe { &*(ss as *const Superslab) })
    }

    /// Adoption by a freer (SS12): takes `ss` itself off the list, if it is still on it, and
    /// makes `owner` its owner, with the list's reference. False, having changed nothing, when
    /// it is not listed: already adopted or claimed, being collected by a freer that holds it
    /// out of the list, or never abandoned. The list's lock decides between this, [`Self::adopt`],
    /// [`Self::try_remove`] and other claims: exactly one of them takes a listed superslab. The
    /// caller should then drain its remote stacks, which clears their abandoned flags.
    ///
    /// # Safety
    /// As for [`Self::adopt`]: `owner` is the calling thread's own heap id, which no other
    /// running thread uses. (A superslab on another list, or on none, is left alone: SS17.)
    ///
    /// ```compile_fail,E0133
    /// fn claim(list: &hakmem_superslab::AbandonedList, ss: &hakmem_superslab::Superslab) {
    ///     let _ = list.claim(ss, 42); // error: an `unsafe fn`
    /// }
    /// ```
    pub unsafe fn claim(&self, ss: &Superslab, owner: usize) -> bool {
        #[cfg(not(hakmem_seeded_bug = "claim_without_take"))]
        if !self.try_remove(ss) {
            return false;
        }
        // Seeded bug: look at the state instead of taking it off the list, so an allocating
        // adopter (or another freer) can take it too.
        #[cfg(hakmem_seeded_bug = "claim_without_take")]
        if !ss.is_abandoned() {
            return false;
        }
        // SAFETY: taken off the list above, so held exclusively, with the list's reference.
        unsafe { ss.take_ownership(owner) };
        true
    }

    /// How often the list's lock was taken, and how often a taker had to wait (for
    /// `docs/SCALING.md`).
    #[cfg(not(loom))]
    pub fn contention(&self) -> LockCounts {
        self.inner.contention()
    }

    /// Takes the lock and keeps it (fork's `prepare`).
    #[cfg(not(loom))]
    pub fn lock_for_fork(&self) {
        self.inner.lock_for_fork();
    }

    /// Releases a lock taken by [`AbandonedList::lock_for_fork`] (fork's `parent` and `child`).
    ///
    /// # Safety
    /// As [`crate::SpinLock::force_unlock`]: the lock was taken by `lock_for_fork`.
    #[cfg(not(loom))]
    pub unsafe fn force_unlock(&self) {
        // SAFETY: forwarded from the caller.
        unsafe { self.inner.force_unlock() };
    }
}
