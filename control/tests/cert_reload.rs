//! SIGHUP re-reads the control certificate: new connections get the new
//! one, open connections keep working, and a broken new certificate is
//! refused with an error while the one in use stays.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use rustix::process::Signal;
use scistream_client::{Auth, Trust};
use scistream_testkit::{Gw, Pki};

async fn probe(gw: &Gw, pki: &Pki) -> Result<(), String> {
    let conn = scistream_client::connect(&gw.control(), &Trust::Root(pki.ca.clone()), Auth::none())
        .await
        .map_err(|e| e.to_string())?;
    match scistream_client::release(&conn, "nobody").await {
        Err(e) if e.grpc_code() == Some(tonic::Code::NotFound) => Ok(()),
        other => Err(format!("{other:?}")),
    }
}

async fn wait_log(gw: &Gw, text: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw.log().matches(text).count() < n {
        assert!(
            Instant::now() < deadline,
            "'{text}' x{n} not logged:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_control_certificate_or_keeps_the_old_one() {
    let pki = Pki::new();
    let (crt, key) = pki.gateway("gw");
    let gw = Gw::start(Some((crt.clone(), key.clone())), 4, &[]);
    probe(&gw, &pki).await.unwrap();
    let open = scistream_client::connect(&gw.control(), &Trust::Root(pki.ca.clone()), Auth::none())
        .await
        .unwrap();

    // A certificate for another name: after the reload, "localhost" no longer matches.
    let (other_crt, other_key) = pki.gateway_for("other", &["other.example"]);
    let good = (std::fs::read(&crt).unwrap(), std::fs::read(&key).unwrap());
    std::fs::copy(&other_crt, &crt).unwrap();
    std::fs::copy(&other_key, &key).unwrap();
    gw.gw.signal(Signal::HUP);
    wait_log(&gw, "control certificate re-read", 1).await;
    let e = probe(&gw, &pki).await.unwrap_err();
    assert!(e.contains("TLS") || e.contains("certificate"), "{e}");
    // The connection opened before keeps working.
    let r = scistream_client::release(&open, "nobody")
        .await
        .unwrap_err();
    assert_eq!(r.grpc_code(), Some(tonic::Code::NotFound));

    // Back to the good one, then a broken one: refused, the good one stays.
    std::fs::write(&crt, &good.0).unwrap();
    std::fs::write(&key, &good.1).unwrap();
    gw.gw.signal(Signal::HUP);
    wait_log(&gw, "control certificate re-read", 2).await;
    probe(&gw, &pki).await.unwrap();
    std::fs::write(&crt, "-----BEGIN CERTIFICATE-----\ngarbage\n").unwrap();
    gw.gw.signal(Signal::HUP);
    wait_log(&gw, "the new control certificate is refused", 1).await;
    probe(&gw, &pki).await.unwrap();
}
