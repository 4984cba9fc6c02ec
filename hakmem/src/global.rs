//! Start-up and the per-thread heap pointer.
//!
//! The first allocation initialises everything from static, const-built state: the shared
//! context (with the registry's 16 KiB root inside it) is mapped straight from the OS, settings
//! come from `settings::freeze` (read with `hakmem_os::getenv`, possibly earlier, by an error path),
//! and nothing is allocated through hakmem itself. Registry leaves are mapped later, when the
//! first region in their 128 GiB range is registered. A start-up the OS refused leaves the state
//! as it was, and the next call tries again. The thread-exit key is made before the context is
//! published (so every heap can be registered with it); the fork handlers and the exit report
//! are registered after, and a background purge thread set from code is started after, since
//! glibc may allocate while doing so (that re-entry then finds hakmem ready). Nothing in
//! start-up can panic (a panic allocates, and would wait for the start-up it interrupted): the
//! settings are range-checked before start-up sees them, and its arithmetic saturates.
use crate::context::ctx;
use crate::out::eprint;
use crate::settings::{OnInvalid, Settings};
use crate::tls::DEAD;
use core::ptr::{null_mut, NonNull};
use core::sync::atomic::{AtomicUsize, Ordering};
use hakmem_hot_heap::{Ctx, Heap};
use hakmem_lru::LruConfig;
use hakmem_registry::{LeafSource, Registry};
use hakmem_superslab::{Corrupt, LibcOs, Os, SpinLock};

static OS: LibcOs = LibcOs;
/// The start-up state in the low two bits; while BUSY, the initialising process's id above them
/// (so a child forked during start-up can tell the initialiser is not in its process: F8).
static STATE: AtomicUsize = AtomicUsize::new(UNINIT);
static mut KEY: libc::pthread_key_t = 0;

const UNINIT: usize = 0;
const BUSY: usize = 1;
const READY: usize = 2;

/// glibc's (and musl's) `PTHREAD_DESTRUCTOR_ITERATIONS`: the passes over the TSD destructors.
const DESTRUCTOR_ITERATIONS: u8 = 4;

std::thread_local! {
    // The thread-exit destructor's passes so far (0 while the thread runs). Read on the exit
    // path only; the heap pointer itself lives in `crate::tls`.
    static EXIT_PASSES: core::cell::Cell<u8> = const { core::cell::Cell::new(0) };
}

/// The late heap: it serves the allocations of threads whose own heap was retired (TSD
/// destructors that run after hakmem's last pass). One for the process, used only under its
/// lock: such calls are rare and short, and a heap of their own would cost each one a heap
/// built, torn down and its superslabs abandoned and adopted again. Its blocks are freed by
/// everyone else through the remote path (no thread's heap has its id), and it is never
/// retired, so it never strands a superslab.
struct LateHeap(*mut Heap);

// SAFETY: the pointer is followed only under LATE's lock.
unsafe impl Send for LateHeap {}

static LATE: SpinLock<LateHeap> = SpinLock::new(LateHeap(null_mut()));

/// Runs `f` on the late heap, made on first use. `None` when its lock is held (by another
/// thread, or by this one re-entering) or no heap could be made: the caller then makes do
/// without it.
pub fn with_late_heap<R>(ctx: &'static Ctx, f: impl FnOnce(&mut Heap) -> R) -> Option<R> {
    let mut late = LATE.try_lock()?;
    if late.0.is_null() {
        late.0 = ctx.new_heap()?.as_ptr();
        LATE_MADE.store(true, Ordering::Relaxed);
    }
    // SAFETY: a heap of this context, never retired; the lock makes this thread its only user
    // for now, which is all the heap's thread-only methods need.
    Some(f(unsafe { &mut *late.0 }))
}

