//! The multi-host test: CM nodes in containers on a private Docker network,
//! each with its own address and data volume, clients in containers of their
//! own, and faults between hosts that a loopback test cannot make.
//!
//! One run: build the image from the `ivy` binary under test
//! (deploy/docker/build.sh), bring up cm1..cm3 with deploy/compose/, start
//! client containers driven over stdin (`ivy client --json`, tagged commands),
//! and keep a random workload of reads and unique writes running through four
//! phases: steady; the leader's container killed, then started again; a node
//! (the leader) disconnected from the network, then reconnected at its
//! address; all three containers killed and started again. Then every client
//! reads every page, the history goes through the chaos checker (per-page
//! linearizability, lost acknowledged writes, phantoms, duplicates, epoch
//! regressions), and every node must report ready from inside its container.
//!
//! Everything the run starts carries its project name and is removed at the
//! end, on failure, on panic, and on SIGINT/SIGTERM. A missing Docker daemon
//! is an error that says so, never a silent skip.

mod cluster;
pub mod docker;
mod workload;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tokio::time::Instant;

use crate::chaos::checker::{self, write_verdict_line, Verdict};
use crate::chaos::history::{self, History, Op, Outcome};
use cluster::CmContainers;
use docker::{Cleanup, Project};
use workload::Workload;

/// What one multi-host run does.
#[derive(Debug, Clone)]
pub struct MultihostConfig {
    /// The repository root (deploy/ lives there).
    pub root: PathBuf,
    /// The `ivy` binary to put in the image.
    pub bin: PathBuf,
    /// Where the image context, history and report go.
    pub out: PathBuf,
    /// Client containers.
    pub clients: usize,
    /// Concurrent workers per client.
    pub workers: usize,
    /// Pages P1..Pn.
    pub pages: usize,
    /// How long the workload runs in each phase, between the fault and the heal.
    pub phase: Duration,
}

impl MultihostConfig {
    /// 3 clients x 2 workers on 8 pages, 3 s phases.
    pub fn new(root: PathBuf, bin: PathBuf, out: PathBuf) -> Self {
        MultihostConfig { root, bin, out, clients: 3, workers: 2, pages: 8, phase: Duration::from_secs(3) }
    }
}

/// How long an election may take after a fault, in containers on a loaded machine.
const ELECTION_WAIT: Duration = Duration::from_secs(30);

/// How long a restarted or reconnected node may take to rejoin.
const REJOIN_WAIT: Duration = Duration::from_secs(60);

/// The image tag the run builds (overwritten by the next run).
pub const IMAGE: &str = "ivy-raft:multihost";

/// What a run found.
#[derive(Debug, Clone, Serialize)]
pub struct MultihostReport {
    /// Workload operations that succeeded, failed, or got no answer.
    pub ops_ok: usize,
    /// Failed workload operations.
    pub ops_failed: usize,
    /// Workload operations with no answer in time.
    pub ops_unknown: usize,
    /// Final reads that succeeded, of all final reads.
    pub final_reads_ok: usize,
    /// Final reads attempted.
    pub final_reads: usize,
    /// Each phase and how long it took, seconds.
    pub phases: Vec<(String, f64)>,
    /// The checker's verdict.
    pub verdict: Verdict,
    /// Docker objects of the project left after teardown (should be none).
    pub leftovers: Vec<String>,
    /// Every final read answered, a clean verdict, nothing left over.
    pub clean: bool,
    /// Why the run is not clean (empty when it is).
    pub not_clean: Vec<String>,
}

