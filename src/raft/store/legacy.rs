//! Data dirs from before `raft.wal`: the log, the vote and the log pointers were
//! kept in the `raft_log` and `raft_meta` sled trees. Opening such a dir moves
//! them into a new `raft.wal` once (written whole, synced, then renamed into
//! place), and only then drops the old trees; a crash in between leaves the old
//! trees next to a complete log, and the next open drops them.

use std::path::Path;

use openraft::{Entry, LogId, Vote};
use serde::de::DeserializeOwned;

use super::codec;
use super::sync::{SledFiles, Syncer};
use super::wal::{self, LogState, WAL_FILE};
use crate::error::Error;
use crate::raft::TypeConfig;

/// The old tree of log entries, keyed by big-endian index.
const LOG_TREE: &str = "raft_log";
/// The old tree of the vote and the log pointers.
const META_TREE: &str = "raft_meta";

/// Moves a log kept in sled by an earlier version into `raft.wal` in `dir`.
pub(super) fn migrate(db: &sled::Db, dir: &Path, syncer: &Syncer, sled_files: &SledFiles) -> Result<(), Error> {
    let names = db.tree_names();
    if !names.iter().any(|n| n == LOG_TREE.as_bytes() || n == META_TREE.as_bytes()) {
        return Ok(());
    }
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        Error::Storage(format!("moving the Raft log of {} out of sled: {what}: {e}", dir.display()))
    };
    if !dir.join(WAL_FILE).exists() {
        let state = read(db).map_err(|e| failed("cannot read the old log", &e))?;
        let image = state.image().map_err(|e| failed("cannot encode", &e))?;
        wal::rewrite(dir, &image, syncer).map_err(|e| failed("cannot write the new log", &e))?;
        tracing::info!("moved the Raft log ({} entries) from sled into {}", state.entries.len(), WAL_FILE);
    }
    for tree in [LOG_TREE, META_TREE] {
        db.drop_tree(tree).map_err(|e| failed("cannot drop the old tree", &e))?;
    }
    db.flush().map_err(|e| failed("cannot flush sled", &e))?;
    sled_files.sync().map_err(|e| failed("cannot sync sled", &e))
}

/// The log state as the old trees hold it.
fn read(db: &sled::Db) -> Result<LogState, String> {
    let log = db.open_tree(LOG_TREE).map_err(|e| e.to_string())?;
    let meta = db.open_tree(META_TREE).map_err(|e| e.to_string())?;
    let mut state = LogState {
        vote: meta_value::<Vote<u64>>(&meta, "vote")?,
        committed: meta_value::<Option<LogId<u64>>>(&meta, "committed")?.flatten(),
        last_purged: meta_value::<LogId<u64>>(&meta, "last_purged")?,
        ..LogState::default()
    };
    for item in log.iter() {
        let (_, bytes) = item.map_err(|e| e.to_string())?;
        let entry: Entry<TypeConfig> = codec::decode(&bytes).map_err(|e| format!("a log entry: {e}"))?;
        state.entries.insert(entry.log_id.index, entry);
    }
    Ok(state)
}

fn meta_value<T: DeserializeOwned>(meta: &sled::Tree, key: &str) -> Result<Option<T>, String> {
    let Some(bytes) = meta.get(key).map_err(|e| e.to_string())? else { return Ok(None) };
    codec::decode(&bytes).map(Some).map_err(|e| format!("{key}: {e}"))
}

/// Writes a log into the old trees, as an earlier version did (tests).
#[cfg(test)]
pub(super) fn write_old(db: &sled::Db, state: &LogState) {
    let log = db.open_tree(LOG_TREE).unwrap();
    let meta = db.open_tree(META_TREE).unwrap();
    for (index, entry) in &state.entries {
        log.insert(index.to_be_bytes(), codec::encode(entry).unwrap()).unwrap();
    }
    if let Some(vote) = &state.vote {
        meta.insert("vote", codec::encode(vote).unwrap()).unwrap();
    }
    meta.insert("committed", codec::encode(&state.committed).unwrap()).unwrap();
    db.flush().unwrap();
}
