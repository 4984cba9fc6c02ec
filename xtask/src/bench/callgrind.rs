//! Step 3 of the bench: instructions per malloc+free pair, counted by callgrind in each lane.
use super::build::Programs;
use super::{exec, Callgrind, Lane, CALLGRIND_ITERS};
use indicatif::ProgressBar;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

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

/// Counts the pair in each of `lanes` for each allocator of `allocs`, under valgrind, at the two
/// loop lengths of [`CALLGRIND_ITERS`]; the profiles go to `out_dir/callgrind`.
pub fn run(
    root: &Path,
    out_dir: &Path,
    lanes: &[Lane],
    allocs: &[String],
    progs: &Programs,
    pb: &ProgressBar,
) -> Vec<Callgrind> {
    let mut callgrind: Vec<Callgrind> = Vec::new();
    let valgrind = super::meta::command_output("valgrind", &["--version"], root);
    let dir = out_dir.join("callgrind");
    let _ = std::fs::create_dir_all(&dir);
    let (n1, n2) = CALLGRIND_ITERS;
    for lane in lanes {
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
        for al in allocs {
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
                    if s.allocator == super::build::build_of(al) {
                        callgrind_total(&out)
                    } else {
                        Err(format!(
                            "the process reports allocator {:?}, expected {:?}",
                            s.allocator,
                            super::build::build_of(al)
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
    callgrind
}
