//! One chaos run from start to verdict.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Result};
use ivy_raft::config::ReplicationMode;
use ivy_raft::protocol::{RandomOp, RandomOps};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::client_proc::{client_log, ClientSlot, ClientSpawn, Life};
use super::history::{FaultEvent, History, LifeEvent, LifeKind, Op, OpKind, Outcome};
use super::procs::{free_port, CmProc, CmSet};
use super::proxy::Proxy;
use super::report::Report;
use super::rig::Rig;
use super::{checker, history, ChaosConfig, Nemesis};
use crate::lazyfs::{self, LazyFs, LazyFsHandle};

/// A client's default deadline for one operation, ms.
pub const CLIENT_OP_TIMEOUT_MS: u64 = 3000;

/// How much longer than a client's own deadline the harness waits for an answer
/// before it calls the outcome unknown.
const HARNESS_GRACE: Duration = Duration::from_millis(2000);

/// How long the cluster may take to elect a leader after everything healed.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// How far behind schedule the fault injector may run before it skips ahead.
const FAULT_SLACK: Duration = Duration::from_secs(1);

/// Progress lines on stderr this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Most operations one worker issues (a bound on every load loop).
const MAX_OPS_PER_WORKER: u64 = 1_000_000;

/// Where everything a run observes goes, on one monotonic clock.
#[derive(Clone)]
struct Recorder {
    start: Instant,
    history: Arc<Mutex<History>>,
    ops_done: Arc<AtomicU64>,
}

impl Recorder {
    fn new() -> Self {
        Recorder { start: Instant::now(), history: Arc::default(), ops_done: Arc::default() }
    }

