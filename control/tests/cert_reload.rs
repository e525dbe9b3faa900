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

/// A round trip through the tunnel: `false` when the tunnel closed the connection.
fn echoes(conn: &mut std::net::TcpStream) -> bool {
    scistream_testkit::echoes(conn, Duration::from_secs(15))
}

fn new_connection_echoes(entry: &str) -> bool {
    echoes(&mut std::net::TcpStream::connect(entry).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_data_certificate_and_peer_ca_without_dropping_connections() {
    use scistream_local::pki::Ca;
    use scistream_testkit::{EchoServer, s2uc_tunnel};

    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    // The HPC gateway's data certificate, and the instrument gateway's
    // peer CA bundle, in files of their own: those are what get rotated.
    let (hpc_crt, hpc_key) = pki.gateway("hpc");
    std::fs::copy(&hpc_crt, path("data.crt")).unwrap();
    std::fs::copy(&hpc_key, path("data.key")).unwrap();
    std::fs::copy(&pki.ca, path("inst-peer-ca.pem")).unwrap();
    let p = |name: &str| path(name).display().to_string();
    let (data_crt, data_key, inst_peer_ca) = (p("data.crt"), p("data.key"), p("inst-peer-ca.pem"));
    let hpc = Gw::start(
        Some((hpc_crt, hpc_key)),
        4,
        &["--data-cert", &data_crt, "--data-key", &data_key],
    );
    let inst = Gw::start(Some(pki.gateway("inst")), 4, &["--peer-ca", &inst_peer_ca]);
    let echo = EchoServer::start();
    let t = tokio::task::block_in_place(|| {
        s2uc_tunnel(&hpc, &inst, Some(&pki.ca), "127.0.0.1", echo.addr.port(), 1)
    });
    let entry = t.outbound[0].clone();
    let mut open = std::net::TcpStream::connect(&entry).unwrap();
    assert!(echoes(&mut open));

    // The HPC gateway moves to a certificate of another facility CA: after
    // SIGHUP its new connections present it, and the instrument gateway,
    // which does not trust that CA yet, refuses them.
    let other = Ca::new("facility B").unwrap();
    let issued = other.issue(&["localhost", "127.0.0.1"]).unwrap();
    std::fs::write(path("data.crt"), &issued.cert_pem).unwrap();
    std::fs::write(path("data.key"), &issued.key_pem).unwrap();
    hpc.gw.signal(Signal::HUP);
    wait_log(&hpc, "data-channel certificate and peer CA re-read", 1).await;
    assert!(!tokio::task::block_in_place(|| new_connection_echoes(
        &entry
    )));
    assert!(
        echoes(&mut open),
        "the open connection keeps its TLS session"
    );

    // The instrument gateway's peer CA bundle gains facility B: new
    // connections work again.
    let bundle = format!("{}{}", read(&pki.ca), other.cert_pem());
    std::fs::write(path("inst-peer-ca.pem"), bundle).unwrap();
    inst.gw.signal(Signal::HUP);
    wait_log(&inst, "data-channel certificate and peer CA re-read", 1).await;
    assert!(tokio::task::block_in_place(|| new_connection_echoes(
        &entry
    )));

    // A broken certificate is refused, and the one in use stays.
    std::fs::write(path("data.crt"), "not a certificate\n").unwrap();
    hpc.gw.signal(Signal::HUP);
    wait_log(&hpc, "new data-channel TLS files are refused", 1).await;
    assert!(tokio::task::block_in_place(|| new_connection_echoes(
        &entry
    )));
    assert!(echoes(&mut open));
}

fn read(p: &std::path::Path) -> String {
    std::fs::read_to_string(p).unwrap()
}
