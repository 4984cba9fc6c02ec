//! Bad frees: an invalid pointer aborts with a message naming it, and goes on with
//! `HAKMEM_INVALID_FREE=warn`; a double free is detected under `HAKMEM_CHECK=1`.
use hakmem_tests::{addresses_after, run, Harness, Outcome};

fn h() -> &'static Harness {
    Harness::get(env!("CARGO_TARGET_TMPDIR"))
}

const INVALID: &str = "hakmem: free(): invalid pointer ";
const DOUBLE: &str = "hakmem: free(): double free detected ";

/// Checks that stderr reports the pointer the program announced, after one of `prefixes`.
fn assert_reported(out: &Outcome, prefixes: &[&str]) {
    let ptr = out.stdout_pointer("pointer ");
    let reported: Vec<usize> = prefixes
        .iter()
        .flat_map(|p| addresses_after(&out.stderr, p))
        .collect();
    assert!(
        reported.contains(&ptr),
        "expected {prefixes:?} with {ptr:#x} on stderr, found {reported:x?}\n{out:?}"
    );
}

const INVALID_MODES: [&str; 5] = ["stack", "global", "mmap", "interior", "interior-large"];

#[test]
fn invalid_free_aborts_with_a_message() {
    let h = h();
    let prog = h.c_program("invalid_free");
    for mode in INVALID_MODES {
        let out = run(h.preloaded(&prog).arg(mode));
        out.assert_aborted();
        assert_reported(&out, &[INVALID]);
        assert!(!out.stdout.contains("survived"), "{mode}: went on\n{out:?}");
    }
}

#[test]
fn invalid_free_with_warn_reports_and_goes_on() {
    let h = h();
    let prog = h.c_program("invalid_free");
    for mode in INVALID_MODES {
        let out = run(h
            .preloaded(&prog)
            .arg(mode)
            .env("HAKMEM_INVALID_FREE", "warn"));
        out.assert_success().assert_stdout_has("survived");
        assert_reported(&out, &[INVALID]);
        out.assert_served(1000);
    }
}

/// A large block is unmapped by its first free, so its second free may be reported as an
/// invalid pointer rather than as a double free: either is a correct report.
fn double_free_prefixes(mode: &str) -> &'static [&'static str] {
    if mode == "large" {
        &[DOUBLE, INVALID]
    } else {
        &[DOUBLE]
    }
}

const DOUBLE_MODES: [&str; 4] = ["simple", "interleaved", "remote", "large"];

#[test]
fn double_free_is_detected_under_hakmem_check() {
    let h = h();
    let prog = h.c_program("double_free");
    for mode in DOUBLE_MODES {
        let out = run(h.preloaded(&prog).arg(mode).env("HAKMEM_CHECK", "1"));
        out.assert_aborted();
        assert_reported(&out, double_free_prefixes(mode));
        assert!(!out.stdout.contains("survived"), "{mode}: went on\n{out:?}");
    }
}

#[test]
fn double_free_with_warn_reports_and_does_not_corrupt() {
    let h = h();
    let prog = h.c_program("double_free");
    for mode in DOUBLE_MODES {
        let out = run(h
            .preloaded(&prog)
            .arg(mode)
            .env("HAKMEM_CHECK", "1")
            .env("HAKMEM_INVALID_FREE", "warn"));
        // The program checks that the block does not come back twice.
        out.assert_success().assert_stdout_has("survived");
        assert_reported(&out, double_free_prefixes(mode));
    }
}
