//! Pre-vote: a node raises its term only once a majority has lost the leader.
//!
//! openraft 0.9.25 has no pre-vote. A follower whose election timer fires
//! raises its term at once; a node cut off for a while (or one whose heartbeats
//! were lost on a torn-down connection) returns with a higher term and, because
//! the leader's next AppendEntries is refused with that higher vote, deposes a
//! healthy leader. So openraft's own election timer is switched off
//! (`enable_elect: false`, see [`super::RaftTimers::config`]) and a
//! [`campaign`] task per node decides when to call `raft.trigger().elect()`:
//!
//! 1. it waits until no leader has been heard from for the leader lease
//!    (openraft's `election_timeout_max`) plus a random part of up to half the
//!    election timeout spread, measured from openraft's own
//!    `vote_last_modified` (touched on every AppendEntries it accepts);
//! 2. it asks every voter a `PreVote` (with a deadline), which changes nothing
//!    on the voter;
//! 3. only when a majority of every voter set (itself included) grants does it
//!    start a real election, and only if no [`rival`] is under way (another
//!    candidate that asked for its vote, or that it granted a pre-vote first or
//!    crossing with a lower id): two elections at once split the vote.
//!
//! A voter grants ([`judge`]) unless the candidate is not a voter of its
//! membership (members-only, as for the real vote), or it leads with a quorum that acknowledged it
//! within the window, or the lease of the leader it follows has not run out
//! (openraft would refuse the real vote then too), or the candidate's last log
//! id is behind its own (likewise). The pre-vote therefore grants whatever the
//! real vote would, leaving out only the term comparison: it cannot block an
//! election openraft's voting would let through (docs/DESIGN.md, "Pre-vote").

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::{LogId, ServerState};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::freshness::{standing, Contact, Standing};
use super::store::codec;
use super::Raft;
use crate::error::Error;
use crate::rpc::{RaftCall, RaftClient};

/// What a candidate sends: who it is and how far its log goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVoteRequest {
    /// The would-be candidate.
    pub candidate: u64,
    /// Its last log id.
    pub last_log: Option<LogId<u64>>,
}

/// A voter's answer to a pre-vote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// The voter would vote for the candidate now.
    Granted,
    /// The voter leads, and a majority acknowledged it within the window.
    LeaderAlive,
    /// The voter heard from its leader less than a lease ago.
    LeaseHeld {
        /// What is left of the lease.
        left_ms: u64,
    },
    /// The candidate's log is behind the voter's.
    LogBehind,
    /// The candidate is not a voter of the voter's membership (members-only
    /// voting, as `votes::refuse_vote` for the real vote).
    NotAVoter,
}

/// What a voter knows when it judges a pre-vote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoterView {
    /// The candidate is a voter of this node's membership (or this node has
    /// no membership yet).
    pub candidate_votes: bool,
    /// The voter leads with a quorum acknowledgement within the window.
    pub leads_with_quorum: bool,
    /// What is left of the lease of the leader it follows (`None`: run out, or
    /// no leader committed).
    pub lease_left: Option<Duration>,
    /// The voter's last log id.
    pub last_log: Option<LogId<u64>>,
}

/// Whether a voter in `view` grants a pre-vote to a candidate whose last log
/// id is `candidate_log`: exactly when openraft's real vote would pass the
/// lease and log checks, and the voter is not itself a working leader.
pub fn judge(view: &VoterView, candidate_log: Option<&LogId<u64>>) -> Verdict {
    if !view.candidate_votes {
        return Verdict::NotAVoter;
    }
    if view.leads_with_quorum {
        return Verdict::LeaderAlive;
    }
    if let Some(left) = view.lease_left.filter(|l| !l.is_zero()) {
        return Verdict::LeaseHeld { left_ms: left.as_millis().max(1) as u64 };
    }
    if candidate_log < view.last_log.as_ref() {
        return Verdict::LogBehind;
    }
    Verdict::Granted
}

/// Another candidate a node that just won its pre-vote lets run instead of
/// starting an election of its own: two elections at once split the vote, and
/// the retry comes only an election timeout later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rival {
    /// It asked this node's vote during the round (or a tick before it), and
    /// was not refused.
    AskedVote(u64),
    /// This node granted it a pre-vote just before its own round began.
    PreVotedFirst(u64),
    /// This node granted it a pre-vote while its own was out (the two
    /// crossed), and its id is lower.
    PreVotedCrossing(u64),
}

impl std::fmt::Display for Rival {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rival::AskedVote(id) => write!(f, "node {id} asked for this node's vote meanwhile"),
            Rival::PreVotedFirst(id) => write!(f, "node {id} got this node's pre-vote before this node asked"),
            Rival::PreVotedCrossing(id) => write!(f, "node {id} (lower id) was granted this node's pre-vote meanwhile"),
        }
    }
}

