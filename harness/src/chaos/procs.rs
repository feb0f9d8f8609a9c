//! The CM node processes of a chaos run (and of the bench), each a child process
//! of the built `ivy` binary, killed when dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use tokio::process::{Child, Command};

use anyhow::{anyhow, Result};
use ivy_raft::rpc::{Channels, ManagerClient};

fn spawn_error(what: &str, e: std::io::Error) -> anyhow::Error {
    anyhow!("cannot start {what}: {e}")
}

/// A free loopback port (bound then released; a race with other binders is possible).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_or(0, |a| a.port())
}

/// Sends a signal (STOP, CONT) to a process by pid.
pub fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
}

/// Builds the command a process starts from, given the binary: how a process
/// is put into a network namespace (see [`crate::netns::Host::command`]).
pub type Launcher = std::sync::Arc<dyn Fn(&Path) -> std::process::Command + Send + Sync>;

/// One CM node process, restartable with the same command.
pub struct CmProc {
    /// The node id.
    pub id: u64,
    /// The address it listens on (the harness's own view, no proxy).
    pub addr: String,
    args: Mutex<Vec<String>>,
    bin: PathBuf,
    log: PathBuf,
    child: Mutex<Option<Child>>,
    launcher: Option<Launcher>,
}

impl CmProc {
    /// A node that will run `bin` with `args`, logging to `log`.
    pub fn new(bin: &Path, id: u64, addr: String, args: Vec<String>, log: PathBuf) -> Self {
        CmProc {
            id,
            addr,
            args: Mutex::new(args),
            bin: bin.to_path_buf(),
            log,
            child: Mutex::new(None),
            launcher: None,
        }
    }

    /// The same node, started (and restarted) through `launcher`.
    pub fn with_launcher(mut self, launcher: Launcher) -> Self {
        self.launcher = Some(launcher);
        self
    }

    /// Starts (or restarts) the node.
    pub fn start(&self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| spawn_error("CM log", e))?;
        let args = self.args.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut cmd = match &self.launcher {
            Some(launch) => Command::from(launch(&self.bin)),
            None => Command::new(&self.bin),
        };
        let child = cmd
            .args(&args)
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| spawn_error(&format!("CM {}", self.id), e))?;
        *self.child() = Some(child);
        Ok(())
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True while the process was started and not killed (paused counts as running).
    pub fn running(&self) -> bool {
        self.child().is_some()
    }

    /// True when the process exited by itself (it was started and not killed).
    pub fn exited(&self) -> bool {
        match &mut *self.child() {
            Some(child) => !matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// When the process exited by itself: its exit status and the last line of
    /// its log (where `ivy cm` prints the error it stopped on).
    pub fn exit_note(&self) -> Option<String> {
        let status = match &mut *self.child() {
            Some(child) => child.try_wait().ok().flatten()?,
            None => return None,
        };
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let last = log.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("(empty log)");
        Some(format!("CM {} exited ({status}): {}", self.id, last.trim()))
    }

    /// Restarts the node if it was killed or has exited by itself.
    pub fn ensure_running(&self) -> Result<()> {
        let exited = match &mut *self.child() {
            Some(child) => child.try_wait().map(|s| s.is_some()).unwrap_or(true),
            None => true,
        };
        if exited {
            self.start()?;
        }
        Ok(())
    }

    /// kill -9.
    pub async fn kill9(&self) {
        let child = self.child().take();
        if let Some(mut child) = child {
            let _ = child.kill().await;
        }
    }

    /// SIGTERM, then waits up to `wait` for the process to exit (kill -9 after).
    pub async fn stop(&self, wait: Duration) {
        let child = self.child().take();
        let Some(mut child) = child else { return };
        if let Some(pid) = child.id() {
            signal(pid, "TERM");
        }
        if tokio::time::timeout(wait, child.wait()).await.is_err() {
            tracing::warn!("CM {} did not exit within {wait:?} of SIGTERM: killing it", self.id);
            let _ = child.kill().await;
        }
    }

    /// Its data dir (the value of `--data-dir`).
    pub fn data_dir(&self) -> Option<PathBuf> {
        let args = self.args.lock().unwrap_or_else(|e| e.into_inner());
        args.iter().position(|a| a == "--data-dir").and_then(|i| args.get(i + 1)).map(PathBuf::from)
    }

    /// kill -9, then empties its data dir; with `join`, it runs with `--join`
    /// from now on (a fresh node waiting to be added).
    pub async fn wipe(&self, join: bool) -> Result<()> {
        self.kill9().await;
        if let Some(dir) = self.data_dir() {
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(anyhow!("{}: {e}", dir.display())),
                _ => {}
            }
        }
        let mut args = self.args.lock().unwrap_or_else(|e| e.into_inner());
        if join && !args.iter().any(|a| a == "--join") {
            args.push("--join".into());
        }
        Ok(())
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child().as_ref().and_then(Child::id)
    }
}

/// How long the harness waits for a node's status.
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// The CM node processes of a run, by id.
pub struct CmSet(pub BTreeMap<u64, CmProc>);

impl CmSet {
    /// The id of a running node that says it serves faults, asking each directly.
    pub async fn leader(&self) -> Option<u64> {
        let rpc = ManagerClient::new(Channels::new(STATUS_TIMEOUT, Default::default()));
        for cm in self.0.values().filter(|c| c.running()) {
            if rpc.status(&cm.addr).await.is_ok_and(|s| s.serving) {
                return Some(cm.id);
            }
        }
        None
    }

    /// Waits up to `timeout` for a serving node; gives up at once when more than
    /// half of the nodes exited by themselves (say, refused to start), since no
    /// leader can come then.
    pub async fn wait_leader(&self, timeout: Duration) -> Option<u64> {
        const POLL: Duration = Duration::from_millis(20);
        let give_up = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < give_up {
            if let Some(id) = self.leader().await {
                return Some(id);
            }
            if self.0.values().filter(|c| c.exited()).count() > self.0.len() / 2 {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
        None
    }

    /// Why each node that exited by itself did, one line each.
    pub fn exit_notes(&self) -> Vec<String> {
        self.0.values().filter_map(CmProc::exit_note).collect()
    }

    /// The node ids.
    pub fn ids(&self) -> Vec<u64> {
        self.0.keys().copied().collect()
    }

    /// kill -9 node `id`.
    pub async fn kill(&self, id: u64) {
        if let Some(cm) = self.0.get(&id) {
            cm.kill9().await;
        }
    }

    /// Stops node `id` gracefully (see [`CmProc::stop`]).
    pub async fn stop(&self, id: u64, wait: Duration) {
        if let Some(cm) = self.0.get(&id) {
            cm.stop(wait).await;
        }
    }

    /// kill -9 every node.
    pub async fn kill_all(&self) {
        for cm in self.0.values() {
            cm.kill9().await;
        }
    }

    /// Starts node `id` again with its own command.
    pub fn restart(&self, id: u64) {
        if let Some(cm) = self.0.get(&id) {
            if let Err(err) = cm.start() {
                tracing::warn!("restart of CM {id}: {err}");
            }
        }
    }
}
