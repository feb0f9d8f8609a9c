//! Storage tests: openraft's conformance suite, restarts from disk, the log
//! file's recovery rules, compaction, the move out of sled, and the sync count.

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

/// Opens the store in `dir`, waiting (bounded) while the directory's lock is
/// held: every test here reopens a dir right after dropping its store, and
/// sled's background threads let go of the lock a moment after the last handle.
/// Shadows the store's `open`; the in-use test calls `super::open` directly.
fn open(dir: &std::path::Path, policy: SyncPolicy) -> Result<Store, crate::error::Error> {
    for _ in 0..500 {
        match super::open(dir, policy) {
            Err(crate::error::Error::DataDirInUse { .. }) => std::thread::sleep(std::time::Duration::from_millis(10)),
            other => return other,
        }
    }
    panic!("{} stayed locked for 5 s after its store was dropped", dir.display());
}

/// Builds each suite case a store in a fresh temp dir, removed on drop.
struct TempDirBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for TempDirBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = TempDir::new().map_err(|e| StorageIOError::write(&e))?;
        let store = open(dir.path(), SyncPolicy::Sync).map_err(|e| StorageIOError::write(&e))?;
        Ok((dir, store.log, store.state_machine))
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
    let mut sm = open(dir.path(), SyncPolicy::Sync).unwrap().state_machine;
    let blank = Entry { log_id: log_id(1, 1), payload: EntryPayload::Blank };
    let outcomes = sm.apply([blank, register(2), register(3)]).await.unwrap();
    assert_eq!(outcomes[0], BatchOutcome(vec![]));
    assert_eq!(outcomes[2], BatchOutcome(vec![Applied::Registered { client: 2 }]));
    assert_eq!(sm.directory().read().unwrap().client_count(), 2);
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1, 3)));
}

#[tokio::test]
async fn a_restarted_leader_gets_its_own_vote_back_uncommitted() {
    let dir = TempDir::new().unwrap();
    {
        let mut log = open(dir.path(), SyncPolicy::Sync).unwrap().log;
        log.save_vote(&Vote::new_committed(4, 2)).await.unwrap();
    }
    let mut log = open(dir.path(), SyncPolicy::Sync).unwrap().log;
    assert!(!log.restart_as_follower(3), "another node's leadership stays committed");
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new_committed(4, 2)));
    assert!(log.restart_as_follower(2));
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(4, 2)), "same term, still for itself");
    drop(log);
    let mut log = open(dir.path(), SyncPolicy::Sync).unwrap().log;
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new_committed(4, 2)), "the file is unchanged");
}

#[tokio::test]
async fn state_survives_reopen() {
    let dir = TempDir::new().unwrap();
    let vote = Vote::new_committed(1, 1);
    {
        let Store { mut log, state_machine: mut sm, .. } = open(dir.path(), SyncPolicy::Sync).unwrap();
        log.save_vote(&vote).await.unwrap();
        let entries: Vec<_> = (1..=4).map(register).collect();
        log.blocking_append(entries.clone()).await.unwrap();
        sm.apply(entries.into_iter().take(3)).await.unwrap();
        sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        sm.apply([register(4)]).await.unwrap();
    }
    let Store { mut log, state_machine: mut sm, .. } = open(dir.path(), SyncPolicy::Sync).unwrap();
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
        let mut log = voted_log(&dir).await;
        log.blocking_append((1..=6).map(register)).await.unwrap();
        log.purge(log_id(1, 2)).await.unwrap();
        log.truncate(log_id(1, 5)).await.unwrap();
    }
    let mut log = open(dir.path(), SyncPolicy::Sync).unwrap().log;
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 2)));
    assert_eq!(state.last_log_id, Some(log_id(1, 4)));
    let indexes: Vec<u64> = log.try_get_log_entries(..).await.unwrap().iter().map(|e| e.log_id.index).collect();
    assert_eq!(indexes, vec![3, 4]);
}

