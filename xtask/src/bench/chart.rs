//! target/bench/results.svg: median throughput and median peak RSS of every allocator as
//! ratios to the baseline's (one horizontal bar per allocator and entry).
use super::{Cell, Report};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

const COLORS: [RGBColor; 4] = [
    RGBColor(214, 39, 40),   // hakmem
    RGBColor(127, 127, 127), // system
    RGBColor(31, 119, 180),  // mimalloc
    RGBColor(44, 160, 44),   // jemalloc
];

fn color(allocator: &str) -> RGBColor {
    let i = super::ALLOCATORS
        .iter()
        .position(|a| *a == allocator)
        .unwrap_or(0);
    COLORS[i]
}

type Pick = fn(&Cell) -> Option<f64>;

pub fn draw(r: &Report, allocs: &[String], path: &Path) -> Result<(), String> {
    let cells: Vec<&Cell> = r.results.iter().chain(&r.preload).collect();
    let mut names: Vec<String> = Vec::new();
    for c in &cells {
        if !names.contains(&c.entry) {
            names.push(c.entry.clone());
        }
    }
    let shown: Vec<&String> = allocs.iter().filter(|a| **a != r.baseline).collect();
    let rows = names.len().max(1);
    let height = 140 + 34 * rows as u32;
    let root = SVGBackend::new(path, (1500, height)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| format!("drawing {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let root = root
        .titled(
            &format!(
                "hakmem benchmarks, {} ({} runs, medians); ratios to {} = 1.0",
                r.date, r.runs, r.baseline
            ),
            ("sans-serif", 20),
        )
        .map_err(|e| err(&e))?;
    let (left, right) = root.split_horizontally(760);
    let panels: [(&DrawingArea<SVGBackend, _>, String, Pick, u32); 2] = [
        (
            &left,
            format!("throughput / {} (higher is better)", r.baseline),
            |c| c.ratio_vs_baseline,
            250,
        ),
        (
            &right,
            format!("peak RSS / {} (lower is better)", r.baseline),
            |c| c.rss_ratio_vs_baseline,
            20,
        ),
    ];
    for (pi, (area, title, pick, label_w)) in panels.into_iter().enumerate() {
        let max = cells
            .iter()
            .filter_map(|c| pick(c))
            .fold(1.2f64, f64::max)
            .min(20.0)
            * 1.08;
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(label_w)
            .build_cartesian_2d(0f64..max, 0f64..rows as f64)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .x_labels(8)
            .x_label_formatter(&|x| format!("{x:.1}x"))
            .draw()
            .map_err(|e| err(&e))?;
        let band = 0.8 / shown.len().max(1) as f64;
        for (k, al) in shown.iter().enumerate() {
            let col = color(al);
            let bars: Vec<Rectangle<(f64, f64)>> = names
                .iter()
                .enumerate()
                .filter_map(|(i, name)| {
                    let c = cells
                        .iter()
                        .find(|c| &c.entry == name && &c.allocator == *al)?;
                    let v = pick(c)?.min(max);
                    let top = (rows - i) as f64 - 0.1 - k as f64 * band;
                    Some(Rectangle::new([(0.0, top - band), (v, top)], col.filled()))
                })
                .collect();
            let s = chart.draw_series(bars).map_err(|e| err(&e))?;
            if pi == 0 {
                s.label(al.as_str()).legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 14, y + 5)], col.filled())
                });
            }
        }
        chart
            .draw_series(LineSeries::new(
                [(1.0, 0.0), (1.0, rows as f64)],
                BLACK.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label(format!("{} = 1.0", r.baseline))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 14, y)], BLACK.stroke_width(2)));
        if pi == 0 {
            // Entry names, right-aligned against the plot's left edge.
            let style = ("sans-serif", 13)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Right, VPos::Center));
            chart
                .draw_series(names.iter().enumerate().map(|(i, name)| {
                    EmptyElement::at((0.0, (rows - i) as f64 - 0.5))
                        + Text::new(name.clone(), (-8, 5), style.clone())
                }))
                .map_err(|e| err(&e))?;
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(|e| err(&e))?;
        }
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
