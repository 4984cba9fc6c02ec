//! Ratios, geometric means and the terminal table.
use super::{Cell, Entry, Lane, Report};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

/// An allocator's geometric-mean ratios against the baseline.
#[derive(Serialize)]
pub struct Geomean {
    /// How many entries went into the throughput figure.
    pub entries: usize,
    /// Geometric mean of median-throughput ratios (higher is better).
    pub throughput_ratio: Option<f64>,
    /// Geometric mean of median-peak-RSS ratios (lower is better).
    pub rss_ratio: Option<f64>,
}

/// A median and its runs' spread, for a ratio and its verdict.
type Measured = (Option<f64>, Option<f64>);

/// The ratio `x / b` of two medians, and whether it is a verdict: the gap it reports
/// (|ratio - 1|) is at least as wide as the wider of the two cells' spreads.
fn ratio(x: Measured, b: Measured) -> (Option<f64>, Option<bool>) {
    match (x.0, b.0) {
        (Some(x_med), Some(b_med)) if b_med > 0.0 => {
            let r = x_med / b_med;
            let noise = x.1.unwrap_or(0.0).max(b.1.unwrap_or(0.0));
            (Some(r), Some((r - 1.0).abs() >= noise))
        }
        _ => (None, None),
    }
}

/// Fill each cell's ratios (and their verdicts) against the baseline allocator's cell of the
/// same entry.
pub fn ratios(cells: &mut [Cell], baseline: &str) {
    let base: BTreeMap<String, (Measured, Measured)> = cells
        .iter()
        .filter(|c| c.allocator == baseline && c.ok())
        .map(|c| {
            (
                c.entry.clone(),
                (
                    (c.median_ops_per_sec, c.spread),
                    (c.median_peak_rss_kib, c.rss_spread),
                ),
            )
        })
        .collect();
    for c in cells.iter_mut().filter(|c| c.ok()) {
        if let Some((t, r)) = base.get(&c.entry) {
            (c.ratio_vs_baseline, c.verdict) = ratio((c.median_ops_per_sec, c.spread), *t);
            (c.rss_ratio_vs_baseline, c.rss_verdict) =
                ratio((c.median_peak_rss_kib, c.rss_spread), *r);
        }
    }
}

fn geo(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        None
    } else {
        Some((v.iter().map(|x| x.ln()).sum::<f64>() / v.len() as f64).exp())
    }
}

/// Geometric means over unique commands (an entry that repeats an earlier entry's
/// arguments is counted once).
pub fn geomeans(
    cells: &[Cell],
    entries: &[Entry],
    allocs: &[String],
    baseline: &str,
) -> BTreeMap<String, Geomean> {
    let mut seen: Vec<&Vec<String>> = Vec::new();
    let mut unique_names: Vec<&str> = Vec::new();
    for e in entries {
        if !seen.contains(&&e.args) {
            seen.push(&e.args);
            unique_names.push(&e.name);
        }
    }
    let mut out = BTreeMap::new();
    for al in allocs.iter().filter(|a| a.as_str() != baseline) {
        let mine: Vec<&Cell> = cells
            .iter()
            .filter(|c| &c.allocator == al && unique_names.contains(&c.entry.as_str()))
            .collect();
        let t: Vec<f64> = mine.iter().filter_map(|c| c.ratio_vs_baseline).collect();
        let r: Vec<f64> = mine
            .iter()
            .filter_map(|c| c.rss_ratio_vs_baseline)
            .collect();
        out.insert(
            al.clone(),
            Geomean {
                entries: t.len(),
                throughput_ratio: geo(&t),
                rss_ratio: geo(&r),
            },
        );
    }
    out
}

/// Operations per second with an SI prefix.
pub fn rate(x: f64) -> String {
    if x >= 1e9 {
        format!("{:.2}G", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.2}k", x / 1e3)
    } else {
        format!("{x:.1}")
    }
}

