//! Where the REPL's lines come from, kept apart from what it does with them.
//!
//! - [`LineSource::plain`]: any async reader, line by line (pipes, scripts,
//!   `--json`, the chaos harness): no echo, no prompt handling, a line longer
//!   than [`MAX_LINE`] or not UTF-8 comes back as [`Line::Bad`].
//! - [`LineSource::editor`]: a person at a terminal: rustyline's line editing
//!   (arrows, Home/End, Ctrl-R search), history kept in a file, and Tab
//!   completion of command names. rustyline blocks, so it runs on a thread of
//!   its own and reads a line only when asked, so the terminal is in its normal
//!   mode (Ctrl-C a signal) while a command runs.

use std::io::IsTerminal;
use std::path::PathBuf;

use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::history::DefaultHistory;
use rustyline::{Context, Editor, Helper, Highlighter, Hinter, Validator};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};
use tokio::sync::{mpsc, oneshot};

use super::command::COMMAND_WORDS;

/// Longest input line accepted, bytes (a page's content plus the command).
pub const MAX_LINE: usize = 1024 * 1024;

/// Most entries kept in the history file.
pub const HISTORY_SIZE: usize = 1000;

/// The prompt the editor shows.
const PROMPT: &str = "> ";

/// One thing the source produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A line, without its line ending.
    Text(String),
    /// A line that cannot be a command, and why.
    Bad(String),
    /// Ctrl-C at the prompt: the line is dropped, the loop goes on.
    Interrupted,
    /// End of input (Ctrl-D, or the pipe closed).
    End,
}

/// A source of REPL lines: plain or edited.
pub enum LineSource {
    /// A reader with no editing.
    Plain(Box<dyn AsyncBufRead + Unpin + Send>),
    /// rustyline on its own thread; each request reads one line.
    Editor(mpsc::UnboundedSender<oneshot::Sender<Line>>),
}

impl LineSource {
    /// Reads `input` line by line.
    pub fn plain(input: impl AsyncBufRead + Unpin + Send + 'static) -> Self {
        LineSource::Plain(Box::new(input))
    }

    /// Stdin: the editor when stdin and stdout are terminals and the output is
    /// for people, the plain reader otherwise (or when the editor cannot start).
    pub fn stdin(json: bool, history: Option<PathBuf>) -> Self {
        let terminal = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
        if terminal && !json {
            match Self::editor(history) {
                Ok(source) => return source,
                Err(err) => tracing::warn!(%err, "no line editing"),
            }
        }
        Self::plain(tokio::io::BufReader::new(tokio::io::stdin()))
    }

