//! Setting up a connection between gateways, before any payload moves:
//! the TLS handshake (when the channel is TLS), the preamble, the answer.
//! Both sides are state machines driven by readiness, like the relays.
//!
//! Inbound (the connection was accepted from a peer gateway):
//! handshake → read the preamble → (the worker checks the uid and connects
//! to the receiver) → answer. Outbound (we connected to the peer's listener):
//! handshake → send the preamble → read the answer.
//!
//! TLS runs on rustls's unbuffered API ([`Handshake`]): this code owns the
//! buffers, reads only up to record boundaries (so that nothing after the
//! setup records leaves the kernel before kTLS or the relay takes over),
//! and at the end turns the session into its keys and key schedule
//! ([`Established`]) for kTLS or for [`crate::relay::tls`].

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::Arc;

use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::ServerName;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError,
    UnbufferedStatus, WriteTraffic,
};
use rustls::{ClientConfig, ExtractedSecrets, ServerConfig};
use scistream_protocol::preamble::{ACCEPTED, Preamble, REFUSED, Refusal};

use crate::relay::tls::Keys;
use crate::tls::RecordReader;

/// What a step of setup came to.
#[derive(Debug)]
pub enum Step<T> {
    /// Waiting for the peer.
    Pending,
    /// Finished.
    Done(T),
    /// Failed; the reason is for one log line (no secrets in it).
    Failed(String),
    /// The peer must be told it is refused (with this code), then closed.
    Refuse(Refusal, String),
}

/// A set-up TLS session, ready to carry data: its keys (for kTLS or the
/// user-space record layer) and rustls's key schedule.
pub struct Established {
    /// The key schedule (new keys on key updates).
    pub keys: Keys,
    /// The current keys and sequence numbers, both ways.
    pub secrets: ExtractedSecrets,
}

impl std::fmt::Debug for Established {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Established")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

/// An unbuffered rustls connection, either side.
trait Unbuffered {
    type Data;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
    fn alpn(&self) -> Option<&[u8]>;
    fn into_established(self) -> Result<Established, rustls::Error>;
}

impl Unbuffered for UnbufferedClientConnection {
    type Data = rustls::client::ClientConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
    fn alpn(&self) -> Option<&[u8]> {
        self.alpn_protocol()
    }
    fn into_established(self) -> Result<Established, rustls::Error> {
        let (secrets, keys) = self.dangerous_into_kernel_connection()?;
        Ok(Established {
            keys: Keys::Client(keys),
            secrets,
        })
    }
}

impl Unbuffered for UnbufferedServerConnection {
    type Data = rustls::server::ServerConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
    fn alpn(&self) -> Option<&[u8]> {
        self.alpn_protocol()
    }
    fn into_established(self) -> Result<Established, rustls::Error> {
        let (secrets, keys) = self.dangerous_into_kernel_connection()?;
        Ok(Established {
            keys: Keys::Server(keys),
            secrets,
        })
    }
}

/// Why a handshake failed, in words: what the record reader saw (a peer
/// that does not speak TLS), a refused client certificate, or the
/// certificate problem.
fn handshake_failure(reader: &RecordReader, e: &rustls::Error) -> String {
    match reader.diagnose() {
        Some(d) => d.to_owned(),
        None => match crate::client_cert::refusal_words(e) {
            Some(w) => format!("TLS handshake failed: {w}"),
            None => format!("TLS handshake failed: {}", scistream_trust::words(e)),
        },
    }
}

/// Appends the handshake message rustls has for the peer to `outgoing`.
fn encode_into<D>(outgoing: &mut Vec<u8>, s: &mut EncodeTlsData<'_, D>) -> Result<(), String> {
    let at = outgoing.len();
    outgoing.resize(at + 4096, 0);
    let n = match s.encode(&mut outgoing[at..]) {
        Ok(n) => n,
        Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
            outgoing.resize(at + required_size, 0);
            s.encode(&mut outgoing[at..])
                .map_err(|e| format!("encoding the handshake: {e}"))?
        }
        Err(e) => return Err(format!("encoding the handshake: {e}")),
    };
    outgoing.truncate(at + n);
    Ok(())
}

