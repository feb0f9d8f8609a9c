//! Cluster operations from the command line: `ivy member list|add|remove` and
//! `ivy snapshot save|inspect|restore`, over the `Cluster` service.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use ivy_raft::config::{parse_addr, parse_addrs, parse_peers, DEFAULT_CMS};
use ivy_raft::members::{Backup, Members, RESTORE_SEED_FILE};
use ivy_raft::rpc::{Channels, ClusterClient, MEMBERSHIP_CALL_TIMEOUT};
use ivy_raft::Error;

use crate::secure::SecurityArgs;

/// Below this many voters a cluster survives no failure.
pub const FAULT_TOLERANT_VOTERS: usize = 3;

/// How often `member add` looks at the learner's progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// Where the cluster is and how to reach it.
#[derive(Args, Clone)]
pub struct Target {
    /// CM node addresses, comma separated.
    #[arg(long, env = "IVY_CM", default_value = DEFAULT_CMS)]
    pub cm: String,
    #[command(flatten)]
    pub security: SecurityArgs,
}

/// `ivy member ...`.
#[derive(Subcommand)]
pub enum MemberCommand {
    /// List the members: id, address, voter or learner, matched index and lag.
    List {
        #[command(flatten)]
        target: Target,
        /// Print JSON instead of a table.
        #[arg(long, env = "IVY_JSON")]
        json: bool,
    },
    /// Add a node started with `ivy cm --id N --listen ADDR --join`: as a learner,
    /// then, once caught up, as a voter.
    Add {
        /// The new node's id.
        #[arg(long, env = "IVY_MEMBER_ID", value_parser = clap::value_parser!(u64).range(1..))]
        id: u64,
        /// The address the new node serves on (what its `--listen` printed).
        #[arg(long, env = "IVY_MEMBER_ADDR")]
        addr: String,
        /// Add it as a learner only (it replicates, never votes).
        #[arg(long, env = "IVY_MEMBER_LEARNER")]
        learner: bool,
        /// How long the learner may take to catch up, s.
        #[arg(long, env = "IVY_MEMBER_CATCH_UP_S", default_value_t = 60)]
        catch_up_s: u64,
        #[command(flatten)]
        target: Target,
    },
    /// Remove a voter or a learner; a leader hands leadership over first.
    Remove {
        /// The node's id.
        #[arg(long, env = "IVY_MEMBER_ID", value_parser = clap::value_parser!(u64).range(1..))]
        id: u64,
        #[command(flatten)]
        target: Target,
    },
}

/// `ivy snapshot ...`.
#[derive(Subcommand)]
pub enum SnapshotCommand {
    /// Save a consistent backup of the directory, taken on the leader.
    Save {
        /// The backup file to write.
        file: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// Show what a backup file holds.
    Inspect {
        /// The backup file.
        file: PathBuf,
        /// Print JSON (every page with its owner).
        #[arg(long, env = "IVY_JSON")]
        json: bool,
    },
    /// Seed the data dir of one node of a new cluster from a backup; start the
    /// node afterwards with the same --id, --peers and --data-dir.
    Restore {
        /// The backup file.
        file: PathBuf,
        /// The new node's data dir (absent or empty).
        #[arg(long, env = "IVY_DATA_DIR")]
        data_dir: PathBuf,
        /// The new node's id.
        #[arg(long, env = "IVY_ID")]
        id: u64,
        /// The new cluster's nodes as ID=HOST:PORT, comma separated.
        #[arg(long, env = "IVY_PEERS")]
        peers: String,
    },
}

/// The cluster's leader, found by asking the nodes of `target` (and following hints).
struct Leader {
    rpc: ClusterClient,
    addrs: Vec<String>,
}

impl Leader {
    fn new(target: &Target) -> Result<Self> {
        let channels = Channels::new(MEMBERSHIP_CALL_TIMEOUT, target.security.load()?);
        Ok(Leader { rpc: ClusterClient::new(channels), addrs: parse_addrs(&target.cm)? })
    }

