//! Watches openraft's metrics for the life of a node: logs role changes,
//! elections and membership changes as structured events, keeps the Prometheus
//! gauges current, and feeds the leader's quorum acknowledgements to
//! [`Contact`].
//!
//! Log events carry an `event` field (`role_change`, `election`,
//! `membership_change`) and typed fields (`node`, `role`, `term`, `leader`,
//! `voters`, ...), so a JSON log can be filtered without parsing messages.

use std::collections::BTreeSet;
use std::sync::Arc;

use openraft::{BasicNode, RaftMetrics, ServerState};

use super::freshness::Contact;
use super::{role, Raft};
use crate::metrics::{self, RaftGauges};

/// What the last metrics snapshot said, to log only changes.
#[derive(Default)]
struct Seen {
    state: Option<ServerState>,
    leader: Option<u64>,
    term: u64,
    membership: Option<BTreeSet<u64>>,
}

/// Runs until the node shuts down.
pub async fn observe(raft: Raft, contact: Arc<Contact>) {
    let mut watch = raft.metrics();
    let mut seen = Seen::default();
    loop {
        let m = watch.borrow_and_update().clone();
        if m == RaftMetrics::new_initial(m.id) {
            // openraft's placeholder until its core reports the state it loaded:
            // logging it would show a restarted node at term 0 with no voters.
            if watch.changed().await.is_err() {
                return;
            }
            continue;
        }
        contact.saw_quorum_ack(m.millis_since_quorum_ack);
        metrics::raft(&gauges(&m));
        log_changes(&m, &mut seen);
        if m.state == ServerState::Shutdown || watch.changed().await.is_err() {
            return;
        }
    }
}

fn log_changes(m: &RaftMetrics<u64, BasicNode>, seen: &mut Seen) {
    let leader = m.current_leader.unwrap_or(0);
    if seen.leader != m.current_leader && seen.state.is_some() {
        metrics::leader_changed();
    }
    let new_term = seen.term != m.current_term;
    if m.state == ServerState::Candidate && (seen.state != Some(ServerState::Candidate) || new_term) {
        tracing::info!(
            event = "election",
            node = m.id,
            term = m.current_term,
            "election started, term {}",
            m.current_term
        );
    }
    if seen.state != Some(m.state) || seen.leader != m.current_leader {
        let role = role(m.state);
        tracing::info!(event = "role_change", node = m.id, role = %role, term = m.current_term, leader,
            "role {role}, term {}, leader {}", m.current_term, m.current_leader.map_or("none".into(), |l| l.to_string()));
    }
    let voters: BTreeSet<u64> = m.membership_config.membership().voter_ids().collect();
    if seen.membership.as_ref() != Some(&voters) {
        let learners: Vec<u64> = m.membership_config.membership().learner_ids().collect();
        let index = m.membership_config.log_id().map_or(0, |l| l.index);
        tracing::info!(event = "membership_change", node = m.id, voters = ?voters, learners = ?learners,
            log_index = index, "membership: voters {voters:?}, learners {learners:?}");
    }
    *seen = Seen { state: Some(m.state), leader: m.current_leader, term: m.current_term, membership: Some(voters) };
}

/// The gauges from one snapshot.
fn gauges(m: &RaftMetrics<u64, BasicNode>) -> RaftGauges {
    let last = m.last_log_index.unwrap_or(0);
    let applied = m.last_applied.map_or(0, |l| l.index);
    let mut g = RaftGauges {
        term: m.current_term,
        leader: m.current_leader.unwrap_or(0),
        commit_index: applied,
        applied_index: applied,
        lag: Vec::new(),
    };
    // Not leading: no lag to report; zero, so a former leader's last numbers do not linger.
    let voters = m.membership_config.membership().voter_ids();
    g.lag = voters.filter(|id| *id != m.id).map(|id| (id, 0)).collect();
    if let Some(replication) = &m.replication {
        // The leader may or may not list itself; it has its own log.
        let own = |id: u64| if id == m.id { last } else { 0 };
        let matched = |id: u64| replication.get(&id).map_or(own(id), |l| l.map_or(0, |l| l.index));
        let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
        g.commit_index = g.commit_index.max(majority_matched(voters.iter().map(|v| matched(*v)).collect()));
        g.lag =
            replication.keys().filter(|id| **id != m.id).map(|id| (*id, last.saturating_sub(matched(*id)))).collect();
    }
    g
}

/// The highest index a majority of voters has: the commit index they imply.
fn majority_matched(mut matched: Vec<u64>) -> u64 {
    if matched.is_empty() {
        return 0;
    }
    matched.sort_unstable_by(|a, b| b.cmp(a));
    matched[matched.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::majority_matched;

    #[test]
    fn commit_index_is_what_a_majority_matched() {
        assert_eq!(majority_matched(vec![10, 7, 3]), 7);
        assert_eq!(majority_matched(vec![10, 7, 3, 2, 9]), 7);
        assert_eq!(majority_matched(vec![5]), 5);
        assert_eq!(majority_matched(vec![]), 0);
    }
}
