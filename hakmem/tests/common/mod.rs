//! What the integration tests share.
use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a child may run before it counts as hung (a deadlock or a spin at start-up): the
/// test then fails instead of hanging the suite.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// Runs the ignored test `name` of this test binary in a child process with `env` (and no other
/// `HAKMEM_*` variable), so that what it checks is the state of a fresh process. A child still
/// running after [`DEADLINE`] is killed, and the test fails with what it printed.
pub fn child(name: &str, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--ignored",
        "--exact",
        name,
        "--nocapture",
        "--test-threads=1",
    ]);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("HAKMEM_")) {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    let mut proc = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
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
        if let Some(s) = proc.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > DEADLINE {
            let _ = proc.kill();
            let _ = proc.wait();
            let (out, err) = (out.join().unwrap(), err.join().unwrap());
            panic!(
                "child {name} with {env:?} did not finish within {DEADLINE:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
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
