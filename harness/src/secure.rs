//! The security flags every subcommand shares, and `ivy certs`.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use ivy_raft::rpc::{Security, TlsFiles};

use crate::certs::{self, CertsPlan};

/// `--tls-cert`, `--tls-key`, `--tls-ca` and `--token-file`, each with its
/// `IVY_*` variable.
#[derive(Args, Clone, Debug, Default)]
pub struct SecurityArgs {
    /// This process's certificate (PEM); with --tls-key and --tls-ca, every
    /// connection is mutual TLS (see ivy certs init).
    #[arg(long, env = "IVY_TLS_CERT", requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "IVY_TLS_KEY", requires_all = ["tls_cert", "tls_ca"])]
    pub tls_key: Option<PathBuf>,
    /// The cluster CA's certificate (PEM): peers must present a certificate it signed.
    #[arg(long, env = "IVY_TLS_CA", requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,
    /// A file holding the cluster token: sent on every call, required of every caller.
    #[arg(long, env = "IVY_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

impl SecurityArgs {
    /// Loads and checks the files the flags name.
    pub fn load(&self) -> Result<Security, ivy_raft::Error> {
        let tls = match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (Some(cert), Some(key), Some(ca)) => {
                Some(TlsFiles { cert: cert.clone(), key: key.clone(), ca: ca.clone() })
            }
            _ => None,
        };
        Security::load(tls.as_ref(), self.token_file.as_deref())
    }
}

/// `ivy certs` subcommands.
#[derive(Subcommand, Debug)]
pub enum CertsCommand {
    /// Create a CA, node and client certificates and a cluster token in --dir.
    Init(CertsInitArgs),
}

/// `ivy certs init`.
#[derive(Args, Debug)]
pub struct CertsInitArgs {
    /// Where to write ca.crt, ca.key, node-N.crt/.key, client-N.crt/.key and token.
    #[arg(long, env = "IVY_CERTS_DIR")]
    pub dir: PathBuf,
    /// CM node certificates to make.
    #[arg(long, env = "IVY_CERTS_NODES", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub nodes: u64,
    /// Client certificates to make.
    #[arg(long, env = "IVY_CERTS_CLIENTS", default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub clients: u64,
    /// Extra host names or IP addresses every certificate is valid for, comma
    /// separated (127.0.0.1, ::1 and localhost always are).
    #[arg(long, env = "IVY_CERTS_HOSTS", value_delimiter = ',')]
    pub hosts: Vec<String>,
}

/// Runs `ivy certs`.
pub fn run_certs(cmd: &CertsCommand) -> Result<()> {
    let CertsCommand::Init(args) = cmd;
    let plan = CertsPlan { nodes: args.nodes, clients: args.clients, hosts: args.hosts.clone() };
    let bundle = certs::generate(&plan)?;
    let written = certs::write(&args.dir, &bundle)?;
    for path in &written {
        println!("wrote {}", path.display());
    }
    let d = args.dir.display();
    println!("start node N with: --tls-ca {d}/ca.crt --tls-cert {d}/node-N.crt --tls-key {d}/node-N.key --token-file {d}/token");
    println!("clients use client-N.crt and client-N.key the same way; keep ca.key offline");
    Ok(())
}
