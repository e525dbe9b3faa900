//! Readiness notification for the workers: one trait, one implementation
//! per kernel interface: [`Epoll`] and [`Uring`].
//!
//! Registration is edge-triggered and persistent: a descriptor is
//! registered once, for reading and writing, and the reactor reports a
//! [`Token`] whenever the kernel wakes it. The consumer must therefore work
//! until `EAGAIN` (or until a condition that another event will end) before
//! waiting again. Nothing is re-armed per operation, and an idle descriptor
//! costs nothing.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use rustix::event::epoll;

use crate::sys::uring::{Completion, Ring};

/// Identifies what a readiness event is for. The worker packs a slot, a
/// generation and a kind into it (see `worker::token`).
pub type Token = u64;

/// One readiness event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// The registration's token.
    pub token: Token,
    /// Readable, peer half-closed, or an error/hang-up: try reading.
    pub readable: bool,
    /// Writable, or an error/hang-up: try writing.
    pub writable: bool,
}

/// A readiness source for one worker.
pub trait Reactor {
    /// Name of the engine, for logs and counters.
    fn name(&self) -> &'static str;
    /// Starts reporting readiness of `fd` under `token`.
    fn register(&mut self, fd: BorrowedFd<'_>, token: Token) -> io::Result<()>;
    /// Stops reporting `fd`. Must be called before the descriptor is closed
    /// (a listener shared with `s2cs` stays open in the other process, and
    /// epoll tracks open file descriptions, not descriptor numbers).
    fn deregister(&mut self, fd: BorrowedFd<'_>, token: Token);
    /// Waits for events (at most `timeout`; `None` waits indefinitely) and
    /// appends them to `out`.
    fn wait(&mut self, out: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()>;
}

/// The epoll engine: one epoll instance per worker, edge-triggered.
pub struct Epoll {
    fd: OwnedFd,
    buf: Vec<epoll::Event>,
}

impl std::fmt::Debug for Epoll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Epoll")
            .field("fd", &self.fd)
            .finish_non_exhaustive()
    }
}

impl Epoll {
    /// A new epoll instance.
    pub fn new() -> io::Result<Self> {
        Ok(Epoll {
            fd: epoll::create(epoll::CreateFlags::CLOEXEC)?,
            buf: Vec::with_capacity(256),
        })
    }
}

impl Reactor for Epoll {
    fn name(&self) -> &'static str {
        "epoll"
    }

    fn register(&mut self, fd: BorrowedFd<'_>, token: Token) -> io::Result<()> {
        use epoll::EventFlags as F;
        epoll::add(
            &self.fd,
            fd,
            epoll::EventData::new_u64(token),
            F::IN | F::OUT | F::RDHUP | F::ET,
        )?;
        Ok(())
    }

    fn deregister(&mut self, fd: BorrowedFd<'_>, _token: Token) {
        // ENOENT (never registered) and EBADF are harmless here.
        let _ = epoll::delete(&self.fd, fd);
    }

    fn wait(&mut self, out: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        use epoll::EventFlags as F;
        let ts = timeout.map(|d| rustix::event::Timespec {
            tv_sec: d.as_secs() as i64,
            tv_nsec: i64::from(d.subsec_nanos()),
        });
        self.buf.clear();
        match epoll::wait(
            &self.fd,
            rustix::buffer::spare_capacity(&mut self.buf),
            ts.as_ref(),
        ) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        for ev in &self.buf {
            let flags = ev.flags;
            let broken = flags.intersects(F::ERR | F::HUP);
            out.push(Event {
                token: ev.data.u64(),
                readable: broken || flags.intersects(F::IN | F::RDHUP | F::PRI),
                writable: broken || flags.contains(F::OUT),
            });
        }
        Ok(())
    }
}

/// The io_uring engine: multishot `POLL_ADD` per descriptor, which
/// behaves like epoll's edge-triggered mode (one completion per wake-up;
/// measured: an idle writable socket yields one `POLLOUT`, not a stream of
/// them), so workers use it exactly as they use [`Epoll`]. Waiting and
/// submitting are one `io_uring_enter`.
#[derive(Debug)]
pub struct Uring {
    ring: Ring,
    /// Registered tokens and their descriptors, to re-arm a multishot poll
    /// that the kernel ended (it does on errors and on CQ overflow).
    fds: HashMap<Token, RawFd>,
    /// Deregistered tokens whose poll has not ended yet: the kernel still
    /// holds their file, so their removal is retried until it ends.
    removing: HashSet<Token>,
    buf: Vec<Completion>,
}

impl Uring {
    /// A ring for one worker.
    pub fn new() -> io::Result<Self> {
        Ok(Uring {
            ring: Ring::new(1024)?,
            fds: HashMap::new(),
            removing: HashSet::new(),
            buf: Vec::with_capacity(256),
        })
    }
}

