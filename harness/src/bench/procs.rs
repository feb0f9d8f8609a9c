//! `ivy bench --suite failover-procs`: leader failover as separate client
//! processes see it.
//!
//! Starts 3 Raft CM processes and `--procs` separate `ivy client --json`
//! processes (the same binary). Each client writes continuously, back to back
//! (bounded in count and in time), rotating over as many pages as there are
//! clients so most writes fault to the CM; every answer carries the client's own
//! wall-clock start and end (`start_us`, `end_us`). Meanwhile the harness kills
//! the serving leader with kill -9, restarts it 0.5 s later, lets the cluster
//! settle, and repeats `--kills` times. A sampler asks every CM node's status
//! every 10 ms, to show when a new leader served, how many terms each kill cost,
//! and whether two nodes ever said they served at once.
//!
//! Per kill the gap is: kill to the end of the first successful write that
//! faulted to the CM and started after the kill, over all clients, and per
//! client process.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Result};
use serde::{Deserialize, Serialize};
use tokio::process::Command;
use tokio::sync::mpsc;

use crate::chaos::client_proc::ClientProc;
use crate::chaos::procs::{free_port, CmProc, CmSet};
use ivy_raft::client::repl::unix_us;
use ivy_raft::rpc::{Channels, ManagerClient};
use ivy_raft::status::Role;

/// What a failover-procs run does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcsConfig {
    /// Leader kills.
    pub kills: usize,
    /// Client processes.
    pub procs: usize,
    /// How long a killed leader stays down, ms.
    pub down_ms: u64,
    /// Pause after a restart before the next kill, ms.
    pub settle_ms: u64,
    /// Each client's deadline per operation (`--timeout-ms`), ms.
    pub op_timeout_ms: u64,
    /// Extra flags for every `ivy cm` (e.g. Raft timers).
    pub cm_args: Vec<String>,
}

impl Default for ProcsConfig {
    fn default() -> Self {
        ProcsConfig { kills: 29, procs: 3, down_ms: 500, settle_ms: 2000, op_timeout_ms: 5000, cm_args: Vec::new() }
    }
}

/// One kill of the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KillReport {
    /// The node killed.
    pub victim: u64,
    /// When, ms since the run began.
    pub at_ms: f64,
    /// Its term then.
    pub term_before: u64,
    /// Kill to the end of the first successful faulting write that started
    /// after the kill, over every client process, ms (`None`: none did).
    pub gap_ms: Option<f64>,
    /// The same per client process.
    pub per_client_gap_ms: Vec<Option<f64>>,
    /// Kill to the first status sample of another node saying it serves, ms.
    pub new_leader_serving_ms: Option<f64>,
    /// That node.
    pub new_leader: Option<u64>,
    /// Highest term seen before the next kill, less `term_before`: 1 when one
    /// election replaced the leader.
    pub terms_used: u64,
    /// Kill to each term change seen (the first sample at a new highest term), ms.
    pub term_changes_ms: Vec<f64>,
    /// Status samples in which two nodes said they serve.
    pub double_serving_samples: usize,
    /// Status samples in which the restarted node said it serves at its old term.
    pub restarted_served_old_term_samples: usize,
}

/// The result of a failover-procs run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcsResult {
    /// What ran.
    pub config: ProcsConfig,
    /// Per kill.
    pub kills: Vec<KillReport>,
    /// Writes issued, and how many failed.
    pub ops: usize,
    /// Failed writes (deadline or an error from the cluster).
    pub failed: usize,
    /// Wall time, ms.
    pub wall_ms: f64,
    /// Successful writes per 100 ms bucket.
    pub timeline: Vec<u64>,
    /// Kill times, ms since the run began.
    pub kill_marks_ms: Vec<f64>,
}

/// Min / median / max and how many are at most 500 ms, of the gaps measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GapStats {
    /// Gaps measured.
    pub n: usize,
    /// Kills with no successful write after them.
    pub missing: usize,
    /// Smallest, ms.
    pub min_ms: f64,
    /// Median, ms.
    pub p50_ms: f64,
    /// Largest, ms.
    pub max_ms: f64,
    /// Gaps of at most 500 ms.
    pub within_500: usize,
}

