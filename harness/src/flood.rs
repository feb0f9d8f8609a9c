//! A bounded flood of registrations and page creations against a CM cluster,
//! for the caps' tests and for measuring a CM's memory under load (the hidden
//! `ivy flood` tool). Every worker stops at the deadline; nothing retries past it.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use ivy_raft::client::CmConn;
use ivy_raft::protocol::{FaultKind, FaultRequest, PageName};
use ivy_raft::rpc::Security;
use ivy_raft::Error;
use serde::Serialize;
use tokio::time::Instant;

/// The address flood clients register: nothing listens there, so the CM's
/// best-effort confirmations fail at once.
const NOWHERE: &str = "127.0.0.1:9";

/// Deadline of one flood request.
const REQUEST_DEADLINE: Duration = Duration::from_secs(2);

/// Page creations a worker tries per registration.
const PAGES_PER_CLIENT: u64 = 4;

/// What to flood.
#[derive(Debug, Clone)]
pub struct FloodConfig {
    /// CM node addresses.
    pub cms: Vec<String>,
    /// How long the flood runs.
    pub duration: Duration,
    /// Concurrent workers.
    pub workers: usize,
    /// TLS and token of the flood's calls.
    pub security: Security,
}

/// What the cluster answered.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FloodReport {
    /// Registrations granted.
    pub registered: u64,
    /// Registrations refused by `--max-clients`.
    pub refused_clients: u64,
    /// Pages created.
    pub created: u64,
    /// Creations refused by `--max-pages`.
    pub refused_pages: u64,
    /// Other errors, by their kind (the error's variant).
    pub other: BTreeMap<String, u64>,
}

impl FloodReport {
    fn merge(&mut self, other: FloodReport) {
        self.registered += other.registered;
        self.refused_clients += other.refused_clients;
        self.created += other.created;
        self.refused_pages += other.refused_pages;
        for (k, n) in other.other {
            *self.other.entry(k).or_default() += n;
        }
    }

    fn error(&mut self, err: &Error) {
        match err {
            Error::TooManyClients { .. } => self.refused_clients += 1,
            Error::TooManyPages { .. } => self.refused_pages += 1,
            other => {
                let debug = format!("{other:?}");
                let kind = debug.split(['(', ' ', '{']).next().unwrap_or_default().to_string();
                *self.other.entry(kind).or_default() += 1;
            }
        }
    }
}

/// Floods the cluster with `config.workers` workers until `config.duration` passes.
pub async fn run(config: &FloodConfig) -> Result<FloodReport> {
    let until = Instant::now() + config.duration;
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..config.workers {
        let cm = CmConn::new(config.cms.clone(), REQUEST_DEADLINE, REQUEST_DEADLINE, config.security.clone())?;
        workers.spawn(worker(cm, w, until));
    }
    let mut report = FloodReport::default();
    while let Some(done) = workers.join_next().await {
        report.merge(done?);
    }
    Ok(report)
}

/// One worker: register, create a few pages as that client, again, until `until`.
async fn worker(cm: CmConn, w: usize, until: Instant) -> FloodReport {
    let mut report = FloodReport::default();
    let (mut client, mut seq, mut page) = (None, 0u64, 0u64);
    while Instant::now() < until {
        match cm.register(NOWHERE).await {
            Ok((id, _)) => {
                report.registered += 1;
                client = Some(id);
            }
            Err(err) => report.error(&err),
        }
        let Some(id) = client else { continue };
        for _ in 0..PAGES_PER_CLIENT {
            (seq, page) = (seq + 1, page + 1);
            let Ok(name) = PageName::new(&format!("flood-{w}-{page}")) else { continue };
            let request = FaultRequest { client: id, seq, page: name, kind: FaultKind::Write };
            let give_up = until.min(Instant::now() + REQUEST_DEADLINE);
            match cm.fault(&request, give_up).await {
                Ok(_) => report.created += 1,
                Err(err) => report.error(&err),
            }
        }
    }
    report
}
