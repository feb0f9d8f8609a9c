//! [`Region`]: the user's handle on a mapped region.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;

use tokio::runtime::{Handle, RuntimeFlavor};

use super::fault::Faulter;
use super::mapping::Mapping;
use super::uffd::{self, Uffd, PAGE};
use super::{RegionOptions, RegionStats, LEASE_GUARD, REGION_PAGE};
use crate::client::{Client, Shared};
use crate::error::Error;
use crate::protocol::PageName;

/// Pause of the lease guard while the lease is not valid.
const GUARD_TICK: std::time::Duration = std::time::Duration::from_millis(20);

/// DSM pages `<name>.0` .. `<name>.<n-1>` mapped into this process as one block
/// of memory; plain loads and stores on it stay coherent with other processes.
///
/// Touch the memory from threads that are not the tokio runtime's workers
/// (a std thread, `spawn_blocking`): a fault blocks the touching thread until
/// the cluster answers, and the answer needs the runtime.
pub struct Region {
    map: Arc<Mapping>,
    client: Arc<Client>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    guard: tokio::task::JoinHandle<()>,
}

impl Region {
    /// Maps `pages` pages named `<name>.<index>`, from inside a multi-thread tokio runtime.
    pub fn map(client: &Arc<Client>, name: &str, pages: usize) -> Result<Region, Error> {
        Region::map_with(client, name, pages, RegionOptions::default())
    }

    /// Maps like [`Region::map`], with `options`.
    pub fn map_with(client: &Arc<Client>, name: &str, pages: usize, options: RegionOptions) -> Result<Region, Error> {
        let rt = runtime()?;
        check(client, name, pages)?;
        let uffd = Uffd::open()?;
        let len = pages * PAGE;
        let base = uffd::map_anonymous(len)?;
        if let Err(e) = uffd.register(base, len) {
            uffd::unmap(base, len);
            return Err(e);
        }
        if options.unsafe_keep_stale {
            tracing::warn!(region = name, "UNSAFE: invalidated pages stay mapped (testing only)");
        }
        let map = Arc::new(Mapping::new(name, base, pages, uffd, options.unsafe_keep_stale));
        client.shared.regions.add(map.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let faulter = Faulter { map: map.clone(), client: client.clone(), rt: rt.clone(), stop: stop.clone() };
        let thread = std::thread::Builder::new()
            .name(format!("ivy-fault-{name}"))
            .spawn(move || faulter.run())
            .map_err(|e| Error::Internal(format!("cannot start the fault thread: {e}")))?;
        let guard = rt.spawn(lease_guard(Arc::downgrade(&map), client.shared.clone()));
        Ok(Region { map, client: client.clone(), stop, thread: Some(thread), guard })
    }

    /// The region's name (its pages are `<name>.<index>`).
    pub fn name(&self) -> &str {
        &self.map.name
    }

    /// The number of pages.
    pub fn pages(&self) -> usize {
        self.map.pages
    }

    /// The size in bytes.
    pub fn len(&self) -> usize {
        self.map.pages * PAGE
    }

    /// Always false: a region has at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The client the region faults through.
    pub fn client(&self) -> &Arc<Client> {
        &self.client
    }

    /// The memory as bytes (atomics: other processes' stores show up in it).
    pub fn bytes(&self) -> &[AtomicU8] {
        // SAFETY: the mapping is `len` bytes, lives as long as `self`, and
        // AtomicU8 has the layout of u8 and allows changes behind shared refs.
        unsafe { std::slice::from_raw_parts(self.map.base as *const AtomicU8, self.len()) }
    }

    /// The memory as 64-bit words.
    pub fn u64s(&self) -> &[AtomicU64] {
        // SAFETY: as for `bytes`; the base is page aligned, so 8-byte aligned.
        unsafe { std::slice::from_raw_parts(self.map.base as *const AtomicU64, self.len() / 8) }
    }

    /// Ok unless a fault could not be served (then the error says which and why).
    pub fn check(&self) -> Result<(), Error> {
        self.map.poisoned().map_or(Ok(()), Err)
    }

    /// Loads word `i`.
    pub fn load_u64(&self, i: usize) -> Result<u64, Error> {
        let v = self.word(i)?.load(Ordering::Acquire);
        self.check().map(|()| v)
    }

    /// Stores `v` to word `i`.
    pub fn store_u64(&self, i: usize, v: u64) -> Result<(), Error> {
        self.word(i)?.store(v, Ordering::Release);
        self.check()
    }

    /// Copies `buf.len()` bytes from `offset` into `buf`.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), Error> {
        let src = self.range(offset, buf.len())?;
        for (b, a) in buf.iter_mut().zip(src) {
            *b = a.load(Ordering::Relaxed);
        }
        self.check()
    }

