//! The heartbeat-sync baseline: the original primary/backup design's replication,
//! state and messages together.
//!
//! The directory lives in the acting primary's memory; a change is applied there
//! and acknowledged at once (no fsync, no consensus round). The backup copies the
//! whole directory every pulse and takes over when a pulse goes unanswered; a
//! restarted primary reclaims the title by taking the backup's copy first. So the
//! baseline is fast in steady state and, by construction, loses every change made
//! after the backup's last copy when the primary dies. This module is the state;
//! [`service`] is the pulse, the takeover with CHANGE_CM and the IM_BACK reclaim.

pub mod service;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use crate::config::ReplicationMode;
use crate::error::Error;
use crate::protocol::{Applied, DirCmd, Directory, SharedDirectory};
use crate::raft::store::codec;
use crate::status::{LeaderRef, NodeStatus, Role};

#[derive(Debug)]
struct State {
    role: Role,
    version: u64,
    last_sync: Option<Instant>,
    /// Grows each time this node starts serving (claim or takeover).
    claims: u64,
}

/// One node of the primary/backup pair.
#[derive(Debug)]
pub struct HeartbeatReplica {
    id: u64,
    peers: BTreeMap<u64, String>,
    dir: SharedDirectory,
    state: Mutex<State>,
}

impl HeartbeatReplica {
    /// Node `id` of the pair in `peers` (the lowest id is the primary, the next the
    /// backup); it starts in its configured role with an empty directory.
    pub fn new(id: u64, peers: &BTreeMap<u64, String>) -> Result<Self, Error> {
        let pair: BTreeMap<u64, String> = peers.iter().take(2).map(|(i, a)| (*i, a.clone())).collect();
        if pair.len() < 2 || !pair.contains_key(&id) {
            let ids: Vec<_> = pair.keys().collect();
            return Err(Error::InvalidConfig(format!(
                "heartbeat mode runs the first two peers {ids:?} (primary, backup); --id {id} is not one of them"
            )));
        }
        let role = if Some(&id) == pair.keys().next() { Role::Primary } else { Role::Backup };
        let state = State { role, version: 0, last_sync: None, claims: 0 };
        Ok(HeartbeatReplica {
            id,
            peers: pair,
            dir: Arc::new(RwLock::new(Directory::default())),
            state: Mutex::new(state),
        })
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The other node of the pair: (id, address).
    pub fn other(&self) -> (u64, String) {
        let (id, addr) = self.peers.iter().find(|(i, _)| **i != self.id).expect("a pair has two nodes");
        (*id, addr.clone())
    }

    /// The directory this node serves or copies.
    pub fn directory(&self) -> SharedDirectory {
        self.dir.clone()
    }

    /// This node's current role.
    pub fn role(&self) -> Role {
        self.state().role
    }

    /// How many directory changes this node's copy has seen.
    pub fn version(&self) -> u64 {
        self.state().version
    }

    /// Time since the backup's last copy (None on a node that never copied).
    pub fn sync_age(&self) -> Option<Duration> {
        self.state().last_sync.map(|t| t.elapsed())
    }

    /// The leader this node knows: itself when serving, else the other node.
    pub fn leader(&self) -> (u64, String) {
        match self.role() {
            Role::Backup => self.other(),
            _ => (self.id, self.peers[&self.id].clone()),
        }
    }

    /// This node's status (the directory counts are left at zero).
    pub fn status(&self) -> NodeStatus {
        let (id, addr) = self.leader();
        let state = self.state();
        NodeStatus {
            id: self.id,
            role: state.role,
            serving: state.role != Role::Backup,
            last_log_index: state.version,
            applied_index: state.version,
            leader: Some(LeaderRef { id, addr }),
            mode: ReplicationMode::Heartbeat,
            last_sync_ms: state.last_sync.map(|t| t.elapsed().as_millis() as u64),
            ..Default::default()
        }
    }

    /// Fails with `NotLeader` unless this node serves faults.
    pub fn ensure_leader(&self) -> Result<(), Error> {
        match self.role() {
            Role::Backup => Err(Error::NotLeader { leader: Some(self.other()) }),
            _ => Ok(()),
        }
    }

    /// Applies `cmd` to the in-memory directory and acknowledges at once.
    pub fn commit(&self, cmd: &DirCmd) -> Result<Applied, Error> {
        let mut state = self.state();
        if state.role == Role::Backup {
            return Err(Error::NotLeader { leader: Some(self.other()) });
        }
        let outcome = self.dir.write().unwrap_or_else(|e| e.into_inner()).apply(cmd);
        state.version += 1;
        Ok(outcome)
    }

    /// The directory and its version, encoded for a pulse reply.
    pub fn snapshot(&self) -> Result<(u64, Vec<u8>), Error> {
        let state = self.state();
        let dir = self.dir.read().unwrap_or_else(|e| e.into_inner());
        let bytes = codec::encode(&*dir).map_err(|e| Error::Internal(format!("encode directory: {e}")))?;
        Ok((state.version, bytes))
    }

    /// The backup installs the copy a pulse brought.
    pub fn install(&self, version: u64, bytes: &[u8]) -> Result<(), Error> {
        let copy: Directory = codec::decode(bytes).map_err(|e| Error::Malformed(format!("pulse directory: {e}")))?;
        copy.check().map_err(|why| Error::Malformed(format!("pulse directory breaks an invariant: {why}")))?;
        let mut state = self.state();
        *self.dir.write().unwrap_or_else(|e| e.into_inner()) = copy;
        state.version = version;
        state.last_sync = Some(Instant::now());
        Ok(())
    }

    /// A number that changes each time this node starts serving, while it
    /// serves (the heartbeat mode's counterpart of a Raft leader's term).
    pub fn leader_term(&self) -> Option<u64> {
        let state = self.state();
        (state.role != Role::Backup).then_some(state.claims)
    }

    /// The backup takes over after a missed pulse; returns the age of its copy.
    pub fn take_over(&self) -> Option<Duration> {
        let mut state = self.state();
        state.role = Role::ActingPrimary;
        state.claims += 1;
        state.last_sync.map(|t| t.elapsed())
    }

    /// The backup hands the title back to a restarted primary.
    pub fn step_down(&self) {
        self.state().role = Role::Backup;
    }

    /// The primary (re)claims the title.
    pub fn claim(&self) {
        let mut state = self.state();
        state.role = Role::Primary;
        state.claims += 1;
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_peers;

    fn pair() -> (HeartbeatReplica, HeartbeatReplica) {
        let peers = parse_peers("1=127.0.0.1:1,2=127.0.0.1:2").unwrap();
        (HeartbeatReplica::new(1, &peers).unwrap(), HeartbeatReplica::new(2, &peers).unwrap())
    }

    #[test]
    fn backup_copies_takes_over_and_hands_back() {
        let (primary, backup) = pair();
        assert_eq!((primary.role(), backup.role()), (Role::Primary, Role::Backup));
        let reg = DirCmd::Register { addr: "127.0.0.1:9".into(), nonce: 1 };
        assert_eq!(primary.commit(&reg).unwrap(), Applied::Registered { client: 1 });
        assert!(matches!(backup.commit(&reg), Err(Error::NotLeader { leader: Some((1, _)) })));

        let (v, bytes) = primary.snapshot().unwrap();
        backup.install(v, &bytes).unwrap();
        assert_eq!(backup.version(), 1);
        // A change after the last pulse: acknowledged by the primary, unknown to the backup.
        primary.commit(&DirCmd::Register { addr: "127.0.0.1:10".into(), nonce: 2 }).unwrap();
        assert!(backup.take_over().is_some());
        assert_eq!(backup.directory().read().unwrap().client_count(), 1, "the baseline lost a change");
        assert!(backup.ensure_leader().is_ok());
        backup.step_down();
        assert_eq!(backup.leader().0, 1);
    }

    #[test]
    fn only_the_first_two_peers() {
        let peers = parse_peers("1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3").unwrap();
        let err = HeartbeatReplica::new(3, &peers).unwrap_err();
        assert!(err.to_string().contains("--id 3"), "{err}");
    }
}
