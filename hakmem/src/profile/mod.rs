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
//! holds an empty heap (hot_heap H9), so every free misses its fast path and reaches the
//! profiler, which drops the block's sample if it has one (a lock-free filter first, table
//! PT2, so only frees of almost surely sampled blocks take the profiler's lock), while
//! allocations keep popping from the thread lists on their fast path, uncounted.
//!
//! That is exact because of a per-thread credit: the countdown to the next sample less the
//! bytes on the thread's lists, kept on slow paths from the hot heap's debit (hot_heap H19).
//! A pop lowers the countdown and the lists' bytes together, so it leaves the credit alone,
//! and a credit that is never negative means the lists never hold more bytes than the
//! countdown: no pop can pass the sample point. The credit falls only on slow paths: a free
//! puts its block on the list only while the credit covers its bytes (else the block goes to
//! the cache or its slab), and a slow allocation is served as with profiling off while the
//! credit can take a refill of its list (a list left at one block is refilled then, so the
//! pops after it are fast), else by a pop when its list has a block, else from the cache.
//!
//! Once the credit is below an allocation's size, the lists' bytes decide. While they are
//! less than a quarter of the mean interval (and less than 128 KiB, that quarter at the
//! default rate), the thread stays on this constrained path until
//! the sample: a negative credit trims the lists (by half their bytes at least), and the
//! allocation that finds the countdown (the credit plus the lists' bytes) below its size is
//! the sampled one. When they are more (many classes, whose lists hold about as many bytes as
//! the interval: that path would trim them and keep frees off them for most of it), or at
//! the sampled allocation, the thread is counted instead (tls T6): its allocation slot holds
//! the empty heap too, so every allocation reaches the profiler on the slow paths, which keeps
//! the countdown itself and samples the allocation within which it crosses zero, while frees
//! go onto the lists freely. After the sample the thread goes back to the fast pops when the
//! new credit (the new countdown less the lists' bytes) is at least an eighth of the mean
//! interval, else it stays counted until the next sample. So a thread whose lists hold few
//! bytes against the interval pops on the fast path but for the last few kilobytes before
//! each sample, and one whose lists hold about the interval is counted for much of it, as if
//! every call were slow, with its lists left alone. Either way the sample lands on the
//! allocation the countdown picks, as if every allocation
//! were counted. Small blocks are counted by their block size (what a
//! pop takes off the lists); medium and large ones, and a thread's allocations without a
//! heap of its own, by the size asked for. A heap's credit starts at its thread's first slow
//! path once profiling runs (its lists are drained then, so a fresh interval starts), and
//! stays with the heap (a heap parked at a thread's exit and taken by another thread goes on
//! counting); allocations made before are not in the profile. A private heap's allocations ([`crate::Heap`]) are
//! not sampled. With profiling off, the only additions are one load and branch on paths that
//! are slow already (a fast path's miss, a foreign or orphan free, the medium and large
//! tiers).
//!
//! ## Settings
//! `HAKMEM_PROF` (0/1), `HAKMEM_PROF_SAMPLE` (bytes, mean interval), `HAKMEM_PROF_FILE`
//! (written at exit, `%p` the process id; default `hakmem.%p.pb.gz`; collapsed stacks go
//! beside it with `.collapsed` appended; empty: none), `HAKMEM_PROF_SIGNAL` (1: `SIGUSR2` writes the files
//! too, from a helper thread).
//!
//! Stacks are captured with libgcc's DWARF unwinder (`_Unwind_Backtrace`) and symbolised only when a
//! profile is written or viewed, outside every allocator lock, with the thread's sampler
//! guard set: the allocations that symbolisation makes are served but not sampled.
mod output;
mod table;
mod unwind;

pub use output::{Frame, Profile, Site};

use core::cell::Cell;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use hakmem_hot_heap::{Heap as HotHeap, SlabMeta};

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

