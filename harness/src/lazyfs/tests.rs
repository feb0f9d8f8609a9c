//! The promises the power-loss test depends on, checked on a real mount; every
//! test passes with a printed `SKIP` where FUSE cannot be used.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::{fuse_available, LazyFs, LazyFsHandle};

/// A mount in a temp dir, unmounted before the dir is removed.
struct Mounted {
    fs: LazyFsHandle,
    mnt: PathBuf,
    backing: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mounted {
    fn path(&self, name: &str) -> PathBuf {
        self.mnt.join(name)
    }
}

fn mount(test: &str) -> Option<Mounted> {
    if let Err(why) = fuse_available() {
        eprintln!("SKIP {test}: FUSE is not available here: {why}");
        return None;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let (backing, mnt) = (dir.path().join("backing"), dir.path().join("mnt"));
    fs::create_dir(&backing).expect("backing dir");
    fs::create_dir(&mnt).expect("mountpoint");
    let fs = LazyFs::mount(&backing, &mnt).expect("mount");
    Some(Mounted { fs, mnt, backing, _dir: dir })
}

fn read(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

#[test]
fn a_write_closed_but_never_synced_is_gone_after_a_cut() {
    let Some(m) = mount("a_write_closed_but_never_synced_is_gone_after_a_cut") else { return };
    fs::write(m.path("a"), b"not yet durable").unwrap();
    assert_eq!(read(&m.path("a")), b"not yet durable", "readers see the cache");
    assert_eq!(read(&m.backing.join("a")), b"", "the backing file is untouched");
    let cut = m.fs.power_cut();
    assert_eq!((cut.bytes_dropped, cut.files_dropped), (15, 1));
    assert_eq!(read(&m.path("a")), b"", "the name survives, the data does not");
}

#[test]
fn an_append_log_keeps_exactly_its_synced_prefix() {
    let Some(m) = mount("an_append_log_keeps_exactly_its_synced_prefix") else { return };
    let mut log = OpenOptions::new().create(true).append(true).open(m.path("log")).unwrap();
    for i in 0..20 {
        writeln!(log, "record {i}").unwrap();
        if i < 15 {
            log.sync_data().unwrap();
        }
    }
    assert_eq!(m.fs.stats().fdatasyncs, 15);
    m.fs.power_cut();
    let synced: String = (0..15).map(|i| format!("record {i}\n")).collect();
    assert_eq!(read(&m.path("log")), synced.as_bytes());
    writeln!(log, "after the cut").unwrap();
    log.sync_data().unwrap();
    assert_eq!(read(&m.path("log")), format!("{synced}after the cut\n").as_bytes(), "appends go on at the durable end");
}

#[test]
fn sync_file_range_makes_nothing_durable() {
    let Some(m) = mount("sync_file_range_makes_nothing_durable") else { return };
    let file = OpenOptions::new().create(true).truncate(false).read(true).write(true).open(m.path("seg")).unwrap();
    file.write_all_at(&[7; 4096], 0).unwrap();
    // What sled 0.34 does after writing a buffer to its log.
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: a valid fd and plain integers.
    let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 4096, flags) };
    assert_eq!(rc, 0, "sync_file_range: {}", std::io::Error::last_os_error());
    m.fs.power_cut();
    assert_eq!(fs::metadata(m.path("seg")).unwrap().len(), 0);
}

#[test]
fn a_truncate_is_cached_until_synced() {
    let Some(m) = mount("a_truncate_is_cached_until_synced") else { return };
    let file = OpenOptions::new().create(true).truncate(false).read(true).write(true).open(m.path("t")).unwrap();
    file.write_all_at(&[1; 100], 0).unwrap();
    file.sync_all().unwrap();
    file.set_len(10).unwrap();
    m.fs.power_cut();
    assert_eq!(read(&m.path("t")), vec![1; 100], "an unsynced truncate is undone");
    file.set_len(10).unwrap();
    file.sync_data().unwrap();
    m.fs.power_cut();
    assert_eq!(read(&m.path("t")), vec![1; 10], "a synced truncate stays");
}

#[test]
fn a_rename_is_durable_at_once_but_the_renamed_data_only_when_synced() {
    let Some(m) = mount("a_rename_is_durable_at_once_but_the_renamed_data_only_when_synced") else { return };
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("d/new.tmp"), b"never synced").unwrap();
    fs::rename(m.path("d/new.tmp"), m.path("d/new")).unwrap();
    let mut synced = File::create(m.path("d/synced.tmp")).unwrap();
    synced.write_all(b"synced").unwrap();
    synced.sync_data().unwrap();
    fs::rename(m.path("d/synced.tmp"), m.path("d/synced")).unwrap();
    File::open(m.path("d")).unwrap().sync_all().unwrap();
    assert_eq!(m.fs.stats().fsyncdirs, 1);
    m.fs.power_cut();
    assert!(!m.path("d/new.tmp").exists());
    assert_eq!(read(&m.path("d/new")), b"", "the classic zero-length file");
    assert_eq!(read(&m.path("d/synced")), b"synced");
}