    /// The line editor, keeping its history in `history` (if any).
    pub fn editor(history: Option<PathBuf>) -> Result<Self, ReadlineError> {
        let config = rustyline::Config::builder().max_history_size(HISTORY_SIZE)?.auto_add_history(false).build();
        let mut editor: Editor<Commands, DefaultHistory> = Editor::with_config(config)?;
        editor.set_helper(Some(Commands));
        if let Some(path) = &history {
            let _ = editor.load_history(path);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("ivy-repl-editor".into())
            .spawn(move || edit(editor, history, rx))
            .map_err(ReadlineError::Io)?;
        Ok(LineSource::Editor(tx))
    }

    /// True when a person types the lines (the editor).
    pub fn interactive(&self) -> bool {
        matches!(self, LineSource::Editor(_))
    }

    /// The next line.
    pub async fn next(&mut self) -> Line {
        match self {
            LineSource::Plain(input) => read_plain(input).await,
            LineSource::Editor(ask) => {
                let (reply, answer) = oneshot::channel();
                if ask.send(reply).is_err() {
                    return Line::End;
                }
                answer.await.unwrap_or(Line::End)
            }
        }
    }
}

async fn read_plain(input: &mut (dyn AsyncBufRead + Unpin + Send)) -> Line {
    let mut buf = Vec::new();
    match input.take(MAX_LINE as u64 + 1).read_until(b'\n', &mut buf).await {
        Ok(0) => Line::End,
        Err(err) => Line::Bad(format!("stdin: {err}")),
        Ok(_) if buf.len() > MAX_LINE => {
            skip_rest_of_line(input).await;
            Line::Bad(format!("the line is longer than {MAX_LINE} bytes"))
        }
        Ok(_) => match String::from_utf8(buf) {
            Ok(line) => Line::Text(line.trim_end_matches(['\n', '\r']).to_string()),
            Err(_) => Line::Bad("the line is not valid UTF-8".into()),
        },
    }
}

/// Discards input up to the next line end, in buffer-sized pieces, so the tail
/// of an over-long line is neither kept in memory nor read as a command.
async fn skip_rest_of_line(input: &mut (dyn AsyncBufRead + Unpin + Send)) {
    loop {
        let (used, done) = match input.fill_buf().await {
            Ok([]) | Err(_) => return,
            Ok(buf) => buf.iter().position(|b| *b == b'\n').map_or((buf.len(), false), |i| (i + 1, true)),
        };
        input.consume(used);
        if done {
            return;
        }
    }
}

/// The editor thread: one line per request, history saved after each line.
fn edit(
    mut editor: Editor<Commands, DefaultHistory>,
    history: Option<PathBuf>,
    mut asks: mpsc::UnboundedReceiver<oneshot::Sender<Line>>,
) {
    while let Some(reply) = asks.blocking_recv() {
        let line = match editor.readline(PROMPT) {
            Ok(line) => {
                if !line.trim().is_empty() && editor.add_history_entry(line.as_str()).unwrap_or(false) {
                    save_history(&mut editor, history.as_ref());
                }
                Line::Text(line)
            }
            Err(ReadlineError::Interrupted) => Line::Interrupted,
            Err(ReadlineError::Eof) => Line::End,
            Err(err) => Line::Bad(format!("terminal: {err}")),
        };
        let end = line == Line::End;
        if reply.send(line).is_err() || end {
            return;
        }
    }
}

fn save_history(editor: &mut Editor<Commands, DefaultHistory>, path: Option<&PathBuf>) {
    let Some(path) = path else { return };
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(err) = editor.save_history(path) {
        tracing::debug!(%err, path = %path.display(), "history not saved");
    }
}

/// The default history file: `$XDG_DATA_HOME/ivy/history`, else
/// `$HOME/.local/share/ivy/history`; none when neither is set.
pub fn default_history_file() -> Option<PathBuf> {
    let data = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()).map(PathBuf::from).or_else(|| {
        std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| PathBuf::from(h).join(".local/share"))
    })?;
    Some(data.join("ivy").join("history"))
}

/// Tab completion of command names at the start of the line.
#[derive(Helper, Hinter, Highlighter, Validator)]
struct Commands;

impl Completer for Commands {
    type Candidate = Pair;

    fn complete(&self, line: &str, pos: usize, _: &Context<'_>) -> rustyline::Result<(usize, Vec<Pair>)> {
        Ok((0, complete_command(&line[..pos])))
    }
}

/// The command names that complete `typed` (only while the first word is typed).
fn complete_command(typed: &str) -> Vec<Pair> {
    if typed.contains(char::is_whitespace) {
        return Vec::new();
    }
    let candidates = COMMAND_WORDS.iter().filter(|w| w.starts_with(typed));
    candidates.map(|w| Pair { display: w.to_string(), replacement: format!("{w} ") }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completes_command_names_only_in_the_first_word() {
        let names = |t: &str| complete_command(t).into_iter().map(|p| p.display).collect::<Vec<_>>();
        assert_eq!(names("wr"), ["write", "writePage"]);
        assert_eq!(names("q"), ["quit"]);
        assert_eq!(names(""), COMMAND_WORDS);
        assert!(names("read P").is_empty());
        assert_eq!(complete_command("st")[0].replacement, "status ");
    }

    #[tokio::test]
    async fn plain_lines_bad_lines_and_the_end() {
        let input: &[u8] = b"write P1 a\r\n\xff\xfe\nread P1";
        let mut source = LineSource::plain(input);
        assert_eq!(source.next().await, Line::Text("write P1 a".into()));
        assert!(matches!(source.next().await, Line::Bad(e) if e.contains("UTF-8")));
        assert_eq!(source.next().await, Line::Text("read P1".into()));
        assert_eq!(source.next().await, Line::End);
        assert!(!source.interactive());
    }

    #[tokio::test]
    async fn a_line_too_long_is_refused_and_skipped() {
        let mut input = vec![b'x'; MAX_LINE + 10];
        input.extend_from_slice(b"\nprint\n");
        let mut source = LineSource::plain(std::io::Cursor::new(input));
        assert!(matches!(source.next().await, Line::Bad(e) if e.contains("longer")));
        assert_eq!(source.next().await, Line::Text("print".into()));
    }
}
