//! A channel of our own for unary gRPC calls: one HTTP/2 connection per peer,
//! dialled on first use and again after it fails, that sends each request's
//! HEADERS and DATA in one write.
//!
//! Why not tonic's `Channel`: it queues every call through a buffer task into
//! hyper's HTTP/2 client, and hyper pipes the request body from a task of its
//! own. h2 gives a new stream no send window until the connection task has
//! written the stream's HEADERS, so the body's DATA always followed in a second
//! write: two syscalls, two TCP segments and an extra wake-up on both ends for
//! every call. A [`Link`] reads the request body first (a unary call's body is
//! one encoded message, ready at once), hands h2 the HEADERS and the DATA
//! together (h2 holds data beyond the window until the window opens), and the
//! connection task writes both at once. `cargo bench --bench rpc_call` calls
//! the same tonic server through a `Link` and through tonic's channel (README,
//! "Benchmark": 11-15% less time a call one at a time, 13-17% with 16 at once).
//!
//! What it keeps from tonic's channel: sockets dialled and tuned by
//! [`socket::connect`] within [`RPC_CONNECT_TIMEOUT`], TLS when the security
//! says so (ALPN h2, the server's certificate checked against the CA and the
//! address dialled, this process's certificate presented), a deadline on every
//! call (the shorter of the link's timeout and the call's `grpc-timeout`), and
//! HTTP/2 pings every [`KEEPALIVE_INTERVAL`] while a call is in flight; a ping
//! not answered within [`KEEPALIVE_TIMEOUT`] closes the connection, failing its
//! calls, and the next call dials afresh.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tonic::Status;

use super::socket::{self, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT};
use super::tls::TlsClient;

/// How long a connection attempt to any peer may take (TCP, TLS and the HTTP/2
/// preface together).
pub const RPC_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Largest reply a call accepts: a Raft message (a snapshot) and its framing.
pub const MAX_REPLY_BYTES: usize = super::raft::MAX_RAFT_MESSAGE_BYTES + 1024 * 1024;

/// Receive windows: one reply of a page or a batch of log entries fits without
/// a window update (hyper's defaults, which tonic's channel used).
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;

/// The error type of a call: a boxed [`Status`], which tonic passes on as it is.
pub type CallError = Box<dyn std::error::Error + Send + Sync>;

/// A lazily dialled HTTP/2 connection to one address, for unary gRPC calls.
#[derive(Clone)]
pub struct Link {
    inner: Arc<Inner>,
}

struct Inner {
    authority: String,
    scheme: http::uri::Scheme,
    timeout: Duration,
    tls: Option<TlsClient>,
    live: Mutex<Option<Live>>,
    dialing: tokio::sync::Mutex<()>,
}

/// One open connection: its request handle and its state.
#[derive(Clone)]
struct Live {
    send: h2::client::SendRequest<Bytes>,
    state: Arc<ConnState>,
}

/// What the connection's tasks share.
#[derive(Default)]
struct ConnState {
    in_flight: AtomicUsize,
    closed: AtomicBool,
    /// A call started on an idle connection, or the connection closed.
    busy: Notify,
    kill: Notify,
}

impl Link {
    /// A link to `authority` (host:port) whose every call has at most `timeout`,
    /// over TLS when `tls` is given.
    pub fn new(authority: &str, timeout: Duration, tls: Option<TlsClient>) -> Self {
        let scheme = if tls.is_some() { http::uri::Scheme::HTTPS } else { http::uri::Scheme::HTTP };
        let inner = Inner {
            authority: authority.to_string(),
            scheme,
            timeout,
            tls,
            live: Mutex::default(),
            dialing: tokio::sync::Mutex::default(),
        };
        Link { inner: Arc::new(inner) }
    }

    /// One unary call within its deadline.
    async fn unary(self, request: http::Request<tonic::body::Body>) -> Result<http::Response<Reply>, CallError> {
        let limit = grpc_timeout(request.headers()).map_or(self.inner.timeout, |t| t.min(self.inner.timeout));
        match tokio::time::timeout(limit, self.exchange(request)).await {
            Ok(result) => result.map_err(Into::into),
            Err(_) => Err(Status::deadline_exceeded(format!("no reply within {} ms", limit.as_millis())).into()),
        }
    }

