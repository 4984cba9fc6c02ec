//! `cargo xtask verify`: every check CI runs, in order, with a summary table at the end.
//!
//! | step          | what runs                                                                    |
//! |---------------|------------------------------------------------------------------------------|
//! | `fmt`         | `cargo fmt --all -- --check`                                                 |
//! | `clippy`      | `cargo clippy --workspace --all-targets -- -D warnings`                      |
//! | `doc`         | `cargo doc --no-deps`, warnings denied, boxes with `missing_docs`; `cargo package` |
//! | `test`        | `cargo test --workspace` (unit, integration and doc tests)                   |
//! | `loom`        | every box's `loom_models` tests, `--cfg loom`, optimised, in `target/loom`   |
//! | `seeded-bugs` | each loom model against a deliberately broken box: every bug must be caught  |
//! | `model`       | `cargo test --release -p hakmem-modelcheck` (the proptest state machine)     |
//!
//! The default runs all seven; `--seeded-bugs` runs only the seeded-bug pass; `--only` and `--skip`
//! pick steps. Every selected step runs even if an earlier one failed (unless `--fail-fast`), so
//! one run reports everything; the exit status is non-zero if any step failed.
//!
//! Loom builds use the `test` profile made fast (`opt-level = 3`, no debug info, no incremental)
//! through `--config` overrides in their own target dir, `target/loom`, so that neither the
//! `--cfg loom` flags nor the overrides disturb the normal build's cache. A seeded bug whose code
//! and model live in the same crate is built with `cargo rustc`, which passes
//! `--cfg hakmem_seeded_bug="NAME"` to that crate alone: only that crate is rebuilt per bug, and
//! each variant keeps its own artifact. A bug whose model lives in another crate than its code
//! needs the cfg on every crate, so it gets `RUSTFLAGS` and a target dir of its own,
//! `target/loom-bug-NAME`.
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Every box crate: a library of its own, documented in full.
pub const BOXES: &[&str] = &[
    "hakmem-os",
    "hakmem-superslab",
    "hakmem-registry",
    "hakmem-tls-sll",
    "hakmem-unified-cache",
    "hakmem-hot-heap",
    "hakmem-route",
    "hakmem-stats",
    "hakmem-lru",
    "hakmem-medium",
    "hakmem-large",
];

/// Boxes that may hold loom models (a box without any runs zero of them, which is fine as long as
/// the total is not zero).
pub const LOOM_CRATES: &[&str] = &[
    "hakmem-stats",
    "hakmem-registry",
    "hakmem-superslab",
    "hakmem-lru",
    "hakmem-hot-heap",
    "hakmem-tls-sll",
];

/// A deliberately broken variant of a box, selected by `--cfg hakmem_seeded_bug="NAME"`, and the
/// loom models that must catch it.
pub struct SeededBug {
    /// The cfg value (declared in the root Cargo.toml's check-cfg).
    pub name: &'static str,
    /// The crate whose code the cfg breaks.
    pub in_crate: &'static str,
    /// `(crate, test filter)` of the models that must catch it: at least one model must match
    /// each filter, all must pass on the correct box, and at least one must fail on the broken one.
    pub models: &'static [(&'static str, &'static str)],
    /// What breaks, for the report.
    pub what: &'static str,
}