fn mib(kib: f64) -> String {
    format!("{:.1}", kib / 1024.0)
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "-".to_string(), f)
}

/// The table's widest line: it fits a 100-column terminal or log.
pub const MAX_WIDTH: usize = 100;

/// The table's columns, left-aligned first two, the rest right-aligned (the legend under the
/// title says what each means).
fn headers() -> Vec<String> {
    [
        "workload",
        "alloc",
        "ops/s",
        "±",
        "ratio",
        "RSS MiB",
        "±",
        "RSS ratio",
        "freed",
    ]
    .map(String::from)
    .to_vec()
}

/// A spread as a whole percentage of the median.
fn percent(x: f64) -> String {
    format!("{:.0}%", x * 100.0)
}

/// A ratio, marked `~` when it is not a verdict.
fn ratio_cell(r: Option<f64>, verdict: Option<bool>) -> String {
    let mark = if verdict == Some(false) { "~" } else { "" };
    opt(r, |r| format!("{mark}{r:.2}x"))
}

/// One row per cell: the columns of `headers`, or (for a failed or skipped cell) the
/// workload, the allocator and the reason.
enum Row {
    Ok(Vec<String>),
    NotOk(String, String, String),
    Gap,
}

fn rows(cells: &[&Cell]) -> Vec<Row> {
    let mut out = Vec::new();
    let mut last = String::new();
    for c in cells {
        let name = if c.entry == last {
            String::new()
        } else {
            c.entry.clone()
        };
        if c.entry != last && !last.is_empty() {
            out.push(Row::Gap);
        }
        last = c.entry.clone();
        if !c.ok() {
            let why = why_not(c.error.as_deref().unwrap_or("no samples"));
            out.push(Row::NotOk(
                name,
                c.allocator.clone(),
                format!("{}: {why}", c.status.to_uppercase()),
            ));
            continue;
        }
        out.push(Row::Ok(vec![
            name,
            c.allocator.clone(),
            opt(c.median_ops_per_sec, rate),
            opt(c.spread, percent),
            ratio_cell(c.ratio_vs_baseline, c.verdict),
            opt(c.median_peak_rss_kib, mib),
            opt(c.rss_spread, percent),
            ratio_cell(c.rss_ratio_vs_baseline, c.rss_verdict),
            opt(c.median_rss_after_free_kib, mib),
        ]));
    }
    out
}

/// Lay out a table: every column as wide as its widest cell or header, never cut.
fn layout(out: &mut String, headers: &[String], rows: &[Row]) {
    let mut w: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        match r {
            Row::Ok(cols) => {
                for (i, c) in cols.iter().enumerate() {
                    w[i] = w[i].max(c.chars().count());
                }
            }
            Row::NotOk(name, al, _) => {
                w[0] = w[0].max(name.chars().count());
                w[1] = w[1].max(al.chars().count());
            }
            Row::Gap => {}
        }
    }
    let line = |cols: &[String]| {
        let mut s = String::new();
        for (i, c) in cols.iter().enumerate() {
            let pad = w[i].saturating_sub(c.chars().count());
            if i > 0 {
                s.push_str("  ");
            }
            if i < 2 {
                s.push_str(c);
                s.push_str(&" ".repeat(pad));
            } else {
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            }
        }
        s.trim_end().to_string()
    };
    let header = line(headers);
    let rule = "-".repeat(w.iter().sum::<usize>() + 2 * (w.len() - 1));
    let _ = writeln!(out, "{header}\n{rule}");
    for r in rows {
        match r {
            Row::Ok(cols) => {
                let _ = writeln!(out, "{}", line(cols));
            }
            Row::NotOk(name, al, why) => {
                let _ = writeln!(out, "{name:<w0$}  {al:<w1$}  {why}", w0 = w[0], w1 = w[1]);
            }
            Row::Gap => out.push('\n'),
        }
    }
    let _ = writeln!(out, "{rule}");
}

