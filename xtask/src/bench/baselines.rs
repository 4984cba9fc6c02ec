//! The C lane's set-up: the C workload binary and one preloadable library per allocator.
//!
//! - hakmem: `target/release/libhakmem.so` (`cargo build --release -p hakmem-preload`).
//! - mimalloc, jemalloc: cargo builds the C sources that `libmimalloc-sys` and
//!   `tikv-jemalloc-sys` bundle (the crate `hakmem-bench-baselines` in xtask/baselines, one
//!   feature per allocator, each in its own target dir), with the features that make them
//!   define `malloc`, `free`, ... themselves; the static library the -sys crate's build
//!   script leaves behind is then linked whole into `<bench>/preload/lib<name>.so` with
//!   `cc -shared`, as upstream's own shared library is.
//! - glibc ("system"): no preload.
use super::{cargo, last_lines};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The C workload's source and the binary built from it.
pub const C_SOURCE: &str = "xtask/workloads/c/workloads.c";

fn newer(a: &Path, b: &Path) -> bool {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (m(a), m(b)) {
        (Some(x), Some(y)) => x > y,
        _ => true,
    }
}

/// Compile the C workloads with `cc -O2 -pthread` (again only when the source changed).
pub fn build_c(root: &Path, bench_dir: &Path) -> Result<PathBuf, String> {
    let src = root.join(C_SOURCE);
    let bin = bench_dir.join("c-workloads");
    if bin.is_file() && !newer(&src, &bin) {
        return Ok(bin);
    }
    let out = Command::new("cc")
        .args(["-O2", "-pthread", "-o"])
        .arg(&bin)
        .arg(&src)
        .arg("-ldl")
        .output()
        .map_err(|e| format!("cannot run cc: {e}"))?;
    if out.status.success() {
        Ok(bin)
    } else {
        Err(format!(
            "cc -O2 -pthread {C_SOURCE} failed: {}",
            last_lines(&String::from_utf8_lossy(&out.stderr), 4)
        ))
    }
}

/// Build libhakmem.so (`cargo build --release -p hakmem-preload`).
pub fn build_hakmem(root: &Path) -> Result<PathBuf, String> {
    let out = Command::new(cargo())
        .current_dir(root)
        .args(["build", "--release", "-p", "hakmem-preload", "--target-dir"])
        .arg(root.join("target"))
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`cargo build --release -p hakmem-preload` failed: {}",
            super::build_errors(&String::from_utf8_lossy(&out.stderr))
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

/// The -sys crate whose build script compiles `alloc`'s C sources, and the static library
/// it links.
fn sys_crate(alloc: &str) -> Option<(&'static str, &'static str)> {
    match alloc {
        "mimalloc" => Some(("libmimalloc-sys", "mimalloc")),
        "jemalloc" => Some(("tikv-jemalloc-sys", "jemalloc_pic")),
        _ => None,
    }
}

/// From cargo's `--message-format=json` output: the static library `lib` that the build
/// script of `krate` reported (its `linked_paths` entry joined with `lib<lib>.a`).
pub fn find_static_lib(json: &str, krate: &str, lib: &str) -> Option<PathBuf> {
    for line in json.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] != "build-script-executed" {
            continue;
        }
        let id = v["package_id"].as_str().unwrap_or_default();
        // "registry+https://...#libmimalloc-sys@0.1.49" (or the older "name version (...)").
        let name_matches =
            id.contains(&format!("#{krate}@")) || id.starts_with(&format!("{krate} "));
        if !name_matches {
            continue;
        }
        let wanted = format!("static={lib}");
        if !v["linked_libs"]
            .as_array()
            .is_some_and(|l| l.iter().any(|x| x.as_str() == Some(wanted.as_str())))
        {
            continue;
        }
        for p in v["linked_paths"].as_array().into_iter().flatten() {
            let p = p.as_str().unwrap_or_default();
            let dir = p.split_once('=').map_or(p, |(_, d)| d);
            let a = Path::new(dir).join(format!("lib{lib}.a"));
            if a.is_file() {
                return Some(a);
            }
        }
    }
    None
}

/// Build `<bench>/preload/lib<alloc>.so` for mimalloc or jemalloc from the -sys crate's
/// sources.
pub fn build_baseline(root: &Path, bench_dir: &Path, alloc: &str) -> Result<PathBuf, String> {
    let (krate, lib) = sys_crate(alloc).ok_or_else(|| format!("no C baseline named {alloc}"))?;
    let what = format!("cargo build --release -p hakmem-bench-baselines --features {alloc}");
    let mut build = Command::new(cargo());
    // As upstream's release builds: no debug info, so cc does not force frame pointers
    // (the workspace's release profile has `debug = 1`).
    build.env("CARGO_PROFILE_RELEASE_DEBUG", "false");
    if alloc == "mimalloc" {
        // As mimalloc's CMake builds its shared library: -fvisibility=hidden, so calls
        // inside the library do not go through the PLT, and MI_SHARED_LIB(_EXPORT), which
        // exports the mi_* API and skips the collection at exit that only a library loaded
        // and unloaded repeatedly needs.
        build.env(
            "CFLAGS",
            "-fvisibility=hidden -DMI_SHARED_LIB -DMI_SHARED_LIB_EXPORT",
        );
    }
    let out = build
        .current_dir(root)
        .args([
            "build",
            "--release",
            "-p",
            "hakmem-bench-baselines",
            "--features",
        ])
        .arg(alloc)
        .arg("--message-format=json")
        .arg("--target-dir")
        .arg(bench_dir.join(format!("baseline-{alloc}")))
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`{what}` failed: {}",
            super::build_errors(&String::from_utf8_lossy(&out.stderr))
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let archive = find_static_lib(&stdout, krate, lib)
        .ok_or_else(|| format!("`{what}` did not report {krate}'s lib{lib}.a"))?;
    let dir = bench_dir.join("preload");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let so = dir.join(format!("lib{alloc}.so"));
    if so.is_file() && !newer(&archive, &so) {
        return Ok(so);
    }
    let link = Command::new("cc")
        .args(["-shared", "-o"])
        .arg(&so)
        .arg("-Wl,--whole-archive")
        .arg(&archive)
        .args(["-Wl,--no-whole-archive", "-pthread", "-ldl"])
        .output()
        .map_err(|e| format!("cannot run cc: {e}"))?;
    if link.status.success() {
        Ok(so)
    } else {
        Err(format!(
            "cc -shared {} failed: {}",
            archive.display(),
            last_lines(&String::from_utf8_lossy(&link.stderr), 4)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_archive_a_build_script_reported() {
        let dir = std::env::temp_dir().join(format!("xtask-baselines-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("libjemalloc_pic.a"), b"!<arch>\n").unwrap();
        let d = dir.display();
        let json = format!(
            "not json\n\
             {{\"reason\":\"compiler-artifact\",\"package_id\":\"x\"}}\n\
             {{\"reason\":\"build-script-executed\",\"package_id\":\"registry+https://x#libc@0.2.1\",\"linked_libs\":[],\"linked_paths\":[]}}\n\
             {{\"reason\":\"build-script-executed\",\"package_id\":\"registry+https://x#tikv-jemalloc-sys@0.6.1+5.3.0\",\"linked_libs\":[\"static=jemalloc_pic\"],\"linked_paths\":[\"native={d}\"]}}\n"
        );
        assert_eq!(
            find_static_lib(&json, "tikv-jemalloc-sys", "jemalloc_pic"),
            Some(dir.join("libjemalloc_pic.a"))
        );
        assert_eq!(find_static_lib(&json, "libmimalloc-sys", "mimalloc"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
