//! Membership changes and hand-over on the leader, through openraft: a node
//! joins as a learner (`add_learner`, not blocking), is promoted once caught up
//! (`change_membership`, joint consensus: two commits), and leaves the same way.
//! openraft 0.9.25 has no leader transfer; [`RaftReplica::handover`] gets its
//! effect by asking the most up-to-date follower to campaign at once.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, ChangeMembers, RaftMetrics, ServerState};

use super::freshness::Contact;
use super::{leader_of, raft_error, Raft, RaftReplica};
use crate::error::Error;
use crate::members::{Backup, JoinState, Member, Members, BACKUP_FORMAT};
use crate::rpc::RaftCall;

/// How long a hand-over waits for the follower to win its election.
pub const HANDOVER_WAIT: Duration = Duration::from_secs(3);

/// How long one step of a hand-over round waits (catch-up, deposition).
const HANDOVER_ROUND: Duration = Duration::from_millis(150);

/// How long a membership change may take (two commits, and a caught-up learner).
pub const MEMBERSHIP_DEADLINE: Duration = Duration::from_secs(10);

impl RaftReplica {
    /// The membership with each member's replication; leader only.
    pub async fn members(&self) -> Result<Members, Error> {
        self.ensure_leader().await?;
        let m = self.raft().metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let replication = m.replication.unwrap_or_default();
        let last = m.last_log_index.unwrap_or(0);
        let members = membership
            .nodes()
            .map(|(id, node)| Member {
                id: *id,
                addr: node.addr.clone(),
                voter: voters.contains(id),
                matched: if *id == m.id { Some(last) } else { replication.get(id).copied().flatten().map(|l| l.index) },
            })
            .collect();
        Ok(Members { leader: m.id, term: m.current_term, last_log_index: last, members })
    }

    /// Adds `id` at `addr` as a learner and returns at once.
    pub async fn add_learner(&self, id: u64, addr: String) -> Result<Members, Error> {
        let before = self.members().await?;
        match before.get(id) {
            Some(m) if m.voter => return Err(Error::InvalidConfig(format!("node {id} is a voter already"))),
            Some(m) if m.addr != addr => {
                return Err(Error::InvalidConfig(format!(
                    "node {id} is a learner at {} already; remove it first to move it to {addr}",
                    m.addr
                )))
            }
            Some(_) => return Ok(before),
            None => {}
        }
        let added = self.raft().add_learner(id, BasicNode { addr }, false);
        self.timed(added).await?;
        self.members().await
    }

