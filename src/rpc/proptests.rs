//! Property tests of every pb → domain conversion: arbitrary messages, and
//! arbitrary bytes decoded as messages, through the server adapters and the
//! client-side conversions. Nothing panics; what is malformed is refused with
//! a clear error before any handler sees it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use prost::Message;
use tonic::{Code, Request};

use super::pb::manager_server::Manager;
use super::pb::page_holder_server::PageHolder;
use super::{pb, HolderApi, HolderRef, ManagerApi, Removal};
use crate::error::Error;
use crate::protocol::{ClientId, Epoch, FaultRequest, Forward, Grant, PageName, Transfer};
use crate::status::{NodeStatus, PagesReport};

/// Cases per property.
const CASES: u32 = 128;

/// A handler that accepts everything and counts the calls that reached it.
#[derive(Default)]
struct Fake(AtomicU64);

impl Fake {
    fn hit(&self) -> Result<(), Error> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tonic::async_trait]
impl ManagerApi for Fake {
    async fn register(&self, addr: String, _nonce: u64) -> Result<(ClientId, Duration), Error> {
        assert!(addr.parse::<std::net::SocketAddr>().is_ok(), "a bad address reached the handler: {addr:?}");
        self.hit().map(|()| (1, Duration::from_secs(1)))
    }
    async fn unregister(&self, _client: ClientId) -> Result<Removal, Error> {
        self.hit().map(|()| Removal::default())
    }
    async fn keep_alive(&self, client: ClientId) -> Result<Duration, Error> {
        assert!(client > 0);
        self.hit().map(|()| Duration::from_secs(1))
    }
    async fn evict(&self, client: ClientId) -> Result<Removal, Error> {
        assert!(client > 0);
        self.hit().map(|()| Removal::default())
    }
    async fn fault(&self, r: FaultRequest, _within: Option<Duration>) -> Result<Grant, Error> {
        assert!(r.client > 0 && r.seq > 0);
        self.hit().map(|()| Grant { epoch: 1, created: false })
    }
    async fn status(&self) -> Result<NodeStatus, Error> {
        self.hit().map(|()| NodeStatus::default())
    }
    async fn pages(&self, _pages: Vec<PageName>) -> Result<PagesReport, Error> {
        self.hit().map(|()| PagesReport { pages: Vec::new(), more: 0 })
    }
}

