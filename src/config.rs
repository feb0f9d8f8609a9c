//! Typed settings the CLI and the nodes share: the replication mode, peer
//! lists and address lists, parsed and validated once.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// How the CM directory is replicated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ReplicationMode {
    /// Committed through Raft on every CM node and kept on disk (synced) there.
    #[default]
    Raft,
    /// The original primary/backup design: the backup copies the primary's
    /// directory every pulse (the baseline; loses changes on failover).
    Heartbeat,
}

impl ReplicationMode {
    /// The mode's name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            ReplicationMode::Raft => "raft",
            ReplicationMode::Heartbeat => "heartbeat",
        }
    }
}

impl fmt::Display for ReplicationMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The default CM peers: three nodes on loopback.
pub const DEFAULT_PEERS: &str = "1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103";

/// The default CM addresses a client tries.
pub const DEFAULT_CMS: &str = "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103";

/// Parses `1=host:port,2=host:port,...` into ids and addresses.
pub fn parse_peers(s: &str) -> Result<BTreeMap<u64, String>, Error> {
    let mut peers = BTreeMap::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let bad = || Error::InvalidConfig(format!("peer {item:?} is not ID=HOST:PORT"));
        let (id, addr) = item.split_once('=').ok_or_else(bad)?;
        let id: u64 = id.trim().parse().map_err(|_| bad())?;
        let addr = parse_addr(addr.trim())?;
        if id == 0 || peers.insert(id, addr).is_some() {
            return Err(Error::InvalidConfig(format!("peer id {id} is zero or repeated")));
        }
    }
    if peers.is_empty() {
        return Err(Error::InvalidConfig("no peers given".into()));
    }
    Ok(peers)
}

/// Parses a comma-separated list of `host:port` addresses.
pub fn parse_addrs(s: &str) -> Result<Vec<String>, Error> {
    let addrs: Vec<String> =
        s.split(',').map(str::trim).filter(|a| !a.is_empty()).map(parse_addr).collect::<Result<_, _>>()?;
    if addrs.is_empty() {
        return Err(Error::InvalidConfig("no CM address given".into()));
    }
    Ok(addrs)
}

/// Checks `s` is `HOST:PORT` (a name or an address, and a port number).
pub fn parse_addr(s: &str) -> Result<String, Error> {
    let (host, port) =
        s.rsplit_once(':').ok_or_else(|| Error::InvalidConfig(format!("address {s:?} is not HOST:PORT")))?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(Error::InvalidConfig(format!("address {s:?} is not HOST:PORT")));
    }
    Ok(s.to_string())
}

/// The node id of a host named `<anything>-N` (a StatefulSet pod `ivy-cm-N`):
/// N+1, which must be a key of `peers`.
pub fn id_from_hostname(host: &str, peers: &BTreeMap<u64, String>) -> Result<u64, Error> {
    let bad = |why: String| Error::InvalidConfig(format!("--id-from-hostname: host name {host:?} {why}"));
    let (_, ordinal) = host.trim().rsplit_once('-').ok_or_else(|| bad("has no -N suffix".into()))?;
    let n: u64 = ordinal.parse().map_err(|_| bad(format!("ends in -{ordinal}, not -N with N a number")))?;
    let id = n.checked_add(1).ok_or_else(|| bad("has an ordinal too large".into()))?;
    if !peers.contains_key(&id) {
        let ids: Vec<_> = peers.keys().collect();
        return Err(bad(format!("gives node id {id} (ordinal {n} + 1), which is not among the peers {ids:?}")));
    }
    Ok(id)
}

/// This machine's host name (in Kubernetes, the pod's name).
pub fn hostname() -> Result<String, Error> {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    let name = kernel.or_else(|| std::env::var("HOSTNAME").ok()).map(|h| h.trim().to_string());
    name.filter(|h| !h.is_empty()).ok_or_else(|| Error::InvalidConfig("cannot read this machine's host name".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers() {
        let p = parse_peers(DEFAULT_PEERS).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[&2], "127.0.0.1:7102");
        assert!(parse_peers("1=a").is_err());
        assert!(parse_peers("x=127.0.0.1:1").is_err());
        assert!(parse_peers("1=127.0.0.1:1,1=127.0.0.1:2").is_err());
        assert!(parse_peers("").is_err());
    }

    #[test]
    fn node_id_from_a_statefulset_pod_name() {
        let peers = parse_peers(DEFAULT_PEERS).unwrap();
        assert_eq!(id_from_hostname("ivy-cm-0", &peers).unwrap(), 1);
        assert_eq!(id_from_hostname("ivy-cm-2\n", &peers).unwrap(), 3);
        let err = |h: &str| id_from_hostname(h, &peers).unwrap_err().to_string();
        assert!(err("ivy-cm-3").contains("node id 4"), "{}", err("ivy-cm-3"));
        assert!(err("cmhost").contains("no -N suffix"));
        assert!(err("ivy-cm-x").contains("not -N"));
        assert!(err("ivy-cm-18446744073709551615").contains("too large"));
    }

    #[test]
    fn addrs() {
        assert_eq!(parse_addrs(DEFAULT_CMS).unwrap().len(), 3);
        assert!(parse_addrs("localhost").is_err());
        assert!(parse_addrs("127.0.0.1:99999").is_err());
    }
}