/// Runs the whole test; `Err` when the run could not be carried out (Docker
/// missing, no leader, a container that did not start), a report otherwise.
pub async fn run(cfg: &MultihostConfig) -> Result<MultihostReport> {
    docker::preconditions().await?;
    std::fs::create_dir_all(&cfg.out).with_context(|| format!("{}", cfg.out.display()))?;
    let t = Instant::now();
    docker::build_image(&cfg.root, &cfg.bin, IMAGE, &cfg.out.join("docker-context")).await?;
    let mut phases = vec![("image build".to_string(), t.elapsed().as_secs_f64())];
    let prefix = docker::free_prefix().await?;
    let file = cfg.root.join("deploy/compose/docker-compose.yml");
    let project = Arc::new(Project::new(format!("ivymh{}", std::process::id()), file, prefix, IMAGE.into()));
    eprintln!("multihost: project {}, network {}.0/24, image {IMAGE}", project.name, project.prefix);
    let signals = tokio::spawn(remove_on_signal(project.clone()));
    let (history, leftovers) = {
        let _cleanup = Cleanup(&project);
        let history = exercise(cfg, &project, &mut phases).await;
        signals.abort();
        if let Err(err) = &history {
            keep_logs(&project, cfg, err).await;
        }
        let t = Instant::now();
        // Torn down here, to see what `down -v` leaves; `_cleanup` is the safety net.
        let leftovers = project.remove_all();
        phases.push(("teardown (down -v)".to_string(), t.elapsed().as_secs_f64()));
        (history?, leftovers)
    };
    history::write(&cfg.out.join("history.jsonl"), &history)?;
    let report = summarise(&history, phases, leftovers);
    std::fs::write(cfg.out.join("report.json"), serde_json::to_string_pretty(&report)?)?;
    Ok(report)
}

/// After a failed run: the CM containers' logs go to `out/cm.log`, and their
/// tail to stderr, before the teardown removes them.
async fn keep_logs(project: &Project, cfg: &MultihostConfig, err: &anyhow::Error) {
    eprintln!("multihost: FAILED: {err:#}");
    let logs = project.compose(&["logs", "--no-color", "--timestamps"]).await.unwrap_or_else(|e| e.to_string());
    let path = cfg.out.join("cm.log");
    let _ = std::fs::write(&path, &logs);
    let tail: Vec<&str> = logs.lines().rev().take(60).collect();
    eprintln!("multihost: the last CM log lines (all of them in {}):", path.display());
    tail.iter().rev().for_each(|l| eprintln!("  {l}"));
}

/// Removes the project and exits when the test is interrupted.
async fn remove_on_signal(project: Arc<Project>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else { return };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("multihost: interrupted; removing project {}", project.name);
    let _ = tokio::task::spawn_blocking(move || project.remove_all()).await;
    std::process::exit(130);
}

/// Cluster up, clients, workload through the phases, final reads, readiness.
async fn exercise(cfg: &MultihostConfig, project: &Project, phases: &mut Vec<(String, f64)>) -> Result<History> {
    let mut timer = Timer(Instant::now(), phases);
    project.compose(&["up", "-d", "cm1", "cm2", "cm3"]).await?;
    let cms = CmContainers::of(project).await?;
    cms.await_leader(None, 0, ELECTION_WAIT).await.context("first election")?;
    cms.await_agreement(REJOIN_WAIT).await?;
    timer.lap("cluster up, leader elected");
    let work = Workload::start(cfg, project, &cms.cm_list()).await?;
    timer.lap("client containers ready");
    tokio::time::sleep(cfg.phase).await;
    timer.lap("steady workload");
    kill_leader(&cms, cfg.phase).await?;
    timer.lap("leader's container killed, started again");
    partition_leader(&cms, project, cfg.phase).await?;
    timer.lap("leader disconnected, reconnected");
    restart_all(&cms, cfg.phase).await?;
    timer.lap("all three containers restarted");
    let history = work.finish(cfg.pages).await;
    timer.lap("workload stopped, final reads");
    for id in 1..=3 {
        await_ready_inside(&cms, id).await?;
    }
    timer.lap("every node ready (ivy health inside its container)");
    Ok(history)
}

async fn kill_leader(cms: &CmContainers, phase: Duration) -> Result<()> {
    let (leader, term) = cms.await_agreement(REJOIN_WAIT).await?;
    eprintln!("multihost: docker kill cm{leader} (the leader, term {term})");
    cms.kill(leader).await?;
    let (new, _) = cms.await_leader(Some(leader), term, ELECTION_WAIT).await.context("election after the kill")?;
    eprintln!("multihost: cm{new} leads; cm{leader} stays down for {phase:?}");
    tokio::time::sleep(phase).await;
    cms.start(leader).await?;
    cms.await_agreement(REJOIN_WAIT).await.context("rejoin after the restart")?;
    Ok(())
}

