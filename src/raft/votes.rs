//! Who may get this node's vote, beyond openraft's own rules: only a voter of
//! this node's membership (members-only voting).
//!
//! openraft 0.9.25 already refuses a vote while the leader it follows was heard
//! within the leader lease (one maximum election timeout, `handle_vote_req`),
//! and refuses a candidate whose log is behind. What it does not refuse is a
//! candidate that is not a member at all: a stray node started with a wrong
//! `--peers` whose log happens to look current. This check runs before the
//! request reaches openraft, so such a candidate cannot move this node's term.
//! It is kept apart (one function, no state) so that other vote rules, a
//! pre-vote say, sit next to it without entangling. docs/DESIGN.md argues why it
//! cannot block a legitimate election.

use openraft::raft::{VoteRequest, VoteResponse};
use openraft::{BasicNode, RaftMetrics};

/// The refusal to send instead of asking openraft, when `req`'s candidate is
/// not a voter of this node's membership; `None` lets openraft decide. A node
/// with no membership yet refuses every candidate when it is `joining` (a
/// `--join` node waiting to be added is nobody's voter); a node of a new
/// cluster that found its peers already initialised, and waits for their
/// leader's log, lets openraft decide: its vote is part of the majority that
/// elects that leader.
pub fn refuse_vote(
    metrics: &RaftMetrics<u64, BasicNode>,
    req: &VoteRequest<u64>,
    joining: bool,
) -> Option<VoteResponse<u64>> {
    let candidate = req.vote.leader_id.node_id;
    let membership = metrics.membership_config.membership();
    let mut voters = membership.voter_ids().peekable();
    if voters.peek().is_none() && !joining {
        return None;
    }
    if voters.any(|id| id == candidate) {
        return None;
    }
    tracing::info!(
        event = "vote_refused",
        candidate,
        term = req.vote.leader_id.term,
        "refused a vote: not a voter here"
    );
    // Our own vote, not granted; no log id, so the candidate learns nothing it could wait on.
    Some(VoteResponse { vote: metrics.vote, vote_granted: false, last_log_id: None })
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::{Membership, StoredMembership, Vote};

    use super::*;

    fn metrics(voters: &[u64]) -> RaftMetrics<u64, BasicNode> {
        let mut m = RaftMetrics::new_initial(1);
        let voters: BTreeSet<u64> = voters.iter().copied().collect();
        let nodes: BTreeMap<u64, BasicNode> = voters.iter().map(|id| (*id, BasicNode::new(""))).collect();
        let membership = Membership::new(vec![voters], nodes);
        m.membership_config = std::sync::Arc::new(StoredMembership::new(None, membership));
        m
    }

    fn request(candidate: u64) -> VoteRequest<u64> {
        VoteRequest { vote: Vote::new(9, candidate), last_log_id: None }
    }

    #[test]
    fn only_voters_of_the_membership_get_a_hearing() {
        let m = metrics(&[1, 2, 3]);
        assert!(refuse_vote(&m, &request(2), false).is_none());
        let refusal = refuse_vote(&m, &request(4), false).expect("a stray candidate is refused");
        assert!(!refusal.vote_granted);
        assert!(refuse_vote(&metrics(&[]), &request(2), true).is_some(), "a joining node votes for nobody");
        assert!(
            refuse_vote(&metrics(&[]), &request(2), false).is_none(),
            "a new cluster's node waiting for its peers' leader lets openraft decide"
        );
    }
}
