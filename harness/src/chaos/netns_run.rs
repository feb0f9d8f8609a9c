//! `ivy chaos --net netns`: real partitions. Every CM node and every client
//! runs in its own network namespace on a bridge ([`crate::netns`]), and a cut
//! moves bridge ports, so packets across it are dropped silently (no RST, no
//! ICMP), as a real partition drops them.
//!
//! A seeded schedule draws one cut at a time from [`Cut::ALL`]: isolate the
//! leader, isolate a client, or split {the leader, one client} from the rest;
//! holds it for `--cut-hold-ms` (10-30 s by default) and heals it. The report
//! gives, for each cut, how long the clients on the majority side went without
//! a successful fault after the cut, how long the cut client (else any client)
//! did after the heal, and whether the leader changed in the 1.5 s after the
//! heal (it must not: pre-vote). The history is checked as in every chaos run.
//!
//! Cleanup: the processes are children killed on drop, the namespaces go with
//! the [`Net`]'s drop; SIGINT, SIGTERM and SIGHUP are caught before the net
//! exists, so an interrupted run drops both too before it exits.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use ivy_raft::config::ReplicationMode;
use ivy_raft::protocol::{RandomOp, RandomOps};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::Value;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::client_proc::{client_log, ClientProc, Life};
use super::history::{FaultEvent, History, LifeEvent, LifeKind};
use super::procs::{CmProc, CmSet};
use super::workload::{cm_args, record};
use super::{checker, history, ChaosConfig, Report};
use crate::netns::{netns_available, Net};

/// The gRPC port every CM node listens on inside its namespace.
const CM_PORT: u16 = 7101;

/// CM nodes of a run.
const CMS: usize = 3;

/// How long the cluster may take to elect a leader (at start, after the end).
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long after a heal a leader change counts as one the heal caused.
const HEAL_WATCH: Duration = Duration::from_millis(1500);

/// How much longer than a client's own deadline the harness waits for an answer.
const HARNESS_GRACE: Duration = Duration::from_millis(2000);

/// Most operations one worker issues (a bound on every load loop).
const MAX_OPS_PER_WORKER: usize = 1_000_000;

/// The default hold of a cut, ms (`--cut-hold-ms`).
pub const CUT_HOLD_MS: (u64, u64) = (10_000, 30_000);

/// The cut kinds of a netns run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Cut {
    /// The leader alone on one side.
    IsolateLeader,
    /// One client alone on one side.
    IsolateClient,
    /// The leader and one client on one side, the rest on the other.
    SplitLeaderClient,
}

impl Cut {
    /// Every kind, each drawn in turn (shuffled) by the schedule.
    pub const ALL: [Cut; 3] = [Cut::IsolateLeader, Cut::IsolateClient, Cut::SplitLeaderClient];

    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Cut::IsolateLeader => "isolate-leader",
            Cut::IsolateClient => "isolate-client",
            Cut::SplitLeaderClient => "split-leader-client",
        }
    }
}

/// One cut and how the cluster came through it.
#[derive(Debug, Clone, Serialize)]
pub struct CutRecovery {
    /// The cut kind.
    pub kind: String,
    /// When it started, seconds into the run.
    pub at_s: f64,
    /// How long it was held, ms.
    pub held_ms: u64,
    /// From the cut to the first successful fault of a client on the majority
    /// side, ms (`None`: none before the heal).
    pub after_cut_ms: Option<f64>,
    /// From the heal to the first successful fault of the cut client (any
    /// client when none was cut), ms (`None`: none before the run ended).
    pub after_heal_ms: Option<f64>,
    /// The serving leader or its term changed within 1.5 s after the heal.
    pub leader_changed_after_heal: bool,
}

/// A successful fault (an operation that was not a local hit).
#[derive(Debug, Clone, Copy)]
struct Done {
    slot: usize,
    return_ns: u64,
}

/// One cut as the schedule ran it.
#[derive(Debug, Clone)]
struct Plan {
    kind: Cut,
    cut_ns: u64,
    heal_ns: u64,
    slot: Option<usize>,
    changed: bool,
}

/// The history, the faults seen, on the run's clock.
#[derive(Clone)]
struct Recorder {
    start: Instant,
    history: Arc<Mutex<History>>,
    done: Arc<Mutex<Vec<Done>>>,
}

