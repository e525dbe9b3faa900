//! A worker: one thread, pinned to one core, with its own reactor. It owns
//! the listeners assigned to it and every connection they accept, for the
//! connection's whole life, so the data path never crosses cores and needs
//! no locks. Commands from the control thread arrive on a channel, with an
//! eventfd to wake the worker.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::net::SocketFlags;
use scistream_protocol::Target;
use scistream_protocol::handoff::{
    ConnStats, Failure, MAX_LISTED_CONNECTIONS, SessionKey, SessionStats,
};
use slab::Slab;
use tracing::{debug, info, warn};

use crate::config::Forward;
use crate::conn::{Conn, ConnCtx, ConnState, ListenerChannel, Next, tune};
use crate::reactor::{Engine, Event, Reactor, Token};
use crate::relay::set_reset_on_close;
use crate::setup::Inbound;
use crate::tls::TlsContext;

/// Connections accepted per listener per wake-up before others get a turn.
const ACCEPT_BATCH: usize = 64;

/// What the control thread asks of a worker.
#[derive(Debug)]
pub enum WorkerCommand {
    /// Accept on this listener and forward to `target`.
    AddListener {
        /// The session.
        key: SessionKey,
        /// Listener index within the session.
        index: usize,
        /// The listening socket (non-blocking).
        fd: OwnedFd,
        /// Where its connections go.
        target: SocketAddr,
        /// Pacing of each connection, bytes per second.
        rate: Option<u64>,
        /// What its connections carry.
        channel: ListenerChannel,
        /// Accept TCP connections on it (false: a UDP-only session's
        /// instrument side, whose TCP socket only holds the port).
        accept: bool,
        /// Acknowledgement.
        done: mpsc::Sender<Result<(), String>>,
    },
    /// A UDP flow's connection ([`crate::udp`]): forward it as if the
    /// listener `index` of the session had accepted it, flagged as UDP.
    AdoptFlow {
        /// The session.
        key: SessionKey,
        /// Listener index within the session.
        index: usize,
        /// This worker's end of the flow's socket pair.
        fd: OwnedFd,
        /// The UDP sender that opened the flow (for logs and status).
        sender: SocketAddr,
    },
    /// New targets for a session's listeners on this worker (by index).
    SetTargets {
        /// The session.
        key: SessionKey,
        /// Target per listener index.
        targets: Vec<Target>,
        /// Acknowledgement.
        done: mpsc::Sender<Result<(), String>>,
    },
    /// Close the session's listeners and connections on this worker.
    RemoveSession {
        /// The session.
        key: SessionKey,
        /// Acknowledgement.
        done: mpsc::Sender<Result<(), String>>,
    },
    /// Close every listener on this worker; connections stay (draining).
    CloseListeners {
        /// Acknowledgement.
        done: mpsc::Sender<Result<(), String>>,
    },
    /// Report counters.
    Stats {
        /// Where to send them.
        reply: mpsc::Sender<Vec<SessionStats>>,
    },
}

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

/// Token layout: kind (4 bits) | generation (28 bits) | slot (32 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Waker = 0,
    Listener = 1,
    Client = 2,
    Target = 3,
}

pub(crate) fn token(kind: Kind, slot: usize, generation: u32) -> Token {
    ((kind as u64) << 60)
        | (u64::from(generation & 0x0fff_ffff) << 32)
        | (slot as u64 & 0xffff_ffff)
}

fn untoken(t: Token) -> (Option<Kind>, usize, u32) {
    let kind = match t >> 60 {
        0 => Some(Kind::Waker),
        1 => Some(Kind::Listener),
        2 => Some(Kind::Client),
        3 => Some(Kind::Target),
        _ => None,
    };
    (
        kind,
        (t & 0xffff_ffff) as usize,
        ((t >> 32) & 0x0fff_ffff) as u32,
    )
}

/// Connections refused past `--max-open-conns`, logged: 5 per 10 s.
static OVER_CAP: scistream_protocol::loglimit::LogLimit =
    scistream_protocol::loglimit::LogLimit::new(5, Duration::from_secs(10));

