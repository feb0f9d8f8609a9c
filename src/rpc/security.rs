//! Who may talk to whom: TLS (mutual, with one cluster CA) and a cluster token,
//! applied to every channel and every server in one place.
//!
//! A [`Security`] is built once per process from `--tls-cert`, `--tls-key`,
//! `--tls-ca` and `--token-file` and handed to [`Channels`](super::Channels) and to
//! the server builders; cm/ and client/ never see a tonic or rustls type.
//!
//! - **TLS.** With a certificate, a key and a CA, every server asks for TLS and a
//!   client certificate signed by the CA (mutual TLS), and every channel speaks
//!   TLS, presents its own certificate and checks the server's against the CA and
//!   the address dialled. A plaintext connection to such a server fails its
//!   handshake; a certificate from another CA is refused either way.
//! - **Roles.** `ivy certs init` marks node certificates with the DNS name
//!   [`NODE_ROLE_NAME`] and client certificates with [`CLIENT_ROLE_NAME`]. The
//!   peer services (Raft transport, heartbeat pulse) and the manager's calls to a
//!   client's page holder (forward, invalidate, release, CHANGE_CM)
//!   require a node certificate, so a client of the cluster cannot vote, append,
//!   or invalidate another client's pages.
//! - **Token.** With `--token-file`, every call carries `authorization: Bearer
//!   TOKEN`, and every server refuses a call whose token is missing or wrong with
//!   [`Error::Unauthenticated`] before any handler runs (compared in constant time).
//!
//! Every server also gets a TLS handshake deadline, a per-connection concurrency
//! limit and a request timeout ([`SERVER_REQUEST_TIMEOUT`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use subtle::ConstantTimeEq;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic::{Request, Status};

use super::convert::status_from_error;
use super::link::Link;
use super::tls::TlsClient;
use crate::error::Error;

/// The DNS name every node certificate carries, marking its holder a CM node.
pub const NODE_ROLE_NAME: &str = "node.ivy-raft.internal";

/// The DNS name every client certificate carries, marking its holder a client.
pub const CLIENT_ROLE_NAME: &str = "client.ivy-raft.internal";

/// How long a TLS handshake may take before the server drops the connection.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Most requests one connection may have in service at once; more wait.
pub const MAX_CONCURRENT_PER_CONNECTION: usize = 256;

/// Longest a server works on one request before answering `Cancelled`: above
/// every handler's own deadline (faults answer within 2.5 s), so it only cuts
/// requests that would otherwise hang.
pub const SERVER_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Shortest token accepted, in bytes.
pub const MIN_TOKEN_LEN: usize = 16;

/// The metadata key the token travels in.
const AUTH_HEADER: &str = "authorization";

/// A channel whose every call carries this process's token.
pub type AuthChannel = InterceptedService<Link, Stamp>;

/// The files of `--tls-cert`, `--tls-key` and `--tls-ca`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// This process's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The cluster CA's certificate (PEM).
    pub ca: PathBuf,
}

/// TLS material in memory: certificate, key and CA, PEM.
#[derive(Clone)]
struct Tls {
    server: ServerTlsConfig,
    client: TlsClient,
}

/// How this process authenticates itself and its callers; the default is
/// neither TLS nor token (loopback development).
#[derive(Clone, Default)]
pub struct Security {
    tls: Option<Arc<Tls>>,
    token: Option<Arc<Token>>,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security").field("tls", &self.tls.is_some()).field("token", &self.token.is_some()).finish()
    }
}

/// The cluster token and the header value that carries it.
struct Token {
    header: MetadataValue<Ascii>,
}

impl Security {
    /// Loads the TLS files (all three or none) and the token file, checking
    /// that each is readable and usable; the error names the file.
    pub fn load(tls: Option<&TlsFiles>, token_file: Option<&Path>) -> Result<Self, Error> {
        let mut security = Security::default();
        if let Some(files) = tls {
            let (cert, key, ca) =
                (read(&files.cert, "--tls-cert")?, read(&files.key, "--tls-key")?, read(&files.ca, "--tls-ca")?);
            security = security.with_tls_pem(&cert, &key, &ca)?;
        }
        if let Some(path) = token_file {
            let text = String::from_utf8(read(path, "--token-file")?)
                .map_err(|_| Error::InvalidConfig(format!("--token-file {}: not UTF-8 text", path.display())))?;
            security = security.with_token(text.trim())?;
        }
        Ok(security)
    }

    /// This security with mutual TLS from PEM bytes: this process's certificate
    /// and key, and the CA that signs every member's certificate.
    pub fn with_tls_pem(mut self, cert: &[u8], key: &[u8], ca: &[u8]) -> Result<Self, Error> {
        let identity = Identity::from_pem(cert, key);
        let server = ServerTlsConfig::new()
            .identity(identity)
            .client_ca_root(Certificate::from_pem(ca))
            .timeout(TLS_HANDSHAKE_TIMEOUT);
        // Build both once, so a bad certificate or key is a configuration error
        // now rather than a failed connection later.
        tonic::transport::Server::builder()
            .tls_config(server.clone())
            .map_err(|e| Error::InvalidConfig(format!("TLS certificate, key or CA unusable: {}", source_chain(&e))))?;
        let client = TlsClient::from_pem(cert, key, ca)?;
        self.tls = Some(Arc::new(Tls { server, client }));
        Ok(self)
    }

