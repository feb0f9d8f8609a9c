//! Parsing of the typed values the CLI takes (peer lists, address lists).

use std::collections::BTreeMap;

use crate::error::Error;

/// The default CM peers: three nodes on loopback.
pub const DEFAULT_PEERS: &str = "1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103";

/// The default CM addresses a client tries.
pub const DEFAULT_CMS: &str = "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103";

/// Parses `1=host:port,2=host:port,...` into ids and addresses.
pub fn parse_peers(s: &str) -> Result<BTreeMap<u64, String>, Error> {
    let mut peers = BTreeMap::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let bad = || Error::Malformed(format!("peer {item:?} is not ID=HOST:PORT"));
        let (id, addr) = item.split_once('=').ok_or_else(bad)?;
        let id: u64 = id.trim().parse().map_err(|_| bad())?;
        let addr = parse_addr(addr.trim())?;
        if id == 0 || peers.insert(id, addr).is_some() {
            return Err(Error::Malformed(format!("peer id {id} is zero or repeated")));
        }
    }
    if peers.is_empty() {
        return Err(Error::Malformed("no peers given".into()));
    }
    Ok(peers)
}

/// Parses a comma-separated list of `host:port` addresses.
pub fn parse_addrs(s: &str) -> Result<Vec<String>, Error> {
    let addrs: Vec<String> =
        s.split(',').map(str::trim).filter(|a| !a.is_empty()).map(parse_addr).collect::<Result<_, _>>()?;
    if addrs.is_empty() {
        return Err(Error::Malformed("no CM address given".into()));
    }
    Ok(addrs)
}

fn parse_addr(s: &str) -> Result<String, Error> {
    let (host, port) = s.rsplit_once(':').ok_or_else(|| Error::Malformed(format!("address {s:?} is not HOST:PORT")))?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(Error::Malformed(format!("address {s:?} is not HOST:PORT")));
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
