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

/// An address nothing listens on: a privileged port no test binds.
pub const NOTHING_LISTENS: &str = "127.0.0.1:1";

/// A child process killed (SIGKILL) on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` (an `ivy cm ... --json`), and returns it with the address its
/// ready line names; its stdout is drained afterwards.
pub fn spawn_cm(mut cmd: Command) -> Result<(Proc, String)> {
    let mut child = cmd.stdout(Stdio::piped()).spawn().context("spawn ivy cm")?;
    let stdout = child.stdout.take().unwrap();
    let proc = Proc(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
        if let Some(line) = lines.next() {
            let _ = tx.send(line);
        }
        lines.for_each(drop);
    });
    let line = rx.recv_timeout(ANSWER_TIMEOUT).context("the CM node printed no ready line")?;
    let ready: Value = serde_json::from_str(&line).with_context(|| format!("not JSON: {line}"))?;
    let addr = ready["listen"].as_str().context("no listen address in the ready line")?.to_string();
    Ok((proc, addr))
}

/// CM processes on 127.0.0.1:0: node 1 starts a one-node cluster, every other
/// node starts with --join and is added with `ivy member add`; a restart reuses
/// the address the node got.
pub struct CmSet {
    /// `1=ADDR,2=ADDR,...` of the nodes started so far.
    pub peers: String,
    /// `ADDR,ADDR,...` of the nodes started so far.
    pub cms: String,
    dir: PathBuf,
    addrs: Vec<Option<String>>,
    procs: Vec<Option<Proc>>,
    /// Extra flags for every `ivy cm`.
    pub extra: Vec<String>,
}

impl CmSet {
    pub fn new(dir: &Path) -> Self {
        CmSet {
            peers: String::new(),
            cms: String::new(),
            dir: dir.to_path_buf(),
            addrs: Vec::new(),
            procs: Vec::new(),
            extra: Vec::new(),
        }
    }

    /// Node `id`'s address, once started.
    pub fn addr(&self, id: usize) -> Option<&str> {
        self.addrs.get(id - 1).and_then(|a| a.as_deref())
    }

    /// The data dir of node `id`.
    pub fn data_dir(&self, id: usize) -> PathBuf {
        self.dir.join(format!("cm-{id}"))
    }

    /// The pid of node `id`, while it runs.
    pub fn pid(&self, id: usize) -> Option<u32> {
        self.procs.get(id - 1).and_then(|p| p.as_ref()).map(|p| p.0.id())
    }

    fn command(&self, id: usize) -> Result<Command> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join(format!("cm-{id}.log")))?;
        let mut cmd = Command::new(IVY);
        cmd.args(["cm", "--json", "--id", &id.to_string()])
            .arg("--data-dir")
            .arg(self.data_dir(id))
            .args(&self.extra)
            .env("RUST_LOG", "info")
            .stderr(log);
        Ok(cmd)
    }

    /// Starts node `id`: the first node as a new cluster, a new node with --join
    /// (then `ivy member add`), a known node again on its address.
    pub fn start(&mut self, id: usize) -> Result<()> {
        if self.addrs.len() < id {
            self.addrs.resize(id, None);
            self.procs.resize_with(id, || None);
        }
        let mut cmd = self.command(id)?;
        let known = self.addrs[id - 1].clone();
        let first = self.addrs.iter().all(Option::is_none);
        match &known {
            Some(addr) => cmd.args(["--join", "--listen", addr]),
            None if first => cmd.args(["--peers", &format!("{id}=127.0.0.1:0")]),
            None => cmd.args(["--join", "--listen", "127.0.0.1:0"]),
        };
        let (proc, addr) = spawn_cm(cmd)?;
        self.procs[id - 1] = Some(proc);
        if known.is_none() {
            if !first {
                self.member(&["add", "--id", &id.to_string(), "--addr", &addr])?;
            }
            self.addrs[id - 1] = Some(addr);
            self.refresh();
        }
        Ok(())
    }

    /// Starts a replacement for node `id` on a fresh data dir: a new process
    /// with --join on a new address (the caller removes and adds it).
    pub fn forget(&mut self, id: usize) -> Result<()> {
        self.procs[id - 1] = None;
        self.addrs[id - 1] = None;
        let _ = std::fs::remove_dir_all(self.data_dir(id));
        self.refresh();
        Ok(())
    }

    fn refresh(&mut self) {
        let known = self.addrs.iter().enumerate().filter_map(|(i, a)| a.as_ref().map(|a| (i + 1, a)));
        let (peers, cms): (Vec<_>, Vec<_>) = known.map(|(id, a)| (format!("{id}={a}"), a.clone())).unzip();
        self.peers = peers.join(",");
        self.cms = cms.join(",");
    }

    /// Runs `ivy member ARGS --cm <every node>`; fails with its output unless it succeeds.
    pub fn member(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(IVY).arg("member").args(args).args(["--cm", &self.cms]).output()?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        anyhow::ensure!(out.status.success(), "ivy member {args:?}: {text}");
        Ok(text)
    }

    pub fn kill9(&mut self, id: usize) {
        self.procs[id - 1] = None;
    }

    /// SIGTERM to node `id` (a graceful stop), then waits for it to exit.
    pub fn stop(&mut self, id: usize) -> Result<()> {
        let Some(mut proc) = self.procs[id - 1].take() else { return Ok(()) };
        signal(proc.0.id(), "TERM")?;
        let give_up = Instant::now() + ANSWER_TIMEOUT;
        while proc.0.try_wait()?.is_none() {
            anyhow::ensure!(Instant::now() < give_up, "node {id} did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// `ivy status --json` until a leader is reported; returns its id.
    pub fn wait_leader(&self, timeout: Duration) -> Result<u64> {
        let give_up = Instant::now() + timeout;
        loop {
            let v = self.status()?;
            let leader = v["cm"].as_array().and_then(|nodes| nodes.iter().find(|n| n["role"] == "leader"));
            if let (Some(leader), true) = (leader, v["ok"] == true) {
                return Ok(leader["id"].as_u64().unwrap());
            }
            if Instant::now() > give_up {
                bail!("no leader within {timeout:?}: {v}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `ivy status --json` of every node started so far.
    pub fn status(&self) -> Result<Value> {
        let out = Command::new(IVY).args(["status", "--json", "--cm", &self.cms]).output()?;
        Ok(serde_json::from_slice(&out.stdout).unwrap_or(Value::Null))
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

    /// A client with more flags, and its ready line.
    pub fn start_with_ready(cms: &str, extra: &[&str]) -> Result<(Self, Value)> {
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
