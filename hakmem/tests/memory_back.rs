//! Memory given back on time, from Rust: `hakmem::collect()`, the purges that any slow path
//! runs, and the opt-in background purge.
//!
//! Each test runs its body in a child process (this test binary again, with one test selected:
//! `common::in_child`), so the resident set it reads from /proc/self/statm is that
//! body's alone, and settings read at start-up can be set per test. No test asserts on timing:
//! the ones that wait poll up to a generous bound, and print how long it took.
use std::time::{Duration, Instant};

#[global_allocator]
static A: hakmem::HakMem = hakmem::HakMem;

mod common;

const MIB: usize = 1 << 20;

/// The resident set, from /proc/self/statm, read without allocating (a stack buffer), so that
/// reading it reaches no allocator slow path.
fn rss() -> usize {
    let mut buf = [0u8; 256];
    // SAFETY: a NUL-terminated path; read fills at most `buf.len()` bytes of our buffer.
    let n = unsafe {
        let fd = libc::open(c"/proc/self/statm".as_ptr(), libc::O_RDONLY);
        assert!(fd >= 0, "open /proc/self/statm");
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        n
    };
    assert!(n > 0, "read /proc/self/statm");
    let text = core::str::from_utf8(&buf[..n as usize]).expect("statm is ASCII");
    let pages: usize = text
        .split_ascii_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .expect("statm's second field");
    // SAFETY: sysconf only reads a value the kernel gave the process.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize
}

/// 200 x 1 MiB, each written in full, then all dropped. Returns the resident set just after.
fn burst() -> usize {
    let blocks: Vec<Vec<u8>> = (0..200).map(|i| vec![i as u8 + 1; MIB]).collect();
    std::hint::black_box(&blocks);
    drop(blocks);
    rss()
}

/// True in the child process that runs `test`; elsewhere runs that child (with `env`), checks
/// it passed and printed `{role} ok`, and returns false.
fn in_role(test: &str, role: &str, env: &[(&str, &str)]) -> bool {
    let Some(out) = common::in_child(test, env) else {
        return true;
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "child {test} failed: {:?}\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("{role} ok")), "{stdout}");
    print!("{stdout}");
    false
}

#[test]
fn collect_gives_a_burst_back_at_once() {
    if !in_role("collect_gives_a_burst_back_at_once", "collect", &[]) {
        return;
    }
    let base = rss();
    let freed = burst();
    let given = hakmem::collect();
    let after = rss();
    println!(
        "base {} MiB, after the frees {} MiB, collect gave back {} MiB, now {} MiB",
        base / MIB,
        freed / MIB,
        given / MIB,
        after / MIB
    );
    assert!(given > 0, "the freed blocks were cached");
    assert!(
        after <= base + 8 * MIB,
        "within 8 MiB of the baseline at once"
    );
    assert_eq!(hakmem::collect(), 0, "nothing left to give back");
    println!("collect ok");
}

/// Polls until the resident set is within `slack` of `base`, for at most 20 s, calling `work`
/// in between; returns the resident set and the time it took.
fn poll_back(base: usize, slack: usize, mut work: impl FnMut()) -> (usize, Duration) {
    let start = Instant::now();
    let mut now = rss();
    while now > base + slack && start.elapsed() < Duration::from_secs(20) {
        work();
        now = rss();
    }
    (now, start.elapsed())
}

#[test]
fn small_allocations_alone_bring_a_burst_back() {
    if !in_role("small_allocations_alone_bring_a_burst_back", "small", &[]) {
        return;
    }
    // Keep a working set of small blocks, replaced in turn: refills reach the slow path.
    let mut keep: Vec<Box<[u8]>> = (0..4096).map(|i| vec![0u8; 16 + i % 512].into()).collect();
    let base = rss();
    let freed = burst();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let (now, took) = poll_back(base, 24 * MIB, || {
        for _ in 0..256 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let (slot, size) = ((x >> 20) as usize % 4096, 16 + (x >> 40) as usize % 1024);
            keep[slot] = vec![1u8; size].into();
        }
        std::thread::sleep(Duration::from_millis(1));
    });
    println!(
        "base {} MiB, after the frees {} MiB, back to {} MiB after {} ms of small allocations",
        base / MIB,
        freed / MIB,
        now / MIB,
        took.as_millis()
    );
    assert!(now <= base + 24 * MIB, "back within 24 MiB");
    println!("small ok");
}

