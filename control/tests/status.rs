//! `list` and `status` against live sessions carrying known traffic: the
//! counters match what was sent, connections show their data-channel mode,
//! another identity sees nothing, and `s2uc status --json` shows the same.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use scistream_client::{Auth, RequestOptions, Trust};
use scistream_testkit::{DigestReceiver, Gw, Pki, s2uc_inbound, s2uc_json, send_stream, strings};

const ALICE: &str = "alice-token-0123456789abcdef";
const BOB: &str = "bob-token-0123456789abcdef00";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_what_a_session_carried_and_only_to_its_owner() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("alice {ALICE}\nbob {BOB}\n")).unwrap();
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
    let t = tokens.to_str().unwrap();
    let hpc = Gw::start(Some(pki.gateway("hpc")), 4, &["--tokens-file", t]);
    let inst = Gw::start(Some(pki.gateway("inst")), 4, &["--tokens-file", t]);
    let receiver = DigestReceiver::start();
    let trust = Trust::Root(pki.ca.clone());
    let as_user = |token: &str| Auth::bearer(token).unwrap();
    let h = scistream_client::connect(&hpc.control(), &trust, as_user(ALICE))
        .await
        .unwrap();
    let i = scistream_client::connect(&inst.control(), &trust, as_user(ALICE))
        .await
        .unwrap();
    let o = RequestOptions {
        num_conn: 1,
        rate_kbps: 50_000_000,
        ..Default::default()
    };
    let inbound = scistream_client::inbound_request(&h, "127.0.0.1", &[receiver.addr.port()], &o)
        .await
        .unwrap();
    let outbound = scistream_client::outbound_request(
        &i,
        &inbound.uid,
        inbound.listeners.clone(),
        Vec::new(),
        &o,
    )
    .await
    .unwrap();
    let entry = outbound.listeners[0].clone();

    // 8 MiB in a finished stream, 1 MiB on a connection left open.
    let e = entry.clone();
    tokio::task::spawn_blocking(move || send_stream(&e, 1, 8 << 20))
        .await
        .unwrap();
    receiver.next(Duration::from_secs(30));
    let mut open = TcpStream::connect(&entry).unwrap();
    open.write_all(&vec![7u8; 1 << 20]).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let list = scistream_client::tunnel::list(&h).await.unwrap();
    assert_eq!(list.len(), 1);
    let s = &scistream_client::tunnel::status(&h, &inbound.uid)
        .await
        .unwrap()[0];
    assert_eq!((s.role.as_str(), s.phase.as_str()), ("PROD", "forwarding"));
    assert!(
        s.rates_pending,
        "the first look has no earlier sample: no rate yet, not 0"
    );
    assert!(s.owner.contains("alice"), "{}", s.owner);
    assert_eq!(s.listeners, inbound.listeners);
    assert_eq!(s.rate_kbps, 50_000_000);
    let sent = 9u64 << 20;
    let off = s.bytes_to_target.abs_diff(sent) as f64 / sent as f64;
    assert!(
        off < 0.03,
        "bytes to target {} vs {sent} sent",
        s.bytes_to_target
    );
    assert_eq!((s.conns_open, s.conns_total), (1, 2));
    let c = &s.connections[0];
    assert!(
        !c.mode.is_empty() && c.mode != "connecting",
        "mode {}",
        c.mode
    );
    eprintln!("inbound connection mode: {}", c.mode);

    // Throughput since the previous look: 4 MiB more in ~1 s is well above zero.
    open.write_all(&vec![7u8; 4 << 20]).unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let s = &scistream_client::tunnel::status(&h, &inbound.uid)
        .await
        .unwrap()[0];
    assert!(s.bps_to_target > 0.0, "{}", s.bps_to_target);
    assert!(!s.rates_pending);

    // Bob sees nothing of alice's.
    let hb = scistream_client::connect(&hpc.control(), &trust, as_user(BOB))
        .await
        .unwrap();
    assert!(
        scistream_client::tunnel::list(&hb)
            .await
            .unwrap()
            .is_empty()
    );
    let e = scistream_client::tunnel::status(&hb, &inbound.uid)
        .await
        .unwrap_err();
    assert_eq!(e.grpc_code(), Some(tonic::Code::NotFound), "{e}");
    drop(open);
}

