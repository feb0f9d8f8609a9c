//! The heartbeat baseline's messages: the backup's pulse, the takeover with
//! CHANGE_CM to every client, and a restarted primary's IM_BACK.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use super::HeartbeatReplica;
use crate::error::Error;
use crate::rpc::{HeartbeatApi, HeartbeatClient, HolderClient, HolderRef, Pulse};
use crate::status::Role;

/// Longest wait for a pulse answer; a pulse not answered in time is missed.
pub const MAX_PULSE_TIMEOUT: Duration = Duration::from_millis(500);

/// The pulse timeout for a given pulse period.
pub fn pulse_timeout(pulse: Duration) -> Duration {
    pulse.min(MAX_PULSE_TIMEOUT)
}

/// The partner's requests to one node of the pair.
pub struct PulseHandler {
    replica: Arc<HeartbeatReplica>,
}

impl PulseHandler {
    /// Serves pulses and hand-backs for `replica`.
    pub fn new(replica: Arc<HeartbeatReplica>) -> Self {
        PulseHandler { replica }
    }

    fn answer(&self) -> Result<Pulse, Error> {
        let (version, directory) = self.replica.snapshot()?;
        Ok(Pulse { version, directory, role: self.replica.role().name().to_string() })
    }
}

#[crate::rpc::async_trait]
impl HeartbeatApi for PulseHandler {
    async fn pulse(&self, _from: u64) -> Result<Pulse, Error> {
        self.answer()
    }

    async fn im_back(&self, from: u64) -> Result<Pulse, Error> {
        let answer = self.answer()?;
        self.replica.step_down();
        tracing::info!("primary {from} is back: handed the title back, polling again");
        Ok(answer)
    }
}

/// What the pair's messages travel on.
#[derive(Clone)]
pub struct Links {
    /// To the partner.
    pub partner: HeartbeatClient,
    /// To every client (CHANGE_CM).
    pub holders: HolderClient,
}

/// The backup's loop: copy the primary's directory every `pulse`; on a missed
/// pulse, take over and tell every client. Runs until the task is aborted.
pub async fn poll_primary(replica: Arc<HeartbeatReplica>, my_addr: String, pulse: Duration, links: Links) {
    let (primary, addr) = replica.other();
    let mut ticks = tokio::time::interval(pulse);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if replica.role() != Role::Backup {
            continue;
        }
        match links.partner.pull(&addr, replica.id(), pulse_timeout(pulse), false).await {
            Ok(reply) => {
                if let Err(err) = replica.install(reply.version, &reply.directory) {
                    tracing::warn!("pulse from primary {primary}: {err}");
                }
            }
            Err(err) => {
                let age = replica.take_over();
                let age = age.map_or("no copy at all".to_string(), |a| format!("a copy {} ms old", a.as_millis()));
                tracing::warn!(
                    "primary {primary} missed a pulse ({err}); taking over with {age}: changes acknowledged after it are lost"
                );
                change_cm(&replica, &my_addr, &links.holders).await;
            }
        }
    }
}

/// A restarted primary takes the backup's directory (IM_BACK) before it serves;
/// with no backup answering it starts empty. Then it tells every client.
pub async fn reclaim(replica: &HeartbeatReplica, my_addr: &str, pulse: Duration, links: &Links) {
    let (backup, addr) = replica.other();
    match links.partner.pull(&addr, replica.id(), pulse_timeout(pulse), true).await {
        Ok(reply) => {
            if let Err(err) = replica.install(reply.version, &reply.directory) {
                tracing::warn!("directory from backup {backup}: {err}");
            }
            tracing::info!("took the directory (version {}) from backup {backup} ({})", reply.version, reply.role);
        }
        Err(err) => tracing::info!("backup {backup} did not answer ({err}); starting with an empty directory"),
    }
    replica.claim();
    change_cm(replica, my_addr, &links.holders).await;
}

/// CHANGE_CM: tells every registered client, best effort and in parallel, to send
/// its faults to `my_addr`.
async fn change_cm(replica: &HeartbeatReplica, my_addr: &str, holders: &HolderClient) {
    let clients: Vec<HolderRef> = {
        let dir = replica.directory();
        let dir = dir.read().unwrap_or_else(|e| e.into_inner());
        dir.clients().map(|(id, c)| HolderRef { id: *id, addr: c.addr.clone() }).collect()
    };
    let mut calls = JoinSet::new();
    for client in clients {
        let (holders, my_addr) = (holders.clone(), my_addr.to_string());
        calls.spawn(async move { holders.change_cm(&client, &my_addr).await });
    }
    let (mut told, mut failed) = (0, 0);
    while let Some(done) = calls.join_next().await {
        match done {
            Ok(Ok(())) => told += 1,
            _ => failed += 1,
        }
    }
    tracing::info!("CHANGE_CM to {my_addr}: {told} clients told, {failed} did not answer");
}
