//! Serving faults on the leader: per-page serialisation, then the plan's IO, then
//! the commit.
//!
//! A fault takes the page's lock, reads the directory (linearizably: once per
//! leader term the node waits until it has applied everything committed before it
//! led), and runs the plan: invalidate copies, forward from the owner, commit, and
//! confirm to the requester before the lock is released. The requester is told
//! nothing until the commit is applied (commit point 1). A commit
//! that finds the page moved is planned and run again with the same (client, seq).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;

use super::holders::Holder;
use super::replica::Replica;
use crate::error::Error;
use crate::protocol::{ClientId, Directory, FaultKind, FaultPlan, Grant, Outcome, PageName, Plan};
use crate::rpc::Channels;
use crate::storage::SharedDirectory;

/// How many times a fault is planned again when its page moved or its owner was not ready.
const MAX_REDO: u32 = 8;

/// How long a caller waits for its fault before it is told the outcome is
/// unknown; below the client's per-RPC timeout, so the client hears why.
pub const FAULT_REPLY_DEADLINE: Duration = Duration::from_millis(2500);

/// Pause before a redo, times the attempt number.
const REDO_BACKOFF: Duration = Duration::from_millis(10);

/// The leader's fault server.
pub struct Faults {
    replica: Replica,
    dir: SharedDirectory,
    channels: Channels,
    skip_invalidation: bool,
    locks: Mutex<HashMap<PageName, Arc<tokio::sync::Mutex<()>>>>,
}

impl Faults {
    /// A fault server committing through `replica`, reading `dir` and calling
    /// holders via `channels`; `skip_invalidation` breaks coherence (testing only).
    pub fn new(replica: Replica, dir: SharedDirectory, channels: Channels, skip_invalidation: bool) -> Self {
        if skip_invalidation {
            tracing::warn!("UNSAFE: invalidations are skipped; copies will go stale");
        }
        Faults { replica, dir, channels, skip_invalidation, locks: Mutex::default() }
    }

    /// The replication this server commits through.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// Serves fault `seq` of `client` on `page` and returns the committed grant.
    ///
    /// The fault runs in a task of its own that holds the page's lock until its
    /// commit has resolved one way or the other, even when the caller gives up or
    /// its RPC is cancelled: releasing the lock while a commit may still land
    /// would let the next fault plan from a directory about to change under it.
    pub async fn fault(
        self: &Arc<Self>,
        client: ClientId,
        seq: u64,
        page: &PageName,
        kind: FaultKind,
    ) -> Result<Grant, Error> {
        self.replica.ensure_leader().await?;
        let (this, owned_page) = (self.clone(), page.clone());
        let task = tokio::spawn(async move { this.fault_locked(client, seq, &owned_page, kind).await });
        match tokio::time::timeout(FAULT_REPLY_DEADLINE, task).await {
            Ok(Ok(served)) => served,
            Ok(Err(err)) => Err(Error::Unavailable(format!("fault task on {page}: {err}"))),
            Err(_) => Err(Error::NoQuorum(format!(
                "the fault on {page} did not complete within {} ms; it may still commit",
                FAULT_REPLY_DEADLINE.as_millis()
            ))),
        }
    }

    async fn fault_locked(&self, client: ClientId, seq: u64, page: &PageName, kind: FaultKind) -> Result<Grant, Error> {
        let lock = self.page_lock(page);
        let served = {
            let _serialised = lock.lock().await;
            let served = self.serve(client, seq, page, kind).await;
            if let Ok(grant) = &served {
                self.confirm(client, page, *grant, seq).await;
            }
            served
        };
        self.drop_lock_if_idle(page, lock);
        served
    }

    async fn serve(&self, client: ClientId, seq: u64, page: &PageName, kind: FaultKind) -> Result<Grant, Error> {
        let mut last_err = None;
        for attempt in 0..MAX_REDO {
            if attempt > 0 {
                tokio::time::sleep(REDO_BACKOFF * attempt).await;
            }
            let plan = match self.read(|d| d.plan_fault(client, seq, page, kind))? {
                Plan::Cached(grant) => return Ok(grant),
                Plan::Run(plan) => plan,
            };
            match self.run(client, page, &plan).await {
                Ok(grant) => return Ok(grant),
                Err(err @ (Error::EpochMoved { .. } | Error::NotHeld { .. })) => last_err = Some(err),
                Err(err) => return Err(err),
            }
        }
        Err(last_err.unwrap_or_else(|| Error::Unavailable("fault was not served".into())))
    }

