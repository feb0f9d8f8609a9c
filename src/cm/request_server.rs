//! The leader's request server: registrations, and faults served one page at a
//! time by stepping a [`FaultRun`].
//!
//! A fault takes its page's lock, reads the directory (linearizably: once per
//! leader term the node waits until it has applied everything committed before
//! it led) and steps a [`FaultRun`], performing each step's IO: invalidations in
//! parallel, the forward, the commit through the [`Replica`], the best-effort
//! release, the confirmation. The run decides the order; this file only does the
//! IO and holds the lock until the run is done.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;

use super::replica::Replica;
use crate::error::Error;
use crate::protocol::{
    Applied, ClientId, DirCmd, Directory, Epoch, FaultEvent, FaultRequest, FaultRun, FaultStep, Forward, Grant,
    PageName, SharedDirectory,
};
use crate::rpc::{HolderClient, HolderRef, ManagerApi};
use crate::status::NodeStatus;

/// How long a caller waits for its fault before it is told the outcome is
/// unknown; below the client's per-RPC timeout, so the client hears why.
pub const FAULT_REPLY_DEADLINE: Duration = Duration::from_millis(2500);

/// The leader's request server.
pub struct RequestServer {
    replica: Replica,
    dir: SharedDirectory,
    holders: HolderClient,
    skip_invalidation: bool,
    locks: Mutex<HashMap<PageName, Arc<tokio::sync::Mutex<()>>>>,
}

impl RequestServer {
    /// A server committing through `replica`, reading `dir` and calling holders
    /// through `holders`; `skip_invalidation` breaks coherence (testing only).
    pub fn new(replica: Replica, dir: SharedDirectory, holders: HolderClient, skip_invalidation: bool) -> Self {
        if skip_invalidation {
            tracing::warn!("UNSAFE: invalidations are skipped; copies will go stale");
        }
        RequestServer { replica, dir, holders, skip_invalidation, locks: Mutex::default() }
    }

