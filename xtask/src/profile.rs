//! `cargo xtask profile -- CMD ARGS...`: run a command on `libhakmem.so` with heap profiling on,
//! and draw where its memory is.
//!
//! Builds the library as `cargo xtask preload` does, runs CMD with `HAKMEM_PROF=1` and
//! `HAKMEM_PROF_FILE=<out>/heap.%p.pb.gz`, so each process CMD starts writes its profile at
//! exit: `heap.<pid>.pb.gz` (pprof: `pprof -top`, `go tool pprof`) and
//! `heap.<pid>.pb.gz.collapsed` (live bytes by stack). Then draws each collapsed file as a
//! flamegraph of live bytes, `heap.<pid>.svg`, with inferno. The live bytes at exit are the
//! leak view: what was never freed, by allocating stack.
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;

#[derive(clap::Args)]
pub struct Args {
    /// The directory the profiles and flamegraphs go to (made if missing).
    #[arg(long, default_value = "hakmem-profile")]
    out: PathBuf,
    /// The mean sampling interval in bytes (HAKMEM_PROF_SAMPLE; hakmem's default: 524288).
    #[arg(long)]
    sample: Option<u64>,
    /// The command to profile, and its arguments.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        required = true,
        value_name = "CMD"
    )]
    cmd: Vec<OsString>,
}

pub fn run(a: Args) -> Result<(), String> {
    let (program, args) = a.cmd.split_first().ok_or("no command given")?;
    let lib = crate::preload::build_library()?;
    std::fs::create_dir_all(&a.out).map_err(|e| format!("{}: {e}", a.out.display()))?;
    let out = std::path::absolute(&a.out).map_err(|e| format!("{}: {e}", a.out.display()))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("LD_PRELOAD", &lib)
        .env("HAKMEM_PROF", "1")
        .env("HAKMEM_PROF_FILE", out.join("heap.%p.pb.gz"));
    if let Some(s) = a.sample {
        cmd.env("HAKMEM_PROF_SAMPLE", s.to_string());
    }
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {}: {e}", program.to_string_lossy()))?;
    let mut drawn = 0;
    let entries = std::fs::read_dir(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    for e in entries.flatten() {
        let path = e.path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let Some(stem) = name.strip_suffix(".pb.gz.collapsed") else {
            continue;
        };
        let svg = out.join(format!("{stem}.svg"));
        flamegraph(&path, &svg, &program.to_string_lossy())?;
        println!(
            "xtask: {} (pprof), {} (flamegraph of live bytes)",
            out.join(format!("{stem}.pb.gz")).display(),
            svg.display()
        );
        drawn += 1;
    }
    if drawn == 0 {
        return Err(format!("no profile was written to {}", out.display()));
    }
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} exited with {status}",
            program.to_string_lossy()
        ))
    }
}

/// Draws the collapsed stacks at `collapsed` as a flamegraph SVG at `svg`.
pub fn flamegraph(
    collapsed: &std::path::Path,
    svg: &std::path::Path,
    title: &str,
) -> Result<(), String> {
    let text =
        std::fs::read_to_string(collapsed).map_err(|e| format!("{}: {e}", collapsed.display()))?;
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = format!("{title}: live heap bytes (hakmem, sampled)");
    opts.count_name = "bytes".to_string();
    let f = std::fs::File::create(svg).map_err(|e| format!("{}: {e}", svg.display()))?;
    if text.trim().is_empty() {
        // inferno refuses an empty input; an empty profile is a blank picture.
        opts.title.push_str(": nothing live");
        return inferno::flamegraph::from_lines(&mut opts, ["[nothing live] 1"], f)
            .map_err(|e| format!("{}: {e}", svg.display()));
    }
    inferno::flamegraph::from_lines(&mut opts, text.lines(), f)
        .map_err(|e| format!("{}: {e}", svg.display()))
}