impl Recorder {
    fn ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn with<T>(&self, f: impl FnOnce(&mut History) -> T) -> T {
        f(&mut self.history.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn life(&self, slot: usize, client: u64, kind: LifeKind) {
        let at_ns = self.ns();
        self.with(|h| h.lives.push(LifeEvent { at_ns, slot, client, kind }));
    }
}

/// Runs a netns chaos run; the report says whether the verdict is clean.
/// Needs root; fails, saying why, where namespaces cannot be created.
pub async fn run(cfg: &ChaosConfig, hold_ms: (u64, u64)) -> Result<Report> {
    if cfg.mode != ReplicationMode::Raft {
        bail!("--net netns runs the Raft mode only");
    }
    // Before the net exists, so the netns rig leaves these signals to us.
    let mut signals = Interrupts::new()?;
    netns_available().map_err(|why| anyhow!("--net netns needs network namespaces: {why}"))?;
    std::fs::create_dir_all(&cfg.out).with_context(|| cfg.out.display().to_string())?;
    for id in 1..=CMS {
        let _ = std::fs::remove_dir_all(cfg.out.join(format!("cm-{id}")));
    }
    let net = Net::create("ivychaos", CMS + cfg.clients + 1).context("creating the namespaces")?;
    let outcome = tokio::select! {
        report = run_on(&net, cfg, hold_ms) => report,
        name = signals.next() => Err(anyhow!("interrupted by {name}: processes killed, namespaces deleted")),
    };
    // The run's processes were children killed on drop; now the namespaces go.
    drop(net);
    outcome
}

/// SIGINT, SIGTERM and SIGHUP, caught so an interrupted run cleans up.
struct Interrupts(Vec<(tokio::signal::unix::Signal, &'static str)>);

impl Interrupts {
    fn new() -> Result<Self> {
        let kinds = [(SignalKind::interrupt(), "SIGINT"), (SignalKind::terminate(), "SIGTERM")];
        let kinds = kinds.into_iter().chain([(SignalKind::hangup(), "SIGHUP")]);
        kinds.map(|(k, name)| Ok((signal(k).context("catching signals")?, name))).collect::<Result<_>>().map(Interrupts)
    }

    async fn next(&mut self) -> &'static str {
        let [(a, na), (b, nb), (c, nc)] = &mut self.0[..] else { return std::future::pending().await };
        tokio::select! {
            _ = a.recv() => na,
            _ = b.recv() => nb,
            _ = c.recv() => nc,
        }
    }
}

/// Who runs where: hosts `0..3` are the CM nodes, then the clients, then an
/// observer that is never cut (it asks `ivy status`).
struct Layout<'a> {
    net: &'a Net,
    bin: &'a Path,
    cms: String,
    clients: usize,
}

impl Layout<'_> {
    fn client_host(&self, slot: usize) -> usize {
        CMS + slot
    }

    /// The serving CM node's (id, term), asked from the observer.
    async fn leader(&self) -> Option<(u64, u64)> {
        let mut cmd = tokio::process::Command::from(self.net.command(CMS + self.clients, self.bin));
        cmd.args(["status", "--json", "--cm", &self.cms]).kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(5), cmd.output()).await.ok()?.ok()?;
        let status: Value = serde_json::from_slice(&out.stdout).ok()?;
        let nodes = status["cm"].as_array()?;
        let serving = nodes.iter().find(|n| n["serving"] == true)?;
        Some((serving["id"].as_u64()?, serving["term"].as_u64()?))
    }