    /// The leader's address and its view of the membership; tries for a few
    /// seconds, except when a node refuses this command's credentials (asking
    /// again cannot change that).
    async fn find(&self) -> Result<(String, Members)> {
        let give_up = Instant::now() + Duration::from_secs(10);
        let mut last = None;
        while Instant::now() < give_up {
            let mut tried = Vec::new();
            let mut queue = self.addrs.clone();
            while let Some(addr) = queue.pop() {
                if tried.contains(&addr) {
                    continue;
                }
                tried.push(addr.clone());
                match self.rpc.members(&addr).await {
                    Ok(members) => return Ok((addr, members)),
                    Err(Error::NotLeader { leader: Some((_, hint)) }) => queue.push(hint),
                    Err(err @ Error::Unauthenticated(_)) => bail!("{addr} refused the call: {err}"),
                    Err(err) => last = Some(err),
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("no leader among {:?}: {}", self.addrs, last.map_or("no answer".to_string(), |e| e.to_string()))
    }
}

/// Runs one `ivy member` command.
pub async fn run_member(cmd: MemberCommand) -> Result<()> {
    match cmd {
        MemberCommand::List { target, json } => {
            let (_, members) = Leader::new(&target)?.find().await?;
            if json {
                println!("{}", serde_json::to_string(&members)?);
            } else {
                println!("{members}");
            }
            Ok(())
        }
        MemberCommand::Add { id, addr, learner, catch_up_s, target } => {
            add(&Leader::new(&target)?, id, &parse_addr(&addr)?, learner, Duration::from_secs(catch_up_s)).await
        }
        MemberCommand::Remove { id, target } => remove(&Leader::new(&target)?, id).await,
    }
}

/// Checks the new node answers and waits to join, adds it as a learner, shows
/// its progress until it has caught up, and promotes it.
async fn add(leader: &Leader, id: u64, addr: &str, learner: bool, catch_up: Duration) -> Result<()> {
    let state = leader.rpc.join_state(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "node {id} at {addr} is not reachable ({e}); start it with `ivy cm --id {id} --listen {addr} --join`"
        )
    })?;
    if state.id != id {
        bail!("the node at {addr} is node {}, not node {id}", state.id);
    }
    let (leader_addr, members) = leader.find().await?;
    let member = members.get(id).cloned();
    if state.initialized && member.is_none() {
        bail!(
            "node {id} at {addr} belongs to another cluster (voters {:?}); give it an empty data dir and --join",
            state.voters
        );
    }
    if !state.initialized && !state.join_mode {
        bail!("node {id} at {addr} was not started in join mode; restart it with --join");
    }
    if member.as_ref().is_some_and(|m| m.voter) {
        println!("node {id} is a voter already");
        return Ok(());
    }
    let added = leader.rpc.add_learner(&leader_addr, id, addr).await?;
    println!("node {id} added as a learner at {addr}; catching up to index {}", added.last_log_index);
    wait_caught_up(leader, id, added.last_log_index, catch_up).await?;
    if learner {
        return Ok(());
    }
    let (leader_addr, _) = leader.find().await?;
    let members = leader.rpc.promote(&leader_addr, id).await?;
    println!("node {id} is a voter\n{members}");
    warn_fault_tolerance(&members);
    Ok(())
}

/// Prints the learner's progress until it holds `target`.
async fn wait_caught_up(leader: &Leader, id: u64, target: u64, within: Duration) -> Result<()> {
    let give_up = Instant::now() + within;
    let mut shown = None;
    loop {
        let (_, members) = leader.find().await?;
        let matched = members.get(id).and_then(|m| m.matched);
        if matched != shown {
            let lag = members.lag(id).map_or("-".to_string(), |l| l.to_string());
            println!("  node {id}: matched {} of {} (lag {lag})", matched.unwrap_or(0), members.last_log_index);
            shown = matched;
        }
        if matched.is_some_and(|m| m >= target) {
            return Ok(());
        }
        if Instant::now() > give_up {
            bail!("node {id} did not catch up within {within:?} (it stays a learner; remove it or try again)");
        }
        tokio::time::sleep(PROGRESS_EVERY).await;
    }
}

/// Removes `id`, handing leadership over first when it leads.
async fn remove(leader: &Leader, id: u64) -> Result<()> {
    let (mut leader_addr, mut members) = leader.find().await?;
    let Some(member) = members.get(id) else { bail!("node {id} is not a member") };
    if member.voter && members.voters().len() <= 1 {
        bail!("node {id} is the last voter; a cluster needs at least one");
    }
    if members.leader == id {
        let to = leader.rpc.handover(&leader_addr).await.context("handing leadership over")?;
        println!("node {id} led; handed leadership over to node {to}");
        (leader_addr, members) = leader.find().await?;
        if members.leader == id {
            bail!("node {id} still leads after the hand-over; try again");
        }
    }
    let members = leader.rpc.remove(&leader_addr, id).await?;
    println!("node {id} removed\n{members}");
    warn_fault_tolerance(&members);
    Ok(())
}

fn warn_fault_tolerance(members: &Members) {
    let voters = members.voters().len();
    if voters < FAULT_TOLERANT_VOTERS {
        eprintln!(
            "warning: {voters} voter(s): the cluster stops if any voter fails (no fault tolerance); add voters to get \
             back to {FAULT_TOLERANT_VOTERS}"
        );
    }
}

/// Runs one `ivy snapshot` command.
pub async fn run_snapshot(cmd: SnapshotCommand) -> Result<()> {
    match cmd {
        SnapshotCommand::Save { file, target } => {
            let leader = Leader::new(&target)?;
            let (addr, _) = leader.find().await?;
            let bytes = leader.rpc.save_snapshot(&addr).await?;
            let backup = Backup::decode(&bytes)?;
            write_durably(&file, &bytes)?;
            println!("saved {} from node {}\n{}", file.display(), backup.taken_by, backup.summary());
            Ok(())
        }
        SnapshotCommand::Inspect { file, json } => {
            let backup = read_backup(&file)?;
            if json {
                println!("{}", serde_json::to_string(&backup.summary())?);
            } else {
                println!("{}", backup.summary());
            }
            Ok(())
        }
        SnapshotCommand::Restore { file, data_dir, id, peers } => restore(&file, &data_dir, id, &peers),
    }
}

fn read_backup(file: &Path) -> Result<Backup> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    Backup::decode(&bytes).with_context(|| file.display().to_string())
}

/// Writes the seed into an absent or empty data dir.
fn restore(file: &Path, data_dir: &Path, id: u64, peers: &str) -> Result<()> {
    let parsed = parse_peers(peers)?;
    if !parsed.contains_key(&id) {
        bail!("--id {id} is not among the --peers {:?}", parsed.keys().collect::<Vec<_>>());
    }
    let backup = read_backup(file)?;
    if data_dir.exists() && std::fs::read_dir(data_dir)?.next().is_some() {
        bail!("{} is not empty: restore seeds the data dir of a new node only", data_dir.display());
    }
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    write_durably(&data_dir.join(RESTORE_SEED_FILE), &backup.encode()?)?;
    println!(
        "seeded {} from {} ({} pages, applied index {}); start the node with\n  ivy cm --id {id} --peers {peers} --data-dir {}",
        data_dir.display(),
        file.display(),
        backup.summary().pages,
        backup.applied_index,
        data_dir.display()
    );
    Ok(())
}

/// Writes `bytes` to `path` through a synced temporary file and a rename.
fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// The membership from the leader, for `ivy status` (none when no leader answers).
pub async fn members_for_status(addrs: &[String], channels: Channels) -> Option<Members> {
    let rpc = ClusterClient::new(channels);
    for addr in addrs {
        match rpc.members(addr).await {
            Ok(m) => return Some(m),
            Err(Error::NotLeader { leader: Some((_, hint)) }) => {
                if let Ok(m) = rpc.members(&hint).await {
                    return Some(m);
                }
            }
            Err(_) => {}
        }
    }
    None
}
