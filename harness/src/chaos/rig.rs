//! The rig: CM processes, client slots and the proxies between them, with the
//! fault injections the schedule draws from.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

use super::client_proc::ClientSlot;
use super::history::LifeKind;
use super::procs::{signal, CmProc, CmSet};
use super::proxy::{LinkState, Proxy};
use crate::lazyfs::LazyFsHandle;

/// The kinds of fault the harness injects (`--faults`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Nemesis {
    /// kill -9 a CM node (biased to the leader), restart it.
    Kill,
    /// SIGSTOP a CM node for 1-3 s.
    Pause,
    /// Cut, blackhole or delay links for 2-4 s.
    Partition,
    /// kill -9 every CM node, restart them all.
    RestartAll,
    /// SIGSTOP a client: half the time briefly (0.5-1.5 s), half the time for
    /// longer than its lease, so it is evicted and comes back.
    ClientPause,
    /// kill -9 a client and start a fresh one in its place.
    ClientKill,
    /// Cut a client off from everyone (its links to the CM nodes, and the CM
    /// nodes' and other clients' links to it) for 1.5-3.5 s longer than its lease.
    ClientIsolate,
    /// Delay one client's links to the CM nodes by 50-300 ms for 2-4 s (its
    /// page holder's link is not delayed), so its fault replies arrive after the
    /// next faults on the page have invalidated, forwarded and released.
    ClientSlow,
    /// kill -9 every CM node, lose every write to their data dirs not yet
    /// synced (a lazyfs power cut), restart them all; needs FUSE.
    PowerCut,
    /// Replace a follower: `ivy member remove`, kill -9, empty its data dir,
    /// start it with --join, `ivy member add` (learner, catch-up, voter).
    Membership,
}

impl Nemesis {
    /// Every kind.
    pub fn all() -> Vec<Nemesis> {
        <Nemesis as clap::ValueEnum>::value_variants().to_vec()
    }

    /// True for the kinds that need the CM data dirs on a lazyfs mount.
    pub fn needs_fuse(self) -> bool {
        self == Nemesis::PowerCut
    }

    /// The kind's name on the command line and in the report.
    pub fn name(self) -> String {
        clap::ValueEnum::to_possible_value(&self).map_or_else(|| format!("{self:?}"), |v| v.get_name().to_string())
    }
}

/// Processes and links of one run.
pub struct Rig {
    /// CM nodes by id.
    pub cms: CmSet,
    /// Client slots, by index.
    pub clients: Vec<ClientSlot>,
    /// Links between CM nodes: (from, to) -> proxy.
    pub cm_links: BTreeMap<(u64, u64), Proxy>,
    /// Links from clients to CM nodes: (client index, CM id) -> proxy.
    pub client_links: BTreeMap<(usize, u64), Proxy>,
    /// The clients' lease, which long client faults outlast.
    pub lease: Duration,
    /// How long the harness waits for a client's answer.
    pub op_timeout: Duration,
    /// The lazyfs the CM data dirs live on, when power cuts are injected.
    pub power: Option<LazyFsHandle>,
    /// The `ivy` binary (for `ivy member`).
    pub bin: std::path::PathBuf,
    /// Testing only: a membership fault wipes voters and restarts them under
    /// their old id, never removed nor added back (see [`super::membership`]).
    pub unsafe_rejoin_empty: bool,
}

impl Rig {
    /// The id of a CM node that says it serves faults.
    pub async fn leader(&self) -> Option<u64> {
        self.cms.leader().await
    }

    /// Waits up to `timeout` for a serving node.
    pub async fn wait_leader(&self, timeout: Duration) -> Option<u64> {
        self.cms.wait_leader(timeout).await
    }

    /// The leader with probability 0.7 (when one is known), else a random node.
    pub(super) async fn pick_cm(&self, rng: &mut StdRng) -> u64 {
        let leader = self.leader().await;
        let ids = self.cms.ids();
        match leader {
            Some(l) if rng.gen_bool(0.7) => l,
            _ => *ids.choose(rng).unwrap_or(&1),
        }
    }

