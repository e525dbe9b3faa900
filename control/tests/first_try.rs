//! A SciStream user's first try, as the tutorial has it: two gateways on one
//! host at 127.0.0.2 and 127.0.0.3 with the same data port range, each with
//! a self-signed certificate made by `openssl req -x509` (CA:TRUE), handed to
//! the other side as its trust file. It must work the first time: the
//! own-range check compares addresses too, the pinned certificate is
//! trusted, and the stream arrives.
#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use scistream_local::gateway::{GatewayOptions, LocalGateway};
use scistream_testkit::{DigestReceiver, bin, port_range, s2uc, send_stream, strings};

/// `openssl req -x509` as SciStream's docs have it, for `ip`.
fn openssl_cert(dir: &Path, name: &str, ip: &str) -> Option<(PathBuf, PathBuf)> {
    let (crt, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    let ok = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", &format!("/CN={ip}")])
        .args(["-addext", &format!("subjectAltName=IP:{ip}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .ok()?
        .status
        .success();
    ok.then_some((crt, key))
}

fn gateway(
    dir: &Path,
    ip: &str,
    range: (u16, u16),
    tls: (PathBuf, PathBuf),
    peer: &Path,
) -> LocalGateway {
    let state = dir.join(format!("state-{ip}"));
    LocalGateway::start(&GatewayOptions {
        s2cs_bin: bin("s2cs"),
        listener_ip: ip.parse::<IpAddr>().unwrap(),
        port_range: range,
        tls: Some(tls),
        state_dir: state,
        log: Some(dir.join(format!("s2cs-{ip}.log"))),
        extra_args: vec![
            "--peer-ca".into(),
            peer.display().to_string(),
            "--drain-timeout=2s".into(),
        ],
    })
    .unwrap()
}

#[test]
fn scistreams_tutorial_on_127_0_0_2_and_127_0_0_3_works_the_first_time() {
    let dir = tempfile::tempdir().unwrap();
    let (Some(hpc_tls), Some(inst_tls)) = (
        openssl_cert(dir.path(), "hpc", "127.0.0.2"),
        openssl_cert(dir.path(), "inst", "127.0.0.3"),
    ) else {
        eprintln!(
            "SKIP scistreams_tutorial_on_127_0_0_2_and_127_0_0_3_works_the_first_time: needs openssl"
        );
        return;
    };
    // The same data port range on both, as in the tutorial.
    let range = port_range(16);
    let hpc = gateway(dir.path(), "127.0.0.2", range, hpc_tls.clone(), &inst_tls.0);
    let inst = gateway(dir.path(), "127.0.0.3", range, inst_tls.clone(), &hpc_tls.0);
    let receiver = DigestReceiver::start();
    let hpc_addr = format!("127.0.0.2:{}", hpc.addr.port());
    let inst_addr = format!("127.0.0.3:{}", inst.addr.port());
    let inbound = scistream_testkit::s2uc_json(&[
        "inbound_request",
        "--s2cs",
        &hpc_addr,
        "--server_cert",
        hpc_tls.0.to_str().unwrap(),
        "--remote_ip",
        "127.0.0.1",
        "--receiver_ports",
        &receiver.addr.port().to_string(),
        "--num_conn",
        "2",
    ]);
    let uid = inbound["uid"].as_str().unwrap().to_owned();
    let listeners = strings(&inbound, "listeners");
    assert!(
        listeners.iter().all(|l| l.starts_with("127.0.0.2:")),
        "{listeners:?}"
    );
    let out = s2uc(&[
        "outbound_request",
        "--json",
        "--s2cs",
        &inst_addr,
        "--server_cert",
        inst_tls.0.to_str().unwrap(),
        "--num_conn",
        "2",
        &uid,
        &listeners.join(","),
    ]);
    assert!(
        out.status.success(),
        "outbound_request failed on the first try: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        scistream_local::gateway::log_tail(&dir.path().join("s2cs-127.0.0.3.log"), 20)
    );
    let outbound: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entry = strings(&outbound, "listeners")[0].clone();
    // Same port numbers on the two addresses: the instrument side's own
    // listeners may even share numbers with the HPC side's.
    let sent = send_stream(&entry, 3, 8 << 20);
    assert_eq!(receiver.next(Duration::from_secs(60)), sent);
    drop((hpc, inst));
}

/// A req the gateway refuses at once is s2uc's answer at once: s2uc sends
/// the req and its hello together, and used to wait for the hello too,
/// which waits for a session that never comes (up to --hello-grace; a
/// cluster node's 4 ms refusal took s2uc 20 s). The gateway here waits
/// 600 s for a hello's req; the refusal must come long before.
#[test]
fn a_refused_req_is_reported_without_waiting_for_its_hello() {
    let gw = scistream_testkit::Gw::start(None, 4, &["--hello-grace", "600s"]);
    let control = gw.control();
    let inbound = [
        "inbound-request",
        "--s2cs",
        control.as_str(),
        "--insecure",
        "--remote_ip",
        "127.0.0.1",
        "--receiver_ports",
        "9",
        "--num_conn",
        "2",
    ];
    // A first session takes the 2 ports one caller may hold (half the range).
    let taken = scistream_testkit::s2uc_json(&inbound);
    assert_eq!(taken["listeners"].as_array().unwrap().len(), 2, "{taken}");
    let started = std::time::Instant::now();
    let mut child = std::process::Command::new(scistream_testkit::bin("s2uc"))
        .args(inbound)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded far below the 600 s the hello would wait.
    let deadline = started + std::time::Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("s2uc still waits for the hello of a refused req");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("RESOURCE_EXHAUSTED"), "{err}");
}