/// A pre-vote this node granted (or is still judging): to whom, and whether
/// its request came before this node's own round began (rather than while its
/// own pre-vote was out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Granted {
    /// The candidate.
    pub candidate: u64,
    /// Its request came before this node's own round began.
    pub before_round: bool,
}

/// The rival node `me` yields to after winning a pre-vote round, given the
/// candidate of a vote request that arrived during the round (or a tick
/// before it) and was not refused (`asked`), and the last pre-vote it granted
/// in the same span (`prevoted`). The candidate that asked first goes ahead: a
/// node yields to one whose pre-vote it granted before its own round began; of
/// two whose pre-votes crossed, the one with the higher id yields. Each node
/// judges from what it saw, so this is not exact: when A's pre-vote reached B
/// just before B's round began and B's reached A before A decided, B yields
/// and so does A if B has the lower id (then both ask again a round later); and
/// with uneven delays a window of a fraction of a millisecond remains in which
/// neither sees the other in time and both elect, as without this rule.
pub fn rival(me: u64, asked: Option<u64>, prevoted: Option<Granted>) -> Option<Rival> {
    if let Some(id) = asked.filter(|id| *id != me) {
        return Some(Rival::AskedVote(id));
    }
    match prevoted.filter(|g| g.candidate != me)? {
        Granted { candidate, before_round: true } => Some(Rival::PreVotedFirst(candidate)),
        Granted { candidate, before_round: false } if candidate < me => Some(Rival::PreVotedCrossing(candidate)),
        Granted { .. } => None,
    }
}

/// True when the granting ids hold a majority of every voter set (a joint
/// membership has two).
pub fn has_majority(voter_sets: &[BTreeSet<u64>], granted: &BTreeSet<u64>) -> bool {
    voter_sets.iter().all(|set| set.intersection(granted).count() * 2 > set.len())
}

/// The voter's side: answers the encoded `request` from openraft's state.
pub async fn answer(raft: &Raft, contact: &Contact, request: &[u8]) -> Result<Vec<u8>, Error> {
    let req: PreVoteRequest = codec::decode(request).map_err(|e| Error::Malformed(format!("pre-vote payload: {e}")))?;
    // Recorded as it arrives, ahead of the verdict (which waits on openraft):
    // this node's own campaigner must see a rival whose pre-vote it is about
    // to grant, and whether it came before its own round began must not depend
    // on how long openraft took to answer.
    let asked = contact.prevote_asked(req.candidate);
    let verdict = view(raft, contact, req.candidate).await.map(|v| judge(&v, req.last_log.as_ref()));
    if !matches!(verdict, Ok(Verdict::Granted)) {
        contact.prevote_refused(req.candidate, asked);
    }
    let verdict = verdict?;
    tracing::debug!(candidate = req.candidate, ?verdict, "pre-vote");
    codec::encode(&verdict).map_err(|e| Error::Internal(format!("encode pre-vote: {e}")))
}

/// The lease openraft's vote handler holds a leader to: `election_timeout_max`.
fn lease(raft: &Raft) -> Duration {
    Duration::from_millis(raft.config().election_timeout_max)
}

async fn view(raft: &Raft, contact: &Contact, candidate: u64) -> Result<VoterView, Error> {
    let lease = lease(raft);
    let (committed, touched) = raft
        .with_raft_state(|st| (st.vote_ref().is_committed(), st.vote_last_modified()))
        .await
        .map_err(|e| Error::Unavailable(format!("raft: {e}")))?;
    let now = Instant::now();
    let lease_left = touched.filter(|_| committed).map(|t| (t + lease).saturating_duration_since(now));
    let (leads_with_quorum, candidate_votes) = {
        let m = raft.metrics();
        let m = m.borrow();
        // A node with no membership yet (a new cluster's node waiting for the
        // leader's log) leaves members-only to the real vote.
        let mut voters = m.membership_config.membership().voter_ids().peekable();
        let votes = voters.peek().is_none() || voters.any(|id| id == candidate);
        (matches!(standing(&m, contact, lease), Standing::Leader { .. }), votes)
    };
    let last_log = raft.data_metrics().borrow().last_log;
    Ok(VoterView { candidate_votes, leads_with_quorum, lease_left, last_log })
}

