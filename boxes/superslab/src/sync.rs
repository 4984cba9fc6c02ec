//! The sync shim: the only place this box names atomics, cells and spinning. `--cfg loom` swaps
//! in loom's types, so the models run this box's real code.
#[cfg(not(loom))]
pub use core::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
#[cfg(loom)]
pub use loom::cell::UnsafeCell;
#[cfg(loom)]
pub use loom::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

#[cfg(not(loom))]
use core::marker::PhantomData;

/// For process-wide statics that no model explores: loom's atomics cannot be `static`.
pub use core::sync::atomic::AtomicUsize as StaticAtomicUsize;

/// Reads an atomic word that no other thread writes now, as a plain load, which the compiler
/// may fold into the instruction that uses it (an atomic load it keeps apart).
///
/// # Safety
/// No other thread writes `a` while this runs (others may read it).
#[cfg(not(loom))]
#[inline(always)]
pub unsafe fn read_own_u64(a: &AtomicU64) -> u64 {
    // SAFETY: no concurrent write, so a plain read races with nothing.
    unsafe { a.as_ptr().read() }
}

/// [`read_own_u64`] for a 32-bit word.
///
/// # Safety
/// As [`read_own_u64`].
#[cfg(not(loom))]
#[inline(always)]
pub unsafe fn read_own_u32(a: &AtomicU32) -> u32 {
    // SAFETY: no concurrent write, so a plain read races with nothing.
    unsafe { a.as_ptr().read() }
}

/// Under loom: an atomic load, which loom can check.
///
/// # Safety
/// As the plain build's.
#[cfg(loom)]
pub unsafe fn read_own_u64(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// Under loom: an atomic load, which loom can check.
///
/// # Safety
/// As the plain build's.
#[cfg(loom)]
pub unsafe fn read_own_u32(a: &AtomicU32) -> u32 {
    a.load(Ordering::Relaxed)
}

/// Tells the scheduler (or loom) that this thread is waiting on another.
#[inline]
pub fn spin() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    core::hint::spin_loop();
}

/// `core::cell::UnsafeCell` with loom's closure API, so owner-only fields are checked by loom.
#[cfg(not(loom))]
#[derive(Debug)]
pub struct UnsafeCell<T>(core::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    /// Wraps `v`.
    pub const fn new(v: T) -> Self {
        Self(core::cell::UnsafeCell::new(v))
    }
    /// Reads through a shared pointer.
    #[inline(always)]
    pub fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }
    /// Writes through an exclusive pointer.
    #[inline(always)]
    pub fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// Spins a contended taker makes before it yields its CPU at each further look (a few
/// microseconds on current x86: far longer than any critical section of a running holder).
#[cfg(not(loom))]
const SPINS_BEFORE_YIELD: u32 = 200;

/// A test-and-test-and-set spin lock for short critical sections on slow paths. A taker that
/// finds it held spins briefly, then yields (a holder preempted on an oversubscribed machine
/// would otherwise keep every waiter spinning through whole time slices: `docs/SCALING.md`).
///
/// Under loom it is a `loom::sync::Mutex`: loom cannot drive a spinning waiter to progress, and
/// models care about what the lock protects, not how it spins (this lock is tested with real
/// threads instead).
pub struct SpinLock<T> {
    #[cfg(not(loom))]
    locked: AtomicBool,
    /// Acquisitions, and those that found the lock held: slow-path counters for
    /// `docs/SCALING.md`, on the lock's own cache line, which the CAS takes anyway.
    #[cfg(not(loom))]
    acquired: AtomicU64,
    #[cfg(not(loom))]
    contended: AtomicU64,
    #[cfg(not(loom))]
    waited_ns: AtomicU64,
    #[cfg(not(loom))]
    max_wait_ns: AtomicU64,
    #[cfg(not(loom))]
    value: UnsafeCell<T>,
    #[cfg(loom)]
    inner: loom::sync::Mutex<T>,
}

