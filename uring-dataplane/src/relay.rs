//! Forwarding one connection: two directions, each `socket → pipe → socket`
//! with `splice(2)`, so payload bytes never enter user space.
//!
//! Each direction owns a pipe sized with `F_SETPIPE_SZ`, created when the
//! first byte (or the end of stream) is waiting in its source and kept until
//! the connection closes: a connection that has carried nothing yet costs
//! its two sockets and no pipe, so idle detector connections stay cheap in
//! descriptors and in the user's pipe-buffer quota. (Until then, a
//! `MSG_PEEK` stands in for the `splice` that would find nothing: the same
//! number of system calls.) A direction moves data until the source would block, the
//! pipe is full and the destination would block, or the source reached EOF
//! and the pipe is empty — then it shuts down the destination's write side
//! (half-close propagates). An error on either socket (reset, broken pipe)
//! aborts the whole connection, and both peers see a reset.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use std::sync::atomic::{AtomicBool, Ordering};

use rustix::io::Errno;
use rustix::net::{RecvFlags, Shutdown};
use rustix::pipe::{PipeFlags, SpliceFlags};

/// The pipe-size warning is logged once per process.
static WARNED_PIPE_SIZE: AtomicBool = AtomicBool::new(false);

/// How many splice calls one direction makes per wake-up before yielding
/// to other connections on the worker.
const ROUNDS_PER_TURN: usize = 16;

/// A pipe used as the in-kernel buffer of one direction.
#[derive(Debug)]
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
    /// Bytes in the pipe now.
    filled: usize,
}

impl Pipe {
    fn new(size: usize) -> io::Result<Self> {
        let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        let capacity = match rustix::pipe::fcntl_setpipe_size(&write, size) {
            Ok(got) => got,
            // EPERM: above fs.pipe-max-size or the user's pipe quota; keep the default size.
            Err(_) => {
                if !WARNED_PIPE_SIZE.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        pipe_size = size,
                        "the kernel refused the pipe size asked for (fs.pipe-max-size or the user's pipe quota); using its default"
                    );
                }
                rustix::pipe::fcntl_getpipe_size(&write)?
            }
        };
        Ok(Pipe {
            read,
            write,
            capacity,
            filled: 0,
        })
    }
}

/// One direction of a connection.
#[derive(Debug)]
struct Direction {
    /// Created when the source first has something (see the module text).
    pipe: Option<Pipe>,
    pipe_size: usize,
    /// The source sent FIN.
    eof: bool,
    /// We shut down the destination's write side.
    shut: bool,
    /// Bytes delivered to the destination.
    delivered: u64,
    /// The source is a kTLS socket: non-data records stop `splice`.
    src_ktls: bool,
    /// The destination is a kTLS socket: it gets a close_notify before FIN.
    dst_ktls: bool,
    /// A kTLS source sent close_notify (its EOF is clean).
    close_notify: bool,
}

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

/// A connection being forwarded: the accepted client and its target.
#[derive(Debug)]
pub struct SpliceRelay {
    to_target: Direction,
    to_client: Direction,
    ktls: bool,
}

impl SpliceRelay {
    /// A relay whose pipes (of `pipe_size` bytes, or the kernel's default
    /// when it refuses that size) are made when data first arrives.
    pub fn new(pipe_size: usize) -> Self {
        let dir = || Direction {
            pipe: None,
            pipe_size,
            eof: false,
            shut: false,
            delivered: 0,
            src_ktls: false,
            dst_ktls: false,
            close_notify: false,
        };
        SpliceRelay {
            to_target: dir(),
            to_client: dir(),
            ktls: false,
        }
    }

    /// Pipes held now (for tests and accounting).
    pub fn pipes(&self) -> usize {
        usize::from(self.to_target.pipe.is_some()) + usize::from(self.to_client.pipe.is_some())
    }

    /// Marks one side as a kTLS socket (`on_client`: the accepted socket,
    /// else the target): records that are not data are handled, and the
    /// other side's EOF becomes a close_notify then a FIN.
    pub fn with_ktls(mut self, on_client: bool) -> Self {
        self.ktls = true;
        let (from, to) = if on_client {
            (&mut self.to_target, &mut self.to_client)
        } else {
            (&mut self.to_client, &mut self.to_target)
        };
        from.src_ktls = true;
        to.dst_ktls = true;
        self
    }

    /// One side is kTLS.
    pub fn is_ktls(&self) -> bool {
        self.ktls
    }

    /// Bytes delivered (to the target, to the client).
    pub fn delivered(&self) -> (u64, u64) {
        (self.to_target.delivered, self.to_client.delivered)
    }

    /// Moves whatever can move now, in both directions.
    pub fn turn(&mut self, client: &OwnedFd, target: &OwnedFd) -> Result<Turn, RelayError> {
        let a = pump(&mut self.to_target, client, target, ("client", "target"))?;
        let b = pump(&mut self.to_client, target, client, ("target", "client"))?;
        Ok(if self.to_target.shut && self.to_client.shut {
            Turn::Finished
        } else if a == Turn::MoreWork || b == Turn::MoreWork {
            Turn::MoreWork
        } else {
            Turn::Idle
        })
    }
}

