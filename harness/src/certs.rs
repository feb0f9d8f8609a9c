//! `ivy certs init`: a cluster CA, node and client certificates and keys, and a
//! cluster token, for a local or few-host secure cluster (the model is
//! CockroachDB's `cert create-ca` / `create-node` / `create-client`).
//!
//! Every certificate is signed by the one CA and names 127.0.0.1, ::1,
//! localhost and the `--hosts` given, so it serves and dials on any of them.
//! Node certificates also carry [`NODE_ROLE_NAME`], client certificates
//! [`CLIENT_ROLE_NAME`]: the CM's peer services and its calls to clients'
//! page holders accept only the first.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ivy_raft::rpc::{CLIENT_ROLE_NAME, NODE_ROLE_NAME};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// How long the CA's certificate is valid.
const CA_VALID_DAYS: i64 = 10 * 365;

/// How long node and client certificates are valid.
const LEAF_VALID_DAYS: i64 = 2 * 365;

/// Random bytes in the cluster token (written as hex).
const TOKEN_BYTES: usize = 32;

/// What `ivy certs init` makes.
#[derive(Debug, Clone)]
pub struct CertsPlan {
    /// CM nodes: node-1 .. node-N.
    pub nodes: u64,
    /// Clients: client-1 .. client-N.
    pub clients: u64,
    /// Extra host names or IP addresses every certificate is valid for.
    pub hosts: Vec<String>,
}

/// A certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct Pem {
    /// The certificate.
    pub cert: String,
    /// Its private key.
    pub key: String,
}

/// A CA and the certificates it signed, in memory.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The CA.
    pub ca: Pem,
    /// node-1 .. node-N.
    pub nodes: Vec<Pem>,
    /// client-1 .. client-N.
    pub clients: Vec<Pem>,
    /// The cluster token.
    pub token: String,
}

/// Makes a fresh CA and the certificates `plan` asks for.
pub fn generate(plan: &CertsPlan) -> Result<Bundle> {
    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name.push(DnType::CommonName, "ivy-raft cluster CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut params, CA_VALID_DAYS);
    let ca_cert = params.self_signed(&ca_key).context("signing the CA certificate")?;
    let ca = Pem { cert: ca_cert.pem(), key: ca_key.serialize_pem() };
    let issuer = Issuer::new(params, ca_key);
    let leaf = |role: &str, name: String| leaf(&issuer, role, name, &plan.hosts);
    let nodes = (1..=plan.nodes).map(|n| leaf(NODE_ROLE_NAME, format!("ivy node {n}"))).collect::<Result<_>>()?;
    let clients =
        (1..=plan.clients).map(|n| leaf(CLIENT_ROLE_NAME, format!("ivy client {n}"))).collect::<Result<_>>()?;
    Ok(Bundle { ca, nodes, clients, token: token() })
}

/// One node or client certificate signed by `issuer`.
fn leaf(issuer: &Issuer<'_, KeyPair>, role: &str, name: String, hosts: &[String]) -> Result<Pem> {
    let mut names: Vec<String> = ["127.0.0.1", "::1", "localhost", role].map(String::from).to_vec();
    names.extend(hosts.iter().cloned());
    let mut params = CertificateParams::new(names).with_context(|| format!("names of {name}"))?;
    params.distinguished_name.push(DnType::CommonName, name.clone());
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut params, LEAF_VALID_DAYS);
    let key = KeyPair::generate().with_context(|| format!("generating the key of {name}"))?;
    let cert = params.signed_by(&key, issuer).with_context(|| format!("signing {name}"))?;
    Ok(Pem { cert: cert.pem(), key: key.serialize_pem() })
}

/// Valid from an hour ago (clock skew) for `days`.
fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
}

/// A random cluster token, hex.
fn token() -> String {
    (0..TOKEN_BYTES).map(|_| format!("{:02x}", rand::random::<u8>())).collect()
}

/// Writes `bundle` into `dir` (created if absent); refuses to overwrite a CA
/// that is there. Returns the files written, CA first.
pub fn write(dir: &Path, bundle: &Bundle) -> Result<Vec<PathBuf>> {
    if dir.join("ca.crt").exists() || dir.join("ca.key").exists() {
        bail!("{} already holds a CA (ca.crt or ca.key); choose another --dir or remove it first", dir.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    let mut pair = |name: &str, pem: &Pem| -> Result<()> {
        written.push(put(dir, &format!("{name}.crt"), &pem.cert, false)?);
        written.push(put(dir, &format!("{name}.key"), &pem.key, true)?);
        Ok(())
    };
    pair("ca", &bundle.ca)?;
    for (i, pem) in bundle.nodes.iter().enumerate() {
        pair(&format!("node-{}", i + 1), pem)?;
    }
    for (i, pem) in bundle.clients.iter().enumerate() {
        pair(&format!("client-{}", i + 1), pem)?;
    }
    written.push(put(dir, "token", &format!("{}\n", bundle.token), true)?);
    Ok(written)
}

/// Writes one file; secrets are readable by their owner only.
fn put(dir: &Path, name: &str, text: &str, secret: bool) -> Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let mode = if secret { 0o600 } else { 0o644 };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
