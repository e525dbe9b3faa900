//! Cluster mode: any node serves the whole API (issue 18). A session's
//! `req` reaches node a, its `hello` node b, its `update`, `status` and
//! `release` node c: each call is passed on to the node holding the
//! session, and the tunnel carries data byte-exact.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use scistream_client::{Auth, Trust, connect};
use scistream_protocol::pb;
use scistream_testkit::etcd::{Etcd, have_etcd};
use scistream_testkit::{DigestReceiver, Gw, s2uc_inbound, send_stream, strings};

fn node(etcd: &Etcd, name: &str) -> Gw {
    Gw::start(
        None,
        4,
        &[
            "--cluster",
            "inst",
            "--etcd",
            &etcd.url(),
            "--node",
            name,
            "--etcd-lease-ttl",
            "3s",
        ],
    )
}

/// A `req` of one connection, left waiting for its hello on its own task.
fn spawn_req(
    conn: &scistream_client::Connection,
    uid: &str,
    role: &str,
) -> tokio::task::JoinHandle<Result<tonic::Response<pb::Response>, tonic::Status>> {
    let mut client = conn.client.clone();
    let request = pb::Request {
        uid: uid.to_owned(),
        role: role.to_owned(),
        num_conn: 1,
        rate: 0,
        protocol: String::new(),
    };
    tokio::spawn(async move { client.req(request).await })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn req_hello_update_status_release_at_three_different_nodes() {
    if !have_etcd("req_hello_update_status_release_at_three_different_nodes") {
        return;
    }
    let etcd = Etcd::start();
    // The HPC side: one gateway, inbound to a receiver.
    let receiver = DigestReceiver::start();
    let hpc = Gw::start(None, 4, &[]);
    let inbound = s2uc_inbound(&hpc.control(), None, "127.0.0.1", receiver.addr.port(), 1);
    let uid = inbound["uid"].as_str().unwrap().to_owned();
    let inbound_listener = strings(&inbound, "listeners")[0].clone();

    // The instrument side: a cluster of three nodes.
    let (a, b, c) = (node(&etcd, "a"), node(&etcd, "b"), node(&etcd, "c"));
    let at = |gw: &Gw| {
        let addr = gw.control();
        async move {
            connect(&addr, &Trust::Insecure, Auth::none())
                .await
                .unwrap()
        }
    };
    let (ca, cb, cc) = (at(&a).await, at(&b).await, at(&c).await);

    // req at a waits for its hello...
    let req = spawn_req(&ca, &uid, "CONS");
    // ...which reaches b.
    let hello = cb
        .client
        .clone()
        .hello(pb::Hello {
            uid: uid.clone(),
            prod_listeners: vec![],
            role: "CONS".into(),
        })
        .await
        .unwrap();
    let listeners = hello.into_inner().listeners;
    let answered = tokio::time::timeout(Duration::from_secs(20), req)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        answered.into_inner().listeners,
        listeners,
        "the req's answer names the same listeners"
    );
    assert!(a.log().contains("req"), "{}", a.log());
    assert!(b.log().contains("passing the call on"), "{}", b.log());

    // update at c.
    cc.client
        .clone()
        .update(pb::UpdateTargets {
            uid: uid.clone(),
            remote_listeners: vec![inbound_listener],
            role: "CONS".into(),
        })
        .await
        .unwrap();
    assert!(c.log().contains("passing the call on"), "{}", c.log());

    // Data through the tunnel, byte-exact.
    let entry = listeners[0].clone();
    let sent = tokio::task::spawn_blocking(move || send_stream(&entry, 3, 4 << 20))
        .await
        .unwrap();
    let got = tokio::task::spawn_blocking(move || receiver.next(Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(sent, got);

    // status at c shows the session held by a.
    let status = cc
        .client
        .clone()
        .status(pb::StatusRequest { uid: uid.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.sessions.len(), 1, "{status:?}");
    assert_eq!(status.sessions[0].phase, "forwarding");
    assert_eq!(
        status.sessions[0].node, "a",
        "status names the node holding it"
    );
    // list at b shows it too (b holds nothing itself): the whole cluster's sessions.
    let listed = cb
        .client
        .clone()
        .list(pb::ListRequest {})
        .await
        .unwrap()
        .into_inner();
    let found: Vec<_> = listed.sessions.iter().filter(|s| s.uid == uid).collect();
    assert_eq!(found.len(), 1, "{listed:?}");
    assert_eq!(found[0].node, "a");

    // release at c releases it at a, and the uid is no longer held.
    cc.client
        .clone()
        .release(pb::Release {
            uid: uid.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let gone = ca
        .client
        .clone()
        .status(pb::StatusRequest { uid: uid.clone() })
        .await;
    assert!(
        gone.as_ref()
            .map(|s| s.get_ref().sessions.is_empty())
            .unwrap_or(true),
        "{gone:?}"
    );
    assert!(
        etcd.get_prefix("/scistream/inst/sessions/").is_empty(),
        "the released session is no longer listed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_for_a_session_on_a_dead_node_is_unavailable_and_names_it() {
    if !have_etcd("a_call_for_a_session_on_a_dead_node_is_unavailable_and_names_it") {
        return;
    }
    let etcd = Etcd::start();
    let (a, b) = (node(&etcd, "a"), node(&etcd, "b"));
    let uid = "5f0c3b8e-0d1e-4f6a-9a7b-3c2d1e0f9a8b".to_owned();
    let ca = connect(&a.control(), &Trust::Insecure, Auth::none())
        .await
        .unwrap();
    // A session on a (its hello came), then a dies (kill -9: no goodbye).
    let req = spawn_req(&ca, &uid, "PROD");
    ca.client
        .clone()
        .hello(pb::Hello {
            uid: uid.clone(),
            prod_listeners: vec!["127.0.0.1:9".into()],
            role: "PROD".into(),
        })
        .await
        .unwrap();
    req.await.unwrap().unwrap();
    assert_eq!(etcd.get_prefix("/scistream/inst/sessions/").len(), 1);
    // b has passed a call on to a already: its channel to a is open.
    let cb = connect(&b.control(), &Trust::Insecure, Auth::none())
        .await
        .unwrap();
    cb.client
        .clone()
        .status(pb::StatusRequest { uid: uid.clone() })
        .await
        .unwrap();
    a.kill9();
    let e = cb
        .client
        .clone()
        .release(pb::Release {
            uid,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(e.message().contains("node a"), "{}", e.message());
    eprintln!("release at b while a's lease runs: {}", e.message());
    // It says when the answer changes (the lease's time), in words.
    assert!(e.message().contains("within 3 s"), "{}", e.message());
    for debug in ["tonic::", "Error(", "ConnectError", "Os {"] {
        assert!(!e.message().contains(debug), "Debug text: {}", e.message());
    }
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_call_leaves_no_trace_in_etcd() {
    if !have_etcd("an_unauthenticated_call_leaves_no_trace_in_etcd") {
        return;
    }
    let etcd = Etcd::start();
    let alice_tokens = AliceTokens::new();
    let a = alice_tokens.node(&etcd, "a");
    let stranger = connect(&a.control(), &Trust::Insecure, Auth::none())
        .await
        .unwrap();
    let uid = "0f3c1e2d-4b5a-4c6d-8e7f-9a0b1c2d3e4f".to_owned();
    let e = spawn_req(&stranger, &uid, "PROD")
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let e = stranger
        .client
        .clone()
        .hello(pb::Hello {
            uid: uid.clone(),
            prod_listeners: vec![],
            role: "PROD".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    assert!(
        etcd.get_prefix("/scistream/inst/sessions/").is_empty(),
        "a call without a valid token claimed a uid in etcd"
    );
    // With the token, the same req claims it.
    let alice = connect(
        &a.control(),
        &Trust::Insecure,
        Auth::bearer("good-token-0123456789abcdef").unwrap(),
    )
    .await
    .unwrap();
    let _req = spawn_req(&alice, &uid, "PROD");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while etcd.get_prefix("/scistream/inst/sessions/").is_empty() {
        assert!(std::time::Instant::now() < deadline, "not claimed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_or_abandoned_req_leaves_no_claim_behind() {
    if !have_etcd("a_refused_or_abandoned_req_leaves_no_claim_behind") {
        return;
    }
    let etcd = Etcd::start();
    let a = node(&etcd, "a");
    let ca = connect(&a.control(), &Trust::Insecure, Auth::none())
        .await
        .unwrap();
    let keys = || etcd.get_prefix("/scistream/inst/sessions/");
    // Refused (too many connections): nothing stays claimed.
    let mut c = ca.client.clone();
    let e = c
        .req(pb::Request {
            uid: "7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d".into(),
            role: "PROD".into(),
            num_conn: 500,
            rate: 0,
            protocol: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    // Abandoned by its caller before its hello: claimed, then forgotten.
    let req = spawn_req(&ca, "8b2c3d4e-5f6a-4b7c-9d8e-0f1a2b3c4d5e", "PROD");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while keys().is_empty() {
        assert!(std::time::Instant::now() < deadline, "not claimed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    req.abort();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !keys().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "an abandoned req's claim stayed: {:?}",
            keys()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_that_reaches_another_node_first_waits_for_its_req() {
    if !have_etcd("a_hello_that_reaches_another_node_first_waits_for_its_req") {
        return;
    }
    let etcd = Etcd::start();
    let (a, b) = (node(&etcd, "a"), node(&etcd, "b"));
    let ca = connect(&a.control(), &Trust::Insecure, Auth::none())
        .await
        .unwrap();
    let cb = connect(&b.control(), &Trust::Insecure, Auth::none())
        .await
        .unwrap();
    let uid = "9c3d4e5f-6a7b-4c8d-9e0f-1a2b3c4d5e6f".to_owned();
    // The hello reaches b while no node holds the uid yet...
    let mut hello_client = cb.client.clone();
    let hello = tokio::spawn({
        let uid = uid.clone();
        async move {
            hello_client
                .hello(pb::Hello {
                    uid,
                    prod_listeners: vec!["127.0.0.1:9".into()],
                    role: "PROD".into(),
                })
                .await
        }
    });
    // It waits by watching the session's key: etcd is not read again while
    // it waits (it used to be read every 100 ms, ~15 times here).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reads = etcd.kv_calls("Range");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!hello.is_finished(), "the hello did not wait for its req");
    let reads = etcd.kv_calls("Range") - reads;
    assert!(reads <= 2, "{reads} etcd reads while the hello waited");
    // ...and its req, a moment later, reaches a: both complete.
    let req = spawn_req(&ca, &uid, "PROD");
    let said = tokio::time::timeout(Duration::from_secs(20), hello)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .into_inner();
    let answered = tokio::time::timeout(Duration::from_secs(20), req)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .into_inner();
    assert_eq!(said.listeners, answered.listeners);
    assert!(b.log().contains("passing the call on"), "{}", b.log());
}

/// A session record in etcd naming a live node at another control address
/// than it registered (a forged or stale record) is not followed: the call
/// is refused as UNAVAILABLE and nothing (no caller's token) is sent to the
/// recorded address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_naming_a_node_at_another_address_is_not_followed() {
    use sha2::Digest;
    if !have_etcd("a_record_naming_a_node_at_another_address_is_not_followed") {
        return;
    }
    let etcd = Etcd::start();
    let (a, b) = (node(&etcd, "a"), node(&etcd, "b"));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while etcd.get_prefix("/scistream/inst/nodes/").len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "nodes did not register"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A listener that records whether anyone connects: the forged address.
    let trap = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let trap_addr = trap.local_addr().unwrap();
    let uid = "5e2d1c0b-9a8f-4e7d-8c6b-5a4f3e2d1c0b";
    let digest = sha2::Sha256::digest(format!("inst\n{uid}").as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    let record = format!(r#"{{"node":"a","control":"{trap_addr}"}}"#);
    etcd.ctl(&["put", &format!("/scistream/inst/sessions/{hex}"), &record])
        .unwrap();
    let cb = connect(
        &b.control(),
        &Trust::Insecure,
        Auth::bearer("a-callers-token-0123456789").unwrap(),
    )
    .await
    .unwrap();
    let e = cb
        .client
        .clone()
        .status(pb::StatusRequest { uid: uid.into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(e.message().contains("not followed"), "{}", e.message());
    assert!(
        matches!(trap.accept(), Err(ref err) if err.kind() == std::io::ErrorKind::WouldBlock),
        "something connected to the forged address"
    );
    assert!(!b.log().contains("a-callers-token"), "no token in logs");
    drop(a);
}

/// With `--cluster-secret`, session keys in etcd are an HMAC of the uid:
/// the unkeyed hash anyone could compute from a guessed uid is not there,
/// and nodes sharing the secret still find each other's sessions. A secret
/// others may read, or a short one, is refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_cluster_secret_etcd_reveals_no_uid() {
    use sha2::Digest;
    use std::os::unix::fs::PermissionsExt;
    if !have_etcd("with_a_cluster_secret_etcd_reveals_no_uid") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let etcd = Etcd::start();
    let with_secret = |name: &str| {
        Gw::start(
            None,
            4,
            &[
                "--cluster",
                "inst",
                "--etcd",
                &etcd.url(),
                "--node",
                name,
                "--cluster-secret",
                secret.to_str().unwrap(),
            ],
        )
    };
    let (a, b) = (with_secret("a"), with_secret("b"));
    assert!(!a.log().contains("no --cluster-secret"), "{}", a.log());
    let ca = connect(&a.control(), &Trust::Insecure, Auth::none())
        .await
        .unwrap();
    let cb = connect(&b.control(), &Trust::Insecure, Auth::none())
        .await
        .unwrap();
    let uid = "3c2b1a09-8f7e-4d6c-9b5a-493827160504";
    let pending = spawn_req(&ca, uid, "PROD");
    cb.client
        .clone()
        .hello(pb::Hello {
            uid: uid.into(),
            prod_listeners: vec!["127.0.0.1:9".into()],
            role: "PROD".into(),
        })
        .await
        .unwrap();
    pending.await.unwrap().unwrap();
    // b finds a's session through etcd.
    let s = scistream_client::tunnel::status(&cb, uid).await.unwrap();
    assert_eq!(s.len(), 1);
    let keys = etcd.get_prefix("/scistream/inst/sessions/");
    assert_eq!(keys.len(), 1, "{keys:?}");
    let digest = sha2::Sha256::digest(format!("inst\n{uid}").as_bytes());
    let unkeyed: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    assert!(
        !keys[0].0.contains(&unkeyed),
        "the key is the unkeyed hash of the uid"
    );
    assert!(!keys[0].0.contains(uid) && !keys[0].1.contains(uid));
    // One tag for the session on every node sharing the secret (derived
    // from it), so one grep follows it across the cluster.
    let tag_a = s[0].tag.clone();
    let s_at_a = scistream_client::tunnel::status(&ca, uid).await.unwrap();
    assert_eq!(s_at_a[0].tag, tag_a);
    assert!(
        b.log().contains(&tag_a),
        "b does not name the session {tag_a}: {}",
        b.log()
    );

    // Refused: readable by others, too short.
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let short = dir.path().join("short");
    std::fs::write(&short, "tiny").unwrap();
    std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
    for (file, want) in [(&secret, "chmod 600"), (&short, "at least 16")] {
        let out = std::process::Command::new(scistream_testkit::bin("s2cs"))
            .args(["--insecure", "--check-config", "--state-dir"])
            .arg(dir.path().join("state"))
            .args([
                "--cluster",
                "inst",
                "--etcd",
                &etcd.url(),
                "--cluster-secret",
            ])
            .arg(file)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{file:?} accepted");
        assert!(err.contains(want), "{err}");
    }
}

/// Node identity: the internal form of a call (what a node sends another
/// for its part of a spread session, served there without routing or a
/// claim) sent straight to a node by an authenticated user is refused with
/// PERMISSION_DENIED and changes nothing; the nodes' own marked calls still
/// work (a spread session over both nodes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_internal_call_is_refused_and_changes_nothing() {
    use tonic::metadata::MetadataValue;
    if !have_etcd("a_forged_internal_call_is_refused_and_changes_nothing") {
        return;
    }
    let etcd = Etcd::start();
    let alice_tokens = AliceTokens::new();
    let start = |name: &str| alice_tokens.node(&etcd, name);
    let (a, b) = (start("a"), start("b"));
    let alice = |gw: &Gw| {
        let addr = gw.control();
        async move {
            connect(
                &addr,
                &Trust::Insecure,
                Auth::bearer("good-token-0123456789abcdef").unwrap(),
            )
            .await
            .unwrap()
        }
    };
    let (ca, cb) = (alice(&a).await, alice(&b).await);
    let uid = "5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b".to_owned();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let forgeries = [
        "part;first=3".to_owned(),
        format!("part;first=3;node=a;t={now};mac={}", "00".repeat(32)),
        format!("part;first=3;node=a;t={now};mac=zz"),
        "1".to_owned(),
    ];
    fn marked<M>(msg: M, mark: &str) -> tonic::Request<M> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut().insert(
            "x-scistream-relayed",
            MetadataValue::try_from(mark).unwrap(),
        );
        r
    }
    for mark in &forgeries {
        let req = pb::Request {
            uid: uid.clone(),
            role: "PROD".into(),
            num_conn: 2,
            rate: 0,
            protocol: String::new(),
        };
        let e = cb.client.clone().req(marked(req, mark)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{mark}: {e:?}");
        assert!(
            e.message().contains("only the nodes of this cluster"),
            "{e:?}"
        );
        let hello = pb::Hello {
            uid: uid.clone(),
            prod_listeners: vec!["127.0.0.1:9".into()],
            role: "PROD".into(),
        };
        let e = cb
            .client
            .clone()
            .hello(marked(hello, mark))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{mark}: {e:?}");
        let release = pb::Release {
            uid: uid.clone(),
            role: String::new(),
        };
        let e = cb
            .client
            .clone()
            .release(marked(release, mark))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{mark}: {e:?}");
        let e = cb
            .client
            .clone()
            .list(marked(pb::ListRequest {}, mark))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{mark}: {e:?}");
    }
    // Nothing changed: no session at b (or anywhere), no claim in etcd.
    let listed = cb.client.clone().list(pb::ListRequest {}).await.unwrap();
    assert!(listed.into_inner().sessions.is_empty());
    assert!(etcd.get_prefix("/scistream/inst/sessions/").is_empty());
    assert!(
        b.log()
            .contains("a call marked as passed on by another node was refused")
    );

    // The nodes' own marks verify: a session of 2 spreads over a and b.
    let req = spawn_req_n(&ca, &uid, 2);
    let hello = pb::Hello {
        uid: uid.clone(),
        prod_listeners: vec!["127.0.0.1:9".into()],
        role: "PROD".into(),
    };
    ca.client.clone().hello(hello).await.unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(20), req)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .into_inner();
    assert_eq!(answered.listeners.len(), 2);
    let status = cb
        .client
        .clone()
        .status(pb::StatusRequest { uid: uid.clone() })
        .await
        .unwrap()
        .into_inner();
    let mut nodes: Vec<String> = status.sessions.iter().map(|s| s.node.clone()).collect();
    nodes.sort();
    assert_eq!(nodes, ["a", "b"], "{status:?}");
}

/// A PROD `req` of `n` connections, left waiting for its hello.
fn spawn_req_n(
    conn: &scistream_client::Connection,
    uid: &str,
    n: i32,
) -> tokio::task::JoinHandle<Result<tonic::Response<pb::Response>, tonic::Status>> {
    let mut client = conn.client.clone();
    let request = pb::Request {
        uid: uid.to_owned(),
        role: "PROD".into(),
        num_conn: n,
        rate: 0,
        protocol: String::new(),
    };
    tokio::spawn(async move { client.req(request).await })
}

/// A tokens file (`--tokens-file`) that knows one user, alice.
struct AliceTokens {
    dir: tempfile::TempDir,
}

impl AliceTokens {
    fn new() -> AliceTokens {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::write(&tokens, "alice good-token-0123456789abcdef\n").unwrap();
        std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
        AliceTokens { dir }
    }

    /// Node `name` of cluster `inst`, checking callers against the file.
    fn node(&self, etcd: &Etcd, name: &str) -> Gw {
        let (url, tokens) = (etcd.url(), self.dir.path().join("tokens"));
        let args = [
            "--cluster",
            "inst",
            "--etcd",
            &url,
            "--node",
            name,
            "--tokens-file",
            tokens.to_str().unwrap(),
        ];
        Gw::start(None, 4, &args)
    }
}
