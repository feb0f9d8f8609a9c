//! The leader's request server: registrations, and faults served one page at a
//! time by stepping a [`FaultRun`].
//!
//! A fault takes its page's lock, reads the directory (linearizably: once per
//! leader term the node waits until it has applied everything committed before
//! it led) and steps a [`FaultRun`], performing each step's IO: invalidations in
//! parallel, the forward, the commit through the [`Replica`], the best-effort
//! release (queued per holder: it rides on the next forward or invalidation to
//! that holder, or leaves in a batch, `deliver_releases`). The run decides the
//! order; this file only does the IO and holds the
//! lock until the run is done, which is as soon as its commit has resolved: the
//! reply is the requester's confirmation.
//!
//! A holder that does not answer holds the fault up until it answers again or its
//! lease runs out; then the fault evicts it and plans again without it. The
//! server also renews leases (`keep_alive`) and evicts, in the background, every
//! client whose lease ran out (`watch_leases`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use super::admission::Admission;
use super::leases::Leases;
use super::replica::Replica;
use crate::error::Error;
use crate::metrics::{self, ReleaseVia};
use crate::protocol::{
    Applied, Caps, ClientId, DirCmd, Directory, Epoch, FaultEvent, FaultRequest, FaultRun, FaultStep, Forward, Grant,
    PageName, Releases, SharedDirectory,
};
use crate::rpc::{HolderClient, HolderRef, ManagerApi, Removal};
use crate::status::{ClientLease, NodeStatus, PageState as ShownState, PageView, PagesReport};

mod releases;

/// How long a caller waits for its fault before it is told the outcome is
/// unknown; below the client's per-RPC timeout, so the client hears why.
pub const FAULT_REPLY_DEADLINE: Duration = Duration::from_millis(2500);

/// How long before the caller's own deadline a slow fault answers why it is slow.
const REPLY_MARGIN: Duration = crate::rpc::FAULT_REPLY_MARGIN;

/// How often a fault held up by a silent holder plans again (the holder may be
/// back, or evicted).
const HOLDER_RETRY: Duration = Duration::from_millis(100);

/// How long past a holder's eviction time a fault keeps waiting on it before it
/// gives up (the eviction itself may have to wait for a quorum).
const HOLDER_PATIENCE_EXTRA: Duration = Duration::from_secs(1);

/// Most pages one `pages` answer lists.
pub const MAX_PAGES_SHOWN: usize = 10_000;

/// How often the leader looks for leases that ran out, as a share of the lease.
const LEASE_CHECKS_PER_LEASE: u32 = 8;

/// The leader's request server.
pub struct RequestServer {
    replica: Replica,
    dir: SharedDirectory,
    holders: HolderClient,
    leases: Leases,
    skip_invalidation: bool,
    admission: Admission,
    locks: Mutex<HashMap<PageName, Arc<tokio::sync::Mutex<()>>>>,
    /// Releases not yet sent, and the stretch of leadership they were queued in.
    releases: Mutex<(Option<u64>, Releases)>,
    started: Instant,
}

/// What a running fault last waited on, for the answer its caller gets when the
/// reply deadline passes first.
type Waiting = Arc<Mutex<Option<Error>>>;

impl RequestServer {
    /// A server committing through `replica`, reading `dir`, calling holders
    /// through `holders` and keeping their `leases`; `skip_invalidation` breaks
    /// coherence (testing only).
    pub fn new(
        replica: Replica,
        dir: SharedDirectory,
        holders: HolderClient,
        leases: Leases,
        skip_invalidation: bool,
    ) -> Self {
        if skip_invalidation {
            tracing::warn!("UNSAFE: invalidations are skipped; copies will go stale");
        }
        let admission = Admission::default();
        RequestServer {
            replica,
            dir,
            holders,
            leases,
            skip_invalidation,
            admission,
            locks: Mutex::default(),
            releases: Mutex::default(),
            started: Instant::now(),
        }
    }

    /// This server, committing `caps` to the directory before it admits anything.
    pub fn with_caps(mut self, caps: Caps) -> Self {
        self.admission = Admission::new(caps);
        self
    }