/// The seeded bugs: the one place that ties a bug to the models that catch it
/// (docs/VERIFICATION.md has the same table).
pub const SEEDED_BUGS: &[SeededBug] = &[
    SeededBug {
        name: "missing_pin",
        in_crate: "hakmem-superslab",
        models: &[("hakmem-superslab", "loom_models::refcount")],
        what: "a remote free touches a superslab without pinning it",
    },
    SeededBug {
        name: "plain_store",
        in_crate: "hakmem-superslab",
        models: &[("hakmem-superslab", "loom_models::remote_stack")],
        what: "the remote-free push is a load and a plain store instead of a CAS loop",
    },
    SeededBug {
        name: "relaxed_order",
        in_crate: "hakmem-registry",
        models: &[("hakmem-registry", "loom_models::publication")],
        what: "the registry publishes a region with Relaxed instead of Release",
    },
    SeededBug {
        name: "leaf_store",
        in_crate: "hakmem-registry",
        models: &[("hakmem-registry", "loom_models::leaf_install")],
        what: "the registry installs a leaf with a plain store instead of a CAS",
    },
    SeededBug {
        name: "adopt_no_take",
        in_crate: "hakmem-superslab",
        models: &[("hakmem-superslab", "loom_models::abandon_adopt")],
        what: "adopting an abandoned superslab does not take it off the list",
    },
    SeededBug {
        name: "lru_double_take",
        in_crate: "hakmem-lru",
        models: &[
            ("hakmem-lru", "loom_models::hand_over"),
            ("hakmem-lru", "loom_models::merge_hand_over"),
            ("hakmem-lru", "loom_models::join_hand_over"),
        ],
        what: "taking a region out of the lru leaves it cached, so it can be handed out twice",
    },
    SeededBug {
        name: "check_then_push",
        in_crate: "hakmem-superslab",
        models: &[("hakmem-superslab", "loom_models::abandon_vs_remote_free")],
        what: "a remote free checks for abandonment, then pushes: an abandon in between strands it",
    },
    SeededBug {
        name: "claim_without_take",
        in_crate: "hakmem-superslab",
        models: &[("hakmem-superslab", "loom_models::claim_vs_adopt")],
        what: "a freer claims an abandoned superslab by its state without taking it off the list",
    },
    SeededBug {
        name: "torn_counts",
        in_crate: "hakmem-tls-sll",
        models: &[(
            "hakmem-tls-sll",
            "loom_models::counts_read_during_slow_operations",
        )],
        what: "another thread reads a list's counts without checking the sequence lock",
    },
    SeededBug {
        name: "hint_before_push",
        in_crate: "hakmem-superslab",
        models: &[("hakmem-superslab", "loom_models::remote_hint")],
        what:
            "a remote free sets the owner's hint before its push, so a drain in between misses it",
    },
    SeededBug {
        name: "count_after_push",
        in_crate: "hakmem-superslab",
        models: &[("hakmem-superslab", "loom_models::remote_stack")],
        what: "a remote free counts its block after its push, so a take in between gets a chain \
               longer than its count",
    },
    SeededBug {
        name: "reap_by_tag",
        in_crate: "hakmem-hot-heap",
        models: &[(
            "hakmem-hot-heap",
            "loom_models::reap_vs_exit_and_a_reused_tag",
        )],
        what: "the reaper's claim checks a heap's tag alone, so a heap retired and handed to a \
               new thread with the same tag is retired under it",
    },
    SeededBug {
        name: "park_peek",
        in_crate: "hakmem-hot-heap",
        models: &[("hakmem-hot-heap", "loom_models::park_take_and_tear_down")],
        what: "a tear-down of the parked heaps reads the oldest and takes it off the set in a \
               second critical section, so a thread that took it in between has it torn down \
               under it",
    },
    SeededBug {
        name: "reap_after_take",
        in_crate: "hakmem-hot-heap",
        models: &[(
            "hakmem-hot-heap",
            "loom_models::reap_vs_park_and_a_reused_tag",
        )],
        what: "the reaper's claim ignores takes of parked heaps, so a heap parked and taken back \
               with its id by a new thread of the same tag is retired under it",
    },
    SeededBug {
        name: "section_no_recheck",
        in_crate: "hakmem-registry",
        models: &[("hakmem-registry", "loom_models::lookup_section")],
        what: "a lookup section does not check the epoch again after counting itself in, so a \
               grace period that advanced it meanwhile, and the next one, do not wait for it",
    },
    SeededBug {
        name: "destroy_skips_remote",
        in_crate: "hakmem-hot-heap",
        models: &[(
            "hakmem-hot-heap",
            "loom_models::destroy_against_a_remote_free_on_the_stack",
        )],
        what: "a private heap's destruction counts the blocks still on its slabs' remote stacks \
               as freed by the drop, though their freers counted them already",
    },
];

/// hakmem settings for the model check's second run: full double-free checks, eager zeroing of
/// reused regions, and a tiny, fast-decaying lru cache, so that the same cases take other paths.
pub const MODEL_STRESS_SETTINGS: &[(&str, &str)] = &[
    ("HAKMEM_CHECK", "1"),
    ("HAKMEM_SS_LAZY_ZERO", "0"),
    ("HAKMEM_LRU_MB", "1"),
    ("HAKMEM_LRU_DECAY_MS", "5"),
];

/// A step of the verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Step {
    /// `cargo fmt --all -- --check`.
    Fmt,
    /// `cargo clippy --workspace --all-targets -- -D warnings`.
    Clippy,
    /// `cargo doc --no-deps` with warnings denied; `missing_docs` denied on every box.
    Doc,
    /// `cargo test --workspace` (unit, integration and doc tests).
    Test,
    /// The loom models of every box.
    Loom,
    /// The loom models against the seeded bugs.
    SeededBugs,
    /// The model-based check of the whole allocator.
    Model,
}

impl Step {
    const ALL: [Step; 7] = [
        Step::Fmt,
        Step::Clippy,
        Step::Doc,
        Step::Test,
        Step::Loom,
        Step::SeededBugs,
        Step::Model,
    ];

    fn name(self) -> &'static str {
        match self {
            Step::Fmt => "fmt",
            Step::Clippy => "clippy",
            Step::Doc => "doc",
            Step::Test => "test",
            Step::Loom => "loom",
            Step::SeededBugs => "seeded-bugs",
            Step::Model => "model",
        }
    }

    /// A bound on the step's wall time; past it the step's processes are killed and it fails.
    fn timeout(self) -> Duration {
        Duration::from_secs(match self {
            Step::Fmt => 300,
            Step::Clippy | Step::Doc | Step::Test => 1200,
            Step::Loom => 1200,
            Step::SeededBugs => 600, // per build or run of a bug
            Step::Model => 900,
        })
    }
}

