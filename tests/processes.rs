//! Separate processes of the built `ivy` binary: 3 CM nodes and 2 clients driven
//! over stdin with `--json`; kill -9 the leader, restart it with the same command,
//! then restart the whole CM cluster.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

const IVY: &str = env!("CARGO_BIN_EXE_ivy");

/// How long any one expected answer may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process killed (SIGKILL) on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct CmSet {
    peers: String,
    cms: String,
    dir: PathBuf,
    procs: Vec<Option<Proc>>,
}

impl CmSet {
    fn new(dir: &Path) -> Self {
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let peers =
            ports.iter().enumerate().map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1)).collect::<Vec<_>>().join(",");
        let cms = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
        CmSet { peers, cms, dir: dir.to_path_buf(), procs: (0..3).map(|_| None).collect() }
    }

    /// Starts node `id` exactly as a user would, again and again.
    fn start(&mut self, id: usize) -> Result<()> {
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

    fn kill9(&mut self, id: usize) {
        self.procs[id - 1] = None;
    }

    /// `ivy status --json` until a leader is reported; returns its id.
    fn wait_leader(&self, timeout: Duration) -> Result<u64> {
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
struct ClientProc {
    _proc: Proc,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl ClientProc {
    fn start(cms: &str) -> Result<(Self, Value)> {
        let mut child = Command::new(IVY)
            .args(["client", "--json", "--cm", cms, "--timeout-ms", "10000"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
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
        let mut c = ClientProc { _proc: Proc(child), stdin, lines };
        let ready = c.next()?;
        assert_eq!(ready["event"], "ready", "{ready}");
        Ok((c, ready))
    }

    fn next(&mut self) -> Result<Value> {
        let line = self.lines.recv_timeout(ANSWER_TIMEOUT).context("client answered nothing")?;
        serde_json::from_str(&line).with_context(|| format!("not JSON: {line}"))
    }

    fn cmd(&mut self, line: &str) -> Result<Value> {
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()?;
        self.next()
    }

    fn write(&mut self, page: &str, value: &str) -> Result<()> {
        let v = self.cmd(&format!("write {page} {value}"))?;
        assert_eq!(v["ok"], true, "write {page}: {v}");
        Ok(())
    }

    fn read(&mut self, page: &str) -> Result<String> {
        let v = self.cmd(&format!("read {page}"))?;
        assert_eq!(v["ok"], true, "read {page}: {v}");
        Ok(v["value"].as_str().unwrap().to_string())
    }
}

#[test]
fn processes_survive_leader_kill_and_whole_cluster_restart() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut cms = CmSet::new(tmp.path());
    for id in 1..=3 {
        cms.start(id)?;
    }
    cms.wait_leader(Duration::from_secs(20))?;
    let (mut c1, _) = ClientProc::start(&cms.cms)?;
    let (mut c2, _) = ClientProc::start(&cms.cms)?;

    // The JSON lines of DESIGN.md.
    let w = c1.cmd("writePage P1 Content1")?;
    assert_eq!((&w["op"], &w["page"], &w["ok"]), (&"write".into(), &"P1".into(), &true.into()), "{w}");
    assert!(w["ms"].is_number(), "{w}");
    let r = c2.cmd("readPage P1")?;
    assert_eq!(r["value"], "Content1", "{r}");
    let r = c2.cmd("read P9")?;
    assert_eq!((&r["ok"], &r["error"]), (&false.into(), &"page P9 does not exist".into()), "{r}");
    c1.write("A2", "two")?;

    // kill -9 the leader; faults go on with the other two.
    let leader = cms.wait_leader(Duration::from_secs(10))? as usize;
    cms.kill9(leader);
    c2.write("A2", "two-by-c2")?;
    assert_eq!(c1.read("A2")?, "two-by-c2");
    c1.write("A3", "three")?;

    // Restart it with the same command: it rejoins.
    cms.start(leader)?;
    cms.wait_leader(Duration::from_secs(20))?;
    for p in 1..=10 {
        c2.write(&format!("P{p}"), &format!("Content{p}"))?;
    }
    let x = c1.cmd("x 20")?;
    assert_eq!((&x["op"], &x["n"], &x["failed"]), (&"x".into(), &20.into(), &0.into()), "{x}");

    // Whole-cluster restart: the directory (owners, copy sets, epochs) survives.
    let before = c1.cmd("print")?;
    for id in 1..=3 {
        cms.kill9(id);
    }
    for id in 1..=3 {
        cms.start(id)?;
    }
    cms.wait_leader(Duration::from_secs(20))?;
    let p2 = c2.read("A2")?;
    let p3 = c2.read("A3")?;
    assert_eq!((p2.as_str(), p3.as_str()), ("two-by-c2", "three"), "before restart: {before}");
    c2.write("A3", "three-by-c2")?;
    assert_eq!(c1.read("A3")?, "three-by-c2");

    let status = Command::new(IVY).args(["status", "--cm", &cms.cms]).output()?;
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{table}");
    assert!(table.contains("leader") && table.contains("follower"), "{table}");
    let q = c1.cmd("quit")?;
    assert_eq!(q["op"], "quit");
    Ok(())
}

#[test]
fn cli_rejects_bad_flags_with_clear_errors() -> Result<()> {
    let out = Command::new(IVY).args(["cm", "--id", "4"]).output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--id 4 is not among the peers"), "{err}");

    let out = Command::new(IVY).args(["cm", "--id", "1", "--peers", "1=nowhere"]).output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not HOST:PORT"));

    // Nothing listens on these ports: status says so and exits non-zero, quickly.
    let cms = format!("127.0.0.1:{},127.0.0.1:{}", free_port(), free_port());
    let start = Instant::now();
    let out = Command::new(IVY).args(["status", "--cm", &cms]).output()?;
    assert!(!out.status.success());
    assert!(start.elapsed() < Duration::from_secs(5), "status took {:?}", start.elapsed());
    assert!(String::from_utf8_lossy(&out.stdout).contains("no ("), "{}", String::from_utf8_lossy(&out.stdout));
    Ok(())
}
