//! Forwarding one connection's bytes, both ways, once it is set up.
//!
//! Three relays, one per way of moving bytes, chosen per connection by
//! `conn.rs`:
//!
//! - [`splice`]: `socket → pipe → socket` with `splice(2)`, payload never in
//!   user space (plaintext legs, and kTLS legs where the kernel does the
//!   crypto);
//! - [`copy`]: `read`/`write` through a user-space buffer (`--forward copy`,
//!   kept to measure against);
//! - [`tls`]: one leg TLS in user space, records sealed and opened by our
//!   own record layer ([`crate::record`]).
//!
//! Every relay is driven the same way: the worker calls `turn` when either
//! socket is ready, and the relay moves what it can without blocking,
//! within a budget of [`ROUNDS_PER_TURN`] rounds, and says what it achieved
//! ([`Turn`]). A direction that sees its source's end, with nothing left to
//! deliver, shuts down its destination's write side (half-close
//! propagates); an error on either socket ends the connection.

pub mod copy;
pub mod splice;
pub mod tls;

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::io::Errno;
use rustix::net::Shutdown;

pub use copy::CopyRelay;
pub use splice::SpliceRelay;
pub use tls::{TlsRelay, TlsSession};

/// How many rounds one direction makes per wake-up before yielding to
/// other connections on the worker.
pub(crate) const ROUNDS_PER_TURN: usize = 16;

/// What a turn achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// Waiting for readiness; nothing more to do until an event.
    Idle,
    /// Stopped by the per-turn budget with work left: run again soon.
    MoreWork,
    /// Both directions finished cleanly: close the connection.
    Finished,
}

/// Errors that end a connection.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Reading from one side failed (usually a reset).
    #[error("reading from {side}: {source}")]
    Read {
        /// `client` or `target`.
        side: &'static str,
        /// The errno.
        source: io::Error,
    },
    /// Writing to one side failed (reset, broken pipe).
    #[error("writing to {side}: {source}")]
    Write {
        /// `client` or `target`.
        side: &'static str,
        /// The errno.
        source: io::Error,
    },
    /// No pipe could be made for a direction's first bytes (out of
    /// descriptors, or of pipe memory).
    #[error("cannot create a pipe to forward {side}'s first bytes: {source}")]
    Pipe {
        /// `client` or `target`: whose bytes were waiting.
        side: &'static str,
        /// The errno.
        source: io::Error,
    },
}

impl RelayError {
    /// The peer sent something TLS forbids (a record that fails
    /// authentication, is too long, or is out of place): not a network
    /// failure but a broken or hostile peer.
    pub fn is_peer_violation(&self) -> bool {
        matches!(self, RelayError::Read { source, .. } if source.kind() == io::ErrorKind::InvalidData)
    }
}

/// One direction of a plaintext relay (client to target, or target to
/// client): its buffer `B` (a pipe, or user-space memory) and how far it got.
#[derive(Debug)]
pub(crate) struct Direction<B> {
    pub(crate) buf: B,
    /// The source sent FIN.
    pub(crate) eof: bool,
    /// We shut down the destination's write side.
    pub(crate) shut: bool,
    /// Bytes delivered to the destination.
    pub(crate) delivered: u64,
    /// Client to target (else target to client).
    to_target: bool,
}

impl<B> Direction<B> {
    /// The source's name, for errors: `client` or `target`.
    pub(crate) fn from(&self) -> &'static str {
        if self.to_target { "client" } else { "target" }
    }

    /// The destination's name, for errors.
    pub(crate) fn to(&self) -> &'static str {
        if self.to_target { "target" } else { "client" }
    }

    pub(crate) fn read_error(&self, source: impl Into<io::Error>) -> RelayError {
        RelayError::Read {
            side: self.from(),
            source: source.into(),
        }
    }

    pub(crate) fn write_error(&self, source: impl Into<io::Error>) -> RelayError {
        RelayError::Write {
            side: self.to(),
            source: source.into(),
        }
    }

    /// Half-close: the source ended and everything was delivered, so the
    /// destination's write side is shut down.
    pub(crate) fn shut_destination(&mut self, dst: &OwnedFd) -> Result<(), RelayError> {
        shut_write(dst, self.to())?;
        self.shut = true;
        Ok(())
    }
}

