//! The directory state machine: applied in memory, persisted only as snapshots.
//!
//! Applying a [`Batch`] runs each command through [`Directory::apply`] under the
//! directory's write lock; the manager reads the same [`Directory`] through
//! [`StateMachine::directory`]. Nothing is written to disk on apply: the log is the
//! durable record, and openraft re-applies it after a restart.
//!
//! What is persisted is the snapshot: `build_snapshot` and `install_snapshot` store
//! its meta and its data (postcard of the directory, the last applied log id and the
//! last membership) as one record in the `snapshot` sled tree, replacing the
//! previous one, flush sled and then sync its files ([`SledFiles`]): sled's own
//! flush is no durability point. One record means a reader never pairs one snapshot's
//! meta with another's data. openraft builds snapshots in a separate task, so a
//! build that finishes after a newer snapshot was installed is not stored. Opening
//! restores the state from the stored snapshot, so a restart costs one decode plus
//! the log entries after the snapshot.
//!
//! Locks: the directory lock is taken before the applied-state lock, every time,
//! and neither is held across an `.await`. Because `apply` updates both under the
//! directory's write lock, a snapshot sees a directory and a last applied log id
//! that belong together. A poisoned lock is recovered, not propagated: `apply`
//! does not panic, so the data behind it is whole.
//!
//! A stored snapshot is sealed with a checksum ([`codec::encode_stored`]) and
//! every snapshot's directory, stored or sent by the leader, must keep the
//! directory's invariants ([`Directory::check`]): corrupted bytes are refused
//! with a storage error naming the data dir, never restored as another directory.

// openraft's traits fix the error type to `StorageError`; the helpers share it.
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, StorageError, StorageIOError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::sync::{blocking, SledFiles};
use super::{codec, Batch, BatchOutcome};
use crate::protocol::{Directory, SharedDirectory};
use crate::raft::TypeConfig;

/// Name of the sled tree holding the current snapshot.
const SNAPSHOT_TREE: &str = "snapshot";
/// Snapshot-tree key of the current snapshot: postcard of its (meta, data).
pub(super) const CURRENT_KEY: &str = "current-sealed";
/// Where versions before checksums kept the snapshot (plain postcard); read
/// when no sealed record exists, removed once a sealed one is stored.
pub(super) const LEGACY_CURRENT_KEY: &str = "current";

type NodeId = u64;
type Meta = SnapshotMeta<NodeId, BasicNode>;
type Membership = StoredMembership<NodeId, BasicNode>;
type StorageResult<T> = Result<T, StorageError<NodeId>>;
type DynError = dyn std::error::Error + 'static;

/// Where the state machine stands in the log.
#[derive(Debug, Clone, Default)]
struct AppliedState {
    last_applied: Option<LogId<NodeId>>,
    membership: Membership,
}

/// Why a snapshot is being stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Store {
    /// This node built it; an older one than the stored snapshot is dropped.
    Built,
    /// The leader sent it; it always replaces the stored snapshot.
    Installed,
}

/// The content of a snapshot's data.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotState {
    directory: Directory,
    last_applied: Option<LogId<NodeId>>,
    membership: Membership,
}

/// The CM's replicated directory as an openraft state machine; clones share state.
#[derive(Debug, Clone)]
pub struct StateMachine {
    directory: SharedDirectory,
    applied: Arc<Mutex<AppliedState>>,
    snapshots: sled::Tree,
    /// The meta of the stored snapshot, if one is stored.
    stored: Arc<Mutex<Option<Meta>>>,
    built: Arc<AtomicU64>,
    sled_files: SledFiles,
    /// The data dir, named in every error.
    dir: Arc<str>,
}

impl StateMachine {
    /// Opens the snapshot tree of `db` (whose files are `sled_files`, in data dir
    /// `dir`) and restores the state from its snapshot.
    pub(super) fn new(db: &sled::Db, sled_files: SledFiles, dir: &std::path::Path) -> StorageResult<Self> {
        let snapshots = db.open_tree(SNAPSHOT_TREE).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        let sm = StateMachine {
            directory: SharedDirectory::default(),
            applied: Arc::default(),
            snapshots,
            stored: Arc::default(),
            built: Arc::default(),
            sled_files,
            dir: dir.display().to_string().into(),
        };
        if let Some((meta, data)) = sm.load_snapshot()? {
            sm.restore(sm.decode_state(&meta, &data)?);
            *sm.stored.lock().unwrap_or_else(PoisonError::into_inner) = Some(meta);
        }
        Ok(sm)
    }

    /// The last log id the state covers (after opening: the snapshot's).
    pub(super) fn last_applied(&self) -> Option<LogId<NodeId>> {
        self.applied().last_applied
    }

    /// The directory, for the manager to read; never hold its lock across an await.
    pub fn directory(&self) -> SharedDirectory {
        Arc::clone(&self.directory)
    }

    fn write_directory(&self) -> RwLockWriteGuard<'_, Directory> {
        self.directory.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn read_directory(&self) -> RwLockReadGuard<'_, Directory> {
        self.directory.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn applied(&self) -> MutexGuard<'_, AppliedState> {
        self.applied.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies `entries` in order under the directory's write lock.
    fn apply_all(&self, entries: impl Iterator<Item = Entry<TypeConfig>>) -> Vec<BatchOutcome> {
        let mut dir = self.write_directory();
        let mut applied = self.applied();
        entries.map(|entry| apply_entry(&mut dir, &mut applied, entry)).collect()
    }

