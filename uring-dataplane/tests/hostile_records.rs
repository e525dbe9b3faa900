//! Hostile TLS records at a real inbound `s2ds`, from a peer that completed
//! a valid handshake and preamble: a flipped bit in header, ciphertext and
//! tag, an oversized record, a wrong outer type, a replayed and a
//! reordered record, data after close_notify, a record cut short, a flood
//! of empty records, a handshake message other than KeyUpdate, a KeyUpdate
//! with more after it in its record.
//!
//! The records are written by this test with *ring*'s AES-128-GCM from
//! the secrets rustls's client handshake hands out, not by the gateway's
//! record code. For each case: the right fatal alert comes back (or none,
//! where TLS wants none), the connection closes, the receiver gets exactly
//! the valid record sent before the hostile one and not one byte more, the
//! session's error counter and last failure say so, a warning is logged, and
//! a second session's stream on the same gateway is untouched.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{DataPlane, add_channel_session, stats};
use ring::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::ConnectionTrafficSecrets;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use scistream_protocol::Role;
use scistream_protocol::handoff::DataChannel;
use scistream_protocol::preamble::{ACCEPTED, Preamble};
use scistream_testkit::{EchoServer, Pki};

const UID: &str = "0e8f6a2b-9c4d-4b1e-a3f5-6d7c8b9a0e1f";
const BYSTANDER: &str = "5c2d8e1f-7a3b-4c9d-8e0f-1a2b3c4d5e6f";

/// One direction's AES-128-GCM record writer (or reader), as RFC 8446 §5.2 says.
struct Records {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
}

impl Records {
    fn new(secrets: ConnectionTrafficSecrets, seq: u64) -> Records {
        let ConnectionTrafficSecrets::Aes128Gcm { key, iv } = secrets else {
            panic!("the test forces TLS_AES_128_GCM_SHA256");
        };
        Records {
            key: LessSafeKey::new(UnboundKey::new(&AES_128_GCM, key.as_ref()).unwrap()),
            iv: iv.as_ref().try_into().unwrap(),
            seq,
        }
    }

    fn nonce(&mut self) -> Nonce {
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        self.seq += 1;
        Nonce::assume_unique_for_key(n)
    }

    /// A whole record: `payload` of inner type `content`.
    fn seal(&mut self, content: u8, payload: &[u8]) -> Vec<u8> {
        let mut inner = payload.to_vec();
        inner.push(content);
        let len = (inner.len() + 16) as u16;
        let header = [0x17, 3, 3, (len >> 8) as u8, len as u8];
        let nonce = self.nonce();
        self.key
            .seal_in_place_append_tag(nonce, Aad::from(header), &mut inner)
            .unwrap();
        [header.to_vec(), inner].concat()
    }

    /// Opens the record at the start of `wire`: (inner type, payload).
    fn open(&mut self, wire: &[u8]) -> Option<(u8, Vec<u8>)> {
        let len = usize::from(u16::from_be_bytes([*wire.get(3)?, *wire.get(4)?]));
        let header: [u8; 5] = wire[..5].try_into().ok()?;
        let mut body = wire.get(5..5 + len)?.to_vec();
        let nonce = self.nonce();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(header), &mut body)
            .ok()?;
        let ty = *plain.last()?;
        Some((ty, plain[..plain.len() - 1].to_vec()))
    }
}

/// A peer gateway past its handshake and preamble, writing its own records.
struct Peer {
    sock: TcpStream,
    tx: Records,
    rx: Records,
}

/// A rustls client over TLS 1.3 (AES-128-GCM only, with its secrets
/// extractable, when `own_records`), past the preamble for `uid`.
fn accepted(
    addr: SocketAddr,
    pki: &Pki,
    uid: &str,
    own_records: bool,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&pki.ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut provider = rustls::crypto::ring::default_provider();
    if own_records {
        provider.cipher_suites = vec![rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256];
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"scistream-data/1".to_vec()];
    config.enable_secret_extraction = own_records;
    let conn =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("127.0.0.1").unwrap())
            .unwrap();
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut s = rustls::StreamOwned::new(conn, sock);
    let preamble = Preamble {
        flags: 1,
        conn_index: 0,
        uid: uid.into(),
        origin: None,
    };
    s.write_all(&preamble.encode()).unwrap();
    s.flush().unwrap();
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer).unwrap();
    assert_eq!(answer[0], ACCEPTED);
    s
}

fn connect(addr: SocketAddr, pki: &Pki) -> Peer {
    let rustls::StreamOwned { conn, sock } = accepted(addr, pki, UID, true);
    let secrets = conn.dangerous_extract_secrets().unwrap();
    Peer {
        sock,
        tx: Records::new(secrets.tx.1, secrets.tx.0),
        rx: Records::new(secrets.rx.1, secrets.rx.0),
    }
}

