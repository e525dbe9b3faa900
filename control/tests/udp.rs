//! UDP through two real gateways (s2cs + s2ds processes, TLS between them,
//! loopback): datagrams arrive whole and in order, replies reach the
//! sender that opened their flow, an overloaded tunnel drops and counts
//! instead of stalling (and the session's TCP connections go on), nothing
//! without a valid session is forwarded, idle flows expire.
#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use scistream_client::{Auth, Connection, RequestOptions, Trust, tunnel::Tunnel};
use scistream_protocol::Protocol;
use scistream_testkit::{DigestReceiver, Gw, Pki, send_stream};

/// Largest UDP payload over IPv4.
const MAX_V4: usize = 65_507;

struct Pair {
    hpc: Gw,
    inst: Gw,
    h: Connection,
    i: Connection,
    inbound: Tunnel,
    outbound: Tunnel,
}

async fn tunnel(pki: &Pki, receiver_port: u16, o: &RequestOptions, extra: &[&str]) -> Pair {
    let hpc = Gw::start(Some(pki.gateway("hpc")), 8, extra);
    let inst = Gw::start(Some(pki.gateway("inst")), 8, extra);
    let trust = Trust::Root(pki.ca.clone());
    let h = scistream_client::connect(&hpc.control(), &trust, Auth::none())
        .await
        .unwrap();
    let i = scistream_client::connect(&inst.control(), &trust, Auth::none())
        .await
        .unwrap();
    let inbound = scistream_client::inbound_request(&h, "127.0.0.1", &[receiver_port], o)
        .await
        .unwrap();
    let outbound = scistream_client::outbound_request(
        &i,
        &inbound.uid,
        inbound.listeners.clone(),
        Vec::new(),
        o,
    )
    .await
    .unwrap();
    Pair {
        hpc,
        inst,
        h,
        i,
        inbound,
        outbound,
    }
}

fn udp_options(protocol: Protocol, num_conn: u32, rate_kbps: u32) -> RequestOptions {
    RequestOptions {
        num_conn,
        rate_kbps,
        protocol,
    }
}

/// A UDP socket on loopback with a large receive buffer.
fn udp_socket(port: u16) -> UdpSocket {
    let s = UdpSocket::bind(("127.0.0.1", port)).unwrap();
    let s2 = socket2::SockRef::from(&s);
    let _ = s2.set_recv_buffer_size(4 << 20);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Datagram `seq` of the test stream: its size, then its bytes
/// (sequence number, a checksum of the rest, a pattern).
fn size_of(seq: u64) -> usize {
    let r = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
    match seq % 100 {
        0 => MAX_V4,
        1..=9 => 1 + (r as usize % 9000),
        _ => 1 + (r as usize % 1500),
    }
}

fn datagram(seq: u64) -> Vec<u8> {
    let n = size_of(seq);
    let mut d: Vec<u8> = (0..n).map(|i| (seq as usize * 31 + i * 7) as u8).collect();
    if n >= 16 {
        d[..8].copy_from_slice(&seq.to_le_bytes());
        let sum = fnv(&d[16..]);
        d[8..16].copy_from_slice(&sum.to_le_bytes());
    }
    d
}

fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3)
    })
}