/// The credit of `h` (hot_heap H19), started at this thread's first slow path with it: its
/// free slot is switched then (tls T5) and its lists drained, so the credit starts as a fresh
/// interval (the sampling process is memoryless, so a fresh start is unbiased). A heap keeps
/// its credit when a thread's exit parks it and another thread takes it.
///
/// # Safety
/// `h` is this thread's live heap.
#[inline(always)]
unsafe fn credit(h: *mut HotHeap) -> i64 {
    // SAFETY: this thread's live heap, on its own thread.
    match unsafe { (*h).prof_credit() } {
        Some(c) => c,
        // SAFETY: as above.
        None => unsafe { start_credit(h) },
    }
}

/// [`credit`]'s start.
///
/// # Safety
/// As [`credit`].
#[cold]
#[inline(never)]
unsafe fn start_credit(h: *mut HotHeap) -> i64 {
    crate::tls::enter_profiling();
    let interval = SAMPLER.with(|s| {
        seed(s);
        next_interval(&s.rng)
    });
    // SAFETY: this thread's live heap (the caller's contract), on its own thread.
    unsafe { (*h).prof_start(interval) };
    interval
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
        let frames = unwind::capture();
        let mean = MEAN.load(Relaxed) as f64;
        let prob = 1.0 - (-(counted as f64) / mean).exp();
        let (objects, bytes) = (1.0 / prob, size as f64 / prob);
        table::insert(p as usize, &frames.ips[..frames.len], objects, bytes);
        s.busy.set(false);
    }
}

/// Starts profiling with a mean interval of `sample_bytes` (0: the default). Threads start
/// sampling at their next slow path (an allocation that misses its fast path, or a free that
/// misses its own; at once for threads whose heap is made later); allocations made before are
/// not in the profile. Returns false when the profiler's
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
/// the bytes on the lists, counted when the credit is short (hot_heap H19).
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
    let c = unsafe { credit(h) };
    // SAFETY: as above.
    if c > hakmem_hot_heap::PROF_COUNTED / 2 || (c < n && unsafe { long_lists(h, c, n) }) {
        // SAFETY: as above.
        unsafe { count(h, p, size, n, n, None) };
        return;
    }
    // SAFETY: as above; a negative credit trims the lists or makes the thread counted.
    unsafe {
        (*h).prof_add(-n);
        keep_credit(h);
    }
}

/// Counts an allocation of `counted` bytes at `p` (not null), asked for as `size`, of `h`, this
/// thread's live heap, while the profiler counts every allocation of it (tls T6, hot_heap
/// H19; entered here when it does not yet): sampled when the countdown crosses zero within it.
/// `listed` is what the allocation takes off the credit (`counted` for one no list serves, 0
/// for one a list or a refill of it served, whose debit the heap keeps). After a sample, the
/// thread's allocations go back to the fast path when the new credit (the countdown less the
/// bytes on the lists) is at least [`MIN_STRETCH`] of the mean interval.
///
/// # Safety
/// `h` is this thread's live heap, whose credit has started.
#[inline(never)]
unsafe fn count(
    h: *mut HotHeap,
    p: *mut u8,
    size: usize,
    counted: i64,
    listed: i64,
    class: Option<hakmem_route::SizeClass>,
) {
    // SAFETY: this thread's live heap (the caller's contract), here and below.
    unsafe { (*h).prof_enter_counted() };
    crate::tls::ensure_counted(h);
    // SAFETY: as above.
    let left = unsafe { (*h).prof_left() };
    if left >= counted {
        // SAFETY: as above.
        unsafe {
            (*h).set_prof_left(left - counted);
            (*h).prof_add(-listed);
        }
        return;
    }
    let up = sample(p, size, counted, left);
    // SAFETY: as above.
    unsafe {
        (*h).set_prof_left(left - counted + up);
        (*h).prof_add(up - listed);
        let min = (MEAN.load(Relaxed) / MIN_STRETCH) as i64;
        if (*h).prof_leave_counted(min) {
            crate::tls::leave_counted(h);
            // A list left at one block is refilled, so that the pops after it are fast (the
            // C lane's fast path pops such a block by a cold call, never reaching this module).
            if let Some(class) = class {
                let refill = i64::from((*h).list_cap(class) / 2) * class.size() as i64;
                if (*h).prof_credit().is_some_and(|k| k >= refill) {
                    (*h).refill_short_list(class);
                }
            }
        }
    }
}

