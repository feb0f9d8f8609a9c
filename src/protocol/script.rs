//! Data-driven protocol scripts: whole fault sequences with no network, no disk.
//!
//! Each file in `testdata/` holds commands, each followed by its expected output
//! indented by two spaces. The runner replays the commands against a simulated
//! manager (a [`Directory`] plus one [`PageTable`] per client) and compares the
//! regenerated text with the file; `UPDATE_SCRIPTS=1` rewrites the files instead.
//!
//! Commands: `register`; `write C PAGE VALUE`; `read C PAGE`; `partial C read|write
//! PAGE` (run a fault's IO but crash before the commit); `retry C` (resend the
//! client's last fault with the same seq); `commit C SEQ read|write PAGE SEEN`;
//! `invalidate C PAGE EPOCH`; `forward C PAGE EPOCH read|write`; `intend C PAGE VALUE`,
//! `cancel C PAGE`, `confirm C PAGE EPOCH [SEQ]`, `taken C PAGE EPOCH` (a write op's
//! steps one at a time; SEQ defaults to 1); `send C PAGE EPOCH
//! read|write VALUE [SEQ]`; `unregister C`; `table C`; `dir PAGE`; `confirms lost|delivered`
//! (drop the manager's confirmations, so the requester installs from the reply).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::*;
use crate::error::Error;

#[derive(Default)]
struct World {
    dir: Directory,
    tables: BTreeMap<ClientId, PageTable>,
    seqs: BTreeMap<ClientId, u64>,
    last: BTreeMap<ClientId, (u64, PageName, FaultKind)>,
    confirms_lost: bool,
}

