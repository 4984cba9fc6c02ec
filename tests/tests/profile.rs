//! Heap profiling under LD_PRELOAD (the C lane): `c/prof_sites.c` holds 60/30/10% of about
//! 256 MiB from three call sites across two threads while a fourth churns three times as much,
//! and leaves it all live at exit, so the exit profile (`HAKMEM_PROF_FILE`) is the leak view.
//! The shares are read from the collapsed stacks written beside the pprof file.
use hakmem_tests::{run, Harness};
use std::path::PathBuf;

fn h() -> &'static Harness {
    Harness::get(env!("CARGO_TARGET_TMPDIR"))
}

/// Runs prof_sites with profiling on at `sample` bytes (None: the default) and `extra` settings
/// and arguments; returns the shares of live bytes of the four sites, in percent, and stderr.
fn shares(
    tag: &str,
    sample: Option<&str>,
    args: &[&str],
    extra: &[(&str, &str)],
) -> ([f64; 4], String) {
    let h = h();
    let dir: PathBuf = h.scratch(&format!("prof-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = h.preloaded(h.c_program("prof_sites"));
    cmd.args(args)
        .env("HAKMEM_PROF", "1")
        .env("HAKMEM_PROF_FILE", dir.join("heap.%p.pb.gz"));
    if let Some(s) = sample {
        cmd.env("HAKMEM_PROF_SAMPLE", s);
    }
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let out = run(&mut cmd);
    out.assert_success().assert_stdout_has("prof_sites ok");
    let collapsed: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".pb.gz.collapsed"))
        .collect();
    assert_eq!(
        collapsed.len(),
        1,
        "one process, one profile: {collapsed:?}"
    );
    let pprof = PathBuf::from(
        collapsed[0]
            .to_string_lossy()
            .trim_end_matches(".collapsed"),
    );
    assert!(
        std::fs::metadata(&pprof).unwrap().len() > 100,
        "the pprof file is written"
    );
    let text = std::fs::read_to_string(&collapsed[0]).unwrap();
    let mut by = [0f64; 4];
    let mut total = 0f64;
    for line in text.lines() {
        let (stack, bytes) = line.rsplit_once(' ').expect("stack, then bytes");
        let bytes: f64 = bytes.parse().unwrap();
        total += bytes;
        for (i, site) in ["site_sixty", "site_thirty", "site_ten", "site_churn"]
            .iter()
            .enumerate()
        {
            if stack.split(';').any(|f| f == *site) {
                by[i] += bytes;
            }
        }
    }
    (by.map(|b| 100.0 * b / total), out.stderr.clone())
}

/// At a 16 KiB mean interval each share is within 3 points (many standard errors), and the
/// churning site holds nothing.
#[test]
fn c_live_shares_by_site_are_within_3_points_at_16k() {
    let (s, _) = shares("16k", Some("16384"), &[], &[]);
    for (got, want) in s.iter().zip([60.0, 30.0, 10.0]) {
        assert!((got - want).abs() <= 3.0, "shares {s:?}");
    }
    assert!(s[3] < 0.5, "{s:?}");
}

/// At the default rate (about 500 samples of the live set, a share's standard error about
/// 2 points): within 8 points. With HAKMEM_INVALID_FREE=warn a bad free and a double free of a
/// sampled block are reported and the profile is still written.
#[test]
fn c_live_shares_at_the_default_rate_with_bad_frees_in_warn_mode() {
    let (s, stderr) = shares(
        "default",
        None,
        &["bad"],
        &[("HAKMEM_INVALID_FREE", "warn")],
    );
    for (got, want) in s.iter().zip([60.0, 30.0, 10.0]) {
        assert!((got - want).abs() <= 8.0, "shares {s:?}");
    }
    assert!(s[3] < 0.5, "{s:?}");
    assert!(stderr.contains("invalid pointer"), "{stderr}");
}

/// HAKMEM_PROF_SIGNAL=1: SIGUSR2 writes the profile while the program runs (the program checks
/// the file names its held block's site, then leaves without running exit handlers).
#[test]
fn c_sigusr2_writes_the_profile() {
    let h = h();
    let dir: PathBuf = h.scratch("prof-signal");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = h.preloaded(h.c_program("prof_signal"));
    cmd.arg(&dir)
        .env("HAKMEM_PROF", "1")
        .env("HAKMEM_PROF_SIGNAL", "1")
        .env("HAKMEM_PROF_FILE", dir.join("heap.%p.pb.gz"));
    run(&mut cmd)
        .assert_success()
        .assert_stdout_has("prof_signal ok");
}
