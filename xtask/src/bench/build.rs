//! Step 1 of the bench: building what the selected entries need, in parallel.
//!
//! The Rust lane's workload binary is built once per allocator, each in its own target dir
//! under target/bench/ (so later runs only re-check them); the C lane needs the C workloads
//! and a preload library per allocator (baselines.rs). The release profile links each binary
//! with fat LTO and one codegen unit, so a build spends most of its time on one core: the
//! builds run side by side, each reported as it ends (on the progress bar, or as a line when
//! stderr is not a terminal).
use super::{baselines, cargo, Lane, PROFILED};
use indicatif::ProgressBar;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

/// The compiler's error lines if there are any, else the last lines.
pub(crate) fn build_errors(s: &str) -> String {
    let errs: Vec<&str> = s
        .lines()
        .filter(|l| l.starts_with("error"))
        .take(3)
        .collect();
    if errs.is_empty() {
        last_lines(s, 4)
    } else {
        errs.join(" | ")
    }
}

pub(crate) fn last_lines(s: &str, n: usize) -> String {
    let v: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    v[v.len().saturating_sub(n)..].join(" | ")
}

/// Build the workload binary for one allocator; return its path.
fn build_workloads(root: &Path, alloc: &str) -> Result<PathBuf, String> {
    let dir = root.join("target/bench").join(format!("build-{alloc}"));
    let out = Command::new(cargo())
        .current_dir(root)
        .args(["build", "--release", "-p", "hakmem-workloads", "--features"])
        .arg(format!("alloc-{alloc}"))
        .arg("--target-dir")
        .arg(&dir)
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`cargo build --release -p hakmem-workloads --features alloc-{alloc}` failed: {}",
            build_errors(&String::from_utf8_lossy(&out.stderr))
        ));
    }
    let bin = dir.join("release/hakmem-workloads");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "the build reported success but {} is missing",
            bin.display()
        ))
    }
}

/// The allocator whose builds `al` runs: hakmem's for [`PROFILED`], else its own.
pub(crate) fn build_of(al: &str) -> &str {
    if al == PROFILED {
        "hakmem"
    } else {
        al
    }
}

/// Where a cell's runs come from: the lane's program for this allocator, or why there is none.
pub struct Programs {
    /// Rust lane: the workload binary per allocator (missing: not built).
    bins: BTreeMap<String, PathBuf>,
    /// Rust lane: "ok" or the build error, per allocator.
    pub builds: BTreeMap<String, String>,
    /// C lane: the C workload binary.
    cbin: Option<Result<PathBuf, String>>,
    /// C lane: per allocator, the library to preload (None for glibc), or why it is missing.
    pub libs: BTreeMap<String, Result<Option<PathBuf>, String>>,
}

/// One build of step 1.
enum Job {
    Workloads(String),
    CWorkloads,
    Library(String),
}

impl Job {
    fn describe(&self) -> String {
        match self {
            Job::Workloads(al) => format!("hakmem-workloads for {al}"),
            Job::CWorkloads => "the C workloads (cc -O2)".into(),
            Job::Library(al) => format!("the preload library for {al}"),
        }
    }
}

/// What a finished [`Job`] produced.
enum Built {
    Workloads(String, Result<PathBuf, String>),
    CWorkloads(Result<PathBuf, String>),
    Library(String, Result<Option<PathBuf>, String>),
}

