//! The client's command loop: one command per stdin line, one answer per command.
//!
//! Commands: `write <page> <content...>` (alias `writePage`), `read <page>`
//! (alias `readPage`), `print`, `x [N]`, `status`, `help`, `quit`. Each line is
//! parsed once into a [`Command`]; each command gives one typed [`Answer`],
//! printed as one JSON object per line with `--json` (the first line is the
//! `ready` [`Event`]) and as text for a person otherwise. A line starting `#TAG `
//! runs concurrently with the lines after it and its answer carries
//! `"tag":"TAG"` (the chaos harness keeps several ops in flight). A line that is
//! not valid UTF-8 or holds control characters (an arrow key's escape sequence
//! from a pipe) gets an error answer; the loop goes on. What the client does on
//! its own (an eviction) is printed as an event line.
//!
//! Lines come from a [`LineSource`]: rustyline (editing, history, completion)
//! for a person at a terminal, a plain reader for pipes and `--json`. `quit`,
//! end of input (Ctrl-D) and SIGTERM leave the cluster before the process
//! exits, and so does Ctrl-C from a pipe; at a terminal Ctrl-C clears the line
//! at the prompt, and stops a running `x N` (which shows its progress) without
//! stopping the client.

mod answer;
mod command;
mod line_source;
mod progress;

use std::sync::Arc;
use std::time::Instant;

use tokio::task::JoinSet;

pub use answer::{Answer, Body, Event, OpAnswer, PageRow, RandomSummary};
pub use command::{parse, split_tag, Command, HELP, MAX_X_OPS, X_PAGES};
pub use line_source::{default_history_file, Line, LineSource, MAX_LINE};
use progress::Progress;

use super::{Client, ClientEvent};
use crate::error::Error;
use crate::protocol::{Hit, OpDone, RandomOp, RandomOps};

/// Where answers go: JSON lines or text.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// One JSON object per line.
    pub json: bool,
}

impl Output {
    /// Prints one answer.
    pub fn answer(self, answer: &Answer) {
        if self.json {
            println!("{}", serde_json::to_string(answer).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")));
        } else {
            println!("{answer}");
        }
    }

    /// Prints one event.
    pub fn event(self, event: &Event) {
        if self.json {
            println!("{}", serde_json::to_string(event).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")));
        } else {
            println!("{event}");
        }
    }

    /// Prints something the client did on its own.
    pub fn client_event(self, event: &ClientEvent) {
        if self.json {
            println!("{}", serde_json::to_string(event).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")));
            return;
        }
        match event {
            ClientEvent::Evicted { client, now } => println!(
                "evicted: the CM evicted client {client} (its lease ran out); dropped every copy and registered again as client {now}"
            ),
        }
    }
}

/// Resolves on SIGTERM, and on Ctrl-C unless a person at a terminal types the
/// commands: there Ctrl-C is for the line at the prompt and for a running
/// `x N`, and this keeps it from killing the process between commands.
async fn stop_signal(interactive: bool) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return std::future::pending().await;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => {
                if !interactive {
                    return;
                }
            }
        }
    }
}

/// Runs the command loop over `input` until `quit` or end of input; `metrics`
/// is where the process serves its metrics, announced in the ready event.
pub async fn run(client: Client, mut input: LineSource, out: Output, metrics: Option<String>) -> Result<(), Error> {
    out.event(&Event::Ready { client: client.id(), listen: client.addr().to_string(), metrics });
    let mut events = client.events();
    let announcer = tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            out.client_event(&event);
        }
    });
    let interactive = input.interactive();
    let stop = stop_signal(interactive);
    tokio::pin!(stop);
    let client = Arc::new(client);
    let mut tagged = JoinSet::new();
    loop {
        let line = tokio::select! {
            line = input.next() => line,
            () = &mut stop => break,
        };
        let line = match line {
            Line::End => break,
            Line::Interrupted => continue,
            Line::Bad(error) => {
                out.answer(&unknown(None, error));
                continue;
            }
            Line::Text(line) => line,
        };
        let (tag, line) = split_tag(&line);
        let cmd = match parse(line) {
            Ok(None) => continue,
            Ok(Some(Command::Quit)) => break,
            Ok(Some(cmd)) => cmd,
            Err(err) => {
                out.answer(&unknown(tag, err));
                continue;
            }
        };
        match tag {
            // A tagged command runs concurrently with the ones after it.
            Some(tag) => {
                let client = client.clone();
                tagged.spawn(async move { out.answer(&Answer { body: execute(&client, cmd).await, tag: Some(tag) }) });
            }
            None if interactive => out.answer(&Answer { body: execute_at_terminal(&client, cmd).await, tag: None }),
            None => out.answer(&Answer { body: execute(&client, cmd).await, tag: None }),
        }
    }
    while tagged.join_next().await.is_some() {}
    let id = client.id();
    let left = match Arc::try_unwrap(client) {
        Ok(client) => client.leave().await,
        Err(_) => Err(Error::Internal("commands still running".into())),
    };
    announcer.abort();
    let error = left
        .err()
        .map(|e| format!("could not leave the cluster ({e}); the CM will evict client {id} when its lease runs out"));
    out.answer(&Answer { body: Body::Quit { ok: error.is_none(), error }, tag: None });
    Ok(())
}

