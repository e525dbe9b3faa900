//! `s2cs` driven with a plain tonic client exactly as SciStream's Python
//! client drives it, and with bad input of every kind. Each test runs its
//! own `s2cs --insecure` (with its `s2ds`) on loopback.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use scistream_protocol::pb::control_client::ControlClient;
use scistream_protocol::pb::{AppResponse, Hello, Release, Request, Response, UpdateTargets};
use scistream_testkit::Gw;
use tonic::Code;
use tonic::transport::Channel;

type Client = ControlClient<Channel>;

fn gateway(range_len: u16) -> Gw {
    Gw::start(
        None,
        range_len,
        &[
            "--hello-timeout",
            "2s",
            "--hello-grace",
            "500ms",
            // These tests take whole (small) ranges as one caller.
            "--max-ports-per-identity=1000",
        ],
    )
}

async fn client(gw: &Gw) -> Client {
    ControlClient::connect(format!("http://{}", gw.gw.addr))
        .await
        .unwrap()
}

fn req(uid: &str, role: &str, num_conn: i32) -> Request {
    Request {
        uid: uid.into(),
        role: role.into(),
        num_conn,
        rate: 10000,
        protocol: String::new(),
    }
}

fn hello(uid: &str, role: &str, prod_listeners: &[&str]) -> Hello {
    Hello {
        uid: uid.into(),
        role: role.into(),
        prod_listeners: prod_listeners.iter().map(|s| s.to_string()).collect(),
    }
}

/// req in flight on one task, hello from another, as SciStream's client does.
async fn req_with_hello(
    c: &Client,
    r: Request,
    h: Hello,
) -> (
    Result<Response, tonic::Status>,
    Result<AppResponse, tonic::Status>,
) {
    let mut rc = c.clone();
    let pending = tokio::spawn(async move { rc.req(r).await.map(|r| r.into_inner()) });
    let mut hc = c.clone();
    let h = hc.hello(h).await.map(|r| r.into_inner());
    (pending.await.unwrap(), h)
}