/// Builds everything the lanes need for `allocs`, side by side; each build's end is reported
/// on `pb` (as a plain line when it is hidden).
pub fn build_all(
    root: &Path,
    bench_dir: &Path,
    allocs: &[String],
    lanes: &[Lane],
    pb: &ProgressBar,
) -> Programs {
    // Each build once: hakmem-prof runs hakmem's.
    let mut builds: Vec<String> = Vec::new();
    for al in allocs {
        let b = build_of(al).to_string();
        if !builds.contains(&b) {
            builds.push(b);
        }
    }
    let mut jobs = Vec::new();
    if lanes.contains(&Lane::Rust) {
        jobs.extend(builds.iter().map(|al| Job::Workloads(al.clone())));
    }
    if lanes.contains(&Lane::C) {
        jobs.push(Job::CWorkloads);
        jobs.extend(builds.iter().map(|al| Job::Library(al.clone())));
    }
    pb.set_message(format!("building {} things side by side", jobs.len()));
    let done = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for job in &jobs {
            let done = &done;
            s.spawn(move || {
                let start = Instant::now();
                if pb.is_hidden() {
                    eprintln!("bench: building {}", job.describe());
                }
                let built = match job {
                    Job::Workloads(al) => Built::Workloads(al.clone(), build_workloads(root, al)),
                    Job::CWorkloads => Built::CWorkloads(baselines::build_c(root, bench_dir)),
                    Job::Library(al) => Built::Library(
                        al.clone(),
                        match al.as_str() {
                            "system" => Ok(None),
                            "hakmem" => baselines::build_hakmem(root).map(Some),
                            other => baselines::build_baseline(root, bench_dir, other).map(Some),
                        },
                    ),
                };
                let failed = match &built {
                    Built::Workloads(_, r) | Built::CWorkloads(r) => r.as_ref().err(),
                    Built::Library(_, r) => r.as_ref().err(),
                };
                let line = match failed {
                    None => format!(
                        "built {} in {:.0} s",
                        job.describe(),
                        start.elapsed().as_secs_f64()
                    ),
                    Some(e) => format!("{} failed, skipping it: {e}", job.describe()),
                };
                if pb.is_hidden() {
                    eprintln!("bench: {line}");
                } else {
                    pb.println(line);
                }
                pb.inc(1);
                done.lock().expect("no build thread panics").push(built);
            });
        }
    });
    let mut progs = Programs {
        bins: BTreeMap::new(),
        builds: BTreeMap::new(),
        cbin: None,
        libs: BTreeMap::new(),
    };
    for built in done.into_inner().expect("no build thread panics") {
        match built {
            Built::Workloads(al, Ok(bin)) => {
                progs.bins.insert(al.clone(), bin);
                progs.builds.insert(al, "ok".into());
            }
            Built::Workloads(al, Err(e)) => {
                progs.builds.insert(al, e);
            }
            Built::CWorkloads(r) => progs.cbin = Some(r),
            Built::Library(al, r) => {
                progs.libs.insert(al, r);
            }
        }
    }
    for al in allocs.iter().filter(|al| build_of(al) != al.as_str()) {
        let b = build_of(al);
        if let Some(bin) = progs.bins.get(b).cloned() {
            progs.bins.insert(al.clone(), bin);
        }
        if let Some(r) = progs.builds.get(b).cloned() {
            progs.builds.insert(al.clone(), r);
        }
        if let Some(r) = progs.libs.get(b).cloned() {
            progs.libs.insert(al.clone(), r);
        }
    }
    progs
}

impl Programs {
    /// Programs whose Rust-lane binary is `bin` for hakmem and hakmem-prof alike, as
    /// [`build_all`] leaves them after building hakmem once.
    #[cfg(test)]
    pub fn for_tests(bin: &str) -> Self {
        let mut p = Programs {
            bins: BTreeMap::new(),
            builds: BTreeMap::new(),
            cbin: None,
            libs: BTreeMap::new(),
        };
        for al in ["hakmem", PROFILED] {
            p.bins.insert(al.into(), bin.into());
        }
        p
    }

    /// The command for `args` in `lane` on allocator `al`, or why it cannot run.
    pub fn command(
        &self,
        lane: Lane,
        al: &str,
        args: &[String],
        quick: bool,
    ) -> Result<Command, String> {
        let mut c = match lane {
            Lane::Rust => match self.bins.get(al) {
                Some(bin) => {
                    let mut c = Command::new(bin);
                    c.env_remove("LD_PRELOAD");
                    c
                }
                None => {
                    let why = self.builds.get(al).map_or("not selected", String::as_str);
                    return Err(format!("not built: {why}"));
                }
            },
            Lane::C => {
                let bin = match &self.cbin {
                    Some(Ok(b)) => b,
                    Some(Err(e)) => return Err(e.clone()),
                    None => return Err("the C workloads were not built".into()),
                };
                let mut c = Command::new(bin);
                match self.libs.get(al) {
                    Some(Ok(Some(lib))) => {
                        c.env("LD_PRELOAD", lib);
                    }
                    Some(Ok(None)) => {
                        c.env_remove("LD_PRELOAD");
                    }
                    Some(Err(e)) => return Err(e.clone()),
                    None => return Err("no library".into()),
                }
                c
            }
        };
        if al == PROFILED {
            c.env("HAKMEM_PROF", "1").env("HAKMEM_PROF_FILE", "");
        }
        c.args(args);
        if quick {
            c.arg("--quick");
        }
        Ok(c)
    }
}