type Out = Result<String, Error>;

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
            ["write", c, p, v] => self.write(id(c), &name(p)?, v),
            ["read", c, p] => self.read(id(c), &name(p)?),
            ["partial", c, k, p] => self.partial(id(c), kind(k), &name(p)?),
            ["retry", c] => self.retry(id(c)),
            ["commit", c, s, k, p, e] => self.commit(id(c), num(s), kind(k), &name(p)?, num(e)),
            ["invalidate", c, p, e] => {
                self.table(id(c)).invalidate(&name(p)?, num(e));
                Ok("ok".into())
            }
            ["forward", c, p, e, k] => {
                let t = self.table(id(c)).forward(&name(p)?, num(e), kind(k), false)?;
                Ok(format!("send epoch={} {} {:?}", t.epoch, t.access, text(&t.content)))
            }
            ["send", c, p, e, k, v, rest @ ..] => {
                let access = kind(k).access();
                let seq = rest.first().map_or(1, |s| num(s));
                let kept = self.table(id(c)).receive(&name(p)?, num(e), access, v.as_bytes().to_vec(), seq);
                Ok(if kept { "pending" } else { "dropped" }.into())
            }
            ["table", c] => Ok(self.show_table(id(c))),
            ["intend", c, p, v] => {
                self.table(id(c)).intend_write(&name(p)?, v.as_bytes());
                Ok("ok".into())
            }
            ["cancel", c, p] => {
                self.table(id(c)).cancel_intent(&name(p)?);
                Ok("ok".into())
            }
            ["confirm", c, p, e, rest @ ..] => {
                let seq = rest.first().map_or(1, |s| num(s));
                self.table(id(c)).confirm(&name(p)?, num(e), false, seq)?;
                Ok("ok".into())
            }
            ["taken", c, p, e] => Ok(match self.table(id(c)).take_confirmed(&name(p)?, num(e)) {
                Some(v) => format!("done {:?}", text(&v)),
                None => "not done".into(),
            }),
            ["confirms", "lost"] | ["confirms", "delivered"] => {
                self.confirms_lost = a[1] == "lost";
                Ok("ok".into())
            }
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
        let Outcome::Registered { client } = self.dir.apply(&cmd) else { unreachable!() };
        self.tables.insert(client, PageTable::new(client));
        Ok(format!("client {client}"))
    }

    fn unregister(&mut self, c: ClientId) -> Out {
        self.dir.apply(&DirCmd::Unregister { client: c });
        Ok("ok".into())
    }

    fn write(&mut self, c: ClientId, page: &PageName, v: &str) -> Out {
        if self.table(c).write(page, v.as_bytes()) {
            return Ok("ok local".into());
        }
        self.table(c).intend_write(page, v.as_bytes());
        let (grant, how) = self.fault(c, page, FaultKind::Write, true)?;
        if self.table(c).take_confirmed(page, grant.epoch).is_none() {
            let seq = self.last[&c].0;
            self.table(c).grant(page, grant.epoch, grant.created, seq)?;
            let wrote = self.table(c).write(page, v.as_bytes());
            assert!(wrote, "a granted write fault gives write access");
            self.table(c).cancel_intent(page);
        }
        let created = if grant.created { " created" } else { "" };
        Ok(format!("ok {how} epoch={}{created}", grant.epoch))
    }

    fn read(&mut self, c: ClientId, page: &PageName) -> Out {
        if let Some(v) = self.table(c).read(page) {
            return Ok(format!("ok local {:?}", text(v)));
        }
        self.table(c).intend_read(page);
        let (grant, how) = self.fault(c, page, FaultKind::Read, true)?;
        let v = match self.table(c).take_confirmed(page, grant.epoch) {
            Some(v) => v,
            None => {
                let seq = self.last[&c].0;
                self.table(c).grant(page, grant.epoch, false, seq)?
            }
        };
        Ok(format!("ok {how} epoch={} {:?}", grant.epoch, text(&v)))
    }

    fn partial(&mut self, c: ClientId, k: FaultKind, page: &PageName) -> Out {
        self.fault(c, page, k, false)?;
        Ok("transferred, not committed".into())
    }

    fn retry(&mut self, c: ClientId) -> Out {
        let (seq, page, k) = self.last.get(&c).cloned().expect("a fault to retry");
        let (grant, how) = self.run_fault(c, seq, &page, k, true)?;
        let v = match self.table(c).take_confirmed(&page, grant.epoch) {
            Some(v) => v,
            None => self.table(c).grant(&page, grant.epoch, grant.created, seq)?,
        };
        Ok(format!("ok {how} epoch={} {:?}", grant.epoch, text(&v)))
    }

    fn commit(&mut self, c: ClientId, seq: u64, k: FaultKind, page: &PageName, seen: u64) -> Out {
        let seen = (seen > 0).then_some(seen);
        let cmd = DirCmd::Fault { client: c, seq, page: page.clone(), kind: k, seen };
        Ok(format!("{:?}", self.dir.apply(&cmd)))
    }

    fn fault(
        &mut self,
        c: ClientId,
        page: &PageName,
        k: FaultKind,
        commit: bool,
    ) -> Result<(Grant, &'static str), Error> {
        let seq = self.seqs.entry(c).or_default();
        *seq += 1;
        let seq = *seq;
        self.last.insert(c, (seq, page.clone(), k));
        self.run_fault(c, seq, page, k, commit)
    }

    /// The manager's side of one fault, as `cm` runs it, with direct calls for RPCs.
    fn run_fault(
        &mut self,
        c: ClientId,
        seq: u64,
        page: &PageName,
        k: FaultKind,
        commit: bool,
    ) -> Result<(Grant, &'static str), Error> {
        let plan = match self.dir.plan_fault(c, seq, page, k)? {
            Plan::Cached(grant) => {
                self.confirm(c, page, grant, seq);
                return Ok((grant, "cached"));
            }
            Plan::Run(plan) => plan,
        };
        for holder in &plan.invalidate {
            self.table(*holder).invalidate(page, plan.invalidate_epoch);
        }
        if let Some(fwd) = &plan.forward {
            let t = self.table(fwd.owner).forward(page, fwd.epoch, fwd.kind, fwd.created)?;
            self.table(c).receive(page, t.epoch, t.access, t.content, fwd.seq);
        }
        if !commit {
            return Err(Error::Unavailable("leader crashed before the commit".into()));
        }
        let grant = match self.dir.apply(&plan.commit) {
            Outcome::Granted(grant) => grant,
            Outcome::Rejected(err) => return Err(err),
            other => panic!("unexpected outcome {other:?}"),
        };
        self.confirm(c, page, grant, seq);
        if let Some(old) = plan.release {
            self.table(old).invalidate(page, grant.epoch);
        }
        Ok((grant, "fault"))
    }

    /// The manager's confirmation to the requester, unless the script lost it.
    fn confirm(&mut self, c: ClientId, page: &PageName, grant: Grant, seq: u64) {
        if !self.confirms_lost {
            let _ = self.table(c).confirm(page, grant.epoch, grant.created, seq);
        }
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
            Some(e) => format!("owner={} copy_set={:?} epoch={}", e.owner, e.copy_set, e.epoch),
        }
    }
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
    for path in files {
        let script = std::fs::read_to_string(&path).unwrap();
        let got = regenerate(&script);
        if std::env::var_os("UPDATE_SCRIPTS").is_some() {
            std::fs::write(&path, &got).unwrap();
            continue;
        }
        assert_eq!(got, script, "script {} differs (UPDATE_SCRIPTS=1 rewrites it)", path.display());
    }
}
