//! Readiness notification for the workers: one trait, one implementation
//! per kernel interface (epoll here; io_uring alongside it).
//!
//! Registration is edge-triggered and persistent: a descriptor is
//! registered once, for reading and writing, and the reactor reports a
//! [`Token`] whenever the kernel wakes it. The consumer must therefore work
//! until `EAGAIN` (or until a condition that another event will end) before
//! waiting again. Nothing is re-armed per operation, and an idle descriptor
//! costs nothing.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::event::epoll;

/// Identifies what a readiness event is for. The worker packs a slot, a
/// generation and a kind into it (see `worker::Tok`).
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

/// Which engine to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineChoice {
    /// io_uring when the kernel allows it, else epoll.
    Auto,
    /// epoll only.
    Epoll,
}

/// Creates the reactor for one worker, on the worker's own thread.
pub fn create(choice: EngineChoice) -> io::Result<Box<dyn Reactor>> {
    match choice {
        EngineChoice::Auto | EngineChoice::Epoll => Ok(Box::new(Epoll::new()?)),
    }
}
