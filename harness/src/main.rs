//! The `ivy` binary: a thin CLI over the library and its tools.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use ivy_harness::bench::{self, BenchConfig, BenchMode, Scenario, Workload, SCALE_ROUNDS};
use ivy_harness::chaos::{self, ChaosConfig, Nemesis};
use ivy_harness::cluster::ClusterMode;
use ivy_harness::demo;
use ivy_harness::flood::{self, FloodConfig};
use ivy_harness::logging::{self, LogArgs, LogLevel};
use ivy_harness::ops::{self, MemberCommand, SnapshotCommand};
use ivy_harness::probe;
use ivy_harness::secure::{run_certs, CertsCommand, SecurityArgs};
use ivy_harness::svm;
use ivy_raft::client::repl::{self, Event, LineSource, Output};
use ivy_raft::client::{Client, ClientConfig, CmConn, CLIENT_RPC_TIMEOUT, DEFAULT_OP_TIMEOUT};
use ivy_raft::cm::{CmConfig, CmNode, DEFAULT_CLIENT_LEASE, DEFAULT_MAX_CLIENTS, DEFAULT_MAX_PAGES, DEFAULT_PULSE};
use ivy_raft::config::{
    hostname, id_from_hostname, parse_addrs, parse_peers, ReplicationMode, DEFAULT_CMS, DEFAULT_PEERS,
};
use ivy_raft::metrics::exporter::MetricsServer;
use ivy_raft::protocol::{Caps, DEFAULT_MAX_PAGE_BYTES};
use ivy_raft::raft::{RaftTimers, SNAPSHOT_EVERY};

/// IVY distributed shared memory with a Raft-replicated central manager.
#[derive(Parser)]
#[command(name = "ivy", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run a central-manager (CM) node; running the same command again restarts it from its data dir.
    Cm(CmArgs),
    /// Run a client: serves its pages and reads commands from stdin (type `help`).
    Client(ClientArgs),
    /// Show every CM node (id, address, role, term, log indexes) and the registered clients with their lease; exit 0 when a leader exists.
    Status(StatusArgs),
    /// Evict a client known dead at once: each page it owned passes to a copy holder, or is lost without one.
    Evict(EvictArgs),
    /// Show the directory as the leader has committed it: every page (or the ones named) with its state, owner, copy set and epoch.
    Pages(PagesArgs),
    /// One gRPC health check of a CM node: exit 0 SERVING, 1 not serving, 2 unreachable.
    Health(probe::HealthArgs),
    /// Run the original experiment on an embedded CM cluster, without and with a leader kill.
    Demo(DemoArgs),
    /// Run CM nodes and clients as processes, inject faults, and check the history.
    Chaos(ChaosArgs),
    /// Measure Raft against the heartbeat baseline on CM processes, with and without CM kills.
    Bench(BenchArgs),
    /// Change the CM cluster's membership: list, add (learner, then voter), remove.
    #[command(subcommand)]
    Member(MemberCommand),
    /// Back up the directory from the leader, inspect a backup, or seed a new cluster from one.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Create the certificates and token of a secure cluster (see README, "Secure cluster").
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Run a matrix multiply across client processes over one shared-memory region, with and without a leader kill.
    Vm(svm::vm::VmArgs),
    /// One worker process of `ivy vm`.
    #[command(hide = true)]
    VmWorker(svm::worker::WorkerArgs),
    /// Testing only: a shared-memory region driven over stdin.
    #[command(hide = true)]
    SvmShell(svm::shell::ShellArgs),
    /// Testing only: flood a cluster with registrations and page creations for a bounded time.
    #[command(hide = true)]
    Flood(FloodArgs),
}

#[derive(Args)]
struct FloodArgs {
    /// CM node addresses, comma separated.
    #[arg(long, env = "IVY_CM", default_value = DEFAULT_CMS)]
    cm: String,
    /// How long the flood runs, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Concurrent workers.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=256))]
    workers: u64,
    #[command(flatten)]
    security: SecurityArgs,
}

/// How the directory is replicated, with each mode's settings.
#[derive(Args, Clone, Copy)]
struct ModeArgs {
    /// How the directory is replicated.
    #[arg(long, env = "IVY_MODE", value_enum, default_value_t = ReplicationMode::Raft)]
    mode: ReplicationMode,
    /// Heartbeat mode: how often the backup copies the primary's directory, ms.
    #[arg(long, env = "IVY_PULSE_MS", default_value_t = DEFAULT_PULSE.as_millis() as u64)]
    pulse_ms: u64,
    #[command(flatten)]
    timers: TimerArgs,
}

impl ModeArgs {
    fn cluster_mode(self) -> ClusterMode {
        ClusterMode { mode: self.mode, timers: self.timers.timers(), pulse: Duration::from_millis(self.pulse_ms) }
    }
}

