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
//! "Benchmark": 10-25% less time a call one at a time, 5-17% with 16 at once;
//! runs vary).
//!
//! What it keeps from tonic's channel: sockets dialled and tuned by
//! [`socket::connect`] within [`RPC_CONNECT_TIMEOUT`], TLS when the security
//! says so (ALPN h2, the server's certificate checked against the CA and the
//! address dialled, this process's certificate presented), a deadline on every
//! call (the shorter of the link's timeout and the call's `grpc-timeout`), and
//! HTTP/2 pings while a call is in flight and nothing has arrived for
//! [`KEEPALIVE_INTERVAL`]; a ping not answered, with nothing else arriving, for
//! [`KEEPALIVE_TIMEOUT`] closes the connection, failing its calls, and the next
//! call dials afresh. A slow reply that keeps arriving is not a silent peer.
//!
//! A connection stops taking new calls (it drains: calls on it finish, the next
//! call dials) when the peer said it is going away (GOAWAY) or otherwise
//! failed it as a whole, and before its stream ids run out. Callers queued
//! behind a dial that failed get that dial's error instead of dialling again
//! one after another.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tonic::Status;

use super::socket::{self, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT};
use super::tls::TlsClient;

/// How long a connection attempt to any peer may take (TCP, TLS and the HTTP/2
/// preface together).
pub const RPC_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Largest reply a call accepts: the largest message any of our services
/// sends (a Raft snapshot, a backup) and its framing.
pub const MAX_REPLY_BYTES: usize = larger(super::raft::MAX_RAFT_MESSAGE_BYTES, super::MAX_BACKUP_BYTES) + 1024 * 1024;

/// Largest header block (headers or trailers) a reply may carry.
const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// Calls one connection carries before it drains and the next call dials
/// (HTTP/2 stream ids, odd and 31 bits wide, run out at about 2^30).
const MAX_CALLS_PER_CONNECTION: u64 = 1 << 29;

const fn larger(a: usize, b: usize) -> usize {
    if a > b {
        a
    } else {
        b
    }
}

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
    /// Held while dialling; the last dial's failure and when it came.
    dialing: tokio::sync::Mutex<Option<(Instant, Status)>>,
}

/// One open connection: its request handle and its state.
#[derive(Clone)]
struct Live {
    send: h2::client::SendRequest<Bytes>,
    state: Arc<ConnState>,
}

/// What the connection's tasks share.
struct ConnState {
    in_flight: AtomicUsize,
    /// Calls started on this connection.
    calls: AtomicU64,
    closed: AtomicBool,
    /// No new call may start here (the peer is going away, or ids run out).
    draining: AtomicBool,
    /// A call started on an idle connection, or the connection closed.
    busy: Notify,
    kill: Notify,
    opened: Instant,
    /// When bytes last arrived, in ms since `opened`.
    last_read_ms: AtomicU64,
}

impl ConnState {
    fn new() -> Self {
        ConnState {
            in_flight: AtomicUsize::new(0),
            calls: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            busy: Notify::new(),
            kill: Notify::new(),
            opened: Instant::now(),
            last_read_ms: AtomicU64::new(0),
        }
    }

    /// Whether a new call may start on this connection.
    fn takes_calls(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
            && !self.draining.load(Ordering::Acquire)
            && self.calls.load(Ordering::Relaxed) < MAX_CALLS_PER_CONNECTION
    }

