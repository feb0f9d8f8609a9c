//! `ivy bench`: Raft against the heartbeat baseline on real CM processes.
//!
//! For each mode and scenario the bench starts fresh CM node processes (3 for
//! Raft, 2 for heartbeat) under `--out`, in-process clients, seeds the pages,
//! then runs every client's operations at once with no sleeps while the scenario
//! kills and restarts CM nodes: the original write-up's scenarios (no faults;
//! kill the leader/primary; kill and restart it; kill and restart it several
//! times; kill and restart both/all CMs). Latencies go into HDR histograms. After
//! the run a fresh client reads every page back, and the history is checked for
//! acknowledged writes that were lost (the chaos checker's rule). Each CM node's
//! status carries its store's sync count and log index, so a run also reports
//! syncs per commit ([`syncs`]). `raft-skip-sync` runs Raft with the store's
//! syncs switched off, to show what durability costs. Results are written as
//! text, CSV, JSON, a Markdown table and PNG plots; the CM nodes' data dirs and
//! logs go under `runs/`.

pub mod idle;
mod output;
mod plot;
pub mod procs;
mod run;
mod syncs;

use std::path::PathBuf;

use ivy_raft::config::ReplicationMode;
use serde::{Deserialize, Serialize};

pub use crate::workload::Workload;

pub use output::{markdown as output_markdown, write_all};
pub use run::run_one;
pub use syncs::SyncStats;

/// Rounds of the README suite's 100-client run: one run of it lasts about 2 s,
/// and on this project's 2-core machine runs side by side differ by a third.
pub const SCALE_ROUNDS: usize = 5;

/// Runs every (workload, scenario) of `plan` in every mode, modes alternated
/// within each pair so both see the same machine, with a progress bar on a
/// terminal (a line per run otherwise). A workload with `repeat` > 1 runs that
/// many rounds of alternated pairs and keeps each mode's median run.
pub async fn run_plan(
    config: &BenchConfig,
    plan: &[(Workload, Vec<Scenario>)],
    modes: &[BenchMode],
) -> anyhow::Result<Vec<RunResult>> {
    let total: u64 = plan.iter().map(|(w, s)| (w.clients * w.ops * w.repeat * s.len() * modes.len()) as u64).sum();
    let progress = indicatif::ProgressBar::new(total);
    progress.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} ops {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut results = Vec::new();
    for (work, scenarios) in plan {
        for scenario in scenarios {
            let mut runs: Vec<Vec<RunResult>> = vec![Vec::new(); modes.len()];
            for round in 1..=work.repeat.max(1) {
                for (mode, runs) in modes.iter().zip(&mut runs) {
                    let mut what = format!("{} / {mode} / {}", work.label, scenario.name());
                    if work.repeat > 1 {
                        what += &format!(" (round {round} of {})", work.repeat);
                    }
                    progress.set_message(what.clone());
                    if progress.is_hidden() {
                        eprintln!("bench: {what}");
                    }
                    runs.push(run_one(config, work, *mode, *scenario, round, &progress).await?);
                }
            }
            results.extend(runs.into_iter().filter_map(median_run));
        }
    }
    progress.finish_and_clear();
    Ok(results)
}

/// The run with the median throughput (the lower middle one of an even count),
/// carrying every run's throughput in run order; its operations, failures and
/// lost writes become the totals over every run, so no round's loss is hidden.
fn median_run(runs: Vec<RunResult>) -> Option<RunResult> {
    if runs.len() < 2 {
        return runs.into_iter().next();
    }
    let every: Vec<f64> = runs.iter().map(|r| r.throughput).collect();
    let ops = runs.iter().map(|r| r.ops).sum();
    let failed = runs.iter().map(|r| r.failed).sum();
    let lost = runs.iter().map(|r| r.acked_writes_lost).sum();
    let mut order: Vec<usize> = (0..runs.len()).collect();
    order.sort_by(|&a, &b| every[a].total_cmp(&every[b]));
    let mid = order[(runs.len() - 1) / 2];
    let mut median = runs.into_iter().nth(mid)?;
    median.round_throughputs = every;
    (median.ops, median.failed, median.acked_writes_lost) = (ops, failed, lost);
    Some(median)
}

/// What a run measures: how the directory is replicated and, for Raft, whether
/// the store syncs (`--mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BenchMode {
    /// Raft; every log append and vote is fdatasync'd before it counts.
    Raft,
    /// Raft with `--unsafe-skip-sync`: nothing is synced, as durable as the
    /// page cache (for comparison only: a power cut loses acknowledged writes).
    RaftSkipSync,
    /// The heartbeat primary/backup baseline.
    Heartbeat,
}

impl BenchMode {
    /// How the directory is replicated.
    pub fn replication(self) -> ReplicationMode {
        match self {
            BenchMode::Raft | BenchMode::RaftSkipSync => ReplicationMode::Raft,
            BenchMode::Heartbeat => ReplicationMode::Heartbeat,
        }
    }

    /// The mode's name on the command line and in the results.
    pub fn name(self) -> &'static str {
        match self {
            BenchMode::Raft => "raft",
            BenchMode::RaftSkipSync => "raft-skip-sync",
            BenchMode::Heartbeat => "heartbeat",
        }
    }
}

