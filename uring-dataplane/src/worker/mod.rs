//! A worker: one thread, pinned to one core, with its own reactor. It owns
//! the listeners assigned to it and every connection they accept, for the
//! connection's whole life, so the data path never crosses cores and needs
//! no locks. Commands from the control thread arrive on a channel, with an
//! eventfd to wake the worker.
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | the thread, its event loop, dispatching events, closing connections |
//! | `commands.rs` | the control thread's commands, one method each |
//! | `accept.rs` | accepting, the per-session cap, how a connection starts |
//! | `timers.rs` | event tokens, setup deadlines, idle timeouts |
//! | `counters.rs` | a session's counters and the statistics built from them |
//! | `handle.rs` | the handles other threads hold |
//!
//! A connection's own logic (preamble, TLS, relaying) is `crate::conn`'s.

mod accept;
mod commands;
mod counters;
mod handle;
mod timers;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use scistream_protocol::handoff::SessionKey;
use slab::Slab;
use tracing::warn;

pub use commands::{ListenerSpec, WorkerCommand};
pub(crate) use counters::{Counters, bump};
pub use handle::{WorkerHandle, WorkerMailbox};
use timers::untoken;
pub(crate) use timers::{Kind, token};

use crate::config::Forward;
use crate::conn::{Conn, ConnCtx, ListenerChannel, Next};
use crate::reactor::{Engine, Event, Reactor, Token};
use crate::relay::set_reset_on_close;
use crate::tls::TlsContext;

/// Options every worker shares.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Most TCP connections of one session open at once on this worker.
    pub max_open_conns: u64,
    /// Size asked for each direction's pipe.
    pub pipe_size: usize,
    /// SO_SNDBUF of forwarded sockets (`None`: kernel autotuning).
    pub sndbuf: Option<usize>,
    /// SO_RCVBUF of forwarded sockets (`None`: kernel autotuning).
    pub rcvbuf: Option<usize>,
    /// TCP_NODELAY on forwarded sockets.
    pub nodelay: bool,
    /// Close connections that moved no byte for this long (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// Keepalive idle time (zero: off).
    pub keepalive: std::time::Duration,
    /// TCP_USER_TIMEOUT (zero: kernel default).
    pub user_timeout: std::time::Duration,
    /// splice or copy.
    pub forward: Forward,
    /// Data-channel TLS configurations.
    pub tls: TlsContext,
    /// What the kernel offers for TLS.
    pub ktls: crate::ktls::KtlsSupport,
    /// Whether to use it.
    pub ktls_choice: crate::ktls::KtlsChoice,
    /// Longest setup (handshake, preamble, answer) of a data connection.
    pub handshake_timeout: Duration,
    /// Refresh TLS keys after this many records sent.
    pub rekey_records: u64,
    /// ...on every suite, not only those with a per-key limit (tests).
    pub rekey_any_suite: bool,
    /// Whose AEAD code seals and opens records in user space.
    pub crypto: crate::record::Crypto,
    /// Where UDP flows from peer gateways go.
    pub udp: crate::udp::UdpPlane,
    /// This data plane's connections to receivers, to refuse tunnel loops.
    pub loop_guard: std::sync::Arc<crate::loop_guard::LoopGuard>,
}

#[derive(Debug)]
struct Listener {
    key: SessionKey,
    index: usize,
    fd: OwnedFd,
    target: SocketAddr,
    rate: Option<u64>,
    channel: ListenerChannel,
    generation: u32,
    counters: Rc<Counters>,
    /// Registered for accepting (a UDP-only listener only holds its port).
    accepting: bool,
}

/// The worker's state; lives on its thread.
#[allow(missing_debug_implementations)]
pub struct Worker {
    id: usize,
    reactor: Box<dyn Reactor>,
    waker: Arc<OwnedFd>,
    commands: mpsc::Receiver<WorkerCommand>,
    options: WorkerOptions,
    listeners: Slab<Listener>,
    conns: Slab<Conn>,
    sessions: HashMap<SessionKey, Rc<Counters>>,
    generation: u32,
    /// Tokens with work left over from their last turn.
    again: Vec<Token>,
    /// Listeners paused after an accept error (descriptor exhaustion), with when to retry.
    paused: Vec<(Token, Instant)>,
    /// Setup deadlines of connections.
    timers: BinaryHeap<Reverse<(Instant, Token)>>,
    /// When to look at a connection's idleness again (`--idle-timeout`).
    idle_timers: BinaryHeap<Reverse<(Instant, Token)>>,
}

