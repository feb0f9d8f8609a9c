//! Data-driven protocol scripts: whole fault sequences with no network, no disk.
//!
//! Each file in `testdata/` holds commands, each followed by its expected output
//! indented by two spaces. The runner replays the commands against a simulated
//! cluster (a [`Directory`] plus one [`PageTable`] per client) by stepping the
//! real state machines, [`ClientOp`] and [`FaultRun`], with direct calls where the
//! running system makes RPCs; it compares the regenerated text with the file, and
//! `UPDATE_SCRIPTS=1` rewrites the files instead.
//!
//! Commands: `register`; `write C PAGE VALUE`; `read C PAGE`; `partial C read PAGE`,
//! `partial C write PAGE VALUE` (an op whose fault's manager crashes just before
//! the commit);
//! `retry C` (resend the client's last fault with the same seq: it finishes an op
//! left in flight by `partial`, or asks again after an op finished); `commit C SEQ
//! read|write PAGE SEEN`; `invalidate C PAGE EPOCH`; `forward C PAGE EPOCH
//! read|write`; `intend C PAGE VALUE [SEQ]` (its write fault sent as SEQ), `cancel C PAGE`, `confirm C PAGE EPOCH [SEQ]`,
//! `taken C PAGE EPOCH` (a write op's client-side steps one at a time; SEQ defaults
//! to 1); `send C PAGE EPOCH read|write VALUE [SEQ]`; `unregister C`; `table C`;
//! `dir PAGE`; `crash C` (the client stops
//! answering; a fault that needs it evicts it, as the leader does once its lease
//! runs out); `evict C` (commit an eviction now); `release C PAGE EPOCH`;
//! `lease C expired|valid` (the client's own view of its lease).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::*;
use crate::error::Error;

#[derive(Default)]
struct World {
    dir: Directory,
    tables: BTreeMap<ClientId, PageTable>,
    seqs: BTreeMap<ClientId, u64>,
    /// Each client's last fault request, for `retry`.
    last: BTreeMap<ClientId, FaultRequest>,
    /// An op whose fault the manager left unfinished (`partial`), by client.
    inflight: BTreeMap<ClientId, ClientOp>,
    /// Clients that stopped answering.
    crashed: std::collections::BTreeSet<ClientId>,
    /// Clients whose own lease ran out (they serve no local hits).
    expired: std::collections::BTreeSet<ClientId>,
}

type Out = Result<String, Error>;

/// How far the simulated manager runs a fault.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Manager {
    /// To the end.
    Whole,
    /// It crashes when the run asks for the commit.
    CrashBeforeCommit,
}

impl World {
    fn run(&mut self, line: &str) -> String {
        let args: Vec<&str> = line.split_whitespace().collect();
        match self.dispatch(&args) {
            Ok(out) => out,
            Err(err) => format!("error: {err}"),
        }
    }

    fn dispatch(&mut self, a: &[&str]) -> Out {
        match a {
            ["register"] => self.register(),
            ["unregister", c] => self.unregister(id(c)),
            ["write", c, p, v] => self.op(id(c), ClientOp::write(name(p)?, v.as_bytes().to_vec()), Manager::Whole),
            ["read", c, p] => self.op(id(c), ClientOp::read(name(p)?), Manager::Whole),
            ["acquire", c, p] => self.op(id(c), ClientOp::acquire(name(p)?), Manager::Whole),
            ["partial", c, "read", p] => self.op(id(c), ClientOp::read(name(p)?), Manager::CrashBeforeCommit),
            ["partial", c, "write", p, v] => {
                self.op(id(c), ClientOp::write(name(p)?, v.as_bytes().to_vec()), Manager::CrashBeforeCommit)
            }
            ["retry", c] => self.retry(id(c)),
            ["crash", c] => {
                self.crashed.insert(id(c));
                Ok("ok".into())
            }
            ["lease", c, "expired"] => {
                self.expired.insert(id(c));
                Ok("ok".into())
            }
            ["lease", c, "valid"] => {
                self.expired.remove(&id(c));
                Ok("ok".into())
            }
            ["evict", c] => Ok(format!("{:?}", self.dir.apply(&DirCmd::Evict { client: id(c) }))),
            ["release", c, p, e] => {
                self.table(id(c)).release(&name(p)?, num(e));
                Ok("ok".into())
            }
            ["commit", c, s, k, p, e] => self.commit(id(c), num(s), kind(k), &name(p)?, num(e)),
            ["invalidate", c, p, e] => {
                self.table(id(c)).invalidate(&name(p)?, num(e));
                Ok("ok".into())
            }
            ["forward", c, p, e, k, rest @ ..] => {
                let created = rest.first() == Some(&"created");
                let t = self.table(id(c)).forward(&name(p)?, num(e), kind(k), created)?;
                Ok(format!("send epoch={} {} {:?}", t.epoch, t.access, text(&t.content)))
            }
            ["send", c, p, e, k, v, rest @ ..] => {
                let access = kind(k).access();
                let seq = rest.first().map_or(1, |s| num(s));
                let kept = self.table(id(c)).receive(&name(p)?, num(e), access, v.as_bytes().to_vec(), seq);
                Ok(if kept { "pending" } else { "dropped" }.into())
            }
            ["table", c] => Ok(self.show_table(id(c))),
            ["intend", c, p, v, rest @ ..] => {
                let (page, seq) = (name(p)?, rest.first().map_or(1, |s| num(s)));
                self.table(id(c)).intend_write(&page, v.as_bytes());
                self.table(id(c)).bind_intent(&page, seq);
                Ok("ok".into())
            }
            ["cancel", c, p] => {
                self.table(id(c)).cancel_intent(&name(p)?);
                Ok("ok".into())
            }
            ["confirm", c, p, e, rest @ ..] => {
                let created = rest.contains(&"created");
                let seq = rest.iter().find(|s| **s != "created").map_or(1, |s| num(s));
                self.table(id(c)).confirm(&name(p)?, num(e), created, seq)?;
                Ok("ok".into())
            }
            ["taken", c, p, e] => Ok(match self.table(id(c)).take_confirmed(&name(p)?, num(e)) {
                Some(v) => format!("done {:?}", text(&v)),
                None => "not done".into(),
            }),
            ["dir", p] => Ok(self.show_dir(&name(p)?)),
            _ => panic!("unknown script command {a:?}"),
        }
    }