#[test]
fn second_open_says_the_data_dir_is_in_use() {
    let dir = TempDir::new().unwrap();
    let _first = open(dir.path(), SyncPolicy::Sync).unwrap();
    let err = super::open(dir.path(), SyncPolicy::Sync).expect_err("second open must fail");
    let msg = err.to_string();
    assert!(msg.contains("in use"), "{msg}");
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
}

/// A fresh log in `dir` that has voted in term 1, as a node does before it takes
/// entries of term 1.
async fn voted_log(dir: &TempDir) -> LogStore {
    let mut log = open(dir.path(), SyncPolicy::Sync).unwrap().log;
    log.save_vote(&Vote::new_committed(1, 1)).await.unwrap();
    log
}

fn wal_path(dir: &TempDir) -> std::path::PathBuf {
    dir.path().join(wal::WAL_FILE)
}

async fn indexes(log: &mut LogStore) -> Vec<u64> {
    log.try_get_log_entries(..).await.unwrap().iter().map(|e| e.log_id.index).collect()
}

#[tokio::test]
async fn one_sync_per_append_and_per_vote_none_for_committed_or_purge() {
    let dir = TempDir::new().unwrap();
    let Store { mut log, syncs, .. } = open(dir.path(), SyncPolicy::Sync).unwrap();
    let at_open = syncs.get();
    assert!(at_open > 0, "opening syncs the new files and their directory");
    log.blocking_append((1..=5).map(register)).await.unwrap();
    assert_eq!(syncs.get(), at_open + 1, "five entries in one append: one sync");
    log.save_vote(&Vote::new(2, 1)).await.unwrap();
    assert_eq!(syncs.get(), at_open + 2);
    log.save_committed(Some(log_id(1, 3))).await.unwrap();
    log.purge(log_id(1, 2)).await.unwrap();
    assert_eq!(syncs.get(), at_open + 2, "committed and purge are not synced");
    log.truncate(log_id(1, 5)).await.unwrap();
    assert_eq!(syncs.get(), at_open + 3);
}

#[tokio::test]
async fn a_record_without_sync_waits_for_the_next_synced_write() {
    let dir = TempDir::new().unwrap();
    {
        let mut log = voted_log(&dir).await;
        log.blocking_append((1..=4).map(register)).await.unwrap();
        let before = std::fs::metadata(wal_path(&dir)).unwrap().len();
        log.save_committed(Some(log_id(1, 3))).await.unwrap();
        log.purge(log_id(1, 1)).await.unwrap();
        assert_eq!(std::fs::metadata(wal_path(&dir)).unwrap().len(), before, "no IO of their own");
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 3)), "in memory at once");
        log.blocking_append([register(5)]).await.unwrap();
    }
    let mut log = open(dir.path(), SyncPolicy::Sync).unwrap().log;
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 3)));
    assert_eq!(log.get_log_state().await.unwrap().last_purged_log_id, Some(log_id(1, 1)));
    assert_eq!(indexes(&mut log).await, (2..=5).collect::<Vec<_>>());
}

#[tokio::test]
async fn skipping_syncs_syncs_nothing_but_still_writes() {
    let dir = TempDir::new().unwrap();
    {
        let Store { mut log, syncs, .. } = open(dir.path(), SyncPolicy::UnsafeSkip).unwrap();
        log.blocking_append((1..=3).map(register)).await.unwrap();
        log.save_vote(&Vote::new(1, 1)).await.unwrap();
        assert_eq!(syncs.get(), 0);
    }
    let mut log = open(dir.path(), SyncPolicy::Sync).unwrap().log;
    assert_eq!(indexes(&mut log).await, vec![1, 2, 3], "the process kept its writes; only a power cut loses them");
}

#[tokio::test]
async fn a_snapshot_is_synced_before_it_is_reported_stored() {
    let dir = TempDir::new().unwrap();
    let Store { mut state_machine, syncs, .. } = open(dir.path(), SyncPolicy::Sync).unwrap();
    state_machine.apply([register(1)]).await.unwrap();
    let before = syncs.get();
    state_machine.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert!(syncs.get() > before, "building a snapshot syncs sled's files");
}

