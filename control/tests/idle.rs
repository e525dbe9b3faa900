//! `--idle-timeout`: off by default (see dead_peers.rs: an idle connection
//! stays); when an admin sets it, a connection that moved no byte for
//! that long is closed, and one that keeps trickling is not.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use scistream_testkit::{DigestReceiver, Gw, s2uc_tunnel};

#[test]
fn the_admin_idle_timeout_closes_only_silent_connections() {
    let receiver = DigestReceiver::start();
    let hpc = Gw::start(None, 4, &["--data-tls", "off"]);
    let inst = Gw::start(None, 4, &["--data-tls", "off", "--idle-timeout", "1s"]);
    let entry =
        s2uc_tunnel(&hpc, &inst, None, "127.0.0.1", receiver.addr.port(), 1).outbound[0].clone();

    let mut silent = TcpStream::connect(&entry).unwrap();
    silent.write_all(b"x").unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut busy = TcpStream::connect(&entry).unwrap();
    busy.set_read_timeout(Some(Duration::from_millis(1)))
        .unwrap();

    let started = Instant::now();
    let watcher = std::thread::spawn(move || {
        let r = silent.read(&mut [0u8; 8]);
        (r.map_err(|e| e.kind()), started.elapsed())
    });
    // The busy one sends a byte every 300 ms for 3 s: never idle for 1 s.
    for _ in 0..10 {
        busy.write_all(b".").unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    let (r, after) = watcher.join().unwrap();
    assert!(
        matches!(r, Ok(0) | Err(std::io::ErrorKind::ConnectionReset)),
        "the silent connection was closed: {r:?}"
    );
    assert!(after < Duration::from_secs(15), "closed after {after:?}");
    // The busy one is still open: a read finds no EOF, only no data yet.
    let r = busy.read(&mut [0u8; 8]);
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut),
        "{r:?}"
    );
    busy.write_all(b"still open").unwrap();
    assert!(
        inst.log().contains("idle for --idle-timeout"),
        "{}",
        inst.log()
    );
}
