//! The data plane's promises, on each engine (epoll, and io_uring where the
//! kernel allows it): byte-exact forwarding, many connections, half-close,
//! resets, refusals, release under load without descriptor leaks, the rate
//! cap, and connections spread over workers.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{DataPlane, add_session, engines, key, stats, targets};
use scistream_protocol::handoff::{Command as Cmd, Outcome};
use scistream_testkit::{DigestReceiver, EchoServer, send_stream};

fn start(engine: &str, workers: &str) -> DataPlane {
    DataPlane::start(&["--engine", engine, "--workers", workers])
}

/// Engines, plus the copying relay (on epoll) where a scenario covers it too.
fn engines_and_copy(test: &str) -> Vec<(&'static str, &'static str)> {
    let mut v: Vec<_> = engines(test).into_iter().map(|e| (e, "splice")).collect();
    v.push(("epoll", "copy"));
    v
}

#[test]
fn a_gigabyte_arrives_byte_exact() {
    for (engine, forward) in engines_and_copy("a_gigabyte_arrives_byte_exact") {
        let mut dp =
            DataPlane::start(&["--engine", engine, "--workers", "2", "--forward", forward]);
        let receiver = DigestReceiver::start();
        let (addrs, _fds) = add_session(&mut dp, "gb", 1, receiver.addr, 0);
        let sent = send_stream(&addrs[0].to_string(), 11, 1 << 30);
        assert_eq!(
            receiver.next(Duration::from_secs(120)),
            sent,
            "{engine}: 1 GiB intact"
        );
        let s = &stats(&mut dp)[0];
        assert_eq!(s.bytes_to_target, 1 << 30, "{engine}: counted");
    }
}

#[test]
fn sixty_four_connections_over_four_listeners() {
    for engine in engines("sixty_four_connections_over_four_listeners") {
        let mut dp = start(engine, "2");
        let echo = EchoServer::start();
        let (addrs, _fds) = add_session(&mut dp, "many", 4, echo.addr, 0);
        let go = Arc::new(std::sync::Barrier::new(64));
        let clients: Vec<_> = (0..64usize)
            .map(|i| {
                let (addr, go) = (addrs[i % 4], go.clone());
                std::thread::spawn(move || {
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                    go.wait(); // all 64 open at once
                    let payload: Vec<u8> =
                        (0..256 << 10).map(|b: usize| (b * 31 + i) as u8).collect();
                    let mut r = s.try_clone().unwrap();
                    let reader = std::thread::spawn(move || {
                        let mut back = Vec::new();
                        r.read_to_end(&mut back).unwrap();
                        back
                    });
                    s.write_all(&payload).unwrap();
                    s.shutdown(std::net::Shutdown::Write).unwrap();
                    assert!(
                        reader.join().unwrap() == payload,
                        "connection {i} echo differs"
                    );
                })
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
        let s = &stats(&mut dp)[0];
        assert_eq!((s.conns_total, s.errors), (64, 0), "{engine}");
        assert_eq!(s.bytes_to_target, 64 * (256 << 10));
    }
}

#[test]
fn half_close_lets_the_reply_through() {
    for (engine, forward) in engines_and_copy("half_close_lets_the_reply_through") {
        let mut dp =
            DataPlane::start(&["--engine", engine, "--workers", "1", "--forward", forward]);
        // A service that answers only once the request is complete (EOF).
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let service = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = Vec::new();
            s.read_to_end(&mut req).unwrap();
            s.write_all(format!("got {} bytes", req.len()).as_bytes())
                .unwrap();
        });
        let (addrs, _fds) = add_session(&mut dp, "half", 1, service, 0);
        let mut c = TcpStream::connect(addrs[0]).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(&[7u8; 100_000]).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut reply = String::new();
        c.read_to_string(&mut reply).unwrap();
        assert_eq!(reply, "got 100000 bytes", "{engine}/{forward}");
    }
}

/// A service that accepts one connection and hands it over.
fn one_connection_service() -> (SocketAddr, std::sync::mpsc::Receiver<TcpStream>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((s, _)) = l.accept() {
            let _ = tx.send(s);
        }
    });
    (addr, rx)
}