/// Appends `data`, sealed as application data, to `outgoing`.
fn encrypt_into<D>(
    outgoing: &mut Vec<u8>,
    w: &mut WriteTraffic<'_, D>,
    data: &[u8],
) -> Result<(), String> {
    let at = outgoing.len();
    outgoing.resize(at + data.len() + 64, 0);
    let n = match w.encrypt(data, &mut outgoing[at..]) {
        Ok(n) => n,
        Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => {
            outgoing.resize(at + required_size, 0);
            w.encrypt(data, &mut outgoing[at..])
                .map_err(|e| format!("encrypting: {e}"))?
        }
        Err(e) => return Err(format!("encrypting: {e}")),
    };
    outgoing.truncate(at + n);
    Ok(())
}

/// A TLS session being set up, over its own buffers.
struct Handshake<C> {
    conn: C,
    /// Ciphertext read, not yet consumed by rustls.
    incoming: Vec<u8>,
    /// TLS bytes to send: `outgoing[sent..]`.
    outgoing: Vec<u8>,
    sent: usize,
    reader: RecordReader,
    /// Application data received (the preamble, or the answer).
    plaintext: Vec<u8>,
    /// The handshake is over (rustls offered to encrypt application data).
    done: bool,
}

impl<C> std::fmt::Debug for Handshake<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake")
            .field("done", &self.done)
            .field("unsent", &(self.outgoing.len() - self.sent))
            .finish_non_exhaustive()
    }
}

/// The most one setup record takes on the wire (header + 16 KiB + 256).
const MAX_RECORD: usize = 5 + (16 << 10) + 256;

impl<C: Unbuffered> Handshake<C> {
    fn new(conn: C) -> Self {
        Handshake {
            conn,
            incoming: Vec::with_capacity(MAX_RECORD),
            outgoing: Vec::with_capacity(4096),
            sent: 0,
            reader: RecordReader::default(),
            plaintext: Vec::new(),
            done: false,
        }
    }

