//! The `tracing` feature: the cold lifecycle events as `tracing` events (target `hakmem`).
//!
//! The stats box calls [`on_event`] for its lifecycle events (its `hook` feature), on the
//! thread where they happen, possibly in the middle of a heap operation, and the facade calls
//! [`corruption`] for each corruption report. A subscriber may allocate, so while it runs:
//! - a thread-local flag (const-initialised, no destructor) drops any event the subscriber's
//!   own allocations cause, so the hook never recurses;
//! - this thread's heap pointer is set to "dead", so the subscriber's allocations and frees
//!   take the orphan paths (a heap made for one block, the remote free path) and never touch
//!   the heap whose operation the event interrupted. No event is raised under a lock the
//!   orphan paths take.
use core::cell::Cell;
use hakmem_stats::Event;

std::thread_local! {
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
}

/// Installs the hook (at start-up).
pub fn install() {
    hakmem_stats::hook::set(on_event);
}

/// Runs `f` unless this thread is already inside the hook, with the heap set aside.
fn guarded(f: impl FnOnce()) {
    struct Restore(*mut hakmem_hot_heap::Heap);
    impl Drop for Restore {
        fn drop(&mut self) {
            crate::global::swap_heap(self.0);
            IN_HOOK.with(|g| g.set(false));
        }
    }
    if IN_HOOK.with(|g| g.replace(true)) {
        return;
    }
    let _restore = Restore(crate::global::swap_heap(crate::global::DEAD));
    f();
}

fn on_event(e: Event, bytes: usize) {
    guarded(|| match e {
        Event::SsCreated => {
            tracing::debug!(target: "hakmem", event = "superslab_mapped", "hakmem: superslab mapped")
        }
        Event::SsCached => tracing::debug!(
            target: "hakmem",
            event = "superslab_retired",
            "hakmem: empty region retired to the cache"
        ),
        Event::SsReleased => tracing::debug!(
            target: "hakmem",
            event = "region_unmapped",
            "hakmem: cached region unmapped"
        ),
        Event::Abandon => tracing::debug!(
            target: "hakmem",
            event = "superslab_abandoned",
            "hakmem: superslab abandoned by an exiting thread"
        ),
        Event::Adopt => tracing::debug!(
            target: "hakmem",
            event = "superslab_adopted",
            "hakmem: abandoned superslab adopted"
        ),
        Event::Madvise => tracing::debug!(
            target: "hakmem",
            event = "purge",
            bytes,
            "hakmem: pages given back (MADV_DONTNEED)"
        ),
        Event::OsRefused => tracing::warn!(
            target: "hakmem",
            event = "os_refused",
            bytes,
            "hakmem: the OS refused memory"
        ),
        _ => {}
    });
}

/// A corruption report: `what` ("double free", "invalid pointer") at `addr`, found by `op`.
pub fn corruption(op: &str, what: &str, addr: usize) {
    guarded(|| {
        tracing::error!(
            target: "hakmem",
            event = "corruption",
            op,
            what,
            addr = format_args!("{addr:#x}"),
            "hakmem: {op}(): {what} {addr:#x}"
        )
    });
}
