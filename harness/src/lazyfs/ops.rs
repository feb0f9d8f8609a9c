//! The FUSE operations that change the namespace or a file, as methods that
//! return a result; [`super::fs`] turns each into its reply.

use std::ffi::{CString, OsStr};
use std::fs::{self, File, FileTimes, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{Errno, FileAttr, FileHandle, FileType, Generation, ReplyEmpty, ReplyEntry, TimeOrNow};

use super::cache::FileCache;
use super::table::{errno, kind_of, lock, DirEnt, OpenFile, Shared, ROOT, TTL};

/// The `fuser::Filesystem` implementation.
pub(super) struct LazyFsImpl {
    pub(super) shared: Arc<Shared>,
}

/// Replies to a lookup-like request with `res`.
pub(super) fn reply_entry(reply: ReplyEntry, res: Result<FileAttr, Errno>) {
    match res {
        Ok(a) => reply.entry(&TTL, &a, Generation(0)),
        Err(e) => reply.error(e),
    }
}

/// Replies to a request that returns nothing with `res`.
pub(super) fn reply_empty(reply: ReplyEmpty, res: Result<(), Errno>) {
    match res {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

/// Sets the permission bits of `path`.
pub(super) fn set_mode(path: &Path, mode: u32) -> Result<(), Errno> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777)).map_err(|e| errno(&e))
}

fn system_time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

/// What one setattr request changes (each field: leave as is when `None`).
#[derive(Debug, Clone, Copy)]
pub(super) struct SetAttr {
    /// New permission bits.
    pub(super) mode: Option<u32>,
    /// New owner.
    pub(super) uid: Option<u32>,
    /// New group.
    pub(super) gid: Option<u32>,
    /// New length (a cached truncate or extend).
    pub(super) size: Option<u64>,
    /// New access time.
    pub(super) atime: Option<TimeOrNow>,
    /// New modification time.
    pub(super) mtime: Option<TimeOrNow>,
}

impl SetAttr {
    /// The times to set, if any.
    fn times(&self) -> Option<FileTimes> {
        if self.atime.is_none() && self.mtime.is_none() {
            return None;
        }
        let mut times = FileTimes::new();
        if let Some(t) = self.atime {
            times = times.set_accessed(system_time(t));
        }
        if let Some(t) = self.mtime {
            times = times.set_modified(system_time(t));
        }
        Some(times)
    }
}

/// Applies `change` to a regular file through its open backing file (so an
/// unlinked file still open works too); a new length goes to the cache.
fn setattr_file(of: &mut OpenFile, change: &SetAttr) -> Result<(), Errno> {
    if let Some(m) = change.mode {
        of.file.set_permissions(fs::Permissions::from_mode(m & 0o7777)).map_err(|e| errno(&e))?;
    }
    if change.uid.is_some() || change.gid.is_some() {
        std::os::unix::fs::fchown(&of.file, change.uid, change.gid).map_err(|e| errno(&e))?;
    }
    if let Some(size) = change.size {
        of.cache.set_size(size);
    }
    if let Some(times) = change.times() {
        of.file.set_times(times).map_err(|e| errno(&e))?;
        if change.mtime.is_some() {
            of.cache.clear_mtime();
        }
    }
    Ok(())
}

/// Applies `change` to a directory or symlink at `path` (no length to change).
fn setattr_other(kind: FileType, path: &Path, change: &SetAttr) -> Result<(), Errno> {
    if change.size.is_some() {
        return Err(if kind == FileType::Directory { Errno::EISDIR } else { Errno::EINVAL });
    }
    if change.uid.is_some() || change.gid.is_some() {
        std::os::unix::fs::lchown(path, change.uid, change.gid).map_err(|e| errno(&e))?;
    }
    if kind == FileType::Symlink {
        return Ok(());
    }
    if let Some(m) = change.mode {
        set_mode(path, m)?;
    }
    if let Some(times) = change.times() {
        File::open(path).and_then(|f| f.set_times(times)).map_err(|e| errno(&e))?;
    }
    Ok(())
}

impl LazyFsImpl {
    /// Applies a setattr request to `ino` and returns its new attributes.
    pub(super) fn do_setattr(&self, ino: u64, change: &SetAttr) -> Result<FileAttr, Errno> {
        let s = &*self.shared;
        let (kind, path) = {
            let t = lock(&s.table);
            let n = t.nodes.get(&ino).ok_or(Errno::ENOENT)?;
            (n.kind, t.path(&s.root, ino))
        };
        if kind == FileType::RegularFile {
            s.with_file(ino, |_, of| setattr_file(of, change))?;
        } else {
            setattr_other(kind, &path?, change)?;
        }
        s.getattr_ino(ino)
    }