    fn ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn with<T>(&self, f: impl FnOnce(&mut History) -> T) -> T {
        f(&mut self.history.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn op(&self, op: Op) {
        self.with(|h| h.ops.push(op));
        self.ops_done.fetch_add(1, Ordering::Relaxed);
    }

    fn life(&self, slot: usize, client: u64, kind: LifeKind) {
        let at_ns = self.ns();
        self.with(|h| h.lives.push(LifeEvent { at_ns, slot, client, kind }));
    }
}

/// Runs the harness; the report says whether the verdict is clean.
pub async fn run(cfg: &ChaosConfig) -> Result<Report> {
    std::fs::create_dir_all(&cfg.out).map_err(|e| anyhow!("{}: {e}", cfg.out.display()))?;
    let (data_root, power) = data_root(cfg)?;
    let rec = Recorder::new();
    let (life_tx, life_rx) = mpsc::unbounded_channel();
    let lives = tokio::spawn(record_lives(life_rx, rec.clone()));
    let rig = Arc::new(build_rig(cfg, life_tx, &data_root, power).await?);
    let end = Instant::now() + cfg.duration;
    announce(cfg);
    let mut workers = Vec::new();
    for c in 0..cfg.clients {
        for w in 0..cfg.workers {
            let (rig, rec) = (rig.clone(), rec.clone());
            let seed = cfg.seed ^ ((c as u64) << 32 | w as u64);
            let mix = (cfg.pages, cfg.read_ratio);
            workers.push(tokio::spawn(async move { worker(rig, c, w, mix, seed, end, rec).await }));
        }
    }
    let injector = tokio::spawn(inject_faults(rig.clone(), cfg.clone(), end, rec.clone()));
    let progress = tokio::spawn(report_progress(rec.clone(), end));
    for w in workers {
        let _ = w.await;
    }
    let _ = injector.await;
    progress.abort();

    rig.heal_all().await;
    let leader = rig.wait_leader(RECOVERY_TIMEOUT).await;
    if leader.is_some() {
        eprintln!("chaos: healed; leader {leader:?}; final reads");
        final_reads(&rig, cfg.pages, &rec).await;
    } else {
        // Every read would only wait out its deadline; the report says it did not recover.
        eprintln!("chaos: healed, but no CM node leads; no final reads");
        for note in rig.cms.exit_notes() {
            eprintln!("chaos: {note}");
        }
    }
    for slot in &rig.clients {
        slot.proc().await.quit().await;
    }
    rig.cms.kill_all().await;
    // The last reference: the lazyfs, if any, is unmounted now no CM node uses it.
    drop(rig);
    let _ = tokio::time::timeout(Duration::from_secs(1), lives).await;
    let history = rec.with(std::mem::take);
    history::write(&cfg.out.join("history.jsonl"), &history)?;
    let verdict = checker::check_history(&history);
    let report = Report::new(cfg, &history, verdict, leader.is_some());
    report.write(&cfg.out.join("report.json"))?;
    Ok(report)
}

fn announce(cfg: &ChaosConfig) {
    eprintln!(
        "chaos: {} mode, {} clients x {} workers on {} pages for {} s, seed {}, faults {:?}",
        cfg.mode,
        cfg.clients,
        cfg.workers,
        cfg.pages,
        cfg.duration.as_secs(),
        cfg.seed,
        cfg.faults.iter().map(|f| f.name()).collect::<Vec<_>>()
    );
}

/// Stamps the clients' own reports (registrations) into the history.
async fn record_lives(mut rx: mpsc::UnboundedReceiver<Life>, rec: Recorder) {
    while let Some(Life::Registered { slot, now, was }) = rx.recv().await {
        rec.life(slot, now, LifeKind::Registered { was });
    }
}

/// Where the CM data dirs go, emptied, and the lazyfs they live on when power
/// cuts are injected. The data dirs are the harness's own: every run starts
/// from empty ones.
fn data_root(cfg: &ChaosConfig) -> Result<(PathBuf, Option<LazyFsHandle>)> {
    for id in 1..=3 {
        let _ = std::fs::remove_dir_all(cfg.out.join(format!("cm-{id}")));
    }
    if !cfg.faults.iter().any(|f| f.needs_fuse()) {
        return Ok((cfg.out.clone(), None));
    }
    lazyfs::fuse_available().map_err(|why| anyhow!("power-cut faults need a FUSE mount, and {why}"))?;
    let (backing, mnt) = (cfg.out.join("lazyfs").join("backing"), cfg.out.join("lazyfs").join("mnt"));
    let _ = std::fs::remove_dir_all(&backing);
    for dir in [&backing, &mnt] {
        std::fs::create_dir_all(dir).map_err(|e| anyhow!("{}: {e}", dir.display()))?;
    }
    let fs = LazyFs::mount(&backing, &mnt)?;
    Ok((mnt, Some(fs)))
}

/// CM processes with their data dirs under `data_root`, proxies on every link,
/// then client slots.
async fn build_rig(
    cfg: &ChaosConfig,
    life: mpsc::UnboundedSender<Life>,
    data_root: &Path,
    power: Option<LazyFsHandle>,
) -> Result<Rig> {
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
        let args = cm_args(cfg, *id, addr, &peers.join(","), data_root);
        let cm = CmProc::new(&cfg.bin, *id, addr.clone(), args, cfg.out.join(format!("cm-{id}.log")));
        cm.start()?;
        cms.insert(*id, cm);
    }
    let lease = Duration::from_millis(cfg.client_lease_ms);
    let op_timeout = Duration::from_millis(cfg.client_timeout_ms) + HARNESS_GRACE;
    let client_links = BTreeMap::new();
    let mut rig = Rig {
        cms: CmSet(cms),
        clients: Vec::new(),
        cm_links,
        client_links,
        lease,
        op_timeout,
        power,
        bin: cfg.bin.clone(),
        unsafe_rejoin_empty: cfg.unsafe_rejoin_empty,
    };
    if rig.wait_leader(RECOVERY_TIMEOUT).await.is_none() {
        let notes = rig.cms.exit_notes();
        return Err(anyhow!(
            "the CM nodes elected no leader; {}",
            if notes.is_empty() { "none exited".into() } else { notes.join("; ") }
        ));
    }
    for c in 0..cfg.clients {
        let mut via = Vec::new();
        for (id, addr) in &real {
            let proxy = Proxy::start(addr).await?;
            via.push(proxy.addr.clone());
            rig.client_links.insert((c, *id), proxy);
        }
        let spawn = ClientSpawn {
            bin: cfg.bin.clone(),
            cms: via.join(","),
            timeout_ms: cfg.client_timeout_ms,
            log: client_log(&cfg.out, c),
            unsafe_ignore_lease: cfg.unsafe_ignore_lease,
            unsafe_late_install: cfg.unsafe_late_install,
        };
        let slot = ClientSlot::start(c, spawn, life.clone()).await?;
        eprintln!("chaos: client {c} registered as directory client {}", slot.proc().await.id());
        rig.clients.push(slot);
    }
    Ok(rig)
}

pub(crate) fn cm_args(cfg: &ChaosConfig, id: u64, listen: &str, peers: &str, data_root: &Path) -> Vec<String> {
    let data = data_root.join(format!("cm-{id}"));
    let mut args: Vec<String> = ["cm", "--id", &id.to_string(), "--listen", listen, "--peers", peers, "--data-dir"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(data.display().to_string());
    args.extend(["--client-lease-ms".into(), cfg.client_lease_ms.to_string()]);
    args.extend(["--mode".into(), cfg.mode.name().into()]);
    if cfg.mode == ReplicationMode::Heartbeat {
        args.extend(["--pulse-ms".into(), cfg.pulse_ms.to_string()]);
    }
    if cfg.unsafe_skip_invalidation {
        args.push("--unsafe-skip-invalidation".into());
    }
    if cfg.unsafe_skip_sync {
        args.push("--unsafe-skip-sync".into());
    }
    if let Some(n) = cfg.snapshot_every {
        args.extend(["--snapshot-every".into(), n.to_string()]);
    }
    args
}

async fn worker(
    rig: Arc<Rig>,
    client: usize,
    worker: usize,
    mix: (usize, f64),
    seed: u64,
    end: Instant,
    rec: Recorder,
) {
    let generated = RandomOps::new(seed, mix.0 as u64, mix.1, format!("c{client}w{worker}"));
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
        let proc = rig.clients[client].proc().await;
        let (invoke_ns, process) = (rec.ns(), proc.id());
        let answer = proc.call(&command, rig.op_timeout).await;
        rec.op(record(client, process, &page, value, invoke_ns, answer, rec.ns(), false));
    }
}

/// Turns one answer (or its absence) into a history entry.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record(
    client: usize,
    process: u64,
    page: &str,
    written: Option<String>,
    invoke_ns: u64,
    answer: Option<Value>,
    now_ns: u64,
    last: bool,
) -> Op {
    let kind = if written.is_some() { OpKind::Write } else { OpKind::Read };
    let mut op = Op {
        client,
        process,
        kind,
        page: page.to_string(),
        value: written,
        invoke_ns,
        return_ns: None,
        outcome: Outcome::Unknown,
        epoch: None,
        error: None,
        last,
        lost_with: None,
    };
    let Some(answer) = answer else { return op };
    op.return_ns = Some(now_ns);
    let error = answer["error"].as_str().map(str::to_string);
    let absent = error.as_deref() == Some(&format!("page {page} does not exist"));
    let lost = error.as_deref().and_then(|e| lost_with(page, e));
    if answer["ok"] == true || (kind == OpKind::Read && (absent || lost.is_some())) {
        op.outcome = Outcome::Ok;
        // A read that found the page lost used the epoch it was lost at.
        op.epoch = answer["epoch"].as_u64().or(lost.map(|(_, epoch)| epoch));
        op.lost_with = lost.map(|(client, _)| client);
        if kind == OpKind::Read {
            op.value = answer["value"].as_str().map(str::to_string);
        }
    } else {
        op.outcome = Outcome::Fail;
        op.error = error;
    }
    op
}

