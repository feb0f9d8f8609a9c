//! The Raft log, the vote and the committed log id, kept in two sled trees.
//!
//! Entries live in the `raft_log` tree under their index as a big-endian `u64`, so
//! sled's byte order is log order and a range of indexes is one range scan. The
//! vote, the committed log id and the last purged log id live in the `raft_meta`
//! tree. Values are postcard ([`codec`](super::codec)).
//!
//! Durability follows openraft's contract: `append` writes the entries (readable at
//! once), then awaits `flush_async` and only then reports the entries durable
//! through the callback, which also carries a failed flush as the IO error.
//! `save_vote` and `truncate` flush before they return. The committed log id and
//! purges are not flushed: sled recovers writes in order, so a crash loses at most
//! a suffix of them, which openraft tolerates (it re-derives `committed`, and a
//! purge only drops entries a snapshot already covers).
//!
//! Every sled or bincode failure becomes a [`StorageError`] naming what was being
//! read or written, which openraft treats as fatal for the node.

// openraft's traits fix the error type to `StorageError`; the helpers share it.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, StorageError, StorageIOError, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::codec;
use crate::raft::TypeConfig;

/// Name of the sled tree holding log entries.
const LOG_TREE: &str = "raft_log";
/// Name of the sled tree holding the vote and the log pointers.
const META_TREE: &str = "raft_meta";
/// Meta key of the vote.
const VOTE_KEY: &str = "vote";
/// Meta key of the committed log id.
const COMMITTED_KEY: &str = "committed";
/// Meta key of the last purged log id.
const LAST_PURGED_KEY: &str = "last_purged";

type NodeId = u64;
type StorageResult<T> = Result<T, StorageError<NodeId>>;
type DynError = dyn std::error::Error + 'static;

/// The Raft log storage of one CM node, backed by sled; clones share the same trees.
#[derive(Debug, Clone)]
pub struct LogStore {
    log: sled::Tree,
    meta: sled::Tree,
}

impl LogStore {
    /// Opens the log and meta trees of `db`, creating them when absent.
    pub(super) fn new(db: &sled::Db) -> Result<Self, sled::Error> {
        Ok(LogStore { log: db.open_tree(LOG_TREE)?, meta: db.open_tree(META_TREE)? })
    }

    /// Reads and decodes the meta value under `key`, mapping failures with `err`.
    fn read_meta<T: DeserializeOwned>(
        &self,
        key: &str,
        err: fn(&DynError) -> StorageIOError<NodeId>,
    ) -> StorageResult<Option<T>> {
        let Some(bytes) = self.meta.get(key).map_err(|e| err(&e))? else {
            return Ok(None);
        };
        let value = codec::decode(&bytes).map_err(|e| err(&e))?;
        Ok(Some(value))
    }

    /// Encodes and stores `value` under the meta key `key`, mapping failures with `err`.
    fn write_meta<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        err: fn(&DynError) -> StorageIOError<NodeId>,
    ) -> StorageResult<()> {
        let bytes = codec::encode(value).map_err(|e| err(&e))?;
        self.meta.insert(key, bytes).map_err(|e| err(&e))?;
        Ok(())
    }

    /// The last purged log id, if any entry was ever purged.
    fn last_purged(&self) -> StorageResult<Option<LogId<NodeId>>> {
        self.read_meta(LAST_PURGED_KEY, read_logs)
    }

    /// The log id of the last entry present in the log.
    fn last_present(&self) -> StorageResult<Option<LogId<NodeId>>> {
        let Some((_, bytes)) = self.log.last().map_err(|e| read_logs(&e))? else {
            return Ok(None);
        };
        Ok(Some(decode_entry(&bytes)?.log_id))
    }

    /// Removes every entry whose index lies in `range`.
    fn remove_range(&self, range: (Bound<[u8; 8]>, Bound<[u8; 8]>)) -> StorageResult<()> {
        let mut batch = sled::Batch::default();
        for item in self.log.range(range) {
            let (key, _) = item.map_err(|e| write_logs(&e))?;
            batch.remove(key);
        }
        self.log.apply_batch(batch).map_err(|e| write_logs(&e))?;
        Ok(())
    }

    /// Flushes every sled write so far to disk.
    async fn flush(&self) -> Result<(), sled::Error> {
        self.log.flush_async().await.map(|_| ())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let keys = (key_bound(range.start_bound()), key_bound(range.end_bound()));
        let mut entries = Vec::new();
        for item in self.log.range(keys) {
            let (_, bytes) = item.map_err(|e| read_logs(&e))?;
            entries.push(decode_entry(&bytes)?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged_log_id = self.last_purged()?;
        let last_log_id = self.last_present()?.or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        self.write_meta(VOTE_KEY, vote, write_vote)?;
        self.flush().await.map_err(|e| write_vote(&e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.read_meta(VOTE_KEY, read_vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        self.write_meta(COMMITTED_KEY, &committed, write_logs)
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self.read_meta(COMMITTED_KEY, read_logs)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes = codec::encode(&entry).map_err(|e| StorageIOError::write_log_entry(entry.log_id, &e))?;
            batch.insert(&index_key(entry.log_id.index), bytes);
        }
        self.log.apply_batch(batch).map_err(|e| write_logs(&e))?;
        let flushed = self.flush().await.map_err(std::io::Error::from);
        callback.log_io_completed(flushed);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let from = Bound::Included(index_key(log_id.index));
        self.remove_range((from, Bound::Unbounded))?;
        self.flush().await.map_err(|e| write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.write_meta(LAST_PURGED_KEY, &log_id, write_logs)?;
        let upto = Bound::Included(index_key(log_id.index));
        self.remove_range((Bound::Unbounded, upto))
    }
}

/// The sled key of log index `index`: big-endian, so byte order is index order.
fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// Maps a bound on log indexes to a bound on sled keys.
fn key_bound(bound: Bound<&u64>) -> Bound<[u8; 8]> {
    match bound {
        Bound::Included(i) => Bound::Included(index_key(*i)),
        Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// Decodes one stored log entry.
fn decode_entry(bytes: &[u8]) -> StorageResult<Entry<TypeConfig>> {
    codec::decode(bytes).map_err(|e| read_logs(&e).into())
}

/// A failed read of the log or its pointers.
fn read_logs(e: &DynError) -> StorageIOError<NodeId> {
    StorageIOError::read_logs(openraft::AnyError::from_dyn(e, None))
}

/// A failed write of the log or its pointers.
fn write_logs(e: &DynError) -> StorageIOError<NodeId> {
    StorageIOError::write_logs(openraft::AnyError::from_dyn(e, None))
}

/// A failed read of the vote.
fn read_vote(e: &DynError) -> StorageIOError<NodeId> {
    StorageIOError::read_vote(openraft::AnyError::from_dyn(e, None))
}

/// A failed write of the vote.
fn write_vote(e: &DynError) -> StorageIOError<NodeId> {
    StorageIOError::write_vote(openraft::AnyError::from_dyn(e, None))
}
