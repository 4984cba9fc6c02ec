//! Running one child process with a timeout and parsing the JSON line it prints.
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// One run of a workload, as the workload binary (or the C workload) reports it.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Sample {
    pub workload: String,
    /// The allocator the binary says it was built with (or, for the LD_PRELOAD lane, the
    /// allocator library it found mapped: "system" means none, i.e. glibc).
    pub allocator: String,
    /// The C lane's allocator's own version, as the process found it (mimalloc's
    /// `mi_version`, jemalloc's `mallctl("version")`, glibc's `gnu_get_libc_version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocator_version: Option<String>,
    pub threads: u64,
    pub iters: u64,
    pub ops: u64,
    pub secs: f64,
    /// VmHWM of the child at its end.
    pub peak_rss_kib: Option<u64>,
    /// Resident set right after the big free (fragmentation only).
    pub rss_after_free_kib: Option<u64>,
}

impl Sample {
    pub fn ops_per_sec(&self) -> f64 {
        if self.secs > 0.0 {
            self.ops as f64 / self.secs
        } else {
            f64::INFINITY
        }
    }
}

/// The command line, for messages and the report.
pub fn describe(cmd: &Command) -> String {
    let mut s = String::new();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            s.push_str(&format!("{}={} ", k.to_string_lossy(), v.to_string_lossy()));
        }
    }
    s.push_str(&cmd.get_program().to_string_lossy());
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn explain(status: ExitStatus) -> String {
    if let Some(sig) = status.signal() {
        let name = match sig {
            4 => " (SIGILL)",
            6 => " (SIGABRT)",
            7 => " (SIGBUS)",
            8 => " (SIGFPE)",
            9 => " (SIGKILL)",
            11 => " (SIGSEGV)",
            _ => "",
        };
        format!("killed by signal {sig}{name}")
    } else {
        format!("exited with {status}")
    }
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    v[v.len().saturating_sub(lines)..].join(" | ")
}

/// Run `cmd` to completion (killing it after `timeout`); return its stdout, or why it
/// failed (exit status or signal, plus the end of its stderr).
pub fn output(mut cmd: Command, timeout: Duration) -> Result<String, String> {
    let what = describe(&cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start `{what}`: {e}"))?;
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_t = thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => thread::sleep(Duration::from_millis(2)),
            Err(e) => return Err(format!("waiting for `{what}`: {e}")),
        }
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    match status {
        None => Err(format!(
            "timed out after {}s: {}",
            timeout.as_secs(),
            tail(&stderr, 3)
        )),
        Some(st) if st.success() => Ok(stdout),
        Some(st) => {
            let t = tail(&stderr, 4);
            Err(if t.is_empty() {
                explain(st)
            } else {
                format!("{}; stderr: {t}", explain(st))
            })
        }
    }
}

/// Run a workload and parse its JSON result line.
pub fn sample(cmd: Command, timeout: Duration) -> Result<Sample, String> {
    let out = output(cmd, timeout)?;
    let line = out
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or_else(|| format!("no JSON result line in its output: {}", tail(&out, 2)))?;
    serde_json::from_str(line).map_err(|e| format!("bad result line {line}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_signals_timeouts_and_bad_output() {
        let mut c = Command::new("sh");
        c.args(["-c", "echo dying >&2; kill -SEGV $$"]);
        let e = output(c, Duration::from_secs(10)).unwrap_err();
        assert!(
            e.contains("signal 11 (SIGSEGV)") && e.contains("dying"),
            "{e}"
        );

        let mut c = Command::new("sleep");
        c.arg("5");
        let e = output(c, Duration::from_millis(100)).unwrap_err();
        assert!(e.starts_with("timed out"), "{e}");

        let mut c = Command::new("echo");
        c.arg("not json");
        let e = sample(c, Duration::from_secs(10)).unwrap_err();
        assert!(e.contains("no JSON result line"), "{e}");

        let mut c = Command::new("echo");
        c.arg(r#"{"workload":"w","allocator":"a","threads":1,"iters":2,"ops":4,"secs":2.0,"peak_rss_kib":9,"rss_after_free_kib":null}"#);
        let s = sample(c, Duration::from_secs(10)).unwrap();
        assert_eq!((s.ops_per_sec(), s.peak_rss_kib), (2.0, Some(9)));
    }
}