#[derive(Args, Clone, Copy)]
struct TimerArgs {
    /// Raft heartbeat interval, ms.
    #[arg(long, env = "IVY_HEARTBEAT_MS", default_value_t = RaftTimers::default().heartbeat_ms)]
    heartbeat_ms: u64,
    /// Raft election timeout, lower bound, ms.
    #[arg(long, env = "IVY_ELECTION_MIN_MS", default_value_t = RaftTimers::default().election_min_ms)]
    election_min_ms: u64,
    /// Raft election timeout, upper bound, ms.
    #[arg(long, env = "IVY_ELECTION_MAX_MS", default_value_t = RaftTimers::default().election_max_ms)]
    election_max_ms: u64,
}

impl TimerArgs {
    fn timers(self) -> RaftTimers {
        RaftTimers {
            heartbeat_ms: self.heartbeat_ms,
            election_min_ms: self.election_min_ms,
            election_max_ms: self.election_max_ms,
        }
    }
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("node_id").required(true).args(["id", "id_from_hostname"])))]
struct CmArgs {
    /// This node's id, a key of --peers.
    #[arg(long, env = "IVY_ID")]
    id: Option<u64>,
    /// Take the id from the host name: `NAME-N` (a StatefulSet pod) is node N+1.
    #[arg(long, env = "IVY_ID_FROM_HOSTNAME")]
    id_from_hostname: bool,
    /// Every CM node of a new cluster as ID=HOST:PORT, comma separated [default:
    /// three nodes on 127.0.0.1:7101-7103; with --join: none]. A port of 0 for
    /// this node's own entry means the port it gets.
    #[arg(long, env = "IVY_PEERS")]
    peers: Option<String>,
    /// Never set up a cluster: wait to be added with `ivy member add` (a new or
    /// replacement node). A node whose data dir holds a cluster already just restarts.
    #[arg(long, env = "IVY_JOIN")]
    join: bool,
    /// Where this node keeps its store (raft.wal and sled) [default: data/cm-ID].
    #[arg(long, env = "IVY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address to listen on [default: this node's address in --peers].
    #[arg(long, env = "IVY_LISTEN")]
    listen: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (off unless given).
    #[arg(long, env = "IVY_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    #[command(flatten)]
    mode: ModeArgs,
    /// The lease each client holds after each keepalive, ms; a client silent for
    /// the lease plus a quarter of it is evicted.
    #[arg(long, env = "IVY_CLIENT_LEASE_MS", default_value_t = DEFAULT_CLIENT_LEASE.as_millis() as u64)]
    client_lease_ms: u64,
    /// Raft: log entries between snapshots of the directory; a restart replays at
    /// most about this many.
    #[arg(long, env = "IVY_SNAPSHOT_EVERY", default_value_t = SNAPSHOT_EVERY,
          value_parser = clap::value_parser!(u64).range(1..))]
    snapshot_every: u64,
    /// Most registered clients; a registration beyond it is refused, naming the cap.
    #[arg(long, env = "IVY_MAX_CLIENTS", default_value_t = DEFAULT_MAX_CLIENTS, value_parser = clap::value_parser!(u64).range(1..))]
    max_clients: u64,
    /// Most pages in the directory; a write that would create one more is refused, naming the cap.
    #[arg(long, env = "IVY_MAX_PAGES", default_value_t = DEFAULT_MAX_PAGES, value_parser = clap::value_parser!(u64).range(1..))]
    max_pages: u64,
    #[command(flatten)]
    security: SecurityArgs,
    /// Announce readiness as one JSON line on stdout ({"event":"ready",...}).
    #[arg(long, env = "IVY_JSON")]
    json: bool,
    /// Testing only: skip invalidations so copies go stale (the chaos harness's
    /// broken build).
    #[arg(long, env = "IVY_UNSAFE_SKIP_INVALIDATION", hide = true)]
    unsafe_skip_invalidation: bool,
    /// Testing only: never fdatasync/fsync the store, so a power cut loses
    /// acknowledged writes (the power-loss test's broken build).
    #[arg(long, env = "IVY_UNSAFE_SKIP_SYNC", hide = true)]
    unsafe_skip_sync: bool,
}