fn reset(s: TcpStream) {
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
}

fn read_until_error(s: &mut TcpStream) -> std::io::Result<usize> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(0),
            Ok(_) => continue,
            Err(e) => return Err(e),
        }
    }
}

#[test]
fn resets_propagate_both_ways() {
    for engine in engines("resets_propagate_both_ways") {
        let mut dp = start(engine, "1");
        // The client resets: the service sees a reset, not a clean end.
        let (service, accepted) = one_connection_service();
        let (addrs, _fds) = add_session(&mut dp, "rst1", 1, service, 0);
        let mut c = TcpStream::connect(addrs[0]).unwrap();
        c.write_all(b"some data").unwrap();
        let mut server_side = accepted.recv_timeout(Duration::from_secs(10)).unwrap();
        let mut got = [0u8; 9];
        server_side.read_exact(&mut got).unwrap();
        reset(c);
        let e = read_until_error(&mut server_side).unwrap_err();
        assert_eq!(
            e.kind(),
            ErrorKind::ConnectionReset,
            "{engine}: service sees the client's reset"
        );

        // The service resets: the client sees a reset.
        let (service, accepted) = one_connection_service();
        let (addrs, _fds) = add_session(&mut dp, "rst2", 1, service, 0);
        let mut c = TcpStream::connect(addrs[0]).unwrap();
        c.write_all(b"x").unwrap();
        let server_side = accepted.recv_timeout(Duration::from_secs(10)).unwrap();
        reset(server_side);
        let e = read_until_error(&mut c).unwrap_err();
        assert_eq!(
            e.kind(),
            ErrorKind::ConnectionReset,
            "{engine}: client sees the service's reset"
        );
        let s = stats(&mut dp);
        assert!(
            s.iter().all(|s| s.conns_open == 0 && s.errors == 1),
            "{engine}: {s:?}"
        );
    }
}

#[test]
fn a_refusing_target_closes_the_client_and_the_session_survives() {
    for engine in engines("a_refusing_target_closes_the_client_and_the_session_survives") {
        let mut dp = start(engine, "1");
        let dead = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let (addrs, _fds) = add_session(&mut dp, "refused", 2, dead, 0);
        for _ in 0..3 {
            let mut c = TcpStream::connect(addrs[0]).unwrap();
            let started = Instant::now();
            // Closed (reset) at once rather than left hanging until the 10 s read timeout.
            let _ = read_until_error(&mut c);
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{engine}: closed at once"
            );
        }
        // Re-target listener 1 to a live service: the same session keeps working.
        let echo = EchoServer::start();
        let outcome = dp.call(
            Cmd::UpdateTargets {
                key: key("refused"),
                targets: targets(&[dead, echo.addr]),
            },
            &[],
        );
        assert_eq!(outcome, Outcome::Done);
        assert_eq!(common::echo_once(addrs[1], b"alive"), b"alive", "{engine}");
        let s = &stats(&mut dp)[0];
        assert_eq!(s.errors, 3, "{engine}: every refusal counted");
    }
}

