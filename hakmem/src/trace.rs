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
//!
//! A thread whose heap is torn down (its exit clean-up runs after its Rust thread-locals are
//! destroyed, and a subscriber's thread-locals may panic then) does not call the subscriber:
//! its events wait in a small static queue and are emitted by the next event on a live thread.
use crate::tls::DEAD;
use core::cell::Cell;
use core::sync::atomic::{AtomicUsize, Ordering};
use hakmem_hot_heap::Heap;
use hakmem_stats::Event;

std::thread_local! {
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
}

/// Installs the hook (at start-up).
pub fn install() {
    // SAFETY: `on_event` runs its subscriber through `guarded`, which sets this thread's heap
    // aside (DEAD) while it runs, so the subscriber's allocations and frees never touch a heap
    // that is in the middle of an operation, and a re-entered hook returns at once.
    unsafe { hakmem_stats::hook::set(on_event) };
}

/// Deferred events: `kind | payload << 8`, 0 for an empty slot. `kind` is an [`Event`]'s
/// index + 1, or [`DOUBLE_FREE`] / [`INVALID`].
static PENDING: [AtomicUsize; 64] = [const { AtomicUsize::new(0) }; 64];
static NEXT: AtomicUsize = AtomicUsize::new(0);
/// Events dropped because the queue was full.
static DROPPED: AtomicUsize = AtomicUsize::new(0);
const DOUBLE_FREE: usize = 0xfe;
const INVALID: usize = 0xff;

fn defer(kind: usize, payload: usize) {
    let i = NEXT.fetch_add(1, Ordering::Relaxed) % PENDING.len();
    let v = kind | payload << 8;
    if PENDING[i]
        .compare_exchange(0, v, Ordering::Release, Ordering::Relaxed)
        .is_err()
    {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Emits the deferred events (inside the guard).
fn drain() {
    for slot in &PENDING {
        if slot.load(Ordering::Relaxed) == 0 {
            continue;
        }
        let v = slot.swap(0, Ordering::Acquire);
        let (kind, payload) = (v & 0xff, v >> 8);
        match kind {
            0 => {}
            DOUBLE_FREE => emit_corruption("free", "double free", payload),
            INVALID => emit_corruption("free", "invalid pointer", payload),
            k => {
                if let Some(&e) = Event::ALL.get(k - 1) {
                    emit(e, payload)
                }
            }
        }
    }
    let dropped = DROPPED.swap(0, Ordering::Relaxed);
    if dropped != 0 {
        tracing::warn!(
            target: "hakmem",
            event = "events_dropped",
            dropped,
            "events raised during thread exit were dropped"
        );
    }
}

/// Sets this thread's heap pointer to `h` and returns the old one: [`DEAD`] while a subscriber
/// runs, so the subscriber's allocations take the orphan paths and never touch a heap that is
/// in the middle of an operation.
fn swap_heap(h: *mut Heap) -> *mut Heap {
    let old = crate::tls::get();
    crate::tls::set(h);
    old
}

/// Runs `f` unless this thread is already inside the hook, with the heap set aside; defers
/// (`kind`, `payload`) instead on a thread that is exiting.
fn guarded(kind: usize, payload: usize, f: impl FnOnce()) {
    struct Restore(*mut Heap);
    impl Drop for Restore {
        fn drop(&mut self) {
            swap_heap(self.0);
            IN_HOOK.with(|g| g.set(false));
        }
    }
    if IN_HOOK.with(|g| g.replace(true)) {
        return;
    }
    let restore = Restore(swap_heap(DEAD));
    if restore.0 == DEAD {
        defer(kind, payload);
        return;
    }
    drain();
    f();
}

fn on_event(e: Event, bytes: usize) {
    guarded(e as usize + 1, bytes, || emit(e, bytes));
}

fn emit(e: Event, bytes: usize) {
    match e {
        Event::SsCreated => {
            tracing::debug!(target: "hakmem", event = "superslab_mapped", "superslab mapped")
        }
        Event::SsCached => tracing::debug!(
            target: "hakmem",
            event = "superslab_retired",
            "empty region retired to the cache"
        ),
        Event::SsReleased => tracing::debug!(
            target: "hakmem",
            event = "region_unmapped",
            "cached region unmapped"
        ),
        Event::Abandon => tracing::debug!(
            target: "hakmem",
            event = "superslab_abandoned",
            "superslab abandoned by an exiting thread"
        ),
        Event::Adopt => tracing::debug!(
            target: "hakmem",
            event = "superslab_adopted",
            "abandoned superslab adopted"
        ),
        Event::AdoptByFree => tracing::debug!(
            target: "hakmem",
            event = "superslab_adopted_by_free",
            "abandoned superslab adopted by a thread freeing into it"
        ),
        Event::Madvise => tracing::debug!(
            target: "hakmem",
            event = "purge",
            bytes,
            "pages given back (MADV_DONTNEED)"
        ),
        Event::OsRefused => tracing::warn!(
            target: "hakmem",
            event = "os_refused",
            bytes,
            "the OS refused memory"
        ),
        _ => {}
    }
}

/// A corruption report: `what` ("double free", "invalid pointer") at `addr`, found by `op`.
pub fn corruption(op: &str, what: &str, addr: usize) {
    let kind = if what == "double free" {
        DOUBLE_FREE
    } else {
        INVALID
    };
    guarded(kind, addr, || emit_corruption(op, what, addr));
}

fn emit_corruption(op: &str, what: &str, addr: usize) {
    tracing::error!(
        target: "hakmem",
        event = "corruption",
        op,
        what,
        addr = format_args!("{addr:#x}"),
        "{op}(): {what} {addr:#x}"
    )
}
