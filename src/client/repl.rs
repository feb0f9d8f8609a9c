//! The client's command loop: one command per stdin line, one answer per command.
//!
//! Commands (DESIGN.md): `write <page> <content...>` (alias `writePage`),
//! `read <page>` (alias `readPage`), `print`, `x [N]`, `status`, `help`, `quit`.
//! With `--json` every answer is one JSON object on one line; the first line is
//! `{"event":"ready",...}`. Without it the answers are plain text for a person.
//! A line starting `#TAG ` runs concurrently with the lines after it and its
//! answer carries `"tag":"TAG"` (the chaos harness keeps several ops in flight).

use std::time::Instant;

use rand::Rng;
use serde_json::{json, Value};
use std::io::{IsTerminal, Write};
use std::sync::Arc;

use tokio::io::{AsyncBufRead, AsyncBufReadExt};
use tokio::task::JoinSet;
use tonic::Request;

use super::{Client, Hit};
use crate::error::Error;
use crate::rpc::pb;
use crate::rpc::pb::manager_client::ManagerClient;

/// Pages the `x` command draws from: P1..P10, as in the original experiment.
pub const X_PAGES: u32 = 10;

/// Most operations one `x` command runs.
pub const MAX_X_OPS: u64 = 1_000_000;

/// One parsed REPL command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Write content to a page.
    Write { page: String, content: String },
    /// Read a page.
    Read { page: String },
    /// Show the local page table.
    Print,
    /// N random reads/writes on P1..P10.
    Random { n: u64 },
    /// Show the CM nodes.
    Status,
    /// List the commands.
    Help,
    /// Leave the cluster and exit.
    Quit,
}

/// The help text, one command a line.
pub const HELP: &[&str] = &[
    "write <page> <content...>   write a page (alias writePage); the first write creates it",
    "read <page>                 read a page (alias readPage)",
    "print                       show this client's page table",
    "x [N]                       N random reads/writes on P1..P10 (default 10)",
    "status                      show the CM nodes",
    "help                        this list",
    "quit                        leave the cluster and exit",
];

/// Parses one input line; `Ok(None)` for a blank line.
pub fn parse(line: &str) -> Result<Option<Command>, String> {
    let line = line.trim();
    let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let rest = rest.trim_start();
    let cmd = match word {
        "" => return Ok(None),
        "write" | "writePage" => {
            let (page, content) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            if page.is_empty() {
                return Err("usage: write <page> <content...>".into());
            }
            Command::Write { page: page.into(), content: content.trim_start().into() }
        }
        "read" | "readPage" => match rest.split_whitespace().collect::<Vec<_>>().as_slice() {
            [page] => Command::Read { page: (*page).into() },
            _ => return Err("usage: read <page>".into()),
        },
        "print" => Command::Print,
        "x" => Command::Random { n: parse_count(rest)? },
        "status" => Command::Status,
        "help" => Command::Help,
        "quit" | "exit" => Command::Quit,
        other => return Err(format!("unknown command {other:?}; try help")),
    };
    Ok(Some(cmd))
}

fn parse_count(rest: &str) -> Result<u64, String> {
    if rest.is_empty() {
        return Ok(10);
    }
    match rest.parse::<u64>() {
        Ok(n) if (1..=MAX_X_OPS).contains(&n) => Ok(n),
        _ => Err(format!("usage: x [N] with N from 1 to {MAX_X_OPS}, not {rest:?}")),
    }
}

/// Runs the command loop over `input` until `quit` or end of input.
pub async fn run<R: AsyncBufRead + Unpin>(client: Client, input: R, json_out: bool) -> Result<(), Error> {
    let ready = json!({"event": "ready", "client": client.id(), "listen": client.addr().to_string()});
    let greeting = format!("client {} ready, serving pages on {}; type help", client.id(), client.addr());
    emit(json_out, &ready, &greeting);
    let client = Arc::new(client);
    let mut tagged = JoinSet::new();
    let mut lines = input.lines();
    // A person at a terminal gets a prompt; a script or --json gets only answers.
    let prompt = !json_out && std::io::stdin().is_terminal();
    loop {
        if prompt {
            print!("> ");
            let _ = std::io::stdout().flush();
        }
        let Some(line) = lines.next_line().await.map_err(|e| Error::Malformed(format!("stdin: {e}")))? else {
            break;
        };
        let (tag, line) = split_tag(&line);
        let cmd = match parse(line) {
            Ok(None) => continue,
            Ok(Some(Command::Quit)) => break,
            Ok(Some(cmd)) => cmd,
            Err(err) => {
                emit(json_out, &with_tag(json!({"op": "unknown", "ok": false, "error": err}), tag), &err);
                continue;
            }
        };
        match tag {
            // A tagged command runs concurrently with the ones after it.
            Some(tag) => {
                let client = client.clone();
                tagged.spawn(async move {
                    let answer = with_tag(execute(&client, cmd).await, Some(tag));
                    emit(json_out, &answer, &human(&answer));
                });
            }
            None => {
                let answer = execute(&client, cmd).await;
                emit(json_out, &answer, &human(&answer));
            }
        }
    }
    while tagged.join_next().await.is_some() {}
    let left = match Arc::try_unwrap(client) {
        Ok(client) => client.leave().await,
        Err(_) => Err(Error::Unavailable("commands still running".into())),
    };
    let answer = match &left {
        Ok(()) => json!({"op": "quit", "ok": true}),
        Err(err) => json!({"op": "quit", "ok": false, "error": err.to_string()}),
    };
    emit(json_out, &answer, &human(&answer));
    Ok(())
}