    /// Creates (or, without O_EXCL, opens) `parent/name` and returns its attributes.
    pub(super) fn do_create(&self, parent: u64, name: &OsStr, mode: u32, flags: i32) -> Result<FileAttr, Errno> {
        let s = &*self.shared;
        let path = s.child_path(parent, name)?;
        let perm = mode & 0o7777;
        let (file, created) = match OpenOptions::new().read(true).write(true).create_new(true).mode(perm).open(&path) {
            Ok(f) => (f, true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && flags & libc::O_EXCL == 0 => {
                let f = OpenOptions::new().read(true).write(true).open(&path).map_err(|e| errno(&e))?;
                (f, false)
            }
            Err(e) => return Err(errno(&e)),
        };
        if created {
            // Undo our own process umask.
            file.set_permissions(fs::Permissions::from_mode(perm)).map_err(|e| errno(&e))?;
        }
        let meta = file.metadata().map_err(|e| errno(&e))?;
        let ino = lock(&s.table).register(parent, name, &meta);
        let node = {
            let t = lock(&s.table);
            t.nodes.get(&ino).and_then(|n| n.file.clone())
        };
        if let Some(node) = node {
            let mut st = lock(&node.state);
            let of = st.get_or_insert_with(|| OpenFile { cache: FileCache::new(meta.len()), file });
            if flags & libc::O_TRUNC != 0 {
                of.cache.set_size(0);
            }
        }
        s.getattr_ino(ino)
    }

    /// Creates a regular file `parent/name`; other node kinds are refused.
    pub(super) fn do_mknod(&self, parent: u64, name: &OsStr, mode: u32) -> Result<FileAttr, Errno> {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return Err(Errno::EPERM);
        }
        let path = self.shared.child_path(parent, name)?;
        let f =
            OpenOptions::new().write(true).create_new(true).mode(mode & 0o7777).open(&path).map_err(|e| errno(&e))?;
        f.set_permissions(fs::Permissions::from_mode(mode & 0o7777)).map_err(|e| errno(&e))?;
        drop(f);
        self.shared.entry(parent, name, &path)
    }

    /// Removes the file or empty directory `parent/name`.
    pub(super) fn do_remove(&self, parent: u64, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let s = &*self.shared;
        let path = s.child_path(parent, name)?;
        let meta = fs::symlink_metadata(&path).map_err(|e| errno(&e))?;
        let res = if dir { fs::remove_dir(&path) } else { fs::remove_file(&path) };
        res.map_err(|e| errno(&e))?;
        lock(&s.table).mark_unlinked((meta.dev(), meta.ino()));
        Ok(())
    }

    /// Renames `parent/name` to `newparent/newname` (flags as renameat2).
    pub(super) fn do_rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Result<(), Errno> {
        let s = &*self.shared;
        let from = s.child_path(parent, name)?;
        let to = s.child_path(newparent, newname)?;
        let from_meta = fs::symlink_metadata(&from).map_err(|e| errno(&e))?;
        let from_key = (from_meta.dev(), from_meta.ino());
        let to_key = fs::symlink_metadata(&to).ok().map(|m| (m.dev(), m.ino()));
        let cf = CString::new(from.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
        let ct = CString::new(to.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
        // SAFETY: both paths are valid NUL-terminated C strings.
        let rc = unsafe { libc::renameat2(libc::AT_FDCWD, cf.as_ptr(), libc::AT_FDCWD, ct.as_ptr(), flags) };
        if rc != 0 {
            return Err(errno(&io::Error::last_os_error()));
        }
        let mut t = lock(&s.table);
        let from_ino = t.by_key.get(&from_key).copied();
        if flags & libc::RENAME_EXCHANGE != 0 {
            if let Some(to_ino) = to_key.and_then(|k| t.by_key.get(&k).copied()) {
                if let Some(n) = t.nodes.get_mut(&to_ino) {
                    n.parent = parent;
                    n.name = name.to_os_string();
                }
            }
        } else if let Some(k) = to_key.filter(|k| *k != from_key) {
            t.mark_unlinked(k);
        }
        if let Some(n) = from_ino.and_then(|i| t.nodes.get_mut(&i)) {
            n.parent = newparent;
            n.name = newname.to_os_string();
        }
        Ok(())
    }

    /// Lists directory `ino` into a new handle for readdir.
    pub(super) fn do_opendir(&self, ino: u64) -> Result<FileHandle, Errno> {
        let s = &*self.shared;
        let path = s.path(ino)?;
        let parent = lock(&s.table).nodes.get(&ino).map_or(ROOT, |n| n.parent);
        let mut ents = vec![
            DirEnt { ino, kind: FileType::Directory, name: ".".into() },
            DirEnt { ino: parent, kind: FileType::Directory, name: "..".into() },
        ];
        let rd = fs::read_dir(&path).map_err(|e| errno(&e))?;
        let mut children = Vec::new();
        for de in rd {
            let de = de.map_err(|e| errno(&e))?;
            // Entries that vanish between readdir and lstat are skipped.
            if let Ok(meta) = de.metadata() {
                children.push((de.file_name(), meta));
            }
        }
        let fh = s.fh();
        let mut t = lock(&s.table);
        for (name, meta) in children {
            let cino = t.register(ino, &name, &meta);
            ents.push(DirEnt { ino: cino, kind: kind_of(&meta), name });
        }
        t.dirs.insert(fh.0, ents);
        Ok(fh)
    }

    /// Allocates, punches or zeroes a range of `ino`, in the cache.
    pub(super) fn do_fallocate(&self, ino: u64, offset: u64, length: u64, mode: i32) -> Result<(), Errno> {
        const KEEP: i32 = libc::FALLOC_FL_KEEP_SIZE;
        const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE;
        const ZERO: i32 = libc::FALLOC_FL_ZERO_RANGE;
        let end = offset.checked_add(length).ok_or(Errno::EFBIG)?;
        self.shared.with_file(ino, |_, of| {
            match mode {
                0 => {
                    if end > of.cache.size() {
                        of.cache.set_size(end);
                    }
                }
                m if m == KEEP => {}
                m if m == PUNCH | KEEP => of.cache.zero_range(offset, length),
                m if m == ZERO || m == ZERO | KEEP => {
                    if m & KEEP == 0 && end > of.cache.size() {
                        of.cache.set_size(end);
                    }
                    of.cache.zero_range(offset, length);
                }
                _ => return Err(Errno::EOPNOTSUPP),
            }
            Ok(())
        })
    }
}