/// [`with_late_heap`] for the heap profiler's sampled small blocks (`crate::profile`): waits
/// for the lock while another thread holds it, up to a bound (a holder that is this thread
/// would never let go), then gives up (`None`), as `with_late_heap` does when the heap cannot
/// be made.
pub fn with_late_heap_waiting<R>(ctx: &'static Ctx, f: impl FnOnce(&mut Heap) -> R) -> Option<R> {
    let mut f = Some(f);
    for _ in 0..LATE_WAIT_TRIES {
        // `f` is taken only when the lock was, which ends the loop.
        if let Some(r) = with_late_heap(ctx, |h| f.take().map(|f| f(h))) {
            return r;
        }
        // The lock is held, or the heap could not be made (then every try fails).
        hakmem_os::yield_now();
    }
    None
}

/// How many times [`with_late_heap_waiting`] tries the lock, yielding between tries.
const LATE_WAIT_TRIES: usize = 1000;

/// True once the late heap exists (it is never retired).
pub fn late_heap_made() -> bool {
    LATE_MADE.load(Ordering::Relaxed)
}

static LATE_MADE: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Retires the heap of every thread that has ended without its exit destructor seeing it (a
/// heap first made in glibc's last pass over TSD destructors, F5), as the new threads' reaping
/// would in turn, and every parked heap (hot_heap H18). At exit, so the report counts only what
/// live threads hold.
pub fn reap_ended_threads() {
    if let Some(c) = ctx() {
        // Heaps parked by exited threads (hot_heap H18) hold no live thread's blocks either.
        c.retire_parked();
        for _ in 0..c.live_heaps() {
            // SAFETY: `thread_gone` answers true only for a thread of this process that the
            // kernel no longer knows (ESRCH), which never runs again; a heap handed to a new
            // thread with the same id meanwhile has a new heap id, which the reap checks.
            unsafe { c.reap_one(thread_gone) };
        }
    }
}

/// The settings in force: read from the environment (over any set in code) by the first call
/// that needs them, an error path included.
pub fn settings() -> Settings {
    crate::settings::in_force().values()
}

/// The shared context, initialising it on first use. `None` when the OS refuses memory.
#[inline]
pub fn ctx_or_init() -> Option<&'static Ctx> {
    match ctx() {
        Some(c) => Some(c),
        None => init(),
    }
}

/// [`ctx_or_init`] for a [`crate::HakMem`](struct@crate::HakMem) that may carry settings from
/// code (applied only if this call starts hakmem up).
#[inline]
pub fn ctx_or_init_with(code: &Option<Settings>) -> Option<&'static Ctx> {
    match ctx() {
        Some(c) => Some(c),
        None => {
            crate::settings::apply_code(code);
            init()
        }
    }
}

/// What [`claim`] found.
#[derive(Debug, PartialEq, Eq)]
enum Claim {
    /// This thread holds BUSY and must initialise.
    Won,
    Ready,
}

fn getpid() -> usize {
    hakmem_os::pid() as usize
}

/// Waits for start-up to be done, or claims it. Another thread of this process that is
/// initialising allocates nothing through us, so it finishes; but a BUSY left by a thread of the
/// parent (this process was forked during start-up) never clears, so it is claimed afresh (F8).
fn claim(state: &AtomicUsize) -> Claim {
    let me = getpid();
    let mut s = state.load(Ordering::Acquire);
    loop {
        let to = match s & 3 {
            READY => return Claim::Ready,
            UNINIT => UNINIT,
            // BUSY in our own process: wait for it.
            _ if s >> 2 == me => {
                core::hint::spin_loop();
                s = state.load(Ordering::Acquire);
                continue;
            }
            // BUSY in the process we were forked from: nobody here will finish it.
            _ => s,
        };
        match state.compare_exchange(to, me << 2 | BUSY, Ordering::Acquire, Ordering::Acquire) {
            Ok(_) => return Claim::Won,
            Err(now) => s = now,
        }
    }
}