    fn stamp_read(&self) {
        self.last_read_ms.store(self.opened.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long nothing has arrived.
    fn quiet_for(&self) -> Duration {
        self.opened.elapsed().saturating_sub(Duration::from_millis(self.last_read_ms.load(Ordering::Relaxed)))
    }
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
            dialing: tokio::sync::Mutex::new(None),
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
        let mut live = self.live().await?;
        let mut _in_flight = InFlight::enter(&live.state);
        let mut send = match live.send.clone().ready().await {
            Ok(send) => send,
            Err(err) => {
                // The connection as a whole failed before this call was sent
                // (most often the peer's GOAWAY): drain it and try once on a
                // fresh one.
                tracing::debug!(peer = %self.inner.authority, "connection refused new calls ({err}); dialling again");
                live.state.draining.store(true, Ordering::Release);
                live = self.live().await?;
                _in_flight = InFlight::enter(&live.state);
                live.send.clone().ready().await.map_err(transport)?
            }
        };
        live.state.calls.fetch_add(1, Ordering::Relaxed);
        let (reply, mut stream) =
            send.send_request(http::Request::from_parts(parts, ()), body.is_empty()).map_err(|err| {
                if !err.is_reset() {
                    live.state.draining.store(true, Ordering::Release);
                }
                transport(err)
            })?;
        if !body.is_empty() {
            // The peer may already have answered and closed the stream (a call
            // refused at its headers, say, with the connection task running on
            // another thread); then the body has nowhere to go and the answer
            // below says what happened.
            if let Err(err) = stream.send_data(body, true) {
                tracing::trace!(peer = %self.inner.authority, "request body not sent: {err}");
            }
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
    /// when there is none or the last one closed or drains. Callers that waited
    /// behind a dial that failed get its error.
    async fn live(&self) -> Result<Live, Status> {
        if let Some(live) = self.open() {
            return Ok(live);
        }
        let asked = Instant::now();
        let mut dialing = self.inner.dialing.lock().await;
        if let Some(live) = self.open() {
            return Ok(live);
        }
        if let Some((failed_at, err)) = dialing.as_ref() {
            if *failed_at >= asked {
                return Err(err.clone());
            }
        }
        let dialled = tokio::time::timeout(RPC_CONNECT_TIMEOUT, self.dial())
            .await
            .unwrap_or_else(|_| Err(Status::unavailable(format!("connect to {} timed out", self.inner.authority))));
        match dialled {
            Ok(live) => {
                *dialing = None;
                *self.inner.live.lock().unwrap_or_else(|e| e.into_inner()) = Some(live.clone());
                Ok(live)
            }
            Err(err) => {
                *dialing = Some((Instant::now(), err.clone()));
                Err(err)
            }
        }
    }

    fn open(&self) -> Option<Live> {
        let live = self.inner.live.lock().unwrap_or_else(|e| e.into_inner());
        live.as_ref().filter(|l| l.state.takes_calls()).cloned()
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
    let state = Arc::new(ConnState::new());
    let io = Stamped { io, state: state.clone() };
    let (send, mut conn) = h2::client::Builder::new()
        .enable_push(false)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(MAX_HEADER_LIST_BYTES)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(transport)?;
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

/// While a call is in flight (an idle connection costs no timer), pings the
/// peer once nothing has arrived for [`KEEPALIVE_INTERVAL`]; closes the
/// connection when neither the pong nor anything else arrives for
/// [`KEEPALIVE_TIMEOUT`]. Bytes still arriving (a large reply on a slow path,
/// with the pong queued behind them) keep the connection.
async fn keep_alive(mut pings: h2::PingPong, state: Arc<ConnState>) {
    loop {
        while state.in_flight.load(Ordering::Acquire) == 0 {
            if state.closed.load(Ordering::Acquire) {
                return;
            }
            state.busy.notified().await;
        }
        let quiet = state.quiet_for();
        if quiet < KEEPALIVE_INTERVAL {
            tokio::time::sleep(KEEPALIVE_INTERVAL - quiet).await;
            if state.closed.load(Ordering::Acquire) {
                return;
            }
            continue;
        }
        let pong = pings.ping(h2::Ping::opaque());
        tokio::pin!(pong);
        loop {
            match tokio::time::timeout(KEEPALIVE_TIMEOUT, &mut pong).await {
                Ok(Ok(_)) => break,
                Ok(Err(_)) => {
                    state.kill.notify_one();
                    return;
                }
                Err(_) if state.quiet_for() >= KEEPALIVE_TIMEOUT => {
                    state.kill.notify_one();
                    return;
                }
                Err(_) => {}
            }
        }
    }
}

/// A connection's IO that notes when bytes last arrived.
struct Stamped<T> {
    io: T,
    state: Arc<ConnState>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Stamped<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.stamp_read();
        }
        read
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Stamped<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Counts a call in flight on a connection for as long as it lives.
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn enter(state: &Arc<ConnState>) -> Self {
        if state.in_flight.fetch_add(1, Ordering::AcqRel) == 0 {
            state.busy.notify_one();
        }
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
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

/// The call's `grpc-timeout` header.
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    parse_grpc_timeout(headers.get("grpc-timeout")?.to_str().ok()?)
}

/// A `grpc-timeout` value: an integer and a unit (H, M, S, m, u, n).
pub(crate) fn parse_grpc_timeout(value: &str) -> Option<Duration> {
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
    use bytes::Bytes;
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;
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

    /// An HTTP/2 server answering every request on every connection with
    /// `reply` bytes and OK trailers; a request for `/slow` gets its answer only
    /// after `slow` and first makes the server say it is going away (GOAWAY) on
    /// that connection, which `goaway` is told.
    async fn h2_server(listener: TcpListener, reply: usize, slow: Duration, goaway: mpsc::UnboundedSender<()>) {
        while let Ok((socket, _)) = listener.accept().await {
            let goaway = goaway.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(socket).await else { return };
                while let Some(Ok((request, mut respond))) = conn.accept().await {
                    let is_slow = request.uri().path() == "/slow";
                    if is_slow {
                        conn.graceful_shutdown();
                        let _ = goaway.send(());
                    }
                    tokio::spawn(async move {
                        if is_slow {
                            tokio::time::sleep(slow).await;
                        }
                        let Ok(mut stream) = respond.send_response(http::Response::new(()), false) else { return };
                        let _ = stream.send_data(Bytes::from(vec![7u8; reply]), false);
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                        let _ = stream.send_trailers(trailers);
                    });
                }
            });
        }
    }

    /// Forwards one connection to `target`, passing the server's bytes on at
    /// most `chunk` bytes per `tick` (a slow path).
    async fn slow_proxy(listener: TcpListener, target: std::net::SocketAddr, chunk: usize, tick: Duration) {
        let Ok((client, _)) = listener.accept().await else { return };
        let Ok(server) = tokio::net::TcpStream::connect(target).await else { return };
        let (mut client_rd, mut client_wr) = client.into_split();
        let (mut server_rd, mut server_wr) = server.into_split();
        tokio::spawn(async move { tokio::io::copy(&mut client_rd, &mut server_wr).await });
        let mut buf = vec![0u8; chunk];
        while let Ok(n) = server_rd.read(&mut buf).await {
            if n == 0 || client_wr.write_all(&buf[..n]).await.is_err() {
                return;
            }
            tokio::time::sleep(tick).await;
        }
    }

    fn request(path: &str) -> http::Request<tonic::body::Body> {
        http::Request::builder().method("POST").uri(path).body(tonic::body::Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn a_large_reply_on_a_slow_path_is_not_taken_for_a_silent_peer() {
        // 2.5 MiB at 1 MiB/s: the reply keeps arriving for about 2.5 s, far
        // longer than a ping's interval and timeout, and a pong would wait
        // behind the megabytes already queued.
        const REPLY: usize = 5 * 512 * 1024;
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = server.local_addr().unwrap();
        let (goaway, _) = mpsc::unbounded_channel();
        let served = tokio::spawn(h2_server(server, REPLY, Duration::ZERO, goaway));
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = proxy.local_addr().unwrap();
        let proxied = tokio::spawn(slow_proxy(proxy, target, 64 * 1024, Duration::from_millis(62)));
        let link = Link::new(&addr.to_string(), Duration::from_secs(20), None);
        let reply = link.exchange(request("/big")).await.expect("the slow reply arrives whole");
        let body = reply.into_body();
        assert_eq!(body.data.map(|d| d.len()), Some(REPLY));
        assert!(body.trailers.is_some());
        served.abort();
        proxied.abort();
    }

    #[tokio::test]
    async fn a_peer_going_away_drains_its_connection_and_the_next_call_dials_again() {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        let (goaway, mut went_away) = mpsc::unbounded_channel();
        let served = tokio::spawn(h2_server(server, 16, Duration::from_secs(5), goaway));
        let link = Link::new(&addr.to_string(), Duration::from_secs(10), None);
        link.exchange(request("/first")).await.expect("first call");
        let slow_link = link.clone();
        let slow = tokio::spawn(async move { slow_link.exchange(request("/slow")).await.map(|_| ()) });
        went_away.recv().await.expect("the server said it goes away");
        // The old connection stays open for the slow call; new calls must not
        // keep failing on it until that call ends.
        let mut answered = false;
        for _ in 0..200 {
            if link.exchange(request("/next")).await.is_ok() {
                answered = true;
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(answered, "no call got through while the old connection drained");
        assert!(!slow.is_finished(), "the slow call ended first, so this proves nothing");
        slow.abort();
        served.abort();
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