/// `cargo xtask verify`: fmt, clippy, tests, loom models, seeded bugs, model check.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run only the seeded-bug pass (same as `--only seeded-bugs`).
    #[arg(long)]
    pub seeded_bugs: bool,
    /// Run only these steps (comma-separated or repeated).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Step>,
    /// Skip these steps (comma-separated or repeated).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub skip: Vec<Step>,
    /// Skip fmt and clippy.
    #[arg(long)]
    pub skip_lint: bool,
    /// Stop at the first failed step.
    #[arg(long)]
    pub fail_fast: bool,
    /// Loom's preemption bound (LOOM_MAX_PREEMPTIONS) for the loom and seeded-bug steps.
    #[arg(long, default_value_t = 2)]
    pub preemptions: u32,
    /// Cases for the model check (HAKMEM_MODEL_CASES; default: the env var, else the test's 64).
    #[arg(long)]
    pub cases: Option<u32>,
    /// Print only the summary and the output of failed commands, not every command's output.
    #[arg(long, short)]
    pub quiet: bool,
}

/// How a step ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Pass,
    Fail,
}

/// One row of the summary.
struct Row {
    step: Step,
    status: Status,
    counts: String,
    secs: f64,
}

pub fn run(a: Args) -> Result<(), String> {
    let steps = select(&a);
    if steps.is_empty() {
        return Err("no step selected".into());
    }
    let v = Verify {
        root: crate::root(),
        quiet: a.quiet,
        preemptions: a.preemptions,
        cases: a.cases,
        loom_passed: RefCell::new(BTreeMap::new()),
    };
    let started = Instant::now();
    let mut rows = Vec::new();
    for step in steps {
        banner(&format!("verify: {}", step.name()));
        let t = Instant::now();
        let (status, counts) = match v.step(step) {
            Ok(counts) => (Status::Pass, counts),
            Err(why) => {
                eprintln!("verify: {} FAILED: {why}", step.name());
                (Status::Fail, why)
            }
        };
        rows.push(Row {
            step,
            status,
            counts,
            secs: t.elapsed().as_secs_f64(),
        });
        if status == Status::Fail && a.fail_fast {
            break;
        }
    }
    let table = summary(&rows, started.elapsed().as_secs_f64());
    println!("\n{table}");
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| r.status == Status::Fail)
        .map(|r| r.step.name())
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("verify failed: {}", failed.join(", ")))
    }
}

/// The steps to run, in order.
fn select(a: &Args) -> Vec<Step> {
    let mut only = a.only.clone();
    if a.seeded_bugs {
        only.push(Step::SeededBugs);
    }
    Step::ALL
        .into_iter()
        .filter(|s| only.is_empty() || only.contains(s))
        .filter(|s| !a.skip.contains(s))
        .filter(|s| !(a.skip_lint && matches!(s, Step::Fmt | Step::Clippy)))
        .collect()
}

fn banner(s: &str) {
    println!("\n==== {s} ====");
    let _ = std::io::stdout().flush();
}

/// Widest `counts` cell in the summary; longer ones are cut there and given in full below it.
const COUNTS_WIDTH: usize = 120;

fn summary(rows: &[Row], total: f64) -> String {
    let mut s = String::new();
    let cut = |c: &str| -> String {
        if c.chars().count() <= COUNTS_WIDTH {
            c.to_string()
        } else {
            let mut t: String = c.chars().take(COUNTS_WIDTH - 3).collect();
            t.push_str("...");
            t
        }
    };
    let w = rows
        .iter()
        .map(|r| cut(&r.counts).chars().count())
        .max()
        .unwrap_or(0)
        .max(6);
    let _ = writeln!(
        s,
        "{:<12} {:<6} {:<w$} {:>8}",
        "step", "status", "counts", "seconds"
    );
    let _ = writeln!(s, "{:-<12} {:-<6} {:-<w$} {:->8}", "", "", "", "");
    for r in rows {
        let status = match r.status {
            Status::Pass => "ok",
            Status::Fail => "FAILED",
        };
        let _ = writeln!(
            s,
            "{:<12} {:<6} {:<w$} {:>8.1}",
            r.step.name(),
            status,
            cut(&r.counts),
            r.secs
        );
    }
    let _ = write!(s, "{:<12} {:<6} {:<w$} {:>8.1}", "total", "", "", total);
    for r in rows.iter().filter(|r| r.status == Status::Fail) {
        let _ = write!(s, "\n{} FAILED: {}", r.step.name(), r.counts);
    }
    s
}

/// The output of a finished command.
struct Output {
    status: Option<ExitStatus>,
    /// Standard output and standard error, interleaved by line as they came.
    text: String,
    /// Standard output alone.
    stdout: String,
    timed_out: bool,
}

impl Output {
    fn ok(&self) -> bool {
        !self.timed_out && self.status.is_some_and(|s| s.success())
    }

    fn describe(&self) -> String {
        if self.timed_out {
            return "timed out".into();
        }
        match self.status {
            None => "did not run".into(),
            Some(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
                (Some(c), _) => format!("exit code {c}"),
                (None, Some(sig)) => format!("killed by signal {sig}"),
                _ => "unknown exit".into(),
            },
        }
    }
}

struct Verify {
    root: PathBuf,
    quiet: bool,
    preemptions: u32,
    cases: Option<u32>,
    /// The loom models that passed in this run's `loom` step, by crate: the seeded-bug pass's
    /// controls need not run them again (same binaries, same preemption bound).
    loom_passed: RefCell<BTreeMap<String, Vec<String>>>,
}

