//! One `ivy client --json` process of a chaos run, driven by tagged commands so
//! several can be in flight at once, and the slot that replaces it when the
//! harness kills it.
//!
//! Every client serves its pages behind a proxy of the harness (it registers the
//! proxy's address with `--advertise`), so the harness can cut a client off from
//! everyone, CM nodes and other clients alike. Event lines the client prints on
//! its own (an eviction notice) are reported to the run as [`Life`] events.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Result};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, oneshot};

use super::proxy::Proxy;

/// How long a client may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>>;

/// Something that happened to a client process, for the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Life {
    /// Directory client `now` of slot `slot` registered (a new process, or the
    /// same process again after an eviction of client `was`).
    Registered { slot: usize, now: u64, was: Option<u64> },
}

/// How a slot starts its client processes.
#[derive(Debug, Clone)]
pub struct ClientSpawn {
    /// The `ivy` binary.
    pub bin: PathBuf,
    /// CM addresses, comma separated (the harness's proxies).
    pub cms: String,
    /// The client's own deadline per operation, ms.
    pub timeout_ms: u64,
    /// Where its log goes.
    pub log: PathBuf,
    /// Testing only: the client serves local hits after its lease ran out.
    pub unsafe_ignore_lease: bool,
    /// Testing only: the client installs late fault replies whose copies were superseded.
    pub unsafe_late_install: bool,
}

/// One client process.
pub struct ClientProc {
    /// Its id in the directory (changes when it is evicted and registers again).
    id: Arc<AtomicU64>,
    child: tokio::sync::Mutex<Child>,
    pid: Option<u32>,
    stdin: tokio::sync::Mutex<ChildStdin>,
    pending: Pending,
    next_tag: AtomicU64,
}

impl ClientProc {
    /// Starts a client of slot `slot` registering `advertise`, waits until it is
    /// ready, and returns it with the address it listens on.
    pub async fn start(
        spawn: &ClientSpawn,
        slot: usize,
        advertise: &str,
        life: mpsc::UnboundedSender<Life>,
    ) -> Result<(ClientProc, String)> {
        let mut cmd = Command::new(&spawn.bin);
        cmd.args(["client", "--json", "--cm", &spawn.cms, "--timeout-ms", &spawn.timeout_ms.to_string()]);
        cmd.args(["--listen", "127.0.0.1:0", "--advertise", advertise]);
        if spawn.unsafe_ignore_lease {
            cmd.arg("--unsafe-ignore-lease");
        }
        if spawn.unsafe_late_install {
            cmd.arg("--unsafe-late-install");
        }
        cmd.env("RUST_LOG", "warn");
        Self::spawn(cmd, slot, &spawn.log, life).await
    }

    /// Runs `cmd`, an `ivy client --json` (directly, or in a container), as
    /// slot `slot`, its stderr appended to `log`; waits until it is ready and
    /// returns it with the address it listens on.
    pub async fn spawn(
        mut cmd: Command,
        slot: usize,
        log: &Path,
        life: mpsc::UnboundedSender<Life>,
    ) -> Result<(ClientProc, String)> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log);
        let log = log.map_err(|e| anyhow!("client log: {e}"))?;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| anyhow!("cannot start client {slot}: {e}"))?;
        let stdin = child.stdin.take().ok_or_else(|| anyhow!("client stdin"))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("client stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(READY_TIMEOUT, lines.next_line()).await;
        let ready: Value = match ready {
            Ok(Ok(Some(line))) => serde_json::from_str(&line).unwrap_or(Value::Null),
            _ => return Err(anyhow!("client {slot} did not get ready")),
        };
        let id = ready["client"].as_u64().ok_or_else(|| anyhow!("client {slot}: {ready}"))?;
        let listen = ready["listen"].as_str().ok_or_else(|| anyhow!("client {slot}: {ready}"))?.to_string();
        let (pending, id) = (Pending::default(), Arc::new(AtomicU64::new(id)));
        tokio::spawn(route_lines(lines, pending.clone(), slot, id.clone(), life));
        let pid = child.id();
        let proc = ClientProc {
            id,
            child: tokio::sync::Mutex::new(child),
            pid,
            stdin: tokio::sync::Mutex::new(stdin),
            pending,
            next_tag: AtomicU64::new(0),
        };
        Ok((proc, listen))
    }

    /// Its id in the directory now.
    pub fn id(&self) -> u64 {
        self.id.load(Ordering::SeqCst)
    }

    /// Sends one command and waits up to `timeout` for its answer (`None`: no
    /// answer, including when the process died).
    pub async fn call(&self, command: &str, timeout: Duration) -> Option<Value> {
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed).to_string();
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(tag.clone(), tx);
        let line = format!("#{tag} {command}\n");
        let sent = tokio::time::timeout(timeout, async {
            let mut stdin = self.stdin.lock().await;
            stdin.write_all(line.as_bytes()).await.and(stdin.flush().await)
        });
        let answer = match sent.await {
            Ok(Ok(())) => tokio::time::timeout(timeout, rx).await.ok().and_then(Result::ok),
            _ => None,
        };
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&tag);
        answer
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// kill -9.
    pub async fn kill9(&self) {
        let _ = self.child.lock().await.kill().await;
    }

    /// Asks the client to leave, then makes sure it is gone.
    pub async fn quit(&self) {
        let _ = self.stdin.lock().await.write_all(b"quit\n").await;
        let mut child = self.child.lock().await;
        if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
    }
}