    async fn wait_leader(&self, timeout: Duration) -> Option<(u64, u64)> {
        let give_up = Instant::now() + timeout;
        while Instant::now() < give_up {
            if let Some(leader) = self.leader().await {
                return Some(leader);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

async fn run_on(net: &Net, cfg: &ChaosConfig, hold_ms: (u64, u64)) -> Result<Report> {
    let addrs: Vec<String> = (0..CMS).map(|i| format!("{}:{CM_PORT}", net.host(i).addr())).collect();
    let layout = Layout { net, bin: &cfg.bin, cms: addrs.join(","), clients: cfg.clients };
    let cms = start_cms(net, cfg, &addrs)?;
    let first = layout.wait_leader(LEADER_TIMEOUT).await;
    let Some((leader, term)) = first else { bail!("the CM nodes elected no leader: {}", cms.exit_notes().join("; ")) };
    eprintln!("chaos: netns, {CMS} CM nodes in namespaces {}-h0..; leader {leader} (term {term})", net.name());
    let rec = Recorder { start: Instant::now(), history: Arc::default(), done: Arc::default() };
    let clients = start_clients(&layout, cfg, &rec).await?;
    let end = Instant::now() + cfg.duration;
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = JoinSet::new();
    for (c, client) in clients.iter().enumerate() {
        for w in 0..cfg.workers {
            let seed = cfg.seed ^ ((c as u64) << 32 | w as u64);
            let ops = RandomOps::new(seed, cfg.pages as u64, cfg.read_ratio, format!("c{c}w{w}"));
            let op_timeout = Duration::from_millis(cfg.client_timeout_ms) + HARNESS_GRACE;
            workers.spawn(worker(c, client.clone(), ops, (stop.clone(), end, op_timeout), rec.clone()));
        }
    }
    let plans = schedule(&layout, cfg, hold_ms, end, &rec).await;
    tokio::time::sleep_until(end).await;
    stop.store(true, Ordering::Relaxed);
    while workers.join_next().await.is_some() {}
    net.heal()?;
    let recovered = layout.wait_leader(LEADER_TIMEOUT).await.is_some();
    if recovered {
        final_reads(&clients, cfg, &rec).await;
    }
    for client in &clients {
        client.quit().await;
    }
    cms.kill_all().await;
    let history = rec.with(std::mem::take);
    history::write(&cfg.out.join("history.jsonl"), &history)?;
    let verdict = checker::check_history(&history);
    let mut report = Report::new(cfg, &history, verdict, recovered);
    let done = rec.done.lock().unwrap_or_else(|e| e.into_inner()).clone();
    report.cuts = plans.iter().map(|p| recovery(p, &done, cfg.clients)).collect();
    report.write(&cfg.out.join("report.json"))?;
    Ok(report)
}

fn start_cms(net: &Net, cfg: &ChaosConfig, addrs: &[String]) -> Result<CmSet> {
    let peers: Vec<String> = addrs.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect();
    let mut cms = BTreeMap::new();
    for (i, addr) in addrs.iter().enumerate() {
        let id = i as u64 + 1;
        let args = cm_args(cfg, id, addr, &peers.join(","), &cfg.out);
        let log = cfg.out.join(format!("cm-{id}.log"));
        let cm = CmProc::new(&cfg.bin, id, addr.clone(), args, log).with_launcher(Arc::new(net.host(i).launcher()));
        cm.start()?;
        cms.insert(id, cm);
    }
    Ok(CmSet(cms))
}

async fn start_clients(layout: &Layout<'_>, cfg: &ChaosConfig, rec: &Recorder) -> Result<Vec<Arc<ClientProc>>> {
    let (life, mut lives) = mpsc::unbounded_channel();
    let r = rec.clone();
    tokio::spawn(async move {
        while let Some(Life::Registered { slot, now, was }) = lives.recv().await {
            r.life(slot, now, LifeKind::Registered { was });
        }
    });
    let mut clients = Vec::new();
    for c in 0..cfg.clients {
        let host = layout.client_host(c);
        let mut cmd = tokio::process::Command::from(layout.net.command(host, &cfg.bin));
        let listen = format!("{}:0", layout.net.host(host).addr());
        cmd.args(["client", "--json", "--cm", &layout.cms, "--listen", &listen])
            .args(["--timeout-ms", &cfg.client_timeout_ms.to_string()])
            .env("RUST_LOG", "warn");
        let (client, _) = ClientProc::spawn(cmd, c, &client_log(&cfg.out, c), life.clone()).await?;
        let _ = life.send(Life::Registered { slot: c, now: client.id(), was: None });
        eprintln!("chaos: client {c} registered as directory client {}", client.id());
        clients.push(Arc::new(client));
    }
    Ok(clients)
}

async fn worker(
    slot: usize,
    client: Arc<ClientProc>,
    ops: RandomOps,
    (stop, end, op_timeout): (Arc<AtomicBool>, Instant, Duration),
    rec: Recorder,
) {
    for op in ops.take(MAX_OPS_PER_WORKER) {
        if stop.load(Ordering::Relaxed) || Instant::now() >= end {
            return;
        }
        let (page, value, command) = match op {
            RandomOp::Write { page, value } => (page.clone(), Some(value.clone()), format!("write {page} {value}")),
            RandomOp::Read { page } => (page.clone(), None, format!("read {page}")),
        };
        let (process, invoke_ns) = (client.id(), rec.ns());
        let answer = client.call(&command, op_timeout).await;
        let fault = answer.as_ref().is_some_and(|a| a["ok"] == true && a["local"] != true);
        let op = record(slot, process, &page, value, invoke_ns, answer, rec.ns(), false);
        if let (true, Some(return_ns)) = (fault, op.return_ns) {
            rec.done.lock().unwrap_or_else(|e| e.into_inner()).push(Done { slot, return_ns });
        }
        rec.with(|h| h.ops.push(op));
    }
}

/// Cuts one at a time until too little of the run is left for another.
async fn schedule(
    layout: &Layout<'_>,
    cfg: &ChaosConfig,
    hold_ms: (u64, u64),
    end: Instant,
    rec: &Recorder,
) -> Vec<Plan> {
    let mut rng = StdRng::seed_from_u64(cfg.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let (mut kinds, mut plans) = (Vec::new(), Vec::new());
    loop {
        let (lo, hi) = cfg.fault_gap_ms;
        tokio::time::sleep(Duration::from_millis(rng.gen_range(lo..=hi.max(lo)))).await;
        let room = end.saturating_duration_since(Instant::now()).saturating_sub(HEAL_WATCH * 2);
        if room < Duration::from_millis(hold_ms.0) {
            return plans;
        }
        if kinds.is_empty() {
            kinds = Cut::ALL.to_vec();
            kinds.shuffle(&mut rng);
        }
        let kind = kinds.pop().unwrap_or(Cut::IsolateLeader);
        let hold = Duration::from_millis(rng.gen_range(hold_ms.0..=hold_ms.1.max(hold_ms.0))).min(room);
        let slot = rng.gen_range(0..layout.clients.max(1));
        match cut_once(layout, kind, slot, hold, rec).await {
            Ok(plan) => plans.push(plan),
            Err(err) => eprintln!("chaos: {} skipped: {err:#}", kind.name()),
        }
    }
}

/// One cut: applied, held, healed, watched.
async fn cut_once(layout: &Layout<'_>, kind: Cut, slot: usize, hold: Duration, rec: &Recorder) -> Result<Plan> {
    let (leader, _) = layout.wait_leader(Duration::from_secs(10)).await.ok_or_else(|| anyhow!("no leader"))?;
    let leader_host = leader as usize - 1;
    let client_host = layout.client_host(slot);
    let (side, cut_slot, what) = match kind {
        Cut::IsolateLeader => (vec![leader_host], None, format!("CM {leader} isolated")),
        Cut::IsolateClient => (vec![client_host], Some(slot), format!("client {slot} isolated")),
        Cut::SplitLeaderClient => {
            (vec![leader_host, client_host], Some(slot), format!("CM {leader} and client {slot} split from the rest"))
        }
    };
    layout.net.cut(&side)?;
    let cut_ns = rec.ns();
    tokio::time::sleep(hold).await;
    let before = layout.leader().await;
    layout.net.heal()?;
    let heal_ns = rec.ns();
    tokio::time::sleep(HEAL_WATCH).await;
    // A status that finds no leader for a moment (a loaded machine) is asked again.
    let after = layout.wait_leader(Duration::from_secs(5)).await;
    let changed = before.is_some() && after != before;
    let held = (heal_ns - cut_ns) / 1_000_000;
    let detail = format!("{what} for {held} ms; leader before the heal {before:?}, after {after:?}");
    eprintln!("chaos: t={:.1}s {}: {detail}", cut_ns as f64 / 1e9, kind.name());
    let event = FaultEvent { at_ns: cut_ns, healed_ns: Some(heal_ns), kind: kind.name().into(), detail };
    rec.with(|h| h.faults.push(event));
    Ok(Plan { kind, cut_ns, heal_ns, slot: cut_slot, changed })
}

/// The recovery times of one cut, from the successful faults.
fn recovery(p: &Plan, done: &[Done], clients: usize) -> CutRecovery {
    let first = |from: u64, until: u64, who: &dyn Fn(usize) -> bool| {
        let t = done.iter().filter(|d| who(d.slot) && d.return_ns > from && d.return_ns <= until).map(|d| d.return_ns);
        t.min().map(|t| (t - from) as f64 / 1e6)
    };
    let majority = |s: usize| Some(s) != p.slot || clients == 1;
    let healed = |s: usize| p.slot.is_none_or(|c| c == s);
    CutRecovery {
        kind: p.kind.name().into(),
        at_s: p.cut_ns as f64 / 1e9,
        held_ms: (p.heal_ns - p.cut_ns) / 1_000_000,
        after_cut_ms: first(p.cut_ns, p.heal_ns, &majority),
        after_heal_ms: first(p.heal_ns, u64::MAX, &healed),
        leader_changed_after_heal: p.changed,
    }
}

/// After the workload: every client reads every page.
async fn final_reads(clients: &[Arc<ClientProc>], cfg: &ChaosConfig, rec: &Recorder) {
    let op_timeout = Duration::from_millis(cfg.client_timeout_ms) + HARNESS_GRACE;
    for (c, client) in clients.iter().enumerate() {
        for p in 1..=cfg.pages {
            let page = format!("P{p}");
            let (process, invoke_ns) = (client.id(), rec.ns());
            let answer = client.call(&format!("read {page}"), op_timeout).await;
            let op = record(c, process, &page, None, invoke_ns, answer, rec.ns(), true);
            rec.with(|h| h.ops.push(op));
        }
    }
}