#[test]
fn an_idle_program_gets_a_burst_back_with_the_background_purge() {
    if !in_role(
        "an_idle_program_gets_a_burst_back_with_the_background_purge",
        "idle",
        &[("HAKMEM_BACKGROUND_PURGE_MS", "20")],
    ) {
        return;
    }
    let base = rss();
    let freed = burst();
    // No allocator call at all from here: only the background thread can purge.
    let (now, took) = poll_back(base, 24 * MIB, || {
        std::thread::sleep(Duration::from_millis(10))
    });
    println!(
        "base {} MiB, after the frees {} MiB, back to {} MiB after {} ms idle",
        base / MIB,
        freed / MIB,
        now / MIB,
        took.as_millis()
    );
    assert!(now <= base + 24 * MIB, "back within 24 MiB");
    println!("idle ok");
}

/// 800 medium blocks of 250 KiB (about 200 MiB), each written in full, then all but every 8th
/// dropped: the medium regions stay (each keeps a block), mostly free pages. Returns the blocks
/// kept and the resident set just after.
fn medium_burst() -> (Vec<Vec<u8>>, usize) {
    let mut blocks: Vec<Vec<u8>> = (0..800).map(|i| vec![i as u8 | 1; 250 << 10]).collect();
    std::hint::black_box(&blocks);
    let kept: Vec<Vec<u8>> = blocks.drain(..).step_by(8).collect();
    (kept, rss())
}

/// The bytes `medium_burst` keeps: 100 blocks of 250 KiB (whole pages: 252 KiB).
const MEDIUM_KEPT: usize = 100 * (252 << 10);

#[test]
fn collect_gives_free_pages_of_medium_regions_back() {
    if !in_role(
        "collect_gives_free_pages_of_medium_regions_back",
        "medium-collect",
        &[],
    ) {
        return;
    }
    let base = rss();
    let (kept, freed) = medium_burst();
    let given = hakmem::collect();
    let after = rss();
    println!(
        "base {} MiB, after the frees {} MiB, collect gave back {} MiB, now {} MiB",
        base / MIB,
        freed / MIB,
        given / MIB,
        after / MIB
    );
    assert!(freed > base + 150 * MIB, "the burst was resident");
    assert!(given >= 100 * MIB, "the free pages were purged");
    assert!(after <= base + MEDIUM_KEPT + 8 * MIB, "back at once");
    assert!(
        kept.iter().all(|b| b.iter().all(|&x| x == b[0])),
        "kept blocks intact"
    );
    println!("medium-collect ok");
}

#[test]
fn medium_calls_alone_bring_free_medium_pages_back() {
    if !in_role(
        "medium_calls_alone_bring_free_medium_pages_back",
        "medium-calls",
        &[],
    ) {
        return;
    }
    let base = rss();
    let (kept, freed) = medium_burst();
    let (now, took) = poll_back(base + MEDIUM_KEPT, 24 * MIB, || {
        drop(std::hint::black_box(vec![1u8; 100 << 10]));
        std::thread::sleep(Duration::from_millis(1));
    });
    println!(
        "base {} MiB, after the frees {} MiB, back to {} MiB after {} ms of medium calls",
        base / MIB,
        freed / MIB,
        now / MIB,
        took.as_millis()
    );
    assert!(now <= base + MEDIUM_KEPT + 24 * MIB, "back within 24 MiB");
    drop(kept);
    println!("medium-calls ok");
}

#[test]
fn an_idle_program_gets_free_medium_pages_back_with_the_background_purge() {
    if !in_role(
        "an_idle_program_gets_free_medium_pages_back_with_the_background_purge",
        "medium-idle",
        &[("HAKMEM_BACKGROUND_PURGE_MS", "20")],
    ) {
        return;
    }
    let base = rss();
    let (kept, freed) = medium_burst();
    // No allocator call at all from here: only the background thread can purge.
    let (now, took) = poll_back(base + MEDIUM_KEPT, 24 * MIB, || {
        std::thread::sleep(Duration::from_millis(10))
    });
    println!(
        "base {} MiB, after the frees {} MiB, back to {} MiB after {} ms idle",
        base / MIB,
        freed / MIB,
        now / MIB,
        took.as_millis()
    );
    assert!(now <= base + MEDIUM_KEPT + 24 * MIB, "back within 24 MiB");
    drop(kept);
    println!("medium-idle ok");
}
