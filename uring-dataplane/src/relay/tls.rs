//! Forwarding a connection whose gateway-side leg is TLS, in user space
//! (when the kernel has no kTLS): plaintext leg ⇄ records ⇄ TLS leg, with
//! the record layer of [`crate::record`] and rustls keeping only the key
//! schedule ([`Keys`]).
//!
//! Plaintext → TLS: one `readv` puts up to [`SLOTS`] × 16 KiB of plaintext
//! straight into the payload slots of as many records in one buffer; each is
//! sealed in place and the buffer goes out with one `send`. TLS → plaintext:
//! one `read` takes in as much ciphertext as the buffer holds; every whole
//! record in it is opened in place, and the payloads go out from where they
//! lie with one `writev`. The buffers are made on the connection's first
//! bytes and reused; nothing is allocated per record or per turn.
//!
//! Backpressure both ways: the plaintext leg is read only once the sealed
//! records are out, and ciphertext is taken in only once every opened
//! payload is delivered. Keys are refreshed (TLS 1.3 KeyUpdate) every
//! `rekey_after` records sent, well before AES-GCM's limit of about 2^24
//! records per key; a peer's KeyUpdate is followed, and answered when it
//! asks. close_notify is sent after the plaintext leg's EOF and ends the
//! other direction cleanly when received; EOF without it is truncation.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::io::Errno;
use rustix::net::SendFlags;
use rustls::ConnectionTrafficSecrets;
use rustls::client::ClientConnectionData;
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;

use super::{ROUNDS_PER_TURN, RelayError, Turn, shut_write};
use crate::record::{
    CLOSE_NOTIFY, Cipher, ContentType, Crypto, HEADER, MAX_CIPHERTEXT, MAX_PAYLOAD, SLOT,
    check_header, key_update_message,
};

/// Records sealed per `readv`: 16 × 16 KiB of plaintext.
pub const SLOTS: usize = 16;
/// Room after the slots for one control record (KeyUpdate, close_notify).
const SPARE: usize = 64;
/// Ciphertext taken in per `read`, plus room for one record cut in two.
const OPEN_BUF: usize = SLOTS * SLOT + HEADER + MAX_CIPHERTEXT;
/// Opened payloads handed to one `writev`.
const MAX_SEGMENTS: usize = 64;

/// Keys refreshed every this many records by default: 2^22 records of 16 KiB
/// (64 GiB), a quarter of AES-GCM's per-key budget.
pub const DEFAULT_REKEY_RECORDS: u64 = 1 << 22;

/// rustls's key schedule for a set-up connection: new secrets on key updates.
pub enum Keys {
    /// We are the TLS client (outbound gateway).
    Client(KernelConnection<ClientConnectionData>),
    /// We are the TLS server (inbound gateway).
    Server(KernelConnection<ServerConnectionData>),
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Keys::Client(_) => "Keys::Client",
            Keys::Server(_) => "Keys::Server",
        })
    }
}

impl Keys {
    fn update_tx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        match self {
            Keys::Client(k) => k.update_tx_secret(),
            Keys::Server(k) => k.update_tx_secret(),
        }
    }

    fn update_rx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        match self {
            Keys::Client(k) => k.update_rx_secret(),
            Keys::Server(k) => k.update_rx_secret(),
        }
    }

    fn new_session_ticket(&mut self, payload: &[u8]) -> Result<(), rustls::Error> {
        match self {
            Keys::Client(k) => k.handle_new_session_ticket(payload),
            // A client does not send tickets.
            Keys::Server(_) => Err(rustls::Error::General(
                "the peer (a TLS client) sent a session ticket".into(),
            )),
        }
    }

    /// The negotiated suite.
    pub fn suite(&self) -> rustls::SupportedCipherSuite {
        match self {
            Keys::Client(k) => k.negotiated_cipher_suite(),
            Keys::Server(k) => k.negotiated_cipher_suite(),
        }
    }
}

