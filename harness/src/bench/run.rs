//! One bench run: start CM processes, seed, drive the clients, apply the
//! scenario, read everything back, summarise.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use tokio::time::Instant;

use super::syncs::{sample, SyncStats};
use super::{BenchConfig, BenchMode, Latency, RunResult, Scenario, Workload};
use crate::chaos::checker;
use crate::chaos::history::{Op, OpKind, Outcome};
use crate::chaos::procs::{free_port, CmProc, CmSet};
use crate::op_counter::OpCounter;
use anyhow::{anyhow, Result};
use ivy_raft::client::{Client, ClientConfig, PeerChannels};
use ivy_raft::protocol::{Access, Hit, RandomOp, RandomOps};
use ivy_raft::rpc::Security;

/// How long a killed node stays down before a restart.
const DOWN_FOR: Duration = Duration::from_millis(500);

/// How long a gracefully stopped node may take to exit before it is killed
/// (a hand-over gives up after 3 s).
const STOP_WAIT: Duration = Duration::from_secs(5);

/// How long the cluster may take to elect a leader.
const LEADER_WAIT: Duration = Duration::from_secs(30);

/// Each client's deadline per operation.
const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// A run stops issuing operations after this long (a baseline that lost its
/// directory can fail every operation slowly); the report counts what ran.
const RUN_CAP: Duration = Duration::from_secs(60);

/// Width of one timeline bucket.
const BUCKET_MS: u64 = 100;

/// One finished operation.
struct Rec {
    client: usize,
    page: String,
    write: bool,
    value: Option<String>,
    start_us: u64,
    end_us: u64,
    result: Result<Hit, String>,
}

/// CM node processes of one run.
struct Nodes {
    cms: CmSet,
    addrs: Vec<String>,
}

impl Nodes {
    async fn start(cfg: &BenchConfig, mode: BenchMode, dir: &std::path::Path) -> Result<Nodes> {
        let n = if mode == BenchMode::Heartbeat { 2 } else { 3 };
        let real: BTreeMap<u64, String> = (1..=n).map(|id| (id, format!("127.0.0.1:{}", free_port()))).collect();
        let peers: Vec<String> = real.iter().map(|(id, a)| format!("{id}={a}")).collect();
        let mut cms = BTreeMap::new();
        for (id, addr) in &real {
            let data = dir.join(format!("cm-{id}"));
            let _ = std::fs::remove_dir_all(&data);
            let mut args: Vec<String> =
                vec!["cm".into(), "--id".into(), id.to_string(), "--peers".into(), peers.join(",")];
            let replication = mode.replication().name();
            args.extend(["--data-dir".into(), data.display().to_string(), "--mode".into(), replication.into()]);
            args.extend(["--pulse-ms".into(), cfg.pulse_ms.to_string()]);
            if mode == BenchMode::RaftSkipSync {
                args.push("--unsafe-skip-sync".into());
            }
            let cm = CmProc::new(&cfg.bin, *id, addr.clone(), args, dir.join(format!("cm-{id}.log")));
            cm.start()?;
            cms.insert(*id, cm);
        }
        let nodes = Nodes { cms: CmSet(cms), addrs: real.values().cloned().collect() };
        nodes.cms.wait_leader(LEADER_WAIT).await.ok_or_else(|| anyhow!("the CM nodes elected no leader"))?;
        Ok(nodes)
    }
}

