//! Heap profiling: which stacks hold the memory, estimated from samples.
//!
//! With `HAKMEM_PROF=1` (or [`start`] from code), hakmem samples on average one allocation per
//! `HAKMEM_PROF_SAMPLE` bytes allocated (default 512 KiB), captures its stack, and keeps the
//! sample until the block is freed. Each thread counts down an exponentially distributed
//! number of bytes, so each byte allocated is sampled with the same small chance, and a sampled
//! block counted as `b` bytes (a small block's block size, else the size asked for) and asked
//! for as `s` stands for `s / (1 - exp(-b / N))` bytes (and `1 / (1 - exp(-b / N))` objects),
//! as jemalloc and tcmalloc scale theirs: the estimates are unbiased for every size.
//!
//! ```no_run
//! #[global_allocator]
//! static A: hakmem::HakMem = hakmem::HakMem;
//!
//! hakmem::profile::start(64 << 10); // or HAKMEM_PROF=1 in the environment
//! let held: Vec<Vec<u8>> = (0..1000).map(|_| vec![0u8; 4096]).collect();
//! let p = hakmem::profile::snapshot();
//! for site in p.sites.iter().take(3) {
//!     println!("{} live bytes at {:?}", site.live_bytes, site.frames.first());
//! }
//! hakmem::profile::dump("heap.pb.gz").unwrap(); // pprof; also dump_collapsed
//! # drop(held);
//! ```
//!
//! ## How it hooks in (nothing on the fast paths)
//! The fast paths stay as they are. Each thread has two heap slots (tls T5): the allocation
//! fast paths read one, the free fast paths the other. While profiling runs, the free slot
//! holds the thread's heap, as with profiling off, so every free takes its usual path, and the
//! allocation slot holds the heap's holder (hot_heap H21): a second set of thread lists, which
//! only this module fills, from the heap's own lists (one exchange of a whole list) or its
//! cache and slabs, on the allocation slow path. Frees go onto the heap's own lists and never
//! onto the holder's, so a free-then-allocate loop runs through both sets in turn: the
//! allocations pop from the holder until its list is empty, the frees push onto the heap's,
//! and the next slow allocation exchanges the two.
//!
//! That is exact because of a per-heap credit (hot_heap H19): the countdown to the next
//! sample less the bytes on the holder's lists. A pop lowers the countdown and the holder's
//! bytes together, so it leaves the credit alone, and a fill moves no more bytes onto the
//! holder than the credit covers: no pop can pass the sample point. An allocation the holder
//! cannot serve and the credit cannot cover (the last bytes before the sample point) is
//! counted one by one, served by the heap's own lists: it is the sampled one exactly when the
//! countdown (the credit plus the holder's bytes) is below its size; after it a credit left
//! negative gives the holder's lists back (whole classes, half their bytes at least). So the
//! sample lands on the allocation the countdown picks, as if every allocation were counted.
//! Small blocks are counted by their block size (what a pop takes off the lists); medium and
//! large ones, and a thread's allocations without a heap of its own, by the size asked for.
//!
//! The holder pays where its fills are short: many size classes in use, blocks large next to
//! the interval (each fill moves what an eighth of the credit covers, and the credit shrinks
//! to 0 at each sample point). So each heap tallies its holder's slow allocations, its
//! give-backs and the blocks it served (hot_heap H24), and at each sample point compares what
//! they cost with what counting every allocation one by one would have cost (about 45
//! instructions an allocation: the fast path's miss, the credit's check, a pop from the heap's
//! own list). When counting is cheaper, the holder empties and the next intervals count every
//! allocation, for 1, 2, 4, ... up to 64 intervals, after which the holder is tried again. Both
//! ways count exactly, so the choice moves no sample.
//!
//! A sampled small block comes from the process's late heap (under its lock; samples are
//! rare) instead of the thread's heap, so its free misses the owner's fast free in both lanes
//! (no thread's owned cache or owner test matches the late heap) and reaches the full free,
//! which drops its sample (a lock-free filter first, table PT2); the frees of the thread's own
//! blocks never look at the sample table. Medium and large blocks are freed through the
//! registry as always, which drops their samples.
//!
//! A heap's credit starts when its thread's heap is made, or, for a thread whose heap was made
//! before profiling started, at its first slow allocation (a fresh interval: the sampling
//! process is memoryless), and stays with the heap (a heap parked at a
//! thread's exit and taken by another thread goes on counting; its holder's blocks go back to
//! it at the park, hot_heap H22). Allocations made before are not in the profile. A private
//! heap's allocations ([`crate::Heap`]) are not sampled. With profiling off, the only additions
//! are one load and branch on paths that are slow already (a fast path's miss, a foreign or
//! orphan free, the medium and large tiers).
//!
//! ## Settings
//! `HAKMEM_PROF` (0/1), `HAKMEM_PROF_SAMPLE` (bytes, mean interval), `HAKMEM_PROF_FILE`
//! (written at exit, `%p` the process id; default `hakmem.%p.pb.gz`; collapsed stacks go
//! beside it with `.collapsed` appended; empty: none), `HAKMEM_PROF_SIGNAL` (1: `SIGUSR2` writes the files
//! too, from a helper thread).
//!
//! Stacks are captured from the `.eh_frame` unwind tables (DWARF; no frame pointers needed):
//! on x86_64 each return address's rule is worked out once and kept in a fixed table (about
//! 1 800 instructions a sample of 11 frames, `cfi.rs`, PT6), with libgcc's unwinder
//! (`_Unwind_Backtrace`, about 20 000) for stacks with a frame the cached rules do not step,
//! such as a signal frame. They are symbolised only when a profile is written or viewed,
//! outside every allocator lock, with the thread's sampler guard set: the allocations that
//! symbolisation makes are served but not sampled.
#[cfg(target_arch = "x86_64")]
mod cfi;
mod output;
mod table;
mod unwind;

