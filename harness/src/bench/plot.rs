//! PNG plots of a bench: fault latency CDFs, throughput timelines with the
//! kills marked, and the failover gap per mode. Text uses the embedded DejaVu
//! font, so the plots need no system fonts.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::FontStyle;

use super::{BenchMode, RunResult, Scenario};
use anyhow::{anyhow, Result};

const SIZE: (u32, u32) = (1000, 600);
const FONT: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
    });
}

fn color(mode: BenchMode, write: bool) -> RGBColor {
    match (mode, write) {
        (BenchMode::Raft, false) => RGBColor(31, 119, 180),
        (BenchMode::Raft, true) => RGBColor(23, 190, 207),
        (BenchMode::RaftSkipSync, false) => RGBColor(44, 160, 44),
        (BenchMode::RaftSkipSync, true) => RGBColor(188, 189, 34),
        (BenchMode::Heartbeat, false) => RGBColor(214, 39, 40),
        (BenchMode::Heartbeat, true) => RGBColor(255, 127, 14),
    }
}

fn plot_err<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> anyhow::Error + '_ {
    move |e| anyhow!("plot {what}: {e}")
}

/// Draws every plot into `dir`.
pub fn all(dir: &Path, results: &[RunResult]) -> Result<()> {
    if results.is_empty() {
        return Ok(());
    }
    register_font();
    latency_cdf(&dir.join("latency_cdf.png"), results)?;
    timeline(&dir.join("timeline.png"), results)?;
    failover(&dir.join("failover_gap.png"), results)
}

