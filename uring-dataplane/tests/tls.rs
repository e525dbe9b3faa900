//! The encrypted, authenticated data channel between two real `s2ds`
//! (inbound and outbound gateway) driven over their handoff sockets: bytes
//! intact across many key updates, the session capability enforced, every
//! kind of stranger refused without disturbing the session, mutual TLS, an
//! untrusted inbound certificate, plaintext/TLS mismatches named in the logs.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{DataPlane, add_channel_session, stats};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use scistream_protocol::Role;
use scistream_protocol::handoff::DataChannel;
use scistream_protocol::preamble::{ACCEPTED, Preamble, REFUSED, Refusal};
use scistream_testkit::{DigestReceiver, EchoServer, Pki, send_stream};

const UID: &str = "9d4b2f6e-1c3a-4e5f-8a7b-0c1d2e3f4a5b";

/// How the two gateways of a test pick their crypto providers.
#[derive(Clone, Copy)]
enum Providers {
    /// Both the same, each provider in turn.
    Forced,
    /// One ring, the other AWS-LC (and the other way round on the other engine).
    Mixed,
}

thread_local! {
    /// (engine, inbound --crypto, outbound --crypto) of the run in progress.
    static VARIANT: std::cell::Cell<(&'static str, &'static str, &'static str)> =
        const { std::cell::Cell::new(("epoll", "ring", "ring")) };
}

/// Runs `body` on every engine this host has, with each crypto provider
/// forced (or mixed between the gateways): every TLS scenario on each path.
fn each_variant(test: &str, providers: Providers, body: impl Fn()) {
    for (i, engine) in common::engines(test).into_iter().enumerate() {
        let combos: &[(&'static str, &'static str)] = match providers {
            Providers::Forced => &[("ring", "ring"), ("aws-lc", "aws-lc")],
            Providers::Mixed if i % 2 == 0 => &[("ring", "aws-lc")],
            Providers::Mixed => &[("aws-lc", "ring")],
        };
        for &(inbound, outbound) in combos {
            eprintln!("{test}: engine {engine}, crypto inbound {inbound}, outbound {outbound}");
            VARIANT.with(|v| v.set((engine, inbound, outbound)));
            body();
        }
    }
}

struct Gateways {
    inbound: DataPlane,
    outbound: DataPlane,
    /// Outbound listeners: where the instrument connects.
    entries: Vec<SocketAddr>,
    /// Inbound listeners: where the outbound gateway connects.
    inbound_listeners: Vec<SocketAddr>,
    _fds: Vec<OwnedFd>,
}

fn s(p: &std::path::Path) -> String {
    p.display().to_string()
}

/// An inbound and an outbound gateway for session `UID`, `n` connections to `receiver`.
fn gateways(
    pki: &Pki,
    n: usize,
    receiver: SocketAddr,
    tls: (bool, bool),
    inbound_extra: &[&str],
    outbound_extra: &[&str],
) -> Gateways {
    let (hc, hk) = pki.gateway("hpc");
    let (ic, ik) = pki.gateway("inst");
    let ca = s(&pki.ca);
    let mut in_args = vec![
        "--workers",
        "1",
        "--data-cert",
        hc.to_str().unwrap(),
        "--data-key",
        hk.to_str().unwrap(),
        "--peer-ca",
        &ca,
    ];
    in_args.extend_from_slice(inbound_extra);
    let (engine, crypto_in, crypto_out) = VARIANT.with(|v| v.get());
    let (engine, crypto_in, crypto_out) = (
        format!("--engine={engine}"),
        format!("--crypto={crypto_in}"),
        format!("--crypto={crypto_out}"),
    );
    in_args.extend([engine.as_str(), crypto_in.as_str()]);
    let mut inbound = DataPlane::start(&in_args);
    let (inbound_listeners, mut fds) = add_channel_session(
        &mut inbound,
        UID,
        Role::Prod,
        vec![receiver; n],
        DataChannel::FromPeer {
            tls: tls.0,
            client_cert: false,
        },
    );
    let peer_ca = outbound_extra
        .iter()
        .position(|a| *a == "--peer-ca")
        .map(|i| outbound_extra[i + 1].to_owned())
        .unwrap_or(ca);
    let mut out_args = vec![
        "--workers",
        "1",
        "--data-cert",
        ic.to_str().unwrap(),
        "--data-key",
        ik.to_str().unwrap(),
        "--peer-ca",
        &peer_ca,
    ];
    out_args.extend(
        outbound_extra
            .iter()
            .filter(|a| **a != "--peer-ca" && **a != peer_ca.as_str()),
    );
    out_args.extend([engine.as_str(), crypto_out.as_str()]);
    let mut outbound = DataPlane::start(&out_args);
    let channel = DataChannel::ToPeer { tls: tls.1 };
    let (entries, more) = add_channel_session(
        &mut outbound,
        UID,
        Role::Cons,
        inbound_listeners.clone(),
        channel,
    );
    fds.extend(more);
    Gateways {
        inbound,
        outbound,
        entries,
        inbound_listeners,
        _fds: fds,
    }
}

/// A rustls client to an inbound listener, trusting `ca`, with an optional client certificate.
fn tls_client(
    addr: SocketAddr,
    ca: &std::path::Path,
    client_cert: Option<(PathBuf, PathBuf)>,
) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    tls_client_alpn(addr, ca, client_cert, Some(b"scistream-data/1"))
}