    fn table(&mut self, c: ClientId) -> &mut PageTable {
        self.tables.get_mut(&c).expect("script names a registered client")
    }

    fn register(&mut self) -> Out {
        let nonce = self.tables.len() as u64 + 100;
        let cmd = DirCmd::Register { addr: format!("c{nonce}"), nonce };
        let Applied::Registered { client } = self.dir.apply(&cmd) else { unreachable!() };
        self.tables.insert(client, PageTable::new(client));
        Ok(format!("client {client}"))
    }

    fn unregister(&mut self, c: ClientId) -> Out {
        self.dir.apply(&DirCmd::Unregister { client: c });
        Ok("ok".into())
    }

    /// Runs one client op, as the client's executor does, to its end or to a
    /// manager crash that leaves it in flight.
    fn op(&mut self, c: ClientId, mut op: ClientOp, manager: Manager) -> Out {
        let lease = !self.expired.contains(&c);
        let mut step = op.start(self.table(c), lease);
        loop {
            step = match step {
                OpStep::Done(result) => return show_done(result, "fault"),
                OpStep::WaitTurn => op.on(self.table(c), OpEvent::Turn, lease),
                OpStep::Fault(k) => {
                    let seq = self.seqs.entry(c).or_default();
                    *seq += 1;
                    let request = FaultRequest { client: c, seq: *seq, page: op.page().clone(), kind: k };
                    op.sent(self.table(c), request.seq);
                    self.last.insert(c, request.clone());
                    match self.serve(request, manager) {
                        Some(event) => op.on(self.table(c), event, lease),
                        None => {
                            self.inflight.insert(c, op);
                            return Ok("transferred, not committed".into());
                        }
                    }
                }
            };
        }
    }

    /// Resends the client's last fault request (same seq) and finishes its op.
    fn retry(&mut self, c: ClientId) -> Out {
        let request = self.last.get(&c).cloned().expect("a fault to retry");
        let cached = matches!(self.dir.plan_fault(c, request.seq, &request.page, request.kind), Ok(Plan::Cached(_)));
        let how = if cached { "cached" } else { "fault" };
        let mut op = self.inflight.remove(&c).unwrap_or_else(|| match request.kind {
            FaultKind::Read => ClientOp::read(request.page.clone()),
            FaultKind::Write => ClientOp::write(request.page.clone(), Vec::new()),
        });
        let event = self.serve(request, Manager::Whole).expect("a whole run answers");
        let lease = !self.expired.contains(&c);
        match op.on(self.table(c), event, lease) {
            OpStep::Done(result) => show_done(result, how),
            other => panic!("a retried op took another step: {other:?}"),
        }
    }

    /// The manager's side of one fault: steps the real [`FaultRun`], doing each
    /// step's IO with direct calls. `None` when the manager crashed first.
    fn serve(&mut self, request: FaultRequest, manager: Manager) -> Option<OpEvent> {
        let (c, seq, page) = (request.client, request.seq, request.page.clone());
        let (mut run, mut step) = FaultRun::start(request, &self.dir);
        loop {
            step = match step {
                FaultStep::Invalidate { holders, epoch } => {
                    let answered = holders.iter().try_for_each(|h| {
                        self.reach(*h)?;
                        self.table(*h).invalidate(&page, epoch);
                        Ok(())
                    });
                    run.on(FaultEvent::Invalidated(answered))
                }
                FaultStep::Forward(fwd) => run.on(FaultEvent::Forwarded(self.forward(c, &page, &fwd))),
                FaultStep::Commit(_) if manager == Manager::CrashBeforeCommit => return None,
                FaultStep::Commit(cmd) => run.on(FaultEvent::Committed(Ok(self.dir.apply(&cmd)))),
                FaultStep::Release { holders, epoch } => {
                    let reachable: Vec<ClientId> = holders.into_iter().filter(|h| !self.crashed.contains(h)).collect();
                    for h in reachable {
                        self.table(h).release(&page, epoch);
                    }
                    run.on(FaultEvent::Released)
                }
                FaultStep::HolderDown { client, error } => {
                    // The leader evicts a client that stopped answering once its
                    // lease runs out; a script's crashed client has run out.
                    if self.crashed.contains(&client) && self.dir.client(client).is_some() {
                        self.dir.apply(&DirCmd::Evict { client });
                        run.on(FaultEvent::HolderAwaited)
                    } else {
                        run.on(FaultEvent::HolderGaveUp(error))
                    }
                }
                FaultStep::Replan { .. } => run.replan(&self.dir),
                FaultStep::Done(Ok(grant)) => return Some(OpEvent::Granted { grant, seq }),
                FaultStep::Done(Err(err)) => return Some(OpEvent::Failed(err)),
            };
        }
    }

