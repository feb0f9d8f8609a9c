//! lazyfs: a FUSE filesystem for power-loss tests, after Jepsen's LazyFS.
//!
//! [`LazyFs::mount`] shows a *backing directory* at a *mountpoint*; the
//! processes under test keep their data dirs under the mountpoint, and
//! [`LazyFsHandle::power_cut`] then loses power: every byte written but not
//! synced disappears.
//!
//! What it promises (the power-loss test depends on each point):
//!
//! - **File data is cached.** `write`, `truncate` and `fallocate` change only an
//!   in-memory cache per file over the backing file (`cache`). Every process
//!   reads the cached contents; the backing file is untouched.
//! - **Only `fsync`/`fdatasync` make data durable.** They write that file's
//!   cached changes to the backing file (and sync it, unless
//!   [`LazyFsOptions::sync_backing`] is off). Files opened `O_SYNC`/`O_DSYNC`
//!   are persisted on every write.
//! - **Nothing else does.** `close` and `sync_file_range` are no durability
//!   points: files are opened with `FOPEN_DIRECT_IO`, so there is no kernel page
//!   cache for `sync_file_range` to write back, and the kernel sends no fsync for
//!   it. This is what exposes sled 0.34's flush, which only calls
//!   `sync_file_range`.
//! - **A power cut** drops every file's cache, so each file is back to its
//!   contents and length at its last sync (a file created and never synced is
//!   empty). All unsynced data goes, never a random part of it (no torn writes).
//!   Kill the processes using the mount first; the kernel's cached attributes of
//!   the files affected are invalidated.
//! - **Names are durable at once.** `create`, `mkdir`, `unlink`, `rmdir`,
//!   `rename` and `symlink` go straight to the backing directory, as in LazyFS,
//!   which caches only data: a `rename` over an old file without a sync of the
//!   new one's data leaves an empty file after a cut. `fsyncdir` is accepted
//!   (and syncs the backing directory).
//! - **Locks** stay in the kernel: `flock`/`fcntl` locks work on the FUSE
//!   inode (sled's lock on its data dir works), and a lock held by a killed
//!   process is released when it dies.
//! - **Not supported:** hard links (`EPERM`), device nodes, fifos, xattrs,
//!   per-call `RWF_DSYNC`, shared writable mmap (direct IO), and changes made to
//!   the backing directory behind the mount's back.
//!
//! Mounting needs Linux, `/dev/fuse` and root (which calls mount(2) directly)
//! or a setuid `fusermount3`; [`fuse_available`] says whether this machine can,
//! and why not, so a test can skip with a clear message.
//!
//! Layout: `cache` (one file's cached changes), `table` (inodes, open files,
//! counters, power cut), `ops` and `fs` (the FUSE requests), `mount`
//! (mounting, unmounting, the probe).

mod cache;
mod fs;
mod mount;
mod ops;
mod table;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use fuser::{BackgroundSession, Config, INodeNo, MountOption, Notifier, Session, SessionACL};

pub use mount::fuse_available;

use ops::LazyFsImpl;
use table::Shared;

/// The `fsname` a lazyfs is mounted with (the source column of
/// `/proc/self/mountinfo`), by which stale mounts of ours are recognised.
pub const FS_NAME: &str = "lazyfs";

/// Mount options; [`Default`] is what [`LazyFs::mount`] uses.
#[derive(Debug, Clone)]
pub struct LazyFsOptions {
    /// FUSE worker threads.
    pub threads: usize,
    /// Whether a sync also syncs the backing file; off is faster, and the
    /// simulated power cut is the same either way.
    pub sync_backing: bool,
    /// Mount with `allow_other`, so other users may use the mount.
    pub allow_other: bool,
    /// How long unmount retries a busy mount before forcing it.
    pub unmount_grace: Duration,
}

impl Default for LazyFsOptions {
    /// Two threads, backing files synced, owner only, two seconds of grace.
    fn default() -> Self {
        LazyFsOptions { threads: 2, sync_backing: true, allow_other: false, unmount_grace: Duration::from_secs(2) }
    }
}

/// Counters of a mount, as [`LazyFsHandle::stats`] returns them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LazyFsStats {
    /// FUSE write requests.
    pub writes: u64,
    /// Bytes the write requests carried.
    pub bytes_written: u64,
    /// FUSE read requests.
    pub reads: u64,
    /// `fsync` calls on files.
    pub fsyncs: u64,
    /// `fdatasync` calls on files.
    pub fdatasyncs: u64,
    /// `fsync` calls on directories.
    pub fsyncdirs: u64,
    /// FUSE flush requests (one per `close`), which persist nothing.
    pub flushes: u64,
    /// Cached bytes written to backing files by syncs.
    pub bytes_persisted: u64,
    /// Power cuts so far.
    pub power_cuts: u64,
    /// Unsynced bytes the last power cut dropped.
    pub last_cut_bytes_dropped: u64,
    /// Files with unsynced changes at the last power cut.
    pub last_cut_files_dropped: u64,
    /// Unsynced bytes every power cut dropped.
    pub total_bytes_dropped: u64,
    /// Bytes cached and not yet synced.
    pub unsynced_bytes: u64,
    /// Files with unsynced changes.
    pub unsynced_files: u64,
    /// Backing-file IO errors returned to a sync.
    pub io_errors: u64,
}

