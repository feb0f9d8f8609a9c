//! Mounting and unmounting: path checks, stale mounts left by a killed test,
//! unmounting a mount still in use, and the probe that says whether FUSE can
//! be used here at all.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use fuser::BackgroundSession;

use super::{LazyFs, FS_NAME};

/// How long an unmount waits for the FUSE session's threads to end.
const SESSION_JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The canonical backing dir and the absolute mountpoint, checked: both
/// directories, neither inside the other, and no stale mount of ours left at
/// the mountpoint.
pub(super) fn check_paths(backing_dir: &Path, mountpoint: &Path) -> Result<(PathBuf, PathBuf)> {
    let bad = |p: &Path, why: &dyn std::fmt::Display| anyhow!("lazyfs: bad path {}: {why}", p.display());
    let backing = backing_dir.canonicalize().map_err(|e| bad(backing_dir, &e))?;
    if !backing.is_dir() {
        return Err(bad(backing_dir, &"the backing dir is not a directory"));
    }
    let mp = absolute(mountpoint).map_err(|e| bad(mountpoint, &e))?;
    cleanup_stale_mount(&mp)?;
    if !mp.is_dir() {
        return Err(bad(mountpoint, &"the mountpoint is not a directory"));
    }
    // Serving a backing path that goes through our own mount would deadlock.
    if mp.starts_with(&backing) || backing.starts_with(&mp) {
        return Err(bad(mountpoint, &format!("it overlaps the backing dir {}", backing.display())));
    }
    Ok((backing, mp))
}

/// An absolute, lexically normalised path, found without touching the path
/// itself (a stale FUSE mountpoint fails every stat with `ENOTCONN`).
fn absolute(p: &Path) -> io::Result<PathBuf> {
    let joined = if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir()?.join(p) };
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    // Symlinks are resolved in the parent, which is not the (maybe stale) mount.
    match (out.parent(), out.file_name()) {
        (Some(parent), Some(name)) => Ok(parent.canonicalize()?.join(name)),
        _ => Ok(out),
    }
}

/// Detaches a lazyfs a crashed test left mounted at `mp` (its server is gone,
/// so every access fails with `ENOTCONN`); live mounts and other filesystems
/// are left alone. Returns whether something was unmounted.
fn cleanup_stale_mount(mp: &Path) -> Result<bool> {
    let dead = matches!(std::fs::symlink_metadata(mp), Err(e) if e.raw_os_error() == Some(libc::ENOTCONN));
    if !dead || !lazyfs_mounts()?.iter().any(|m| m == mp) {
        return Ok(false);
    }
    unmount_path(mp, Duration::ZERO).map_err(|why| anyhow!("unmounting a stale lazyfs at {}: {why}", mp.display()))?;
    Ok(true)
}

/// Undoes the octal escapes (`\040`) of `/proc/self/mountinfo`.
fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b.get(i + 1..i + 4).filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match oct {
            Some(d) if b[i] == b'\\' => {
                out.push(d.iter().fold(0u8, |acc, c| acc.wrapping_mul(8).wrapping_add(c - b'0')));
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    out
}

/// The mountpoints of the lazyfs mounts this process sees.
fn lazyfs_mounts() -> io::Result<Vec<PathBuf>> {
    let mut s = String::new();
    File::open("/proc/self/mountinfo")?.read_to_string(&mut s)?;
    let mut out = Vec::new();
    for line in s.lines() {
        // id parent maj:min root mountpoint opts [optional...] - fstype source superopts
        let Some((pre, post)) = line.split_once(" - ") else { continue };
        let mut post = post.split(' ');
        let (mp, fstype, source) = (pre.split(' ').nth(4), post.next(), post.next());
        if let (Some(mp), Some(fstype), Some(FS_NAME)) = (mp, fstype, source) {
            if fstype.starts_with("fuse") {
                out.push(PathBuf::from(std::ffi::OsString::from_vec(unescape_mountinfo(mp))));
            }
        }
    }
    Ok(out)
}

fn umount2(path: &Path, flags: libc::c_int) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Unmounts `mp` and waits (bounded) for the session's threads to end.
pub(super) fn unmount(mp: &Path, grace: Duration, session: BackgroundSession) -> Result<()> {
    let err = |why: String| anyhow!("unmounting lazyfs at {} failed: {why}", mp.display());
    unmount_path(mp, grace).map_err(err)?;
    // Never hang a test on a wedged session.
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(session.join());
    });
    match rx.recv_timeout(SESSION_JOIN_TIMEOUT) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(err(format!("the FUSE session ended with an error: {e}"))),
        Err(_) => Err(err(format!("the FUSE session did not end within {} s", SESSION_JOIN_TIMEOUT.as_secs()))),
    }
}

