//! The inode table and the state every FUSE worker shares: the backing path of
//! each inode, each regular file's open backing file and [`FileCache`], the
//! counters, and the whole-filesystem operations (power cut, persist all).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{Errno, FileAttr, FileHandle, FileType, INodeNo};

use super::cache::FileCache;
use super::{LazyFsOptions, LazyFsStats, PowerCutReport};

/// Entry/attribute cache timeout given to the kernel. Zero so that sizes are
/// always asked from us (they change behind the kernel's back at a power cut).
pub(super) const TTL: Duration = Duration::ZERO;
/// The inode of the mount's root.
pub(super) const ROOT: u64 = 1;

/// Locks `m`, recovering it if a handler panicked while holding it.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in one handler must not wedge the whole filesystem.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The errno of an IO error (EIO when it has none).
pub(super) fn errno(e: &io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Counters behind [`LazyFsStats`].
#[derive(Default)]
pub(super) struct Counters {
    pub(super) writes: AtomicU64,
    pub(super) bytes_written: AtomicU64,
    pub(super) reads: AtomicU64,
    pub(super) fsyncs: AtomicU64,
    pub(super) fdatasyncs: AtomicU64,
    pub(super) fsyncdirs: AtomicU64,
    pub(super) flushes: AtomicU64,
    pub(super) bytes_persisted: AtomicU64,
    pub(super) power_cuts: AtomicU64,
    pub(super) last_cut_bytes: AtomicU64,
    pub(super) last_cut_files: AtomicU64,
    pub(super) total_dropped: AtomicU64,
    pub(super) io_errors: AtomicU64,
}

/// Adds `n` to a counter.
pub(super) fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// An open backing file and the cache layered over it.
pub(super) struct OpenFile {
    pub(super) file: File,
    pub(super) cache: FileCache,
}

/// Per regular file: the backing fd is opened lazily and then kept for the
/// life of the mount (so data of unlinked-but-open files stays readable).
#[derive(Default)]
pub(super) struct FileNode {
    pub(super) state: Mutex<Option<OpenFile>>,
}

/// One inode: where it sits in the namespace, and its file state.
pub(super) struct Node {
    pub(super) parent: u64,
    pub(super) name: OsString,
    pub(super) kind: FileType,
    /// Removed from the namespace (unlink/rmdir/renamed over).
    pub(super) unlinked: bool,
    pub(super) file: Option<Arc<FileNode>>,
}

#[derive(Clone)]
pub(super) struct DirEnt {
    pub(super) ino: u64,
    pub(super) kind: FileType,
    pub(super) name: OsString,
}

/// Every inode seen, by number and by backing (device, inode) key.
pub(super) struct Table {
    pub(super) nodes: HashMap<u64, Node>,
    pub(super) by_key: HashMap<(u64, u64), u64>,
    next_ino: u64,
    pub(super) dirs: HashMap<u64, Vec<DirEnt>>,
}

impl Table {
    /// Backing path of `ino`, built by walking up the parent chain.
    pub(super) fn path(&self, root: &Path, ino: u64) -> Result<PathBuf, Errno> {
        let mut names = Vec::new();
        let mut cur = ino;
        while cur != ROOT {
            let n = self.nodes.get(&cur).ok_or(Errno::ENOENT)?;
            if n.unlinked || names.len() > 4096 {
                return Err(Errno::ENOENT);
            }
            names.push(n.name.clone());
            cur = n.parent;
        }
        let mut p = root.to_path_buf();
        for n in names.iter().rev() {
            p.push(n);
        }
        Ok(p)
    }

    /// Find or create the node for a backing object seen as `parent/name`.
    pub(super) fn register(&mut self, parent: u64, name: &OsStr, meta: &Metadata) -> u64 {
        let key = (meta.dev(), meta.ino());
        let kind = kind_of(meta);
        if let Some(&ino) = self.by_key.get(&key) {
            if let Some(n) = self.nodes.get_mut(&ino) {
                if n.kind == kind {
                    if ino != ROOT {
                        n.parent = parent;
                        n.name = name.to_os_string();
                    }
                    return ino;
                }
                // Inode number reused by an object of another type.
                n.unlinked = true;
            }
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let file = (kind == FileType::RegularFile).then(|| Arc::new(FileNode::default()));
        self.nodes.insert(ino, Node { parent, name: name.to_os_string(), kind, unlinked: false, file });
        self.by_key.insert(key, ino);
        ino
    }

    /// Marks the inode of a backing object as gone from the namespace.
    pub(super) fn mark_unlinked(&mut self, key: (u64, u64)) {
        if let Some(ino) = self.by_key.remove(&key) {
            if let Some(n) = self.nodes.get_mut(&ino) {
                n.unlinked = true;
            }
        }
    }
}

/// The FUSE file type of backing metadata.
pub(super) fn kind_of(meta: &Metadata) -> FileType {
    FileType::from_std(meta.file_type()).unwrap_or(FileType::RegularFile)
}

fn to_time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
    } else {
        UNIX_EPOCH
    }
}

