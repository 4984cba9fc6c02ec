//! The sync shim: the only place this box names its atomics. `--cfg loom` swaps in loom's.
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicI64, AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{AtomicI64, AtomicU64, Ordering};