#[tonic::async_trait]
impl HolderApi for Fake {
    fn me(&self) -> ClientId {
        7
    }
    async fn forward(&self, _page: PageName, fwd: Forward, requester: HolderRef) -> Result<(), Error> {
        assert!(fwd.epoch > 0 && requester.addr.parse::<std::net::SocketAddr>().is_ok());
        self.hit()
    }
    async fn send_page(&self, _page: PageName, copy: Transfer, _seq: u64) -> Result<(), Error> {
        assert!(copy.epoch > 0);
        self.hit()
    }
    async fn invalidate(&self, _page: PageName, epoch: Epoch) -> Result<(), Error> {
        assert!(epoch > 0);
        self.hit()
    }
    async fn release(&self, _page: PageName, epoch: Epoch) -> Result<(), Error> {
        assert!(epoch > 0);
        self.hit()
    }
    async fn change_cm(&self, addr: String) -> Result<(), Error> {
        assert!(addr.parse::<std::net::SocketAddr>().is_ok());
        self.hit()
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a test runtime");
    rt.block_on(f)
}

/// Either the handler was reached, or the caller got a clear refusal.
fn reached_or_refused<T>(fake: &Fake, before: u64, answer: Result<T, tonic::Status>) -> Result<(), TestCaseError> {
    let reached = fake.0.load(Ordering::SeqCst) > before;
    match answer {
        Ok(_) => prop_assert!(reached, "an answer without the handler"),
        Err(status) => {
            prop_assert!(!reached, "the handler ran and the call still failed: {:?}", status);
            prop_assert!(matches!(status.code(), Code::InvalidArgument | Code::Unavailable), "{:?}", status);
            prop_assert!(!status.message().is_empty());
        }
    }
    Ok(())
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![".{0,70}", "[A-Za-z0-9_.-]{1,64}", "127\\.0\\.0\\.1:[0-9]{1,5}", Just(String::new())]
}

fn small() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), 1u64..10, any::<u64>()]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn manager_requests(addr in text(), nonce in any::<u64>(), client in small(), seq in small(), page in text(),
                        pages in prop::collection::vec(text(), 0..4), timeout in ".{0,12}") {
        let fake = Arc::new(Fake::default());
        let adapter = super::manager::Adapter(fake.clone());
        block_on(async {
            let n = fake.0.load(Ordering::SeqCst);
            reached_or_refused(&fake, n, adapter.register(Request::new(pb::RegisterRequest { addr, nonce })).await)?;
            let n = fake.0.load(Ordering::SeqCst);
            reached_or_refused(&fake, n, adapter.keep_alive(Request::new(pb::KeepAliveRequest { client })).await)?;
            let n = fake.0.load(Ordering::SeqCst);
            reached_or_refused(&fake, n, adapter.evict(Request::new(pb::EvictRequest { client })).await)?;
            let mut req = Request::new(pb::FaultRequest { client, seq, page });
            if let Ok(value) = timeout.parse() {
                req.metadata_mut().insert("grpc-timeout", value);
            }
            let n = fake.0.load(Ordering::SeqCst);
            reached_or_refused(&fake, n, adapter.write_fault(req).await)?;
            let n = fake.0.load(Ordering::SeqCst);
            reached_or_refused(&fake, n, adapter.pages(Request::new(pb::PagesRequest { pages })).await)
        })?;
    }

    #[test]
    fn holder_requests(page in text(), epoch in small(), to in prop_oneof![Just(0u64), Just(7u64), small()],
                       addr in text(), mode in -2i32..5, seq in small(), content in prop::collection::vec(any::<u8>(), 0..64),
                       released in prop::collection::vec((text(), small()), 0..3)) {
        let fake = Arc::new(Fake::default());
        let adapter = super::holder::Adapter { api: fake.clone(), tls: false };
        let released: Vec<pb::Released> = released.into_iter().map(|(page, epoch)| pb::Released { page, epoch }).collect();
        block_on(async {
            let fwd = pb::ForwardRequest { page: page.clone(), epoch, requester: 3, requester_addr: addr.clone(), mode, seq, created: false, to, released: released.clone() };
            let n = fake.0.load(Ordering::SeqCst);
            reached_or_refused(&fake, n, adapter.forward(Request::new(fwd)).await)?;
            let send = pb::SendPageRequest { page: page.clone(), epoch, mode, content, from: 3, seq, to };
            let n = fake.0.load(Ordering::SeqCst);
            reached_or_refused(&fake, n, adapter.send_page(Request::new(send)).await)?;
            let inv = pb::InvalidateRequest { page: page.clone(), epoch, to, released: released.clone() };
            let n = fake.0.load(Ordering::SeqCst);
            reached_or_refused(&fake, n, adapter.invalidate(Request::new(inv.clone())).await)?;
            let n = fake.0.load(Ordering::SeqCst);
            reached_or_refused(&fake, n, adapter.release(Request::new(inv)).await)?;
            let rel = pb::ReleaseRequest { released, to };
            let n = fake.0.load(Ordering::SeqCst);
            reached_or_refused(&fake, n, adapter.release_batch(Request::new(rel)).await)?;
            let n = fake.0.load(Ordering::SeqCst);
            reached_or_refused(&fake, n, adapter.change_cm(Request::new(pb::ChangeCmRequest { addr })).await)
        })?;
    }

    #[test]
    fn arbitrary_bytes_decode_or_fail_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let fake = Arc::new(Fake::default());
        let manager = super::manager::Adapter(fake.clone());
        let holder = super::holder::Adapter { api: fake.clone(), tls: false };
        block_on(async {
            if let Ok(m) = pb::RegisterRequest::decode(bytes.as_slice()) {
                let n = fake.0.load(Ordering::SeqCst);
                reached_or_refused(&fake, n, manager.register(Request::new(m)).await)?;
            }
            if let Ok(m) = pb::FaultRequest::decode(bytes.as_slice()) {
                let n = fake.0.load(Ordering::SeqCst);
                reached_or_refused(&fake, n, manager.read_fault(Request::new(m)).await)?;
            }
            if let Ok(m) = pb::PagesRequest::decode(bytes.as_slice()) {
                let n = fake.0.load(Ordering::SeqCst);
                reached_or_refused(&fake, n, manager.pages(Request::new(m)).await)?;
            }
            if let Ok(m) = pb::ForwardRequest::decode(bytes.as_slice()) {
                let n = fake.0.load(Ordering::SeqCst);
                reached_or_refused(&fake, n, holder.forward(Request::new(m)).await)?;
            }
            if let Ok(m) = pb::SendPageRequest::decode(bytes.as_slice()) {
                let n = fake.0.load(Ordering::SeqCst);
                reached_or_refused(&fake, n, holder.send_page(Request::new(m)).await)?;
            }
            if let Ok(m) = pb::InvalidateRequest::decode(bytes.as_slice()) {
                let n = fake.0.load(Ordering::SeqCst);
                reached_or_refused(&fake, n, holder.invalidate(Request::new(m)).await)?;
            }
            if let Ok(m) = pb::ReleaseRequest::decode(bytes.as_slice()) {
                let n = fake.0.load(Ordering::SeqCst);
                reached_or_refused(&fake, n, holder.release_batch(Request::new(m)).await)?;
            }
            Ok::<(), TestCaseError>(())
        })?;
        // Replies a client decodes: a clear error for what it does not know.
        if let Ok(reply) = pb::StatusReply::decode(bytes.as_slice()) {
            let _ = super::manager::node_status(reply);
        }
        if let Ok(info) = pb::PageInfo::decode(bytes.as_slice()) {
            let _ = super::manager::page_view(info);
        }
    }

    #[test]
    fn replies_convert_or_fail_cleanly(role in text(), mode in text(), state in text(), sync in any::<i64>(), age in any::<i64>()) {
        let known_role = crate::status::Role::parse(&role).is_some();
        let reply = pb::StatusReply {
            role, mode: mode.clone(), last_sync_ms: sync,
            client_list: vec![pb::ClientEntry { id: 1, addr: String::new(), keepalive_age_ms: age }],
            ..Default::default()
        };
        let converted = super::manager::node_status(reply);
        prop_assert_eq!(converted.is_ok(), known_role && (mode == "raft" || mode == "heartbeat"));
        if let Ok(st) = converted {
            prop_assert_eq!(st.last_sync_ms.is_some(), sync >= 0);
        }
        let view = super::manager::page_view(pb::PageInfo { state: state.clone(), ..Default::default() });
        prop_assert_eq!(view.is_ok(), ["live", "faulting", "lost", "absent"].contains(&state.as_str()));
    }

    #[test]
    fn statuses_from_anywhere_map_to_errors(code in 0i32..20, message in ".{0,40}", details in prop::collection::vec(any::<u8>(), 0..64)) {
        let status = tonic::Status::with_details(Code::from(code), message, details.into());
        let err = super::error_from_status(&status, "CM 127.0.0.1:1");
        prop_assert!(!err.to_string().is_empty());
    }
}

