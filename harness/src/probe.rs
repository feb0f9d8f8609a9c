//! `ivy health`: one gRPC health check, with exit codes a probe can use, and
//! the reflection listing of a node's services (`--list`).
//!
//! The image has no shell and no probe program, so container health checks
//! call this: exit 0 when the service is SERVING, 1 when it answered anything
//! else, 2 when the node did not answer at all.

use std::process::ExitCode;
use std::time::Duration;

use ivy_raft::rpc::health::{check, list_services, HealthState};
use ivy_raft::rpc::Security;

use crate::secure::SecurityArgs;

/// `ivy health`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct HealthArgs {
    /// The CM node's gRPC address.
    #[arg(long, env = "IVY_HEALTH_ADDR", default_value = "127.0.0.1:7101")]
    pub addr: String,
    /// Health service: "" (the process serves) or ivy.Manager (part of a working cluster).
    #[arg(long, env = "IVY_HEALTH_SERVICE", default_value = "")]
    pub service: String,
    /// Deadline of the check, ms.
    #[arg(long, env = "IVY_HEALTH_TIMEOUT_MS", default_value_t = 1000)]
    pub timeout_ms: u64,
    /// Print one JSON object.
    #[arg(long, env = "IVY_JSON")]
    pub json: bool,
    /// List the node's gRPC services (server reflection) instead of checking health.
    #[arg(long)]
    pub list: bool,
    #[command(flatten)]
    pub security: SecurityArgs,
}

/// Runs `ivy health` and returns its exit code.
pub async fn run(args: HealthArgs) -> ExitCode {
    let timeout = Duration::from_millis(args.timeout_ms);
    let security = match args.security.load() {
        Ok(security) => security,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    let p = Probe { addr: args.addr, service: args.service, timeout, json: args.json, security };
    if args.list {
        list(&p).await
    } else {
        health(&p).await
    }
}

/// What one probe asks.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The node's gRPC address.
    pub addr: String,
    /// The health service name (`""`: the process; `ivy.Manager`: readiness).
    pub service: String,
    /// Deadline of the whole check.
    pub timeout: Duration,
    /// One JSON object instead of a word.
    pub json: bool,
    /// TLS and token of the probe's calls.
    pub security: Security,
}

/// Exit code: SERVING.
pub const EXIT_SERVING: u8 = 0;
/// Exit code: the node answered, not SERVING (or the service is unknown).
pub const EXIT_NOT_SERVING: u8 = 1;
/// Exit code: the node did not answer.
pub const EXIT_UNREACHABLE: u8 = 2;

/// Runs one check, prints the answer and returns the exit code.
pub async fn health(p: &Probe) -> ExitCode {
    let (word, code, error) = match check(&p.addr, &p.service, p.timeout, &p.security).await {
        Ok(HealthState::Serving) => (HealthState::Serving.name(), EXIT_SERVING, None),
        Ok(state) => (state.name(), EXIT_NOT_SERVING, None),
        Err(err) => ("UNREACHABLE", EXIT_UNREACHABLE, Some(err.to_string())),
    };
    if p.json {
        let line = serde_json::json!({"addr": p.addr, "service": p.service, "status": word, "error": error});
        println!("{line}");
    } else {
        match &error {
            Some(err) => eprintln!("{word}: {err}"),
            None => println!("{word}"),
        }
    }
    ExitCode::from(code)
}

/// Lists the services `addr` serves (server reflection), one per line or as JSON.
pub async fn list(p: &Probe) -> ExitCode {
    match list_services(&p.addr, p.timeout, &p.security).await {
        Ok(services) if p.json => {
            println!("{}", serde_json::json!({"addr": p.addr, "services": services}));
            ExitCode::from(EXIT_SERVING)
        }
        Ok(services) => {
            services.iter().for_each(|s| println!("{s}"));
            ExitCode::from(EXIT_SERVING)
        }
        Err(err) => {
            eprintln!("UNREACHABLE: {err}");
            ExitCode::from(EXIT_UNREACHABLE)
        }
    }
}
