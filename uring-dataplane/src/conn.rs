//! One forwarded connection and its life on a worker: setup between
//! gateways (TLS handshake, preamble, answer), connecting to the target,
//! relaying, closing. The worker calls [`Worker::drive`] on every readiness
//! event of either socket; each call takes the connection as far as it can.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use rustix::io::Errno;
use scistream_protocol::handoff::SessionKey;
use scistream_protocol::preamble::{Preamble, Refusal, uid_matches};
use socket2::{Domain, Socket, Type};
use tracing::{debug, warn};

use crate::config::Forward;
use crate::record::Cipher;
use crate::relay::{CopyRelay, Relay, SpliceRelay, TlsRelay, TlsSession, Turn, set_reset_on_close};
use crate::setup::Established;
use crate::setup::{Inbound, Outbound, Step};
use crate::worker::{Counters, Kind, Worker, WorkerOptions, bump, token};
use scistream_protocol::loglimit::LogLimit;

/// Refused data connections logged one by one: 20 per 10 s over all workers.
static REFUSALS: LogLimit = LogLimit::new(20, std::time::Duration::from_secs(10));

/// What a listener's connections carry, from the session's data channel.
/// Its `Debug` leaves the uid out (a secret).
#[derive(Clone)]
pub enum ListenerChannel {
    /// Plain TCP both ways.
    Raw,
    /// From a peer gateway: preamble (in TLS when `tls`) before anything.
    FromPeer {
        /// TLS server.
        tls: bool,
        /// The session uid the preamble must carry.
        uid: Arc<str>,
        /// The peer gateway must present a verified certificate (mutual TLS).
        client_cert: bool,
    },
    /// To a peer gateway: preamble (in TLS when `tls`) before anything.
    ToPeer {
        /// TLS client.
        tls: bool,
        /// The session uid to present.
        uid: Arc<str>,
        /// The name the peer's certificate must carry.
        server_name: String,
    },
}

impl std::fmt::Debug for ListenerChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenerChannel::Raw => f.write_str("Raw"),
            ListenerChannel::FromPeer {
                tls, client_cert, ..
            } => f
                .debug_struct("FromPeer")
                .field("tls", tls)
                .field("client_cert", client_cert)
                .finish_non_exhaustive(),
            ListenerChannel::ToPeer {
                tls, server_name, ..
            } => f
                .debug_struct("ToPeer")
                .field("tls", tls)
                .field("server_name", server_name)
                .finish_non_exhaustive(),
        }
    }
}

/// Where a connection is in its life.
#[derive(Debug)]
pub enum ConnState {
    /// Inbound: handshake and preamble on the accepted socket; no target yet.
    Preamble(Box<Inbound>),
    /// Connecting to the target; inbound connections bring their setup to answer once connected.
    Connecting(Option<Box<Inbound>>),
    /// Outbound: handshake, preamble and answer on the target socket.
    Offering(Box<Outbound>),
    /// Moving bytes.
    Relaying {
        /// How.
        relay: Relay,
        /// Bytes already added to the session counters.
        /// Bytes (to target, from target) and key updates already added to the session counters.
        counted: (u64, u64, u64),
    },
}

impl ConnState {
    /// For counters.
    pub fn mode(&self) -> &'static str {
        match self {
            ConnState::Preamble(_) | ConnState::Offering(_) => "handshake",
            ConnState::Connecting(_) => "connecting",
            ConnState::Relaying { relay, .. } => relay.mode(),
        }
    }
}

/// A connection.
#[derive(Debug)]
pub struct Conn {
    /// Its session.
    pub key: SessionKey,
    /// Index of the listener that accepted it.
    pub listener: usize,
    /// When it was accepted.
    pub accepted: Instant,
    /// The accepted socket.
    pub client: OwnedFd,
    /// The onward socket, once connecting.
    pub target: Option<OwnedFd>,
    /// Who connected.
    pub peer: SocketAddr,
    /// Where it goes.
    pub target_addr: SocketAddr,
    /// Where it is in its life.
    pub state: ConnState,
    /// Slot generation.
    pub generation: u32,
    /// Its session's counters on this worker.
    pub counters: Rc<Counters>,
    /// Pacing, bytes per second.
    pub rate: Option<u64>,
    /// What it carries.
    pub channel: ListenerChannel,
    /// Setup must be over by then.
    pub deadline: Option<Instant>,
    /// When bytes last moved (for `--idle-timeout`).
    pub last_active: Instant,
    /// Its tracing span (session, listener, peer): every line logged while
    /// this connection is driven carries it. A debug-level span, so it
    /// exists with `-v` only: at info level a span per connection cost
    /// ~1 KB of memory per idle connection (s2bench idle, 3000 connections).
    pub span: tracing::Span,
}

