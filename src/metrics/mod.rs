//! Prometheus metrics: every name and unit in one place, one helper per event.
//!
//! The library records through the [`metrics`] facade: with no recorder
//! installed (tests, tools) every helper is a no-op. `ivy cm --metrics-listen`
//! and `ivy client --metrics-listen` install the Prometheus recorder and serve
//! its text exposition at `/metrics` ([`exporter`]).
//!
//! Names follow Prometheus conventions: an `ivy_` prefix, base units in the
//! name (`_seconds`), `_total` on counters, labels for closed sets (`kind`,
//! `outcome`, `peer`). Each process is one node, so no metric carries a node
//! label: Prometheus adds `instance`.

pub mod exporter;

use std::time::Duration;

use crate::error::Error;
use crate::protocol::FaultKind;

/// Histogram: a fault on the CM, from arrival to answer, by `kind` (read,
/// write) and `outcome` (`ok` or the error kind), seconds.
pub const FAULT_DURATION: &str = "ivy_fault_duration_seconds";
/// Gauge: faults accepted by this CM node and not yet answered.
pub const FAULTS_IN_FLIGHT: &str = "ivy_faults_in_flight";
/// Gauge: this node's current Raft term.
pub const RAFT_TERM: &str = "ivy_raft_term";
/// Gauge: the leader this node knows (0: none).
pub const RAFT_LEADER_ID: &str = "ivy_raft_leader_id";
/// Gauge: highest log index known committed (leader: matched by a majority;
/// follower: its applied index, which trails the commit by one round trip).
pub const RAFT_COMMIT_INDEX: &str = "ivy_raft_commit_index";
/// Gauge: highest log index applied to the directory on this node.
pub const RAFT_APPLIED_INDEX: &str = "ivy_raft_applied_index";
/// Gauge: entries a follower (`peer`) is behind the leader's log; the leader
/// reports it, other nodes report 0.
pub const RAFT_REPLICATION_LAG: &str = "ivy_raft_replication_lag_entries";
/// Counter: changes of the leader this node knows (a new leader, or none).
pub const RAFT_LEADER_CHANGES: &str = "ivy_raft_leader_changes_total";
/// Histogram: directory commands per Raft proposal.
pub const PROPOSER_BATCH_SIZE: &str = "ivy_proposer_batch_size";
/// Gauge: clients registered in the directory, as this node has it.
pub const CLIENTS_REGISTERED: &str = "ivy_clients_registered";
/// Gauge: pages in the directory, as this node has it.
pub const PAGES: &str = "ivy_pages";
/// Counter: clients evicted by this node as leader.
pub const EVICTIONS: &str = "ivy_evictions_total";
/// Counter: requests this CM node answered with an error, by `kind`.
pub const ERRORS: &str = "ivy_errors_total";
/// Counter: releases this CM node sent, by `via`: `forward` and `invalidate`
/// (carried on that request) or `release` (a message of their own).
pub const RELEASES: &str = "ivy_releases_total";
/// Counter: flushes (fsyncs) of this node's store.
pub const STORE_SYNCS: &str = "ivy_store_syncs_total";
/// Counter (client): reads and writes, by `op` and `result` (`local`, `fault`, `error`).
pub const CLIENT_OPS: &str = "ivy_client_ops_total";
/// Histogram (client): a fault's round trip to the CM, retries included, by
/// `kind` and `outcome`, seconds.
pub const CLIENT_FAULT_DURATION: &str = "ivy_client_fault_duration_seconds";

/// Bucket bounds of the latency histograms, seconds: 0.25 ms to 10 s.
pub const LATENCY_BUCKETS: &[f64] =
    &[0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Bucket bounds of the batch size histogram, commands.
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// The `outcome` label of a finished request: `ok`, or the error's kind.
pub fn outcome<T>(result: &Result<T, Error>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(err) => err.kind(),
    }
}

/// Records a fault served by this CM node.
pub fn fault_served(kind: FaultKind, outcome: &'static str, took: Duration) {
    metrics::histogram!(FAULT_DURATION, "kind" => kind_label(kind), "outcome" => outcome).record(took.as_secs_f64());
}

/// Counts an error answered by this CM node.
pub fn error(err: &Error) {
    metrics::counter!(ERRORS, "kind" => err.kind()).increment(1);
}

/// Counts one client eviction committed by this node.
pub fn eviction() {
    metrics::counter!(EVICTIONS).increment(1);
}

/// How releases left this CM node, for [`releases_sent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseVia {
    /// Carried on a forward to the holder.
    Forward,
    /// Carried on an invalidation to the holder.
    Invalidate,
    /// In a `ReleaseBatch` message of their own.
    Release,
}

/// Counts `n` releases sent to a holder.
pub fn releases_sent(via: ReleaseVia, n: usize) {
    if n == 0 {
        return;
    }
    let via = match via {
        ReleaseVia::Forward => "forward",
        ReleaseVia::Invalidate => "invalidate",
        ReleaseVia::Release => "release",
    };
    metrics::counter!(RELEASES, "via" => via).increment(n as u64);
}

/// Counts `n` syncs (`fdatasync`/`fsync`) of this node's store.
pub fn store_syncs(n: u64) {
    metrics::counter!(STORE_SYNCS).increment(n);
}

