//! Settings from code are settings (issue 19): each is range-checked as the environment's value
//! is (a warning naming the source, and the default), none can hang or overflow start-up, and
//! each takes effect, the background purge thread included.
//!
//! The global allocator hands every call to one of several `HakMem`s, chosen once per process by
//! `HAKMEM_TESTS_SETTINGS` (unset in this, the parent, process: plain `HakMem`), so that each
//! child process starts hakmem up with the settings from code its case names, and a value that
//! hung start-up hangs only a child, which [`common::child`]'s deadline turns into a failure.
use core::alloc::{GlobalAlloc, Layout};
use core::ffi::CStr;
use core::sync::atomic::{AtomicU8, Ordering};
use hakmem::{Event, HakMem, Settings};
mod common;
use common::child;

/// `u64::MAX` ms of decay: `* 1_000_000` overflowed at start-up.
static DECAY: HakMem = HakMem::with(Settings {
    lru_decay_ms: u64::MAX,
    ..Settings::DEFAULT
});

/// A `HAKMEM_STATS_FILE` of 1100 bytes (the most is 1023).
const LONG_PATH: &CStr = {
    const BYTES: [u8; 1101] = {
        let mut b = [b'x'; 1101];
        b[0] = b'/';
        b[1100] = 0;
        b
    };
    match CStr::from_bytes_with_nul(&BYTES) {
        Ok(p) => p,
        Err(_) => panic!("one NUL, at the end"),
    }
};

/// Past each documented maximum.
static RANGE: HakMem = HakMem::with(Settings {
    lru_mb: 5_000_000,
    background_purge_ms: 3_600_001,
    stats_file: Some(LONG_PATH),
    stats: true,
    ..Settings::DEFAULT
});

/// A background purge every 10 ms, and a short decay.
static PURGE: HakMem = HakMem::with(Settings {
    background_purge_ms: 10,
    lru_decay_ms: 50,
    lru_mb: 64,
    ..Settings::DEFAULT
});

static PLAIN: HakMem = HakMem;

struct Chosen;

#[global_allocator]
static A: Chosen = Chosen;

/// The `HakMem` this process uses (see the module docs).
fn chosen() -> &'static HakMem {
    static CASE: AtomicU8 = AtomicU8::new(0);
    let mut c = CASE.load(Ordering::Relaxed);
    if c == 0 {
        // SAFETY: a NUL-terminated name; getenv does not allocate, and returns null or a
        // NUL-terminated string.
        let v = unsafe { libc::getenv(c"HAKMEM_TESTS_SETTINGS".as_ptr()) };
        let v = if v.is_null() {
            &[][..]
        } else {
            // SAFETY: as above.
            unsafe { CStr::from_ptr(v) }.to_bytes()
        };
        c = match v {
            b"decay" => 2,
            b"range" => 3,
            b"purge" => 4,
            _ => 1,
        };
        CASE.store(c, Ordering::Relaxed);
    }
    match c {
        2 => &DECAY,
        3 => &RANGE,
        4 => &PURGE,
        _ => &PLAIN,
    }
}

