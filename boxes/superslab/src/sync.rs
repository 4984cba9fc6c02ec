//! The sync shim: the only place this box names atomics, cells and spinning. `--cfg loom` swaps
//! in loom's types, so the models run this box's real code.
#[cfg(not(loom))]
pub use core::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
#[cfg(loom)]
pub use loom::cell::UnsafeCell;
#[cfg(loom)]
pub use loom::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// For process-wide statics that no model explores: loom's atomics cannot be `static`.
pub use core::sync::atomic::AtomicUsize as StaticAtomicUsize;

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

/// A test-and-test-and-set spin lock for short critical sections on slow paths.
///
/// Under loom it is a `loom::sync::Mutex`: loom cannot drive a spinning waiter to progress, and
/// models care about what the lock protects, not how it spins (this lock is tested with real
/// threads instead).
pub struct SpinLock<T> {
    #[cfg(not(loom))]
    locked: AtomicBool,
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
            value: UnsafeCell::new(value),
        }
    }

    /// Takes the lock (Acquire), runs `f`, releases it (Release).
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        self.lock();
        // SAFETY: the lock is held, so this is the only access to `value`.
        let r = self.value.with_mut(|v| f(unsafe { &mut *v }));
        self.unlock();
        r
    }

    /// Takes the lock and keeps it until [`SpinLock::unlock`]: for `fork`, whose `prepare` takes
    /// every lock and whose `parent` and `child` release them.
    pub fn lock(&self) {
        while self
            .locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            // Wait with plain loads so the cache line is not bounced.
            while self.locked.load(Ordering::Relaxed) {
                spin();
            }
        }
    }

    /// Releases a lock taken with [`SpinLock::lock`]. In a forked child, the one thread left
    /// may release a lock its parent's `prepare` took.
    pub fn unlock(&self) {
        self.locked.store(false, Ordering::Release);
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
    }
}
