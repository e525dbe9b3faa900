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
use rustix::net::RecvFlags;
use rustix::pipe::{PipeFlags, SpliceFlags};

use super::{Direction, Directions, ROUNDS_PER_TURN, RelayError, Turn, would_block};

/// The pipe-size warning is logged once per process.
static WARNED_PIPE_SIZE: AtomicBool = AtomicBool::new(false);

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

/// A direction's buffer: its pipe, and whether either end is kTLS.
#[derive(Debug)]
pub(crate) struct Spliced {
    /// Created when the source first has something (see the module text).
    pipe: Option<Pipe>,
    pipe_size: usize,
    /// The source is a kTLS socket: non-data records stop `splice`.
    src_ktls: bool,
    /// The destination is a kTLS socket: it gets a close_notify before FIN.
    dst_ktls: bool,
    /// A kTLS source sent close_notify (its EOF is clean).
    close_notify: bool,
}

/// A connection being forwarded: the accepted client and its target.
#[derive(Debug)]
pub struct SpliceRelay {
    directions: Directions<Spliced>,
    ktls: bool,
}

impl SpliceRelay {
    /// A relay whose pipes (of `pipe_size` bytes, or the kernel's default
    /// when it refuses that size) are made when data first arrives.
    pub fn new(pipe_size: usize) -> Self {
        SpliceRelay {
            directions: Directions::new(|| Spliced {
                pipe: None,
                pipe_size,
                src_ktls: false,
                dst_ktls: false,
                close_notify: false,
            }),
            ktls: false,
        }
    }

    /// Pipes held now (for tests and accounting).
    pub fn pipes(&self) -> usize {
        let d = &self.directions;
        usize::from(d.to_target.buf.pipe.is_some()) + usize::from(d.to_client.buf.pipe.is_some())
    }

    /// Marks one side as a kTLS socket (`on_client`: the accepted socket,
    /// else the target): records that are not data are handled, and the
    /// other side's EOF becomes a close_notify then a FIN.
    pub fn with_ktls(mut self, on_client: bool) -> Self {
        self.ktls = true;
        let d = &mut self.directions;
        let (from, to) = if on_client {
            (&mut d.to_target, &mut d.to_client)
        } else {
            (&mut d.to_client, &mut d.to_target)
        };
        from.buf.src_ktls = true;
        to.buf.dst_ktls = true;
        self
    }

    /// One side is kTLS.
    pub fn is_ktls(&self) -> bool {
        self.ktls
    }

    /// Bytes delivered (to the target, to the client).
    pub fn delivered(&self) -> (u64, u64) {
        self.directions.delivered()
    }

    /// Moves whatever can move now, in both directions.
    pub fn turn(&mut self, client: &OwnedFd, target: &OwnedFd) -> Result<Turn, RelayError> {
        self.directions.turn(client, target, pump)
    }
}

type Dir = Direction<Spliced>;

/// Runs one direction until it would block or its budget is spent.
fn pump(d: &mut Dir, src: &OwnedFd, dst: &OwnedFd) -> Result<Turn, RelayError> {
    if d.shut {
        return Ok(Turn::Idle);
    }
    for _ in 0..ROUNDS_PER_TURN {
        let mut progressed = false;
        if !d.eof && d.buf.pipe.is_none() {
            progressed |= make_pipe_if_pending(d, src)?;
        }
        progressed |= fill(d, src)?;
        progressed |= drain(d, dst)?;
        if d.eof && d.buf.pipe.as_ref().is_none_or(|p| p.filled == 0) {
            if d.buf.dst_ktls {
                // TLS: close_notify (warning, close_notify), then FIN.
                crate::sys::ktls::send_record(dst.as_fd(), 21, &[1, 0])
                    .map_err(|e| d.write_error(e))?;
            }
            d.shut_destination(dst)?;
            // Done with this direction: its pipe goes back to the kernel.
            d.buf.pipe = None;
            return Ok(Turn::Idle);
        }
        if !progressed {
            return Ok(Turn::Idle);
        }
    }
    Ok(Turn::MoreWork)
}