    /// Sends what rustls produced; `Ok(false)` while the socket is full.
    fn flush(&mut self, fd: BorrowedFd<'_>) -> io::Result<bool> {
        while self.sent < self.outgoing.len() {
            match rustix::net::send(
                fd,
                &self.outgoing[self.sent..],
                rustix::net::SendFlags::NOSIGNAL,
            ) {
                Ok(n) => self.sent += n,
                Err(rustix::io::Errno::AGAIN) => return Ok(false),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.outgoing.clear();
        self.sent = 0;
        Ok(true)
    }

    /// Lets rustls take what arrived and say what it wants, until it needs
    /// more from the peer; `to_send` is encrypted as soon as the handshake
    /// allows. Reads from the socket only when `may_read` (never once the
    /// setup messages are in: what follows is the relay's). `Ok(false)`:
    /// waiting for the socket.
    fn pump(
        &mut self,
        fd: BorrowedFd<'_>,
        mut to_send: Option<&[u8]>,
        may_read: bool,
    ) -> Result<bool, String> {
        loop {
            if let Err(e) = self.flush(fd) {
                return Err(format!("writing to the peer: {e}"));
            }
            let mut need_input = false;
            let status = self.conn.process(&mut self.incoming);
            let discard = status.discard;
            let state = match status.state {
                Ok(s) => s,
                Err(e) => {
                    self.send_alert(fd);
                    return Err(handshake_failure(&self.reader, &e));
                }
            };
            match state {
                ConnectionState::EncodeTlsData(mut s) => encode_into(&mut self.outgoing, &mut s)?,
                // What was encoded stays in `outgoing` and goes out at the
                // top of the loop, in order.
                ConnectionState::TransmitTlsData(s) => s.done(),
                ConnectionState::BlockedHandshake => need_input = true,
                ConnectionState::WriteTraffic(mut w) => {
                    self.done = true;
                    if let Some(data) = to_send.take() {
                        encrypt_into(&mut self.outgoing, &mut w, data)?;
                    } else {
                        need_input = true;
                    }
                }
                ConnectionState::ReadTraffic(mut r) => {
                    while let Some(record) = r.next_record() {
                        let record = record.map_err(|e| format!("reading from the peer: {e}"))?;
                        self.plaintext.extend_from_slice(record.payload);
                    }
                }
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    return Err("the peer closed the TLS session during setup".into());
                }
                other => return Err(format!("unexpected TLS state during setup: {other:?}")),
            }
            self.incoming.drain(..discard);
            if need_input {
                if let Err(e) = self.flush(fd) {
                    return Err(format!("writing to the peer: {e}"));
                }
                if !may_read || (self.done && to_send.is_none() && !self.plaintext.is_empty()) {
                    return Ok(true);
                }
                match self.read_record(fd)? {
                    true => continue,
                    false => return Ok(false),
                }
            }
        }
    }

    /// After a failure, tells the peer why: rustls queued an alert, which
    /// it hands out before reporting its error again. Best effort.
    fn send_alert(&mut self, fd: BorrowedFd<'_>) {
        self.incoming.clear();
        let status = self.conn.process(&mut self.incoming);
        if let Ok(ConnectionState::EncodeTlsData(mut s)) = status.state {
            let at = self.outgoing.len();
            self.outgoing.resize(at + 64, 0);
            match s.encode(&mut self.outgoing[at..]) {
                Ok(n) => self.outgoing.truncate(at + n),
                Err(_) => self.outgoing.truncate(at),
            }
        }
        let _ = self.flush(fd);
    }

    /// Reads ciphertext, never past the current record. `Ok(false)`: nothing to read now.
    fn read_record(&mut self, fd: BorrowedFd<'_>) -> Result<bool, String> {
        let at = self.incoming.len();
        self.incoming.resize(at + MAX_RECORD, 0);
        let r = self.reader.read(fd, &mut self.incoming[at..]);
        match r {
            Ok(0) => {
                self.incoming.truncate(at);
                Err(match self.reader.diagnose() {
                    Some(d) => d.to_owned(),
                    None => "the peer closed the connection during setup".into(),
                })
            }
            Ok(n) => {
                self.incoming.truncate(at + n);
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                self.incoming.truncate(at);
                Ok(false)
            }
            Err(e) => {
                self.incoming.truncate(at);
                Err(format!("reading from the peer: {e}"))
            }
        }
    }

    /// The session's keys, once setup is over and everything is sent.
    fn establish(self) -> Result<Established, String> {
        if !self.incoming.is_empty() {
            return Err("TLS data arrived past the setup records before the answer".into());
        }
        self.conn
            .into_established()
            .map_err(|e| format!("cannot take the session's keys: {e}"))
    }
}

/// The accepting side.
#[derive(Debug)]
pub struct Inbound {
    tls: Option<Handshake<UnbufferedServerConnection>>,
    /// What arrived so far (the preamble).
    buf: Vec<u8>,
    /// Payload that came after the preamble (from a peer that did not wait
    /// for the answer), for the relay.
    early: Vec<u8>,
    /// Bytes of the answer not yet sent on a plaintext channel.
    plain_answer: Vec<u8>,
}

impl Inbound {
    /// Starts setup; `tls` is the server configuration for a TLS channel.
    pub fn new(tls: Option<&Arc<ServerConfig>>) -> Result<Inbound, String> {
        let tls = match tls {
            Some(c) => Some(Handshake::new(
                UnbufferedServerConnection::new(c.clone()).map_err(|e| e.to_string())?,
            )),
            None => None,
        };
        Ok(Inbound {
            tls,
            buf: Vec::new(),
            early: Vec::new(),
            plain_answer: Vec::new(),
        })
    }