#[derive(Args)]
struct ClientArgs {
    /// CM node addresses, comma separated.
    #[arg(long, env = "IVY_CM", default_value = DEFAULT_CMS)]
    cm: String,
    /// Address to serve this client's pages on (port 0: any free port).
    #[arg(long, env = "IVY_LISTEN", default_value = "127.0.0.1:0")]
    listen: String,
    /// Address the CM and other clients reach this client at [default: the bound
    /// listen address]; needed when listening on 0.0.0.0 or behind NAT.
    #[arg(long, env = "IVY_ADVERTISE")]
    advertise: Option<String>,
    /// Serve Prometheus metrics (local hits, fault latency) at http://ADDR/metrics.
    #[arg(long, env = "IVY_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Follow the CM's leader hints to addresses not in --cm (for a --cm that is
    /// one load-balanced name, e.g. a Kubernetes Service).
    #[arg(long, env = "IVY_FOLLOW_HINTS")]
    follow_hints: bool,
    /// Line-editor history at a terminal [default: $XDG_DATA_HOME/ivy/history,
    /// else ~/.local/share/ivy/history].
    #[arg(long, env = "IVY_HISTORY_FILE")]
    history_file: Option<PathBuf>,
    /// Print one JSON object per line instead of text.
    #[arg(long, env = "IVY_JSON")]
    json: bool,
    /// Largest page content, bytes.
    #[arg(long, env = "IVY_MAX_PAGE_BYTES", default_value_t = DEFAULT_MAX_PAGE_BYTES)]
    max_page_bytes: usize,
    /// Deadline of one read or write, retries included, ms.
    #[arg(long, env = "IVY_TIMEOUT_MS", default_value_t = 5000)]
    timeout_ms: u64,
    #[command(flatten)]
    security: SecurityArgs,
    /// Testing only: serve local hits after the lease ran out (a broken build the
    /// chaos checker must catch).
    #[arg(long, env = "IVY_UNSAFE_IGNORE_LEASE", hide = true)]
    unsafe_ignore_lease: bool,
    /// Testing only: install a late fault reply even after an invalidation or a
    /// release superseded its copy (a broken build the chaos checker must catch).
    #[arg(long, env = "IVY_UNSAFE_LATE_INSTALL", hide = true)]
    unsafe_late_install: bool,
}

#[derive(Args)]
struct PagesArgs {
    /// Pages to show [default: every page].
    pages: Vec<String>,
    /// CM node addresses, comma separated.
    #[arg(long, env = "IVY_CM", default_value = DEFAULT_CMS)]
    cm: String,
    /// Print JSON instead of a table.
    #[arg(long, env = "IVY_JSON")]
    json: bool,
    /// Refresh every this many ms until interrupted.
    #[arg(long, env = "IVY_PAGES_WATCH_MS", num_args = 0..=1, default_missing_value = "1000",
          value_parser = clap::value_parser!(u64).range(100..))]
    watch: Option<u64>,
    #[command(flatten)]
    security: SecurityArgs,
}

#[derive(Args)]
struct EvictArgs {
    /// The client's id (see `ivy status`).
    #[arg(long, env = "IVY_EVICT_CLIENT", value_parser = clap::value_parser!(u64).range(1..))]
    client: u64,
    /// CM node addresses, comma separated.
    #[arg(long, env = "IVY_CM", default_value = DEFAULT_CMS)]
    cm: String,
    #[command(flatten)]
    security: SecurityArgs,
}

#[derive(Args)]
struct StatusArgs {
    /// CM node addresses, comma separated.
    #[arg(long, env = "IVY_CM", default_value = DEFAULT_CMS)]
    cm: String,
    /// Print JSON instead of a table.
    #[arg(long, env = "IVY_JSON")]
    json: bool,
    #[command(flatten)]
    security: SecurityArgs,
}

#[derive(Args)]
struct DemoArgs {
    /// Clients, all running at once.
    #[arg(long, env = "IVY_DEMO_CLIENTS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=200))]
    clients: u64,
    /// Random operations per client.
    #[arg(long, env = "IVY_DEMO_OPS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    ops: u64,
    #[command(flatten)]
    mode: ModeArgs,
}

