//! Storage tests: openraft's conformance suite on sled, and restarts from disk.

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, RaftSnapshotBuilder, StorageError, StorageIOError,
    Vote,
};
use tempfile::TempDir;

use super::*;
use crate::protocol::Applied;
use crate::raft::TypeConfig;

/// Builds each suite case a store in a fresh temp dir, removed on drop.
struct TempDirBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for TempDirBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = TempDir::new().map_err(|e| StorageIOError::write(&e))?;
        let (log, sm) = open(dir.path()).map_err(|e| StorageIOError::write(&e))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_suite() {
    Suite::test_all(TempDirBuilder).expect("openraft storage suite");
}

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn register(index: u64) -> Entry<TypeConfig> {
    let cmd = DirCmd::Register { addr: format!("127.0.0.1:{}", 9000 + index), nonce: index };
    Entry { log_id: log_id(1, index), payload: EntryPayload::Normal(Batch(vec![cmd])) }
}

#[tokio::test]
async fn apply_returns_one_outcome_per_command() {
    let dir = TempDir::new().unwrap();
    let (_log, mut sm) = open(dir.path()).unwrap();
    let blank = Entry { log_id: log_id(1, 1), payload: EntryPayload::Blank };
    let outcomes = sm.apply([blank, register(2), register(3)]).await.unwrap();
    assert_eq!(outcomes[0], BatchOutcome(vec![]));
    assert_eq!(outcomes[2], BatchOutcome(vec![Applied::Registered { client: 2 }]));
    assert_eq!(sm.directory().read().unwrap().client_count(), 2);
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1, 3)));
}

#[tokio::test]
async fn state_survives_reopen() {
    let dir = TempDir::new().unwrap();
    let vote = Vote::new_committed(1, 1);
    {
        let (mut log, mut sm) = open(dir.path()).unwrap();
        log.save_vote(&vote).await.unwrap();
        let entries: Vec<_> = (1..=4).map(register).collect();
        log.blocking_append(entries.clone()).await.unwrap();
        sm.apply(entries.into_iter().take(3)).await.unwrap();
        sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        sm.apply([register(4)]).await.unwrap();
    }
    let (mut log, mut sm) = open(dir.path()).unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(vote));
    let entries = log.try_get_log_entries(1..=4).await.unwrap();
    assert_eq!(entries.len(), 4);
    assert_eq!(entries[3].log_id, log_id(1, 4));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(log_id(1, 4)));

    // The state machine comes back at the snapshot; openraft re-applies entry 4.
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1, 3)));
    let restored = sm.directory().read().unwrap().clone();
    assert_eq!(restored.client_count(), 3);
    assert_eq!(restored.client(3).unwrap().addr, "127.0.0.1:9003");
    let snapshot = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 3)));
}

#[tokio::test]
async fn purge_and_truncate_survive_reopen() {
    let dir = TempDir::new().unwrap();
    {
        let (mut log, _sm) = open(dir.path()).unwrap();
        log.blocking_append((1..=6).map(register)).await.unwrap();
        log.purge(log_id(1, 2)).await.unwrap();
        log.truncate(log_id(1, 5)).await.unwrap();
    }
    let (mut log, _sm) = open(dir.path()).unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 2)));
    assert_eq!(state.last_log_id, Some(log_id(1, 4)));
    let indexes: Vec<u64> = log.try_get_log_entries(..).await.unwrap().iter().map(|e| e.log_id.index).collect();
    assert_eq!(indexes, vec![3, 4]);
}

#[test]
fn second_open_says_the_data_dir_is_in_use() {
    let dir = TempDir::new().unwrap();
    let _first = open(dir.path()).unwrap();
    let err = open(dir.path()).expect_err("second open must fail");
    let msg = err.to_string();
    assert!(msg.contains("in use"), "{msg}");
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
}
