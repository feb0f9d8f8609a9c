//! Separate processes of the built `ivy` binary: 3 CM nodes and 2 clients driven
//! over stdin with `--json`; kill -9 the leader, restart it with the same command,
//! then restart the whole CM cluster.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Result;
use support::{ClientProc, CmSet, IVY, NOTHING_LISTENS};

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
    // Bad input on stdin gets an error line; the client goes on.
    for bad in [&b"\xff\xfe read P1\n"[..], b"\x1b[A\n", b"read P1 \x07\n"] {
        let r = c2.raw(bad)?;
        assert_eq!((&r["op"], &r["ok"]), (&"unknown".into(), &false.into()), "{r}");
    }
    assert_eq!(c2.read("P1")?, "Content1");
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

    // A flag error is a configuration error, not a "malformed request", and
    // RUST_BACKTRACE does not turn it into a backtrace.
    let out =
        Command::new(IVY).args(["cm", "--id", "1", "--peers", "1=nowhere"]).env("RUST_BACKTRACE", "1").output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid configuration") && err.contains("not HOST:PORT"), "{err}");
    assert!(!err.contains("malformed") && !err.to_lowercase().contains("backtrace"), "{err}");

    // A second node on a data dir in use is refused at once, naming the dir.
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("cm-1");
    let peers = "1=127.0.0.1:0";
    let first = Command::new(IVY)
        .args(["cm", "--id", "1", "--peers", peers, "--json", "--data-dir"])
        .arg(&data)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut first = support::Proc(first);
    let ready = support::read_json_line(first.0.stdout.take().expect("stdout"))?;
    assert_eq!(ready["event"], "ready", "{ready}");
    let start = Instant::now();
    let out = Command::new(IVY).args(["cm", "--id", "1", "--peers", peers, "--data-dir"]).arg(&data).output()?;
    assert!(!out.status.success());
    assert!(start.elapsed() < Duration::from_secs(2), "refused only after {:?}", start.elapsed());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is in use") && err.contains(&data.display().to_string()), "{err}");

    // A client that cannot start says why on stdout with --json.
    let nowhere = NOTHING_LISTENS;
    let out = Command::new(IVY).args(["client", "--json", "--timeout-ms", "500", "--cm", nowhere]).output()?;
    assert!(!out.status.success());
    let line: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(line["event"], "error", "{line}");
    assert!(line["error"].as_str().is_some_and(|e| e.contains("register")), "{line}");

    // Nothing listens on these ports: status says so and exits non-zero, quickly.
    let cms = format!("{NOTHING_LISTENS},127.0.0.2:1");
    let start = Instant::now();
    let out = Command::new(IVY).args(["status", "--cm", &cms]).output()?;
    assert!(!out.status.success());
    assert!(start.elapsed() < Duration::from_secs(5), "status took {:?}", start.elapsed());
    assert!(String::from_utf8_lossy(&out.stdout).contains("no ("), "{}", String::from_utf8_lossy(&out.stdout));
    Ok(())
}

/// Client failure on real processes: a client killed with -9 holds writes up
/// only until its lease runs out; a client stopped (SIGSTOP) for longer than its
/// lease comes back evicted, serves no stale copy, says so and registers again;
/// SIGTERM makes a client leave the cluster and hand its pages on.
#[test]
fn dead_paused_and_stopped_clients() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut cms = CmSet::new(tmp.path());
    for id in 1..=3 {
        cms.start(id)?;
    }
    cms.wait_leader(Duration::from_secs(20))?;
    let (mut a, _) = ClientProc::start(&cms.cms)?;
    let (mut b, _) = ClientProc::start(&cms.cms)?;
    let (mut c, c_ready) = ClientProc::start(&cms.cms)?;

    // kill -9 a copy holder: the owner's next write waits for its eviction only.
    a.write("K1", "one")?;
    assert_eq!(c.read("K1")?, "one");
    drop(c);
    let start = Instant::now();
    a.write("K1", "two")?;
    println!("write after kill -9 of the copy holder: {:?}", start.elapsed());

    // SIGSTOP a copy holder past its lease; meanwhile the page moves on.
    assert_eq!(b.read("K1")?, "two");
    support::signal(b.pid(), "STOP")?;
    a.write("K1", "three")?;
    support::signal(b.pid(), "CONT")?;
    assert_eq!(b.read("K1")?, "three", "no stale read after the pause");
    // The eviction notice arrives once the resumed client renews its lease.
    let give_up = Instant::now() + Duration::from_secs(10);
    while !b.events.iter().any(|e| e["event"] == "evicted") {
        anyhow::ensure!(Instant::now() < give_up, "no eviction event: {:?}", b.events);
        b.cmd("print")?;
    }

    // SIGTERM: the client leaves, and its page passes to the copy holder.
    a.write("K2", "kept")?;
    assert_eq!(b.read("K2")?, "kept");
    support::signal(a.pid(), "TERM")?;
    let quit = a.next()?;
    assert_eq!((&quit["op"], &quit["ok"]), (&"quit".into(), &true.into()), "{quit}");
    let (mut d, _) = ClientProc::start(&cms.cms)?;
    assert_eq!(d.read("K2")?, "kept");
    let status = Command::new(IVY).args(["status", "--json", "--cm", &cms.cms]).output()?;
    let status: serde_json::Value = serde_json::from_slice(&status.stdout)?;
    let c_id = c_ready["client"].as_u64().expect("id");
    let leader = status["cm"].as_array().and_then(|n| n.iter().find(|n| n["serving"] == true)).expect("a leader");
    let ids: Vec<u64> =
        leader["client_list"].as_array().expect("clients").iter().filter_map(|c| c["id"].as_u64()).collect();
    assert!(!ids.contains(&c_id), "the killed client {c_id} is gone: {ids:?}");
    Ok(())
}