#[cold]
fn init() -> Option<&'static Ctx> {
    match claim(&STATE) {
        Claim::Won => {}
        Claim::Ready => return ctx(),
    }
    let settings = crate::settings::freeze();
    let Some(ctx) = build(settings) else {
        // Not permanent: the OS refused memory now, and the next call tries again.
        STATE.store(UNINIT, Ordering::Release);
        return None;
    };
    // The thread-exit key must exist before any thread can see the context and make a heap.
    // glibc's pthread_key_create takes a free slot in a static table: it does not allocate.
    // SAFETY: KEY is written here only, before the context is published (Release below).
    unsafe { libc::pthread_key_create(core::ptr::addr_of_mut!(KEY), Some(thread_exit)) };
    // SAFETY: built and written in full above, never unmapped; published once (this thread
    // holds BUSY).
    unsafe { crate::context::publish(ctx) };
    STATE.store(READY, Ordering::Release);
    // SAFETY: plain C callbacks. glibc may allocate while registering them; that re-entry finds
    // the context published and goes through.
    unsafe { libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child)) };
    // Also after READY, for the same reason (atexit may allocate past its static slots).
    crate::stats::after_start_up(at_exit);
    // Heap profiling from the environment: after READY too (it registers an exit handler).
    crate::profile::start_from_env();
    // Settings from code arrive with the first allocation, not at load: so does their purge
    // thread (pthread_create may allocate, which finds hakmem ready).
    if crate::settings::code_applied() {
        crate::purge::start_if_set();
    }
    // SAFETY: published above.
    Some(unsafe { &*ctx.as_ptr() })
}

fn build(s: Settings) -> Option<NonNull<Ctx>> {
    // The bootstrap mapping is counted once the context (and its counters) exist.
    let scratch = hakmem_stats::GlobalStats::new();
    // The page size, read here at start-up (sysconf), not assumed: 4, 16 and 64 KiB all work.
    let page = OS.page_size();
    let len = (core::mem::size_of::<Ctx>() + page - 1) & !(page - 1);
    let mem = OS.map(len, page, &scratch)?.cast::<Ctx>();
    // The registry maps nothing yet: its leaves come from LEAVES on demand.
    let registry = Registry::new(&LEAVES);
    // The settings are in range (settings.rs checks them); saturating all the same, since a
    // panic here would allocate inside start-up and wait for itself.
    let lru = LruConfig {
        max_bytes: s.lru_mb.saturating_mul(1 << 20),
        decay_ns: s.lru_decay_ms.saturating_mul(1_000_000),
        purge: s.lazy_zero,
        ..LruConfig::default()
    };
    // SAFETY: fresh memory of the right size and alignment, never unmapped.
    unsafe {
        mem.as_ptr()
            .write(Ctx::new(&OS, registry, lru, s.check, on_corrupt))
    };
    // SAFETY: just written.
    let ctx = unsafe { mem.as_ref() };
    // Page-aligned requests take exactly one mmap each.
    ctx.stats.event(hakmem_stats::Event::Mmap, len);
    Some(mem)
}

/// The registry's leaves: page-aligned anonymous mappings (`MAP_NORESERVE`: only the pages
/// under live regions are ever touched), counted as mmaps in the context's stats.
struct Leaves;

static LEAVES: Leaves = Leaves;

impl Leaves {
    fn len(layout: core::alloc::Layout) -> usize {
        let page = OS.page_size();
        (layout.size() + page - 1) & !(page - 1)
    }

    fn with_stats<R>(f: impl FnOnce(&hakmem_stats::GlobalStats) -> R) -> R {
        match ctx() {
            Some(c) => f(&c.stats),
            // Regions are registered only once the context is published; just in case.
            None => f(&hakmem_stats::GlobalStats::new()),
        }
    }
}

// SAFETY: `LibcOs::map` returns fresh zeroed anonymous memory, page-aligned (a leaf needs 8),
// of at least the layout's size, or `None`; `unmap` gives back exactly that mapping.
unsafe impl LeafSource for Leaves {
    fn map(&self, layout: core::alloc::Layout) -> Option<NonNull<u8>> {
        if layout.size() == 0 || layout.align() > OS.page_size() {
            return None;
        }
        // A leaf is address space reserved (MAP_NORESERVE, touched only under live regions):
        // counted as a reservation, apart from the memory mapped.
        let len = Self::len(layout);
        let leaf = OS.map_reserved(len);
        if leaf.is_some() {
            Self::with_stats(|stats| stats.event(hakmem_stats::Event::Reserve, len));
        }
        leaf
    }

