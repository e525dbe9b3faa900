//! `s2uc hello`: an application announces itself for a request a workflow
//! tool made, as SciStream's application controller did.
#![allow(clippy::unwrap_used)]

use scistream_protocol::pb::Request;
use scistream_protocol::pb::control_client::ControlClient;
use scistream_testkit::{Gw, s2uc, s2uc_json, strings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2uc_hello_completes_a_waiting_request() {
    let gw = Gw::start(None, 4, &["--hello-timeout", "20s"]);
    let mut c = ControlClient::connect(format!("http://{}", gw.gw.addr))
        .await
        .unwrap();
    let req = tokio::spawn(async move {
        c.req(Request {
            uid: "app-1-0123456789abcdef".into(),
            role: "PROD".into(),
            num_conn: 2,
            rate: 0,
            protocol: String::new(),
        })
        .await
    });
    let control = gw.control();
    let hello = tokio::task::spawn_blocking(move || {
        s2uc_json(&[
            "hello",
            "--insecure",
            "--s2cs",
            &control,
            "app-1-0123456789abcdef",
            "--role",
            "PROD",
            "--prod-listeners",
            "127.0.0.1:7001,127.0.0.1:7002",
        ])
    })
    .await
    .unwrap();
    let r = req.await.unwrap().unwrap().into_inner();
    assert_eq!(r.prod_listeners, vec!["127.0.0.1:7001", "127.0.0.1:7002"]);
    assert_eq!(strings(&hello, "listeners"), r.listeners);

    for (args, needle) in [
        (
            vec!["--role", "BOTH", "--prod-listeners", "127.0.0.1:1"],
            "--role",
        ),
        (
            vec!["--prod-listeners", "not an address"],
            "--prod-listeners",
        ),
    ] {
        let control = gw.control();
        let mut all = vec!["hello", "--insecure", "--s2cs", &control, "app-2"];
        all.extend(args);
        let out = s2uc(&all);
        assert_eq!(out.status.code(), Some(2), "{all:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(needle));
    }
}