#[tokio::test]
async fn an_unsynced_tail_is_cut_and_what_precedes_it_kept() {
    let dir = TempDir::new().unwrap();
    {
        let mut log = voted_log(&dir).await;
        log.blocking_append((1..=3).map(register)).await.unwrap();
        log.blocking_append([register(4)]).await.unwrap();
    }
    // A torn last frame: its first bytes reached the disk, the rest did not
    // (the zeros grown ahead of the log are still there after it).
    let mut bytes = std::fs::read(wal_path(&dir)).unwrap();
    let end = wal::Wal::end_of_frames(&bytes);
    assert!(bytes.len() > end, "the file is grown ahead of the log");
    let frame4 = wal::frame(&wal::Record::Entries(vec![register(4)])).unwrap();
    bytes[end - frame4.len() / 2..end].fill(0);
    std::fs::write(wal_path(&dir), &bytes).unwrap();
    let mut log = open(dir.path(), SyncPolicy::Sync).unwrap().log;
    assert_eq!(indexes(&mut log).await, vec![1, 2, 3]);
    assert_eq!(std::fs::metadata(wal_path(&dir)).unwrap().len(), (end - frame4.len()) as u64);
    // The log goes on from the cut.
    log.blocking_append([register(4)]).await.unwrap();
    drop(log);
    let mut log = open(dir.path(), SyncPolicy::Sync).unwrap().log;
    assert_eq!(indexes(&mut log).await, vec![1, 2, 3, 4]);
}

