//! Security on loopback, with certificates made at test time: a TLS cluster
//! serving TLS clients, plaintext and foreign-CA callers refused, tokens
//! checked, a client's page holder closed to strangers, and the caps holding
//! under a flood while another client is served.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use ivy_harness::certs::{self, Bundle, CertsPlan, Pem};
use ivy_harness::cluster::{Cluster, ClusterMode, ClusterOptions};
use ivy_harness::flood::{self, FloodConfig};
use ivy_raft::client::{Client, ClientConfig, CmConn, Hit};
use ivy_raft::cm::CmNode;
use ivy_raft::protocol::{Caps, Epoch, PageName};
use ivy_raft::rpc::{Channels, ClusterClient, HolderClient, HolderRef, ManagerClient, RaftCall, RaftClient, Security};
use ivy_raft::Error;
use tokio::time::Instant;

/// Deadline of one operation of a client these tests start.
const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// A refused client gives up after this long.
const REFUSED_TIMEOUT: Duration = Duration::from_millis(1500);

const TOKEN: &str = "correct-horse-battery-staple-42";

fn bundle() -> Result<Bundle> {
    certs::generate(&CertsPlan { nodes: 3, clients: 3, hosts: Vec::new() })
}

fn tls(pem: &Pem, ca: &Pem) -> Result<Security> {
    Ok(Security::default().with_tls_pem(pem.cert.as_bytes(), pem.key.as_bytes(), ca.cert.as_bytes())?)
}

/// Every node with its own node certificate (and the token, when given);
/// clients with client-1's.
fn options(b: &Bundle, token: Option<&str>) -> Result<ClusterOptions> {
    let with_token = |s: Security| -> Result<Security> {
        Ok(match token {
            Some(t) => s.with_token(t)?,
            None => s,
        })
    };
    let mut security = BTreeMap::new();
    for (i, node) in b.nodes.iter().enumerate() {
        security.insert(i as u64 + 1, with_token(tls(node, &b.ca)?)?);
    }
    let client_security = with_token(tls(&b.clients[0], &b.ca)?)?;
    Ok(ClusterOptions { security, caps: None, client_security })
}

async fn client_with(cluster: &Cluster, security: Security, op_timeout: Duration) -> Result<Client, Error> {
    let mut config = ClientConfig::new(cluster.addrs());
    config.security = security;
    config.op_timeout = op_timeout;
    Client::start(config).await
}

