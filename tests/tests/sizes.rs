//! Honest sizes, aligned blocks and huge alignments under LD_PRELOAD (`c/sizes.c`), each scenario
//! run 20 times with a deadline, against glibc's results:
//! - a size the kernel's overcommit policy refuses is NULL with ENOMEM, not a block that meets
//!   the OOM killer on first touch;
//! - 100 000 live `posix_memalign(&p, A, 64)` for A up to 64 KiB all succeed (no mapping each,
//!   so `vm.max_map_count` is no limit), malloc keeps working beside them, and the peak resident
//!   set is at most twice glibc's; such blocks keep their double-free and invalid-pointer reports;
//! - a block aligned to 2^21 .. 2^46 leaves the resident set within 1 MiB of where it was once
//!   freed and trimmed, and an alignment past the address space fails with ENOMEM.
use hakmem_tests::{run_for, Harness, OnBad, Outcome};
use std::process::Command;
use std::time::Duration;

fn h() -> &'static Harness {
    Harness::get(env!("CARGO_TARGET_TMPDIR"))
}

const RUNS: usize = 20;
const DEADLINE: Duration = Duration::from_secs(60);

/// Runs `c/sizes.c` with `args` on hakmem.
fn sizes(args: &[&str]) -> Outcome {
    let h = h();
    run_for(h.preloaded(h.c_program("sizes")).args(args), DEADLINE)
}

/// The number after `key` on a line of stdout.
fn number(out: &Outcome, key: &str) -> u64 {
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key:?} line\n{out:?}"))
}

#[test]
fn sizes_past_ram_and_swap_fail_with_enomem() {
    let policy = std::fs::read_to_string("/proc/sys/vm/overcommit_memory")
        .expect("read vm.overcommit_memory")
        .trim()
        .to_string();
    for _ in 0..RUNS {
        let out = sizes(&["overcommit"]);
        out.assert_success();
        if out.stdout.contains("skip:") {
            // Only another policy may skip: under the default heuristic the check must run.
            assert_ne!(policy, "0", "skipped under overcommit_memory=0\n{out:?}");
            eprintln!("skipped: vm.overcommit_memory is {policy}");
            return;
        }
        out.assert_stdout_has("overcommit ok");
        out.assert_served(1);
    }
}

/// 100 000 live blocks at `align`, 20 times; peak resident set at most twice glibc's.
fn many_aligned(align: &str) {
    let h = h();
    let glibc = run_for(
        Command::new(h.c_program("sizes")).args(["aligned", align]),
        DEADLINE,
    );
    glibc.assert_success().assert_stdout_has("aligned ok");
    let glibc_peak = number(&glibc, "peak_rss_kib ");
    for _ in 0..RUNS {
        let out = sizes(&["aligned", align]);
        out.assert_success().assert_stdout_has("aligned ok");
        out.assert_served(100_000);
        let peak = number(&out, "peak_rss_kib ");
        assert!(
            peak <= 2 * glibc_peak,
            "peak RSS {peak} KiB against glibc's {glibc_peak} KiB\n{out:?}"
        );
    }
}

#[test]
fn a_hundred_thousand_blocks_aligned_to_8_kib_live_at_once() {
    many_aligned("8192");
}

#[test]
fn a_hundred_thousand_blocks_aligned_to_16_kib_live_at_once() {
    many_aligned("16384");
}

#[test]
fn a_hundred_thousand_blocks_aligned_to_64_kib_live_at_once() {
    many_aligned("65536");
}

#[test]
fn aligned_blocks_keep_their_double_free_and_invalid_pointer_reports() {
    let cases = [
        (
            "twice",
            "8192",
            "64",
            "hakmem: free(): double free detected ",
        ),
        (
            "twice",
            "65536",
            "64",
            "hakmem: free(): double free detected ",
        ),
        (
            "twice",
            "65536",
            "100000",
            "hakmem: free(): double free detected ",
        ),
        ("interior", "8192", "64", "hakmem: free(): invalid pointer "),
        (
            "interior",
            "65536",
            "100000",
            "hakmem: free(): invalid pointer ",
        ),
    ];
    for (mode, align, size, report) in cases {
        for on_bad in OnBad::BOTH {
            let h = h();
            let mut cmd = h.preloaded(h.c_program("sizes"));
            cmd.args([mode, align, size]);
            let out = run_for(on_bad.apply(&mut cmd), DEADLINE);
            let ptr = out
                .stdout_address("pointer ")
                .unwrap_or_else(|| panic!("no pointer announced\n{out:?}"));
            let want = format!("{report}{ptr:#x}");
            assert_eq!(
                out.hakmem_messages(),
                [want.as_str()],
                "{mode} {align} {size} ({on_bad:?})\n{out:?}"
            );
            match on_bad {
                OnBad::Abort => {
                    out.assert_aborted();
                }
                OnBad::Warn => {
                    out.assert_success().assert_stdout_has("survived");
                }
            }
        }
    }
}

#[test]
fn huge_alignments_leave_nothing_resident_and_impossible_ones_fail() {
    for _ in 0..RUNS {
        let out = sizes(&["huge"]);
        out.assert_success().assert_stdout_has("huge ok");
        // 2^21 .. 2^42 fit any 47-bit address space that is not crowded: they are served.
        for shift in 21..=42 {
            out.assert_stdout_has(&format!("align 2^{shift} x1: 1 served"));
        }
        out.assert_served(1);
    }
}
