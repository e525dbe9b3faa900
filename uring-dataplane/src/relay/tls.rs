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
    CLOSE_NOTIFY, Cipher, ContentType, Crypto, HEADER, MAX_CIPHERTEXT, MAX_PAYLOAD, RecordError,
    SLOT, TAG, check_header, key_update_message,
};

/// Records sealed per `readv`: 16 × 16 KiB of plaintext.
pub const SLOTS: usize = 16;
/// Room after the slots for one control record (KeyUpdate, close_notify).
const SPARE: usize = 64;
/// Ciphertext taken in per `read`, plus room for one record cut in two.
const OPEN_BUF: usize = SLOTS * SLOT + HEADER + MAX_CIPHERTEXT;
/// Opened payloads handed to one `writev`.
const MAX_SEGMENTS: usize = 64;

/// Records in a row that carry nothing for the receiver (empty application
/// data, KeyUpdate, NewSessionTicket) before the peer is taken to be
/// flooding: OpenSSL allows 32 empty records in a row too.
pub const MAX_IDLE_RECORDS: u32 = 32;

/// The fatal alerts this relay sends (RFC 8446 §6.2).
mod alert {
    pub const UNEXPECTED_MESSAGE: u8 = 10;
    pub const BAD_RECORD_MAC: u8 = 20;
    pub const RECORD_OVERFLOW: u8 = 22;
    pub const DECODE_ERROR: u8 = 50;
}

