//! The sync shim: the only place this box names its atomics. `--cfg loom` swaps in loom's.
#[cfg(not(loom))]
pub use core::sync::atomic::{fence, AtomicI64, AtomicU64, Ordering};
#[cfg(loom)]
pub use loom::sync::atomic::{fence, AtomicI64, AtomicU64, Ordering};

/// One turn of a wait: a spin hint, or under loom a yield, so its models explore waits without
/// an unbounded number of branches.
#[inline]
pub fn spin() {
    #[cfg(not(loom))]
    core::hint::spin_loop();
    #[cfg(loom)]
    loom::thread::yield_now();
}