impl Verify {
    fn step(&self, step: Step) -> Result<String, String> {
        match step {
            Step::Fmt => self.fmt(),
            Step::Clippy => self.clippy(),
            Step::Doc => self.doc(),
            Step::Test => self.test(),
            Step::Loom => self.loom(),
            Step::SeededBugs => self.seeded_bugs(),
            Step::Model => self.model(),
        }
    }

    fn cargo(&self) -> Command {
        let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        c.current_dir(&self.root);
        c
    }

    /// A cargo command for loom builds: `--cfg loom`, the fast test profile, `target/loom`.
    fn loom_cargo(&self, sub: &str, target_dir: &Path, extra_rustflags: &str) -> Command {
        let mut c = self.cargo();
        c.arg(sub);
        for o in [
            "profile.dev.opt-level=3",
            "profile.dev.debug=0",
            "profile.dev.incremental=false",
        ] {
            c.args(["--config", o]);
        }
        c.env(
            "RUSTFLAGS",
            format!("--cfg loom {extra_rustflags}").trim_end(),
        )
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("CARGO_TARGET_DIR", target_dir)
        .env("LOOM_MAX_PREEMPTIONS", self.preemptions.to_string());
        c
    }

    /// Runs `cmd`, echoing its output (unless `--quiet`) and capturing it, within `timeout`.
    fn exec(&self, cmd: &mut Command, timeout: Duration) -> Output {
        exec(cmd, timeout, self.quiet)
    }
}

/// Runs `cmd`, echoing its output (unless `quiet`; then only if it fails) and capturing it,
/// within `timeout`, after which it and its descendants are killed.
fn exec(cmd: &mut Command, timeout: Duration, quiet: bool) -> Output {
    let shown = format!("{cmd:?}");
    println!("$ {}", shown.chars().take(400).collect::<String>());
    let _ = std::io::stdout().flush();
    let mut child = match cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            return Output {
                status: None,
                text: format!("cannot run {shown}: {e}"),
                stdout: String::new(),
                timed_out: false,
            }
        }
    };
    let all = Arc::new(Mutex::new(String::new()));
    let pump = |r: Box<dyn Read + Send>, is_err: bool| {
        let all = all.clone();
        std::thread::spawn(move || {
            let mut mine = String::new();
            let mut r = BufReader::new(r);
            let mut line = Vec::new();
            while r.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                let l = String::from_utf8_lossy(&line);
                if !quiet {
                    if is_err {
                        eprint!("{l}");
                    } else {
                        print!("{l}");
                    }
                }
                mine.push_str(&l);
                all.lock().unwrap_or_else(|e| e.into_inner()).push_str(&l);
                line.clear();
            }
            mine
        })
    };
    let out = pump(Box::new(child.stdout.take().expect("piped")), false);
    let err = pump(Box::new(child.stderr.take().expect("piped")), true);
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() >= deadline => {
                timed_out = true;
                kill_tree(child.id());
                break child.wait().ok();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(_) => break None,
        }
    };
    let stdout = out.join().unwrap_or_default();
    let _ = err.join();
    let text = std::mem::take(&mut *all.lock().unwrap_or_else(|e| e.into_inner()));
    if quiet && (timed_out || !status.is_some_and(|s| s.success())) {
        print!("{text}");
    }
    Output {
        status,
        text,
        stdout,
        timed_out,
    }
}

impl Verify {
    fn fmt(&self) -> Result<String, String> {
        let o = self.exec(
            self.cargo().args(["fmt", "--all", "--", "--check"]),
            Step::Fmt.timeout(),
        );
        // "Diff in /path/file.rs:LINE:" (or "at line N:" in older rustfmt).
        let hunks: Vec<&str> = o
            .text
            .lines()
            .filter_map(|l| l.strip_prefix("Diff in "))
            .map(|l| l.split(".rs").next().unwrap_or(l))
            .collect();
        let mut files = hunks.clone();
        files.sort_unstable();
        files.dedup();
        if o.ok() {
            Ok("clean".into())
        } else if !hunks.is_empty() {
            Err(format!(
                "{} hunks in {} files need formatting (run `cargo fmt --all`)",
                hunks.len(),
                files.len()
            ))
        } else {
            Err(format!("cargo fmt: {}", o.describe()))
        }
    }

    fn clippy(&self) -> Result<String, String> {
        let o = self.exec(
            self.cargo().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
            Step::Clippy.timeout(),
        );
        let (errors, warnings) = diagnostics(&o.text);
        if o.ok() {
            Ok(format!("{warnings} warnings"))
        } else {
            Err(format!(
                "{errors} errors, {warnings} warnings ({})",
                o.describe()
            ))
        }
    }

