//! What the cluster-operation commands speak: the membership with each member's
//! replication, a node's join state, and the backup file of `ivy snapshot`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::protocol::Directory;

/// One member of the CM cluster as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Node id.
    pub id: u64,
    /// The address in the membership.
    pub addr: String,
    /// True for a voter, false for a learner.
    pub voter: bool,
    /// The last log index the leader knows it holds (the leader: its own last index).
    pub matched: Option<u64>,
}

/// The membership, from the leader.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Members {
    /// The leader's id.
    pub leader: u64,
    /// The leader's term.
    pub term: u64,
    /// The leader's last log index.
    pub last_log_index: u64,
    /// Voters and learners, by id.
    pub members: Vec<Member>,
}

impl Members {
    /// The member `id`, if any.
    pub fn get(&self, id: u64) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    /// Entries member `id` is behind the leader (`None`: not a member, or nothing replicated yet).
    pub fn lag(&self, id: u64) -> Option<u64> {
        let matched = self.get(id)?.matched?;
        Some(self.last_log_index.saturating_sub(matched))
    }

    /// The voters' ids.
    pub fn voters(&self) -> Vec<u64> {
        self.members.iter().filter(|m| m.voter).map(|m| m.id).collect()
    }

    /// The learners' ids.
    pub fn learners(&self) -> Vec<u64> {
        self.members.iter().filter(|m| !m.voter).map(|m| m.id).collect()
    }
}

impl fmt::Display for Members {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<4} {:<22} {:<8} {:>9} {:>6}", "id", "address", "role", "matched", "lag")?;
        for m in &self.members {
            let role = if m.id == self.leader {
                "leader"
            } else if m.voter {
                "voter"
            } else {
                "learner"
            };
            let matched = m.matched.map_or("-".to_string(), |i| i.to_string());
            let lag = self.lag(m.id).map_or("-".to_string(), |l| l.to_string());
            write!(f, "\n{:<4} {:<22} {:<8} {:>9} {:>6}", m.id, m.addr, role, matched, lag)?;
        }
        write!(f, "\n(term {}, leader's last log index {})", self.term, self.last_log_index)
    }
}

/// Whether a node belongs to a cluster (the answer to a join probe).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct JoinState {
    /// Node id.
    pub id: u64,
    /// True once the node holds a membership.
    pub initialized: bool,
    /// True when it was started with `--join`.
    pub join_mode: bool,
    /// The voters of its membership.
    pub voters: Vec<u64>,
    /// The leader it knows of.
    pub leader: Option<u64>,
    /// True when its directory holds clients or pages (the cluster was used).
    pub in_use: bool,
}

/// The format tag of a backup file.
pub const BACKUP_FORMAT: &str = "ivy-raft backup v1";

/// A backup of the directory (`ivy snapshot save`), taken on the leader at a
/// linearizable point: every write acknowledged before the save is in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backup {
    /// [`BACKUP_FORMAT`].
    pub format: String,
    /// The node that took it (the leader).
    pub taken_by: u64,
    /// Unix time it was taken, ms.
    pub taken_at_ms: u64,
    /// The term and index of the last log entry the directory reflects.
    pub applied_term: u64,
    /// See `applied_term`.
    pub applied_index: u64,
    /// The directory: pages, clients, sessions (the dedup table), caps.
    pub directory: Directory,
}

impl Backup {
    /// The file's bytes: postcard, sealed with a checksum.
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        crate::raft::store::codec::encode_stored(self).map_err(|e| Error::Internal(format!("encode backup: {e}")))
    }

    /// Reads a backup file's bytes, checking the checksum, the format and the
    /// directory's invariants.
    pub fn decode(bytes: &[u8]) -> Result<Backup, Error> {
        let backup: Backup = crate::raft::store::codec::decode_stored(bytes)
            .map_err(|e| Error::InvalidConfig(format!("not an ivy-raft backup, or damaged: {e}")))?;
        if backup.format != BACKUP_FORMAT {
            return Err(Error::InvalidConfig(format!("backup format {:?} is not {BACKUP_FORMAT:?}", backup.format)));
        }
        backup.directory.check().map_err(|why| Error::InvalidConfig(format!("the backup's directory: {why}")))?;
        Ok(backup)
    }

    /// A summary for `ivy snapshot inspect`.
    pub fn summary(&self) -> BackupSummary {
        let dir = &self.directory;
        BackupSummary {
            format: self.format.clone(),
            taken_by: self.taken_by,
            taken_at_ms: self.taken_at_ms,
            applied_term: self.applied_term,
            applied_index: self.applied_index,
            pages: dir.pages().count() as u64,
            lost_pages: dir.pages().filter(|(_, e)| e.owner().is_none()).count() as u64,
            clients: dir.client_count() as u64,
            owners: dir.pages().map(|(p, e)| (p.to_string(), e.owner().unwrap_or(0))).collect(),
        }
    }
}

/// What `ivy snapshot inspect` shows of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSummary {
    /// The format tag.
    pub format: String,
    /// The node that took it.
    pub taken_by: u64,
    /// Unix time it was taken, ms.
    pub taken_at_ms: u64,
    /// Term of the last applied entry.
    pub applied_term: u64,
    /// Index of the last applied entry.
    pub applied_index: u64,
    /// Pages, lost ones included.
    pub pages: u64,
    /// Pages whose only copy was lost.
    pub lost_pages: u64,
    /// Registered clients.
    pub clients: u64,
    /// Each page and its owner (0: lost).
    pub owners: Vec<(String, u64)>,
}

impl fmt::Display for BackupSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "format:   {}", self.format)?;
        writeln!(f, "taken by: node {} at unix ms {}", self.taken_by, self.taken_at_ms)?;
        writeln!(f, "applied:  term {}, index {}", self.applied_term, self.applied_index)?;
        write!(f, "pages:    {} ({} lost), clients: {}", self.pages, self.lost_pages, self.clients)
    }
}

/// The file in a data dir that `ivy snapshot restore` writes: the first leader of
/// the new cluster commits it as the directory, then every node deletes it.
pub const RESTORE_SEED_FILE: &str = "restore.seed";
