//! Log set-up shared by every `ivy` subcommand: `--log-format text|json`,
//! `--log-level`, and `RUST_LOG`, which wins over both.
//!
//! Logs go to stderr. Text has ANSI colours only when stderr is a terminal, so
//! a log file or journald never holds escape codes. JSON is one object per line
//! with the event's fields at the top level (`event`, `node`, `role`, `term`,
//! ...) beside `timestamp`, `level`, `target` and `message`.

use std::io::IsTerminal;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The most detailed level written (openraft's own logs stay off unless
/// `RUST_LOG` names them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// What a node does: role changes, elections, membership, readiness.
    Info,
    /// Details for debugging.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    fn name(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// The log flags every subcommand takes.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct LogArgs {
    /// Log line format on stderr.
    #[arg(long, global = true, env = "IVY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log level [default: info for `ivy cm`, warn for the rest]; RUST_LOG, when set, wins.
    #[arg(long, global = true, env = "IVY_LOG_LEVEL", value_enum)]
    pub log_level: Option<LogLevel>,
}

/// The filter in force: `RUST_LOG` if set, else `--log-level` (or the
/// subcommand's default level) with openraft off, and fuser's mount code at
/// errors only: the lazyfs unmounts its mount itself (retrying a busy one,
/// then forcing it), so fuser's own unmount at the session's end always finds
/// it gone and would warn "Unmount failed: Invalid argument" after every run.
pub fn filter(args: &LogArgs, default_level: LogLevel) -> tracing_subscriber::EnvFilter {
    let level = args.log_level.unwrap_or(default_level);
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| format!("{},openraft=off,fuser::mnt=error", level.name()).into())
}

/// Installs the process's log subscriber.
pub fn init(args: &LogArgs, default_level: LogLevel) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(args, default_level))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).with_span_list(false).init(),
    }
}