/// Fault latency CDFs of the no-fault runs of the first workload.
fn latency_cdf(path: &Path, results: &[RunResult]) -> Result<()> {
    let label = &results[0].workload.label;
    let runs: Vec<&RunResult> =
        results.iter().filter(|r| &r.workload.label == label && r.scenario == Scenario::None).collect();
    let max = runs.iter().flat_map(|r| [r.read_fault.p999_ms, r.write_fault.p999_ms]).fold(1.0f64, f64::max);
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err("cdf"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("Fault latency CDF ({label}, no faults)"), (FONT, 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d((0.01f64..max * 1.2).log_scale(), 0f64..1f64)
        .map_err(plot_err("cdf"))?;
    chart
        .configure_mesh()
        .x_desc("latency (ms, log scale)")
        .y_desc("fraction of faults")
        .label_style((FONT, 14))
        .draw()
        .map_err(plot_err("cdf"))?;
    for r in runs {
        for (write, l) in [(false, &r.read_fault), (true, &r.write_fault)] {
            let c = color(r.mode, write);
            let name = format!("{} {} faults", r.mode.name(), if write { "write" } else { "read" });
            let points = l.cdf.iter().map(|(q, ms)| (ms.max(0.01), *q));
            chart
                .draw_series(LineSeries::new(points, c.stroke_width(2)))
                .map_err(plot_err("cdf"))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        }
    }
    chart.configure_series_labels().label_font((FONT, 14)).border_style(BLACK).draw().map_err(plot_err("cdf"))?;
    root.present().map_err(plot_err("cdf"))
}

/// The workload the timeline shows: a fixed-duration one when there is one,
/// else the one run under the most scenarios (the longest of those).
fn timeline_label(results: &[RunResult]) -> &str {
    if let Some(r) = results.iter().find(|r| r.workload.duration_ms.is_some()) {
        return &r.workload.label;
    }
    let runs_of = |label: &str| results.iter().filter(|r| r.workload.label == label).count();
    let weight = |r: &RunResult| (runs_of(&r.workload.label), r.workload.clients * r.workload.ops);
    &results.iter().max_by_key(|r| weight(r)).unwrap_or(&results[0]).workload.label
}

/// Throughput over time, one panel per scenario, every kill marked and
/// labelled.
fn timeline(path: &Path, results: &[RunResult]) -> Result<()> {
    let label = timeline_label(results);
    let scenarios: Vec<Scenario> = Scenario::all()
        .into_iter()
        .filter(|s| results.iter().any(|r| r.workload.label == label && r.scenario == *s))
        .collect();
    const PANEL_HEIGHT: u32 = 330;
    let root = BitMapBackend::new(path, (SIZE.0 + 200, PANEL_HEIGHT * scenarios.len() as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err("timeline"))?;
    for (area, scenario) in root.split_evenly((scenarios.len(), 1)).iter().zip(&scenarios) {
        let runs: Vec<&RunResult> =
            results.iter().filter(|r| r.workload.label == label && r.scenario == *scenario).collect();
        // A run that stalled (a baseline that lost its directory) would squash the
        // others: the axis stops at twice the quickest run.
        let longest = runs.iter().map(|r| r.wall_ms / 1e3).fold(0.1f64, f64::max);
        let quickest = runs.iter().map(|r| r.wall_ms / 1e3).fold(longest, f64::min);
        let secs = longest.min(quickest * 2.0).max(0.5);
        let cut = if secs < longest { format!(" (axis cut at {secs:.1} s of {longest:.0} s)") } else { String::new() };
        // The first second (seeded pages read locally in a burst) would squash
        // the rest: a longer run's scale leaves it out and cuts it off.
        let skip = |r: &RunResult| if r.timeline.len() > 50 { 10 } else { 0 };
        let steady = |r: &&RunResult| r.timeline.iter().skip(skip(r)).copied().max().unwrap_or(0);
        let peak = runs.iter().map(steady).max().unwrap_or(1).max(1) as f64 * 10.0;
        let top = peak * 1.25;
        let burst = runs.iter().flat_map(|r| r.timeline.iter().copied()).max().unwrap_or(0) as f64 * 10.0;
        let cut = if burst > top { format!("{cut} (y cut at {top:.0}; start burst {burst:.0})") } else { cut };
        let w = runs.first().map(|r| &r.workload);
        let shape = w.map_or(String::new(), |w| format!(", {} clients on {} pages", w.clients, w.pages));
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{label} / {}{shape}: successful operations per second{cut}", scenario.name()), (FONT, 20))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(75)
            .build_cartesian_2d(0f64..secs, 0f64..top)
            .map_err(plot_err("timeline"))?;
        chart
            .configure_mesh()
            .x_desc("time (s)")
            .y_desc("ops per s")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style((FONT, 15))
            .axis_desc_style((FONT, 16))
            .draw()
            .map_err(plot_err("timeline"))?;
        for (m, r) in runs.iter().enumerate() {
            let c = color(r.mode, false);
            let points = r
                .timeline
                .iter()
                .enumerate()
                .map(|(i, n)| (i as f64 * 0.1, (*n as f64 * 10.0).min(top)))
                .take_while(|(t, _)| *t <= secs);
            chart
                .draw_series(LineSeries::new(points, c.stroke_width(2)))
                .map_err(plot_err("timeline"))?
                .label(r.mode.name())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
            let what = match scenario {
                Scenario::KillClient => "client kill",
                Scenario::StopRestart => "SIGTERM",
                _ => "kill",
            };
            for (k, mark) in r.fault_marks_ms.iter().filter(|m| **m / 1e3 <= secs).enumerate() {
                let x = mark / 1e3;
                let dash = DashedLineSeries::new(vec![(x, 0.0), (x, top)], 6, 4, c.stroke_width(2));
                chart.draw_series(dash).map_err(plot_err("timeline"))?;
                // Labels of the modes stacked, so two kills at one moment stay readable.
                let y = top * (0.97 - 0.07 * m as f64);
                let text = Text::new(
                    format!(" {what} {} ({})", k + 1, r.mode.name()),
                    (x, y),
                    (FONT, 14).into_font().color(&c),
                );
                chart.draw_series(std::iter::once(text)).map_err(plot_err("timeline"))?;
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .margin(8)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT, 15))
            .draw()
            .map_err(plot_err("timeline"))?;
    }
    root.present().map_err(plot_err("timeline"))
}

/// Every kill's failover gap as a point: x the scenario, y the gap, colour and
/// shape the mode.
fn failover(path: &Path, results: &[RunResult]) -> Result<()> {
    let mut columns: Vec<String> = Vec::new();
    let mut points: Vec<(usize, BenchMode, f64)> = Vec::new();
    for r in results.iter().filter(|r| !r.failover_gaps_ms.is_empty()) {
        let name = format!("{}|{}", r.workload.label, r.scenario.name());
        let col = columns.iter().position(|c| *c == name).unwrap_or_else(|| {
            columns.push(name.clone());
            columns.len() - 1
        });
        points.extend(r.failover_gaps_ms.iter().map(|g| (col, r.mode, *g)));
    }
    const COLUMN_PX: u32 = 150;
    let width = SIZE.0.max(COLUMN_PX * columns.len() as u32 + 120);
    let root = BitMapBackend::new(path, (width, SIZE.1 + 60)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err("failover"))?;
    let top = points.iter().map(|p| p.2).fold(100.0f64, f64::max) * 1.15;
    let n = columns.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption("Failover gap per kill: kill to the first fault that started after it and succeeded", (FONT, 22))
        .margin(15)
        .x_label_area_size(85)
        .y_label_area_size(75)
        .build_cartesian_2d(0f64..n as f64, 0f64..top)
        .map_err(plot_err("failover"))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_desc("workload / scenario")
        .y_desc("gap (ms)")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .x_labels(0)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .draw()
        .map_err(plot_err("failover"))?;
    let modes: Vec<BenchMode> = <BenchMode as clap::ValueEnum>::value_variants()
        .iter()
        .copied()
        .filter(|m| points.iter().any(|p| p.1 == *m))
        .collect();
    for (mi, mode) in modes.iter().enumerate() {
        let c = color(*mode, false);
        // The modes side by side within a column.
        let offset = (mi as f64 + 1.0) / (modes.len() as f64 + 1.0);
        let mine: Vec<(f64, f64)> =
            points.iter().filter(|p| p.1 == *mode).map(|p| (p.0 as f64 + offset, p.2)).collect();
        let size = 6;
        let drawn = match mi % 3 {
            0 => chart.draw_series(mine.iter().map(|p| Circle::new(*p, size, c.filled()).into_dyn())),
            1 => chart.draw_series(mine.iter().map(|p| TriangleMarker::new(*p, size + 1, c.filled()).into_dyn())),
            _ => chart.draw_series(mine.iter().map(|p| Cross::new(*p, size, c.stroke_width(2)).into_dyn())),
        };
        let legend = move |(x, y): (i32, i32)| -> DynElement<'static, BitMapBackend, (i32, i32)> {
            match mi % 3 {
                0 => Circle::new((x + 8, y), size, c.filled()).into_dyn(),
                1 => TriangleMarker::new((x + 8, y), size + 1, c.filled()).into_dyn(),
                _ => Cross::new((x + 8, y), size, c.stroke_width(2)).into_dyn(),
            }
        };
        drawn.map_err(plot_err("failover"))?.label(mode.name()).legend(legend);
    }
    // The failover target (at most 500 ms), when it is in range.
    if top > 500.0 {
        let grey = RGBColor(120, 120, 120);
        let line = DashedLineSeries::new(vec![(0.0, 500.0), (n as f64, 500.0)], 8, 5, grey.stroke_width(1));
        chart.draw_series(line).map_err(plot_err("failover"))?;
        let label = Text::new("500 ms", (n as f64 - 0.5, 500.0 + top * 0.01), (FONT, 13).into_font().color(&grey));
        chart.draw_series(std::iter::once(label)).map_err(plot_err("failover"))?;
    }
    // Each column named under the axis on two lines: workload, scenario.
    let anchor = plotters::style::text_anchor::Pos::new(
        plotters::style::text_anchor::HPos::Center,
        plotters::style::text_anchor::VPos::Top,
    );
    for (i, name) in columns.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
        for (line, text) in name.split('|').enumerate() {
            let style = TextStyle::from((FONT, 14).into_font()).pos(anchor);
            let at = (x, y + 8 + 17 * line as i32);
            root.draw(&Text::new(text.to_string(), at, style)).map_err(plot_err("failover"))?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .margin(8)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 15))
        .draw()
        .map_err(plot_err("failover"))?;
    root.present().map_err(plot_err("failover"))
}
