//! The sync shim: the only place this box names its atomics. `--cfg loom` swaps in loom's.
#[cfg(not(loom))]
pub use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
#[cfg(loom)]
pub use loom::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

/// One turn of a wait loop: lets the thread being waited for run (on a busy machine it may be
/// preempted inside its section).
#[cfg(not(loom))]
#[inline]
pub fn spin() {
    core::hint::spin_loop();
    hakmem_os::yield_now();
}

/// One turn of a wait loop: under loom, a yield, so the model lets the others run.
#[cfg(loom)]
pub fn spin() {
    loom::thread::yield_now();
}