/// A release message with none, or with more than one message's worth, is
/// refused whole, and nothing of it is applied.
#[test]
fn release_batches_empty_or_too_long_are_refused() {
    let fake = Arc::new(Fake::default());
    let adapter = super::holder::Adapter { api: fake.clone(), tls: false };
    let one = |i: usize| pb::Released { page: format!("P{i}"), epoch: 2 };
    let too_many: Vec<pb::Released> = (0..=crate::protocol::RELEASES_PER_MESSAGE).map(one).collect();
    block_on(async {
        for released in [Vec::new(), too_many.clone()] {
            let refused = adapter.release_batch(Request::new(pb::ReleaseRequest { released, to: 7 })).await;
            assert_eq!(refused.expect_err("refused").code(), Code::InvalidArgument);
        }
        let fwd = pb::ForwardRequest {
            page: "P1".into(),
            epoch: 1,
            requester: 3,
            requester_addr: "127.0.0.1:9".into(),
            mode: pb::Mode::Read as i32,
            seq: 1,
            created: false,
            to: 7,
            released: too_many,
        };
        assert_eq!(adapter.forward(Request::new(fwd)).await.expect_err("refused").code(), Code::InvalidArgument);
        let full: Vec<pb::Released> = (0..crate::protocol::RELEASES_PER_MESSAGE).map(one).collect();
        adapter.release_batch(Request::new(pb::ReleaseRequest { released: full, to: 7 })).await.expect("accepted");
    });
    assert_eq!(fake.0.load(Ordering::SeqCst), crate::protocol::RELEASES_PER_MESSAGE as u64);
}
