//! The Raft log, the vote and the log pointers in one append-only file, `raft.wal`.
//!
//! The file is an 8-byte magic followed by frames `len: u32 LE | crc: u32 LE |
//! payload`, where the payload is a postcard [`Record`] and the CRC-32 covers the
//! length bytes and the payload. A *group* frame (the top bit of `len` set)
//! carries several records under its one checksum, each as `len: u32 LE |
//! payload` with no checksum of its own. Replaying the
//! records in order rebuilds the [`LogState`] kept in memory. After the last
//! frame the file holds zeros: it is grown ahead of the log in steps of
//! [`PREALLOCATE`] bytes of written zeros, so that an append overwrites blocks
//! the file already has and its `fdatasync` has no file size or block map to
//! write (on ext4 here about half the cost of a sync that grows the file).
//!
//! A synced write is always exactly one frame, written with `pwrite` at the end
//! of the log, then `fdatasync`; a record that needs no sync waits in memory and
//! goes, with the next synced write, into one group frame. So a sync covers
//! every byte written before it, and after a crash the file holds a prefix of
//! what was written, possibly followed by one torn frame, then zeros. Replay
//! stops at the first frame that is incomplete or fails its checksum (a zero
//! length is the end of the log); a damaged tail is cut there (it was never
//! synced, so never acknowledged). When a valid frame follows the damaged one,
//! the damage is corruption of synced data, not a torn tail (a torn write is
//! one frame, and nothing but zeros was ever after it), and the file is refused
//! instead. A frame with a valid checksum that does not decode is an error,
//! never cut: it was written by another version. A file shorter than the magic
//! was never synced and counts as empty.
//!
//! When a purge leaves most of the file dead (records of purged or replaced
//! entries, old votes), the file is rewritten with only the live state: the image
//! goes to `raft.wal.tmp`, which is synced, renamed over `raft.wal`, and then the
//! directory is synced, so a crash leaves either the old file or the new one
//! (a left-over temp file is removed on open).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::{Entry, LogId, Vote};
use serde::{Deserialize, Serialize};

use super::codec;
use super::sync::{blocking, slow_log_io, Syncer};
use crate::error::Error;
use crate::raft::TypeConfig;

/// The log's file name in the data dir.
pub(super) const WAL_FILE: &str = "raft.wal";
/// The file a rewrite is prepared in.
const TMP_FILE: &str = "raft.wal.tmp";
/// The first bytes of the file: format name and version.
const MAGIC: &[u8; 8] = b"ivywal01";
/// Bytes of a frame before its payload: length and checksum.
const FRAME_HEADER: usize = 8;
/// The largest payload replay accepts; a longer length is a torn frame.
const MAX_RECORD_BYTES: u32 = 256 << 20;
/// The bit of a frame's length that marks a group frame.
const GROUP: u32 = 1 << 31;
/// The file grows ahead of the log by this many bytes of written zeros at a
/// time: one larger sync every few thousand appends instead of a size change
/// in every one.
pub(super) const PREALLOCATE: u64 = 256 << 10;
/// Entries per record in a rewritten file, so no record grows without bound.
const ENTRIES_PER_RECORD: usize = 256;
/// A purge rewrites the file once its dead bytes exceed both its live bytes and
/// this floor (so a tiny log is not rewritten at every purge). With the default
/// snapshot policy that is about once per snapshot: two syncs per thousand
/// entries, and a file that stays within about twice the live log.
pub(super) const COMPACT_AFTER_DEAD_BYTES: u64 = 4 << 10;

type NodeId = u64;

/// One change to the log state; `Es` is the entries' container (owned when read,
/// borrowed when written: both encode the same way).
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Record<Es> {
    /// Entries appended, replacing any at the same indexes.
    Entries(Es),
    /// The vote saved.
    Vote(Vote<NodeId>),
    /// The committed log id saved.
    Committed(Option<LogId<NodeId>>),
    /// Every entry from this index on removed.
    Truncate(u64),
    /// Every entry up to this log id removed.
    Purge(LogId<NodeId>),
}

impl<Es> Record<Es> {
    /// The same record with its entries mapped by `f`.
    pub(super) fn with_entries<T>(self, f: impl FnOnce(Es) -> T) -> Record<T> {
        match self {
            Record::Entries(entries) => Record::Entries(f(entries)),
            Record::Vote(vote) => Record::Vote(vote),
            Record::Committed(committed) => Record::Committed(committed),
            Record::Truncate(since) => Record::Truncate(since),
            Record::Purge(upto) => Record::Purge(upto),
        }
    }
}

/// A record as read back from the file.
type Owned = Record<Vec<Entry<TypeConfig>>>;

