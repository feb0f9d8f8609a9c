//! The heartbeat baseline's `Heartbeat` service between its two CM nodes: its
//! server adapter, its handler trait and its client.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::convert::{error_from_status, reply};
use super::net::Channels;
use super::pb;
use super::pb::heartbeat_client::HeartbeatClient as PbClient;
use crate::error::Error;

/// Largest pulse accepted: a whole directory.
const MAX_PULSE_BYTES: usize = 64 * 1024 * 1024;

/// A pulse answer: the answering node's directory and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulse {
    /// How many changes the directory has seen.
    pub version: u64,
    /// The encoded directory.
    pub directory: Vec<u8>,
    /// The answering node's role name.
    pub role: String,
}

/// What a heartbeat node does with its partner's requests.
#[tonic::async_trait]
pub trait HeartbeatApi: Send + Sync + 'static {
    /// The backup's poll: answer with the directory.
    async fn pulse(&self, from: u64) -> Result<Pulse, Error>;
    /// A restarted primary reclaims the title (IM_BACK): answer and step down.
    async fn im_back(&self, from: u64) -> Result<Pulse, Error>;
}

/// The tonic server for `api`.
pub(super) fn server(api: Arc<dyn HeartbeatApi>) -> pb::heartbeat_server::HeartbeatServer<Adapter> {
    pb::heartbeat_server::HeartbeatServer::new(Adapter(api)).max_decoding_message_size(MAX_PULSE_BYTES)
}

/// Converts requests, calls the handler, converts answers.
pub(super) struct Adapter(Arc<dyn HeartbeatApi>);

fn pulse_reply(p: Pulse) -> pb::PulseReply {
    pb::PulseReply { version: p.version, directory: p.directory, role: p.role }
}

#[tonic::async_trait]
impl pb::heartbeat_server::Heartbeat for Adapter {
    async fn pulse(&self, req: Request<pb::PulseRequest>) -> Result<Response<pb::PulseReply>, Status> {
        reply(self.0.pulse(req.into_inner().from).await.map(pulse_reply))
    }

    async fn im_back(&self, req: Request<pb::PulseRequest>) -> Result<Response<pb::PulseReply>, Status> {
        reply(self.0.im_back(req.into_inner().from).await.map(pulse_reply))
    }
}

/// Calls to the partner's `Heartbeat` service.
#[derive(Clone)]
pub struct HeartbeatClient {
    channels: Channels,
}

impl HeartbeatClient {
    /// A client reaching partners through `channels`.
    pub fn new(channels: Channels) -> Self {
        HeartbeatClient { channels }
    }

    /// Polls the node at `addr` (or reclaims from it, `im_back`), waiting at most `timeout`.
    pub async fn pull(&self, addr: &str, from: u64, timeout: Duration, im_back: bool) -> Result<Pulse, Error> {
        let mut stub = PbClient::new(self.channels.get(addr)?).max_decoding_message_size(MAX_PULSE_BYTES);
        let mut req = Request::new(pb::PulseRequest { from });
        req.set_timeout(timeout);
        let answer = if im_back { stub.im_back(req).await } else { stub.pulse(req).await };
        let r = answer.map_err(|s| error_from_status(&s, addr))?.into_inner();
        Ok(Pulse { version: r.version, directory: r.directory, role: r.role })
    }
}
