//! `cargo xtask bench`: the benchmark suite (see docs/BENCHMARKS.md).
//!
//! Two lanes, run side by side in one run, with the allocators interleaved:
//! - the Rust lane: `hakmem-workloads` built once per global allocator (`--features alloc-X`,
//!   each in its own target dir under target/bench/, so later runs only re-check them);
//! - the C lane: C workloads (xtask/workloads/c/workloads.c, `cc -O2`) under LD_PRELOAD of
//!   libhakmem.so and of mimalloc and jemalloc built from the C sources the -sys crates
//!   bundle (bench/baselines.rs), and under plain glibc.
//!
//! 1. Builds everything a selected entry needs.
//! 2. Runs every entry in its own process, `--runs` times, allocators interleaved so a noisy
//!    neighbour hits them all alike; keeps the median and the min..max spread.
//! 3. callgrind: instructions per malloc+free pair in both lanes (the Rust `tiny-pair` loop;
//!    the C loop `p = malloc(16); p[0] = i; free(p)`), when valgrind is present.
//! 4. Prints a table and writes results.json and results.svg to `--out` (default
//!    target/bench).
mod baselines;
mod chart;
mod exec;
mod report;

use exec::Sample;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

/// Every allocator the suite knows, in table order.
pub const ALLOCATORS: &[&str] = &["hakmem", "system", "mimalloc", "jemalloc"];
/// Ratios are taken against this allocator when it is selected.
const BASELINE: &str = "mimalloc";
/// Iteration counts for the callgrind difference (two loop lengths).
const CALLGRIND_ITERS: (u64, u64) = (200_000, 400_000);

/// The two lanes of the suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Lane {
    /// `hakmem-workloads`, with each allocator as Rust's global allocator.
    Rust,
    /// The C workloads under LD_PRELOAD (glibc without a preload).
    C,
}

impl Lane {
    pub const ALL: [Lane; 2] = [Lane::Rust, Lane::C];

    pub fn key(self) -> &'static str {
        match self {
            Lane::Rust => "rust",
            Lane::C => "c",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Lane::Rust => "Rust lane (global allocator)",
            Lane::C => "C lane (LD_PRELOAD; system = glibc)",
        }
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// The whole suite in about two minutes: less work per run and 3 runs instead of 5.
    #[arg(long)]
    quick: bool,
    /// Run only the entries whose name contains one of these comma-separated words,
    /// e.g. `larson`, `scaling`, `c/` (the C lane), `callgrind`.
    #[arg(long, value_delimiter = ',')]
    filter: Vec<String>,
    /// Threads for the multi-threaded workloads (default: the number of CPUs). The
    /// thread-scaling entries always use 1, 2, 4 and 8.
    #[arg(long)]
    threads: Option<usize>,
    /// Allocators to compare, comma-separated: hakmem, system, mimalloc, jemalloc.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "hakmem,system,mimalloc,jemalloc"
    )]
    allocators: Vec<String>,
    /// Runs per workload and allocator (default 5, or 3 with --quick).
    #[arg(long)]
    runs: Option<usize>,
    /// Where results.json, results.svg and the callgrind profiles go (default target/bench;
    /// the builds stay under target/bench).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// One row group of the table: a workload with its arguments.
#[derive(Clone)]
pub struct Entry {
    pub name: String,
    pub lane: Lane,
    pub args: Vec<String>,
}

/// The results of one entry for one allocator.
#[derive(Clone, Serialize)]
pub struct Cell {
    pub entry: String,
    pub lane: Lane,
    pub allocator: String,
    /// "ok", "failed" or "skipped".
    pub status: String,
    pub error: Option<String>,
    pub command: String,
    pub samples: Vec<Sample>,
    pub median_ops_per_sec: Option<f64>,
    pub min_ops_per_sec: Option<f64>,
    pub max_ops_per_sec: Option<f64>,
    pub median_secs: Option<f64>,
    pub median_peak_rss_kib: Option<f64>,
    pub min_peak_rss_kib: Option<f64>,
    pub max_peak_rss_kib: Option<f64>,
    pub median_rss_after_free_kib: Option<f64>,
    /// Median throughput over the baseline's median throughput (higher is better).
    pub ratio_vs_baseline: Option<f64>,
    /// Median peak RSS over the baseline's (lower is better).
    pub rss_ratio_vs_baseline: Option<f64>,
}