fn unknown(tag: Option<String>, error: String) -> Answer {
    Answer { body: Body::Unknown { ok: false, error }, tag }
}

/// Executes one command typed at a terminal: `x N` shows its progress and
/// stops early on Ctrl-C; the rest as [`execute`].
pub async fn execute_at_terminal(client: &Client, cmd: Command) -> Body {
    match cmd {
        Command::Random { n } => {
            let progress = Progress::start();
            let summary = random(client, n, Instant::now(), Some(&progress)).await;
            progress.finish();
            Body::X(summary)
        }
        other => execute(client, other).await,
    }
}

/// Executes one command and returns its answer.
pub async fn execute(client: &Client, cmd: Command) -> Body {
    let start = Instant::now();
    match cmd {
        Command::Write { page, content } => {
            let start_us = unix_us();
            let done = client.write_at(&page, content.as_bytes()).await;
            Body::Write(op_answer(page, done, start, start_us))
        }
        Command::Read { page } => {
            let start_us = unix_us();
            let done = client.read_at(&page).await;
            Body::Read(op_answer(page, done, start, start_us))
        }
        Command::Print => print(client),
        Command::Random { n } => Body::X(random(client, n, start, None).await),
        Command::Seed { n } => seed(client, n, start).await,
        Command::Status => Body::Status { client: client.id(), report: client.cm().status().await },
        Command::Help => Body::Help { ok: true, commands: HELP },
        Command::Quit => Body::Quit { ok: true, error: None },
    }
}

fn ms_since(start: Instant) -> f64 {
    (start.elapsed().as_secs_f64() * 1e6).round() / 1e3
}

/// Microseconds since the Unix epoch, by the wall clock.
pub fn unix_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

fn op_answer(page: String, done: Result<OpDone, Error>, start: Instant, start_us: u64) -> OpAnswer {
    let ms = ms_since(start);
    let end_us = unix_us();
    match done {
        Ok(d) => OpAnswer {
            page,
            ok: true,
            value: d.value.map(|v| String::from_utf8_lossy(&v).into_owned()),
            local: Some(d.hit == Hit::Local),
            epoch: Some(d.epoch),
            error: None,
            ms,
            start_us,
            end_us,
        },
        Err(e) => OpAnswer {
            page,
            ok: false,
            value: None,
            local: None,
            epoch: None,
            error: Some(e.to_string()),
            ms,
            start_us,
            end_us,
        },
    }
}

fn print(client: &Client) -> Body {
    let pages = client
        .pages()
        .into_iter()
        .map(|(page, local)| PageRow {
            page: page.to_string(),
            access: local.access,
            epoch: local.epoch,
            value: local.content.as_deref().map(|v| String::from_utf8_lossy(v).into_owned()),
        })
        .collect();
    Body::Print { ok: true, client: client.id(), pages }
}

/// `seed N`: writes P1..PN with "Content by client <id>", as the original did.
async fn seed(client: &Client, n: u64, start: Instant) -> Body {
    let content = format!("Content by client {}", client.id());
    for p in 1..=n {
        if let Err(e) = client.write(&format!("P{p}"), content.as_bytes()).await {
            return Body::Seed { ok: false, written: p - 1, error: Some(e.to_string()), ms: ms_since(start) };
        }
    }
    Body::Seed { ok: true, written: n, error: None, ms: ms_since(start) }
}

/// `x N`: N reads or writes by coin flip on P1..P10, no sleeps. With
/// `progress` (a terminal), it reports as it goes and stops after the
/// operation in flight when Ctrl-C is pressed.
async fn random(client: &Client, n: u64, start: Instant, progress: Option<&Progress>) -> RandomSummary {
    const SHOWN_ERRORS: usize = 3;
    let (mut succeeded, mut failed, mut local) = (0u64, 0u64, 0u64);
    let mut errors: Vec<String> = Vec::new();
    let mut interrupted = false;
    let ops = RandomOps::new(rand::random(), X_PAGES, 0.5, format!("c{}", client.id()));
    for (i, op) in ops.take(n as usize).enumerate() {
        if progress.is_some_and(|p| p.interrupted()) {
            interrupted = true;
            break;
        }
        let result = match &op {
            RandomOp::Write { page, value } => client.write(page, value.as_bytes()).await,
            RandomOp::Read { page } => client.read(page).await.map(|(_, hit)| hit),
        };
        match result {
            Ok(hit) => {
                succeeded += 1;
                local += u64::from(hit == Hit::Local);
            }
            Err(e) => {
                failed += 1;
                if errors.len() < SHOWN_ERRORS {
                    let hint = if matches!(e, Error::PageNotFound { .. }) { " (run seed first)" } else { "" };
                    errors.push(format!("{e}{hint}"));
                }
            }
        }
        if let Some(p) = progress {
            p.show(i as u64 + 1, n, failed);
        }
    }
    let done = succeeded + failed;
    RandomSummary {
        n: done,
        ok: failed == 0 && !interrupted,
        succeeded,
        failed,
        local,
        ms: ms_since(start),
        errors,
        interrupted,
    }
}
