//! The history checker: per-page linearizability (a register per page) by a
//! Wing-Gong-Lowe search, plus direct checks that name what went wrong.
//!
//! A page's history is a register whose writes carry unique values. Successful
//! operations must take effect between their invocation and their return. A write
//! that timed out or failed may have taken effect at any time after it was invoked,
//! or never (etcd's trick: its return is at infinity and it need not be placed).
//! Reads that failed are dropped. On top of the search, the checker counts:
//! lost acknowledged writes (a final read that cannot be the last write), phantom
//! values (a read of a value nobody wrote), duplicate applications (a value seen
//! again after another value replaced it) and epoch regressions (a later operation
//! using an older copy than an earlier one).
//!
//! A page may be *lost*: its only copy left with a client that was removed
//! (killed, or evicted after its lease ran out). A read that finds it lost reads
//! the value "lost with client X"; a write of that value, by X, may take effect at
//! any time after X registered (the search places it where the reads need it).
//! Whether the loss itself was allowed is checked directly: X must have been
//! removed, and no client that was never removed may have held the page's
//! latest value when it was lost (it would have been promoted to owner).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use super::history::{History, LifeEvent, LifeKind, Op, OpKind, Outcome};

/// How long after its invocation a write that failed or got no answer may still
/// take effect (a fault goes on at the leader after its caller gave up, bounded
/// by the leader's patience with silent holders and its commit deadline).
pub const LATE_EFFECT_NS: u64 = 10_000_000_000;

/// Search steps allowed per page before the page is reported undecided.
pub const SEARCH_BUDGET: u64 = 5_000_000;

/// Violations listed in the report (the counts are complete).
const SHOWN: usize = 20;

/// What the checker found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Pages whose history was checked.
    pub pages: usize,
    /// Pages whose history is not linearizable.
    pub not_linearizable: Vec<String>,
    /// Pages the search could not decide within its budget.
    pub undecided: Vec<String>,
    /// Final reads that cannot return the last acknowledged write.
    pub lost_acknowledged_writes: usize,
    /// Reads of values no write wrote.
    pub phantom_values: usize,
    /// Values seen again after another value replaced them.
    pub duplicate_applications: usize,
    /// Operations that used an older copy than an operation before them.
    pub epoch_regressions: usize,
    /// Pages reported lost although a client that was never removed held them.
    pub lost_with_survivors: usize,
    /// Operations refused as older than a request their client had already
    /// finished on that page: a client runs one fault per page at a time, so no
    /// operation may ever see this answer (a session-table bug if it does).
    pub stale_refusals: usize,
    /// The first violations, in words.
    pub details: Vec<String>,
}

/// The checks as the reports print them: one line of counts, then the first
/// violations in words, each on its own line and indented.
impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "  checks: {} pages; not linearizable {}; undecided {}; lost acknowledged writes {}; phantom values {}; duplicate applications {}; epoch regressions {}; lost with a survivor {}; refused as stale {}",
            self.pages,
            self.not_linearizable.len(),
            self.undecided.len(),
            self.lost_acknowledged_writes,
            self.phantom_values,
            self.duplicate_applications,
            self.epoch_regressions,
            self.lost_with_survivors,
            self.stale_refusals
        )?;
        for d in &self.details {
            write!(f, "\n    {d}")?;
        }
        Ok(())
    }
}

/// Why a run with this verdict and `final_reads_ok` of `final_reads` final
/// reads answered is not clean, as far as those two tell (a report adds its own
/// conditions); empty when they find nothing wrong.
pub fn not_clean(verdict: &Verdict, final_reads_ok: usize, final_reads: usize) -> Vec<String> {
    let mut why = Vec::new();
    if final_reads_ok < final_reads {
        why.push(format!("{} final reads failed", final_reads - final_reads_ok));
    }
    if !verdict.clean() {
        why.push("the checks above found violations".to_string());
    }
    why
}

/// A report's last line: CLEAN, or VIOLATIONS and why (`not_clean`, the
/// reasons the report found; none means clean).
pub fn write_verdict_line(f: &mut std::fmt::Formatter<'_>, not_clean: &[String]) -> std::fmt::Result {
    if not_clean.is_empty() {
        write!(f, "  verdict: CLEAN")
    } else {
        write!(f, "  verdict: VIOLATIONS ({})", not_clean.join("; "))
    }
}

