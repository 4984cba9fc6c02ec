//! `cargo xtask preload -- CMD ARGS...` builds the library, runs the command on it, and passes
//! its exit status through.
use hakmem_tests::{run, workspace_root};
use std::process::Command;

/// Prints the LD_PRELOAD it sees, and exits with 7 through exit() (so exit handlers run).
const EXIT_7: &str = "import os, sys; print('preloaded=' + os.environ['LD_PRELOAD']); sys.exit(7)";

#[test]
fn xtask_preload_runs_the_command_on_hakmem_and_passes_its_status() {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["run", "-q", "-p", "xtask", "--", "preload", "--"])
        .args(["python3", "-c", EXIT_7])
        .current_dir(workspace_root())
        .env("HAKMEM_STATS", "1");
    let out = run(&mut cmd);
    out.assert_exit_code(7);
    let lib = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("preloaded="))
        .unwrap_or_else(|| panic!("no LD_PRELOAD seen\n{out:?}"));
    assert!(
        lib.starts_with('/') && lib.ends_with("/release/libhakmem.so"),
        "LD_PRELOAD is {lib:?}\n{out:?}"
    );
    out.assert_served(1);
}

#[test]
fn xtask_preload_of_a_command_not_found_exits_127_as_a_shell_does() {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["run", "-q", "-p", "xtask", "--", "preload", "--"])
        .arg("hakmem-no-such-command")
        .current_dir(workspace_root());
    let out = run(&mut cmd);
    out.assert_exit_code(127);
    assert!(
        out.stderr.contains("cannot run hakmem-no-such-command"),
        "{out:?}"
    );
}