// SAFETY: the lock serialises every access to `value`.
unsafe impl<T: Send> Sync for SpinLock<T> {}
// SAFETY: moving the lock moves the value; nothing is thread-affine.
unsafe impl<T: Send> Send for SpinLock<T> {}

#[cfg(loom)]
impl<T> SpinLock<T> {
    /// An unlocked lock around `value`.
    pub fn new(value: T) -> Self {
        Self {
            inner: loom::sync::Mutex::new(value),
        }
    }

    /// Runs `f` under the lock.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        f(&mut self.inner.lock().unwrap())
    }
}

#[cfg(not(loom))]
impl<T> SpinLock<T> {
    /// An unlocked lock around `value`.
    pub const fn new(value: T) -> Self {
        Self {
            locked: AtomicBool::new(false),
            acquired: AtomicU64::new(0),
            contended: AtomicU64::new(0),
            waited_ns: AtomicU64::new(0),
            max_wait_ns: AtomicU64::new(0),
            value: UnsafeCell::new(value),
        }
    }

    /// How often the lock was taken, how often a taker found it held and had to wait, and how
    /// long those waits took (in all, and the longest).
    pub fn contention(&self) -> LockCounts {
        LockCounts {
            acquired: self.acquired.load(Ordering::Relaxed),
            contended: self.contended.load(Ordering::Relaxed),
            waited_ns: self.waited_ns.load(Ordering::Relaxed),
            max_wait_ns: self.max_wait_ns.load(Ordering::Relaxed),
        }
    }

    /// Takes the lock (Acquire), runs `f`, releases it (Release).
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        f(&mut self.lock())
    }

    /// Takes the lock; it is released (Release) when the guard drops. The guard is the only way
    /// to reach the value, so two `&mut` to it can never be live at once.
    pub fn lock(&self) -> SpinGuard<'_, T> {
        if self
            .locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_contended();
        }
        self.acquired.fetch_add(1, Ordering::Relaxed);
        SpinGuard {
            lock: self,
            _value: PhantomData,
        }
    }

    #[cold]
    fn lock_contended(&self) {
        self.contended.fetch_add(1, Ordering::Relaxed);
        let start = monotonic_ns();
        let mut spins = 0u32;
        loop {
            // Wait with plain loads so the cache line is not bounced. A holder that runs leaves
            // within a few spins; one that does not was preempted, and spinning on would burn
            // the rest of this thread's time slice while it waits for a CPU: yield it instead.
            while self.locked.load(Ordering::Relaxed) {
                if spins < SPINS_BEFORE_YIELD {
                    spins += 1;
                    spin();
                } else {
                    hakmem_os::yield_now();
                }
            }
            if self
                .locked
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                let waited = monotonic_ns().saturating_sub(start);
                self.waited_ns.fetch_add(waited, Ordering::Relaxed);
                self.max_wait_ns.fetch_max(waited, Ordering::Relaxed);
                return;
            }
        }
    }

    /// Takes the lock if it is free now; `None` when another holder has it (or this thread
    /// does: nothing waits, so a caller that may already hold it cannot deadlock).
    pub fn try_lock(&self) -> Option<SpinGuard<'_, T>> {
        self.locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()?;
        self.acquired.fetch_add(1, Ordering::Relaxed);
        Some(SpinGuard {
            lock: self,
            _value: PhantomData,
        })
    }

    /// Takes the lock and keeps it until [`SpinLock::force_unlock`]: for `fork`, whose
    /// `prepare` takes every lock and whose `parent` and `child` release them.
    pub fn lock_for_fork(&self) {
        core::mem::forget(self.lock());
    }

    /// The value, while [`SpinLock::lock_for_fork`] holds the lock (a forked child's handler
    /// fixing what the fork froze).
    ///
    /// # Safety
    /// The lock is held by [`SpinLock::lock_for_fork`] (taken in this process, or by the parent
    /// of a forked child whose only thread this is), and no other reference to the value is
    /// live while the result is.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn peek_for_fork(&self) -> &mut T {
        // SAFETY: the held lock serialises access, and the caller vouches for no other
        // reference (above).
        self.value.with_mut(|v| unsafe { &mut *v })
    }

    /// Releases the lock without a guard.
    ///
    /// # Safety
    /// The lock was taken by [`SpinLock::lock_for_fork`] (in this process, or in the parent of a
    /// forked child whose only thread this is), and no reference obtained under it is live.
    pub unsafe fn force_unlock(&self) {
        self.locked.store(false, Ordering::Release);
    }
}

