//! Cluster mode: one session's listeners spread over the nodes (issue 18).
//! A `req` of 6 connections at node a places listeners on a, b and c; its
//! `hello` reaches b, its `update` c; data crosses all 6 connections
//! byte-exact; `status` anywhere shows each node's part; `release` at any
//! node frees every listener on every node.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use scistream_client::{Auth, Trust, connect};
use scistream_protocol::pb;
use scistream_testkit::etcd::{Etcd, have_etcd};
use scistream_testkit::{DigestReceiver, Gw, s2uc_json, send_stream, strings};

fn node_args(etcd: &Etcd, name: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--cluster",
        "hpc",
        "--etcd",
        &etcd.url(),
        "--node",
        name,
        "--etcd-lease-ttl",
        "3s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn node(etcd: &Etcd, name: &str, extra: &[&str]) -> Gw {
    node_with_range(etcd, name, 8, extra)
}

fn node_with_range(etcd: &Etcd, name: &str, ports: u16, extra: &[&str]) -> Gw {
    let args = node_args(etcd, name, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Gw::start(None, ports, &args)
}

async fn client(gw: &Gw) -> scistream_client::Connection {
    connect(&gw.control(), &Trust::Insecure, Auth::none())
        .await
        .unwrap()
}

/// Waits until every node has seen the others join (placement uses the
/// nodes this node sees).
async fn wait_for_members(etcd: &Etcd, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while etcd.get_prefix("/scistream/hpc/nodes/").len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "nodes did not register"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Each node's watch applies the others' keys a moment later.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// Nodes a, b and c, each seeing the others.
async fn three_nodes(etcd: &Etcd) -> (Gw, Gw, Gw) {
    let nodes = (
        node(etcd, "a", &[]),
        node(etcd, "b", &[]),
        node(etcd, "c", &[]),
    );
    wait_for_members(etcd, 3).await;
    nodes
}

fn random_uid() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).unwrap();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

async fn status(c: &scistream_client::Connection, uid: &str) -> Vec<pb::SessionStatus> {
    let answer = c
        .client
        .clone()
        .status(pb::StatusRequest { uid: uid.into() })
        .await;
    answer.map(|a| a.into_inner().sessions).unwrap_or_default()
}

/// A `req` of `n` PROD connections at `req_at` with its hello at
/// `hello_at`, to `receiver`: the session's listeners.
async fn request(
    req_at: &scistream_client::Connection,
    hello_at: &scistream_client::Connection,
    uid: &str,
    n: i32,
    receiver: &str,
) -> Result<Vec<String>, tonic::Status> {
    let mut req_client = req_at.client.clone();
    let request = pb::Request {
        uid: uid.to_owned(),
        role: "PROD".into(),
        num_conn: n,
        rate: 0,
        protocol: String::new(),
    };
    let req = tokio::spawn(async move { req_client.req(request).await });
    let hello = pb::Hello {
        uid: uid.to_owned(),
        prod_listeners: vec![receiver.to_owned()],
        role: "PROD".into(),
    };
    let said = hello_at.client.clone().hello(hello).await;
    let answered = tokio::time::timeout(Duration::from_secs(30), req)
        .await
        .unwrap()
        .unwrap()?
        .into_inner();
    assert_eq!(
        said?.into_inner().listeners,
        answered.listeners,
        "hello and req name the same listeners"
    );
    Ok(answered.listeners)
}

/// The instrument side: `inst`'s outbound session of `listeners.len()`
/// connections, one to each listener; its own listeners.
fn outbound(inst: &Gw, uid: &str, listeners: &[String]) -> Vec<String> {
    let n = listeners.len().to_string();
    let joined = listeners.join(",");
    let outbound = s2uc_json(&[
        "outbound_request",
        "--s2cs",
        &inst.control(),
        "--insecure",
        "--num_conn",
        &n,
        uid,
        &joined,
    ]);
    strings(&outbound, "listeners")
}

/// One stream of `bytes` to each of `entries` at once (seeds from `seed`
/// on): each arrives at `receiver` byte-exact.
fn streams_arrive(entries: &[String], seed: u64, bytes: u64, receiver: &DigestReceiver) {
    let senders: Vec<_> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let e = e.clone();
            std::thread::spawn(move || send_stream(&e, seed + i as u64, bytes))
        })
        .collect();
    let mut sent: Vec<(u64, u64)> = senders.into_iter().map(|t| t.join().unwrap()).collect();
    let mut got: Vec<(u64, u64)> = entries
        .iter()
        .map(|_| receiver.next(Duration::from_secs(60)))
        .collect();
    sent.sort();
    got.sort();
    assert_eq!(sent, got);
}

