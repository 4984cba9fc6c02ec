//! # hakmem-tests: real programs on libhakmem.so
//!
//! The harness the tests in `tests/` share. It builds the preload library once per test binary
//! (`cargo build --release -p hakmem-preload`, into the same target directory as the tests),
//! compiles the C test programs of `c/` with `cc`, and runs programs with `LD_PRELOAD` pointing
//! at the library and `HAKMEM_STATS=1`, so that every run can show both that the program worked
//! and that hakmem served its allocations (the report on stderr counts them).
//!
//! Every run has a deadline: an allocator that deadlocks fails its test instead of hanging the
//! suite.
pub mod child;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a single program may run before it counts as hung.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// The workspace root (this crate lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits inside the workspace")
        .to_path_buf()
}

/// The directory of the C test programs.
pub fn c_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("c")
}

/// What one test binary shares: the built library and a scratch directory.
pub struct Harness {
    lib: Result<PathBuf, String>,
    scratch: PathBuf,
    compiled: Mutex<HashMap<String, PathBuf>>,
}

static HARNESS: OnceLock<Harness> = OnceLock::new();

impl Harness {
    /// The harness, set up on first use. `target_tmpdir` is the test's
    /// `env!("CARGO_TARGET_TMPDIR")`: scratch files go below it, and the library is built into
    /// the target directory that holds it.
    pub fn get(target_tmpdir: &str) -> &'static Harness {
        HARNESS.get_or_init(|| {
            let tmp = PathBuf::from(target_tmpdir);
            let target = tmp
                .parent()
                .expect("CARGO_TARGET_TMPDIR is <target>/tmp")
                .to_path_buf();
            // One directory per test binary, reused by the next run of the same binary.
            let exe = std::env::current_exe().expect("the test binary's path");
            let stem = exe.file_stem().unwrap_or_default().to_string_lossy();
            let scratch = tmp.join("hakmem-tests").join(stem.as_ref());
            std::fs::create_dir_all(&scratch).expect("create the scratch directory");
            Harness {
                lib: build_library(&target),
                scratch,
                compiled: Mutex::new(HashMap::new()),
            }
        })
    }

    /// The absolute path of libhakmem.so. Panics with the build's output if it did not build.
    pub fn lib(&self) -> &Path {
        match &self.lib {
            Ok(p) => p,
            Err(e) => panic!("libhakmem.so did not build:\n{e}"),
        }
    }

    /// A fresh, empty directory for one test.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let dir = self.scratch.join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).expect("clear the scratch directory");
        }
        std::fs::create_dir_all(&dir).expect("create the scratch directory");
        dir
    }

    /// `c/<name>.c` (or the C++ program `c/<name>.cc`) compiled to an executable (once per
    /// test binary).
    pub fn c_program(&self, name: &str) -> PathBuf {
        self.compile(name, false)
    }

    /// `c/<name>.c` compiled to a shared library (once per test binary).
    pub fn c_library(&self, name: &str) -> PathBuf {
        self.compile(name, true)
    }

    fn compile(&self, name: &str, shared: bool) -> PathBuf {
        let mut done = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        let key = format!("{name}/{shared}");
        if let Some(p) = done.get(&key) {
            return p.clone();
        }
        let out_dir = self.scratch.join("bin");
        std::fs::create_dir_all(&out_dir).expect("create the bin directory");
        let out = if shared {
            out_dir.join(format!("lib{name}.so"))
        } else {
            out_dir.join(name)
        };
        // A C++ program is `c/<name>.cc`, built by `c++` as C++17.
        let cxx_src = c_dir().join(format!("{name}.cc"));
        let (src, mut cc) = if cxx_src.is_file() {
            let mut cxx = Command::new("c++");
            cxx.arg("-std=c++17");
            (cxx_src, cxx)
        } else {
            (c_dir().join(format!("{name}.c")), Command::new("cc"))
        };
        // -fno-builtin: every malloc, free and friend in the source is a real call (the
        // compiler may otherwise delete a malloc/free pair, or fold a NULL check).
        cc.args(["-O2", "-g", "-pthread", "-fno-builtin", "-Wall", "-Wextra"]);
        if shared {
            cc.args(["-shared", "-fPIC"]);
        }
        cc.arg("-o").arg(&out).arg(&src).arg("-ldl");
        let r = cc.output().expect("run cc");
        assert!(
            r.status.success(),
            "cc {} failed:\n{}",
            src.display(),
            String::from_utf8_lossy(&r.stderr)
        );
        done.insert(key, out.clone());
        out
    }

    /// A command for `program` that runs on hakmem: `LD_PRELOAD` is the library,
    /// `HAKMEM_STATS=1` asks for the report, and no other `HAKMEM_*` setting is inherited.
    pub fn preloaded(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("HAKMEM_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("LD_PRELOAD", self.lib()).env("HAKMEM_STATS", "1");
        cmd
    }
}

