//! `ivy vm`: Li & Hudak's kind of measurement on real shared virtual memory. A
//! blocked matrix multiply runs across `ivy vm-worker` processes over one
//! region, on a fresh in-process 3-node CM cluster per scenario; the parent
//! then maps the region itself and checks C against a local computation.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use ivy_raft::client::{Region, RegionStats};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

use super::matmul::{self, Layout};
use crate::cluster::{Cluster, ClusterMode};

/// How long a scenario may take before it is called hung.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(300);

/// The region's name.
const REGION: &str = "vm";

/// One run of the computation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// One worker process: the baseline of the speed-up.
    One,
    /// `--workers` processes.
    Parallel,
    /// `--workers` processes; the CM leader is killed once they start computing.
    KillLeader,
}

/// Flags of `ivy vm`.
#[derive(Args, Debug, Clone)]
pub struct VmArgs {
    /// Worker processes of the parallel scenarios.
    #[arg(long, env = "IVY_VM_WORKERS", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=32))]
    pub workers: u64,
    /// Matrix side (A, B and C are n x n u64).
    #[arg(long, env = "IVY_VM_N", default_value_t = 128, value_parser = clap::value_parser!(u64).range(8..=1024))]
    pub n: u64,
    /// Scenarios to run, comma separated.
    #[arg(
        long,
        env = "IVY_VM_SCENARIOS",
        value_enum,
        value_delimiter = ',',
        default_value = "one,parallel,kill-leader"
    )]
    pub scenarios: Vec<Scenario>,
    /// Print one JSON object per scenario instead of a table.
    #[arg(long, env = "IVY_JSON")]
    pub json: bool,
    /// Testing only: workers keep invalidated pages mapped (a broken build the check must catch).
    #[arg(long, env = "IVY_UNSAFE_KEEP_STALE_MAPPINGS", hide = true)]
    pub unsafe_keep_stale: bool,
}

/// What one scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct VmReport {
    pub scenario: Scenario,
    pub workers: usize,
    pub n: usize,
    /// The slowest worker's compute phase (barrier to barrier), ms.
    pub compute_ms: f64,
    /// IVY faults taken by memory faults during the compute phase, all workers.
    pub faults: u64,
    pub faults_per_s: f64,
    /// Page bytes copied into the workers' memory during the compute phase.
    pub bytes_moved: u64,
    /// The one-process compute time over this one, when the baseline ran.
    pub speedup: Option<f64>,
    /// Leader kill to the end of the compute phase, ms.
    pub leader_killed_ms_before_end: Option<f64>,
    /// Words of C checked against the local computation.
    pub checked: usize,
}

/// Runs the scenarios, printing each; fails when a result is wrong.
pub async fn run(args: &VmArgs) -> Result<Vec<VmReport>> {
    let bin = std::env::current_exe().context("locating the ivy binary")?;
    let (n, workers) = (args.n as usize, args.workers as usize);
    if !args.json {
        println!("ivy vm: C = A x B, {n} x {n} u64, over region {REGION} on a 3-node CM cluster (Raft)");
        println!(
            "{:<12} {:>7} {:>11} {:>8} {:>9} {:>11} {:>8}  check",
            "scenario", "workers", "compute ms", "faults", "faults/s", "KiB moved", "speedup"
        );
    }
    let mut reports: Vec<VmReport> = Vec::new();
    for &scenario in &args.scenarios {
        let w = if scenario == Scenario::One { 1 } else { workers };
        let mut r = scenario_run(&bin, scenario, w, n, args.unsafe_keep_stale).await?;
        let base = reports.iter().find(|b| b.scenario == Scenario::One).map(|b| b.compute_ms);
        r.speedup = base.or((scenario == Scenario::One).then_some(r.compute_ms)).map(|b| b / r.compute_ms);
        print(&r, args.json);
        reports.push(r);
    }
    Ok(reports)
}

fn print(r: &VmReport, json: bool) {
    if json {
        println!("{}", serde_json::to_string(r).unwrap_or_default());
        return;
    }
    let name = serde_json::to_value(r.scenario).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
    let speedup = r.speedup.map_or("-".into(), |s| format!("{s:.2}x"));
    println!(
        "{name:<12} {:>7} {:>11.0} {:>8} {:>9.0} {:>11} {:>8}  ok ({} words)",
        r.workers,
        r.compute_ms,
        r.faults,
        r.faults_per_s,
        r.bytes_moved / 1024,
        speedup,
        r.checked
    );
}