    /// Commits this node's caps unless the directory has them already.
    async fn ensure_caps(&self) -> Result<(), Error> {
        let caps = self.admission.caps();
        if self.read(|d| d.caps()) == caps {
            return Ok(());
        }
        let committed = tokio::time::timeout(FAULT_REPLY_DEADLINE, self.replica.commit(DirCmd::SetCaps { caps }));
        let committed = committed.await.map_err(|_| {
            Error::NoQuorum(format!("the caps did not commit within {} ms", FAULT_REPLY_DEADLINE.as_millis()))
        })?;
        match committed? {
            Applied::CapsSet => Ok(()),
            other => Err(Error::Internal(format!("setting the caps gave {other:?}"))),
        }
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
    pub async fn serve_fault(
        self: &Arc<Self>,
        request: FaultRequest,
        reply_within: Option<Duration>,
    ) -> Result<Grant, Error> {
        let (started, kind) = (Instant::now(), request.kind);
        let _in_flight = metrics::fault_in_flight();
        let served = self.serve_fault_timed(request, reply_within).await;
        metrics::fault_served(kind, metrics::outcome(&served), started.elapsed());
        served
    }

    async fn serve_fault_timed(
        self: &Arc<Self>,
        request: FaultRequest,
        reply_within: Option<Duration>,
    ) -> Result<Grant, Error> {
        self.replica.ensure_leader().await?;
        self.ensure_caps().await?;
        if request.kind == crate::protocol::FaultKind::Write {
            self.read(|d| d.admits_page(&request.page))?;
        }
        let permit = self.admission.fault()?;
        let deadline =
            reply_within.map_or(FAULT_REPLY_DEADLINE, |w| w.saturating_sub(REPLY_MARGIN).min(FAULT_REPLY_DEADLINE));
        let page = request.page.clone();
        let (this, waiting) = (self.clone(), Waiting::default());
        let task = {
            let waiting = waiting.clone();
            tokio::spawn(async move {
                let _permit = permit;
                this.fault_locked(request, &waiting).await
            })
        };
        match tokio::time::timeout(deadline, task).await {
            Ok(Ok(served)) => served,
            Ok(Err(err)) => Err(Error::Internal(format!("fault task on {page}: {err}"))),
            Err(_) => Err(waiting.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_else(|| {
                Error::NoQuorum(format!(
                    "the fault on {page} did not complete within {} ms; it may still commit",
                    deadline.as_millis()
                ))
            })),
        }
    }

    async fn fault_locked(&self, request: FaultRequest, waiting: &Waiting) -> Result<Grant, Error> {
        // A retry of a granted request is answered from its session without the
        // page's lock (the next fault on the page may hold it while it waits on
        // this client); everything else is planned once, under the lock.
        let r = &request;
        if let Some(Applied::Granted(grant)) = self.read(|d| d.session_answer(r.client, r.seq, &r.page, r.kind)) {
            return Ok(grant);
        }
        let page = request.page.clone();
        let lock = self.page_lock(&page);
        let served = {
            let _serialised = lock.lock().await;
            self.run(request, waiting).await
        };
        self.drop_lock_if_idle(&page, lock);
        served
    }

    /// Steps one [`FaultRun`] to its end, doing each step's IO.
    async fn run(&self, request: FaultRequest, waiting: &Waiting) -> Result<Grant, Error> {
        let (client, page) = (request.client, request.page.clone());
        let started = Instant::now();
        let (mut run, mut step) = self.read(|d| FaultRun::start(request, d));
        loop {
            step = match step {
                FaultStep::Invalidate { holders, epoch } => {
                    run.on(FaultEvent::Invalidated(self.invalidate_all(&page, &holders, epoch).await))
                }
                FaultStep::Forward(fwd) => run.on(FaultEvent::Forwarded(self.forward(client, &page, &fwd).await)),
                FaultStep::Commit(cmd) => run.on(FaultEvent::Committed(self.replica.commit(cmd).await)),
                FaultStep::Release { holders, epoch } => {
                    self.release(&holders, &page, epoch);
                    run.on(FaultEvent::Released)
                }
                FaultStep::HolderDown { client, error } => {
                    let waited = self.await_holder(client, error, started, waiting).await;
                    run.on(waited.map_or_else(FaultEvent::HolderGaveUp, |()| FaultEvent::HolderAwaited))
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
            let carried = self.take_releases(*id);
            metrics::releases_sent(ReleaseVia::Invalidate, carried.len());
            calls.spawn(async move { rpc.invalidate(&holder, &page, epoch, &carried).await });
        }
        while let Some(done) = calls.join_next().await {
            done.map_err(|e| Error::Internal(format!("invalidation task: {e}")))??;
        }
        Ok(())
    }

    /// Asks the owner to send the page to the requester.
    async fn forward(&self, client: ClientId, page: &PageName, fwd: &Forward) -> Result<(), Error> {
        let (owner, requester) = (self.holder(fwd.owner)?, self.holder(client)?);
        let carried = self.take_releases(fwd.owner);
        metrics::releases_sent(ReleaseVia::Forward, carried.len());
        self.holders.forward(&owner, page, fwd, &requester, &carried).await
    }

    /// A holder did not answer: evict it once its lease has run out, or wait a
    /// little for it; `Err` (naming when it will be evicted) once the fault has
    /// waited past the holder's eviction time. While it waits, `waiting` says why.
    async fn await_holder(
        &self,
        client: ClientId,
        error: Error,
        started: Instant,
        waiting: &Waiting,
    ) -> Result<(), Error> {
        let Some(term) = self.replica.leader_term() else { return Err(error) };
        let remaining = self.leases.remaining(term, client, Instant::now());
        let why = with_eviction_time(error, remaining);
        *waiting.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.clone());
        if remaining.is_zero() {
            return self.evict(client, "it did not answer and its lease ran out").await.map(|_| ());
        }
        if started.elapsed() > self.leases.eviction_delay() + HOLDER_PATIENCE_EXTRA {
            return Err(why);
        }
        tracing::debug!("{why}");
        tokio::time::sleep(remaining.min(HOLDER_RETRY)).await;
        Ok(())
    }

    /// Commits the eviction of `client` (no-op when already gone) and forgets its lease.
    pub async fn evict(&self, client: ClientId, why: &str) -> Result<Removal, Error> {
        let addr = self.read(|d| d.client(client).map(|c| c.addr.clone()));
        let Some(addr) = addr else { return Ok(Removal::default()) };
        let removal = match self.commit(DirCmd::Evict { client }).await? {
            Applied::Removed { promoted, lost } => Removal { promoted: promoted as u64, lost: lost as u64 },
            other => return Err(Error::Internal(format!("eviction gave {other:?}"))),
        };
        self.leases.forget(client);
        metrics::eviction();
        tracing::warn!(
            event = "eviction",
            client,
            %addr,
            reason = why,
            pages_promoted = removal.promoted,
            pages_lost = removal.lost,
            "evicted client {client} at {addr}: {why}; {} pages passed to a copy holder, {} lost",
            removal.promoted,
            removal.lost
        );
        Ok(removal)
    }

    /// The background task that evicts every client whose lease ran out while
    /// this node leads; runs until the server is dropped.
    pub async fn watch_leases(self: Arc<Self>) {
        let every = (self.leases.lease() / LEASE_CHECKS_PER_LEASE).max(Duration::from_millis(20));
        let mut ticks = ticks(every);
        while self.next_tick(&mut ticks).await {
            let Some(term) = self.replica.leader_term() else { continue };
            let registered: Vec<ClientId> = self.read(|d| d.clients().map(|(id, _)| *id).collect());
            for client in self.leases.expired(term, registered.into_iter(), Instant::now()) {
                if let Err(err) = self.evict(client, "its lease ran out").await {
                    tracing::warn!("eviction of client {client}: {err}");
                }
            }
        }
    }

    /// Waits for the next of a background task's `ticks`; false once the task
    /// holds the server's last reference (the node is gone).
    async fn next_tick(self: &Arc<Self>, ticks: &mut tokio::time::Interval) -> bool {
        ticks.tick().await;
        Arc::strong_count(self) > 1
    }

    fn holder(&self, id: ClientId) -> Result<HolderRef, Error> {
        let addr = self.read(|d| d.client(id).map(|c| c.addr.clone()));
        let addr = addr.ok_or(Error::UnknownClient { client: id })?;
        Ok(HolderRef { id, addr })
    }

    /// Commits any other directory command (registration) on the leader.
    async fn commit(&self, cmd: DirCmd) -> Result<Applied, Error> {
        self.replica.ensure_leader().await?;
        self.ensure_caps().await?;
        match tokio::time::timeout(FAULT_REPLY_DEADLINE, self.replica.commit(cmd)).await {
            Ok(applied) => applied,
            Err(_) => Err(Error::NoQuorum(format!(
                "the change did not commit within {} ms; is a majority of CM nodes up?",
                FAULT_REPLY_DEADLINE.as_millis()
            ))),
        }
    }

    /// The directory's entries for `pages` (all when empty), after a majority
    /// confirmed this node's leadership since the question arrived.
    async fn pages(&self, pages: Vec<PageName>) -> Result<PagesReport, Error> {
        let asked = Instant::now();
        self.replica.ensure_leader().await?;
        self.replica.confirm_leadership(asked).await?;
        let faulting: std::collections::HashSet<PageName> = {
            let locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.iter().filter(|(_, l)| l.try_lock().is_err()).map(|(p, _)| p.clone()).collect()
        };
        Ok(self.read(|d| {
            let names: Vec<PageName> =
                if pages.is_empty() { d.pages().map(|(p, _)| p.clone()).collect() } else { pages };
            let more = names.len().saturating_sub(MAX_PAGES_SHOWN) as u64;
            let shown = names.into_iter().take(MAX_PAGES_SHOWN).map(|p| page_view(d, &p, faulting.contains(&p)));
            PagesReport { pages: shown.collect(), more }
        }))
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

/// One page as `ivy pages` shows it.
fn page_view(d: &Directory, page: &PageName, faulting: bool) -> PageView {
    let Some(entry) = d.page(page) else {
        let (state, owner, owner_addr, copy_set, epoch) = (ShownState::Absent, 0, None, Vec::new(), 0);
        return PageView { page: page.to_string(), state, owner, owner_addr, copy_set, epoch };
    };
    let (state, owner) = match entry.state {
        crate::protocol::PageState::Owned { owner } if faulting => (ShownState::Faulting, owner),
        crate::protocol::PageState::Owned { owner } => (ShownState::Live, owner),
        crate::protocol::PageState::Lost { with } => (ShownState::Lost, with),
    };
    PageView {
        page: page.to_string(),
        state,
        owner,
        owner_addr: d.client(owner).map(|c| c.addr.clone()),
        copy_set: entry.copy_set.iter().copied().collect(),
        epoch: entry.epoch,
    }
}

/// The error of a holder that did not answer, saying when it will be evicted.
fn with_eviction_time(error: Error, remaining: Duration) -> Error {
    match error {
        Error::ClientUnreachable { client, addr, reason, .. } => {
            Error::ClientUnreachable { client, addr, reason, evict_in_ms: Some(remaining.as_millis() as u64) }
        }
        other => other,
    }
}

/// The client-facing API of a node, served by its request server.
pub struct ManagerHandler(pub Arc<RequestServer>);

#[crate::rpc::async_trait]
impl ManagerApi for ManagerHandler {
    async fn register(&self, addr: String, nonce: u64) -> Result<(ClientId, Duration), Error> {
        let received = Instant::now();
        self.0.read(|d| d.admits_client(nonce))?;
        let client = match self.0.commit(DirCmd::Register { addr, nonce }).await? {
            Applied::Registered { client } => client,
            Applied::Rejected(err) => return Err(err),
            other => return Err(Error::Internal(format!("registration gave {other:?}"))),
        };
        // The commit proves this node led after `received`: the registration is
        // the client's first renewal.
        if let Some(term) = self.0.replica.leader_term() {
            self.0.leases.renew(term, client, received);
        }
        Ok((client, self.0.leases.lease()))
    }

    async fn unregister(&self, client: ClientId) -> Result<Removal, Error> {
        let removal = match self.0.commit(DirCmd::Unregister { client }).await? {
            Applied::Removed { promoted, lost } => Removal { promoted: promoted as u64, lost: lost as u64 },
            other => return Err(Error::Internal(format!("removal gave {other:?}"))),
        };
        self.0.leases.forget(client);
        Ok(removal)
    }

    async fn keep_alive(&self, client: ClientId) -> Result<Duration, Error> {
        let received = Instant::now();
        self.0.replica.ensure_leader().await?;
        let term = self.0.replica.leader_term().ok_or_else(|| Error::NoQuorum("leadership lost".into()))?;
        if let Some(err) = self.0.read(|d| d.client(client).is_none().then(|| d.unknown_client(client))) {
            return Err(err);
        }
        // Acknowledge only once a majority confirmed this node's leadership after
        // the request arrived: a deposed leader must not extend a lease the new
        // leader never saw.
        self.0.replica.confirm_leadership(received).await?;
        if self.0.replica.leader_term() == Some(term) {
            self.0.leases.renew(term, client, received);
        }
        Ok(self.0.leases.lease())
    }

    async fn evict(&self, client: ClientId) -> Result<Removal, Error> {
        if self.0.read(|d| d.client(client).is_none()) {
            return Err(Error::UnknownClient { client });
        }
        self.0.evict(client, "an operator evicted it").await
    }

    async fn fault(&self, request: FaultRequest, reply_within: Option<Duration>) -> Result<Grant, Error> {
        self.0.serve_fault(request, reply_within).await
    }

    async fn pages(&self, pages: Vec<PageName>) -> Result<PagesReport, Error> {
        self.0.pages(pages).await
    }

    async fn status(&self) -> Result<NodeStatus, Error> {
        let mut status = self.0.replica.status();
        status.version = env!("CARGO_PKG_VERSION").to_string();
        status.uptime_ms = self.0.started.elapsed().as_millis() as u64;
        let term = self.0.replica.leader_term();
        let now = Instant::now();
        let clients: Vec<(ClientId, String)> = self.0.read(|d| {
            status.pages = d.pages().count() as u64;
            d.clients().map(|(id, c)| (*id, c.addr.clone())).collect()
        });
        status.clients = clients.len() as u64;
        status.client_list = clients
            .into_iter()
            .map(|(id, addr)| {
                let age = term.map(|t| self.0.leases.age(t, id, now).as_millis() as u64);
                ClientLease { id, addr, keepalive_age_ms: age }
            })
            .collect();
        Ok(status)
    }
}

/// A background task's ticks: every `period`, a late tick delaying the next.
pub(super) fn ticks(period: Duration) -> tokio::time::Interval {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks
}