    unsafe fn unmap(&self, leaf: NonNull<u8>, layout: core::alloc::Layout) {
        // SAFETY: the caller passes back a mapping `map` made with this layout. (Only a leaf that
        // lost its installation race comes back; its reservation stays counted.)
        unsafe { OS.unmap(leaf, Self::len(layout), &hakmem_stats::GlobalStats::new()) }
    }
}

/// Reports a corruption the boxes found, then aborts (or, with `HAKMEM_INVALID_FREE=warn`,
/// goes on).
fn on_corrupt(c: Corrupt) {
    crate::stats::corruption(c);
    match c {
        Corrupt::DoubleFree(p) => eprint(format_args!(
            "hakmem: free(): double free detected {p:#x}\n"
        )),
        Corrupt::NotABlock(p) => eprint(format_args!("hakmem: free(): invalid pointer {p:#x}\n")),
        Corrupt::FreeList(p) => eprint(format_args!(
            "hakmem: malloc(): corrupted free list {p:#x}\n"
        )),
        Corrupt::Invariant { id, at } => {
            eprint(format_args!(
                "hakmem: validate(): invariant {id} broken at {at:#x}\n"
            ));
            // The allocator's own state is wrong: going on could hand out memory twice.
            hakmem_os::abort();
        }
    }
    if settings().on_invalid == OnInvalid::Abort {
        hakmem_os::abort();
    }
}

/// Reports `p`, which `op` cannot accept (not ours, or not the start of a block).
#[cold]
pub fn invalid_pointer(op: &str, p: *const u8) {
    crate::stats::invalid_pointer(op, p);
    eprint(format_args!("hakmem: {op}(): invalid pointer {p:p}\n"));
    if settings().on_invalid == OnInvalid::Abort {
        hakmem_os::abort();
    }
}

/// This thread's heap pointer: null before its first allocation, [`DEAD`] after exit. The one
/// accessor: its TLS model is chosen in [`crate::tls`].
#[inline(always)]
pub fn heap_ptr() -> *mut Heap {
    crate::tls::get()
}

/// This thread's heap, creating it on first use. `None` after the thread's exit clean-up, or
/// when the OS refuses memory.
#[cold]
pub fn heap_slow() -> Option<NonNull<Heap>> {
    let h = heap_ptr();
    if h == DEAD {
        return None;
    }
    if let Some(h) = NonNull::new(h) {
        return Some(h);
    }
    let ctx = ctx_or_init()?;
    // A heap an exited thread parked, whole, if any (hot_heap H18).
    let heap = ctx.take_or_new_heap()?;
    crate::tls::set(heap.as_ptr());
    if crate::profile::active() {
        // SAFETY: this thread's live heap, just set.
        unsafe { crate::profile::start_thread(heap.as_ptr()) };
    }
    // SAFETY: the key was created at init; a key below 32 needs no allocation to set.
    unsafe { libc::pthread_setspecific(KEY, heap.as_ptr().cast()) };
    // A heap made during glibc's last pass over the TSD destructors is never handed to
    // `thread_exit` (F5). Every heap is tagged with its thread, and each new thread looks at one
    // other heap, in turn, and retires it if its thread has ended: such a heap is reclaimed
    // within as many thread starts as there are live heaps.
    // SAFETY: just made, ours.
    unsafe { ctx.set_tag(heap, thread_tag()) };
    // SAFETY: as in `reap_ended_threads`: `thread_gone` is true only for an ended thread.
    unsafe { ctx.reap_one(thread_gone) };
    Some(heap)
}

/// This thread's tag: the process id above the thread id.
fn thread_tag() -> u64 {
    u64::from(hakmem_os::pid()) << 32 | u64::from(hakmem_os::thread_id())
}