/// A direction without a pipe gets one when its source has something;
/// `true` when the source ended instead.
fn make_pipe_if_pending(d: &mut Dir, src: &OwnedFd) -> Result<bool, RelayError> {
    match pending(d, src)? {
        Pending::Nothing => Ok(false),
        Pending::Eof => {
            d.eof = true;
            Ok(true)
        }
        Pending::Data => {
            let pipe = Pipe::new(d.buf.pipe_size).map_err(|source| RelayError::Pipe {
                side: d.from(),
                source,
            })?;
            d.buf.pipe = Some(pipe);
            Ok(false)
        }
    }
}

/// Source into the pipe; `true` on progress.
fn fill(d: &mut Dir, src: &OwnedFd) -> Result<bool, RelayError> {
    let room = match &d.buf.pipe {
        Some(p) if !d.eof => p.capacity - p.filled,
        _ => 0,
    };
    let Some(pipe) = d.buf.pipe.as_mut().filter(|_| room > 0) else {
        return Ok(false);
    };
    let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
    match rustix::pipe::splice(src.as_fd(), None, &pipe.write, None, room, flags) {
        Ok(0) => {
            if d.buf.src_ktls && !d.buf.close_notify {
                return Err(truncated(d.from()));
            }
            d.eof = true;
            Ok(true)
        }
        Ok(n) => {
            pipe.filled += n;
            Ok(true)
        }
        Err(e) if would_block(e) => Ok(false),
        // kTLS: splice stops at a record that is not application data.
        Err(Errno::INVAL | Errno::IO) if d.buf.src_ktls => {
            control_record(d, src)?;
            Ok(true)
        }
        Err(e) => Err(d.read_error(e)),
    }
}

/// Pipe into the destination; `true` on progress.
fn drain(d: &mut Dir, dst: &OwnedFd) -> Result<bool, RelayError> {
    let Some(pipe) = d.buf.pipe.as_mut().filter(|p| p.filled > 0) else {
        return Ok(false);
    };
    let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
    match rustix::pipe::splice(&pipe.read, None, dst.as_fd(), None, pipe.filled, flags) {
        Ok(n) => {
            pipe.filled -= n;
            d.delivered += n as u64;
            Ok(n > 0)
        }
        Err(e) if would_block(e) => Ok(false),
        Err(e) => Err(d.write_error(e)),
    }
}

/// What waits in a source that has no pipe yet.
enum Pending {
    Nothing,
    Data,
    Eof,
}

/// Looks without taking: `MSG_PEEK` of one byte. A kTLS source is not
/// peeked at (a control record would stop it): it gets its pipe at once.
fn pending(d: &Dir, src: &OwnedFd) -> Result<Pending, RelayError> {
    if d.buf.src_ktls {
        return Ok(Pending::Data);
    }
    let mut byte = [0u8; 1];
    match rustix::net::recv(src, &mut byte, RecvFlags::PEEK | RecvFlags::DONTWAIT) {
        Ok((0, _)) => Ok(Pending::Eof),
        Ok(_) => Ok(Pending::Data),
        Err(e) if would_block(e) => Ok(Pending::Nothing),
        Err(e) => Err(d.read_error(e)),
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

/// Reads the record that stopped `splice` on a kTLS source and acts on it.
fn control_record(d: &mut Dir, src: &OwnedFd) -> Result<(), RelayError> {
    let mut buf = [0u8; 512];
    let (record_type, n) =
        crate::sys::ktls::recv_record(src.as_fd(), &mut buf).map_err(|e| d.read_error(e))?;
    match crate::ktls::classify(record_type, &buf[..n]) {
        crate::ktls::ControlRecord::CloseNotify => {
            d.buf.close_notify = true;
            d.eof = true;
            Ok(())
        }
        crate::ktls::ControlRecord::Data => Err(d.read_error(io::Error::other(
            "kTLS returned application data where splice saw a control record",
        ))),
        crate::ktls::ControlRecord::Alert(why) | crate::ktls::ControlRecord::Handshake(why) => {
            Err(d.read_error(io::Error::new(io::ErrorKind::ConnectionAborted, why)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::test_pair as pair;
    use std::io::{Read, Write};
    use std::time::Duration;

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