/// A thread's allocations go back to the fast path after a sample when the credit gives them a
/// stretch of at least the mean interval over this (tls T6): below that, the stretch is too
/// short to pay for a switch of mode.
const MIN_STRETCH: u64 = 8;

/// A thread whose lists hold at least the mean interval over this, or [`LONG_LISTS_MAX`]
/// bytes, is counted once its credit is short (tls T6); shorter lists keep the constrained
/// stretch, which lasts as many bytes as they hold.
const LONG_LISTS: u64 = 4;

/// [`LONG_LISTS`]' bound in bytes (the default interval's quarter): the constrained stretch
/// costs per byte the lists hold (their trims, the frees kept off them), not per byte of the
/// interval, so lists of this many bytes are long at every rate (c/random-mixed/w400 at a
/// 2 MiB interval, whose lists hold a few hundred KiB: 331 million instructions constrained,
/// 286 million counted as at the default rate).
const LONG_LISTS_MAX: u64 = 128 << 10;

/// The bytes on a thread's lists from which it is counted ([`LONG_LISTS`]).
#[inline(always)]
fn long_lists_bytes() -> u64 {
    (MEAN.load(Relaxed) / LONG_LISTS).min(LONG_LISTS_MAX)
}

/// A small allocation of `size` bytes, class `class` (zeroed if `zero`), past the fast path's
/// miss, from `h`, this thread's live heap, while profiling runs: the credit (hot_heap H19)
/// decides. While it covers the block, the allocation needs no count (the lists hold no more
/// bytes than the countdown, so no pop passes the sample point): served as with profiling off
/// when the credit can take a refill of the list, else by a pop or from the cache; once it does
/// not, every allocation of the thread is counted ([`count`]) until the lists are short
/// against the countdown again.
///
/// # Safety
/// `h` is this thread's live heap.
#[inline(never)]
pub(crate) unsafe fn alloc_small(
    h: *mut HotHeap,
    class: hakmem_route::SizeClass,
    size: usize,
    zero: bool,
) -> *mut u8 {
    let b = class.size() as i64;
    // SAFETY: this thread's live heap (the caller's contract), here and below.
    let c = unsafe { credit(h) };
    // SAFETY: as above.
    if c > hakmem_hot_heap::PROF_COUNTED / 2 || (c < b && unsafe { long_lists(h, c, b) }) {
        // Counted, from the countdown before this allocation.
        // SAFETY: as above.
        unsafe { (*h).prof_enter_counted() };
        // SAFETY: as above.
        let p = unsafe { crate::heap_alloc(&mut *h, class, zero) };
        if !p.is_null() {
            // SAFETY: as above; the list, its refill or the cache served the block.
            unsafe { count(h, p, size, b, 0, Some(class)) };
        }
        return p;
    }
    // SAFETY: as above.
    let refill = i64::from(unsafe { (*h).list_cap(class) } / 2 + 1) * b;
    // SAFETY: as above.
    let has_block = unsafe { (*h).list_len(class) } > 0;
    let p = if c - b >= refill {
        // The credit takes a refill: one now if the list is short, so the next pops are fast.
        // SAFETY: as above.
        unsafe {
            (*h).refill_short_list(class);
            crate::heap_alloc(&mut *h, class, zero)
        }
    } else if has_block {
        // A pop (of a head the fast pop left, hot_heap H16).
        // SAFETY: as above.
        unsafe { crate::heap_alloc(&mut *h, class, zero) }
    } else {
        // A block from the cache, the list left alone.
        // SAFETY: as above.
        let p = unsafe { (*h).alloc_unlisted(class) };
        if zero && !p.is_null() {
            // SAFETY: a block of at least the class's size, ours.
            unsafe { p.write_bytes(0, class.size()) };
        }
        p
    };
    if !p.is_null() {
        // SAFETY: as above.
        unsafe { keep_credit(h) };
    }
    p
}

