//! Stale pointers freed while other threads unmap what they point into (`c/stale_race.c`): the
//! validation of a pointer found through the registry must never read memory that another
//! thread unmaps meanwhile (hakmem F7, registry R6). Each case runs 20 times in each mode: with
//! `HAKMEM_INVALID_FREE=warn` every bad free is reported as an invalid pointer and the program
//! runs to its end; by default the first report aborts. A read of unmapped memory ends the
//! process with SIGSEGV instead, which fails the case. The freers are interrupted by a timer,
//! and pause whenever it lands inside the allocator, as a preempted thread would: the window
//! between a lookup and its reads, a few instructions, is then wide enough that the code before
//! the lookup sections crashed in most warn runs of each case (docs/results/
//! 2026-12-07-lookup-sections.md).
//!
//! The cases: 60 000-byte blocks whose superslabs are unmapped as soon as they empty
//! (`HAKMEM_LRU_MB=0`), 3 MB blocks each in a region unmapped at its free, and both sizes with
//! the lru on and a decay of 0 ms, so cached regions are reused or unmapped by decay.
use hakmem_tests::{run_for, Harness, OnBad, Outcome};
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

const RUNS: usize = 20;
const SIGABRT: i32 = 6;
const INVALID: &str = "hakmem: free(): invalid pointer 0x";

fn h() -> &'static Harness {
    Harness::get(env!("CARGO_TARGET_TMPDIR"))
}

/// One run of `stale_race KIND` with `env` in `mode`.
fn run_once(kind: &str, env: &[(&str, &str)], mode: OnBad) -> Outcome {
    let h = h();
    let mut cmd = h.preloaded(h.c_program("stale_race"));
    cmd.arg(kind);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_for(mode.apply(&mut cmd), Duration::from_secs(60))
}

/// What a run must have done in `mode`.
fn judge(out: &Outcome, mode: OnBad) -> Result<(), String> {
    let said = out.hakmem_messages();
    if let Some(other) = said.iter().find(|m| !m.starts_with(INVALID)) {
        return Err(format!(
            "a message other than an invalid pointer: {other:?}"
        ));
    }
    match mode {
        OnBad::Warn => {
            if out.status.code() != Some(0) || !out.stdout.contains("survived") {
                return Err(format!(
                    "wanted the program to go on and exit 0, it ended with {}",
                    out.status
                ));
            }
            let bad = hakmem_tests::numbers_after(&out.stdout, "bad frees ");
            if bad != [said.len() as i64] {
                return Err(format!(
                    "the program made {bad:?} bad frees, hakmem reported {}",
                    said.len()
                ));
            }
        }
        OnBad::Abort => {
            // Two freers may both report before the abort ends the process.
            if out.status.signal() != Some(SIGABRT) || said.is_empty() {
                return Err(format!(
                    "wanted SIGABRT after a report, the program ended with {} ({} reports)",
                    out.status,
                    said.len()
                ));
            }
        }
    }
    Ok(())
}

/// Runs `kind` RUNS times in each mode and fails listing every run that went wrong.
fn check(kind: &str, env: &[(&str, &str)]) {
    let mut failures = Vec::new();
    for mode in OnBad::BOTH {
        for i in 0..RUNS {
            let out = run_once(kind, env, mode);
            if let Err(why) = judge(&out, mode) {
                let tail: Vec<&str> = out.stderr.lines().rev().take(3).collect();
                failures.push(format!(
                    "{kind} {mode:?} run {i}: {why}\n    stderr ends: {tail:?}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} runs failed:\n{}",
        failures.len(),
        2 * RUNS,
        failures.join("\n")
    );
}

#[test]
fn stale_pointers_into_superslabs_unmapped_at_once() {
    check("small", &[("HAKMEM_LRU_MB", "0")]);
}

#[test]
fn stale_pointers_into_large_regions_unmapped_at_once() {
    check("large", &[("HAKMEM_LRU_MB", "0")]);
}

#[test]
fn stale_pointers_into_regions_the_lru_reuses_or_unmaps_by_decay() {
    check("decay", &[("HAKMEM_LRU_DECAY_MS", "0")]);
}
