//! The client's connection to the CM cluster: find the leader, follow
//! `NotLeader` hints, try the other nodes, retry within a deadline.
//!
//! A retried call is the very same request (same client id and seq), so the
//! directory's session table makes the retry safe even when an earlier attempt
//! committed and only its answer was lost.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Error;
use crate::protocol::{ClientId, FaultRequest, Grant};
use crate::rpc::{Channels, ManagerClient, Removal, Security, FAULT_REPLY_MARGIN};
use crate::status::{NodeReport, PagesReport, StatusReport};

/// Pause after a round in which every CM node failed to serve the request (a
/// round ends early, without a pause, on the first node that serves; a hint to
/// a node that failed in the same round is not followed, so an election cannot
/// make a call ping-pong without pausing), and after a node's own answer about
/// the request (an unreachable page owner, no quorum).
const ROUND_BACKOFF: Duration = Duration::from_millis(10);

/// A call starts no attempt with less time than this left before its deadline:
/// such an attempt could only fail for lack of time, and its answer would hide
/// the error that tells why the call failed.
const MIN_ATTEMPT: Duration = Duration::from_millis(5);

/// How long `status` waits for each node.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a call waits on the node it believes leads before it starts asking
/// the other nodes whether one of them leads now (a leader cut off silently
/// answers nothing, not even "not the leader").
pub const HEDGE_AFTER: Duration = Duration::from_millis(300);

/// How often a call that waits asks the other nodes again.
const HEDGE_EVERY: Duration = Duration::from_millis(250);

/// How long a hedging status question may take.
const HEDGE_ASK_TIMEOUT: Duration = Duration::from_millis(250);

/// Most addresses a client learns from leader hints, beyond the ones it was given.
pub const MAX_LEARNED_ADDRS: usize = 8;

/// Client-side view of the CM cluster.
pub struct CmConn {
    addrs: Mutex<Vec<String>>,
    given: usize,
    follow_hints: bool,
    leader: Mutex<usize>,
    rpc: ManagerClient,
    deadline: Duration,
}

impl CmConn {
    /// A connection to the CM nodes at `addrs`, secured by `security`; each call
    /// gives up after `deadline`.
    pub fn new(
        addrs: Vec<String>,
        rpc_timeout: Duration,
        deadline: Duration,
        security: Security,
    ) -> Result<Self, Error> {
        if addrs.is_empty() {
            return Err(Error::InvalidConfig("no CM address given".into()));
        }
        let rpc = ManagerClient::new(Channels::new(rpc_timeout, security));
        let given = addrs.len();
        Ok(CmConn { addrs: Mutex::new(addrs), given, follow_hints: false, leader: Mutex::new(0), rpc, deadline })
    }

    /// Also follows a `NotLeader` hint to an address it was not given (and
    /// remembers up to `MAX_LEARNED_ADDRS` of them): for a client given one
    /// load-balanced name, such as a Kubernetes Service, whose nodes name each
    /// other by addresses the client can reach too.
    pub fn following_hints(mut self, follow: bool) -> Self {
        self.follow_hints = follow;
        self
    }

    /// The CM addresses this client knows.
    pub fn addrs(&self) -> Vec<String> {
        lock(&self.addrs).clone()
    }

    /// Registers a client serving at `addr`; the random nonce makes a retry
    /// return the same id. Returns the id and the lease it holds.
    pub async fn register(&self, addr: &str) -> Result<(ClientId, Duration), Error> {
        let nonce = rand::random::<u64>();
        self.call("register", |cm| async move { self.rpc.register(&cm, addr, nonce).await }).await
    }

    /// Asks the leader to remove `client`, which leaves.
    pub async fn unregister(&self, client: ClientId) -> Result<Removal, Error> {
        self.call("unregister", |cm| async move { self.rpc.unregister(&cm, client).await }).await
    }

    /// Renews `client`'s lease with the leader, giving up at `give_up`.
    pub async fn keep_alive(&self, client: ClientId, give_up: Instant) -> Result<Duration, Error> {
        self.call_until("keepalive", give_up, |cm| async move { self.rpc.keep_alive(&cm, client).await }).await
    }

    /// Asks the leader for the directory's entries of `pages` (all when empty).
    pub async fn pages(&self, pages: &[String]) -> Result<PagesReport, Error> {
        self.call("pages", |cm| async move { self.rpc.pages(&cm, pages).await }).await
    }

    /// Asks the leader to evict `client` at once.
    pub async fn evict(&self, client: ClientId) -> Result<Removal, Error> {
        self.call("evict", |cm| async move { self.rpc.evict(&cm, client).await }).await
    }