/// Applies the socket options of a forwarded socket. Failures are logged,
/// not fatal: a connection without a tuned buffer still works.
pub fn tune(fd: &OwnedFd, o: &WorkerOptions, rate: Option<u64>) {
    if o.nodelay {
        let _ = rustix::net::sockopt::set_tcp_nodelay(fd, true);
    }
    if let Some(n) = o.sndbuf {
        let _ = rustix::net::sockopt::set_socket_send_buffer_size(fd, n);
    }
    if !o.keepalive.is_zero() {
        use rustix::net::sockopt;
        let interval = (o.keepalive / 3).max(std::time::Duration::from_secs(1));
        let _ = sockopt::set_socket_keepalive(fd, true)
            .and_then(|()| sockopt::set_tcp_keepidle(fd, o.keepalive))
            .and_then(|()| sockopt::set_tcp_keepintvl(fd, interval))
            .and_then(|()| sockopt::set_tcp_keepcnt(fd, 4));
    }
    if !o.user_timeout.is_zero() {
        let ms = u32::try_from(o.user_timeout.as_millis()).unwrap_or(u32::MAX);
        let _ = rustix::net::sockopt::set_tcp_user_timeout(fd, ms);
    }
    if let Some(n) = o.rcvbuf {
        let _ = rustix::net::sockopt::set_socket_recv_buffer_size(fd, n);
    }
    if let Some(r) = rate {
        if let Err(e) = crate::sys::sockopt::set_max_pacing_rate(fd, r) {
            warn!(error = %e, rate_bytes_per_s = r, "cannot set SO_MAX_PACING_RATE; the connection is not rate-capped");
        }
    }
}

/// Starts a non-blocking connect, with the socket options set first (the
/// receive buffer must be known when the window scale is negotiated).
pub fn connect_nonblocking(
    addr: SocketAddr,
    o: &WorkerOptions,
    rate: Option<u64>,
) -> io::Result<OwnedFd> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        None,
    )?;
    let fd = OwnedFd::from(socket);
    tune(&fd, o, rate);
    let socket = Socket::from(fd);
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(Errno::INPROGRESS.raw_os_error()) => {}
        Err(e) => return Err(e),
    }
    Ok(socket.into())
}

enum ConnectResult {
    Pending,
    Connected,
    Failed(io::Error),
}

fn connect_result(fd: &OwnedFd) -> ConnectResult {
    match rustix::net::sockopt::socket_error(fd) {
        Ok(Err(e)) => return ConnectResult::Failed(e.into()),
        Err(e) => return ConnectResult::Failed(e.into()),
        Ok(Ok(())) => {}
    }
    match rustix::net::getpeername(fd) {
        Ok(_) => ConnectResult::Connected,
        Err(Errno::NOTCONN) => ConnectResult::Pending,
        Err(e) => ConnectResult::Failed(e.into()),
    }
}

/// What to do with a connection after a step.
enum Next {
    /// Wait for readiness.
    Wait,
    /// Take the next step now (the state changed).
    Again,
    /// Close it.
    Close { reset: bool },
}

impl Worker {
    /// Starts connecting `c` to its target and registers the target socket.
    pub(crate) fn connect_target(&mut self, slot: usize) -> Result<(), String> {
        let c = self.conns.get(slot).ok_or("connection vanished")?;
        let target =
            connect_nonblocking(c.target_addr, &self.options, c.rate).map_err(|e| e.to_string())?;
        self.reactor
            .register(target.as_fd(), token(Kind::Target, slot, c.generation))
            .map_err(|e| format!("cannot watch the target socket: {e}"))?;
        if let Some(c) = self.conns.get_mut(slot) {
            c.target = Some(target);
        }
        Ok(())
    }

    /// A plaintext relay as configured (splice or copy).
    fn plain_relay(&mut self) -> io::Result<Relay> {
        match self.options.forward {
            Forward::Copy => Ok(Relay::Copy(CopyRelay::new(self.options.pipe_size))),
            Forward::Splice => Ok(Relay::Splice(SpliceRelay::new(self.options.pipe_size))),
        }
    }

