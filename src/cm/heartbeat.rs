//! The heartbeat baseline's messages: the backup's pulse, the takeover with
//! CHANGE_CM to every client, and a restarted primary's IM_BACK.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::replication::heartbeat::{HeartbeatReplica, Role};
use crate::rpc::pb::heartbeat_client::HeartbeatClient;
use crate::rpc::pb::page_holder_client::PageHolderClient;
use crate::rpc::{self, pb, Channels};

/// Longest wait for a pulse answer; a pulse not answered in time is missed.
pub const MAX_PULSE_TIMEOUT: Duration = Duration::from_millis(500);

/// The `Heartbeat` gRPC service of one node of the pair.
pub struct HeartbeatService {
    replica: Arc<HeartbeatReplica>,
}

impl HeartbeatService {
    /// Serves pulses and hand-backs for `replica`.
    pub fn new(replica: Arc<HeartbeatReplica>) -> Self {
        HeartbeatService { replica }
    }

    #[allow(clippy::result_large_err)]
    fn reply(&self) -> Result<Response<pb::PulseReply>, Status> {
        let (version, directory) = self.replica.snapshot().map_err(|e| rpc::status_from_error(&e))?;
        let role = self.replica.role().name().to_string();
        Ok(Response::new(pb::PulseReply { version, directory, role }))
    }
}

#[tonic::async_trait]
impl pb::heartbeat_server::Heartbeat for HeartbeatService {
    async fn pulse(&self, _req: Request<pb::PulseRequest>) -> Result<Response<pb::PulseReply>, Status> {
        self.reply()
    }

    async fn im_back(&self, req: Request<pb::PulseRequest>) -> Result<Response<pb::PulseReply>, Status> {
        let reply = self.reply()?;
        self.replica.step_down();
        tracing::info!("primary {} is back: handed the title back, polling again", req.into_inner().from);
        Ok(reply)
    }
}

/// The pulse timeout for a given pulse period.
pub fn pulse_timeout(pulse: Duration) -> Duration {
    pulse.min(MAX_PULSE_TIMEOUT)
}

/// The backup's loop: copy the primary's directory every `pulse`; on a missed
/// pulse, take over and tell every client. Runs until the task is aborted.
pub async fn poll_primary(replica: Arc<HeartbeatReplica>, my_addr: String, pulse: Duration, channels: Channels) {
    let (primary, addr) = replica.other();
    let mut ticks = tokio::time::interval(pulse);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if replica.role() != Role::Backup {
            continue;
        }
        match pull(&channels, &addr, replica.id(), pulse, false).await {
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
                change_cm(&replica, &my_addr, &channels).await;
            }
        }
    }
}

/// A restarted primary takes the backup's directory (IM_BACK) before it serves;
/// with no backup answering it starts empty. Then it tells every client.
pub async fn reclaim(replica: &HeartbeatReplica, my_addr: &str, pulse: Duration, channels: &Channels) {
    let (backup, addr) = replica.other();
    match pull(channels, &addr, replica.id(), pulse, true).await {
        Ok(reply) => {
            if let Err(err) = replica.install(reply.version, &reply.directory) {
                tracing::warn!("directory from backup {backup}: {err}");
            }
            tracing::info!("took the directory (version {}) from backup {backup} ({})", reply.version, reply.role);
        }
        Err(err) => tracing::info!("backup {backup} did not answer ({err}); starting with an empty directory"),
    }
    replica.claim();
    change_cm(replica, my_addr, channels).await;
}

async fn pull(
    channels: &Channels,
    addr: &str,
    from: u64,
    pulse: Duration,
    im_back: bool,
) -> Result<pb::PulseReply, Error> {
    let mut client = HeartbeatClient::new(channels.get(addr)?).max_decoding_message_size(super::MAX_MESSAGE_BYTES);
    let mut req = Request::new(pb::PulseRequest { from });
    req.set_timeout(pulse_timeout(pulse));
    let reply = if im_back { client.im_back(req).await } else { client.pulse(req).await };
    reply.map(|r| r.into_inner()).map_err(|s| rpc::error_from_status(&s, addr))
}

/// CHANGE_CM: tells every registered client, best effort and in parallel, to send
/// its faults to `my_addr`.
async fn change_cm(replica: &HeartbeatReplica, my_addr: &str, channels: &Channels) {
    let addrs: Vec<String> = {
        let dir = replica.directory();
        let dir = dir.read().unwrap_or_else(|e| e.into_inner());
        dir.clients().map(|(_, c)| c.addr.clone()).collect()
    };
    let mut calls = JoinSet::new();
    for addr in addrs {
        let Ok(channel) = channels.get(&addr) else {
            continue;
        };
        let req = pb::ChangeCmRequest { addr: my_addr.to_string() };
        calls.spawn(async move { PageHolderClient::new(channel).change_cm(Request::new(req)).await });
    }
    let (mut told, mut failed) = (0, 0);
    while let Some(done) = calls.join_next().await {
        match done {
            Ok(Ok(_)) => told += 1,
            _ => failed += 1,
        }
    }
    tracing::info!("CHANGE_CM to {my_addr}: {told} clients told, {failed} did not answer");
}
