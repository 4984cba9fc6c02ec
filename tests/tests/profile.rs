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

/// Instructions per `malloc(16)` + `free` pair under callgrind, with libhakmem.so `lib`:
/// (Ir at 400 000 pairs - Ir at 200 000) / 200 000, as the bench's `callgrind/c-pair`.
fn pair_instructions(lib: &std::path::Path, tag: &str) -> f64 {
    let h = h();
    let prog = h.c_program("prof_pair");
    let mut ir = Vec::new();
    let dir = h.scratch(&format!("callgrind-{tag}"));
    for n in [200_000u64, 400_000] {
        let out = dir.join(format!("{n}.out"));
        let mut cmd = std::process::Command::new("valgrind");
        cmd.arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={}", out.display()))
            .arg(&prog)
            .arg(n.to_string())
            .env("LD_PRELOAD", lib);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("HAKMEM_") {
                cmd.env_remove(k);
            }
        }
        let o = cmd
            .output()
            .expect("valgrind runs (the off-path test needs it)");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let text = std::fs::read_to_string(&out).unwrap();
        let total = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("summary:")
                    .or_else(|| l.strip_prefix("totals:"))
            })
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .expect("a callgrind total");
        ir.push(total);
    }
    (ir[1] - ir[0]) as f64 / 200_000.0
}

/// With profiling off, the malloc and free fast paths are the same instructions as with the
/// profiler's hooks compiled out (`--cfg hakmem_no_profile`): the C pair's instruction count
/// under callgrind is the same for both libraries.
#[test]
fn c_fast_paths_are_unchanged_with_profiling_off() {
    let h = h();
    // Kept between runs (a scratch directory would be emptied), so cargo rebuilds only what
    // changed.
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("noprof-target");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let built = std::process::Command::new(cargo)
        .args(["build", "--release", "-p", "hakmem-preload", "--target-dir"])
        .arg(&target)
        .current_dir(hakmem_tests::workspace_root())
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("RUSTFLAGS", "--cfg hakmem_no_profile")
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let without = target.join("release").join("libhakmem.so");
    let with = pair_instructions(h.lib(), "with");
    let compiled_out = pair_instructions(&without, "without");
    assert!(
        (with - compiled_out).abs() < 0.01,
        "per pair: {with} with the hooks, {compiled_out} without"
    );
}
