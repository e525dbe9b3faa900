//! `s2ds` on its own, driven over its control socket the way `s2cs`
//! drives it: sessions added with listening sockets, forwarding, counters,
//! re-targeting, removal, and bad commands.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::time::Duration;

use common::{DataPlane, echo_once, key, listener, stats, targets};
use scistream_protocol::handoff::{self, Command as Cmd, FromDataPlane, Outcome, SessionSpec};
use scistream_testkit::EchoServer;

#[test]
fn forwards_counts_retargets_and_removes() {
    let mut dp = DataPlane::start(&["--workers", "2"]);
    let fds_before = dp.open_fds();
    let (echo_a, echo_b) = (EchoServer::start(), EchoServer::start());
    let (l0, a0) = listener();
    let (l1, a1) = listener();
    let spec = SessionSpec {
        first_index: 0,
        protocol: Default::default(),
        key: key("s1"),
        listeners: vec![a0, a1],
        targets: targets(&[echo_a.addr, echo_a.addr]),
        rate_kbps: 0,
        channel: Default::default(),
    };
    assert_eq!(
        dp.call(Cmd::AddSession(spec.clone()), &[&l0, &l1]),
        Outcome::Done
    );
    // Adding it twice is refused.
    assert!(matches!(
        dp.call(Cmd::AddSession(spec), &[&l0, &l1]),
        Outcome::Failed { .. }
    ));

    assert_eq!(echo_once(a0, b"hello"), b"hello");
    assert_eq!(echo_once(a1, b"world!"), b"world!");
    let s = stats(&mut dp);
    assert_eq!(s.len(), 1);
    assert_eq!(
        (
            s[0].conns_total,
            s[0].bytes_to_target,
            s[0].bytes_from_target
        ),
        (2, 11, 11)
    );

    // Re-target listener 1; new connections go there.
    let outcome = dp.call(
        Cmd::UpdateTargets {
            key: key("s1"),
            targets: targets(&[echo_a.addr, echo_b.addr]),
        },
        &[],
    );
    assert_eq!(outcome, Outcome::Done);
    assert_eq!(echo_once(a1, b"again"), b"again");

    // A live connection is closed by the removal, and the listeners stop accepting.
    let mut live = TcpStream::connect(a0).unwrap();
    live.write_all(b"x").unwrap();
    live.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut one = [0u8; 1];
    live.read_exact(&mut one).unwrap();
    assert_eq!(
        dp.call(Cmd::RemoveSession { key: key("s1") }, &[]),
        Outcome::Done
    );
    assert!(matches!(live.read(&mut one), Ok(0) | Err(_)));
    // s2ds dropped every descriptor of the session (its listener copies
    // included); ours are the last. (Not checked through the ports: under a
    // busy test run another process may be handed the freed ephemeral port.)
    drop((l0, l1));
    assert_eq!(dp.open_fds(), fds_before, "no descriptor leaked in s2ds");
    assert!(stats(&mut dp).is_empty());
}

#[test]
fn a_target_that_refuses_closes_the_client_and_counts_an_error() {
    let mut dp = DataPlane::start(&["--workers", "1"]);
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let echo = EchoServer::start();
    let (l0, a0) = listener();
    let (l1, a1) = listener();
    let spec = SessionSpec {
        first_index: 0,
        protocol: Default::default(),
        key: key("s2"),
        listeners: vec![a0, a1],
        targets: targets(&[dead, echo.addr]),
        rate_kbps: 0,
        channel: Default::default(),
    };
    assert_eq!(dp.call(Cmd::AddSession(spec), &[&l0, &l1]), Outcome::Done);
    let mut s = TcpStream::connect(a0).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert!(
        matches!(s.read(&mut [0u8; 8]), Ok(0) | Err(_)),
        "client closed"
    );
    // The session survives: its other listener still works.
    assert_eq!(echo_once(a1, b"still here"), b"still here");
    let st = stats(&mut dp);
    assert_eq!(st[0].errors, 1);
    assert_eq!(st[0].conns_open, 0);
}

#[test]
fn malformed_commands_are_refused_without_harm() {
    let mut dp = DataPlane::start(&["--workers", "1"]);
    let (l0, a0) = listener();
    // Descriptor count does not match.
    let spec = SessionSpec {
        first_index: 0,
        protocol: Default::default(),
        key: key("bad"),
        listeners: vec![a0, a0],
        targets: targets(&[a0, a0]),
        rate_kbps: 0,
        channel: Default::default(),
    };
    assert!(matches!(
        dp.call(Cmd::AddSession(spec), &[&l0]),
        Outcome::Failed { .. }
    ));
    // A descriptor that is not a listening socket.
    let connected = OwnedFd::from(TcpStream::connect(a0).unwrap());
    let spec = SessionSpec {
        first_index: 0,
        protocol: Default::default(),
        key: key("bad"),
        listeners: vec![a0],
        targets: targets(&[a0]),
        rate_kbps: 0,
        channel: Default::default(),
    };
    match dp.call(Cmd::AddSession(spec), &[&connected]) {
        Outcome::Failed { message } => {
            assert!(message.contains("not a listening socket"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    // Unknown sessions.
    assert!(matches!(
        dp.call(
            Cmd::UpdateTargets {
                key: key("nope"),
                targets: targets(&[a0]),
            },
            &[]
        ),
        Outcome::Failed { .. }
    ));
    assert_eq!(
        dp.call(Cmd::RemoveSession { key: key("nope") }, &[]),
        Outcome::Done
    );
    // Garbage on the socket ends that control connection, not the process
    // nor a session it forwards: a new controller re-attaches and finds it.
    let echo = EchoServer::start();
    let (l1, a1) = listener();
    let spec = SessionSpec {
        first_index: 0,
        protocol: Default::default(),
        key: key("kept"),
        listeners: vec![a1],
        targets: targets(&[echo.addr]),
        rate_kbps: 0,
        channel: Default::default(),
    };
    assert_eq!(dp.call(Cmd::AddSession(spec), &[&l1]), Outcome::Done);
    rustix::net::send(&dp.sock, b"\xff not json", rustix::net::SendFlags::empty()).unwrap();
    let sock = handoff::connect(&dp.path).unwrap();
    let (hello, _): (FromDataPlane, _) = dp.rx.recv(&sock).unwrap().unwrap();
    match hello {
        FromDataPlane::Hello { sessions, .. } => assert_eq!(sessions, vec![key("kept")]),
        other => panic!("{other:?}"),
    }
    assert!(dp.child.try_wait().unwrap().is_none(), "s2ds still runs");
    assert_eq!(echo_once(a1, b"still forwarding"), b"still forwarding");
}