    /// The replication this server commits through.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// Runs `f` on the directory.
    pub fn read<T>(&self, f: impl FnOnce(&Directory) -> T) -> T {
        f(&self.dir.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Serves one fault and returns the committed grant.
    ///
    /// The fault runs in a task of its own that holds the page's lock until its
    /// run is done, even when the caller gives up or its RPC is cancelled:
    /// releasing the lock while a commit may still land would let the next fault
    /// plan from a directory about to change under it.
    pub async fn serve_fault(self: &Arc<Self>, request: FaultRequest) -> Result<Grant, Error> {
        self.replica.ensure_leader().await?;
        let page = request.page.clone();
        let this = self.clone();
        let task = tokio::spawn(async move { this.fault_locked(request).await });
        match tokio::time::timeout(FAULT_REPLY_DEADLINE, task).await {
            Ok(Ok(served)) => served,
            Ok(Err(err)) => Err(Error::Internal(format!("fault task on {page}: {err}"))),
            Err(_) => Err(Error::NoQuorum(format!(
                "the fault on {page} did not complete within {} ms; it may still commit",
                FAULT_REPLY_DEADLINE.as_millis()
            ))),
        }
    }

    async fn fault_locked(&self, request: FaultRequest) -> Result<Grant, Error> {
        let page = request.page.clone();
        let lock = self.page_lock(&page);
        let served = {
            let _serialised = lock.lock().await;
            self.run(request).await
        };
        self.drop_lock_if_idle(&page, lock);
        served
    }

    /// Steps one [`FaultRun`] to its end, doing each step's IO.
    async fn run(&self, request: FaultRequest) -> Result<Grant, Error> {
        let (client, seq, page) = (request.client, request.seq, request.page.clone());
        let (mut run, mut step) = self.read(|d| FaultRun::start(request, d));
        loop {
            step = match step {
                FaultStep::Invalidate { holders, epoch } => {
                    run.on(FaultEvent::Invalidated(self.invalidate_all(&page, &holders, epoch).await))
                }
                FaultStep::Forward(fwd) => run.on(FaultEvent::Forwarded(self.forward(client, &page, &fwd).await)),
                FaultStep::Commit(cmd) => run.on(FaultEvent::Committed(self.replica.commit(cmd).await)),
                FaultStep::Release { owner, epoch } => {
                    self.release(owner, &page, epoch);
                    run.on(FaultEvent::Released)
                }
                FaultStep::Confirm(grant) => {
                    run.on(FaultEvent::Confirmed(self.confirm(client, &page, grant, seq).await))
                }
                FaultStep::Replan { backoff } => {
                    tokio::time::sleep(backoff).await;
                    self.read(|d| run.replan(d))
                }
                FaultStep::Done(result) => return result,
            };
        }
    }

    /// Invalidates every copy holder in parallel; any failure fails the step.
    async fn invalidate_all(&self, page: &PageName, holders: &[ClientId], epoch: Epoch) -> Result<(), Error> {
        if self.skip_invalidation {
            return Ok(());
        }
        let mut calls = JoinSet::new();
        for id in holders {
            let (holder, rpc, page) = (self.holder(*id)?, self.holders.clone(), page.clone());
            calls.spawn(async move { rpc.invalidate(&holder, &page, epoch).await });
        }
        while let Some(done) = calls.join_next().await {
            done.map_err(|e| Error::Internal(format!("invalidation task: {e}")))??;
        }
        Ok(())
    }

    /// Asks the owner to send the page to the requester.
    async fn forward(&self, client: ClientId, page: &PageName, fwd: &Forward) -> Result<(), Error> {
        let (owner, requester) = (self.holder(fwd.owner)?, self.holder(client)?);
        self.holders.forward(&owner, page, fwd, &requester).await
    }

    /// Confirms a committed grant to the requester (best effort: the requester
    /// also installs on the fault's reply).
    async fn confirm(&self, client: ClientId, page: &PageName, grant: Grant, seq: u64) -> Result<(), Error> {
        let confirmed = match self.holder(client) {
            Ok(holder) => self.holders.confirm(&holder, page, grant, seq).await,
            Err(err) => Err(err),
        };
        if let Err(err) = &confirmed {
            tracing::debug!("confirm of {page} at epoch {} to client {client}: {err}", grant.epoch);
        }
        confirmed
    }

    /// Tells an old owner, best effort and without waiting, that its kept bytes may go.
    fn release(&self, owner: ClientId, page: &PageName, epoch: Epoch) {
        let Ok(holder) = self.holder(owner) else { return };
        let (rpc, page) = (self.holders.clone(), page.clone());
        tokio::spawn(async move {
            if let Err(err) = rpc.invalidate(&holder, &page, epoch).await {
                tracing::debug!("release of {page} at client {}: {err}", holder.id);
            }
        });
    }

    fn holder(&self, id: ClientId) -> Result<HolderRef, Error> {
        let addr = self.read(|d| d.client(id).map(|c| c.addr.clone()));
        let addr = addr.ok_or(Error::UnknownClient { client: id })?;
        Ok(HolderRef { id, addr })
    }

    /// Commits any other directory command (registration) on the leader.
    async fn commit(&self, cmd: DirCmd) -> Result<Applied, Error> {
        self.replica.ensure_leader().await?;
        match tokio::time::timeout(FAULT_REPLY_DEADLINE, self.replica.commit(cmd)).await {
            Ok(applied) => applied,
            Err(_) => Err(Error::NoQuorum(format!(
                "the change did not commit within {} ms; is a majority of CM nodes up?",
                FAULT_REPLY_DEADLINE.as_millis()
            ))),
        }
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

/// The client-facing API of a node, served by its request server.
pub struct ManagerHandler(pub Arc<RequestServer>);

#[crate::rpc::async_trait]
impl ManagerApi for ManagerHandler {
    async fn register(&self, addr: String, nonce: u64) -> Result<ClientId, Error> {
        match self.0.commit(DirCmd::Register { addr, nonce }).await? {
            Applied::Registered { client } => Ok(client),
            other => Err(Error::Internal(format!("registration gave {other:?}"))),
        }
    }

    async fn unregister(&self, client: ClientId) -> Result<(), Error> {
        self.0.commit(DirCmd::Unregister { client }).await.map(|_| ())
    }

    async fn fault(&self, request: FaultRequest) -> Result<Grant, Error> {
        self.0.serve_fault(request).await
    }

    async fn status(&self) -> Result<NodeStatus, Error> {
        let mut status = self.0.replica.status();
        (status.pages, status.clients) = self.0.read(|d| (d.pages().count() as u64, d.client_count() as u64));
        Ok(status)
    }
}