pub use output::{Frame, Profile, Site};

use core::cell::Cell;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use hakmem_hot_heap::Heap as HotHeap;

/// The profiler's environment variables (for the settings' unknown-name check).
pub const NAMES: [&str; 4] = [
    "HAKMEM_PROF",
    "HAKMEM_PROF_SAMPLE",
    "HAKMEM_PROF_FILE",
    "HAKMEM_PROF_SIGNAL",
];

/// The default mean sampling interval in bytes (jemalloc's default, 2^19).
pub const DEFAULT_SAMPLE: u64 = 512 << 10;

/// The mean interval in bytes.
static MEAN: AtomicU64 = AtomicU64::new(DEFAULT_SAMPLE);
static STARTING: AtomicBool = AtomicBool::new(false);

/// True while profiling runs: one relaxed load, for the slow paths.
#[inline(always)]
pub(crate) fn active() -> bool {
    crate::tls::profiling()
}

/// The sampler's per-thread state: no destructor, const-initialised (a plain TLS access). The
/// credit of a thread with a heap is kept in its heap (hot_heap H19).
struct Sampler {
    /// Bytes left before the next sample, for allocations of a thread without a heap.
    left: Cell<i64>,
    /// xorshift state; 0 until the thread's first use.
    rng: Cell<u64>,
    /// The re-entry guard: set while this thread samples or writes a profile.
    busy: Cell<bool>,
}

std::thread_local! {
    static SAMPLER: Sampler = const {
        Sampler { left: Cell::new(0), rng: Cell::new(0), busy: Cell::new(false) }
    };
}