fn would_block(e: Errno) -> bool {
    e == Errno::AGAIN || e == Errno::INTR
}

/// Runs one direction until it would block or its budget is spent.
fn pump(
    d: &mut Direction,
    src: &OwnedFd,
    dst: &OwnedFd,
    sides: (&'static str, &'static str),
) -> Result<Turn, RelayError> {
    if d.shut {
        return Ok(Turn::Idle);
    }
    for _ in 0..ROUNDS_PER_TURN {
        let mut progressed = false;
        if !d.eof && d.pipe.is_none() {
            match pending(d, src, sides.0)? {
                Pending::Nothing => {}
                Pending::Eof => {
                    d.eof = true;
                    progressed = true;
                }
                Pending::Data => {
                    let pipe = Pipe::new(d.pipe_size).map_err(|source| RelayError::Pipe {
                        side: sides.0,
                        source,
                    })?;
                    d.pipe = Some(pipe);
                }
            }
        }
        let room = match &d.pipe {
            Some(p) if !d.eof => p.capacity - p.filled,
            _ => 0,
        };
        if let (Some(pipe), true) = (&d.pipe, room > 0) {
            match rustix::pipe::splice(
                src.as_fd(),
                None,
                &pipe.write,
                None,
                room,
                SpliceFlags::NONBLOCK | SpliceFlags::MOVE,
            ) {
                Ok(0) => {
                    if d.src_ktls && !d.close_notify {
                        return Err(truncated(sides.0));
                    }
                    d.eof = true;
                    progressed = true;
                }
                Ok(n) => {
                    if let Some(p) = d.pipe.as_mut() {
                        p.filled += n;
                    }
                    progressed = true;
                }
                Err(e) if would_block(e) => {}
                // kTLS: splice stops at a record that is not application data.
                Err(Errno::INVAL | Errno::IO) if d.src_ktls => {
                    control_record(d, src, sides.0)?;
                    progressed = true;
                }
                Err(e) => {
                    return Err(RelayError::Read {
                        side: sides.0,
                        source: e.into(),
                    });
                }
            }
        }
        if let Some(pipe) = d.pipe.as_mut().filter(|p| p.filled > 0) {
            match rustix::pipe::splice(
                &pipe.read,
                None,
                dst.as_fd(),
                None,
                pipe.filled,
                SpliceFlags::NONBLOCK | SpliceFlags::MOVE,
            ) {
                Ok(n) => {
                    pipe.filled -= n;
                    d.delivered += n as u64;
                    progressed |= n > 0;
                }
                Err(e) if would_block(e) => {}
                Err(e) => {
                    return Err(RelayError::Write {
                        side: sides.1,
                        source: e.into(),
                    });
                }
            }
        }
        if d.eof && d.pipe.as_ref().is_none_or(|p| p.filled == 0) {
            if d.dst_ktls {
                // TLS: close_notify (warning, close_notify), then FIN.
                crate::sys::ktls::send_record(dst.as_fd(), 21, &[1, 0]).map_err(|source| {
                    RelayError::Write {
                        side: sides.1,
                        source,
                    }
                })?;
            }
            match rustix::net::shutdown(dst, Shutdown::Write) {
                Ok(()) | Err(Errno::NOTCONN) => {}
                Err(e) => {
                    return Err(RelayError::Write {
                        side: sides.1,
                        source: e.into(),
                    });
                }
            }
            d.shut = true;
            // Done with this direction: its pipe goes back to the kernel.
            d.pipe = None;
            return Ok(Turn::Idle);
        }
        if !progressed {
            return Ok(Turn::Idle);
        }
    }
    Ok(Turn::MoreWork)
}

/// What waits in a source that has no pipe yet.
enum Pending {
    Nothing,
    Data,
    Eof,
}

/// Looks without taking: `MSG_PEEK` of one byte. A kTLS source is not
/// peeked at (a control record would stop it): it gets its pipe at once.
fn pending(d: &Direction, src: &OwnedFd, side: &'static str) -> Result<Pending, RelayError> {
    if d.src_ktls {
        return Ok(Pending::Data);
    }
    let mut byte = [0u8; 1];
    match rustix::net::recv(src, &mut byte, RecvFlags::PEEK | RecvFlags::DONTWAIT) {
        Ok((0, _)) => Ok(Pending::Eof),
        Ok(_) => Ok(Pending::Data),
        Err(e) if would_block(e) => Ok(Pending::Nothing),
        Err(e) => Err(RelayError::Read {
            side,
            source: e.into(),
        }),
    }
}

fn truncated(side: &'static str) -> RelayError {
    RelayError::Read {
        side,
        source: io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the peer closed without close_notify (truncation)",
        ),
    }
}

