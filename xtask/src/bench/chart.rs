//! results.svg: per entry and allocator, median throughput and median peak RSS as ratios to
//! the baseline's medians (one horizontal bar each, with a whisker for the min..max spread
//! over the runs, also divided by the baseline's median), both lanes one under the other with
//! each lane's geometric mean; the legend in its own band above the plots, clear of the bars;
//! and the callgrind instruction counts per malloc+free pair at the bottom.
use super::{Callgrind, Cell, Lane, Report};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

const COLORS: [RGBColor; 5] = [
    RGBColor(214, 39, 40),   // hakmem
    RGBColor(127, 127, 127), // system
    RGBColor(31, 119, 180),  // mimalloc
    RGBColor(44, 160, 44),   // jemalloc
    RGBColor(255, 127, 14),  // hakmem-prof
];

/// Ratios above this are drawn clipped, with their value written at the edge.
const CAP: f64 = 4.0;
const WIDTH: u32 = 1600;
const ROW: u32 = 30;

fn color(allocator: &str) -> RGBColor {
    let i = super::ALLOCATORS
        .iter()
        .chain([&super::PROFILED])
        .position(|a| *a == allocator)
        .unwrap_or(0);
    COLORS[i]
}

/// One row of the plots.
enum Row {
    /// A lane's title.
    Lane(Lane),
    /// An entry.
    Entry(String),
    /// A lane's geometric mean.
    Geomean(Lane),
}

/// A bar: the median ratio, and the whisker's ends (None for a geometric mean).
type Bar = (f64, Option<(f64, f64)>);

/// Throughput (`rss == false`) or peak RSS bars for one cell, relative to the baseline's
/// median.
fn bar(cells: &[&Cell], base: &str, entry: &str, al: &str, rss: bool) -> Option<Bar> {
    let find = |a: &str| {
        cells
            .iter()
            .find(|c| c.entry == entry && c.allocator == a && c.ok())
    };
    let (c, b) = (find(al)?, find(base)?);
    let (med, lo, hi, bmed) = if rss {
        (
            c.median_peak_rss_kib?,
            c.min_peak_rss_kib?,
            c.max_peak_rss_kib?,
            b.median_peak_rss_kib?,
        )
    } else {
        (
            c.median_ops_per_sec?,
            c.min_ops_per_sec?,
            c.max_ops_per_sec?,
            b.median_ops_per_sec?,
        )
    };
    (bmed > 0.0).then(|| (med / bmed, Some((lo / bmed, hi / bmed))))
}

fn err(path: &Path) -> impl Fn(&dyn std::fmt::Display) -> String + '_ {
    move |e| format!("drawing {}: {e}", path.display())
}