async fn partition_leader(cms: &CmContainers, project: &Project, phase: Duration) -> Result<()> {
    let (leader, term) = cms.await_agreement(REJOIN_WAIT).await?;
    eprintln!("multihost: docker network disconnect cm{leader} (the leader, term {term})");
    cms.disconnect(project, leader).await?;
    let (new, _) = cms.await_leader(Some(leader), term, ELECTION_WAIT).await.context("election in the majority")?;
    eprintln!("multihost: cm{new} leads the majority; cm{leader} is cut off for {phase:?}");
    tokio::time::sleep(phase).await;
    cms.reconnect(project, leader).await?;
    cms.await_agreement(REJOIN_WAIT).await.context("rejoin after the reconnect")?;
    Ok(())
}

async fn restart_all(cms: &CmContainers, phase: Duration) -> Result<()> {
    let (_, term) = cms.await_agreement(REJOIN_WAIT).await?;
    eprintln!("multihost: docker kill cm1 cm2 cm3, then docker start them");
    for id in 1..=3 {
        cms.kill(id).await?;
    }
    for id in 1..=3 {
        cms.start(id).await?;
    }
    // A restarted leader starts as a follower (docs/DESIGN.md), so the cluster
    // elects again; the check only asks for a serving leader at the old term or
    // later: what matters is that the cluster serves again.
    let at_least = term.saturating_sub(1);
    cms.await_leader(None, at_least, ELECTION_WAIT).await.context("a leader after the restart of all three")?;
    cms.await_agreement(REJOIN_WAIT).await?;
    tokio::time::sleep(phase).await;
    Ok(())
}

async fn await_ready_inside(cms: &CmContainers, id: u64) -> Result<()> {
    let give_up = Instant::now() + REJOIN_WAIT;
    while !cms.ready_inside(id).await {
        if Instant::now() > give_up {
            bail!("cm{id}: `ivy health --service ivy.Manager` inside its container did not say SERVING");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Phase timings.
struct Timer<'a>(Instant, &'a mut Vec<(String, f64)>);

impl Timer<'_> {
    fn lap(&mut self, what: &str) {
        let took = self.0.elapsed().as_secs_f64();
        eprintln!("multihost: {what}: {took:.1} s");
        self.1.push((what.to_string(), took));
        self.0 = Instant::now();
    }
}

fn summarise(history: &History, phases: Vec<(String, f64)>, leftovers: Vec<String>) -> MultihostReport {
    let ops = &history.ops;
    let work: Vec<&Op> = ops.iter().filter(|o| !o.last).collect();
    let count = |o: Outcome| work.iter().filter(|op| op.outcome == o).count();
    let finals: Vec<&Op> = ops.iter().filter(|o| o.last).collect();
    let final_reads_ok = finals.iter().filter(|o| o.outcome == Outcome::Ok).count();
    let verdict = checker::check_history(history);
    let mut not_clean = checker::not_clean(&verdict, final_reads_ok, finals.len());
    if !leftovers.is_empty() {
        not_clean.push(format!("{} Docker objects left after teardown", leftovers.len()));
    }
    MultihostReport {
        ops_ok: count(Outcome::Ok),
        ops_failed: count(Outcome::Fail),
        ops_unknown: count(Outcome::Unknown),
        final_reads_ok,
        final_reads: finals.len(),
        phases,
        verdict,
        leftovers,
        clean: not_clean.is_empty(),
        not_clean,
    }
}

impl std::fmt::Display for MultihostReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "multihost report")?;
        for (phase, s) in &self.phases {
            writeln!(f, "  {phase:<52} {s:6.1} s")?;
        }
        writeln!(f, "  ops: {} ok, {} failed, {} unknown", self.ops_ok, self.ops_failed, self.ops_unknown)?;
        writeln!(f, "  final reads: {}/{} ok", self.final_reads_ok, self.final_reads)?;
        writeln!(f, "{}", self.verdict)?;
        writeln!(f, "  leftovers after teardown: {:?}", self.leftovers)?;
        write_verdict_line(f, &self.not_clean)
    }
}