impl Verdict {
    /// True when nothing is wrong.
    pub fn clean(&self) -> bool {
        self.not_linearizable.is_empty()
            && self.undecided.is_empty()
            && self.lost_acknowledged_writes == 0
            && self.phantom_values == 0
            && self.duplicate_applications == 0
            && self.epoch_regressions == 0
            && self.lost_with_survivors == 0
            && self.stale_refusals == 0
    }

    fn note(&mut self, text: String) {
        if self.details.len() < SHOWN {
            self.details.push(text);
        }
    }
}

/// Checks a whole run: its operations, with lost pages explained by the clients
/// the history says were removed.
pub fn check_history(h: &History) -> Verdict {
    let removed = removed_clients(&h.lives);
    let registered: HashMap<u64, u64> =
        h.lives.iter().filter(|l| matches!(l.kind, LifeKind::Registered { .. })).map(|l| (l.client, l.at_ns)).collect();
    let mut ops: Vec<Op> = h.ops.iter().map(as_register_read).collect();
    ops.extend(loss_writes(&h.ops, &registered));
    let mut v = check(&ops);
    for (page, page_ops) in by_page(&h.ops) {
        lost_with_survivors(page, &page_ops, &removed, &mut v);
    }
    stale_refusals(&h.ops, &mut v);
    v
}

/// How the CM words a refusal of a request older than its session's.
const STALE_REFUSAL: &str = "is older than its last applied request";

/// Counts operations that were refused as stale.
fn stale_refusals(ops: &[Op], v: &mut Verdict) {
    for op in ops.iter().filter(|o| o.error.as_deref().is_some_and(|e| e.contains(STALE_REFUSAL))) {
        v.stale_refusals += 1;
        let error = op.error.as_deref().unwrap_or_default();
        v.note(format!("{:?} by client {} on {} refused as stale: {error}", op.kind, op.client, op.page));
    }
}

/// The value a read of a page lost with `client` returns.
fn lost_value(client: u64) -> String {
    format!("<lost with client {client}>")
}

/// A read that found its page lost reads the lost value.
fn as_register_read(op: &Op) -> Op {
    let mut op = op.clone();
    if let Some(client) = op.lost_with {
        op.value = Some(lost_value(client));
    }
    op
}

/// For every (page, client) a read found lost: a write of the lost value that
/// may take effect any time after the client registered, or never.
fn loss_writes(ops: &[Op], registered: &HashMap<u64, u64>) -> Vec<Op> {
    let lost: HashSet<(&str, u64)> = ops.iter().filter_map(|o| Some((o.page.as_str(), o.lost_with?))).collect();
    lost.into_iter()
        .map(|(page, client)| Op {
            client: usize::MAX,
            process: client,
            kind: OpKind::Write,
            page: page.to_string(),
            value: Some(lost_value(client)),
            invoke_ns: registered.get(&client).copied().unwrap_or(0),
            return_ns: None,
            outcome: Outcome::Unknown,
            epoch: None,
            error: None,
            last: false,
            lost_with: None,
        })
        .collect()
}

/// Directory clients the history says were removed: killed, or evicted (the
/// client registered again under a new id).
fn removed_clients(lives: &[LifeEvent]) -> HashSet<u64> {
    lives
        .iter()
        .filter_map(|l| match l.kind {
            LifeKind::Killed => Some(l.client),
            LifeKind::Registered { was } => was,
            LifeKind::Stopped => None,
        })
        .collect()
}

