//! `cargo xtask bench`: the benchmark suite (see docs/BENCHMARKS.md).
//!
//! 1. Builds `hakmem-workloads` once per allocator (`--features alloc-X`, each in its own
//!    target dir under target/bench/, so later runs only re-check them).
//! 2. Runs every workload in its own process, `--runs` times, allocators interleaved so
//!    a noisy neighbour hits them all alike; keeps the median and the min..max spread.
//! 3. The LD_PRELOAD lane: a C workload under glibc, libhakmem.so and, where installed,
//!    Debian's libmimalloc and libjemalloc.
//! 4. callgrind: instructions per malloc+free pair (the bare `tiny-pair` loop), when valgrind
//!    is present.
//! 5. Prints a table and writes target/bench/results.json and target/bench/results.svg.
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

#[derive(clap::Args)]
pub struct Args {
    /// The whole suite in about two minutes: less work per run and 3 runs instead of 5.
    #[arg(long)]
    quick: bool,
    /// Run only the entries whose name contains one of these comma-separated words,
    /// e.g. `larson`, `scaling`, `preload`, `callgrind`.
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
}

/// One row group of the table: a workload with its arguments.
#[derive(Clone)]
pub struct Entry {
    pub name: String,
    pub args: Vec<String>,
}

/// The results of one entry for one allocator.
#[derive(Clone, Serialize)]
pub struct Cell {
    pub entry: String,
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
    fn new(entry: &str, allocator: &str, command: String) -> Self {
        Cell {
            entry: entry.into(),
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

    fn skipped(entry: &str, allocator: &str, why: String) -> Self {
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

/// The callgrind figure for one allocator.
#[derive(Serialize)]
pub struct Callgrind {
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
    /// Per allocator: "ok", or why its build failed.
    pub builds: BTreeMap<String, String>,
    pub results: Vec<Cell>,
    pub preload: Vec<Cell>,
    pub callgrind: Vec<Callgrind>,
    /// Per allocator: geometric means of the ratios over the unique entries (not the
    /// preload lane) where both it and the baseline succeeded.
    pub geomean: BTreeMap<String, report::Geomean>,
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// The suite's entries for `threads` threads.
fn plan(t: usize) -> Vec<Entry> {
    let e = |name: String, args: &[&str]| Entry {
        name,
        args: args.iter().map(|s| s.to_string()).collect(),
    };
    let ts = t.to_string();
    let fs = t.max(2).to_string();
    let mut v = vec![
        e("tiny-hot".into(), &["tiny-hot", "--threads", "1"]),
        e(
            "random-mixed/w400".into(),
            &["random-mixed", "--working-set", "400", "--threads", "1"],
        ),
        e(
            "random-mixed/w8192".into(),
            &["random-mixed", "--working-set", "8192", "--threads", "1"],
        ),
        e(format!("larson/t{t}"), &["larson", "--threads", &ts]),
        e(
            format!("producer-consumer/t{t}"),
            &["producer-consumer", "--threads", &ts],
        ),
        e(
            format!("false-sharing/t{}", t.max(2)),
            &["false-sharing", "--threads", &fs],
        ),
        e(
            format!("thread-churn/t{t}"),
            &["thread-churn", "--threads", &ts],
        ),
        e("mixed-sizes".into(), &["mixed-sizes", "--threads", "1"]),
        e(
            "realloc-growth".into(),
            &["realloc-growth", "--threads", "1"],
        ),
        e("fragmentation".into(), &["fragmentation", "--threads", "1"]),
    ];
    for n in [1, 2, 4, 8] {
        let ns = n.to_string();
        v.push(e(
            format!("scaling/random-mixed-w400/t{n}"),
            &["random-mixed", "--working-set", "400", "--threads", &ns],
        ));
    }
    for n in [1, 2, 4, 8] {
        let ns = n.to_string();
        v.push(e(
            format!("scaling/larson/t{n}"),
            &["larson", "--threads", &ns],
        ));
    }
    v
}

fn selected(filter: &[String], name: &str) -> bool {
    filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()))
}

/// The compiler's error lines if there are any, else the last lines.
fn build_errors(s: &str) -> String {
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

fn last_lines(s: &str, n: usize) -> String {
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

fn newer(a: &Path, b: &Path) -> bool {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (m(a), m(b)) {
        (Some(x), Some(y)) => x > y,
        _ => true,
    }
}

/// Compile the C workload of the LD_PRELOAD lane (again only when its source changed).
fn build_c(root: &Path) -> Result<PathBuf, String> {
    let src = root.join("xtask/workloads/c/preload_mixed.c");
    let bin = root.join("target/bench/preload-mixed");
    if bin.is_file() && !newer(&src, &bin) {
        return Ok(bin);
    }
    let out = Command::new("cc")
        .args(["-O2", "-pthread", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .map_err(|e| format!("cannot run cc: {e}"))?;
    if out.status.success() {
        Ok(bin)
    } else {
        Err(format!(
            "cc -O2 -pthread {} failed: {}",
            src.display(),
            last_lines(&String::from_utf8_lossy(&out.stderr), 4)
        ))
    }
}

/// Build libhakmem.so (`cargo build --release -p hakmem-preload`).
fn build_preload(root: &Path) -> Result<PathBuf, String> {
    let out = Command::new(cargo())
        .current_dir(root)
        .args(["build", "--release", "-p", "hakmem-preload", "--target-dir"])
        .arg(root.join("target"))
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`cargo build --release -p hakmem-preload` failed: {}",
            build_errors(&String::from_utf8_lossy(&out.stderr))
        ));
    }
    let so = root.join("target/release/libhakmem.so");
    if so.is_file() {
        Ok(so)
    } else {
        Err(format!(
            "`cargo build --release -p hakmem-preload` succeeded but {} is missing",
            so.display()
        ))
    }
}

/// A distribution's shared library, e.g. `libmimalloc.so*` under the multiarch dir.
fn find_system_lib(stem: &str) -> Option<PathBuf> {
    let multiarch = format!("/usr/lib/{}-linux-gnu", std::env::consts::ARCH);
    for dir in [multiarch.as_str(), "/usr/lib", "/usr/local/lib", "/lib"] {
        let Ok(rd) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut hits: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{stem}.so")))
            })
            .collect();
        // Prefer the shortest name: libx.so.2 over libx.so.2.0.9 (same file, via link).
        hits.sort_by_key(|p| p.as_os_str().len());
        if let Some(p) = hits.into_iter().next() {
            return Some(p);
        }
    }
    None
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
    for pkg in ["libmimalloc2.0", "libjemalloc2", "libc6", "valgrind"] {
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
    std::fs::create_dir_all(&bench_dir)
        .map_err(|e| format!("cannot create {}: {e}", bench_dir.display()))?;

    let entries: Vec<Entry> = plan(threads)
        .into_iter()
        .filter(|e| selected(&a.filter, &e.name))
        .collect();
    let preload_name = format!("preload/mixed/t{threads}");
    let do_preload = selected(&a.filter, &preload_name);
    let do_callgrind = selected(&a.filter, "callgrind/tiny-pair");
    if entries.is_empty() && !do_preload && !do_callgrind {
        return Err(format!(
            "--filter {} matches nothing; entries are {}, {preload_name}, callgrind/tiny-pair",
            a.filter.join(","),
            plan(threads)
                .iter()
                .map(|e| e.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let baseline = if allocs.iter().any(|x| x == BASELINE) {
        BASELINE.to_string()
    } else {
        allocs[0].clone()
    };
    // Unique commands: an entry with the same arguments as an earlier one (say
    // scaling/larson/t2 and larson/t2) reuses its runs.
    let mut unique: Vec<Vec<String>> = Vec::new();
    for e in &entries {
        if !unique.contains(&e.args) {
            unique.push(e.args.clone());
        }
    }
    let need_bins = !entries.is_empty() || do_callgrind;
    let callgrind_runs = if do_callgrind { 2 * allocs.len() } else { 0 };
    let preload_steps = if do_preload {
        2 + allocs.len() * runs
    } else {
        0
    };
    let total = if need_bins { allocs.len() } else { 0 }
        + unique.len() * runs * allocs.len()
        + preload_steps
        + callgrind_runs;
    let pb = progress(total as u64);

    // 1. Build one workload binary per allocator.
    let mut bins: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut builds: BTreeMap<String, String> = BTreeMap::new();
    if need_bins {
        for al in &allocs {
            pb.set_message(format!("building hakmem-workloads for {al}"));
            match build_workloads(&root, al) {
                Ok(b) => {
                    bins.insert(al.clone(), b);
                    builds.insert(al.clone(), "ok".into());
                }
                Err(e) => {
                    pb.println(format!("{al}: build failed, skipping it: {e}"));
                    builds.insert(al.clone(), e);
                }
            }
            pb.inc(1);
        }
    }

    // 2. The Rust workloads.
    let mut by_args: BTreeMap<Vec<String>, BTreeMap<String, Cell>> = BTreeMap::new();
    for args in &unique {
        let name = entries
            .iter()
            .find(|e| &e.args == args)
            .map(|e| e.name.clone())
            .unwrap_or_default();
        let mut cells: BTreeMap<String, Cell> = BTreeMap::new();
        for al in &allocs {
            let cell = match bins.get(al) {
                Some(bin) => {
                    let mut c = Command::new(bin);
                    c.args(args);
                    if a.quick {
                        c.arg("--quick");
                    }
                    Cell::new(&name, al, exec::describe(&c))
                }
                None => Cell::skipped(&name, al, format!("not built: {}", builds[al])),
            };
            cells.insert(al.clone(), cell);
        }
        if pb.is_hidden() {
            // No terminal for the bar (CI logs): one line per entry instead.
            eprintln!("bench: {name} ({runs} runs × {} allocators)", allocs.len());
        }
        for rep in 0..runs {
            for al in &allocs {
                let cell = cells.get_mut(al).expect("a cell per allocator");
                pb.set_message(format!("{name} · {al} · run {}/{runs}", rep + 1));
                if cell.status == "ok" {
                    let mut c = Command::new(&bins[al]);
                    c.args(args);
                    if a.quick {
                        c.arg("--quick");
                    }
                    match exec::sample(c, timeout) {
                        Ok(s) if s.allocator != *al => cell.fail(format!(
                            "the binary reports allocator {:?}, expected {al:?}",
                            s.allocator
                        )),
                        Ok(s) => cell.samples.push(s),
                        Err(e) => {
                            pb.println(format!("{name} · {al}: FAILED: {e}"));
                            cell.fail(e);
                        }
                    }
                }
                pb.inc(1);
            }
        }
        for c in cells.values_mut() {
            c.summarize();
        }
        by_args.insert(args.clone(), cells);
    }
    let mut results: Vec<Cell> = Vec::new();
    for e in &entries {
        for al in &allocs {
            let mut c = by_args[&e.args][al].clone();
            c.entry = e.name.clone();
            results.push(c);
        }
    }
    report::ratios(&mut results, &baseline);

    // 3. The LD_PRELOAD lane.
    let mut preload: Vec<Cell> = Vec::new();
    if do_preload {
        if pb.is_hidden() {
            eprintln!("bench: {preload_name}");
        }
        pb.set_message("building the C workload");
        let cbin = build_c(&root);
        pb.inc(1);
        let so = if allocs.iter().any(|x| x == "hakmem") {
            pb.set_message("building libhakmem.so (cargo build --release -p hakmem-preload)");
            Some(build_preload(&root))
        } else {
            None
        };
        pb.inc(1);
        let iters = if a.quick { "8000000" } else { "24000000" };
        let tstr = threads.to_string();
        for al in &allocs {
            let lib: Result<Option<PathBuf>, String> = match al.as_str() {
                "system" => Ok(None),
                "hakmem" => match &so {
                    Some(Ok(p)) => Ok(Some(p.clone())),
                    Some(Err(e)) => Err(e.clone()),
                    None => Err("not selected".into()),
                },
                other => {
                    let stem = format!("lib{other}");
                    find_system_lib(&stem).map(Some).ok_or_else(|| {
                        format!(
                            "{stem}.so not installed (Debian package {})",
                            if other == "mimalloc" {
                                "libmimalloc2.0"
                            } else {
                                "libjemalloc2"
                            }
                        )
                    })
                }
            };
            let mut cell = match (&cbin, &lib) {
                (Err(e), _) => Cell::skipped(&preload_name, al, e.clone()),
                (_, Err(e)) => Cell::skipped(&preload_name, al, e.clone()),
                (Ok(bin), Ok(lib)) => {
                    let mut c = Command::new(bin);
                    c.args(["--threads", &tstr, "--iters", iters]);
                    if let Some(l) = lib {
                        c.env("LD_PRELOAD", l);
                    }
                    Cell::new(&preload_name, al, exec::describe(&c))
                }
            };
            if cell.status == "ok" {
                let want = if al == "system" { "none" } else { al.as_str() };
                for rep in 0..runs {
                    pb.set_message(format!("{preload_name} · {al} · run {}/{runs}", rep + 1));
                    let mut c = Command::new(cbin.as_ref().expect("built"));
                    c.args(["--threads", &tstr, "--iters", iters]);
                    if let Ok(Some(l)) = &lib {
                        c.env("LD_PRELOAD", l);
                    }
                    match exec::sample(c, timeout) {
                        Ok(s) if s.allocator != want => {
                            cell.fail(format!(
                                "the preload did not take: the process has {:?} mapped, expected {want:?}",
                                s.allocator
                            ));
                            pb.inc((runs - rep) as u64);
                            break;
                        }
                        Ok(s) => cell.samples.push(s),
                        Err(e) => {
                            pb.println(format!("{preload_name} · {al}: FAILED: {e}"));
                            cell.fail(e);
                            pb.inc((runs - rep) as u64);
                            break;
                        }
                    }
                    pb.inc(1);
                }
            } else {
                pb.inc(runs as u64);
            }
            cell.summarize();
            preload.push(cell);
        }
        report::ratios(&mut preload, &baseline);
    }

    // 4. callgrind: instructions per malloc+free pair, on the bare tiny-pair loop.
    let mut callgrind: Vec<Callgrind> = Vec::new();
    if do_callgrind {
        if pb.is_hidden() {
            eprintln!("bench: callgrind/tiny-pair");
        }
        let valgrind = command_output("valgrind", &["--version"], &root);
        let dir = bench_dir.join("callgrind");
        let _ = std::fs::create_dir_all(&dir);
        let (n1, n2) = CALLGRIND_ITERS;
        for al in &allocs {
            let mut row = Callgrind {
                allocator: al.clone(),
                status: "ok".into(),
                error: None,
                n1,
                n2,
                ir1: None,
                ir2: None,
                instructions_per_pair: None,
            };
            let why_not = match (&valgrind, bins.get(al)) {
                (None, _) => Some("valgrind not found".to_string()),
                (_, None) => Some(format!("not built: {}", builds[al])),
                _ => None,
            };
            if let Some(w) = why_not {
                row.status = "skipped".into();
                row.error = Some(w);
                pb.inc(2);
                callgrind.push(row);
                continue;
            }
            let mut irs = Vec::new();
            let mut done = 0;
            for n in [n1, n2] {
                pb.set_message(format!("callgrind · tiny-pair · {al} · {n} iterations"));
                let out = dir.join(format!("{al}-{n}.out"));
                let mut c = Command::new("valgrind");
                c.arg("--tool=callgrind")
                    .arg(format!("--callgrind-out-file={}", out.display()))
                    .arg(&bins[al])
                    .args(["tiny-pair", "--iters", &n.to_string()]);
                let r =
                    exec::output(c, Duration::from_secs(600)).and_then(|_| callgrind_total(&out));
                pb.inc(1);
                done += 1;
                match r {
                    Ok(ir) => irs.push(ir),
                    Err(e) => {
                        pb.println(format!("callgrind · {al}: FAILED: {e}"));
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
    pb.finish_and_clear();

    // 5. Report.
    let geomean = report::geomeans(&results, &entries, &allocs, &baseline);
    let rep = Report {
        date: date(&root),
        quick: a.quick,
        runs,
        threads,
        baseline: baseline.clone(),
        machine: machine(&root),
        versions: versions(&root),
        builds,
        results,
        preload,
        callgrind,
        geomean,
    };
    print!("{}", report::table(&rep));
    let json_path = bench_dir.join("results.json");
    let json = serde_json::to_string_pretty(&rep).map_err(|e| format!("serialising: {e}"))?;
    std::fs::write(&json_path, json + "\n")
        .map_err(|e| format!("cannot write {}: {e}", json_path.display()))?;
    let svg_path = bench_dir.join("results.svg");
    chart::draw(&rep, &allocs, &svg_path)?;
    println!(
        "\nwrote {} and {}",
        json_path
            .strip_prefix(&root)
            .unwrap_or(&json_path)
            .display(),
        svg_path.strip_prefix(&root).unwrap_or(&svg_path).display()
    );
    Ok(())
}
