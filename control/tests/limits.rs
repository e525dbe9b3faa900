//! Admission limits of `s2cs`: sessions at once, connections per session,
//! rate capacity, and requests one identity may leave waiting.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use scistream_protocol::pb::control_client::ControlClient;
use scistream_protocol::pb::{Hello, Release, Request};
use scistream_testkit::Gw;
use tonic::Code;
use tonic::transport::Channel;

type Client = ControlClient<Channel>;

async fn client(gw: &Gw) -> Client {
    ControlClient::connect(format!("http://{}", gw.gw.addr))
        .await
        .unwrap()
}

/// The uid a test's short name stands for (uids have at least 16 characters).
fn long(uid: &str) -> String {
    format!("{uid}-0123456789abcdef")
}

fn request(uid: &str, num_conn: i32, rate: i32) -> Request {
    Request {
        uid: long(uid),
        role: "PROD".into(),
        num_conn,
        rate,
        protocol: String::new(),
    }
}

/// req + hello: the session exists (Ready) when this returns Ok.
async fn open(c: &Client, uid: &str, num_conn: i32, rate: i32) -> Result<(), tonic::Status> {
    let mut rc = c.clone();
    let r = request(uid, num_conn, rate);
    let pending = tokio::spawn(async move { rc.req(r).await });
    let h = c
        .clone()
        .hello(Hello {
            uid: long(uid),
            role: "PROD".into(),
            prod_listeners: vec!["127.0.0.1:7001".into()],
        })
        .await;
    let r = pending.await.unwrap();
    r?;
    h.map(|_| ())
}

async fn release(c: &Client, uid: &str) {
    c.clone()
        .release(Release {
            uid: long(uid),
            ..Default::default()
        })
        .await
        .unwrap();
}

