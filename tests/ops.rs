//! Operating a cluster of `ivy` processes: gRPC health (liveness and
//! readiness) and reflection, Prometheus `/metrics` on CM nodes and clients,
//! JSON logs with structured role changes, and the deployment flags.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use support::{read_json_line, ClientProc, Proc, IVY, NOTHING_LISTENS};

/// A CM node process started with `--json`, its ready line read back.
struct Node {
    _proc: Proc,
    grpc: String,
    metrics: String,
    log: std::path::PathBuf,
}

/// Node 1 starts a one-node cluster on port 0; nodes 2 and 3 join on port 0 and
/// are added with `ivy member add`.
fn start_nodes(dir: &std::path::Path) -> Result<(Vec<Node>, String)> {
    let mut nodes: Vec<Node> = Vec::new();
    for id in 1..=3 {
        let log = dir.join(format!("cm-{id}.log"));
        let how: &[&str] = if id == 1 { &["--peers", "1=127.0.0.1:0"] } else { &["--join", "--listen", "127.0.0.1:0"] };
        let mut child = Command::new(IVY)
            .args(["cm", "--id", &id.to_string(), "--json"])
            .args(how)
            .args(["--metrics-listen", "127.0.0.1:0", "--log-format", "json", "--data-dir"])
            .arg(dir.join(format!("cm-{id}")))
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        let ready = read_json_line(child.stdout.take().context("stdout")?)?;
        let grpc = ready["listen"].as_str().context("listen")?.to_string();
        let metrics = ready["metrics"].as_str().with_context(|| format!("no metrics address: {ready}"))?.to_string();
        if id > 1 {
            let cms = nodes.iter().map(|n| n.grpc.clone()).collect::<Vec<_>>().join(",");
            let out = Command::new(IVY)
                .args(["member", "add", "--id", &id.to_string(), "--addr", &grpc, "--cm", &cms])
                .output()?;
            anyhow::ensure!(out.status.success(), "member add: {}", String::from_utf8_lossy(&out.stderr));
        }
        nodes.push(Node { _proc: Proc(child), grpc, metrics, log });
    }
    let cms = nodes.iter().map(|n| n.grpc.clone()).collect::<Vec<_>>().join(",");
    Ok((nodes, cms))
}

/// `ivy health` against `addr`: the exit code and stdout.
fn health(addr: &str, service: &str) -> Result<(i32, String)> {
    let out =
        Command::new(IVY).args(["health", "--addr", addr, "--service", service, "--timeout-ms", "1000"]).output()?;
    Ok((out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).trim().to_string()))
}

/// Polls until `ivy health` on `addr` exits with `code`.
fn await_health(addr: &str, service: &str, code: i32, within: Duration) -> Result<()> {
    let give_up = Instant::now() + within;
    loop {
        let (got, out) = health(addr, service)?;
        if got == code {
            return Ok(());
        }
        if Instant::now() > give_up {
            bail!("{addr} {service:?}: exit {got} ({out}), wanted {code} within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// GET http://addr/metrics with a plain HTTP/1.0 request.
fn scrape(addr: &str) -> Result<String> {
    let mut conn = TcpStream::connect(addr)?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    std::io::Write::write_all(&mut conn, b"GET /metrics HTTP/1.0\r\nHost: ivy\r\n\r\n")?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)?;
    let (head, body) = reply.split_once("\r\n\r\n").context("no HTTP header end")?;
    ensure!(head.starts_with("HTTP/1.") && head.contains(" 200 "), "{head}");
    ensure!(head.to_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
    Ok(body.to_string())
}

/// Parses the Prometheus text format strictly enough to catch a broken
/// exposition: every sample belongs to a family declared with `# TYPE`, has a
/// valid name, well-formed labels and a float value. Returns sample -> value.
fn parse_exposition(text: &str) -> Result<BTreeMap<String, f64>> {
    let mut families: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !n.starts_with(|c: char| c.is_ascii_digit())
    };
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').context(line.to_string())?;
            ensure!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind), "{line}");
            families.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') {
            ensure!(line.starts_with("# HELP "), "stray comment {line}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').context(line.to_string())?;
        let value: f64 = value.parse().with_context(|| format!("bad value in {line}"))?;
        let name = series.split('{').next().unwrap_or_default();
        ensure!(valid_name(name), "bad metric name in {line}");
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                let inner = labels.strip_prefix('{').and_then(|l| l.strip_suffix('}')).context(line.to_string())?;
                for pair in inner.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').context(line.to_string())?;
                    ensure!(valid_name(k) && v.starts_with('"'), "bad label in {line}");
                }
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| families.get(*f).is_some_and(|k| k == "histogram")))
            .unwrap_or(name);
        ensure!(families.contains_key(family), "{name} has no # TYPE line");
        samples.insert(series.to_string(), value);
    }
    Ok(samples)
}