/// Splits a leading `#TAG ` off a line: a tagged command runs concurrently and its
/// answer carries `"tag"`, so a driver can keep several commands in flight.
fn split_tag(line: &str) -> (Option<String>, &str) {
    let trimmed = line.trim_start();
    match trimmed.strip_prefix('#') {
        Some(rest) => {
            let (tag, cmd) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            (Some(tag.to_string()), cmd)
        }
        None => (None, line),
    }
}

fn with_tag(mut answer: Value, tag: Option<String>) -> Value {
    if let (Some(tag), Some(obj)) = (tag, answer.as_object_mut()) {
        obj.insert("tag".into(), Value::String(tag));
    }
    answer
}

fn emit(json_out: bool, value: &Value, text: &str) {
    if json_out {
        println!("{value}");
    } else {
        println!("{text}");
    }
}

/// Executes one command and returns its JSON answer.
pub async fn execute(client: &Client, cmd: Command) -> Value {
    let start = Instant::now();
    let ms = |start: Instant| (start.elapsed().as_secs_f64() * 1e6).round() / 1e3;
    match cmd {
        Command::Write { page, content } => match client.write_at(&page, content.as_bytes()).await {
            Ok((hit, epoch)) => {
                json!({"op": "write", "page": page, "ok": true, "local": hit == Hit::Local, "epoch": epoch,
                    "ms": ms(start)})
            }
            Err(e) => {
                json!({"op": "write", "page": page, "ok": false, "error": e.to_string(), "ms": ms(start)})
            }
        },
        Command::Read { page } => match client.read_at(&page).await {
            Ok((v, hit, epoch)) => {
                json!({"op": "read", "page": page, "ok": true, "value": String::from_utf8_lossy(&v),
                "local": hit == Hit::Local, "epoch": epoch, "ms": ms(start)})
            }
            Err(e) => {
                json!({"op": "read", "page": page, "ok": false, "error": e.to_string(), "ms": ms(start)})
            }
        },
        Command::Print => print(client),
        Command::Random { n } => random(client, n, start).await,
        Command::Status => status(client).await,
        Command::Help => json!({"op": "help", "ok": true, "commands": HELP}),
        Command::Quit => json!({"op": "quit", "ok": true}),
    }
}

fn print(client: &Client) -> Value {
    let pages: Vec<Value> = client
        .pages()
        .into_iter()
        .map(|(page, local)| {
            let value = local.content.as_deref().map(String::from_utf8_lossy);
            json!({"page": page.as_str(), "access": local.access.to_string(), "epoch": local.epoch, "value": value})
        })
        .collect();
    json!({"op": "print", "ok": true, "client": client.id(), "pages": pages})
}

/// `x N`: N reads or writes by coin flip on P1..P10, no sleeps.
async fn random(client: &Client, n: u64, start: Instant) -> Value {
    let (mut ok, mut failed, mut local) = (0u64, 0u64, 0u64);
    let mut errors: Vec<String> = Vec::new();
    for i in 0..n {
        let (page, write) = {
            let mut rng = rand::thread_rng();
            (format!("P{}", rng.gen_range(1..=X_PAGES)), rng.gen_bool(0.5))
        };
        let result = if write {
            let content = format!("c{}-{}", client.id(), i + 1);
            client.write(&page, content.as_bytes()).await
        } else {
            client.read(&page).await.map(|(_, hit)| hit)
        };
        match result {
            Ok(hit) => {
                ok += 1;
                local += u64::from(hit == Hit::Local);
            }
            Err(e) => {
                failed += 1;
                if errors.len() < 3 {
                    errors.push(e.to_string());
                }
            }
        }
    }
    let ms = start.elapsed().as_secs_f64() * 1e3;
    json!({"op": "x", "n": n, "ok": failed == 0, "succeeded": ok, "failed": failed, "local": local,
        "ms": (ms * 1e3).round() / 1e3, "errors": errors})
}

async fn status(client: &Client) -> Value {
    let mut nodes = Vec::new();
    for addr in client.cm().addrs() {
        nodes.push(node_status(&addr).await);
    }
    let ok = nodes.iter().any(|n| n["serving"] == true);
    json!({"op": "status", "ok": ok, "client": client.id(), "cm": nodes})
}