/// The attributes of `ino`, its length and mtime from the cache when it has one.
pub(super) fn attr(ino: u64, meta: &Metadata, cache: Option<&FileCache>) -> FileAttr {
    let size = cache.map_or(meta.len(), FileCache::size);
    let blocks = if cache.is_some_and(FileCache::is_dirty) { size.div_ceil(512) } else { meta.blocks() };
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks,
        atime: to_time(meta.atime(), meta.atime_nsec()),
        mtime: cache.and_then(FileCache::mtime).unwrap_or_else(|| to_time(meta.mtime(), meta.mtime_nsec())),
        ctime: to_time(meta.ctime(), meta.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: kind_of(meta),
        perm: (meta.mode() & 0o7777) as u16,
        nlink: meta.nlink() as u32,
        uid: meta.uid(),
        gid: meta.gid(),
        rdev: meta.rdev() as u32,
        blksize: 4096,
        flags: 0,
    }
}

/// State shared by the FUSE worker threads and the [`crate::LazyFsHandle`].
pub(super) struct Shared {
    pub(super) root: PathBuf,
    pub(super) opts: LazyFsOptions,
    pub(super) table: Mutex<Table>,
    next_fh: AtomicU64,
    pub(super) stats: Counters,
}

impl Shared {
    /// The state of a mount of `root`.
    pub(super) fn new(root: PathBuf, opts: LazyFsOptions) -> io::Result<Self> {
        let meta = fs::metadata(&root)?;
        let key = (meta.dev(), meta.ino());
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node { parent: ROOT, name: OsString::new(), kind: FileType::Directory, unlinked: false, file: None },
        );
        let mut by_key = HashMap::new();
        by_key.insert(key, ROOT);
        Ok(Shared {
            root,
            opts,
            table: Mutex::new(Table { nodes, by_key, next_ino: ROOT + 1, dirs: HashMap::new() }),
            next_fh: AtomicU64::new(1),
            stats: Counters::default(),
        })
    }

    /// The backing path of `ino`.
    pub(super) fn path(&self, ino: u64) -> Result<PathBuf, Errno> {
        lock(&self.table).path(&self.root, ino)
    }

    /// The backing path of `parent/name`.
    pub(super) fn child_path(&self, parent: u64, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.path(parent)?.join(name))
    }

    /// A fresh file handle.
    pub(super) fn fh(&self) -> FileHandle {
        FileHandle(self.next_fh.fetch_add(1, Ordering::Relaxed))
    }

    /// Run `f` on the open backing file + cache of regular file `ino`,
    /// opening the backing file first if needed.
    pub(super) fn with_file<R>(
        &self,
        ino: u64,
        f: impl FnOnce(&Self, &mut OpenFile) -> Result<R, Errno>,
    ) -> Result<R, Errno> {
        let (node, path) = {
            let t = lock(&self.table);
            let n = t.nodes.get(&ino).ok_or(Errno::ENOENT)?;
            let node = match (&n.file, n.kind) {
                (Some(f), _) => f.clone(),
                (None, FileType::Directory) => return Err(Errno::EISDIR),
                (None, _) => return Err(Errno::EINVAL),
            };
            (node, t.path(&self.root, ino))
        };
        let mut st = lock(&node.state);
        if st.is_none() {
            let path = path?;
            // Read-write so fsync can persist; fall back to read-only (a
            // read-only backing dir) so reads still work.
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .or_else(|e| match e.raw_os_error() {
                    Some(libc::EROFS | libc::EACCES | libc::EPERM) => File::open(&path),
                    _ => Err(e),
                })
                .map_err(|e| errno(&e))?;
            let len = file.metadata().map_err(|e| errno(&e))?.len();
            *st = Some(OpenFile { file, cache: FileCache::new(len) });
        }
        match st.as_mut() {
            Some(of) => f(self, of),
            None => Err(Errno::EIO),
        }
    }

    /// Attributes of `ino` (cache-aware for regular files).
    pub(super) fn getattr_ino(&self, ino: u64) -> Result<FileAttr, Errno> {
        let (file, path) = {
            let t = lock(&self.table);
            let n = t.nodes.get(&ino).ok_or(Errno::ENOENT)?;
            (n.file.clone(), t.path(&self.root, ino))
        };
        if let Some(node) = file {
            let st = lock(&node.state);
            if let Some(of) = st.as_ref() {
                let meta = of.file.metadata().map_err(|e| errno(&e))?;
                return Ok(attr(ino, &meta, Some(&of.cache)));
            }
        }
        let meta = fs::symlink_metadata(path?).map_err(|e| errno(&e))?;
        Ok(attr(ino, &meta, None))
    }

    /// lstat `parent/name`, register it, return its attributes.
    pub(super) fn entry(&self, parent: u64, name: &OsStr, path: &Path) -> Result<FileAttr, Errno> {
        let meta = fs::symlink_metadata(path).map_err(|e| errno(&e))?;
        let ino = lock(&self.table).register(parent, name, &meta);
        self.getattr_ino(ino)
    }

    /// Persist one file's cache to its backing file (the fsync path).
    pub(super) fn persist(&self, of: &mut OpenFile, datasync: bool) -> Result<(), Errno> {
        let res = of.cache.persist_to(&of.file).and_then(|written| match written {
            Some(bytes) => {
                bump(&self.stats.bytes_persisted, bytes);
                if !self.opts.sync_backing {
                    Ok(())
                } else if datasync {
                    of.file.sync_data()
                } else {
                    of.file.sync_all()
                }
            }
            None => Ok(()),
        });
        res.map_err(|e| {
            bump(&self.stats.io_errors, 1);
            errno(&e)
        })
    }

    /// Every regular file's state, by inode.
    pub(super) fn file_nodes(&self) -> Vec<(u64, Arc<FileNode>)> {
        lock(&self.table).nodes.iter().filter_map(|(ino, n)| n.file.clone().map(|f| (*ino, f))).collect()
    }

    /// Drop all unsynced data; returns the report and the inodes affected.
    pub(super) fn power_cut(&self) -> (PowerCutReport, Vec<u64>) {
        let mut report = PowerCutReport::default();
        let mut inos = Vec::new();
        for (ino, node) in self.file_nodes() {
            let mut st = lock(&node.state);
            if let Some(d) = st.as_mut().and_then(|of| of.cache.drop_unsynced()) {
                report.bytes_dropped += d.bytes;
                report.files_dropped += 1;
                inos.push(ino);
            }
        }
        let s = &self.stats;
        bump(&s.power_cuts, 1);
        bump(&s.total_dropped, report.bytes_dropped);
        s.last_cut_bytes.store(report.bytes_dropped, Ordering::Relaxed);
        s.last_cut_files.store(report.files_dropped, Ordering::Relaxed);
        (report, inos)
    }

    /// Persist every cached change of every file (like `sync(2)`).
    pub(super) fn persist_all(&self) -> io::Result<u64> {
        let mut bytes = 0;
        for (_, node) in self.file_nodes() {
            let mut st = lock(&node.state);
            if let Some(of) = st.as_mut() {
                let before = of.cache.unsynced_bytes();
                if of.cache.is_dirty() {
                    self.persist(of, false).map_err(|e| io::Error::from_raw_os_error(e.code()))?;
                    bytes += before;
                }
            }
        }
        Ok(bytes)
    }

    /// The counters now.
    pub(super) fn stats(&self) -> LazyFsStats {
        let (mut unsynced_bytes, mut unsynced_files) = (0, 0);
        for (_, node) in self.file_nodes() {
            let st = lock(&node.state);
            if let Some(of) = st.as_ref().filter(|of| of.cache.is_dirty()) {
                unsynced_bytes += of.cache.unsynced_bytes();
                unsynced_files += 1;
            }
        }
        let s = &self.stats;
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        LazyFsStats {
            writes: g(&s.writes),
            bytes_written: g(&s.bytes_written),
            reads: g(&s.reads),
            fsyncs: g(&s.fsyncs),
            fdatasyncs: g(&s.fdatasyncs),
            fsyncdirs: g(&s.fsyncdirs),
            flushes: g(&s.flushes),
            bytes_persisted: g(&s.bytes_persisted),
            power_cuts: g(&s.power_cuts),
            last_cut_bytes_dropped: g(&s.last_cut_bytes),
            last_cut_files_dropped: g(&s.last_cut_files),
            total_bytes_dropped: g(&s.total_dropped),
            unsynced_bytes,
            unsynced_files,
            io_errors: g(&s.io_errors),
        }
    }
}