/// Both directions of a plaintext relay.
#[derive(Debug)]
pub(crate) struct Directions<B> {
    pub(crate) to_target: Direction<B>,
    pub(crate) to_client: Direction<B>,
}

impl<B> Directions<B> {
    pub(crate) fn new(buf: impl Fn() -> B) -> Self {
        let direction = |to_target| Direction {
            buf: buf(),
            eof: false,
            shut: false,
            delivered: 0,
            to_target,
        };
        Directions {
            to_target: direction(true),
            to_client: direction(false),
        }
    }

    /// Bytes delivered (to the target, to the client).
    pub(crate) fn delivered(&self) -> (u64, u64) {
        (self.to_target.delivered, self.to_client.delivered)
    }

    /// Runs `pump` on each direction, and says what the connection's turn
    /// achieved.
    pub(crate) fn turn(
        &mut self,
        client: &OwnedFd,
        target: &OwnedFd,
        mut pump: impl FnMut(&mut Direction<B>, &OwnedFd, &OwnedFd) -> Result<Turn, RelayError>,
    ) -> Result<Turn, RelayError> {
        let a = pump(&mut self.to_target, client, target)?;
        let b = pump(&mut self.to_client, target, client)?;
        Ok(if self.to_target.shut && self.to_client.shut {
            Turn::Finished
        } else if a == Turn::MoreWork || b == Turn::MoreWork {
            Turn::MoreWork
        } else {
            Turn::Idle
        })
    }
}

/// The call would block (or was interrupted): try again on readiness.
pub(crate) fn would_block(e: Errno) -> bool {
    e == Errno::AGAIN || e == Errno::INTR
}

/// Shuts down `dst`'s write side (its peer sees EOF); a socket the peer
/// already disconnected is not an error.
pub(crate) fn shut_write(dst: impl AsFd, side: &'static str) -> Result<(), RelayError> {
    match rustix::net::shutdown(dst, Shutdown::Write) {
        Ok(()) | Err(Errno::NOTCONN) => Ok(()),
        Err(e) => Err(RelayError::Write {
            side,
            source: e.into(),
        }),
    }
}

/// How a connection's bytes are moved.
#[derive(Debug)]
pub enum Relay {
    /// Through a pipe with `splice` (zero copies in user space).
    Splice(SpliceRelay),
    /// Through a user-space buffer with `read`/`write`.
    Copy(CopyRelay),
    /// A TLS leg handled by rustls in user space.
    Tls(Box<TlsRelay>),
}

impl Relay {
    /// See [`SpliceRelay::turn`].
    pub fn turn(&mut self, client: &OwnedFd, target: &OwnedFd) -> Result<Turn, RelayError> {
        match self {
            Relay::Splice(r) => r.turn(client, target),
            Relay::Copy(r) => r.turn(client, target),
            Relay::Tls(r) => r.turn(client, target),
        }
    }

    /// Bytes delivered (to the target, to the client).
    pub fn delivered(&self) -> (u64, u64) {
        match self {
            Relay::Splice(r) => r.delivered(),
            Relay::Copy(r) => r.delivered(),
            Relay::Tls(r) => r.delivered(),
        }
    }

    /// TLS key updates sent (0 for plaintext relays).
    pub fn key_updates(&self) -> u64 {
        match self {
            Relay::Tls(r) => r.rekeys,
            _ => 0,
        }
    }

    /// `splice`, `copy` or `tls-user`, for counters.
    pub fn mode(&self) -> &'static str {
        match self {
            Relay::Splice(r) if r.is_ktls() => "ktls",
            Relay::Splice(_) => "splice",
            Relay::Copy(_) => "copy",
            Relay::Tls(_) => "tls-user",
        }
    }
}

/// Makes the next close of `fd` send a reset instead of a FIN.
pub fn set_reset_on_close(fd: &OwnedFd) {
    let _ = rustix::net::sockopt::set_socket_linger(fd, Some(std::time::Duration::ZERO));
}

/// A connected (ours, peer) pair on loopback with our end non-blocking,
/// for the relays' tests.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn test_pair() -> (OwnedFd, std::net::TcpStream) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (ours, _) = l.accept().unwrap();
    ours.set_nonblocking(true).unwrap();
    peer.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    (OwnedFd::from(ours), peer)
}
