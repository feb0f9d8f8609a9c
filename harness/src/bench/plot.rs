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

/// Throughput over time per scenario, kills marked, for the workload run under
/// the most scenarios (the longest of those).
fn timeline(path: &Path, results: &[RunResult]) -> Result<()> {
    let runs_of = |label: &str| results.iter().filter(|r| r.workload.label == label).count();
    let weight = |r: &RunResult| (runs_of(&r.workload.label), r.workload.clients * r.workload.ops);
    let label = &results.iter().max_by_key(|r| weight(r)).unwrap_or(&results[0]).workload.label;
    let scenarios: Vec<Scenario> = Scenario::all()
        .into_iter()
        .filter(|s| results.iter().any(|r| &r.workload.label == label && r.scenario == *s))
        .collect();
    let root = BitMapBackend::new(path, (SIZE.0, 260 * scenarios.len() as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err("timeline"))?;
    for (area, scenario) in root.split_evenly((scenarios.len(), 1)).iter().zip(&scenarios) {
        let runs: Vec<&RunResult> =
            results.iter().filter(|r| &r.workload.label == label && r.scenario == *scenario).collect();
        // A run that stalled (a baseline that lost its directory) would squash the
        // others: the axis stops at twice the quickest run.
        let longest = runs.iter().map(|r| r.wall_ms / 1e3).fold(0.1f64, f64::max);
        let quickest = runs.iter().map(|r| r.wall_ms / 1e3).fold(longest, f64::min);
        let secs = longest.min(quickest * 2.0).max(0.5);
        let cut = if secs < longest { format!(" (axis cut at {secs:.1} s of {longest:.0} s)") } else { String::new() };
        let peak = runs.iter().flat_map(|r| r.timeline.iter().copied()).max().unwrap_or(1).max(1) as f64 * 10.0;
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{label} / {}: successful ops/s{cut}", scenario.name()), (FONT, 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..secs, 0f64..peak * 1.1)
            .map_err(plot_err("timeline"))?;
        chart.configure_mesh().x_desc("seconds").label_style((FONT, 12)).draw().map_err(plot_err("timeline"))?;
        for r in &runs {
            let c = color(r.mode, false);
            let points = r
                .timeline
                .iter()
                .enumerate()
                .map(|(i, n)| (i as f64 * 0.1, *n as f64 * 10.0))
                .take_while(|(t, _)| *t <= secs);
            chart
                .draw_series(LineSeries::new(points, c.stroke_width(2)))
                .map_err(plot_err("timeline"))?
                .label(r.mode.name())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
            for mark in r.fault_marks_ms.iter().filter(|m| **m / 1e3 <= secs) {
                let x = mark / 1e3;
                let line = PathElement::new(vec![(x, 0.0), (x, peak * 1.1)], c.mix(0.6).stroke_width(1));
                chart.draw_series(std::iter::once(line)).map_err(plot_err("timeline"))?;
            }
        }
        chart.configure_series_labels().label_font((FONT, 12)).draw().map_err(plot_err("timeline"))?;
    }
    root.present().map_err(plot_err("timeline"))
}

/// Mean failover gap per scenario, one bar per mode.
fn failover(path: &Path, results: &[RunResult]) -> Result<()> {
    let bars: Vec<(String, BenchMode, f64)> = results
        .iter()
        .filter(|r| !r.failover_gaps_ms.is_empty())
        .map(|r| {
            let mean = r.failover_gaps_ms.iter().sum::<f64>() / r.failover_gaps_ms.len() as f64;
            (format!("{} {}", r.workload.label, r.scenario.name()), r.mode, mean)
        })
        .collect();
    // Wide enough that each bar's two-line label fits above it.
    const BAR_WIDTH_PX: u32 = 170;
    let width = SIZE.0.max(BAR_WIDTH_PX * bars.len() as u32);
    let root = BitMapBackend::new(path, (width, SIZE.1)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err("failover"))?;
    let top = bars.iter().map(|b| b.2).fold(100.0f64, f64::max) * 1.2;
    let mut chart = ChartBuilder::on(&root)
        .caption("Failover gap: kill to the first fault served after it", (FONT, 24))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..bars.len().max(1) as f64, 0f64..top)
        .map_err(plot_err("failover"))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .disable_x_axis()
        .y_desc("ms")
        .label_style((FONT, 12))
        .draw()
        .map_err(plot_err("failover"))?;
    let rects = bars.iter().enumerate().map(|(i, (_, mode, ms))| {
        Rectangle::new([(i as f64 + 0.15, 0.0), (i as f64 + 0.85, *ms)], color(*mode, false).filled())
    });
    chart.draw_series(rects).map_err(plot_err("failover"))?;
    // Each bar is named above itself: scenario, mode, value.
    for (i, (name, mode, ms)) in bars.iter().enumerate() {
        for (line, text) in [name.clone(), format!("{} {ms:.0} ms", mode.name())].into_iter().enumerate() {
            let y = ms + top * (0.07 - 0.035 * line as f64);
            let label = Text::new(text, (i as f64 + 0.15, y), (FONT, 12).into_font());
            chart.draw_series(std::iter::once(label)).map_err(plot_err("failover"))?;
        }
    }
    root.present().map_err(plot_err("failover"))
}