fn sum_of(samples: &BTreeMap<String, f64>, prefix: &str) -> f64 {
    samples.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(_, v)| v).sum()
}

#[test]
fn health_reflection_metrics_and_json_logs() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (mut nodes, cms) = start_nodes(tmp.path())?;

    // Liveness at once; readiness on all three (leader and followers) once a
    // leader is elected: a leader-only readiness would leave two pods unready.
    for n in &nodes {
        await_health(&n.grpc, "", 0, Duration::from_secs(5))?;
    }
    for n in &nodes {
        await_health(&n.grpc, "ivy.Manager", 0, Duration::from_secs(20))?;
    }
    assert_eq!(health(&nodes[0].grpc, "no.Such")?, (1, "SERVICE_UNKNOWN".into()));
    let (code, _) = health(NOTHING_LISTENS, "")?;
    assert_eq!(code, 2, "nothing listens there: unreachable");

    // Reflection lists what the node serves, as grpcurl's `list` would.
    let out = Command::new(IVY).args(["health", "--list", "--json", "--addr", &nodes[1].grpc]).output()?;
    let listed: Value = serde_json::from_slice(&out.stdout)?;
    let listed: BTreeSet<&str> =
        listed["services"].as_array().context("services")?.iter().filter_map(Value::as_str).collect();
    for s in [
        "ivy.Manager",
        "ivy.Cluster",
        "ivy.RaftTransport",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(listed.contains(s), "{s} not in {listed:?}");
    }

    // /metrics parses, and counters move with a workload.
    let before = parse_exposition(&scrape(&nodes[0].metrics)?)?;
    assert!(before.contains_key("ivy_raft_term") && before["ivy_raft_term"] >= 1.0, "{before:?}");
    // The client binds its metrics on port 0 and reports the address it got.
    let (mut client, ready) = ClientProc::start_with_ready(&cms, &["--metrics-listen", "127.0.0.1:0"])?;
    let client_metrics = ready["metrics"].as_str().with_context(|| format!("no metrics address: {ready}"))?.to_string();
    for p in 1..=5 {
        client.write(&format!("M{p}"), "v")?;
    }
    let x = client.cmd("x 40")?;
    assert_eq!(x["op"], "x", "{x}");
    let leader = (0..3)
        .find(|i| {
            let m = scrape(&nodes[*i].metrics).and_then(|t| parse_exposition(&t)).unwrap_or_default();
            sum_of(&m, "ivy_fault_duration_seconds_count") > 0.0
        })
        .context("no node counted a fault")?;
    // The directory gauges are refreshed on a 100 ms tick, not at each commit:
    // await the tick rather than read a scrape taken just before it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let m = loop {
        let m = parse_exposition(&scrape(&nodes[leader].metrics)?)?;
        if m["ivy_pages"] >= 5.0 || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(sum_of(&m, "ivy_fault_duration_seconds_count{kind=\"write\",outcome=\"ok\"}") >= 5.0, "{m:?}");
    assert!(m["ivy_proposer_batch_size_count"] >= 5.0, "{m:?}");
    assert!(m["ivy_pages"] >= 5.0 && m["ivy_clients_registered"] >= 1.0, "{m:?}");
    assert!(m["ivy_raft_applied_index"] > before["ivy_raft_applied_index"], "{m:?}");
    assert_eq!(m["ivy_faults_in_flight"], 0.0);
    assert!(m.keys().any(|k| k.starts_with("ivy_raft_replication_lag_entries{peer=")), "{m:?}");
    for counter in ["ivy_evictions_total", "ivy_store_syncs_total", "ivy_raft_leader_changes_total"] {
        assert!(m.contains_key(counter), "{counter} missing: {m:?}");
    }
    // Every commit is synced: at least one sync per write the leader committed.
    assert!(m["ivy_store_syncs_total"] >= 5.0, "{m:?}");
    let c = parse_exposition(&scrape(&client_metrics)?)?;
    assert!(sum_of(&c, "ivy_client_ops_total{op=\"write\"") >= 5.0, "{c:?}");
    assert!(sum_of(&c, "ivy_client_fault_duration_seconds_count") >= 5.0, "{c:?}");

    // Kill two nodes: the last one stays live ("") but is no longer ready.
    let survivor = (leader + 1) % 3;
    let survivor_addr = nodes[survivor].grpc.clone();
    let mut killed = 0;
    nodes.retain(|n| {
        let keep = n.grpc == survivor_addr || killed == 2;
        killed += usize::from(!keep);
        keep
    });
    await_health(&survivor_addr, "ivy.Manager", 1, Duration::from_secs(10))?;
    assert_eq!(health(&survivor_addr, "")?.0, 0, "still alive");
    let q = client.cmd("quit");
    drop(q);

    // The log is JSON lines, role changes carry typed fields, no colour codes.
    let log = std::fs::read_to_string(&nodes[0].log)?;
    assert!(!log.contains('\u{1b}'), "ANSI codes in a log file");
    let events: Vec<Value> = log.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    let role = events.iter().find(|e| e["event"] == "role_change").context("no role_change event")?;
    assert!(role["node"].is_u64() && role["term"].is_u64() && role["role"].is_string(), "{role}");
    assert!(events.iter().any(|e| e["event"] == "membership_change" && e["voters"].is_string()), "{log}");
    assert!(events.iter().any(|e| e["event"] == "readiness"), "{log}");
    Ok(())
}