/// A page found lost with X must have lost it with a removed X, and no client
/// that was never removed may have read it after every write of it settled
/// and before the loss was seen: that client held a copy and would have been
/// promoted to owner.
///
/// The writes that count are every write that may have taken effect before the
/// loss: each one invoked before the read that saw the loss *returned*, except
/// one that names an epoch past the one the page was lost at (it started the
/// page afresh after the loss). A write that overlaps that read may be the
/// page's last write before the eviction (it leaves the writer owner with no
/// copy), so a read before it proves nothing about the copy set the eviction
/// found.
fn lost_with_survivors(page: &str, ops: &[&Op], removed: &HashSet<u64>, v: &mut Verdict) {
    let Some(seen) = ops.iter().filter(|o| o.lost_with.is_some()).min_by_key(|o| o.invoke_ns) else { return };
    let with = seen.lost_with.unwrap_or(0);
    if !removed.contains(&with) {
        v.lost_with_survivors += 1;
        v.note(format!("{page}: read as lost with client {with}, which was never removed"));
        return;
    }
    let seen_by = seen.return_ns.unwrap_or(u64::MAX);
    let before_loss = |o: &Op| o.invoke_ns < seen_by && o.epoch.zip(seen.epoch).is_none_or(|(e, lost)| e <= lost);
    let writes: Vec<&&Op> = ops.iter().filter(|o| o.kind == OpKind::Write && before_loss(o)).collect();
    let settled_by = |o: &Op| match (o.outcome, o.return_ns) {
        (Outcome::Ok, Some(ret)) => ret,
        _ => o.invoke_ns.saturating_add(LATE_EFFECT_NS),
    };
    let settled = writes.iter().map(|w| settled_by(w)).max().unwrap_or(0);
    let holder = ops.iter().find(|o| {
        let read_ok = o.kind == OpKind::Read && o.outcome == Outcome::Ok && o.lost_with.is_none();
        let returned_before = o.return_ns.is_some_and(|r| r < seen.invoke_ns);
        read_ok && o.invoke_ns >= settled && returned_before && !removed.contains(&o.process) && o.process != with
    });
    if let Some(h) = holder {
        v.lost_with_survivors += 1;
        v.note(format!(
            "{page}: lost with client {with} although client {} (never removed) read it at {} ms",
            h.process,
            h.invoke_ns / 1_000_000
        ));
    }
}

fn by_page(ops: &[Op]) -> BTreeMap<&str, Vec<&Op>> {
    let mut by_page: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        by_page.entry(op.page.as_str()).or_default().push(op);
    }
    by_page
}

/// Checks a whole history of operations.
pub fn check(ops: &[Op]) -> Verdict {
    let by_page = by_page(ops);
    let mut verdict = Verdict { pages: by_page.len(), ..Default::default() };
    for (page, ops) in by_page {
        check_page(page, &ops, &mut verdict);
    }
    verdict
}

fn check_page(page: &str, ops: &[&Op], v: &mut Verdict) {
    let reads: Vec<&Op> = ops.iter().copied().filter(|o| o.kind == OpKind::Read && o.outcome == Outcome::Ok).collect();
    let writes: Vec<&Op> = ops.iter().copied().filter(|o| o.kind == OpKind::Write).collect();
    phantoms(page, &reads, &writes, v);
    lost_writes(page, &reads, &writes, v);
    duplicates(page, &reads, v);
    epoch_regressions(page, ops, v);
    match linearizable(&register_ops(&reads, &writes), SEARCH_BUDGET) {
        Some(true) => {}
        Some(false) => {
            v.not_linearizable.push(page.to_string());
            v.note(format!("{page}: the history is not linearizable"));
        }
        None => v.undecided.push(page.to_string()),
    }
}

fn returned(op: &Op) -> u64 {
    match op.outcome {
        Outcome::Ok => op.return_ns.unwrap_or(u64::MAX),
        Outcome::Fail | Outcome::Unknown => u64::MAX,
    }
}

fn phantoms(page: &str, reads: &[&Op], writes: &[&Op], v: &mut Verdict) {
    let written: HashSet<&str> = writes.iter().filter_map(|w| w.value.as_deref()).collect();
    for r in reads {
        if let Some(value) = r.value.as_deref().filter(|x| !written.contains(x)) {
            v.phantom_values += 1;
            v.note(format!("{page}: client {} read {value:?}, which no write wrote", r.client));
        }
    }
}

