//! The three CM containers as the test sees them: their addresses on the
//! private network (reachable from this host), who leads, and the faults it
//! injects between hosts: a container killed, a container cut off the network.

use std::time::Duration;

use anyhow::{anyhow, Result};
use ivy_raft::client::status_of;
use ivy_raft::rpc::{Channels, ManagerClient};
use ivy_raft::status::StatusReport;
use tokio::time::Instant;

use super::docker::{docker, Project};

/// How long `status` waits for each node.
const STATUS_TIMEOUT: Duration = Duration::from_millis(800);

/// Pause between two looks at the cluster.
const POLL: Duration = Duration::from_millis(100);

/// The CM containers of one project.
pub struct CmContainers {
    /// Container ids of cm1..cm3, by index 0..2.
    pub ids: Vec<String>,
    /// Their gRPC addresses, `PREFIX.1N:7101`.
    pub addrs: Vec<String>,
    rpc: ManagerClient,
}

impl CmContainers {
    /// Looks up the containers of `project`'s services cm1..cm3.
    pub async fn of(project: &Project) -> Result<Self> {
        let mut ids = Vec::new();
        for n in 1..=3 {
            ids.push(project.container(&format!("cm{n}")).await?);
        }
        let addrs = (1..=3).map(|n| format!("{}.1{n}:7101", project.prefix)).collect();
        Ok(CmContainers { ids, addrs, rpc: ManagerClient::new(Channels::new(STATUS_TIMEOUT, Default::default())) })
    }

    /// The CM addresses as a client's `--cm`.
    pub fn cm_list(&self) -> String {
        self.addrs.join(",")
    }

    /// Every node's status, asked from this host.
    pub async fn status(&self) -> StatusReport {
        status_of(&self.rpc, &self.addrs).await
    }

    /// Waits up to `within` for a node other than `not` (1-based) to lead at a
    /// term above `above`; returns (leader id, term).
    pub async fn await_leader(&self, not: Option<u64>, above: u64, within: Duration) -> Result<(u64, u64)> {
        let give_up = Instant::now() + within;
        loop {
            let report = self.status().await;
            let leader = report.cm.iter().filter_map(|n| n.status.as_ref()).find(|s| s.serving);
            if let Some(s) = leader.filter(|s| Some(s.id) != not && s.term > above) {
                return Ok((s.id, s.term));
            }
            if Instant::now() > give_up {
                let not = not.map_or(String::new(), |n| format!(" other than cm{n}"));
                return Err(anyhow!("no leader{not} at a term above {above} within {within:?}:\n{report}"));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits up to `within` until all three answer, agree on one leader and term.
    pub async fn await_agreement(&self, within: Duration) -> Result<(u64, u64)> {
        let give_up = Instant::now() + within;
        loop {
            let report = self.status().await;
            let nodes: Vec<_> = report.cm.iter().filter_map(|n| n.status.as_ref()).collect();
            let leaders: Vec<_> = nodes.iter().filter(|s| s.serving).collect();
            if let ([leader], 3) = (leaders.as_slice(), nodes.len()) {
                let agree =
                    nodes.iter().all(|s| s.term == leader.term && s.leader.as_ref().map(|l| l.id) == Some(leader.id));
                if agree {
                    return Ok((leader.id, leader.term));
                }
            }
            if Instant::now() > give_up {
                return Err(anyhow!("the three nodes did not agree on a leader within {within:?}: {report}"));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `docker kill` node `id` (1-based): its process dies with SIGKILL.
    pub async fn kill(&self, id: u64) -> Result<()> {
        docker(&["kill", self.id_of(id)]).await.map(drop)
    }

    /// `docker start` node `id` again, with its volume and address.
    pub async fn start(&self, id: u64) -> Result<()> {
        docker(&["start", self.id_of(id)]).await.map(drop)
    }

    /// Cuts node `id` off the project's network: a partition between hosts.
    pub async fn disconnect(&self, project: &Project, id: u64) -> Result<()> {
        docker(&["network", "disconnect", &project.network(), self.id_of(id)]).await.map(drop)
    }

    /// Connects node `id` again, at its own address and service name.
    pub async fn reconnect(&self, project: &Project, id: u64) -> Result<()> {
        let ip = format!("{}.1{id}", project.prefix);
        let alias = format!("cm{id}");
        docker(&["network", "connect", "--ip", &ip, "--alias", &alias, &project.network(), self.id_of(id)])
            .await
            .map(drop)
    }

    /// Runs `ivy health --service ivy.Manager` inside node `id`'s container, as
    /// its health check does; true when it exits 0 (SERVING).
    pub async fn ready_inside(&self, id: u64) -> bool {
        let probe = ["exec", self.id_of(id), "/usr/local/bin/ivy", "health", "--service", "ivy.Manager"];
        docker(&probe).await.is_ok()
    }

    fn id_of(&self, id: u64) -> &str {
        &self.ids[(id as usize).saturating_sub(1).min(2)]
    }
}
