//! What a CM node says about itself, and the `ivy status` report built from it.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::ReplicationMode;

/// A CM node's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Raft leader: serves faults.
    Leader,
    /// Raft follower.
    #[default]
    Follower,
    /// Raft candidate (an election is under way).
    Candidate,
    /// Raft learner (replicated to, not voting).
    Learner,
    /// Raft stopped.
    Shutdown,
    /// Heartbeat primary: serves faults.
    Primary,
    /// Heartbeat backup: copies the primary's directory every pulse.
    Backup,
    /// Heartbeat backup that took over after a missed pulse: serves faults.
    ActingPrimary,
}

impl Role {
    /// The role's name, as `ivy status` shows it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
            Role::Shutdown => "shutdown",
            Role::Primary => "primary",
            Role::Backup => "backup",
            Role::ActingPrimary => "acting-primary",
        }
    }

    /// Parses a name given by [`Role::name`].
    pub fn parse(name: &str) -> Option<Role> {
        const ALL: [Role; 8] = [
            Role::Leader,
            Role::Follower,
            Role::Candidate,
            Role::Learner,
            Role::Shutdown,
            Role::Primary,
            Role::Backup,
            Role::ActingPrimary,
        ];
        ALL.into_iter().find(|r| r.name() == name)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The leader a node knows of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRef {
    /// Its node id.
    pub id: u64,
    /// Its address, as this node's membership names it.
    pub addr: String,
}

/// A registered client as a CM node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientLease {
    /// The client's id.
    pub id: u64,
    /// Where it serves its pages.
    pub addr: String,
    /// Time since the leader last heard a keepalive from it, ms (leader only).
    pub keepalive_age_ms: Option<u64>,
}

/// One CM node's view of itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Node id.
    pub id: u64,
    /// Its role.
    pub role: Role,
    /// True when this node serves faults.
    pub serving: bool,
    /// Raft term (0 in heartbeat mode).
    pub term: u64,
    /// Last log index (heartbeat mode: directory version).
    pub last_log_index: u64,
    /// Applied index (heartbeat mode: directory version).
    pub applied_index: u64,
    /// The leader this node knows.
    pub leader: Option<LeaderRef>,
    /// How the directory is replicated.
    pub mode: ReplicationMode,
    /// Heartbeat backup: age of its last copy of the directory, ms.
    pub last_sync_ms: Option<u64>,
    /// Pages in the directory as this node has it.
    pub pages: u64,
    /// Registered clients as this node has it.
    pub clients: u64,
    /// The registered clients, with their lease as the leader sees it.
    pub client_list: Vec<ClientLease>,
    /// Syncs (`fdatasync`/`fsync`) its store made since the node started (0 in
    /// heartbeat mode, which stores nothing).
    #[serde(default)]
    pub syncs: u64,
    /// The node's version.
    #[serde(default)]
    pub version: String,
    /// Time since the node started, ms.
    #[serde(default)]
    pub uptime_ms: u64,
    /// Bytes in its data dir (Raft mode).
    #[serde(default)]
    pub data_dir_bytes: Option<u64>,
}

impl NodeStatus {
    /// Age of the backup's last copy, when it has one.
    pub fn last_sync(&self) -> Option<Duration> {
        self.last_sync_ms.map(Duration::from_millis)
    }
}

/// One line of `ivy status`: a node that answered, or why it did not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    /// The address asked.
    pub addr: String,
    /// True when the node answered.
    pub reachable: bool,
    /// Its answer.
    #[serde(flatten)]
    pub status: Option<NodeStatus>,
    /// Why it did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The status of every CM node asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// True when some node serves faults.
    pub ok: bool,
    /// One report per address, in the order asked.
    pub cm: Vec<NodeReport>,
    /// The membership and each member's replication, from the leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<crate::members::Members>,
}

impl StatusReport {
    /// A report from the nodes' answers.
    pub fn new(cm: Vec<NodeReport>) -> Self {
        let ok = cm.iter().any(|n| n.status.as_ref().is_some_and(|s| s.serving));
        StatusReport { ok, cm, members: None }
    }

    /// The id of a node that says it serves faults.
    pub fn serving(&self) -> Option<u64> {
        self.cm.iter().filter_map(|n| n.status.as_ref()).find(|s| s.serving).map(|s| s.id)
    }
}

