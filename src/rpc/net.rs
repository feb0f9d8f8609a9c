//! Connections: lazily connected channels with deadlines, and a server runner.
//!
//! Every channel pings its peer over HTTP/2 while a call is in flight
//! ([`socket::KEEPALIVE_INTERVAL`](super::socket::KEEPALIVE_INTERVAL); servers ping too, less often:
//! [`SERVER_KEEPALIVE_INTERVAL`]), and every socket is tuned ([`socket::tune`](super::socket::tune)), so a connection to a silent peer
//! is closed within about a second instead of sitting in TCP back-off for tens of
//! seconds. A call that ran out of time also drops its cached channel
//! ([`Channels::forget`]), so the next call dials afresh.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::accept::Accepting;
use super::link::Link;
use super::security::{AuthChannel, Security};
use super::socket::{KEEPALIVE_TIMEOUT, SERVER_KEEPALIVE_INTERVAL};
use crate::error::Error;

pub use super::link::RPC_CONNECT_TIMEOUT;

/// Most streams a peer may reset before its connection is accepted: Raft cancels
/// the AppendEntries of a timed-out heartbeat, and h2's default (20) then tears
/// down the very connection that carries the heartbeats.
pub const MAX_PENDING_RESETS: usize = 10_000;

/// Most channels a cache keeps; past it the cache starts afresh, so addresses
/// of clients long gone do not pile up.
pub const MAX_CACHED_CHANNELS: usize = 4096;

/// A lazily connected channel to `addr` (host:port) whose every call has
/// `timeout`, secured as `security` says.
pub fn channel(addr: &str, timeout: Duration, security: &Security) -> Result<AuthChannel, Error> {
    http::uri::Authority::try_from(addr).map_err(|e| Error::Malformed(format!("bad address {addr:?}: {e}")))?;
    Ok(security.stamped(Link::new(addr, timeout, security.tls_client())))
}

/// A server builder with keepalive pings and the reset-stream allowance.
pub fn server_builder() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(SERVER_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_RESETS))
}

/// A cache of channels by address, so each peer gets one HTTP/2 connection.
#[derive(Clone)]
pub struct Channels {
    timeout: Duration,
    security: Security,
    cache: Arc<Mutex<HashMap<String, AuthChannel>>>,
}

impl Channels {
    /// An empty cache whose channels use `timeout` per call and `security`.
    pub fn new(timeout: Duration, security: Security) -> Self {
        Channels { timeout, security, cache: Arc::default() }
    }

    /// The security every channel of this cache uses.
    pub fn security(&self) -> &Security {
        &self.security
    }

    /// The channel to `addr`, created on first use.
    pub fn get(&self, addr: &str) -> Result<AuthChannel, Error> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ch) = cache.get(addr) {
            return Ok(ch.clone());
        }
        let ch = channel(addr, self.timeout, &self.security)?;
        if cache.len() >= MAX_CACHED_CHANNELS {
            cache.clear();
        }
        cache.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    /// Drops the channel to `addr` after a call on it got no answer in time, so
    /// the next call dials a fresh connection.
    pub fn forget(&self, addr: &str) {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).remove(addr);
    }

    /// Forgets the channel to `addr` when `status` says the call timed out.
    pub fn note(&self, addr: &str, status: &tonic::Status) {
        if matches!(status.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled) {
            self.forget(addr);
        }
    }
}

/// How long a stopping server waits for in-flight calls before cutting connections.
pub const SERVER_STOP_GRACE: Duration = Duration::from_secs(1);

/// A gRPC server running in the background; dropping it aborts the server task.
pub struct Server {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Server {
    /// Serves `router` on `listener` in a background task.
    pub fn spawn(router: tonic::transport::server::Router, listener: TcpListener) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(router, listener, async {
            let _ = stopped.await;
        }));
        Server { stop: Some(stop), task: Some(task) }
    }

    /// Stops accepting, closes every connection (in-flight calls get
    /// `SERVER_STOP_GRACE` to finish), and waits until the server is gone. Closing
    /// the connections matters: tonic serves each connection in its own task, which
    /// aborting the server task alone would leave running.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(SERVER_STOP_GRACE, &mut task).await.is_err() {
                task.abort();
                let _ = task.await;
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, with every accepted
/// socket tuned (tonic's `serve_with_incoming` ignores its own socket options)
/// and accepting paused, not spun, while the process is out of files.
pub async fn serve<F>(router: tonic::transport::server::Router, listener: TcpListener, shutdown: F)
where
    F: Future<Output = ()> + Send,
{
    if let Err(err) = router.serve_with_incoming_shutdown(Accepting::new(listener), shutdown).await {
        tracing::warn!("gRPC server stopped: {err}");
    }
}