#[tokio::test]
async fn the_file_grows_ahead_of_the_log_and_a_reopen_keeps_the_zeros() {
    let dir = TempDir::new().unwrap();
    let grown = {
        let mut log = voted_log(&dir).await;
        let grown = std::fs::metadata(wal_path(&dir)).unwrap().len();
        assert_eq!(grown, log.wal().len() + wal::PREALLOCATE, "the vote's write grew the file by a step of zeros");
        log.blocking_append([register(1)]).await.unwrap();
        log.blocking_append([register(2)]).await.unwrap();
        assert_eq!(std::fs::metadata(wal_path(&dir)).unwrap().len(), grown, "appends inside the zeros");
        grown
    };
    let mut log = open(dir.path(), SyncPolicy::Sync).unwrap().log;
    assert_eq!(indexes(&mut log).await, vec![1, 2]);
    assert_eq!(std::fs::metadata(wal_path(&dir)).unwrap().len(), grown, "the zeros are not a tail to cut");
    // Enough appends to run past the zeros: the file grows by another step.
    let mut next = 3;
    while std::fs::metadata(wal_path(&dir)).unwrap().len() == grown {
        log.blocking_append((next..next + 500).map(register)).await.unwrap();
        next += 500;
    }
    drop(log);
    let mut log = open(dir.path(), SyncPolicy::Sync).unwrap().log;
    assert_eq!(indexes(&mut log).await, (1..next).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_group_torn_before_its_header_is_a_tail_not_corruption() {
    let dir = TempDir::new().unwrap();
    {
        let mut log = voted_log(&dir).await;
        log.blocking_append([register(1)]).await.unwrap();
        log.save_committed(Some(log_id(1, 1))).await.unwrap();
        // The queued committed id and entry 2: one group frame, one sync.
        log.blocking_append([register(2)]).await.unwrap();
    }
    let mut bytes = std::fs::read(wal_path(&dir)).unwrap();
    let end = wal::Wal::end_of_frames(&bytes);
    let entry2 = wal::frame(&wal::Record::Entries(vec![register(2)])).unwrap();
    // The group's header never reached the disk; its records did.
    let committed = wal::frame(&wal::Record::<()>::Committed(Some(log_id(1, 1)))).unwrap();
    // A group holds each record as its length and payload: as long as the two frames.
    let header = end - entry2.len() - committed.len();
    bytes[header..header + 8].fill(0);
    std::fs::write(wal_path(&dir), &bytes).unwrap();
    let mut log = open(dir.path(), SyncPolicy::Sync).unwrap().log;
    assert_eq!(indexes(&mut log).await, vec![1]);
    assert_eq!(log.read_committed().await.unwrap(), None);
    assert_eq!(std::fs::metadata(wal_path(&dir)).unwrap().len(), header as u64, "the torn group was cut");
}

#[tokio::test]
async fn a_checksum_failure_ends_the_log() {
    let dir = TempDir::new().unwrap();
    {
        let mut log = voted_log(&dir).await;
        log.blocking_append([register(1)]).await.unwrap();
        log.blocking_append([register(2)]).await.unwrap();
    }
    let mut bytes = std::fs::read(wal_path(&dir)).unwrap();
    let last = wal::Wal::end_of_frames(&bytes) - 1;
    bytes[last] ^= 0xff;
    std::fs::write(wal_path(&dir), &bytes).unwrap();
    let mut log = open(dir.path(), SyncPolicy::Sync).unwrap().log;
    assert_eq!(indexes(&mut log).await, vec![1]);
}

#[tokio::test]
async fn a_damaged_record_before_valid_ones_is_corruption_not_a_tail() {
    let dir = TempDir::new().unwrap();
    {
        let mut log = voted_log(&dir).await;
        log.blocking_append([register(1)]).await.unwrap();
        log.blocking_append([register(2)]).await.unwrap();
        log.blocking_append([register(3)]).await.unwrap();
    }
    // A bit flipped inside entry 2's frame, synced long ago: entry 3 follows it.
    let mut bytes = std::fs::read(wal_path(&dir)).unwrap();
    let frame3 = wal::frame(&wal::Record::Entries(vec![register(3)])).unwrap();
    let inside_frame2 = wal::Wal::end_of_frames(&bytes) - frame3.len() - 3;
    bytes[inside_frame2] ^= 0xff;
    std::fs::write(wal_path(&dir), &bytes).unwrap();
    let Err(err) = open(dir.path(), SyncPolicy::Sync) else { panic!("a corrupt log must be refused") };
    let msg = err.to_string();
    assert!(msg.contains("corrupt") && msg.contains("raft.wal"), "{msg}");
    assert_eq!(std::fs::read(wal_path(&dir)).unwrap(), bytes, "nothing was cut");
}

#[test]
fn a_record_that_checks_but_does_not_decode_is_an_error_not_a_cut() {
    let dir = TempDir::new().unwrap();
    drop(open(dir.path(), SyncPolicy::Sync).unwrap());
    let payload = [0xffu8; 5];
    let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&frame);
    crc.update(&payload);
    frame.extend(crc.finalize().to_le_bytes());
    frame.extend(payload);
    let mut bytes = std::fs::read(wal_path(&dir)).unwrap();
    bytes.extend(frame);
    std::fs::write(wal_path(&dir), &bytes).unwrap();
    let err = open(dir.path(), SyncPolicy::Sync).expect_err("an undecodable record must not be dropped");
    assert!(err.to_string().contains("does not decode"), "{err}");
    assert_eq!(std::fs::read(wal_path(&dir)).unwrap(), bytes, "nothing cut");
}

#[tokio::test]
async fn a_log_that_never_reached_the_disk_opens_empty_and_a_foreign_file_does_not_open() {
    let dir = TempDir::new().unwrap();
    drop(open(dir.path(), SyncPolicy::Sync).unwrap());
    for never_synced in [&b""[..], b"ivyw", &[0u8; 8]] {
        std::fs::write(wal_path(&dir), never_synced).unwrap();
        let mut log = open(dir.path(), SyncPolicy::Sync).unwrap().log;
        assert_eq!(log.get_log_state().await.unwrap().last_log_id, None);
        assert_eq!(log.read_vote().await.unwrap(), None);
    }
    std::fs::write(wal_path(&dir), b"not a raft log at all").unwrap();
    let err = open(dir.path(), SyncPolicy::Sync).expect_err("a foreign file");
    assert!(err.to_string().contains("not an ivy Raft log"), "{err}");
}

#[tokio::test]
async fn a_purge_that_leaves_the_file_mostly_dead_rewrites_it() {
    let dir = TempDir::new().unwrap();
    let vote = Vote::new_committed(3, 2);
    {
        let mut log = open(dir.path(), SyncPolicy::Sync).unwrap().log;
        log.wal().set_compact_after(0);
        log.save_vote(&vote).await.unwrap();
        for i in 1..=40 {
            log.blocking_append([register(i)]).await.unwrap();
        }
        log.save_committed(Some(log_id(1, 39))).await.unwrap();
        let before = log.wal().len();
        log.purge(log_id(1, 30)).await.unwrap();
        assert!(log.wal().len() < before / 2, "{} of {before} bytes left", log.wal().len());
        assert_eq!(std::fs::metadata(wal_path(&dir)).unwrap().len(), log.wal().len());
        log.blocking_append([register(41)]).await.unwrap();
    }
    assert!(!dir.path().join("raft.wal.tmp").exists());
    let mut log = open(dir.path(), SyncPolicy::Sync).unwrap().log;
    assert_eq!(indexes(&mut log).await, (31..=41).collect::<Vec<_>>());
    assert_eq!(log.read_vote().await.unwrap(), Some(vote));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 39)));
    assert_eq!(log.get_log_state().await.unwrap().last_purged_log_id, Some(log_id(1, 30)));
}