fn refused(r: Result<(), tonic::Status>, code: Code, text: &str) {
    let s = r.unwrap_err();
    assert_eq!(s.code(), code, "{s:?}");
    assert!(
        s.message().contains(text),
        "'{}' lacks '{text}'",
        s.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_and_connection_limits() {
    let gw = Gw::start(
        None,
        16,
        &[
            "--max-sessions",
            "2",
            "--max-conns-per-session",
            "4",
            "--hello-timeout",
            "3s",
            "--hello-grace",
            "300ms",
        ],
    );
    let c = client(&gw).await;
    refused(
        open(&c, "big", 5, 0).await,
        Code::InvalidArgument,
        "at most 4 connections",
    );
    open(&c, "a", 4, 0).await.unwrap();
    open(&c, "b", 1, 0).await.unwrap();
    refused(
        open(&c, "c", 1, 0).await,
        Code::ResourceExhausted,
        "maximum of 2 sessions",
    );
    release(&c, "a").await;
    open(&c, "c", 1, 0).await.unwrap();
    release(&c, "b").await;
    release(&c, "c").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_admission_says_what_is_left() {
    let gw = Gw::start(
        None,
        16,
        &[
            // These calls come from a plain gRPC client, as SciStream's do:
            // its rates count only when the gateway enforces unmarked ones.
            "--unmarked-rates=enforce",
            "--capacity",
            "100Mbit",
            "--hello-timeout",
            "3s",
            "--hello-grace",
            "300ms",
        ],
    );
    let c = client(&gw).await;
    refused(
        open(&c, "uncapped", 1, 0).await,
        Code::InvalidArgument,
        "rate-capped",
    );
    open(&c, "a", 2, 60_000).await.unwrap();
    refused(
        open(&c, "b", 1, 50_000).await,
        Code::ResourceExhausted,
        "40000 kbit/s",
    );
    open(&c, "b", 1, 40_000).await.unwrap();
    refused(
        open(&c, "c", 1, 1).await,
        Code::ResourceExhausted,
        "0 kbit/s",
    );
    release(&c, "a").await;
    open(&c, "c", 1, 50_000).await.unwrap();
    release(&c, "b").await;
    release(&c, "c").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_identity_cannot_park_unbounded_requests() {
    let gw = Gw::start(
        None,
        16,
        &[
            "--max-pending-per-identity",
            "2",
            "--hello-timeout",
            "10s",
            "--hello-grace",
            "300ms",
        ],
    );
    let c = client(&gw).await;
    // Two requests wait for hellos that never come; they hold no thread.
    let parked: Vec<_> = (0..2)
        .map(|i| {
            let mut rc = c.clone();
            tokio::spawn(async move { rc.req(request(&format!("parked-{i}"), 1, 0)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    refused(
        open(&c, "third", 1, 0).await,
        Code::ResourceExhausted,
        "waiting for their hello",
    );
    // Callers that give up free their requests (and ports) at once.
    for p in parked {
        p.abort();
    }
    let mut ok = false;
    for _ in 0..50 {
        if open(&c, "third", 1, 0).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the parked requests were not freed");
    release(&c, "third").await;
}

/// A client whose calls come from `source` (a loopback address of its own).
async fn client_from(gw: &Gw, source: &str) -> Client {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", gw.gw.addr))
        .unwrap()
        .local_address(Some(source.parse().unwrap()));
    ControlClient::new(endpoint.connect().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_caller_cannot_take_every_port() {
    // 16 ports: one caller (here, under --auth none, one source address)
    // may hold 8, and a session may not ask for more than that.
    let gw = Gw::start(
        None,
        16,
        &["--hello-timeout", "3s", "--hello-grace", "300ms"],
    );
    let c = client(&gw).await;
    refused(
        open(&c, "greedy", 9, 0).await,
        Code::InvalidArgument,
        "at most 8 connections",
    );
    open(&c, "a", 6, 0).await.unwrap();
    refused(
        open(&c, "b", 3, 0).await,
        Code::ResourceExhausted,
        "holds 6 of the 8 data ports",
    );
    open(&c, "b", 2, 0).await.unwrap();
    // Another caller still gets its share.
    let other = client_from(&gw, "127.0.0.2").await;
    open(&other, "c", 8, 0).await.unwrap();
    release(&c, "a").await;
    release(&c, "b").await;
    release(&other, "c").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_never_gets_its_update_is_released() {
    let gw = Gw::start(
        None,
        4,
        &["--hello-timeout", "3s", "--update-timeout", "1s"],
    );
    let c = client(&gw).await;
    open(&c, "unused", 2, 0).await.unwrap();
    // Released within the timeout plus one check interval (a quarter of it);
    // waited for generously.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !gw.log().contains("expired") {
        assert!(std::time::Instant::now() < deadline, "{}", gw.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let e = c
        .clone()
        .release(Release {
            uid: long("unused"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // Its ports are free again.
    for p in gw.range.0..gw.range.0 + 2 {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", p)).is_ok(),
            "port {p}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_control_connections_are_closed_at_the_deadline_and_capped() {
    use std::io::Read;
    let gw = Gw::start(
        None,
        4,
        &[
            "--control-setup-timeout",
            "1s",
            "--max-control-conns-per-source",
            "3",
            "--max-control-conns",
            "5",
        ],
    );
    let connect = |source: &str| {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let src: std::net::SocketAddr = format!("{source}:0").parse().unwrap();
        s.bind(&src.into()).unwrap();
        s.connect(&gw.gw.addr.into()).unwrap();
        let s: std::net::TcpStream = s.into();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    };
    let closed = |s: &mut std::net::TcpStream| {
        let mut b = [0u8; 1];
        matches!(s.read(&mut b), Ok(0) | Err(_))
    };
    let started = std::time::Instant::now();
    let mut idlers: Vec<_> = (0..3).map(|_| connect("127.0.0.1")).collect();
    std::thread::sleep(Duration::from_millis(200));
    // Past the per-source cap: closed at once.
    let mut fourth = connect("127.0.0.1");
    assert!(closed(&mut fourth));
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "refused at once, not at the deadline"
    );
    // Another source still gets in, up to the global cap.
    let mut others: Vec<_> = (0..2).map(|_| connect("127.0.0.2")).collect();
    std::thread::sleep(Duration::from_millis(100));
    let mut sixth = connect("127.0.0.3");
    assert!(closed(&mut sixth), "past --max-control-conns");
    // The silent ones are closed at the deadline.
    for s in idlers.iter_mut().chain(others.iter_mut()) {
        assert!(closed(s));
    }
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(started.elapsed() < Duration::from_secs(4));
    // And the service serves.
    let c = client(&gw).await;
    open(&c, "after", 1, 0).await.unwrap();
    release(&c, "after").await;
}
