//! The multi-host workload: client containers driven over stdin, workers
//! issuing random reads and unique writes until told to stop, and the final
//! reads of every page by every client, all recorded as a chaos history (with
//! each client's registrations, so a page lost with an evicted client is judged
//! as the chaos checker judges it).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use ivy_raft::protocol::{RandomOp, RandomOps};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::docker::{Project, LABEL};
use super::MultihostConfig;
use crate::chaos::client_proc::{ClientProc, Life};
use crate::chaos::history::{History, LifeEvent, LifeKind};
use crate::chaos::workload::record;

/// A client's own deadline for one operation, ms.
const CLIENT_OP_TIMEOUT_MS: u64 = 3000;

/// How long the test waits for an answer before calling the outcome unknown.
const ANSWER_TIMEOUT: Duration = Duration::from_millis(CLIENT_OP_TIMEOUT_MS + 2000);

/// Most operations one worker issues (a bound on every load loop).
const MAX_OPS_PER_WORKER: usize = 100_000;

/// Seed of the workers' random operations.
const SEED: u64 = 13;

/// The run's history and its clock.
#[derive(Clone)]
struct Recorder {
    start: Instant,
    history: Arc<Mutex<History>>,
}

impl Recorder {
    fn ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn with<T>(&self, f: impl FnOnce(&mut History) -> T) -> T {
        f(&mut self.history.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Client containers with workers running on them.
pub struct Workload {
    clients: Vec<Arc<ClientProc>>,
    stop: Arc<AtomicBool>,
    workers: JoinSet<()>,
    rec: Recorder,
}

impl Workload {
    /// Starts `cfg.clients` client containers on the project's network and
    /// `cfg.workers` workers on each.
    pub async fn start(cfg: &MultihostConfig, project: &Project, cms: &str) -> Result<Workload> {
        let rec = Recorder { start: Instant::now(), history: Arc::default() };
        let (life, lives) = mpsc::unbounded_channel();
        tokio::spawn(record_lives(lives, rec.clone()));
        let mut clients = Vec::new();
        for c in 0..cfg.clients {
            let log = cfg.out.join(format!("client-{c}.log"));
            let (client, _) = ClientProc::spawn(client_container(project, c, cms), c, &log, life.clone()).await?;
            let _ = life.send(Life::Registered { slot: c, now: client.id(), was: None });
            eprintln!("multihost: client container {c} registered as client {}", client.id());
            clients.push(Arc::new(client));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = JoinSet::new();
        for (c, client) in clients.iter().enumerate() {
            for w in 0..cfg.workers {
                let seed = SEED ^ ((c as u64) << 32 | w as u64);
                let gen = RandomOps::new(seed, cfg.pages as u64, 0.5, format!("c{c}w{w}"));
                workers.spawn(worker(c, client.clone(), gen, stop.clone(), rec.clone()));
            }
        }
        Ok(Workload { clients, stop, workers, rec })
    }

    /// Stops the workers, then has every client read every page; the history.
    pub async fn finish(mut self, pages: usize) -> History {
        self.stop.store(true, Ordering::Relaxed);
        while self.workers.join_next().await.is_some() {}
        for (c, client) in self.clients.iter().enumerate() {
            for p in 1..=pages {
                let page = format!("P{p}");
                let (process, invoke_ns) = (client.id(), self.rec.ns());
                let answer = client.call(&format!("read {page}"), ANSWER_TIMEOUT).await;
                let op = record(c, process, &page, None, invoke_ns, answer, self.rec.ns(), true);
                self.rec.with(|h| h.ops.push(op));
            }
        }
        for client in self.clients.drain(..) {
            client.quit().await;
        }
        self.rec.with(std::mem::take)
    }
}

/// `docker run -i` of one client on its own address `PREFIX.(21+c)`.
fn client_container(project: &Project, c: usize, cms: &str) -> Command {
    let ip = format!("{}.{}", project.prefix, 21 + c);
    let mut cmd = Command::new("docker");
    cmd.args(["run", "-i", "--rm", "--name", &format!("{}-client-{c}", project.name)])
        .args(["--label", &format!("{LABEL}={}", project.name), "--network", &project.network(), "--ip", &ip])
        .args(["--read-only", "--cap-drop", "ALL", "-e", &format!("IVY_LISTEN={ip}:7201"), "-e", "RUST_LOG=warn"])
        .args([&project.image, "client", "--json", "--cm", cms, "--timeout-ms", &CLIENT_OP_TIMEOUT_MS.to_string()]);
    cmd
}

/// Records each registration (the first, and any after an eviction) in the history.
async fn record_lives(mut lives: mpsc::UnboundedReceiver<Life>, rec: Recorder) {
    while let Some(Life::Registered { slot, now, was }) = lives.recv().await {
        let at_ns = rec.ns();
        rec.with(|h| h.lives.push(LifeEvent { at_ns, slot, client: now, kind: LifeKind::Registered { was } }));
    }
}

async fn worker(slot: usize, client: Arc<ClientProc>, ops: RandomOps, stop: Arc<AtomicBool>, rec: Recorder) {
    for op in ops.take(MAX_OPS_PER_WORKER) {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let (page, value, command) = match op {
            RandomOp::Write { page, value } => (page.clone(), Some(value.clone()), format!("write {page} {value}")),
            RandomOp::Read { page } => (page.clone(), None, format!("read {page}")),
        };
        let (process, invoke_ns) = (client.id(), rec.ns());
        let answer = client.call(&command, ANSWER_TIMEOUT).await;
        let op = record(slot, process, &page, value, invoke_ns, answer, rec.ns(), false);
        rec.with(|h| h.ops.push(op));
    }
}