fn by_node(sessions: &[pb::SessionStatus]) -> BTreeMap<String, pb::SessionStatus> {
    sessions
        .iter()
        .map(|s| (s.node.clone(), s.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_of_six_connections_spreads_over_three_nodes() {
    if !have_etcd("a_session_of_six_connections_spreads_over_three_nodes") {
        return;
    }
    let etcd = Etcd::start();
    let (a, b, c) = three_nodes(&etcd).await;
    let (ca, cb, cc) = (client(&a).await, client(&b).await, client(&c).await);
    let receiver = DigestReceiver::start();
    let uid = random_uid();

    // A session is at most 128 connections, spread or not.
    let too_many = pb::Request {
        uid: random_uid(),
        role: "PROD".into(),
        num_conn: 129,
        rate: 0,
        protocol: String::new(),
    };
    let e = ca.client.clone().req(too_many).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");

    // req at a (the HPC side, inbound); its hello reaches b.
    let receiver_addr = receiver.addr.to_string();
    let listeners = request(&ca, &cb, &uid, 6, &receiver_addr).await.unwrap();
    assert_eq!(listeners.len(), 6, "{listeners:?}");

    // status at c: two listeners on each node, awaiting the update.
    let parts = by_node(&status(&cc, &uid).await);
    assert_eq!(
        parts.keys().collect::<Vec<_>>(),
        ["a", "b", "c"],
        "{parts:?}"
    );
    for (n, s) in &parts {
        assert_eq!(s.listeners.len(), 2, "node {n}: {s:?}");
        assert_eq!(s.phase, "ready", "node {n}: {s:?}");
    }
    let placed: Vec<String> = parts.values().flat_map(|s| s.listeners.clone()).collect();
    let mut sorted_answer = listeners.clone();
    sorted_answer.sort();
    let mut sorted_placed = placed;
    sorted_placed.sort();
    assert_eq!(sorted_answer, sorted_placed);

    // update at c: every part forwards to the receiver.
    let update = pb::UpdateTargets {
        uid: uid.clone(),
        remote_listeners: vec![receiver.addr.to_string()],
        role: "PROD".into(),
    };
    cc.client.clone().update(update).await.unwrap();

    // The instrument side: one gateway, six listeners, one to each of ours.
    let inst = Gw::start(None, 16, &[]);
    let entries = outbound(&inst, &uid, &listeners);
    assert_eq!(entries.len(), 6);

    // Six streams at once, one per connection: each arrives byte-exact.
    streams_arrive(&entries, 100, 2 << 20, &receiver);

    // Each node carried its two connections' bytes (conns_total also
    // counts the outbound gateway's probes).
    let parts = by_node(&status(&ca, &uid).await);
    for (n, s) in &parts {
        assert_eq!(s.phase, "forwarding", "node {n}: {s:?}");
        assert_eq!(
            s.bytes_to_target,
            2 * (2 << 20),
            "node {n} carried its share: {parts:#?}\n--- inst\n{}\n--- b\n{}",
            inst.log(),
            b.log()
        );
    }

    // s2uc status at c sums the session over its nodes.
    let v = s2uc_json(&["status", "--s2cs", &c.control(), "--insecure", &uid]);
    let total = &v["totals"][0];
    assert_eq!(total["nodes"], 3, "{v}");
    assert_eq!(total["listeners"], 6, "{v}");
    assert_eq!(total["bytes_to_target"], 6 * (2 << 20), "{v}");

    // s2uc list at a folds the session into one entry: its sums over the
    // three nodes, then a block per node.
    let v = s2uc_json(&["list", "--s2cs", &a.control(), "--insecure"]);
    let spread = v["spread"].as_array().unwrap();
    assert_eq!(spread.len(), 1, "{v}");
    assert_eq!(spread[0]["uid"], uid.as_str(), "{v}");
    assert_eq!(spread[0]["totals"][0]["nodes"], 3, "{v}");
    assert_eq!(spread[0]["totals"][0]["listeners"], 6, "{v}");
    let out = scistream_testkit::s2uc(&["list", "--s2cs", &a.control(), "--insecure"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert_eq!(
        text.matches(&format!("{uid}: spread over nodes")).count(),
        1,
        "{text}"
    );
    assert!(
        text.contains("PROD over 3 nodes: 6 listeners (0 lost)"),
        "{text}"
    );
    assert_eq!(text.matches("  node:").count(), 3, "{text}");

    // release at b frees every part, on every node.
    cb.client
        .clone()
        .release(pb::Release {
            uid: uid.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    for (name, conn) in [("a", &ca), ("b", &cb), ("c", &cc)] {
        let listed = conn.client.clone().list(pb::ListRequest {}).await.unwrap();
        let left: Vec<_> = listed
            .into_inner()
            .sessions
            .into_iter()
            .filter(|s| s.uid == uid)
            .collect();
        assert!(left.is_empty(), "node {name} still lists: {left:?}");
    }
    for l in &listeners {
        let refused = scistream_testkit::refused(l);
        assert!(refused, "{l} still accepts connections after the release");
    }
    assert!(etcd.get_prefix("/scistream/hpc/sessions/").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pack_keeps_a_session_on_the_node_that_took_it() {
    if !have_etcd("pack_keeps_a_session_on_the_node_that_took_it") {
        return;
    }
    let etcd = Etcd::start();
    let a = node(&etcd, "a", &["--placement", "pack"]);
    let _b = node(&etcd, "b", &["--placement", "pack"]);
    wait_for_members(&etcd, 2).await;
    let ca = client(&a).await;
    let uid = random_uid();
    let listeners = request(&ca, &ca, &uid, 4, "127.0.0.1:9").await.unwrap();
    assert_eq!(listeners.len(), 4);
    let parts = by_node(&status(&ca, &uid).await);
    assert_eq!(parts.keys().collect::<Vec<_>>(), ["a"], "{parts:?}");
    assert_eq!(parts["a"].listeners.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_stream_costs_only_its_own_connections() {
    if !have_etcd("a_node_killed_mid_stream_costs_only_its_own_connections") {
        return;
    }
    let etcd = Etcd::start();
    let (a, b, c) = three_nodes(&etcd).await;
    let (ca, cb) = (client(&a).await, client(&b).await);
    let receiver = DigestReceiver::start();
    let uid = random_uid();
    let receiver_addr = receiver.addr.to_string();
    let listeners = request(&ca, &cb, &uid, 6, &receiver_addr).await.unwrap();
    let update = pb::UpdateTargets {
        uid: uid.clone(),
        remote_listeners: vec![receiver_addr.clone()],
        role: "PROD".into(),
    };
    cb.client.clone().update(update).await.unwrap();
    let inst = Gw::start(None, 16, &[]);
    let entries = outbound(&inst, &uid, &listeners);
    // Listeners 4 and 5 are c's (a, b, c in that order, two each).
    let parts = by_node(&status(&ca, &uid).await);
    assert_eq!(parts["c"].listeners, listeners[4..6], "{parts:?}");

    // Six streams under way...
    let mut streams: Vec<scistream_testkit::StreamSender> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| scistream_testkit::StreamSender::open(e, 200 + i as u64))
        .collect();
    for s in &mut streams {
        s.send(4 << 20);
    }
    // ...when node c (its s2cs and its s2ds) is killed.
    c.kill9();
    // The streams through a and b go on and arrive whole.
    let survivors: Vec<_> = streams.drain(..4).collect();
    drop(streams);
    let sent: Vec<(u64, u64)> = tokio::task::spawn_blocking(move || {
        survivors
            .into_iter()
            .map(|mut s| {
                s.send(8 << 20);
                s.finish()
            })
            .collect()
    })
    .await
    .unwrap();
    let got: Vec<(u64, u64)> = (0..6)
        .map(|_| receiver.next(Duration::from_secs(60)))
        .collect();
    for s in &sent {
        assert!(
            got.contains(s),
            "a stream through a live node was damaged: {s:?} not in {got:?}"
        );
    }

    // New connections to the entries that led to c land on a or b.
    for (i, e) in entries[4..].iter().enumerate() {
        let e = e.clone();
        let seed = 300 + i as u64;
        let sent = tokio::task::spawn_blocking(move || send_stream(&e, seed, 1 << 20))
            .await
            .unwrap();
        assert_eq!(receiver.next(Duration::from_secs(30)), sent);
    }

    // status shows c's listeners lost once its lease expired; the session stays.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let parts = by_node(&status(&ca, &uid).await);
        if parts.get("c").is_some_and(|p| p.phase == "lost") {
            assert_eq!(parts["c"].listeners, listeners[4..6]);
            // What etcd keeps of it: its owner and its targets.
            assert_eq!(parts["c"].owner, parts["a"].owner, "{parts:?}");
            assert_eq!(
                parts["c"].targets,
                std::slice::from_ref(&receiver_addr),
                "{parts:?}"
            );
            assert_eq!(parts["a"].phase, "forwarding");
            assert_eq!(parts["b"].phase, "forwarding");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "c never shown lost: {parts:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // c started again rejoins and takes new work.
    let _c = node(&etcd, "c", &[]);
    wait_for_members(&etcd, 3).await;
    let uid2 = random_uid();
    let l2 = request(&cb, &ca, &uid2, 3, &receiver_addr).await.unwrap();
    let parts = by_node(&status(&ca, &uid2).await);
    assert_eq!(
        parts.keys().collect::<Vec<_>>(),
        ["a", "b", "c"],
        "{parts:?} {l2:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_requests_at_once_never_double_book_a_port_or_overfill_a_node() {
    if !have_etcd("sixty_requests_at_once_never_double_book_a_port_or_overfill_a_node") {
        return;
    }
    let etcd = Etcd::start();
    // Each node: 60 Mbit/s to book; every session of 3 connections at
    // 9 Mbit/s puts 3 Mbit/s on each node, so at most 20 fit.
    let limits = [
        "--capacity",
        "60Mbit",
        "--max-pending-per-identity",
        "100",
        "--max-ports-per-identity",
        "64",
        "--max-sessions-per-identity",
        "100",
        // A part whose hello landed just as its request failed elsewhere
        // is an orphan that never gets its update: it goes with this.
        "--update-timeout",
        "4s",
    ];
    let gws = [
        node_with_range(&etcd, "a", 64, &limits),
        node_with_range(&etcd, "b", 64, &limits),
        node_with_range(&etcd, "c", 64, &limits),
    ];
    wait_for_members(&etcd, 3).await;
    let mut conns = Vec::new();
    for gw in &gws {
        conns.push(client(gw).await);
    }
    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let (req_at, hello_at) = (
                conns[i % 3].client.clone(),
                conns[(i + 1) % 3].client.clone(),
            );
            tokio::spawn(async move {
                let uid = random_uid();
                let mut req_at = req_at;
                let request = pb::Request {
                    uid: uid.clone(),
                    role: "PROD".into(),
                    num_conn: 3,
                    rate: 9000,
                    protocol: String::new(),
                };
                let req = tokio::spawn(async move { req_at.req(request).await });
                let hello = pb::Hello {
                    uid: uid.clone(),
                    prod_listeners: vec!["127.0.0.1:9".into()],
                    role: "PROD".into(),
                };
                let _ = hello_at.clone().hello(hello).await;
                let answer = req.await.unwrap();
                if answer.is_ok() {
                    // Placed: it forwards (so --update-timeout keeps it).
                    let update = pb::UpdateTargets {
                        uid: uid.clone(),
                        remote_listeners: vec!["127.0.0.1:9".into()],
                        role: "PROD".into(),
                    };
                    hello_at.clone().update(update).await.unwrap();
                }
                (uid, answer)
            })
        })
        .collect();
    let mut ok = Vec::new();
    for t in tasks {
        let answer = tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("every request is answered")
            .unwrap();
        match answer {
            (uid, Ok(r)) => ok.push((uid, r.into_inner().listeners)),
            (_, Err(s)) => {
                assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
                assert!(s.message().contains("capacity left"), "{s:?}");
            }
        }
    }
    println!("{} of 60 sessions placed", ok.len());
    assert!(
        !ok.is_empty() && ok.len() <= 20,
        "{} sessions placed",
        ok.len()
    );
    let mut ports: Vec<&String> = ok.iter().flat_map(|(_, l)| l).collect();
    let placed = ports.len();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), placed, "a port was booked twice");
    // Each node holds one part of each placed session, within its capacity
    // (the parts of refused requests are gone once their cancellation lands).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for (name, conn) in ["a", "b", "c"].iter().zip(&conns) {
        loop {
            let listed = conn.client.clone().list(pb::ListRequest {}).await.unwrap();
            let here: Vec<_> = listed
                .into_inner()
                .sessions
                .into_iter()
                .filter(|s| s.node == *name)
                .collect();
            let booked: u64 = here.iter().map(|s| s.rate_kbps).sum();
            assert!(booked <= 60_000, "node {name} booked {booked} kbit/s");
            if here.len() == ok.len() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "node {name} holds {} parts for {} sessions",
                here.len(),
                ok.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_is_taken_over_and_the_session_can_still_be_released() {
    if !have_etcd("a_killed_holder_is_taken_over_and_the_session_can_still_be_released") {
        return;
    }
    let etcd = Etcd::start();
    let (a, b, c) = three_nodes(&etcd).await;
    let (ca, cb, cc) = (client(&a).await, client(&b).await, client(&c).await);
    let receiver = DigestReceiver::start();
    let uid = random_uid();
    let receiver_addr = receiver.addr.to_string();
    // a holds the session (its req reached a).
    let listeners = request(&ca, &ca, &uid, 6, &receiver_addr).await.unwrap();
    let update = pb::UpdateTargets {
        uid: uid.clone(),
        remote_listeners: vec![receiver_addr.clone()],
        role: "PROD".into(),
    };
    ca.client.clone().update(update).await.unwrap();
    let inst = Gw::start(None, 16, &[]);
    let entries = outbound(&inst, &uid, &listeners);
    let mut streams: Vec<scistream_testkit::StreamSender> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| scistream_testkit::StreamSender::open(e, 400 + i as u64))
        .collect();
    for s in &mut streams {
        s.send(2 << 20);
    }
    // The holder dies.
    a.kill9();
    // The streams through b and c finish whole.
    let survivors: Vec<_> = streams.drain(2..).collect();
    drop(streams);
    let sent: Vec<(u64, u64)> = tokio::task::spawn_blocking(move || {
        survivors
            .into_iter()
            .map(|mut s| {
                s.send(4 << 20);
                s.finish()
            })
            .collect()
    })
    .await
    .unwrap();
    let got: Vec<(u64, u64)> = (0..6)
        .map(|_| receiver.next(Duration::from_secs(60)))
        .collect();
    for s in &sent {
        assert!(got.contains(s), "{s:?} not in {got:?}");
    }
    // Once a's lease expired, b takes the session over: status shows a's
    // part lost and the others forwarding.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let parts = by_node(&status(&cb, &uid).await);
        if parts.get("a").is_some_and(|p| p.phase == "lost") {
            assert_eq!(parts["b"].phase, "forwarding", "{parts:?}");
            assert_eq!(parts["c"].phase, "forwarding", "{parts:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never taken over: {parts:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(b.log().contains("this node holds it now"), "{}", b.log());
    // release at c (passed on to b, the holder now) frees b's and c's listeners.
    cc.client
        .clone()
        .release(pb::Release {
            uid: uid.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    for l in &listeners[2..] {
        assert!(scistream_testkit::refused(l), "{l} still accepts");
    }
    assert!(etcd.get_prefix("/scistream/hpc/sessions/").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_instrument_side_spreads_the_same_way() {
    if !have_etcd("the_instrument_side_spreads_the_same_way") {
        return;
    }
    let etcd = Etcd::start();
    // The HPC side: one gateway, four listeners, to a receiver.
    let receiver = DigestReceiver::start();
    let hpc = Gw::start(None, 16, &[]);
    let inbound =
        scistream_testkit::s2uc_inbound(&hpc.control(), None, "127.0.0.1", receiver.addr.port(), 4);
    let uid = inbound["uid"].as_str().unwrap().to_owned();
    let inbound_listeners = strings(&inbound, "listeners");
    // The instrument side: two cluster nodes; the outbound session's four
    // listeners spread two and two.
    let (x, y) = (node(&etcd, "x", &[]), node(&etcd, "y", &[]));
    wait_for_members(&etcd, 2).await;
    let (cx, cy) = (client(&x).await, client(&y).await);
    let mut req_client = cx.client.clone();
    let request = pb::Request {
        uid: uid.clone(),
        role: "CONS".into(),
        num_conn: 4,
        rate: 0,
        protocol: String::new(),
    };
    let req = tokio::spawn(async move { req_client.req(request).await });
    let hello = pb::Hello {
        uid: uid.clone(),
        prod_listeners: vec![],
        role: "CONS".into(),
    };
    cy.client.clone().hello(hello).await.unwrap();
    let entries = req.await.unwrap().unwrap().into_inner().listeners;
    assert_eq!(entries.len(), 4);
    let update = pb::UpdateTargets {
        uid: uid.clone(),
        remote_listeners: inbound_listeners,
        role: "CONS".into(),
    };
    cy.client.clone().update(update).await.unwrap();
    let parts = by_node(&status(&cx, &uid).await);
    assert_eq!(parts.keys().collect::<Vec<_>>(), ["x", "y"], "{parts:?}");
    // Each outbound listener reaches the inbound listener of its index
    // (the inbound gateway checks the index): four streams, byte-exact.
    streams_arrive(&entries, 500, 1 << 20, &receiver);
    let parts = by_node(&status(&cy, &uid).await);
    for (n, s) in &parts {
        assert_eq!(s.bytes_to_target, 2 << 20, "node {n}: {parts:#?}");
        assert_eq!(
            s.errors, 0,
            "node {n}: no connection went astray: {parts:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_session_spreads_over_nodes_like_a_tcp_one() {
    if !have_etcd("a_udp_session_spreads_over_nodes_like_a_tcp_one") {
        return;
    }
    use scistream_client::RequestOptions;
    use scistream_protocol::Protocol;
    let etcd = Etcd::start();
    let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sink.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let port = sink.local_addr().unwrap().port();
    // The HPC side: two cluster nodes; the instrument side: one gateway.
    let (a, b) = (node(&etcd, "a", &[]), node(&etcd, "b", &[]));
    wait_for_members(&etcd, 2).await;
    let inst = Gw::start(None, 8, &[]);
    let o = RequestOptions {
        num_conn: 2,
        rate_kbps: 0,
        protocol: Protocol::Udp,
    };
    let ca = client(&a).await;
    let inbound = scistream_client::inbound_request(&ca, "127.0.0.1", &[port], &o)
        .await
        .unwrap();
    let ci = client(&inst).await;
    let outbound = scistream_client::outbound_request(
        &ci,
        &inbound.uid,
        inbound.listeners.clone(),
        Vec::new(),
        &o,
    )
    .await
    .unwrap();
    let parts = by_node(&status(&ca, &inbound.uid).await);
    assert_eq!(parts.keys().collect::<Vec<_>>(), ["a", "b"], "{parts:?}");
    // One sender per instrument-side listener: each flow crosses to the
    // HPC node that holds the listener of its index.
    let mut buf = [0u8; 64];
    for (k, entry) in outbound.listeners.iter().enumerate() {
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..10u8 {
            sender.send_to(&[k as u8, i], entry.as_str()).unwrap();
            let n = sink.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], &[k as u8, i]);
        }
    }
    // Asked at the other node: the same parts.
    let parts = by_node(&status(&client(&b).await, &inbound.uid).await);
    for (n, s) in &parts {
        assert_eq!(s.protocol, "udp", "node {n}");
        assert_eq!(
            (s.udp_flows_total, s.udp_datagrams_to_target),
            (1, 10),
            "node {n}: {parts:#?}"
        );
    }
}

/// A release at a live node while another node holding a part is down (its
/// lease still running) succeeds; when the dead node comes back with its
/// state directory, it finds the session gone from etcd and releases its
/// part instead of bringing a released capability back to life.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_with_a_node_down_succeeds_and_the_node_does_not_resurrect_its_part() {
    if !have_etcd("a_release_with_a_node_down_succeeds_and_the_node_does_not_resurrect_its_part") {
        return;
    }
    let etcd = Etcd::start();
    let Spread {
        nodes: (a, _b, c),
        ca,
        uid,
        c_listeners,
        ..
    } = spread_over_three(&etcd).await;

    c.kill9();
    // At once, while c is still registered: the release answers success.
    let out = scistream_testkit::s2uc(&[
        "release",
        "--insecure",
        "--s2cs",
        &a.control(),
        &uid,
        "--json",
    ]);
    assert!(
        out.status.success(),
        "release with a node down: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        a.log()
    );
    // It names the part it could not release now: c's, with its listeners.
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pending = v["pending"].as_array().unwrap();
    assert_eq!(pending.len(), 1, "{v}");
    let said = pending[0].as_str().unwrap();
    assert!(said.starts_with("node c: 2 listener(s)"), "{said}");
    for l in &c_listeners {
        assert!(said.contains(l.as_str()), "{said}");
    }
    assert!(
        status(&ca, &uid).await.is_empty(),
        "released everywhere reachable"
    );

    // c comes back with its state directory.
    let (c_again, log) = restart(&etcd, &c, "c");
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        said.contains("session recovered"),
        "it did recover the part first: {said}"
    );
    assert!(
        said.contains("released elsewhere meanwhile"),
        "and then released it: {said}"
    );
    for l in &c_listeners {
        assert!(
            scistream_testkit::refused(l),
            "{l} is open again after the release"
        );
    }
    let cc = connect(&c_again.control(), &Trust::Insecure, Auth::none())
        .await
        .unwrap();
    assert!(status(&cc, &uid).await.is_empty());
}

/// alice's session spread over three nodes: bob (authenticated) asking any
/// node for its status, or releasing it, gets the answer a uid nobody holds
/// gets (NOT_FOUND, owner, listeners and targets unseen); alice sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_identitys_spread_session_is_not_found_at_every_node() {
    use std::os::unix::fs::PermissionsExt;
    if !have_etcd("another_identitys_spread_session_is_not_found_at_every_node") {
        return;
    }
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        "alice alice-token-0123456789abcdef\nbob bob-token-0123456789abcdef00\n",
    )
    .unwrap();
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
    let extra = ["--tokens-file", tokens.to_str().unwrap()];
    let nodes = [
        node(&etcd, "a", &extra),
        node(&etcd, "b", &extra),
        node(&etcd, "c", &extra),
    ];
    wait_for_members(&etcd, 3).await;
    let as_user = |gw: &Gw, token: &'static str| {
        let addr = gw.control();
        async move {
            connect(&addr, &Trust::Insecure, Auth::bearer(token).unwrap())
                .await
                .unwrap()
        }
    };
    let alice = as_user(&nodes[0], "alice-token-0123456789abcdef").await;
    let receiver = DigestReceiver::start();
    let uid = random_uid();
    let receiver_addr = receiver.addr.to_string();
    request(&alice, &alice, &uid, 6, &receiver_addr)
        .await
        .unwrap();
    let spread = by_node(&status(&alice, &uid).await);
    assert_eq!(spread.len(), 3, "spread over three nodes: {spread:?}");
    let nobodys = random_uid();
    for gw in &nodes {
        let bob = as_user(gw, "bob-token-0123456789abcdef00").await;
        let ask = |uid: String| {
            let mut c = bob.client.clone();
            async move { c.status(pb::StatusRequest { uid }).await.unwrap_err() }
        };
        let (held, none) = (ask(uid.clone()).await, ask(nobodys.clone()).await);
        assert_eq!(held.code(), tonic::Code::NotFound, "{held:?}");
        assert_eq!(none.code(), tonic::Code::NotFound, "{none:?}");
        assert!(!held.message().contains("alice"), "{held:?}");
        let e = bob
            .client
            .clone()
            .release(pb::Release {
                uid: uid.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    }
    // Still whole for alice.
    assert_eq!(by_node(&status(&alice, &uid).await).len(), 3);
}

/// A node knows its cluster before it serves: three nodes started at once
/// and a request made as soon as their control ports answer (no waiting for
/// the nodes to see each other) spreads over all three. It used to land
/// whole on the node that took it, the others not yet known.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_right_after_three_nodes_start_spreads_over_them() {
    if !have_etcd("a_request_right_after_three_nodes_start_spreads_over_them") {
        return;
    }
    let etcd = Etcd::start();
    let starts: Vec<_> = ["a", "b", "c"]
        .into_iter()
        .map(|name| {
            let args = node_args(&etcd, name, &[]);
            std::thread::spawn(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                Gw::start(None, 8, &args)
            })
        })
        .collect();
    let nodes: Vec<Gw> = starts.into_iter().map(|t| t.join().unwrap()).collect();
    let ca = client(&nodes[0]).await;
    let receiver = DigestReceiver::start();
    let uid = random_uid();
    let listeners = request(&ca, &ca, &uid, 6, &receiver.addr.to_string())
        .await
        .unwrap();
    assert_eq!(listeners.len(), 6, "{listeners:?}");
    let parts = by_node(&status(&ca, &uid).await);
    assert_eq!(
        parts.keys().collect::<Vec<_>>(),
        ["a", "b", "c"],
        "{parts:?}"
    );
    for (n, s) in &parts {
        assert_eq!(s.listeners.len(), 2, "node {n}: {s:?}");
    }
    ca.client
        .clone()
        .release(pb::Release {
            uid,
            role: String::new(),
        })
        .await
        .unwrap();
}

/// Only a node's `s2cs` dies; its `s2ds` forwards on and holds the part's
/// listeners. A release elsewhere succeeds and says that part is pending
/// on that node; when the node's `s2cs` returns and adopts its `s2ds`, it
/// releases the part and the listeners close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_whose_s2cs_died_is_released_when_it_returns_and_adopts_its_s2ds() {
    if !have_etcd("a_part_whose_s2cs_died_is_released_when_it_returns_and_adopts_its_s2ds") {
        return;
    }
    let etcd = Etcd::start();
    let Spread {
        nodes: (a, _b, c),
        ca,
        uid,
        c_listeners,
        ..
    } = spread_over_three(&etcd).await;

    // Only c's s2cs dies: its s2ds still holds (and serves) the listeners.
    let c_s2cs = c.gw.pid().unwrap();
    let c_s2ds = scistream_testkit::s2ds_pid(c_s2cs);
    std::process::Command::new("kill")
        .args(["-9", &c_s2cs.to_string()])
        .status()
        .unwrap();
    scistream_testkit::wait_dead(c_s2cs as i32);
    assert!(
        !scistream_testkit::refused(&c_listeners[0]),
        "c's s2ds serves on"
    );

    let v = s2uc_json(&["release", "--insecure", "--s2cs", &a.control(), &uid]);
    let pending = v["pending"].as_array().unwrap();
    assert_eq!(pending.len(), 1, "{v}");
    assert!(
        pending[0]
            .as_str()
            .unwrap()
            .starts_with("node c: 2 listener(s)"),
        "{v}"
    );
    assert!(
        status(&ca, &uid).await.is_empty(),
        "released everywhere reachable"
    );

    // c's s2cs returns with its state directory and adopts its s2ds.
    let (_c_again, log) = restart(&etcd, &c, "c");
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(said.contains("released elsewhere meanwhile"), "{said}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !c_listeners.iter().all(|l| scistream_testkit::refused(l)) {
        assert!(
            std::time::Instant::now() < deadline,
            "c's listeners still open after its s2cs came back: {said}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // It adopted the s2ds that forwarded meanwhile (still running).
    assert!(
        std::path::Path::new(&format!("/proc/{c_s2ds}")).exists(),
        "c's s2ds {c_s2ds} was not adopted: {said}"
    );
}

/// Three nodes and a PROD session of 6 connections spread 2+2+2 over them
/// (req at a, hello at b), updated to a receiver.
struct Spread {
    nodes: (Gw, Gw, Gw),
    ca: scistream_client::Connection,
    uid: String,
    /// c's part's listeners.
    c_listeners: Vec<String>,
    _receiver: DigestReceiver,
}

async fn spread_over_three(etcd: &Etcd) -> Spread {
    let (a, b, c) = three_nodes(etcd).await;
    let (ca, cb) = (client(&a).await, client(&b).await);
    let receiver = DigestReceiver::start();
    let uid = random_uid();
    let receiver_addr = receiver.addr.to_string();
    request(&ca, &cb, &uid, 6, &receiver_addr).await.unwrap();
    let update = pb::UpdateTargets {
        uid: uid.clone(),
        remote_listeners: vec![receiver_addr],
        role: "PROD".into(),
    };
    cb.client.clone().update(update).await.unwrap();
    let parts = by_node(&status(&ca, &uid).await);
    let c_listeners = parts["c"].listeners.clone();
    assert_eq!(c_listeners.len(), 2, "{parts:?}");
    Spread {
        nodes: (a, b, c),
        ca,
        uid,
        c_listeners,
        _receiver: receiver,
    }
}

/// Node `name` (killed, or its s2cs only) started again with its state
/// directory and port range; its log file.
fn restart(
    etcd: &Etcd,
    node: &Gw,
    name: &str,
) -> (scistream_local::gateway::LocalGateway, std::path::PathBuf) {
    use scistream_local::gateway::{GatewayOptions, LocalGateway};
    let log = node.dir.path().join("s2cs-again.log");
    let again = LocalGateway::start(&GatewayOptions {
        s2cs_bin: scistream_testkit::bin("s2cs"),
        listener_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        port_range: node.range,
        tls: None,
        state_dir: node.dir.path().join("state"),
        log: Some(log.clone()),
        extra_args: node_args(etcd, name, &["--drain-timeout=2s"]),
    })
    .unwrap();
    (again, log)
}
