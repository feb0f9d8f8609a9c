//! Bench output: an etcd-benchmark-style text summary, `results.csv`,
//! `results.json`, `results.md` (the comparison table) and the plots.

use std::fmt::Write as _;
use std::path::Path;

use super::{plot, RunResult};
use anyhow::{anyhow, Result};

/// Writes every output file into `dir` and returns the text summary.
pub fn write_all(dir: &Path, results: &[RunResult]) -> Result<String> {
    let io = |p: &Path, e: std::io::Error| anyhow!("{}: {e}", p.display());
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let summary = text(results);
    let files = [
        ("summary.txt", summary.clone()),
        ("results.csv", csv(results)),
        ("results.md", markdown(results)),
        ("results.json", serde_json::to_string_pretty(results).map_err(|e| anyhow!("json: {e}"))?),
    ];
    for (name, body) in files {
        let path = dir.join(name);
        std::fs::write(&path, body).map_err(|e| io(&path, e))?;
    }
    plot::all(dir, results)?;
    Ok(summary)
}

fn gaps(r: &RunResult) -> String {
    joined(&r.failover_gaps_ms)
}

fn blocked(r: &RunResult) -> String {
    joined(&r.writes_blocked_ms)
}

/// Every round's throughput, "-" for a single run.
fn rounds(r: &RunResult) -> String {
    joined(&r.round_throughputs)
}

/// Throughput, with the range and count of the rounds when the run is a median.
fn ops_per_s(r: &RunResult) -> String {
    let n = r.round_throughputs.len();
    let lo = r.round_throughputs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = r.round_throughputs.iter().copied().fold(0.0, f64::max);
    match n {
        0 => format!("{:.0}", r.throughput),
        _ => format!("{:.0} (median of {n}: {lo:.0}-{hi:.0})", r.throughput),
    }
}

fn joined(values: &[f64]) -> String {
    if values.is_empty() {
        return "-".into();
    }
    values.iter().map(|g| format!("{g:.0}")).collect::<Vec<_>>().join("/")
}

/// Syncs per commit per node, two decimals, or "-" when nothing was measured.
fn per_commit(r: &RunResult) -> String {
    r.syncs.as_ref().and_then(|s| s.per_commit()).map_or("-".into(), |v| format!("{v:.2}"))
}

fn text(results: &[RunResult]) -> String {
    let mut out = String::new();
    for r in results {
        let w = &r.workload;
        let _ = writeln!(
            out,
            "\n== {} / {} / {}: {} clients x {} ops on {} pages, read ratio {:.2}",
            w.label,
            r.mode.name(),
            r.scenario.name(),
            w.clients,
            w.ops,
            w.pages,
            w.read_ratio
        );
        let _ = writeln!(out, "Summary:");
        let _ = writeln!(out, "  Total:\t{:.4} secs.", r.wall_ms / 1e3);
        let _ = writeln!(out, "  Requests/sec:\t{:.1}", r.throughput);
        if !r.round_throughputs.is_empty() {
            let _ = writeln!(out, "  Rounds:\t{} (median shown; each round's requests/sec: {})", w.repeat, rounds(r));
        }
        let _ = writeln!(out, "  Failed:\t{} of {}", r.failed, r.ops);
        let _ = writeln!(out, "  Local hits:\t{:.1}%", r.local_hit_rate * 100.0);
        let _ = writeln!(out, "  Avg per client:\t{:.2} ms", r.avg_client_ms);
        let _ = writeln!(out, "  Failover gap:\t{} ms", gaps(r));
        let _ = writeln!(out, "  Writes blocked by a killed client:\t{} ms", blocked(r));
        let _ = writeln!(out, "  Acknowledged writes lost:\t{}", r.acked_writes_lost);
        if let Some(s) = &r.syncs {
            let _ = writeln!(
                out,
                "  Syncs per commit per CM node:\t{} ({} syncs for {} log entries on {} nodes)",
                per_commit(r),
                s.syncs,
                s.commits,
                s.nodes
            );
        }
        for (name, l) in [("Read faults", &r.read_fault), ("Write faults", &r.write_fault)] {
            let _ = writeln!(
                out,
                "  {name} ({}):\tp50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms, mean {:.3} ms",
                l.count, l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms, l.mean_ms
            );
        }
    }
    out
}

fn csv(results: &[RunResult]) -> String {
    let mut out = String::from(
        "workload,mode,scenario,clients,pages,ops_per_client,read_ratio,ops,failed,throughput_ops_s,local_hit_rate,\
read_p50_ms,read_p99_ms,read_p999_ms,write_p50_ms,write_p99_ms,write_p999_ms,failover_gaps_ms,writes_blocked_ms,acked_writes_lost,avg_client_ms,\
syncs_per_commit,syncs,commits,round_throughputs\n",
    );
    for r in results {
        let w = &r.workload;
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{:.1},{:.4},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{},{},{},{:.2},{},{},{},{}",
            w.label,
            r.mode.name(),
            r.scenario.name(),
            w.clients,
            w.pages,
            w.ops,
            w.read_ratio,
            r.ops,
            r.failed,
            r.throughput,
            r.local_hit_rate,
            r.read_fault.p50_ms,
            r.read_fault.p99_ms,
            r.read_fault.p999_ms,
            r.write_fault.p50_ms,
            r.write_fault.p99_ms,
            r.write_fault.p999_ms,
            gaps(r),
            blocked(r),
            r.acked_writes_lost,
            r.avg_client_ms,
            per_commit(r),
            r.syncs.as_ref().map_or(String::new(), |s| s.syncs.to_string()),
            r.syncs.as_ref().map_or(String::new(), |s| s.commits.to_string()),
            rounds(r)
        );
    }
    out
}

/// The comparison table for the README.
pub fn markdown(results: &[RunResult]) -> String {
    let mut out = String::from(
        "| workload | mode | scenario | ops/s | failed | local hits | read fault p50 / p99 / p99.9 ms | write fault p50 / p99 / p99.9 ms | failover gap ms | writes blocked ms | acked writes lost | avg per client ms | syncs/commit/node |\n\
|---|---|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|\n",
    );
    for r in results {
        let (rf, wf) = (&r.read_fault, &r.write_fault);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {}/{} | {:.0}% | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} / {:.2} | {} | {} | {} | {:.1} | {} |",
            r.workload.label,
            r.mode.name(),
            r.scenario.name(),
            ops_per_s(r),
            r.failed,
            r.ops,
            r.local_hit_rate * 100.0,
            rf.p50_ms,
            rf.p99_ms,
            rf.p999_ms,
            wf.p50_ms,
            wf.p99_ms,
            wf.p999_ms,
            gaps(r),
            blocked(r),
            r.acked_writes_lost,
            r.avg_client_ms,
            per_commit(r)
        );
    }
    out
}