impl Peer {
    fn send(&mut self, bytes: &[u8]) {
        // The gateway may already have closed: what it received is checked.
        let _ = self.sock.write_all(bytes);
    }

    /// What the gateway sends back until it closes: the alert it sent, if
    /// any (0 is close_notify).
    fn alert(&mut self) -> Option<u8> {
        let mut wire = Vec::new();
        let _ = self.sock.read_to_end(&mut wire);
        match self.rx.open(&wire) {
            Some((21, body)) if body == [2, body[1]] || body == [1, 0] => Some(body[1]),
            Some(other) => panic!("the gateway answered {other:?}, not a fatal alert"),
            None if wire.is_empty() => None,
            None => panic!("the gateway answered {} bytes that do not open", wire.len()),
        }
    }
}

/// Takes connections and keeps what each brought, in order of arrival.
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let keep = got.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let keep = keep.clone();
                std::thread::spawn(move || {
                    let mut all = Vec::new();
                    let _ = s.read_to_end(&mut all);
                    keep.lock().unwrap().push(all);
                });
            }
        });
        Receiver { addr, got }
    }

    /// What the `n`th connection brought, once it has ended.
    fn nth(&self, n: usize) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(v) = self.got.lock().unwrap().get(n) {
                return v.clone();
            }
            assert!(
                Instant::now() < deadline,
                "connection {n} never reached the receiver's end"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

const CLOSE_NOTIFY: u8 = 0;
const UNEXPECTED_MESSAGE: u8 = 10;
const BAD_RECORD_MAC: u8 = 20;
const RECORD_OVERFLOW: u8 = 22;

struct Case {
    name: &'static str,
    /// What the peer sends after its one valid record.
    attack: fn(&mut Peer) -> Vec<u8>,
    /// The alert expected back.
    alert: Option<u8>,
    /// Bytes beyond the valid record the receiver may get (a genuine record
    /// sent before the hostile copy of it).
    also_delivered: &'static [u8],
}

fn flip(mut record: Vec<u8>, at: usize) -> Vec<u8> {
    record[at] ^= 0x01;
    record
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "a flipped bit in the header",
            attack: |p| flip(p.tx.seal(23, b"EVIL"), 2),
            alert: Some(UNEXPECTED_MESSAGE),
            also_delivered: b"",
        },
        Case {
            name: "a flipped bit in the ciphertext",
            attack: |p| flip(p.tx.seal(23, b"EVIL"), 6),
            alert: Some(BAD_RECORD_MAC),
            also_delivered: b"",
        },
        Case {
            name: "a flipped bit in the tag",
            attack: |p| {
                let r = p.tx.seal(23, b"EVIL");
                let last = r.len() - 1;
                flip(r, last)
            },
            alert: Some(BAD_RECORD_MAC),
            also_delivered: b"",
        },
        Case {
            name: "a record longer than 2^14+256",
            attack: |p| {
                let r = p.tx.seal(23, &vec![b'X'; (1 << 14) + 256]);
                assert!(r.len() - 5 > (1 << 14) + 256);
                r
            },
            alert: Some(RECORD_OVERFLOW),
            also_delivered: b"",
        },
        Case {
            name: "a wrong outer content type",
            attack: |p| {
                let mut r = p.tx.seal(23, b"EVIL");
                r[0] = 0x16;
                r
            },
            alert: Some(UNEXPECTED_MESSAGE),
            also_delivered: b"",
        },
        Case {
            name: "a replayed record",
            attack: |p| {
                let r = p.tx.seal(23, b"ONCE");
                [r.clone(), r].concat()
            },
            alert: Some(BAD_RECORD_MAC),
            also_delivered: b"ONCE",
        },
        Case {
            name: "two records in the wrong order",
            attack: |p| {
                let first = p.tx.seal(23, b"FIRST");
                let second = p.tx.seal(23, b"SECOND");
                [second, first].concat()
            },
            alert: Some(BAD_RECORD_MAC),
            also_delivered: b"",
        },
        Case {
            name: "data after close_notify",
            attack: |p| [p.tx.seal(21, &[1, 0]), p.tx.seal(23, b"AFTER")].concat(),
            // Ignored (RFC 8446 §6.1), and the stream ends as after any close.
            alert: Some(CLOSE_NOTIFY),
            also_delivered: b"",
        },
        Case {
            name: "a record cut short",
            attack: |p| {
                let r = p.tx.seal(23, b"HALF A RECORD");
                r[..r.len() / 2].to_vec()
            },
            alert: None,
            also_delivered: b"",
        },
        Case {
            name: "a flood of empty records",
            attack: |p| (0..100).flat_map(|_| p.tx.seal(23, b"")).collect(),
            alert: Some(UNEXPECTED_MESSAGE),
            also_delivered: b"",
        },
        Case {
            name: "a handshake message other than KeyUpdate",
            // A ClientHello's header with an empty body, after the handshake.
            attack: |p| p.tx.seal(22, &[1, 0, 0, 0]),
            alert: Some(UNEXPECTED_MESSAGE),
            also_delivered: b"",
        },
        Case {
            name: "a KeyUpdate with more after it in its record",
            attack: |p| p.tx.seal(22, &[24, 0, 0, 1, 0, 24, 0, 0, 1, 0]),
            alert: Some(UNEXPECTED_MESSAGE),
            also_delivered: b"",
        },
    ]
}