/// The whole terminal report.
pub fn table(r: &Report) -> String {
    let mut out = String::new();
    let base = &r.baseline;
    let _ = writeln!(
        out,
        "\nhakmem benchmark suite · {} · {} run(s) per cell{}",
        r.date,
        r.runs,
        if r.quick { " · quick" } else { "" }
    );
    let _ = writeln!(
        out,
        "commit {} · {} · built in {:.0} s, {:.0} s in all",
        r.commit.get(..12).unwrap_or(&r.commit),
        r.compiler,
        r.build_secs,
        r.total_secs
    );
    for k in ["cpus", "load average at start", "load average at end"] {
        if let Some(v) = r.machine.get(k) {
            let _ = writeln!(out, "{k}: {v}");
        }
    }
    let _ = writeln!(
        out,
        "Medians. ratio: throughput over {base}'s (higher is better); RSS ratio: peak RSS over\n\
         {base}'s (lower is better); ±: the runs' spread, (max - min) / median; ~: the spread is\n\
         wider than the gap, not a verdict; freed: RSS after the big free, MiB."
    );
    for (al, b) in r.builds.iter().filter(|(_, b)| b.as_str() != "ok") {
        let _ = writeln!(out, "{al}: not built: {b}");
    }
    for lane in Lane::ALL {
        let cells: Vec<&Cell> = r.results.iter().filter(|c| c.lane == lane).collect();
        if cells.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n{}", lane.title());
        if lane == Lane::C {
            for (al, lib) in &r.preload_libraries {
                let _ = writeln!(out, "  {al}: {lib}");
            }
        }
        layout(&mut out, &headers(), &rows(&cells));
        for (al, g) in r.geomean.get(lane.key()).into_iter().flatten() {
            let _ = writeln!(
                out,
                "geomean {al:<9} throughput {} of {base}'s, peak RSS {} (over {} entries)",
                opt(g.throughput_ratio, |x| format!("{x:.3}x")),
                opt(g.rss_ratio, |x| format!("{x:.3}x")),
                g.entries
            );
        }
    }
    if !r.callgrind.is_empty() {
        let _ = writeln!(
            out,
            "\ncallgrind: instructions per malloc+free pair ((Ir at n2 - Ir at n1) / (n2 - n1))"
        );
        let mut lanes: Vec<Lane> = r.callgrind.iter().map(|c| c.lane).collect();
        lanes.dedup();
        for lane in lanes {
            let rows: Vec<&super::Callgrind> =
                r.callgrind.iter().filter(|c| c.lane == lane).collect();
            let _ = writeln!(out, "  {}", rows[0].program);
            for c in rows {
                match c.instructions_per_pair {
                    Some(ipp) => {
                        let _ = writeln!(
                            out,
                            "    {:<9} {ipp:>7.1}   (Ir {} at {} iterations, {} at {})",
                            c.allocator,
                            c.ir1.unwrap_or(0),
                            c.n1,
                            c.ir2.unwrap_or(0),
                            c.n2
                        );
                    }
                    None => {
                        let why = why_not(c.error.as_deref().unwrap_or(""));
                        let _ = writeln!(
                            out,
                            "    {:<9} {}: {why}",
                            c.allocator,
                            c.status.to_uppercase(),
                        );
                    }
                }
            }
        }
    }
    fit(&out)
}

/// `text` with every line longer than [`MAX_WIDTH`] cut to it, ending in `…` (a failure's whole
/// reason, a library's whole path: results.json keeps them).
fn fit(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let body = line.strip_suffix('\n').unwrap_or(line);
        if body.chars().count() > MAX_WIDTH {
            out.extend(body.chars().take(MAX_WIDTH - 1));
            out.push('…');
            if line.ends_with('\n') {
                out.push('\n');
            }
        } else {
            out.push_str(line);
        }
    }
    out
}

/// A failed or skipped cell's reason, shortened when it is the build's (printed above).
fn why_not(error: &str) -> &str {
    if error.starts_with("not built") {
        "its build failed (see above)"
    } else {
        error
    }
}