/// Runs the campaigner of node `me` until Raft shuts down: pre-votes once no
/// leader has been heard from for a randomised election timeout, and starts an
/// election only when a majority grants. `peers` are the addresses this node
/// reaches the other CM nodes at.
pub async fn campaign(raft: Raft, me: u64, peers: BTreeMap<u64, String>, transport: RaftClient, contact: Arc<Contact>) {
    let mut c = Campaigner { raft, me, peers, transport, contact, rng: rand::rngs::StdRng::from_entropy() };
    let started = Instant::now();
    let mut jitter = c.jitter();
    loop {
        let seen = match c.due(started, jitter).await {
            Due::Stop => return,
            Due::In(wait) => {
                tokio::time::sleep(wait.min(c.tick())).await;
                continue;
            }
            Due::Now(seen) => seen,
        };
        let round = std::time::Instant::now();
        // A vote granted or a leader heard while canvassing (the vote touched)
        // makes the round stale: starting an election then would depose a
        // leader elected a moment ago. A rival under way (`rival`) is checked
        // last, from what the transport recorded as requests arrived, ahead of
        // openraft's handling of them.
        let won = c.canvass().await && c.vote_seen().await == Some(seen);
        let rival = won.then(|| c.rival_since(round)).flatten();
        let pause = if let Some(rival) = rival {
            tracing::info!(node = me, event = "prevote_yield", "pre-vote won, but {rival}: letting it run");
            c.between(c.tick(), c.tick() * 2)
        } else if won {
            tracing::info!(node = me, "pre-vote won by a majority: starting an election");
            if let Err(err) = c.raft.trigger().elect().await {
                // Only a stopped Raft refuses; `due` sees it shut down and stops.
                tracing::warn!(node = me, "starting an election: {err}");
            }
            c.between(c.min(), c.max())
        } else {
            c.between(c.tick(), c.tick() * 2)
        };
        tokio::time::sleep(pause).await;
        jitter = c.jitter();
    }
}

enum Due {
    /// Canvass now; the vote as it was seen (committed, last touched).
    Now(VoteSeen),
    In(Duration),
    Stop,
}

/// Whether the vote is committed, and when openraft last changed or touched it.
type VoteSeen = (bool, Option<Instant>);

struct Campaigner {
    raft: Raft,
    me: u64,
    peers: BTreeMap<u64, String>,
    transport: RaftClient,
    contact: Arc<Contact>,
    rng: rand::rngs::StdRng,
}

impl Campaigner {
    fn min(&self) -> Duration {
        Duration::from_millis(self.raft.config().election_timeout_min)
    }

    fn max(&self) -> Duration {
        lease(&self.raft)
    }

    /// How often an idle campaigner looks again: the heartbeat interval.
    fn tick(&self) -> Duration {
        Duration::from_millis(self.raft.config().heartbeat_interval.max(1))
    }

    fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        if hi <= lo {
            return lo;
        }
        self.rng.gen_range(lo..hi)
    }

    /// The random part of the next election timeout: up to half the spread
    /// (docs/DESIGN.md, "Pre-vote": the wait past the lease is pure delay).
    fn jitter(&mut self) -> Duration {
        self.between(Duration::ZERO, (self.max() - self.min().min(self.max())) / 2)
    }

    /// When this node should canvass: as openraft's election timer, the
    /// lease plus `jitter` after the last vote change or touch when a leader
    /// is committed, the minimum election timeout plus `jitter` otherwise.
    async fn due(&self, started: Instant, jitter: Duration) -> Due {
        let (state, voter) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.state, m.membership_config.membership().voter_ids().any(|v| v == self.me))
        };
        match state {
            ServerState::Shutdown => return Due::Stop,
            ServerState::Leader => return Due::In(self.tick()),
            // A leader handing over must not win its own leadership back.
            _ if !voter || self.contact.handing_over() => return Due::In(self.tick()),
            _ => {}
        }
        // A busy core may fail to answer; ask again next tick (a stopped one
        // reports `Shutdown` above).
        let Some((committed, touched)) = self.vote_seen().await else { return Due::In(self.tick()) };
        let since = touched.map_or(started, |t| t.max(started));
        let timeout = if committed { self.max() } else { self.min() } + jitter;
        match (since + timeout).checked_duration_since(Instant::now()) {
            Some(wait) if !wait.is_zero() => Due::In(wait),
            _ => Due::Now((committed, touched)),
        }
    }

    /// Whether openraft's vote is committed and when it last changed or was
    /// touched (`None`: Raft did not answer).
    async fn vote_seen(&self) -> Option<VoteSeen> {
        self.raft.with_raft_state(|st| (st.vote_ref().is_committed(), st.vote_last_modified())).await.ok()
    }

    /// The candidate this node yields to, from what arrived during the round
    /// that began at `round` or up to a tick before it (a rival that began
    /// just before this node did is as much in the way).
    fn rival_since(&self, round: std::time::Instant) -> Option<Rival> {
        let since = round.checked_sub(self.tick()).unwrap_or(round);
        let prevoted = self.contact.prevote_granted_since(since);
        let prevoted = prevoted.map(|(candidate, at)| Granted { candidate, before_round: at < round });
        rival(self.me, self.contact.vote_asked_since(since), prevoted)
    }

    /// Asks every other voter; true once a majority of every voter set
    /// (this node included) granted.
    async fn canvass(&self) -> bool {
        let (sets, addrs) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let membership = m.membership_config.membership();
            let addrs: BTreeMap<u64, String> = membership
                .nodes()
                .map(|(id, n)| (*id, self.peers.get(id).cloned().unwrap_or_else(|| n.addr.clone())))
                .collect();
            (membership.get_joint_config().clone(), addrs)
        };
        let request = PreVoteRequest { candidate: self.me, last_log: self.raft.data_metrics().borrow().last_log };
        let Ok(data) = codec::encode(&request) else { return false };
        let mut granted = BTreeSet::from([self.me]);
        let mut asks = JoinSet::new();
        let voters: BTreeSet<u64> = sets.iter().flatten().copied().filter(|v| *v != self.me).collect();
        for id in voters {
            let (transport, data, timeout) = (self.transport.clone(), data.clone(), self.min());
            let Some(addr) = addrs.get(&id).cloned() else { continue };
            asks.spawn(async move {
                let reply = transport.call(&addr, RaftCall::PreVote, data, timeout).await.ok();
                (id, reply.and_then(|r| codec::decode::<Verdict>(&r).ok()))
            });
        }
        while !has_majority(&sets, &granted) {
            let Some(Ok((id, verdict))) = asks.join_next().await else { return false };
            tracing::debug!(node = self.me, voter = id, ?verdict, "pre-vote answer");
            if verdict == Some(Verdict::Granted) {
                granted.insert(id);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn log(term: u64, index: u64) -> Option<LogId<u64>> {
        Some(LogId::new(CommittedLeaderId::new(term, 1), index))
    }

    fn voter(leads: bool, lease_ms: Option<u64>, last: Option<LogId<u64>>) -> VoterView {
        VoterView {
            candidate_votes: true,
            leads_with_quorum: leads,
            lease_left: lease_ms.map(Duration::from_millis),
            last_log: last,
        }
    }

    #[test]
    fn grants_only_when_the_leader_is_lost_and_the_log_is_as_long() {
        let mine = log(2, 10);
        assert_eq!(judge(&voter(false, None, mine), log(2, 10).as_ref()), Verdict::Granted);
        assert_eq!(judge(&voter(false, Some(0), mine), log(3, 4).as_ref()), Verdict::Granted, "newer term wins");
        assert_eq!(judge(&voter(false, None, mine), log(2, 9).as_ref()), Verdict::LogBehind);
        assert_eq!(judge(&voter(false, None, mine), log(1, 50).as_ref()), Verdict::LogBehind, "older term loses");
        assert_eq!(judge(&voter(false, None, mine), None), Verdict::LogBehind);
        assert_eq!(judge(&voter(false, None, None), None), Verdict::Granted, "a fresh cluster");
        assert_eq!(judge(&voter(false, Some(40), mine), log(9, 99).as_ref()), Verdict::LeaseHeld { left_ms: 40 });
        assert_eq!(judge(&voter(true, None, mine), log(9, 99).as_ref()), Verdict::LeaderAlive);
        let stray = VoterView { candidate_votes: false, ..voter(false, None, None) };
        assert_eq!(judge(&stray, log(9, 99).as_ref()), Verdict::NotAVoter, "members-only");
    }

    #[test]
    fn the_first_candidate_goes_ahead_and_of_two_crossing_only_the_lower_id() {
        let granted = |candidate, before_round| Some(Granted { candidate, before_round });
        assert_eq!(rival(3, None, granted(1, false)), Some(Rival::PreVotedCrossing(1)));
        assert_eq!(rival(1, None, granted(3, false)), None, "crossing: the lower id goes ahead");
        assert_eq!(rival(1, None, granted(3, true)), Some(Rival::PreVotedFirst(3)), "it asked first");
        assert_eq!(rival(2, None, None), None);
        assert_eq!(rival(1, Some(3), None), Some(Rival::AskedVote(3)), "an election under way, whatever its id");
        assert_eq!(rival(1, Some(1), granted(1, true)), None, "its own requests are no rival");
    }

    #[test]
    fn a_majority_is_needed_in_every_voter_set() {
        let set = |ids: &[u64]| ids.iter().copied().collect::<BTreeSet<u64>>();
        assert!(has_majority(&[set(&[1, 2, 3])], &set(&[1, 3])));
        assert!(!has_majority(&[set(&[1, 2, 3])], &set(&[1])));
        assert!(!has_majority(&[set(&[1, 2, 3, 4])], &set(&[1, 2])), "half is not a majority");
        assert!(has_majority(&[set(&[1])], &set(&[1])), "a single voter elects itself");
        let joint = [set(&[1, 2, 3]), set(&[3, 4, 5])];
        assert!(!has_majority(&joint, &set(&[1, 2, 3])), "the new set has only one");
        assert!(has_majority(&joint, &set(&[1, 3, 4])));
    }
}