pub fn draw(r: &Report, allocs: &[String], path: &Path) -> Result<(), String> {
    let err = err(path);
    let cells: Vec<&Cell> = r.results.iter().collect();
    let mut rows: Vec<Row> = Vec::new();
    for lane in Lane::ALL {
        let mut names: Vec<&str> = Vec::new();
        for c in cells.iter().filter(|c| c.lane == lane) {
            if !names.contains(&c.entry.as_str()) {
                names.push(&c.entry);
            }
        }
        if names.is_empty() {
            continue;
        }
        rows.push(Row::Lane(lane));
        rows.extend(names.into_iter().map(|n| Row::Entry(n.to_string())));
        if r.geomean.contains_key(lane.key()) {
            rows.push(Row::Geomean(lane));
        }
    }
    let n = rows.len().max(1);
    let cg_lanes: Vec<Lane> = Lane::ALL
        .into_iter()
        .filter(|l| r.callgrind.iter().any(|c| c.lane == *l))
        .collect();
    let cg_h = if cg_lanes.is_empty() {
        0
    } else {
        70 + (allocs.len() as u32 * 24 + 30) * cg_lanes.len() as u32
    };
    let top_h = 80;
    let main_h = if rows.is_empty() {
        0
    } else {
        70 + ROW * n as u32
    };
    let root = SVGBackend::new(path, (WIDTH, top_h + main_h + cg_h)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (top, rest) = root.split_vertically(top_h);
    let (main, bottom) = rest.split_vertically(main_h);
    legend(r, allocs, &top).map_err(|e| err(&e))?;

    let (left, right) = main.split_horizontally(WIDTH * 11 / 20);
    let panels: [(&DrawingArea<SVGBackend, Shift>, String, bool, u32); 2] = [
        (
            &left,
            format!("throughput / {}'s (higher is better)", r.baseline),
            false,
            260,
        ),
        (
            &right,
            format!("peak RSS / {}'s (lower is better)", r.baseline),
            true,
            10,
        ),
    ];
    for (area, title, rss, label_w) in panels.into_iter().filter(|_| !rows.is_empty()) {
        let bars = |al: &str, row: &Row| -> Option<Bar> {
            match row {
                Row::Lane(_) => None,
                Row::Entry(e) => bar(&cells, &r.baseline, e, al, rss),
                Row::Geomean(l) => {
                    if al == r.baseline {
                        return Some((1.0, None));
                    }
                    let g = r.geomean.get(l.key())?.get(al)?;
                    Some((
                        if rss {
                            g.rss_ratio?
                        } else {
                            g.throughput_ratio?
                        },
                        None,
                    ))
                }
            }
        };
        let mut max = 1.2f64;
        for row in &rows {
            for al in allocs {
                if let Some((v, w)) = bars(al, row) {
                    max = max.max(v).max(w.map_or(0.0, |w| w.1));
                }
            }
        }
        let max = max.min(CAP) * 1.06;
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(28)
            .y_label_area_size(label_w)
            .build_cartesian_2d(0f64..max, 0f64..n as f64)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .x_labels(10)
            .x_label_style(("sans-serif", 12))
            .x_label_formatter(&|x| format!("{x:.1}x"))
            .draw()
            .map_err(|e| err(&e))?;
        let band = 0.8 / allocs.len().max(1) as f64;
        for (k, al) in allocs.iter().enumerate() {
            let col = color(al);
            let mut rects = Vec::new();
            let mut whiskers = Vec::new();
            let mut clipped = Vec::new();
            for (i, row) in rows.iter().enumerate() {
                let Some((v, w)) = bars(al, row) else {
                    continue;
                };
                let top = (n - i) as f64 - 0.1 - k as f64 * band;
                let mid = top - band / 2.0;
                let style = if matches!(row, Row::Geomean(_)) {
                    col.mix(0.55).filled()
                } else {
                    col.filled()
                };
                rects.push(Rectangle::new(
                    [(0.0, top - band), (v.min(max), top)],
                    style,
                ));
                if v > max {
                    clipped.push((v, mid));
                }
                if let Some((lo, hi)) = w {
                    let (lo, hi) = (lo.min(max), hi.min(max));
                    whiskers.push(PathElement::new(
                        [(lo, mid), (hi, mid)],
                        BLACK.stroke_width(1),
                    ));
                    for x in [lo, hi] {
                        whiskers.push(PathElement::new(
                            [(x, mid - band * 0.35), (x, mid + band * 0.35)],
                            BLACK.stroke_width(1),
                        ));
                    }
                }
            }
            chart.draw_series(rects).map_err(|e| err(&e))?;
            chart.draw_series(whiskers).map_err(|e| err(&e))?;
            let style = ("sans-serif", 11)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Right, VPos::Center));
            chart
                .draw_series(clipped.into_iter().map(|(v, y)| {
                    EmptyElement::at((max, y))
                        + Text::new(format!("{v:.1}x"), (-3, 0), style.clone())
                }))
                .map_err(|e| err(&e))?;
        }
        chart
            .draw_series(LineSeries::new(
                [(1.0, 0.0), (1.0, n as f64)],
                BLACK.stroke_width(2),
            ))
            .map_err(|e| err(&e))?;
        if !rss {
            // Row labels, right-aligned against the plot's left edge.
            let style = |bold: bool| {
                let f = ("sans-serif", 13).into_font();
                let f = if bold { f.style(FontStyle::Bold) } else { f };
                f.color(&BLACK).pos(Pos::new(HPos::Right, VPos::Center))
            };
            chart
                .draw_series(rows.iter().enumerate().map(|(i, row)| {
                    let (text, bold) = match row {
                        Row::Lane(l) => (l.title().to_string(), true),
                        Row::Entry(e) => (e.clone(), false),
                        Row::Geomean(_) => ("geometric mean".to_string(), true),
                    };
                    EmptyElement::at((0.0, (n - i) as f64 - 0.5))
                        + Text::new(text, (-8, 0), style(bold))
                }))
                .map_err(|e| err(&e))?;
        }
    }
    if !cg_lanes.is_empty() {
        callgrind_panel(&r.callgrind, &cg_lanes, allocs, &bottom).map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

type DrawResult =
    Result<(), DrawingAreaErrorKind<<SVGBackend<'static> as DrawingBackend>::ErrorType>>;

/// The title and the legend, in their own band above the plots.
fn legend(r: &Report, allocs: &[String], area: &DrawingArea<SVGBackend, Shift>) -> DrawResult {
    let title = ("sans-serif", 20).into_font().color(&BLACK);
    area.draw(&Text::new(
        format!(
            "hakmem benchmarks, {} ({} run{} per cell, medians{}); ratios to {}'s median = 1.0",
            r.date,
            r.runs,
            if r.runs == 1 { "" } else { "s" },
            if r.quick { ", quick" } else { "" },
            r.baseline
        ),
        (16, 12),
        title,
    ))?;
    let font = ("sans-serif", 14).into_font().color(&BLACK);
    let mut x = 16;
    let y = 52;
    for al in allocs {
        let col = color(al);
        area.draw(&Rectangle::new([(x, y - 6), (x + 16, y + 6)], col.filled()))?;
        area.draw(&Text::new(al.clone(), (x + 22, y - 8), font.clone()))?;
        x += 40 + 9 * al.len() as i32;
    }
    x += 20;
    area.draw(&PathElement::new(
        [(x, y), (x + 30, y)],
        BLACK.stroke_width(1),
    ))?;
    for xx in [x, x + 30] {
        area.draw(&PathElement::new(
            [(xx, y - 5), (xx, y + 5)],
            BLACK.stroke_width(1),
        ))?;
    }
    area.draw(&Text::new(
        "spread: min..max over the runs".to_string(),
        (x + 38, y - 8),
        font.clone(),
    ))?;
    x += 300;
    area.draw(&PathElement::new(
        [(x, y - 8), (x, y + 8)],
        BLACK.stroke_width(2),
    ))?;
    area.draw(&Text::new(
        format!("{} = 1.0", r.baseline),
        (x + 8, y - 8),
        font.clone(),
    ))?;
    x += 160;
    area.draw(&Rectangle::new(
        [(x, y - 6), (x + 16, y + 6)],
        COLORS[0].mix(0.55).filled(),
    ))?;
    area.draw(&Text::new(
        "pale: geometric mean of the lane".to_string(),
        (x + 22, y - 8),
        font,
    ))?;
    Ok(())
}

/// Instructions per malloc+free pair, one group of bars per lane.
fn callgrind_panel(
    rows: &[Callgrind],
    lanes: &[Lane],
    allocs: &[String],
    area: &DrawingArea<SVGBackend, Shift>,
) -> DrawResult {
    let max = rows
        .iter()
        .filter_map(|c| c.instructions_per_pair)
        .fold(10.0f64, f64::max)
        * 1.15;
    let n = (lanes.len() * (allocs.len() + 1)) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "callgrind: instructions per malloc+free pair (lower is better)",
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(28)
        .y_label_area_size(430)
        .build_cartesian_2d(0f64..max, 0f64..n)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_labels(10)
        .x_label_style(("sans-serif", 12))
        .draw()?;
    let label = |bold: bool| {
        let f = ("sans-serif", 13).into_font();
        let f = if bold { f.style(FontStyle::Bold) } else { f };
        f.color(&BLACK).pos(Pos::new(HPos::Right, VPos::Center))
    };
    let value = ("sans-serif", 12)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    let mut i = 0usize;
    for lane in lanes {
        let program = rows
            .iter()
            .find(|c| c.lane == *lane)
            .map_or(String::new(), |c| c.program.clone());
        let y = n - i as f64 - 0.5;
        chart
            .draw_series([EmptyElement::at((0.0, y)) + Text::new(program, (-8, 0), label(true))])?;
        i += 1;
        for al in allocs {
            let y = n - i as f64 - 0.5;
            let c = rows.iter().find(|c| c.lane == *lane && &c.allocator == al);
            chart.draw_series([
                EmptyElement::at((0.0, y)) + Text::new(al.clone(), (-8, 0), label(false))
            ])?;
            match c.and_then(|c| c.instructions_per_pair) {
                Some(v) => {
                    chart.draw_series([Rectangle::new(
                        [(0.0, y - 0.35), (v, y + 0.35)],
                        color(al).filled(),
                    )])?;
                    chart.draw_series([EmptyElement::at((v, y))
                        + Text::new(format!("{v:.1}"), (5, 0), value.clone())])?;
                }
                None => {
                    let why = c.map_or("not run".to_string(), |c| c.status.clone());
                    chart.draw_series([
                        EmptyElement::at((0.0, y)) + Text::new(why, (5, 0), value.clone())
                    ])?;
                }
            }
            i += 1;
        }
    }
    Ok(())
}