    /// Docs of the whole workspace with warnings (broken links included) denied, then the boxes
    /// again with `missing_docs` denied: every box is a library users read.
    fn doc(&self) -> Result<String, String> {
        let mut boxes = vec!["doc", "--no-deps"];
        for b in BOXES {
            boxes.extend(["-p", b]);
        }
        let passes: [(&[&str], &str); 2] = [
            (&["doc", "--no-deps", "--workspace"], "-D warnings"),
            (&boxes, "-D warnings -D missing_docs"),
        ];
        for (args, flags) in passes {
            let o = self.exec(
                self.cargo().args(args).env("RUSTDOCFLAGS", flags),
                Step::Doc.timeout(),
            );
            if !o.ok() {
                let (errors, warnings) = diagnostics(&o.text);
                return Err(format!(
                    "{errors} errors, {warnings} warnings with RUSTDOCFLAGS=\"{flags}\" ({})",
                    o.describe()
                ));
            }
        }
        // Every crate must stay publishable: metadata, versioned path dependencies.
        let o = self.exec(
            self.cargo()
                .args(["package", "--no-verify", "--workspace", "--allow-dirty"]),
            Step::Doc.timeout(),
        );
        if !o.ok() {
            return Err(format!("cargo package --no-verify: {}", o.describe()));
        }
        Ok(format!(
            "workspace, {} boxes with missing_docs; every crate packages",
            BOXES.len()
        ))
    }

    fn test(&self) -> Result<String, String> {
        // The workspace, then the facade's opt-in features (serde, tracing), whose tests the
        // default features do not build.
        let runs: [&[&str]; 2] = [
            &["test", "--workspace", "--no-fail-fast"],
            &[
                "test",
                "-p",
                "hakmem",
                "--features",
                "serde,tracing",
                "--no-fail-fast",
            ],
        ];
        let mut all = TestCounts::default();
        let mut failures = Vec::new();
        for args in runs {
            let o = self.exec(self.cargo().args(args), Step::Test.timeout());
            let t = TestCounts::parse(&o.stdout);
            if t.failed > 0 {
                failures.push(format!("failing: {}", t.failing.join(", ")));
            } else if !o.ok() {
                let (errors, _) = diagnostics(&o.text);
                failures.push(format!(
                    "cargo {}: {} ({errors} compile errors)",
                    args.join(" "),
                    o.describe()
                ));
            }
            all.add(t);
        }
        let counts = format!("{} ({} binaries)", all.describe(), all.binaries);
        if !failures.is_empty() {
            Err(format!("{counts}; {}", failures.join("; ")))
        } else if all.passed == 0 {
            Err(format!("ran no test: {counts}"))
        } else {
            Ok(counts)
        }
    }

    fn loom_dir(&self) -> PathBuf {
        self.root.join("target").join("loom")
    }

    /// Builds every loom crate's unit-test binary, then runs each one's `loom_models` tests.
    fn loom(&self) -> Result<String, String> {
        let exes = self.loom_build(LOOM_CRATES, None)?;
        let mut total = TestCounts::default();
        let mut by_crate = Vec::new();
        let mut problems = Vec::new();
        for k in LOOM_CRATES {
            let Some(exe) = exes.get(*k) else {
                problems.push(format!("{k}: no test binary"));
                continue;
            };
            let o = self.run_loom_binary(exe, "loom_models", Step::Loom.timeout());
            let t = TestCounts::parse(&o.stdout);
            self.loom_passed
                .borrow_mut()
                .insert(k.to_string(), t.passing.clone());
            by_crate.push(format!(
                "{} {}",
                k.trim_start_matches("hakmem-"),
                t.passed + t.failed
            ));
            if !o.ok() && t.failed == 0 {
                problems.push(format!("{k}: {}{}", o.describe(), first_panic(&o.text)));
            }
            total.add(t);
        }
        let counts = format!(
            "{} models passed, {} failed, preemptions {} ({})",
            total.passed,
            total.failed,
            self.preemptions,
            by_crate.join(", ")
        );
        if total.failed > 0 {
            problems.push(format!("failing: {}", total.failing.join(", ")));
        }
        if total.passed + total.failed == 0 {
            problems.push("no loom model ran".into());
        }
        if problems.is_empty() {
            Ok(counts)
        } else {
            Err(format!("{counts}; {}", problems.join("; ")))
        }
    }

    fn seeded_bugs(&self) -> Result<String, String> {
        let mut results = Vec::new();
        for bug in SEEDED_BUGS {
            banner(&format!(
                "seeded bug {}: {} ({})",
                bug.name, bug.what, bug.in_crate
            ));
            let r = self.seeded_bug(bug);
            match &r {
                Ok(s) => println!("seeded bug {}: {s}", bug.name),
                Err(s) => eprintln!("seeded bug {}: {s}", bug.name),
            }
            results.push((bug.name, r));
        }
        let caught = results.iter().filter(|r| r.1.is_ok()).count();
        let mut counts = format!("{caught}/{} caught", results.len());
        let bad: Vec<String> = results
            .iter()
            .filter_map(|(n, r)| r.as_ref().err().map(|e| format!("{n}: {e}")))
            .collect();
        if bad.is_empty() {
            Ok(counts)
        } else {
            counts.push_str("; ");
            counts.push_str(&bad.join("; "));
            Err(counts)
        }
    }