    /// Copies `data` to `offset`.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<(), Error> {
        let dst = self.range(offset, data.len())?;
        for (a, b) in dst.iter().zip(data) {
            a.store(*b, Ordering::Relaxed);
        }
        self.check()
    }

    /// What the region's faults have done so far.
    pub fn stats(&self) -> RegionStats {
        self.map.stats()
    }

    fn word(&self, i: usize) -> Result<&AtomicU64, Error> {
        self.check()?;
        let words = self.u64s();
        words.get(i).ok_or_else(|| {
            Error::Malformed(format!("word {i} is past region {} of {} words", self.name(), words.len()))
        })
    }

    fn range(&self, offset: usize, len: usize) -> Result<&[AtomicU8], Error> {
        self.check()?;
        let end = offset.checked_add(len).filter(|e| *e <= self.len());
        let end =
            end.ok_or_else(|| Error::Malformed(format!("bytes {offset}+{len} are past region {}", self.name())))?;
        Ok(&self.bytes()[offset..end])
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        self.guard.abort();
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.client.shared.regions.remove(&self.map);
        self.map.uffd.unregister(self.map.base, self.len());
        uffd::unmap(self.map.base, self.len());
    }
}

/// The runtime the fault thread runs IVY faults on (it must have worker threads).
fn runtime() -> Result<Handle, Error> {
    let rt = Handle::try_current().map_err(|_| Error::InvalidConfig("Region::map needs a tokio runtime".into()))?;
    if rt.runtime_flavor() == RuntimeFlavor::CurrentThread {
        return Err(Error::InvalidConfig("Region::map needs a multi-thread tokio runtime".into()));
    }
    Ok(rt)
}

/// The region's size and page names fit the client's limits.
fn check(client: &Client, name: &str, pages: usize) -> Result<(), Error> {
    if pages == 0 || pages.checked_mul(PAGE).is_none() {
        return Err(Error::InvalidConfig(format!("region {name}: {pages} pages is not a usable size")));
    }
    PageName::new(&format!("{name}.{}", pages - 1))?;
    if client.shared.max_page_bytes < REGION_PAGE {
        let max = client.shared.max_page_bytes;
        return Err(Error::InvalidConfig(format!(
            "region pages are {REGION_PAGE} bytes; this client's --max-page-bytes is {max}"
        )));
    }
    if client.shared.regions.lock().iter().any(|m| m.name == name) {
        return Err(Error::InvalidConfig(format!("region {name} is already mapped over this client")));
    }
    Ok(())
}

/// Zaps every page of the region shortly before the lease runs out, and again
/// while it stays out, so no load is served beyond the lease.
async fn lease_guard(map: Weak<Mapping>, shared: Arc<Shared>) {
    loop {
        match shared.lease.remaining() {
            Some(left) if left > LEASE_GUARD + GUARD_TICK => tokio::time::sleep(left - LEASE_GUARD - GUARD_TICK).await,
            _ => {
                let Some(map) = map.upgrade() else { return };
                map.revoke_all(&shared);
                drop(map);
                tokio::time::sleep(GUARD_TICK).await;
            }
        }
    }
}