    /// A relay for a set-up TLS session: the kernel's (kTLS, then splice)
    /// when this host offloads the session's suite and setup ended cleanly
    /// (at a record boundary, nothing buffered either way); else the
    /// user-space record layer.
    fn tls_relay(
        &mut self,
        slot: usize,
        established: Result<Established, String>,
        tls_on_client: bool,
        clean: bool,
        early: Vec<u8>,
    ) -> io::Result<Relay> {
        let Established { keys, secrets } = established.map_err(io::Error::other)?;
        let suite = keys.suite();
        let eligible = self.options.ktls.offloads(self.options.ktls_choice, suite);
        let secrets = if eligible && clean && early.is_empty() {
            let Some(c) = self.conns.get(slot) else {
                return Err(io::Error::other("connection vanished"));
            };
            let fd = if tls_on_client {
                c.client.as_fd()
            } else {
                match c.target.as_ref() {
                    Some(t) => t.as_fd(),
                    None => return Err(io::Error::other("no target socket")),
                }
            };
            match crate::ktls::offload(fd, suite, secrets) {
                crate::ktls::Offload::Done => {
                    debug!(worker = self.id, session = %c.key, peer = %c.peer, "connection offloaded to kTLS");
                    let relay = SpliceRelay::new(self.options.pipe_size);
                    return Ok(Relay::Splice(relay.with_ktls(tls_on_client)));
                }
                crate::ktls::Offload::Declined(secrets, reason) => {
                    debug!(
                        worker = self.id,
                        reason, "kTLS not used for this connection; TLS stays in user space"
                    );
                    *secrets
                }
                crate::ktls::Offload::Failed(reason) => {
                    return Err(io::Error::other(format!(
                        "moving the TLS keys to the kernel failed: {reason}"
                    )));
                }
            }
        } else {
            secrets
        };
        let crypto = self.options.crypto;
        let cipher = |(seq, s)| Cipher::new(crypto, s, seq).map_err(io::Error::other);
        let session = TlsSession {
            tx: cipher(secrets.tx)?,
            rx: cipher(secrets.rx)?,
            keys,
            crypto,
            early,
            pending_ciphertext: Vec::new(),
        };
        Ok(Relay::Tls(Box::new(TlsRelay::new(
            session,
            tls_on_client,
            self.options.rekey_records,
            self.options.rekey_any_suite,
        ))))
    }

    /// Refuses a connection during setup: counted, one log line without
    /// secrets (never the uid presented), reset. Past a few lines in 10 s
    /// the lines are summed up instead (anyone can cause them).
    pub(crate) fn reject(&mut self, slot: usize, reason: &str) {
        if let Some(c) = self.conns.get(slot) {
            bump(&c.counters.rejected, 1);
            let verdict = REFUSALS.check(Instant::now());
            if verdict.suppressed_before > 0 {
                warn!(
                    refused = verdict.suppressed_before,
                    window_s = REFUSALS.window().as_secs(),
                    "more data connections were refused than logged in the last window (see the sessions' rejected counters)"
                );
            }
            if verdict.log {
                warn!(worker = self.id, session = %c.key, listener = c.listener, peer = %c.peer, target = %c.target_addr, reason, "data connection refused");
            }
        }
        self.close_conn(slot, true);
    }

    /// Takes a connection as far as it can go now.
    pub(crate) fn drive(&mut self, slot: usize) {
        let span = self.conns.get(slot).map(|c| c.span.clone());
        let _entered = span.as_ref().map(tracing::Span::enter);
        loop {
            let next = self.step(slot);
            match next {
                Next::Wait => return,
                Next::Again => continue,
                Next::Close { reset } => {
                    self.close_conn(slot, reset);
                    return;
                }
            }
        }
    }