    /// Sends one fault to the leader, retrying until granted or `give_up`.
    pub async fn fault(&self, request: &FaultRequest, give_up: Instant) -> Result<Grant, Error> {
        let what = format!("{} fault on {}", request.kind, request.page);
        let wait = || give_up.saturating_duration_since(Instant::now());
        // The CM answers FAULT_REPLY_MARGIN before `wait` runs out: an attempt
        // needs more time than that, or its answer ("did not complete within
        // 0 ms") would hide the error that tells why the fault failed.
        let min_attempt = FAULT_REPLY_MARGIN + MIN_ATTEMPT;
        self.call_within(&what, give_up, min_attempt, |cm| async move { self.rpc.fault(&cm, request, wait()).await })
            .await
    }

    /// Asks every CM node for its status, at most [`STATUS_TIMEOUT`] each.
    pub async fn status(&self) -> StatusReport {
        status_of(&self.rpc, &self.addrs()).await
    }

    /// Calls `f` on the leader, retrying on other nodes until it answers or the
    /// deadline passes; a non-retryable error returns at once.
    async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T, Error>
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        self.call_until(what, Instant::now() + self.deadline, f).await
    }

    /// Like [`CmConn::call`], giving up at `give_up` (an operation's own deadline).
    async fn call_until<T, F, Fut>(&self, what: &str, give_up: Instant, f: F) -> Result<T, Error>
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        self.call_within(what, give_up, MIN_ATTEMPT, f).await
    }

    /// Like [`CmConn::call_until`], starting no attempt with less than
    /// `min_attempt` left.
    async fn call_within<T, F, Fut>(
        &self,
        what: &str,
        give_up: Instant,
        min_attempt: Duration,
        f: F,
    ) -> Result<T, Error>
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let started = Instant::now();
        let mut last = None;
        // The nodes that failed this call since its last pause.
        let mut failed: Vec<usize> = Vec::new();
        while give_up.saturating_duration_since(Instant::now()) >= min_attempt {
            let (index, addr) = self.current();
            let attempt = tokio::time::timeout_at(give_up, f(addr));
            let err = tokio::select! {
                answered = attempt => match answered {
                    Ok(Ok(reply)) => return Ok(reply),
                    Ok(Err(err)) => err,
                    Err(_) => break,
                },
                other = self.another_leader(index, give_up) => {
                    // The node we waited on went silent while another one leads:
                    // ask that one (the same request: a retry cannot apply twice).
                    self.switch(index, other);
                    continue;
                }
            };
            if !err.is_retryable() {
                return Err(err);
            }
            if !failed.contains(&index) {
                failed.push(index);
            }
            let round_over = failed.len() >= self.addrs().len();
            self.next(index, &err, if round_over { &[] } else { &failed });
            // Only a node that could not serve at all (not the leader, not
            // reachable) sends the call on at once; a node's own answer about
            // the request is retried after a pause, as is a full round.
            let pause = round_over || !is_weak(&err);
            last = Some(more_telling(last, err));
            if round_over {
                failed.clear();
            }
            if pause {
                tokio::time::sleep_until(give_up.min(Instant::now() + ROUND_BACKOFF)).await;
            }
        }
        match last {
            // A node's own answer (the leader's, say) names the cause: report it.
            Some(err) if !is_weak(&err) => Err(err),
            last => {
                let last = last.map_or("no answer".to_string(), |e| e.to_string());
                Err(Error::Unavailable(format!(
                    "{what}: no CM node served it within {} ms (tried {}); last error: {last}",
                    (give_up - started.min(give_up)).as_millis(),
                    self.addrs().join(", ")
                )))
            }
        }
    }

    /// Resolves, once the call has waited [`HEDGE_AFTER`] on node `index`, with
    /// the index of another node that says it serves; never while none does.
    async fn another_leader(&self, index: usize, give_up: Instant) -> usize {
        tokio::time::sleep(HEDGE_AFTER).await;
        loop {
            let addrs = self.addrs();
            let others = addrs.iter().enumerate().filter(|(i, _)| *i != index).map(|(i, addr)| async move {
                let asked = tokio::time::timeout(HEDGE_ASK_TIMEOUT, self.rpc.status(addr)).await;
                asked.ok().and_then(Result::ok).filter(|s| s.serving).map(|_| i)
            });
            let serving = futures_first(others).await;
            if let Some(i) = serving {
                return i;
            }
            if Instant::now() + HEDGE_EVERY >= give_up {
                return std::future::pending().await;
            }
            tokio::time::sleep(HEDGE_EVERY).await;
        }
    }

    /// Sends the next calls to node `to`, unless another call moved on already.
    fn switch(&self, from: usize, to: usize) {
        let mut leader = lock(&self.leader);
        if *leader == from {
            *leader = to;
        }
    }

    fn current(&self) -> (usize, String) {
        let addrs = lock(&self.addrs);
        let index = *lock(&self.leader) % addrs.len();
        (index, addrs[index].clone())
    }

    /// CHANGE_CM: send the next requests to `addr` first, when it is one of ours.
    pub fn prefer(&self, addr: &str) {
        if let Some(index) = lock(&self.addrs).iter().position(|a| a == addr) {
            *lock(&self.leader) = index;
        }
    }

    /// After a failure on node `index`: follow a leader hint, else try the next
    /// node, passing over the nodes in `failed` (those that failed this call
    /// since its last pause) while another one is left.
    fn next(&self, index: usize, err: &Error, failed: &[usize]) {
        let mut addrs = lock(&self.addrs);
        let mut leader = lock(&self.leader);
        if *leader != index {
            return;
        }
        // By default, follow a hint only to an address this client was given: a
        // CM names its peers as it sees them, which need not be how this client
        // reaches them (the chaos harness puts a proxy on every link).
        if let Error::NotLeader { leader: Some((_, addr)) } = err {
            match addrs.iter().position(|a| a == addr) {
                Some(i) if !failed.contains(&i) => {
                    *leader = i;
                    return;
                }
                // A hint to a node that just failed (a follower still names the
                // leader that died): ask the others first.
                Some(_) => {}
                None if self.follow_hints && addrs.len() < self.given + MAX_LEARNED_ADDRS => {
                    addrs.push(addr.clone());
                    *leader = addrs.len() - 1;
                    return;
                }
                None => {}
            }
        }
        let n = addrs.len();
        *leader = (1..=n).map(|k| (index + k) % n).find(|i| !failed.contains(i)).unwrap_or((index + 1) % n);
    }
}