/// One CM node's status as JSON (`reachable: false` when it did not answer in time).
pub async fn node_status(addr: &str) -> Value {
    const STATUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);
    let Ok(channel) = crate::rpc::channel(addr, STATUS_TIMEOUT) else {
        return json!({"addr": addr, "reachable": false, "error": "bad address"});
    };
    let reply =
        tokio::time::timeout(STATUS_TIMEOUT, ManagerClient::new(channel).status(Request::new(pb::StatusRequest {})))
            .await;
    match reply {
        Ok(Ok(r)) => {
            let r = r.into_inner();
            let last_sync_ms = (r.last_sync_ms >= 0).then_some(r.last_sync_ms);
            json!({"addr": addr, "reachable": true, "id": r.id, "role": r.role, "serving": r.serving,
                "term": r.term, "last_log_index": r.last_log_index, "applied_index": r.applied_index,
                "leader": r.leader, "pages": r.pages, "clients": r.clients, "mode": r.mode,
                "last_sync_ms": last_sync_ms})
        }
        Ok(Err(status)) => json!({"addr": addr, "reachable": false, "error": status.message()}),
        Err(_) => json!({"addr": addr, "reachable": false, "error": "no answer within 1 s"}),
    }
}

/// The plain-text form of an answer.
fn human(v: &Value) -> String {
    let err = || format!("error: {}", v["error"].as_str().unwrap_or("?"));
    match v["op"].as_str().unwrap_or("") {
        _ if v["ok"] == false && v["op"] != "x" && v["op"] != "status" => err(),
        "write" => format!("ok ({} ms{})", v["ms"], if v["local"] == true { ", local" } else { "" }),
        "read" => format!(
            "{} ({} ms{})",
            v["value"].as_str().unwrap_or(""),
            v["ms"],
            if v["local"] == true { ", local" } else { "" }
        ),
        "print" => human_pages(v),
        "x" => format!(
            "{} ops: {} ok, {} failed, {} local hits, {} ms{}",
            v["n"],
            v["succeeded"],
            v["failed"],
            v["local"],
            v["ms"],
            v["errors"]
                .as_array()
                .and_then(|e| e.first())
                .and_then(Value::as_str)
                .map_or(String::new(), |e| format!("; first error: {e}"))
        ),
        "status" => human_status(v),
        "help" => v["commands"]
            .as_array()
            .map_or(String::new(), |c| c.iter().filter_map(|l| l.as_str()).collect::<Vec<_>>().join("\n")),
        "quit" => "bye".into(),
        _ => v.to_string(),
    }
}

fn human_pages(v: &Value) -> String {
    let rows = v["pages"].as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        return "(no pages)".into();
    }
    let mut out = format!("{:<16} {:<8} {:>6}  value", "page", "access", "epoch");
    for r in rows {
        out.push_str(&format!(
            "\n{:<16} {:<8} {:>6}  {}",
            r["page"].as_str().unwrap_or(""),
            r["access"].as_str().unwrap_or(""),
            r["epoch"].to_string(),
            r["value"].as_str().unwrap_or("-")
        ));
    }
    out
}

/// The `ivy status` table for node answers as produced by [`node_status`].
pub fn human_status(v: &Value) -> String {
    let row = |cells: [String; 8]| {
        let [id, addr, role, term, last, applied, sync, reach] = cells;
        format!("{id:<4} {addr:<22} {role:<15} {term:>6} {last:>9} {applied:>9} {sync:>9}  {reach}")
    };
    let header = ["id", "address", "role", "term", "last_log", "applied", "last_sync", "reachable"];
    let mut lines = vec![row(header.map(String::from))];
    for n in v["cm"].as_array().cloned().unwrap_or_default() {
        let text = |key: &str| n[key].as_str().unwrap_or("").to_string();
        let cells = if n["reachable"] == true {
            let sync = n["last_sync_ms"].as_i64().map_or("-".to_string(), |ms| format!("{ms} ms"));
            let [id, term, last, applied] = ["id", "term", "last_log_index", "applied_index"].map(|k| n[k].to_string());
            [id, text("addr"), text("role"), term, last, applied, sync, "yes".to_string()]
        } else {
            let dash = || "-".to_string();
            [dash(), text("addr"), dash(), dash(), dash(), dash(), dash(), format!("no ({})", text("error"))]
        };
        lines.push(row(cells));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands() {
        let w = parse("writePage P1 hello  world").unwrap().unwrap();
        assert_eq!(w, Command::Write { page: "P1".into(), content: "hello  world".into() });
        assert_eq!(parse("readPage P1").unwrap(), Some(Command::Read { page: "P1".into() }));
        assert_eq!(parse("x").unwrap(), Some(Command::Random { n: 10 }));
        assert_eq!(parse("x 25").unwrap(), Some(Command::Random { n: 25 }));
        assert_eq!(parse("   ").unwrap(), None);
        assert!(parse("x 0").is_err());
        assert!(parse("x lots").is_err());
        assert!(parse("read").is_err());
        assert!(parse("read P1 P2").is_err());
        assert!(parse("fly away").unwrap_err().contains("unknown command"));
        assert_eq!(split_tag("#7 read P1"), (Some("7".into()), "read P1"));
        assert_eq!(split_tag("read P1"), (None, "read P1"));
    }
}