/// Waits until the first `n` ports of the gateway's range are taken: the
/// allocator binds in order, so this shows requests have registered,
/// without making a request (which would itself register).
async fn wait_ports_taken(gw: &Gw, n: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(gw.range.0..gw.range.0 + n)
        .all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_err())
    {
        assert!(
            Instant::now() < deadline,
            "requests did not register within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn in_range(gw: &Gw, listeners: &[String]) {
    for l in listeners {
        let (ip, port) = l.rsplit_once(':').unwrap();
        assert_eq!(ip, "127.0.0.1");
        let port: u16 = port.parse().unwrap();
        assert!(
            (gw.range.0..=gw.range.1).contains(&port),
            "{l} outside {:?}",
            gw.range
        );
    }
}

#[tokio::test]
async fn scistream_inbound_sequence() {
    let gw = gateway(8);
    let c = client(&gw).await;
    let (r, h) = req_with_hello(
        &c,
        req("sci-in-0123456789abcdef", "PROD", 2),
        hello("sci-in-0123456789abcdef", "PROD", &["127.0.0.1:7001"]),
    )
    .await;
    let r = r.unwrap();
    let h = h.unwrap();
    assert_eq!(r.listeners.len(), 2);
    in_range(&gw, &r.listeners);
    assert_eq!(r.prod_listeners, vec!["127.0.0.1:7001"]);
    assert_eq!(h.listeners, r.listeners);
    assert!(!h.message.is_empty());

    let mut cc = c.clone();
    let u = cc
        .update(UpdateTargets {
            uid: "sci-in-0123456789abcdef".into(),
            remote_listeners: r.prod_listeners.clone(),
            role: "PROD".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(u.listeners, r.listeners);
    assert_eq!(
        u.prod_listeners,
        vec!["127.0.0.1:7001", "127.0.0.1:7001"],
        "targets cycled to num_conn"
    );

    let rel = cc
        .release(Release {
            uid: "sci-in-0123456789abcdef".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rel, Response::default());
}

#[tokio::test]
async fn scistream_outbound_sequence_takes_the_role_from_req() {
    let gw = gateway(8);
    let c = client(&gw).await;
    // SciStream's client says "PROD" in the hello of an outbound request.
    let (r, h) = req_with_hello(
        &c,
        req("sci-out-0123456789abcdef", "CONS", 3),
        hello("sci-out-0123456789abcdef", "PROD", &["127.0.0.1:9"]),
    )
    .await;
    let r = r.unwrap();
    assert_eq!(r.listeners.len(), 3);
    assert!(
        r.prod_listeners.is_empty(),
        "a CONS response carries no prod_listeners"
    );
    assert_eq!(h.unwrap().listeners, r.listeners);
    let mut cc = c.clone();
    // An update without a role (SciStream's older clients) finds the one session.
    let u = cc
        .update(UpdateTargets {
            uid: "sci-out-0123456789abcdef".into(),
            remote_listeners: vec!["127.0.0.1:5100".into(), "127.0.0.1:5101".into()],
            role: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        u.prod_listeners,
        vec!["127.0.0.1:5100", "127.0.0.1:5101", "127.0.0.1:5100"]
    );
    // A second update re-points the targets.
    let u = cc
        .update(UpdateTargets {
            uid: "sci-out-0123456789abcdef".into(),
            remote_listeners: vec!["127.0.0.1:6000".into()],
            role: "CONS".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(u.prod_listeners, vec!["127.0.0.1:6000"; 3]);
    cc.release(Release {
        uid: "sci-out-0123456789abcdef".into(),
        ..Default::default()
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_hello_that_overtakes_its_req_is_held() {
    let gw = gateway(4);
    let c = client(&gw).await;
    let mut hc = c.clone();
    let early = tokio::spawn(async move {
        hc.hello(hello("early-0123456789abcdef", "PROD", &["127.0.0.1:9"]))
            .await
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut rc = c.clone();
    let r = rc
        .req(req("early-0123456789abcdef", "PROD", 1))
        .await
        .unwrap()
        .into_inner();
    let h = early.await.unwrap().unwrap().into_inner();
    assert_eq!(h.listeners, r.listeners);
    rc.release(Release {
        uid: "early-0123456789abcdef".into(),
        ..Default::default()
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn both_ends_on_one_gateway_hellos_go_by_role() {
    let gw = gateway(8);
    let c = client(&gw).await;
    let (mut a, mut b) = (c.clone(), c.clone());
    let prod = tokio::spawn(async move { a.req(req("both-0123456789abcdef", "PROD", 1)).await });
    let cons = tokio::spawn(async move { b.req(req("both-0123456789abcdef", "CONS", 2)).await });
    let mut hc = c.clone();
    wait_ports_taken(&gw, 3).await;
    for role in ["PROD", "CONS"] {
        assert_eq!(
            hc.req(req("both-0123456789abcdef", role, 1))
                .await
                .unwrap_err()
                .code(),
            Code::AlreadyExists
        );
    }
    let hc_cons = hc
        .hello(hello("both-0123456789abcdef", "CONS", &[]))
        .await
        .unwrap()
        .into_inner();
    let hc_prod = hc
        .hello(hello("both-0123456789abcdef", "PROD", &["127.0.0.1:9"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hc_cons.listeners.len(), 2);
    assert_eq!(hc_prod.listeners.len(), 1);
    assert_eq!(
        prod.await.unwrap().unwrap().into_inner().listeners,
        hc_prod.listeners
    );
    assert_eq!(
        cons.await.unwrap().unwrap().into_inner().listeners,
        hc_cons.listeners
    );
    // An update without a role is ambiguous now.
    let e = hc
        .update(UpdateTargets {
            uid: "both-0123456789abcdef".into(),
            remote_listeners: vec!["127.0.0.1:9".into()],
            role: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // Release takes both.
    hc.release(Release {
        uid: "both-0123456789abcdef".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        hc.release(Release {
            uid: "both-0123456789abcdef".into(),
            ..Default::default()
        })
        .await
        .unwrap_err()
        .code(),
        Code::NotFound
    );
}

fn assert_code<T: std::fmt::Debug>(
    r: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
    needle: &str,
) {
    let e = r.expect_err("call should fail");
    assert_eq!(e.code(), code, "{e:?}");
    assert!(
        e.message().contains(needle),
        "message {:?} should mention {needle:?}",
        e.message()
    );
}

/// Waits until a full-range request can be made, proving no port leaked.
async fn all_ports_free(c: &Client, n: i32) {
    let uid = format!("probe-{n}-{}-0123456789", std::process::id());
    let (r, h) = req_with_hello(
        c,
        req(&uid, "PROD", n),
        hello(&uid, "PROD", &["127.0.0.1:9"]),
    )
    .await;
    assert_eq!(r.unwrap().listeners.len(), n as usize);
    h.unwrap();
    c.clone()
        .release(Release {
            uid,
            ..Default::default()
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn bad_input_gets_the_right_code_and_the_server_keeps_serving() {
    let gw = gateway(4);
    let c = client(&gw).await;
    let mut cc = c.clone();

    // Unknown uids.
    assert_code(
        cc.hello(hello("ghost-0123456789abcdef", "PROD", &[])).await,
        Code::NotFound,
        "tag",
    );
    assert_code(
        cc.update(UpdateTargets {
            uid: "ghost-0123456789abcdef".into(),
            remote_listeners: vec!["127.0.0.1:9".into()],
            role: "PROD".into(),
        })
        .await,
        Code::NotFound,
        "tag",
    );
    assert_code(
        cc.release(Release {
            uid: "ghost-0123456789abcdef".into(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        "tag",
    );

    // Bad uids.
    for (uid, needle) in [
        ("", "empty"),
        (&*"u".repeat(129), "129"),
        ("a/b", "'/'"),
        ("a b", "' '"),
        ("x\u{0}y", "'\\0'"),
    ] {
        assert_code(
            cc.req(req(uid, "PROD", 1)).await,
            Code::InvalidArgument,
            needle,
        );
        assert_code(
            cc.hello(hello(uid, "PROD", &[])).await,
            Code::InvalidArgument,
            needle,
        );
        assert_code(
            cc.release(Release {
                uid: uid.into(),
                ..Default::default()
            })
            .await,
            Code::InvalidArgument,
            needle,
        );
    }

    // Bad numbers and roles.
    assert_code(
        cc.req(req("n0-0123456789abcdef", "PROD", 0)).await,
        Code::InvalidArgument,
        "num_conn",
    );
    assert_code(
        cc.req(req("n0-0123456789abcdef", "PROD", -3)).await,
        Code::InvalidArgument,
        "num_conn",
    );
    assert_code(
        cc.req(req("n0-0123456789abcdef", "BOTH", 1)).await,
        Code::InvalidArgument,
        "role",
    );
    assert_code(
        cc.req(Request {
            uid: "r-0123456789abcdef".into(),
            role: "PROD".into(),
            num_conn: 1,
            rate: -1,
            protocol: String::new(),
        })
        .await,
        Code::InvalidArgument,
        "rate",
    );

    // More than the range holds: RESOURCE_EXHAUSTED, nothing kept.
    assert_code(
        cc.req(req("big-0123456789abcdef", "PROD", 5)).await,
        Code::ResourceExhausted,
        "4",
    );

    // A second req with the same uid and role.
    let mut first = c.clone();
    let waiting =
        tokio::spawn(async move { first.req(req("dup-0123456789abcdef", "PROD", 1)).await });
    wait_ports_taken(&gw, 1).await;
    assert_code(
        cc.req(req("dup-0123456789abcdef", "PROD", 1)).await,
        Code::AlreadyExists,
        "exists already",
    );

    // Malformed listener strings, in hello and in update.
    for bad in ["foo", "1.2.3.4:99999", "", "[::1]"] {
        assert_code(
            cc.hello(hello("dup-0123456789abcdef", "PROD", &[bad]))
                .await,
            Code::InvalidArgument,
            "prod_listeners[0]",
        );
    }
    cc.hello(hello("dup-0123456789abcdef", "PROD", &["127.0.0.1:9"]))
        .await
        .unwrap();
    waiting.await.unwrap().unwrap();
    for bad in ["foo", "1.2.3.4:99999", "", "[::1]"] {
        assert_code(
            cc.update(UpdateTargets {
                uid: "dup-0123456789abcdef".into(),
                remote_listeners: vec![bad.into()],
                role: "PROD".into(),
            })
            .await,
            Code::InvalidArgument,
            "remote_listeners[0]",
        );
    }
    // More targets than connections: refused before anything is resolved.
    assert_code(
        cc.update(UpdateTargets {
            uid: "dup-0123456789abcdef".into(),
            remote_listeners: vec!["127.0.0.1:9".into(), "localhost:9".into()],
            role: "PROD".into(),
        })
        .await,
        Code::InvalidArgument,
        "at most 1",
    );
    assert_code(
        cc.update(UpdateTargets {
            uid: "dup-0123456789abcdef".into(),
            remote_listeners: vec![],
            role: "PROD".into(),
        })
        .await,
        Code::InvalidArgument,
        "empty",
    );
    // A second hello for a session that had its own: the same answer as
    // for a uid nobody holds (it tells nothing of others' sessions).
    assert_code(
        cc.hello(hello("dup-0123456789abcdef", "PROD", &[])).await,
        Code::NotFound,
        "its hello came already",
    );
    cc.release(Release {
        uid: "dup-0123456789abcdef".into(),
        ..Default::default()
    })
    .await
    .unwrap();

    // After all that, the whole range is free and a session works.
    all_ports_free(&c, 4).await;
}

#[tokio::test]
async fn hello_timeout_frees_the_ports() {
    let gw = gateway(3);
    let c = client(&gw).await;
    let started = Instant::now();
    let e = c
        .clone()
        .req(req("late-0123456789abcdef", "PROD", 3))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded);
    assert!(
        e.message().contains("session") && e.message().contains("hello"),
        "{}",
        e.message()
    );
    assert!(started.elapsed() >= Duration::from_secs(2));
    all_ports_free(&c, 3).await;
    // The timed-out uid is gone.
    assert_eq!(
        c.clone()
            .release(Release {
                uid: "late-0123456789abcdef".into(),
                ..Default::default()
            })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
}

#[tokio::test]
async fn a_client_that_goes_away_mid_req_leaks_nothing() {
    let gw = gateway(2);
    // Its own connection, dropped while the req waits for its hello.
    let mut gone = client(&gw).await;
    let task =
        tokio::spawn(async move { gone.req(req("vanish-0123456789abcdef", "PROD", 2)).await });
    let c = client(&gw).await;
    wait_ports_taken(&gw, 2).await;
    task.abort();
    let _ = task.await;
    // The server notices the stream is gone and frees the session: well before the 2 s hello timeout.
    let deadline = Instant::now() + Duration::from_millis(1500);
    loop {
        let uid = "vanish-0123456789abcdef";
        let (r, h) = req_with_hello(
            &c,
            req(uid, "PROD", 2),
            hello(uid, "PROD", &["127.0.0.1:9"]),
        )
        .await;
        match r {
            Ok(r) => {
                assert_eq!(r.listeners.len(), 2);
                h.unwrap();
                break;
            }
            Err(e) => {
                assert_eq!(e.code(), Code::AlreadyExists);
                assert!(
                    Instant::now() < deadline,
                    "session of the vanished client was not freed"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test]
async fn max_rate_bounds_what_a_request_may_ask_for() {
    let gw = Gw::start(
        None,
        4,
        &[
            "--hello-timeout",
            "2s",
            "--max-rate",
            "100Mbit",
            "--unmarked-rates=enforce",
            "--max-ports-per-identity=1000",
        ],
    );
    let c = client(&gw).await;
    let mut cc = c.clone();
    let too_much = Request {
        uid: "fast-0123456789abcdef".into(),
        role: "PROD".into(),
        num_conn: 1,
        rate: 200_000,
        protocol: String::new(),
    };
    assert_code(
        cc.req(too_much).await,
        Code::InvalidArgument,
        "at most 100000 kbit/s",
    );
    let uncapped = Request {
        uid: "fast-0123456789abcdef".into(),
        role: "PROD".into(),
        num_conn: 1,
        rate: 0,
        protocol: String::new(),
    };
    assert_code(cc.req(uncapped).await, Code::InvalidArgument, "0 (no cap)");
    let fine = Request {
        uid: "ok-0123456789abcdef".into(),
        role: "PROD".into(),
        num_conn: 1,
        rate: 100_000,
        protocol: String::new(),
    };
    let (r, h) = req_with_hello(
        &c,
        fine,
        hello("ok-0123456789abcdef", "PROD", &["127.0.0.1:9"]),
    )
    .await;
    r.unwrap();
    h.unwrap();
}