/// Unmounts `mp`, retrying while it is busy for `grace`, then forcing it
/// (`MNT_FORCE` aborts the FUSE connection, so blocked users get errors and
/// the worker threads end) and detaching it. Returns whether it was forced.
fn unmount_path(mp: &Path, grace: Duration) -> Result<bool, String> {
    let deadline = Instant::now() + grace;
    loop {
        match umount2(mp, 0) {
            Ok(()) => return Ok(false),
            // Not (or no longer) a mountpoint.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(false),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => break,
            // Not root: only the setuid helper may unmount.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => return fusermount_unmount(mp),
            Err(e) => return Err(format!("umount: {e}")),
        }
    }
    let _ = umount2(mp, libc::MNT_FORCE);
    match umount2(mp, libc::MNT_DETACH) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(true),
        Err(e) => Err(format!("umount -l after busy: {e}")),
    }
}

/// A lazy unmount through `fusermount3 -u -z` (or `fusermount`), for non-root.
fn fusermount_unmount(mp: &Path) -> Result<bool, String> {
    let mut last = String::from("no fusermount3/fusermount found");
    for bin in ["fusermount3", "fusermount"] {
        match std::process::Command::new(bin).arg("-u").arg("-z").arg("--").arg(mp).output() {
            Ok(o) if o.status.success() => return Ok(false),
            Ok(o) => last = format!("{bin} -u -z: {}", String::from_utf8_lossy(&o.stderr).trim()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => last = format!("{bin}: {e}"),
        }
    }
    Err(last)
}

/// Whether lazyfs can be mounted here; `Err` says why not (no `/dev/fuse`, no
/// permission, no FUSE in the kernel, mount refused), for a test to print as
/// it skips. The first call mounts a trial lazyfs in the temp dir; the answer
/// is kept for the life of the process.
pub fn fuse_available() -> Result<(), String> {
    static ANSWER: OnceLock<Result<(), String>> = OnceLock::new();
    ANSWER.get_or_init(probe).clone()
}

fn probe() -> Result<(), String> {
    if !cfg!(target_os = "linux") {
        return Err("lazyfs runs on Linux only".into());
    }
    let fstypes =
        std::fs::read_to_string("/proc/filesystems").map_err(|e| format!("cannot read /proc/filesystems: {e}"))?;
    if !fstypes.lines().any(|l| l.split_whitespace().last() == Some("fuse")) {
        return Err("the kernel has no fuse filesystem (try `modprobe fuse`)".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Err("/dev/fuse does not exist (a container needs `--device /dev/fuse`)".into());
    }
    let open = std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse");
    open.map_err(|e| format!("cannot open /dev/fuse: {e}"))?;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let helpers = ["/usr/bin/fusermount3", "/bin/fusermount3", "/usr/bin/fusermount", "/bin/fusermount"];
    if !root && !helpers.iter().any(|p| Path::new(p).exists()) {
        return Err("not root, and no fusermount3/fusermount helper to mount with".into());
    }
    static PROBES: AtomicU64 = AtomicU64::new(0);
    let n = PROBES.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("lazyfs-probe-{}-{n}", std::process::id()));
    let tried = trial_mount(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    tried.map_err(|e| {
        let who = if root { "as root" } else { "as non-root via fusermount" };
        format!("a trial mount {who} failed: {e:#} (a container needs CAP_SYS_ADMIN, or a setuid fusermount3)")
    })
}

/// Mounts a lazyfs in `dir`, syncs a file through it and checks the backing dir.
fn trial_mount(dir: &Path) -> Result<()> {
    let (backing, mnt) = (dir.join("backing"), dir.join("mnt"));
    for d in [&backing, &mnt] {
        std::fs::create_dir_all(d).map_err(|e| anyhow!("mkdir {}: {e}", d.display()))?;
    }
    let fs = LazyFs::mount(&backing, &mnt)?;
    let check = (|| -> io::Result<()> {
        let mut f = File::create(mnt.join("probe"))?;
        f.write_all(b"probe")?;
        f.sync_data()?;
        if std::fs::read(backing.join("probe"))? != b"probe" {
            return Err(io::Error::other("synced data did not reach the backing dir"));
        }
        Ok(())
    })();
    let unmounted = fs.unmount();
    if let Err(e) = check {
        bail!("IO through the trial mount failed: {e}");
    }
    unmounted.map(|_| ())
}