fn s(p: &std::path::Path) -> String {
    p.display().to_string()
}

#[test]
fn hostile_records_end_in_an_alert_with_nothing_forwarded() {
    for engine in common::engines("hostile_records_end_in_an_alert_with_nothing_forwarded") {
        let pki = Pki::new();
        let (c, k) = pki.gateway("hpc");
        let engine = format!("--engine={engine}");
        let mut gw = DataPlane::start(&[
            "--workers",
            "1",
            "--data-cert",
            &s(&c),
            "--data-key",
            &s(&k),
            "--peer-ca",
            &s(&pki.ca),
            &engine,
        ]);
        let receiver = Receiver::start();
        let tls_in = DataChannel::FromPeer {
            tls: true,
            client_cert: false,
        };
        let (listeners, _fds) = add_channel_session(
            &mut gw,
            UID,
            Role::Prod,
            vec![receiver.addr],
            tls_in.clone(),
        );
        // Another session on the same gateway, streaming meanwhile.
        let echo = EchoServer::start();
        let (other, _other_fds) =
            add_channel_session(&mut gw, BYSTANDER, Role::Prod, vec![echo.addr], tls_in);
        let mut bystander = bystander(other[0], &pki);
        bystander.round_trip();

        for (i, case) in cases().into_iter().enumerate() {
            let mut peer = connect(listeners[0], &pki);
            let good = format!("GOOD-{i}");
            let record = peer.tx.seal(23, good.as_bytes());
            peer.send(&record);
            let attack = (case.attack)(&mut peer);
            peer.send(&attack);
            let _ = peer.sock.shutdown(Shutdown::Write);
            let alert = peer.alert();
            assert_eq!(alert, case.alert, "{engine} {}: {}", case.name, gw.log());
            let delivered = receiver.nth(i);
            let want = [good.as_bytes(), case.also_delivered].concat();
            assert_eq!(
                String::from_utf8_lossy(&delivered),
                String::from_utf8_lossy(&want),
                "{engine} {}: the receiver got more (or less) than the valid records",
                case.name
            );
            bystander.round_trip();
        }

        let hostile = stats(&mut gw)
            .into_iter()
            .find(|s| s.key.uid == UID)
            .unwrap();
        let violations = cases()
            .iter()
            .filter(|c| c.alert.is_some_and(|a| a != CLOSE_NOTIFY))
            .count() as u64;
        assert!(
            hostile.errors >= violations,
            "{engine}: {} errors counted for {violations} violations",
            hostile.errors
        );
        let failure = hostile.last_failure.expect("the last failure is kept");
        assert!(failure.reason.contains("broke TLS"), "{}", failure.reason);
        let log = gw.log();
        assert!(log.contains("data connection aborted"), "{log}");
        assert!(!log.contains("panicked"), "{log}");
        assert!(
            !log.contains("EVIL") && !log.contains("AFTER"),
            "payload bytes in the log"
        );
        bystander.round_trip();
    }
}

/// A well-behaved peer on another session (rustls both ends).
struct Bystander {
    stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    n: u32,
}

fn bystander(addr: SocketAddr, pki: &Pki) -> Bystander {
    Bystander {
        stream: accepted(addr, pki, BYSTANDER, false),
        n: 0,
    }
}

impl Bystander {
    fn round_trip(&mut self) {
        self.n += 1;
        let msg: Vec<u8> = (0..64 << 10).map(|i: u32| (i * 7 + self.n) as u8).collect();
        self.stream.write_all(&msg).unwrap();
        self.stream.flush().unwrap();
        let mut back = vec![0u8; msg.len()];
        self.stream.read_exact(&mut back).unwrap();
        assert!(back == msg, "the other session's stream changed");
    }
}
