//! Storage of one CM node: the Raft log in an append-only file of its own, the
//! directory state machine's snapshots in sled, both in the node's data dir.
//!
//! - [`LogStore`] keeps the log entries, the vote and the log pointers in
//!   `raft.wal` (`wal`), one `fdatasync` per append and per vote, and serves
//!   them from memory.
//! - [`StateMachine`] applies [`Batch`]es of directory commands to an in-memory
//!   [`Directory`](crate::protocol::Directory) shared with the manager for reads;
//!   its snapshots (the directory with its client sessions) are stored in sled,
//!   and sled's files synced after sled's flush, so a restart rebuilds the state
//!   from the last snapshot plus the log.
//! - [`open`] opens both in the node's data dir and returns them with the
//!   [`SyncCounter`] of every sync they make.
//!
//! Why the log left sled: sled 0.34's flush only calls `sync_file_range`, which
//! neither flushes the device's write cache nor the file's metadata, so a power
//! cut could lose entries and votes openraft was told were durable. Syncing
//! sled's file after each flush would also work, but a file of our own makes the
//! commit path exactly one `pwrite` and one `fdatasync`, with a recovery rule
//! (a checksummed prefix) that fits in a page. Snapshots are rare and stay in sled.
//! [`SyncPolicy::UnsafeSkip`] is the testing switch that syncs nothing.
//!
//! Everything stored is encoded with postcard (`codec`) and checksummed: the
//! log's frames by the log file, the snapshot record in sled by
//! `codec::encode_stored`; a corrupted record is a storage error naming the
//! data dir.

pub(crate) mod codec;
mod legacy;
mod log_store;
mod state_machine;
mod sync;
#[cfg(test)]
mod tests;
mod wal;

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::protocol::{Applied, DirCmd};

pub use log_store::{LogReader, LogStore};
pub use state_machine::StateMachine;
pub use sync::{SyncCounter, SyncPolicy};

use sync::{SledFiles, Syncer};

/// One Raft log entry's application data: directory commands committed together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch(pub Vec<DirCmd>);

/// What applying a [`Batch`] did, one result per command, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchOutcome(pub Vec<Applied>);

/// The storage of one CM node, opened.
#[derive(Debug)]
pub struct Store {
    /// The Raft log.
    pub log: LogStore,
    /// The directory state machine.
    pub state_machine: StateMachine,
    /// How many syncs both have made since opening.
    pub syncs: SyncCounter,
}

/// Opens (creating when absent) the storage in `dir`, syncing under `policy`.
///
/// The state machine comes back from its last snapshot, the log from
/// `raft.wal` (moved there from sled on the first open of an older data dir).
/// sled locks its database, so a second open of the same directory while the
/// first is alive fails with [`Error::DataDirInUse`] before anything is touched.
pub fn open(dir: &Path, policy: SyncPolicy) -> Result<Store, Error> {
    let db = sled::Config::new().path(dir).open().map_err(|e| open_error(dir, &e))?;
    let syncer = Syncer::new(policy);
    let sled_files = SledFiles::open(dir, syncer.clone())
        .map_err(|e| Error::Storage(format!("cannot sync the sled files in {}: {e}", dir.display())))?;
    legacy::migrate(&db, dir, &syncer, &sled_files)?;
    let (wal, state) = wal::open(dir, syncer.clone())?;
    let state_machine = StateMachine::new(&db, sled_files, dir).map_err(|e| {
        Error::Storage(format!("cannot restore the state machine from the snapshot in {}: {e}", dir.display()))
    })?;
    check_vote(dir, &state, state_machine.last_applied())?;
    Ok(Store { log: LogStore::new(wal, state), state_machine, syncs: syncer.counter() })
}

/// Refuses a store whose saved vote is older than the log it holds.
///
/// A node saves the vote of a leader before it accepts that leader's entries or
/// snapshot, so its vote's term is never below the term of the last entry it
/// holds (or of its snapshot or purge point). A store where it is has lost writes
/// it had synced, or never synced them (`--unsafe-skip-sync`); starting from it
/// could vote twice in one term, so the node does not start.
fn check_vote(dir: &Path, log: &wal::LogState, snapshot: Option<openraft::LogId<u64>>) -> Result<(), Error> {
    let last_entry = log.entries.values().next_back().map(|e| e.log_id);
    let Some(last) = last_entry.max(log.last_purged).max(snapshot) else {
        return Ok(());
    };
    let vote_term = log.vote.map_or(0, |v| v.leader_id.term);
    if vote_term >= last.leader_id.term {
        return Ok(());
    }
    Err(Error::Storage(format!(
        "{}: the saved vote (term {vote_term}) is older than the log it holds (term {}, index {}): this data dir \
         lost writes it had synced (a disk that ignores flushes, or a node run with --unsafe-skip-sync); refusing \
         to start, since the node could vote twice in one term",
        dir.display(),
        last.leader_id.term,
        last.index
    )))
}

/// Describes a failed open of the database in `dir`, calling out a held lock.
fn open_error(dir: &Path, err: &sled::Error) -> Error {
    let in_use = matches!(err, sled::Error::Io(io) if io.to_string().contains(SLED_LOCK_FAILURE));
    if in_use {
        return Error::DataDirInUse { path: dir.display().to_string() };
    }
    Error::Storage(format!("cannot open the sled database in {}: {err}", dir.display()))
}

/// The start of the message sled 0.34 gives when another handle holds the lock.
const SLED_LOCK_FAILURE: &str = "could not acquire lock";