/// Everything the relay starts from, once setup is over.
#[derive(Debug)]
pub struct TlsSession {
    /// The key schedule.
    pub keys: Keys,
    /// The first keys and sequence numbers.
    pub tx: Cipher,
    /// The first receive keys.
    pub rx: Cipher,
    /// Whose AEAD code the records use.
    pub crypto: Crypto,
    /// Plaintext that arrived during setup and belongs to the plain leg.
    pub early: Vec<u8>,
    /// Ciphertext read during setup past the last setup record (a whole or
    /// partial record the relay opens first).
    pub pending_ciphertext: Vec<u8>,
}

/// A connection with a TLS leg, forwarded in user space.
pub struct TlsRelay {
    keys: Keys,
    crypto: Crypto,
    tx: Cipher,
    rx: Cipher,
    /// The TLS leg is the accepted client socket (inbound gateway) rather than the target.
    tls_on_client: bool,
    rekey_after: u64,
    records_since_rekey: u64,
    /// The suite has a per-key limit (AES-GCM): keys must be refreshed.
    limited: bool,
    /// Key updates sent.
    pub rekeys: u64,
    /// The peer asked us to update our keys too.
    owe_key_update: bool,

    /// Sealed records: `seal[seal_pos..seal_len]` not yet sent.
    seal: Box<[u8]>,
    seal_pos: usize,
    seal_len: usize,
    plain_eof: bool,
    close_sent: bool,
    tls_shut: bool,

    /// Ciphertext: `open[..open_len]` read; records before `parsed` opened.
    open: Box<[u8]>,
    open_len: usize,
    parsed: usize,
    /// Opened payloads not yet delivered, as (start, end) in `open`;
    /// `segments[seg..]` remain, the first of them from `seg_off` on.
    segments: Vec<(usize, usize)>,
    seg: usize,
    seg_off: usize,
    early: Vec<u8>,
    early_pos: usize,
    tls_eof: bool,
    plain_shut: bool,

    to_tls: u64,
    to_plain: u64,
}

impl std::fmt::Debug for TlsRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsRelay")
            .field("crypto", &self.crypto)
            .field("to_tls", &self.to_tls)
            .field("to_plain", &self.to_plain)
            .finish_non_exhaustive()
    }
}

fn invalid(side: &'static str, e: impl std::fmt::Display) -> RelayError {
    RelayError::Read {
        side,
        source: io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
    }
}

impl TlsRelay {
    /// Takes over a set-up session. `rekey_after` records between key
    /// updates; `rekey_any` refreshes keys on every suite, not only those
    /// with a per-key limit (tests).
    pub fn new(
        session: TlsSession,
        tls_on_client: bool,
        rekey_after: u64,
        rekey_any: bool,
    ) -> TlsRelay {
        let limited = rekey_any || crate::ktls::has_key_limit(session.keys.suite());
        let mut open = Box::default();
        let mut open_len = 0;
        if !session.pending_ciphertext.is_empty() {
            let mut buf = vec![0u8; OPEN_BUF].into_boxed_slice();
            let n = session.pending_ciphertext.len().min(OPEN_BUF);
            buf[..n].copy_from_slice(&session.pending_ciphertext[..n]);
            open = buf;
            open_len = n;
        }
        TlsRelay {
            keys: session.keys,
            crypto: session.crypto,
            tx: session.tx,
            rx: session.rx,
            tls_on_client,
            rekey_after: rekey_after.max(1),
            records_since_rekey: 0,
            limited,
            rekeys: 0,
            owe_key_update: false,
            seal: Box::default(),
            seal_pos: 0,
            seal_len: 0,
            plain_eof: false,
            close_sent: false,
            tls_shut: false,
            open,
            open_len,
            parsed: 0,
            segments: Vec::new(),
            seg: 0,
            seg_off: 0,
            early: session.early,
            early_pos: 0,
            tls_eof: false,
            plain_shut: false,
            to_tls: 0,
            to_plain: 0,
        }
    }

    /// Bytes delivered (to the target, to the client).
    pub fn delivered(&self) -> (u64, u64) {
        if self.tls_on_client {
            (self.to_plain, self.to_tls)
        } else {
            (self.to_tls, self.to_plain)
        }
    }

    /// The name of the negotiated suite, for counters and logs.
    pub fn suite(&self) -> String {
        format!("{:?}", self.keys.suite().suite())
    }