impl std::fmt::Display for BenchMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The original write-up's scenarios (`--scenario`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// 1: no faults.
    None,
    /// 2: kill the leader (primary) a third of the way in.
    KillLeader,
    /// 3: kill it and restart it.
    KillRestart,
    /// 4: kill and restart it at a quarter, a half and three quarters.
    KillRestartMany,
    /// 5: kill every CM node and restart them all.
    KillBoth,
    /// 6: kill a client holding copies of pages a third of the way in (it stops
    /// serving and renewing its lease, like a kill -9).
    KillClient,
    /// Stop the leader gracefully (SIGTERM: a Raft leader hands over first) a
    /// third of the way in, and restart it; marked when the signal is sent.
    StopRestart,
}

impl Scenario {
    /// Every scenario, in the write-up's order.
    pub fn all() -> Vec<Scenario> {
        <Scenario as clap::ValueEnum>::value_variants().to_vec()
    }

    /// The scenario's name on the command line.
    pub fn name(self) -> String {
        clap::ValueEnum::to_possible_value(&self).map_or_else(|| format!("{self:?}"), |v| v.get_name().to_string())
    }
}

/// Where and how `ivy bench` runs its CM nodes.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The `ivy` binary to run as CM nodes.
    pub bin: PathBuf,
    /// Where data dirs, logs and results go.
    pub out: PathBuf,
    /// Heartbeat pulse, ms.
    pub pulse_ms: u64,
}

/// Latency percentiles of one kind of operation, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    /// How many operations.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Slowest.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
    /// (quantile, ms) points for a CDF plot.
    pub cdf: Vec<(f64, f64)>,
}

/// The result of one (workload, mode, scenario) run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    /// The workload.
    pub workload: Workload,
    /// The mode.
    pub mode: BenchMode,
    /// The scenario.
    pub scenario: Scenario,
    /// Operations attempted (with `repeat` > 1, over every round).
    pub ops: usize,
    /// Operations that failed (with `repeat` > 1, over every round).
    pub failed: usize,
    /// Successful operations per second of wall time.
    pub throughput: f64,
    /// Reads that took a fault.
    pub read_fault: Latency,
    /// Writes that took a fault.
    pub write_fault: Latency,
    /// Share of successful operations served locally.
    pub local_hit_rate: f64,
    /// Per kill: kill to the first fault that started after it and succeeded, ms.
    pub failover_gaps_ms: Vec<f64>,
    /// kill-client: per page the killed client held, kill to the first write of it
    /// that started after the kill and succeeded, ms (how long writes were blocked).
    #[serde(default)]
    pub writes_blocked_ms: Vec<f64>,
    /// Acknowledged writes missing from the read-back (with `repeat` > 1, over
    /// every round).
    pub acked_writes_lost: usize,
    /// Mean time a client took for all its operations, ms (the original's metric).
    pub avg_client_ms: f64,
    /// Wall time of the operation phase, ms.
    pub wall_ms: f64,
    /// Successful operations per 100 ms bucket, for the timeline plot.
    pub timeline: Vec<u64>,
    /// When each fault happened, ms since the start.
    pub fault_marks_ms: Vec<f64>,
    /// Syncs and commits on the CM nodes that ran throughout (absent in results
    /// written before syncs were counted).
    #[serde(default)]
    pub syncs: Option<SyncStats>,
    /// With `repeat` > 1: the throughput of every round's run of this mode and
    /// scenario, in run order (this result is the median one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub round_throughputs: Vec<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(throughput: f64, failed: usize, lost: usize) -> RunResult {
        RunResult {
            workload: Workload::original(),
            mode: BenchMode::Raft,
            scenario: Scenario::None,
            ops: 100,
            failed,
            throughput,
            read_fault: Latency::default(),
            write_fault: Latency::default(),
            local_hit_rate: 0.0,
            failover_gaps_ms: Vec::new(),
            writes_blocked_ms: Vec::new(),
            acked_writes_lost: lost,
            avg_client_ms: throughput,
            wall_ms: 0.0,
            timeline: Vec::new(),
            fault_marks_ms: Vec::new(),
            syncs: None,
            round_throughputs: Vec::new(),
        }
    }

    #[test]
    fn the_median_run_is_kept_with_every_rounds_throughput_and_the_totals() {
        let kept = median_run(vec![run(300.0, 0, 0), run(100.0, 2, 1), run(200.0, 1, 0)]).unwrap();
        assert_eq!(kept.avg_client_ms, 200.0, "the median run itself, not a blend");
        assert_eq!(kept.round_throughputs, vec![300.0, 100.0, 200.0]);
        assert_eq!((kept.ops, kept.failed, kept.acked_writes_lost), (300, 3, 1), "no round's failures are hidden");
    }

    #[test]
    fn an_even_count_keeps_the_lower_middle_run_and_one_run_is_left_alone() {
        let kept = median_run(vec![run(400.0, 0, 0), run(100.0, 0, 0), run(300.0, 0, 0), run(200.0, 0, 0)]).unwrap();
        assert_eq!(kept.avg_client_ms, 200.0);
        let one = median_run(vec![run(50.0, 1, 0)]).unwrap();
        assert!(one.round_throughputs.is_empty());
        assert_eq!((one.ops, one.failed), (100, 1));
        assert!(median_run(Vec::new()).is_none());
    }
}