impl Reactor for Uring {
    fn name(&self) -> &'static str {
        "io_uring"
    }

    fn register(&mut self, fd: BorrowedFd<'_>, token: Token) -> io::Result<()> {
        self.ring.poll_multishot(fd.as_raw_fd(), token)?;
        self.fds.insert(token, fd.as_raw_fd());
        Ok(())
    }

    fn deregister(&mut self, _fd: BorrowedFd<'_>, token: Token) {
        if self.fds.remove(&token).is_some() {
            self.removing.insert(token);
            let _ = self.ring.poll_remove(token);
        }
    }

    fn wait(&mut self, out: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        self.ring.submit_and_wait(timeout)?;
        self.buf.clear();
        self.ring.completions(&mut self.buf);
        for c in &self.buf {
            if c.removal {
                if c.result == -libc::EALREADY && self.removing.contains(&c.user_data) {
                    // The poll was mid-flight; it is still armed. Ask again.
                    self.ring.poll_remove(c.user_data)?;
                } else if c.result == -libc::ENOENT {
                    self.removing.remove(&c.user_data);
                }
                continue;
            }
            if !c.more {
                // A poll that ended: if it was being removed, its file is released now.
                self.removing.remove(&c.user_data);
            }
            // Completions of removed polls (-ECANCELED) and of tokens no
            // longer registered are stale: skip them.
            let Some(&fd) = self.fds.get(&c.user_data) else {
                continue;
            };
            if !c.more {
                self.ring.poll_multishot(fd, c.user_data)?;
            }
            let (readable, writable) = crate::sys::uring::readiness(c.result);
            out.push(Event {
                token: c.user_data,
                readable,
                writable,
            });
        }
        Ok(())
    }
}

pub use scistream_protocol::options::EngineChoice;

/// The engine every worker will run, decided once at start by a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// epoll.
    Epoll,
    /// io_uring.
    IoUring,
}

/// Decides the engine: `auto` probes io_uring (ring setup and the
/// operations used) and falls back to epoll, returning the reason.
pub fn choose(choice: EngineChoice) -> Result<(Engine, Option<String>), io::Error> {
    match choice {
        EngineChoice::Epoll => Ok((
            Engine::Epoll,
            Some("epoll asked for (--engine epoll or S2DS_ENGINE=epoll)".into()),
        )),
        EngineChoice::IoUring => Uring::new().map(|_| (Engine::IoUring, None)).map_err(|e| {
            io::Error::new(e.kind(), format!("io_uring asked for but unavailable: {e}"))
        }),
        EngineChoice::Auto => match Uring::new() {
            Ok(_) => Ok((Engine::IoUring, None)),
            Err(e) => Ok((
                Engine::Epoll,
                Some(format!(
                    "io_uring unavailable ({e}); check kernel.io_uring_disabled and seccomp"
                )),
            )),
        },
    }
}

/// Creates the reactor for one worker, on the worker's own thread.
pub fn create(engine: Engine) -> io::Result<Box<dyn Reactor>> {
    match engine {
        Engine::Epoll => Ok(Box::new(Epoll::new()?)),
        Engine::IoUring => Ok(Box::new(Uring::new()?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;

    /// Both engines report the same things for the same socket events.
    fn engine_reports_edges(mut r: Box<dyn Reactor>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        b.set_nonblocking(true).unwrap();
        r.register(b.as_fd(), 42).unwrap();
        let mut ev = Vec::new();
        r.wait(&mut ev, Some(Duration::from_secs(5))).unwrap();
        assert!(ev.iter().any(|e| e.token == 42 && e.writable), "{ev:?}");
        // Idle: no more events (no busy loop).
        ev.clear();
        r.wait(&mut ev, Some(Duration::from_millis(50))).unwrap();
        assert!(ev.is_empty(), "{ev:?}");
        a.write_all(b"x").unwrap();
        r.wait(&mut ev, Some(Duration::from_secs(5))).unwrap();
        assert!(ev.iter().any(|e| e.token == 42 && e.readable), "{ev:?}");
        // After deregistering, nothing more is reported for it.
        r.deregister(b.as_fd(), 42);
        ev.clear();
        a.write_all(b"y").unwrap();
        r.wait(&mut ev, Some(Duration::from_millis(50))).unwrap();
        assert!(ev.iter().all(|e| e.token != 42), "{ev:?}");
    }

    /// Deregistering right after registering (no wait in between), then
    /// closing, really closes the socket: the peer sees it at once.
    fn engine_releases_closed_sockets(mut r: Box<dyn Reactor>) {
        use std::io::Read;
        for round in 0..20u64 {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let mut a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (b, _) = l.accept().unwrap();
            b.set_nonblocking(true).unwrap();
            r.register(b.as_fd(), round).unwrap();
            r.deregister(b.as_fd(), round);
            drop(b);
            let mut ev = Vec::new();
            r.wait(&mut ev, Some(Duration::ZERO)).unwrap();
            a.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            assert_eq!(
                a.read(&mut [0u8; 1]).unwrap(),
                0,
                "round {round}: peer sees the close"
            );
        }
    }

    #[test]
    fn epoll_releases_closed_sockets() {
        engine_releases_closed_sockets(Box::new(Epoll::new().unwrap()));
    }

    #[test]
    fn io_uring_releases_closed_sockets() {
        match Uring::new() {
            Ok(u) => engine_releases_closed_sockets(Box::new(u)),
            Err(e) => {
                eprintln!("SKIP io_uring_releases_closed_sockets: io_uring unavailable here ({e})")
            }
        }
    }

    #[test]
    fn epoll_reports_edges() {
        engine_reports_edges(Box::new(Epoll::new().unwrap()));
    }

    #[test]
    fn io_uring_reports_edges() {
        match Uring::new() {
            Ok(u) => engine_reports_edges(Box::new(u)),
            Err(e) => eprintln!("SKIP io_uring_reports_edges: io_uring unavailable here ({e})"),
        }
    }
}
