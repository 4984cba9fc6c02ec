//! What the integration tests share.
use std::process::{Command, Output};

/// Runs the ignored test `name` of this test binary in a child process with `env` (and no other
/// `HAKMEM_*` variable), so that what it checks is the state of a fresh process.
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
    cmd.output().unwrap()
}
