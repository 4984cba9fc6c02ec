//! Start-up and the per-thread heap pointer.
//!
//! The first allocation initialises everything from static, const-built state: the shared
//! context (with the registry's 16 KiB root inside it) is mapped straight from the OS, settings
//! come from `settings::freeze` (read with `libc::getenv`, possibly earlier, by an error path),
//! and nothing is allocated through hakmem itself. Registry leaves are mapped later, when the
//! first region in their 128 GiB range is registered. A start-up the OS refused leaves the state
//! as it was, and the next call tries again. The thread-exit key is made before the context is
//! published (so every heap can be registered with it); the fork handlers and the exit report
//! are registered after, since glibc may allocate while registering them (that re-entry then
//! finds hakmem ready).
use crate::out::eprint;
use crate::settings::{OnInvalid, Settings};
use core::ptr::{null_mut, NonNull};
use core::sync::atomic::{AtomicPtr, AtomicU8, Ordering};
use hakmem_hot_heap::{Ctx, Heap};
use hakmem_lru::LruConfig;
use hakmem_registry::{LeafSource, Registry};
use hakmem_superslab::{Corrupt, LibcOs, Os, PAGE};

static OS: LibcOs = LibcOs;
static CTX: AtomicPtr<Ctx> = AtomicPtr::new(null_mut());
static STATE: AtomicU8 = AtomicU8::new(UNINIT);
static mut KEY: libc::pthread_key_t = 0;

const UNINIT: u8 = 0;
const BUSY: u8 = 1;
const READY: u8 = 2;

/// Marks a thread whose heap was torn down at exit: later calls take the orphan paths.
pub const DEAD: *mut Heap = core::ptr::dangling_mut::<Heap>();

/// The shared context, if initialised.
#[inline(always)]
pub fn ctx() -> Option<&'static Ctx> {
    // SAFETY: once published, the context lives for the rest of the program.
    unsafe { CTX.load(Ordering::Acquire).as_ref() }
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

#[cold]
fn init() -> Option<&'static Ctx> {
    loop {
        match STATE.compare_exchange(UNINIT, BUSY, Ordering::Acquire, Ordering::Acquire) {
            Ok(_) => break,
            Err(READY) => return ctx(),
            // Another thread is initialising; it allocates nothing through us, so it finishes.
            Err(_) => core::hint::spin_loop(),
        }
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
    CTX.store(ctx.as_ptr(), Ordering::Release);
    STATE.store(READY, Ordering::Release);
    // SAFETY: plain C callbacks. glibc may allocate while registering them; that re-entry finds
    // the context published and goes through.
    unsafe { libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child)) };
    // Also after READY, for the same reason (atexit may allocate past its static slots).
    crate::stats::after_start_up();
    // SAFETY: published above.
    Some(unsafe { &*ctx.as_ptr() })
}

fn build(s: Settings) -> Option<NonNull<Ctx>> {
    // The bootstrap mapping is counted once the context (and its counters) exist.
    let scratch = hakmem_stats::GlobalStats::new();
    let len = (core::mem::size_of::<Ctx>() + PAGE - 1) & !(PAGE - 1);
    let mem = OS.map(len, PAGE, &scratch)?.cast::<Ctx>();
    // The registry maps nothing yet: its leaves come from LEAVES on demand.
    let registry = Registry::new(&LEAVES);
    let lru = LruConfig {
        max_bytes: s.lru_mb << 20,
        decay_ns: s.lru_decay_ms * 1_000_000,
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
        (layout.size() + PAGE - 1) & !(PAGE - 1)
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
        if layout.size() == 0 || layout.align() > PAGE {
            return None;
        }
        // A leaf is address space reserved (MAP_NORESERVE, touched only under live regions):
        // counted as a reservation, apart from the memory mapped.
        let len = Self::len(layout);
        let leaf = OS.map(len, PAGE, &hakmem_stats::GlobalStats::new());
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
    }
    if settings().on_invalid == OnInvalid::Abort {
        // SAFETY: abort never returns and touches no Rust state.
        unsafe { libc::abort() };
    }
}

/// Reports `p`, which `op` cannot accept (not ours, or not the start of a block).
#[cold]
pub fn invalid_pointer(op: &str, p: *const u8) {
    crate::stats::invalid_pointer(op, p);
    eprint(format_args!("hakmem: {op}(): invalid pointer {p:p}\n"));
    if settings().on_invalid == OnInvalid::Abort {
        // SAFETY: as above.
        unsafe { libc::abort() };
    }
}

/// This thread's heap pointer: null before its first allocation, [`DEAD`] after exit. The one
/// accessor: its TLS model is chosen in [`crate::tls`].
#[inline(always)]
pub fn heap_ptr() -> *mut Heap {
    crate::tls::get()
}

/// Sets this thread's heap pointer to `h` and returns the old one. The tracing hook sets
/// [`DEAD`] while a subscriber runs, so the subscriber's allocations take the orphan paths and
/// never touch a heap that is in the middle of an operation.
#[cfg(feature = "tracing")]
pub fn swap_heap(h: *mut Heap) -> *mut Heap {
    let old = crate::tls::get();
    crate::tls::set(h);
    old
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
    let heap = ctx.new_heap()?;
    crate::tls::set(heap.as_ptr());
    // SAFETY: the key was created at init; a key below 32 needs no allocation to set.
    unsafe { libc::pthread_setspecific(KEY, heap.as_ptr().cast()) };
    Some(heap)
}

extern "C" fn thread_exit(arg: *mut libc::c_void) {
    let Some(heap) = NonNull::new(arg.cast::<Heap>()) else {
        return;
    };
    crate::tls::set(DEAD);
    if let Some(ctx) = ctx() {
        // SAFETY: this thread's heap; the thread uses only orphan paths from now on.
        unsafe { ctx.retire_heap(heap) };
    }
}

extern "C" fn fork_prepare() {
    if let Some(c) = ctx() {
        c.lock_all();
    }
}

extern "C" fn fork_parent() {
    if let Some(c) = ctx() {
        // SAFETY: fork_prepare took every lock on this thread just before the fork.
        unsafe { c.unlock_all() };
    }
}

extern "C" fn fork_child() {
    // Only the forking thread survives. Its heap is intact; the other threads' heaps stay as
    // they were (their superslabs keep owners that never run again, so their blocks freed by
    // the child wait on remote stacks: leaked in the child, never corrupted).
    if let Some(c) = ctx() {
        // SAFETY: the parent's fork_prepare took every lock; this is the only thread left.
        unsafe { c.unlock_all() };
    }
}