#[test]
fn s2uc_status_and_list_as_json() {
    let pki = Pki::new();
    let hpc = Gw::start(Some(pki.gateway("hpc")), 4, &[]);
    let receiver = DigestReceiver::start();
    let ca = pki.ca.to_str().unwrap();
    let inbound = s2uc_inbound(
        &hpc.control(),
        Some(&pki.ca),
        "127.0.0.1",
        receiver.addr.port(),
        2,
    );
    let uid = inbound["uid"].as_str().unwrap();
    let v = s2uc_json(&["status", "--s2cs", &hpc.control(), "--server_cert", ca, uid]);
    let s = &v["sessions"][0];
    assert_eq!(s["uid"], uid);
    assert_eq!(strings(s, "listeners"), strings(&inbound, "listeners"));
    assert_eq!(s["phase"], "forwarding");
    let v = s2uc_json(&["list", "--s2cs", &hpc.control(), "--server_cert", ca]);
    assert_eq!(v["sessions"].as_array().unwrap().len(), 1);
}

#[test]
fn s2uc_status_watch_refreshes_until_the_session_is_gone() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let pki = Pki::new();
    let hpc = Gw::start(Some(pki.gateway("hpc")), 4, &[]);
    let inst = Gw::start(Some(pki.gateway("inst")), 4, &[]);
    let receiver = DigestReceiver::start();
    let ca = pki.ca.to_str().unwrap();
    let control = hpc.control();
    let t = scistream_testkit::s2uc_tunnel(
        &hpc,
        &inst,
        Some(&pki.ca),
        "127.0.0.1",
        receiver.addr.port(),
        1,
    );
    let (uid, entry) = (t.uid.clone(), t.outbound[0].clone());
    let mut watch = Command::new(scistream_testkit::bin("s2uc"))
        .args(["status", "--s2cs", &control, "--server_cert", ca, &uid])
        .args(["--watch", "--interval", "1", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let mut bytes = || {
        let line = lines.next().unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["sessions"][0]["uid"], uid.as_str());
        v["sessions"][0]["bytes_to_target"].as_u64().unwrap()
    };
    let first = bytes();
    // Traffic between two refreshes shows in the next ones.
    send_stream(&entry, 3, 2 << 20);
    receiver.next(Duration::from_secs(30));
    let mut later = bytes();
    for _ in 0..5 {
        if later >= first + (2 << 20) {
            break;
        }
        later = bytes();
    }
    assert_eq!(later - first, 2 << 20, "the watch shows the 2 MiB sent");

    // Released: the watch stops with the reason, not a loop of errors.
    let r = scistream_testkit::s2uc(&["release", "--s2cs", &control, "--server_cert", ca, &uid]);
    assert!(r.status.success());
    let out = watch.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&uid) || err.contains("no session"), "{err}");
}

/// The HPC side's receiver is down: the instrument's stream is refused, and
/// the instrument gateway's status says why (not only the HPC gateway's log).
#[test]
fn a_stream_refused_for_a_dead_receiver_is_reported_to_the_instrument_side() {
    use std::io::Read;
    let pki = Pki::new();
    let hpc = Gw::start(Some(pki.gateway("hpc")), 4, &[]);
    let inst = Gw::start(Some(pki.gateway("inst")), 4, &[]);
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let t = scistream_testkit::s2uc_tunnel(&hpc, &inst, Some(&pki.ca), "127.0.0.1", dead_port, 1);
    let mut c = TcpStream::connect(&t.outbound[0]).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = c.write_all(b"frames");
    // The instrument's connection is closed: the tunnel could not carry it.
    assert!(matches!(c.read(&mut [0u8; 8]), Ok(0) | Err(_)));
    let ca = pki.ca.to_str().unwrap();
    let status_at = |gw: &Gw| {
        let v = s2uc_json(&[
            "status",
            "--s2cs",
            &gw.control(),
            "--server_cert",
            ca,
            &t.uid,
        ]);
        v["sessions"][0]["last_failure"]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut seen = status_at(&inst);
    while seen.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        seen = status_at(&inst);
    }
    assert!(
        seen.contains("the inbound gateway refused the connection")
            && seen.contains("receiver could not be reached"),
        "instrument side: {seen:?}"
    );
    let hpc_side = status_at(&hpc);
    assert!(
        hpc_side.contains(&format!(
            "the receiver 127.0.0.1:{dead_port} could not be reached"
        )),
        "HPC side: {hpc_side:?}"
    );
    // And in words for people.
    let out = scistream_testkit::s2uc(&[
        "status",
        "--s2cs",
        &inst.control(),
        "--server_cert",
        ca,
        &t.uid,
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("last failure: ")
            && text.contains("the inbound gateway refused the connection"),
        "{text}"
    );
}