/// Starts a worker thread named `s2ds-worker-N`, pinned to `cpu` when
/// given, with its reactor created on that thread. Returns the handle and
/// the name of the engine the reactor runs.
pub fn spawn(
    id: usize,
    cpu: Option<usize>,
    engine: Engine,
    options: WorkerOptions,
) -> io::Result<(WorkerHandle, &'static str)> {
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel::<io::Result<&'static str>>();
    let waker = Arc::new(rustix::event::eventfd(
        0,
        rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
    )?);
    let worker_waker = waker.clone();
    // The thread is never joined: a worker runs as long as the process.
    std::thread::Builder::new().name(format!("s2ds-worker-{id}")).spawn(move || {
        if let Some(cpu) = cpu {
            let mut set = rustix::thread::CpuSet::new();
            set.set(cpu);
            if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
                warn!(worker = id, cpu, error = %e, "cannot pin worker to its core; it runs unpinned");
            }
        }
        let reactor = match crate::reactor::create(engine) {
            Ok(r) => {
                let _ = ready_tx.send(Ok(r.name()));
                r
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        let mut w = Worker {
            id,
            reactor,
            waker: worker_waker,
            commands: rx,
            options,
            listeners: Slab::new(),
            conns: Slab::new(),
            sessions: HashMap::new(),
            generation: 0,
            again: Vec::new(),
            paused: Vec::new(),
            timers: BinaryHeap::new(),
            idle_timers: BinaryHeap::new(),
        };
        w.run();
    })?;
    let engine = ready_rx
        .recv()
        .map_err(|_| io::Error::other("worker thread ended before creating its reactor"))??;
    Ok((WorkerHandle::new(id, tx, waker), engine))
}

impl Worker {
    fn next_generation(&mut self) -> u32 {
        self.generation = self.generation.wrapping_add(1) & 0x0fff_ffff;
        self.generation
    }

    fn run(&mut self) {
        let waker_token = token(Kind::Waker, 0, 0);
        let waker = self.waker.clone();
        if let Err(e) = self.reactor.register(waker.as_fd(), waker_token) {
            warn!(worker = self.id, error = %e, "cannot register the worker's waker; worker stops");
            return;
        }
        let mut events = Vec::with_capacity(256);
        loop {
            let now = Instant::now();
            let timeout = if !self.again.is_empty() {
                Some(Duration::ZERO)
            } else {
                self.paused
                    .iter()
                    .map(|(_, at)| *at)
                    .chain(self.timers.peek().map(|Reverse((at, _))| *at))
                    .chain(self.idle_timers.peek().map(|Reverse((at, _))| *at))
                    .min()
                    .map(|at| at.saturating_duration_since(now))
            };
            events.clear();
            if let Err(e) = self.reactor.wait(&mut events, timeout) {
                warn!(worker = self.id, error = %e, "waiting for events failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            for ev in events.drain(..) {
                if ev.token == waker_token {
                    let _ = rustix::io::read(&*self.waker, &mut [0u8; 8]);
                    if !self.drain_commands() {
                        return;
                    }
                } else {
                    self.dispatch(ev);
                }
            }
            for t in std::mem::take(&mut self.again) {
                self.dispatch(Event {
                    token: t,
                    readable: true,
                    writable: true,
                });
            }
            self.expire();
            self.expire_idle();
            if !self.paused.is_empty() {
                let now = Instant::now();
                let (due, later): (Vec<_>, Vec<_>) =
                    self.paused.drain(..).partition(|(_, at)| *at <= now);
                self.paused = later;
                for (t, _) in due {
                    self.dispatch(Event {
                        token: t,
                        readable: true,
                        writable: true,
                    });
                }
            }
        }
    }

    /// Handles queued commands; false when the control side is gone.
    fn drain_commands(&mut self) -> bool {
        loop {
            match self.commands.try_recv() {
                Ok(cmd) => self.command(cmd),
                Err(mpsc::TryRecvError::Empty) => return true,
                Err(mpsc::TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn dispatch(&mut self, ev: Event) {
        let (kind, slot, generation) = untoken(ev.token);
        match kind {
            Some(Kind::Listener) => {
                if self
                    .listeners
                    .get(slot)
                    .is_some_and(|l| l.generation == generation)
                {
                    self.accept(slot);
                }
            }
            Some(Kind::Client | Kind::Target) => {
                if self
                    .conns
                    .get(slot)
                    .is_some_and(|c| c.generation == generation)
                {
                    self.drive(slot);
                }
            }
            Some(Kind::Waker) | None => {}
        }
    }
}

impl Worker {
    /// Takes a connection as far as it can go now.
    pub(crate) fn drive(&mut self, slot: usize) {
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        let span = c.span.clone();
        let _entered = span.enter();
        let mut ctx = ConnCtx {
            worker: self.id,
            reactor: &mut *self.reactor,
            options: &self.options,
            again: &mut self.again,
        };
        let next = loop {
            match c.step(slot, &mut ctx) {
                Next::Again => continue,
                other => break other,
            }
        };
        if let Next::Close { reset } = next {
            self.close_conn(slot, reset);
        }
    }

    /// Starts connecting a raw or outbound connection to its target (an
    /// outbound one to the session's next target if that one cannot even
    /// be tried).
    pub(super) fn connect_target(&mut self, slot: usize) -> Result<(), String> {
        let c = self.conns.get_mut(slot).ok_or("connection vanished")?;
        let mut ctx = ConnCtx {
            worker: self.id,
            reactor: &mut *self.reactor,
            options: &self.options,
            again: &mut self.again,
        };
        match c.connect_target(slot, &mut ctx) {
            Ok(()) => Ok(()),
            Err(e) => match c.fail_over(slot, &mut ctx, &e) {
                Some(_) => Ok(()),
                None => Err(e),
            },
        }
    }

    /// Refuses a connection during setup (see [`Conn::refuse`]) and resets it.
    pub(super) fn reject(&mut self, slot: usize, reason: &str) {
        if let Some(c) = self.conns.get(slot) {
            c.refuse(self.id, reason);
        }
        self.close_conn(slot, true);
    }

    /// Closes a connection; with `reset`, both peers get a reset.
    pub(crate) fn close_conn(&mut self, slot: usize, reset: bool) {
        if !self.conns.contains(slot) {
            return;
        }
        let c = self.conns.remove(slot);
        self.reactor
            .deregister(c.client.as_fd(), token(Kind::Client, slot, c.generation));
        if reset {
            set_reset_on_close(&c.client);
        }
        if let Some(target) = &c.target {
            self.reactor
                .deregister(target.as_fd(), token(Kind::Target, slot, c.generation));
            if reset {
                set_reset_on_close(target);
            }
        }
        let open = c.counters.conns_open.get();
        c.counters.conns_open.set(open.saturating_sub(1));
    }
}