    /// Makes learner `id` a voter.
    pub async fn promote(&self, id: u64) -> Result<Members, Error> {
        let before = self.members().await?;
        match before.get(id) {
            None => return Err(Error::InvalidConfig(format!("node {id} is not a member; add it first"))),
            Some(m) if m.voter => return Ok(before),
            Some(_) => {}
        }
        let changed = self.raft().change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false);
        self.timed(changed).await?;
        self.members().await
    }

    /// Removes voter or learner `id`: never the leader itself (hand over first),
    /// never the last voter.
    pub async fn remove(&self, id: u64) -> Result<Members, Error> {
        let before = self.members().await?;
        let Some(member) = before.get(id) else {
            return Err(Error::InvalidConfig(format!("node {id} is not a member")));
        };
        if id == before.leader {
            return Err(Error::InvalidConfig(format!("node {id} leads; hand leadership over first")));
        }
        let change = if member.voter {
            if before.voters().len() <= 1 {
                return Err(Error::InvalidConfig(format!("node {id} is the last voter")));
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        self.timed(self.raft().change_membership(change, false)).await?;
        self.members().await
    }

    /// Hands leadership to the voter whose log is the most up to date: asks it
    /// to campaign at once, then waits until this node no longer leads. Returns
    /// the new leader's id. docs/DESIGN.md (Hand-over) argues each step.
    pub async fn handover(&self) -> Result<u64, Error> {
        let members = self.members().await?;
        let target = members
            .members
            .iter()
            .filter(|m| m.voter && m.id != members.leader)
            .max_by_key(|m| m.matched)
            .ok_or_else(|| Error::InvalidConfig("there is no other voter to hand over to".into()))?;
        let addr = self.peers.get(&target.id).cloned().unwrap_or_else(|| target.addr.clone());
        tracing::info!(event = "handover", to = target.id, "handing leadership over to node {}", target.id);
        // No campaign of our own once deposed (neither openraft's nor our
        // campaigner's), and no heartbeats to refresh the followers' leases,
        // until the hand-over is over.
        let _quiet = Quiet::new(self.raft(), self.contact());
        // No new entry either: a log longer than the candidate's would make us
        // refuse its vote. Commands wait, and fail over to the new leader
        // (openraft's ForwardToLeader) once we no longer lead.
        let _paused = match tokio::time::timeout(HANDOVER_ROUND, self.proposer().pause()).await {
            Ok(paused) => Some(paused),
            Err(_) => {
                tracing::warn!("handing over while a commit is still unresolved");
                None
            }
        };
        let lease = Duration::from_millis(self.raft().config().election_timeout_max);
        let tick = Duration::from_millis(self.raft().config().heartbeat_interval);
        let give_up = tokio::time::Instant::now() + HANDOVER_WAIT;
        while tokio::time::Instant::now() < give_up {
            self.caught_up_within(target.id, HANDOVER_ROUND).await;
            self.ask_to_campaign(target.id, &addr).await;
            // Our own vote, committed at our election, refuses the campaign while
            // that is less than a lease ago. A heartbeat shows us the candidate's
            // higher term; our vote is then uncommitted and refuses nothing, so
            // the candidate is asked once more, unless it wins meanwhile or its
            // request reached us and was granted or is being answered (asking
            // again then would restart the election our vote is about to win).
            let _ = self.raft().trigger().heartbeat().await;
            let beat = tokio::time::Instant::now();
            let deposed = self.state_within(HANDOVER_ROUND, |m| m.state != ServerState::Leader).await;
            if let Some(m) = deposed.filter(|m| m.current_leader.is_none()) {
                let refused = match self.contact().vote_refused_to(m.current_term, target.id) {
                    Some(refused) => refused,
                    // The heartbeat's answer may have overtaken the request.
                    None => match self.deposed_within(tick).await {
                        Some(leader) => return Ok(leader),
                        None => self.contact().vote_refused_to(m.current_term, target.id) != Some(false),
                    },
                };
                if refused {
                    self.ask_to_campaign(target.id, &addr).await;
                }
            }
            // A follower refuses the candidate while its lease from that last
            // heartbeat holds (with more than three voters the candidate needs
            // one), and openraft's candidate asks only once: the next round asks
            // again once the leases have run out.
            let next_round = (beat + lease + tick).max(tokio::time::Instant::now() + HANDOVER_ROUND);
            if let Some(leader) = self.deposed_within(next_round - tokio::time::Instant::now()).await {
                return Ok(leader);
            }
        }
        Err(Error::Unavailable(format!("node {} did not win an election within {HANDOVER_WAIT:?}", target.id)))
    }

    /// Sends `Campaign` to node `id` at `addr`.
    async fn ask_to_campaign(&self, id: u64, addr: &str) {
        if let Err(e) = self.transport.call(addr, RaftCall::Campaign, Vec::new(), Duration::from_secs(1)).await {
            tracing::warn!("node {id} did not take the hand-over: {e}");
        }
    }

    /// Waits until `id` has matched this leader's last log entry, within `wait`.
    async fn caught_up_within(&self, id: u64, wait: Duration) {
        let caught_up = |m: &RaftMetrics<u64, BasicNode>| {
            let matched = m.replication.as_ref().and_then(|r| r.get(&id).copied().flatten());
            m.state != ServerState::Leader || matched.map(|l| l.index) >= m.last_log_index
        };
        self.state_within(wait, caught_up).await;
    }

    /// The new leader's id once this node stops leading, within `wait`.
    async fn deposed_within(&self, wait: Duration) -> Option<u64> {
        let m =
            self.state_within(wait, |m| m.state != ServerState::Leader && leader_of(m).is_some_and(|l| l.id != m.id));
        m.await.and_then(|m| m.current_leader)
    }

    /// This node's metrics once `done` holds for them, within `wait`.
    async fn state_within(
        &self,
        wait: Duration,
        done: impl Fn(&RaftMetrics<u64, BasicNode>) -> bool,
    ) -> Option<RaftMetrics<u64, BasicNode>> {
        let mut metrics = self.raft().metrics();
        let waited = tokio::time::timeout(wait, async {
            loop {
                let m = metrics.borrow_and_update().clone();
                if done(&m) {
                    return Some(m);
                }
                if metrics.changed().await.is_err() {
                    return None;
                }
            }
        });
        waited.await.ok().flatten()
    }

    /// True once this node holds a membership (its own initial one, or the one
    /// its leader's log brought).
    pub fn has_membership(&self) -> bool {
        self.raft().metrics().borrow().membership_config.membership().voter_ids().next().is_some()
    }

    /// Whether this node belongs to a cluster.
    pub fn join_state(&self, join_mode: bool, in_use: bool) -> JoinState {
        let m = self.raft().metrics().borrow().clone();
        let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
        JoinState { id: m.id, initialized: !voters.is_empty(), join_mode, voters, leader: m.current_leader, in_use }
    }

    /// A backup of `directory` at a linearizable point: the leader reads after
    /// every commit acknowledged before the call (openraft's read index).
    pub async fn backup(&self, directory: impl FnOnce() -> crate::protocol::Directory) -> Result<Backup, Error> {
        self.ensure_leader().await?;
        let read = self.raft().ensure_linearizable();
        let read_log = self.timed(read).await?;
        // Wait until the directory reflects the read index.
        let mut metrics = self.raft().metrics();
        let want = read_log.map_or(0, |l| l.index);
        let applied = loop {
            let applied = metrics.borrow_and_update().last_applied;
            if applied.map_or(0, |l| l.index) >= want {
                break applied;
            }
            metrics.changed().await.map_err(|_| Error::Unavailable("the Raft core stopped".into()))?;
        };
        let dir = directory();
        let taken_at_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        Ok(Backup {
            format: BACKUP_FORMAT.to_string(),
            taken_by: self.raft().metrics().borrow().id,
            taken_at_ms,
            applied_term: applied.map_or(0, |l| l.leader_id.term),
            applied_index: applied.map_or(0, |l| l.index),
            directory: dir,
        })
    }

    /// Runs an openraft call under [`MEMBERSHIP_DEADLINE`], mapping its errors.
    async fn timed<T, E>(
        &self,
        call: impl std::future::Future<Output = Result<T, openraft::error::RaftError<u64, E>>>,
    ) -> Result<T, Error>
    where
        E: std::error::Error + openraft::TryAsRef<openraft::error::ForwardToLeader<u64, BasicNode>>,
    {
        match tokio::time::timeout(MEMBERSHIP_DEADLINE, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(err)) => Err(raft_error(self.raft(), err)),
            Err(_) => Err(Error::NoQuorum(format!("no commit within {MEMBERSHIP_DEADLINE:?}"))),
        }
    }
}

/// Elections and heartbeats of this node switched off while it hands over;
/// switched back to their configured setting when dropped.
struct Quiet(Raft, Arc<Contact>);

impl Quiet {
    fn new(raft: &Raft, contact: Arc<Contact>) -> Self {
        raft.runtime_config().elect(false);
        raft.runtime_config().heartbeat(false);
        contact.set_handing_over(true);
        Quiet(raft.clone(), contact)
    }
}

impl Drop for Quiet {
    fn drop(&mut self) {
        let config = self.0.config();
        self.0.runtime_config().elect(config.enable_elect);
        self.0.runtime_config().heartbeat(config.enable_heartbeat);
        self.1.set_handing_over(false);
    }
}
