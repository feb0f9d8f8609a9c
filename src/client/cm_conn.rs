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
use tonic::transport::Channel;

use crate::error::Error;
use crate::rpc::pb::manager_client::ManagerClient;
use crate::rpc::{self, Channels};

/// Pause before following a leader hint (bounds ping-pong during an election).
const HINT_BACKOFF: Duration = Duration::from_millis(5);

/// Pause after a round in which no CM node could serve the request.
const ROUND_BACKOFF: Duration = Duration::from_millis(50);

/// Client-side view of the CM cluster.
pub struct CmConn {
    addrs: Vec<String>,
    leader: Mutex<usize>,
    channels: Channels,
    deadline: Duration,
}

impl CmConn {
    /// A connection to the CM nodes at `addrs`; each call gives up after `deadline`.
    pub fn new(addrs: Vec<String>, rpc_timeout: Duration, deadline: Duration) -> Result<Self, Error> {
        if addrs.is_empty() {
            return Err(Error::Malformed("no CM address given".into()));
        }
        Ok(CmConn { addrs, leader: Mutex::new(0), channels: Channels::new(rpc_timeout), deadline })
    }

    /// The CM addresses this client knows.
    pub fn addrs(&self) -> Vec<String> {
        self.addrs.clone()
    }

    /// Calls `f` on the leader, retrying on other nodes until it answers or the
    /// deadline passes; a non-retryable error returns at once.
    pub async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T, Error>
    where
        F: Fn(ManagerClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_until(what, Instant::now() + self.deadline, f).await
    }

    /// Like [`CmConn::call`], giving up at `give_up` (an operation's own deadline).
    pub async fn call_until<T, F, Fut>(&self, what: &str, give_up: Instant, f: F) -> Result<T, Error>
    where
        F: Fn(ManagerClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let started = Instant::now();
        let mut last = None;
        while Instant::now() < give_up {
            let (index, addr) = self.current();
            let client = ManagerClient::new(self.channels.get(&addr)?);
            let attempt = tokio::time::timeout_at(give_up, f(client)).await;
            let err = match attempt {
                Ok(Ok(reply)) => return Ok(reply.into_inner()),
                Ok(Err(status)) => rpc::error_from_status(&status, &format!("CM {addr}")),
                Err(_) => break,
            };
            if !err.is_retryable() {
                return Err(err);
            }
            self.next(index, &err);
            last = Some(err);
            let pause = match &last {
                Some(Error::NotLeader { leader: Some(_) }) => HINT_BACKOFF,
                _ => ROUND_BACKOFF,
            };
            tokio::time::sleep_until(give_up.min(Instant::now() + pause)).await;
        }
        let last = last.map_or("no answer".to_string(), |e| e.to_string());
        Err(Error::Unavailable(format!(
            "{what}: no CM node served it within {} ms (tried {}); last error: {last}",
            (give_up - started.min(give_up)).as_millis(),
            self.addrs().join(", ")
        )))
    }

    fn current(&self) -> (usize, String) {
        let index = *lock(&self.leader) % self.addrs.len();
        (index, self.addrs[index].clone())
    }

    /// CHANGE_CM: send the next requests to `addr` first, when it is one of ours.
    pub fn prefer(&self, addr: &str) {
        if let Some(index) = self.addrs.iter().position(|a| a == addr) {
            *lock(&self.leader) = index;
        }
    }

    /// After a failure on node `index`: follow a leader hint, else try the next node.
    fn next(&self, index: usize, err: &Error) {
        let addrs = &self.addrs;
        let mut leader = lock(&self.leader);
        if *leader != index {
            return;
        }
        // Follow a hint only to an address this client was given: a CM names its
        // peers as it sees them, which need not be how this client reaches them.
        if let Error::NotLeader { leader: Some((_, addr)) } = err {
            if let Some(i) = addrs.iter().position(|a| a == addr) {
                *leader = i;
                return;
            }
        }
        *leader = (index + 1) % addrs.len();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
