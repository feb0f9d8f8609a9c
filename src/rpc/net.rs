//! Connections: lazily connected channels with deadlines, and a server runner.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};

use crate::error::Error;

/// How long a connection attempt to any peer may take.
pub const RPC_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// A lazily connected channel to `addr` (host:port) whose every call has `timeout`.
pub fn channel(addr: &str, timeout: Duration) -> Result<Channel, Error> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| Error::Malformed(format!("bad address {addr:?}: {e}")))?
        .connect_timeout(RPC_CONNECT_TIMEOUT)
        .timeout(timeout)
        .tcp_nodelay(true);
    Ok(endpoint.connect_lazy())
}

/// A cache of channels by address, so each peer gets one HTTP/2 connection.
#[derive(Clone)]
pub struct Channels {
    timeout: Duration,
    cache: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Channels {
    /// An empty cache whose channels use `timeout` per call.
    pub fn new(timeout: Duration) -> Self {
        Channels { timeout, cache: Arc::default() }
    }

    /// The channel to `addr`, created on first use.
    pub fn get(&self, addr: &str) -> Result<Channel, Error> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ch) = cache.get(addr) {
            return Ok(ch.clone());
        }
        let ch = channel(addr, self.timeout)?;
        cache.insert(addr.to_string(), ch.clone());
        Ok(ch)
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

/// Serves `router` on `listener` until `shutdown` resolves, with TCP_NODELAY set
/// on every accepted socket (tonic's `serve_with_incoming` ignores its own option).
pub async fn serve<F>(router: tonic::transport::server::Router, listener: TcpListener, shutdown: F)
where
    F: Future<Output = ()> + Send,
{
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        if let Ok(sock) = &conn {
            let _ = sock.set_nodelay(true);
        }
        conn
    });
    if let Err(err) = router.serve_with_incoming_shutdown(incoming, shutdown).await {
        tracing::warn!("gRPC server stopped: {err}");
    }
}