#[derive(Args)]
struct ChaosArgs {
    /// Which design to exercise.
    #[arg(long, env = "IVY_MODE", value_enum, default_value_t = ReplicationMode::Raft)]
    mode: ReplicationMode,
    /// How long the workload runs, e.g. 60s, 90s, 2m.
    #[arg(long, env = "IVY_CHAOS_DURATION", default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Seed of the workload and of the fault schedule.
    #[arg(long, env = "IVY_CHAOS_SEED", default_value_t = 1)]
    seed: u64,
    /// Client processes.
    #[arg(long, env = "IVY_CHAOS_CLIENTS", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    clients: u64,
    /// Concurrent workers per client.
    #[arg(long, env = "IVY_CHAOS_WORKERS", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    workers: u64,
    /// Pages P1..Pn.
    #[arg(long, env = "IVY_CHAOS_PAGES", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pages: u64,
    /// Probability that an operation is a read.
    #[arg(long, env = "IVY_CHAOS_READ_RATIO", default_value_t = 0.5, value_parser = parse_ratio)]
    read_ratio: f64,
    /// Fault kinds, comma separated; none for a run without faults (power-cut
    /// needs FUSE: root and /dev/fuse).
    #[arg(long, env = "IVY_CHAOS_FAULTS", value_enum, value_delimiter = ',', num_args = 0..,
          default_value = "kill,pause,partition,restart-all,client-pause,client-kill,client-isolate,client-slow,membership")]
    faults: Vec<Nemesis>,
    /// Time from one fault's start to the next one's, ms: MIN-MAX.
    #[arg(long, env = "IVY_CHAOS_FAULT_GAP_MS", default_value = "3000-5000", value_parser = parse_range)]
    fault_gap_ms: (u64, u64),
    /// Run without injecting any fault (overrides --faults).
    #[arg(long, env = "IVY_CHAOS_NO_FAULTS")]
    no_faults: bool,
    /// Where logs, data dirs, history.jsonl and report.json go.
    #[arg(long, env = "IVY_CHAOS_OUT", default_value = "chaos-out")]
    out: PathBuf,
    /// Heartbeat mode: the backup's pulse, ms.
    #[arg(long, env = "IVY_PULSE_MS", default_value_t = DEFAULT_PULSE.as_millis() as u64)]
    pulse_ms: u64,
    /// The clients' lease on the CM nodes, ms.
    #[arg(long, env = "IVY_CLIENT_LEASE_MS", default_value_t = DEFAULT_CLIENT_LEASE.as_millis() as u64)]
    client_lease_ms: u64,
    /// Each client's own deadline for one operation, ms.
    #[arg(long, env = "IVY_CHAOS_CLIENT_TIMEOUT_MS", default_value_t = chaos::CLIENT_OP_TIMEOUT_MS)]
    client_timeout_ms: u64,
    /// Testing only: CM nodes skip invalidations (a broken build the checker must catch).
    #[arg(long, env = "IVY_UNSAFE_SKIP_INVALIDATION", hide = true)]
    unsafe_skip_invalidation: bool,
    /// Testing only: clients serve local hits after their lease ran out (a broken
    /// build the checker must catch).
    #[arg(long, env = "IVY_UNSAFE_IGNORE_LEASE", hide = true)]
    unsafe_ignore_lease: bool,
    /// Testing only: clients install late fault replies whose copies were
    /// superseded (a broken build the checker must catch).
    #[arg(long, env = "IVY_UNSAFE_LATE_INSTALL", hide = true)]
    unsafe_late_install: bool,
    /// Testing only: CM nodes never sync their store (a broken build power cuts must expose).
    #[arg(long, env = "IVY_UNSAFE_SKIP_SYNC", hide = true)]
    unsafe_skip_sync: bool,
    /// Testing only: the membership fault empties voters and restarts them under
    /// their old id, never removed nor added back (a broken procedure the checker must catch).
    #[arg(long, env = "IVY_UNSAFE_REJOIN_EMPTY", hide = true)]
    unsafe_rejoin_empty: bool,
    /// Log entries between the CM nodes' snapshots [default: the nodes' own default].
    #[arg(long, env = "IVY_SNAPSHOT_EVERY", value_parser = clap::value_parser!(u64).range(1..))]
    snapshot_every: Option<u64>,
    /// The network: proxies on loopback (the fault kinds of --faults), or every
    /// process in its own network namespace with real, silent partitions (root;
    /// cuts: isolate the leader, isolate a client, split the leader and a client
    /// from the rest).
    #[arg(long, env = "IVY_CHAOS_NET", value_enum, default_value_t = ChaosNet::Proxy)]
    net: ChaosNet,
    /// --net netns: how long each cut is held, ms: MIN-MAX.
    #[arg(long, env = "IVY_CHAOS_CUT_HOLD_MS", default_value = "10000-30000", value_parser = parse_range)]
    cut_hold_ms: (u64, u64),
}

/// The network a chaos run puts its processes on.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ChaosNet {
    /// Loopback, every link through a proxy of the harness.
    Proxy,
    /// A network namespace per process on a bridge.
    Netns,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Suite {
    /// One workload from the flags.
    Custom,
    /// The README's tables: the original experiment (10 clients x 10 ops) and a
    /// longer one (x 300) under every scenario, a scale run (100 clients x 1000
    /// pages) and a read-heavy mix, both modes.
    Readme,
    /// Leader failover as separate `ivy client --json` processes see it: kill -9
    /// the Raft leader and restart it, `--kills` times (see README).
    FailoverProcs,
    /// Leader elections in an idle cluster (idle clients, keepalives only) while
    /// CPU burners load the machine, for `--duration` (see README).
    Idle,
}

