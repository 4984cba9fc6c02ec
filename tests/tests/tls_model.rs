//! libhakmem.so's TLS model and its one limit: a `dlopen` after start-up, when glibc's static
//! TLS surplus may be used up (docs/PRELOAD.md, "Thread-local storage").
//!
//! `c/dlopen_late.c` loads the library with `dlopen` (not preloaded) and uses its malloc family
//! through `dlsym` from several threads, one of which was running before the `dlopen`. With
//! filler libraries of initial-exec TLS loaded first, the surplus is gone, and the library must
//! then be refused cleanly (never crash).
use hakmem_tests::{c_dir, run, Harness, Outcome};
use std::path::PathBuf;
use std::process::Command;

fn h() -> &'static Harness {
    Harness::get(env!("CARGO_TARGET_TMPDIR"))
}

/// Whether this target builds libhakmem.so with the initial-exec model (the preload crate's
/// default feature; see hakmem/src/tls.rs).
const INITIAL_EXEC: bool = cfg!(all(
    target_os = "linux",
    target_env = "gnu",
    any(target_arch = "x86_64", target_arch = "aarch64")
));

/// The message glibc's dlopen gives when the static TLS surplus cannot hold a library.
const NO_STATIC_TLS: &str = "cannot allocate memory in static TLS block";

/// `c/dlopen_late.c` run on the library, after loading `fillers`, with extra environment.
fn late_dlopen(fillers: &[PathBuf], env: &[(&str, &str)]) -> Outcome {
    let h = h();
    let prog = h.c_program("dlopen_late");
    let mut cmd = Command::new(&prog);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("HAKMEM_") || k == "LD_PRELOAD" || k == "GLIBC_TUNABLES" {
            cmd.env_remove(k);
        }
    }
    cmd.env("HAKMEM_STATS", "1").arg(h.lib()).args(fillers);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(&mut cmd)
}

/// Filler libraries that take 4096, 2048, ..., 8 bytes of static TLS each, into `dir`. Loaded
/// largest first, each one that fits is kept, so afterwards less than 8 bytes are left.
fn fillers(dir: &str) -> Vec<PathBuf> {
    let out = h().scratch(dir);
    let src = c_dir().join("dlopen_late_fill.c");
    (3..=12)
        .rev()
        .map(|k| {
            let n = 1usize << k;
            let lib = out.join(format!("libfill{n}.so"));
            let r = Command::new("cc")
                .args(["-O2", "-shared", "-fPIC", "-Wall", "-Wextra"])
                .arg(format!("-DFILL={n}"))
                .arg("-o")
                .arg(&lib)
                .arg(&src)
                .output()
                .expect("run cc");
            assert!(
                r.status.success(),
                "cc {} failed:\n{}",
                src.display(),
                String::from_utf8_lossy(&r.stderr)
            );
            lib
        })
        .collect()
}

/// The library loaded and worked: the program's checks passed and hakmem served it.
fn assert_worked(out: &Outcome) {
    out.assert_success().assert_stdout_has("dlopen_late ok");
    // The 100000-pair loop alone; the report comes from the library's own exit handler.
    out.assert_served(100_000);
}

#[test]
fn late_dlopen_with_static_tls_to_spare_loads_and_every_thread_allocates() {
    let out = late_dlopen(&[], &[]);
    assert_worked(&out);
    let model = if INITIAL_EXEC {
        "static_tls yes"
    } else {
        "static_tls no"
    };
    out.assert_stdout_has(model);
}

#[test]
fn late_dlopen_with_static_tls_used_up_is_refused_cleanly() {
    // A smaller surplus (glibc's optional part set to 0), then the fillers take what is left.
    let libs = fillers("used_up");
    let out = late_dlopen(
        &libs,
        &[("GLIBC_TUNABLES", "glibc.rtld.optional_static_tls=0")],
    );
    // The fillers did their part: some of them took static TLS.
    out.assert_stdout_has(".so: loaded");
    if INITIAL_EXEC {
        out.assert_exit_code(3)
            .assert_stdout_has("dlopen_late refused cleanly")
            .assert_stderr_has(NO_STATIC_TLS)
            .assert_stderr_has("libhakmem.so");
    } else {
        // General-dynamic TLS takes no static TLS: the library loads whatever is left.
        assert_worked(&out);
    }
}

#[test]
fn late_dlopen_without_optional_static_tls_loads_or_is_refused_never_crashes() {
    // With glibc 2.36 the non-optional surplus (about 1 KiB) still holds the library; other
    // glibc versions may size it differently. Either outcome is clean; a crash is not.
    let out = late_dlopen(
        &[],
        &[("GLIBC_TUNABLES", "glibc.rtld.optional_static_tls=0")],
    );
    match out.status.code() {
        Some(0) => assert_worked(&out),
        Some(3) => {
            out.assert_stderr_has(NO_STATIC_TLS);
        }
        _ => panic!("expected a clean load (0) or a clean refusal (3)\n{out:?}"),
    }
}