// SAFETY: forwards every call to one `HakMem`, the same for the whole process.
unsafe impl GlobalAlloc for Chosen {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        unsafe { chosen().alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded; every `HakMem` is the same allocator.
        unsafe { chosen().dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        unsafe { chosen().alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded.
        unsafe { chosen().realloc(ptr, layout, new_size) }
    }
}

#[test]
#[ignore = "run by the tests below, in a child process"]
fn child_allocates_and_prints_the_settings() {
    let blocks: Vec<Vec<u8>> = (0..8).map(|i| vec![i as u8; 1 << 20]).collect();
    drop(blocks);
    print!("{}", hakmem::settings());
    println!("went on");
}

/// Runs the child with the settings from code of `case` (and `env`).
fn run(name: &str, case: &str, env: &[(&str, &str)]) -> (String, String) {
    let mut all = vec![("HAKMEM_TESTS_SETTINGS", case)];
    all.extend_from_slice(env);
    let out = child(name, &all);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    (stdout, stderr)
}

#[test]
fn a_decay_that_overflowed_start_up_gets_the_warning_and_the_default() {
    let (stdout, stderr) = run("child_allocates_and_prints_the_settings", "decay", &[]);
    assert!(stdout.contains("went on"), "{stdout}");
    assert!(
        stdout.contains("HAKMEM_LRU_DECAY_MS=1000 (default)\n"),
        "{stdout}"
    );
    assert!(
        stderr.contains(
            "hakmem: warning: HAKMEM_LRU_DECAY_MS=\"18446744073709551615\" (from code) is out \
             of range (valid: 0 to 86400000); using 1000\n"
        ),
        "{stderr}"
    );
}

#[test]
fn code_values_out_of_range_get_the_environments_warning_and_the_default() {
    let (stdout, stderr) = run("child_allocates_and_prints_the_settings", "range", &[]);
    assert!(stdout.contains("went on"), "{stdout}");
    for line in [
        "HAKMEM_LRU_MB=256 (default)\n",
        "HAKMEM_BACKGROUND_PURGE_MS=0 (default)\n",
        "HAKMEM_STATS_FILE=(stderr) (default)\n",
        "HAKMEM_STATS=1 (code)\n",
    ] {
        assert!(stdout.contains(line), "{line}: {stdout}");
    }
    for warning in [
        "hakmem: warning: HAKMEM_LRU_MB=\"5000000\" (from code) is out of range (valid: 0 to \
         1048576); using 256\n",
        "hakmem: warning: HAKMEM_BACKGROUND_PURGE_MS=\"3600001\" (from code) is out of range \
         (valid: 0 to 3600000); using 0\n",
        "(from code) is not valid (expected a path of at most 1023 bytes); using the report on \
         stderr\n",
    ] {
        assert!(stderr.contains(warning), "{warning}: {stderr}");
    }
    // Each warning once, and the report on stderr.
    assert_eq!(stderr.matches("hakmem: warning:").count(), 3, "{stderr}");
    assert!(stderr.contains("hakmem: statistics for pid "), "{stderr}");

    // The same value from the environment: the same warning, naming the environment.
    let (stdout, stderr) = run(
        "child_allocates_and_prints_the_settings",
        "range",
        &[
            ("HAKMEM_LRU_MB", "5000000"),
            ("HAKMEM_BACKGROUND_PURGE_MS", "7"),
        ],
    );
    assert!(
        stderr.contains(
            "hakmem: warning: HAKMEM_LRU_MB=\"5000000\" (from the environment) is out of range \
             (valid: 0 to 1048576); using 256\n"
        ),
        "{stderr}"
    );
    assert!(stdout.contains("HAKMEM_LRU_MB=256 (default)\n"), "{stdout}");
    // A valid value from the environment overrides the bad one from code, which is then not
    // used, so not warned about.
    assert!(
        stdout.contains("HAKMEM_BACKGROUND_PURGE_MS=7 (env)\n"),
        "{stdout}"
    );
    assert!(!stderr.contains("HAKMEM_BACKGROUND_PURGE_MS="), "{stderr}");
}

#[test]
#[ignore = "run by a_background_purge_from_code_runs_while_the_program_is_idle"]
fn child_frees_then_goes_idle() {
    print!("{}", hakmem::settings());
    let blocks: Vec<Vec<u8>> = (0..8).map(|i| vec![i as u8; 4 << 20]).collect();
    drop(blocks);
    let s = hakmem::stats();
    assert!(s.count(Event::SsCached) > 0, "the blocks went to the cache");
    println!("cached after the frees: {}", s.cached_bytes());
    // From here on this thread makes no allocator call (sleep and stats() allocate nothing):
    // only the background thread can run the decay. Wait as long as a busy machine may need.
    let mut left = 0;
    for _ in 0..3000 {
        std::thread::sleep(std::time::Duration::from_millis(10));
        left = hakmem::stats().cached_bytes();
        if left == 0 {
            break;
        }
    }
    println!("cached after going idle: {left}");
}

#[test]
fn a_background_purge_from_code_runs_while_the_program_is_idle() {
    let (stdout, _) = run("child_frees_then_goes_idle", "purge", &[]);
    assert!(
        stdout.contains("HAKMEM_BACKGROUND_PURGE_MS=10 (code)\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("cached after going idle: 0\n"),
        "the purge thread decayed the cache: {stdout}"
    );

    // With the period from the environment, the other settings from code still hold.
    let (stdout, _) = run(
        "child_frees_then_goes_idle",
        "purge",
        &[("HAKMEM_BACKGROUND_PURGE_MS", "20")],
    );
    assert!(
        stdout.contains("HAKMEM_BACKGROUND_PURGE_MS=20 (env)\n"),
        "{stdout}"
    );
    assert!(stdout.contains("HAKMEM_LRU_MB=64 (code)\n"), "{stdout}");
    assert!(
        stdout.contains("HAKMEM_LRU_DECAY_MS=50 (code)\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("cached after going idle: 0\n"),
        "the purge thread decayed the cache: {stdout}"
    );
}
