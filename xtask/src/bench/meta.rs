//! What a run records about itself: the commit, the toolchain, the machine and its load.
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::SystemTime;

pub fn command_output(prog: &str, args: &[&str], dir: &Path) -> Option<String> {
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
pub fn versions(root: &Path) -> BTreeMap<String, String> {
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

pub fn machine(root: &Path) -> BTreeMap<String, String> {
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

pub fn date(root: &Path) -> String {
    command_output("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"], root).unwrap_or_else(|| {
        let s = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        format!("unix time {s}")
    })
}

/// The commit measured: `git rev-parse HEAD`, with `+dirty` when the work tree differs from it
/// (the measured code is then not that commit's).
pub fn commit(root: &Path) -> String {
    let Some(head) = command_output("git", &["rev-parse", "HEAD"], root) else {
        return "unknown (not a git checkout)".into();
    };
    let dirty = command_output(
        "git",
        &["status", "--porcelain", "--untracked-files=no"],
        root,
    )
    .is_some_and(|s| !s.is_empty());
    if dirty {
        format!("{head}+dirty")
    } else {
        head
    }
}

/// The 1, 5 and 15 minute load averages (`/proc/loadavg`), or "unknown".
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}