/// How a connection's bytes are moved.
#[derive(Debug)]
pub enum Relay {
    /// Through a pipe with `splice` (zero copies in user space).
    Splice(SpliceRelay),
    /// Through a user-space buffer with `read`/`write`.
    Copy(crate::copy::CopyRelay),
    /// A TLS leg handled by rustls in user space.
    Tls(Box<crate::tlsrelay::TlsRelay>),
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

/// Reads the record that stopped `splice` on a kTLS source and acts on it.
fn control_record(d: &mut Direction, src: &OwnedFd, side: &'static str) -> Result<(), RelayError> {
    let mut buf = [0u8; 512];
    let (record_type, n) = crate::sys::ktls::recv_record(src.as_fd(), &mut buf)
        .map_err(|source| RelayError::Read { side, source })?;
    match crate::ktls::classify(record_type, &buf[..n]) {
        crate::ktls::ControlRecord::CloseNotify => {
            d.close_notify = true;
            d.eof = true;
            Ok(())
        }
        crate::ktls::ControlRecord::Data => Err(RelayError::Read {
            side,
            source: io::Error::other(
                "kTLS returned application data where splice saw a control record",
            ),
        }),
        crate::ktls::ControlRecord::Alert(why) | crate::ktls::ControlRecord::Handshake(why) => {
            Err(RelayError::Read {
                side,
                source: io::Error::new(io::ErrorKind::ConnectionAborted, why),
            })
        }
    }
}

/// Makes the next close of `fd` send a reset instead of a FIN.
pub fn set_reset_on_close(fd: &OwnedFd) {
    let _ = rustix::net::sockopt::set_socket_linger(fd, Some(std::time::Duration::ZERO));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    /// A connected (ours, peer) pair on loopback with our end non-blocking.
    fn pair() -> (OwnedFd, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (ours, _) = l.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        (OwnedFd::from(ours), peer)
    }

    fn run_until_idle(r: &mut SpliceRelay, c: &OwnedFd, t: &OwnedFd) -> Turn {
        loop {
            match r.turn(c, t).unwrap() {
                Turn::MoreWork => continue,
                other => return other,
            }
        }
    }

    #[test]
    fn forwards_both_ways_and_propagates_half_close() {
        let (client, mut client_peer) = pair();
        let (target, mut target_peer) = pair();
        let mut relay = SpliceRelay::new(1 << 16);

        client_peer.write_all(b"hello target").unwrap();
        client_peer.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = Vec::new();
        while got.len() < 12 {
            run_until_idle(&mut relay, &client, &target);
            let mut buf = [0; 64];
            let n = target_peer.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"hello target");
        // The client's FIN reached the target as EOF...
        std::thread::sleep(Duration::from_millis(20));
        run_until_idle(&mut relay, &client, &target);
        assert_eq!(target_peer.read(&mut [0; 8]).unwrap(), 0);
        // ...and the target can still answer.
        target_peer.write_all(b"reply").unwrap();
        target_peer.shutdown(std::net::Shutdown::Write).unwrap();
        let mut reply = Vec::new();
        let turn = loop {
            let t = run_until_idle(&mut relay, &client, &target);
            if t == Turn::Finished {
                break t;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(turn, Turn::Finished);
        client_peer.read_to_end(&mut reply).unwrap();
        assert_eq!(reply, b"reply");
        assert_eq!(relay.delivered(), (12, 5));
    }

    #[test]
    fn pipes_come_with_the_first_bytes_and_go_with_the_direction() {
        let (client, mut client_peer) = pair();
        let (target, mut target_peer) = pair();
        let mut relay = SpliceRelay::new(1 << 16);
        assert_eq!(run_until_idle(&mut relay, &client, &target), Turn::Idle);
        assert_eq!(relay.pipes(), 0, "an idle connection holds no pipe");

        client_peer.write_all(b"first").unwrap();
        let mut got = [0u8; 5];
        let mut n = 0;
        target_peer
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        while n < 5 {
            run_until_idle(&mut relay, &client, &target);
            n += target_peer.read(&mut got[n..]).unwrap_or(0);
        }
        assert_eq!(&got, b"first");
        assert_eq!(relay.pipes(), 1, "only the direction that carried bytes");

        // An end of stream before any byte needs no pipe either.
        target_peer.shutdown(std::net::Shutdown::Write).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        run_until_idle(&mut relay, &client, &target);
        assert_eq!(client_peer.read(&mut [0u8; 4]).unwrap(), 0);
        assert_eq!(relay.pipes(), 1);
    }

    #[test]
    fn a_reset_is_an_error() {
        let (client, client_peer) = pair();
        let (target, _target_peer) = pair();
        let mut relay = SpliceRelay::new(1 << 16);
        let s = socket2::SockRef::from(&client_peer);
        s.set_linger(Some(Duration::ZERO)).unwrap();
        drop(client_peer);
        std::thread::sleep(Duration::from_millis(20));
        assert!(matches!(
            relay.turn(&client, &target),
            Err(RelayError::Read { side: "client", .. })
        ));
    }
}
