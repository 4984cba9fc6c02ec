//! fork beside other threads and from signal handlers, on libhakmem.so: the cases where an
//! allocator's fork handlers can deadlock (`docs/PRELOAD.md`, "fork"). Each program runs 20 times
//! under a deadline, so a deadlock that strikes one run in several still fails the test, and a
//! hung program is killed and reported instead of hanging the suite.
use hakmem_tests::{run_for, Harness};
use std::time::Duration;

fn h() -> &'static Harness {
    Harness::get(env!("CARGO_TARGET_TMPDIR"))
}

/// Generous: each run takes about a second on an idle machine (glibc's too).
const DEADLINE: Duration = Duration::from_secs(120);
const RUNS: usize = 20;

/// Runs `prog` with `args` and `env` [`RUNS`] times; each run must print `ok_text`.
fn run_repeatedly(prog: &str, args: &[&str], env: &[(&str, &str)], ok_text: &str) {
    let h = h();
    let exe = h.c_program(prog);
    for i in 0..RUNS {
        let mut cmd = h.preloaded(&exe);
        cmd.args(args).envs(env.iter().copied());
        let out = run_for(&mut cmd, DEADLINE);
        assert!(
            out.status.success() && out.stdout.contains(ok_text),
            "run {i} of {prog} {args:?} {env:?} failed\n{out:?}"
        );
    }
}

#[test]
fn fork_while_threads_hold_stdio_locks_never_deadlocks() {
    // glibc's bug 19431: getline holds a FILE's lock and reallocs inside it, fflush(NULL) holds
    // stdio's list and waits for that FILE, and a third thread forks.
    run_repeatedly("fork_stdio", &["100"], &[], "fork_stdio ok: 100 forks");
}

#[test]
fn fork_from_a_signal_handler_inside_the_allocator_completes() {
    // One thread: the handler's fork must not wait for a lock its own thread holds.
    run_repeatedly("fork_signal", &["100"], &[], "fork_signal ok: 100 forks");
}

#[test]
fn three_hundred_forks_of_a_four_thread_parent_allocating_in_every_tier() {
    for check in ["0", "1"] {
        let h = h();
        let mut cmd = h.preloaded(h.c_program("fork"));
        cmd.arg("300").env("HAKMEM_CHECK", check);
        let out = run_for(&mut cmd, Duration::from_secs(300));
        assert!(
            out.status.success() && out.stdout.contains("fork ok: 301 children"),
            "HAKMEM_CHECK={check}\n{out:?}"
        );
    }
}

/// The same with heap profiling sampling every few KiB, so that the parent's threads capture
/// stacks all the time, and so do the children: a capture that took a lock of the loader's at
/// the fork (`dl_iterate_phdr`'s, which glibc's fork does not reset) would leave a child stuck
/// in its first sample (profile PT6).
#[test]
fn forks_while_every_thread_samples_stacks() {
    let h = h();
    let mut cmd = h.preloaded(h.c_program("fork"));
    cmd.arg("100")
        .env("HAKMEM_PROF", "1")
        .env("HAKMEM_PROF_SAMPLE", "4096")
        .env("HAKMEM_PROF_FILE", "");
    let out = run_for(&mut cmd, Duration::from_secs(300));
    assert!(
        out.status.success() && out.stdout.contains("fork ok: 101 children"),
        "{out:?}"
    );
}