/// What the log holds: entries by index, the vote and the log pointers.
#[derive(Debug, Default)]
pub(super) struct LogState {
    /// Entries present, by index.
    pub(super) entries: BTreeMap<u64, Entry<TypeConfig>>,
    /// The last saved vote.
    pub(super) vote: Option<Vote<NodeId>>,
    /// The last saved committed log id.
    pub(super) committed: Option<LogId<NodeId>>,
    /// The last purged log id.
    pub(super) last_purged: Option<LogId<NodeId>>,
}

impl LogState {
    /// Applies one record.
    pub(super) fn apply(&mut self, record: Owned) {
        match record {
            Record::Entries(entries) => self.entries.extend(entries.into_iter().map(|e| (e.log_id.index, e))),
            Record::Vote(vote) => self.vote = Some(vote),
            Record::Committed(committed) => self.committed = committed,
            Record::Truncate(since) => drop(self.entries.split_off(&since)),
            Record::Purge(upto) => {
                self.entries = self.entries.split_off(&upto.index.saturating_add(1));
                self.last_purged = self.last_purged.max(Some(upto));
            }
        }
    }

    /// The frames that replay to this state, without the magic.
    pub(super) fn image(&self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        if let Some(vote) = self.vote {
            out.extend(frame(&Record::<()>::Vote(vote))?);
        }
        out.extend(frame(&Record::<()>::Committed(self.committed))?);
        if let Some(purged) = self.last_purged {
            out.extend(frame(&Record::<()>::Purge(purged))?);
        }
        let entries: Vec<&Entry<TypeConfig>> = self.entries.values().collect();
        for chunk in entries.chunks(ENTRIES_PER_RECORD) {
            out.extend(frame(&Record::Entries(chunk))?);
        }
        Ok(out)
    }
}

/// Encodes `record` as a frame's payload (what [`Wal::write`] takes).
pub(super) fn encode<Es: Serialize>(record: &Record<Es>) -> io::Result<Vec<u8>> {
    let payload = codec::encode(record).map_err(io::Error::other)?;
    length(&payload)?;
    Ok(payload)
}

/// Encodes `record` as one frame.
pub(super) fn frame<Es: Serialize>(record: &Record<Es>) -> io::Result<Vec<u8>> {
    framed(&encode(record)?, 0)
}

/// The length of a frame's payload, refused past the largest replay accepts.
fn length(payload: &[u8]) -> io::Result<u32> {
    u32::try_from(payload.len())
        .ok()
        .filter(|len| *len <= MAX_RECORD_BYTES)
        .ok_or_else(|| io::Error::other(format!("a log record of {} bytes is too large", payload.len())))
}

