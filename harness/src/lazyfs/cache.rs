//! Per-file write cache layered over a backing file.
//!
//! A [`FileCache`] describes the *logical* contents of one regular file as
//! "the backing file, with some byte ranges replaced and its length changed".
//! Nothing is written to the backing file until [`FileCache::persist_to`] is
//! called (from `fsync`/`fdatasync`); [`FileCache::drop_unsynced`] forgets
//! every change, which is what a power cut does.
//!
//! Representation of a dirty file:
//! * `extents`: non-overlapping, non-adjacent byte runs written since the last
//!   persist, keyed by start offset;
//! * `size`: the logical file size;
//! * `hide_from`: backing bytes at or beyond this offset are logically gone
//!   (the file was truncated below them since the last persist). Invariant:
//!   `hide_from <= size`, and every extent ends at or before `size`.
//!
//! A logical byte at offset `x < size` is: the extent byte covering `x` if any;
//! else the backing byte if `x < hide_from`; else zero.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::time::SystemTime;

/// Minimal interface to the backing store (a `File` in production, a vector
/// in unit tests).
pub(crate) trait Backing {
    /// Positional read; may return fewer bytes than asked (0 at EOF).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Positional write of the whole buffer.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Truncate or extend (with zeros).
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Current length.
    fn len(&self) -> io::Result<u64>;
}

impl Backing for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

#[derive(Debug)]
struct Dirty {
    size: u64,
    hide_from: u64,
    extents: BTreeMap<u64, Vec<u8>>,
    /// Logical mtime of the cached changes (None: use the backing mtime).
    mtime: Option<SystemTime>,
}

/// The cached state of one regular file (see module docs).
#[derive(Debug)]
pub(crate) struct FileCache {
    /// Length of the backing file (what survives a power cut).
    durable_len: u64,
    dirty: Option<Dirty>,
}

/// What [`FileCache::drop_unsynced`] threw away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dropped {
    /// Bytes of written-but-unsynced data that were discarded.
    pub bytes: u64,
}

impl FileCache {
    /// A clean cache over a backing file of length `durable_len`.
    pub(crate) fn new(durable_len: u64) -> Self {
        FileCache { durable_len, dirty: None }
    }

    /// Logical size of the file.
    pub(crate) fn size(&self) -> u64 {
        self.dirty.as_ref().map_or(self.durable_len, |d| d.size)
    }

    /// Logical mtime override, if the file has unsynced writes.
    pub(crate) fn mtime(&self) -> Option<SystemTime> {
        self.dirty.as_ref().and_then(|d| d.mtime)
    }

    /// Forget the cached mtime (an explicit utimes was applied to the backing file).
    pub(crate) fn clear_mtime(&mut self) {
        if let Some(d) = self.dirty.as_mut() {
            d.mtime = None;
        }
    }