#[derive(Args)]
struct BenchArgs {
    /// Which modes to measure, comma separated (raft-skip-sync: Raft with the
    /// store's syncs off, to show their cost; never durable).
    #[arg(long, env = "IVY_MODE", value_enum, value_delimiter = ',', default_value = "raft,heartbeat")]
    mode: Vec<BenchMode>,
    /// Clients, all running at once.
    #[arg(long, env = "IVY_BENCH_CLIENTS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1000))]
    clients: u64,
    /// Pages P1..Pn.
    #[arg(long, env = "IVY_BENCH_PAGES", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pages: u64,
    /// Operations per client.
    #[arg(long, env = "IVY_BENCH_OPS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    ops: u64,
    /// Probability that an operation is a read.
    #[arg(long, env = "IVY_BENCH_READ_RATIO", default_value_t = 0.5, value_parser = parse_ratio)]
    read_ratio: f64,
    /// Scenarios, comma separated.
    #[arg(
        long,
        env = "IVY_BENCH_SCENARIO",
        value_enum,
        value_delimiter = ',',
        default_value = "none,kill-leader,kill-restart,kill-restart-many,kill-both"
    )]
    scenario: Vec<Scenario>,
    /// Rounds of each (scenario, mode), the modes alternated run by run; each
    /// mode's median run is reported, with every round's throughput (custom
    /// suite; the readme suite runs its 100-client workload in 5 rounds).
    #[arg(long, env = "IVY_BENCH_REPEAT", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=100))]
    repeat: u64,
    /// A preset set of workloads instead of the flags above.
    #[arg(long, env = "IVY_BENCH_SUITE", value_enum, default_value = "custom")]
    suite: Suite,
    /// Where results, plots, data dirs and logs go.
    #[arg(long, env = "IVY_BENCH_OUT", default_value = "bench-out")]
    out: PathBuf,
    /// Heartbeat mode: the backup's pulse, ms.
    #[arg(long, env = "IVY_PULSE_MS", default_value_t = DEFAULT_PULSE.as_millis() as u64)]
    pulse_ms: u64,
    /// Run nothing: redraw the tables and plots in --out from this results.json.
    #[arg(long)]
    replot: Option<PathBuf>,
    /// failover-procs: leader kills.
    #[arg(long, env = "IVY_BENCH_KILLS", default_value_t = 29, value_parser = clap::value_parser!(u64).range(1..=1000))]
    kills: u64,
    /// failover-procs: client processes.
    #[arg(long, env = "IVY_BENCH_PROCS", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=32))]
    procs: u64,
    /// failover-procs: how long a killed leader stays down before its restart, ms.
    #[arg(long, env = "IVY_BENCH_DOWN_MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    down_ms: u64,
    /// failover-procs: pause after a restart before the next kill, ms.
    #[arg(long, env = "IVY_BENCH_SETTLE_MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    settle_ms: u64,
    /// idle: how long [default: 300s]. custom: run each scenario this long
    /// (a fixed-duration workload; --ops is then the most a client issues).
    #[arg(long, env = "IVY_BENCH_DURATION", value_parser = parse_duration)]
    duration: Option<Duration>,
    /// idle: CPU-burning threads.
    #[arg(long, env = "IVY_BENCH_BURNERS", default_value_t = 4, value_parser = clap::value_parser!(u64).range(0..=64))]
    burners: u64,
    /// idle: idle client processes.
    #[arg(long, env = "IVY_BENCH_IDLE_CLIENTS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=100))]
    idle_clients: u64,
    /// failover-procs, idle: extra flags for every `ivy cm`, space separated (e.g. Raft timers).
    #[arg(long, env = "IVY_BENCH_CM_ARGS", default_value = "", allow_hyphen_values = true)]
    cm_args: String,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit()).map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration like 60s, 500ms or 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?} is not a duration like 60s, 500ms or 2m")),
    }
}

fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let bad = || format!("{s:?} is not a range like 3000-5000");
    let (lo, hi) = s.split_once('-').ok_or_else(bad)?;
    let (lo, hi) = (lo.trim().parse::<u64>().map_err(|_| bad())?, hi.trim().parse::<u64>().map_err(|_| bad())?);
    if lo == 0 || hi < lo {
        return Err(bad());
    }
    Ok((lo, hi))
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a probability between 0 and 1")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Without a level: a CM node says what it does; everything else stays quiet.
    // openraft's own logs (a down peer is logged every retry) need RUST_LOG=openraft=warn.
    let default_level = match cli.command {
        Command::Cm(_) => LogLevel::Info,
        // The bench's in-process clients would interleave warnings with its output.
        Command::Bench(_) => LogLevel::Error,
        _ => LogLevel::Warn,
    };
    logging::init(&cli.log, default_level);
    match ivy_raft::rpc::socket::raise_open_files_limit() {
        Ok((before, after)) if after > before => tracing::debug!("open-files limit raised from {before} to {after}"),
        Ok(_) => {}
        Err(err) => tracing::warn!("cannot raise the open-files limit: {err}"),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => return fail(&anyhow::anyhow!("cannot start the tokio runtime: {err}")),
    };
    let ran = runtime.block_on(async {
        let done = match cli.command {
            Command::Cm(args) => run_cm(args).await,
            Command::Client(args) => run_client(args).await,
            Command::Status(args) => run_status(args).await,
            Command::Evict(args) => run_evict(args).await,
            Command::Pages(args) => run_pages(args).await,
            Command::Health(args) => return Ok(probe::run(args).await),
            Command::Demo(args) => run_demo(args).await,
            Command::Chaos(args) => run_chaos(args).await,
            Command::Bench(args) => run_bench(args).await,
            Command::Member(cmd) => ops::run_member(cmd).await,
            Command::Snapshot(cmd) => ops::run_snapshot(cmd).await,
            Command::Certs(cmd) => run_certs(&cmd),
            Command::Flood(args) => run_flood(args).await,
            Command::Vm(args) => svm::vm::run(&args).await.map(|_| ()),
            Command::VmWorker(args) => svm::worker::run(args).await,
            Command::SvmShell(args) => svm::shell::run(args).await,
        };
        done.map(|()| ExitCode::SUCCESS)
    });
    ran.unwrap_or_else(|err| fail(&err))
}

/// Prints the error and its causes on one line (never a backtrace: a user
/// error is not a crash) and exits with 1.
fn fail(err: &anyhow::Error) -> ExitCode {
    eprintln!("error: {err:#}");
    ExitCode::FAILURE
}

async fn run_cm(args: CmArgs) -> Result<()> {
    let peers = match (&args.peers, args.join) {
        (Some(peers), _) => parse_peers(peers)?,
        (None, false) => parse_peers(DEFAULT_PEERS)?,
        (None, true) => Default::default(),
    };
    let id = match args.id {
        Some(id) => id,
        None => id_from_hostname(&hostname()?, &peers)?,
    };
    if args.join && args.listen.is_none() && !peers.contains_key(&id) {
        bail!("--join needs --listen (or this node's address in --peers)");
    }
    let data_dir = args.data_dir.unwrap_or_else(|| PathBuf::from(format!("data/cm-{id}")));
    let mut config = CmConfig::new(id, peers, data_dir);
    config.join = args.join;
    let mode = args.mode.cluster_mode();
    config.mode = mode.mode;
    config.timers = mode.timers;
    config.pulse = mode.pulse;
    config.client_lease = Duration::from_millis(args.client_lease_ms);
    config.snapshot_every = args.snapshot_every;
    config.caps = Caps { max_clients: args.max_clients, max_pages: args.max_pages };
    config.security = args.security.load()?;
    config.unsafe_skip_invalidation = args.unsafe_skip_invalidation;
    config.unsafe_skip_sync = args.unsafe_skip_sync;
    config.validate()?;
    let metrics = match &args.metrics_listen {
        Some(addr) => Some(MetricsServer::start(bind(addr, "--metrics-listen").await?)?),
        None => None,
    };
    let listen = match args.listen {
        Some(listen) => listen,
        None => config.peers.get(&config.id).cloned().context("no --listen and no address of this node in --peers")?,
    };
    let node = CmNode::start(config.clone(), bind(&listen, "--listen").await?).await?;
    let data_dir = config.data_dir.display().to_string();
    let metrics_addr = metrics.as_ref().map(|m| m.addr.to_string());
    if args.json {
        let ready = serde_json::json!({"event": "ready", "id": config.id, "listen": node.addr.to_string(),
            "data_dir": data_dir, "metrics": metrics_addr});
        println!("{ready}");
    } else {
        let metrics = metrics_addr.map_or(String::new(), |a| format!(", metrics on http://{a}/metrics"));
        println!("CM node {} serving on {} (data dir {data_dir}{metrics})", config.id, node.addr);
    }
    tokio::select! {
        _ = shutdown_signal() => {}
        // A node whose Raft core died (a failed sync, a panic) must not linger.
        why = node.failed() => bail!("CM node {} stopped: {why}", config.id),
    }
    eprintln!("CM node {} stopping", config.id);
    node.stop_gracefully().await;
    Ok(())
}