/// Runs one workload in one mode under one scenario (`round` of its `repeat`).
pub async fn run_one(
    cfg: &BenchConfig,
    work: &Workload,
    mode: BenchMode,
    scenario: Scenario,
    round: usize,
    progress: &ProgressBar,
) -> Result<RunResult> {
    let mut name = format!("{}-{}-{}", work.label, mode, scenario.name());
    if work.repeat > 1 {
        name += &format!("-{round}");
    }
    let dir = cfg.out.join("runs").join(name);
    std::fs::create_dir_all(&dir).map_err(|e| anyhow!("{}: {e}", dir.display()))?;
    let nodes = Arc::new(Nodes::start(cfg, mode, &dir).await?);
    let mut clients = Vec::with_capacity(work.clients);
    // One connection per peer for the whole fleet, as one process per machine would have.
    let peers = PeerChannels::new(&Security::default());
    for _ in 0..work.clients {
        let mut config = ClientConfig::new(nodes.addrs.clone());
        config.op_timeout = OP_TIMEOUT;
        config.peer_channels = Some(peers.clone());
        clients.push(Arc::new(Client::start(config).await?));
    }
    for p in 1..=work.pages {
        clients[0].write(&format!("P{p}"), format!("seed-{p}").as_bytes()).await?;
    }
    let before = sample(&nodes.cms).await;
    let began = Instant::now();
    let done = Arc::new(OpCounter::default());
    let total = (work.clients * work.ops) as u64;
    let halted: Vec<Arc<AtomicBool>> = clients.iter().map(|_| Arc::default()).collect();
    let fleet = Fleet { nodes: nodes.clone(), clients: clients.clone(), halted: halted.clone() };
    let when = When { done: done.clone(), total, duration: work.duration_ms.map(Duration::from_millis) };
    let chaos = tokio::spawn(apply_scenario(fleet, scenario, when, began));
    let mut tasks = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let (c, done, work, progress, halt) =
            (c.clone(), done.clone(), work.clone(), progress.clone(), halted[i].clone());
        tasks.push(tokio::spawn(async move { drive(i, &c, &work, began, &done, &progress, &halt).await }));
    }
    let mut per_client = Vec::new();
    for t in tasks {
        per_client.push(t.await.map_err(|e| anyhow!("client task: {e}"))?);
    }
    let wall = began.elapsed();
    let marks = chaos.await.map_err(|e| anyhow!("scenario task: {e}"))?;
    let syncs = SyncStats::between(&before, &sample(&nodes.cms).await, &marks.killed);
    let finals = read_back(&nodes, work.pages, began).await;
    for c in clients {
        if let Ok(c) = Arc::try_unwrap(c) {
            c.crash().await;
        }
    }
    nodes.cms.kill_all().await;
    let mut result = summarise(work, mode, scenario, &per_client, &finals, &marks, wall);
    result.syncs = Some(syncs);
    Ok(result)
}

/// One client's operations, back to back, until done or halted.
async fn drive(
    client: usize,
    c: &Client,
    work: &Workload,
    began: Instant,
    done: &OpCounter,
    progress: &ProgressBar,
    halt: &AtomicBool,
) -> Vec<Rec> {
    let generated = RandomOps::new(client as u64 + 1, work.pages as u64, work.read_ratio, format!("c{client}"));
    let mut recs = Vec::with_capacity(work.ops);
    let cap = work.duration_ms.map_or(RUN_CAP, |ms| RUN_CAP.min(Duration::from_millis(ms)));
    for (n, op) in generated.take(work.ops).enumerate() {
        if began.elapsed() > cap || halt.load(Ordering::SeqCst) {
            // Count the skipped operations as done, so the scenario stops waiting.
            let skipped = (work.ops - n) as u64;
            done.add(skipped);
            progress.inc(skipped);
            break;
        }
        let start_us = began.elapsed().as_micros() as u64;
        let write = matches!(op, RandomOp::Write { .. });
        let (page, value, result) = match op {
            RandomOp::Write { page, value } => {
                let r = c.write(&page, value.as_bytes()).await;
                (page, Some(value), r)
            }
            RandomOp::Read { page } => match c.read(&page).await {
                Ok((v, hit)) => (page, Some(String::from_utf8_lossy(&v).into_owned()), Ok(hit)),
                Err(e) => (page, None, Err(e)),
            },
        };
        let end_us = began.elapsed().as_micros() as u64;
        recs.push(Rec { client, page, write, value, start_us, end_us, result: result.map_err(|e| e.to_string()) });
        done.add(1);
        progress.inc(1);
    }
    recs
}

/// What a scenario acts on: the CM nodes, and the clients with their halt flags.
struct Fleet {
    nodes: Arc<Nodes>,
    clients: Vec<Arc<Client>>,
    halted: Vec<Arc<AtomicBool>>,
}

/// When a scenario struck, and what a client kill left behind.
#[derive(Default)]
struct Marks {
    kills: Vec<Duration>,
    /// The pages the killed client held.
    client_pages: Vec<String>,
    /// The CM nodes killed (their sync counters restarted).
    killed: BTreeSet<u64>,
}

/// Kills the client holding the most copies: it stops issuing operations, then
/// stops serving and renewing its lease. Returns the pages it held.
///
/// The pages are listed once the client has stopped answering: a copy it gave up
/// to a write already under way (it answered the invalidation just before it
/// stopped) is then no longer listed, so it cannot pass for a page whose writes
/// the kill never blocked.
async fn kill_client(fleet: &Fleet) -> Vec<String> {
    let Some(victim) = (0..fleet.clients.len()).max_by_key(|i| valid_pages(&fleet.clients[*i]).len()) else {
        return Vec::new();
    };
    fleet.halted[victim].store(true, Ordering::SeqCst);
    let client = &fleet.clients[victim];
    client.halt().await;
    valid_pages(client)
}

