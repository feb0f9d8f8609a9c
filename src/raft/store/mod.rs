//! Storage of one CM node: the Raft log and the directory state machine in sled.
//!
//! - [`LogStore`] keeps the log entries, the vote and the committed id in sled and
//!   flushes before it tells openraft an append is durable.
//! - [`StateMachine`] applies [`Batch`]es of directory commands to an in-memory
//!   [`Directory`](crate::protocol::Directory) shared with the manager for reads;
//!   its snapshots (the directory with its client sessions) are stored in sled, so
//!   a restart rebuilds the state from the last snapshot plus the log.
//! - [`open`] opens both on one sled database in the node's data dir.
//!
//! Everything stored is encoded with postcard ([`codec`]).

pub(crate) mod codec;
mod log_store;
mod state_machine;
#[cfg(test)]
mod tests;

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::protocol::{Applied, DirCmd};

pub use log_store::LogStore;
pub use state_machine::StateMachine;

/// One Raft log entry's application data: directory commands committed together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch(pub Vec<DirCmd>);

/// What applying a [`Batch`] did, one result per command, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchOutcome(pub Vec<Applied>);

/// Opens (creating when absent) the sled database in `dir` and the Raft storage in it.
///
/// The log store and the state machine share the one database; the state machine
/// comes back from its last snapshot. sled locks the database, so a second open of
/// the same directory while the first is alive fails with [`Error::DataDirInUse`].
pub fn open(dir: &Path) -> Result<(LogStore, StateMachine), Error> {
    let db = sled::Config::new().path(dir).open().map_err(|e| open_error(dir, &e))?;
    let log_store = LogStore::new(&db).map_err(|e| open_error(dir, &e))?;
    let state_machine = StateMachine::new(&db).map_err(|e| {
        Error::Storage(format!("cannot restore the state machine from the snapshot in {}: {e}", dir.display()))
    })?;
    Ok((log_store, state_machine))
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