impl Cell {
    fn new(entry: &Entry, allocator: &str, command: String) -> Self {
        Cell {
            entry: entry.name.clone(),
            lane: entry.lane,
            allocator: allocator.into(),
            status: "ok".into(),
            error: None,
            command,
            samples: Vec::new(),
            median_ops_per_sec: None,
            min_ops_per_sec: None,
            max_ops_per_sec: None,
            median_secs: None,
            median_peak_rss_kib: None,
            min_peak_rss_kib: None,
            max_peak_rss_kib: None,
            median_rss_after_free_kib: None,
            ratio_vs_baseline: None,
            rss_ratio_vs_baseline: None,
        }
    }

    fn skipped(entry: &Entry, allocator: &str, why: String) -> Self {
        let mut c = Cell::new(entry, allocator, String::new());
        c.status = "skipped".into();
        c.error = Some(why);
        c
    }

    fn fail(&mut self, why: String) {
        self.status = "failed".into();
        self.error = Some(why);
    }

    fn ok(&self) -> bool {
        self.status == "ok" && !self.samples.is_empty()
    }

    /// Fill in medians and spreads from the samples.
    fn summarize(&mut self) {
        if !self.ok() {
            return;
        }
        let tput: Vec<f64> = self.samples.iter().map(Sample::ops_per_sec).collect();
        let secs: Vec<f64> = self.samples.iter().map(|s| s.secs).collect();
        let rss: Vec<f64> = self
            .samples
            .iter()
            .filter_map(|s| s.peak_rss_kib.map(|v| v as f64))
            .collect();
        let after: Vec<f64> = self
            .samples
            .iter()
            .filter_map(|s| s.rss_after_free_kib.map(|v| v as f64))
            .collect();
        self.median_ops_per_sec = median(&tput);
        self.min_ops_per_sec = tput.iter().copied().reduce(f64::min);
        self.max_ops_per_sec = tput.iter().copied().reduce(f64::max);
        self.median_secs = median(&secs);
        self.median_peak_rss_kib = median(&rss);
        self.min_peak_rss_kib = rss.iter().copied().reduce(f64::min);
        self.max_peak_rss_kib = rss.iter().copied().reduce(f64::max);
        self.median_rss_after_free_kib = median(&after);
    }
}

pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

/// The callgrind figure for one allocator in one lane.
#[derive(Serialize)]
pub struct Callgrind {
    pub lane: Lane,
    /// The loop counted, e.g. "tiny-pair: alloc 32 B, black_box, free".
    pub program: String,
    pub allocator: String,
    pub status: String,
    pub error: Option<String>,
    pub n1: u64,
    pub n2: u64,
    pub ir1: Option<u64>,
    pub ir2: Option<u64>,
    /// (ir2 - ir1) / (n2 - n1): instructions per malloc+free pair, with the bare loop around it.
    pub instructions_per_pair: Option<f64>,
}

#[derive(Serialize)]
pub struct Report {
    pub date: String,
    pub quick: bool,
    pub runs: usize,
    pub threads: usize,
    pub baseline: String,
    pub machine: BTreeMap<String, String>,
    pub versions: BTreeMap<String, String>,
    /// Per allocator, the Rust lane's build: "ok", or why it failed.
    pub builds: BTreeMap<String, String>,
    /// Per allocator, the C lane's library: its path, "none (glibc)", or why it is missing.
    pub preload_libraries: BTreeMap<String, String>,
    /// Both lanes' cells (see `Cell::lane`).
    pub results: Vec<Cell>,
    pub callgrind: Vec<Callgrind>,
    /// Per lane ("rust", "c"), per allocator: geometric means of the ratios over the lane's
    /// unique entries where both it and the baseline succeeded.
    pub geomean: BTreeMap<String, BTreeMap<String, report::Geomean>>,
}

