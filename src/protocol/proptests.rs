//! Property tests of the protocol's input checks and of `Directory::apply`:
//! random names and contents, and random command sequences that must keep the
//! directory's invariants (owner never in its copy set, epochs never going
//! back, a retried request answered with its first grant, caps held).

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::error::Error;

/// Cases per property: enough to find a broken invariant, small enough for CI.
const CASES: u32 = 256;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn page_names_are_checked_not_trusted(name in ".{0,80}") {
        let ok = !name.is_empty()
            && name.len() <= MAX_PAGE_NAME
            && name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        match PageName::new(&name) {
            Ok(page) => prop_assert!(ok && page.as_str() == name),
            Err(Error::BadPageName { name: shown }) => prop_assert!(!ok && shown.chars().count() <= 83),
            Err(other) => prop_assert!(false, "unexpected error {other}"),
        }
    }

    #[test]
    fn sizes_are_checked(len in 0usize..200_000, max in 0usize..100_000) {
        let page = PageName::new("P1").unwrap();
        prop_assert_eq!(check_size(&page, len, max).is_ok(), len <= max);
    }

    #[test]
    fn apply_keeps_the_invariants(steps in prop::collection::vec(step(), 1..120)) {
        let mut model = Model::default();
        for s in steps {
            model.step(s)?;
        }
    }
}

/// One step of a random run: a command, or a retry of a client's last grant.
#[derive(Debug, Clone)]
enum Step {
    Cmd(DirCmd),
    Retry { client: ClientId, seen: Option<Epoch> },
}

fn page() -> impl Strategy<Value = PageName> {
    prop::sample::select(vec!["P1", "P2", "P3", "P4"]).prop_map(|p| PageName::new(p).unwrap())
}

fn step() -> impl Strategy<Value = Step> {
    let client = 1u64..7;
    let seen = prop::option::of(1u64..5);
    prop_oneof![
        3 => (0u64..10).prop_map(|n| Step::Cmd(DirCmd::Register { addr: format!("127.0.0.1:{}", 9000 + n), nonce: n })),
        1 => client.clone().prop_map(|client| Step::Cmd(DirCmd::Unregister { client })),
        1 => client.clone().prop_map(|client| Step::Cmd(DirCmd::Evict { client })),
        8 => (client.clone(), 1u64..12, page(), any::<bool>(), seen.clone()).prop_map(|(client, seq, page, w, seen)| {
            let kind = if w { FaultKind::Write } else { FaultKind::Read };
            Step::Cmd(DirCmd::Fault { client, seq, page, kind, seen })
        }),
        1 => (1u64..6, 1u64..5).prop_map(|(c, p)| Step::Cmd(DirCmd::SetCaps { caps: Caps { max_clients: c, max_pages: p } })),
        3 => (client, seen).prop_map(|(client, seen)| Step::Retry { client, seen }),
    ]
}

/// The directory under test and what the properties remember.
#[derive(Default)]
struct Model {
    dir: Directory,
    epochs: BTreeMap<PageName, Epoch>,
    /// Each client's last granted fault: (seq, page, kind, grant).
    last: BTreeMap<ClientId, (u64, PageName, FaultKind, Applied)>,
}

impl Model {
    fn step(&mut self, step: Step) -> Result<(), TestCaseError> {
        let cmd = match step {
            Step::Cmd(cmd) => cmd,
            Step::Retry { client, seen } => {
                let Some((seq, page, kind, first)) = self.last.get(&client).cloned() else { return Ok(()) };
                let again = self.dir.apply(&DirCmd::Fault { client, seq, page, kind, seen });
                prop_assert_eq!(again, first, "a retry of client {}'s seq {} got another answer", client, seq);
                return self.check();
            }
        };
        let (clients, pages) = (self.dir.client_count(), self.dir.page_count());
        let applied = self.dir.apply(&cmd);
        match (&cmd, &applied) {
            (DirCmd::Register { .. }, Applied::Registered { .. }) if self.dir.client_count() > clients => {
                prop_assert!(self.dir.client_count() as u64 <= self.dir.caps().max_clients, "client cap broken");
            }
            (DirCmd::Unregister { client } | DirCmd::Evict { client }, _) => {
                self.last.remove(client);
            }
            (DirCmd::Fault { client, seq, page, kind, .. }, Applied::Granted(_)) => {
                if self.dir.page_count() > pages {
                    prop_assert!(self.dir.page_count() as u64 <= self.dir.caps().max_pages, "page cap broken");
                }
                self.last.insert(*client, (*seq, page.clone(), *kind, applied.clone()));
            }
            (_, Applied::Rejected(_)) => {
                prop_assert_eq!((self.dir.client_count(), self.dir.page_count()), (clients, pages));
            }
            _ => {}
        }
        self.check()
    }

    fn check(&mut self) -> Result<(), TestCaseError> {
        if let Err(why) = self.dir.check() {
            prop_assert!(false, "invariant broken: {}", why);
        }
        for (name, entry) in self.dir.pages() {
            let before = self.epochs.insert(name.clone(), entry.epoch).unwrap_or(0);
            prop_assert!(entry.epoch >= before, "page {} went from epoch {} back to {}", name, before, entry.epoch);
        }
        prop_assert_eq!(self.epochs.len(), self.dir.page_count(), "a page disappeared");
        Ok(())
    }
}