    /// Drives the handshake and reads the preamble. On success: the
    /// preamble and whatever payload arrived after it (none from a
    /// well-behaved peer, which waits for the answer).
    pub fn drive(&mut self, fd: BorrowedFd<'_>) -> Step<(Preamble, Vec<u8>)> {
        loop {
            match self.tls.as_mut() {
                Some(hs) => {
                    let waiting = match hs.pump(fd, None, true) {
                        Ok(more) => !more,
                        Err(e) => return Step::Failed(e),
                    };
                    if hs.done || !hs.plaintext.is_empty() {
                        // rustls lets a client without ALPN through; a peer that
                        // does not say it speaks the data channel is not a gateway.
                        if hs.conn.alpn() != Some(crate::tls::ALPN) {
                            return Step::Failed(
                                "the peer did not negotiate the data channel's ALPN (scistream-data/1): not a SciStream gateway".into(),
                            );
                        }
                    }
                    let got = std::mem::take(&mut hs.plaintext);
                    self.buf.extend_from_slice(&got);
                    if got.is_empty() && (waiting || self.buf.is_empty()) {
                        return Step::Pending;
                    }
                }
                None => {
                    let want = Preamble::wanted(&self.buf);
                    if self.buf.len() < want {
                        let mut tmp = [0u8; scistream_protocol::preamble::MAX_LEN];
                        match rustix::io::read(fd, &mut tmp[..want - self.buf.len()]) {
                            Ok(0) => {
                                return Step::Failed(
                                    "the peer closed before sending its preamble".into(),
                                );
                            }
                            Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                            Err(rustix::io::Errno::AGAIN) => return Step::Pending,
                            Err(rustix::io::Errno::INTR) => continue,
                            Err(e) => return Step::Failed(format!("reading the preamble: {e}")),
                        }
                    }
                }
            }
            match Preamble::parse(&self.buf) {
                Ok(Some((p, used))) => {
                    self.early = self.buf[used..].to_vec();
                    return Step::Done((p, self.early.clone()));
                }
                Ok(None) => {
                    if self.tls.is_some() {
                        // More of it comes in another record.
                        continue;
                    }
                }
                Err(_) if self.tls.is_none() && self.buf.first() == Some(&0x16) => {
                    return Step::Failed(
                        "the peer speaks TLS while this gateway runs with --data-tls off".into(),
                    );
                }
                Err(e) => return Step::Refuse(e.refusal(), format!("bad preamble: {e}")),
            }
        }
    }

    /// Sends the answer: accepted, or refused with a reason.
    pub fn answer(&mut self, fd: BorrowedFd<'_>, refusal: Option<Refusal>) -> io::Result<()> {
        let bytes = match refusal {
            None => vec![ACCEPTED],
            Some(r) => vec![REFUSED, r as u8],
        };
        match self.tls.as_mut() {
            Some(hs) => {
                hs.pump(fd, Some(&bytes), false).map_err(io::Error::other)?;
                // Whatever does not fit now is sent by `flush_answer`.
                hs.flush(fd).map(|_| ())
            }
            None => {
                let n = rustix::net::send(fd, &bytes, rustix::net::SendFlags::NOSIGNAL)?;
                if n < bytes.len() {
                    self.plain_answer = bytes[n..].to_vec();
                }
                Ok(())
            }
        }
    }

    /// Finishes sending the answer; `Ok(true)` once it is all out.
    pub fn flush_answer(&mut self, fd: BorrowedFd<'_>) -> io::Result<bool> {
        match self.tls.as_mut() {
            Some(hs) => hs.flush(fd),
            None => {
                while !self.plain_answer.is_empty() {
                    match rustix::net::send(
                        fd,
                        &self.plain_answer,
                        rustix::net::SendFlags::NOSIGNAL,
                    ) {
                        Ok(n) => {
                            self.plain_answer.drain(..n);
                        }
                        Err(rustix::io::Errno::AGAIN) => return Ok(false),
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(true)
            }
        }
    }

    /// The TLS session's keys, for kTLS or the relay; `None` for a plaintext
    /// channel. Call once the answer is out.
    pub fn into_established(self) -> Option<Result<Established, String>> {
        self.tls.map(Handshake::establish)
    }

    /// Payload that arrived after the preamble.
    pub fn take_early(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.early)
    }

    /// No part of a record is left unread (kTLS can take over).
    pub fn at_record_boundary(&self) -> bool {
        self.tls.as_ref().is_none_or(|hs| hs.reader.at_boundary())
    }
}

/// The connecting side.
#[derive(Debug)]
pub struct Outbound {
    tls: Option<Handshake<UnbufferedClientConnection>>,
    preamble: Vec<u8>,
    sent: usize,
    queued: bool,
    answer: Vec<u8>,
}

impl Outbound {
    /// Starts setup: `tls` is the client configuration and the name the
    /// peer's certificate must carry, for a TLS channel.
    pub fn new(
        tls: Option<(&Arc<ClientConfig>, &str)>,
        preamble: &Preamble,
    ) -> Result<Outbound, String> {
        let tls = match tls {
            Some((config, name)) => {
                let name = ServerName::try_from(name.to_owned())
                    .map_err(|_| format!("'{name}' is not a valid name to verify the inbound gateway's certificate against"))?;
                Some(Handshake::new(
                    UnbufferedClientConnection::new(config.clone(), name)
                        .map_err(|e| e.to_string())?,
                ))
            }
            None => None,
        };
        Ok(Outbound {
            tls,
            preamble: preamble.encode(),
            sent: 0,
            queued: false,
            answer: Vec::new(),
        })
    }