/// Asks every node at `addrs` for its status, in parallel, at most
/// [`STATUS_TIMEOUT`] each.
pub async fn status_of(rpc: &ManagerClient, addrs: &[String]) -> StatusReport {
    let mut asks = tokio::task::JoinSet::new();
    for (i, addr) in addrs.iter().enumerate() {
        let (rpc, addr) = (rpc.clone(), addr.clone());
        asks.spawn(async move {
            let answer = tokio::time::timeout(STATUS_TIMEOUT, rpc.status(&addr)).await;
            let (status, error) = match answer {
                Ok(Ok(status)) => (Some(status), None),
                Ok(Err(err)) => (None, Some(err.to_string())),
                Err(_) => (None, Some(format!("no answer within {} s", STATUS_TIMEOUT.as_secs()))),
            };
            (i, NodeReport { addr, reachable: status.is_some(), status, error })
        });
    }
    let mut reports: Vec<(usize, NodeReport)> = Vec::new();
    while let Some(done) = asks.join_next().await {
        if let Ok(report) = done {
            reports.push(report);
        }
    }
    reports.sort_by_key(|(i, _)| *i);
    StatusReport::new(reports.into_iter().map(|(_, r)| r).collect())
}

/// The first `Some` among `futures`, all run at once.
async fn futures_first<F: Future<Output = Option<usize>>>(futures: impl Iterator<Item = F>) -> Option<usize> {
    let mut pending: Vec<std::pin::Pin<Box<F>>> = futures.map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        let mut i = 0;
        while i < pending.len() {
            match pending[i].as_mut().poll(cx) {
                std::task::Poll::Ready(Some(found)) => return std::task::Poll::Ready(Some(found)),
                std::task::Poll::Ready(None) => {
                    pending.swap_remove(i);
                }
                std::task::Poll::Pending => i += 1,
            }
        }
        if pending.is_empty() {
            std::task::Poll::Ready(None)
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

/// The error to report of two: a node's own answer (say, the leader's) over a
/// mere "not the leader" or "no answer" from another node.
fn more_telling(last: Option<Error>, new: Error) -> Error {
    match last {
        Some(last) if is_weak(&new) && !is_weak(&last) => last,
        _ => new,
    }
}

/// An error that says only that a node could not serve, not why the request failed.
fn is_weak(err: &Error) -> bool {
    matches!(err, Error::NotLeader { .. } | Error::Unavailable(_))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> CmConn {
        let addrs = vec!["a:1".to_string(), "b:2".to_string(), "c:3".to_string()];
        CmConn::new(addrs, Duration::from_secs(1), Duration::from_secs(1), Security::default()).unwrap()
    }

    fn hint(addr: &str) -> Error {
        Error::NotLeader { leader: Some((1, addr.to_string())) }
    }

    #[test]
    fn a_hint_to_a_node_that_just_failed_is_passed_over() {
        let c = conn();
        // The leader (node 0) refused the connection; node 1 still names it.
        c.next(0, &Error::Unavailable("refused".into()), &[0]);
        assert_eq!(c.current().0, 1);
        c.next(1, &hint("a:1"), &[0, 1]);
        assert_eq!(c.current().0, 2, "node 0 failed this round: ask node 2");
        // A hint to a node not tried this round is followed at once.
        c.next(2, &hint("b:2"), &[2]);
        assert_eq!(c.current().0, 1);
        // After a full round (nothing skipped) the hint is followed again.
        c.next(1, &hint("a:1"), &[]);
        assert_eq!(c.current().0, 0);
    }
}