    /// Injects one fault of `kind`, holds it, heals it; returns what it did, and
    /// what it did to a client process.
    pub async fn inject(&self, kind: Nemesis, rng: &mut StdRng, on_client: impl Fn(usize, u64, LifeKind)) -> String {
        match kind {
            Nemesis::Kill => {
                let id = self.pick_cm(rng).await;
                let down = ms(rng, 500, 1500);
                self.cms.kill(id).await;
                tokio::time::sleep(down).await;
                self.cms.restart(id);
                format!("kill -9 CM {id}, restarted after {} ms", down.as_millis())
            }
            Nemesis::RestartAll => {
                let down = ms(rng, 300, 1000);
                self.cms.kill_all().await;
                tokio::time::sleep(down).await;
                for id in self.cms.ids() {
                    self.cms.restart(id);
                }
                format!("kill -9 every CM, restarted after {} ms", down.as_millis())
            }
            Nemesis::Pause => {
                let id = self.pick_cm(rng).await;
                let held = ms(rng, 1000, 3000);
                if let Some(pid) = self.cms.0.get(&id).and_then(CmProc::pid) {
                    signal(pid, "STOP");
                    tokio::time::sleep(held).await;
                    signal(pid, "CONT");
                }
                format!("SIGSTOP CM {id} for {} ms", held.as_millis())
            }
            Nemesis::ClientPause => self.client_pause(rng, on_client).await,
            Nemesis::ClientKill => self.client_kill(rng, on_client).await,
            Nemesis::ClientIsolate => self.client_isolate(rng, on_client).await,
            Nemesis::ClientSlow => self.client_slow(rng).await,
            Nemesis::Partition => self.partition(rng).await,
            Nemesis::PowerCut => self.power_cut(rng).await,
            Nemesis::Membership => self.membership(rng).await,
        }
    }

    /// kill -9 every CM node, drop what they did not sync, restart them.
    async fn power_cut(&self, rng: &mut StdRng) -> String {
        let down = ms(rng, 300, 1000);
        self.cms.kill_all().await;
        let Some(fs) = &self.power else {
            return "no power cut: the CM data dirs are not on a lazyfs".into();
        };
        let cut = fs.power_cut();
        tokio::time::sleep(down).await;
        for id in self.cms.ids() {
            self.cms.restart(id);
        }
        format!(
            "kill -9 every CM, power cut dropped {} unsynced bytes of {} files, restarted after {} ms",
            cut.bytes_dropped,
            cut.files_dropped,
            down.as_millis()
        )
    }

    /// A pause longer than the lease outlasts it by 0.5-2 s.
    fn past_lease(&self, rng: &mut StdRng) -> Duration {
        self.lease + ms(rng, 500, 2000)
    }

    /// A cut-off outlasts the lease by 1.5-3.5 s: long enough for the leader to
    /// evict the client and for the others to move its pages on, while the client
    /// is still cut off.
    fn well_past_lease(&self, rng: &mut StdRng) -> Duration {
        self.lease + ms(rng, 1500, 3500)
    }

    async fn client_pause(&self, rng: &mut StdRng, on_client: impl Fn(usize, u64, LifeKind)) -> String {
        let slot = &self.clients[rng.gen_range(0..self.clients.len().max(1))];
        let held = if rng.gen_bool(0.5) { ms(rng, 500, 1500) } else { self.past_lease(rng) };
        let proc = slot.proc().await;
        if let Some(pid) = proc.pid() {
            on_client(slot.index, proc.id(), LifeKind::Stopped);
            signal(pid, "STOP");
            tokio::time::sleep(held).await;
            signal(pid, "CONT");
        }
        format!("SIGSTOP client {} (directory client {}) for {} ms", slot.index, proc.id(), held.as_millis())
    }

    async fn client_kill(&self, rng: &mut StdRng, on_client: impl Fn(usize, u64, LifeKind)) -> String {
        let slot = &self.clients[rng.gen_range(0..self.clients.len().max(1))];
        let killed = slot.proc().await.id();
        on_client(slot.index, killed, LifeKind::Killed);
        match slot.replace().await {
            Ok(_) => format!("kill -9 client {} (directory client {killed}), started a fresh one", slot.index),
            Err(err) => format!("kill -9 client {} (directory client {killed}); restart failed: {err}", slot.index),
        }
    }

    async fn client_isolate(&self, rng: &mut StdRng, on_client: impl Fn(usize, u64, LifeKind)) -> String {
        let held = self.well_past_lease(rng);
        let (slot, valid) = self.cut_off_a_holder(rng).await;
        let id = slot.proc().await.id();
        on_client(slot.index, id, LifeKind::Stopped);
        tokio::time::sleep(held).await;
        self.heal_links();
        format!(
            "client {} (directory client {id}) cut off from everyone for {} ms, holding {valid} valid copies",
            slot.index,
            held.as_millis()
        )
    }

    /// Cuts off a client that still holds a valid copy once the cut is in place,
    /// when one can be found in a few tries: a copy that no invalidation can now
    /// reach is what makes a cut-off hurt (a client that serves local hits past
    /// its lease serves it after the others moved the page on). The copy may be
    /// invalidated between the question and the cut; a client found holding none
    /// behind the cut is let back at once and another tried (at most 20 tries
    /// or 2 s; then the last one stays cut off). Returns the client and how many
    /// valid copies it held behind the cut.
    async fn cut_off_a_holder(&self, rng: &mut StdRng) -> (&ClientSlot, usize) {
        const TRIES: usize = 20;
        const PATIENCE: Duration = Duration::from_secs(2);
        const BETWEEN_TRIES: Duration = Duration::from_millis(20);
        let give_up = tokio::time::Instant::now() + PATIENCE;
        let mut tries = 0;
        loop {
            tries += 1;
            let slot = self.client_holding_copies(rng).await;
            self.set_client_links(|c, _| c == slot.index, LinkState::Blackhole);
            slot.holder.set(LinkState::Blackhole);
            let valid = valid_copies(slot).await;
            if valid > 0 || tries >= TRIES || tokio::time::Instant::now() >= give_up {
                return (slot, valid);
            }
            self.set_client_links(|c, _| c == slot.index, LinkState::Pass);
            slot.holder.set(LinkState::Pass);
            tokio::time::sleep(BETWEEN_TRIES).await;
        }
    }