#[tokio::test]
async fn a_left_over_temp_file_is_removed_and_the_log_kept() {
    let dir = TempDir::new().unwrap();
    {
        let mut log = voted_log(&dir).await;
        log.blocking_append([register(1)]).await.unwrap();
    }
    std::fs::write(dir.path().join("raft.wal.tmp"), b"half a rewrite").unwrap();
    let mut log = open(dir.path(), SyncPolicy::Sync).unwrap().log;
    assert_eq!(indexes(&mut log).await, vec![1]);
    assert!(!dir.path().join("raft.wal.tmp").exists());
}

#[tokio::test]
async fn a_log_kept_in_sled_by_an_earlier_version_moves_into_the_file() {
    let dir = TempDir::new().unwrap();
    let vote = Vote::new_committed(2, 3);
    {
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let mut old = wal::LogState { vote: Some(vote), committed: Some(log_id(1, 2)), ..Default::default() };
        old.entries.extend((1..=3).map(|i| (i, register(i))));
        legacy::write_old(&db, &old);
    }
    let mut log = open(dir.path(), SyncPolicy::Sync).unwrap().log;
    assert_eq!(indexes(&mut log).await, vec![1, 2, 3]);
    assert_eq!(log.read_vote().await.unwrap(), Some(vote));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 2)));
    drop(log);
    let db = sled_again(dir.path());
    let names: Vec<String> = db.tree_names().iter().map(|n| String::from_utf8_lossy(n).into_owned()).collect();
    assert!(!names.iter().any(|n| n.starts_with("raft_")), "old trees dropped: {names:?}");
}

#[tokio::test]
async fn a_vote_older_than_the_log_refuses_to_open() {
    let dir = TempDir::new().unwrap();
    {
        let mut log = open(dir.path(), SyncPolicy::Sync).unwrap().log;
        log.blocking_append((1..=2).map(register)).await.unwrap();
    }
    let err = open(dir.path(), SyncPolicy::Sync).expect_err("entries of term 1 with no vote");
    let msg = err.to_string();
    assert!(msg.contains("older than the log") && msg.contains("refusing to start"), "{msg}");
}

#[tokio::test]
async fn a_snapshot_newer_than_the_vote_refuses_to_open() {
    let dir = TempDir::new().unwrap();
    {
        let mut sm = open(dir.path(), SyncPolicy::Sync).unwrap().state_machine;
        sm.apply([register(1)]).await.unwrap();
        sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    }
    let err = open(dir.path(), SyncPolicy::Sync).expect_err("a snapshot of term 1 with no vote");
    assert!(err.to_string().contains("term 1, index 1"), "{err}");
}

