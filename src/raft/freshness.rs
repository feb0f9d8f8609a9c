//! Is this node part of a working cluster right now? The one judgement the gRPC
//! health service (readiness) and status reports share.
//!
//! A node *stands* in a working cluster when it has heard, within the freshness
//! window (the election timeout), from a majority (a leader) or from its leader
//! (a follower). Both facts come with their age:
//!
//! - a leader's last quorum acknowledgement is openraft's
//!   `millis_since_quorum_ack`, which is only as fresh as the metrics snapshot it
//!   came in, so [`Contact`] stores it with the instant the snapshot was seen and
//!   ages it from there: a leader cut off from everyone, whose metrics stop
//!   changing, still goes stale;
//! - a follower's last contact is stamped by the transport each time it accepts
//!   an AppendEntries or a snapshot from the leader of its current term.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use openraft::{BasicNode, RaftMetrics, ServerState};

/// When this node last heard from the cluster, as the freshness judgement needs it.
#[derive(Debug, Default)]
pub struct Contact {
    quorum_ack: Mutex<Option<Instant>>,
    leader: Mutex<Option<Instant>>,
    /// The last vote request, with the term it asked for.
    asked: Mutex<Option<(u64, Asked)>>,
    /// The last pre-vote request.
    prevoted: Mutex<Option<Asked>>,
    handing_over: AtomicBool,
}

/// A vote or pre-vote request this node received: from whom, when it
/// arrived, and whether it refused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Asked {
    candidate: u64,
    refused: bool,
    at: Instant,
}

impl Asked {
    /// A request from `candidate` arriving now, not judged yet.
    fn now(candidate: u64) -> Self {
        Asked { candidate, refused: false, at: Instant::now() }
    }

    /// Whether it arrived at or after `since` and was not refused (granted,
    /// or still being judged).
    fn unrefused_since(&self, since: Instant) -> bool {
        self.at >= since && !self.refused
    }
}

impl Contact {
    /// Records a leader's metrics snapshot: its last quorum acknowledgement was
    /// `ms_since` milliseconds before now (`None`: none yet, or not leading).
    pub fn saw_quorum_ack(&self, ms_since: Option<u64>) {
        let at = ms_since.and_then(|ms| Instant::now().checked_sub(Duration::from_millis(ms)));
        *lock(&self.quorum_ack) = at;
    }

    /// Records that the leader of the current term was just heard from.
    pub fn heard_leader(&self) {
        *lock(&self.leader) = Some(Instant::now());
    }

    /// Marks a hand-over of this node's leadership as begun (`true`) or over:
    /// while it runs, this node's campaigner starts no election of its own.
    pub fn set_handing_over(&self, on: bool) {
        self.handing_over.store(on, Ordering::SeqCst);
    }

    /// Whether this node is handing its leadership over.
    pub fn handing_over(&self) -> bool {
        self.handing_over.load(Ordering::SeqCst)
    }

    /// Records a vote request from `candidate` for `term` as it arrives, before
    /// it is judged: until [`Contact::vote_refused`], it may yet be granted (a
    /// grant is answered only once the vote is on disk).
    pub fn vote_asked(&self, term: u64, candidate: u64) {
        *lock(&self.asked) = Some((term, Asked::now(candidate)));
    }

    /// Records that the vote request from `candidate` for `term` was refused.
    pub fn vote_refused(&self, term: u64, candidate: u64) {
        let mut asked = lock(&self.asked);
        if let Some((_, a)) = asked.as_mut().filter(|(t, a)| *t == term && a.candidate == candidate) {
            a.refused = true;
        }
    }

    /// What became of `candidate`'s request for this node's vote in `term`:
    /// `None` if it has not arrived, `Some(true)` if it was refused,
    /// `Some(false)` if it was granted or is still being answered.
    pub fn vote_refused_to(&self, term: u64, candidate: u64) -> Option<bool> {
        lock(&self.asked).filter(|(t, a)| *t == term && a.candidate == candidate).map(|(_, a)| a.refused)
    }

    /// The candidate of the last vote request that arrived at or after `since`,
    /// unless it was refused (one still being answered counts: it may be
    /// granted).
    pub fn vote_asked_since(&self, since: Instant) -> Option<u64> {
        lock(&self.asked).filter(|(_, a)| a.unrefused_since(since)).map(|(_, a)| a.candidate)
    }

    /// Records a pre-vote request from `candidate` as it arrives, before it is
    /// judged (until [`Contact::prevote_refused`], it counts as granted), and
    /// returns the moment it was stamped with.
    pub fn prevote_asked(&self, candidate: u64) -> Instant {
        let asked = Asked::now(candidate);
        *lock(&self.prevoted) = Some(asked);
        asked.at
    }

    /// Records that the pre-vote request from `candidate` stamped `at` was
    /// refused (or could not be judged).
    pub fn prevote_refused(&self, candidate: u64, at: Instant) {
        let mut asked = lock(&self.prevoted);
        if let Some(a) = asked.as_mut().filter(|a| a.candidate == candidate && a.at == at) {
            a.refused = true;
        }
    }

    /// The candidate of the last pre-vote request that arrived at or after
    /// `since`, and when it arrived, unless it was refused (one still being
    /// judged counts: it may be granted).
    pub fn prevote_granted_since(&self, since: Instant) -> Option<(u64, Instant)> {
        lock(&self.prevoted).filter(|a| a.unrefused_since(since)).map(|a| (a.candidate, a.at))
    }

