//! The Raft log storage: entries, the vote and the log pointers in `raft.wal`,
//! served from memory.
//!
//! Every change is one record appended to the file ([`wal`](super::wal)) and
//! applied to the in-memory [`LogState`] that readers share. What is synced
//! follows openraft's contract and the durability contract in docs/DESIGN.md:
//!
//! - `append`: the entries are readable at once; one record, one `fdatasync`,
//!   then the callback reports them durable (or carries the IO error);
//! - `save_vote`: one record, one `fdatasync`, before it returns;
//! - `truncate`: one record, one `fdatasync` (rare: only on a log conflict);
//! - `save_committed` and `purge`: a record without a sync, queued in memory
//!   and written in front of the next synced record (so no IO of its own on the
//!   commit path: openraft awaits `save_committed` between a commit and its
//!   apply). openraft needs neither durable: a lost committed id is learned
//!   again from the leader, and a lost purge only brings back entries the
//!   (synced) snapshot covers.
//!
//! The entries in memory are bounded by the snapshot policy: openraft purges
//! what a snapshot covers. A failed write or sync is returned as a
//! [`StorageError`], which stops the node (openraft treats it as fatal), and
//! the log refuses every later write.

// openraft's traits fix the error type to `StorageError`; the helpers share it.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use openraft::storage::{LogFlushed, LogState as RaftLogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, StorageError, StorageIOError, Vote};

use super::wal::{encode, LogState, Record, Wal};
use crate::raft::TypeConfig;

type NodeId = u64;
type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// The Raft log storage of one CM node.
#[derive(Debug)]
pub struct LogStore {
    state: Arc<Mutex<LogState>>,
    wal: Wal,
}

/// A reader of the log's entries, sharing the store's memory.
#[derive(Debug, Clone)]
pub struct LogReader {
    state: Arc<Mutex<LogState>>,
}

impl LogStore {
    /// The store over a replayed log.
    pub(super) fn new(wal: Wal, state: LogState) -> Self {
        LogStore { state: Arc::new(Mutex::new(state)), wal }
    }

    fn state(&self) -> MutexGuard<'_, LogState> {
        lock(&self.state)
    }

    /// At start-up, before openraft reads the vote: when the saved vote is
    /// node `me`'s own committed leadership, hands openraft the same vote
    /// uncommitted (in memory only; the file keeps what it has). openraft 0.9
    /// restores a node whose saved vote is its own committed leadership as
    /// leader of that old term at once, and that leader's appends at the old
    /// term then race the election the others hold meanwhile; uncommitted, the
    /// node starts as a follower that still voted for itself in that term, and
    /// leads again only by winning an election (docs/DESIGN.md, "A restarted
    /// leader starts as a follower"). Returns true when it changed the vote.
    pub fn restart_as_follower(&mut self, me: NodeId) -> bool {
        let mut state = self.state();
        match state.vote {
            Some(vote) if vote.is_committed() && vote.leader_id().voted_for() == Some(me) => {
                state.vote = Some(Vote::new(vote.leader_id().term, me));
                true
            }
            _ => false,
        }
    }

    /// Appends a record that carries no entries and applies it in memory.
    async fn write_meta(&mut self, record: Record<()>, sync: bool) -> io::Result<()> {
        let bytes = encode(&record)?;
        self.state().apply(record.with_entries(|()| Vec::new()));
        self.wal.write(bytes, sync).await
    }

    /// Rewrites the file when a purge left most of it dead.
    async fn compact(&mut self) -> io::Result<()> {
        let image = self.state().image()?;
        self.wal.compact_if_worth_it(image).await
    }

    /// The writer (tests).
    #[cfg(test)]
    pub(super) fn wal(&mut self) -> &mut Wal {
        &mut self.wal
    }
}

impl LogReader {
    fn entries<RB: RangeBounds<u64>>(&self, range: RB) -> Vec<Entry<TypeConfig>> {
        lock(&self.state).entries.range(range).map(|(_, e)| e.clone()).collect()
    }
}

fn lock(state: &Mutex<LogState>) -> MutexGuard<'_, LogState> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        Ok(self.entries(range))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        Ok(LogReader { state: self.state.clone() }.entries(range))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> StorageResult<RaftLogState<TypeConfig>> {
        let state = self.state();
        let last_present = state.entries.last_key_value().map(|(_, e)| e.log_id);
        let last_purged_log_id = state.last_purged;
        Ok(RaftLogState { last_purged_log_id, last_log_id: last_present.or(last_purged_log_id) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogReader { state: self.state.clone() }
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        let write = self.write_meta(Record::Vote(*vote), true).await;
        write.map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        Ok(self.state().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        let write = self.write_meta(Record::Committed(committed), false).await;
        write.map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self.state().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        if entries.is_empty() {
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        let bytes = encode(&Record::Entries(&entries[..])).map_err(|e| StorageIOError::write_logs(&e))?;
        self.state().apply(Record::Entries(entries));
        let written = self.wal.write(bytes, true).await;
        let failure = written.as_ref().err().map(StorageIOError::write_logs);
        callback.log_io_completed(written);
        failure.map_or(Ok(()), |e| Err(e.into()))
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let since = log_id.index;
        let write = self.write_meta(Record::Truncate(since), true).await;
        write.map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let write = self.write_meta(Record::Purge(log_id), false).await;
        write.map_err(|e| StorageIOError::write_logs(&e))?;
        self.compact().await.map_err(|e| StorageIOError::write_logs(&e).into())
    }
}