/// For a credit `c` below an allocation of `b` bytes: whether the thread is counted from now
/// on (tls T6), because the allocation is the sampled one (the countdown, `c` plus the bytes on
/// the lists, is below `b`) or the lists hold at least the mean interval over [`LONG_LISTS`]
/// (at most [`LONG_LISTS_MAX`])
/// (so many bytes that keeping them within the countdown would take long stretches of frees
/// kept off the lists). Else the lists are few bytes, and the stretch until the sample keeps
/// frees off the lists (the credit covers no free) and serves allocations by pops, which the
/// countdown covers, or from the cache.
///
/// # Safety
/// `h` is this thread's live heap, whose credit has started.
#[inline(never)]
unsafe fn long_lists(h: *mut HotHeap, c: i64, b: i64) -> bool {
    // SAFETY: the caller's contract.
    let listed = unsafe { (*h).listed_bytes() } as i64;
    c + listed < b || listed >= long_lists_bytes() as i64
}

/// Keeps the lists of `h` within the countdown when its credit is negative (hot_heap H19), so
/// that no pop passes the sample point: trims them (by half their bytes at least, so that they
/// are trimmed a few times rather than at every allocation) when they hold less than
/// the mean interval over [`LONG_LISTS`] (at most [`LONG_LISTS_MAX`]), else counts every
/// allocation of the thread (tls T6).
///
/// # Safety
/// `h` is this thread's live heap, whose credit has started.
#[inline(always)]
unsafe fn keep_credit(h: *mut HotHeap) {
    // SAFETY: the caller's contract.
    let k = unsafe { credit(h) };
    if k < 0 {
        // SAFETY: as above.
        unsafe { short_credit(h, k.unsigned_abs()) };
    }
}

/// [`keep_credit`]'s trim or switch.
///
/// # Safety
/// As [`keep_credit`].
#[cold]
#[inline(never)]
unsafe fn short_credit(h: *mut HotHeap, need: u64) {
    // SAFETY: the caller's contract.
    unsafe {
        let listed = (*h).listed_bytes();
        if listed >= long_lists_bytes() {
            (*h).prof_enter_counted();
            crate::tls::ensure_counted(h);
        } else {
            (*h).trim_lists(need.max(listed / 2));
        }
    }
}

/// A free of `p` while profiling runs, before the block goes back: its sample, if any, goes.
#[inline(always)]
pub(crate) fn on_free(p: *mut u8) {
    table::remove(p as usize);
}

/// The owner's free of `p`, a block of `slab` of `h`, this thread's live heap, while
/// profiling runs: its sample, if any, goes first ([`on_free`]), then [`free_own`]. Only the
/// filter's first level (its slab's count, table PT2) is read inline; a slab that may hold a
/// sample takes the rest out of line, so the common free saves no registers for a call.
///
/// # Safety
/// As [`free_own`].
#[inline(always)]
pub(crate) unsafe fn free_own_sampling(h: *mut HotHeap, slab: &SlabMeta, p: *mut u8) {
    if table::granule_may_hold_sample(p as usize) {
        // SAFETY: forwarded.
        return unsafe { free_own_sampled(h, slab, p) };
    }
    // SAFETY: forwarded; `p` has no sample (PT2).
    unsafe { free_own(h, slab, p) }
}

