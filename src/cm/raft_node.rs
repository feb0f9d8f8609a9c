//! Starting the Raft side of a CM node: the sled store, openraft, the initial
//! membership, and a log line on every role change.

use std::collections::BTreeMap;
use std::time::Duration;

use openraft::BasicNode;

use super::manager::role_name;
use super::replica::RaftReplica;
use super::CmConfig;
use crate::error::Error;
use crate::replication::{commit_deadline, Proposer, Raft, RaftTimers};
use crate::rpc::{Channels, NetworkFactory};
use crate::storage::{self, SharedDirectory};

/// Opens the store in `config.data_dir`, starts openraft and proposes the initial
/// membership on first start; returns the Raft handle, the replica and the directory.
pub async fn start(
    config: &CmConfig,
    timers: &RaftTimers,
    channels: &Channels,
) -> Result<(Raft, RaftReplica, SharedDirectory), Error> {
    let (log_store, state_machine) = open_store(config).await?;
    let dir = state_machine.directory();
    let network = NetworkFactory::new(channels.clone(), config.peers.clone());
    let raft = Raft::new(config.id, timers.config()?, network, log_store, state_machine)
        .await
        .map_err(|e| Error::Storage(format!("raft start: {e}")))?;
    initialize(&raft, &config.peers).await?;
    let deadline = commit_deadline(timers);
    let proposer = Proposer::spawn(raft.clone());
    tokio::spawn(log_role_changes(raft.clone()));
    Ok((raft.clone(), RaftReplica::new(raft, proposer, deadline), dir))
}

/// Logs every change of this node's role or of the leader it knows, until shutdown.
async fn log_role_changes(raft: Raft) {
    let mut metrics = raft.metrics();
    let mut seen = None;
    loop {
        let now = {
            let m = metrics.borrow_and_update();
            (m.state, m.current_leader, m.current_term)
        };
        if seen.map(|(s, l, _)| (s, l)) != Some((now.0, now.1)) {
            let leader = now.1.map_or("none".to_string(), |l| l.to_string());
            tracing::info!("role {}, term {}, leader {leader}", role_name(now.0), now.2);
            seen = Some(now);
        }
        if now.0 == openraft::ServerState::Shutdown || metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Opens the sled store, waiting a little for a previous run in this process to release it.
async fn open_store(config: &CmConfig) -> Result<(storage::LogStore, storage::StateMachine), Error> {
    const TRIES: u32 = 50;
    const PAUSE: Duration = Duration::from_millis(100);
    let mut tries = 0;
    loop {
        match storage::open(&config.data_dir) {
            Err(err) if tries < TRIES && err.to_string().contains("in use") => {
                tries += 1;
                tokio::time::sleep(PAUSE).await;
            }
            opened => return opened,
        }
    }
}

/// Proposes the initial membership if this node's store is empty.
async fn initialize(raft: &Raft, peers: &BTreeMap<u64, String>) -> Result<(), Error> {
    let fatal = |e: openraft::error::Fatal<u64>| Error::Storage(format!("raft: {e}"));
    if raft.is_initialized().await.map_err(fatal)? {
        return Ok(());
    }
    let members: BTreeMap<u64, BasicNode> =
        peers.iter().map(|(id, addr)| (*id, BasicNode { addr: addr.clone() })).collect();
    if let Err(err) = raft.initialize(members).await {
        tracing::info!("initial membership not proposed by this node: {err}");
    }
    Ok(())
}
