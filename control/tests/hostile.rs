//! Hostile input on the control port and the data listeners: garbage, an
//! HTTP/1 request, a TLS client that stalls mid-handshake, 1000 idle
//! connections, oversized messages, random field values, port scans and
//! slowloris on plaintext listeners. Every time, a legitimate caller is
//! still served and the daemon stays up.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use scistream_client::{Auth, Trust};
use scistream_protocol::pb::control_client::ControlClient;
use scistream_protocol::pb::{Hello, Release, Request, UpdateTargets};
use scistream_testkit::{DigestReceiver, Gw, Pki, s2uc_tunnel, send_stream};

/// A legitimate call over TLS: release of an unknown uid answers NOT_FOUND.
async fn legit(gw: &Gw, pki: &Pki) {
    let conn = scistream_client::connect(&gw.control(), &Trust::Root(pki.ca.clone()), Auth::none())
        .await
        .unwrap();
    let e = scistream_client::release(&conn, "nobody-has-this")
        .await
        .unwrap_err();
    assert_eq!(e.grpc_code(), Some(tonic::Code::NotFound), "{e}");
}

/// A connection to `addr` from the loopback address `source`.
fn connect_from(source: &str, addr: std::net::SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let src: std::net::SocketAddr = format!("{source}:0").parse().unwrap();
    s.bind(&src.into()).unwrap();
    s.connect(&addr.into()).unwrap();
    s.into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_port_shrugs_off_garbage_and_idlers() {
    let pki = Pki::new();
    let gw = Gw::start(Some(pki.gateway("hpc")), 4, &[]);
    let addr = gw.gw.addr;
    // The attacker's connections come from another address than the
    // legitimate caller's (127.0.0.1): one source can hold only
    // --max-control-conns-per-source (64) of them.
    let attacker = "127.0.0.3";

    // Garbage, and an HTTP/1 request, on the TLS port.
    let mut g = connect_from(attacker, addr);
    let junk: Vec<u8> = (0..65536u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let _ = g.write_all(&junk);
    let mut h = connect_from(attacker, addr);
    h.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    // A TLS client that sends half a ClientHello and stalls.
    let mut stalled = connect_from(attacker, addr);
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
        .unwrap();
    // 1000 idle connections: past the per-source cap they are closed at once.
    let mut idle: Vec<TcpStream> = (0..1000).map(|_| connect_from(attacker, addr)).collect();
    legit(&gw, &pki).await;
    let last = idle.last_mut().unwrap();
    last.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    assert!(matches!(last.read(&mut [0u8; 1]), Ok(0) | Err(_)));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "closed at once, not at the setup deadline"
    );

    // The garbage connection was answered by a close, not left open.
    g.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut buf = [0u8; 1024];
    while matches!(g.read(&mut buf), Ok(n) if n > 0) {}
    drop(idle);
    legit(&gw, &pki).await;
    assert!(gw.gw.pid().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_random_requests_always_get_a_status() {
    let gw = Gw::start(
        None,
        8,
        &["--hello-timeout", "1s", "--hello-grace", "100ms"],
    );
    let mut c = ControlClient::connect(format!("http://{}", gw.gw.addr))
        .await
        .unwrap();

    // 1 MiB uid: over the message limit, refused with a status.
    let big = "u".repeat(1 << 20);
    let e = c
        .release(Release {
            uid: big.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            e.code(),
            tonic::Code::ResourceExhausted | tonic::Code::OutOfRange | tonic::Code::InvalidArgument
        ),
        "{e:?}"
    );

    // Random field values (deterministic generator): every call answers with a status.
    let mut state = 0x9E3779B97F4A7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let alphabet: Vec<char> = "abcXYZ019-_:/.[]@ \t\n\u{0}\u{7f}é🙂%".chars().collect();
    let text = |next: &mut dyn FnMut() -> u64| -> String {
        let n = (next() % 300) as usize;
        (0..n)
            .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
            .collect()
    };
    let mut codes = std::collections::BTreeMap::new();
    for i in 0..300 {
        let uid = if i % 5 == 0 {
            format!("fuzz-{i}")
        } else {
            text(&mut next)
        };
        let role = ["PROD", "CONS", "", "prod", "X"][(next() % 5) as usize].to_string();
        let r = match i % 4 {
            0 => c
                .req(Request {
                    uid,
                    role,
                    num_conn: next() as i32 % 300,
                    rate: next() as i32,
                    protocol: String::new(),
                })
                .await
                .map(|_| ()),
            1 => c
                .hello(Hello {
                    uid,
                    role,
                    prod_listeners: vec![text(&mut next), text(&mut next)],
                })
                .await
                .map(|_| ()),
            2 => c
                .update(UpdateTargets {
                    uid,
                    role,
                    remote_listeners: vec![text(&mut next)],
                })
                .await
                .map(|_| ()),
            _ => c
                .release(Release {
                    uid,
                    ..Default::default()
                })
                .await
                .map(|_| ()),
        };
        let code = r.err().map(|s| s.code()).unwrap_or(tonic::Code::Ok);
        assert!(
            !matches!(
                code,
                tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::Unavailable
            ),
            "call {i} got {code:?}: the server failed rather than judged"
        );
        *codes.entry(format!("{code:?}")).or_insert(0) += 1;
    }
    eprintln!("status codes over 300 random calls: {codes:?}");
    assert!(codes.contains_key("InvalidArgument"));
    // Still serving.
    let e = c
        .release(Release {
            uid: "still-there".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
}

#[test]
fn plaintext_data_listeners_survive_scans_and_slowloris() {
    let receiver = DigestReceiver::start();
    let args = ["--data-tls", "off", "--handshake-timeout", "1s"];
    let hpc = Gw::start(None, 4, &args);
    let inst = Gw::start(None, 4, &args);
    let ends = s2uc_tunnel(&hpc, &inst, None, "127.0.0.1", receiver.addr.port(), 1);
    let (inbound_listener, entry) = (ends.inbound[0].clone(), ends.outbound[0].clone());

    // A port scan: connect and close, many times.
    for _ in 0..300 {
        drop(TcpStream::connect(&inbound_listener).unwrap());
    }
    // Slowloris on the inbound (preamble) listener: one byte, then silence.
    let slow: Vec<TcpStream> = (0..100)
        .map(|_| {
            let mut s = TcpStream::connect(&inbound_listener).unwrap();
            s.write_all(b"S").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            s
        })
        .collect();
    // The real stream goes through meanwhile.
    let sent = send_stream(&entry, 9, 8 << 20);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = receiver.next(Duration::from_secs(30));
        if got == sent {
            break;
        }
        assert!(Instant::now() < deadline, "the real stream did not arrive");
    }
    // The slow ones are cut at the handshake timeout, not held forever.
    for mut s in slow {
        let r = s.read(&mut [0u8; 8]);
        assert!(
            matches!(r, Ok(0) | Err(_))
                && !matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "{r:?}"
        );
    }
}
