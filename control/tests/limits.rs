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

fn request(uid: &str, num_conn: i32, rate: i32) -> Request {
    Request {
        uid: uid.into(),
        role: "PROD".into(),
        num_conn,
        rate,
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
            uid: uid.into(),
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
        .release(Release { uid: uid.into() })
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