#[test]
fn deployment_flags_fail_clearly() -> Result<()> {
    let run = |args: &[&str]| -> Result<String> {
        let out = Command::new(IVY).args(args).env_remove("RUST_LOG").output()?;
        ensure!(!out.status.success(), "{args:?} succeeded");
        Ok(String::from_utf8_lossy(&out.stderr).to_string())
    };
    let err = run(&["cm", "--id", "1", "--id-from-hostname"])?;
    assert!(err.contains("cannot be used with"), "{err}");
    let err = run(&["cm"])?;
    assert!(err.contains("--id") && err.contains("--id-from-hostname"), "{err}");
    // This machine's host name is no `ivy-cm-N` of these peers (or has no -N).
    let err = run(&["cm", "--id-from-hostname", "--peers", "1=127.0.0.1:1"])?;
    assert!(err.contains("--id-from-hostname: host name"), "{err}");
    let err = run(&["client", "--listen", "0.0.0.0:0", "--cm", "127.0.0.1:1"])?;
    assert!(err.contains("--advertise"), "{err}");
    let err = run(&["cm", "--id", "1", "--peers", "1=127.0.0.1:0", "--metrics-listen", "256.0.0.1:1"])?;
    assert!(err.contains("--metrics-listen"), "{err}");
    let err = run(&["status", "--log-format", "yaml"])?;
    assert!(err.contains("yaml"), "{err}");
    Ok(())
}

#[test]
fn a_client_given_one_follower_follows_hints_only_when_told() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (nodes, cms) = start_nodes(tmp.path())?;
    for n in &nodes {
        await_health(&n.grpc, "ivy.Manager", 0, Duration::from_secs(20))?;
    }
    let out = Command::new(IVY).args(["status", "--json", "--cm", &cms]).output()?;
    let status: Value = serde_json::from_slice(&out.stdout)?;
    let follower =
        status["cm"].as_array().context("cm")?.iter().find(|n| n["role"] == "follower").context("a follower")?;
    let follower = follower["addr"].as_str().context("addr")?;

    // Given only a follower: its hint names the leader, an address it was not given.
    let mut told = ClientProc::start_with(follower, &["--follow-hints"])?;
    told.write("H1", "via-hint")?;
    assert_eq!(told.read("H1")?, "via-hint");
    // Without --follow-hints it keeps to the addresses it was given: it cannot
    // register, and says why within its deadline.
    let out = Command::new(IVY)
        .args(["client", "--json", "--cm", follower, "--timeout-ms", "1500"])
        .stdin(Stdio::null())
        .output()?;
    assert!(!out.status.success());
    let event: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(event["event"], "error", "{event}");
    assert!(event["error"].as_str().is_some_and(|e| e.contains("not the leader")), "{event}");
    Ok(())
}