    async fn client_slow(&self, rng: &mut StdRng) -> String {
        let client = rng.gen_range(0..self.clients.len().max(1));
        let (delay, held) = (ms(rng, 50, 300), ms(rng, 2000, 4000));
        self.set_client_links(|c, _| c == client, LinkState::Delay(delay));
        tokio::time::sleep(held).await;
        self.heal_links();
        format!("client {client}'s links to the CM nodes delayed {} ms for {} ms", delay.as_millis(), held.as_millis())
    }

    /// A client that holds copies it may read locally, when one does (the one a
    /// cut-off hurts most), else any client.
    async fn client_holding_copies(&self, rng: &mut StdRng) -> &ClientSlot {
        let mut holding = Vec::new();
        for slot in &self.clients {
            if valid_copies(slot).await > 0 {
                holding.push(slot);
            }
        }
        match holding.choose(rng) {
            Some(slot) => slot,
            None => &self.clients[rng.gen_range(0..self.clients.len().max(1))],
        }
    }

    async fn partition(&self, rng: &mut StdRng) -> String {
        let leader = self.pick_cm(rng).await;
        let held = ms(rng, 2000, 4000);
        let variant = rng.gen_range(0..5);
        let what = match variant {
            0 => {
                self.set_cm_links(|from, to| from == leader || to == leader, LinkState::Cut);
                self.set_client_links(|_, cm| cm == leader, LinkState::Cut);
                format!("CM {leader} isolated")
            }
            1 => {
                self.set_cm_links(|from, _| from == leader, LinkState::Cut);
                format!("one-way: CM {leader} cannot reach the others")
            }
            2 => {
                let client = rng.gen_range(0..self.clients.len().max(1));
                self.set_client_links(|c, cm| c == client && cm == leader, LinkState::Cut);
                format!("client {client} cut off from CM {leader}")
            }
            3 => {
                self.set_cm_links(|from, to| from == leader || to == leader, LinkState::Blackhole);
                format!("CM {leader}'s links drop everything")
            }
            _ => {
                let delay = ms(rng, 30, 120);
                self.set_cm_links(|_, _| true, LinkState::Delay(delay));
                self.set_client_links(|_, _| true, LinkState::Delay(delay));
                format!("every link delayed {} ms", delay.as_millis())
            }
        };
        tokio::time::sleep(held).await;
        self.heal_links();
        format!("{what} for {} ms", held.as_millis())
    }

    fn set_cm_links(&self, pick: impl Fn(u64, u64) -> bool, state: LinkState) {
        self.cm_links.iter().filter(|((f, t), _)| pick(*f, *t)).for_each(|(_, p)| p.set(state));
    }

    fn set_client_links(&self, pick: impl Fn(usize, u64) -> bool, state: LinkState) {
        self.client_links.iter().filter(|((c, cm), _)| pick(*c, *cm)).for_each(|(_, p)| p.set(state));
    }

    /// Every link back to normal.
    pub fn heal_links(&self) {
        let holders = self.clients.iter().map(|c| &c.holder);
        self.cm_links.values().chain(self.client_links.values()).chain(holders).for_each(|p| p.set(LinkState::Pass));
    }

    /// Heals everything: links, paused processes, stopped CM nodes.
    pub async fn heal_all(&self) {
        self.heal_links();
        for pid in self.cms.0.values().filter_map(CmProc::pid) {
            signal(pid, "CONT");
        }
        for slot in &self.clients {
            if let Some(pid) = slot.proc().await.pid() {
                signal(pid, "CONT");
            }
        }
        for cm in self.cms.0.values() {
            if let Err(err) = cm.ensure_running() {
                tracing::warn!("restart of CM {}: {err}", cm.id);
            }
        }
    }
}

pub(super) fn ms(rng: &mut StdRng, lo: u64, hi: u64) -> Duration {
    Duration::from_millis(rng.gen_range(lo..=hi))
}

/// How many pages a client's page table holds with read or write access (its
/// `print`, asked over its control channel, which no link fault touches); 0
/// when it does not answer in time.
async fn valid_copies(slot: &ClientSlot) -> usize {
    const ASK_TIMEOUT: Duration = Duration::from_millis(500);
    let answer = slot.proc().await.call("print", ASK_TIMEOUT).await;
    let pages = answer.as_ref().and_then(|a| a["pages"].as_array().cloned()).unwrap_or_default();
    pages.iter().filter(|p| p["access"] != "invalid").count()
}
