//! The `HAKMEM_STATS` report of a preloaded program never shows a peak resident set below the
//! resident set it reports beside it (issue 19).
use hakmem_tests::{run, Harness};

fn h() -> &'static Harness {
    Harness::get(env!("CARGO_TARGET_TMPDIR"))
}

/// `(resident, peak)` in MiB, as the report's memory line prints them
/// (`resident 2.3 MiB (peak 2.3 MiB)`), one pair per report.
fn resident_and_peak(stderr: &str) -> Vec<(f64, f64)> {
    let number = |s: &str| s.split(' ').next()?.parse::<f64>().ok();
    stderr
        .lines()
        .filter_map(|l| {
            let rest = l.split(", resident ").nth(1)?;
            let peak = rest.split("(peak ").nth(1)?;
            Some((number(rest)?, number(peak)?))
        })
        .collect()
}

/// A command that runs `program` (with `args`) preloaded, started by `sh`, not by this test: the
/// kernel's peak for a process (`getrusage`) starts from the peak of the process that called
/// `exec`, and this test binary's peak would hide the figure under test. `sh` itself is not
/// preloaded.
fn through_sh(h: &Harness, program: &std::path::Path, args: &str) -> std::process::Command {
    let mut cmd = h.preloaded("sh");
    cmd.env_remove("LD_PRELOAD").env_remove("HAKMEM_STATS");
    cmd.arg("-c")
        .arg(format!(
            "LD_PRELOAD=\"$0\" HAKMEM_STATS=1 \"$1\" {args}; status=$?; exit $status"
        ))
        .arg(h.lib())
        .arg(program);
    cmd
}

#[test]
fn the_reported_peak_is_never_below_the_resident_set() {
    let h = h();
    let semantics = h.c_program("semantics");
    // A short program whose resident set is still growing at exit, a few times, and a C
    // program that allocates more.
    let mut runs = Vec::new();
    for _ in 0..5 {
        runs.push(run(&mut through_sh(h, "/bin/echo".as_ref(), "hi")));
    }
    runs.push(run(&mut through_sh(h, &semantics, "")));
    for out in &runs {
        out.assert_success();
        let pairs = resident_and_peak(&out.stderr);
        assert_eq!(pairs.len(), 1, "one report\n{out:?}");
        let (resident, peak) = pairs[0];
        assert!(
            resident > 0.0 && peak >= resident,
            "resident {resident} MiB, peak {peak} MiB\n{out:?}"
        );
    }
}
