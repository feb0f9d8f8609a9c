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

/// Runs every (workload, scenario) of `plan` in every mode, modes alternated
/// within each pair so both see the same machine, with a progress bar on a
/// terminal (a line per run otherwise).
pub async fn run_plan(
    config: &BenchConfig,
    plan: &[(Workload, Vec<Scenario>)],
    modes: &[BenchMode],
) -> anyhow::Result<Vec<RunResult>> {
    let total: u64 = plan.iter().map(|(w, s)| (w.clients * w.ops * s.len() * modes.len()) as u64).sum();
    let progress = indicatif::ProgressBar::new(total);
    progress.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} ops {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut results = Vec::new();
    for (work, scenarios) in plan {
        for scenario in scenarios {
            for mode in modes {
                let what = format!("{} / {mode} / {}", work.label, scenario.name());
                progress.set_message(what.clone());
                if progress.is_hidden() {
                    eprintln!("bench: {what}");
                }
                results.push(run_one(config, work, *mode, *scenario, &progress).await?);
            }
        }
    }
    progress.finish_and_clear();
    Ok(results)
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
    /// Operations attempted.
    pub ops: usize,
    /// Operations that failed.
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
    /// Acknowledged writes missing from the read-back.
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
}
