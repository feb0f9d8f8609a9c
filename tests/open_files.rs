//! A server that runs out of open files pauses accepting instead of spinning,
//! and serves the waiting connection once files are free again.
//!
//! This binary holds one test: it lowers its own open-files limit, which would
//! disturb any other test sharing the process.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ivy_raft::rpc::{net, Server};

/// CPU time this process has used (user and system).
fn cpu_time() -> Duration {
    // SAFETY: rusage is plain integers, for which all zeroes is a valid value,
    // and getrusage only writes the struct passed.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Sets the soft open-files limit.
fn set_open_files_limit(soft: u64) -> Result<()> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read or write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        bail!("getrlimit: {}", std::io::Error::last_os_error());
    }
    limit.rlim_cur = soft;
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        bail!("setrlimit: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_out_of_files_pauses_accepting_and_recovers() -> Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (_reporter, health) = tonic_health::server::health_reporter();
    let _server = Server::spawn(net::server_builder().add_service(health), listener);
    let open_now = std::fs::read_dir("/proc/self/fd")?.count() as u64;
    set_open_files_limit(open_now + 64)?;

    // Take every free file, then give one back for the client's socket: the
    // server then has none for the connection it must accept.
    let mut fillers = Vec::new();
    loop {
        match File::open("/dev/null") {
            Ok(f) => fillers.push(f),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
            Err(e) => return Err(e).context("opening /dev/null"),
        }
        if fillers.len() > 10_000 {
            bail!("the open-files limit did not take");
        }
    }
    fillers.pop();
    let mut waiting = TcpStream::connect(addr).context("the connection to wait in the backlog")?;

    // While it cannot accept, the server must not spin on `accept`.
    let (cpu0, wall0) = (cpu_time(), Instant::now());
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (cpu, wall) = (cpu_time() - cpu0, wall0.elapsed());
    assert!(
        cpu < wall / 3,
        "the process used {} ms of CPU in {} ms while its server could not accept (spinning on accept?)",
        cpu.as_millis(),
        wall.as_millis()
    );

    // Files are free again: the waiting connection is accepted and served (the
    // server's HTTP/2 SETTINGS frame arrives) without another dial.
    fillers.truncate(fillers.len().saturating_sub(8));
    let served = tokio::task::spawn_blocking(move || -> Result<usize> {
        waiting.set_read_timeout(Some(Duration::from_secs(5)))?;
        use std::io::Write;
        waiting.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")?;
        let mut buf = [0u8; 64];
        match waiting.read(&mut buf) {
            Ok(n) => Ok(n),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                bail!("the waiting connection was not served within 5 s of files being freed")
            }
            Err(e) => Err(e.into()),
        }
    })
    .await??;
    assert!(served > 0, "the server closed the waiting connection instead of serving it");
    drop(fillers);
    Ok(())
}