fn framed(payload: &[u8], flags: u32) -> io::Result<Vec<u8>> {
    let head = length(payload)? | flags;
    let mut out = Vec::with_capacity(FRAME_HEADER + payload.len());
    out.extend_from_slice(&head.to_le_bytes());
    out.extend_from_slice(&checksum(head, payload).to_le_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

fn checksum(len: u32, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// A frame read back: its payload, whether it is a group, the offset after it.
struct Frame<'a> {
    payload: &'a [u8],
    group: bool,
    next: usize,
}

/// The frame at `at`; `None` at the end of the log (a zero length, or the end
/// of the file) or at an incomplete or damaged frame.
fn frame_at(buf: &[u8], at: usize) -> Option<Frame<'_>> {
    let header = buf.get(at..at.checked_add(FRAME_HEADER)?)?;
    let head = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let len = head & !GROUP;
    if len == 0 || len > MAX_RECORD_BYTES {
        return None;
    }
    let start = at + FRAME_HEADER;
    let payload = buf.get(start..start + len as usize)?;
    (checksum(head, payload) == crc).then_some(Frame { payload, group: head & GROUP != 0, next: start + len as usize })
}

/// Replays the frames after the magic; returns the state and the valid length.
fn replay(buf: &[u8], path: &Path) -> Result<(LogState, usize), Error> {
    let mut state = LogState::default();
    let mut at = MAGIC.len();
    while let Some(frame) = frame_at(buf, at) {
        let (what, applied) = if frame.group {
            ("group of records", replay_group(frame.payload, &mut state))
        } else {
            let record = decode_record(frame.payload).map_err(|e| format!("does not decode ({e})"));
            ("record", record.map(|r| state.apply(r)))
        };
        applied.map_err(|why| {
            Error::Storage(format!(
                "{}: the {what} at byte {at} has a valid checksum but {why}; \
                 was it written by another version of ivy?",
                path.display()
            ))
        })?;
        at = frame.next;
    }
    Ok((state, at))
}

fn decode_record(payload: &[u8]) -> Result<Owned, String> {
    codec::decode(payload).map_err(|e| e.to_string())
}

/// Applies the records of a group (see [`Wal::write`]); under the group's
/// checksum every record must be whole and decode.
fn replay_group(payload: &[u8], state: &mut LogState) -> Result<(), String> {
    let mut rest = payload;
    while !rest.is_empty() {
        let (len, after) = rest.split_first_chunk::<4>().ok_or("ends inside a record's length")?;
        let record = after.get(..u32::from_le_bytes(*len) as usize).ok_or("ends inside a record")?;
        state.apply(decode_record(record).map_err(|e| format!("a record in it does not decode ({e})"))?);
        rest = &after[record.len()..];
    }
    Ok(())
}

/// The writer of `raft.wal`: appends frames and syncs them.
#[derive(Debug)]
pub(super) struct Wal {
    file: Arc<File>,
    dir: PathBuf,
    /// Where the next frame goes: the end of the log.
    end: u64,
    /// The file's length: zeros from `end` up to it.
    allocated: u64,
    compact_after: u64,
    syncer: Syncer,
    /// Records that need no sync, not yet in the file, each as `len: u32 LE |
    /// payload` (the form inside a group frame): they go into the group frame
    /// of the next synced write, in front of its record, in the order they
    /// were made.
    queued: Vec<u8>,
    /// Why the file may no longer be written, after a failed write or sync.
    broken: Option<String>,
}

/// Opens (creating when absent) the log in `dir` and replays it.
pub(super) fn open(dir: &Path, syncer: Syncer) -> Result<(Wal, LogState), Error> {
    let path = dir.join(WAL_FILE);
    let io_err = |what: &str, e: io::Error| Error::Storage(format!("{what} {}: {e}", path.display()));
    remove_stale_tmp(dir).map_err(|e| io_err("cannot remove the temp file next to", e))?;
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path);
    let mut file = file.map_err(|e| io_err("cannot open", e))?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf).map_err(|e| io_err("cannot read", e))?;
    let wal = |file, end, allocated| Wal {
        file: Arc::new(file),
        dir: dir.to_path_buf(),
        end,
        allocated,
        compact_after: COMPACT_AFTER_DEAD_BYTES,
        syncer: syncer.clone(),
        queued: Vec::new(),
        broken: None,
    };
    if never_synced(&buf) {
        start_empty(&file, dir, &syncer).map_err(|e| io_err("cannot initialise", e))?;
        let end = MAGIC.len() as u64;
        return Ok((wal(file, end, end), LogState::default()));
    }
    if !buf.starts_with(MAGIC) {
        return Err(Error::Storage(format!("{} is not an ivy Raft log (unknown header)", path.display())));
    }
    let (state, valid) = replay(&buf, &path)?;
    if buf[valid..].iter().all(|b| *b == 0) {
        // The space grown ahead of the log: kept for the next appends.
        return Ok((wal(file, valid as u64, buf.len() as u64), state));
    }
    if let Some(later) = later_frame(&buf, valid) {
        return Err(Error::Storage(format!(
            "{}: the record at byte {valid} is damaged but a valid record follows at byte {later}; \
             the log is corrupt, not cut short by a crash (restore this node from a peer: remove it, \
             wipe its data dir, add it back)",
            path.display()
        )));
    }
    tracing::warn!("{}: dropping {} bytes of an unsynced tail at byte {valid}", path.display(), buf.len() - valid);
    file.set_len(valid as u64).and_then(|()| syncer.data(&file)).map_err(|e| io_err("cannot cut the tail of", e))?;
    Ok((wal(file, valid as u64, valid as u64), state))
}

/// The offset of a valid frame somewhere after the damaged one at `at`, if any.
/// Only the last write can be torn by a crash (each append is synced before the
/// next one is written, and is one frame with only zeros after it), so a valid
/// frame after a damaged one means corruption of synced data, which must not be
/// cut away silently.
fn later_frame(buf: &[u8], at: usize) -> Option<usize> {
    (at + 1..buf.len().saturating_sub(FRAME_HEADER)).find(|&i| frame_at(buf, i).is_some())
}

/// True for a file that cannot hold a synced record: shorter than the magic and
/// a prefix of it (or zeros, an unwritten block).
fn never_synced(buf: &[u8]) -> bool {
    buf.len() <= MAGIC.len() && (MAGIC.starts_with(buf) || buf.iter().all(|b| *b == 0)) && buf != MAGIC
}

/// Writes the magic into an empty log and makes it and its name durable.
fn start_empty(file: &File, dir: &Path, syncer: &Syncer) -> io::Result<()> {
    file.set_len(0)?;
    file.write_all_at(MAGIC, 0)?;
    syncer.data(file)?;
    syncer.dir(dir)
}

fn remove_stale_tmp(dir: &Path) -> io::Result<()> {
    match std::fs::remove_file(dir.join(TMP_FILE)) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Writes a whole new log holding `image` (frames from [`LogState::image`]) in
/// `dir`: a temp file, synced, renamed over the log, then the directory synced.
pub(super) fn rewrite(dir: &Path, image: &[u8], syncer: &Syncer) -> io::Result<File> {
    let tmp = dir.join(TMP_FILE);
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&tmp)?;
    file.write_all_at(MAGIC, 0)?;
    file.write_all_at(image, MAGIC.len() as u64)?;
    syncer.data(&file)?;
    std::fs::rename(&tmp, dir.join(WAL_FILE))?;
    syncer.dir(dir)?;
    Ok(file)
}