/// Routes answers to their callers and eviction notices to the run; when the
/// process is gone, every caller still waiting is told at once.
async fn route_lines(
    mut lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    pending: Pending,
    slot: usize,
    id: Arc<AtomicU64>,
    life: mpsc::UnboundedSender<Life>,
) {
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(answer) = serde_json::from_str::<Value>(&line) else { continue };
        if answer["event"] == "evicted" {
            let (was, now) = (answer["client"].as_u64(), answer["now"].as_u64().unwrap_or(0));
            id.store(now, Ordering::SeqCst);
            let _ = life.send(Life::Registered { slot, now, was });
            continue;
        }
        let Some(tag) = answer["tag"].as_str().map(str::to_string) else { continue };
        if let Some(tx) = pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&tag) {
            let _ = tx.send(answer);
        }
    }
    pending.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// A client position of the run: its current process, and the proxy others
/// reach it through. Killing the process and starting a fresh one keeps the slot.
pub struct ClientSlot {
    /// The slot's index in the run.
    pub index: usize,
    /// The proxy in front of the client's page service.
    pub holder: Proxy,
    spawn: ClientSpawn,
    current: tokio::sync::RwLock<Arc<ClientProc>>,
    life: mpsc::UnboundedSender<Life>,
}

impl ClientSlot {
    /// Starts slot `index` with its first process.
    pub async fn start(index: usize, spawn: ClientSpawn, life: mpsc::UnboundedSender<Life>) -> Result<ClientSlot> {
        let holder = Proxy::start_pending().await?;
        let proc = Self::spawn(index, &spawn, &holder, &life).await?;
        Ok(ClientSlot { index, holder, spawn, current: tokio::sync::RwLock::new(Arc::new(proc)), life })
    }

    async fn spawn(
        index: usize,
        spawn: &ClientSpawn,
        holder: &Proxy,
        life: &mpsc::UnboundedSender<Life>,
    ) -> Result<ClientProc> {
        let (proc, listen) = ClientProc::start(spawn, index, &holder.addr, life.clone()).await?;
        holder.set_target(&listen);
        let _ = life.send(Life::Registered { slot: index, now: proc.id(), was: None });
        Ok(proc)
    }

    /// The current process.
    pub async fn proc(&self) -> Arc<ClientProc> {
        self.current.read().await.clone()
    }

    /// kill -9 the current process and start a fresh one in its place; returns
    /// the killed client's id.
    pub async fn replace(&self) -> Result<u64> {
        let mut current = self.current.write().await;
        let killed = current.id();
        current.kill9().await;
        *current = Arc::new(Self::spawn(self.index, &self.spawn, &self.holder, &self.life).await?);
        Ok(killed)
    }
}

/// The log file of slot `index` under `dir`.
pub fn client_log(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("client-{index}.log"))
}