    /// One seeded bug: each model must exist and pass on the correct box (the control, so that a
    /// model that always fails cannot pass for a catch), and at least one must fail on the broken
    /// box with a failing test (a compile error is an error, not a catch).
    fn seeded_bug(&self, bug: &SeededBug) -> Result<String, String> {
        let timeout = Step::SeededBugs.timeout();
        let mut caught_by = Vec::new();
        for &(krate, filter) in bug.models {
            let clean = self.loom_build(&[krate], None)?;
            let clean = &clean[krate];
            let models = list_tests(clean, filter)?;
            if models.is_empty() {
                return Err(format!(
                    "missing model: no test in {krate} matches `{filter}`"
                ));
            }
            let passed_in_loom_step = self
                .loom_passed
                .borrow()
                .get(krate)
                .is_some_and(|p| models.iter().all(|m| p.contains(m)));
            if passed_in_loom_step {
                println!("control: {} passed in the loom step", models.join(", "));
            } else {
                let o = self.run_loom_binary(clean, filter, timeout);
                let t = TestCounts::parse(&o.stdout);
                if !o.ok() || t.passed == 0 {
                    return Err(format!(
                        "control failed: {krate} `{filter}` fails on the correct box ({}; {}; failing: {})",
                        o.describe(),
                        t.describe(),
                        t.failing.join(", ")
                    ));
                }
            }
            let broken = self.loom_build(&[krate], Some(bug))?;
            let o = self.run_loom_binary(&broken[krate], filter, timeout);
            let t = TestCounts::parse(&o.stdout);
            if o.timed_out {
                return Err(format!("{krate} `{filter}` timed out on the broken box"));
            }
            if t.failed > 0 {
                caught_by.push(format!("{krate} {}", t.failing.join(" ")));
            } else if !o.ok() {
                // The test process died (a crash in the broken code) before reporting: still a catch.
                caught_by.push(format!(
                    "{krate} `{filter}` ({}{})",
                    o.describe(),
                    first_panic(&o.text)
                ));
            }
        }
        if caught_by.is_empty() {
            Err(format!(
                "NOT CAUGHT: {} pass on the broken box",
                bug.models
                    .iter()
                    .map(|m| m.1)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        } else {
            Ok(format!("caught by {}", caught_by.join("; ")))
        }
    }

    /// Builds the unit-test binaries of `crates` with `--cfg loom` (and the seeded bug, if any) and
    /// returns their paths by crate name. A compile failure is an error.
    fn loom_build(
        &self,
        crates: &[&str],
        bug: Option<&SeededBug>,
    ) -> Result<BTreeMap<String, PathBuf>, String> {
        let mut c = match bug {
            // The bug is in the model's own crate: give the cfg to that crate alone.
            Some(b) if crates == [b.in_crate] => {
                let mut c = self.loom_cargo("rustc", &self.loom_dir(), "");
                c.args(["--profile", "test", "-p", b.in_crate, "--lib"]);
                c.args(["--message-format", "json-render-diagnostics", "--"]);
                c.args(["--cfg", &format!("hakmem_seeded_bug=\"{}\"", b.name)]);
                c
            }
            // The bug is in a dependency: every crate gets the cfg, in a target dir of its own.
            Some(b) => {
                let dir = self
                    .root
                    .join("target")
                    .join(format!("loom-bug-{}", b.name));
                let cfg = format!("--cfg hakmem_seeded_bug=\"{}\"", b.name);
                let mut c = self.loom_cargo("test", &dir, &cfg);
                c.args([
                    "--no-run",
                    "--lib",
                    "--message-format",
                    "json-render-diagnostics",
                ]);
                c
            }
            None => {
                let mut c = self.loom_cargo("test", &self.loom_dir(), "");
                c.args([
                    "--no-run",
                    "--lib",
                    "--message-format",
                    "json-render-diagnostics",
                ]);
                c
            }
        };
        if !matches!(bug, Some(b) if crates == [b.in_crate]) {
            for k in crates {
                c.args(["-p", k]);
            }
        }
        // The JSON on stdout is for us: show it (and the rendered diagnostics) only on failure.
        let o = exec(&mut c, Step::Loom.timeout(), true);
        let what = match bug {
            Some(b) => format!("{} with seeded bug {}", crates.join(" "), b.name),
            None => crates.join(" "),
        };
        if !o.ok() {
            let (errors, _) = diagnostics(&o.text);
            return Err(format!(
                "compile error building {what} for loom: {} ({errors} errors)",
                o.describe()
            ));
        }
        let exes = executables(&o.stdout);
        let found: BTreeMap<String, PathBuf> = crates
            .iter()
            .filter_map(|k| {
                exes.get(&k.replace('-', "_"))
                    .map(|p| (k.to_string(), p.clone()))
            })
            .collect();
        if found.len() != crates.len() {
            return Err(format!("cargo named no test executable for some of {what}"));
        }
        Ok(found)
    }

    fn run_loom_binary(&self, exe: &Path, filter: &str, timeout: Duration) -> Output {
        let mut c = Command::new(exe);
        c.current_dir(&self.root)
            .arg(filter)
            .env("LOOM_MAX_PREEMPTIONS", self.preemptions.to_string());
        self.exec(&mut c, timeout)
    }

    /// The model check, twice: with hakmem's default settings (and the crate's unit tests), then
    /// with [`MODEL_STRESS_SETTINGS`] (the same cases on other code paths).
    fn model(&self) -> Result<String, String> {
        let mut done = Vec::new();
        let mut units = 0;
        let mut first_seed = String::new();
        for (label, settings) in [("default", &[][..]), ("stress", MODEL_STRESS_SETTINGS)] {
            let mut c = self.cargo();
            c.args([
                "test",
                "--release",
                "--no-fail-fast",
                "-p",
                "hakmem-modelcheck",
            ]);
            if !settings.is_empty() {
                c.args(["--test", "model", "--test", "heap_model"]);
            }
            if let Some(n) = self.cases {
                c.env("HAKMEM_MODEL_CASES", n.to_string());
            }
            for (k, v) in settings {
                c.env(k, v);
            }
            let o = self.exec(&mut c, Step::Model.timeout());
            let t = TestCounts::parse(&o.stdout);
            let passed = o.stdout.lines().find_map(|l| {
                l.strip_prefix("model check: ")
                    .filter(|r| r.contains("cases passed"))
                    .map(|r| r.split(" with ").next().unwrap_or(r).to_string())
            });
            let seed = o
                .stdout
                .lines()
                .find_map(|l| l.split("HAKMEM_MODEL_SEED=").nth(1))
                .map(|s| s.split_whitespace().next().unwrap_or("").to_string())
                .unwrap_or_default();
            let env: String = settings.iter().map(|(k, v)| format!(" {k}={v}")).collect();
            match passed {
                Some(p) if o.ok() => {
                    done.push(format!("{label}: {p}"));
                    if settings.is_empty() {
                        units = t.passed.saturating_sub(1);
                        first_seed = seed;
                    }
                }
                _ if seed.is_empty() => {
                    let (errors, _) = diagnostics(&o.text);
                    return Err(format!(
                        "the model check did not start: {} ({errors} compile errors; {}; failing: {})",
                        o.describe(),
                        t.describe(),
                        t.failing.join(", ")
                    ));
                }
                _ => {
                    let why = o
                        .stdout
                        .lines()
                        .find(|l| {
                            l.starts_with("model check FAILED")
                                || l.starts_with("model check aborted")
                        })
                        .unwrap_or("the model check crashed or was killed")
                        .to_string();
                    let cases = self
                        .cases
                        .map(|n| format!(" HAKMEM_MODEL_CASES={n}"))
                        .unwrap_or_default();
                    return Err(format!(
                        "{label}: {} ({why}; {}; failing: {}); replay with{env} HAKMEM_MODEL_SEED={seed}{cases}",
                        o.describe(),
                        t.describe(),
                        t.failing.join(", "),
                    ));
                }
            }
        }
        Ok(format!(
            "{}; {units} unit tests; seed {first_seed}",
            done.join("; ")
        ))
    }
}

/// `" (panicked: MESSAGE)"` for the first panic in a test's output, or nothing.
fn first_panic(text: &str) -> String {
    let mut lines = text.lines();
    while let Some(l) = lines.next() {
        if l.contains("panicked at") {
            let msg = lines.next().unwrap_or("").trim();
            return format!(" (panicked: {})", msg.chars().take(160).collect::<String>());
        }
    }
    String::new()
}

/// Kills `pid` and its descendants (found through /proc), by id.
fn kill_tree(pid: u32) {
    let mut parents: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // "pid (comm) state ppid ...": comm may hold spaces, so parse after the last ')'.
            if let Some(ppid) = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|s| s.parse::<u32>().ok())
            {
                parents.entry(ppid).or_default().push(p);
            }
        }
    }
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        if let Some(kids) = parents.get(&all[i]) {
            all.extend(kids);
        }
        i += 1;
    }
    let mut c = Command::new("kill");
    c.arg("-KILL");
    for p in &all {
        c.arg(p.to_string());
    }
    let _ = c.stdout(Stdio::null()).stderr(Stdio::null()).status();
}

