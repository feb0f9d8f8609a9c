//! Shared helpers of the integration tests: processes of the built `ivy` binary
//! (CM nodes and `--json` clients, killed on drop) and in-process clients.
//! Each test file includes this module; not every file uses every helper.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ivy_harness::cluster::Cluster;
use ivy_raft::client::{Client, ClientConfig};
use serde_json::Value;

pub const IVY: &str = env!("CARGO_BIN_EXE_ivy");

/// How long any one expected answer may take.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process killed (SIGKILL) on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct CmSet {
    pub peers: String,
    pub cms: String,
    dir: PathBuf,
    procs: Vec<Option<Proc>>,
}

impl CmSet {
    pub fn new(dir: &Path) -> Self {
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let peers =
            ports.iter().enumerate().map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1)).collect::<Vec<_>>().join(",");
        let cms = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
        CmSet { peers, cms, dir: dir.to_path_buf(), procs: (0..3).map(|_| None).collect() }
    }

    /// Starts node `id` exactly as a user would, again and again.
    pub fn start(&mut self, id: usize) -> Result<()> {
        let log = std::fs::File::create(self.dir.join(format!("cm-{id}.log")))?;
        let child = Command::new(IVY)
            .args(["cm", "--id", &id.to_string(), "--peers", &self.peers])
            .arg("--data-dir")
            .arg(self.dir.join(format!("cm-{id}")))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawn ivy cm")?;
        self.procs[id - 1] = Some(Proc(child));
        Ok(())
    }

    pub fn kill9(&mut self, id: usize) {
        self.procs[id - 1] = None;
    }

    /// `ivy status --json` until a leader is reported; returns its id.
    pub fn wait_leader(&self, timeout: Duration) -> Result<u64> {
        let give_up = Instant::now() + timeout;
        loop {
            let out = Command::new(IVY).args(["status", "--json", "--cm", &self.cms]).output()?;
            let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            let leader = v["cm"].as_array().and_then(|nodes| nodes.iter().find(|n| n["role"] == "leader"));
            if let (Some(leader), true) = (leader, out.status.success()) {
                return Ok(leader["id"].as_u64().unwrap());
            }
            if Instant::now() > give_up {
                bail!("no leader within {timeout:?}: {v}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// An `ivy client --json` process: one command in, one JSON line out.
pub struct ClientProc {
    pub proc: Proc,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    /// Event lines (`{"event":...}`) seen while waiting for answers.
    pub events: Vec<Value>,
}

impl ClientProc {
    pub fn start(cms: &str) -> Result<(Self, Value)> {
        Self::start_with_ready(cms, &[])
    }

    /// A client with more flags.
    pub fn start_with(cms: &str, extra: &[&str]) -> Result<Self> {
        Ok(Self::start_with_ready(cms, extra)?.0)
    }

    fn start_with_ready(cms: &str, extra: &[&str]) -> Result<(Self, Value)> {
        let mut cmd = Command::new(IVY);
        cmd.args(["client", "--json", "--cm", cms, "--timeout-ms", "10000"]).args(extra);
        Self::spawn(cmd)
    }

    /// Starts a client from a prepared `ivy client --json ...` command (one to
    /// be run in a network namespace, say) and waits for its ready line.
    pub fn spawn(mut cmd: Command) -> Result<(Self, Value)> {
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut c = ClientProc { proc: Proc(child), stdin, lines, events: Vec::new() };
        let ready = c.next()?;
        assert_eq!(ready["event"], "ready", "{ready}");
        Ok((c, ready))
    }

    pub fn next(&mut self) -> Result<Value> {
        let line = self.lines.recv_timeout(ANSWER_TIMEOUT).context("client answered nothing")?;
        serde_json::from_str(&line).with_context(|| format!("not JSON: {line}"))
    }

    /// Sends one command and returns its answer, keeping event lines aside.
    pub fn cmd(&mut self, line: &str) -> Result<Value> {
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()?;
        loop {
            let v = self.next()?;
            if v.get("event").is_none() {
                return Ok(v);
            }
            self.events.push(v);
        }
    }

    /// Sends one line without waiting for its answer.
    pub fn send(&mut self, line: &str) -> Result<()> {
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()?;
        Ok(())
    }

    /// The answer to the command sent with `#tag`, keeping other lines aside.
    pub fn tagged(&mut self, tag: &str) -> Result<Value> {
        if let Some(i) = self.events.iter().position(|v| v["tag"] == tag) {
            return Ok(self.events.remove(i));
        }
        loop {
            let v = self.next()?;
            if v["tag"] == tag {
                return Ok(v);
            }
            self.events.push(v);
        }
    }

    /// Sends raw bytes as one line and returns the answer.
    pub fn raw(&mut self, bytes: &[u8]) -> Result<Value> {
        self.stdin.write_all(bytes)?;
        self.stdin.flush()?;
        self.next()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.proc.0.id()
    }

    pub fn write(&mut self, page: &str, value: &str) -> Result<()> {
        let v = self.cmd(&format!("write {page} {value}"))?;
        assert_eq!(v["ok"], true, "write {page}: {v}");
        Ok(())
    }

    pub fn read(&mut self, page: &str) -> Result<String> {
        let v = self.cmd(&format!("read {page}"))?;
        assert_eq!(v["ok"], true, "read {page}: {v}");
        Ok(v["value"].as_str().unwrap().to_string())
    }
}

/// A client of an in-process cluster with its own op deadline, recording its
/// write grants (for exactly-once checks).
pub async fn client(cluster: &Cluster, op_timeout: Duration) -> Result<Client> {
    let mut config = ClientConfig::new(cluster.addrs());
    config.op_timeout = op_timeout;
    config.record_grants = true;
    Ok(Client::start(config).await?)
}

/// Reads one JSON line from a child's stdout, within [`ANSWER_TIMEOUT`].
pub fn read_json_line(stdout: std::process::ChildStdout) -> Result<Value> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(ANSWER_TIMEOUT).context("no line on stdout")?;
    serde_json::from_str(&line).with_context(|| format!("not JSON: {line:?}"))
}

/// Sends `sig` (e.g. "STOP", "CONT", "TERM") to process `pid`.
pub fn signal(pid: u32, sig: &str) -> Result<()> {
    let status = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status()?;
    anyhow::ensure!(status.success(), "kill -{sig} {pid} failed");
    Ok(())
}
