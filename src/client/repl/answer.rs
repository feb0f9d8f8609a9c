//! What the REPL prints: one typed [`Answer`] per command (and an [`Event`] for
//! what happens on its own), serialised as one JSON line for `--json` and shown
//! as text for people by `Display`.

use std::fmt;

use serde::Serialize;

use crate::protocol::{Access, Epoch};
use crate::status::StatusReport;

/// The result of one read or write.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpAnswer {
    /// The page, as given.
    pub page: String,
    /// True when the op succeeded.
    pub ok: bool,
    /// The bytes read, as text (reads only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// True when served from the local copy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local: Option<bool>,
    /// The epoch of the copy used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<Epoch>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How long it took, ms.
    pub ms: f64,
    /// When it started and ended, microseconds since the Unix epoch (wall
    /// clock), so a harness can line operations up with what it did meanwhile.
    pub start_us: u64,
    /// See `start_us`.
    pub end_us: u64,
}

/// One row of `print`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PageRow {
    /// The page.
    pub page: String,
    /// This client's access.
    pub access: Access,
    /// The copy's epoch.
    pub epoch: Epoch,
    /// The bytes as text, when held.
    pub value: Option<String>,
}

/// The summary of `x N`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RandomSummary {
    /// Operations run.
    pub n: u64,
    /// True when none failed.
    pub ok: bool,
    /// Operations that succeeded.
    pub succeeded: u64,
    /// Operations that failed.
    pub failed: u64,
    /// Successful operations served locally.
    pub local: u64,
    /// Wall time, ms.
    pub ms: f64,
    /// The first few errors.
    pub errors: Vec<String>,
    /// True when Ctrl-C stopped it before N operations (`n` is what ran).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
}

/// The answer to one command.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Body {
    /// `write`.
    Write(OpAnswer),
    /// `read`.
    Read(OpAnswer),
    /// `print`.
    Print {
        /// Always true.
        ok: bool,
        /// This client's id.
        client: u64,
        /// Its page table.
        pages: Vec<PageRow>,
    },
    /// `x N`.
    X(RandomSummary),
    /// `seed N`.
    Seed {
        /// True when every page was written.
        ok: bool,
        /// Pages written.
        written: u64,
        /// The first error, if a write failed.
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// Wall time, ms.
        ms: f64,
    },
    /// `status`.
    Status {
        /// This client's id.
        client: u64,
        /// The CM nodes' report (`ok`: one of them serves).
        #[serde(flatten)]
        report: StatusReport,
    },
    /// `help`.
    Help {
        /// Always true.
        ok: bool,
        /// One line per command.
        commands: &'static [&'static str],
    },
    /// `quit`.
    Quit {
        /// True when the client left the cluster.
        ok: bool,
        /// Why it could not.
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A line that is not a command.
    Unknown {
        /// Always false.
        ok: bool,
        /// What is wrong with it.
        error: String,
    },
}

/// One answer line, with the tag of the command it answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Answer {
    /// The answer.
    #[serde(flatten)]
    pub body: Body,
    /// The command's `#TAG`, if it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// Something the client says on its own, not in answer to a command.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Event {
    /// The client registered and serves its pages.
    Ready {
        /// Its id.
        client: u64,
        /// Where it serves its pages.
        listen: String,
        /// Where it serves Prometheus metrics (`--metrics-listen`), if anywhere.
        #[serde(skip_serializing_if = "Option::is_none")]
        metrics: Option<String>,
    },
    /// The client could not start or went on no longer.
    Error {
        /// Why.
        error: String,
    },
}

fn ms_and_local(ms: f64, local: Option<bool>) -> String {
    format!("{ms} ms{}", if local == Some(true) { ", local" } else { "" })
}

impl fmt::Display for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Body::Write(a) | Body::Read(a) if !a.ok => write!(f, "error: {}", a.error.as_deref().unwrap_or("failed")),
            Body::Write(a) => write!(f, "ok ({})", ms_and_local(a.ms, a.local)),
            Body::Read(a) => write!(f, "{} ({})", a.value.as_deref().unwrap_or(""), ms_and_local(a.ms, a.local)),
            Body::Print { pages, .. } => write_pages(f, pages),
            Body::X(x) => {
                write!(f, "{} ops: {} ok, {} failed, {} local hits, {} ms", x.n, x.succeeded, x.failed, x.local, x.ms)?;
                if x.interrupted {
                    write!(f, " (interrupted)")?;
                }
                match x.errors.first() {
                    Some(e) => write!(f, "; first error: {e}"),
                    None => Ok(()),
                }
            }
            Body::Seed { written, error: None, ms, .. } => write!(f, "seeded P1..P{written} ({ms} ms)"),
            Body::Seed { written, error: Some(e), .. } => write!(f, "seeded {written} pages, then: {e}"),
            Body::Status { report, .. } => write!(f, "{report}"),
            Body::Help { commands, .. } => write!(f, "{}", commands.join("\n")),
            Body::Quit { error: None, .. } => write!(f, "bye"),
            Body::Quit { error: Some(e), .. } => write!(f, "bye; {e}"),
            Body::Unknown { error, .. } => write!(f, "error: {error}"),
        }
    }
}

fn write_pages(f: &mut fmt::Formatter<'_>, pages: &[PageRow]) -> fmt::Result {
    if pages.is_empty() {
        return write!(f, "(no pages)");
    }
    write!(f, "{:<16} {:<8} {:>6}  value", "page", "access", "epoch")?;
    for r in pages {
        write!(
            f,
            "\n{:<16} {:<8} {:>6}  {}",
            r.page,
            r.access.to_string(),
            r.epoch,
            r.value.as_deref().unwrap_or("-")
        )?;
    }
    Ok(())
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.body.fmt(f)
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Ready { client, listen, .. } => {
                write!(f, "client {client} ready, serving pages on {listen}; type help")
            }
            Event::Error { error } => write!(f, "error: {error}"),
        }
    }
}