pub(crate) fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// The suite's entries for `threads` threads: the Rust lane's, then the C lane's.
fn plan(t: usize) -> Vec<Entry> {
    let e = |lane: Lane, name: String, args: &[&str]| Entry {
        name,
        lane,
        args: args.iter().map(|s| s.to_string()).collect(),
    };
    let r = |name: String, args: &[&str]| e(Lane::Rust, name, args);
    let c = |name: &str, args: &[&str]| e(Lane::C, format!("c/{name}"), args);
    let ts = t.to_string();
    let fs = t.max(2).to_string();
    let mut v = vec![
        r("tiny-hot".into(), &["tiny-hot", "--threads", "1"]),
        r(
            "random-mixed/w400".into(),
            &["random-mixed", "--working-set", "400", "--threads", "1"],
        ),
        r(
            "random-mixed/w8192".into(),
            &["random-mixed", "--working-set", "8192", "--threads", "1"],
        ),
        r("random-medium".into(), &["random-medium", "--threads", "1"]),
        r(format!("larson/t{t}"), &["larson", "--threads", &ts]),
        r(
            format!("producer-consumer/t{t}"),
            &["producer-consumer", "--threads", &ts],
        ),
        r(
            "producer-consumer-64b".into(),
            &["producer-consumer-64b", "--threads", "2"],
        ),
        r(
            format!("cross-thread-realloc/t{t}"),
            &["cross-thread-realloc", "--threads", &ts],
        ),
        r(
            format!("false-sharing/t{}", t.max(2)),
            &["false-sharing", "--threads", &fs],
        ),
        r(
            format!("thread-churn/t{t}"),
            &["thread-churn", "--threads", &ts],
        ),
        r("mixed-sizes".into(), &["mixed-sizes", "--threads", "1"]),
        r("large-blocks".into(), &["large-blocks", "--threads", "1"]),
        r(
            "realloc-growth".into(),
            &["realloc-growth", "--threads", "1"],
        ),
        r("fragmentation".into(), &["fragmentation", "--threads", "1"]),
    ];
    for n in [1, 2, 4, 8] {
        let ns = n.to_string();
        v.push(r(
            format!("scaling/random-mixed-w400/t{n}"),
            &["random-mixed", "--working-set", "400", "--threads", &ns],
        ));
    }
    for n in [1, 2, 4, 8] {
        let ns = n.to_string();
        v.push(r(
            format!("scaling/larson/t{n}"),
            &["larson", "--threads", &ns],
        ));
    }
    v.extend([
        c("tiny-hot", &["tiny-hot"]),
        c(
            "random-mixed/w400",
            &["random-mixed", "--working-set", "400"],
        ),
        c(
            "random-mixed/w8192",
            &["random-mixed", "--working-set", "8192"],
        ),
        c("random-medium", &["random-medium"]),
        c("mixed-sizes", &["mixed-sizes"]),
        c("glibc-simple", &["glibc-simple"]),
        c("glibc-simple-written", &["glibc-simple-written"]),
        c("long-lived-tree", &["long-lived-tree"]),
        c("large-blocks", &["large-blocks"]),
        c(
            "producer-consumer-64b",
            &["producer-consumer-64b", "--threads", "2"],
        ),
        c(&format!("larson/t{t}"), &["larson", "--threads", &ts]),
        c(
            &format!("cross-thread-realloc/t{t}"),
            &["cross-thread-realloc", "--threads", &ts],
        ),
    ]);
    v
}

fn selected(filter: &[String], name: &str) -> bool {
    filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()))
}

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

fn command_output(prog: &str, args: &[&str], dir: &Path) -> Option<String> {
    let out = Command::new(prog)
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Versions of the toolchain and the allocator crates (from Cargo.lock).
fn versions(root: &Path) -> BTreeMap<String, String> {
    let mut v = BTreeMap::new();
    if let Some(r) = command_output("rustc", &["-V"], root) {
        v.insert("rustc".into(), r);
    }
    if let Some(r) = command_output("cc", &["--version"], root) {
        v.insert(
            "cc".into(),
            r.lines().next().unwrap_or_default().to_string(),
        );
    }
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap_or_default();
    for krate in [
        "hakmem",
        "mimalloc",
        "libmimalloc-sys",
        "tikv-jemallocator",
        "tikv-jemalloc-sys",
    ] {
        let key = format!("name = \"{krate}\"\nversion = \"");
        if let Some(i) = lock.find(&key) {
            let rest = &lock[i + key.len()..];
            if let Some(end) = rest.find('"') {
                v.insert(format!("crate {krate}"), rest[..end].to_string());
            }
        }
    }
    for pkg in ["libc6", "valgrind"] {
        if let Some(r) = command_output("dpkg-query", &["-W", "-f", "${Version}", pkg], root) {
            if !r.is_empty() {
                v.insert(format!("debian {pkg}"), r);
            }
        }
    }
    v
}

fn machine(root: &Path) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    m.insert("cpus".into(), cpus.to_string());
    if let Some(model) = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_string())
    }) {
        m.insert("cpu".into(), model);
    }
    if let Some(k) = command_output("uname", &["-r"], root) {
        m.insert("kernel".into(), k);
    }
    m
}

