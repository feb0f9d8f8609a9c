//! One chaos run from start to verdict.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::time::Instant;

use super::history::{FaultEvent, Op, OpKind, Outcome};
use super::procs::{free_port, ClientProc, CmProc, CmSet};
use super::proxy::Proxy;
use super::report::Report;
use super::rig::Rig;
use super::{checker, history, ChaosConfig, Nemesis};
use anyhow::{anyhow, Result};
use ivy_raft::config::ReplicationMode;
use ivy_raft::protocol::{RandomOp, RandomOps};

/// A client's own deadline for one operation, ms.
const CLIENT_OP_TIMEOUT_MS: u64 = 3000;

/// How long the harness waits for an answer before calling the outcome unknown.
const HARNESS_OP_TIMEOUT: Duration = Duration::from_millis(CLIENT_OP_TIMEOUT_MS + 2000);

/// How long the cluster may take to elect a leader after everything healed.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// How far behind schedule the fault injector may run before it skips ahead.
const FAULT_SLACK: Duration = Duration::from_secs(1);

/// Progress lines on stderr this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Most operations one worker issues (a bound on every load loop).
const MAX_OPS_PER_WORKER: u64 = 1_000_000;

/// The shared monotonic clock of a run.
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn ns(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

/// Runs the harness; the report says whether the verdict is clean.
pub async fn run(cfg: &ChaosConfig) -> Result<Report> {
    std::fs::create_dir_all(&cfg.out).map_err(|e| anyhow!("{}: {e}", cfg.out.display()))?;
    // The CM data dirs are the harness's own: every run starts from empty ones.
    for id in 1..=3 {
        let _ = std::fs::remove_dir_all(cfg.out.join(format!("cm-{id}")));
    }
    let clock = Clock(Instant::now());
    let rig = Arc::new(build_rig(cfg).await?);
    let ops: Arc<Mutex<Vec<Op>>> = Arc::default();
    let faults: Arc<Mutex<Vec<FaultEvent>>> = Arc::default();
    let end = Instant::now() + cfg.duration;
    eprintln!(
        "chaos: {:?} mode, {} clients x {} workers on {} pages for {} s, seed {}, faults {:?}",
        cfg.mode,
        cfg.clients,
        cfg.workers,
        cfg.pages,
        cfg.duration.as_secs(),
        cfg.seed,
        cfg.faults.iter().map(|f| f.name()).collect::<Vec<_>>()
    );
    let counter = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for c in 0..cfg.clients {
        for w in 0..cfg.workers {
            let (rig, ops, counter) = (rig.clone(), ops.clone(), counter.clone());
            let seed = cfg.seed ^ ((c as u64) << 32 | w as u64);
            let pages = cfg.pages;
            workers.push(tokio::spawn(async move { worker(rig, c, w, pages, seed, end, clock, ops, counter).await }));
        }
    }
    let injector = tokio::spawn(inject_faults(rig.clone(), cfg.clone(), end, clock, faults.clone()));
    let progress = tokio::spawn(report_progress(counter.clone(), faults.clone(), end, clock));
    for w in workers {
        let _ = w.await;
    }
    let _ = injector.await;
    progress.abort();

    let mut rig = Arc::try_unwrap(rig).map_err(|_| anyhow!("rig still shared"))?;
    rig.heal_all();
    let leader = rig.wait_leader(RECOVERY_TIMEOUT).await;
    eprintln!("chaos: healed; leader {leader:?}; final reads");
    final_reads(&rig, cfg.pages, clock, &ops).await;
    for client in rig.clients.drain(..) {
        client.quit().await;
    }
    rig.cms.kill_all().await;
    let ops = std::mem::take(&mut *ops.lock().unwrap_or_else(|e| e.into_inner()));
    let faults = std::mem::take(&mut *faults.lock().unwrap_or_else(|e| e.into_inner()));
    history::write(&cfg.out.join("history.jsonl"), &ops, &faults)?;
    let verdict = checker::check(&ops);
    let report = Report::new(cfg, &ops, &faults, verdict, leader.is_some());
    report.write(&cfg.out.join("report.json"))?;
    Ok(report)
}

/// CM processes, proxies on every link, then clients.
async fn build_rig(cfg: &ChaosConfig) -> Result<Rig> {
    let n = match cfg.mode {
        ReplicationMode::Raft => 3,
        ReplicationMode::Heartbeat => 2,
    };
    let real: BTreeMap<u64, String> = (1..=n).map(|id| (id, format!("127.0.0.1:{}", free_port()))).collect();
    let mut cm_links = BTreeMap::new();
    for from in real.keys() {
        for (to, addr) in &real {
            if from != to {
                cm_links.insert((*from, *to), Proxy::start(addr).await?);
            }
        }
    }
    let mut cms = BTreeMap::new();
    for (id, addr) in &real {
        let peers: Vec<String> = real
            .keys()
            .map(|p| {
                let via = if p == id { addr.clone() } else { cm_links[&(*id, *p)].addr.clone() };
                format!("{p}={via}")
            })
            .collect();
        let cm = CmProc::new(
            &cfg.bin,
            *id,
            addr.clone(),
            cm_args(cfg, *id, addr, &peers.join(",")),
            cfg.out.join(format!("cm-{id}.log")),
        );
        cm.start()?;
        cms.insert(*id, cm);
    }
    let mut rig = Rig { cms: CmSet(cms), clients: Vec::new(), cm_links, client_links: BTreeMap::new() };
    rig.wait_leader(RECOVERY_TIMEOUT).await.ok_or_else(|| anyhow!("the CM nodes elected no leader"))?;
    for c in 0..cfg.clients {
        let mut via = Vec::new();
        for (id, addr) in &real {
            let proxy = Proxy::start(addr).await?;
            via.push(proxy.addr.clone());
            rig.client_links.insert((c, *id), proxy);
        }
        let log = cfg.out.join(format!("client-{c}.log"));
        let client = ClientProc::start(&cfg.bin, c, &via.join(","), CLIENT_OP_TIMEOUT_MS, &log).await?;
        eprintln!("chaos: client {c} registered as directory client {}", client.id);
        rig.clients.push(client);
    }
    Ok(rig)
}

fn cm_args(cfg: &ChaosConfig, id: u64, listen: &str, peers: &str) -> Vec<String> {
    let data = cfg.out.join(format!("cm-{id}"));
    let mut args: Vec<String> = ["cm", "--id", &id.to_string(), "--listen", listen, "--peers", peers, "--data-dir"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(data.display().to_string());
    match cfg.mode {
        ReplicationMode::Raft => args.extend(["--mode".into(), "raft".into()]),
        ReplicationMode::Heartbeat => {
            args.extend(["--mode".into(), "heartbeat".into(), "--pulse-ms".into(), cfg.pulse_ms.to_string()])
        }
    }
    if cfg.unsafe_skip_invalidation {
        args.push("--unsafe-skip-invalidation".into());
    }
    args
}

#[allow(clippy::too_many_arguments)]
async fn worker(
    rig: Arc<Rig>,
    client: usize,
    worker: usize,
    pages: usize,
    seed: u64,
    end: Instant,
    clock: Clock,
    ops: Arc<Mutex<Vec<Op>>>,
    counter: Arc<AtomicU64>,
) {
    let generated = RandomOps::new(seed, pages as u64, 0.5, format!("c{client}w{worker}"));
    for op in generated.take(MAX_OPS_PER_WORKER as usize) {
        if Instant::now() >= end {
            break;
        }
        let (page, value, command) = match op {
            RandomOp::Write { page, value } => {
                let command = format!("write {page} {value}");
                (page, Some(value), command)
            }
            RandomOp::Read { page } => {
                let command = format!("read {page}");
                (page, None, command)
            }
        };
        let invoke_ns = clock.ns();
        let answer = rig.clients[client].call(&command, HARNESS_OP_TIMEOUT).await;
        let op = record(client, &page, value, invoke_ns, answer, clock, false);
        ops.lock().unwrap_or_else(|e| e.into_inner()).push(op);
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Turns one answer (or its absence) into a history entry.
fn record(
    client: usize,
    page: &str,
    written: Option<String>,
    invoke_ns: u64,
    answer: Option<Value>,
    clock: Clock,
    last: bool,
) -> Op {
    let kind = if written.is_some() { OpKind::Write } else { OpKind::Read };
    let mut op = Op {
        client,
        kind,
        page: page.to_string(),
        value: written,
        invoke_ns,
        return_ns: None,
        outcome: Outcome::Unknown,
        epoch: None,
        error: None,
        last,
    };
    let Some(answer) = answer else { return op };
    op.return_ns = Some(clock.ns());
    let error = answer["error"].as_str().map(str::to_string);
    let absent = error.as_deref() == Some(&format!("page {page} does not exist"));
    if answer["ok"] == true || (kind == OpKind::Read && absent) {
        op.outcome = Outcome::Ok;
        op.epoch = answer["epoch"].as_u64();
        if kind == OpKind::Read {
            op.value = answer["value"].as_str().map(str::to_string);
        }
    } else {
        op.outcome = Outcome::Fail;
        op.error = error;
    }
    op
}

async fn inject_faults(rig: Arc<Rig>, cfg: ChaosConfig, end: Instant, clock: Clock, log: Arc<Mutex<Vec<FaultEvent>>>) {
    if cfg.faults.is_empty() {
        return;
    }
    let mut rng = StdRng::seed_from_u64(cfg.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut kinds = Vec::new();
    let mut next = Instant::now();
    loop {
        // One fault every 3-5 s, start to start, whatever each one lasts.
        next = next.max(Instant::now() - FAULT_SLACK) + Duration::from_millis(rng.gen_range(3000..=5000));
        if next >= end {
            break;
        }
        tokio::time::sleep_until(next).await;
        if kinds.is_empty() {
            kinds = cfg.faults.clone();
            kinds.shuffle(&mut rng);
        }
        let kind = kinds.pop().unwrap_or(Nemesis::Kill);
        let at_ns = clock.ns();
        let detail = rig.inject(kind, &mut rng).await;
        eprintln!("chaos: t={:.1}s {}: {detail}", at_ns as f64 / 1e9, kind.name());
        let event = FaultEvent { at_ns, healed_ns: Some(clock.ns()), kind: kind.name(), detail };
        log.lock().unwrap_or_else(|e| e.into_inner()).push(event);
    }
}

async fn report_progress(counter: Arc<AtomicU64>, faults: Arc<Mutex<Vec<FaultEvent>>>, end: Instant, clock: Clock) {
    let mut ticks = tokio::time::interval(PROGRESS_EVERY);
    ticks.tick().await;
    while Instant::now() < end {
        ticks.tick().await;
        let injected = faults.lock().map(|f| f.len()).unwrap_or(0);
        eprintln!(
            "chaos: t={:.0}s {} ops, {injected} faults so far",
            clock.ns() as f64 / 1e9,
            counter.load(Ordering::Relaxed)
        );
    }
}

/// After healing: every client reads every page, one read at a time.
async fn final_reads(rig: &Rig, pages: usize, clock: Clock, ops: &Mutex<Vec<Op>>) {
    for client in &rig.clients {
        for p in 1..=pages {
            let page = format!("P{p}");
            let invoke_ns = clock.ns();
            let answer = client.call(&format!("read {page}"), HARNESS_OP_TIMEOUT).await;
            let op = record(client.index, &page, None, invoke_ns, answer, clock, true);
            ops.lock().unwrap_or_else(|e| e.into_inner()).push(op);
        }
    }
}