    /// True if anything (data or size) differs from the backing file.
    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty.is_some()
    }

    /// Bytes of cached, not yet persisted data.
    pub(crate) fn unsynced_bytes(&self) -> u64 {
        self.dirty.as_ref().map_or(0, |d| d.extents.values().map(|v| v.len() as u64).sum())
    }

    fn dirty_mut(&mut self) -> &mut Dirty {
        let durable_len = self.durable_len;
        self.dirty.get_or_insert_with(|| Dirty {
            size: durable_len,
            hide_from: durable_len,
            extents: BTreeMap::new(),
            mtime: None,
        })
    }

    /// Cache a write of `data` at `offset` (extends the file if needed).
    pub(crate) fn write(&mut self, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let d = self.dirty_mut();
        let len = data.len() as u64;
        let end = offset + len;

        // Merge into a predecessor that overlaps or touches `offset`
        // (in place, so sequential appends are amortised O(1)).
        let pred =
            d.extents.range(..=offset).next_back().filter(|(s, v)| **s + v.len() as u64 >= offset).map(|(s, _)| *s);
        let (start, mut buf) = match pred.and_then(|s| d.extents.remove(&s).map(|v| (s, v))) {
            Some((s, mut v)) => {
                let rel = (offset - s) as usize;
                if v.len() < rel + data.len() {
                    v.resize(rel + data.len(), 0);
                }
                v[rel..rel + data.len()].copy_from_slice(data);
                (s, v)
            }
            None => (offset, data.to_vec()),
        };
        // Absorb successors that overlap or touch the merged run; the new data
        // wins where they overlap, their tail beyond the run is kept.
        loop {
            let cur_end = start + buf.len() as u64;
            let next = d.extents.range(start + 1..=cur_end).next().map(|(s, _)| *s);
            let Some(s) = next else { break };
            let Some(v) = d.extents.remove(&s) else { break };
            let s_end = s + v.len() as u64;
            if s_end > cur_end {
                buf.extend_from_slice(&v[(cur_end - s) as usize..]);
            }
        }
        d.extents.insert(start, buf);
        d.size = d.size.max(end);
        d.mtime = Some(SystemTime::now());
    }

    /// Cache a truncate/extend to `new_size`.
    pub(crate) fn set_size(&mut self, new_size: u64) {
        let d = self.dirty_mut();
        if new_size < d.size {
            // Drop extents starting at/after the new end, trim the straddler.
            let _tail = d.extents.split_off(&new_size);
            if let Some((s, v)) = d.extents.iter_mut().next_back() {
                if s + v.len() as u64 > new_size {
                    v.truncate((new_size - s) as usize);
                }
            }
            d.hide_from = d.hide_from.min(new_size);
        }
        d.size = new_size;
        d.mtime = Some(SystemTime::now());
    }

    /// Cache a zeroing of `[offset, offset+len)` clipped to the file size
    /// (used for hole punching / zero-range).
    pub(crate) fn zero_range(&mut self, offset: u64, len: u64) {
        let size = self.size();
        let end = offset.saturating_add(len).min(size);
        if end <= offset {
            return;
        }
        // Chunked so a huge range does not need one huge allocation at once.
        const CHUNK: u64 = 1 << 20;
        let zeros = vec![0u8; CHUNK.min(end - offset) as usize];
        let mut at = offset;
        while at < end {
            let n = CHUNK.min(end - at) as usize;
            self.write(at, &zeros[..n]);
            at += n as u64;
        }
    }

    /// Read up to `len` bytes at `offset` of the logical file.
    pub(crate) fn read<B: Backing>(&self, backing: &B, offset: u64, len: u32) -> io::Result<Vec<u8>> {
        let size = self.size();
        let end = offset.saturating_add(u64::from(len)).min(size);
        if end <= offset {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; (end - offset) as usize];
        let Some(d) = self.dirty.as_ref() else {
            let n = read_full(backing, &mut buf, offset)?;
            buf.truncate(n);
            return Ok(buf);
        };
        if offset < d.hide_from {
            let bend = end.min(d.hide_from);
            // A short backing read leaves zeros, which is what a hole reads as.
            read_full(backing, &mut buf[..(bend - offset) as usize], offset)?;
        }
        let first = d.extents.range(..=offset).next_back().filter(|(s, v)| **s + v.len() as u64 > offset);
        let rest = d.extents.range(offset + 1..end);
        for (s, v) in first.into_iter().chain(rest) {
            let lo = (*s).max(offset);
            let hi = (s + v.len() as u64).min(end);
            if lo < hi {
                buf[(lo - offset) as usize..(hi - offset) as usize]
                    .copy_from_slice(&v[(lo - s) as usize..(hi - s) as usize]);
            }
        }
        Ok(buf)
    }

    /// Write all cached changes to `backing` (no fsync; the caller does that).
    /// Returns `None` if the file was clean, else the number of data bytes
    /// written. On error the cache is kept so nothing is silently lost.
    pub(crate) fn persist_to<B: Backing>(&mut self, backing: &B) -> io::Result<Option<u64>> {
        let Some(d) = self.dirty.take() else {
            return Ok(None);
        };
        let res = (|| {
            if d.hide_from < self.durable_len {
                backing.set_len(d.hide_from)?;
            }
            let mut bytes = 0u64;
            for (s, v) in &d.extents {
                backing.write_all_at(v, *s)?;
                bytes += v.len() as u64;
            }
            if backing.len()? != d.size {
                backing.set_len(d.size)?;
            }
            Ok(bytes)
        })();
        match res {
            Ok(bytes) => {
                self.durable_len = d.size;
                Ok(Some(bytes))
            }
            Err(e) => {
                if let Ok(l) = backing.len() {
                    self.durable_len = l;
                }
                self.dirty = Some(d);
                Err(e)
            }
        }
    }

    /// Discard every unsynced change (power cut). Returns what was lost, or
    /// `None` if the file was clean.
    pub(crate) fn drop_unsynced(&mut self) -> Option<Dropped> {
        let d = self.dirty.take()?;
        Some(Dropped { bytes: d.extents.values().map(|v| v.len() as u64).sum() })
    }
}

