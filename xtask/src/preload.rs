//! `cargo xtask preload -- CMD ARGS...`: build `libhakmem.so` and run a command on it.
//!
//! Builds the library with `cargo build --release -p hakmem-preload`, then runs CMD with
//! `LD_PRELOAD` set to the library's absolute path (ahead of any `LD_PRELOAD` already set), so
//! CMD and every program it starts allocate from hakmem. CMD's exit status becomes this
//! command's: its exit code, or 128 + the signal number if a signal killed it, and 127 for a
//! command not found, 126 for one that cannot run (as a shell does).
//! Settings such as `HAKMEM_STATS=1` pass through the environment.
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Command;

#[derive(clap::Args)]
pub struct Args {
    /// The command to run on hakmem, and its arguments.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        required = true,
        value_name = "CMD"
    )]
    cmd: Vec<OsString>,
}

/// The target directory cargo builds into: `CARGO_TARGET_DIR` if set, else `<root>/target`.
fn target_dir() -> Result<PathBuf, String> {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            std::path::absolute(PathBuf::from(dir)).map_err(|e| format!("CARGO_TARGET_DIR: {e}"))
        }
        None => Ok(crate::root().join("target")),
    }
}

/// Builds `libhakmem.so` (release) and returns its absolute path.
pub fn build_library() -> Result<PathBuf, String> {
    let target = target_dir()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let built = Command::new(cargo)
        .args(["build", "--release", "-p", "hakmem-preload", "--target-dir"])
        .arg(&target)
        .current_dir(crate::root())
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !built.success() {
        return Err("cargo build --release -p hakmem-preload failed".into());
    }
    let lib = target.join("release").join("libhakmem.so");
    if !lib.is_file() {
        return Err(format!("{} is missing after the build", lib.display()));
    }
    Ok(lib)
}

pub fn run(a: Args) -> Result<(), String> {
    let (program, args) = a.cmd.split_first().ok_or("no command given")?;
    let lib = build_library()?;
    let mut preload = OsString::from(lib.as_os_str());
    if let Some(old) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
        preload.push(":");
        preload.push(old);
    }
    let status = match Command::new(program)
        .args(args)
        .env("LD_PRELOAD", &preload)
        .status()
    {
        Ok(s) => s,
        // As a shell: 127 for a command not found, 126 for one found but not runnable.
        Err(e) => {
            eprintln!("xtask: cannot run {}: {e}", program.to_string_lossy());
            std::process::exit(if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            });
        }
    };
    match (status.code(), status.signal()) {
        (Some(0), _) => Ok(()),
        (Some(code), _) => std::process::exit(code),
        (None, Some(sig)) => {
            eprintln!(
                "xtask: {} was killed by signal {sig}",
                program.to_string_lossy()
            );
            std::process::exit(128 + sig)
        }
        (None, None) => Err(format!("{} ended abnormally", program.to_string_lossy())),
    }
}