/// Binds `addr` (the value of `flag`), naming both in the error.
async fn bind(addr: &str, flag: &str) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} ({flag})"))
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn run_client(args: ClientArgs) -> Result<()> {
    let out = Output { json: args.json };
    let metrics = match &args.metrics_listen {
        Some(addr) => Some(MetricsServer::start(bind(addr, "--metrics-listen").await?)?),
        None => None,
    };
    let started = async {
        let config = ClientConfig {
            cms: parse_addrs(&args.cm)?,
            listen: args.listen,
            advertise: args.advertise,
            follow_hints: args.follow_hints,
            max_page_bytes: args.max_page_bytes,
            op_timeout: Duration::from_millis(args.timeout_ms),
            record_grants: false,
            security: args.security.load()?,
            unsafe_ignore_lease: args.unsafe_ignore_lease,
            unsafe_late_install: args.unsafe_late_install,
            peer_channels: None,
        };
        Client::start(config).await
    };
    let client = match started.await {
        Ok(client) => client,
        Err(err) => {
            if out.json {
                out.event(&Event::Error { error: err.to_string() });
            }
            return Err(err.into());
        }
    };
    let history = args.history_file.or_else(repl::default_history_file);
    let metrics_addr = metrics.as_ref().map(|m| m.addr.to_string());
    repl::run(client, LineSource::stdin(args.json, history), out, metrics_addr).await?;
    Ok(())
}

async fn run_status(args: StatusArgs) -> Result<()> {
    let addrs = parse_addrs(&args.cm)?;
    let channels = ivy_raft::rpc::Channels::new(ivy_raft::client::STATUS_TIMEOUT, args.security.load()?);
    let rpc = ivy_raft::rpc::ManagerClient::new(channels.clone());
    let mut report = ivy_raft::client::status_of(&rpc, &addrs).await;
    report.members = ops::members_for_status(&addrs, channels).await;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{report}");
    }
    if !report.ok {
        bail!("{}", not_serving(&report));
    }
    Ok(())
}

/// Why `ivy status` exits 1: no node serves faults. A node asked alone is named
/// with its role (a cut-off leader still says it leads, and does not serve).
fn not_serving(report: &ivy_raft::status::StatusReport) -> String {
    match &report.cm[..] {
        [node] => match &node.status {
            Some(s) => format!(
                "CM node {} at {} is not serving ({}, term {}): only a leader a majority acknowledged within an election timeout serves",
                s.id,
                node.addr,
                s.role.name(),
                s.term
            ),
            None => format!("CM node at {} did not answer", node.addr),
        },
        _ => "no CM node is the leader".into(),
    }
}

async fn run_pages(args: PagesArgs) -> Result<()> {
    let cm = CmConn::new(parse_addrs(&args.cm)?, CLIENT_RPC_TIMEOUT, DEFAULT_OP_TIMEOUT, args.security.load()?)?;
    for name in &args.pages {
        ivy_raft::protocol::PageName::new(name)?;
    }
    loop {
        let report = cm.pages(&args.pages).await?;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!("{report}");
        }
        let Some(every) = args.watch else { return Ok(()) };
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(every)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        if !args.json {
            println!();
        }
    }
}

async fn run_evict(args: EvictArgs) -> Result<()> {
    let cm = CmConn::new(parse_addrs(&args.cm)?, CLIENT_RPC_TIMEOUT, DEFAULT_OP_TIMEOUT, args.security.load()?)?;
    let removal = cm.evict(args.client).await?;
    println!(
        "evicted client {}: {} pages passed to a copy holder, {} lost",
        args.client, removal.promoted, removal.lost
    );
    Ok(())
}

