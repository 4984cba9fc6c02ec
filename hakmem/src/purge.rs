//! Memory given back on time: [`collect`](crate::collect) and the opt-in background purge.
//!
//! Every allocator slow path runs the lru's due purges (`Lru::purge_if_due`: one atomic load,
//! and a clock read only while something is cached); every medium and large call runs the
//! medium tier's purge tick when it is due (medium M3). A program that goes fully idle reaches no
//! slow path, so `HAKMEM_BACKGROUND_PURGE_MS=N` (or `background_purge_ms: N` from code) starts
//! one thread that wakes every `N` ms to do the same. The thread:
//! - starts at load time (an ELF constructor) when the environment sets it, and at start-up
//!   (the first allocation through a [`crate::HakMem::with`] allocator, after hakmem is ready)
//!   when only code does; so never before the C library is initialised. It starts only where
//!   hakmem serves the process from its start: linked into the executable, or the library that
//!   provides the process's `malloc` (`LD_PRELOAD`). A `dlopen`ed copy never starts one;
//! - never allocates, holds no lock while it sleeps, and takes only the lru's lock and the
//!   medium tier's, which fork's `prepare` takes too: a fork never copies them mid-operation. A forked child has no
//!   such thread (only the forking thread survives); its slow paths still purge;
//! - blocks every signal, so signals go to the program's own threads.
//!
//! Loading initialises nothing: the constructor only reads the settings (which leaves settings
//! from code free to arrive with the first allocation), and the thread does nothing until
//! hakmem has started up.
use crate::context::ctx;
use crate::settings::BACKGROUND_PURGE_MS_MAX;
use core::ffi::c_void;
use core::ptr::null_mut;
use core::sync::atomic::{AtomicBool, Ordering};

static STARTED: AtomicBool = AtomicBool::new(false);

/// Runs [`at_load`] when the object holding hakmem is loaded (before `main`, for the executable
/// and for `LD_PRELOAD`).
#[used]
#[link_section = ".init_array"]
static AT_LOAD: extern "C" fn() = at_load;

extern "C" fn at_load() {
    // Only when asked: without the variable, loading reads nothing.
    if hakmem_os::getenv(c"HAKMEM_BACKGROUND_PURGE_MS").is_none() {
        return;
    }
    start_if_set();
}

/// Starts the purge thread if the settings in force ask for one and hakmem serves the process
/// from its start (see the module docs); once per process.
pub fn start_if_set() {
    if STARTED.load(Ordering::Acquire) {
        return;
    }
    let ms = crate::settings::in_force().background_purge_ms;
    if ms > 0 && from_the_start() {
        start(ms);
    }
}

/// The base of the loaded object holding `addr`.
fn object_of(addr: *const c_void) -> Option<usize> {
    if addr.is_null() {
        return None;
    }
    // SAFETY: Dl_info is plain data; all-zero is a valid value.
    let mut info: libc::Dl_info = unsafe { core::mem::zeroed() };
    // SAFETY: dladdr only reads the loader's tables and fills `info`.
    let found = unsafe { libc::dladdr(addr, &mut info) } != 0;
    (found && !info.dli_fbase.is_null()).then_some(info.dli_fbase as usize)
}

/// True when hakmem is in the executable, or is the library that serves the process's
/// `malloc`: then it was there from the start, not `dlopen`ed later.
fn from_the_start() -> bool {
    let Some(ours) = object_of(at_load as *const c_void) else {
        return false;
    };
    // SAFETY: reads the auxiliary vector the kernel gave the process.
    let entry = unsafe { libc::getauxval(libc::AT_ENTRY) } as *const c_void;
    if object_of(entry) == Some(ours) {
        return true;
    }
    // SAFETY: a NUL-terminated name; RTLD_DEFAULT looks it up in the global scope, in load
    // order, as the program's own calls resolve it.
    let malloc = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"malloc".as_ptr()) };
    object_of(malloc) == Some(ours)
}

/// Starts the purge thread, once.
fn start(ms: u64) {
    if STARTED.swap(true, Ordering::AcqRel) {
        return;
    }
    // SAFETY: plain pthread and signal calls on initialised locals; the thread gets its period
    // by value and touches only the published context.
    let rc = unsafe {
        let mut attr: libc::pthread_attr_t = core::mem::zeroed();
        libc::pthread_attr_init(&mut attr);
        libc::pthread_attr_setdetachstate(&mut attr, libc::PTHREAD_CREATE_DETACHED);
        libc::pthread_attr_setstacksize(&mut attr, 256 << 10);
        let mut all: libc::sigset_t = core::mem::zeroed();
        let mut old: libc::sigset_t = core::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let mut t: libc::pthread_t = 0;
        let rc = libc::pthread_create(&mut t, &attr, run, ms as usize as *mut c_void);
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, null_mut());
        libc::pthread_attr_destroy(&mut attr);
        rc
    };
    if rc != 0 {
        STARTED.store(false, Ordering::Release);
    }
}

extern "C" fn run(arg: *mut c_void) -> *mut c_void {
    // In range (settings.rs checks it); clamped all the same, so the period is well formed.
    let ms = (arg as usize as u64).clamp(1, BACKGROUND_PURGE_MS_MAX);
    let period = libc::timespec {
        tv_sec: (ms / 1000) as libc::time_t,
        tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long,
    };
    loop {
        // SAFETY: a valid timespec; an interrupted sleep only purges early.
        unsafe { libc::nanosleep(&period, null_mut()) };
        if let Some(c) = ctx() {
            c.expire_parked();
            c.lru.purge_if_due(&c.stats);
            hakmem_medium::purge_if_due(c);
        }
    }
}
