//! `ivy demo`: the original experiment on an embedded 3-CM cluster.
//!
//! For each scenario a fresh in-process cluster (ephemeral loopback ports, temp
//! dirs) and 10 clients start, P1..P10 are seeded, and every client runs 10
//! random reads/writes with no sleeps, all clients at once. The "kill-leader"
//! scenario shuts the leader down once a third of the operations are done. Each
//! scenario prints ops, failed ops, average per-client time, p50/p99 fault
//! latency and the failover gap (leader kill to the first fault that started
//! after it and succeeded), with the time the cluster took to elect a new leader.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use ivy_raft::client::Client;
use ivy_raft::config::ReplicationMode;
use ivy_raft::protocol::{Hit, RandomOp, RandomOps};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::cluster::{Cluster, ClusterMode, LEADER_WAIT};
use crate::op_counter::OpCounter;
use crate::workload::Workload;

/// One finished operation.
#[derive(Debug, Clone)]
pub struct OpRecord {
    /// When it started, since the scenario began.
    pub start: Duration,
    /// When it returned.
    pub end: Duration,
    /// Ok(hit) or the error text.
    pub result: Result<Hit, String>,
}

/// The summary of one scenario.
#[derive(Debug, Clone)]
pub struct Report {
    /// Scenario name.
    pub name: &'static str,
    /// Operations run.
    pub ops: usize,
    /// Operations that returned an error.
    pub failed: usize,
    /// Operations served locally.
    pub local: usize,
    /// Mean time a client took for all its operations.
    pub avg_client_ms: f64,
    /// Median latency of operations that took a fault.
    pub p50_fault_ms: f64,
    /// 99th percentile latency of operations that took a fault.
    pub p99_fault_ms: f64,
    /// Leader kill to the first fault that started after it and succeeded.
    pub failover_gap_ms: Option<f64>,
    /// Leader kill to a new leader.
    pub election_ms: Option<f64>,
    /// Pages read back afterwards by a fresh client.
    pub read_back: usize,
    /// The first few distinct errors, if any operation failed.
    pub errors: Vec<String>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let election = self.election_ms.map_or(String::new(), |e| format!(" (new leader after {e:.0} ms)"));
        let gap = self.failover_gap_ms.map_or("-".to_string(), |g| format!("{g:.1} ms"));
        write!(
            f,
            "{:<12} ops {:>4}  failed {:>3}  local {:>3}  avg/client {:>7.2} ms  fault p50 {:>6.2} ms  p99 {:>7.2} ms  failover gap {:>9}  read back {} pages{}",
            self.name, self.ops, self.failed, self.local, self.avg_client_ms, self.p50_fault_ms, self.p99_fault_ms, gap, self.read_back, election
        )?;
        for err in &self.errors {
            write!(f, "\n             error: {err}")?;
        }
        Ok(())
    }
}

/// Runs the no-fault and kill-leader scenarios and returns their reports.
pub async fn run(mode: ClusterMode, work: &Workload) -> Result<Vec<Report>> {
    let mut reports = Vec::new();
    let kill_name = match mode.mode {
        ReplicationMode::Raft => "kill-leader",
        ReplicationMode::Heartbeat => "kill-primary",
    };
    for (name, kill) in [("no-faults", false), (kill_name, true)] {
        let report = scenario(name, kill, mode, work).await?;
        println!("{report}");
        reports.push(report);
    }
    Ok(reports)
}

/// One scenario on a fresh cluster.
pub async fn scenario(name: &'static str, kill: bool, mode: ClusterMode, work: &Workload) -> Result<Report> {
    let cluster = Arc::new(Mutex::new(Cluster::start(mode).await?));
    let mut clients = Vec::new();
    for _ in 0..work.clients {
        clients.push(Arc::new(cluster.lock().await.client().await?));
    }
    for p in 1..=work.pages {
        clients[0].write(&format!("P{p}"), format!("Content{p}").as_bytes()).await?;
    }
    let began = Instant::now();
    let done = Arc::new(OpCounter::default());
    let killer = kill.then(|| {
        let threshold = (work.clients * work.ops / 3) as u64;
        tokio::spawn(kill_leader_at(cluster.clone(), done.clone(), threshold, began))
    });
    let mut tasks = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let (c, done, work) = (c.clone(), done.clone(), work.clone());
        tasks.push(tokio::spawn(async move { run_client(i, &c, &work, began, &done).await }));
    }
    let mut per_client = Vec::new();
    for t in tasks {
        per_client.push(t.await.context("client task")?);
    }
    let killed_at = match killer {
        Some(k) => k.await.context("killer task")?,
        None => None,
    };
    let read_back = read_back(&cluster, work.pages).await;
    for c in clients {
        if let Ok(c) = Arc::try_unwrap(c) {
            c.crash().await;
        }
    }
    if let Ok(cluster) = Arc::try_unwrap(cluster) {
        cluster.into_inner().shutdown().await;
    }
    Ok(summarise(name, &per_client, killed_at, read_back))
}