/// The worker processes of one scenario, killed on drop.
struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn scenario_run(bin: &Path, scenario: Scenario, w: usize, n: usize, keep_stale: bool) -> Result<VmReport> {
    let mut cluster = Cluster::start(ClusterMode::raft()).await?;
    let layout = Layout { n, workers: w };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut procs = Workers(Vec::new());
    for rank in 0..w {
        procs.0.push(spawn_worker(bin, &cluster, &layout, rank, keep_stale, tx.clone())?);
    }
    let (mut at_compute, mut at_done) = (vec![RegionStats::default(); w], vec![RegionStats::default(); w]);
    let (mut done, mut compute_ms, mut killed_at) = (0, 0f64, None);
    let give_up = tokio::time::Instant::now() + SCENARIO_TIMEOUT;
    while done < w {
        let (rank, line): (usize, Value) = tokio::time::timeout_at(give_up, rx.recv())
            .await
            .context("the workers did not finish in time")?
            .context("a worker exited before it finished")?;
        let stats = || serde_json::from_value::<StatsLine>(line["stats"].clone()).map(|s| s.0).unwrap_or_default();
        match line["phase"].as_str() {
            Some("compute") => {
                at_compute[rank] = stats();
                if scenario == Scenario::KillLeader && killed_at.is_none() {
                    let leader = cluster.wait_leader(Duration::from_secs(10)).await?;
                    cluster.kill(leader).await;
                    killed_at = Some(Instant::now());
                }
            }
            Some("done") => {
                at_done[rank] = stats();
                compute_ms = compute_ms.max(line["compute_ms"].as_f64().unwrap_or(0.0));
                done += 1;
            }
            Some("failed") => bail!("worker {rank} failed: {}", line["error"]),
            _ => {}
        }
    }
    let killed_before_end = killed_at.map(|t| t.elapsed().as_secs_f64() * 1000.0);
    let checked = check(&cluster, &layout).await?;
    drop(procs);
    cluster.shutdown().await;
    let sum = |f: fn(&RegionStats) -> u64| -> u64 { (0..w).map(|r| f(&at_done[r]) - f(&at_compute[r])).sum() };
    let faults = sum(|s| s.read_faults + s.write_faults);
    Ok(VmReport {
        scenario,
        workers: w,
        n,
        compute_ms,
        faults,
        faults_per_s: faults as f64 / (compute_ms / 1000.0).max(1e-9),
        bytes_moved: sum(|s| s.bytes_in),
        speedup: None,
        leader_killed_ms_before_end: killed_before_end,
        checked,
    })
}

/// `RegionStats` read back from a worker's JSON line.
#[derive(serde::Deserialize, Default)]
#[serde(from = "StatsFields")]
struct StatsLine(RegionStats);

#[derive(serde::Deserialize)]
struct StatsFields {
    read_faults: u64,
    write_faults: u64,
    bytes_in: u64,
    bytes_out: u64,
    zaps: u64,
}

impl From<StatsFields> for StatsLine {
    fn from(f: StatsFields) -> Self {
        let StatsFields { read_faults, write_faults, bytes_in, bytes_out, zaps } = f;
        StatsLine(RegionStats { read_faults, write_faults, bytes_in, bytes_out, zaps })
    }
}

fn spawn_worker(
    bin: &Path,
    cluster: &Cluster,
    l: &Layout,
    rank: usize,
    keep_stale: bool,
    tx: mpsc::UnboundedSender<(usize, Value)>,
) -> Result<Child> {
    let mut cmd = Command::new(bin);
    cmd.args(["vm-worker", "--cm", &cluster.addrs().join(","), "--region", REGION]);
    cmd.args(["--rank", &rank.to_string(), "--workers", &l.workers.to_string(), "--n", &l.n.to_string()]);
    if keep_stale {
        cmd.arg("--unsafe-keep-stale");
    }
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn()?;
    let out = child.stdout.take().context("worker stdout")?;
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send((rank, v));
            }
        }
    });
    Ok(child)
}

/// Maps the region in this process and compares C with the local computation.
async fn check(cluster: &Cluster, layout: &Layout) -> Result<usize> {
    let client = Arc::new(cluster.client().await?);
    let region = Region::map(&client, REGION, layout.pages())?;
    let layout = *layout;
    tokio::task::spawn_blocking(move || {
        let checked = matmul::verify(&region, &layout);
        drop(region);
        checked
    })
    .await?
}