/// True when the thread tagged `tag` has ended. Never true for a heap made before a `fork`
/// (its thread ids mean nothing in the child, and its state may be mid-operation), nor for a
/// thread that may run again: only the kernel's "no such thread" counts
/// ([`hakmem_os::thread_gone`]).
fn thread_gone(tag: u64) -> bool {
    hakmem_os::thread_gone((tag >> 32) as u32, tag as u32)
}

/// The thread-exit destructor. Other TSD destructors may run after it and still allocate and
/// free, so it keeps the heap through glibc's passes by re-arming the key (setting it again
/// makes glibc run another pass, up to [`DESTRUCTOR_ITERATIONS`]); late allocations and frees
/// use the real heap. Only at the last pass is the heap torn down; after that the thread's calls
/// take the orphan paths.
extern "C" fn thread_exit(arg: *mut libc::c_void) {
    let Some(heap) = NonNull::new(arg.cast::<Heap>()) else {
        return;
    };
    let pass = EXIT_PASSES.with(|p| {
        let n = p.get().saturating_add(1);
        p.set(n);
        n
    });
    if pass < DESTRUCTOR_ITERATIONS {
        // SAFETY: the key exists (we are its destructor); glibc sets a value during its
        // destructor passes without allocating for keys below 32.
        if unsafe { libc::pthread_setspecific(KEY, arg) } == 0 {
            return;
        }
    }
    crate::tls::set(DEAD);
    if let Some(ctx) = ctx() {
        // SAFETY: this thread's own heap (from `take_or_new_heap`); the thread uses only
        // orphan paths from now on.
        unsafe { ctx.park_heap(heap) };
    }
}

/// The exit report's handler (`HAKMEM_STATS=1`, registered at start-up): the threads that have
/// ended are reaped first, so the report counts only what live threads hold.
extern "C" fn at_exit() {
    crate::stats::at_exit(|| {
        reap_ended_threads();
        crate::stats::snapshot(late_heap_made())
    });
}

/// True while the locks of [`fork_prepare`] are held, for [`fork_parent`] and [`fork_child`]:
/// a `prepare` that finds the process single-threaded takes nothing, and its `parent` and
/// `child` then release nothing.
static FORK_LOCKED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// stdio's list lock and glibc's own record of whether the process has ever had a second
/// thread (`docs/PRELOAD.md`, "fork").
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod stdio {
    extern "C" {
        /// Non-zero while the process has had one thread only (glibc 2.32 and later).
        static __libc_single_threaded: core::ffi::c_char;
        fn _IO_list_lock();
        fn _IO_list_unlock();
        fn _IO_list_resetlock();
    }

    /// True when the process has one thread, so no other thread can hold a lock of ours.
    pub fn single_threaded() -> bool {
        // SAFETY: a byte glibc exports for exactly this test; read once, racing with nothing
        // that matters (it goes from 1 to 0 only when this thread creates a thread).
        unsafe { core::ptr::read_volatile(&raw const __libc_single_threaded) != 0 }
    }

    /// Takes stdio's list lock (recursive: glibc's `fork` takes it again after the prepare
    /// handlers).
    pub fn lock() {
        // SAFETY: glibc's exported lock of its list of FILEs; no precondition.
        unsafe { _IO_list_lock() }
    }

    /// Releases [`lock`] in the parent.
    pub fn unlock() {
        // SAFETY: `lock` took it on this thread (fork_prepare), and glibc's `fork` has already
        // released its own recursive take before the parent handlers run.
        unsafe { _IO_list_unlock() }
    }

    /// Makes the list lock free in a child: glibc's `fork` does the same in a child of a
    /// multi-threaded process, so doing it again is harmless, and it covers the case it skips.
    pub fn reset_in_child() {
        // SAFETY: in a forked child only this thread runs; the lock's holder was the forking
        // thread, which is this one.
        unsafe { _IO_list_resetlock() }
    }
}

