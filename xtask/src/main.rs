//! `cargo xtask`: the project's automation, in Rust so it runs wherever cargo does.
//!
//! - `cargo xtask verify`: every check CI runs (fmt, clippy, tests, loom models, model checks).
//! - `cargo xtask bench`: the benchmark suite against glibc, mimalloc and jemalloc, in two
//!   lanes: Rust's global allocator and C programs under LD_PRELOAD.
//! - `cargo xtask preload -- CMD ARGS...`: build `libhakmem.so` and run a command on it.
//! - `cargo xtask profile -- CMD ARGS...`: the same with heap profiling on; writes pprof files
//!   and flamegraphs.
use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod bench;
mod preload;
mod profile;
mod verify;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "hakmem's automation"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every check: fmt, clippy, tests, loom models and model checks.
    Verify(verify::Args),
    /// Run the benchmark suite: the Rust lane (global allocator) and the C lane (LD_PRELOAD).
    #[command(after_help = "\
Examples:
  cargo xtask bench                       both lanes, 5 runs per cell
  cargo xtask bench --quick               less work per run, 3 runs
  cargo xtask bench --filter c/           the C lane only
  cargo xtask bench --filter larson,callgrind --allocators hakmem,mimalloc
  cargo xtask bench --out /tmp/run1       results.json, results.svg and callgrind/ there

See docs/BENCHMARKS.md for the workloads and how they are measured.")]
    Bench(bench::Args),
    /// Build libhakmem.so and run a command with it preloaded.
    Preload(preload::Args),
    /// Run a command on libhakmem.so with heap profiling on: pprof files and flamegraphs.
    Profile(profile::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Verify(a) => verify::run(a),
        Cmd::Bench(a) => bench::run(a),
        Cmd::Preload(a) => preload::run(a),
        Cmd::Profile(a) => profile::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask lives one level below it).
pub fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits inside the workspace")
        .to_path_buf()
}
