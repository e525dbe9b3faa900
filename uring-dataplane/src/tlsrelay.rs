//! Forwarding a connection whose gateway-side leg is TLS, in user space
//! (when the kernel has no kTLS): plaintext leg ⇄ rustls ⇄ TLS leg.
//!
//! Ciphertext is read from the socket in large gulps into one reused buffer
//! and fed to rustls from there (rustls alone would read 4 KiB per call);
//! queued records go out with one `writev`. Backpressure both ways: the
//! plaintext leg is read only once rustls's ciphertext is flushed, and
//! ciphertext is taken in only once decrypted data has been delivered.
//!
//! Keys are refreshed (TLS 1.3 KeyUpdate) every `rekey_after` records sent,
//! well before AES-GCM's limit of about 2^24 records per key; rustls also
//! does so on its own near the limit, and answers the peer's KeyUpdates.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::io::Errno;
use rustix::net::Shutdown;

use crate::relay::{RelayError, Turn};
use crate::tls::FdIo;

const ROUNDS_PER_TURN: usize = 16;
const CHUNK: usize = 256 << 10;
/// Largest TLS record payload.
const RECORD: usize = 16 << 10;

/// Keys refreshed every this many records by default: 2^22 records of 16 KiB
/// (64 GiB), a quarter of AES-GCM's per-key budget.
pub const DEFAULT_REKEY_RECORDS: u64 = 1 << 22;

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// A connection with a TLS leg, forwarded in user space.
pub struct TlsRelay {
    tls: rustls::Connection,
    /// The TLS leg is the accepted client socket (inbound gateway) rather than the target.
    tls_on_client: bool,
    rekey_after: u64,
    records_since_rekey: u64,
    /// The suite has a per-key limit (AES-GCM): keys must be refreshed.
    limited: bool,
    /// Key updates sent.
    pub rekeys: u64,
    /// Plaintext read from the plain leg (allocated once, on first use).
    scratch: Box<[u8]>,
    /// Ciphertext read from the socket, not yet given to rustls: `cipher[pos..len]`.
    cipher: Box<[u8]>,
    cipher_pos: usize,
    cipher_len: usize,
    /// Plaintext for the plain leg, not yet written: `out[pos..len]`.
    out: Box<[u8]>,
    out_pos: usize,
    out_len: usize,
    plain_eof: bool,
    tls_shut: bool,
    tls_eof: bool,
    plain_shut: bool,
    to_tls: u64,
    to_plain: u64,
}

impl std::fmt::Debug for TlsRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsRelay")
            .field("to_tls", &self.to_tls)
            .field("to_plain", &self.to_plain)
            .finish_non_exhaustive()
    }
}

impl TlsRelay {
    /// Wraps a set-up TLS session. `early` is plaintext that arrived during
    /// setup and belongs to the plain leg.
    /// `rekey_after` records between key updates; `rekey_any` refreshes
    /// keys on every suite, not only those with a per-key limit (tests).
    pub fn new(
        mut tls: rustls::Connection,
        tls_on_client: bool,
        early: Vec<u8>,
        rekey_after: u64,
        rekey_any: bool,
    ) -> TlsRelay {
        // The relay bounds what it hands rustls (one chunk, and only once the
        // previous ciphertext is out), so rustls's own cap would only get in the way.
        tls.set_buffer_limit(None);
        let limited = rekey_any
            || tls
                .negotiated_cipher_suite()
                .is_none_or(crate::ktls::has_key_limit);
        TlsRelay {
            limited,
            tls,
            tls_on_client,
            rekey_after: rekey_after.max(1),
            records_since_rekey: 0,
            rekeys: 0,
            scratch: Box::default(),
            cipher: Box::default(),
            cipher_pos: 0,
            cipher_len: 0,
            out_pos: 0,
            out_len: early.len(),
            out: early.into_boxed_slice(),
            plain_eof: false,
            tls_shut: false,
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
        self.tls
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default()
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
            let mut progressed = self.flush(tfd, sides.0)?;
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

    fn flush(&mut self, tfd: BorrowedFd<'_>, side: &'static str) -> Result<bool, RelayError> {
        let mut progressed = false;
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut FdIo(tfd)) {
                Ok(n) => progressed |= n > 0,
                Err(e) if would_block(&e) => break,
                Err(source) => return Err(RelayError::Write { side, source }),
            }
        }
        Ok(progressed)
    }