impl Wal {
    /// Writes the record `record` (a payload from [`encode`]) at the end of
    /// the log; when `sync`, returns only once it is on stable storage. A
    /// record that needs no sync is only queued: it reaches the file with the
    /// next synced write, the two (or more) in one group frame, so the file
    /// keeps the order records were made in, a record that needs no sync costs
    /// no IO of its own, and every synced write is a single frame. Inside a
    /// group a record has no checksum of its own (the group's covers it), so
    /// the bytes of a group torn by a crash cannot pass for a valid frame after
    /// a damaged one.
    pub(super) async fn write(&mut self, record: Vec<u8>, sync: bool) -> io::Result<()> {
        self.usable()?;
        if !sync || !self.queued.is_empty() {
            self.queued.extend_from_slice(&length(&record)?.to_le_bytes());
            self.queued.extend_from_slice(&record);
        }
        if !sync {
            return Ok(());
        }
        let frame = if self.queued.is_empty() {
            framed(&record, 0)?
        } else {
            framed(&std::mem::take(&mut self.queued), GROUP)?
        };
        let at = self.end;
        let end = at + frame.len() as u64;
        // Past the zeros already there, the file grows by a step of zeros
        // beyond the frame, synced with it.
        let allocated = if end > self.allocated { end + PREALLOCATE } else { self.allocated };
        let grow = allocated - self.allocated.max(end);
        // On the calling task's own thread, not the blocking pool: openraft
        // awaits an append's flush before it runs its next command anyway, and
        // the hop to the pool and back (or `block_in_place`'s hand-off) cost
        // about 0.1 ms of a 0.45 ms commit here (docs/DESIGN.md, "A commit,
        // measured step by step"). The worker is blocked for one write and sync;
        // the runtime's other workers take its queued tasks meanwhile.
        let started = std::time::Instant::now();
        let written = self.file.write_all_at(&frame, at).and_then(|()| {
            if grow > 0 {
                self.file.write_all_at(&vec![0; grow as usize], end)?;
            }
            self.syncer.data(&self.file)
        });
        slow_log_io(if grow > 0 { "append (growing the file)" } else { "append" }, started.elapsed());
        if written.is_ok() {
            (self.end, self.allocated) = (end, allocated);
        }
        self.settle(written)
    }

    /// Rewrites the file as `image` when more of it is dead than live.
    pub(super) async fn compact_if_worth_it(&mut self, image: Vec<u8>) -> io::Result<()> {
        self.usable()?;
        let live = (MAGIC.len() + image.len()) as u64;
        let dead = self.end.saturating_sub(live);
        if dead < self.compact_after.max(live) {
            return Ok(());
        }
        let (dir, syncer) = (self.dir.clone(), self.syncer.clone());
        let started = std::time::Instant::now();
        let rewritten = blocking(move || rewrite(&dir, &image, &syncer)).await;
        slow_log_io("compaction", started.elapsed());
        match rewritten {
            Ok(file) => {
                // The image holds the queued records' effects.
                self.queued.clear();
                tracing::info!("{WAL_FILE}: rewrote the log: {dead} of {} bytes were dead", self.end);
                (self.file, self.end, self.allocated) = (Arc::new(file), live, live);
                Ok(())
            }
            Err(e) => self.settle(Err(e)),
        }
    }

    /// Bytes of the log (the file may hold zeros after them).
    #[cfg(test)]
    pub(super) fn len(&self) -> u64 {
        self.end
    }

    /// Where the log's frames end in the file's bytes `buf` (tests).
    #[cfg(test)]
    pub(super) fn end_of_frames(buf: &[u8]) -> usize {
        replay(buf, Path::new(WAL_FILE)).expect("a log that replays").1
    }

    /// Lowers the dead bytes a purge tolerates (tests).
    #[cfg(test)]
    pub(super) fn set_compact_after(&mut self, bytes: u64) {
        self.compact_after = bytes;
    }

    fn usable(&self) -> io::Result<()> {
        match &self.broken {
            Some(why) => Err(io::Error::other(format!("the Raft log is unusable after an earlier failure: {why}"))),
            None => Ok(()),
        }
    }

    /// Marks the file unusable after a failure: a failed write or sync leaves
    /// unknown bytes at the end, and a failed fsync must never be retried.
    fn settle(&mut self, result: io::Result<()>) -> io::Result<()> {
        if let Err(e) = &result {
            self.broken = Some(e.to_string());
        }
        result
    }
}