#[test]
fn release_while_data_flows_closes_promptly_and_leaks_nothing() {
    for engine in engines("release_while_data_flows_closes_promptly_and_leaks_nothing") {
        let mut dp = start(engine, "2");
        let baseline = dp.open_fds();
        let sink = DigestReceiver::start();
        let (addrs, fds) = add_session(&mut dp, "busy", 4, sink.addr, 0);
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = addrs
            .iter()
            .map(|a| {
                let (a, stop) = (*a, stop.clone());
                std::thread::spawn(move || {
                    let mut s = TcpStream::connect(a).unwrap();
                    let buf = vec![1u8; 1 << 16];
                    let started = Instant::now();
                    // Write until the release breaks the connection.
                    while !stop.load(Ordering::Relaxed) {
                        if s.write_all(&buf).is_err() {
                            return started.elapsed();
                        }
                    }
                    panic!("the connection outlived the release");
                })
            })
            .collect();
        // Let data flow on all four, then release.
        let deadline = Instant::now() + Duration::from_secs(10);
        while stats(&mut dp)[0].conns_open < 4 || stats(&mut dp)[0].bytes_to_target < 4 << 20 {
            assert!(Instant::now() < deadline, "{engine}: data never flowed");
            std::thread::sleep(Duration::from_millis(10));
        }
        let released = Instant::now();
        assert_eq!(
            dp.call(Cmd::RemoveSession { key: key("busy") }, &[]),
            Outcome::Done
        );
        let watchdog = std::thread::spawn({
            let stop = stop.clone();
            move || {
                std::thread::sleep(Duration::from_secs(10));
                stop.store(true, Ordering::Relaxed);
            }
        });
        for w in writers {
            w.join().unwrap();
        }
        assert!(
            released.elapsed() < Duration::from_secs(5),
            "{engine}: writers saw the close promptly"
        );
        drop(watchdog);
        drop(fds);
        // Every socket and pipe of the session is gone from s2ds.
        let deadline = Instant::now() + Duration::from_secs(5);
        while dp.open_fds() != baseline {
            assert!(
                Instant::now() < deadline,
                "{engine}: {} descriptors instead of {baseline}",
                dp.open_fds()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[test]
fn the_rate_cap_holds() {
    for engine in engines("the_rate_cap_holds") {
        let mut dp = start(engine, "1");
        // A receiver that times what it gets.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let service = l.local_addr().unwrap();
        let measured = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = vec![0u8; 1 << 16];
            let (mut total, mut first) = (0u64, None);
            let mut window = (0u64, 0u64);
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let t0 = *first.get_or_insert_with(Instant::now);
                total += n as u64;
                // Bytes between 0.5 s and 5.5 s after the first byte: skips the
                // start, when buffers fill.
                let t = t0.elapsed();
                if t >= Duration::from_millis(500) && window.0 == 0 {
                    window.0 = total;
                }
                if t >= Duration::from_millis(5500) {
                    window.1 = total;
                    break;
                }
            }
            (window.1 - window.0) as f64 * 8.0 / 5.0
        });
        // 200 Mbit/s for the session (one listener, so one connection gets it all).
        let (addrs, _fds) = add_session(&mut dp, "capped", 1, service, 200_000);
        let mut c = TcpStream::connect(addrs[0]).unwrap();
        let writer = std::thread::spawn(move || {
            let buf = vec![5u8; 1 << 16];
            while c.write_all(&buf).is_ok() {}
        });
        let bps = measured.join().unwrap();
        drop(writer);
        assert!(
            (170e6..=230e6).contains(&bps),
            "{engine}: capped at 200 Mbit/s, measured {:.1} Mbit/s",
            bps / 1e6
        );
        assert_eq!(
            dp.call(Cmd::RemoveSession { key: key("capped") }, &[]),
            Outcome::Done
        );
    }
}

#[test]
fn connections_spread_over_workers() {
    for engine in engines("connections_spread_over_workers") {
        let mut dp = start(engine, "2");
        let echo = EchoServer::start();
        let (addrs, _fds) = add_session(&mut dp, "spread", 4, echo.addr, 0);
        let conns: Vec<TcpStream> = addrs
            .iter()
            .map(|a| TcpStream::connect(a).unwrap())
            .collect();
        for mut c in &conns {
            c.write_all(b"hi").unwrap();
            let mut b = [0u8; 2];
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            c.read_exact(&mut b).unwrap();
        }
        let s = &stats(&mut dp)[0];
        let mut workers: Vec<u32> = s.connections.iter().map(|c| c.worker).collect();
        workers.sort_unstable();
        assert_eq!(
            workers,
            vec![0, 0, 1, 1],
            "{engine}: listeners alternate over the two workers"
        );
        // Each connection stays with the worker of its listener.
        for c in &s.connections {
            assert_eq!(c.worker as usize, c.listener % 2, "{engine}: {c:?}");
            assert_eq!(c.mode, "splice");
        }
    }
}