    /// Moves whatever can move now, in both directions.
    pub fn turn(&mut self, client: &OwnedFd, target: &OwnedFd) -> Result<Turn, RelayError> {
        let (tfd, pfd) = if self.tls_on_client {
            (client.as_fd(), target.as_fd())
        } else {
            (target.as_fd(), client.as_fd())
        };
        let sides = if self.tls_on_client {
            ("client", "target")
        } else {
            ("target", "client")
        };
        for _ in 0..ROUNDS_PER_TURN {
            let mut progressed = self.send_sealed(tfd, sides.0)?;
            progressed |= self.plain_to_tls(pfd, tfd, sides)?;
            progressed |= self.tls_to_plain(tfd, pfd, sides)?;
            if self.plain_shut && self.tls_shut {
                return Ok(Turn::Finished);
            }
            if !progressed {
                return Ok(Turn::Idle);
            }
        }
        Ok(Turn::MoreWork)
    }

    /// Sends sealed records; true when something went out.
    fn send_sealed(&mut self, tfd: BorrowedFd<'_>, side: &'static str) -> Result<bool, RelayError> {
        let mut progressed = false;
        while self.seal_pos < self.seal_len {
            match rustix::net::send(
                tfd,
                &self.seal[self.seal_pos..self.seal_len],
                SendFlags::NOSIGNAL,
            ) {
                Ok(n) => {
                    self.seal_pos += n;
                    progressed = true;
                }
                Err(Errno::AGAIN) => break,
                Err(Errno::INTR) => {}
                Err(e) => {
                    return Err(RelayError::Write {
                        side,
                        source: e.into(),
                    });
                }
            }
        }
        Ok(progressed)
    }

    /// Seals one control record (`content`, `body`) at `at` in the seal buffer.
    fn seal_control(
        &mut self,
        at: usize,
        content: ContentType,
        body: &[u8],
        side: &'static str,
    ) -> Result<usize, RelayError> {
        let room = &mut self.seal[at..];
        room[HEADER..HEADER + body.len()].copy_from_slice(body);
        self.tx
            .seal(room, body.len(), content)
            .map_err(|e| invalid(side, e))
    }

    /// Sends a KeyUpdate (sealed with the keys in use) at `at`, then
    /// switches to the next keys. Returns the record's length.
    fn key_update(&mut self, at: usize, side: &'static str) -> Result<usize, RelayError> {
        let n = self.seal_control(at, ContentType::Handshake, &key_update_message(false), side)?;
        let (seq, secrets) = self.keys.update_tx().map_err(|e| invalid(side, e))?;
        self.tx = Cipher::new(self.crypto, secrets, seq).map_err(|e| invalid(side, e))?;
        self.records_since_rekey = 0;
        self.owe_key_update = false;
        self.rekeys += 1;
        Ok(n)
    }