/// The client a page was lost with and the epoch it was lost at, from a read's
/// error ("page P1 was lost with client 3 at epoch 7").
fn lost_with(page: &str, error: &str) -> Option<(u64, u64)> {
    let rest = error.strip_prefix(&format!("page {page} was lost with client "))?;
    let (client, epoch) = rest.split_once(" at epoch ")?;
    Some((client.parse().ok()?, epoch.trim().parse().ok()?))
}

async fn inject_faults(rig: Arc<Rig>, cfg: ChaosConfig, end: Instant, rec: Recorder) {
    if cfg.faults.is_empty() {
        return;
    }
    let mut rng = StdRng::seed_from_u64(cfg.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut kinds = Vec::new();
    let mut next = Instant::now();
    loop {
        // One fault every gap, start to start, whatever each one lasts.
        let (lo, hi) = cfg.fault_gap_ms;
        next = next.max(Instant::now() - FAULT_SLACK) + Duration::from_millis(rng.gen_range(lo..=hi.max(lo)));
        if next >= end {
            break;
        }
        tokio::time::sleep_until(next).await;
        if kinds.is_empty() {
            kinds = cfg.faults.clone();
            kinds.shuffle(&mut rng);
        }
        let kind = kinds.pop().unwrap_or(Nemesis::Kill);
        let at_ns = rec.ns();
        let detail = rig.inject(kind, &mut rng, |slot, client, what| rec.life(slot, client, what)).await;
        eprintln!("chaos: t={:.1}s {}: {detail}", at_ns as f64 / 1e9, kind.name());
        let event = FaultEvent { at_ns, healed_ns: Some(rec.ns()), kind: kind.name(), detail };
        rec.with(|h| h.faults.push(event));
    }
}

async fn report_progress(rec: Recorder, end: Instant) {
    let mut ticks = tokio::time::interval(PROGRESS_EVERY);
    ticks.tick().await;
    while Instant::now() < end {
        ticks.tick().await;
        let injected = rec.with(|h| h.faults.len());
        let done = rec.ops_done.load(Ordering::Relaxed);
        eprintln!("chaos: t={:.0}s {done} ops, {injected} faults so far", rec.ns() as f64 / 1e9);
    }
}

/// After healing: every client reads every page, one read at a time.
async fn final_reads(rig: &Rig, pages: usize, rec: &Recorder) {
    for slot in &rig.clients {
        for p in 1..=pages {
            let page = format!("P{p}");
            let proc = slot.proc().await;
            let (invoke_ns, process) = (rec.ns(), proc.id());
            let answer = proc.call(&format!("read {page}"), rig.op_timeout).await;
            rec.op(record(slot.index, process, &page, None, invoke_ns, answer, rec.ns(), true));
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_lost_page_error_names_its_client_and_epoch() {
        assert_eq!(super::lost_with("P1", "page P1 was lost with client 3 at epoch 7"), Some((3, 7)));
        assert_eq!(super::lost_with("P2", "page P1 was lost with client 3 at epoch 7"), None);
        assert_eq!(super::lost_with("P1", "page P1 does not exist"), None);
    }
}