    fn step(&mut self, slot: usize) -> Next {
        let Some(c) = self.conns.get_mut(slot) else {
            return Next::Wait;
        };
        let state = std::mem::replace(&mut c.state, ConnState::Connecting(None));
        match state {
            ConnState::Preamble(mut inbound) => match inbound.drive(c.client.as_fd()) {
                Step::Pending => {
                    c.state = ConnState::Preamble(inbound);
                    Next::Wait
                }
                Step::Failed(reason) => {
                    self.reject(slot, &reason);
                    Next::Wait
                }
                Step::Refuse(code, reason) => {
                    let _ = inbound.answer(c.client.as_fd(), Some(code));
                    self.reject(slot, &reason);
                    Next::Wait
                }
                Step::Done((preamble, early)) => self.verify(slot, inbound, preamble, early),
            },
            ConnState::Connecting(inbound) => {
                let Some(target) = c.target.as_ref() else {
                    c.state = ConnState::Connecting(inbound);
                    return Next::Wait;
                };
                match connect_result(target) {
                    ConnectResult::Pending => {
                        c.state = ConnState::Connecting(inbound);
                        Next::Wait
                    }
                    ConnectResult::Failed(e) => {
                        bump(&c.counters.errors, 1);
                        warn!(worker = self.id, session = %c.key, peer = %c.peer, target = %c.target_addr, error = %e, "target refused or unreachable; closing the client");
                        if let Some(mut inbound) = inbound {
                            let _ = inbound
                                .answer(c.client.as_fd(), Some(Refusal::ReceiverUnreachable));
                        }
                        Next::Close { reset: true }
                    }
                    ConnectResult::Connected => self.connected(slot, inbound),
                }
            }
            ConnState::Offering(mut outbound) => {
                let Some(target) = c.target.as_ref() else {
                    return Next::Close { reset: true };
                };
                match outbound.drive(target.as_fd()) {
                    Step::Pending => {
                        c.state = ConnState::Offering(outbound);
                        Next::Wait
                    }
                    Step::Failed(reason) | Step::Refuse(_, reason) => {
                        let reason = format!("to the inbound gateway: {reason}");
                        self.reject(slot, &reason);
                        Next::Wait
                    }
                    Step::Done(early) => {
                        let clean = outbound.at_record_boundary() && early.is_empty();
                        let relay = match outbound.into_established() {
                            Some(tls) => self.tls_relay(slot, tls, false, clean, early),
                            None => self.plain_relay(),
                        };
                        self.start_relay(slot, relay)
                    }
                }
            }
            ConnState::Relaying { mut relay, counted } => {
                let Some(target) = c.target.as_ref() else {
                    return Next::Close { reset: true };
                };
                let result = relay.turn(&c.client, target);
                let (up, down) = relay.delivered();
                let key_updates = relay.key_updates();
                bump(&c.counters.bytes_to_target, up - counted.0);
                bump(&c.counters.bytes_from_target, down - counted.1);
                if (up, down) != (counted.0, counted.1) {
                    c.last_active = Instant::now();
                }
                bump(&c.counters.key_updates, key_updates - counted.2);
                let generation = c.generation;
                c.state = ConnState::Relaying {
                    relay,
                    counted: (up, down, key_updates),
                };
                match result {
                    Ok(Turn::Idle) => Next::Wait,
                    Ok(Turn::MoreWork) => {
                        self.again.push(token(Kind::Client, slot, generation));
                        Next::Wait
                    }
                    Ok(Turn::Finished) => {
                        debug!(worker = self.id, session = %c.key, peer = %c.peer, bytes_to_target = up, bytes_from_target = down, "connection finished");
                        Next::Close { reset: false }
                    }
                    Err(e) => {
                        bump(&c.counters.errors, 1);
                        debug!(worker = self.id, session = %c.key, peer = %c.peer, error = %e, bytes_to_target = up, bytes_from_target = down, "connection aborted");
                        Next::Close { reset: true }
                    }
                }
            }
        }
    }

    /// Inbound: the preamble arrived; check it against the listener's session.
    fn verify(
        &mut self,
        slot: usize,
        mut inbound: Box<Inbound>,
        preamble: Preamble,
        early: Vec<u8>,
    ) -> Next {
        let Some(c) = self.conns.get_mut(slot) else {
            return Next::Wait;
        };
        let ListenerChannel::FromPeer { tls, uid, .. } = &c.channel else {
            return Next::Close { reset: true };
        };
        let flagged_tls = preamble.flags & scistream_protocol::preamble::FLAG_TLS != 0;
        if flagged_tls != *tls {
            let _ = inbound.answer(c.client.as_fd(), Some(Refusal::Malformed));
            self.reject(
                slot,
                "the preamble's TLS flag does not match the channel (is the peer misconfigured?)",
            );
            return Next::Wait;
        }
        let matches =
            uid_matches(&preamble.uid, uid) && usize::from(preamble.conn_index) == c.listener;
        if !matches {
            let _ = inbound.answer(c.client.as_fd(), Some(Refusal::WrongSession));
            self.reject(
                slot,
                "wrong session: the uid or connection index is not this listener's",
            );
            return Next::Wait;
        }
        if !early.is_empty() && !*tls {
            // A plaintext peer that does not wait for the answer is not a SciStream gateway.
            self.reject(slot, "the peer sent data before it was accepted");
            return Next::Wait;
        }
        if preamble.flags & scistream_protocol::preamble::FLAG_PROBE != 0 {
            // An outbound s2cs checking this gateway and session: the answer
            // says it all; no receiver, and no connection counted.
            let _ = inbound.answer(c.client.as_fd(), None);
            let _ = inbound.flush_answer(c.client.as_fd());
            let total = c.counters.conns_total.get();
            c.counters.conns_total.set(total.saturating_sub(1));
            debug!(worker = self.id, session = %c.key, peer = %c.peer, "probe answered");
            return Next::Close { reset: false };
        }
        c.state = ConnState::Connecting(Some(inbound));
        // The early bytes of a TLS peer stay with the setup; the relay delivers them.
        let _ = early;
        match self.connect_target(slot) {
            Ok(()) => Next::Again,
            Err(e) => {
                if let Some(c) = self.conns.get_mut(slot) {
                    bump(&c.counters.errors, 1);
                    warn!(worker = self.id, session = %c.key, target = %c.target_addr, error = %e, "cannot connect to the receiver");
                    if let ConnState::Connecting(Some(inbound)) = &mut c.state {
                        let _ =
                            inbound.answer(c.client.as_fd(), Some(Refusal::ReceiverUnreachable));
                    }
                }
                Next::Close { reset: true }
            }
        }
    }

