//! `ivy bench`: Raft against the heartbeat baseline on real CM processes.
//!
//! For each mode and scenario the bench starts fresh CM node processes (3 for
//! Raft, 2 for heartbeat) under `--out`, in-process clients, seeds the pages,
//! then runs every client's operations at once with no sleeps while the scenario
//! kills and restarts CM nodes: the original write-up's scenarios (no faults;
//! kill the leader/primary; kill and restart it; kill and restart it several
//! times; kill and restart both/all CMs). Latencies go into HDR histograms. After
//! the run a fresh client reads every page back, and the history is checked for
//! acknowledged writes that were lost (the chaos checker's rule). Results are
//! written as text, CSV, JSON, a Markdown table and PNG plots; the CM nodes' data
//! dirs and logs go under `runs/`.

mod output;
mod plot;
mod run;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use output::{markdown as output_markdown, write_all};
pub use run::run_one;

/// Which design a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BenchMode {
    /// Three Raft CM nodes.
    Raft,
    /// The heartbeat baseline's primary and backup.
    Heartbeat,
}

impl BenchMode {
    /// The mode's name in tables.
    pub fn name(self) -> &'static str {
        match self {
            BenchMode::Raft => "raft",
            BenchMode::Heartbeat => "heartbeat",
        }
    }
}

/// The original write-up's scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
}

impl Scenario {
    /// Every scenario, in the write-up's order.
    pub const ALL: [Scenario; 5] =
        [Scenario::None, Scenario::KillLeader, Scenario::KillRestart, Scenario::KillRestartMany, Scenario::KillBoth];

    /// The scenario's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::None => "none",
            Scenario::KillLeader => "kill-leader",
            Scenario::KillRestart => "kill-restart",
            Scenario::KillRestartMany => "kill-restart-many",
            Scenario::KillBoth => "kill-both",
        }
    }

    /// Parses a name from `--scenario`.
    pub fn parse(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name.trim())
    }
}

/// One workload shape.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Workload {
    /// A short name for tables ("original", "scale", "read-heavy", "custom").
    pub label: String,
    /// Clients, all running at once.
    pub clients: usize,
    /// Pages P1..=Pn.
    pub pages: usize,
    /// Operations per client.
    pub ops: usize,
    /// Probability that an operation is a read.
    pub read_ratio: f64,
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
}