async fn status_of(c: &Connection, uid: &str) -> scistream_protocol::pb::SessionStatus {
    scistream_client::tunnel::status(c, uid).await.unwrap()[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_of_mixed_sizes_arrive_whole_and_in_order() {
    const COUNT: u64 = 100_000;
    const WINDOW: u64 = 48;
    let pki = Pki::new();
    let receiver = udp_socket(0);
    let port = receiver.local_addr().unwrap().port();
    let p = tunnel(&pki, port, &udp_options(Protocol::Udp, 1, 0), &[]).await;
    let entry: SocketAddr = p.outbound.listeners[0].parse().unwrap();

    // The receiver checks each datagram as it comes; the sender keeps at
    // most WINDOW datagrams in flight, so nothing overflows a queue or a
    // socket buffer and every datagram must arrive.
    let got = Arc::new(AtomicU64::new(0));
    let got_r = got.clone();
    let check = std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        for seq in 0..COUNT {
            let n = match receiver.recv(&mut buf) {
                Ok(n) => n,
                Err(e) => return Err(format!("datagram {seq} never came: {e}")),
            };
            let want = datagram(seq);
            if buf[..n] != want[..] {
                let at = if n >= 8 {
                    u64::from_le_bytes(buf[..8].try_into().unwrap())
                } else {
                    u64::MAX
                };
                return Err(format!(
                    "datagram {seq}: {n} bytes (header says #{at}), expected {} bytes",
                    want.len()
                ));
            }
            if n >= 16 && fnv(&buf[16..n]) != u64::from_le_bytes(buf[8..16].try_into().unwrap()) {
                return Err(format!("datagram {seq}: checksum mismatch"));
            }
            got_r.store(seq + 1, Ordering::Release);
        }
        Ok(())
    });
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let started = Instant::now();
    for seq in 0..COUNT {
        while seq >= got.load(Ordering::Acquire) + WINDOW {
            if check.is_finished() || started.elapsed() > Duration::from_secs(300) {
                break;
            }
            std::hint::spin_loop();
            std::thread::yield_now();
        }
        sender.send_to(&datagram(seq), entry).unwrap();
    }
    let checked = check.join().unwrap();
    assert_eq!(
        checked,
        Ok(()),
        "after {} datagrams",
        got.load(Ordering::Acquire)
    );

    let s = status_of(&p.i, &p.outbound.uid).await;
    assert_eq!(s.protocol, "udp");
    assert_eq!((s.udp_flows_total, s.udp_dropped), (1, 0), "{s:?}");
    assert_eq!(s.udp_datagrams_to_target, COUNT);
    let bytes: u64 = (0..COUNT).map(|q| size_of(q) as u64).sum();
    assert_eq!(s.udp_bytes_to_target, bytes);
    let h = status_of(&p.h, &p.inbound.uid).await;
    assert_eq!(
        (h.udp_datagrams_to_target, h.udp_bytes_to_target),
        (COUNT, bytes)
    );
    assert_eq!(
        h.conns_total, 1,
        "one flow, one connection through the tunnel"
    );
    assert!(
        !s.connections.is_empty() && s.connections.iter().all(|c| c.mode.starts_with("udp+")),
        "{:?}",
        s.connections
    );
    // UDP only: the instrument side's port refuses TCP.
    assert!(TcpStream::connect(entry).is_err());
    // No larger datagram exists: the OS refuses to send one.
    assert!(
        UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .send_to(&vec![0; MAX_V4 + 1], entry)
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_go_back_to_the_sender_that_opened_the_flow() {
    let pki = Pki::new();
    // An echo service that prefixes each reply with the address it saw.
    let echo = udp_socket(0);
    let port = echo.local_addr().unwrap().port();
    let seen = Arc::new(std::sync::Mutex::new(Vec::<SocketAddr>::new()));
    let seen_e = seen.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = echo.recv_from(&mut buf) {
            seen_e.lock().unwrap().push(from);
            let _ = echo.send_to(&buf[..n], from);
        }
    });
    let p = tunnel(
        &pki,
        port,
        &udp_options(Protocol::Both, 1, 0),
        &["--metrics-addr", "127.0.0.1:0"],
    )
    .await;
    let entry: SocketAddr = p.outbound.listeners[0].parse().unwrap();
    let a = udp_socket(0);
    let b = udp_socket(0);
    for round in 0..200u32 {
        a.send_to(format!("a {round}").as_bytes(), entry).unwrap();
        b.send_to(
            format!("b {round} {}", "x".repeat(round as usize)).as_bytes(),
            entry,
        )
        .unwrap();
        let mut buf = [0u8; 2048];
        let n = a.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], format!("a {round}").as_bytes());
        let n = b.recv(&mut buf).unwrap();
        assert_eq!(
            &buf[..n],
            format!("b {round} {}", "x".repeat(round as usize)).as_bytes()
        );
    }
    // Two flows, each its own socket at the receiver side.
    let sources: std::collections::HashSet<SocketAddr> =
        seen.lock().unwrap().iter().copied().collect();
    assert_eq!(sources.len(), 2, "{sources:?}");
    let s = status_of(&p.i, &p.outbound.uid).await;
    assert_eq!((s.udp_flows_open, s.udp_flows_total), (2, 2), "{s:?}");
    assert_eq!(
        (s.udp_datagrams_to_target, s.udp_datagrams_from_target),
        (400, 400)
    );
    let h = status_of(&p.h, &p.inbound.uid).await;
    assert_eq!(
        (h.udp_datagrams_to_target, h.udp_datagrams_from_target),
        (400, 400)
    );
    // The metrics say the same, under the session's tag.
    let metrics = scistream_testkit::scrape(p.inst.metrics_addr());
    let tag = p.inst.tag(&p.outbound.uid);
    for (name, direction) in [("datagrams", "to_target"), ("datagrams", "from_target")] {
        let line = format!(
            "scistream_session_udp_{name}_total{{session=\"{tag}\",role=\"CONS\",direction=\"{direction}\"}} 400"
        );
        assert!(metrics.contains(&line), "no {line} in\n{metrics}");
    }
    let line = format!("scistream_session_udp_dropped_total{{session=\"{tag}\",role=\"CONS\"}} 0");
    assert!(metrics.contains(&line), "no {line} in\n{metrics}");
    // `both`: the same port takes TCP too.
    assert!(TcpStream::connect(entry).is_ok());
}

