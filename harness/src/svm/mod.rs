//! Shared virtual memory tools: `ivy vm`, a parallel matrix multiply across
//! client processes over one mapped region ([`vm`]), its worker processes
//! ([`worker`]), and `ivy svm-shell`, a region driven over stdin for the tests
//! ([`shell`]).

pub mod matmul;
pub mod shell;
pub mod vm;
pub mod worker;

use std::time::Duration;

use anyhow::Result;
use clap::Args;
use ivy_raft::client::{Client, ClientConfig};

/// The client flags the region processes share.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// CM node addresses, comma separated.
    #[arg(long, env = "IVY_CM")]
    pub cm: String,
    /// The region's name (its pages are NAME.0, NAME.1, ...).
    #[arg(long, env = "IVY_SVM_REGION", default_value = "vm")]
    pub region: String,
    /// Deadline of one fault, retries included, ms (past it the region is poisoned).
    #[arg(long, env = "IVY_TIMEOUT_MS", default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Testing only: invalidated pages stay mapped (a broken build the svm tests catch).
    #[arg(long, env = "IVY_UNSAFE_KEEP_STALE_MAPPINGS", hide = true)]
    pub unsafe_keep_stale: bool,
}

/// Starts the client a region process faults through.
pub async fn start_client(args: &ClientArgs) -> Result<Client> {
    let cms = args.cm.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    let mut config = ClientConfig::new(cms);
    config.op_timeout = Duration::from_millis(args.timeout_ms);
    Ok(Client::start(config).await?)
}