/// Counts of `error` and `warning` diagnostics in cargo's rendered output.
fn diagnostics(text: &str) -> (usize, usize) {
    let mut errors = 0;
    let mut warnings = 0;
    for l in text.lines() {
        if (l.starts_with("error[") || l.starts_with("error: "))
            && !l.starts_with("error: could not compile")
            && !l.starts_with("error: aborting")
            && !l.starts_with("error: test failed")
            && !l.starts_with("error: 1 target failed")
            && !l.contains("targets failed")
        {
            errors += 1;
        } else if (l.starts_with("warning[") || l.starts_with("warning: "))
            && !l.contains("generated")
            && !l.contains("warning emitted")
            && !l.starts_with("warning: build failed")
        {
            warnings += 1;
        }
    }
    (errors, warnings)
}

/// Totals of libtest's result lines.
#[derive(Debug, Default, PartialEq, Eq)]
struct TestCounts {
    passed: u64,
    failed: u64,
    ignored: u64,
    binaries: u64,
    /// Names of the failing tests.
    failing: Vec<String>,
    /// Names of the passing tests.
    passing: Vec<String>,
}

impl TestCounts {
    fn parse(stdout: &str) -> Self {
        let mut t = TestCounts::default();
        for l in stdout.lines() {
            if let Some(rest) = l.strip_prefix("test result: ") {
                t.binaries += 1;
                let num = |key: &str| {
                    rest.split(';')
                        .find_map(|part| {
                            let part = part
                                .trim()
                                .trim_start_matches("ok.")
                                .trim_start_matches("FAILED.")
                                .trim();
                            part.strip_suffix(key)
                                .and_then(|n| n.trim().parse::<u64>().ok())
                        })
                        .unwrap_or(0)
                };
                t.passed += num("passed");
                t.failed += num("failed");
                t.ignored += num("ignored");
            } else if let Some(rest) = l.strip_prefix("test ") {
                if let Some(name) = rest.strip_suffix(" ... FAILED") {
                    t.failing.push(name.to_string());
                } else if let Some(name) = rest.strip_suffix(" ... ok") {
                    t.passing.push(name.to_string());
                }
            }
        }
        t
    }

