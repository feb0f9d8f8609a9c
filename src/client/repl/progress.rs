//! Progress of a long `x N` at a terminal, and Ctrl-C to stop it.
//!
//! While an `x N` runs, the terminal is in its normal mode (the line editor is
//! not reading), so Ctrl-C is a SIGINT: a task catches it and raises a flag
//! the loop checks between operations, so the operation in flight finishes
//! (within its deadline) and the client stays up. The progress line goes to
//! stderr, redrawn at most every [`REDRAW_EVERY`], and is erased at the end.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

/// How often the progress line is redrawn, at most.
pub const REDRAW_EVERY: Duration = Duration::from_millis(100);

/// A running `x N`'s progress line and its Ctrl-C flag.
pub struct Progress {
    stop: Arc<AtomicBool>,
    drawn: Mutex<Option<Instant>>,
    watcher: JoinHandle<()>,
}

impl Progress {
    /// Starts catching Ctrl-C for the duration of one command.
    pub fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let watcher = tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                flag.store(true, Ordering::Relaxed);
            }
        });
        Progress { stop, drawn: Mutex::new(None), watcher }
    }

    /// True once Ctrl-C was pressed.
    pub fn interrupted(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Redraws `x: done/n` (with failures), at most every [`REDRAW_EVERY`].
    pub fn show(&self, done: u64, n: u64, failed: u64) {
        let mut drawn = self.drawn.lock().unwrap_or_else(|e| e.into_inner());
        if drawn.is_some_and(|t| t.elapsed() < REDRAW_EVERY) && done < n {
            return;
        }
        *drawn = Some(Instant::now());
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[Kx: {done}/{n} ops, {failed} failed (Ctrl-C stops)");
        let _ = err.flush();
    }

    /// Erases the progress line and stops catching Ctrl-C.
    pub fn finish(self) {
        if self.drawn.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}