fn date(root: &Path) -> String {
    command_output("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"], root).unwrap_or_else(|| {
        let s = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        format!("unix time {s}")
    })
}

/// Parse the `totals:` (or `summary:`) line of a callgrind output file.
fn callgrind_total(path: &Path) -> Result<u64, String> {
    let s = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    s.lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
        .ok_or_else(|| format!("no totals line in {}", path.display()))
}

fn progress(len: u64) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise:.dim} [{bar:36.cyan/blue}] {pos}/{len} {wide_msg}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    pb
}

/// Where a cell's runs come from: the lane's program for this allocator, or why there is none.
struct Programs {
    /// Rust lane: the workload binary per allocator (missing: not built).
    bins: BTreeMap<String, PathBuf>,
    /// Rust lane: "ok" or the build error, per allocator.
    builds: BTreeMap<String, String>,
    /// C lane: the C workload binary.
    cbin: Option<Result<PathBuf, String>>,
    /// C lane: per allocator, the library to preload (None for glibc), or why it is missing.
    libs: BTreeMap<String, Result<Option<PathBuf>, String>>,
}

impl Programs {
    /// The command for `args` in `lane` on allocator `al`, or why it cannot run.
    fn command(
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
        c.args(args);
        if quick {
            c.arg("--quick");
        }
        Ok(c)
    }
}