/// An exponentially distributed interval with mean `MEAN`, at least 1.
fn next_interval(rng: &Cell<u64>) -> i64 {
    let mut x = rng.get();
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    rng.set(x);
    // Uniform in (0, 1]: never ln(0).
    let u = ((x >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64);
    let mean = MEAN.load(Relaxed) as f64;
    ((-u.ln() * mean) as i64).max(1)
}

/// Seeds this thread's generator and its heapless countdown at its first use.
#[inline(always)]
fn seed(s: &Sampler) {
    if s.rng.get() == 0 {
        let seed = hakmem_os::secret(hakmem_os::thread_id() as u64) | 1;
        s.rng.set(seed);
        s.left.set(next_interval(&s.rng));
    }
}

/// Starts the profiler on `h` at this thread's first slow allocation with it once profiling
/// runs (hot_heap H19): a fresh interval, and the allocation slot switched to the holder (tls
/// T5). A heap keeps its credit when a thread's exit parks it and another thread takes it.
///
/// # Safety
/// `h` is this thread's live heap.
#[inline(always)]
unsafe fn ensure_started(h: *mut HotHeap) {
    // SAFETY: this thread's live heap, on its own thread.
    if !unsafe { (*h).prof_started() } {
        // SAFETY: as above.
        unsafe { start_heap(h) };
    }
}

/// A thread's heap set while profiling runs ([`crate::global::heap_slow`]): its profiler starts
/// now, so that its allocations are counted from the first (a thread whose allocations never
/// miss their fast path, a free-then-allocate loop, would otherwise never reach the profiler).
///
/// # Safety
/// `h` is this thread's live heap, set in its slots.
pub(crate) unsafe fn start_thread(h: *mut HotHeap) {
    // SAFETY: forwarded.
    unsafe { ensure_started(h) };
}

/// [`ensure_started`]'s start.
///
/// # Safety
/// As [`ensure_started`].
#[cold]
#[inline(never)]
unsafe fn start_heap(h: *mut HotHeap) {
    let interval = SAMPLER.with(|s| {
        seed(s);
        next_interval(&s.rng)
    });
    // SAFETY: this thread's live heap (the caller's contract), on its own thread. Without a
    // holder every allocation is counted here (tls T5).
    unsafe { (*h).prof_start(interval) };
    crate::tls::use_holder(h);
}

/// The countdown for an allocation of `counted` bytes whose countdown before it is `c` (it
/// is sampled when `c < counted`): the next one an exponential interval past its end. The
/// sample's stack is captured unless the guard is set. Returns the countdown's increase.
fn sample(p: *mut u8, size: usize, counted: i64, c: i64) -> i64 {
    SAMPLER.with(|s| {
        seed(s);
        sample_in(s, p, size, counted, c)
    })
}

fn sample_in(s: &Sampler, p: *mut u8, size: usize, counted: i64, c: i64) -> i64 {
    let next = next_interval(&s.rng);
    record_in(s, p, size, counted);
    next - (c - counted)
}

/// Records the sample of the block at `p`, asked for as `size` bytes and counted as `counted`,
/// with its stack, unless this thread's guard is set.
fn record_in(s: &Sampler, p: *mut u8, size: usize, counted: i64) {
    if !s.busy.get() {
        s.busy.set(true);
        let mut frames = unwind::Frames::empty();
        unwind::capture(&mut frames);
        let mean = MEAN.load(Relaxed) as f64;
        let prob = 1.0 - (-(counted as f64) / mean).exp();
        let (objects, bytes) = (1.0 / prob, size as f64 / prob);
        table::insert(p as usize, &frames.ips[..frames.len], objects, bytes);
        s.busy.set(false);
    }
}

/// Starts profiling with a mean interval of `sample_bytes` (0: the default). Threads start
/// sampling at their next allocation that misses its fast path (at once for threads whose heap
/// is made later); allocations made before are not in the profile. Returns false when the profiler's
/// tables could not be mapped. Starting again changes nothing (the first interval stays).
pub fn start(sample_bytes: u64) -> bool {
    if active() {
        return true;
    }
    if STARTING.swap(true, AcqRel) {
        // Another thread is starting it.
        while !active() && STARTING.load(Acquire) {
            hakmem_os::yield_now();
        }
        return active();
    }
    if !table::map() {
        STARTING.store(false, Release);
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    cfi::init();
    MEAN.store(
        if sample_bytes == 0 {
            DEFAULT_SAMPLE
        } else {
            sample_bytes
        },
        Relaxed,
    );
    // Only a child handler: taking the table's lock in `prepare` would order it before the
    // locks hakmem's own `prepare` takes after it (stdio's list lock among them), and a thread
    // that holds one of those and samples would wait for it.
    // SAFETY: a plain registration of an extern "C" function that lives for the process.
    unsafe {
        libc::pthread_atfork(None, None, Some(fork_child));
    }
    crate::tls::start_profiling();
    true
}

/// A 0/1 setting of the profiler: true for `1`; unset or `0` is false, and any other value
/// gets a warning and the default (0).
fn flag(name: &core::ffi::CStr) -> bool {
    match hakmem_os::getenv(name) {
        None | Some(b"0") => false,
        Some(b"1") => true,
        Some(_) => {
            hakmem_os::write_stderr(b"hakmem: warning: ");
            hakmem_os::write_stderr(name.to_bytes());
            hakmem_os::write_stderr(b" is not 0 or 1; the default (0) is used\n");
            false
        }
    }
}

/// Reads `HAKMEM_PROF*` and starts profiling when `HAKMEM_PROF=1`, with the exit dump (and the
/// signal's, with `HAKMEM_PROF_SIGNAL=1`). Called once hakmem is ready (it registers an exit
/// handler and may start a thread, which allocate).
pub(crate) fn start_from_env() {
    if !flag(c"HAKMEM_PROF") {
        return;
    }
    let mean = match hakmem_os::getenv(c"HAKMEM_PROF_SAMPLE") {
        Some(v) => match core::str::from_utf8(v)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
        {
            Some(n) if n > 0 => n,
            _ => {
                hakmem_os::write_stderr(
                    b"hakmem: warning: HAKMEM_PROF_SAMPLE is not a positive number of bytes; \
                      the default (524288) is used\n",
                );
                DEFAULT_SAMPLE
            }
        },
        None => DEFAULT_SAMPLE,
    };
    if !start(mean) {
        hakmem_os::write_stderr(b"hakmem: warning: HAKMEM_PROF: the profiler's tables could not be mapped; not profiling\n");
        return;
    }
    // SAFETY: registers an extern "C" handler that lives for the process.
    unsafe { libc::atexit(at_exit) };
}

/// Runs [`at_load`] when the object holding hakmem is loaded (before `main`).
#[used]
#[link_section = ".init_array"]
static AT_LOAD: extern "C" fn() = at_load;

/// `HAKMEM_PROF=1 HAKMEM_PROF_SIGNAL=1`: the `SIGUSR2` handler and its helper thread, started
/// at load time (making a thread allocates, which is better done outside any allocation).
extern "C" fn at_load() {
    if hakmem_os::getenv(c"HAKMEM_PROF") == Some(b"1") && flag(c"HAKMEM_PROF_SIGNAL") {
        output::start_signal_thread();
    }
}

extern "C" fn at_exit() {
    dump_env_files();
}

/// Writes the pprof file and the collapsed stacks where `HAKMEM_PROF_FILE` says (`%p`: the
/// process id), reporting a failure on stderr.
pub(crate) fn dump_env_files() {
    guarded(|| {
        let name = hakmem_os::getenv(c"HAKMEM_PROF_FILE").unwrap_or(b"hakmem.%p.pb.gz");
        if name.is_empty() {
            return;
        }
        let name = String::from_utf8_lossy(name).replace("%p", &hakmem_os::pid().to_string());
        let p = snapshot_inner();
        let r = std::fs::File::create(&name)
            .and_then(|f| p.write_pprof(std::io::BufWriter::new(f)))
            .and_then(|_| {
                let f = std::fs::File::create(format!("{name}.collapsed"))?;
                p.write_collapsed(std::io::BufWriter::new(f))
            });
        if let Err(e) = r {
            hakmem_os::write_stderr(
                format!("hakmem: profile: cannot write {name}: {e}\n").as_bytes(),
            );
        }
    })
}

/// Runs `f` with this thread's sampler guard set, so that what it allocates is not sampled.
fn guarded<R>(f: impl FnOnce() -> R) -> R {
    let was = SAMPLER.with(|s| s.busy.replace(true));
    let r = f();
    SAMPLER.with(|s| s.busy.set(was));
    r
}

/// The profile now: every stack with a sample, symbolised, largest live bytes first. Empty
/// when profiling has not started.
pub fn snapshot() -> Profile {
    guarded(snapshot_inner)
}

fn snapshot_inner() -> Profile {
    output::snapshot(MEAN.load(Relaxed))
}

/// Writes the profile to `path` as a gzipped pprof protobuf (sample types: allocated objects
/// and bytes since the start, live objects and bytes now; scaled), as `pprof` and
/// `go tool pprof` read it.
pub fn dump(path: impl AsRef<std::path::Path>) -> std::io::Result<()> {
    guarded(|| {
        let f = std::fs::File::create(path)?;
        snapshot_inner().write_pprof(std::io::BufWriter::new(f))
    })
}

/// Writes the live bytes as collapsed stacks (`root;...;leaf bytes` per line), the input of
/// flamegraph tools (`cargo xtask profile` draws it with inferno).
pub fn dump_collapsed(path: impl AsRef<std::path::Path>) -> std::io::Result<()> {
    guarded(|| {
        let f = std::fs::File::create(path)?;
        snapshot_inner().write_collapsed(std::io::BufWriter::new(f))
    })
}

/// The profiler's own memory and state, for the stats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProfilerStats {
    /// Whether profiling runs.
    pub active: bool,
    /// Bytes of address space its tables reserve (touched pages only are resident).
    pub mapped_bytes: u64,
    /// Live samples held.
    pub live_samples: usize,
    /// Distinct stacks stored.
    pub stacks: usize,
    /// Samples dropped because the address table was full.
    pub dropped: u64,
}

/// The profiler's own memory and counts (zero before [`start`]).
pub fn stats() -> ProfilerStats {
    if !active() {
        return ProfilerStats::default();
    }
    let (stacks, _, live) = table::counts();
    ProfilerStats {
        active: true,
        mapped_bytes: table::mapped_bytes(),
        live_samples: live,
        stacks,
        dropped: table::dropped(),
    }
}

/// An allocation of `size` bytes at `p` (not null) that no thread list serves (medium, large,
/// a small one of a thread without a heap), while profiling runs: counted down, and sampled
/// when the countdown crosses zero within it. With a heap, the countdown is the credit plus
/// the bytes on the holder's lists (hot_heap H19).
#[inline(never)]
pub(crate) fn on_alloc(p: *mut u8, size: usize) {
    let n = size as i64;
    let h = crate::tls::get();
    if h as usize <= crate::tls::DEAD as usize {
        return SAMPLER.with(|s| {
            seed(s);
            let left = s.left.get();
            let up = if left < n {
                sample_in(s, p, size, n, left)
            } else {
                0
            };
            s.left.set(left - n + up);
        });
    }
    // SAFETY: this thread's live heap, here and below.
    unsafe { ensure_started(h) };
    // SAFETY: as above.
    if unsafe { (*h).prof_credit() } >= n {
        // SAFETY: as above.
        unsafe { (*h).prof_add(-n) };
        return;
    }
    // SAFETY: as above.
    let c = unsafe { countdown(h) };
    // SAFETY: as above; `p` is the allocation, not from the holder.
    unsafe { settle(h, p, size, n, (c < n).then_some(c), true) };
}

/// The countdown of `h`, this thread's live heap whose profiler runs: the credit plus the
/// bytes on the holder's lists (hot_heap H19).
///
/// # Safety
/// `h` is this thread's live heap.
#[inline(never)]
unsafe fn countdown(h: *mut HotHeap) -> i64 {
    // SAFETY: the caller's contract.
    unsafe { (*h).prof_credit() + (*h).prof_held_bytes() as i64 }
}

/// What the holder's slow paths cost, in allocations counted one by one (about 45
/// instructions each, the fast path's miss included): a slow allocation the holder could not
/// serve (its fill, or its count) about 200 instructions, and a give-back of the holder's
/// lists when the credit ran short about 1 500 (callgrind, tiny-hot at a 16 KiB mean
/// interval: 1.97 M slow allocations and 79 k give-backs for 505 M instructions, 40 M
/// allocations; random-mixed at 512 KiB: 2.34 M and 194 k for 1 030 M, 12 M allocations).
const EVENT_COST: u64 = 4;
const TRIM_COST: u64 = 32;
/// The fewest slow allocations (summed, halved at each interval's end) that decide a switch:
/// a heap's first fills, or a short interval's, are no verdict on the holder.
const MIN_EVENTS: u32 = 16;
/// The sample intervals at a heap's start that decide nothing (H24).
const WARM_INTERVALS: u32 = 2;
/// The most intervals a switch to counting lasts before the holder is tried again.
const MAX_PERIOD: u32 = 64;

/// The end of a sample interval of `h` (H24), past the heap's first `WARM_INTERVALS` (whose
/// fills are short while its lists' bounds grow): the next interval counts every allocation
/// when the holder's recent slow events cost more than counting their allocations would
/// have, for twice as many intervals as the switch before (one after intervals the holder
/// served well, at most `MAX_PERIOD`); after them, an interval by the holder again. The
/// events and blocks are summed over the intervals the holder served, halved at each end, so
/// a short interval (they are exponential: one in ten is under a tenth of the mean), whose
/// few allocations follow a fill, weighs as little as it counts. Both ways count exactly,
/// so the choice moves no sample: it only chooses the cheaper.
///
/// # Safety
/// `h` is this thread's live heap, whose profiler runs.
unsafe fn interval_end(h: *mut HotHeap) {
    // SAFETY: the caller's contract.
    let t = unsafe { (*h).prof_tally() };
    t.intervals = t.intervals.saturating_add(1);
    if t.intervals <= WARM_INTERVALS {
        // The heap's first fills are short (its lists' bounds start small and grow with use,
        // hot_heap H11): no verdict on the holder yet.
        (t.events, t.trims, t.blocks) = (0, 0, 0);
        return;
    }
    if t.counting {
        t.left -= 1;
        t.counting = t.left > 0;
        return;
    }
    if t.events >= MIN_EVENTS
        && u64::from(t.events) * EVENT_COST + u64::from(t.trims) * TRIM_COST > t.blocks
    {
        t.counting = true;
        t.switches += 1;
        t.left = t.period;
        t.period = (t.period * 2).min(MAX_PERIOD);
    } else {
        t.period = 1;
    }
    (t.events, t.trims, t.blocks) = (t.events / 2, t.trims / 2, t.blocks / 2);
    if t.counting {
        // The holder empties (its bytes go back into the credit, which is then the
        // countdown), so that every allocation misses its fast path.
        // SAFETY: as above.
        unsafe { (*h).prof_give_back() };
    }
}

/// Counts an allocation of `counted` bytes at `p` (not null), asked for as `size`, that the
/// holder did not serve, of `h`, this thread's live heap: sampled when `sampled` holds the
/// countdown before it (below `counted`), and recorded when `record`. The credit falls by `counted` and rises by a
/// sample's next interval; a credit left negative takes as many bytes back from the tops of
/// the holder's lists, and at least half their bytes, so that it is at least 0 again (hot_heap
/// H19: the countdown after the allocation is at least 0, and the holder's bytes are part of
/// it) and stays so for a while: a credit left at 0 would have every allocation whose class
/// the holder lacks counted until the sample point, with a give-back each.
///
/// # Safety
/// `h` is this thread's live heap, whose profiler runs.
#[inline(never)]
unsafe fn settle(
    h: *mut HotHeap,
    p: *mut u8,
    size: usize,
    counted: i64,
    sampled: Option<i64>,
    record: bool,
) {
    let up = match sampled {
        Some(c) if record => sample(p, size, counted, c),
        // The countdown starts again all the same.
        Some(c) => SAMPLER.with(|s| {
            seed(s);
            next_interval(&s.rng) - (c - counted)
        }),
        None => 0,
    };
    // SAFETY: the caller's contract, here and below.
    unsafe { (*h).prof_add(up - counted) };
    if sampled.is_some() {
        // SAFETY: as above.
        unsafe { interval_end(h) };
    }
    // SAFETY: as above.
    let k = unsafe { (*h).prof_credit() };
    if k < 0 {
        // SAFETY: as above.
        unsafe {
            (*h).prof_tally().trims += 1;
            let held = (*h).prof_held_bytes();
            (*h).prof_trim(k.unsigned_abs().max(held / 2));
            debug_assert!(
                (*h).prof_credit() >= 0,
                "the credit is never negative (H19)"
            );
        }
    }
}

/// A small allocation of `size` bytes, class `class` (zeroed if `zero`), past the fast path's
/// miss, from `h`, this thread's live heap, while profiling runs: a fill of the holder's list
/// when the credit covers it (hot_heap H19, H21), then a pop from it; the block the holder's
/// fast pop leaves; else the allocation is counted ([`alloc_counted`]).
///
/// # Safety
/// `h` is this thread's live heap.
#[inline(always)]
pub(crate) unsafe fn alloc_small(
    h: *mut HotHeap,
    class: hakmem_route::SizeClass,
    size: usize,
    zero: bool,
) -> *mut u8 {
    // SAFETY: this thread's live heap (the caller's contract); a heap the profiler has not
    // started on does not count (`ProfTally::NEW`).
    if unsafe { (*h).prof_tally().counting } {
        // SAFETY: as above.
        return unsafe { alloc_counting(h, class, size, zero) };
    }
    // SAFETY: as above.
    unsafe { alloc_small_held(h, class, size, zero) }
}

/// [`alloc_small`] while the holder serves (H21): a fill, else the allocation is counted.
///
/// # Safety
/// As [`alloc_small`].
#[inline(never)]
pub(crate) unsafe fn alloc_small_held(
    h: *mut HotHeap,
    class: hakmem_route::SizeClass,
    size: usize,
    zero: bool,
) -> *mut u8 {
    // SAFETY: this thread's live heap (the caller's contract), here and below.
    unsafe { ensure_started(h) };
    // SAFETY: as above.
    unsafe { (*h).prof_tally().events += 1 };
    // SAFETY: as above.
    let mut p = if unsafe { (*h).prof_fill(class) } > 0 {
        // SAFETY: as above: the fill set the holder up.
        let hold = unsafe { (*h).prof_holder() }.unwrap_or(h);
        // SAFETY: this thread's holder, on its own thread.
        unsafe { HotHeap::alloc_fast(hold, class) }
    } else {
        core::ptr::null_mut()
    };
    if p.is_null() {
        // SAFETY: as above.
        p = unsafe { (*h).prof_pop(class) };
    }
    if p.is_null() {
        // SAFETY: as above.
        return unsafe { alloc_counted(h, class, size, zero) };
    }
    if zero {
        // SAFETY: a block of at least the class's size, handed out.
        unsafe { p.write_bytes(0, class.size()) };
    }
    p
}

/// [`alloc_small`] while the profiler counts every allocation of `h` (H24): the holder is
/// empty, so the countdown is the credit; an allocation it covers comes from the heap's own
/// lists, any other is the sampled one ([`alloc_counted`]).
///
/// # Safety
/// As [`alloc_small`].
#[inline(always)]
pub(crate) unsafe fn alloc_counting(
    h: *mut HotHeap,
    class: hakmem_route::SizeClass,
    size: usize,
    zero: bool,
) -> *mut u8 {
    let b = class.size() as i64;
    // SAFETY: this thread's live heap (the caller's contract), here and below.
    if unsafe { (*h).prof_credit() } < b {
        // SAFETY: as above.
        return unsafe { alloc_counted(h, class, size, zero) };
    }
    // SAFETY: as above, on its own thread.
    let mut p = unsafe { HotHeap::alloc_fast(h, class) };
    if p.is_null() {
        // SAFETY: as above.
        p = unsafe { crate::heap_alloc(&mut *h, class, zero) };
    } else if zero {
        // SAFETY: a block of at least the class's size, handed out.
        unsafe { p.write_bytes(0, class.size()) };
    }
    if !p.is_null() {
        // SAFETY: as above.
        unsafe { (*h).prof_add(-b) };
    }
    p
}

/// [`alloc_small`] when the holder cannot serve: counted one by one. The sampled allocation
/// (the countdown below the block's size) is served by the late heap, so that its free misses
/// the fast free and drops its sample; any other by the heap's own lists.
///
/// # Safety
/// As [`alloc_small`].
#[cold]
#[inline(never)]
unsafe fn alloc_counted(
    h: *mut HotHeap,
    class: hakmem_route::SizeClass,
    size: usize,
    zero: bool,
) -> *mut u8 {
    let b = class.size() as i64;
    // SAFETY: this thread's live heap (the caller's contract), here and below.
    let k = unsafe { (*h).prof_credit() };
    let sampled = if k >= b {
        None
    } else {
        // SAFETY: as above.
        let c = unsafe { countdown(h) };
        (c < b).then_some(c)
    };
    let late = match (sampled, crate::context::ctx()) {
        (Some(_), Some(ctx)) => {
            // SAFETY: the late heap's thread-only methods run under its lock.
            crate::global::with_late_heap_waiting(ctx, |l| unsafe {
                crate::heap_alloc(l, class, zero)
            })
        }
        _ => None,
    };
    let (p, record) = match late {
        Some(p) => (p, true),
        // SAFETY: as above. Not from the late heap (not sampled, or the late heap's lock
        // stayed held): the allocation is counted, but a block of the thread's heap is never
        // recorded, as its free would not drop the sample.
        None => (unsafe { crate::heap_alloc(&mut *h, class, zero) }, false),
    };
    if !p.is_null() {
        // SAFETY: as above.
        unsafe {
            (*h).prof_tally().blocks += 1;
            settle(h, p, size, b, sampled, record);
        }
    }
    p
}

/// A free of `p` while profiling runs, before the block goes back: its sample, if any, goes.
#[inline(always)]
pub(crate) fn on_free(p: *mut u8) {
    table::remove(p as usize);
}

extern "C" fn fork_child() {
    // The child's profile starts empty: its blocks were sampled in the parent, whose profile
    // holds them. Another thread may have held the table's lock at the fork, mid-update: the
    // child, where that thread does not exist, takes the lock over and clears what that
    // update could have left half done (table PT4).
    #[cfg(target_arch = "x86_64")]
    cfi::after_fork_child();
    table::force_unlock();
    table::lock();
    table::clear_locked();
    table::unlock();
}

/// How many times the profiler switched this thread's heap to counting every allocation
/// (H24), since it started on it (for tests of the switch).
#[doc(hidden)]
pub fn thread_switches() -> u32 {
    let h = crate::tls::get();
    if h as usize <= crate::tls::DEAD as usize {
        return 0;
    }
    // SAFETY: this thread's live heap, read on its own thread.
    unsafe { (*h).prof_tally().switches }
}

/// Whether this thread's sampler guard is set (for tests of the re-entry guard).
#[doc(hidden)]
pub fn guard_is_set() -> bool {
    SAMPLER.with(|s| s.busy.get())
}