/// The original's console: `seed` writes P1..P10, `x` then finds every page,
/// and `ivy pages` shows the directory (state, owner, copy set, epoch) as the
/// leader committed it, in a table and as JSON, before and after a client leaves.
#[test]
fn seed_x_and_the_directory_view() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut cms = CmSet::new(tmp.path());
    for id in 1..=3 {
        cms.start(id)?;
    }
    cms.wait_leader(Duration::from_secs(20))?;
    let (mut a, a_ready) = ClientProc::start(&cms.cms)?;
    let (mut b, b_ready) = ClientProc::start(&cms.cms)?;
    let (a_id, b_id) = (a_ready["client"].as_u64().unwrap(), b_ready["client"].as_u64().unwrap());
    let seeded = a.cmd("seed")?;
    assert_eq!((&seeded["op"], &seeded["ok"], &seeded["written"]), (&"seed".into(), &true.into(), &10.into()));
    assert_eq!(b.read("P1")?, format!("Content by client {a_id}"));
    let x = b.cmd("x 30")?;
    assert_eq!((&x["failed"], &x["succeeded"]), (&0.into(), &30.into()), "{x}");
    a.write("Q1", "only at a")?;
    assert_eq!(b.read("Q1")?, "only at a");

    let pages = |args: &[&str]| -> Result<serde_json::Value> {
        let out = Command::new(IVY).args(["pages", "--json", "--cm", &cms.cms]).args(args).output()?;
        anyhow::ensure!(out.status.success(), "ivy pages: {}", String::from_utf8_lossy(&out.stderr));
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    let view = pages(&["Q1", "NOPE"])?;
    let q1 = &view["pages"][0];
    assert_eq!((&q1["page"], &q1["state"], &q1["epoch"]), (&"Q1".into(), &"live".into(), &1.into()), "{view}");
    assert_eq!(q1["copy_set"], serde_json::json!([b_id]), "{view}");
    assert_eq!(view["pages"][1]["state"], "absent", "{view}");
    let all = pages(&[])?;
    assert_eq!(all["pages"].as_array().map(Vec::len), Some(11), "P1..P10 and Q1: {all}");

    let table = Command::new(IVY).args(["pages", "--cm", &cms.cms, "Q1"]).output()?;
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("page") && table.contains("copy set") && table.contains(&format!("client {a_id} at")),
        "{table}"
    );

    // a leaves: Q1 passes to b, which held a copy; a page only a held is lost.
    let quit = a.cmd("quit")?;
    assert_eq!(quit["ok"], true, "{quit}");
    let view = pages(&["Q1"])?;
    assert_eq!((&view["pages"][0]["owner"], &view["pages"][0]["state"]), (&b_id.into(), &"live".into()), "{view}");
    let lost = pages(&["P9"])?;
    let p9 = &lost["pages"][0];
    let p9_kept = p9["state"] == "live" && p9["owner"] == b_id;
    assert!(p9_kept || (p9["state"] == "lost" && p9["owner"] == a_id), "{lost}");
    Ok(())
}