/// The pages a client's page table holds with read or write access.
fn valid_pages(client: &Client) -> Vec<String> {
    client.pages().into_iter().filter(|(_, l)| l.access != Access::Invalid).map(|(p, _)| p.to_string()).collect()
}

/// How a scenario finds its moments: fractions of the operations done, or of
/// the duration of a fixed-duration workload.
struct When {
    done: Arc<OpCounter>,
    total: u64,
    duration: Option<Duration>,
}

impl When {
    /// Waits until `point` (a fraction) of the run; false when the run is over.
    async fn reach(&self, point: f64, began: Instant) -> bool {
        if let Some(d) = self.duration {
            tokio::time::sleep_until(began + d.mul_f64(point)).await;
            return self.done.get() < self.total;
        }
        self.done.reach((self.total as f64 * point) as u64).await;
        self.done.get() < self.total
    }
}

/// Kills and restarts nodes (or kills a client) as the scenario says; returns
/// when each kill happened and which nodes were killed.
async fn apply_scenario(fleet: Fleet, scenario: Scenario, when: When, began: Instant) -> Marks {
    let nodes = &fleet.nodes;
    let mut marks = Marks::default();
    let points: &[f64] = match scenario {
        Scenario::None => &[],
        Scenario::KillLeader
        | Scenario::KillRestart
        | Scenario::KillBoth
        | Scenario::KillClient
        | Scenario::StopRestart => &[1.0 / 3.0],
        Scenario::KillRestartMany => &[0.25, 0.5, 0.75],
    };
    for point in points {
        if !when.reach(*point, began).await {
            break;
        }
        // Each kill is marked once it is done (the client stopped, every victim
        // node reaped): a fault that started while the last of several victims
        // was still up must not count as served after the kill.
        if scenario == Scenario::KillClient {
            marks.client_pages = kill_client(&fleet).await;
            marks.kills.push(began.elapsed());
            continue;
        }
        let victims: Vec<u64> = match scenario {
            Scenario::KillBoth => nodes.cms.ids(),
            _ => nodes.cms.leader().await.into_iter().collect(),
        };
        if scenario == Scenario::StopRestart {
            // The signal is the operator's act: the mark is when it is sent, and
            // the node serves until it has handed over.
            marks.kills.push(began.elapsed());
            for id in &victims {
                nodes.cms.stop(*id, STOP_WAIT).await;
            }
        } else {
            for id in &victims {
                nodes.cms.kill(*id).await;
            }
            marks.kills.push(began.elapsed());
        }
        marks.killed.extend(victims.iter().copied());
        if scenario == Scenario::KillLeader {
            continue;
        }
        tokio::time::sleep(DOWN_FOR).await;
        for id in victims {
            nodes.cms.restart(id);
        }
    }
    marks
}

/// After the run: a fresh client reads every page.
async fn read_back(nodes: &Nodes, pages: usize, began: Instant) -> Vec<Rec> {
    let _ = nodes.cms.wait_leader(LEADER_WAIT).await;
    let mut config = ClientConfig::new(nodes.addrs.clone());
    config.op_timeout = OP_TIMEOUT;
    let Ok(reader) = Client::start(config).await else { return Vec::new() };
    let mut recs = Vec::new();
    for p in 1..=pages {
        let page = format!("P{p}");
        let start_us = began.elapsed().as_micros() as u64;
        let read = reader.read(&page).await;
        let end_us = began.elapsed().as_micros() as u64;
        let (value, result) = match read {
            Ok((v, hit)) => (Some(String::from_utf8_lossy(&v).into_owned()), Ok(hit)),
            Err(e) => (None, Err(e.to_string())),
        };
        recs.push(Rec { client: usize::MAX, page, write: false, value, start_us, end_us, result });
    }
    reader.crash().await;
    recs
}

