//! Socket options every connection gets, so a silent peer (a partition drops
//! packets with no RST) is noticed in about a second and a healed link carries
//! traffic again at once.
//!
//! - TCP_NODELAY: small RPCs go out at once.
//! - TCP keepalive probes on idle sockets.
//! - TCP_RTO_MAX_MS (Linux 6.11 and later; ignored elsewhere): retransmissions
//!   back off to at most [`TCP_RTO_MAX`], not two minutes, so data queued during a
//!   cut flows within a fraction of a second of the heal.
//! - TCP_USER_TIMEOUT: a connection whose data stays unacknowledged for
//!   [`TCP_USER_TIMEOUT`] is closed (the next call dials afresh).
//!
//! HTTP/2 keepalive pings ([`KEEPALIVE_INTERVAL`], [`KEEPALIVE_TIMEOUT`]) are sent
//! by the connections themselves (`link.rs` calling, `net.rs` serving): from the
//! calling side while a call is in flight and nothing has arrived for 500 ms
//! (the side that must notice a silent peer and dial again; a reply still
//! arriving is not silence), and every [`SERVER_KEEPALIVE_INTERVAL`] from the
//! serving side. An idle connection is not pinged by its caller: if its peer
//! went silent meanwhile, TCP keepalive closes it, or the next call on it runs
//! out of its deadline, which drops the cached channel
//! (`Channels::forget`), and the call after it dials afresh.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use tokio::net::TcpStream;

/// How long nothing may arrive on a connection (the calling side) with a call
/// in flight before it is pinged. Idle connections are not pinged: at 100 clients there are about
/// 6,000 of them, and pinging them all cost the 100-client benchmark 15-35% of
/// its throughput with Raft (5-10% with the baseline).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_millis(500);

/// HTTP/2 ping interval of every server (the serving side). A server's pings
/// only free a connection whose caller is gone, which TCP keepalive and
/// `TCP_USER_TIMEOUT` do too; the caller's own pings are what make a call
/// notice a silent peer. Connections are many: at 100 clients a client ends
/// up connected to nearly every other one (about 6,000 connections on one
/// machine), and pings from both ends every 500 ms cost the 100-client
/// benchmark 37-58% of its throughput with Raft (16-22% with the baseline).
pub const SERVER_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// A ping not answered within this, with nothing else arriving meanwhile,
/// closes the connection.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_millis(500);

/// Idle time before TCP keepalive probes start, and the interval between them.
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(1);

/// Longest TCP retransmission timeout.
pub const TCP_RTO_MAX: Duration = Duration::from_millis(500);

/// Unacknowledged data this old closes the connection.
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);

/// Linux's TCP_RTO_MAX_MS socket option (not yet in the libc crate).
const TCP_RTO_MAX_MS: libc::c_int = 44;

/// Applies every option to a connected or accepted socket; an option the
/// kernel does not know is left at its default.
pub fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE).with_interval(TCP_KEEPALIVE);
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive);
    let fd = stream.as_raw_fd();
    let _ = set_tcp_option(fd, TCP_RTO_MAX_MS, TCP_RTO_MAX.as_millis() as libc::c_int);
    let _ = set_tcp_option(fd, libc::TCP_USER_TIMEOUT, TCP_USER_TIMEOUT.as_millis() as libc::c_int);
}

fn set_tcp_option(fd: std::os::fd::RawFd, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `fd` is an open socket owned by the caller for the duration of the
    // call, and the option value is a properly sized and aligned c_int.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Dials `host:port` within `timeout` and tunes the socket.
pub async fn connect(authority: &str, timeout: Duration) -> io::Result<TcpStream> {
    let dialled = tokio::time::timeout(timeout, TcpStream::connect(authority)).await;
    let stream = dialled.map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("connect to {authority}")))??;
    tune(&stream);
    Ok(stream)
}

/// Raises this process's soft limit on open files to its hard limit, as Go's
/// runtime does at start: every connection is a file, a CM serves one per client
/// (up to `--max-clients`, 10,000 by default), and a shell's usual soft limit of
/// 1,024 would make it refuse clients long before that. Returns the soft limit
/// before and after.
pub fn raise_open_files_limit() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read or write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur >= limit.rlim_max {
        return Ok((before, before));
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((before, limit.rlim_cur))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_limit() {
        let (_, after) = raise_open_files_limit().expect("raise the limit");
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit only writes the struct passed.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
        assert_eq!(limit.rlim_cur, limit.rlim_max);
        assert_eq!(after, limit.rlim_cur);
        assert_eq!(raise_open_files_limit().expect("again"), (after, after), "a second call changes nothing");
    }
}