/// Builds the preload library into `target` and returns its absolute path.
fn build_library(target: &Path) -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let out = Command::new(cargo)
        .args(["build", "--release", "-p", "hakmem-preload", "--target-dir"])
        .arg(target)
        .current_dir(workspace_root())
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let lib = target.join("release").join("libhakmem.so");
    if !lib.is_file() {
        return Err(format!("cargo succeeded but {} is missing", lib.display()));
    }
    std::fs::canonicalize(&lib).map_err(|e| format!("{}: {e}", lib.display()))
}

/// What a finished program did.
pub struct Outcome {
    /// The command line, for messages.
    pub what: String,
    /// How it ended.
    pub status: ExitStatus,
    /// Everything it wrote to stdout.
    pub stdout: String,
    /// Everything it wrote to stderr.
    pub stderr: String,
}

impl fmt::Debug for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "`{}` ended with {}", self.what, self.status)?;
        writeln!(f, "--- stdout ---\n{}", tail(&self.stdout))?;
        write!(f, "--- stderr ---\n{}", tail(&self.stderr))
    }
}

/// The last 8 KiB of a long text.
fn tail(s: &str) -> &str {
    let mut start = s.len().saturating_sub(8192);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Runs `cmd` to the end (or kills it at [`DEADLINE`]) and collects its output.
pub fn run(cmd: &mut Command) -> Outcome {
    run_for(cmd, DEADLINE)
}

/// Runs `cmd` with a deadline of its own.
pub fn run_for(cmd: &mut Command, deadline: Duration) -> Outcome {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let readers = [
        reader(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
        reader(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
    ];
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for the child") {
            break s;
        }
        if start.elapsed() > deadline {
            // The program is hung (a deadlock in the allocator, say): kill it and fail.
            let _ = child.kill();
            let _ = child.wait();
            let [out, err] = readers.map(|r| r.join().unwrap_or_default());
            panic!(
                "`{what}` did not finish within {deadline:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                tail(&out),
                tail(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let [stdout, stderr] = readers.map(|r| r.join().unwrap_or_default());
    Outcome {
        what,
        status,
        stdout,
        stderr,
    }
}

fn reader(pipe: Option<Box<dyn Read + Send>>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

impl Outcome {
    /// Asserts that the program exited with status 0.
    pub fn assert_success(&self) -> &Self {
        self.assert_exit_code(0)
    }

    /// Asserts that the program exited normally with `code`.
    pub fn assert_exit_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.status.code(),
            Some(code),
            "expected exit code {code}\n{self:?}"
        );
        self
    }

    /// Asserts that the program was killed by `SIGABRT`.
    pub fn assert_aborted(&self) -> &Self {
        assert_eq!(
            self.status.signal(),
            Some(libc_sigabrt()),
            "expected the program to abort\n{self:?}"
        );
        self
    }

    /// Asserts that stdout contains `text`.
    pub fn assert_stdout_has(&self, text: &str) -> &Self {
        assert!(
            self.stdout.contains(text),
            "stdout lacks {text:?}\n{self:?}"
        );
        self
    }

    /// Asserts that stderr contains `text`.
    pub fn assert_stderr_has(&self, text: &str) -> &Self {
        assert!(
            self.stderr.contains(text),
            "stderr lacks {text:?}\n{self:?}"
        );
        self
    }

    /// Asserts that hakmem served the program: its `HAKMEM_STATS` report is on stderr and
    /// counts at least `min` allocations (in one of the processes, if the program started
    /// others). Returns the largest count seen.
    pub fn assert_served(&self, min: u64) -> u64 {
        let counts = report_alloc_counts(&self.stderr);
        let most = counts.iter().copied().max();
        match most {
            Some(n) if n >= min => n,
            _ => panic!(
                "hakmem did not serve this program: expected a HAKMEM_STATS report counting at \
                 least {min} allocations, found {counts:?}\n{self:?}"
            ),
        }
    }

    /// The address printed after `key` at the start of a stdout line (as in
    /// "pointer 0x55..."), if there is one.
    pub fn stdout_address(&self, key: &str) -> Option<usize> {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|w| parse_hex(w.trim()))
    }
}

/// How the allocator is told to treat a bad pointer: every hostile case runs in both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnBad {
    /// The default: report, then `abort()`.
    Abort,
    /// `HAKMEM_INVALID_FREE=warn`: report, ignore the call, go on.
    Warn,
}

impl OnBad {
    /// Both modes.
    pub const BOTH: [OnBad; 2] = [OnBad::Abort, OnBad::Warn];

    /// Sets the mode on `cmd` (the default is set explicitly by leaving the variable unset).
    pub fn apply(self, cmd: &mut Command) -> &mut Command {
        match self {
            OnBad::Abort => cmd.env_remove("HAKMEM_INVALID_FREE"),
            OnBad::Warn => cmd.env("HAKMEM_INVALID_FREE", "warn"),
        }
    }
}

/// How the first line of the `HAKMEM_STATS` report starts (it goes on with the pid and the
/// program's name).
pub const REPORT_HEADER: &str = "hakmem: statistics for pid ";

impl Outcome {
    /// The allocator's messages on stderr: every line that starts with "hakmem: ", except the
    /// header of its statistics report.
    pub fn hakmem_messages(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("hakmem: ") && !l.starts_with(REPORT_HEADER))
            .collect()
    }

    /// The numbers that follow `label` in the `HAKMEM_STATS` report (one per report; a label
    /// such as "abandons " or "threads with a heap "), in the order the reports appear.
    pub fn report_numbers(&self, label: &str) -> Vec<i64> {
        numbers_after(&self.stderr, label)
    }
}

/// The decimal numbers that follow each occurrence of `label` in `text` (a `-` sign allowed).
pub fn numbers_after(text: &str, label: &str) -> Vec<i64> {
    text.match_indices(label)
        .filter_map(|(i, _)| {
            let rest = &text[i + label.len()..];
            let sign = usize::from(rest.starts_with('-'));
            let end = sign
                + rest[sign..]
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(rest.len() - sign);
            rest[..end].parse().ok()
        })
        .collect()
}

/// `SIGABRT` on Linux (the harness has no libc dependency).
const fn libc_sigabrt() -> i32 {
    6
}

/// Parses `0x1f` style hex.
pub fn parse_hex(s: &str) -> Option<usize> {
    usize::from_str_radix(s.strip_prefix("0x")?, 16).ok()
}

/// The total allocation counts of every `HAKMEM_STATS` report in `stderr`, one per process
/// that wrote one. The report has a line `  total allocs N, frees M, live L`.
pub fn report_alloc_counts(stderr: &str) -> Vec<u64> {
    stderr
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix(REPORT_TOTAL_PREFIX))
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

/// The start of the report line that gives the total allocation count.
pub const REPORT_TOTAL_PREFIX: &str = "total allocs ";