/// A final read must return a write no acknowledged write followed in real time.
fn lost_writes(page: &str, reads: &[&Op], writes: &[&Op], v: &mut Verdict) {
    let acked: Vec<&&Op> = writes.iter().filter(|w| w.outcome == Outcome::Ok).collect();
    let latest = |w: &Op| !acked.iter().any(|a| a.invoke_ns > returned(w));
    let mut possible: HashSet<Option<&str>> = writes.iter().filter(|w| latest(w)).map(|w| w.value.as_deref()).collect();
    if acked.is_empty() {
        possible.insert(None);
    }
    for r in reads.iter().filter(|r| r.last) {
        if !possible.contains(&r.value.as_deref()) {
            v.lost_acknowledged_writes += 1;
            let mut want: Vec<_> = possible.iter().map(|p| p.unwrap_or("<none>")).collect();
            want.sort_unstable();
            v.note(format!(
                "{page}: final read by client {} gave {:?}; the last acknowledged writes were {want:?}",
                r.client, r.value
            ));
        }
    }
}

/// Value A read, then B read after it, then A read after that.
fn duplicates(page: &str, reads: &[&Op], v: &mut Verdict) {
    let mut first_ret: HashMap<&str, u64> = HashMap::new();
    let mut last_inv: HashMap<&str, u64> = HashMap::new();
    for r in reads {
        if let Some(x) = r.value.as_deref() {
            let ret = returned(r);
            first_ret.entry(x).and_modify(|t| *t = (*t).min(ret)).or_insert(ret);
            last_inv.entry(x).and_modify(|t| *t = (*t).max(r.invoke_ns)).or_insert(r.invoke_ns);
        }
    }
    let mut seen = HashSet::new();
    for r in reads {
        let Some(between) = r.value.as_deref() else { continue };
        for (value, first) in &first_ret {
            let again = last_inv[value];
            if *value != between && *first < r.invoke_ns && returned(r) < again && seen.insert(*value) {
                v.duplicate_applications += 1;
                v.note(format!("{page}: {value:?} was read again after {between:?} replaced it"));
            }
        }
    }
}

/// Counts operations that used an older copy than some operation that returned
/// before they were invoked: one sweep over return times, O(n log n).
fn epoch_regressions(page: &str, ops: &[&Op], v: &mut Verdict) {
    let mut done: Vec<(u64, u64, usize)> = ops
        .iter()
        .filter(|o| o.outcome == Outcome::Ok)
        .filter_map(|o| Some((returned(o), o.epoch?, o.client)))
        .collect();
    done.sort_unstable();
    let mut by_invoke: Vec<&&Op> = ops.iter().filter(|o| o.outcome == Outcome::Ok && o.epoch.is_some()).collect();
    by_invoke.sort_by_key(|o| o.invoke_ns);
    let (mut next, mut newest) = (0, None::<(u64, usize)>);
    for b in by_invoke {
        while next < done.len() && done[next].0 < b.invoke_ns {
            let (_, epoch, client) = done[next];
            newest = Some(newest.map_or((epoch, client), |n| if epoch > n.0 { (epoch, client) } else { n }));
            next += 1;
        }
        if let (Some((seen, by)), Some(epoch)) = (newest, b.epoch) {
            if epoch < seen {
                v.epoch_regressions += 1;
                v.note(format!(
                    "{page}: client {} used epoch {epoch} after client {by} had used epoch {seen}",
                    b.client
                ));
            }
        }
    }
}

/// One register operation for the search: values interned, 0 meaning "absent".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegOp {
    /// Invocation time.
    pub invoke: u64,
    /// Return time (`u64::MAX`: may take effect at any later time, or never).
    pub ret: u64,
    /// True for a write of `value`, false for a read that returned `value`.
    pub write: bool,
    /// The value (0: the page did not exist).
    pub value: u32,
}

fn register_ops<'a>(reads: &[&'a Op], writes: &[&'a Op]) -> Vec<RegOp> {
    let mut ids: HashMap<&'a str, u32> = HashMap::new();
    let mut id = |v: Option<&'a str>| match v {
        None => 0,
        Some(x) => {
            let next = ids.len() as u32 + 1;
            *ids.entry(x).or_insert(next)
        }
    };
    // A write that may never have taken effect and whose value nobody read can be
    // left out: placing it anywhere could only make the history harder to order.
    let observed: HashSet<&str> = reads.iter().filter_map(|r| r.value.as_deref()).collect();
    let needed = |w: &&&Op| w.outcome == Outcome::Ok || w.value.as_deref().is_some_and(|x| observed.contains(x));
    let mut out = Vec::new();
    for w in writes.iter().filter(needed) {
        out.push(RegOp { invoke: w.invoke_ns, ret: returned(w), write: true, value: id(w.value.as_deref()) });
    }
    for r in reads {
        out.push(RegOp { invoke: r.invoke_ns, ret: returned(r), write: false, value: id(r.value.as_deref()) });
    }
    out
}

