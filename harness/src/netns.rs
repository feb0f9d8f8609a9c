//! A test network made of Linux network namespaces, with silent partitions.
//!
//! # Topology
//!
//! ```text
//!   ns "<base>-s"  (switch; no IP addresses, never routes)
//!   ┌──────────────────────────────────────────────────────┐
//!   │  br0 ─┬─ p0   br1 ─ …   br2 ─ …   (one bridge/group) │
//!   │       ├─ p1                                          │
//!   │       └─ p2                                          │
//!   └───────┼─────────┼─────────┼──────────────────────────┘
//!        veth pair  veth pair  veth pair
//!   ns "<base>-h0" ns "<base>-h1" ns "<base>-h2"
//!     eth0 10.213.X.1  eth0 10.213.X.2  eth0 10.213.X.3   (+ lo up)
//! ```
//!
//! `<base>` is `<prefix>-<pid>-<seq>`. Every interface lives in a namespace of the rig;
//! the root namespace's interfaces and routes are never touched, so the short names
//! (`br0`, `p3`, `eth0`) cannot clash with anything, and nothing is routable to or
//! from the outside (host namespaces have only the connected /24, no default route).
//! The /24 (`10.213.X.0/24`, X derived from pid and sequence number) is cosmetic:
//! each rig is its own isolated L2 segment, so two rigs could even share a subnet.
//!
//! # Partitions and why they are silent
//!
//! A partition is made by moving switch-side veth ports between bridges inside the
//! switch namespace (`ip link set pN nomaster`, then `ip link set pN master brG`):
//! hosts in the same group share a bridge, hosts in different groups are on different,
//! unconnected bridges. Frames towards another group are simply never forwarded.
//! Nothing answers them: the switch namespace has no IP addresses (frames that reach
//! its stack are for a foreign MAC and are discarded), there is no firewall that could
//! REJECT, and the links stay up, so the hosts see no carrier change, no route change
//! and no neighbour flush. A TCP peer across the cut gets no RST and no ICMP: new
//! connects time out, established connections just retransmit with back-off and
//! resume after [`Net::heal`].
//!
//! Every host also gets permanent (static) neighbour entries for all other hosts
//! (default, see [`NetOptions::static_arp`]). Without them a cut longer than the ARP
//! timers is *not* silent: once a neighbour entry fails (measured: ~45-50 s into a cut),
//! new connects fail with `EHOSTUNREACH` ("No route to host") after ~3 s of unanswered
//! ARP, which a routed real-world partition would not do. Static entries also remove
//! any ARP resolution after a heal.
//!
//! Rejected alternatives (measured during development): setting the switch port
//! *down* drops carrier on the host's `eth0`, flushes its neighbours and makes connects
//! fail with `EHOSTUNREACH`; bridge VLAN filtering needs `CONFIG_BRIDGE_VLAN_FILTERING`,
//! which is missing on this kernel; tc/iptables/nft are not allowed.
//!
//! # TCP across a heal
//!
//! An idle connection survives any cut and works at once after a heal. One with unacked
//! data resumes only at its next retransmission: with default settings the back-off
//! doubles up to 120 s, so after a 30 s cut delivery came ~24 s after the heal. A
//! 1 s cap on the back-off (`TCP_RTO_MAX_MS` socket option 44 or the per-namespace
//! sysctl `net.ipv4.tcp_rto_max_ms`, Linux >= 6.15) makes it <= 1 s, but then
//! `tcp_retries2` (15) is exhausted after ~15 s: raise `TCP_USER_TIMEOUT` or
//! `tcp_retries2` too (see [`Host::set_sysctl`]).
//!
//! # Running things inside a host
//!
//! [`Host::command`] builds a [`std::process::Command`] whose child calls `setns(2)`
//! into the host's namespace in a `pre_exec` hook (cheaper than `ip netns exec`, which
//! also sets up a mount namespace and remounts `/sys`). Convert it with
//! `tokio::process::Command::from(cmd)` for async use. [`Host::enter`] runs a closure on
//! a fresh thread switched into the namespace; sockets created there stay in that
//! namespace, so tests can open listeners and connections in-process.
//!
//! # Cleanup
//!
//! * `Drop` of [`Net`] unmounts and unlinks the `/run/netns` entries (what
//!   `ip netns del` does) and closes its namespace fds; the kernel then destroys the
//!   namespaces and with them every veth and bridge. This also runs when a test panics
//!   (unwinding). Processes still running inside a namespace keep it alive (anonymous,
//!   not listed) until they exit: kill children before dropping the `Net`.
//! * SIGINT/SIGTERM/SIGHUP: if the signal's disposition is still the default, a handler
//!   is installed that does the same unmount/unlink with async-signal-safe syscalls only
//!   and then re-raises the signal, so the process still dies of it.
//! * SIGKILL, `panic = "abort"`, power loss: [`sweep_stale`] (also called by
//!   [`Net::create`]) deletes entries `<prefix>-<pid>-…` whose pid is dead.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Where `ip netns` keeps its namespace mounts.
const NETNS_DIR: &str = "/run/netns";
/// Host addresses are `.1 ..= .n` of a /24.
const MAX_HOSTS: usize = 250;
/// Keeps names short enough for tools and for the signal handler's fixed buffers.
const MAX_PREFIX: usize = 12;