    /// How long ago a majority acknowledged this node as leader.
    pub fn quorum_ack_age(&self) -> Option<Duration> {
        lock(&self.quorum_ack).map(|t| t.elapsed())
    }

    /// How long ago this node last heard from its leader.
    pub fn leader_age(&self) -> Option<Duration> {
        lock(&self.leader).map(|t| t.elapsed())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where this node stands, judged from its metrics and its [`Contact`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// A leader a majority acknowledged within the window.
    Leader {
        /// Age of the last quorum acknowledgement.
        quorum_ack: Duration,
    },
    /// A follower (or learner) that heard from its leader within the window.
    Follower {
        /// The leader.
        leader: u64,
        /// Age of the last contact.
        heard: Duration,
    },
    /// A leader with no quorum acknowledgement within the window.
    LeaderWithoutQuorum {
        /// Age of the last quorum acknowledgement, if there was one.
        quorum_ack: Option<Duration>,
    },
    /// A follower that knows no leader or has not heard from it within the window.
    NoLeader {
        /// Age of the last contact, if there was one.
        heard: Option<Duration>,
    },
    /// An election is under way on this node.
    Candidate,
    /// Raft has stopped on this node.
    Stopped,
}

impl Standing {
    /// True when the node is part of a working cluster (readiness).
    pub fn in_working_cluster(&self) -> bool {
        matches!(self, Standing::Leader { .. } | Standing::Follower { .. })
    }

    /// True when this node may serve faults: a leader with a fresh quorum.
    pub fn leads(&self) -> bool {
        matches!(self, Standing::Leader { .. })
    }
}

/// Judges where a node stands: `window` is the election timeout.
pub fn standing(m: &RaftMetrics<u64, BasicNode>, contact: &Contact, window: Duration) -> Standing {
    let fresh = |age: Option<Duration>| age.filter(|a| *a <= window);
    match m.state {
        ServerState::Leader => match fresh(contact.quorum_ack_age()) {
            Some(quorum_ack) => Standing::Leader { quorum_ack },
            None => Standing::LeaderWithoutQuorum { quorum_ack: contact.quorum_ack_age() },
        },
        ServerState::Follower | ServerState::Learner => match (m.current_leader, fresh(contact.leader_age())) {
            (Some(leader), Some(heard)) if leader != m.id => Standing::Follower { leader, heard },
            _ => Standing::NoLeader { heard: contact.leader_age() },
        },
        ServerState::Candidate => Standing::Candidate,
        ServerState::Shutdown => Standing::Stopped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(state: ServerState, leader: Option<u64>) -> RaftMetrics<u64, BasicNode> {
        let mut m = RaftMetrics::new_initial(1);
        m.state = state;
        m.current_leader = leader;
        m
    }

    #[test]
    fn judges_leaders_by_quorum_and_followers_by_contact() {
        let window = Duration::from_millis(200);
        let c = Contact::default();
        let leader = metrics(ServerState::Leader, Some(1));
        assert!(!standing(&leader, &c, window).in_working_cluster(), "no ack yet");
        c.saw_quorum_ack(Some(10));
        assert!(standing(&leader, &c, window).leads());
        c.saw_quorum_ack(Some(500));
        assert!(matches!(standing(&leader, &c, window), Standing::LeaderWithoutQuorum { quorum_ack: Some(_) }));

        let follower = metrics(ServerState::Follower, Some(2));
        assert!(matches!(standing(&follower, &c, window), Standing::NoLeader { heard: None }));
        c.heard_leader();
        let s = standing(&follower, &c, window);
        assert!(s.in_working_cluster() && !s.leads(), "{s:?}");
        let orphan = metrics(ServerState::Follower, None);
        assert!(!standing(&orphan, &c, window).in_working_cluster());
        assert_eq!(standing(&metrics(ServerState::Candidate, None), &c, window), Standing::Candidate);
    }

    #[test]
    fn remembers_the_last_vote_and_pre_vote_asked_and_when() {
        let c = Contact::default();
        let before = Instant::now();
        assert_eq!((c.vote_asked_since(before), c.prevote_granted_since(before)), (None, None));
        c.vote_asked(5, 2);
        let asked = c.prevote_asked(3);
        assert_eq!(c.vote_asked_since(before), Some(2));
        assert_eq!(c.prevote_granted_since(before), Some((3, asked)), "granted or still being judged");
        c.vote_refused(5, 2);
        assert_eq!(c.vote_asked_since(before), None, "a refused vote is no rival");
        c.prevote_refused(3, asked);
        assert_eq!(c.prevote_granted_since(before), None, "a refused pre-vote is no rival");
        c.prevote_asked(3);
        c.vote_asked(6, 3);
        let later = Instant::now() + Duration::from_millis(1);
        assert_eq!((c.vote_asked_since(later), c.prevote_granted_since(later)), (None, None), "older than the round");
    }

    #[test]
    fn a_silent_leader_goes_stale_without_new_metrics() {
        let c = Contact::default();
        c.saw_quorum_ack(Some(0));
        std::thread::sleep(Duration::from_millis(30));
        let leader = metrics(ServerState::Leader, Some(1));
        assert!(!standing(&leader, &c, Duration::from_millis(20)).in_working_cluster());
    }
}
