//! Use cases 1 and 2 end to end through the real binaries: two `s2cs`
//! (each with its `s2ds`) on loopback, `s2uc` as a user types it, data
//! checksummed at the receivers.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use scistream_testkit::{
    DigestReceiver, EchoServer, Gw, Pki, refused, s2uc, s2uc_json, send_stream, strings,
};

struct Tunnel {
    _pki: Pki,
    hpc: Gw,
    inst: Gw,
    uid: String,
    ca: String,
    outbound: Vec<String>,
}

/// Sets up both ends with `s2uc`, forwarding to `receiver_ports` on 127.0.0.1.
fn tunnel(num_conn: usize, receiver_ports: &[u16]) -> Tunnel {
    let pki = Pki::new();
    let hpc = Gw::start(Some(pki.gateway("hpc")), 16, &[]);
    let inst = Gw::start(Some(pki.gateway("inst")), 16, &[]);
    let ca = pki.ca.to_str().unwrap().to_owned();
    let ports = receiver_ports
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let n = num_conn.to_string();
    let inbound = s2uc_json(&[
        "inbound_request",
        "--s2cs",
        &hpc.control(),
        "--server_cert",
        &ca,
        "--remote_ip",
        "127.0.0.1",
        "--receiver_ports",
        &ports,
        "--num_conn",
        &n,
    ]);
    let uid = inbound["uid"].as_str().unwrap().to_owned();
    assert_eq!(inbound["role"], "PROD");
    let inbound_listeners = strings(&inbound, "listeners");
    assert_eq!(inbound_listeners.len(), num_conn);
    let expected_targets: Vec<String> = (0..num_conn)
        .map(|i| format!("127.0.0.1:{}", receiver_ports[i % receiver_ports.len()]))
        .collect();
    assert_eq!(
        strings(&inbound, "targets"),
        expected_targets,
        "receivers cycled to num_conn"
    );

    // The other spelling of the command and options, as SciStream users type them too.
    let outbound = s2uc_json(&[
        "outbound-request",
        "--s2cs",
        &inst.control(),
        "--server-cert",
        &ca,
        "--num-conn",
        &n,
        "--remote-ip",
        "127.0.0.1",
        "--receiver-ports",
        "9",
        &uid,
        &inbound_listeners.join(","),
    ]);
    assert_eq!(outbound["uid"], uid.as_str());
    assert_eq!(outbound["role"], "CONS");
    assert_eq!(strings(&outbound, "targets"), inbound_listeners);
    let outbound = strings(&outbound, "listeners");
    assert_eq!(outbound.len(), num_conn);
    Tunnel {
        _pki: pki,
        hpc,
        inst,
        uid,
        ca,
        outbound,
    }
}

fn check_streams(num_conn: usize, bytes: u64) {
    // One receiver per listener, so each stream's path (outbound listener i →
    // inbound listener i → receiver i) is checked, not only the total.
    let receivers: Vec<DigestReceiver> = (0..num_conn).map(|_| DigestReceiver::start()).collect();
    let ports: Vec<u16> = receivers.iter().map(|r| r.addr.port()).collect();
    let t = tunnel(num_conn, &ports);
    let senders: Vec<_> = t
        .outbound
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let l = l.clone();
            std::thread::spawn(move || send_stream(&l, i as u64 + 100, bytes + i as u64))
        })
        .collect();
    let sent: Vec<(u64, u64)> = senders.into_iter().map(|h| h.join().unwrap()).collect();
    for (i, r) in receivers.iter().enumerate() {
        assert_eq!(
            r.next(Duration::from_secs(60)),
            sent[i],
            "stream through listener {i} arrived intact at receiver {i}"
        );
    }
    for gw in [&t.hpc, &t.inst] {
        let out = s2uc(&[
            "release",
            &t.uid,
            "--s2cs",
            &gw.control(),
            "--server_cert",
            &t.ca,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("Released"));
    }
    for l in &t.outbound {
        assert!(refused(l), "outbound listener {l} closed after release");
    }
}

#[test]
fn use_cases_with_one_connection() {
    check_streams(1, 64 << 20);
}

#[test]
fn use_cases_with_three_connections_every_listener_carries_data() {
    check_streams(3, 32 << 20);
}

#[test]
fn traffic_flows_both_ways_and_half_close_propagates() {
    let echo = EchoServer::start();
    let t = tunnel(2, &[echo.addr.port()]);
    for l in &t.outbound {
        let mut s = TcpStream::connect(l).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut reader = s.try_clone().unwrap();
        let payload: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
        let expected = payload.clone();
        let reading = std::thread::spawn(move || {
            let mut back = Vec::new();
            reader.read_to_end(&mut back).unwrap();
            back
        });
        // Writing and reading at the same time: both directions carry 8 MiB.
        s.write_all(&payload).unwrap();
        // The client half-closes but still reads the echo to its end.
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let back = reading.join().unwrap();
        assert_eq!(back.len(), expected.len());
        assert!(back == expected, "echo through the tunnel differs");
    }
}

#[test]
fn release_closes_live_connections_and_listeners() {
    let echo = EchoServer::start();
    let t = tunnel(1, &[echo.addr.port()]);
    let mut s = TcpStream::connect(&t.outbound[0]).unwrap();
    s.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping", "connection is live before release");

    let out = s2uc(&[
        "release",
        &t.uid,
        "--s2cs",
        &t.inst.control(),
        "--server_cert",
        &t.ca,
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let started = Instant::now();
    // The live connection is closed by the release (a reset, not a clean EOF).
    let r = s.read(&mut buf);
    assert!(
        matches!(r, Ok(0) | Err(_)),
        "connection still open after release: {r:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "closed promptly"
    );
    assert!(refused(&t.outbound[0]), "listener closed");
    // Releasing again says NOT_FOUND, in words.
    let again = s2uc(&[
        "release",
        &t.uid,
        "--s2cs",
        &t.inst.control(),
        "--server_cert",
        &t.ca,
    ]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("NOT_FOUND") && err.contains("tag"), "{err}");
}