/// Errors of the rig.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A caller-supplied argument is unusable.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The `ip` program could not be started.
    #[error("cannot run `{cmd}`: {source}")]
    Spawn {
        /// The command line.
        cmd: String,
        /// Why it could not be started.
        source: io::Error,
    },
    /// `ip` ran and failed.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Ip {
        /// The command line.
        cmd: String,
        /// Exit status.
        status: String,
        /// What `ip` printed on stderr (names the failing batch line).
        stderr: String,
    },
    /// A namespace could not be opened or entered.
    #[error("namespace {name}: {source}")]
    Namespace {
        /// Namespace name.
        name: String,
        /// The OS error.
        source: io::Error,
    },
    /// Other I/O while talking to `ip`.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
}

/// Options for [`Net::create_with`].
#[derive(Debug, Clone)]
pub struct NetOptions {
    /// Install permanent neighbour (ARP) entries for every other host, so cuts never
    /// surface as `EHOSTUNREACH` and heals need no ARP. Default `true`.
    pub static_arp: bool,
}

impl Default for NetOptions {
    fn default() -> Self {
        NetOptions { static_arp: true }
    }
}

/// One host: a network namespace with `lo` and `eth0` (its address on the rig's /24).
#[derive(Debug)]
pub struct Host {
    index: usize,
    ns: String,
    addr: Ipv4Addr,
    fd: Arc<OwnedFd>,
}

impl Host {
    /// Index of the host in its [`Net`].
    pub fn index(&self) -> usize {
        self.index
    }

    /// The host's IPv4 address on `eth0`.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// Namespace name, usable as `ip netns exec NAME …` / `ip -n NAME …` for debugging.
    pub fn ns_name(&self) -> &str {
        &self.ns
    }

    /// A command whose process runs inside this host's namespace (via `setns` in a
    /// `pre_exec` hook; only the network namespace changes, not mounts or `/sys`).
    ///
    /// The hook keeps the namespace fd alive, so the command can be spawned even after
    /// the [`Net`] is gone (then into an isolated, unlisted namespace). For tokio use
    /// `tokio::process::Command::from(host.command(..))`.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let fd = Arc::clone(&self.fd);
        // SAFETY: the hook only makes the async-signal-safe setns(2) syscall and builds
        // an `io::Error` from errno, which does not allocate.
        unsafe {
            cmd.pre_exec(move || setns_net(fd.as_raw_fd()));
        }
        cmd
    }

    /// A `'static` maker of [`Host::command`]s, for code that starts (and restarts)
    /// processes in this host after the borrow of the [`Net`] ends.
    pub fn launcher(&self) -> impl Fn(&std::path::Path) -> Command + Send + Sync + 'static {
        let fd = Arc::clone(&self.fd);
        move |program| {
            let mut cmd = Command::new(program);
            let fd = Arc::clone(&fd);
            // SAFETY: as in `command`: only the async-signal-safe setns(2) syscall.
            unsafe {
                cmd.pre_exec(move || setns_net(fd.as_raw_fd()));
            }
            cmd
        }
    }

    /// Runs `f` on a new thread that has joined this host's namespace, and returns its
    /// result. Sockets created by `f` belong to the host (they stay there for their
    /// whole life, whichever thread uses them later). A panic in `f` is propagated.
    pub fn enter<R, F>(&self, f: F) -> Result<R, NetError>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        run_in_ns(self.fd.as_raw_fd(), f).map_err(|source| NetError::Namespace { name: self.ns.clone(), source })
    }

    /// Sets a per-namespace sysctl, e.g. `set_sysctl("net/ipv4/tcp_rto_max_ms", "1000")`
    /// (writes `/proc/sys/<key>` from a thread inside the namespace).
    pub fn set_sysctl(&self, key: &str, value: &str) -> Result<(), NetError> {
        if key.split('/').any(|c| c.is_empty() || c == "..") {
            return Err(NetError::Invalid(format!("sysctl key {key:?}")));
        }
        self.enter(|| std::fs::write(format!("/proc/sys/{key}"), value))?.map_err(NetError::from)
    }
}

