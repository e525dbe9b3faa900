//! Setting up a connection between gateways, before any payload moves:
//! the TLS handshake (when the channel is TLS), the preamble, the answer.
//! Both sides are state machines driven by readiness, like the relays.
//!
//! Inbound (the connection was accepted from a peer gateway):
//! handshake → read the preamble → (the worker checks the uid and connects
//! to the receiver) → answer. Outbound (we connected to the peer's listener):
//! handshake → send the preamble → read the answer.

use std::io::{self, Read, Write};
use std::os::fd::BorrowedFd;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};
use scistream_protocol::preamble::{ACCEPTED, Preamble, REFUSED, Refusal};

use crate::tls::{FdIo, RecordRead, RecordReader};

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

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// Pushes rustls's queued ciphertext out; false when the socket is full.
fn flush(conn: &mut rustls::Connection, fd: BorrowedFd<'_>) -> io::Result<bool> {
    while conn.wants_write() {
        match conn.write_tls(&mut FdIo(fd)) {
            Ok(_) => {}
            Err(e) if would_block(&e) => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Reads one batch of ciphertext (never past a record) and processes it.
/// `Ok(false)`: nothing to read now.
fn pull(
    conn: &mut rustls::Connection,
    reader: &mut RecordReader,
    fd: BorrowedFd<'_>,
    what: &str,
) -> Result<bool, String> {
    match conn.read_tls(&mut RecordRead(reader, fd)) {
        Ok(0) => Err(match reader.diagnose() {
            Some(d) => d.to_owned(),
            None => format!("the peer closed the connection {what}"),
        }),
        Ok(_) => match conn.process_new_packets() {
            Ok(_) => Ok(true),
            Err(e) => {
                // Tell the peer why (an alert), best effort.
                let _ = flush(conn, fd);
                Err(match reader.diagnose() {
                    Some(d) => d.to_owned(),
                    None => format!("TLS handshake failed: {e}"),
                })
            }
        },
        Err(e) if would_block(&e) => Ok(false),
        Err(e) => Err(format!("reading {what}: {e}")),
    }
}

/// The accepting side.
#[derive(Debug)]
pub struct Inbound {
    tls: Option<rustls::Connection>,
    reader: RecordReader,
    buf: Vec<u8>,
}

impl Inbound {
    /// Starts setup; `tls` is the server configuration for a TLS channel.
    pub fn new(tls: Option<&Arc<ServerConfig>>) -> Result<Inbound, String> {
        let tls = match tls {
            Some(c) => Some(
                ServerConnection::new(c.clone())
                    .map_err(|e| e.to_string())?
                    .into(),
            ),
            None => None,
        };
        Ok(Inbound {
            tls,
            reader: RecordReader::default(),
            buf: Vec::new(),
        })
    }

    /// Drives the handshake and reads the preamble. On success: the
    /// preamble and whatever payload arrived after it (none from a
    /// well-behaved peer, which waits for the answer).
    pub fn drive(&mut self, fd: BorrowedFd<'_>) -> Step<(Preamble, Vec<u8>)> {
        loop {
            if let Some(conn) = self.tls.as_mut() {
                if let Err(e) = flush(conn, fd) {
                    return Step::Failed(format!("writing the handshake: {e}"));
                }
                if !conn.is_handshaking() {
                    // rustls lets a client without ALPN through; a peer that
                    // does not say it speaks the data channel is not a gateway.
                    if conn.alpn_protocol() != Some(crate::tls::ALPN) {
                        return Step::Failed(
                            "the peer did not negotiate the data channel's ALPN (scistream-data/1): not a SciStream gateway".into(),
                        );
                    }
                    let mut tmp = [0u8; 512];
                    match conn.reader().read(&mut tmp) {
                        Ok(0) => {
                            return Step::Failed(
                                "the peer closed before sending its preamble".into(),
                            );
                        }
                        Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                        Err(e) if would_block(&e) => {}
                        Err(e) => return Step::Failed(format!("reading the preamble: {e}")),
                    }
                }
            } else {
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
            if !self.buf.is_empty() {
                match Preamble::parse(&self.buf) {
                    Ok(Some((p, used))) => return Step::Done((p, self.buf[used..].to_vec())),
                    Ok(None) => {}
                    Err(e) if self.tls.is_none() && self.buf.first() == Some(&0x16) => {
                        let _ = e;
                        return Step::Failed(
                            "the peer speaks TLS while this gateway runs with --data-tls off"
                                .into(),
                        );
                    }
                    Err(e) => return Step::Refuse(e.refusal(), format!("bad preamble: {e}")),
                }
            }
            if let Some(conn) = self.tls.as_mut() {
                match pull(conn, &mut self.reader, fd, "during the TLS handshake") {
                    Ok(true) => continue,
                    Ok(false) => return Step::Pending,
                    Err(e) => return Step::Failed(e),
                }
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
            Some(conn) => {
                conn.writer().write_all(&bytes)?;
                // Whatever does not fit now is flushed by the relay.
                flush(conn, fd).map(|_| ())
            }
            None => {
                let n = rustix::net::send(fd, &bytes, rustix::net::SendFlags::NOSIGNAL)?;
                if n == bytes.len() {
                    Ok(())
                } else {
                    Err(io::ErrorKind::WriteZero.into())
                }
            }
        }
    }

    /// The TLS session, for the relay; `None` for a plaintext channel.
    pub fn into_tls(self) -> Option<rustls::Connection> {
        self.tls
    }

    /// No part of a record is left unread (kTLS can take over).
    pub fn at_record_boundary(&self) -> bool {
        self.reader.at_boundary()
    }
}

/// The connecting side.
#[derive(Debug)]
pub struct Outbound {
    tls: Option<rustls::Connection>,
    reader: RecordReader,
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
                Some(
                    ClientConnection::new(config.clone(), name)
                        .map_err(|e| e.to_string())?
                        .into(),
                )
            }
            None => None,
        };
        Ok(Outbound {
            tls,
            reader: RecordReader::default(),
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

    /// Drives the handshake, sends the preamble, reads the answer. On
    /// acceptance: any payload that followed the answer.
    pub fn drive(&mut self, fd: BorrowedFd<'_>) -> Step<Vec<u8>> {
        loop {
            if let Some(step) = self.check_answer() {
                return step;
            }
            match self.tls.as_mut() {
                Some(conn) => {
                    if !conn.is_handshaking() && !self.queued {
                        if let Err(e) = conn.writer().write_all(&self.preamble) {
                            return Step::Failed(format!("sending the preamble: {e}"));
                        }
                        self.queued = true;
                    }
                    if let Err(e) = flush(conn, fd) {
                        return Step::Failed(format!("writing to the inbound gateway: {e}"));
                    }
                    if self.queued {
                        let mut tmp = [0u8; 16];
                        match conn.reader().read(&mut tmp) {
                            Ok(0) => {
                                return Step::Failed(
                                    "the inbound gateway closed the connection after the handshake"
                                        .into(),
                                );
                            }
                            Ok(n) => {
                                self.answer.extend_from_slice(&tmp[..n]);
                                continue;
                            }
                            Err(e) if would_block(&e) => {}
                            Err(e) => return Step::Failed(format!("reading the answer: {e}")),
                        }
                    }
                    match pull(conn, &mut self.reader, fd, "before answering") {
                        Ok(true) => continue,
                        Ok(false) => return Step::Pending,
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

    /// The TLS session, for the relay; `None` for a plaintext channel.
    pub fn into_tls(self) -> Option<rustls::Connection> {
        self.tls
    }

    /// No part of a record is left unread (kTLS can take over).
    pub fn at_record_boundary(&self) -> bool {
        self.reader.at_boundary()
    }
}