impl GapStats {
    /// Of `gaps` (`None`: none measured for that kill).
    pub fn of(gaps: impl Iterator<Item = Option<f64>>) -> GapStats {
        let all: Vec<Option<f64>> = gaps.collect();
        let mut v: Vec<f64> = all.iter().flatten().copied().collect();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return GapStats { missing: all.len(), ..Default::default() };
        }
        GapStats {
            n: v.len(),
            missing: all.len() - v.len(),
            min_ms: v[0],
            p50_ms: median(&v),
            max_ms: v[v.len() - 1],
            within_500: v.iter().filter(|g| **g <= 500.0).count(),
        }
    }
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// One write as a client process reported it.
#[derive(Debug, Clone)]
struct WriteRec {
    client: usize,
    start_us: u64,
    end_us: u64,
    ok: bool,
    local: bool,
}

/// One status sample of one node.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at_us: u64,
    id: u64,
    term: u64,
    serving: bool,
    leader: bool,
}

/// How often the sampler asks each node.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// Warm-up before the first kill.
const WARMUP: Duration = Duration::from_secs(1);
/// How long the cluster may take to elect a leader.
const LEADER_WAIT: Duration = Duration::from_secs(30);
/// Upper bound on writes per client process.
const MAX_OPS_PER_CLIENT: u64 = 2_000_000;
/// Width of one timeline bucket, ms.
const BUCKET_MS: u64 = 100;

/// Starts 3 Raft CM processes under `dir` with `extra` flags; returns them and
/// their addresses once one serves.
pub(super) async fn start_cms(bin: &Path, dir: &Path, extra: &[String]) -> Result<(CmSet, Vec<String>)> {
    let real: BTreeMap<u64, String> = (1..=3).map(|id| (id, format!("127.0.0.1:{}", free_port()))).collect();
    let peers: Vec<String> = real.iter().map(|(id, a)| format!("{id}={a}")).collect();
    let mut cms = BTreeMap::new();
    for (id, addr) in &real {
        let data = dir.join(format!("cm-{id}"));
        let _ = std::fs::remove_dir_all(&data);
        let mut args: Vec<String> = vec!["cm".into(), "--id".into(), id.to_string(), "--peers".into(), peers.join(",")];
        args.extend(["--data-dir".into(), data.display().to_string(), "--mode".into(), "raft".into()]);
        args.extend(extra.iter().cloned());
        let cm = CmProc::new(bin, *id, addr.clone(), args, dir.join(format!("cm-{id}.log")));
        cm.start()?;
        cms.insert(*id, cm);
    }
    let cms = CmSet(cms);
    cms.wait_leader(LEADER_WAIT).await.ok_or_else(|| anyhow!("the CM nodes elected no leader"))?;
    Ok((cms, real.into_values().collect()))
}

/// Starts `n` `ivy client --json` processes of `bin` against `addrs`.
pub(super) async fn start_clients(
    bin: &Path,
    dir: &Path,
    addrs: &[String],
    n: usize,
    timeout_ms: u64,
) -> Result<Vec<Arc<ClientProc>>> {
    let (life, mut events) = mpsc::unbounded_channel();
    // Registration notices are not needed here; drain them.
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    let mut clients = Vec::with_capacity(n);
    for slot in 0..n {
        let mut cmd = Command::new(bin);
        cmd.args(["client", "--json", "--cm", &addrs.join(","), "--timeout-ms", &timeout_ms.to_string()]);
        cmd.args(["--listen", "127.0.0.1:0"]);
        cmd.env("RUST_LOG", "warn");
        let (proc, _) = ClientProc::spawn(cmd, slot, &dir.join(format!("client-{slot}.log")), life.clone()).await?;
        clients.push(Arc::new(proc));
    }
    Ok(clients)
}