/// Receives until `quiet` passes without a datagram; the payloads' first
/// 8 bytes (sequence numbers) in arrival order.
fn drain(sink: &UdpSocket, quiet: Duration) -> Vec<u64> {
    sink.set_read_timeout(Some(quiet)).unwrap();
    let mut buf = vec![0u8; 65_536];
    let mut seqs = Vec::new();
    while let Ok(n) = sink.recv(&mut buf) {
        if n >= 8 {
            seqs.push(u64::from_le_bytes(buf[..8].try_into().unwrap()));
        }
    }
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_tunnel_drops_and_counts_and_tcp_goes_on() {
    let pki = Pki::new();
    let tcp_receiver = DigestReceiver::start();
    let port = tcp_receiver.addr.port();
    let sink = udp_socket(port);
    // 16 Mbit/s for the session: 1 MB/s for each of its two connections.
    let o = udp_options(Protocol::Both, 2, 16_000);
    let p = tunnel(&pki, port, &o, &["--udp-queue", "64"]).await;
    let udp_entry: SocketAddr = p.outbound.listeners[0].parse().unwrap();
    let tcp_entry = p.outbound.listeners[1].clone();

    let tcp = tokio::task::spawn_blocking(move || send_stream(&tcp_entry, 7, 2 << 20));
    // Far above 8 Mbit/s, for two seconds.
    let blaster = std::thread::spawn(move || {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut d = vec![0u8; 1400];
        let started = Instant::now();
        let mut sent = 0u64;
        while started.elapsed() < Duration::from_secs(2) {
            d[..8].copy_from_slice(&sent.to_le_bytes());
            if s.send_to(&d, udp_entry).is_ok() {
                sent += 1;
            }
            if sent % 64 == 0 {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        (s, sent)
    });
    let sink_thread = std::thread::spawn(move || {
        let got = drain(&sink, Duration::from_secs(3));
        (sink, got)
    });
    let (blaster_socket, sent) = blaster.join().unwrap();
    let (sink, got) = sink_thread.join().unwrap();
    let sent_bytes = tcp.await.unwrap();
    assert_eq!(
        tcp_receiver.next(Duration::from_secs(30)),
        sent_bytes,
        "the TCP stream arrived whole"
    );

    let s = status_of(&p.i, &p.outbound.uid).await;
    assert!(s.udp_dropped > 0, "nothing dropped of {sent} sent: {s:?}");
    assert!((got.len() as u64) < sent, "{} of {sent} arrived", got.len());
    assert!(s.udp_datagrams_to_target + s.udp_dropped <= sent);
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "what arrived is in order"
    );
    eprintln!(
        "offered {sent} datagrams in 2 s; {} arrived; {} dropped at the gateway",
        got.len(),
        s.udp_dropped
    );

    // No stall: once the burst is gone, the same flow carries new datagrams.
    let mut d = vec![0u8; 100];
    for k in 0..20u64 {
        d[..8].copy_from_slice(&(1_000_000_000 + k).to_le_bytes());
        blaster_socket.send_to(&d, udp_entry).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    let after = drain(&sink, Duration::from_secs(3));
    let fresh: Vec<u64> = after.into_iter().filter(|&q| q >= 1_000_000_000).collect();
    assert_eq!(
        fresh,
        (0..20).map(|k| 1_000_000_000 + k).collect::<Vec<_>>()
    );
    let s2 = status_of(&p.i, &p.outbound.uid).await;
    assert_eq!(s2.udp_flows_total, 1, "the same flow: {s2:?}");
}

/// A TLS data connection to `addr` presenting `uid` with `flags`; after an
/// accepted answer, one UDP frame. True when it was accepted.
fn present(addr: &str, ca: &std::path::Path, uid: &str, flags: u8, index: u16) -> bool {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"scistream-data/1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let preamble = scistream_protocol::preamble::Preamble {
        flags,
        conn_index: index,
        uid: uid.into(),
        origin: None,
    }
    .encode();
    use std::io::{Read, Write};
    if tls.write_all(&preamble).and_then(|()| tls.flush()).is_err() {
        return false;
    }
    let mut answer = [0u8; 1];
    let accepted = matches!(tls.read(&mut answer), Ok(1) if answer[0] == scistream_protocol::preamble::ACCEPTED);
    // Whatever the answer, a frame follows (a refused one must go nowhere).
    let mut frame = scistream_protocol::datagram::header(16).to_vec();
    frame.extend_from_slice(&0xfeed_u64.to_le_bytes());
    frame.extend_from_slice(&[1; 8]);
    let _ = tls.write_all(&frame).and_then(|()| tls.flush());
    std::thread::sleep(Duration::from_millis(200));
    accepted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_without_a_valid_session_is_forwarded() {
    use scistream_protocol::preamble::{FLAG_TLS, FLAG_UDP};
    let pki = Pki::new();
    let sink = udp_socket(0);
    let port = sink.local_addr().unwrap().port();
    // A TCP-only session, and a UDP one, to the same receiver port.
    let tcp_only = tunnel(&pki, port, &udp_options(Protocol::Tcp, 1, 0), &[]).await;
    let udp_in = scistream_client::inbound_request(
        &tcp_only.h,
        "127.0.0.1",
        &[port],
        &udp_options(Protocol::Udp, 1, 0),
    )
    .await
    .unwrap();
    let ca = pki.ca.clone();
    let tcp_listener = tcp_only.inbound.listeners[0].clone();
    let udp_listener = udp_in.listeners[0].clone();
    let (tcp_uid, udp_uid) = (tcp_only.inbound.uid.clone(), udp_in.uid.clone());
    let refused = tokio::task::spawn_blocking(move || {
        let wrong = scistream_client::tunnel::new_uid();
        [
            // A UDP flow for a TCP-only session, with its right uid.
            present(&tcp_listener, &ca, &tcp_uid, FLAG_TLS | FLAG_UDP, 0),
            // A UDP flow with a uid that is not the listener's session.
            present(&udp_listener, &ca, &wrong, FLAG_TLS | FLAG_UDP, 0),
            // The right uid at the wrong connection index.
            present(&udp_listener, &ca, &udp_uid, FLAG_TLS | FLAG_UDP, 1),
            // A TCP stream for a UDP-only session.
            present(&udp_listener, &ca, &udp_uid, FLAG_TLS, 0),
        ]
    })
    .await
    .unwrap();
    assert_eq!(refused, [false; 4], "every one refused");
    // Datagrams straight at the inbound gateway's listener ports, and at
    // the outbound listener of the TCP-only session.
    let stray = UdpSocket::bind("127.0.0.1:0").unwrap();
    for to in [
        &tcp_only.inbound.listeners[0],
        &udp_in.listeners[0],
        &tcp_only.outbound.listeners[0],
    ] {
        let _ = stray.send_to(&0xbad_u64.to_le_bytes(), to.as_str());
    }
    let arrived = drain(&sink, Duration::from_secs(1));
    assert!(
        arrived.is_empty(),
        "forwarded without a valid session: {arrived:x?}"
    );
    let s = status_of(&tcp_only.h, &udp_in.uid).await;
    assert!(s.rejected >= 3, "{s:?}");
    assert_eq!(s.udp_datagrams_to_target, 0);

    // The control: the same frame with the right uid and index goes through.
    let (ca, udp_listener, udp_uid) = (
        pki.ca.clone(),
        udp_in.listeners[0].clone(),
        udp_in.uid.clone(),
    );
    let ok = tokio::task::spawn_blocking(move || {
        present(&udp_listener, &ca, &udp_uid, FLAG_TLS | FLAG_UDP, 0)
    })
    .await
    .unwrap();
    assert!(ok);
    assert_eq!(drain(&sink, Duration::from_secs(2)), vec![0xfeed]);
    drop(tcp_only.inst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_flows_expire_and_the_next_datagram_opens_a_new_one() {
    let pki = Pki::new();
    let sink = udp_socket(0);
    let port = sink.local_addr().unwrap().port();
    let p = tunnel(
        &pki,
        port,
        &udp_options(Protocol::Udp, 1, 0),
        &["--udp-idle", "1s"],
    )
    .await;
    let entry: SocketAddr = p.outbound.listeners[0].parse().unwrap();
    let sender = udp_socket(0);
    sender.send_to(&1u64.to_le_bytes(), entry).unwrap();
    assert_eq!(drain(&sink, Duration::from_secs(2)), vec![1]);
    // drain waited 2 s, past the idle time; give the sweep a moment more.
    let mut s = status_of(&p.i, &p.outbound.uid).await;
    for _ in 0..50 {
        if s.udp_flows_open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        s = status_of(&p.i, &p.outbound.uid).await;
    }
    assert_eq!((s.udp_flows_open, s.udp_flows_expired), (0, 1), "{s:?}");
    let mut h = status_of(&p.h, &p.inbound.uid).await;
    for _ in 0..50 {
        if h.udp_flows_open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        h = status_of(&p.h, &p.inbound.uid).await;
    }
    assert_eq!(
        h.udp_flows_open, 0,
        "the inbound side's flow ended too: {h:?}"
    );
    assert_eq!(h.conns_open, 0, "with its connection: {h:?}");
    sender.send_to(&2u64.to_le_bytes(), entry).unwrap();
    assert_eq!(drain(&sink, Duration::from_millis(1500)), vec![2]);
    let s = status_of(&p.i, &p.outbound.uid).await;
    assert_eq!(s.udp_flows_total, 2, "{s:?}");
}

/// Kills `gw`'s s2ds and waits until s2cs has a new one and handed it the sessions.
fn replace_s2ds(gw: &Gw) {
    let s2cs = gw.gw.pid().unwrap();
    let old = scistream_testkit::s2ds_pid(s2cs);
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(old as i32).unwrap(),
        rustix::process::Signal::KILL,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = gw.log();
        if let Some(at) = log.rfind("data plane ready pid=") {
            let pid: u32 = log[at + "data plane ready pid=".len()..]
                .split(' ')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(old);
            // The sessions are handed again next; senders retry meanwhile.
            if pid != old {
                return;
            }
        }
        assert!(Instant::now() < deadline, "no new s2ds after 30 s:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends a datagram every 100 ms until one arrives (at most 15 s).
fn gets_through(sender: &UdpSocket, entry: SocketAddr, sink: &UdpSocket, seq: u64) -> bool {
    sink.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 64];
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let _ = sender.send_to(&seq.to_le_bytes(), entry);
        if let Ok(n) = sink.recv(&mut buf) {
            if n == 8 && u64::from_le_bytes(buf[..8].try_into().unwrap()) == seq {
                return true;
            }
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_goes_on_after_either_data_plane_is_replaced() {
    let pki = Pki::new();
    let sink = udp_socket(0);
    let port = sink.local_addr().unwrap().port();
    let p = tunnel(&pki, port, &udp_options(Protocol::Udp, 1, 0), &[]).await;
    let entry: SocketAddr = p.outbound.listeners[0].parse().unwrap();
    let sender = udp_socket(0);
    assert!(gets_through(&sender, entry, &sink, 1));
    // The instrument side's s2ds: the new one gets the same UDP socket.
    replace_s2ds(&p.inst);
    assert!(
        gets_through(&sender, entry, &sink, 2),
        "after the instrument side's s2ds was replaced"
    );
    // The HPC side's: the flow's connection breaks; the next one is opened.
    replace_s2ds(&p.hpc);
    assert!(
        gets_through(&sender, entry, &sink, 3),
        "after the HPC side's s2ds was replaced"
    );
    let s = status_of(&p.i, &p.outbound.uid).await;
    assert!(s.udp_flows_total >= 2, "a new flow after the break: {s:?}");
}

fn gateway_options(
    pki: &Pki,
    name: &str,
    dir: &std::path::Path,
) -> scistream_local::gateway::GatewayOptions {
    let (cert, key) = pki.gateway(name);
    scistream_local::gateway::GatewayOptions {
        s2cs_bin: scistream_testkit::bin("s2cs"),
        listener_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        port_range: scistream_testkit::port_range(8),
        tls: Some((cert, key)),
        state_dir: dir.join(format!("{name}-state")),
        log: Some(dir.join(format!("{name}.log"))),
        extra_args: vec![format!("--peer-ca={}", pki.ca.display())],
    }
}

fn start_gen(
    o: &scistream_local::gateway::GatewayOptions,
    n: usize,
) -> scistream_local::gateway::LocalGateway {
    let mut o = o.clone();
    o.log = o.log.map(|l| l.with_extension(format!("{n}.log")));
    scistream_local::gateway::LocalGateway::start(&o).unwrap()
}

fn log_of(gw: &scistream_local::gateway::LocalGateway) -> String {
    std::fs::read_to_string(gw.log.as_ref().unwrap()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_sessions_survive_s2cs_restarts_with_and_without_their_s2ds() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (hpc_o, inst_o) = (
        gateway_options(&pki, "hpc", dir.path()),
        gateway_options(&pki, "inst", dir.path()),
    );
    let sink = udp_socket(0);
    let port = sink.local_addr().unwrap().port();
    let hpc1 = start_gen(&hpc_o, 1);
    let inst1 = start_gen(&inst_o, 1);
    let trust = Trust::Root(pki.ca.clone());
    let o = udp_options(Protocol::Udp, 1, 0);
    let (uid, entry) = {
        let h = scistream_client::connect(&hpc1.control(), &trust, Auth::none())
            .await
            .unwrap();
        let i = scistream_client::connect(&inst1.control(), &trust, Auth::none())
            .await
            .unwrap();
        let inbound = scistream_client::inbound_request(&h, "127.0.0.1", &[port], &o)
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
        (
            inbound.uid,
            outbound.listeners[0].parse::<SocketAddr>().unwrap(),
        )
    };
    let sender = udp_socket(0);
    assert!(gets_through(&sender, entry, &sink, 1));

    // s2cs killed on both gateways; s2ds goes on; the next s2cs takes the
    // sockets back from it, the UDP one included.
    hpc1.signal(rustix::process::Signal::KILL);
    inst1.signal(rustix::process::Signal::KILL);
    for gw in [&hpc1, &inst1] {
        scistream_testkit::wait_dead(gw.pid().unwrap() as i32);
    }
    let hpc2 = start_gen(&hpc_o, 2);
    let inst2 = start_gen(&inst_o, 2);
    for gw in [&hpc2, &inst2] {
        let l = log_of(gw);
        assert!(
            l.contains("session recovered") && l.contains("kept=true"),
            "{l}"
        );
    }
    assert!(
        gets_through(&sender, entry, &sink, 2),
        "after s2cs restarted"
    );
    let i2 = scistream_client::connect(&inst2.control(), &trust, Auth::none())
        .await
        .unwrap();
    assert_eq!(status_of(&i2, &uid).await.protocol, "udp");

    // Everything gone on both gateways: the next start binds the TCP and
    // UDP sockets again from the store.
    drop((hpc2, inst2, hpc1, inst1));
    let hpc3 = start_gen(&hpc_o, 3);
    let inst3 = start_gen(&inst_o, 3);
    let l = log_of(&inst3);
    assert!(
        l.contains("session recovered") && l.contains("kept=false"),
        "{l}"
    );
    assert!(
        gets_through(&sender, entry, &sink, 3),
        "after both daemons were restarted"
    );
    assert!(TcpStream::connect(entry).is_err(), "still UDP only");

    // Released: nothing goes through any more.
    let i3 = scistream_client::connect(&inst3.control(), &trust, Auth::none())
        .await
        .unwrap();
    scistream_client::tunnel::release(&i3, &uid).await.unwrap();
    let _ = sender.send_to(&4u64.to_le_bytes(), entry);
    assert!(drain(&sink, Duration::from_secs(1)).is_empty());
    drop((hpc3, inst3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_datagram_is_forwarded_or_counted_as_dropped() {
    let pki = Pki::new();
    let sink = udp_socket(0);
    let port = sink.local_addr().unwrap().port();
    let p = tunnel(&pki, port, &udp_options(Protocol::Udp, 1, 0), &[]).await;
    let entry: SocketAddr = p.outbound.listeners[0].parse().unwrap();
    let sender = udp_socket(0);
    assert!(gets_through(&sender, entry, &sink, 0));
    let before = status_of(&p.i, &p.outbound.uid).await;
    // The instrument side's s2ds stopped: its UDP socket's buffer fills and
    // the kernel drops the rest of a burst.
    let s2ds = scistream_testkit::s2ds_pid(p.inst.gw.pid().unwrap());
    let pid = rustix::process::Pid::from_raw(s2ds as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
    let d = vec![0u8; 1400];
    let mut sent = 0u64;
    for _ in 0..20_000 {
        if sender.send_to(&d, entry).is_ok() {
            sent += 1;
        }
    }
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
    let arrived = drain(&sink, Duration::from_secs(3)).len() as u64;
    let s = status_of(&p.i, &p.outbound.uid).await;
    let forwarded = s.udp_datagrams_to_target - before.udp_datagrams_to_target;
    let queue = s.udp_dropped - before.udp_dropped;
    let kernel = s.udp_kernel_dropped - before.udp_kernel_dropped;
    eprintln!(
        "sent {sent}: {forwarded} forwarded, {queue} dropped (queue), {kernel} dropped (kernel); {arrived} arrived"
    );
    assert!(kernel > 0, "the kernel dropped none of {sent}: {s:?}");
    assert_eq!(
        forwarded + queue + kernel,
        sent,
        "every datagram accounted for"
    );
    // (The test's own sink may overflow under load: not the gateway's to count.)
    assert!(
        arrived > 0 && arrived <= forwarded,
        "{arrived} arrived of {forwarded}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_runs_over_ipv6_too() {
    let Ok(sink) = UdpSocket::bind("[::1]:0") else {
        eprintln!("skipped: no IPv6 loopback here");
        return;
    };
    sink.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let port = sink.local_addr().unwrap().port();
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let v6 = |name: &str| {
        let mut o = gateway_options(&pki, name, dir.path());
        o.tls = Some(pki.gateway_for(name, &["localhost", "::1"]));
        o.listener_ip = std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST);
        scistream_local::gateway::LocalGateway::start(&o).unwrap()
    };
    let (hpc, inst) = (v6("hpc6"), v6("inst6"));
    let trust = Trust::Root(pki.ca.clone());
    let o = udp_options(Protocol::Both, 1, 0);
    // The control services listen on ::1 too.
    let at = |gw: &scistream_local::gateway::LocalGateway| {
        let control = gw.control();
        let port = control.rsplit(':').next().unwrap().to_owned();
        format!("[::1]:{port}")
    };
    let h = scistream_client::connect(&at(&hpc), &trust, Auth::none())
        .await
        .unwrap();
    let i = scistream_client::connect(&at(&inst), &trust, Auth::none())
        .await
        .unwrap();
    let inbound = scistream_client::inbound_request(&h, "::1", &[port], &o)
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
    let entry: SocketAddr = outbound.listeners[0].parse().unwrap();
    assert!(entry.is_ipv6(), "{entry}");
    let sender = UdpSocket::bind("[::1]:0").unwrap();
    for seq in 0..100u64 {
        let d = datagram(seq);
        sender.send_to(&d, entry).unwrap();
        let mut buf = vec![0u8; 65_536];
        let n = sink.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &d[..], "datagram {seq}");
    }
    let s = status_of(&i, &outbound.uid).await;
    assert_eq!(s.udp_datagrams_to_target, 100, "{s:?}");
    drop((hpc, inst));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn senders_beyond_the_flow_limit_are_dropped_and_counted() {
    let pki = Pki::new();
    let sink = udp_socket(0);
    let port = sink.local_addr().unwrap().port();
    let p = tunnel(
        &pki,
        port,
        &udp_options(Protocol::Udp, 1, 0),
        &["--udp-max-flows", "2"],
    )
    .await;
    let entry: SocketAddr = p.outbound.listeners[0].parse().unwrap();
    let (a, b, c) = (udp_socket(0), udp_socket(0), udp_socket(0));
    assert!(gets_through(&a, entry, &sink, 1));
    assert!(gets_through(&b, entry, &sink, 2));
    // A third sender: no flow for it while two are open.
    for _ in 0..10 {
        c.send_to(&3u64.to_le_bytes(), entry).unwrap();
    }
    a.send_to(&4u64.to_le_bytes(), entry).unwrap();
    assert_eq!(
        drain(&sink, Duration::from_secs(1)),
        vec![4],
        "only the open flows go through"
    );
    let s = status_of(&p.i, &p.outbound.uid).await;
    assert_eq!((s.udp_flows_open, s.udp_dropped), (2, 10), "{s:?}");
}
