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
mod build;
mod callgrind;
mod chart;
mod exec;
mod meta;
mod plan;
mod report;

pub(crate) use build::{build_errors, last_lines};

use exec::Sample;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Every allocator the suite knows, in table order.
pub const ALLOCATORS: &[&str] = &["hakmem", "system", "mimalloc", "jemalloc"];
/// hakmem with heap profiling on at its default rate: hakmem's own builds, each run with
/// `HAKMEM_PROF=1` and `HAKMEM_PROF_FILE=` (no dump), so `--allocators hakmem,hakmem-prof`
/// gives profiling's on-cost side by side in one run (hakmem is then the baseline). Never
/// selected by default.
pub const PROFILED: &str = "hakmem-prof";
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
    /// A first look: hakmem against the baseline only (unless --allocators says otherwise), a
    /// third of the work per run, 3 runs instead of 5, and on a fresh clone the hakmem and
    /// mimalloc builds (docs/results has what its builds and runs took). The full suite also
    /// builds jemalloc from its sources twice.
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
    /// Allocators to compare, comma-separated: hakmem, system, mimalloc, jemalloc (default:
    /// all four; with --quick, hakmem and mimalloc), and hakmem-prof (hakmem with heap
    /// profiling on; the first allocator named is the baseline when mimalloc is not).
    #[arg(long, value_delimiter = ',')]
    allocators: Option<Vec<String>>,
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
    /// (max - min) / median of the throughput: how far apart the runs were.
    pub spread: Option<f64>,
    /// The same for the peak RSS.
    pub rss_spread: Option<f64>,
    /// Median throughput over the baseline's median throughput (higher is better).
    pub ratio_vs_baseline: Option<f64>,
    /// Median peak RSS over the baseline's (lower is better).
    pub rss_ratio_vs_baseline: Option<f64>,
    /// False when the runs of this cell or of the baseline's spread wider than the gap the
    /// ratio reports (|ratio - 1|): the ratio is then not a verdict, either way.
    pub verdict: Option<bool>,
    /// The same for the RSS ratio.
    pub rss_verdict: Option<bool>,
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
            spread: None,
            rss_spread: None,
            ratio_vs_baseline: None,
            rss_ratio_vs_baseline: None,
            verdict: None,
            rss_verdict: None,
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
        self.spread = spread(
            self.min_ops_per_sec,
            self.max_ops_per_sec,
            self.median_ops_per_sec,
        );
        self.rss_spread = spread(
            self.min_peak_rss_kib,
            self.max_peak_rss_kib,
            self.median_peak_rss_kib,
        );
    }
}

