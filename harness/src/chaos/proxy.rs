//! A small TCP proxy per network link, so the harness can cut, blackhole or
//! delay a link (tc netem is not available here). Everything stays on 127.0.0.1.
//!
//! A link is directional in the sense that matters: it carries the connections
//! its source opens to its target, both ways. Cutting the link from node A to
//! node B stops A's requests to B while B's requests to A (another link) flow.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use anyhow::{anyhow, Result};

/// How long the proxy waits to connect to its target.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Bytes copied per read.
const CHUNK: usize = 64 * 1024;

/// What a link does to its traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Forward everything.
    Pass,
    /// Close every connection and refuse new ones.
    Cut,
    /// Accept and hold connections, forwarding nothing (a silent drop).
    Blackhole,
    /// Forward everything this much later.
    Delay(Duration),
}

/// One proxied link, listening on loopback and forwarding to its target.
pub struct Proxy {
    /// The address to dial instead of the target.
    pub addr: String,
    state: watch::Sender<LinkState>,
    target: watch::Sender<Option<String>>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy to `target` on an ephemeral loopback port.
    pub async fn start(target: &str) -> Result<Proxy> {
        let proxy = Proxy::start_pending().await?;
        proxy.set_target(target);
        Ok(proxy)
    }

    /// Starts a proxy whose target is not known yet: connections wait for
    /// [`Proxy::set_target`].
    pub async fn start_pending() -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await.map_err(|e| anyhow!("proxy bind: {e}"))?;
        let addr = listener.local_addr().map_err(|e| anyhow!("proxy: {e}"))?.to_string();
        let (state, _) = watch::channel(LinkState::Pass);
        let (target, _) = watch::channel(None);
        let task = tokio::spawn(accept(listener, target.clone(), state.clone()));
        Ok(Proxy { addr, state, target, task })
    }

    /// Forwards new connections to `target` from now on.
    pub fn set_target(&self, target: &str) {
        self.target.send_replace(Some(target.to_string()));
    }

    /// Changes what the link does, at once for open connections too.
    pub fn set(&self, state: LinkState) {
        self.state.send_replace(state);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, target: watch::Sender<Option<String>>, state: watch::Sender<LinkState>) {
    let mut conns = tokio::task::JoinSet::new();
    while let Ok((inbound, _)) = listener.accept().await {
        let _ = inbound.set_nodelay(true);
        conns.spawn(relay(inbound, target.subscribe(), state.subscribe()));
        while conns.try_join_next().is_some() {}
    }
}

/// Relays one connection until either side closes or the link is cut.
async fn relay(inbound: TcpStream, mut target: watch::Receiver<Option<String>>, mut state: watch::Receiver<LinkState>) {
    let Ok(target) = target.wait_for(Option::is_some).await.map(|t| t.clone().unwrap_or_default()) else { return };
    loop {
        match *state.borrow_and_update() {
            LinkState::Cut => return,
            LinkState::Blackhole => {}
            LinkState::Pass | LinkState::Delay(_) => break,
        }
        if state.changed().await.is_err() {
            return;
        }
    }
    let Ok(Ok(outbound)) = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&target)).await else { return };
    let _ = outbound.set_nodelay(true);
    let (a_read, a_write) = inbound.into_split();
    let (b_read, b_write) = outbound.into_split();
    tokio::select! {
        _ = pump(a_read, b_write, state.clone()) => {}
        _ = pump(b_read, a_write, state) => {}
    }
}

/// Copies one direction, obeying the link state between chunks.
async fn pump<R, W>(mut from: R, mut to: W, mut state: watch::Receiver<LinkState>)
where
    R: AsyncReadExt + Unpin,
    W: AsyncWriteExt + Unpin,
{
    let mut buf = vec![0u8; CHUNK];
    loop {
        let now = *state.borrow_and_update();
        let delay = match now {
            LinkState::Cut => return,
            LinkState::Blackhole => {
                if state.changed().await.is_err() {
                    return;
                }
                continue;
            }
            LinkState::Pass => None,
            LinkState::Delay(d) => Some(d),
        };
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            changed = state.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(addr: &str) -> Result<Vec<u8>, String> {
        let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        s.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        let read = tokio::time::timeout(Duration::from_millis(300), s.read_exact(&mut buf)).await;
        match read {
            Ok(Ok(_)) => Ok(buf.to_vec()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timeout".into()),
        }
    }

    #[tokio::test]
    async fn pass_cut_blackhole_heal() {
        let proxy = Proxy::start(&echo_server().await).await.unwrap();
        assert_eq!(round_trip(&proxy.addr).await.unwrap(), b"ping");
        proxy.set(LinkState::Cut);
        assert!(round_trip(&proxy.addr).await.is_err());
        proxy.set(LinkState::Blackhole);
        assert_eq!(round_trip(&proxy.addr).await.unwrap_err(), "timeout");
        proxy.set(LinkState::Delay(Duration::from_millis(20)));
        assert_eq!(round_trip(&proxy.addr).await.unwrap(), b"ping");
        proxy.set(LinkState::Pass);
        assert_eq!(round_trip(&proxy.addr).await.unwrap(), b"ping");
    }
}
