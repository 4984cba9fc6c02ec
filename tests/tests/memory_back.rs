//! Memory given back on time under LD_PRELOAD: `malloc_trim`, and the opt-in background purge,
//! which starts only where hakmem serves the process from its start.
use hakmem_tests::{run, run_for, Harness};
use std::time::Duration;

fn h() -> &'static Harness {
    Harness::get(env!("CARGO_TARGET_TMPDIR"))
}

#[test]
fn malloc_trim_gives_a_burst_back_at_once() {
    let h = h();
    let out = run(h.preloaded(h.c_program("trim")).arg("trim"));
    out.assert_success().assert_stdout_has("trim ok");
    out.assert_served(200);
}

#[test]
fn an_idle_program_gets_its_memory_back_with_the_background_purge() {
    let h = h();
    let out = run_for(
        h.preloaded(h.c_program("trim"))
            .arg("idle")
            .env("HAKMEM_BACKGROUND_PURGE_MS", "20"),
        Duration::from_secs(60),
    );
    out.assert_success().assert_stdout_has("idle ok");
}

fn thread_count(out: &hakmem_tests::Outcome) -> u32 {
    out.assert_success();
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix("threads "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no thread count\n{out:?}"))
}

#[test]
fn the_background_purge_starts_only_when_asked_and_never_in_a_dlopened_copy() {
    let h = h();
    let prog = h.c_program("trim");
    let off = run(h.preloaded(&prog).arg("threads"));
    assert_eq!(thread_count(&off), 1, "off by default\n{off:?}");
    let on = run(h
        .preloaded(&prog)
        .arg("threads")
        .env("HAKMEM_BACKGROUND_PURGE_MS", "50"));
    assert_eq!(
        thread_count(&on),
        2,
        "started at load under LD_PRELOAD\n{on:?}"
    );
    let dlopened = run(std::process::Command::new(&prog)
        .arg("dlopen")
        .arg(h.lib())
        .env("HAKMEM_BACKGROUND_PURGE_MS", "50"));
    assert_eq!(
        thread_count(&dlopened),
        1,
        "a dlopened copy starts no thread\n{dlopened:?}"
    );
}