/// Opens the sled database in `dir` directly, once the store that had it has
/// let go of its lock (sled releases it from its own threads, a moment later).
fn sled_again(dir: &std::path::Path) -> sled::Db {
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match sled::open(dir) {
            Ok(db) => return db,
            Err(err) if std::time::Instant::now() > give_up => panic!("sled stays locked: {err}"),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
}

/// Flips the last byte of the record under `key` in sled tree `tree` of `dir`.
fn corrupt(dir: &std::path::Path, tree: &str, key: &[u8]) {
    let db = sled_again(dir);
    let t = db.open_tree(tree).unwrap();
    let mut record = t.get(key).unwrap().expect("a record to corrupt").to_vec();
    let last = record.len() - 1;
    record[last] ^= 0x5a;
    t.insert(key, record).unwrap();
    db.flush().unwrap();
}

#[tokio::test]
async fn a_corrupted_snapshot_refuses_to_open_naming_the_data_dir() {
    let dir = TempDir::new().unwrap();
    {
        let mut sm = open(dir.path(), SyncPolicy::Sync).unwrap().state_machine;
        sm.apply((1..=3).map(register)).await.unwrap();
        sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    }
    corrupt(dir.path(), "snapshot", state_machine::CURRENT_KEY.as_bytes());
    let err = open(dir.path(), SyncPolicy::Sync).expect_err("a corrupt snapshot must not restore");
    let msg = err.to_string();
    assert!(matches!(err, crate::Error::Storage(_)), "{msg}");
    assert!(msg.contains(&dir.path().display().to_string()) && msg.contains("checksum"), "{msg}");
}

#[tokio::test]
async fn a_snapshot_stored_by_an_earlier_version_still_opens() {
    let dir = TempDir::new().unwrap();
    let record = {
        let Store { mut log, state_machine: mut sm, .. } = open(dir.path(), SyncPolicy::Sync).unwrap();
        log.save_vote(&Vote::new_committed(1, 1)).await.unwrap();
        sm.apply((1..=3).map(register)).await.unwrap();
        let snapshot = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        codec::encode(&(&snapshot.meta, snapshot.snapshot.get_ref())).unwrap()
    };
    {
        // What an earlier version stored: the plain record under the old key.
        let db = sled_again(dir.path());
        let t = db.open_tree("snapshot").unwrap();
        t.remove(state_machine::CURRENT_KEY).unwrap();
        t.insert(state_machine::LEGACY_CURRENT_KEY, record).unwrap();
        db.flush().unwrap();
    }
    let sm = open(dir.path(), SyncPolicy::Sync).unwrap().state_machine;
    assert_eq!(sm.directory().read().unwrap().client_count(), 3);
}

mod properties {
    use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
    use proptest::prelude::*;

    use super::*;
    use crate::protocol::Directory;
    use crate::raft::store::codec::{decode, decode_stored, encode_stored};

    fn entry(n: u64, cmds: usize) -> Entry<TypeConfig> {
        let batch = (0..cmds as u64).map(|i| register(n * 10 + i)).flat_map(|e| match e.payload {
            EntryPayload::Normal(Batch(c)) => c,
            _ => Vec::new(),
        });
        Entry { log_id: log_id(n, n), payload: EntryPayload::Normal(Batch(batch.collect())) }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn a_changed_byte_or_a_cut_is_always_caught(n in 1u64..1000, cmds in 0usize..5, at in any::<prop::sample::Index>(),
                                                    flip in 1u8..=255, cut in any::<prop::sample::Index>()) {
            let record = encode_stored(&entry(n, cmds)).unwrap();
            let mut changed = record.clone();
            changed[at.index(record.len())] ^= flip;
            prop_assert!(decode_stored::<Entry<TypeConfig>>(&changed).is_err());
            let short = &record[..cut.index(record.len())];
            prop_assert!(decode_stored::<Entry<TypeConfig>>(short).is_err());
            prop_assert_eq!(decode_stored::<Entry<TypeConfig>>(&record).unwrap(), entry(n, cmds));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_stored::<Entry<TypeConfig>>(&bytes);
            let _ = decode_stored::<Vote<u64>>(&bytes);
            let _ = decode::<AppendEntriesRequest<TypeConfig>>(&bytes);
            let _ = decode::<VoteRequest<u64>>(&bytes);
            let _ = decode::<InstallSnapshotRequest<TypeConfig>>(&bytes);
            if let Ok(dir) = decode::<Directory>(&bytes) {
                let _ = dir.check();
            }
        }
    }
}
