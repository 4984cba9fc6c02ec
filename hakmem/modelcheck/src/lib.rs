//! # hakmem-modelcheck: a model-based check of the whole allocator
//!
//! A reference model of the heap (which blocks are live, where, how large, aligned how, filled with
//! what, owned by which thread) is driven in lockstep with the real allocator. The random sequences
//! of operations come from proptest (see `tests/model.rs`, which installs [`hakmem::HakMem`](struct@hakmem::HakMem) as the
//! global allocator and owns the strategies and the seeded runner); this library holds the part that
//! does not need proptest: the operations ([`Op`], [`Case`]), the executor ([`Driver`]) and the
//! checks ([`pattern`], [`overlaps`]).
//!
//! ## What a case checks
//! (Their IDs are MC1..MC6, the model check's own; M1..M6 are the medium tier's, in
//! `hakmem-medium`.)
//! - **MC1 (no overlap).** At every sync point, no two live blocks overlap, counting each block as
//!   `[p, p + max(size, usable_size(p)))`.
//! - **MC2 (alignment).** Every pointer returned by alloc, alloc_zeroed and realloc is a multiple of the
//!   alignment asked for.
//! - **MC3 (contents).** Every block is filled with a pattern derived from its id; the pattern is
//!   verified before every free and before every realloc, and after a realloc up to
//!   `min(old, new)` bytes. Blocks handed to another thread are verified there.
//! - **MC4 (zeroing).** alloc_zeroed returns zeroed memory.
//! - **MC5 (usable size).** `usable_size(p) >= size` for every block handed out.
//! - **MC7 to MC9 (private heaps).** [`hakmem::Heap`]'s cases, run by [`run_heap_case`]: see
//!   the `heap_model` module (`src/heap_model.rs`) and `tests/heap_model.rs`.
//! - **MC6 (live count).** At every sync point and after the case's cleanup, the allocator's live
//!   block count has moved from its baseline by exactly the model's number of live blocks.
//!
//! ## Threads and determinism
//! A case runs on 1 to 3 threads: the calling thread (thread 0) and two persistent workers, which
//! live as long as the [`Driver`]. Operations are split into rounds by [`Op::Sync`]; within a round
//! each thread runs its own operations on the blocks it owns, concurrently with the others. A block
//! is handed to another thread by [`Op::Give`]; the hand-over is applied at the end of the round, in
//! a fixed order. So the model's state after each round is a function of the case alone; only the
//! interleaving of the real allocator calls (and so the addresses) varies between runs.
//!
//! ## Why the live count check is sound
//! The global allocator also serves everything else the process does (proptest, the test binary,
//! std's thread machinery), so the live count can only be compared with the model's while nothing
//! but the model's operations touches the heap. The executor makes sure of that: between the
//! baseline (taken before the workers are released for a case) and the last reading (taken after
//! the workers have finished the case's cleanup and are parked at a barrier), the only heap calls
//! are the model's. The workers are spawned once, before any case, and have finished starting
//! (std frees the spawn closure on the new thread) before the first baseline; every vector the
//! case touches is allocated with its final capacity before the baseline; the hand-over uses
//! those vectors and `std::sync::{Mutex, RwLock, Barrier}`, which on Linux are futex-based and do
//! not allocate; nothing is printed or formatted unless a check has already failed. The test binary
//! runs without libtest's harness (`harness = false`), so no other test or harness thread runs
//! alongside. Readings are taken only while every worker is parked at a barrier, which orders all
//! their operations before the reading.
#![deny(unsafe_op_in_unsafe_fn)]

mod heap_model;
pub use heap_model::{run_heap_case, HeapOp};

use std::alloc::Layout;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;

/// Most threads a case runs on (the caller and two workers).
pub const MAX_THREADS: usize = 3;

/// Most bytes one thread keeps live at once; an allocation past it becomes a free instead, so that a
/// case's memory stays bounded (3 threads x 32 MiB) whatever the generated sizes.
pub const MAX_LIVE_BYTES_PER_THREAD: usize = 32 << 20;