/// (max - min) / median, when all three are known and the median is positive.
fn spread(min: Option<f64>, max: Option<f64>, median: Option<f64>) -> Option<f64> {
    match (min, max, median) {
        (Some(lo), Some(hi), Some(m)) if m > 0.0 => Some((hi - lo) / m),
        _ => None,
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
    /// The commit measured (`+dirty` when the work tree differed from it).
    pub commit: String,
    /// `rustc -V`.
    pub compiler: String,
    pub quick: bool,
    pub runs: usize,
    pub threads: usize,
    pub baseline: String,
    /// CPUs, model, kernel, and the load averages at the start and at the end of the run.
    pub machine: BTreeMap<String, String>,
    /// Seconds spent building, and in all.
    pub build_secs: f64,
    pub total_secs: f64,
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

/// The allocators `a` selects: `--allocators`, or by default all of them (with `--quick`, hakmem
/// and the baseline).
fn allocators(a: &Args) -> Result<Vec<String>, String> {
    let default: &[&str] = if a.quick {
        &["hakmem", BASELINE]
    } else {
        ALLOCATORS
    };
    let names: Vec<String> = match &a.allocators {
        Some(v) => v.clone(),
        None => default.iter().map(|s| s.to_string()).collect(),
    };
    let mut allocs: Vec<String> = Vec::new();
    for name in &names {
        let n = name.trim().to_lowercase();
        if !ALLOCATORS.contains(&n.as_str()) && n != PROFILED {
            return Err(format!(
                "unknown allocator {name:?}; choose from {}, {PROFILED}",
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
    Ok(allocs)
}

pub fn run(a: Args) -> Result<(), String> {
    let root = crate::root();
    let allocs = allocators(&a)?;
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
    let mut machine = meta::machine(&root);
    machine.insert("load average at start".into(), meta::load_average());
    let started = std::time::Instant::now();

    let over = 4 * cpus;
    let entries: Vec<Entry> = plan::plan(threads, over)
        .into_iter()
        .filter(|e| plan::selected(&a.filter, &e.name))
        .collect();
    let cg_names = [
        (Lane::Rust, "callgrind/tiny-pair"),
        (Lane::C, "callgrind/c-pair"),
    ];
    let cg_lanes: Vec<Lane> = cg_names
        .iter()
        .filter(|(_, n)| plan::selected(&a.filter, n))
        .map(|(l, _)| *l)
        .collect();
    if entries.is_empty() && cg_lanes.is_empty() {
        return Err(format!(
            "--filter {} matches nothing; entries are {}, {}",
            a.filter.join(","),
            plan::plan(threads, over)
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
    let lanes: Vec<Lane> = Lane::ALL
        .into_iter()
        .filter(|l| entries.iter().any(|e| e.lane == *l) || cg_lanes.contains(l))
        .collect();
    let mut distinct: Vec<&str> = allocs.iter().map(|al| build::build_of(al)).collect();
    distinct.sort_unstable();
    distinct.dedup();
    let builds = lanes
        .iter()
        .map(|l| match l {
            Lane::Rust => distinct.len(),
            Lane::C => 1 + distinct.len(),
        })
        .sum::<usize>();
    let total = builds + unique.len() * runs * allocs.len() + cg_lanes.len() * 2 * allocs.len();
    let pb = progress(total as u64);

    // 1. Builds.
    let progs = build::build_all(&root, &bench_dir, &allocs, &lanes, &pb);
    let built_in = started.elapsed();

    // 2. The entries of both lanes, allocators interleaved within each repetition.
    let mut results = run_entries(
        &entries, &unique, &allocs, runs, a.quick, timeout, &progs, &pb,
    );
    report::ratios(&mut results, &baseline);

    // 3. callgrind: instructions per malloc+free pair, in each selected lane.
    let callgrind = callgrind::run(&root, &out_dir, &cg_lanes, &allocs, &progs, &pb);
    pb.finish_and_clear();

    // 4. Report.
    machine.insert("load average at end".into(), meta::load_average());
    let rep = report_of(
        &root,
        &a,
        Setup {
            runs,
            threads,
            baseline,
            machine,
            built_secs: built_in.as_secs_f64(),
            total_secs: started.elapsed().as_secs_f64(),
        },
        &entries,
        &allocs,
        progs,
        results,
        callgrind,
    );
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

/// Runs every unique command `runs` times per allocator, allocators interleaved within each
/// repetition so a noisy neighbour hits them all alike; returns a cell per entry and allocator.
#[allow(clippy::too_many_arguments)]
fn run_entries(
    entries: &[Entry],
    unique: &[&Entry],
    allocs: &[String],
    runs: usize,
    quick: bool,
    timeout: Duration,
    progs: &build::Programs,
    pb: &ProgressBar,
) -> Vec<Cell> {
    // Per unique (lane, arguments): its cells, by allocator.
    type Cells = BTreeMap<String, Cell>;
    let mut by_cmd: Vec<((Lane, Vec<String>), Cells)> = Vec::new();
    for e in unique {
        let mut cells: BTreeMap<String, Cell> = BTreeMap::new();
        for al in allocs {
            let cell = match progs.command(e.lane, al, &e.args, quick) {
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
            for al in allocs {
                let cell = cells.get_mut(al).expect("a cell per allocator");
                pb.set_message(format!("{} · {al} · run {}/{runs}", e.name, rep + 1));
                if cell.status == "ok" {
                    let c = progs
                        .command(e.lane, al, &e.args, quick)
                        .expect("it worked for the cell");
                    match exec::sample(c, timeout) {
                        Ok(s) if s.allocator != build::build_of(al) => cell.fail(format!(
                            "the process reports allocator {:?}, expected {:?}{}",
                            s.allocator,
                            build::build_of(al),
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
    for e in entries {
        let cells = &by_cmd
            .iter()
            .find(|(k, _)| k.0 == e.lane && k.1 == e.args)
            .expect("every entry ran")
            .1;
        for al in allocs {
            let mut c = cells[al].clone();
            c.entry = e.name.clone();
            results.push(c);
        }
    }
    results
}

/// What [`report_of`] needs about the run besides its results.
struct Setup {
    runs: usize,
    threads: usize,
    baseline: String,
    machine: BTreeMap<String, String>,
    built_secs: f64,
    total_secs: f64,
}

/// The report of a finished run: geometric means, versions, the libraries preloaded.
#[allow(clippy::too_many_arguments)]
fn report_of(
    root: &Path,
    a: &Args,
    setup: Setup,
    entries: &[Entry],
    allocs: &[String],
    progs: build::Programs,
    results: Vec<Cell>,
    callgrind: Vec<Callgrind>,
) -> Report {
    let mut geomean = BTreeMap::new();
    for lane in Lane::ALL {
        let lane_entries: Vec<Entry> = entries.iter().filter(|e| e.lane == lane).cloned().collect();
        if !lane_entries.is_empty() {
            geomean.insert(
                lane.key().to_string(),
                report::geomeans(&results, &lane_entries, allocs, &setup.baseline),
            );
        }
    }
    let mut vers = meta::versions(root);
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
                Ok(Some(p)) => p.strip_prefix(root).unwrap_or(p).display().to_string(),
                Ok(None) => "none (glibc)".to_string(),
                Err(e) => format!("missing: {e}"),
            };
            (al.clone(), v)
        })
        .collect();
    Report {
        date: meta::date(root),
        commit: meta::commit(root),
        compiler: vers.get("rustc").cloned().unwrap_or_default(),
        quick: a.quick,
        runs: setup.runs,
        threads: setup.threads,
        baseline: setup.baseline,
        machine: setup.machine,
        build_secs: setup.built_secs,
        total_secs: setup.total_secs,
        versions: vers,
        builds: progs.builds,
        preload_libraries,
        results,
        callgrind,
        geomean,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_names_are_unique_and_each_workload_exists_in_its_lane() {
        // With as many threads as the oversubscribed rows use, they are not added twice.
        let same = plan::plan(8, 8);
        for (i, e) in same.iter().enumerate() {
            assert!(
                same[..i].iter().all(|o| o.name != e.name),
                "{} twice",
                e.name
            );
        }
        let p = plan::plan(2, 8);
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
            "churn",
        ] {
            // Run oversubscribed too, in both lanes, except thread-churn (Rust only).
            for lane in Lane::ALL {
                if matches!(w, "larson" | "churn") {
                    assert!(
                        p.iter().any(|e| e.lane == lane
                            && e.args[0] == w
                            && e.args.ends_with(&["--threads".into(), "8".into()])),
                        "{w} oversubscribed missing from the {lane:?} lane"
                    );
                }
            }
            for lane in Lane::ALL {
                assert!(
                    p.iter().any(|e| e.lane == lane && e.args[0] == w),
                    "{w} missing from the {lane:?} lane"
                );
            }
        }
    }

    #[test]
    fn hakmem_prof_is_chosen_by_name_and_runs_hakmem_with_profiling_on() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            a: Args,
        }
        let parse = |v: &[&str]| Cli::parse_from([&["bench"], v].concat()).a;
        assert_eq!(
            allocators(&parse(&["--quick"])).unwrap(),
            ["hakmem", "mimalloc"]
        );
        assert!(!allocators(&parse(&[]))
            .unwrap()
            .contains(&PROFILED.to_string()));
        assert_eq!(
            allocators(&parse(&["--allocators", "hakmem,hakmem-prof"])).unwrap(),
            ["hakmem", PROFILED]
        );
        assert!(allocators(&parse(&["--allocators", "hakmem-profile"])).is_err());
        assert_eq!(build::build_of(PROFILED), "hakmem");
        assert_eq!(build::build_of("mimalloc"), "mimalloc");
        let progs = build::Programs::for_tests("/bin/true");
        let env = |al| {
            let c = progs.command(Lane::Rust, al, &[], false).unwrap();
            let mut v: Vec<(String, String)> = c
                .get_envs()
                .filter_map(|(k, v)| Some((k.to_str()?.into(), v?.to_str()?.into())))
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            env(PROFILED),
            [
                ("HAKMEM_PROF".into(), "1".into()),
                ("HAKMEM_PROF_FILE".into(), String::new())
            ]
        );
        assert_eq!(env("hakmem"), []);
    }

    #[test]
    fn the_table_has_whole_headers_and_a_geomean_per_lane() {
        let entry = |lane, name: &str| Entry {
            name: name.into(),
            lane,
            args: vec![],
        };
        let mut results = Vec::new();
        // Rust: hakmem 1.5x with runs 1% apart; C: hakmem 1.02x with runs 50% apart, so
        // not a verdict. The longest workload name of the plan, to check the width.
        let long = "scaling/random-mixed-w400/t8";
        for (lane, name, spread) in [
            (Lane::Rust, "tiny-hot", 3),
            (Lane::C, "c/tiny-hot", 100),
            (Lane::Rust, long, 3),
        ] {
            let ops_of = |al| match (al, lane) {
                ("hakmem", Lane::C) => 204.0,
                ("hakmem", _) => 300.0,
                _ => 200.0,
            };
            for al in ["hakmem", "mimalloc"] {
                let ops = ops_of(al);
                let mut c = Cell::new(&entry(lane, name), al, String::new());
                for k in 0..3 {
                    c.samples.push(Sample {
                        workload: name.into(),
                        allocator: al.into(),
                        allocator_version: None,
                        threads: 1,
                        iters: 1,
                        ops: (ops as u64 - spread as u64 / 2) + k * spread as u64 / 2,
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
            commit: "0123456789abcdef".into(),
            compiler: "rustc 1.95.0".into(),
            build_secs: 1.0,
            total_secs: 2.0,
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
        for h in ["ratio", "RSS ratio", "freed", "commit 0123456789ab"] {
            assert!(t.contains(h), "{h:?} missing from\n{t}");
        }
        assert_eq!(t.matches("geomean hakmem").count(), 2, "{t}");
        // The clear gap is a verdict, the noisy one is marked.
        assert!(t.contains(" 1.50x"), "{t}");
        assert!(t.contains("~1.02x"), "{t}");
        for line in t.lines() {
            assert!(
                line.chars().count() <= report::MAX_WIDTH,
                "a line wider than {}: {line:?}",
                report::MAX_WIDTH
            );
        }
        // The chart draws from the same report.
        let svg = std::env::temp_dir().join(format!("xtask-chart-{}.svg", std::process::id()));
        chart::draw(&rep, &allocs, &svg).unwrap();
        let s = std::fs::read_to_string(&svg).unwrap();
        let _ = std::fs::remove_file(&svg);
        assert!(s.contains("c/tiny-hot") && s.contains("geometric mean"));
    }
}
