//! Graceful shutdown: SIGTERM (or SIGINT) stops new requests, closes the
//! listeners at once, lets established streams finish for --drain-timeout,
//! then closes the rest and exits 0.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rustix::process::Signal;
use scistream_local::payload::{Digest, Generator};
use scistream_testkit::{DigestReceiver, Gw, Pki, refused, s2uc_tunnel};

/// A tunnel whose outbound gateway gets `inst_args`.
fn tunnel(pki: &Pki, receiver: u16, inst_args: &[&str]) -> (Gw, Gw, Vec<String>) {
    let hpc = Gw::start(Some(pki.gateway("hpc")), 4, &[]);
    let inst = Gw::start(Some(pki.gateway("inst")), 4, inst_args);
    let outbound = s2uc_tunnel(&hpc, &inst, Some(&pki.ca), "127.0.0.1", receiver, 1).outbound;
    (hpc, inst, outbound)
}

fn wait_refused(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !refused(addr) {
        assert!(
            Instant::now() < deadline,
            "{addr} still accepts after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_lets_established_streams_finish() {
    let pki = Pki::new();
    let receiver = DigestReceiver::start();
    let (_hpc, inst, outbound) = tunnel(&pki, receiver.addr.port(), &["--drain-timeout", "60s"]);
    let mut s = TcpStream::connect(&outbound[0]).unwrap();
    let mut g = Generator::new(3);
    let mut d = Digest::default();
    let mut buf = vec![0u8; 1 << 20];
    let mut send = |s: &mut TcpStream, n: usize| {
        for _ in 0..n {
            g.fill(&mut buf);
            s.write_all(&buf).unwrap();
            d.update(&buf);
        }
    };
    send(&mut s, 4);

    inst.gw.signal(Signal::TERM);
    wait_refused(&outbound[0]);
    // The established stream goes on after the listener closed.
    send(&mut s, 64);
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let _ = s.read(&mut [0u8; 1]);
    // (wait_refused's probes that got in before the close arrive empty.)
    let got = loop {
        let r = receiver.next(Duration::from_secs(60));
        if r.0 > 0 {
            break r;
        }
    };
    assert_eq!(got, d.value());

    let log = inst.log();
    assert!(
        log.contains("waiting for open connections to finish"),
        "{log}"
    );
    let status = inst.gw.stop().unwrap();
    assert!(status.success(), "exit status {status}");
}

#[test]
fn the_drain_timeout_closes_what_is_left_and_sigint_works_too() {
    let pki = Pki::new();
    let receiver = DigestReceiver::start();
    let (_hpc, inst, outbound) = tunnel(&pki, receiver.addr.port(), &["--drain-timeout", "1s"]);
    // A connection that stays open, idle, past the drain timeout.
    let mut idle = TcpStream::connect(&outbound[0]).unwrap();
    idle.write_all(b"hello").unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));

    inst.gw.signal(Signal::INT);
    let n = idle.read(&mut [0u8; 16]);
    assert!(
        matches!(n, Ok(0) | Err(_)),
        "closed after the drain timeout, not left hanging: {n:?}"
    );
    let log = inst.log();
    let status = inst.gw.stop().unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(
        log.contains("SIGINT") || log.contains("drain timeout"),
        "{log}"
    );
}
