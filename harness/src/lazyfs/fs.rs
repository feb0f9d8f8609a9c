//! The `fuser::Filesystem` implementation: one method per FUSE request, each
//! calling an operation of [`super::ops`] or [`super::table`] and replying.

use std::ffi::{CString, OsStr};
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::time::SystemTime;

use fuser::{
    AccessFlags, BsdFileFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use super::ops::{reply_empty, reply_entry, set_mode, LazyFsImpl, SetAttr};
use super::table::{bump, errno, lock, TTL};

impl Filesystem for LazyFsImpl {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let s = &*self.shared;
        reply_entry(reply, s.child_path(parent.0, name).and_then(|p| s.entry(parent.0, name, &p)));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.shared.getattr_ino(ino.0) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.do_setattr(ino.0, &SetAttr { mode, uid, gid, size, atime, mtime }) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.shared.path(ino.0).and_then(|p| fs::read_link(p).map_err(|e| errno(&e))) {
            Ok(t) => reply.data(t.as_os_str().as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply_entry(reply, self.do_mknod(parent.0, name, mode));
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, mode: u32, _umask: u32, reply: ReplyEntry) {
        let s = &*self.shared;
        let res = s.child_path(parent.0, name).and_then(|p| {
            fs::DirBuilder::new().mode(mode & 0o7777).create(&p).map_err(|e| errno(&e))?;
            set_mode(&p, mode)?;
            s.entry(parent.0, name, &p)
        });
        reply_entry(reply, res);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.do_remove(parent.0, name, false));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.do_remove(parent.0, name, true));
    }

    fn symlink(&self, _req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let s = &*self.shared;
        let res = s.child_path(parent.0, link_name).and_then(|p| {
            std::os::unix::fs::symlink(target, &p).map_err(|e| errno(&e))?;
            s.entry(parent.0, link_name, &p)
        });
        reply_entry(reply, res);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.do_rename(parent.0, name, newparent.0, newname, flags.bits()));
    }

    fn link(&self, _req: &Request, _ino: INodeNo, _newparent: INodeNo, _newname: &OsStr, reply: ReplyEntry) {
        // Hard links are not supported (one name per node keeps paths simple).
        reply.error(Errno::EPERM);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let res = self.shared.with_file(ino.0, |_, of| {
            if flags.0 & libc::O_TRUNC != 0 {
                of.cache.set_size(0);
            }
            Ok(())
        });
        match res {
            // DIRECT_IO: every read/write reaches us, none sits in the page cache.
            Ok(()) => reply.opened(self.shared.fh(), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        bump(&self.shared.stats.reads, 1);
        let res = self.shared.with_file(ino.0, |_, of| of.cache.read(&of.file, offset, size).map_err(|e| errno(&e)));
        match res {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let s = &*self.shared;
        bump(&s.stats.writes, 1);
        bump(&s.stats.bytes_written, data.len() as u64);
        let res = s.with_file(ino.0, |s, of| {
            of.cache.write(offset, data);
            // The kernel does not turn O_SYNC/O_DSYNC into FUSE_FSYNC for
            // direct-I/O files, so honour them here.
            if flags.0 & libc::O_DSYNC != 0 {
                s.persist(of, flags.0 & libc::O_SYNC != libc::O_SYNC)?;
            }
            Ok(())
        });
        match res {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // close() is not a durability point.
        bump(&self.shared.stats.flushes, 1);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        let s = &*self.shared;
        bump(if datasync { &s.stats.fdatasyncs } else { &s.stats.fsyncs }, 1);
        reply_empty(reply, s.with_file(ino.0, |s, of| s.persist(of, datasync)));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.do_opendir(ino.0) {
            Ok(fh) => reply.opened(fh, FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let ents = lock(&self.shared.table).dirs.get(&fh.0).cloned();
        let Some(ents) = ents else {
            reply.error(Errno::EBADF);
            return;
        };
        for (i, e) in ents.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(e.ino), (i + 1) as u64, e.kind, &e.name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        lock(&self.shared.table).dirs.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // Namespace operations are already applied to the backing directory.
        let s = &*self.shared;
        bump(&s.stats.fsyncdirs, 1);
        let res = if s.opts.sync_backing {
            s.path(ino.0).and_then(|p| File::open(p).and_then(|d| d.sync_all()).map_err(|e| errno(&e)))
        } else {
            Ok(())
        };
        reply_empty(reply, res);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let Ok(c) = CString::new(self.shared.root.as_os_str().as_bytes()) else {
            reply.error(Errno::EINVAL);
            return;
        };
        // SAFETY: zeroed statvfs is a valid out-buffer; path is NUL-terminated.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            reply.error(errno(&io::Error::last_os_error()));
            return;
        }
        reply.statfs(
            st.f_blocks,
            st.f_bfree,
            st.f_bavail,
            st.f_files,
            st.f_ffree,
            st.f_bsize as u32,
            st.f_namemax as u32,
            st.f_frsize as u32,
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.do_create(parent.0, name, mode, flags) {
            Ok(a) => reply.created(&TTL, &a, Generation(0), self.shared.fh(), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.do_fallocate(ino.0, offset, length, mode));
    }
}
