//! The `tracing` feature (issue 12): hakmem's cold lifecycle events reach a `tracing`
//! subscriber, as a Rust program with hakmem as its global allocator would see them. The
//! subscriber (tracing-subscriber's fmt) allocates for every event: the re-entry guard keeps
//! that from recursing, and the subscriber's allocations from touching the heap of the thread
//! the event interrupted.
#![cfg(feature = "tracing")]
use hakmem::{HakMem, OnInvalid, Settings};
use std::alloc::{alloc, Layout};
use std::io::Write;
use std::sync::{Arc, Mutex};

#[global_allocator]
static A: HakMem = HakMem::with(Settings {
    on_invalid: OnInvalid::Warn,
    // One superslab's worth, so that a second retired region pushes the first out.
    lru_mb: 2,
    // Cached regions leave by the purge or by the cap, never by age during the test.
    lru_decay_ms: 600_000,
    ..Settings::DEFAULT
});

/// Everything the subscriber writes.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Sink {
    /// Takes what was written. Nothing is allocated while the lock is held: an allocation can
    /// raise a hakmem event, whose subscriber writes here (a lock held across an allocation
    /// that the subscriber also takes would deadlock, with any allocator that reports events).
    fn take(&self) -> String {
        let bytes = std::mem::take(&mut *self.0.lock().unwrap());
        String::from_utf8(bytes).unwrap()
    }
}

/// The only test of this binary: the subscriber is process-wide, and the events come from
/// several threads.
#[test]
fn lifecycle_events_reach_a_tracing_subscriber() {
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    // A thread maps superslabs, then exits with blocks still out.
    let kept: Vec<usize> = std::thread::spawn(|| {
        let blocks: Vec<Box<[u8; 200]>> = (0..30_000).map(|_| Box::new([1u8; 200])).collect();
        let kept: Vec<usize> = blocks
            .into_iter()
            .map(|b| Box::into_raw(b) as usize)
            .collect();
        kept
    })
    .join()
    .unwrap();
    // Its heap is parked whole (hot_heap H18); `collect` retires it: the superslabs holding
    // blocks are abandoned.
    hakmem::collect();
    // Another thread's first refill of that class adopts an abandoned superslab.
    std::thread::spawn(|| drop(Box::new([2u8; 200])))
        .join()
        .unwrap();
    // Its heap, parked, is retired too: the adopted superslab is abandoned again.
    hakmem::collect();
    // The main thread frees every kept block (remote frees): the superslabs empty out and are
    // retired to the lru, which holds one: the others are unmapped.
    for p in kept {
        // SAFETY: boxes leaked above, each freed once.
        drop(unsafe { Box::from_raw(p as *mut [u8; 200]) });
    }
    // A purge: a cached region waits 200 ms for its pages to go back, at the next lru call.
    std::thread::sleep(std::time::Duration::from_millis(300));
    drop(vec![0u8; 3 << 20]);
    // An OS refusal: more address space than the machine has.
    let huge = Layout::from_size_align(1 << 47, 16).unwrap();
    // SAFETY: a valid layout; the null result is checked.
    assert!(unsafe { alloc(huge) }.is_null());
    // A corruption report (HAKMEM_INVALID_FREE=warn from code: reported, and goes on).
    let mut on_stack = 0u64;
    // SAFETY: not ours: reported and dropped.
    unsafe { hakmem::raw::free((&mut on_stack as *mut u64).cast()) };

    let text = sink.take();
    for event in [
        "superslab_mapped",
        "superslab_abandoned",
        "superslab_adopted",
        "superslab_retired",
        "region_unmapped",
        "purge",
        "os_refused",
        "corruption",
    ] {
        assert!(
            text.contains(&format!("event=\"{event}\"")),
            "no {event} event in:\n{text}"
        );
    }
    assert!(
        text.contains("hakmem: free(): invalid pointer 0x"),
        "{text}"
    );
    assert!(text.contains(" ERROR hakmem:"), "{text}");
    // The target names hakmem once: no message repeats it.
    assert!(!text.contains("hakmem: hakmem:"), "{text}");
}