    /// Fails like an RPC to a client that stopped answering.
    fn reach(&self, c: ClientId) -> Result<(), Error> {
        if self.crashed.contains(&c) {
            let reason = "connection refused".to_string();
            return Err(Error::ClientUnreachable { client: c, addr: format!("c{c}"), reason, evict_in_ms: None });
        }
        Ok(())
    }

    /// The owner's side of a forward: it sends the page straight to the requester.
    fn forward(&mut self, requester: ClientId, page: &PageName, fwd: &Forward) -> Result<(), Error> {
        self.reach(fwd.owner)?;
        let t = self.table(fwd.owner).forward(page, fwd.epoch, fwd.kind, fwd.created)?;
        self.table(requester).receive(page, t.epoch, t.access, t.content, fwd.seq);
        Ok(())
    }

    fn commit(&mut self, c: ClientId, seq: u64, k: FaultKind, page: &PageName, seen: u64) -> Out {
        let seen = (seen > 0).then_some(seen);
        let cmd = DirCmd::Fault { client: c, seq, page: page.clone(), kind: k, seen };
        Ok(format!("{:?}", self.dir.apply(&cmd)))
    }

    fn show_table(&mut self, c: ClientId) -> String {
        let mut out = String::new();
        for (page, local) in self.table(c).pages() {
            let v = local.content.as_deref().map(text);
            let _ = write!(out, "{page} {} epoch={} {:?}; ", local.access, local.epoch, v);
        }
        if out.is_empty() {
            "empty".into()
        } else {
            out.trim_end_matches("; ").into()
        }
    }

    fn show_dir(&self, page: &PageName) -> String {
        match self.dir.page(page) {
            None => "absent".into(),
            Some(e) => match e.state {
                PageState::Owned { owner } => format!("owner={owner} copy_set={:?} epoch={}", e.copy_set, e.epoch),
                PageState::Lost { with } => format!("lost with={with} epoch={}", e.epoch),
            },
        }
    }
}

/// How a finished op reads in a script.
fn show_done(result: Result<OpDone, Error>, how: &str) -> Out {
    let done = result?;
    let created = if done.created { " created" } else { "" };
    Ok(match (done.hit, done.value) {
        (Hit::Local, Some(v)) => format!("ok local {:?}", text(&v)),
        (Hit::Local, None) => "ok local".into(),
        (Hit::Fault, Some(v)) => format!("ok {how} epoch={}{created} {:?}", done.epoch, text(&v)),
        (Hit::Fault, None) => format!("ok {how} epoch={}{created}", done.epoch),
    })
}

fn id(s: &str) -> ClientId {
    s.parse().expect("client id")
}

fn num(s: &str) -> u64 {
    s.parse().expect("number")
}

fn name(s: &str) -> Result<PageName, Error> {
    PageName::new(s)
}

fn kind(s: &str) -> FaultKind {
    match s {
        "read" => FaultKind::Read,
        "write" => FaultKind::Write,
        _ => panic!("fault kind is read or write, not {s}"),
    }
}

fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

/// Replays one script and returns the regenerated text.
fn regenerate(script: &str) -> String {
    let mut world = World::default();
    let mut out = String::new();
    for line in script.lines() {
        if line.starts_with("  ") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let _ = writeln!(out, "  {}", world.run(line));
    }
    out
}

#[test]
fn protocol_scripts() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/protocol/testdata");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(!files.is_empty(), "no scripts in {}", dir.display());
    let mut differ = Vec::new();
    for path in files {
        let script = std::fs::read_to_string(&path).unwrap();
        let got = regenerate(&script);
        if std::env::var_os("UPDATE_SCRIPTS").is_some() {
            std::fs::write(&path, &got).unwrap();
        } else if got != script {
            let first = got.lines().zip(script.lines()).position(|(g, s)| g != s).unwrap_or(0);
            let line = got.lines().nth(first).unwrap_or("");
            eprintln!(
                "{}: line {} reads {line:?}, expected {:?}",
                path.display(),
                first + 1,
                script.lines().nth(first)
            );
            differ.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    assert!(differ.is_empty(), "scripts differ (UPDATE_SCRIPTS=1 rewrites them): {differ:?}");
}