/// Elsewhere: no stdio lock to order against, and no cheap way to know the thread count.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod stdio {
    pub fn single_threaded() -> bool {
        false
    }
    pub fn lock() {}
    pub fn unlock() {}
    pub fn reset_in_child() {}
}

/// `fork`'s prepare handler. With one thread it takes nothing, as glibc does: no other thread
/// can hold a lock of ours, and a signal handler that forks while this thread is inside the
/// allocator must not wait for itself (the child resumes the interrupted call, which releases
/// what it holds). Otherwise it takes stdio's list lock first, then every allocator lock: the
/// order glibc's `fork` uses for its own malloc locks (glibc bug 19431), so a thread that holds a
/// FILE's lock and waits for an allocator lock inside `getline`'s `realloc` always finishes.
extern "C" fn fork_prepare() {
    if stdio::single_threaded() {
        return;
    }
    stdio::lock();
    // The late heap's lock first: its holder may take the context's locks.
    LATE.lock_for_fork();
    // Then the medium tier's: it is never held while another is taken (medium M2).
    hakmem_medium::lock_for_fork();
    if let Some(c) = ctx() {
        c.lock_all();
    }
    FORK_LOCKED.store(true, Ordering::Relaxed);
}

extern "C" fn fork_parent() {
    if !FORK_LOCKED.swap(false, Ordering::Relaxed) {
        return;
    }
    if let Some(c) = ctx() {
        // SAFETY: fork_prepare took every lock on this thread just before the fork.
        unsafe { c.unlock_all() };
    }
    // SAFETY: fork_prepare took it with lock_for_fork on this thread.
    unsafe { hakmem_medium::force_unlock() };
    // SAFETY: fork_prepare took it with lock_for_fork, and nothing references its value.
    unsafe { LATE.force_unlock() };
    stdio::unlock();
}

extern "C" fn fork_child() {
    if !FORK_LOCKED.swap(false, Ordering::Relaxed) {
        return;
    }
    // Only the forking thread survives. Its heap is intact; the other threads' heaps stay as
    // they were (their superslabs keep owners that never run again, so their blocks freed by
    // the child wait on remote stacks: leaked in the child, never corrupted).
    if let Some(c) = ctx() {
        // SAFETY: the parent's fork_prepare took every lock, the heap list's included; this is
        // the only thread left.
        unsafe {
            c.after_fork_in_child();
            c.unlock_all();
        }
        // The other threads' lookup sections and grace periods ended with them (registry R6);
        // left counted, they would make every withdrawal in the child wait forever.
        // SAFETY: the only thread left, and not inside a free (fork is not called from one).
        unsafe { c.registry.forget_sections() };
    }
    // SAFETY: as in fork_parent; the parent's prepare took it.
    unsafe { hakmem_medium::force_unlock() };
    // SAFETY: as in fork_parent; the parent's prepare took it.
    unsafe { LATE.force_unlock() };
    stdio::reset_in_child();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_up_left_busy_by_the_parent_is_claimed_in_a_forked_child() {
        // F8: a thread of this process is "inside init" (BUSY with our pid) when another forks.
        let state = AtomicUsize::new(getpid() << 2 | BUSY);
        // SAFETY: the child only calls async-signal-safe functions besides `claim`, which
        // spins on an atomic and calls getpid.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork");
        if child == 0 {
            // SAFETY: as above. The alarm ends a child that spins for ever (the bug).
            unsafe {
                libc::alarm(20);
                let won = claim(&state) == Claim::Won;
                libc::_exit(if won { 0 } else { 1 });
            }
        }
        let mut status = 0;
        // SAFETY: our child.
        assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the child claimed start-up instead of spinning (status {status:#x})"
        );
        // In the parent, the BUSY is its own: it is left to its owner.
        assert_eq!(state.load(Ordering::Relaxed) & 3, BUSY);
    }

    #[test]
    fn claim_waits_for_nothing_when_uninit_or_ready() {
        assert_eq!(claim(&AtomicUsize::new(UNINIT)), Claim::Won);
        assert_eq!(claim(&AtomicUsize::new(READY)), Claim::Ready);
    }
}
