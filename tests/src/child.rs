//! Running one test of the current test binary again, alone, in a child process: for a test
//! that must see a fresh process (start-up, settings, process-wide counters), or that ends in an
//! abort. The one helper of every test crate of the workspace: `hakmem-tests` exports it as
//! `hakmem_tests::child`, and the crates that cannot depend on that crate (the facade's
//! integration tests, the boxes' unit tests) include this file with `#[path]`. It uses `std`
//! only, so it compiles wherever it is included.
#![allow(dead_code)] // each includer uses its part

// Named here, so the file compiles inside a `no_std` crate's tests as well.
extern crate std;
use std::boxed::Box;
use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::string::String;
use std::time::{Duration, Instant};
use std::vec::Vec;

/// How long a child may run before it counts as hung (a deadlock, or a spin at start-up): it is
/// killed, and the test fails with what it printed.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// The variable that marks a child: it holds the name of the test the child runs.
const MARK: &str = "RERUN_TEST_IN_CHILD";

/// True in the child process that [`command`] made to run test `name`.
pub fn is_child(name: &str) -> bool {
    std::env::var(MARK).as_deref() == Ok(name)
}

/// The command that runs test `name` of this test binary alone (`--exact`, one test thread,
/// output not captured), `#[ignore]`d tests too when `ignored`, with this process's environment
/// less its `HAKMEM_*` variables, plus `env`, plus the mark [`is_child`] reads.
pub fn command(name: &str, ignored: bool, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("the test binary's path"));
    if ignored {
        cmd.arg("--ignored");
    }
    cmd.args(["--exact", name, "--nocapture", "--test-threads=1"]);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("HAKMEM_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied()).env(MARK, name);
    cmd
}

/// Runs `cmd` to its end and returns what it printed and how it ended. A child still running
/// after [`DEADLINE`] is killed, and the caller panics with what it printed.
pub fn output(mut cmd: Command) -> Output {
    let mut proc = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the test binary runs");
    let read = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let out = read(proc.stdout.take().map(|p| Box::new(p) as _));
    let err = read(proc.stderr.take().map(|p| Box::new(p) as _));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = proc.try_wait().expect("wait for the child") {
            break s;
        }
        if start.elapsed() > DEADLINE {
            let _ = proc.kill();
            let _ = proc.wait();
            let (out, err) = (out.join().unwrap(), err.join().unwrap());
            panic!(
                "child {cmd:?} did not finish within {DEADLINE:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Runs the `#[ignore]`d test `name` in a child with `env` (see [`command`]) and returns its
/// output: the parent test checks it.
pub fn child(name: &str, env: &[(&str, &str)]) -> Output {
    output(command(name, true, env))
}

/// For a test that runs its own body in a child: `None` in that child (the caller then runs the
/// body), and in the parent the output of the child run of test `name` with `env`.
pub fn in_child(name: &str, env: &[(&str, &str)]) -> Option<Output> {
    if is_child(name) {
        return None;
    }
    Some(output(command(name, false, env)))
}

/// As [`in_child`], for a body that must pass: true in the child (the caller then runs the
/// body); in the parent, false once the child passed, and a panic with its output otherwise.
pub fn alone(name: &str, env: &[(&str, &str)]) -> bool {
    let Some(o) = in_child(name, env) else {
        return true;
    };
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.contains("1 passed"),
        "the child run of {name} failed: {:?}\n--- stdout ---\n{out}\n--- stderr ---\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    false
}