pub fn run(a: Args) -> Result<(), String> {
    let root = crate::root();
    let mut allocs: Vec<String> = Vec::new();
    for name in &a.allocators {
        let n = name.trim().to_lowercase();
        if !ALLOCATORS.contains(&n.as_str()) {
            return Err(format!(
                "unknown allocator {name:?}; choose from {}",
                ALLOCATORS.join(", ")
            ));
        }
        if !allocs.contains(&n) {
            allocs.push(n);
        }
    }
    if allocs.is_empty() {
        return Err("--allocators is empty".into());
    }
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let threads = a.threads.unwrap_or(cpus);
    if threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    let runs = a.runs.unwrap_or(if a.quick { 3 } else { 5 });
    if runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    let timeout = Duration::from_secs(if a.quick { 90 } else { 300 });
    let bench_dir = root.join("target/bench");
    let out_dir = match &a.out {
        Some(d) => std::path::absolute(d).map_err(|e| format!("--out {}: {e}", d.display()))?,
        None => bench_dir.clone(),
    };
    for d in [&bench_dir, &out_dir] {
        std::fs::create_dir_all(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    }

    let entries: Vec<Entry> = plan(threads)
        .into_iter()
        .filter(|e| selected(&a.filter, &e.name))
        .collect();
    let cg_names = [
        (Lane::Rust, "callgrind/tiny-pair"),
        (Lane::C, "callgrind/c-pair"),
    ];
    let cg_lanes: Vec<Lane> = cg_names
        .iter()
        .filter(|(_, n)| selected(&a.filter, n))
        .map(|(l, _)| *l)
        .collect();
    if entries.is_empty() && cg_lanes.is_empty() {
        return Err(format!(
            "--filter {} matches nothing; entries are {}, {}",
            a.filter.join(","),
            plan(threads)
                .iter()
                .map(|e| e.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            cg_names.map(|(_, n)| n).join(", ")
        ));
    }
    let baseline = if allocs.iter().any(|x| x == BASELINE) {
        BASELINE.to_string()
    } else {
        allocs[0].clone()
    };
    // Unique commands: an entry with the same lane and arguments as an earlier one (say
    // scaling/larson/t2 and larson/t2) reuses its runs.
    let mut unique: Vec<&Entry> = Vec::new();
    for e in &entries {
        if !unique.iter().any(|u| u.lane == e.lane && u.args == e.args) {
            unique.push(e);
        }
    }
    let need = |lane: Lane| entries.iter().any(|e| e.lane == lane) || cg_lanes.contains(&lane);
    let (need_rust, need_c) = (need(Lane::Rust), need(Lane::C));
    let total = if need_rust { allocs.len() } else { 0 }
        + if need_c { 1 + allocs.len() } else { 0 }
        + unique.len() * runs * allocs.len()
        + cg_lanes.len() * 2 * allocs.len();
    let pb = progress(total as u64);

    // 1. Builds.
    let mut progs = Programs {
        bins: BTreeMap::new(),
        builds: BTreeMap::new(),
        cbin: None,
        libs: BTreeMap::new(),
    };
    if need_rust {
        for al in &allocs {
            pb.set_message(format!("building hakmem-workloads for {al}"));
            match build_workloads(&root, al) {
                Ok(b) => {
                    progs.bins.insert(al.clone(), b);
                    progs.builds.insert(al.clone(), "ok".into());
                }
                Err(e) => {
                    pb.println(format!("{al}: build failed, skipping it: {e}"));
                    progs.builds.insert(al.clone(), e);
                }
            }
            pb.inc(1);
        }
    }
    if need_c {
        pb.set_message("building the C workloads (cc -O2)");
        let cbin = baselines::build_c(&root, &bench_dir);
        if let Err(e) = &cbin {
            pb.println(format!("C lane: {e}"));
        }
        progs.cbin = Some(cbin);
        pb.inc(1);
        for al in &allocs {
            pb.set_message(format!("building the preload library for {al}"));
            let lib = match al.as_str() {
                "system" => Ok(None),
                "hakmem" => baselines::build_hakmem(&root).map(Some),
                other => baselines::build_baseline(&root, &bench_dir, other).map(Some),
            };
            if let Err(e) = &lib {
                pb.println(format!("C lane · {al}: {e}"));
            }
            progs.libs.insert(al.clone(), lib);
            pb.inc(1);
        }
    }

    // 2. The entries of both lanes, allocators interleaved within each repetition.
    // Per unique (lane, arguments): its cells, by allocator.
    type Cells = BTreeMap<String, Cell>;
    let mut by_cmd: Vec<((Lane, Vec<String>), Cells)> = Vec::new();
    for e in &unique {
        let mut cells: BTreeMap<String, Cell> = BTreeMap::new();
        for al in &allocs {
            let cell = match progs.command(e.lane, al, &e.args, a.quick) {
                Ok(c) => Cell::new(e, al, exec::describe(&c)),
                Err(why) => Cell::skipped(e, al, why),
            };
            cells.insert(al.clone(), cell);
        }
        if pb.is_hidden() {
            // No terminal for the bar (CI logs): one line per entry instead.
            eprintln!(
                "bench: {} ({runs} runs × {} allocators)",
                e.name,
                allocs.len()
            );
        }
        for rep in 0..runs {
            for al in &allocs {
                let cell = cells.get_mut(al).expect("a cell per allocator");
                pb.set_message(format!("{} · {al} · run {}/{runs}", e.name, rep + 1));
                if cell.status == "ok" {
                    let c = progs
                        .command(e.lane, al, &e.args, a.quick)
                        .expect("it worked for the cell");
                    match exec::sample(c, timeout) {
                        Ok(s) if s.allocator != *al => cell.fail(format!(
                            "the process reports allocator {:?}, expected {al:?}{}",
                            s.allocator,
                            if e.lane == Lane::C {
                                " (the preload did not take)"
                            } else {
                                ""
                            }
                        )),
                        Ok(s) => cell.samples.push(s),
                        Err(err) => {
                            pb.println(format!("{} · {al}: FAILED: {err}", e.name));
                            cell.fail(err);
                        }
                    }
                }
                pb.inc(1);
            }
        }
        for c in cells.values_mut() {
            c.summarize();
        }
        by_cmd.push(((e.lane, e.args.clone()), cells));
    }
    let mut results: Vec<Cell> = Vec::new();
    for e in &entries {
        let cells = &by_cmd
            .iter()
            .find(|(k, _)| k.0 == e.lane && k.1 == e.args)
            .expect("every entry ran")
            .1;
        for al in &allocs {
            let mut c = cells[al].clone();
            c.entry = e.name.clone();
            results.push(c);
        }
    }
    report::ratios(&mut results, &baseline);

    // 3. callgrind: instructions per malloc+free pair, in each selected lane.
    let mut callgrind: Vec<Callgrind> = Vec::new();
    if !cg_lanes.is_empty() {
        let valgrind = command_output("valgrind", &["--version"], &root);
        let dir = out_dir.join("callgrind");
        let _ = std::fs::create_dir_all(&dir);
        let (n1, n2) = CALLGRIND_ITERS;
        for lane in &cg_lanes {
            let (name, workload, program) = match lane {
                Lane::Rust => (
                    "callgrind/tiny-pair",
                    "tiny-pair",
                    "Rust tiny-pair: alloc 32 B, black_box, free",
                ),
                Lane::C => (
                    "callgrind/c-pair",
                    "pair",
                    "C under LD_PRELOAD: p = malloc(16); p[0] = i; free(p)",
                ),
            };
            if pb.is_hidden() {
                eprintln!("bench: {name}");
            }
            for al in &allocs {
                let mut row = Callgrind {
                    lane: *lane,
                    program: program.into(),
                    allocator: al.clone(),
                    status: "ok".into(),
                    error: None,
                    n1,
                    n2,
                    ir1: None,
                    ir2: None,
                    instructions_per_pair: None,
                };
                let prog = progs.command(*lane, al, &[workload.to_string()], false);
                let prog = match (&valgrind, prog) {
                    (None, _) => Err("valgrind not found".to_string()),
                    (_, p) => p,
                };
                let prog = match prog {
                    Ok(p) => p,
                    Err(w) => {
                        row.status = "skipped".into();
                        row.error = Some(w);
                        pb.inc(2);
                        callgrind.push(row);
                        continue;
                    }
                };
                let mut irs = Vec::new();
                let mut done = 0;
                for n in [n1, n2] {
                    pb.set_message(format!("{name} · {al} · {n} iterations"));
                    let out = dir.join(format!("{}-{al}-{n}.out", lane.key()));
                    let mut c = Command::new("valgrind");
                    c.arg("--tool=callgrind")
                        .arg(format!("--callgrind-out-file={}", out.display()))
                        .arg(prog.get_program())
                        .args(prog.get_args())
                        .args(["--iters", &n.to_string()]);
                    for (k, v) in prog.get_envs() {
                        match v {
                            Some(v) => c.env(k, v),
                            None => c.env_remove(k),
                        };
                    }
                    // The program's own result line says which allocator it ran on: a
                    // preload that did not take under valgrind is an error, not a count.
                    let r = exec::sample(c, Duration::from_secs(600)).and_then(|s| {
                        if s.allocator == *al {
                            callgrind_total(&out)
                        } else {
                            Err(format!(
                                "the process reports allocator {:?}, expected {al:?}",
                                s.allocator
                            ))
                        }
                    });
                    pb.inc(1);
                    done += 1;
                    match r {
                        Ok(ir) => irs.push(ir),
                        Err(e) => {
                            pb.println(format!("{name} · {al}: FAILED: {e}"));
                            row.status = "failed".into();
                            row.error = Some(e);
                            break;
                        }
                    }
                }
                pb.inc(2 - done);
                row.ir1 = irs.first().copied();
                row.ir2 = irs.get(1).copied();
                if let [i1, i2] = irs[..] {
                    row.instructions_per_pair = Some((i2 as f64 - i1 as f64) / (n2 - n1) as f64);
                }
                callgrind.push(row);
            }
        }
    }
    pb.finish_and_clear();

    // 4. Report.
    let mut geomean = BTreeMap::new();
    for lane in Lane::ALL {
        let lane_entries: Vec<Entry> = entries.iter().filter(|e| e.lane == lane).cloned().collect();
        if !lane_entries.is_empty() {
            geomean.insert(
                lane.key().to_string(),
                report::geomeans(&results, &lane_entries, &allocs, &baseline),
            );
        }
    }
    let mut vers = versions(&root);
    // The C lane's allocators report their own versions (mi_version, mallctl, glibc).
    for c in results.iter().filter(|c| c.lane == Lane::C) {
        if let Some(v) = c.samples.iter().find_map(|s| s.allocator_version.clone()) {
            if !v.is_empty() {
                vers.entry(format!("C lane {}", c.allocator)).or_insert(v);
            }
        }
    }
    let preload_libraries = progs
        .libs
        .iter()
        .map(|(al, l)| {
            let v = match l {
                Ok(Some(p)) => p.strip_prefix(&root).unwrap_or(p).display().to_string(),
                Ok(None) => "none (glibc)".to_string(),
                Err(e) => format!("missing: {e}"),
            };
            (al.clone(), v)
        })
        .collect();
    let rep = Report {
        date: date(&root),
        quick: a.quick,
        runs,
        threads,
        baseline: baseline.clone(),
        machine: machine(&root),
        versions: vers,
        builds: progs.builds,
        preload_libraries,
        results,
        callgrind,
        geomean,
    };
    print!("{}", report::table(&rep));
    let json_path = out_dir.join("results.json");
    let json = serde_json::to_string_pretty(&rep).map_err(|e| format!("serialising: {e}"))?;
    std::fs::write(&json_path, json + "\n")
        .map_err(|e| format!("cannot write {}: {e}", json_path.display()))?;
    let svg_path = out_dir.join("results.svg");
    chart::draw(&rep, &allocs, &svg_path)?;
    let show = |p: &Path| p.strip_prefix(&root).unwrap_or(p).display().to_string();
    println!("\nwrote {} and {}", show(&json_path), show(&svg_path));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_names_are_unique_and_each_workload_exists_in_its_lane() {
        let p = plan(2);
        let root = crate::root();
        let c_src = std::fs::read_to_string(root.join(baselines::C_SOURCE)).unwrap();
        let rust_src = std::fs::read_to_string(root.join("xtask/workloads/src/main.rs")).unwrap();
        for (i, e) in p.iter().enumerate() {
            assert!(p[..i].iter().all(|o| o.name != e.name), "{} twice", e.name);
            assert_eq!(e.name.starts_with("c/"), e.lane == Lane::C, "{}", e.name);
            let w = &e.args[0];
            let known = match e.lane {
                Lane::Rust => rust_src.contains(&format!("\"{w}\" =>")),
                Lane::C => c_src.contains(&format!("{{\"{w}\", ")),
            };
            assert!(known, "{}: no workload {w} in its lane's program", e.name);
        }
        // The patterns both lanes must cover.
        for w in [
            "large-blocks",
            "producer-consumer-64b",
            "larson",
            "cross-thread-realloc",
        ] {
            for lane in Lane::ALL {
                assert!(
                    p.iter().any(|e| e.lane == lane && e.args[0] == w),
                    "{w} missing from the {lane:?} lane"
                );
            }
        }
    }

    #[test]
    fn the_table_has_whole_headers_and_a_geomean_per_lane() {
        let entry = |lane, name: &str| Entry {
            name: name.into(),
            lane,
            args: vec![],
        };
        let mut results = Vec::new();
        for (lane, name) in [(Lane::Rust, "tiny-hot"), (Lane::C, "c/tiny-hot")] {
            for (al, ops) in [("hakmem", 300.0), ("mimalloc", 200.0)] {
                let mut c = Cell::new(&entry(lane, name), al, String::new());
                for k in 0..3 {
                    c.samples.push(Sample {
                        workload: name.into(),
                        allocator: al.into(),
                        allocator_version: None,
                        threads: 1,
                        iters: 1,
                        ops: ops as u64 + k,
                        secs: 1.0,
                        peak_rss_kib: Some(2048),
                        rss_after_free_kib: None,
                    });
                }
                c.summarize();
                results.push(c);
            }
        }
        report::ratios(&mut results, "mimalloc");
        let allocs = vec!["hakmem".to_string(), "mimalloc".to_string()];
        let mut geomean = BTreeMap::new();
        for lane in Lane::ALL {
            let es = vec![entry(
                lane,
                if lane == Lane::C {
                    "c/tiny-hot"
                } else {
                    "tiny-hot"
                },
            )];
            geomean.insert(
                lane.key().to_string(),
                report::geomeans(&results, &es, &allocs, "mimalloc"),
            );
        }
        let rep = Report {
            date: "today".into(),
            quick: true,
            runs: 3,
            threads: 2,
            baseline: "mimalloc".into(),
            machine: BTreeMap::new(),
            versions: BTreeMap::new(),
            builds: BTreeMap::new(),
            preload_libraries: BTreeMap::new(),
            results,
            callgrind: vec![],
            geomean,
        };
        let t = report::table(&rep);
        for h in [
            "vs mimalloc",
            "peak RSS spread",
            "RSS vs mimalloc",
            "freed MiB",
        ] {
            assert!(t.contains(h), "header {h:?} cut short in\n{t}");
        }
        assert_eq!(t.matches("geomean hakmem").count(), 2, "{t}");
        assert!(t.contains("1.50x"), "{t}");
        // The chart draws from the same report.
        let svg = std::env::temp_dir().join(format!("xtask-chart-{}.svg", std::process::id()));
        chart::draw(&rep, &allocs, &svg).unwrap();
        let s = std::fs::read_to_string(&svg).unwrap();
        let _ = std::fs::remove_file(&svg);
        assert!(s.contains("c/tiny-hot") && s.contains("geometric mean"));
    }
}