    /// A consistent copy of the whole state.
    fn capture(&self) -> SnapshotState {
        let dir = self.read_directory();
        let applied = self.applied().clone();
        SnapshotState { directory: dir.clone(), last_applied: applied.last_applied, membership: applied.membership }
    }

    /// Replaces the whole state with `state`.
    fn restore(&self, state: SnapshotState) {
        let mut dir = self.write_directory();
        let mut applied = self.applied();
        *dir = state.directory;
        *applied = AppliedState { last_applied: state.last_applied, membership: state.membership };
    }

    /// The stored snapshot's meta and data, if a snapshot was ever stored.
    fn load_snapshot(&self) -> StorageResult<Option<(Meta, Vec<u8>)>> {
        let read_err = |e: &DynError| StorageIOError::read_snapshot(None, self.source(e));
        if let Some(bytes) = self.snapshots.get(CURRENT_KEY).map_err(|e| read_err(&e))? {
            return Ok(Some(codec::decode_stored(&bytes).map_err(|e| read_err(&e))?));
        }
        let Some(bytes) = self.snapshots.get(LEGACY_CURRENT_KEY).map_err(|e| read_err(&e))? else {
            return Ok(None);
        };
        Ok(Some(codec::decode(&bytes).map_err(|e| read_err(&e))?))
    }

    /// `e`, as the source of a storage error, with the data dir named.
    fn source(&self, e: &DynError) -> AnyError {
        let dir = self.dir.clone();
        AnyError::from_dyn(e, None).add_context(move || format!("in data dir {dir}"))
    }

    /// Decodes a snapshot's data and checks its directory's invariants.
    fn decode_state(&self, meta: &Meta, data: &[u8]) -> StorageResult<SnapshotState> {
        let read_err = |e: &DynError| StorageIOError::read_snapshot(Some(meta.signature()), self.source(e));
        let state: SnapshotState = codec::decode(data).map_err(|e| read_err(&e))?;
        state.directory.check().map_err(|why| read_err(&CorruptDirectory(why)))?;
        Ok(state)
    }

    /// Stores `meta` and `data` as the one current snapshot and makes it durable.
    ///
    /// A built snapshot older than the stored one is not stored: a build runs in
    /// its own task and may finish after a newer snapshot was installed.
    async fn store_snapshot(&self, meta: &Meta, data: &[u8], kind: Store) -> StorageResult<()> {
        let write_err = |e: &DynError| StorageIOError::write_snapshot(Some(meta.signature()), self.source(e));
        let record = codec::encode_stored(&(meta, data)).map_err(|e| write_err(&e))?;
        {
            let mut stored = self.stored.lock().unwrap_or_else(PoisonError::into_inner);
            let newer_stored = stored.as_ref().is_some_and(|s| s.last_log_id > meta.last_log_id);
            if kind == Store::Built && newer_stored {
                return Ok(());
            }
            self.snapshots.insert(CURRENT_KEY, record).map_err(|e| write_err(&e))?;
            self.snapshots.remove(LEGACY_CURRENT_KEY).map_err(|e| write_err(&e))?;
            *stored = Some(meta.clone());
        }
        self.snapshots.flush_async().await.map_err(|e| write_err(&e))?;
        let files = self.sled_files.clone();
        blocking(move || files.sync()).await.map_err(|e| write_err(&e))?;
        Ok(())
    }

    /// A fresh snapshot id: the last applied term and index plus a build counter.
    fn next_snapshot_id(&self, last_applied: Option<LogId<NodeId>>) -> String {
        let n = self.built.fetch_add(1, Ordering::Relaxed) + 1;
        match last_applied {
            Some(id) => format!("{}-{}-{n}", id.leader_id.term, id.index),
            None => format!("empty-{n}"),
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let state = self.capture();
        let meta = Meta {
            last_log_id: state.last_applied,
            last_membership: state.membership.clone(),
            snapshot_id: self.next_snapshot_id(state.last_applied),
        };
        let data = codec::encode(&state).map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        self.store_snapshot(&meta, &data, Store::Built).await?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId<NodeId>>, Membership)> {
        let applied = self.applied();
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<BatchOutcome>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        Ok(self.apply_all(entries.into_iter()))
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(&mut self, meta: &Meta, snapshot: Box<Cursor<Vec<u8>>>) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let state = self.decode_state(meta, &data)?;
        self.store_snapshot(meta, &data, Store::Installed).await?;
        self.restore(state);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        Ok(self.load_snapshot()?.map(|(meta, data)| Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}

/// Applies one log entry: records its log id, then runs its payload.
fn apply_entry(dir: &mut Directory, applied: &mut AppliedState, entry: Entry<TypeConfig>) -> BatchOutcome {
    applied.last_applied = Some(entry.log_id);
    match entry.payload {
        EntryPayload::Blank => BatchOutcome(Vec::new()),
        EntryPayload::Normal(Batch(cmds)) => BatchOutcome(cmds.iter().map(|cmd| dir.apply(cmd)).collect()),
        EntryPayload::Membership(membership) => {
            applied.membership = StoredMembership::new(Some(entry.log_id), membership);
            BatchOutcome(Vec::new())
        }
    }
}

/// A snapshot's directory that breaks an invariant: corrupt or forged.
#[derive(Debug, thiserror::Error)]
#[error("the snapshot's directory is corrupt: {0}")]
struct CorruptDirectory(String);