/// What [`SpinLock::contention`] counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LockCounts {
    /// Times the lock was taken.
    pub acquired: u64,
    /// Times a taker found it held and waited.
    pub contended: u64,
    /// Nanoseconds spent waiting in those takes, in all.
    pub waited_ns: u64,
    /// The longest of those waits, in nanoseconds.
    pub max_wait_ns: u64,
}

/// The platform's monotonic clock in nanoseconds. Read only on the contended path.
#[cfg(not(loom))]
use hakmem_os::monotonic_ns;

/// Exclusive access to a [`SpinLock`]'s value; releases the lock when dropped.
///
/// A guard lends its value out as `&mut T` (and `&T` to whoever shares the guard), so it is
/// `Send` when `T: Send` and `Sync` only when `T: Sync`, as `&mut T` is: a guard of a `Cell`
/// cannot be shared between threads that would both write it.
///
/// ```compile_fail,E0277
/// use core::cell::Cell;
/// fn shared<T: Sync>(_: &T) {}
/// let lock = hakmem_superslab::SpinLock::new(Cell::new(0u64));
/// let guard = lock.lock();
/// shared(&guard); // error: `Cell<u64>` cannot be shared between threads
/// ```
#[cfg(not(loom))]
pub struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
    /// Makes the guard's auto traits those of `&mut T` (the lock's are those of `T: Send`).
    _value: PhantomData<&'a mut T>,
}

#[cfg(not(loom))]
impl<T> core::ops::Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock, so nobody writes the value while it lives.
        self.lock.value.with(|v| unsafe { &*v })
    }
}

#[cfg(not(loom))]
impl<T> core::ops::DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard holds the lock and is borrowed mutably: this is the only access.
        self.lock.value.with_mut(|v| unsafe { &mut *v })
    }
}

#[cfg(not(loom))]
impl<T> Drop for SpinGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    extern crate std;
    use super::SpinLock;

    #[test]
    fn spin_lock_excludes() {
        let l = SpinLock::new(0u64);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..20_000 {
                        l.with(|v| *v += 1);
                    }
                });
            }
        });
        assert_eq!(l.with(|v| *v), 80_000);
        let c = l.contention();
        assert_eq!(c.acquired, 80_001);
        assert!(c.contended <= c.acquired);
    }

    #[test]
    fn a_contended_take_is_counted_with_its_wait() {
        let l = SpinLock::new(0u32);
        let g = l.lock();
        std::thread::scope(|s| {
            let t = s.spawn(|| *l.lock() += 1);
            // Hold the lock until the other thread has found it held.
            while l.contention().contended == 0 {
                std::thread::yield_now();
            }
            drop(g);
            t.join().unwrap();
        });
        let c = l.contention();
        assert_eq!((c.acquired, c.contended), (2, 1));
        // One wait: the total is that wait, and so is the longest.
        assert_eq!(c.max_wait_ns, c.waited_ns);
        assert_eq!(*l.lock(), 1);
    }

    #[test]
    fn try_lock_never_waits() {
        let l = SpinLock::new(0u32);
        let g = l.try_lock().expect("free");
        assert!(l.try_lock().is_none(), "held");
        drop(g);
        *l.try_lock().expect("free again") += 1;
        assert_eq!(*l.lock(), 1);
    }

    #[test]
    fn fork_lock_holds_until_forced() {
        let l = SpinLock::new(1u32);
        l.lock_for_fork();
        assert!(l.locked.load(super::Ordering::Relaxed));
        // SAFETY: taken by lock_for_fork just above; no reference from it is live.
        unsafe { l.force_unlock() };
        assert_eq!(*l.lock(), 1);
    }
}