fn summarise(
    work: &Workload,
    mode: BenchMode,
    scenario: Scenario,
    per_client: &[Vec<Rec>],
    finals: &[Rec],
    marks: &Marks,
    wall: Duration,
) -> RunResult {
    let kills = &marks.kills;
    let all: Vec<&Rec> = per_client.iter().flatten().collect();
    let ok: Vec<&&Rec> = all.iter().filter(|r| r.result.is_ok()).collect();
    let faulted = |write: bool| ok.iter().filter(move |r| r.write == write && r.result == Ok(Hit::Fault));
    let client_ms: Vec<f64> = per_client
        .iter()
        .filter(|r| !r.is_empty())
        .map(|r| (r[r.len() - 1].end_us - r[0].start_us) as f64 / 1e3)
        .collect();
    let gaps = kills
        .iter()
        .filter_map(|k| {
            let k = k.as_micros() as u64;
            ok.iter().filter(|r| r.result == Ok(Hit::Fault) && r.start_us >= k).map(|r| r.end_us - k).min()
        })
        .map(|us| us as f64 / 1e3)
        .collect();
    let blocked = kills.first().map_or_else(Vec::new, |k| writes_blocked(&ok, &marks.client_pages, *k));
    let mut timeline = vec![0u64; (wall.as_millis() as u64 / BUCKET_MS + 1) as usize];
    for r in &ok {
        let bucket = ((r.end_us / 1000) / BUCKET_MS) as usize;
        if let Some(b) = timeline.get_mut(bucket) {
            *b += 1;
        }
    }
    RunResult {
        workload: work.clone(),
        mode,
        scenario,
        ops: all.len(),
        failed: all.len() - ok.len(),
        throughput: ok.len() as f64 / wall.as_secs_f64().max(1e-9),
        read_fault: latency(faulted(false).map(|r| r.end_us - r.start_us)),
        write_fault: latency(faulted(true).map(|r| r.end_us - r.start_us)),
        local_hit_rate: ok.iter().filter(|r| r.result == Ok(Hit::Local)).count() as f64 / ok.len().max(1) as f64,
        failover_gaps_ms: if scenario == Scenario::KillClient { Vec::new() } else { gaps },
        writes_blocked_ms: blocked,
        acked_writes_lost: lost_writes(&all, finals),
        avg_client_ms: client_ms.iter().sum::<f64>() / client_ms.len().max(1) as f64,
        wall_ms: wall.as_secs_f64() * 1e3,
        timeline,
        fault_marks_ms: kills.iter().map(|k| k.as_secs_f64() * 1e3).collect(),
        syncs: None,
        round_throughputs: Vec::new(),
    }
}

/// Per page the killed client held: kill to the first successful write of it
/// that started after the kill, ms.
fn writes_blocked(ok: &[&&Rec], pages: &[String], kill: Duration) -> Vec<f64> {
    let kill = kill.as_micros() as u64;
    pages
        .iter()
        .filter_map(|p| {
            ok.iter().filter(|r| r.write && &r.page == p && r.start_us >= kill).map(|r| r.end_us - kill).min()
        })
        .map(|us| us as f64 / 1e3)
        .collect()
}

/// Percentiles of latencies given in microseconds.
fn latency(us: impl Iterator<Item = u64>) -> Latency {
    let Ok(mut h) = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3) else { return Latency::default() };
    for v in us {
        let _ = h.record(v.clamp(1, 60_000_000));
    }
    if h.is_empty() {
        return Latency::default();
    }
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
    let cdf = (0..=100).map(|i| i as f64 / 100.0).map(|q| (q, ms(q.min(0.9999)))).collect();
    Latency {
        count: h.len(),
        p50_ms: ms(0.50),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: h.max() as f64 / 1e3,
        mean_ms: h.mean() / 1e3,
        cdf,
    }
}

/// Acknowledged writes the read-back cannot account for, by the chaos checker's rule.
fn lost_writes(all: &[&Rec], finals: &[Rec]) -> usize {
    let op = |r: &Rec, last: bool| Op {
        client: r.client,
        process: r.client as u64,
        lost_with: None,
        kind: if r.write { OpKind::Write } else { OpKind::Read },
        page: r.page.clone(),
        value: r.value.clone(),
        invoke_ns: r.start_us * 1000,
        return_ns: Some(r.end_us * 1000),
        outcome: if r.result.is_ok() { Outcome::Ok } else { Outcome::Fail },
        epoch: None,
        error: r.result.as_ref().err().cloned(),
        last,
    };
    let mut ops: Vec<Op> = all.iter().map(|r| op(r, false)).collect();
    // A page seeded before the run counts as written by a write at time zero.
    ops.extend(finals.iter().map(|r| op(r, true)));
    let seeds: Vec<Op> = finals
        .iter()
        .map(|r| Op {
            kind: OpKind::Write,
            value: Some(format!("seed-{}", &r.page[1..])),
            invoke_ns: 0,
            return_ns: Some(0),
            outcome: Outcome::Ok,
            error: None,
            ..op(r, false)
        })
        .collect();
    ops.extend(seeds);
    // A read-back that failed lost the page's last writes outright.
    let failed_reads = finals.iter().filter(|r| r.result.is_err()).count();
    checker::check(&ops).lost_acknowledged_writes + failed_reads
}