    fn check_answer(&self) -> Option<Step<Vec<u8>>> {
        match self.answer.first()? {
            &ACCEPTED => Some(Step::Done(self.answer[1..].to_vec())),
            // A TLS record (alert 0x15, handshake 0x16) on a plaintext channel.
            0x14..=0x18 if self.tls.is_none() => Some(Step::Failed(
                "the inbound gateway answered with TLS: it requires TLS while this gateway runs with --data-tls off".into(),
            )),
            &REFUSED => {
                let code = *self.answer.get(1)?;
                Some(Step::Failed(match Refusal::from_code(code) {
                    Some(r) => format!(
                        "the inbound gateway refused the connection: {}",
                        r.describe()
                    ),
                    None => format!("the inbound gateway refused the connection (code {code})"),
                }))
            }
            other => Some(Step::Failed(format!(
                "the inbound gateway answered {other:#04x}, not a SciStream answer"
            ))),
        }
    }

    /// Drives the handshake, sends the preamble and reads the answer. On
    /// success: whatever payload came with the answer.
    pub fn drive(&mut self, fd: BorrowedFd<'_>) -> Step<Vec<u8>> {
        loop {
            if let Some(step) = self.check_answer() {
                return step;
            }
            match self.tls.as_mut() {
                Some(hs) => {
                    let send = (!self.queued).then_some(self.preamble.as_slice());
                    let r = hs.pump(fd, send, true);
                    if hs.done && send.is_some() {
                        self.queued = true;
                    }
                    let got = std::mem::take(&mut hs.plaintext);
                    self.answer.extend_from_slice(&got);
                    match r {
                        Ok(_) if !got.is_empty() => continue,
                        Ok(_) => return Step::Pending,
                        Err(e) => {
                            return Step::Failed(if self.queued {
                                e
                            } else {
                                format!("{e} (is the inbound gateway running with --data-tls off?)")
                            });
                        }
                    }
                }
                None => {
                    if self.sent < self.preamble.len() {
                        match rustix::net::send(
                            fd,
                            &self.preamble[self.sent..],
                            rustix::net::SendFlags::NOSIGNAL,
                        ) {
                            Ok(n) => self.sent += n,
                            Err(rustix::io::Errno::AGAIN) => return Step::Pending,
                            Err(e) => return Step::Failed(format!("sending the preamble: {e}")),
                        }
                        continue;
                    }
                    let want = if self.answer.first() == Some(&REFUSED) {
                        2
                    } else {
                        1
                    };
                    let mut tmp = [0u8; 2];
                    match rustix::io::read(fd, &mut tmp[..want - self.answer.len()]) {
                        Ok(0) => return Step::Failed("the inbound gateway closed the connection without answering (does it require TLS?)".into()),
                        Ok(n) => self.answer.extend_from_slice(&tmp[..n]),
                        Err(rustix::io::Errno::AGAIN) => return Step::Pending,
                        Err(rustix::io::Errno::INTR) => {}
                        Err(e) => return Step::Failed(format!("reading the answer: {e}")),
                    }
                }
            }
        }
    }

    /// The TLS session's keys, for kTLS or the relay; `None` for a plaintext channel.
    pub fn into_established(self) -> Option<Result<Established, String>> {
        self.tls.map(Handshake::establish)
    }

    /// No part of a record is left unread (kTLS can take over).
    pub fn at_record_boundary(&self) -> bool {
        self.tls.as_ref().is_none_or(|hs| hs.reader.at_boundary())
    }
}