/// Counters of one session on this worker. Plain cells: only this thread touches them.
#[derive(Debug, Default)]
pub struct Counters {
    pub(crate) conns_open: std::cell::Cell<u64>,
    pub(crate) conns_total: std::cell::Cell<u64>,
    pub(crate) bytes_to_target: std::cell::Cell<u64>,
    pub(crate) bytes_from_target: std::cell::Cell<u64>,
    pub(crate) errors: std::cell::Cell<u64>,
    pub(crate) rejected: std::cell::Cell<u64>,
    pub(crate) key_updates: std::cell::Cell<u64>,
    /// Why the session's latest connection failed or was refused, and when.
    pub(crate) last_failure: std::cell::RefCell<Option<(Instant, String)>>,
}

impl Counters {
    /// Notes why a connection of the session failed (shown in its status).
    pub(crate) fn failed(&self, why: impl Into<String>) {
        *self.last_failure.borrow_mut() = Some((Instant::now(), why.into()));
    }

    fn last_failure(&self) -> Option<Failure> {
        self.last_failure
            .borrow()
            .as_ref()
            .map(|(at, why)| Failure {
                reason: why.clone(),
                age_ms: at.elapsed().as_millis() as u64,
            })
    }
}

pub(crate) fn bump(c: &std::cell::Cell<u64>, by: u64) {
    c.set(c.get().wrapping_add(by));
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

/// The control thread's handle on a worker.
#[derive(Debug)]
pub struct WorkerHandle {
    /// Worker number.
    pub id: usize,
    tx: mpsc::Sender<WorkerCommand>,
    waker: Arc<OwnedFd>,
}

/// A handle on a worker that other threads may keep (the UDP flows').
#[derive(Debug, Clone)]
pub struct WorkerMailbox {
    id: usize,
    tx: mpsc::Sender<WorkerCommand>,
    waker: Arc<OwnedFd>,
}

impl WorkerMailbox {
    /// Queues a command and wakes the worker.
    pub fn send(&self, cmd: WorkerCommand) -> Result<(), String> {
        self.tx
            .send(cmd)
            .map_err(|_| format!("worker {} has stopped", self.id))?;
        wake(&self.waker);
        Ok(())
    }
}

impl WorkerHandle {
    /// A handle for another thread.
    pub fn mailbox(&self) -> WorkerMailbox {
        WorkerMailbox {
            id: self.id,
            tx: self.tx.clone(),
            waker: self.waker.clone(),
        }
    }

    /// Queues a command and wakes the worker.
    pub fn send(&self, cmd: WorkerCommand) -> Result<(), String> {
        self.tx
            .send(cmd)
            .map_err(|_| format!("worker {} has stopped", self.id))?;
        wake(&self.waker);
        Ok(())
    }
}

fn wake(fd: &OwnedFd) {
    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
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
    Ok((WorkerHandle { id, tx, waker }, engine))
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

    fn command(&mut self, cmd: WorkerCommand) {
        match cmd {
            WorkerCommand::AddListener {
                key,
                index,
                fd,
                target,
                rate,
                channel,
                accept,
                done,
            } => {
                let counters = self.sessions.entry(key.clone()).or_default().clone();
                let generation = self.next_generation();
                let entry = self.listeners.vacant_entry();
                let t = token(Kind::Listener, entry.key(), generation);
                let result = if accept {
                    self.reactor
                        .register(fd.as_fd(), t)
                        .map_err(|e| e.to_string())
                } else {
                    Ok(())
                };
                if result.is_ok() {
                    debug!(worker = self.id, session = %key, index, %target, "listener added");
                    entry.insert(Listener {
                        key,
                        index,
                        fd,
                        target,
                        rate,
                        channel,
                        generation,
                        counters,
                        accepting: accept,
                    });
                    if accept {
                        // Connections may have queued before we registered: accept them now.
                        self.again.push(t);
                    }
                }
                let _ = done.send(result);
            }
            WorkerCommand::AdoptFlow {
                key,
                index,
                fd,
                sender,
            } => {
                let slot = self
                    .listeners
                    .iter()
                    .find(|(_, l)| l.key == key && l.index == index)
                    .map(|(slot, _)| slot);
                match slot {
                    Some(slot) => self.start_conn(slot, fd, Some(sender)),
                    // The session went meanwhile: closing the pair ends the flow.
                    None => {
                        debug!(worker = self.id, session = %key, index, "UDP flow for a session no longer here")
                    }
                }
            }
            WorkerCommand::SetTargets { key, targets, done } => {
                let all: std::sync::Arc<[Target]> = targets.clone().into();
                for (_, l) in self.listeners.iter_mut().filter(|(_, l)| l.key == key) {
                    let Some(t) = targets.get(l.index) else {
                        continue;
                    };
                    l.target = t.addr;
                    if let ListenerChannel::ToPeer { targets, .. } = &mut l.channel {
                        *targets = all.clone();
                    }
                }
                let _ = done.send(Ok(()));
            }
            WorkerCommand::CloseListeners { done } => {
                let slots: Vec<usize> = self.listeners.iter().map(|(i, _)| i).collect();
                let n = slots.len();
                for slot in slots {
                    let l = self.listeners.remove(slot);
                    if l.accepting {
                        self.reactor
                            .deregister(l.fd.as_fd(), token(Kind::Listener, slot, l.generation));
                    }
                }
                info!(
                    worker = self.id,
                    listeners = n,
                    "listeners closed; draining connections"
                );
                let _ = done.send(Ok(()));
            }
            WorkerCommand::RemoveSession { key, done } => {
                self.remove_session(&key);
                let _ = done.send(Ok(()));
            }
            WorkerCommand::Stats { reply } => {
                let mut stats: HashMap<&SessionKey, SessionStats> = self
                    .sessions
                    .iter()
                    .map(|(key, c)| {
                        let s = SessionStats {
                            key: key.clone(),
                            conns_open: c.conns_open.get(),
                            conns_total: c.conns_total.get(),
                            bytes_to_target: c.bytes_to_target.get(),
                            bytes_from_target: c.bytes_from_target.get(),
                            errors: c.errors.get(),
                            rejected: c.rejected.get(),
                            key_updates: c.key_updates.get(),
                            last_failure: c.last_failure(),
                            connections: Vec::new(),
                            udp: Default::default(),
                        };
                        (key, s)
                    })
                    .collect();
                for (_, c) in self.conns.iter() {
                    let Some(s) = stats.get_mut(&c.key) else {
                        continue;
                    };
                    if s.connections.len() >= MAX_LISTED_CONNECTIONS {
                        continue;
                    }
                    let (up, down) = match &c.state {
                        ConnState::Relaying { relay, .. } => relay.delivered(),
                        _ => (0, 0),
                    };
                    let mode = c.state.mode();
                    s.connections.push(ConnStats {
                        worker: self.id as u32,
                        listener: c.listener,
                        peer: c.peer,
                        target: c.target_addr,
                        bytes_to_target: up,
                        bytes_from_target: down,
                        age_ms: c.accepted.elapsed().as_millis() as u64,
                        // A UDP flow's connection says so: `udp+tls`, `udp+ktls`, …
                        mode: if c.udp {
                            format!("udp+{mode}")
                        } else {
                            mode.into()
                        },
                    });
                }
                let _ = reply.send(stats.into_values().collect());
            }
        }
    }

    fn remove_session(&mut self, key: &SessionKey) {
        let listeners: Vec<usize> = self
            .listeners
            .iter()
            .filter(|(_, l)| &l.key == key)
            .map(|(i, _)| i)
            .collect();
        for slot in listeners {
            let l = self.listeners.remove(slot);
            if l.accepting {
                self.reactor
                    .deregister(l.fd.as_fd(), token(Kind::Listener, slot, l.generation));
            }
        }
        let conns: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| &c.key == key)
            .map(|(i, _)| i)
            .collect();
        let n = conns.len();
        for slot in conns {
            self.close_conn(slot, true);
        }
        self.sessions.remove(key);
        info!(worker = self.id, session = %key, connections_closed = n, "session removed");
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

    fn accept(&mut self, slot: usize) {
        for _ in 0..ACCEPT_BATCH {
            let Some(l) = self.listeners.get(slot) else {
                return;
            };
            match rustix::net::accept_with(&l.fd, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC) {
                Ok(client) if l.counters.conns_open.get() >= self.options.max_open_conns => {
                    self.refuse_over_cap(slot, client);
                }
                Ok(client) => self.start_conn(slot, client, None),
                Err(Errno::AGAIN) => return,
                Err(Errno::INTR | Errno::CONNABORTED | Errno::PROTO) => continue,
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS/ENOMEM: the connection stays queued in
                    // the kernel; retry in a moment instead of spinning.
                    warn!(worker = self.id, session = %l.key, error = %e, "cannot accept a connection; retrying in 100 ms");
                    let t = token(Kind::Listener, slot, l.generation);
                    self.paused
                        .push((t, Instant::now() + Duration::from_millis(100)));
                    return;
                }
            }
        }
        if let Some(l) = self.listeners.get(slot) {
            self.again.push(token(Kind::Listener, slot, l.generation));
        }
    }

    /// A connection past `--max-open-conns`: reset at once, counted
    /// as refused with its reason, logged within a rate limit.
    fn refuse_over_cap(&self, slot: usize, client: OwnedFd) {
        let Some(l) = self.listeners.get(slot) else {
            return;
        };
        set_reset_on_close(&client);
        drop(client);
        bump(&l.counters.rejected, 1);
        let max = self.options.max_open_conns;
        l.counters.failed(format!(
            "a connection was refused: the session has {max} open on one worker, as many as --max-open-conns allows (a tunnel loop?)"
        ));
        if OVER_CAP.check(Instant::now()).log {
            warn!(worker = self.id, session = %l.key, listener = l.index, max, "a connection refused: the session has as many open as --max-open-conns allows on this worker; a loop between gateways ends here");
        }
    }

    /// Starts forwarding a connection of a listener: one it accepted, or a
    /// UDP flow's (`udp_sender`), whose client end is a Unix socket.
    fn start_conn(
        &mut self,
        listener_slot: usize,
        client: OwnedFd,
        udp_sender: Option<SocketAddr>,
    ) {
        let Some(l) = self.listeners.get(listener_slot) else {
            return;
        };
        let (key, target_addr, counters, index, rate, channel) = (
            l.key.clone(),
            l.target,
            l.counters.clone(),
            l.index,
            l.rate,
            l.channel.clone(),
        );
        let peer = match udp_sender {
            Some(sender) => sender,
            None => {
                let peer = rustix::net::getpeername(&client)
                    .ok()
                    .flatten()
                    .and_then(|a| SocketAddr::try_from(a).ok())
                    .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
                tune(&client, &self.options, rate);
                peer
            }
        };
        bump(&counters.conns_total, 1);
        let (state, deadline) = match &channel {
            ListenerChannel::FromPeer {
                tls, client_cert, ..
            } => {
                let config = if *tls {
                    // A session whose uid is not random needs the peer's
                    // certificate too: its own configuration, chosen per listener.
                    let config = if *client_cert {
                        self.options.tls.server_mtls()
                    } else {
                        self.options.tls.server()
                    };
                    match config {
                        Some(c) => Some(c),
                        None => {
                            bump(&counters.rejected, 1);
                            warn!(worker = self.id, session = %key, %peer, client_cert, "TLS data channel asked for, but this gateway has no --data-cert (or no --peer-ca for mutual TLS); closing");
                            set_reset_on_close(&client);
                            return;
                        }
                    }
                } else {
                    None
                };
                match Inbound::new(config.as_ref()) {
                    Ok(inbound) => (
                        ConnState::Preamble(Box::new(inbound)),
                        Some(Instant::now() + self.options.handshake_timeout),
                    ),
                    Err(e) => {
                        bump(&counters.errors, 1);
                        warn!(worker = self.id, session = %key, error = %e, "cannot start TLS; closing");
                        set_reset_on_close(&client);
                        return;
                    }
                }
            }
            ListenerChannel::ToPeer { .. } => (
                ConnState::Connecting(None),
                Some(Instant::now() + self.options.handshake_timeout),
            ),
            ListenerChannel::Raw => (ConnState::Connecting(None), None),
        };
        let generation = self.next_generation();
        let entry = self.conns.vacant_entry();
        let slot = entry.key();
        if let Err(e) = self
            .reactor
            .register(client.as_fd(), token(Kind::Client, slot, generation))
        {
            bump(&counters.errors, 1);
            warn!(worker = self.id, session = %key, error = %e, "cannot watch a new connection; closing it");
            set_reset_on_close(&client);
            return;
        }
        bump(&counters.conns_open, 1);
        debug!(worker = self.id, session = %key, index, %peer, target = %target_addr, "connection accepted");
        let from_peer = matches!(channel, ListenerChannel::FromPeer { .. });
        let span = tracing::debug_span!("conn", session = %key, listener = index, %peer);
        entry.insert(Conn {
            span,
            key,
            listener: index,
            accepted: Instant::now(),
            last_active: Instant::now(),
            client,
            target: None,
            peer,
            target_addr,
            target_index: index,
            attempts: 1,
            state,
            generation,
            counters,
            rate,
            channel,
            deadline,
            udp: udp_sender.is_some(),
            receiver_conn: None,
        });
        if let Some(at) = deadline {
            self.timers
                .push(Reverse((at, token(Kind::Client, slot, generation))));
        }
        if let Some(idle) = self.options.idle_timeout {
            self.idle_timers.push(Reverse((
                Instant::now() + idle,
                token(Kind::Client, slot, generation),
            )));
        }
        if !from_peer {
            // Raw and outbound connections connect to their target at once.
            if let Err(e) = self.connect_target(slot) {
                if let Some(c) = self.conns.get(slot) {
                    bump(&c.counters.errors, 1);
                    warn!(worker = self.id, session = %c.key, target = %c.target_addr, error = %e, "cannot connect to target; closing the client");
                }
                self.close_conn(slot, true);
                return;
            }
        }
        // The peer may have sent already, or the connect completed at once (loopback).
        self.drive(slot);
    }

    /// Closes connections that moved no byte for `--idle-timeout` (only
    /// when the admin set one: paused detectors are not dead ones).
    fn expire_idle(&mut self) {
        let Some(idle) = self.options.idle_timeout else {
            return;
        };
        let now = Instant::now();
        while let Some(Reverse((at, t))) = self.idle_timers.peek().copied() {
            if at > now {
                return;
            }
            self.idle_timers.pop();
            let (_, slot, generation) = untoken(t);
            let Some(c) = self.conns.get(slot).filter(|c| c.generation == generation) else {
                continue;
            };
            let due = c.last_active + idle;
            if due > now {
                self.idle_timers.push(Reverse((due, t)));
                continue;
            }
            info!(worker = self.id, session = %c.key, peer = %c.peer, idle_s = idle.as_secs_f32(), "closing a connection idle for --idle-timeout");
            self.close_conn(slot, false);
        }
    }

    /// Closes connections whose setup outlived its deadline.
    fn expire(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, t))) = self.timers.peek().copied() {
            if at > now {
                return;
            }
            self.timers.pop();
            let (_, slot, generation) = untoken(t);
            let expired = self.conns.get(slot).is_some_and(|c| {
                c.generation == generation && c.deadline.is_some_and(|d| d <= now)
            });
            if expired && !self.fail_over_after_timeout(slot) {
                let secs = self.options.handshake_timeout.as_secs_f32();
                self.reject(
                    slot,
                    &format!("setup did not finish within {secs} s (handshake timeout)"),
                );
            }
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
    fn connect_target(&mut self, slot: usize) -> Result<(), String> {
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

    /// An outbound connection whose setup timed out tries the session's
    /// next target, with a new deadline; `false` when none is left.
    fn fail_over_after_timeout(&mut self, slot: usize) -> bool {
        let Some(c) = self.conns.get_mut(slot) else {
            return false;
        };
        let mut ctx = ConnCtx {
            worker: self.id,
            reactor: &mut *self.reactor,
            options: &self.options,
            again: &mut self.again,
        };
        let secs = self.options.handshake_timeout.as_secs_f32();
        let why = format!("setup did not finish within {secs} s");
        if c.fail_over(slot, &mut ctx, &why).is_none() {
            return false;
        }
        let at = Instant::now() + self.options.handshake_timeout;
        c.deadline = Some(at);
        self.timers
            .push(Reverse((at, token(Kind::Client, slot, c.generation))));
        self.drive(slot);
        true
    }

    /// Refuses a connection during setup (see [`Conn::refuse`]) and resets it.
    fn reject(&mut self, slot: usize, reason: &str) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for (k, slot, g) in [
            (Kind::Listener, 0, 1),
            (Kind::Client, 123_456, 0x0fff_ffff),
            (Kind::Target, 7, 42),
        ] {
            let (k2, s2, g2) = untoken(token(k, slot, g));
            assert_eq!((k2, s2, g2), (Some(k), slot, g));
        }
    }
}