/// Asks every node its status every [`SAMPLE_EVERY`] until `stop`.
async fn sample(addrs: BTreeMap<u64, String>, stop: Arc<AtomicBool>, out: Arc<Mutex<Vec<Sample>>>) {
    let rpc = ManagerClient::new(Channels::new(Duration::from_millis(100), Default::default()));
    while !stop.load(Ordering::SeqCst) {
        let asks = addrs.iter().map(|(id, addr)| {
            let (rpc, id, addr) = (rpc.clone(), *id, addr.clone());
            async move { (id, rpc.status(&addr).await.ok()) }
        });
        let at_us = unix_us();
        for (id, status) in futures_join(asks).await {
            if let Some(s) = status {
                let sample = Sample { at_us, id, term: s.term, serving: s.serving, leader: s.role == Role::Leader };
                out.lock().unwrap_or_else(|e| e.into_inner()).push(sample);
            }
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}

/// Runs the futures at once and collects their outputs in order.
async fn futures_join<F: std::future::Future + Send + 'static>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

/// One client process's writes until `stop`, bounded in count.
async fn drive(
    client: usize,
    proc: Arc<ClientProc>,
    pages: usize,
    timeout: Duration,
    stop: Arc<AtomicBool>,
) -> Vec<WriteRec> {
    let mut recs = Vec::new();
    for n in 0..MAX_OPS_PER_CLIENT {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let page = (client + n as usize) % pages + 1;
        let sent_us = unix_us();
        let Some(answer) = proc.call(&format!("write P{page} c{client}-{n}"), timeout).await else {
            recs.push(WriteRec { client, start_us: sent_us, end_us: unix_us(), ok: false, local: false });
            continue;
        };
        let start_us = answer["start_us"].as_u64().unwrap_or(sent_us);
        let end_us = answer["end_us"].as_u64().unwrap_or_else(unix_us);
        let ok = answer["ok"].as_bool().unwrap_or(false);
        let local = answer["local"].as_bool().unwrap_or(false);
        recs.push(WriteRec { client, start_us, end_us, ok, local });
    }
    recs
}

/// Runs the suite; writes `failover_procs.{json,csv,txt}` under `out`.
pub async fn run(bin: &Path, out: &Path, cfg: &ProcsConfig) -> Result<ProcsResult> {
    let dir = out.join("runs").join("failover-procs");
    std::fs::create_dir_all(&dir).map_err(|e| anyhow!("{}: {e}", dir.display()))?;
    let (cms, addrs) = start_cms(bin, &dir, &cfg.cm_args).await?;
    let clients = start_clients(bin, &dir, &addrs, cfg.procs, cfg.op_timeout_ms).await?;
    let by_id: BTreeMap<u64, String> = cms.0.iter().map(|(id, c)| (*id, c.addr.clone())).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let sampler = tokio::spawn(sample(by_id, stop.clone(), samples.clone()));
    let began_us = unix_us();
    let timeout = Duration::from_millis(cfg.op_timeout_ms + 2000);
    let pages = cfg.procs.max(2);
    let drivers: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(i, c)| tokio::spawn(drive(i, c.clone(), pages, timeout, stop.clone())))
        .collect();
    tokio::time::sleep(WARMUP).await;
    let mut kills: Vec<(u64, u64, u64)> = Vec::new();
    for k in 0..cfg.kills {
        let Some(victim) = cms.wait_leader(LEADER_WAIT).await else {
            eprintln!("bench: no leader before kill {k}");
            break;
        };
        let term = term_of(&samples, victim);
        let at = unix_us();
        cms.kill(victim).await;
        kills.push((victim, at, term));
        eprintln!("bench: kill {}/{} of CM {victim} (term {term})", k + 1, cfg.kills);
        tokio::time::sleep(Duration::from_millis(cfg.down_ms)).await;
        cms.restart(victim);
        tokio::time::sleep(Duration::from_millis(cfg.settle_ms)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let ended_us = unix_us();
    let mut recs = Vec::new();
    for d in drivers {
        recs.extend(d.await.map_err(|e| anyhow!("client task: {e}"))?);
    }
    let _ = sampler.await;
    for c in &clients {
        c.quit().await;
    }
    cms.kill_all().await;
    let samples = samples.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let result = summarise(cfg, &recs, &samples, &kills, began_us, ended_us);
    write(out, &result)?;
    Ok(result)
}

/// The term of `id` in the latest sample of it.
fn term_of(samples: &Mutex<Vec<Sample>>, id: u64) -> u64 {
    let samples = samples.lock().unwrap_or_else(|e| e.into_inner());
    samples.iter().rev().find(|s| s.id == id).map_or(0, |s| s.term)
}

fn summarise(
    cfg: &ProcsConfig,
    recs: &[WriteRec],
    samples: &[Sample],
    kills: &[(u64, u64, u64)],
    began_us: u64,
    ended_us: u64,
) -> ProcsResult {
    let ms = |us: u64, from: u64| us.saturating_sub(from) as f64 / 1e3;
    let faulted: Vec<&WriteRec> = recs.iter().filter(|r| r.ok && !r.local).collect();
    let first_after = |from: u64, client: Option<usize>| {
        faulted
            .iter()
            .filter(|r| r.start_us >= from && client.is_none_or(|c| r.client == c))
            .map(|r| r.end_us)
            .min()
            .map(|end| ms(end, from))
    };
    let mut reports = Vec::new();
    for (k, (victim, at, term)) in kills.iter().copied().enumerate() {
        let until = kills.get(k + 1).map_or(ended_us, |n| n.1);
        let window: Vec<&Sample> = samples.iter().filter(|s| s.at_us >= at && s.at_us < until).collect();
        let new_leader = window.iter().find(|s| s.serving && s.id != victim);
        let mut highest = term;
        let mut term_changes_ms = Vec::new();
        for s in &window {
            if s.term > highest {
                highest = s.term;
                term_changes_ms.push(ms(s.at_us, at));
            }
        }
        let mut by_time: BTreeMap<u64, usize> = BTreeMap::new();
        for s in window.iter().filter(|s| s.serving) {
            *by_time.entry(s.at_us).or_default() += 1;
        }
        let old_term = window.iter().filter(|s| s.id == victim && s.leader && s.serving && s.term == term).count();
        reports.push(KillReport {
            victim,
            at_ms: ms(at, began_us),
            term_before: term,
            gap_ms: first_after(at, None),
            per_client_gap_ms: (0..cfg.procs).map(|c| first_after(at, Some(c))).collect(),
            new_leader_serving_ms: new_leader.map(|s| ms(s.at_us, at)),
            new_leader: new_leader.map(|s| s.id),
            terms_used: highest - term,
            term_changes_ms,
            double_serving_samples: by_time.values().filter(|n| **n > 1).count(),
            restarted_served_old_term_samples: old_term,
        });
    }
    let mut timeline = vec![0u64; (ended_us.saturating_sub(began_us) / 1000 / BUCKET_MS + 1) as usize];
    for r in recs.iter().filter(|r| r.ok) {
        if let Some(b) = timeline.get_mut((r.end_us.saturating_sub(began_us) / 1000 / BUCKET_MS) as usize) {
            *b += 1;
        }
    }
    ProcsResult {
        config: cfg.clone(),
        ops: recs.len(),
        failed: recs.iter().filter(|r| !r.ok).count(),
        wall_ms: ms(ended_us, began_us),
        timeline,
        kill_marks_ms: reports.iter().map(|r| r.at_ms).collect(),
        kills: reports,
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0}"))
}

/// The text summary.
pub fn text(r: &ProcsResult) -> String {
    let mut out = String::new();
    let c = &r.config;
    let _ = writeln!(
        out,
        "== failover-procs: 3 Raft CM processes, {} client processes writing back to back, {} leader kills (down {} ms, settle {} ms)",
        c.procs, c.kills, c.down_ms, c.settle_ms
    );
    if !c.cm_args.is_empty() {
        let _ = writeln!(out, "CM flags: {}", c.cm_args.join(" "));
    }
    let _ = writeln!(out, "writes: {} ({} failed) in {:.1} s", r.ops, r.failed, r.wall_ms / 1e3);
    let line = |out: &mut String, what: &str, s: &GapStats, none: &str| {
        let _ = writeln!(
            out,
            "{what}: n={} min {:.0} / median {:.0} / max {:.0} ms, {} of {} <= 500 ms{}",
            s.n,
            s.min_ms,
            s.p50_ms,
            s.max_ms,
            s.within_500,
            s.n + s.missing,
            if s.missing > 0 { format!(" ({} {none})", s.missing) } else { String::new() }
        );
    };
    let no_write = "with no successful write after the kill";
    line(&mut out, "gap (any client)", &GapStats::of(r.kills.iter().map(|k| k.gap_ms)), no_write);
    line(
        &mut out,
        "gap (per client process)",
        &GapStats::of(r.kills.iter().flat_map(|k| k.per_client_gap_ms.iter().copied())),
        no_write,
    );
    line(
        &mut out,
        "kill -> another node serving (status, 10 ms samples)",
        &GapStats::of(r.kills.iter().map(|k| k.new_leader_serving_ms)),
        "where no other node served: the restarted node led again at its old term",
    );
    let extra = r.kills.iter().filter(|k| k.terms_used > 1).count();
    let double = r.kills.iter().filter(|k| k.double_serving_samples > 0).count();
    let old = r.kills.iter().filter(|k| k.restarted_served_old_term_samples > 0).count();
    let _ = writeln!(out, "kills that took more than one election: {extra} of {}", r.kills.len());
    let _ = writeln!(
        out,
        "kills with two nodes serving in one sample: {double}; restarted node serving its old term: {old}"
    );
    let _ = writeln!(
        out,
        "\n kill | victim | term | gap ms | per client ms | new leader serving ms | terms | term changes ms | double"
    );
    for (i, k) in r.kills.iter().enumerate() {
        let per: Vec<String> = k.per_client_gap_ms.iter().map(|g| opt(*g)).collect();
        let changes: Vec<String> = k.term_changes_ms.iter().map(|g| format!("{g:.0}")).collect();
        let _ = writeln!(
            out,
            " {:>4} | {:>6} | {:>4} | {:>6} | {} | {} | {} | {} | {}",
            i + 1,
            k.victim,
            k.term_before,
            opt(k.gap_ms),
            per.join("/"),
            opt(k.new_leader_serving_ms),
            k.terms_used,
            changes.join(","),
            k.double_serving_samples
        );
    }
    out
}

fn csv(r: &ProcsResult) -> String {
    let mut out = String::from("kill,victim,at_ms,term_before,gap_ms,per_client_gap_ms,new_leader_serving_ms,terms_used,term_changes_ms,double_serving_samples\n");
    for (i, k) in r.kills.iter().enumerate() {
        let per: Vec<String> = k.per_client_gap_ms.iter().map(|g| opt(*g)).collect();
        let changes: Vec<String> = k.term_changes_ms.iter().map(|g| format!("{g:.0}")).collect();
        let _ = writeln!(
            out,
            "{},{},{:.0},{},{},{},{},{},{},{}",
            i + 1,
            k.victim,
            k.at_ms,
            k.term_before,
            opt(k.gap_ms),
            per.join("/"),
            opt(k.new_leader_serving_ms),
            k.terms_used,
            changes.join("/"),
            k.double_serving_samples
        );
    }
    out
}

fn write(out: &Path, r: &ProcsResult) -> Result<()> {
    let io = |p: &Path, e: std::io::Error| anyhow!("{}: {e}", p.display());
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    let files = [
        ("failover_procs.txt", text(r)),
        ("failover_procs.csv", csv(r)),
        ("failover_procs.json", serde_json::to_string_pretty(r).map_err(|e| anyhow!("json: {e}"))?),
    ];
    for (name, body) in files {
        let path = out.join(name);
        std::fs::write(&path, body).map_err(|e| io(&path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gap_stats_count_the_missing_and_the_fast() {
        let s = GapStats::of([Some(300.0), None, Some(100.0), Some(700.0)].into_iter());
        assert_eq!((s.n, s.missing, s.within_500), (3, 1, 2));
        assert_eq!((s.min_ms, s.p50_ms, s.max_ms), (100.0, 300.0, 700.0));
    }

    #[test]
    fn the_gap_is_the_first_faulting_write_that_started_after_the_kill() {
        let w = |client, start_us, end_us, ok, local| WriteRec { client, start_us, end_us, ok, local };
        let recs = [
            w(0, 900, 1_400_000, true, false),   // started before the kill
            w(1, 1_000, 2_000, true, true),      // local: never reached the CM
            w(1, 1_000, 250_000, false, false),  // failed
            w(1, 260_000, 300_000, true, false), // the one
            w(0, 1_400_000, 1_500_000, true, false),
        ];
        let cfg = ProcsConfig { kills: 1, procs: 2, ..Default::default() };
        let r = summarise(&cfg, &recs, &[], &[(1, 1_000, 5)], 0, 2_000_000);
        assert_eq!(r.kills[0].gap_ms, Some(299.0));
        assert_eq!(r.kills[0].per_client_gap_ms, vec![Some(1499.0), Some(299.0)]);
        assert_eq!(r.failed, 1);
    }
}