/// The leader's registered client ids, asked with `security`.
async fn registered(cluster: &Cluster, security: Security) -> Result<Vec<u64>> {
    let leader = cluster.wait_leader(Duration::from_secs(10)).await?;
    let addr = cluster.node(leader).context("the leader runs")?.addr.to_string();
    let rpc = ManagerClient::new(Channels::new(Duration::from_secs(2), security));
    Ok(rpc.status(&addr).await?.client_list.iter().map(|c| c.id).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_cluster_serves_tls_clients_and_refuses_plaintext() -> Result<()> {
    let b = bundle()?;
    let cluster = Cluster::start_with(ClusterMode::raft(), options(&b, None)?).await?;
    let c1 = cluster.client().await?;
    let c2 = client_with(&cluster, tls(&b.clients[1], &b.ca)?, OP_TIMEOUT).await?;

    // Faults to the CM, and page bytes from client to client, all over TLS.
    assert_eq!(c1.write("P1", b"over tls").await?, Hit::Fault);
    assert_eq!(c2.read("P1").await?, (b"over tls".to_vec(), Hit::Fault));
    c2.write("P1", b"second").await?;
    assert_eq!(c1.read("P1").await?, (b"second".to_vec(), Hit::Fault), "c1 was invalidated over TLS");

    // A plaintext client, and one with a certificate from another CA, are refused.
    let plain = client_with(&cluster, Security::default(), REFUSED_TIMEOUT).await;
    let err = plain.err().context("a plaintext client must be refused")?;
    // Refused at the transport (the message then points at TLS) or left without
    // an answer, depending on when the server drops the connection.
    assert!(matches!(err, Error::Unavailable(_)), "{err}");
    println!("plaintext client: {err}");
    let other = bundle()?;
    let foreign = client_with(&cluster, tls(&other.clients[0], &other.ca)?, REFUSED_TIMEOUT).await;
    ensure!(foreign.is_err(), "a client with a certificate from another CA must be refused");

    let ids = registered(&cluster, tls(&b.clients[2], &b.ca)?).await?;
    assert_eq!(ids, vec![c1.id(), c2.id()], "only the TLS clients registered");
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_or_wrong_token_is_refused_and_changes_nothing() -> Result<()> {
    let node = Security::default().with_token(TOKEN)?;
    let security = (1..=3).map(|id| (id, node.clone())).collect();
    let opts = ClusterOptions { security, caps: None, client_security: node.clone() };
    let cluster = Cluster::start_with(ClusterMode::raft(), opts).await?;
    let owner = cluster.client().await?;
    owner.write("P1", b"mine").await?;

    let wrong = Security::default().with_token("not-the-cluster-token")?;
    for (name, security) in [("no token", Security::default()), ("a wrong token", wrong.clone())] {
        let started = Instant::now();
        let refused = client_with(&cluster, security.clone(), OP_TIMEOUT).await;
        assert!(matches!(refused, Err(Error::Unauthenticated(_))), "{name}: {:?}", refused.err());
        assert!(started.elapsed() < OP_TIMEOUT, "{name}: refused at once, not retried");
        // Admin calls are refused too, and change nothing.
        let cm = CmConn::new(cluster.addrs(), Duration::from_secs(2), Duration::from_secs(2), security.clone())?;
        assert!(matches!(cm.evict(owner.id()).await, Err(Error::Unauthenticated(_))), "{name}: evict");
        assert!(matches!(cm.unregister(owner.id()).await, Err(Error::Unauthenticated(_))), "{name}: unregister");
        assert!(matches!(cm.pages(&[]).await, Err(Error::Unauthenticated(_))), "{name}: pages");
        // So are the cluster operations (ivy.Cluster): membership, hand-over, backups.
        let ops = ClusterClient::new(Channels::new(Duration::from_secs(2), security));
        for addr in cluster.addrs() {
            let members = ops.members(&addr).await.map(|_| ());
            assert!(matches!(members, Err(Error::Unauthenticated(_))), "{name}: member list: {members:?}");
            let removed = ops.remove(&addr, 3).await.map(|_| ());
            assert!(matches!(removed, Err(Error::Unauthenticated(_))), "{name}: member remove: {removed:?}");
            let handed = ops.handover(&addr).await.map(|_| ());
            assert!(matches!(handed, Err(Error::Unauthenticated(_))), "{name}: handover: {handed:?}");
            let saved = ops.save_snapshot(&addr).await.map(|_| ());
            assert!(matches!(saved, Err(Error::Unauthenticated(_))), "{name}: snapshot: {saved:?}");
        }
    }
    // The same through the CLI, without a token: `ivy member list`, `ivy snapshot save`.
    let backup = tempfile::tempdir()?;
    let file = backup.path().join("backup.ivy");
    let cms = cluster.addrs().join(",");
    let file_arg = file.display().to_string();
    for args in [vec!["member", "list", "--cm", &cms], vec!["snapshot", "save", &file_arg, "--cm", &cms]] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ivy"))
            .args(&args)
            .env_remove("IVY_TOKEN_FILE")
            .output()
            .await?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        ensure!(!out.status.success() && text.contains("unauthenticated"), "ivy {args:?} without the token: {text}");
    }
    ensure!(!file.exists(), "no backup was written");
    assert_eq!(registered(&cluster, node.clone()).await?, vec![owner.id()], "the cluster is unchanged");
    let cm = CmConn::new(cluster.addrs(), Duration::from_secs(2), Duration::from_secs(2), node)?;
    let p1 = cm.pages(&["P1".to_string()]).await?;
    assert_eq!((p1.pages[0].owner, p1.pages[0].epoch), (owner.id(), 1), "P1 is unchanged");
    assert_eq!(owner.read("P1").await?, (b"mine".to_vec(), Hit::Local));

    // The owner's page holder refuses a caller without the token.
    let stranger = HolderClient::new(Channels::new(Duration::from_secs(1), wrong));
    let me = HolderRef { id: owner.id(), addr: owner.addr().to_string() };
    let page = PageName::new("P1")?;
    assert!(matches!(stranger.invalidate(&me, &page, 99, &[]).await, Err(Error::Unauthenticated(_))));
    assert_eq!(owner.read("P1").await?, (b"mine".to_vec(), Hit::Local), "still valid after the refused invalidation");
    cluster.shutdown().await;
    Ok(())
}

/// Tries to invalidate `owner`'s copy of `page` and to have its bytes forwarded
/// to the caller; both must fail.
async fn stranger_is_refused(security: Security, owner: &HolderRef, page: &PageName, epoch: Epoch) -> Result<()> {
    let stranger = HolderClient::new(Channels::new(Duration::from_secs(1), security));
    let invalidated = stranger.invalidate(owner, page, epoch + 1, &[]).await;
    ensure!(invalidated.is_err(), "the invalidation went through");
    let thief = HolderRef { id: 999, addr: "127.0.0.1:9".into() };
    let fwd = ivy_raft::protocol::Forward {
        owner: owner.id,
        epoch,
        kind: ivy_raft::protocol::FaultKind::Write,
        seq: 1,
        created: false,
    };
    ensure!(stranger.forward(owner, page, &fwd, &thief, &[]).await.is_err(), "the forward went through");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strangers_cannot_invalidate_or_pull_a_clients_pages() -> Result<()> {
    let b = bundle()?;
    let cluster = Cluster::start_with(ClusterMode::raft(), options(&b, Some(TOKEN))?).await?;
    let owner = cluster.client().await?;
    owner.write("P1", b"secret").await?;
    let (me, page) = (HolderRef { id: owner.id(), addr: owner.addr().to_string() }, PageName::new("P1")?);

    let other = bundle()?;
    let callers = [
        ("plaintext with the token", Security::default().with_token(TOKEN)?),
        ("another CA's node with the token", tls(&other.nodes[0], &other.ca)?.with_token(TOKEN)?),
        ("a member client without the token", tls(&b.clients[1], &b.ca)?),
        ("a member client with the token (not a CM node)", tls(&b.clients[1], &b.ca)?.with_token(TOKEN)?),
    ];
    for (who, security) in callers {
        stranger_is_refused(security, &me, &page, 1).await.with_context(|| who.to_string())?;
    }
    assert_eq!(owner.read("P1").await?, (b"secret".to_vec(), Hit::Local), "the copy is intact");
    // The real manager's calls still reach it: another client's write invalidates it.
    let writer = client_with(&cluster, tls(&b.clients[2], &b.ca)?.with_token(TOKEN)?, OP_TIMEOUT).await?;
    writer.write("P1", b"changed").await?;
    assert_eq!(owner.read("P1").await?, (b"changed".to_vec(), Hit::Fault));
    cluster.shutdown().await;
    Ok(())
}

/// Each node's term and the leader it knows (from Raft, not from whether the
/// leader heard from a majority lately, which a loaded machine can delay).
fn terms_and_leaders(cluster: &Cluster) -> Vec<(u64, Option<u64>)> {
    (1..=3).filter_map(|id| cluster.node(id)).map(|n| n.status()).map(|s| (s.term, s.leader.map(|l| l.id))).collect()
}

/// Runs a node configured like node `like` of `cluster` on a fresh port and
/// data dir, with `security`. Its pre-votes are refused at the transport, so it
/// never campaigns by itself (its term stays behind the cluster's); it then asks
/// every node for its vote directly, 100 terms past the cluster's, and gets
/// no answer. The cluster's nodes keep their terms and leader.
async fn rogue_cannot_disturb(cluster: &Cluster, like: u64, security: Security) -> Result<()> {
    let before = terms_and_leaders(cluster);
    let top = before.iter().map(|(t, _)| *t).max().unwrap_or(0);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let data = tempfile::tempdir()?;
    let mut config = cluster.node_config(like);
    config.peers.insert(like, listener.local_addr()?.to_string());
    config.data_dir = data.path().join("rogue");
    config.security = security.clone();
    let rogue = CmNode::start(config, listener).await?;
    let answered = vote_from_the_future(cluster, like, security.clone()).await?;
    assert_eq!(answered, 0, "a vote request with these credentials was answered");
    ensure!(rogue.status().term <= top, "the rogue raised its term to {} without a pre-vote", rogue.status().term);
    assert_eq!(terms_and_leaders(cluster), before, "a rogue node raised a term or changed the leader");
    rogue.shutdown().await;
    Ok(())
}

/// Sends every node an AppendEntries from a leader `node` at a term far ahead,
/// with `security`; returns how many nodes accepted it.
async fn append_from_the_future(cluster: &Cluster, node: u64, security: Security) -> Result<usize> {
    use openraft::raft::AppendEntriesRequest;
    let request: AppendEntriesRequest<ivy_raft::raft::TypeConfig> = AppendEntriesRequest {
        vote: openraft::Vote::new_committed(term_far_ahead(cluster), node),
        prev_log_id: None,
        entries: Vec::new(),
        leader_commit: None,
    };
    answered_by_the_others(cluster, node, security, RaftCall::Append, postcard::to_allocvec(&request)?).await
}

/// Sends every node a RequestVote from candidate `node` at a term far ahead,
/// with `security`; returns how many nodes answered it.
async fn vote_from_the_future(cluster: &Cluster, node: u64, security: Security) -> Result<usize> {
    use openraft::raft::VoteRequest;
    let request: VoteRequest<u64> =
        VoteRequest { vote: openraft::Vote::new(term_far_ahead(cluster), node), last_log_id: None };
    answered_by_the_others(cluster, node, security, RaftCall::Vote, postcard::to_allocvec(&request)?).await
}

/// A term 100 past the highest any node of `cluster` is at.
fn term_far_ahead(cluster: &Cluster) -> u64 {
    (1..=3).filter_map(|id| cluster.node(id)).map(|n| n.status().term).max().unwrap_or(0) + 100
}

/// Sends `data` as `call` to every node but `node`, with `security`; returns
/// how many answered it.
async fn answered_by_the_others(
    cluster: &Cluster,
    node: u64,
    security: Security,
    call: RaftCall,
    data: Vec<u8>,
) -> Result<usize> {
    let rpc = RaftClient::new(Channels::new(Duration::from_secs(1), security));
    let mut answered = 0;
    for id in (1..=3).filter(|id| *id != node) {
        let addr = cluster.node(id).context("node runs")?.addr.to_string();
        if rpc.call(&addr, call, data.clone(), Duration::from_secs(1)).await.is_ok() {
            answered += 1;
        }
    }
    Ok(answered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_without_a_node_certificate_of_the_ca_cannot_join_or_disturb() -> Result<()> {
    let b = bundle()?;
    let cluster = Cluster::start_with(ClusterMode::raft(), options(&b, Some(TOKEN))?).await?;
    let c = cluster.client().await?;
    c.write("P1", b"v").await?;
    let other = bundle()?;
    let foreign = tls(&other.nodes[1], &other.ca)?.with_token(TOKEN)?;
    let client_cert = tls(&b.clients[1], &b.ca)?.with_token(TOKEN)?;
    let no_token = tls(&b.nodes[1], &b.ca)?;
    // A node that campaigns with such credentials gets no vote.
    rogue_cannot_disturb(&cluster, 2, foreign.clone()).await.context("a node certified by another CA")?;
    // A node with a client certificate may ask a CM whether it belongs to a
    // cluster (`ivy member add` does), so it sees the cluster and waits to be
    // added instead of campaigning; its vote requests, sent by hand, are refused.
    assert_eq!(vote_from_the_future(&cluster, 2, client_cert.clone()).await?, 0, "a client certificate's vote request");
    // Nor can it depose the leader with an append from a later term.
    let before = terms_and_leaders(&cluster);
    let leader = before.iter().find_map(|(_, l)| *l).context("a leader")?;
    let impostor = if leader == 1 { 2 } else { 1 };
    for (who, security) in [("another CA", foreign), ("a client certificate", client_cert), ("no token", no_token)] {
        assert_eq!(append_from_the_future(&cluster, impostor, security).await?, 0, "{who}: an append was accepted");
    }
    assert_eq!(terms_and_leaders(&cluster), before, "the cluster was disturbed");
    assert_eq!(c.read("P1").await?.0, b"v".to_vec());
    c.write("P1", b"w").await?;
    // The same append with a genuine node certificate and the token is accepted:
    // the refusals above were the credentials' doing.
    let genuine = tls(&b.nodes[impostor as usize - 1], &b.ca)?.with_token(TOKEN)?;
    assert!(append_from_the_future(&cluster, impostor, genuine).await? > 0, "the genuine append was refused");
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn caps_refuse_a_flood_while_another_client_is_served() -> Result<()> {
    let caps = Caps { max_clients: 4, max_pages: 12 };
    let opts = ClusterOptions { caps: Some(caps), ..ClusterOptions::default() };
    let cluster = Cluster::start_with(ClusterMode::raft(), opts).await?;
    let steady = cluster.client().await?;
    steady.write("P1", b"0").await?;

    let config = FloodConfig {
        cms: cluster.addrs(),
        duration: Duration::from_secs(3),
        workers: 8,
        security: Security::default(),
    };
    let flooding = tokio::spawn(async move { flood::run(&config).await });
    let mut served = 0;
    while !flooding.is_finished() {
        served += 1;
        let value = format!("{served}");
        steady.write("P1", value.as_bytes()).await.context("a write during the flood")?;
        assert_eq!(steady.read("P1").await?.0, value.into_bytes());
    }
    let report = flooding.await??;
    println!("flood: {report:?}; the steady client did {served} writes and reads meanwhile");
    assert!(report.refused_clients > 0 && report.refused_pages > 0, "the flood reached both caps: {report:?}");

    let cm = CmConn::new(cluster.addrs(), Duration::from_secs(2), Duration::from_secs(2), Security::default())?;
    let pages = cm.pages(&[]).await?;
    assert!(pages.pages.len() as u64 <= caps.max_pages, "{} pages", pages.pages.len());
    assert!(registered(&cluster, Security::default()).await?.len() as u64 <= caps.max_clients);
    // A creation beyond the cap names it; writes to existing pages go on.
    let err = steady.write("brand-new", b"x").await.err().context("a creation beyond the cap")?;
    assert!(matches!(err, Error::TooManyPages { .. }) && err.to_string().contains("--max-pages"), "{err}");
    steady.write("P1", b"after").await?;
    cluster.shutdown().await;
    Ok(())
}
