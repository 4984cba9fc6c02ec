//! Loom models of this box's protocols that cross threads. Each runs the box's real code;
//! `HeapOs` stands in for mmap. Run: `RUSTFLAGS="--cfg loom" cargo test -p hakmem-hot-heap`.
extern crate std;
use super::*;
use loom::sync::atomic::{AtomicBool, Ordering::SeqCst};
use loom::sync::Arc;

/// A context over a small heap-backed arena, for one model iteration (leaked: heaps and the
/// context live for the program, as the facade's do).
pub(crate) fn ctx() -> &'static Ctx {
    ctx_of(2)
}

/// As [`ctx`], over an arena of `chunks` chunks.
fn ctx_of(chunks: usize) -> &'static Ctx {
    crate::test_ctx(chunks, false, |c| panic!("corruption: {c:?}"))
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

/// H18, a parked heap goes to exactly one thread: a thread parks its heap at exit (a block of
/// it still held), a new thread takes a heap, and a tear-down of the parked heaps
/// (`retire_parked`, as `collect` or the purge delay's expiry runs it) races both. Whoever gets
/// the heap has it alone: a taken heap is live with its id (its slabs' owner) and still owns
/// the superslab of the held block, which its owner then frees; a heap torn down was not taken.
#[test]
fn park_take_and_tear_down() {
    park_take_and(|ctx| ctx.retire_parked());
}

/// As [`park_take_and_tear_down`], with the tear-down a growing heap's (refill step 6): the
/// oldest parked heap retired if no heap was taken since it was parked.
#[test]
fn park_take_and_tear_down_before_growth() {
    park_take_and(|ctx| {
        ctx.retire_unclaimed_parked();
    });
}

/// The body of the two models above, with `tear_down` racing a park and a take.
fn park_take_and(tear_down: fn(&'static Ctx)) {
    let mut model = loom::model::Builder::new();
    model.max_branches = 1 << 20;
    model.preemption_bound = Some(2);
    model.check(move || {
        // Room for two heaps and the held block's superslab.
        let ctx = ctx_of(4);
        let first = ctx.take_or_new_heap().expect("arena has room");
        let class = class_of(64).unwrap();
        // SAFETY: this thread is the heap's only user.
        let block = unsafe { (*first.as_ptr()).alloc(class) } as usize;
        assert_ne!(block, 0);
        let first_at = first.as_ptr() as usize;
        // SAFETY: live, ours.
        let first_id = unsafe { Heap::id_of(first.as_ptr()) };
        let exiting = loom::thread::spawn(move || {
            // SAFETY: the heap's thread is done with it (it exits), and made it with
            // take_or_new_heap.
            unsafe { ctx.park_heap(NonNull::new(first_at as *mut Heap).unwrap()) };
        });
        let starting =
            loom::thread::spawn(move || ctx.take_or_new_heap().unwrap().as_ptr() as usize);
        tear_down(ctx);
        exiting.join().unwrap();
        let taken = starting.join().unwrap() as *mut Heap;
        assert_eq!(ctx.live_heaps(), 1, "the starting thread's heap is live");
        // SAFETY: heaps are never unmapped; no other thread runs now.
        let id = unsafe { Heap::id_of(taken) };
        assert_ne!(id, 0, "the taken heap was torn down under its new thread");
        // The parked heap, taken (its memory also comes back, with a new id, as a heap made
        // anew after its tear-down).
        if id == first_id {
            assert_eq!(taken as usize, first_at);
            // SAFETY: the heap is the new thread's, now this thread's alone (the others have
            // ended); the block is its, held, and freed once.
            unsafe {
                let hakmem_route::PtrRoute::Small(ss, slab) =
                    hakmem_route::classify(&ctx.registry, block as *mut u8)
                else {
                    panic!("the held block is no small block of ours");
                };
                assert_eq!(slab.owner(), id, "the taker owns the held block's slab");
                (*taken).free_small(ss, slab, block as *mut u8);
                ctx.retire_heap(NonNull::new_unchecked(taken));
            }
        }
    });
}

/// H15 with H18: as `reap_vs_exit_and_a_reused_tag`, but the exiting thread parks its heap and
/// the new thread of the same tag takes that very heap back, with its id unchanged. The reap,
/// whose test answers true in the gap, must leave the new thread's heap alone.
#[test]
fn reap_vs_park_and_a_reused_tag() {
    let mut model = loom::model::Builder::new();
    model.max_branches = 1 << 20;
    model.preemption_bound = Some(3);
    model.check(|| {
        let ctx = ctx();
        let first = ctx.take_or_new_heap().expect("arena has room");
        // SAFETY: made by take_or_new_heap, live.
        unsafe { ctx.set_tag(first, 7) };
        let own = ctx.new_heap().expect("arena has room");
        // SAFETY: as above.
        unsafe { ctx.set_tag(own, 9) };
        let first_at = first.as_ptr() as usize;
        let running = Arc::new(AtomicBool::new(true));
        let r = running.clone();
        let exiting = loom::thread::spawn(move || {
            // SAFETY: the heap's thread is done with it (it exits); made by take_or_new_heap.
            unsafe { ctx.park_heap(NonNull::new(first_at as *mut Heap).unwrap()) };
            r.store(false, SeqCst);
            loom::thread::spawn(move || {
                r.store(true, SeqCst);
                let h = ctx.take_or_new_heap().expect("the parked heap");
                // SAFETY: made by take_or_new_heap, live.
                unsafe { ctx.set_tag(h, 7) };
                h.as_ptr() as usize
            })
        });
        // SAFETY: the test answers true only while no thread tagged 7 runs.
        let reaped = unsafe { ctx.reap_one(|t| t == 7 && !running.load(SeqCst)) };
        let second = exiting.join().unwrap().join().unwrap() as *const Heap;
        assert!(!reaped, "the only heap tagged 7 is a live thread's");
        assert_eq!(
            ctx.live_heaps(),
            2,
            "the new thread's heap was retired under it"
        );
        // SAFETY: heaps are never unmapped; read with no thread left running.
        assert_ne!(
            unsafe { Heap::id_of(second) },
            0,
            "retired under its thread"
        );
    });
}
