//! Accepting connections without spinning when the process runs out of files.
//!
//! tonic's server takes the next connection from a stream and, when the stream
//! yields an error, logs it and asks again at once. `accept` fails at once, too,
//! while the process is at its open-files limit (`EMFILE`) and a connection waits
//! in the backlog, so the two used to spin: in a 100-client `ivy bench` (every
//! client in one process, about 20,000 sockets) the accept loop took over half of
//! the process's CPU time. [`Accepting`] never yields an error: a connection that
//! failed on its own (an error accept(2) says to treat as "try again": reset or
//! aborted before it was accepted, a network error pending on it) is skipped, and
//! any other error (above all a shortage of files, buffers or memory) pauses
//! accepting, from 5 ms doubling to 100 ms (the pending connections wait in the
//! backlog meanwhile), with a warning that names the cause and, for a shortage,
//! the limit to raise.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tokio_stream::Stream;

use super::socket;

/// The first pause after accepting failed for a reason other than the connection.
const FIRST_PAUSE: Duration = Duration::from_millis(5);
/// The longest pause.
const LONGEST_PAUSE: Duration = Duration::from_millis(100);
/// At most one warning per this long while the shortage lasts.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The connections of a listener, each tuned ([`socket::tune`]), as a stream
/// that ends never and fails never.
pub struct Accepting {
    listener: TcpListener,
    pause: Option<Pin<Box<Sleep>>>,
    next_pause: Duration,
    warned: Option<Instant>,
}

impl Accepting {
    /// The connections `listener` accepts.
    pub fn new(listener: TcpListener) -> Self {
        Accepting { listener, pause: None, next_pause: FIRST_PAUSE, warned: None }
    }

    /// Pauses accepting after `err`, which was not about one connection.
    fn pause_for(&mut self, err: &io::Error) {
        let now = Instant::now();
        if self.warned.is_none_or(|at| now.duration_since(at) >= WARN_EVERY) {
            self.warned = Some(now);
            let addr = self.listener.local_addr().map_or_else(|_| "?".to_string(), |a| a.to_string());
            tracing::warn!(
                event = "accept_paused",
                %addr,
                "cannot accept connections on {addr}: {err} ({}); pausing up to {} ms at a time, \
                 connections wait in the backlog",
                shortage_hint(err),
                LONGEST_PAUSE.as_millis()
            );
        }
        self.pause = Some(Box::pin(tokio::time::sleep(self.next_pause)));
        self.next_pause = (self.next_pause * 2).min(LONGEST_PAUSE);
    }
}

impl Stream for Accepting {
    type Item = io::Result<TcpStream>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(pause) = this.pause.as_mut() {
                if pause.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.pause = None;
            }
            match this.listener.poll_accept(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok((stream, _))) => {
                    this.next_pause = FIRST_PAUSE;
                    socket::tune(&stream);
                    return Poll::Ready(Some(Ok(stream)));
                }
                // The connection failed before it was accepted: take the next one.
                Poll::Ready(Err(err)) if is_connection_error(&err) => tracing::debug!("accept: {err}"),
                Poll::Ready(Err(err)) => this.pause_for(&err),
            }
        }
    }
}

/// True when accepting failed because of the connection it was accepting (the
/// errors accept(2) tells a server to treat as "try again"): the next one may
/// well succeed. Any other error would most likely come again at once.
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::ECONNRESET
                | libc::EINTR
                | libc::EPERM
                | libc::EPROTO
                | libc::ENOPROTOOPT
                | libc::ENETDOWN
                | libc::ENETUNREACH
                | libc::EHOSTDOWN
                | libc::EHOSTUNREACH
                | libc::ENONET
                | libc::EOPNOTSUPP
                | libc::ETIMEDOUT
        )
    )
}

/// What an operator can do about `err`.
fn shortage_hint(err: &io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::EMFILE) => "this process is at its open-files limit: raise it (ulimit -n, LimitNOFILE=)",
        Some(libc::ENFILE) => "the system is at its open-files limit: raise fs.file-max",
        Some(libc::ENOBUFS | libc::ENOMEM) => "the system is short of memory or socket buffers",
        _ => "an error that is not about one connection",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_errors_of_one_connection_are_skipped_without_a_pause() {
        for code in [libc::ECONNABORTED, libc::ECONNRESET, libc::EPROTO, libc::EPERM, libc::EINTR] {
            assert!(is_connection_error(&io::Error::from_raw_os_error(code)), "{code}");
        }
        for code in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM, libc::EBADF, libc::EINVAL] {
            assert!(!is_connection_error(&io::Error::from_raw_os_error(code)), "{code}");
        }
        assert!(shortage_hint(&io::Error::from_raw_os_error(libc::EMFILE)).contains("ulimit"));
    }
}