/// [`free_own_sampling`] for a block whose slab may hold a sample.
///
/// # Safety
/// As [`free_own`].
#[cold]
#[inline(never)]
unsafe fn free_own_sampled(h: *mut HotHeap, slab: &SlabMeta, p: *mut u8) {
    on_free(p);
    // SAFETY: forwarded, its sample dropped.
    unsafe { free_own(h, slab, p) }
}

/// The owner's free of `p`, a block of `slab` of `h`, this thread's live heap, while
/// profiling runs (its sample dropped already): onto the thread list when the credit allows
/// its bytes (the credit falls by them), else to the cache or the slab (hot_heap H19).
///
/// # Safety
/// `h` is this thread's live heap, `slab` one of its in-use slabs, and `p` a block of it that
/// the caller gives up.
#[inline(always)]
pub(crate) unsafe fn free_own(h: *mut HotHeap, slab: &SlabMeta, p: *mut u8) {
    // SAFETY: this thread's live heap (the caller's contract); `p` is a block of its own
    // slab, given up.
    if !unsafe { (*h).free_own_profiled(slab, p) } {
        // SAFETY: as above.
        unsafe { free_own_first(h, slab, p) }
    }
}

/// [`free_own`] on a heap whose credit has not started.
///
/// # Safety
/// As [`free_own`].
#[cold]
#[inline(never)]
unsafe fn free_own_first(h: *mut HotHeap, slab: &SlabMeta, p: *mut u8) {
    // SAFETY: as the caller's.
    unsafe {
        start_credit(h);
        let freed = (*h).free_own_profiled(slab, p);
        debug_assert!(freed, "the credit runs");
    }
}

/// `free`'s full path while profiling runs: when `p` is a block of this thread's heap (found
/// by its owned cache, hot_heap H8), drops its sample and frees it by [`free_own_sampling`];
/// otherwise the registry's path, which decides (and drops a sample there).
///
/// # Safety
/// As `raw::free`: `p` is null or a block the caller gives up, or any address (reported by
/// the full path).
#[inline(never)]
pub(crate) unsafe fn free_owned(p: *mut u8) {
    // The allocation slot: this thread's heap or an empty one (tls T2), whose owned cache
    // holds no slab (hot_heap H9).
    let h = crate::tls::raw();
    // SAFETY: as above; any address is accepted (nothing is read through it).
    let Some(slab) = (unsafe { HotHeap::owned_slab(h, p) }) else {
        // SAFETY: forwarded.
        return unsafe { free_owned_counted(p) };
    };
    // SAFETY: a block of this thread's heap's own slab, given up.
    unsafe { free_own_sampling(h, slab, p) }
}

/// [`free_owned`] past the allocation slot's heap: the same for a counted thread's heap (tls
/// T6), else the registry's path.
///
/// # Safety
/// As [`free_owned`].
#[inline(never)]
unsafe fn free_owned_counted(p: *mut u8) {
    let h = crate::tls::owner();
    // SAFETY: this thread's heap or an empty one (tls T2, T6); any address is accepted.
    let Some(slab) = (unsafe { HotHeap::owned_slab(h, p) }) else {
        // SAFETY: forwarded.
        return unsafe { crate::free_registry(p) };
    };
    // SAFETY: a block of this thread's heap's own slab, given up.
    unsafe { free_own_sampling(h, slab, p) }
}

extern "C" fn fork_child() {
    // The child's profile starts empty: its blocks were sampled in the parent, whose profile
    // holds them. Another thread may have held the table's lock at the fork, mid-update: the
    // child, where that thread does not exist, takes the lock over and clears what that
    // update could have left half done (table PT4).
    table::force_unlock();
    table::lock();
    table::clear_locked();
    table::unlock();
}

/// Whether this thread's sampler guard is set (for tests of the re-entry guard).
#[doc(hidden)]
pub fn guard_is_set() -> bool {
    SAMPLER.with(|s| s.busy.get())
}
