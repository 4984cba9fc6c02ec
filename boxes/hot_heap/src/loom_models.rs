//! Loom models of this box's protocols that cross threads. Each runs the box's real code;
//! `HeapOs` stands in for mmap. Run: `RUSTFLAGS="--cfg loom" cargo test -p hakmem-hot-heap`.
extern crate std;
use super::*;
use hakmem_superslab::HeapOs;
use loom::sync::atomic::{AtomicBool, Ordering::SeqCst};
use loom::sync::Arc;
use std::boxed::Box;

/// A context over a small heap-backed arena, for one model iteration (leaked: heaps and the
/// context live for the program, as the facade's do).
fn ctx() -> &'static Ctx {
    let os: &'static HeapOs = Box::leak(Box::new(HeapOs::new(2)));
    let registry = os.registry();
    Box::leak(Box::new(Ctx::new(
        os,
        registry,
        LruConfig::default(),
        false,
        |c| panic!("corruption: {c:?}"),
    )))
}

/// H15, the reaper's check that a thread is gone: a reaper reads the tag of a heap whose thread
/// then exits (retiring it), and a new thread with the same tag (a reused thread id) takes the
/// same heap. The reaper's test may run in the gap between the two threads, and answer true;
/// the reap must still leave the new thread's heap alone. Every heap made is still live at the
/// end, and nothing was reaped.
#[test]
fn reap_vs_exit_and_a_reused_tag() {
    // A heap's exit and making touch every class's counters: far more than loom's default
    // 1000 branches, none of them a spin.
    let mut model = loom::model::Builder::new();
    model.max_branches = 1 << 20;
    model.check(|| {
        let ctx = ctx();
        let first = ctx.new_heap().expect("arena has room");
        // SAFETY: made by new_heap, live.
        unsafe { ctx.set_tag(first, 7) };
        // The reaper's own heap, made after: `first` is the one a reap looks at first.
        let own = ctx.new_heap().expect("arena has room");
        // SAFETY: as above.
        unsafe { ctx.set_tag(own, 9) };
        let first_at = first.as_ptr() as usize;
        // Whether a thread tagged 7 runs now: the kernel's answer, as `thread_gone` gets it.
        let running = Arc::new(AtomicBool::new(true));
        let r = running.clone();
        let exiting = loom::thread::spawn(move || {
            // SAFETY: the heap's thread is done with it (it exits).
            unsafe { ctx.retire_heap(NonNull::new(first_at as *mut Heap).unwrap()) };
            r.store(false, SeqCst);
            // A new thread that gets the same thread id starts after it.
            loom::thread::spawn(move || {
                r.store(true, SeqCst);
                let h = ctx.new_heap().expect("a retired heap to reuse");
                // SAFETY: made by new_heap, live.
                unsafe { ctx.set_tag(h, 7) };
                h.as_ptr() as usize
            })
        });
        // SAFETY: the test answers true only while no thread tagged 7 runs (between the
        // first's exit and the second's start); a thread that starts later is another one.
        let reaped = unsafe { ctx.reap_one(|t| t == 7 && !running.load(SeqCst)) };
        let second = exiting.join().unwrap().join().unwrap() as *const Heap;
        assert!(
            !reaped,
            "the only heap tagged 7 after the test is a live thread's"
        );
        assert_eq!(
            ctx.live_heaps(),
            2,
            "the new thread's heap was retired under it"
        );
        // SAFETY: heaps are never unmapped; the id is read with no thread left running.
        assert_ne!(
            unsafe { Heap::id_of(second) },
            0,
            "retired under its thread"
        );
    });
}