    /// Sends the request (HEADERS and DATA queued together) and reads the whole reply.
    async fn exchange(&self, request: http::Request<tonic::body::Body>) -> Result<http::Response<Reply>, Status> {
        let (mut parts, body) = request.into_parts();
        let body = body.collect().await?.to_bytes();
        parts.uri = self.uri(&parts.uri)?;
        let live = self.live().await?;
        let _in_flight = InFlight::enter(&live.state);
        let mut send = live.send.clone().ready().await.map_err(transport)?;
        let (reply, mut stream) =
            send.send_request(http::Request::from_parts(parts, ()), body.is_empty()).map_err(transport)?;
        if !body.is_empty() {
            stream.send_data(body, true).map_err(transport)?;
        }
        let (parts, mut body) = reply.await.map_err(transport)?.into_parts();
        let mut data = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(transport)?;
            let _ = body.flow_control().release_capacity(chunk.len());
            if data.len() + chunk.len() > MAX_REPLY_BYTES {
                return Err(Status::resource_exhausted(format!("reply larger than {MAX_REPLY_BYTES} bytes")));
            }
            data.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await.map_err(transport)?;
        let data = (!data.is_empty()).then(|| data.freeze());
        Ok(http::Response::from_parts(parts, Reply { data, trailers }))
    }

    /// The request's path on this link's scheme and authority.
    fn uri(&self, given: &http::Uri) -> Result<http::Uri, Status> {
        let path = given.path_and_query().cloned().unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        http::Uri::builder()
            .scheme(self.inner.scheme.clone())
            .authority(self.inner.authority.as_str())
            .path_and_query(path)
            .build()
            .map_err(|e| Status::invalid_argument(format!("bad address {:?}: {e}", self.inner.authority)))
    }

    /// The open connection, dialling one (a single dial for concurrent callers)
    /// when there is none or the last one closed.
    async fn live(&self) -> Result<Live, Status> {
        if let Some(live) = self.open() {
            return Ok(live);
        }
        let _dialing = self.inner.dialing.lock().await;
        if let Some(live) = self.open() {
            return Ok(live);
        }
        let live = tokio::time::timeout(RPC_CONNECT_TIMEOUT, self.dial())
            .await
            .map_err(|_| Status::unavailable(format!("connect to {} timed out", self.inner.authority)))??;
        *self.inner.live.lock().unwrap_or_else(|e| e.into_inner()) = Some(live.clone());
        Ok(live)
    }

    fn open(&self) -> Option<Live> {
        let live = self.inner.live.lock().unwrap_or_else(|e| e.into_inner());
        live.as_ref().filter(|l| !l.state.closed.load(Ordering::Acquire)).cloned()
    }

    async fn dial(&self) -> Result<Live, Status> {
        let tcp = socket::connect(&self.inner.authority, RPC_CONNECT_TIMEOUT).await.map_err(unreachable)?;
        match &self.inner.tls {
            Some(tls) => {
                let stream = tls.connect(&self.inner.authority, tcp).await.map_err(unreachable)?;
                handshake(stream).await
            }
            None => handshake(tcp).await,
        }
    }
}

/// The HTTP/2 preface on `io`; spawns the connection's task and its pinger.
async fn handshake<T>(io: T) -> Result<Live, Status>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, mut conn) = h2::client::Builder::new()
        .enable_push(false)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(transport)?;
    let state = Arc::new(ConnState::default());
    let pings = conn.ping_pong();
    let conn_state = state.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = &mut conn => {}
            _ = conn_state.kill.notified() => {}
        }
        conn_state.closed.store(true, Ordering::Release);
        conn_state.busy.notify_one();
    });
    if let Some(pings) = pings {
        tokio::spawn(keep_alive(pings, state.clone()));
    }
    Ok(Live { send, state })
}

/// Pings the peer every [`KEEPALIVE_INTERVAL`] while a call is in flight (an
/// idle connection costs no timer); an unanswered ping closes the connection.
async fn keep_alive(mut pings: h2::PingPong, state: Arc<ConnState>) {
    loop {
        while state.in_flight.load(Ordering::Acquire) == 0 {
            if state.closed.load(Ordering::Acquire) {
                return;
            }
            state.busy.notified().await;
        }
        tokio::time::sleep(KEEPALIVE_INTERVAL).await;
        if state.closed.load(Ordering::Acquire) {
            return;
        }
        if state.in_flight.load(Ordering::Acquire) == 0 {
            continue;
        }
        let answered = tokio::time::timeout(KEEPALIVE_TIMEOUT, pings.ping(h2::Ping::opaque())).await;
        if !matches!(answered, Ok(Ok(_))) {
            state.kill.notify_one();
            return;
        }
    }
}