/// One operation of a case. `t` names the thread that runs it (taken modulo the case's thread
/// count); `pick` names one of that thread's live blocks (taken modulo their number; an operation
/// on a thread that owns no block does nothing). Relative names keep every sequence valid when
/// proptest shrinks it by dropping operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `alloc` (or `alloc_zeroed`) of `size` bytes aligned to `align` (a power of two).
    Alloc {
        /// The thread.
        t: u8,
        /// Bytes asked for (at least 1).
        size: usize,
        /// Alignment asked for.
        align: usize,
        /// Whether through `alloc_zeroed`.
        zeroed: bool,
    },
    /// `dealloc` of one of the thread's blocks.
    Free {
        /// The thread.
        t: u8,
        /// Which block.
        pick: u16,
    },
    /// `realloc` of one of the thread's blocks to `size` bytes (same alignment).
    Realloc {
        /// The thread.
        t: u8,
        /// Which block.
        pick: u16,
        /// The new size (at least 1).
        size: usize,
    },
    /// Hands one of the thread's blocks to another thread (applied at the end of the round), which
    /// then frees or reallocs it: a remote free for the allocator.
    Give {
        /// The thread.
        t: u8,
        /// Which block.
        pick: u16,
        /// Which of the other threads (modulo their number).
        to: u8,
    },
    /// Ends a round: every thread waits for the others; hand-overs are applied and MC1 and MC6
    /// checked.
    Sync,
}

/// One test case: a thread count (1 to [`MAX_THREADS`]) and a sequence of operations.
#[derive(Clone, Debug)]
pub struct Case {
    /// How many threads run the case.
    pub threads: usize,
    /// The operations, in order.
    pub ops: Vec<Op>,
}

/// What the executor needs from a heap. [`GlobalHeap`] is the real one; the unit tests plug in
/// deliberately broken heaps to show that each check can fail.
///
/// # Safety
/// The methods have `GlobalAlloc`'s contracts.
pub unsafe trait Heap: Send + Sync + 'static {
    /// `GlobalAlloc::alloc`.
    ///
    /// # Safety
    /// As `GlobalAlloc::alloc`.
    unsafe fn alloc(&self, layout: Layout) -> *mut u8;
    /// `GlobalAlloc::alloc_zeroed`.
    ///
    /// # Safety
    /// As `GlobalAlloc::alloc_zeroed`.
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8;
    /// `GlobalAlloc::dealloc`.
    ///
    /// # Safety
    /// As `GlobalAlloc::dealloc`.
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout);
    /// `GlobalAlloc::realloc`.
    ///
    /// # Safety
    /// As `GlobalAlloc::realloc`.
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8;
    /// The usable size of live block `p`, if the heap can tell.
    ///
    /// # Safety
    /// `p` is live and came from this heap.
    unsafe fn usable_size(&self, p: *mut u8) -> Option<usize>;
    /// Allocations minus frees so far (any baseline: only differences are used).
    fn live_blocks(&self) -> i64;
}

/// The process's global allocator (through `std::alloc`), with `hakmem`'s usable size and
/// statistics: the heap the test binary checks, with `hakmem::HakMem` as `#[global_allocator]`.
pub struct GlobalHeap;

// SAFETY: every method forwards to `std::alloc`'s global allocator, whose contracts these are.
unsafe impl Heap for GlobalHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller keeps `GlobalAlloc::alloc`'s contract.
        unsafe { std::alloc::alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller keeps `GlobalAlloc::alloc_zeroed`'s contract.
        unsafe { std::alloc::alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        // SAFETY: the caller keeps `GlobalAlloc::dealloc`'s contract.
        unsafe { std::alloc::dealloc(p, layout) }
    }
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller keeps `GlobalAlloc::realloc`'s contract.
        unsafe { std::alloc::realloc(p, layout, new_size) }
    }
    unsafe fn usable_size(&self, p: *mut u8) -> Option<usize> {
        // SAFETY: `p` is a live block of the global allocator, which is hakmem in the test binary.
        Some(unsafe { hakmem::raw::usable_size(p) })
    }
    fn live_blocks(&self) -> i64 {
        hakmem::stats().live_blocks()
    }
}

/// The byte at offset `i` of block `id`'s pattern.
#[inline(always)]
fn pattern_byte(seed: u64, i: usize) -> u8 {
    (seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)).rotate_left((i % 61) as u32) as u8
}

