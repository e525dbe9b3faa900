//! The TLS relay's receive side as a state machine, after a real handshake:
//! an inbound gateway's relay (rustls's handshake, then our record layer)
//! is fed, as if from its peer, optionally some genuine records first
//! (3000 bytes the outbound relay sealed), then arbitrary bytes, optionally
//! followed by end of stream. It must not panic or loop, and what it
//! delivers to its receiver is only what was genuinely sent: a prefix of
//! the 3000 bytes, never a byte of the arbitrary input.
#![no_main]

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use scistream_dataplane::record::{Cipher, Crypto};
use scistream_dataplane::relay::Turn;
use scistream_dataplane::relay::tls::{DEFAULT_REKEY_RECORDS, TlsRelay, TlsSession};
use scistream_dataplane::setup::{Established, Inbound, Outbound, Step};
use scistream_dataplane::tls::{TlsContext, TlsFiles};
use scistream_protocol::preamble::{FLAG_TLS, Preamble};

/// One gateway certificate for the whole run (made once: key generation
/// is slow); its files are read and removed.
fn context() -> &'static TlsContext {
    static CONTEXT: OnceLock<TlsContext> = OnceLock::new();
    CONTEXT.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("scistream-fuzz-relay-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = scistream_local::pki::Ca::new("fuzz CA").unwrap();
        let issued = ca.issue(&["localhost"]).unwrap().write(&dir, "gw").unwrap();
        let ca_path = dir.join("ca.crt");
        scistream_local::pki::write_file(&ca_path, &ca.cert_pem(), false).unwrap();
        let tls = TlsContext::load(&TlsFiles {
            cert: Some(issued.cert),
            key: Some(issued.key),
            peer_ca: Some(ca_path),
            ..TlsFiles::default()
        })
        .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        tls
    })
}

fn pair() -> (OwnedFd, OwnedFd) {
    let (a, b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    (a.into(), b.into())
}

fn relay(est: Established, early: Vec<u8>, tls_on_client: bool) -> TlsRelay {
    let crypto = Crypto::Ring;
    let cipher = |(seq, s)| Cipher::new(crypto, s, seq).unwrap();
    let session = TlsSession {
        tx: cipher(est.secrets.tx),
        rx: cipher(est.secrets.rx),
        keys: est.keys,
        crypto,
        early,
        pending_ciphertext: Vec::new(),
    };
    TlsRelay::new(session, tls_on_client, DEFAULT_REKEY_RECORDS, false)
}

/// The outbound (client) and inbound (server) relays over `wire`, set up
/// with the real setup code.
fn handshake(wire: &(OwnedFd, OwnedFd)) -> (TlsRelay, TlsRelay) {
    let tls = context();
    let preamble = Preamble {
        flags: FLAG_TLS,
        conn_index: 0,
        uid: "4f1c2a9e-3b7d-4c1e-9f00-123456789abc".into(),
        origin: None,
    };
    let (client, server) = (tls.client().unwrap(), tls.server().unwrap());
    let mut outbound = Outbound::new(Some((&client, "localhost")), &preamble).unwrap();
    let mut inbound = Inbound::new(Some(&server)).unwrap();
    let (mut answered, mut early) = (false, None);
    for _ in 0..1000 {
        if !answered {
            if let Step::Done(_) = inbound.drive(wire.1.as_fd()) {
                inbound.answer(wire.1.as_fd(), None).unwrap();
                assert!(inbound.flush_answer(wire.1.as_fd()).unwrap());
                answered = true;
            }
        }
        if let Step::Done(e) = outbound.drive(wire.0.as_fd()) {
            early = Some(e);
            break;
        }
    }
    let out = relay(
        outbound.into_established().unwrap().unwrap(),
        early.unwrap(),
        false,
    );
    let inn = relay(
        inbound.into_established().unwrap().unwrap(),
        Vec::new(),
        true,
    );
    (out, inn)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, hostile)) = data.split_first() else {
        return;
    };
    let wire = pair();
    let (mut out, mut inn) = handshake(&wire);
    let (a_app, a_relay) = UnixStream::pair().unwrap();
    let (b_relay, mut b_app) = UnixStream::pair().unwrap();
    for s in [&a_app, &a_relay, &b_relay, &b_app] {
        s.set_nonblocking(true).unwrap();
    }
    let (a_relay, b_relay): (OwnedFd, OwnedFd) = (a_relay.into(), b_relay.into());
    // Genuine records first: the outbound relay seals 3000 bytes.
    let genuine = if mode & 1 != 0 { 3000 } else { 0 };
    if genuine > 0 {
        (&a_app).write_all(&[0x5a; 3000]).unwrap();
        for _ in 0..16 {
            let _ = out.turn(&a_relay, &wire.0);
        }
    }
    // Then the peer's arbitrary bytes, straight onto the wire.
    let mut peer = UnixStream::from(wire.0.try_clone().unwrap());
    let _ = peer.write_all(hostile);
    if mode & 2 != 0 {
        let _ = peer.shutdown(std::net::Shutdown::Write);
    }
    // The inbound relay takes what it can, a bounded number of turns.
    let mut delivered = Vec::new();
    let mut buf = [0u8; 65536];
    for _ in 0..64 {
        let turn = inn.turn(&wire.1, &b_relay);
        while let Ok(n) = b_app.read(&mut buf) {
            if n == 0 {
                break;
            }
            delivered.extend_from_slice(&buf[..n]);
        }
        match turn {
            Ok(Turn::MoreWork | Turn::Idle) => {}
            Ok(Turn::Finished) | Err(_) => break,
        }
    }
    if std::env::var_os("SCISTREAM_FUZZ_SHOW").is_some() {
        eprintln!(
            "mode {mode}: {} of {genuine} genuine bytes delivered",
            delivered.len()
        );
    }
    assert!(delivered.len() <= genuine, "more delivered than was sealed");
    assert!(
        delivered.iter().all(|&b| b == 0x5a),
        "an unauthenticated byte was delivered"
    );
});