/// Wing-Gong-Lowe search with memoisation: is there an order of the operations,
/// consistent with real time, in which every read returns the latest write?
/// `None` when `budget` steps did not decide it.
pub fn linearizable(ops: &[RegOp], budget: u64) -> Option<bool> {
    let mut list = EntryList::new(ops);
    let mut linearized = vec![0u64; ops.len().div_ceil(64)];
    let mut cache: HashSet<(Vec<u64>, u32)> = HashSet::new();
    let mut stack: Vec<(usize, u32)> = Vec::new();
    let mut state = 0u32;
    let mut cursor = list.first();
    for _ in 0..budget {
        let Some(e) = cursor else { return Some(true) };
        let (op, is_call) = list.entry(e);
        if !is_call {
            if ops[op].ret == u64::MAX {
                return Some(true); // only operations that may never take effect remain
            }
            let Some((undo, before)) = stack.pop() else { return Some(false) };
            state = before;
            linearized[undo / 64] &= !(1 << (undo % 64));
            list.unlift(undo);
            cursor = list.after_call(undo);
            continue;
        }
        let next_state = if ops[op].write { Some(ops[op].value) } else { (ops[op].value == state).then_some(state) };
        if let Some(next_state) = next_state {
            let mut marked = linearized.clone();
            marked[op / 64] |= 1 << (op % 64);
            if cache.insert((marked.clone(), next_state)) {
                stack.push((op, state));
                state = next_state;
                linearized = marked;
                list.lift(op);
                cursor = list.first();
                continue;
            }
        }
        cursor = list.next(e);
    }
    None
}

/// Call and return entries in time order, as a doubly linked list that
/// operations can be lifted out of and put back into.
struct EntryList {
    /// (operation, is_call) per entry.
    entries: Vec<(usize, bool)>,
    next: Vec<usize>,
    prev: Vec<usize>,
    call_at: Vec<usize>,
    ret_at: Vec<usize>,
}

impl EntryList {
    const HEAD: usize = 0;

    fn new(ops: &[RegOp]) -> Self {
        let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            order.push((op.invoke, false, i));
            order.push((op.ret, true, i));
        }
        // Calls before returns at the same instant: such operations overlap.
        order.sort_unstable();
        let n = order.len();
        let mut list = EntryList {
            entries: vec![(usize::MAX, false); n + 1],
            next: (1..=n + 1).collect(),
            prev: (0..=n).map(|i| i.wrapping_sub(1)).collect(),
            call_at: vec![0; ops.len()],
            ret_at: vec![0; ops.len()],
        };
        for (k, (_, is_ret, op)) in order.into_iter().enumerate() {
            let slot = k + 1;
            list.entries[slot] = (op, !is_ret);
            if is_ret {
                list.ret_at[op] = slot;
            } else {
                list.call_at[op] = slot;
            }
        }
        list
    }

    fn end(&self) -> usize {
        self.entries.len()
    }

    fn first(&self) -> Option<usize> {
        self.next(Self::HEAD)
    }

    fn next(&self, e: usize) -> Option<usize> {
        let n = self.next[e];
        (n != self.end()).then_some(n)
    }

    fn entry(&self, e: usize) -> (usize, bool) {
        self.entries[e]
    }

    fn after_call(&self, op: usize) -> Option<usize> {
        self.next(self.call_at[op])
    }

    fn unlink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = n;
        if n != self.end() {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = e;
        if n != self.end() {
            self.prev[n] = e;
        }
    }

    fn lift(&mut self, op: usize) {
        self.unlink(self.call_at[op]);
        self.unlink(self.ret_at[op]);
    }

    fn unlift(&mut self, op: usize) {
        self.relink(self.ret_at[op]);
        self.relink(self.call_at[op]);
    }
}
