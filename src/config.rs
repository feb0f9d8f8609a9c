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
    /// Committed through Raft on every CM node and kept in sled.
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

fn parse_addr(s: &str) -> Result<String, Error> {
    let (host, port) =
        s.rsplit_once(':').ok_or_else(|| Error::InvalidConfig(format!("address {s:?} is not HOST:PORT")))?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(Error::InvalidConfig(format!("address {s:?} is not HOST:PORT")));
    }
    Ok(s.to_string())
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
    fn addrs() {
        assert_eq!(parse_addrs(DEFAULT_CMS).unwrap().len(), 3);
        assert!(parse_addrs("localhost").is_err());
        assert!(parse_addrs("127.0.0.1:99999").is_err());
    }
}