    fn plain_to_tls(
        &mut self,
        pfd: BorrowedFd<'_>,
        tfd: BorrowedFd<'_>,
        sides: (&'static str, &'static str),
    ) -> Result<bool, RelayError> {
        if self.plain_eof {
            if !self.tls.wants_write() && !self.tls_shut {
                match rustix::net::shutdown(tfd, Shutdown::Write) {
                    Ok(()) | Err(Errno::NOTCONN) => {}
                    Err(e) => {
                        return Err(RelayError::Write {
                            side: sides.0,
                            source: e.into(),
                        });
                    }
                }
                self.tls_shut = true;
                return Ok(true);
            }
            return Ok(false);
        }
        if self.tls.wants_write() {
            return Ok(false);
        }
        if self.scratch.is_empty() {
            self.scratch = vec![0u8; CHUNK].into_boxed_slice();
        }
        match rustix::io::read(pfd, &mut self.scratch[..]) {
            Ok(0) => {
                self.plain_eof = true;
                self.tls.send_close_notify();
                Ok(true)
            }
            Ok(n) => {
                self.tls
                    .writer()
                    .write_all(&self.scratch[..n])
                    .map_err(|source| RelayError::Write {
                        side: sides.0,
                        source,
                    })?;
                self.to_tls += n as u64;
                self.records_since_rekey += n.div_ceil(RECORD) as u64;
                if self.records_since_rekey >= self.rekey_after && self.limited {
                    self.tls
                        .refresh_traffic_keys()
                        .map_err(|e| RelayError::Write {
                            side: sides.0,
                            source: io::Error::other(e),
                        })?;
                    self.records_since_rekey = 0;
                    self.rekeys += 1;
                }
                Ok(true)
            }
            Err(Errno::AGAIN | Errno::INTR) => Ok(false),
            Err(e) => Err(RelayError::Read {
                side: sides.1,
                source: e.into(),
            }),
        }
    }

    fn tls_to_plain(
        &mut self,
        tfd: BorrowedFd<'_>,
        pfd: BorrowedFd<'_>,
        sides: (&'static str, &'static str),
    ) -> Result<bool, RelayError> {
        let mut progressed = false;
        // Deliver what is decrypted first.
        if self.out_pos < self.out_len {
            match rustix::net::send(
                pfd,
                &self.out[self.out_pos..self.out_len],
                rustix::net::SendFlags::NOSIGNAL,
            ) {
                Ok(n) => {
                    self.out_pos += n;
                    self.to_plain += n as u64;
                    progressed = true;
                }
                Err(Errno::AGAIN | Errno::INTR) => return Ok(false),
                Err(e) => {
                    return Err(RelayError::Write {
                        side: sides.1,
                        source: e.into(),
                    });
                }
            }
            if self.out_pos < self.out_len {
                return Ok(progressed);
            }
        }
        (self.out_pos, self.out_len) = (0, 0);
        if self.tls_eof {
            if !self.plain_shut {
                match rustix::net::shutdown(pfd, Shutdown::Write) {
                    Ok(()) | Err(Errno::NOTCONN) => {}
                    Err(e) => {
                        return Err(RelayError::Write {
                            side: sides.1,
                            source: e.into(),
                        });
                    }
                }
                self.plain_shut = true;
                progressed = true;
            }
            return Ok(progressed);
        }
        if self.out.len() < CHUNK {
            self.out = vec![0u8; CHUNK].into_boxed_slice();
        }
        // Plaintext rustls already holds.
        match self.tls.reader().read(&mut self.out) {
            Ok(0) => {
                self.tls_eof = true;
                return Ok(true);
            }
            Ok(n) => {
                self.out_len = n;
                return Ok(true);
            }
            Err(e) if would_block(&e) => {}
            // UnexpectedEof: the peer closed without close_notify (truncation).
            Err(e) => {
                return Err(RelayError::Read {
                    side: sides.0,
                    source: e,
                });
            }
        }
        // More ciphertext: from our buffer, else from the socket.
        if self.cipher_pos >= self.cipher_len {
            if self.cipher.is_empty() {
                self.cipher = vec![0u8; CHUNK].into_boxed_slice();
            }
            (self.cipher_pos, self.cipher_len) = (0, 0);
            match rustix::io::read(tfd, &mut self.cipher[..]) {
                Ok(0) => {
                    // EOF: let rustls see it; its reader then says clean close or truncation.
                    let _ = self.tls.read_tls(&mut io::empty());
                    self.process(sides.0)?;
                    return Ok(true);
                }
                Ok(n) => self.cipher_len = n,
                Err(Errno::AGAIN | Errno::INTR) => return Ok(progressed),
                Err(e) => {
                    return Err(RelayError::Read {
                        side: sides.0,
                        source: e.into(),
                    });
                }
            }
        }
        while self.cipher_pos < self.cipher_len {
            let mut rest = &self.cipher[self.cipher_pos..self.cipher_len];
            match self.tls.read_tls(&mut rest) {
                Ok(0) => break,
                Ok(n) => {
                    self.cipher_pos += n;
                    self.process(sides.0)?;
                }
                // rustls's buffer is full of undelivered plaintext: deliver first.
                Err(_) => break,
            }
        }
        Ok(true)
    }

    fn process(&mut self, side: &'static str) -> Result<(), RelayError> {
        self.tls
            .process_new_packets()
            .map(|_| ())
            .map_err(|e| RelayError::Read {
                side,
                source: io::Error::new(io::ErrorKind::InvalidData, e),
            })
    }
}
