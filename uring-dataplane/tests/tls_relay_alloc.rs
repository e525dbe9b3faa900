//! The user-space TLS relay allocates nothing per record or per turn once a
//! connection runs: two relays (outbound and inbound gateway) joined by a
//! socket pair, set up with the real setup code and certificates, move
//! 64 MiB each way while a counting global allocator watches this thread;
//! and the bytes arrive intact. Run for each crypto provider.
#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

use scistream_dataplane::record::{Cipher, Crypto};
use scistream_dataplane::relay::Turn;
use scistream_dataplane::relay::tls::{DEFAULT_REKEY_RECORDS, TlsRelay, TlsSession};
use scistream_dataplane::setup::{Inbound, Outbound, Step};
use scistream_dataplane::tls::{TlsContext, TlsFiles};
use scistream_protocol::preamble::Preamble;
use scistream_testkit::Pki;

/// Counts allocations made by threads that asked to be counted.
struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    if COUNTING.with(Cell::get) {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counter is a side effect that touches no memory the caller owns.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: `ptr` came from `System` with `layout`, as the caller promises.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn nonblocking_pair() -> (OwnedFd, OwnedFd) {
    let (a, b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    (a.into(), b.into())
}

/// Outbound relay (plain leg `a`, TLS leg `wire.0`) and inbound relay (TLS
/// leg `wire.1`, plain leg `b`), with the app ends of `a` and `b`.
struct Tunnel {
    out: TlsRelay,
    inn: TlsRelay,
    a_app: UnixStream,
    a_relay: OwnedFd,
    wire_out: OwnedFd,
    wire_in: OwnedFd,
    b_relay: OwnedFd,
    b_app: UnixStream,
}

fn tunnel(crypto: Crypto) -> Tunnel {
    let pki = Pki::new();
    let (cert, key) = pki.gateway("gw");
    let tls = TlsContext::load(&TlsFiles {
        cert: Some(cert),
        key: Some(key),
        peer_ca: Some(pki.ca.clone()),
        ..TlsFiles::default()
    })
    .unwrap();
    let (wire_out, wire_in) = nonblocking_pair();
    let preamble = Preamble {
        flags: scistream_protocol::preamble::FLAG_TLS,
        conn_index: 0,
        uid: "4f1c2a9e-3b7d-4c1e-9f00-123456789abc".into(),
        origin: None,
    };
    let client = tls.client().unwrap();
    let server = tls.server().unwrap();
    let mut outbound = Outbound::new(Some((&client, "localhost")), &preamble).unwrap();
    let mut inbound = Inbound::new(Some(&server)).unwrap();
    let mut got_preamble = false;
    let mut early_out = None;
    for _ in 0..1000 {
        if !got_preamble {
            match inbound.drive(wire_in.as_fd()) {
                Step::Pending => {}
                Step::Done((p, _)) => {
                    assert_eq!(p.uid, preamble.uid);
                    inbound.answer(wire_in.as_fd(), None).unwrap();
                    assert!(inbound.flush_answer(wire_in.as_fd()).unwrap());
                    got_preamble = true;
                }
                other => panic!("inbound setup: {other:?}"),
            }
        }
        match outbound.drive(wire_out.as_fd()) {
            Step::Pending => {}
            Step::Done(early) => {
                early_out = Some(early);
                break;
            }
            other => panic!("outbound setup: {other:?}"),
        }
    }
    let early = early_out.expect("setup finished");
    let session = |est: scistream_dataplane::setup::Established, early: Vec<u8>| {
        let cipher = |(seq, s)| Cipher::new(crypto, s, seq).unwrap();
        TlsSession {
            tx: cipher(est.secrets.tx),
            rx: cipher(est.secrets.rx),
            keys: est.keys,
            crypto,
            early,
            pending_ciphertext: Vec::new(),
        }
    };
    let out = TlsRelay::new(
        session(outbound.into_established().unwrap().unwrap(), early),
        false,
        DEFAULT_REKEY_RECORDS,
        false,
    );
    let inn = TlsRelay::new(
        session(inbound.into_established().unwrap().unwrap(), Vec::new()),
        true,
        DEFAULT_REKEY_RECORDS,
        false,
    );
    let (a_app, a_relay) = UnixStream::pair().unwrap();
    let (b_relay, b_app) = UnixStream::pair().unwrap();
    a_app.set_nonblocking(true).unwrap();
    b_app.set_nonblocking(true).unwrap();
    a_relay.set_nonblocking(true).unwrap();
    b_relay.set_nonblocking(true).unwrap();
    Tunnel {
        out,
        inn,
        a_app,
        a_relay: a_relay.into(),
        wire_out,
        wire_in,
        b_relay: b_relay.into(),
        b_app,
    }
}

impl Tunnel {
    /// Moves `bytes` from a to b (and the same back from b to a), turning
    /// both relays; returns the bytes that arrived each way.
    fn pump(&mut self, bytes: usize, chunk: &[u8], inbox: &mut [u8]) -> (usize, usize) {
        let (mut sent_ab, mut sent_ba, mut got_ab, mut got_ba) = (0, 0, 0, 0);
        let mut idle = 0;
        while got_ab < bytes || got_ba < bytes {
            let mut moved = false;
            if sent_ab < bytes {
                if let Ok(n) = self.a_app.write(&chunk[..chunk.len().min(bytes - sent_ab)]) {
                    sent_ab += n;
                    moved = true;
                }
            }
            if sent_ba < bytes {
                if let Ok(n) = self.b_app.write(&chunk[..chunk.len().min(bytes - sent_ba)]) {
                    sent_ba += n;
                    moved = true;
                }
            }
            let t1 = self.out.turn(&self.a_relay, &self.wire_out).unwrap();
            let t2 = self.inn.turn(&self.wire_in, &self.b_relay).unwrap();
            moved |= t1 == Turn::MoreWork || t2 == Turn::MoreWork;
            while let Ok(n) = self.b_app.read(inbox) {
                if n == 0 {
                    break;
                }
                assert!(inbox[..n].iter().all(|&x| x == 0x5a), "corrupted a->b");
                got_ab += n;
                moved = true;
            }
            while let Ok(n) = self.a_app.read(inbox) {
                if n == 0 {
                    break;
                }
                assert!(inbox[..n].iter().all(|&x| x == 0x5a), "corrupted b->a");
                got_ba += n;
                moved = true;
            }
            idle = if moved { 0 } else { idle + 1 };
            assert!(idle < 100_000, "stalled at {got_ab}/{got_ba} of {bytes}");
        }
        (got_ab, got_ba)
    }
}

fn no_allocation_in_steady_state(crypto: Crypto) {
    let mut t = tunnel(crypto);
    let chunk = vec![0x5au8; 256 << 10];
    let mut inbox = vec![0u8; 1 << 20];
    // The first bytes make the relays' buffers; from then on, nothing.
    assert_eq!(t.pump(4 << 20, &chunk, &mut inbox), (4 << 20, 4 << 20));
    ALLOCATIONS.with(|a| a.set(0));
    COUNTING.with(|c| c.set(true));
    let moved = t.pump(64 << 20, &chunk, &mut inbox);
    COUNTING.with(|c| c.set(false));
    assert_eq!(moved, (64 << 20, 64 << 20));
    assert_eq!(
        ALLOCATIONS.with(Cell::get),
        0,
        "{crypto:?}: allocations while 128 MiB crossed the relays"
    );
}

#[test]
fn the_relay_allocates_nothing_per_record_with_ring() {
    no_allocation_in_steady_state(Crypto::Ring);
}

#[test]
fn the_relay_allocates_nothing_per_record_with_aws_lc() {
    no_allocation_in_steady_state(Crypto::AwsLc);
}