/// The alert a record-layer failure calls for.
fn alert_for(e: &RecordError) -> u8 {
    match e {
        RecordError::Decrypt => alert::BAD_RECORD_MAC,
        RecordError::TooLong(_) => alert::RECORD_OVERFLOW,
        _ => alert::UNEXPECTED_MESSAGE,
    }
}

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
    /// Why the peer's stream broke, once the records before it are delivered.
    broken: Option<RelayError>,
    /// The fatal alert owed to the peer for what it just sent.
    fatal_alert: Option<u8>,
    /// Records in a row that carried nothing for the receiver.
    idle_records: u32,

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
            broken: None,
            fatal_alert: None,
            idle_records: 0,
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
        let (delivered, mut progressed) = self.deliver(pfd, sides.1)?;
        if !delivered {
            return Ok(progressed);
        }
        // Everything authenticated before a broken record is delivered; now
        // the peer hears why, and the connection ends.
        if let Some(e) = self.broken.take() {
            if let Some(code) = self.fatal_alert.take() {
                self.send_alert(tfd, code);
            }
            return Err(e);
        }
        if self.tls_eof {
            if !self.plain_shut {
                shut_write(pfd, sides.1)?;
                self.plain_shut = true;
                progressed = true;
            }
            return Ok(progressed);
        }
        Ok(self.read_records(tfd, sides.0)? || progressed)
    }

    /// Sends the plaintext side what waits for it: the plaintext that
    /// arrived during setup, then the opened payloads. (Whether all of it
    /// went, whether some did.)
    fn deliver(
        &mut self,
        pfd: BorrowedFd<'_>,
        side: &'static str,
    ) -> Result<(bool, bool), RelayError> {
        let mut progressed = false;
        while self.early_pos < self.early.len() {
            match rustix::net::send(pfd, &self.early[self.early_pos..], SendFlags::NOSIGNAL) {
                Ok(n) => {
                    self.early_pos += n;
                    self.to_plain += n as u64;
                    progressed = true;
                }
                Err(Errno::AGAIN) => return Ok((false, progressed)),
                Err(Errno::INTR) => {}
                Err(e) => {
                    return Err(RelayError::Write {
                        side,
                        source: e.into(),
                    });
                }
            }
        }
        if self.seg < self.segments.len() {
            progressed |= self.write_segments(pfd, side)?;
            if self.seg < self.segments.len() {
                return Ok((false, progressed));
            }
        }
        self.segments.clear();
        (self.seg, self.seg_off) = (0, 0);
        Ok((true, progressed))
    }

    /// One `writev` of the opened payloads, from where they lie in the
    /// receive buffer; whether some went.
    fn write_segments(
        &mut self,
        pfd: BorrowedFd<'_>,
        side: &'static str,
    ) -> Result<bool, RelayError> {
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
                Ok(true)
            }
            Err(Errno::AGAIN | Errno::INTR) => Ok(false),
            Err(e) => Err(RelayError::Write {
                side,
                source: e.into(),
            }),
        }
    }

    /// Reads from the peer gateway and opens the records that are whole
    /// (everything opened before was delivered: only a record cut in two
    /// is kept); whether anything came. A broken record is kept in
    /// `broken`, to end the connection once the records before it are
    /// delivered.
    fn read_records(
        &mut self,
        tfd: BorrowedFd<'_>,
        side: &'static str,
    ) -> Result<bool, RelayError> {
        let mut progressed = false;
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
                    side,
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
                    side,
                    source: e.into(),
                });
            }
        }
        if let Err(e) = self.open_records(side) {
            // Delivered first: the payloads of the records opened before it.
            self.broken = Some(e);
            return Ok(true);
        }
        Ok(progressed)
    }

    /// Tells the peer why the connection ends (a fatal alert, sealed with
    /// the current keys), if that can be done now without blocking and
    /// without cutting into records already sealed and not yet sent; the
    /// caller closes the connection either way.
    fn send_alert(&mut self, tfd: BorrowedFd<'_>, code: u8) {
        if self.seal_pos != self.seal_len || self.close_sent {
            return;
        }
        let mut record = [0u8; HEADER + 2 + 1 + TAG];
        record[HEADER..HEADER + 2].copy_from_slice(&[2, code]);
        if let Ok(n) = self.tx.seal(&mut record, 2, ContentType::Alert) {
            let _ = rustix::net::send(tfd, &record[..n], SendFlags::NOSIGNAL | SendFlags::DONTWAIT);
            self.close_sent = true;
        }
    }

    /// Notes the alert to send for `e` and turns it into the relay's error.
    fn violation(&mut self, side: &'static str, code: u8, e: impl std::fmt::Display) -> RelayError {
        self.fatal_alert = Some(code);
        invalid(side, e)
    }

    /// Opens every whole record read so far (up to [`MAX_SEGMENTS`] payloads).
    /// A record that fails stops here: nothing of it, nor of what follows
    /// it, reaches the plaintext leg.
    fn open_records(&mut self, side: &'static str) -> Result<(), RelayError> {
        while self.segments.len() < MAX_SEGMENTS && !self.tls_eof {
            let rest = &self.open[self.parsed..self.open_len];
            let len = match check_header(rest) {
                Ok(Some(len)) => len,
                Ok(None) => return Ok(()),
                Err(e) => return Err(self.violation(side, alert_for(&e), e)),
            };
            if rest.len() < HEADER + len {
                return Ok(());
            }
            let start = self.parsed;
            let end = start + HEADER + len;
            let (content, payload) = match self.rx.open(&mut self.open[start..end]) {
                Ok(opened) => opened,
                Err(e) => return Err(self.violation(side, alert_for(&e), e)),
            };
            self.parsed = end;
            let (from, to) = (start + payload.start, start + payload.end);
            if content == ContentType::ApplicationData && to > from {
                self.idle_records = 0;
            } else {
                self.idle_records += 1;
                if self.idle_records > MAX_IDLE_RECORDS {
                    return Err(self.violation(
                        side,
                        alert::UNEXPECTED_MESSAGE,
                        format!(
                            "more than {MAX_IDLE_RECORDS} TLS records in a row that carry no data (a flood)"
                        ),
                    ));
                }
            }
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
                    return Err(self.violation(
                        side,
                        alert::UNEXPECTED_MESSAGE,
                        format!("a TLS record of content type {c}"),
                    ));
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
                _ => {
                    return Err(self.violation(
                        side,
                        alert::DECODE_ERROR,
                        "a cut handshake message",
                    ));
                }
            };
            if m.len() < 4 + len {
                return Err(self.violation(
                    side,
                    alert::UNEXPECTED_MESSAGE,
                    "a handshake message split across records",
                ));
            }
            let body = &m[4..4 + len];
            match (kind, body) {
                // KeyUpdate: the peer's following records use its next keys.
                // RFC 8446 §5.1: a key change ends its record.
                (24, [_]) if at + 4 + len != to => {
                    return Err(self.violation(
                        side,
                        alert::UNEXPECTED_MESSAGE,
                        "a KeyUpdate with more after it in its record",
                    ));
                }
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
                    return Err(self.violation(
                        side,
                        alert::UNEXPECTED_MESSAGE,
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
}