/// Counts a call in flight on a connection for as long as it lives.
struct InFlight<'a>(&'a ConnState);

impl<'a> InFlight<'a> {
    fn enter(state: &'a ConnState) -> Self {
        if state.in_flight.fetch_add(1, Ordering::AcqRel) == 0 {
            state.busy.notify_one();
        }
        InFlight(state)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A dial that failed: the peer is unreachable (`Unavailable`, the reason as the OS gave it).
fn unreachable(err: std::io::Error) -> Status {
    Status::unavailable(err.to_string())
}

/// An HTTP/2 failure: the peer's reset of this one stream keeps its meaning
/// (tonic's mapping); anything else is the connection's failure.
fn transport(err: h2::Error) -> Status {
    if err.is_reset() && err.is_remote() {
        return Status::from_error(Box::new(err));
    }
    Status::unavailable(format!("transport error: {err}"))
}

/// The call's `grpc-timeout` header: digits and a unit (H, M, S, m, u, n).
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A unary reply read in full: its message, then its trailers.
pub struct Reply {
    data: Option<Bytes>,
    trailers: Option<http::HeaderMap>,
}

impl http_body::Body for Reply {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for Link {
    type Response = http::Response<Reply>;
    type Error = CallError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.clone().unary(request))
    }
}

#[cfg(test)]
mod tests {
    use super::{grpc_timeout, Link};
    use std::time::{Duration, Instant};
    use tokio::net::TcpListener;
    use tonic::Code;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    /// A health server on `listener`, stopped when the returned server drops.
    fn serve(listener: TcpListener) -> crate::rpc::Server {
        let (_, health) = tonic_health::server::health_reporter();
        crate::rpc::Server::spawn(tonic::transport::Server::builder().add_service(health), listener)
    }

    async fn check(link: &Link) -> Result<(), tonic::Status> {
        HealthClient::new(link.clone()).check(HealthCheckRequest { service: String::new() }).await.map(|_| ())
    }

    #[tokio::test]
    async fn calls_reach_a_grpc_server_and_dial_again_after_it_restarts() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut server = serve(listener);
        let link = Link::new(&addr.to_string(), Duration::from_secs(2), None);
        for _ in 0..3 {
            check(&link).await.unwrap();
        }
        server.stop().await;
        let refused = check(&link).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        let _server = serve(TcpListener::bind(addr).await.unwrap());
        check(&link).await.unwrap();
    }

    #[tokio::test]
    async fn a_call_to_a_silent_peer_ends_at_its_deadline() {
        // Accepts connections and never answers a byte.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut kept = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                kept.push(socket);
            }
        });
        let link = Link::new(&addr.to_string(), Duration::from_millis(300), None);
        let started = Instant::now();
        let err = check(&link).await.unwrap_err();
        assert!(matches!(err.code(), Code::DeadlineExceeded | Code::Unavailable), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
        held.abort();
    }

    #[tokio::test]
    async fn a_refused_dial_names_the_cause() {
        let port = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
        let link = Link::new(&format!("127.0.0.1:{port}"), Duration::from_secs(1), None);
        let err = check(&link).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert!(err.message().contains("refused"), "{err:?}");
    }

    #[test]
    fn grpc_timeout_units() {
        let of = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("grpc-timeout", v.parse().unwrap());
            grpc_timeout(&h)
        };
        assert_eq!(of("250m"), Some(Duration::from_millis(250)));
        assert_eq!(of("3S"), Some(Duration::from_secs(3)));
        assert_eq!(of("2M"), Some(Duration::from_secs(120)));
        assert_eq!(of("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(of("7u"), Some(Duration::from_micros(7)));
        assert_eq!(of("9n"), Some(Duration::from_nanos(9)));
        assert_eq!(of("5x"), None);
        assert_eq!(of("m"), None);
        assert_eq!(of(""), None);
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }
}