    /// The target connection is up.
    fn connected(&mut self, slot: usize, inbound: Option<Box<Inbound>>) -> Next {
        let Some(c) = self.conns.get_mut(slot) else {
            return Next::Wait;
        };
        match (inbound, c.channel.clone()) {
            (Some(mut inbound), _) => {
                if let Err(e) = inbound.answer(c.client.as_fd(), None) {
                    warn!(worker = self.id, session = %c.key, peer = %c.peer, error = %e, "cannot accept the peer gateway's connection");
                    return Next::Close { reset: true };
                }
                let clean = inbound.at_record_boundary();
                let early = inbound.take_early();
                // The answer goes out before the relay starts; a socket too
                // full for two bytes right after setup is not a peer to keep.
                match inbound.flush_answer(c.client.as_fd()) {
                    Ok(true) => {}
                    Ok(false) => return Next::Close { reset: true },
                    Err(e) => {
                        warn!(worker = self.id, session = %c.key, peer = %c.peer, error = %e, "cannot accept the peer gateway's connection");
                        return Next::Close { reset: true };
                    }
                }
                let relay = match inbound.into_established() {
                    Some(tls) => self.tls_relay(slot, tls, true, clean, early),
                    None => self.plain_relay(),
                };
                self.start_relay(slot, relay)
            }
            (
                None,
                ListenerChannel::ToPeer {
                    tls,
                    uid,
                    server_name,
                },
            ) => {
                let preamble = Preamble {
                    flags: if tls {
                        scistream_protocol::preamble::FLAG_TLS
                    } else {
                        0
                    },
                    conn_index: c.listener as u16,
                    uid: uid.to_string(),
                };
                let config = if tls {
                    match self.options.tls.client() {
                        Some(config) => Some((config, server_name.as_str())),
                        None => {
                            self.reject(
                                slot,
                                "this gateway has no --peer-ca to verify the inbound gateway with",
                            );
                            return Next::Wait;
                        }
                    }
                } else {
                    None
                };
                match Outbound::new(config.as_ref().map(|(c, n)| (c, *n)), &preamble) {
                    Ok(outbound) => {
                        if let Some(c) = self.conns.get_mut(slot) {
                            c.state = ConnState::Offering(Box::new(outbound));
                        }
                        Next::Again
                    }
                    Err(reason) => {
                        self.reject(slot, &reason);
                        Next::Wait
                    }
                }
            }
            (None, _) => {
                let relay = self.plain_relay();
                self.start_relay(slot, relay)
            }
        }
    }

    fn start_relay(&mut self, slot: usize, relay: io::Result<Relay>) -> Next {
        let Some(c) = self.conns.get_mut(slot) else {
            return Next::Wait;
        };
        match relay {
            Ok(relay) => {
                c.deadline = None;
                c.state = ConnState::Relaying {
                    relay,
                    counted: (0, 0, 0),
                };
                Next::Again
            }
            Err(e) => {
                bump(&c.counters.errors, 1);
                warn!(worker = self.id, session = %c.key, error = %e, "cannot set up forwarding; closing the connection");
                Next::Close { reset: true }
            }
        }
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
