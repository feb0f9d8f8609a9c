//! `ivy chaos`: real processes, injected faults, and a checker for the history.
//!
//! The harness starts the CM nodes (3 for Raft, 2 for heartbeat) and the clients
//! as child processes of the built binary, each with its own data dir and log
//! under `--out`. Every link (CM to CM, client to CM) goes through a proxy of the
//! harness, so it can cut, blackhole or delay links. Workers run a bounded random
//! workload (writes of unique values `c<client>w<worker>-<n>`) until `--duration`
//! passes, while a seeded schedule injects one fault every 3-5 s: kill -9 and
//! restart a CM (biased to the leader), kill and restart them all, SIGSTOP a CM or
//! a client, a partition (leader isolated, one-way, a client cut off from the
//! leader, a blackhole, delays), a power cut, or the replacement of a follower
//! (membership: removed, emptied, added back with --join). Then everything is healed, every
//! client reads every page, and the history is checked (see [`checker`]).
//! `history.jsonl` and `report.json` go to `--out`; the run passes only on a
//! clean verdict.
//!
//! A power cut needs the CM data dirs on a [`lazyfs`](crate::lazyfs) mount: when
//! the fault kinds include it, the run mounts one under `--out` (`lazyfs/mnt`
//! over `lazyfs/backing`) and keeps the data dirs there; a cut kills every CM
//! node, drops every write they did not sync, and restarts them.
//!
//! `--net netns` ([`netns_run`]) replaces the proxies by real partitions:
//! every process in its own network namespace, links cut on a bridge.

pub mod checker;
#[cfg(test)]
mod checker_tests;
pub mod client_proc;
pub mod history;
mod membership;
pub mod netns_run;
pub mod procs;
mod proxy;
mod report;
mod rig;
pub(crate) mod workload;

pub use report::Report;
pub use rig::Nemesis;

use std::path::PathBuf;
use std::time::Duration;

use ivy_raft::config::ReplicationMode;

/// What one chaos run does.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// The `ivy` binary to run as CM nodes and clients.
    pub bin: PathBuf,
    /// Raft or the heartbeat baseline.
    pub mode: ReplicationMode,
    /// How long the workload runs (the faults run during it).
    pub duration: Duration,
    /// Seed of the workload and of the fault schedule.
    pub seed: u64,
    /// Client processes.
    pub clients: usize,
    /// Concurrent workers per client.
    pub workers: usize,
    /// Pages P1..=Pn.
    pub pages: usize,
    /// Probability that an operation is a read.
    pub read_ratio: f64,
    /// Fault kinds to draw from (empty: no faults).
    pub faults: Vec<Nemesis>,
    /// The time from one fault's start to the next one's, drawn from this range
    /// in ms (a fault that lasts longer delays the next).
    pub fault_gap_ms: (u64, u64),
    /// Where the logs, data dirs, history and report go.
    pub out: PathBuf,
    /// Heartbeat pulse, ms.
    pub pulse_ms: u64,
    /// The clients' lease on the CM nodes, ms.
    pub client_lease_ms: u64,
    /// Each client's own deadline for one operation, ms.
    pub client_timeout_ms: u64,
    /// Testing only: CM nodes skip invalidations (a broken build the checker must catch).
    pub unsafe_skip_invalidation: bool,
    /// Testing only: clients serve local hits after their lease ran out (a broken
    /// build the checker must catch).
    pub unsafe_ignore_lease: bool,
    /// Testing only: clients install late fault replies whose copies were
    /// superseded (a broken build the checker must catch).
    pub unsafe_late_install: bool,
    /// Testing only: CM nodes never sync their store (a broken build a power cut exposes).
    pub unsafe_skip_sync: bool,
    /// Testing only: the membership fault wipes voters' data dirs and restarts
    /// them under their old id without removing and adding them (a broken
    /// procedure the checker must catch).
    pub unsafe_rejoin_empty: bool,
    /// Log entries between the CM nodes' snapshots (`None`: their default).
    pub snapshot_every: Option<u64>,
}

impl ChaosConfig {
    /// A Raft run of `bin` writing to `out`, with the defaults of `ivy chaos`
    /// (60 s, seed 1, 4 clients x 2 workers on 16 pages, no fault kinds chosen,
    /// no broken build); callers set what they need.
    pub fn new(bin: PathBuf, out: PathBuf) -> Self {
        ChaosConfig {
            bin,
            mode: ReplicationMode::Raft,
            duration: Duration::from_secs(60),
            seed: 1,
            clients: 4,
            workers: 2,
            pages: 16,
            read_ratio: 0.5,
            faults: Vec::new(),
            fault_gap_ms: (3000, 5000),
            out,
            pulse_ms: 1000,
            client_lease_ms: 2000,
            client_timeout_ms: CLIENT_OP_TIMEOUT_MS,
            unsafe_skip_invalidation: false,
            unsafe_ignore_lease: false,
            unsafe_late_install: false,
            unsafe_skip_sync: false,
            unsafe_rejoin_empty: false,
            snapshot_every: None,
        }
    }
}

pub use workload::{run, CLIENT_OP_TIMEOUT_MS};