/// [`tls_client`] offering `alpn` (or none).
fn tls_client_alpn(
    addr: SocketAddr,
    ca: &std::path::Path,
    client_cert: Option<(PathBuf, PathBuf)>,
    alpn: Option<&[u8]>,
) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client_cert {
        Some((c, k)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(c)
                    .unwrap()
                    .map(|c| c.unwrap())
                    .collect(),
                PrivateKeyDer::from_pem_file(k).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.into_iter().map(|a| a.to_vec()).collect();
    let conn =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("127.0.0.1").unwrap())
            .unwrap();
    let sock = TcpStream::connect(addr)?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut stream = rustls::StreamOwned::new(conn, sock);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// Sends a preamble and returns the answer bytes (empty if the connection just closed).
fn offer(stream: &mut impl ReadWrite, preamble: &[u8]) -> Vec<u8> {
    if stream
        .write_all(preamble)
        .and_then(|()| stream.flush())
        .is_err()
    {
        return Vec::new();
    }
    let mut answer = [0u8; 2];
    let mut got = Vec::new();
    while got.len() < 2 {
        match stream.read(&mut answer[got.len()..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&answer[got.len()..got.len() + n]),
        }
        if got.first() == Some(&ACCEPTED) {
            break;
        }
    }
    got
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn preamble(uid: &str, index: u16) -> Vec<u8> {
    preamble_flagged(1, uid, index)
}

fn preamble_flagged(flags: u8, uid: &str, index: u16) -> Vec<u8> {
    Preamble {
        flags,
        conn_index: index,
        uid: uid.into(),
        origin: None,
    }
    .encode()
}

#[test]
fn a_gigabyte_arrives_intact_across_key_updates() {
    each_variant(
        "a_gigabyte_arrives_intact_across_key_updates",
        Providers::Mixed,
        || {
            let pki = Pki::new();
            let receiver = DigestReceiver::start();
            // A key update every 2048 records (32 MiB): 32 of them in each gateway's sending direction.
            let mut g = gateways(
                &pki,
                1,
                receiver.addr,
                (true, true),
                &["--rekey-records", "2048"],
                &["--rekey-records", "2048"],
            );
            let sent = send_stream(&g.entries[0].to_string(), 5, 1 << 30);
            assert_eq!(
                receiver.next(Duration::from_secs(120)),
                sent,
                "1 GiB intact through TLS"
            );
            let out = &stats(&mut g.outbound)[0];
            assert_eq!(out.bytes_to_target, 1 << 30);
            assert!(
                out.key_updates >= 30,
                "the outbound gateway refreshed its keys: {out:?}"
            );
            let inb = &stats(&mut g.inbound)[0];
            assert_eq!((inb.bytes_to_target, inb.rejected), (1 << 30, 0));
        },
    );
}

#[test]
fn both_directions_flow_and_the_mode_is_reported() {
    each_variant(
        "both_directions_flow_and_the_mode_is_reported",
        Providers::Forced,
        || {
            let pki = Pki::new();
            let echo = EchoServer::start();
            let mut g = gateways(&pki, 2, echo.addr, (true, true), &[], &[]);
            for e in &g.entries {
                let mut c = TcpStream::connect(e).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                c.write_all(b"through TLS and back").unwrap();
                let mut back = [0u8; 20];
                c.read_exact(&mut back).unwrap();
                assert_eq!(&back, b"through TLS and back");
                let st = stats(&mut g.outbound);
                assert!(
                    st[0].connections.iter().all(|c| c.mode == "tls-user"),
                    "{st:?}"
                );
            }
        },
    );
}

#[test]
fn strangers_are_refused_and_the_session_keeps_working() {
    each_variant(
        "strangers_are_refused_and_the_session_keeps_working",
        Providers::Forced,
        || {
            let pki = Pki::new();
            let echo = EchoServer::start();
            let mut g = gateways(
                &pki,
                2,
                echo.addr,
                (true, true),
                &["--handshake-timeout", "1s"],
                &[],
            );
            let target = g.inbound_listeners[0];
            let mut refused = 0;

            // A plaintext client on the TLS listener.
            let mut plain = TcpStream::connect(target).unwrap();
            plain
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            plain.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
            // rustls answers with an alert, then the connection is closed.
            let mut answer = Vec::new();
            let _ = plain.read_to_end(&mut answer);
            assert!(
                answer.first().is_none_or(|b| *b == 0x15),
                "at most a TLS alert: {answer:x?}"
            );
            refused += 1;

            // A TLS client (trusting the right CA) with the wrong uid, and with garbage.
            let mut wrong = tls_client(target, &pki.ca, None).unwrap();
            assert_eq!(
                offer(
                    &mut wrong,
                    &preamble("00000000-0000-4000-8000-000000000000", 0)
                ),
                vec![REFUSED, Refusal::WrongSession as u8]
            );
            refused += 1;
            let mut misrouted = tls_client(target, &pki.ca, None).unwrap();
            assert_eq!(
                offer(&mut misrouted, &preamble(UID, 1)),
                vec![REFUSED, Refusal::WrongSession as u8],
                "right uid, wrong listener"
            );
            refused += 1;
            // A TLS client that offers no ALPN: not a gateway, closed after the handshake.
            let mut no_alpn = tls_client_alpn(target, &pki.ca, None, None).unwrap();
            assert_eq!(offer(&mut no_alpn, &preamble(UID, 0)), Vec::<u8>::new());
            refused += 1;
            let mut garbage = tls_client(target, &pki.ca, None).unwrap();
            assert_eq!(
                offer(&mut garbage, b"S2PA\x01\x00\x00\x00\x03../and more"),
                vec![REFUSED, Refusal::Malformed as u8]
            );
            refused += 1;

            // A client that connects and never finishes its handshake: closed after the 1 s timeout...
            let started = Instant::now();
            let mut silent = TcpStream::connect(target).unwrap();
            silent
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            // ...while a real connection through the tunnel works meanwhile.
            let mut good = TcpStream::connect(g.entries[0]).unwrap();
            good.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            good.write_all(b"ok?").unwrap();
            let mut b = [0u8; 3];
            good.read_exact(&mut b).unwrap();
            assert_eq!(&b, b"ok?");
            assert!(matches!(silent.read(&mut [0u8; 8]), Ok(0) | Err(_)));
            let waited = started.elapsed();
            assert!(
                waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
                "closed after the handshake timeout: {waited:?}"
            );
            refused += 1;

            // The good connection is still up, every refusal was counted and logged without a uid.
            good.write_all(b"yes").unwrap();
            good.read_exact(&mut b).unwrap();
            assert_eq!(&b, b"yes");
            let st = &stats(&mut g.inbound)[0];
            assert_eq!(st.rejected, refused, "{st:?}");
            let log = g.inbound.wait_log("handshake timeout");
            assert!(
                log.contains("wrong session")
                    && log.contains("bad preamble")
                    && log.contains("did not negotiate the data channel's ALPN"),
                "{log}"
            );
            assert!(
                !log.contains("00000000-0000-4000"),
                "the presented uid is never logged"
            );
        },
    );
}

#[test]
fn mutual_tls_refuses_clients_without_a_trusted_certificate() {
    each_variant(
        "mutual_tls_refuses_clients_without_a_trusted_certificate",
        Providers::Forced,
        || {
            let pki = Pki::new();
            let echo = EchoServer::start();
            let mut g = gateways(
                &pki,
                1,
                echo.addr,
                (true, true),
                &["--require-client-cert"],
                &[],
            );
            // The outbound gateway presents its certificate (same CA): works.
            let mut c = TcpStream::connect(g.entries[0]).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            c.write_all(b"mtls").unwrap();
            let mut b = [0u8; 4];
            c.read_exact(&mut b).unwrap();
            assert_eq!(&b, b"mtls");
            // No client certificate, or one from another CA: the handshake fails.
            assert!(
                tls_client(g.inbound_listeners[0], &pki.ca, None)
                    .and_then(|mut s| {
                        s.write_all(&preamble(UID, 0))?;
                        s.read(&mut [0u8; 2])
                    })
                    .is_err_or_zero()
            );
            let stranger = Pki::new();
            let foreign = stranger.gateway("intruder");
            assert!(
                tls_client(g.inbound_listeners[0], &pki.ca, Some(foreign))
                    .and_then(|mut s| {
                        s.write_all(&preamble(UID, 0))?;
                        s.read(&mut [0u8; 2])
                    })
                    .is_err_or_zero()
            );
            let st = &stats(&mut g.inbound)[0];
            assert_eq!(st.rejected, 2, "{st:?}");
            // The log says which certificate, why one was asked, what to change.
            let log = g
                .inbound
                .wait_log("the outbound gateway presented no certificate");
            assert!(log.contains("--require-client-cert"), "{log}");
            let log = g
                .inbound
                .wait_log("the outbound gateway's certificate (subject");
            assert!(log.contains("issued by"), "{log}");
            assert!(log.contains("add the CA that issued it"), "{log}");
        },
    );
}

trait ErrOrZero {
    fn is_err_or_zero(&self) -> bool;
}

impl ErrOrZero for std::io::Result<usize> {
    fn is_err_or_zero(&self) -> bool {
        matches!(self, Err(_) | Ok(0))
    }
}

#[test]
fn an_untrusted_inbound_certificate_is_refused_and_named() {
    each_variant(
        "an_untrusted_inbound_certificate_is_refused_and_named",
        Providers::Forced,
        || {
            let pki = Pki::new();
            let echo = EchoServer::start();
            let stranger = pki.stranger_ca();
            let mut g = gateways(
                &pki,
                1,
                echo.addr,
                (true, true),
                &[],
                &["--peer-ca", stranger.to_str().unwrap()],
            );
            let mut c = TcpStream::connect(g.entries[0]).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let _ = c.write_all(b"secret");
            assert!(
                matches!(c.read(&mut [0u8; 8]), Ok(0) | Err(_)),
                "the instrument's connection is closed"
            );
            let log = g.outbound.wait_log("data connection refused");
            let line = log
                .lines()
                .find(|l| l.contains("data connection refused"))
                .unwrap();
            assert!(
                line.contains(
                    "its certificate is signed by a CA that the trust file does not hold"
                ) && line.contains(&g.inbound_listeners[0].to_string()),
                "names the reason and the peer: {line}"
            );
            assert_eq!(stats(&mut g.outbound)[0].rejected, 1);
            assert_eq!(
                stats(&mut g.inbound)[0].bytes_to_target,
                0,
                "nothing reached the receiver"
            );
        },
    );
}

#[test]
fn plaintext_and_tls_gateways_refuse_each_other_with_a_clear_reason() {
    each_variant(
        "plaintext_and_tls_gateways_refuse_each_other_with_a_clear_reason",
        Providers::Forced,
        || {
            let pki = Pki::new();
            let echo = EchoServer::start();
            // Outbound speaks TLS, inbound runs --data-tls off.
            let g = gateways(&pki, 1, echo.addr, (false, true), &[], &[]);
            let mut c = TcpStream::connect(g.entries[0]).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            assert!(matches!(c.read(&mut [0u8; 8]), Ok(0) | Err(_)));
            g.inbound
                .wait_log("the peer speaks TLS while this gateway runs with --data-tls off");
            g.outbound.wait_log("data connection refused");

            // Outbound plaintext, inbound requires TLS.
            let g = gateways(&pki, 1, echo.addr, (true, false), &[], &[]);
            let mut c = TcpStream::connect(g.entries[0]).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            assert!(matches!(c.read(&mut [0u8; 8]), Ok(0) | Err(_)));
            g.inbound.wait_log("plaintext SciStream preamble");
            let log = g.outbound.wait_log("data connection refused");
            assert!(
                log.contains("it requires TLS while this gateway runs with --data-tls off"),
                "{log}"
            );
        },
    );
}

#[test]
fn a_plaintext_channel_still_checks_the_capability() {
    each_variant(
        "a_plaintext_channel_still_checks_the_capability",
        Providers::Forced,
        || {
            let pki = Pki::new();
            let receiver = DigestReceiver::start();
            let mut g = gateways(&pki, 2, receiver.addr, (false, false), &[], &[]);
            let sent = send_stream(&g.entries[1].to_string(), 9, 64 << 20);
            assert_eq!(receiver.next(Duration::from_secs(60)), sent);
            let out = &stats(&mut g.outbound)[0];
            assert_eq!(
                (out.bytes_to_target, out.rejected),
                (64 << 20, 0),
                "the plaintext channel forwarded it all"
            );
            // A stranger with the wrong uid on the plaintext listener is refused.
            let mut s = TcpStream::connect(g.inbound_listeners[0]).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            assert_eq!(
                offer(&mut s, &preamble_flagged(0, "not-the-uid", 0)),
                vec![REFUSED, Refusal::WrongSession as u8]
            );
            // A preamble whose flags do not match the channel, or carry bits this
            // version does not know, is refused as malformed.
            for flags in [1u8, 0x80] {
                let mut s = TcpStream::connect(g.inbound_listeners[0]).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                assert_eq!(
                    offer(&mut s, &preamble_flagged(flags, "not-the-uid", 0)),
                    vec![REFUSED, Refusal::Malformed as u8],
                    "flags {flags:#x}"
                );
            }
            assert_eq!(stats(&mut g.inbound)[0].rejected, 3);
        },
    );
}

#[test]
fn a_standard_tls_client_interoperates_with_the_record_layer() {
    // rustls's own record layer (buffered API) at one end, ours at the
    // other: the right uid is accepted, data echoes back intact both ways
    // while both ends change keys (rustls every 1 MiB, the gateway every 64
    // records).
    each_variant(
        "a_standard_tls_client_interoperates_with_the_record_layer",
        Providers::Forced,
        || {
            let pki = Pki::new();
            let echo = EchoServer::start();
            let g = gateways(
                &pki,
                1,
                echo.addr,
                (true, true),
                &["--rekey-records", "64", "--rekey-any-suite"],
                &[],
            );
            let (ic, ik) = pki.gateway("inst");
            let mut c = tls_client(g.inbound_listeners[0], &pki.ca, Some((ic, ik))).unwrap();
            assert_eq!(offer(&mut c, &preamble(UID, 0)), vec![ACCEPTED]);
            let chunk: Vec<u8> = (0..1u32 << 20).map(|i| (i * 31 % 251) as u8).collect();
            let mut back = vec![0u8; chunk.len()];
            for _ in 0..8 {
                c.write_all(&chunk).unwrap();
                c.flush().unwrap();
                c.read_exact(&mut back).unwrap();
                assert!(back == chunk, "the echo came back changed");
                c.conn.refresh_traffic_keys().unwrap();
            }
            // A clean close both ways.
            c.conn.send_close_notify();
            c.flush().unwrap();
            let mut rest = Vec::new();
            let _ = c.read_to_end(&mut rest);
            assert!(rest.is_empty());
        },
    );
}