    /// This security with `token` required of every caller and sent on every call.
    pub fn with_token(mut self, token: &str) -> Result<Self, Error> {
        let printable = token.bytes().all(|b| b.is_ascii_graphic());
        if token.len() < MIN_TOKEN_LEN || !printable {
            return Err(Error::InvalidConfig(format!(
                "the token must be at least {MIN_TOKEN_LEN} printable ASCII characters without spaces"
            )));
        }
        let header = format!("Bearer {token}")
            .parse()
            .map_err(|_| Error::InvalidConfig("the token is not a valid header value".into()))?;
        self.token = Some(Arc::new(Token { header }));
        Ok(self)
    }

    /// True when connections use TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// True when calls carry and require a token.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Warns when `addr` is reachable beyond this machine and nothing protects it.
    pub fn warn_if_exposed(&self, what: &str, addr: SocketAddr) {
        if addr.ip().is_loopback() {
            return;
        }
        if !self.is_tls() {
            tracing::warn!(
                "{what} listens on {addr} without TLS: anyone who reaches it can read and change pages; \
                 give --tls-cert, --tls-key and --tls-ca (see ivy certs init)"
            );
        }
        if !self.has_token() {
            tracing::warn!("{what} listens on {addr} without a token; give --token-file to require one");
        }
    }

    /// The TLS configuration of outgoing connections, when TLS is on.
    pub(super) fn tls_client(&self) -> Option<TlsClient> {
        self.tls.as_ref().map(|tls| tls.client.clone())
    }

    /// `link` with this process's token stamped on every call.
    pub(super) fn stamped(&self, link: Link) -> AuthChannel {
        InterceptedService::new(link, Stamp(self.token.clone()))
    }

    /// A server builder with TLS, the handshake deadline, the per-connection
    /// concurrency limit and the request timeout.
    pub(super) fn server(&self) -> Result<tonic::transport::Server, Error> {
        let builder = super::net::server_builder()
            .concurrency_limit_per_connection(MAX_CONCURRENT_PER_CONNECTION)
            .timeout(SERVER_REQUEST_TIMEOUT);
        match &self.tls {
            Some(tls) => builder.tls_config(tls.server.clone()).map_err(|e| Error::InvalidConfig(source_chain(&e))),
            None => Ok(builder),
        }
    }

    /// The check every request to a service open to `callers` passes first.
    pub(super) fn guard(&self, callers: Callers) -> Guard {
        Guard { token: self.token.clone(), tls: self.is_tls(), callers }
    }
}

/// Who may call a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Callers {
    /// Any member of the cluster: a CA-signed certificate (with TLS) and the token.
    Members,
    /// CM nodes only: a node certificate (with TLS) and the token.
    Nodes,
}

/// The client side: puts the token on every call.
#[derive(Clone)]
pub struct Stamp(Option<Arc<Token>>);

impl tonic::service::Interceptor for Stamp {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = &self.0 {
            request.metadata_mut().insert(AUTH_HEADER, token.header.clone());
        }
        Ok(request)
    }
}

/// The server side: refuses a call without the token or, for node-only
/// services, without a node certificate.
#[derive(Clone)]
pub struct Guard {
    token: Option<Arc<Token>>,
    tls: bool,
    callers: Callers,
}

impl Guard {
    /// Checks one request's credentials.
    pub(super) fn check<T>(&self, request: &Request<T>) -> Result<(), Error> {
        if let Some(token) = &self.token {
            let given = request.metadata().get(AUTH_HEADER).map(|v| v.as_bytes()).unwrap_or_default();
            if !bool::from(given.ct_eq(token.header.as_bytes())) {
                let what = if given.is_empty() { "no token" } else { "a wrong token" };
                return Err(Error::Unauthenticated(format!("the call carried {what}; give --token-file")));
            }
        }
        if self.tls && self.callers == Callers::Nodes {
            require_node(request)?;
        }
        Ok(())
    }
}

impl tonic::service::Interceptor for Guard {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.check(&request).map_err(|e| status_from_error(&e))?;
        Ok(request)
    }
}

/// Fails unless the caller presented a node certificate (TLS only).
pub(super) fn require_node<T>(request: &Request<T>) -> Result<(), Error> {
    let refused = |why: &str| Error::Unauthenticated(format!("only CM nodes may make this call: {why}"));
    let certs = request.peer_certs().ok_or_else(|| refused("no client certificate"))?;
    let leaf = certs.first().ok_or_else(|| refused("no client certificate"))?;
    let cert = webpki::EndEntityCert::try_from(leaf).map_err(|e| refused(&format!("unreadable certificate: {e}")))?;
    let role = rustls_pki_types::ServerName::try_from(NODE_ROLE_NAME).map_err(|_| refused("bad role name"))?;
    cert.verify_is_valid_for_subject_name(&role).map_err(|_| refused("the certificate is not a node certificate"))
}

/// Reads a file named by `flag`, naming both in the error.
fn read(path: &Path, flag: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::InvalidConfig(format!("{flag} {}: {e}", path.display())))
}

/// An error and its causes on one line (tonic's transport errors hide the cause).
fn source_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}