/// Runs `f` on a scoped thread that first joins the network namespace `fd`.
fn run_in_ns<R: Send, F: FnOnce() -> R + Send>(fd: RawFd, f: F) -> io::Result<R> {
    let joined = std::thread::scope(|s| s.spawn(move || setns_net(fd).map(|()| f())).join());
    joined.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

fn setns_net(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd; CLONE_NEWNET is allowed in threaded processes.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Bridge of every switch port; `usize::MAX` = unknown (after a failed change).
#[derive(Debug)]
struct Topo {
    port_bridge: Vec<usize>,
    bridges: usize,
}

/// A rig of `n` host namespaces joined by a switch namespace. Dropping it deletes
/// everything (see the module docs).
#[derive(Debug)]
pub struct Net {
    base: String,
    switch: String,
    hosts: Vec<Host>,
    topo: Mutex<Topo>,
    _switch_fd: OwnedFd,
    _teardown: Teardown,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Net {
    /// Creates a rig of `n_hosts` hosts (1..=250) with default [`NetOptions`].
    ///
    /// `prefix` (1..=12 chars of `[A-Za-z0-9_]`) names the run's namespaces
    /// `<prefix>-<pid>-<seq>-s` and `<prefix>-<pid>-<seq>-h<i>`; stale ones of the same
    /// prefix left by dead processes are swept first.
    pub fn create(prefix: &str, n_hosts: usize) -> Result<Net, NetError> {
        Self::create_with(prefix, n_hosts, &NetOptions::default())
    }

    /// Like [`Net::create`], with options.
    pub fn create_with(prefix: &str, n_hosts: usize, opts: &NetOptions) -> Result<Net, NetError> {
        check_prefix(prefix)?;
        if !(1..=MAX_HOSTS).contains(&n_hosts) {
            return Err(NetError::Invalid(format!("n_hosts must be 1..={MAX_HOSTS}, got {n_hosts}")));
        }
        // Best effort: a sweep failure must not stop a fresh rig.
        let _ = sweep_stale(prefix);
        signals::install();

        let pid = std::process::id();
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let base = format!("{prefix}-{pid}-{seq}");
        let switch = format!("{base}-s");
        let host_ns: Vec<String> = (0..n_hosts).map(|i| format!("{base}-h{i}")).collect();
        let subnet = ((pid.wrapping_mul(7).wrapping_add(seq)) % 254 + 1) as u8;

        // Registered before anything exists, so an error or signal from here on cleans up.
        let mut all = vec![switch.clone()];
        all.extend(host_ns.iter().cloned());
        let teardown = Teardown::new(all.clone());

        let adds: Vec<String> = all.iter().map(|n| format!("netns add {n}")).collect();
        ip_batch(None, &adds)?;
        let switch_fd = open_ns(&switch)?;

        let mac = |i: usize| format!("02:d5:{subnet:02x}:00:00:{:02x}", i + 1);
        let addr = |i: usize| Ipv4Addr::new(10, 213, subnet, (i + 1) as u8);

        let mut sw = vec!["link add br0 type bridge".to_string(), "link set br0 up".into()];
        for (i, ns) in host_ns.iter().enumerate() {
            sw.push(format!("link add p{i} type veth peer name eth0 address {} netns {ns}", mac(i)));
            sw.push(format!("link set p{i} master br0"));
            sw.push(format!("link set p{i} up"));
        }
        ip_batch(Some(&switch), &sw)?;
        // Best effort: where br_netfilter is loaded, keep bridged frames away from the
        // switch namespace's (empty) iptables hooks, so the switch is purely layer 2.
        let _ = run_in_ns(switch_fd.as_raw_fd(), || {
            for t in ["iptables", "ip6tables", "arptables"] {
                let _ = std::fs::write(format!("/proc/sys/net/bridge/bridge-nf-call-{t}"), "0");
            }
        });

        let mut hosts = Vec::with_capacity(n_hosts);
        for (i, ns) in host_ns.iter().enumerate() {
            let mut cfg = vec![
                "link set lo up".to_string(),
                format!("addr add {}/24 dev eth0", addr(i)),
                "link set eth0 up".into(),
            ];
            if opts.static_arp {
                cfg.extend(
                    (0..n_hosts)
                        .filter(|&j| j != i)
                        .map(|j| format!("neigh replace {} lladdr {} dev eth0 nud permanent", addr(j), mac(j))),
                );
            }
            ip_batch(Some(ns), &cfg)?;
            let fd = Arc::new(open_ns(ns)?);
            hosts.push(Host { index: i, ns: ns.clone(), addr: addr(i), fd });
        }

        Ok(Net {
            base,
            switch,
            topo: Mutex::new(Topo { port_bridge: vec![0; n_hosts], bridges: 1 }),
            hosts,
            _switch_fd: switch_fd,
            _teardown: teardown,
        })
    }

    /// `<prefix>-<pid>-<seq>`, the common start of all namespace names of this rig.
    pub fn name(&self) -> &str {
        &self.base
    }

    /// Name of the switch namespace (`ip -n NAME link` shows the bridges and ports).
    pub fn switch_ns(&self) -> &str {
        &self.switch
    }

    /// Number of hosts.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Always false: a rig has at least one host.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Host `i`. Panics if `i >= self.len()`, like slice indexing.
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// All hosts.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Shorthand for `self.host(i).command(program)`.
    pub fn command(&self, i: usize, program: impl AsRef<OsStr>) -> Command {
        self.host(i).command(program)
    }

    /// Isolates `set` from all other hosts; hosts inside `set` still reach each other,
    /// and so do the others. Replaces any earlier partition.
    pub fn cut(&self, set: &[usize]) -> Result<(), NetError> {
        self.partition(&[set])
    }

    /// Two sides that talk within but not across; hosts in neither side form a third
    /// group of their own. Replaces any earlier partition.
    pub fn split(&self, a: &[usize], b: &[usize]) -> Result<(), NetError> {
        self.partition(&[a, b])
    }

    /// General form: every listed group becomes its own island; all unlisted hosts
    /// together form one more. Groups must be disjoint. Use `&[&[0], &[1], …]` to
    /// isolate hosts individually. Takes effect when this returns (one `ip` process).
    ///
    /// Ports that change bridge are first detached from all bridges and then attached
    /// to their new one, so during the change no two hosts are connected that are not
    /// connected in the old or in the new partition.
    pub fn partition(&self, groups: &[&[usize]]) -> Result<(), NetError> {
        let mut target = vec![0; self.len()];
        for (g, members) in groups.iter().enumerate() {
            for &h in members.iter() {
                if h >= self.len() {
                    return Err(NetError::Invalid(format!("host {h} out of range 0..{}", self.len())));
                }
                if target[h] != 0 {
                    return Err(NetError::Invalid(format!("host {h} is in two groups")));
                }
                target[h] = g + 1;
            }
        }
        self.apply(&target)
    }

    /// Reconnects all hosts.
    pub fn heal(&self) -> Result<(), NetError> {
        self.apply(&vec![0; self.len()])
    }

    fn apply(&self, target: &[usize]) -> Result<(), NetError> {
        let mut topo = self.topo.lock().unwrap_or_else(|p| p.into_inner());
        let needed = target.iter().max().map_or(1, |m| m + 1);
        let mut lines = Vec::new();
        for b in topo.bridges..needed {
            lines.push(format!("link add br{b} type bridge"));
            lines.push(format!("link set br{b} up"));
        }
        let moved: Vec<usize> = (0..self.len()).filter(|&i| topo.port_bridge[i] != target[i]).collect();
        lines.extend(moved.iter().map(|i| format!("link set p{i} nomaster")));
        lines.extend(moved.iter().map(|&i| format!("link set p{i} master br{}", target[i])));
        if lines.is_empty() {
            return Ok(());
        }
        topo.bridges = topo.bridges.max(needed);
        match ip_batch(Some(&self.switch), &lines) {
            Ok(()) => {
                topo.port_bridge.copy_from_slice(target);
                Ok(())
            }
            Err(e) => {
                topo.port_bridge.fill(usize::MAX); // next change re-attaches every port
                Err(e)
            }
        }
    }
}

fn check_prefix(prefix: &str) -> Result<(), NetError> {
    let ok = !prefix.is_empty()
        && prefix.len() <= MAX_PREFIX
        && prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(NetError::Invalid(format!("prefix {prefix:?}: need 1..={MAX_PREFIX} chars of [A-Za-z0-9_]")))
    }
}

fn open_ns(name: &str) -> Result<OwnedFd, NetError> {
    File::open(format!("{NETNS_DIR}/{name}"))
        .map(OwnedFd::from)
        .map_err(|source| NetError::Namespace { name: name.into(), source })
}

/// Runs `ip [-n NS] -batch -` with `lines` on stdin (one process for many changes).
fn ip_batch(netns: Option<&str>, lines: &[String]) -> Result<(), NetError> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    cmd.args(["-batch", "-"]).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
    let desc = format!("ip {}-batch", netns.map(|n| format!("-n {n} ")).unwrap_or_default());
    let mut child = cmd.spawn().map_err(|source| NetError::Spawn { cmd: desc.clone(), source })?;
    let script = lines.join("\n") + "\n";
    let written = match child.stdin.take() {
        Some(mut stdin) => stdin.write_all(script.as_bytes()), // closed on drop
        None => Ok(()),
    };
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(NetError::Ip {
            cmd: desc,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    written.map_err(NetError::from)
}

/// Deletes a named namespace the way `ip netns del` does: lazy unmount, then unlink.
/// The namespace itself dies once no fd or process refers to it. Async-signal-safe.
fn delete_ns_path(path: *const libc::c_char) {
    // SAFETY: `path` is a NUL-terminated string; failures (already gone) are ignored.
    unsafe {
        libc::umount2(path, libc::MNT_DETACH);
        libc::unlink(path);
    }
}

/// Owns the `/run/netns` entries of one rig: deletes them on drop and registers them
/// with the signal handler meanwhile.
#[derive(Debug)]
struct Teardown {
    paths: Vec<std::ffi::CString>,
    slots: Vec<usize>,
}

impl Teardown {
    fn new(names: Vec<String>) -> Teardown {
        let paths: Vec<_> =
            names.iter().filter_map(|n| std::ffi::CString::new(format!("{NETNS_DIR}/{n}")).ok()).collect();
        let slots = paths.iter().filter_map(|p| signals::register(p.as_bytes_with_nul())).collect();
        Teardown { paths, slots }
    }
}

impl Drop for Teardown {
    fn drop(&mut self) {
        for p in &self.paths {
            delete_ns_path(p.as_ptr());
        }
        for &s in &self.slots {
            signals::unregister(s);
        }
    }
}

/// Deletes namespaces `<prefix>-<pid>-…` in `/run/netns` whose `pid` is not a live
/// process (leftovers of runs that were SIGKILLed or aborted). Returns their names.
/// Namespaces of live processes, and names that do not parse, are never touched.
pub fn sweep_stale(prefix: &str) -> Result<Vec<String>, NetError> {
    check_prefix(prefix)?;
    let dir = match std::fs::read_dir(NETNS_DIR) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut swept = Vec::new();
    for entry in dir {
        let Ok(name) = entry?.file_name().into_string() else { continue };
        let pid = name
            .strip_prefix(prefix)
            .and_then(|r| r.strip_prefix('-'))
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<libc::pid_t>().ok());
        if pid.is_some_and(|p| p > 0 && !pid_alive(p)) {
            if let Ok(path) = std::ffi::CString::new(format!("{NETNS_DIR}/{name}")) {
                delete_ns_path(path.as_ptr());
                swept.push(name);
            }
        }
    }
    Ok(swept)
}

fn pid_alive(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks for existence/permission.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    alive || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// `Ok(())` if this process can build a rig (root, `ip` present, namespaces, veth and
/// bridges allowed); otherwise a reason suitable for a "skipped: …" message. Cached.
pub fn netns_available() -> Result<(), String> {
    static CACHE: OnceLock<Result<(), String>> = OnceLock::new();
    CACHE
        .get_or_init(|| {
            // SAFETY: trivial getter.
            if unsafe { libc::geteuid() } != 0 {
                return Err("network namespaces need root (euid is not 0)".into());
            }
            match Command::new("ip").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status() {
                Ok(s) if s.success() => {}
                Ok(s) => return Err(format!("`ip -V` failed: {s}")),
                Err(e) => return Err(format!("iproute2 `ip` not runnable: {e}")),
            }
            Net::create("nsprobe", 2).map(drop).map_err(|e| format!("cannot build a namespace/veth/bridge rig: {e}"))
        })
        .clone()
}

/// SIGINT/SIGTERM/SIGHUP cleanup with a lock-free table of paths to unmount.
mod signals {
    use std::cell::UnsafeCell;
    use std::sync::atomic::{AtomicU8, Ordering};
    use std::sync::Once;

    const SLOTS: usize = 256;
    const PATH_LEN: usize = 80;
    const FREE: u8 = 0;
    const BUSY: u8 = 1;
    const LIVE: u8 = 2;

    struct Slot {
        state: AtomicU8,
        path: UnsafeCell<[u8; PATH_LEN]>,
    }

    // SAFETY: `path` is written only by the thread that moved `state` FREE -> BUSY, and
    // read only while `state` is LIVE (published with Release/Acquire).
    unsafe impl Sync for Slot {}

    static TABLE: [Slot; SLOTS] =
        [const { Slot { state: AtomicU8::new(FREE), path: UnsafeCell::new([0; PATH_LEN]) } }; SLOTS];

    /// Stores a NUL-terminated path; `None` if it is too long or the table is full
    /// (then only Drop and [`super::sweep_stale`] cover it).
    pub(super) fn register(path_nul: &[u8]) -> Option<usize> {
        if path_nul.len() > PATH_LEN {
            return None;
        }
        for (i, slot) in TABLE.iter().enumerate() {
            if slot.state.compare_exchange(FREE, BUSY, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                // SAFETY: we own the slot while it is BUSY.
                unsafe { (&mut *slot.path.get())[..path_nul.len()].copy_from_slice(path_nul) };
                slot.state.store(LIVE, Ordering::Release);
                return Some(i);
            }
        }
        None
    }

    pub(super) fn unregister(i: usize) {
        TABLE[i].state.store(FREE, Ordering::Release);
    }

    extern "C" fn on_signal(sig: libc::c_int) {
        for slot in TABLE.iter() {
            if slot.state.load(Ordering::Acquire) == LIVE {
                super::delete_ns_path(slot.path.get() as *const libc::c_char);
            }
        }
        // SA_RESETHAND restored the default action; the re-raised signal is delivered
        // when this handler returns, so the process still dies of it.
        // SAFETY: async-signal-safe.
        unsafe { libc::raise(sig) };
    }

    /// Installs the handler once, only for signals whose disposition is still default
    /// (an application that handles them itself is expected to drop its rigs).
    pub(super) fn install() {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
            for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                // SAFETY: sigaction with zero-initialised structs, as in C.
                unsafe {
                    let mut old: libc::sigaction = std::mem::zeroed();
                    if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 || old.sa_sigaction != libc::SIG_DFL {
                        continue;
                    }
                    let mut sa: libc::sigaction = std::mem::zeroed();
                    sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
                    sa.sa_flags = libc::SA_RESETHAND | libc::SA_RESTART;
                    libc::sigemptyset(&mut sa.sa_mask);
                    libc::sigaction(sig, &sa, std::ptr::null_mut());
                }
            }
        });
    }
}