async fn run_client(index: usize, c: &Client, work: &Workload, began: Instant, done: &OpCounter) -> Vec<OpRecord> {
    let mut records = Vec::with_capacity(work.ops);
    let ops = RandomOps::new(rand::random(), work.pages as u64, work.read_ratio, format!("c{index}"));
    for op in ops.take(work.ops) {
        let start = began.elapsed();
        let result = match &op {
            RandomOp::Write { page, value } => c.write(page, value.as_bytes()).await,
            RandomOp::Read { page } => c.read(page).await.map(|(_, hit)| hit),
        };
        records.push(OpRecord { start, end: began.elapsed(), result: result.map_err(|e| e.to_string()) });
        done.add(1);
    }
    records
}

/// Waits until `threshold` operations are done, then kills the leader; returns when.
async fn kill_leader_at(
    cluster: Arc<Mutex<Cluster>>,
    done: Arc<OpCounter>,
    threshold: u64,
    began: Instant,
) -> Option<Kill> {
    done.reach(threshold).await;
    let mut cluster = cluster.lock().await;
    let leader = cluster.leader()?;
    let at = began.elapsed();
    cluster.kill(leader).await;
    let elected = cluster.wait_leader(LEADER_WAIT).await.ok().map(|_| began.elapsed() - at);
    Some(Kill { at, elected })
}

/// When the leader was killed, and how long the cluster took to elect another.
#[derive(Debug, Clone, Copy)]
struct Kill {
    at: Duration,
    elected: Option<Duration>,
}

async fn read_back(cluster: &Mutex<Cluster>, pages: usize) -> usize {
    let Ok(reader) = cluster.lock().await.client().await else {
        return 0;
    };
    let mut ok = 0;
    for p in 1..=pages {
        ok += usize::from(reader.read(&format!("P{p}")).await.is_ok());
    }
    reader.crash().await;
    ok
}

fn summarise(name: &'static str, per_client: &[Vec<OpRecord>], killed: Option<Kill>, read_back: usize) -> Report {
    let all: Vec<&OpRecord> = per_client.iter().flatten().collect();
    let mut faults: Vec<f64> = all.iter().filter(|r| r.result == Ok(Hit::Fault)).map(|r| ms(r.end - r.start)).collect();
    faults.sort_by(f64::total_cmp);
    let client_ms: Vec<f64> =
        per_client.iter().filter(|ops| !ops.is_empty()).map(|ops| ms(ops[ops.len() - 1].end - ops[0].start)).collect();
    // Operations in flight at the kill may finish on the old leader; the gap is
    // measured to the first fault both started and served after it.
    let gap = killed.and_then(|k| {
        all.iter().filter(|r| r.result == Ok(Hit::Fault) && r.start >= k.at).map(|r| ms(r.end - k.at)).reduce(f64::min)
    });
    Report {
        name,
        ops: all.len(),
        failed: all.iter().filter(|r| r.result.is_err()).count(),
        local: all.iter().filter(|r| r.result == Ok(Hit::Local)).count(),
        avg_client_ms: client_ms.iter().sum::<f64>() / client_ms.len().max(1) as f64,
        p50_fault_ms: percentile(&faults, 0.50),
        p99_fault_ms: percentile(&faults, 0.99),
        failover_gap_ms: gap,
        election_ms: killed.and_then(|k| k.elected).map(ms),
        read_back,
        errors: first_errors(&all),
    }
}

/// Up to `SHOWN_ERRORS` distinct error messages, in the order they happened.
fn first_errors(all: &[&OpRecord]) -> Vec<String> {
    const SHOWN_ERRORS: usize = 3;
    let mut errors: Vec<String> = Vec::new();
    for r in all {
        if let Err(e) = &r.result {
            if !errors.contains(e) && errors.len() < SHOWN_ERRORS {
                errors.push(e.clone());
            }
        }
    }
    errors
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The `q` quantile of sorted values (0 when empty).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}