    /// Commits any other directory command (registration) on the leader.
    pub async fn commit(&self, cmd: crate::protocol::DirCmd) -> Result<Outcome, Error> {
        self.replica.ensure_leader().await?;
        match tokio::time::timeout(FAULT_REPLY_DEADLINE, self.replica.commit(cmd)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Error::NoQuorum(format!(
                "the change did not commit within {} ms; is a majority of CM nodes up?",
                FAULT_REPLY_DEADLINE.as_millis()
            ))),
        }
    }

    /// Runs `f` on the directory.
    pub fn read<T>(&self, f: impl FnOnce(&Directory) -> T) -> T {
        f(&self.dir.read().unwrap_or_else(|e| e.into_inner()))
    }

    async fn run(&self, client: ClientId, page: &PageName, plan: &FaultPlan) -> Result<Grant, Error> {
        let requester = self.holder(client)?;
        self.invalidate_all(page, &plan.invalidate, plan.invalidate_epoch).await?;
        if let Some(fwd) = &plan.forward {
            let owner = self.holder(fwd.owner)?;
            owner.forward(&self.channels, page, fwd, &requester).await?;
        }
        let grant = match self.replica.commit(plan.commit.clone()).await? {
            Outcome::Granted(grant) => grant,
            Outcome::Rejected(err) => return Err(err),
            other => return Err(Error::Storage(format!("fault commit gave {other:?}"))),
        };
        if let Some(old) = plan.release {
            self.release(old, page, grant.epoch);
        }
        Ok(grant)
    }

    /// Invalidates every copy holder in parallel; any failure fails the fault.
    async fn invalidate_all(&self, page: &PageName, holders: &[ClientId], epoch: u64) -> Result<(), Error> {
        if self.skip_invalidation {
            return Ok(());
        }
        let mut calls = JoinSet::new();
        for id in holders {
            let holder = self.holder(*id)?;
            let (channels, page) = (self.channels.clone(), page.clone());
            calls.spawn(async move { holder.invalidate(&channels, &page, epoch).await });
        }
        while let Some(done) = calls.join_next().await {
            done.map_err(|e| Error::Unavailable(format!("invalidation task: {e}")))??;
        }
        Ok(())
    }

    /// Confirms a committed grant to the requester while the page is still locked,
    /// so its copy is installed (and a write applied) before the next fault on the
    /// page. Best effort: the requester also installs on the fault's reply.
    async fn confirm(&self, client: ClientId, page: &PageName, grant: Grant, seq: u64) {
        let confirmed = match self.holder(client) {
            Ok(holder) => holder.confirm(&self.channels, page, grant, seq).await,
            Err(err) => Err(err),
        };
        if let Err(err) = confirmed {
            tracing::debug!("confirm of {page} at epoch {} to client {client}: {err}", grant.epoch);
        }
    }

    /// Tells an old owner, best effort, that its kept bytes are no longer needed.
    fn release(&self, old: ClientId, page: &PageName, epoch: u64) {
        let Ok(holder) = self.holder(old) else { return };
        let (channels, page) = (self.channels.clone(), page.clone());
        tokio::spawn(async move {
            if let Err(err) = holder.invalidate(&channels, &page, epoch).await {
                tracing::debug!("release of {page} at client {}: {err}", holder.id);
            }
        });
    }

    fn holder(&self, id: ClientId) -> Result<Holder, Error> {
        let addr = self.read(|d| d.client(id).map(|c| c.addr.clone()));
        let addr = addr.ok_or(Error::UnknownClient { client: id })?;
        Ok(Holder { id, addr })
    }

    fn page_lock(&self, page: &PageName) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(page.clone()).or_default().clone()
    }

    /// Forgets a page's lock when no other fault holds or waits for it, so the
    /// map stays as small as the set of pages being faulted on.
    fn drop_lock_if_idle(&self, page: &PageName, lock: Arc<tokio::sync::Mutex<()>>) {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        // One reference in the map and ours: nobody else holds or waits.
        if Arc::strong_count(&lock) == 2 {
            locks.remove(page);
        }
    }
}