/// Records the size of one Raft proposal.
pub fn proposer_batch(commands: usize) {
    metrics::histogram!(PROPOSER_BATCH_SIZE).record(commands as f64);
}

/// Sets the directory gauges.
pub fn directory(pages: usize, clients: usize) {
    metrics::gauge!(PAGES).set(pages as f64);
    metrics::gauge!(CLIENTS_REGISTERED).set(clients as f64);
}

/// One node's Raft numbers, as the gauges show them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftGauges {
    /// Current term.
    pub term: u64,
    /// Known leader (0: none).
    pub leader: u64,
    /// Highest index known committed.
    pub commit_index: u64,
    /// Highest index applied.
    pub applied_index: u64,
    /// Leader only: entries each follower is behind.
    pub lag: Vec<(u64, u64)>,
}

/// Sets the Raft gauges.
pub fn raft(g: &RaftGauges) {
    metrics::gauge!(RAFT_TERM).set(g.term as f64);
    metrics::gauge!(RAFT_LEADER_ID).set(g.leader as f64);
    metrics::gauge!(RAFT_COMMIT_INDEX).set(g.commit_index as f64);
    metrics::gauge!(RAFT_APPLIED_INDEX).set(g.applied_index as f64);
    for (peer, lag) in &g.lag {
        metrics::gauge!(RAFT_REPLICATION_LAG, "peer" => peer.to_string()).set(*lag as f64);
    }
}

/// Counts a change of the known leader.
pub fn leader_changed() {
    metrics::counter!(RAFT_LEADER_CHANGES).increment(1);
}

/// Marks one fault in flight until the returned guard drops.
pub fn fault_in_flight() -> InFlight {
    metrics::gauge!(FAULTS_IN_FLIGHT).increment(1.0);
    InFlight(())
}

/// A fault in flight; dropping it takes the fault off the gauge.
#[must_use]
pub struct InFlight(());

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!(FAULTS_IN_FLIGHT).decrement(1.0);
    }
}

/// How a client's read or write was served, for [`client_op`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpResult {
    /// From the local copy, no fault.
    Local,
    /// After a fault to the CM.
    Fault,
    /// It failed.
    Error,
}

/// Counts one read or write on a client.
pub fn client_op(write: bool, result: OpResult) {
    let op = if write { "write" } else { "read" };
    let result = match result {
        OpResult::Local => "local",
        OpResult::Fault => "fault",
        OpResult::Error => "error",
    };
    metrics::counter!(CLIENT_OPS, "op" => op, "result" => result).increment(1);
}

/// Records one fault's round trip as the client saw it.
pub fn client_fault(kind: FaultKind, outcome: &'static str, took: Duration) {
    metrics::histogram!(CLIENT_FAULT_DURATION, "kind" => kind_label(kind), "outcome" => outcome)
        .record(took.as_secs_f64());
}

fn kind_label(kind: FaultKind) -> &'static str {
    match kind {
        FaultKind::Read => "read",
        FaultKind::Write => "write",
    }
}

/// Registers the help text and unit of every metric with the installed recorder.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_histogram!(FAULT_DURATION, Unit::Seconds, "Faults served by this CM node, arrival to answer.");
    describe_gauge!(FAULTS_IN_FLIGHT, "Faults accepted by this CM node and not yet answered.");
    describe_gauge!(RAFT_TERM, "This node's current Raft term.");
    describe_gauge!(RAFT_LEADER_ID, "Node id of the leader this node knows (0: none).");
    describe_gauge!(RAFT_COMMIT_INDEX, "Highest log index this node knows committed.");
    describe_gauge!(RAFT_APPLIED_INDEX, "Highest log index applied to this node's directory.");
    describe_gauge!(RAFT_REPLICATION_LAG, "Log entries a follower is behind the leader (leader only).");
    describe_counter!(RAFT_LEADER_CHANGES, "Changes of the leader this node knows.");
    describe_histogram!(PROPOSER_BATCH_SIZE, "Directory commands per Raft proposal.");
    describe_gauge!(CLIENTS_REGISTERED, "Clients registered in the directory.");
    describe_gauge!(PAGES, "Pages in the directory.");
    describe_counter!(EVICTIONS, "Clients evicted by this node as leader.");
    describe_counter!(ERRORS, "Requests this CM node answered with an error, by kind.");
    describe_counter!(RELEASES, "Releases (kept bytes may go) this CM node sent, by how they went.");
    describe_counter!(STORE_SYNCS, "fdatasync/fsync calls of this node's store: one per log append and per vote.");
    describe_counter!(CLIENT_OPS, "Client reads and writes, by op and how they were served.");
    describe_histogram!(CLIENT_FAULT_DURATION, Unit::Seconds, "A client's faults, round trip with retries.");
}

/// Shows a CM node's unlabelled counters from the start, at zero, so a
/// dashboard or an alert on `rate()` has a series before the first event.
pub fn cm_counters_at_zero() {
    for counter in [RAFT_LEADER_CHANGES, EVICTIONS, STORE_SYNCS] {
        metrics::counter!(counter).increment(0);
    }
}