    fn plain_to_tls(
        &mut self,
        pfd: BorrowedFd<'_>,
        tfd: BorrowedFd<'_>,
        sides: (&'static str, &'static str),
    ) -> Result<bool, RelayError> {
        if self.seal_pos < self.seal_len {
            return Ok(false);
        }
        (self.seal_pos, self.seal_len) = (0, 0);
        if self.seal.is_empty() {
            self.seal = vec![0u8; SLOTS * SLOT + SPARE].into_boxed_slice();
        }
        if self.owe_key_update && !self.close_sent {
            self.seal_len = self.key_update(0, sides.0)?;
            return Ok(true);
        }
        if self.plain_eof {
            if !self.close_sent {
                self.seal_len = self.seal_control(0, ContentType::Alert, &CLOSE_NOTIFY, sides.0)?;
                self.close_sent = true;
                return Ok(true);
            }
            if !self.tls_shut {
                shut_write(tfd, sides.0)?;
                self.tls_shut = true;
                return Ok(true);
            }
            return Ok(false);
        }
        // Plaintext straight into the payload slots of SLOTS records.
        let read = {
            let mut slots = self.seal.chunks_mut(SLOT);
            let mut slices: [IoSliceMut<'_>; SLOTS] = std::array::from_fn(|_| match slots.next() {
                Some(slot) => IoSliceMut::new(&mut slot[HEADER..HEADER + MAX_PAYLOAD]),
                None => IoSliceMut::new(&mut []),
            });
            rustix::io::readv(pfd, &mut slices)
        };
        let n = match read {
            Ok(0) => {
                self.plain_eof = true;
                return Ok(true);
            }
            Ok(n) => n,
            Err(Errno::AGAIN | Errno::INTR) => return Ok(false),
            Err(e) => {
                return Err(RelayError::Read {
                    side: sides.1,
                    source: e.into(),
                });
            }
        };
        let mut left = n;
        let mut at = 0;
        while left > 0 {
            let len = left.min(MAX_PAYLOAD);
            let sealed = self
                .tx
                .seal(&mut self.seal[at..], len, ContentType::ApplicationData)
                .map_err(|e| invalid(sides.0, e))?;
            left -= len;
            // Full records are exactly one slot long; only the last may be short.
            at += sealed;
        }
        self.seal_len = at;
        self.to_tls += n as u64;
        self.records_since_rekey += n.div_ceil(MAX_PAYLOAD) as u64;
        if self.limited && self.records_since_rekey >= self.rekey_after {
            // After the records sealed with the keys in use, before any sealed with the next.
            let at = self.seal_len;
            self.seal_len += self.key_update(at, sides.0)?;
        }
        Ok(true)
    }

    fn tls_to_plain(
        &mut self,
        tfd: BorrowedFd<'_>,
        pfd: BorrowedFd<'_>,
        sides: (&'static str, &'static str),
    ) -> Result<bool, RelayError> {
        let mut progressed = false;
        // Plaintext that arrived during setup goes first.
        while self.early_pos < self.early.len() {
            match rustix::net::send(pfd, &self.early[self.early_pos..], SendFlags::NOSIGNAL) {
                Ok(n) => {
                    self.early_pos += n;
                    self.to_plain += n as u64;
                    progressed = true;
                }
                Err(Errno::AGAIN) => return Ok(progressed),
                Err(Errno::INTR) => {}
                Err(e) => {
                    return Err(RelayError::Write {
                        side: sides.1,
                        source: e.into(),
                    });
                }
            }
        }
        // Opened payloads, from where they lie.
        if self.seg < self.segments.len() {
            let sent = {
                let mut slices: [IoSlice<'_>; MAX_SEGMENTS] = [IoSlice::new(&[]); MAX_SEGMENTS];
                let mut count = 0;
                for (i, &(start, end)) in self.segments[self.seg..].iter().enumerate() {
                    let from = if i == 0 { start + self.seg_off } else { start };
                    slices[count] = IoSlice::new(&self.open[from..end]);
                    count += 1;
                }
                rustix::io::writev(pfd, &slices[..count])
            };
            match sent {
                Ok(mut n) => {
                    self.to_plain += n as u64;
                    progressed = true;
                    while n > 0 && self.seg < self.segments.len() {
                        let (start, end) = self.segments[self.seg];
                        let left = end - start - self.seg_off;
                        if n >= left {
                            n -= left;
                            self.seg += 1;
                            self.seg_off = 0;
                        } else {
                            self.seg_off += n;
                            n = 0;
                        }
                    }
                }
                Err(Errno::AGAIN | Errno::INTR) => {}
                Err(e) => {
                    return Err(RelayError::Write {
                        side: sides.1,
                        source: e.into(),
                    });
                }
            }
            if self.seg < self.segments.len() {
                return Ok(progressed);
            }
        }
        self.segments.clear();
        (self.seg, self.seg_off) = (0, 0);
        if self.tls_eof {
            if !self.plain_shut {
                shut_write(pfd, sides.1)?;
                self.plain_shut = true;
                progressed = true;
            }
            return Ok(progressed);
        }
        // Everything opened is delivered: keep only a record cut in two.
        if self.parsed > 0 {
            self.open.copy_within(self.parsed..self.open_len, 0);
            self.open_len -= self.parsed;
            self.parsed = 0;
        }
        if self.open.is_empty() {
            self.open = vec![0u8; OPEN_BUF].into_boxed_slice();
            self.segments.reserve_exact(MAX_SEGMENTS);
        }
        match rustix::io::read(tfd, &mut self.open[self.open_len..]) {
            Ok(0) => {
                return Err(RelayError::Read {
                    side: sides.0,
                    source: io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer gateway closed without close_notify (the stream was cut)",
                    ),
                });
            }
            Ok(n) => {
                self.open_len += n;
                progressed = true;
            }
            Err(Errno::AGAIN | Errno::INTR) => {}
            Err(e) => {
                return Err(RelayError::Read {
                    side: sides.0,
                    source: e.into(),
                });
            }
        }
        self.open_records(sides.0)?;
        Ok(progressed)
    }

    /// Opens every whole record read so far (up to [`MAX_SEGMENTS`] payloads).
    fn open_records(&mut self, side: &'static str) -> Result<(), RelayError> {
        while self.segments.len() < MAX_SEGMENTS && !self.tls_eof {
            let rest = &self.open[self.parsed..self.open_len];
            let Some(len) = check_header(rest).map_err(|e| invalid(side, e))? else {
                return Ok(());
            };
            if rest.len() < HEADER + len {
                return Ok(());
            }
            let start = self.parsed;
            let end = start + HEADER + len;
            let (content, payload) = self
                .rx
                .open(&mut self.open[start..end])
                .map_err(|e| invalid(side, e))?;
            self.parsed = end;
            let (from, to) = (start + payload.start, start + payload.end);
            match content {
                ContentType::ApplicationData => {
                    if to > from {
                        self.segments.push((from, to));
                    }
                }
                ContentType::Alert => {
                    if self.open[from..to] == CLOSE_NOTIFY {
                        self.tls_eof = true;
                    } else {
                        return Err(invalid(
                            side,
                            format!(
                                "the peer gateway sent a TLS alert {:?}",
                                &self.open[from..to]
                            ),
                        ));
                    }
                }
                ContentType::Handshake => self.handshake_messages(from, to, side)?,
                ContentType::Other(c) => {
                    return Err(invalid(side, format!("a TLS record of content type {c}")));
                }
            }
        }
        Ok(())
    }

    /// Post-handshake messages: KeyUpdate and NewSessionTicket.
    fn handshake_messages(
        &mut self,
        from: usize,
        to: usize,
        side: &'static str,
    ) -> Result<(), RelayError> {
        let mut at = from;
        while at < to {
            let m = &self.open[at..to];
            let (kind, len) = match m {
                [kind, a, b, c, ..] => (
                    *kind,
                    usize::from(*a) << 16 | usize::from(*b) << 8 | usize::from(*c),
                ),
                _ => return Err(invalid(side, "a cut handshake message")),
            };
            if m.len() < 4 + len {
                return Err(invalid(side, "a handshake message split across records"));
            }
            let body = &m[4..4 + len];
            match (kind, body) {
                // KeyUpdate: the peer's following records use its next keys.
                (24, [request]) if *request <= 1 => {
                    let (seq, secrets) = self.keys.update_rx().map_err(|e| invalid(side, e))?;
                    self.rx =
                        Cipher::new(self.crypto, secrets, seq).map_err(|e| invalid(side, e))?;
                    if *request == 1 {
                        self.owe_key_update = true;
                    }
                }
                // NewSessionTicket: kept by rustls (this gateway never resumes).
                (4, _) => {
                    let body = body.to_vec();
                    self.keys
                        .new_session_ticket(&body)
                        .map_err(|e| invalid(side, e))?;
                }
                (kind, _) => {
                    return Err(invalid(
                        side,
                        format!(
                            "an unexpected handshake message (type {kind}) after the handshake"
                        ),
                    ));
                }
            }
            at += 4 + len;
        }
        Ok(())
    }

    /// Whether the relay still owes the peer a KeyUpdate (for tests).
    pub fn owes_key_update(&self) -> bool {
        self.owe_key_update
    }
}

/// The sequence of records one `readv` of `n` plaintext bytes makes, and
/// the length they take on the wire (for tests and the benchmarks).
pub fn sealed_len(n: usize) -> usize {
    let full = n / MAX_PAYLOAD;
    let rest = n % MAX_PAYLOAD;
    full * SLOT
        + if rest > 0 {
            HEADER + rest + 1 + crate::record::TAG
        } else {
            0
        }
}