/// What one [`LazyFsHandle::power_cut`] dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PowerCutReport {
    /// Unsynced bytes dropped.
    pub bytes_dropped: u64,
    /// Files that had unsynced changes (data or length).
    pub files_dropped: u64,
}

/// Mounts lazyfs filesystems.
#[derive(Debug, Clone, Copy)]
pub struct LazyFs;

/// A mounted lazyfs; unmounted by [`LazyFsHandle::unmount`] or on drop.
pub struct LazyFsHandle {
    shared: Arc<Shared>,
    session: Option<BackgroundSession>,
    notifier: Notifier,
    mountpoint: PathBuf,
    backing_dir: PathBuf,
    unmount_grace: Duration,
}

impl std::fmt::Debug for LazyFsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyFsHandle")
            .field("mountpoint", &self.mountpoint)
            .field("backing_dir", &self.backing_dir)
            .field("mounted", &self.session.is_some())
            .finish()
    }
}

impl LazyFs {
    /// Mounts `backing_dir` at `mountpoint` with default options; FUSE runs on
    /// background threads until the handle is unmounted or dropped. Both
    /// directories must exist and neither may contain the other.
    pub fn mount(backing_dir: &Path, mountpoint: &Path) -> Result<LazyFsHandle> {
        Self::mount_with(backing_dir, mountpoint, LazyFsOptions::default())
    }

    /// Mounts like [`LazyFs::mount`], with `opts`.
    pub fn mount_with(backing_dir: &Path, mountpoint: &Path, opts: LazyFsOptions) -> Result<LazyFsHandle> {
        let (backing, mp) = mount::check_paths(backing_dir, mountpoint)?;
        let grace = opts.unmount_grace;
        let mut config = Config::default();
        config.mount_options = vec![MountOption::FSName(FS_NAME.to_string()), MountOption::RW, MountOption::NoAtime];
        config.acl = if opts.allow_other { SessionACL::All } else { SessionACL::Owner };
        config.n_threads = Some(opts.threads.max(1));
        let shared = Arc::new(Shared::new(backing.clone(), opts).map_err(|e| anyhow!("{}: {e}", backing.display()))?);
        let mount_err = |e| anyhow!("mounting lazyfs at {} failed: {e}", mp.display());
        let session = Session::new(LazyFsImpl { shared: shared.clone() }, &mp, &config).map_err(mount_err)?;
        let notifier = session.notifier();
        let session = session.spawn().map_err(mount_err)?;
        Ok(LazyFsHandle {
            shared,
            session: Some(session),
            notifier,
            mountpoint: mp,
            backing_dir: backing,
            unmount_grace: grace,
        })
    }
}

impl LazyFsHandle {
    /// The mountpoint, absolute.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The backing directory, canonical.
    pub fn backing_dir(&self) -> &Path {
        &self.backing_dir
    }

    /// Loses power: drops every unsynced change of every file, so the mount
    /// holds only what was synced. Kill the processes using it first.
    pub fn power_cut(&self) -> PowerCutReport {
        let (report, inos) = self.shared.power_cut();
        for ino in inos {
            // The kernel's cached length and attributes are stale now.
            let _ = self.notifier.inval_inode(INodeNo(ino), 0, 0);
        }
        report
    }

    /// Persists every file's cached changes, as a clean `sync` would; returns
    /// the bytes written.
    pub fn persist_all(&self) -> Result<u64> {
        self.shared.persist_all().map_err(|e| anyhow!("lazyfs: persisting every file: {e}"))
    }

    /// The counters now.
    pub fn stats(&self) -> LazyFsStats {
        self.shared.stats()
    }

    /// Unmounts (unsynced data is dropped, as in a power cut) and waits for the
    /// FUSE threads, forcing the unmount if the mount is still busy after the
    /// grace period; returns the final counters.
    pub fn unmount(mut self) -> Result<LazyFsStats> {
        self.do_unmount()?;
        Ok(self.shared.stats())
    }

    fn do_unmount(&mut self) -> Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        mount::unmount(&self.mountpoint, self.unmount_grace, session)
    }
}

impl Drop for LazyFsHandle {
    fn drop(&mut self) {
        if let Err(err) = self.do_unmount() {
            tracing::warn!("{err:#}");
        }
    }
}

#[cfg(test)]
mod tests;
