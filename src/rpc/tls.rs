//! The calling side of mutual TLS for [`Link`](super::link::Link): a rustls client
//! configuration built once from the PEM files, and the handshake on a dialled
//! socket.
//!
//! It checks what tonic's TLS channel checked: the server's certificate chains
//! to the cluster CA and names the host dialled (an IP address or a DNS name);
//! it presents this process's certificate; it offers HTTP/2 by ALPN.

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use crate::error::Error;

/// A client TLS configuration, cheap to clone.
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
}

impl TlsClient {
    /// The configuration for this process's certificate chain and key and the
    /// cluster CA, all PEM; the error says which part is unusable.
    pub fn from_pem(cert: &[u8], key: &[u8], ca: &[u8]) -> Result<Self, Error> {
        let bad = |what: &str, e: &dyn std::fmt::Display| Error::InvalidConfig(format!("TLS {what} unusable: {e}"));
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(ca) {
            roots.add(ca.map_err(|e| bad("CA", &e))?).map_err(|e| bad("CA", &e))?;
        }
        if roots.is_empty() {
            return Err(Error::InvalidConfig("TLS CA unusable: no certificate in it".into()));
        }
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert).collect::<Result<_, _>>().map_err(|e| bad("certificate", &e))?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| bad("key", &e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("protocol versions", &e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| bad("certificate or key", &e))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(TlsClient { connector: TlsConnector::from(Arc::new(config)) })
    }

    /// The TLS handshake on `tcp`, checking the server's certificate against
    /// the host of `authority` (host:port).
    pub async fn connect(&self, authority: &str, tcp: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        let host = authority.rsplit_once(':').map_or(authority, |(host, _)| host);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("server name {host:?}: {e}")))?;
        self.connector.connect(name, tcp).await
    }
}