async fn run_flood(args: FloodArgs) -> Result<()> {
    let config = FloodConfig {
        cms: parse_addrs(&args.cm)?,
        duration: args.duration,
        workers: args.workers as usize,
        security: args.security.load()?,
    };
    let report = flood::run(&config).await?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

async fn run_demo(args: DemoArgs) -> Result<()> {
    let work = Workload { clients: args.clients as usize, ops: args.ops as usize, ..Workload::original() };
    let mode = args.mode.cluster_mode();
    let cms = match mode.mode {
        ReplicationMode::Raft => "3 CM nodes (Raft)".to_string(),
        ReplicationMode::Heartbeat => {
            format!("primary + backup CM (heartbeat, pulse {} ms)", mode.pulse.as_millis())
        }
    };
    println!("ivy demo: {cms}, {} clients x {} random reads/writes on P1..P10, no sleeps", work.clients, work.ops);
    let reports = demo::run(mode, &work).await?;
    let failed: usize = reports.iter().map(|r| r.failed).sum();
    if failed > 0 && mode.mode == ReplicationMode::Heartbeat {
        bail!("{failed} operations failed: the heartbeat baseline loses what changed after the backup's last copy");
    }
    if failed > 0 {
        bail!("{failed} operations failed");
    }
    Ok(())
}

async fn run_chaos(args: ChaosArgs) -> Result<()> {
    let config = ChaosConfig {
        bin: std::env::current_exe().context("locating the ivy binary")?,
        mode: args.mode,
        duration: args.duration,
        seed: args.seed,
        clients: args.clients as usize,
        workers: args.workers as usize,
        pages: args.pages as usize,
        read_ratio: args.read_ratio,
        faults: if args.no_faults { Vec::new() } else { args.faults },
        fault_gap_ms: args.fault_gap_ms,
        out: args.out,
        pulse_ms: args.pulse_ms,
        client_lease_ms: args.client_lease_ms,
        client_timeout_ms: args.client_timeout_ms,
        unsafe_skip_invalidation: args.unsafe_skip_invalidation,
        unsafe_ignore_lease: args.unsafe_ignore_lease,
        unsafe_late_install: args.unsafe_late_install,
        unsafe_skip_sync: args.unsafe_skip_sync,
        unsafe_rejoin_empty: args.unsafe_rejoin_empty,
        snapshot_every: args.snapshot_every,
    };
    let report = match args.net {
        ChaosNet::Proxy => chaos::run(&config).await?,
        ChaosNet::Netns => chaos::netns_run::run(&config, args.cut_hold_ms).await?,
    };
    println!("{report}");
    println!("history: {}", config.out.join("history.jsonl").display());
    if !report.clean {
        bail!("the chaos run found violations (see {})", config.out.join("report.json").display());
    }
    Ok(())
}

async fn run_bench(args: BenchArgs) -> Result<()> {
    if let Some(path) = &args.replot {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let results: Vec<bench::RunResult> =
            serde_json::from_str(&text).with_context(|| format!("{} is not a bench results.json", path.display()))?;
        bench::write_all(&args.out, &results)?;
        println!("{}", bench::output_markdown(&results));
        return Ok(());
    }
    let bin = std::env::current_exe().context("locating the ivy binary")?;
    let cm_args: Vec<String> = args.cm_args.split_whitespace().map(str::to_string).collect();
    if args.suite == Suite::Idle {
        let cfg = bench::idle::IdleConfig {
            duration_s: args.duration.unwrap_or(Duration::from_secs(300)).as_secs().max(1),
            clients: args.idle_clients as usize,
            burners: args.burners as usize,
            cm_args,
        };
        let result = bench::idle::run(&bin, &args.out, &cfg).await?;
        println!("{}", bench::idle::text(&result));
        println!("results and logs: {}", args.out.display());
        return Ok(());
    }
    if args.suite == Suite::FailoverProcs {
        let cfg = bench::procs::ProcsConfig {
            kills: args.kills as usize,
            procs: args.procs as usize,
            down_ms: args.down_ms,
            settle_ms: args.settle_ms,
            cm_args,
            ..Default::default()
        };
        let result = bench::procs::run(&bin, &args.out, &cfg).await?;
        println!("{}", bench::procs::text(&result));
        println!("results and logs: {}", args.out.display());
        return Ok(());
    }
    let custom = Workload {
        label: "custom".into(),
        clients: args.clients as usize,
        pages: args.pages as usize,
        ops: args.ops as usize,
        read_ratio: args.read_ratio,
        duration_ms: args.duration.map(|d| d.as_millis().max(1) as u64),
        repeat: args.repeat as usize,
    };
    let plan: Vec<(Workload, Vec<Scenario>)> = match args.suite {
        Suite::Custom => vec![(custom, args.scenario.clone())],
        Suite::FailoverProcs | Suite::Idle => unreachable!("handled above"),
        Suite::Readme => vec![
            (Workload::original(), Scenario::all()),
            (Workload { label: "failover".into(), ops: 300, ..Workload::original() }, Scenario::all()),
            (Workload::timeline(), vec![Scenario::None, Scenario::KillRestartMany]),
            (
                Workload {
                    label: "scale".into(),
                    clients: 100,
                    pages: 1000,
                    ops: 100,
                    repeat: SCALE_ROUNDS,
                    ..Workload::original()
                },
                vec![Scenario::None],
            ),
            (
                Workload { label: "read-heavy".into(), ops: 500, read_ratio: 0.9, ..Workload::original() },
                vec![Scenario::None],
            ),
        ],
    };
    let config = BenchConfig { bin, out: args.out.clone(), pulse_ms: args.pulse_ms };
    let results = bench::run_plan(&config, &plan, &args.mode).await?;
    let summary = bench::write_all(&args.out, &results)?;
    println!("{summary}");
    println!("{}", bench::output_markdown(&results));
    println!("results, plots and logs: {}", args.out.display());
    Ok(())
}