impl fmt::Display for StatusReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let row = |cells: [&str; 11]| {
            let [id, addr, role, term, last, applied, sync, version, uptime, size, reach] = cells;
            format!(
                "{id:<4} {addr:<22} {role:<15} {term:>6} {last:>9} {applied:>9} {sync:>9} {version:>8} {uptime:>9} \
                 {size:>9}  {reach}"
            )
        };
        let head =
            ["id", "address", "role", "term", "last_log", "applied", "last_sync", "version", "uptime", "data_dir"];
        let [a, b, c, d, e, g, h, i, j, k] = head;
        write!(f, "{}", row([a, b, c, d, e, g, h, i, j, k, "reachable"]))?;
        for n in &self.cm {
            let line = match &n.status {
                Some(s) => {
                    let sync = s.last_sync_ms.map_or("-".to_string(), |ms| format!("{ms} ms"));
                    let [id, term, last, applied] =
                        [s.id, s.term, s.last_log_index, s.applied_index].map(|v| v.to_string());
                    let uptime = format!("{:.1} s", s.uptime_ms as f64 / 1000.0);
                    let size = s.data_dir_bytes.map_or("-".to_string(), human_bytes);
                    let cells = [&id, &n.addr, s.role.name(), &term, &last, &applied, &sync, &s.version, &uptime];
                    let [a, b, c, d, e, g, h, i, j] = cells;
                    row([a, b, c, d, e, g, h, i, j, &size, "yes"])
                }
                None => {
                    let why = format!("no ({})", n.error.as_deref().unwrap_or("no answer"));
                    row(["-", &n.addr, "-", "-", "-", "-", "-", "-", "-", "-", &why])
                }
            };
            write!(f, "\n{line}")?;
        }
        if let Some(members) = &self.members {
            write!(f, "\n\nmembership (voters {:?}, learners {:?}):\n{members}", members.voters(), members.learners())?;
        }
        write_clients(f, self)
    }
}

/// `bytes` as KiB or MiB.
fn human_bytes(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / f64::from(1 << 20)),
        b => format!("{:.0} KiB", b as f64 / 1024.0),
    }
}

/// The serving node's client table, when one served.
fn write_clients(f: &mut fmt::Formatter<'_>, report: &StatusReport) -> fmt::Result {
    let serving = report.cm.iter().filter_map(|n| n.status.as_ref()).find(|s| s.serving);
    let Some(leader) = serving.filter(|s| !s.client_list.is_empty()) else {
        return Ok(());
    };
    write!(f, "\n\n{:<8} {:<22} {:>14}", "client", "address", "last keepalive")?;
    for c in &leader.client_list {
        let age = c.keepalive_age_ms.map_or("-".to_string(), |ms| format!("{ms} ms ago"));
        write!(f, "\n{:<8} {:<22} {:>14}", c.id, c.addr, age)?;
    }
    Ok(())
}

/// What the directory says of one page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PageState {
    /// Owned by a registered client.
    Live,
    /// Owned, and a fault on it holds its lock right now.
    Faulting,
    /// Its only copy left with a removed client (`owner` names it).
    Lost,
    /// No such page.
    Absent,
}

/// One page of the directory, for `ivy pages`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageView {
    /// The page.
    pub page: String,
    /// Its state.
    pub state: PageState,
    /// The owner's id (for a lost page, the client it was lost with; 0: absent).
    pub owner: u64,
    /// The owner's address, when registered.
    pub owner_addr: Option<String>,
    /// Clients holding read-only copies.
    pub copy_set: Vec<u64>,
    /// The page's epoch.
    pub epoch: u64,
}

/// The directory as a leader answered it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PagesReport {
    /// The pages, in name order.
    pub pages: Vec<PageView>,
    /// Pages left out of a long answer.
    pub more: u64,
}

impl fmt::Display for PagesReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.pages.is_empty() {
            return write!(f, "(no pages)");
        }
        write!(f, "{:<16} {:<9} {:>6}  {:<30} copy set", "page", "state", "epoch", "owner")?;
        for p in &self.pages {
            let owner = match (p.state, &p.owner_addr) {
                (PageState::Absent, _) => "-".to_string(),
                (PageState::Lost, _) => format!("(lost with client {})", p.owner),
                (_, Some(addr)) => format!("client {} at {addr}", p.owner),
                (_, None) => format!("client {}", p.owner),
            };
            let copies = p.copy_set.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
            let state = format!("{:?}", p.state).to_lowercase();
            write!(
                f,
                "\n{:<16} {:<9} {:>6}  {:<30} {}",
                p.page,
                state,
                p.epoch,
                owner,
                if copies.is_empty() { "-" } else { &copies }
            )?;
        }
        if self.more > 0 {
            write!(f, "\n... and {} more pages", self.more)?;
        }
        Ok(())
    }
}