/// `read_at` until `buf` is full or EOF; returns bytes read.
fn read_full<B: Backing>(backing: &B, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match backing.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// In-memory backing file.
    #[derive(Default)]
    struct Mem(RefCell<Vec<u8>>);

    impl Backing for Mem {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            let v = self.0.borrow();
            let off = offset as usize;
            if off >= v.len() {
                return Ok(0);
            }
            // Deliberately short reads to exercise read_full.
            let n = buf.len().min(v.len() - off).min(7);
            buf[..n].copy_from_slice(&v[off..off + n]);
            Ok(n)
        }
        fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
            let mut v = self.0.borrow_mut();
            let end = offset as usize + buf.len();
            if v.len() < end {
                v.resize(end, 0);
            }
            v[offset as usize..end].copy_from_slice(buf);
            Ok(())
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            self.0.borrow_mut().resize(len as usize, 0);
            Ok(())
        }
        fn len(&self) -> io::Result<u64> {
            Ok(self.0.borrow().len() as u64)
        }
    }

    /// Tiny deterministic PRNG (xorshift64*).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn logical(c: &FileCache, b: &Mem) -> Vec<u8> {
        c.read(b, 0, u32::MAX).expect("read")
    }

    #[test]
    fn sequential_appends_merge_into_one_extent() {
        let b = Mem::default();
        let mut c = FileCache::new(0);
        for i in 0..1000u64 {
            c.write(i * 3, &[i as u8; 3]);
        }
        let d = c.dirty.as_ref().expect("dirty");
        assert_eq!(d.extents.len(), 1);
        assert_eq!(c.size(), 3000);
        assert_eq!(c.unsynced_bytes(), 3000);
        assert_eq!(logical(&c, &b)[2997..], [231, 231, 231]);
    }

    #[test]
    fn truncate_hides_backing_then_extend_reads_zeros() {
        let b = Mem(RefCell::new(vec![7u8; 100]));
        let mut c = FileCache::new(100);
        c.set_size(10);
        c.set_size(50);
        let v = logical(&c, &b);
        assert_eq!(v.len(), 50);
        assert!(v[..10].iter().all(|&x| x == 7));
        assert!(v[10..].iter().all(|&x| x == 0));
        // power cut restores the backing view
        assert_eq!(c.drop_unsynced(), Some(Dropped { bytes: 0 }));
        assert_eq!(logical(&c, &b), vec![7u8; 100]);
    }

    /// Random operations against a plain Vec model, with persists and power
    /// cuts; checks reads, persisted contents and what survives a cut.
    #[test]
    fn randomized_against_model() {
        for seed in 1..40u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let b = Mem::default();
            let mut c = FileCache::new(0);
            let mut model: Vec<u8> = Vec::new(); // logical contents
            let mut durable: Vec<u8> = Vec::new(); // what a cut must restore
            for step in 0..400 {
                match rng.below(100) {
                    0..=59 => {
                        let off = rng.below(300);
                        let len = 1 + rng.below(40) as usize;
                        let byte = (rng.next() as u8) | 1;
                        let data = vec![byte; len];
                        c.write(off, &data);
                        let end = off as usize + len;
                        if model.len() < end {
                            model.resize(end, 0);
                        }
                        model[off as usize..end].copy_from_slice(&data);
                    }
                    60..=71 => {
                        let n = rng.below(320);
                        c.set_size(n);
                        model.resize(n as usize, 0);
                    }
                    72..=77 => {
                        let off = rng.below(300);
                        let len = rng.below(60);
                        c.zero_range(off, len);
                        let end = ((off + len) as usize).min(model.len());
                        if (off as usize) < end {
                            model[off as usize..end].fill(0);
                        }
                    }
                    78..=87 => {
                        c.persist_to(&b).expect("persist");
                        durable = model.clone();
                        assert_eq!(*b.0.borrow(), durable, "seed {seed} step {step} persist");
                    }
                    88..=92 => {
                        c.drop_unsynced();
                        model = durable.clone();
                    }
                    _ => {
                        let off = rng.below(330);
                        let len = rng.below(100) as u32;
                        let got = c.read(&b, off, len).expect("read");
                        let lo = (off as usize).min(model.len());
                        let hi = (off as usize + len as usize).min(model.len());
                        assert_eq!(got, model[lo..hi], "seed {seed} step {step} read");
                    }
                }
                assert_eq!(c.size(), model.len() as u64, "seed {seed} step {step} size");
                assert_eq!(logical(&c, &b), model, "seed {seed} step {step} contents");
                if let Some(d) = c.dirty.as_ref() {
                    assert!(d.hide_from <= d.size);
                    let mut prev_end = None;
                    for (s, v) in &d.extents {
                        assert!(!v.is_empty());
                        assert!(s + v.len() as u64 <= d.size);
                        if let Some(pe) = prev_end {
                            assert!(*s > pe, "extents must not touch");
                        }
                        prev_end = Some(s + v.len() as u64);
                    }
                }
            }
        }
    }
}