/// Per-block pattern seed.
#[inline]
fn pattern_seed(id: u64) -> u64 {
    // splitmix64's finaliser: neighbouring ids get unrelated patterns.
    let mut z = id.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The contents patterns of MC3.
pub mod pattern {
    use super::{pattern_byte, pattern_seed};

    /// Fills `bytes[from..]` with block `id`'s pattern (each byte depends on `id` and its offset).
    pub fn fill(id: u64, bytes: &mut [u8], from: usize) {
        let seed = pattern_seed(id);
        for (i, b) in bytes.iter_mut().enumerate().skip(from) {
            *b = pattern_byte(seed, i);
        }
    }

    /// The first offset where `bytes` differs from block `id`'s pattern, if any.
    pub fn first_mismatch(id: u64, bytes: &[u8]) -> Option<usize> {
        let seed = pattern_seed(id);
        bytes
            .iter()
            .enumerate()
            .position(|(i, &b)| b != pattern_byte(seed, i))
    }
}

/// A live block's address range and id: `(start, end, id)`, `end` exclusive.
pub type Range = (usize, usize, u64);

/// MC1: sorts the live ranges and returns the first overlapping pair. Does not allocate (sorts in
/// place, unstably).
pub fn overlaps(ranges: &mut [Range]) -> Option<(Range, Range)> {
    ranges.sort_unstable();
    ranges
        .windows(2)
        .find(|w| w[0].1 > w[1].0)
        .map(|w| (w[0], w[1]))
}

/// A check that failed: what, in which round, on which thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure(pub String);

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A live block of the model.
#[derive(Clone, Copy, Debug)]
struct Block {
    id: u64,
    ptr: *mut u8,
    size: usize,
    align: usize,
}

// SAFETY: a block is plain data about memory the model owns; ownership moves between threads only
// through the driver's mutexes.
unsafe impl Send for Block {}

impl Block {
    fn layout(&self) -> Layout {
        Layout::from_size_align(self.size, self.align).expect("model layouts are valid")
    }

    /// # Safety
    /// The block is live and `size` bytes long.
    unsafe fn bytes<'a>(self) -> &'a mut [u8] {
        // SAFETY: the caller guarantees the block is live; its owner alone touches it.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.size) }
    }
}

/// One thread's share of the model: the blocks it owns and those it is handing over.
struct ThreadState {
    owned: Vec<Block>,
    outbox: Vec<(usize, Block)>,
    bytes: usize,
    next_id: u64,
}

impl ThreadState {
    fn new() -> Self {
        Self {
            owned: Vec::new(),
            outbox: Vec::new(),
            bytes: 0,
            next_id: 0,
        }
    }
}

/// A case split into rounds, per thread, with everything allocated up front.
struct Plan {
    threads: usize,
    /// `rounds[r][t]`: thread `t`'s operations in round `r`.
    rounds: Vec<[Vec<Op>; MAX_THREADS]>,
}

impl Plan {
    fn new(case: &Case) -> Self {
        let threads = case.threads.clamp(1, MAX_THREADS);
        let mut rounds = vec![<[Vec<Op>; MAX_THREADS]>::default()];
        for &op in &case.ops {
            let t = match op {
                Op::Sync => {
                    rounds.push(Default::default());
                    continue;
                }
                Op::Alloc { t, .. }
                | Op::Free { t, .. }
                | Op::Realloc { t, .. }
                | Op::Give { t, .. } => t,
            };
            rounds.last_mut().expect("one round at least")[t as usize % threads].push(op);
        }
        Self { threads, rounds }
    }
}

/// State shared by the caller and the workers.
struct Shared<H: Heap> {
    heap: H,
    /// Three parties: the caller and both workers, whatever the case's thread count.
    barrier: Barrier,
    /// The current case; `None` tells the workers to exit.
    plan: RwLock<Option<Plan>>,
    threads: [Mutex<ThreadState>; MAX_THREADS],
    failed: AtomicBool,
    failure: Mutex<Option<Failure>>,
}

impl<H: Heap> Shared<H> {
    /// Records the first failure (formatting only happens once a check has failed).
    fn fail(&self, f: impl FnOnce() -> String) {
        if !self.failed.swap(true, Ordering::SeqCst) {
            *lock(&self.failure) = Some(Failure(f()));
        }
    }

    fn state(&self, t: usize) -> MutexGuard<'_, ThreadState> {
        lock(&self.threads[t])
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs cases against a heap on up to [`MAX_THREADS`] threads (the caller is thread 0; two
/// workers are spawned once, here, before any case, so that spawning never happens inside a case).
pub struct Driver<H: Heap> {
    shared: Arc<Shared<H>>,
    workers: Vec<JoinHandle<()>>,
}

impl<H: Heap> Driver<H> {
    /// Spawns the workers.
    pub fn new(heap: H) -> Self {
        let shared = Arc::new(Shared {
            heap,
            barrier: Barrier::new(MAX_THREADS),
            plan: RwLock::new(None),
            threads: std::array::from_fn(|_| Mutex::new(ThreadState::new())),
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
        });
        let workers = (1..MAX_THREADS)
            .map(|me| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("model-{me}"))
                    .spawn(move || worker(&shared, me))
                    .expect("spawn a model worker")
            })
            .collect();
        // Wait until every worker has started: std's thread start-up frees the spawn closure's
        // box on the new thread, and that must not land inside the first case's window.
        shared.barrier.wait();
        Self { shared, workers }
    }

    /// Runs one case and checks MC1 to MC6; the first failed check is returned. Every block the case
    /// allocated is freed before this returns, pass or fail (unless the heap crashed).
    pub fn run_case(&self, case: &Case) -> Result<(), Failure> {
        let s = &*self.shared;
        // Everything the case will touch is allocated here, before the baseline.
        let plan = Plan::new(case);
        let allocs = case
            .ops
            .iter()
            .filter(|o| matches!(o, Op::Alloc { .. }))
            .count();
        for t in 0..MAX_THREADS {
            let mut st = s.state(t);
            *st = ThreadState::new();
            st.owned.reserve_exact(allocs);
            st.outbox.reserve_exact(allocs);
        }
        let mut scratch: Vec<Range> = Vec::with_capacity(allocs);
        let rounds = plan.rounds.len();
        *s.plan.write().unwrap_or_else(|e| e.into_inner()) = Some(plan);
        s.failed.store(false, Ordering::SeqCst);
        *lock(&s.failure) = None;

        // From here to the last reading, only the model's operations may touch the heap.
        let baseline = s.heap.live_blocks();
        s.barrier.wait(); // A: the workers start the case.
        for r in 0..=rounds {
            run_round(s, 0, r);
            s.barrier.wait(); // B: every thread has finished round r.
            if r < rounds {
                end_of_round(s, r, baseline, &mut scratch);
            } else if !s.failed.load(Ordering::SeqCst) {
                // After the cleanup round nothing of the model's is live.
                let delta = s.heap.live_blocks() - baseline;
                if delta != 0 {
                    s.fail(|| {
                        format!(
                            "MC6 after cleanup: the heap counts {delta} live blocks, the model 0"
                        )
                    });
                }
            }
            s.barrier.wait(); // C: the workers may go on.
        }
        // The workers are parked at A again; the case's memory may be released.
        *s.plan.write().unwrap_or_else(|e| e.into_inner()) = None;
        drop(scratch);
        for t in 0..MAX_THREADS {
            *s.state(t) = ThreadState::new();
        }
        match lock(&s.failure).take() {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }
}

impl<H: Heap> Drop for Driver<H> {
    fn drop(&mut self) {
        *self.shared.plan.write().unwrap_or_else(|e| e.into_inner()) = None;
        self.shared.barrier.wait(); // A with no plan: the workers exit.
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn worker<H: Heap>(s: &Shared<H>, me: usize) {
    s.barrier.wait(); // started (see Driver::new)
    loop {
        s.barrier.wait(); // A
        let rounds = match &*s.plan.read().unwrap_or_else(|e| e.into_inner()) {
            Some(p) => p.rounds.len(),
            None => return,
        };
        for r in 0..=rounds {
            run_round(s, me, r);
            s.barrier.wait(); // B
            s.barrier.wait(); // C
        }
    }
}

/// Thread `me`'s part of round `r`; round `rounds` is the cleanup, which frees everything the thread
/// owns.
fn run_round<H: Heap>(s: &Shared<H>, me: usize, r: usize) {
    let plan = s.plan.read().unwrap_or_else(|e| e.into_inner());
    let plan = plan.as_ref().expect("a case is running");
    if me >= plan.threads {
        return;
    }
    let mut st = s.state(me);
    match plan.rounds.get(r) {
        Some(ops) => {
            for op in &ops[me] {
                if s.failed.load(Ordering::Relaxed) {
                    return;
                }
                apply(s, plan.threads, me, r, &mut st, *op);
            }
        }
        None => {
            let check = !s.failed.load(Ordering::Relaxed);
            while let Some(b) = st.owned.pop() {
                free_block(s, me, r, &mut st, b, check);
            }
        }
    }
}

/// At the end of round `r`, with every worker parked: applies the hand-overs, then checks MC1 and MC6.
fn end_of_round<H: Heap>(s: &Shared<H>, r: usize, baseline: i64, scratch: &mut Vec<Range>) {
    let mut st: [MutexGuard<'_, ThreadState>; MAX_THREADS] = std::array::from_fn(|t| s.state(t));
    for from in 0..MAX_THREADS {
        while let Some((to, b)) = st[from].outbox.pop() {
            st[to].bytes += b.size;
            st[to].owned.push(b);
        }
    }
    if s.failed.load(Ordering::SeqCst) {
        return;
    }
    scratch.clear();
    for t in &st {
        for b in &t.owned {
            // SAFETY: the block is live and came from the heap; its owner is parked.
            let usable = unsafe { s.heap.usable_size(b.ptr) }.unwrap_or(0);
            scratch.push((b.ptr as usize, b.ptr as usize + b.size.max(usable), b.id));
        }
    }
    let model = scratch.len() as i64;
    if let Some((a, b)) = overlaps(scratch) {
        s.fail(|| {
            format!(
                "MC1 after round {r}: block {} at [{:#x}, {:#x}) overlaps block {} at [{:#x}, {:#x})",
                a.2, a.0, a.1, b.2, b.0, b.1
            )
        });
        return;
    }
    let delta = s.heap.live_blocks() - baseline;
    if delta != model {
        s.fail(|| {
            format!("MC6 after round {r}: the heap counts {delta} live blocks, the model {model}")
        });
    }
}

/// Runs one operation of thread `me`.
fn apply<H: Heap>(
    s: &Shared<H>,
    threads: usize,
    me: usize,
    r: usize,
    st: &mut ThreadState,
    op: Op,
) {
    match op {
        Op::Alloc {
            size,
            align,
            zeroed,
            ..
        } => {
            if st.bytes + size > MAX_LIVE_BYTES_PER_THREAD {
                // Over budget: free instead (deterministically the oldest-indexed block).
                if !st.owned.is_empty() {
                    let b = st.owned.swap_remove(0);
                    free_block(s, me, r, st, b, true);
                }
                return;
            }
            let layout = Layout::from_size_align(size, align).expect("valid generated layout");
            // SAFETY: the layout has a non-zero size.
            let p = unsafe {
                if zeroed {
                    s.heap.alloc_zeroed(layout)
                } else {
                    s.heap.alloc(layout)
                }
            };
            let id = ((me as u64) << 48) | st.next_id;
            st.next_id += 1;
            let what = if zeroed { "alloc_zeroed" } else { "alloc" };
            if !check_fresh(s, me, r, what, p, size, align) {
                return;
            }
            let b = Block {
                id,
                ptr: p,
                size,
                align,
            };
            // SAFETY: the block is live, `size` bytes long, and this thread's alone.
            let bytes = unsafe { b.bytes() };
            if zeroed {
                if let Some(i) = bytes.iter().position(|&x| x != 0) {
                    s.fail(|| {
                        format!(
                            "MC4 round {r} thread {me}: alloc_zeroed({size}, align {align}) at {p:p}: byte {i} is {:#x}",
                            bytes[i]
                        )
                    });
                    return;
                }
            }
            pattern::fill(id, bytes, 0);
            st.bytes += size;
            st.owned.push(b);
        }
        Op::Free { pick, .. } => {
            if st.owned.is_empty() {
                return;
            }
            let b = st.owned.swap_remove(pick as usize % st.owned.len());
            free_block(s, me, r, st, b, true);
        }
        Op::Realloc { pick, size, .. } => {
            if st.owned.is_empty() {
                return;
            }
            let i = pick as usize % st.owned.len();
            if st.bytes - st.owned[i].size + size > MAX_LIVE_BYTES_PER_THREAD {
                let b = st.owned.swap_remove(i);
                free_block(s, me, r, st, b, true);
                return;
            }
            let b = st.owned[i];
            if !verify(s, me, r, "before realloc", &b, b.size) {
                return;
            }
            // SAFETY: the block is live with this layout; `size` is non-zero and rounds to a valid
            // layout with the same alignment.
            let p = unsafe { s.heap.realloc(b.ptr, b.layout(), size) };
            if !check_fresh(s, me, r, "realloc", p, size, b.align) {
                // A null realloc leaves the old block live: forget it (leaked, but not double-freed).
                st.owned.swap_remove(i);
                st.bytes -= b.size;
                return;
            }
            let nb = Block { ptr: p, size, ..b };
            if !verify(s, me, r, "after realloc", &nb, b.size.min(size)) {
                st.owned.swap_remove(i);
                st.bytes -= b.size;
                return;
            }
            // SAFETY: the new block is live, `size` bytes long, and this thread's alone.
            pattern::fill(nb.id, unsafe { nb.bytes() }, b.size.min(size));
            st.bytes = st.bytes - b.size + size;
            st.owned[i] = nb;
        }
        Op::Give { pick, to, .. } => {
            if threads == 1 || st.owned.is_empty() {
                return;
            }
            let b = st.owned.swap_remove(pick as usize % st.owned.len());
            st.bytes -= b.size;
            let to = (me + 1 + to as usize % (threads - 1)) % threads;
            st.outbox.push((to, b));
        }
        Op::Sync => unreachable!("rounds hold no Sync"),
    }
}

/// MC2 and MC5 on a pointer fresh from alloc, alloc_zeroed or realloc (and non-null).
fn check_fresh<H: Heap>(
    s: &Shared<H>,
    me: usize,
    r: usize,
    what: &str,
    p: *mut u8,
    size: usize,
    align: usize,
) -> bool {
    if p.is_null() {
        s.fail(|| format!("round {r} thread {me}: {what}({size}, align {align}) returned null"));
        return false;
    }
    if !(p as usize).is_multiple_of(align) {
        s.fail(|| {
            format!("MC2 round {r} thread {me}: {what}({size}, align {align}) returned {p:p}")
        });
        return false;
    }
    // SAFETY: `p` is live and came from the heap.
    if let Some(u) = unsafe { s.heap.usable_size(p) } {
        if u < size {
            s.fail(|| format!("MC5 round {r} thread {me}: {what}({size}, align {align}) at {p:p}: usable size {u}"));
            return false;
        }
    }
    true
}

/// MC3 on the first `len` bytes of `b`.
fn verify<H: Heap>(s: &Shared<H>, me: usize, r: usize, when: &str, b: &Block, len: usize) -> bool {
    // SAFETY: the block is live, at least `len` bytes long, and this thread's alone.
    let bytes = unsafe { &b.bytes()[..len] };
    match pattern::first_mismatch(b.id, bytes) {
        None => true,
        Some(i) => {
            s.fail(|| {
                format!(
                    "MC3 round {r} thread {me}: block {} ({} bytes, align {}) at {:p}, {when}: byte {i} corrupted",
                    b.id, b.size, b.align, b.ptr
                )
            });
            false
        }
    }
}

/// Verifies (if `check`) and frees `b`, which the caller has taken out of `st.owned`.
fn free_block<H: Heap>(
    s: &Shared<H>,
    me: usize,
    r: usize,
    st: &mut ThreadState,
    b: Block,
    check: bool,
) {
    st.bytes -= b.size;
    if check && !verify(s, me, r, "before free", &b, b.size) {
        return; // corrupted: leak it rather than feed the heap more trouble
    }
    // SAFETY: the block is live with this layout and owned by this thread.
    unsafe { s.heap.dealloc(b.ptr, b.layout()) };
}

#[cfg(test)]
mod tests {
    //! The checks must be able to fail: each broken heap here breaks one property, and the driver
    //! must report exactly that property.
    use super::*;
    use std::alloc::{GlobalAlloc, System};
    use std::sync::atomic::AtomicI64;

    /// How a [`TestHeap`] misbehaves.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Bug {
        None,
        /// Ignores the alignment above 16.
        Misalign,
        /// Returns garbage from alloc_zeroed.
        DirtyZeroed,
        /// realloc copies one byte too few.
        ShortCopy,
        /// Reports a usable size one less than asked.
        SmallUsable,
        /// Miscounts frees of blocks larger than 100 bytes.
        Miscount,
        /// Hands out the last freed block of the same size again, without counting it as freed
        /// (so two live blocks overlap).
        Overlap,
    }

    /// The system allocator with a live count and, optionally, one bug.
    struct TestHeap {
        bug: Bug,
        live: AtomicI64,
        last_freed: Mutex<Option<(usize, usize)>>,
    }

    impl TestHeap {
        fn new(bug: Bug) -> Self {
            Self {
                bug,
                live: AtomicI64::new(0),
                last_freed: Mutex::new(None),
            }
        }
    }

    // SAFETY: forwards to `System`, except for the deliberate bugs, which only test code sees.
    unsafe impl Heap for TestHeap {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            self.live.fetch_add(1, Ordering::Relaxed);
            if self.bug == Bug::Misalign && layout.align() > 16 {
                let l = Layout::from_size_align(layout.size() + 16, 16).unwrap();
                // SAFETY: non-zero size.
                return unsafe { System.alloc(l).add(8) };
            }
            if self.bug == Bug::Overlap {
                if let Some((p, size)) = *lock(&self.last_freed) {
                    if size == layout.size() && p % layout.align() == 0 {
                        return p as *mut u8;
                    }
                }
            }
            // SAFETY: as the caller's.
            unsafe { System.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            // SAFETY: as the caller's.
            let p = unsafe { self.alloc(layout) };
            if self.bug != Bug::DirtyZeroed {
                // SAFETY: `p` has `layout.size()` bytes.
                unsafe { p.write_bytes(0, layout.size()) };
            } else {
                // SAFETY: `p` has `layout.size()` bytes.
                unsafe { p.write_bytes(0xa5, layout.size()) };
            }
            p
        }
        unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
            let n = if self.bug == Bug::Miscount && layout.size() > 100 {
                2
            } else {
                1
            };
            self.live.fetch_sub(n, Ordering::Relaxed);
            if self.bug == Bug::Overlap {
                // Keep it (leaked) to hand it out again while the model may still hold a copy.
                *lock(&self.last_freed) = Some((p as usize, layout.size()));
                return;
            }
            if self.bug == Bug::Misalign && layout.align() > 16 {
                let l = Layout::from_size_align(layout.size() + 16, 16).unwrap();
                // SAFETY: allocated above with this layout, 8 bytes lower.
                return unsafe { System.dealloc(p.sub(8), l) };
            }
            // SAFETY: as the caller's.
            unsafe { System.dealloc(p, layout) }
        }
        unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            let new = Layout::from_size_align(new_size, layout.align()).unwrap();
            // SAFETY: as the caller's.
            let q = unsafe { self.alloc(new) };
            let mut n = layout.size().min(new_size);
            if self.bug == Bug::ShortCopy {
                n -= 1;
            }
            // SAFETY: both blocks hold at least `n` bytes and are distinct.
            unsafe {
                std::ptr::copy_nonoverlapping(p, q, n);
                self.dealloc(p, layout);
            }
            q
        }
        unsafe fn usable_size(&self, _p: *mut u8) -> Option<usize> {
            None
        }
        fn live_blocks(&self) -> i64 {
            self.live.load(Ordering::Relaxed)
        }
    }

    /// A heap whose usable size is always too small by one.
    struct SmallUsableHeap(TestHeap);
    // SAFETY: forwards to the inner heap.
    unsafe impl Heap for SmallUsableHeap {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            // SAFETY: as the caller's.
            let p = unsafe { self.0.alloc(l) };
            lock(&SIZES).push((p as usize, l.size()));
            p
        }
        unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
            // SAFETY: as the caller's.
            unsafe { self.0.alloc_zeroed(l) }
        }
        unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
            // SAFETY: as the caller's.
            unsafe { self.0.dealloc(p, l) }
        }
        unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
            // SAFETY: as the caller's.
            unsafe { self.0.realloc(p, l, n) }
        }
        unsafe fn usable_size(&self, p: *mut u8) -> Option<usize> {
            let sizes = lock(&SIZES);
            sizes
                .iter()
                .rev()
                .find(|e| e.0 == p as usize)
                .map(|e| e.1 - 1)
        }
        fn live_blocks(&self) -> i64 {
            self.0.live_blocks()
        }
    }
    static SIZES: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());

    fn alloc(t: u8, size: usize, align: usize, zeroed: bool) -> Op {
        Op::Alloc {
            t,
            size,
            align,
            zeroed,
        }
    }

    /// A case that exercises every operation on three threads.
    fn busy_case() -> Case {
        let mut ops = Vec::new();
        for t in 0..3u8 {
            ops.push(alloc(t, 200, 64, false));
            ops.push(alloc(t, 50, 8, true));
            ops.push(alloc(t, 300, 4096, false));
        }
        ops.push(Op::Realloc {
            t: 0,
            pick: 0,
            size: 500,
        });
        ops.push(Op::Give {
            t: 0,
            pick: 1,
            to: 0,
        });
        ops.push(Op::Give {
            t: 1,
            pick: 2,
            to: 1,
        });
        ops.push(Op::Sync);
        for t in 0..3u8 {
            ops.push(Op::Realloc {
                t,
                pick: 1,
                size: 150,
            });
            ops.push(Op::Free { t, pick: 0 });
            ops.push(alloc(t, 200, 1, false));
        }
        ops.push(Op::Sync);
        ops.push(Op::Free { t: 2, pick: 5 });
        Case { threads: 3, ops }
    }

    fn run<H: Heap>(heap: H, case: &Case) -> Result<(), Failure> {
        Driver::new(heap).run_case(case)
    }

    fn fails_with<H: Heap>(heap: H, tag: &str) {
        match run(heap, &busy_case()) {
            Err(Failure(m)) => assert!(m.starts_with(tag), "expected {tag}, got {m}"),
            Ok(()) => panic!("the {tag} bug went unnoticed"),
        }
    }

    #[test]
    fn a_correct_heap_passes() {
        run(TestHeap::new(Bug::None), &busy_case()).unwrap();
        run(
            TestHeap::new(Bug::None),
            &Case {
                threads: 1,
                ops: vec![],
            },
        )
        .unwrap();
    }

    #[test]
    fn a_driver_runs_many_cases() {
        let d = Driver::new(TestHeap::new(Bug::None));
        for threads in 1..=3 {
            d.run_case(&Case {
                threads,
                ..busy_case()
            })
            .unwrap();
        }
        assert_eq!(d.shared.heap.live_blocks(), 0);
    }

    #[test]
    fn misalignment_is_caught() {
        fails_with(TestHeap::new(Bug::Misalign), "MC2");
    }

    #[test]
    fn dirty_zeroed_memory_is_caught() {
        fails_with(TestHeap::new(Bug::DirtyZeroed), "MC4");
    }

    #[test]
    fn a_short_realloc_copy_is_caught() {
        fails_with(TestHeap::new(Bug::ShortCopy), "MC3");
    }

    #[test]
    fn a_small_usable_size_is_caught() {
        fails_with(SmallUsableHeap(TestHeap::new(Bug::SmallUsable)), "MC5");
    }

    #[test]
    fn a_miscount_is_caught() {
        fails_with(TestHeap::new(Bug::Miscount), "MC6");
    }

    #[test]
    fn a_block_handed_out_twice_is_caught() {
        let case = Case {
            threads: 1,
            ops: vec![
                alloc(0, 100, 8, false),
                Op::Free { t: 0, pick: 0 },
                alloc(0, 100, 8, false),
                alloc(0, 100, 8, false),
                Op::Sync,
            ],
        };
        match run(TestHeap::new(Bug::Overlap), &case) {
            Err(Failure(m)) => assert!(m.starts_with("MC1") || m.starts_with("MC3"), "{m}"),
            Ok(()) => panic!("overlapping blocks went unnoticed"),
        }
    }

    #[test]
    fn patterns_differ_between_blocks_and_catch_one_byte() {
        let mut a = vec![0u8; 4096];
        pattern::fill(7, &mut a, 0);
        assert_eq!(pattern::first_mismatch(7, &a), None);
        assert!(pattern::first_mismatch(8, &a).is_some());
        a[4000] ^= 1;
        assert_eq!(pattern::first_mismatch(7, &a), Some(4000));
    }

    #[test]
    fn overlaps_finds_touching_but_not_adjacent() {
        let mut r = vec![(100, 200, 1), (0, 100, 2), (200, 300, 3)];
        assert_eq!(overlaps(&mut r), None);
        let mut r = vec![(100, 201, 1), (0, 100, 2), (200, 300, 3)];
        assert_eq!(overlaps(&mut r), Some(((100, 201, 1), (200, 300, 3))));
    }
}
