//! Syncs per commit: every CM node's store counts its syncs (`fdatasync`/`fsync`)
//! and its status carries that count next to its last log index. The bench
//! samples both on every node before and after the operations; the nodes that
//! ran throughout (never killed, so their counters never restarted) give the
//! syncs per committed log entry per node. One entry is one batch of directory
//! commands, so this is the syncs a batch costs each node.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::chaos::procs::CmSet;
use ivy_raft::rpc::{Channels, ManagerClient};

/// How long a status call may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a sample waits for the nodes' logs to reach the same index.
const SETTLE: Duration = Duration::from_secs(2);

/// One node's counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Syncs its store made since the node started.
    pub syncs: u64,
    /// Its last log index.
    pub log: u64,
}

/// Syncs and committed log entries over one run, summed over the nodes measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncStats {
    /// Syncs the measured nodes made.
    pub syncs: u64,
    /// Log entries the measured nodes appended (each one commit of a batch).
    pub commits: u64,
    /// Nodes that ran throughout and answered both samples.
    pub nodes: usize,
}

impl SyncStats {
    /// Syncs per commit per node, when anything was committed.
    pub fn per_commit(&self) -> Option<f64> {
        (self.commits > 0).then(|| self.syncs as f64 / self.commits as f64)
    }

    /// Syncs and commits between two samples, on the nodes in both that were
    /// not restarted in between.
    pub fn between(before: &BTreeMap<u64, Sample>, after: &BTreeMap<u64, Sample>, restarted: &BTreeSet<u64>) -> Self {
        let mut stats = SyncStats::default();
        for (id, a) in after.iter().filter(|(id, _)| !restarted.contains(id)) {
            let Some(b) = before.get(id) else { continue };
            stats.syncs += a.syncs.saturating_sub(b.syncs);
            stats.commits += a.log.saturating_sub(b.log);
            stats.nodes += 1;
        }
        stats
    }
}

/// Every answering node's counters, once their last log indexes agree (or after
/// [`SETTLE`]: a node that lags is sampled as it is).
pub async fn sample(cms: &CmSet) -> BTreeMap<u64, Sample> {
    const POLL: Duration = Duration::from_millis(20);
    let rpc = ManagerClient::new(Channels::new(STATUS_TIMEOUT, Default::default()));
    let give_up = tokio::time::Instant::now() + SETTLE;
    loop {
        let mut samples = BTreeMap::new();
        for cm in cms.0.values().filter(|c| c.running()) {
            if let Ok(status) = rpc.status(&cm.addr).await {
                samples.insert(cm.id, Sample { syncs: status.syncs, log: status.last_log_index });
            }
        }
        let logs: BTreeSet<u64> = samples.values().map(|s| s.log).collect();
        if logs.len() <= 1 || tokio::time::Instant::now() >= give_up {
            return samples;
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_nodes_that_ran_throughout() {
        let s = |syncs, log| Sample { syncs, log };
        let before = BTreeMap::from([(1, s(10, 5)), (2, s(12, 5)), (3, s(9, 5))]);
        let after = BTreeMap::from([(1, s(110, 105)), (2, s(112, 105)), (3, s(3, 104))]);
        let stats = SyncStats::between(&before, &after, &BTreeSet::from([3]));
        assert_eq!(stats, SyncStats { syncs: 200, commits: 200, nodes: 2 });
        assert_eq!(stats.per_commit(), Some(1.0));
        assert_eq!(SyncStats::default().per_commit(), None);
    }
}