    fn add(&mut self, t: TestCounts) {
        self.passed += t.passed;
        self.failed += t.failed;
        self.ignored += t.ignored;
        self.binaries += t.binaries;
        self.failing.extend(t.failing);
        self.passing.extend(t.passing);
    }

    fn describe(&self) -> String {
        format!(
            "{} passed, {} failed, {} ignored",
            self.passed, self.failed, self.ignored
        )
    }
}

/// The test executables in cargo's JSON messages, by target name.
fn executables(json_lines: &str) -> BTreeMap<String, PathBuf> {
    json_lines
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            if v["reason"] != "compiler-artifact" || v["profile"]["test"] != true {
                return None;
            }
            let exe = v["executable"].as_str()?;
            Some((
                v["target"]["name"].as_str()?.to_string(),
                PathBuf::from(exe),
            ))
        })
        .collect()
}

/// Names of the tests in `exe` that match `filter`.
fn list_tests(exe: &Path, filter: &str) -> Result<Vec<String>, String> {
    let o = Command::new(exe)
        .args(["--list", filter])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    if !o.status.success() {
        return Err(format!("{} --list failed", exe.display()));
    }
    Ok(String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_string)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_result_lines_add_up() {
        let out = "\
running 2 tests
test a::b ... ok
test a::c ... FAILED

test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s

test result: ok. 10 passed; 0 failed; 2 ignored; 0 measured; 3 filtered out; finished in 1.00s
";
        let t = TestCounts::parse(out);
        assert_eq!((t.passed, t.failed, t.ignored, t.binaries), (11, 1, 2, 2));
        assert_eq!(t.failing, vec!["a::c".to_string()]);
        assert_eq!(t.passing, vec!["a::b".to_string()]);
        assert_eq!(TestCounts::parse("nothing here"), TestCounts::default());
    }

    #[test]
    fn the_test_executable_is_found_in_cargo_json() {
        let json = r#"{"reason":"compiler-artifact","target":{"name":"hakmem_registry"},"profile":{"test":false},"executable":null}
{"reason":"compiler-artifact","target":{"name":"hakmem_superslab"},"profile":{"test":true},"executable":"/t/deps/hakmem_superslab-1"}
{"reason":"build-finished","success":true}"#;
        let exes = executables(json);
        assert_eq!(
            exes.get("hakmem_superslab"),
            Some(&PathBuf::from("/t/deps/hakmem_superslab-1"))
        );
        assert_eq!(exes.len(), 1);
    }

    #[test]
    fn the_first_panic_message_is_quoted() {
        let text =
            "running 1 test\n\nthread 'm' (1) panicked at src/x.rs:1:2:\nModel exceeded\nstack\n";
        assert_eq!(first_panic(text), " (panicked: Model exceeded)");
        assert_eq!(first_panic("all fine"), "");
    }

    #[test]
    fn diagnostics_skip_summaries() {
        let text = "error[E0308]: mismatched types\nerror: could not compile `x`\nwarning: unused\nwarning: `x` (lib) generated 1 warning\nerror: test failed, to rerun pass `-p x`\n";
        assert_eq!(diagnostics(text), (1, 1));
    }

    #[test]
    fn steps_are_selected_in_order() {
        let args = |f: &dyn Fn(&mut Args)| {
            let mut a = Args {
                seeded_bugs: false,
                only: vec![],
                skip: vec![],
                skip_lint: false,
                fail_fast: false,
                preemptions: 2,
                cases: None,
                quiet: false,
            };
            f(&mut a);
            select(&a)
        };
        assert_eq!(args(&|_| {}), Step::ALL.to_vec());
        assert_eq!(args(&|a| a.seeded_bugs = true), vec![Step::SeededBugs]);
        assert_eq!(args(&|a| a.skip_lint = true), Step::ALL[2..].to_vec());
        assert_eq!(
            args(&|a| a.only = vec![Step::Model, Step::Fmt]),
            vec![Step::Fmt, Step::Model]
        );
        assert_eq!(
            args(&|a| a.skip = vec![Step::Loom]).len(),
            Step::ALL.len() - 1
        );
    }

    #[test]
    fn every_seeded_bug_is_declared_and_has_a_model() {
        let manifest = std::fs::read_to_string(crate::root().join("Cargo.toml")).unwrap();
        for b in SEEDED_BUGS {
            assert!(
                manifest.contains(&format!("\"{}\"", b.name)),
                "{} not in check-cfg",
                b.name
            );
            assert!(!b.models.is_empty());
            for (k, _) in b.models {
                assert!(LOOM_CRATES.contains(k), "{k} is not a loom crate");
            }
        }
    }
}
