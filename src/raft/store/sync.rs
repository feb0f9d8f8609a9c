//! Making stored bytes durable: `fdatasync`/`fsync` behind one counter, and the
//! testing switch that skips them.
//!
//! Every sync the store makes goes through a [`Syncer`], which counts it in a
//! [`SyncCounter`] readable from outside (the node's status carries it, so
//! `ivy bench` can report syncs per commit) and in the `ivy_store_syncs_total`
//! metric. [`SledFiles`] makes sled's own
//! writes durable: sled 0.34's `flush` only calls `sync_file_range`, which pushes
//! dirty pages to the device but flushes neither its volatile write cache nor the
//! file's metadata, and it never syncs its blob files or directories at all.
//!
//! With [`SyncPolicy::UnsafeSkip`] nothing is synced (and nothing counted): the
//! broken build the power-loss test must catch.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// How the store makes its writes durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// `fdatasync`/`fsync` before anything written is acknowledged.
    #[default]
    Sync,
    /// Testing only: never sync, so a power cut can lose acknowledged writes.
    UnsafeSkip,
}

/// The number of syncs a store made since it was opened; clones share the count.
#[derive(Debug, Clone, Default)]
pub struct SyncCounter(Arc<AtomicU64>);

impl SyncCounter {
    /// Syncs made so far (file data syncs and directory syncs).
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Counts one sync here and in the node's metrics (`ivy_store_syncs_total`).
    fn bump(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
        crate::metrics::store_syncs(1);
    }
}

/// Syncs files and directories under one policy, counting each sync.
#[derive(Debug, Clone, Default)]
pub(super) struct Syncer {
    policy: SyncPolicy,
    count: SyncCounter,
}

impl Syncer {
    /// A syncer under `policy` with a fresh counter.
    pub(super) fn new(policy: SyncPolicy) -> Self {
        Syncer { policy, count: SyncCounter::default() }
    }

    /// The counter of this syncer's syncs.
    pub(super) fn counter(&self) -> SyncCounter {
        self.count.clone()
    }

    /// `fdatasync`: the file's bytes and its size reach stable storage.
    pub(super) fn data(&self, file: &File) -> io::Result<()> {
        self.sync(|| file.sync_data())
    }

    /// `fsync` of a directory: the names created, renamed or removed in it are durable.
    pub(super) fn dir(&self, path: &Path) -> io::Result<()> {
        self.sync(|| File::open(path)?.sync_all())
    }

    /// Runs `sync` unless the policy skips syncs, counts it and logs it if slow.
    fn sync(&self, sync: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        if self.policy == SyncPolicy::UnsafeSkip {
            return Ok(());
        }
        let started = std::time::Instant::now();
        sync()?;
        self.count.bump();
        slow_sync(started.elapsed());
        Ok(())
    }
}

/// A sync slower than this is logged: half the default leader lease, so a
/// stall long enough to cost an election or a commit timeout is on record.
pub const SLOW_SYNC: std::time::Duration = std::time::Duration::from_millis(100);

/// Logs a step of the log's IO (`what`: an append, a compaction) that took
/// `took` when it exceeds [`SLOW_SYNC`], syncs and all: its writes, the file's
/// creation and rename can stall too, and openraft waits for the step before it
/// does anything else, heartbeats included.
pub fn slow_log_io(what: &'static str, took: std::time::Duration) {
    if took >= SLOW_SYNC {
        let ms = took.as_millis() as u64;
        tracing::warn!(event = "slow_log_io", what, ms, "the log's {what} took {ms} ms");
    }
}

/// Logs a sync that took `took` when it exceeds [`SLOW_SYNC`] (a disk or file
/// system that stalls every node's commits at once shows up here first).
fn slow_sync(took: std::time::Duration) {
    if took >= SLOW_SYNC {
        tracing::warn!(event = "slow_sync", ms = took.as_millis() as u64, "a sync took {} ms", took.as_millis());
    }
}

/// sled's files in a data dir: the `db` log file, `conf` and the `blobs` folder.
#[derive(Debug, Clone)]
pub(super) struct SledFiles {
    dir: PathBuf,
    db: Arc<File>,
    synced_blobs: Arc<Mutex<BTreeSet<OsString>>>,
    syncer: Syncer,
}

impl SledFiles {
    /// sled's files in `dir`, made durable now, names included: the data dir may
    /// have just been created, and sled creates its files without syncing them.
    pub(super) fn open(dir: &Path, syncer: Syncer) -> io::Result<Self> {
        let db = Arc::new(File::open(dir.join("db"))?);
        let files = SledFiles { dir: dir.to_path_buf(), db, synced_blobs: Arc::default(), syncer };
        if let Ok(conf) = File::open(dir.join("conf")) {
            files.syncer.data(&conf)?;
        }
        files.sync()?;
        files.syncer.dir(dir)?;
        let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        files.syncer.dir(parent)?;
        Ok(files)
    }

    /// Makes everything sled has written durable; call after sled's own flush.
    ///
    /// Blocks: run it off the async runtime.
    pub(super) fn sync(&self) -> io::Result<()> {
        self.syncer.data(&self.db)?;
        self.sync_new_blobs()
    }

    /// Syncs each blob file not synced before, then the blob folder's names.
    ///
    /// sled writes a value too large for its log (a big snapshot) as a file of its
    /// own in `blobs/`, never synced; blob names are never reused.
    fn sync_new_blobs(&self) -> io::Result<()> {
        let blobs = self.dir.join("blobs");
        let mut synced = self.synced_blobs.lock().unwrap_or_else(PoisonError::into_inner);
        let mut present = BTreeSet::new();
        for entry in std::fs::read_dir(&blobs)? {
            let name = entry?.file_name();
            if !synced.contains(&name) {
                // A blob sled removed since the listing needs no sync.
                match File::open(blobs.join(&name)) {
                    Ok(blob) => self.syncer.data(&blob)?,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
            }
            present.insert(name);
        }
        let new = present.iter().any(|n| !synced.contains(n));
        *synced = present;
        if new {
            self.syncer.dir(&blobs)?;
        }
        Ok(())
    }
}

/// Runs blocking file IO on tokio's blocking pool.
pub(super) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| io::Error::other(format!("storage task failed: {e}")))?
}
