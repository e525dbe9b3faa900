//! A connection's steps, from setup to relay: each readiness event takes
//! it as far as it can go. The connection owns this logic; what it needs
//! from its worker (the reactor, the options, the queue of connections with
//! work left) comes in a [`ConnCtx`].

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use scistream_protocol::preamble::{FLAG_TLS, FLAG_UDP, Origin, Preamble, Refusal};
use tracing::{debug, warn};

use super::verdict::{Expect, Verdict, judge};
use super::{
    Conn, ConnState, ConnectResult, ListenerChannel, REFUSALS, VIOLATIONS, connect_nonblocking,
    connect_result,
};
use crate::config::Forward;
use crate::reactor::{Reactor, Token};
use crate::record::Cipher;
use crate::relay::{CopyRelay, Relay, SpliceRelay, TlsRelay, TlsSession, Turn};
use crate::setup::{Established, Inbound, Outbound, Step};
use crate::worker::{Kind, WorkerOptions, bump, token};

/// What a connection needs from the worker it lives on.
pub(crate) struct ConnCtx<'a> {
    /// The worker's number, for log lines.
    pub(crate) worker: usize,
    /// Where the target socket is registered.
    pub(crate) reactor: &'a mut dyn Reactor,
    pub(crate) options: &'a WorkerOptions,
    /// Connections with work left over from their turn.
    pub(crate) again: &'a mut Vec<Token>,
}

/// What to do with a connection after a step.
pub(crate) enum Next {
    /// Wait for readiness.
    Wait,
    /// Take the next step now (the state changed).
    Again,
    /// Close it.
    Close { reset: bool },
}

impl Conn {
    /// Starts connecting to the target and registers the target socket.
    pub(crate) fn connect_target(&mut self, slot: usize, ctx: &mut ConnCtx) -> Result<(), String> {
        let target = connect_nonblocking(self.target_addr, ctx.options, self.rate)
            .map_err(|e| e.to_string())?;
        ctx.reactor
            .register(target.as_fd(), token(Kind::Target, slot, self.generation))
            .map_err(|e| format!("cannot watch the target socket: {e}"))?;
        if matches!(self.channel, ListenerChannel::FromPeer { .. }) {
            // The port is chosen at connect(): the address is final now.
            let local = rustix::net::getsockname(&target)
                .ok()
                .and_then(|a| std::net::SocketAddr::try_from(a).ok());
            if let Some(ends) = local.and_then(|l| Origin::new(l, self.target_addr)) {
                self.receiver_conn = Some(ctx.options.loop_guard.register(ends));
            }
        }
        self.target = Some(target);
        Ok(())
    }

    /// Outbound, before any byte moved: the target failed (refused,
    /// unreachable, timed out, TLS or preamble refused), so the connection
    /// tries the session's next target, in turn, until each was tried once.
    /// `None` when none is left (or the connection is not outbound).
    pub(crate) fn fail_over(&mut self, slot: usize, ctx: &mut ConnCtx, why: &str) -> Option<Next> {
        let ListenerChannel::ToPeer { targets, .. } = &self.channel else {
            return None;
        };
        let targets = targets.clone();
        while self.attempts < targets.len() {
            if let Some(old) = self.target.take() {
                ctx.reactor
                    .deregister(old.as_fd(), token(Kind::Target, slot, self.generation));
            }
            let failed = self.target_addr;
            self.target_index = (self.target_index + 1) % targets.len();
            self.attempts += 1;
            self.target_addr = targets[self.target_index].addr;
            warn!(worker = ctx.worker, session = %self.key, %failed, next = %self.target_addr, reason = why, "a target failed; trying the session's next target");
            self.state = ConnState::Connecting(None);
            match self.connect_target(slot, ctx) {
                Ok(()) => return Some(Next::Again),
                Err(e) => {
                    warn!(worker = ctx.worker, session = %self.key, target = %self.target_addr, error = %e, "cannot connect to the next target either")
                }
            }
        }
        None
    }

    /// Refuses the connection during setup: counted, one log line without
    /// secrets (never the uid presented); the caller closes it with a
    /// reset. Past a few lines in 10 s the lines are summed up instead
    /// (anyone can cause them).
    pub(crate) fn refuse(&self, worker: usize, reason: &str) -> Next {
        bump(&self.counters.rejected, 1);
        self.counters.failed(reason);
        let verdict = REFUSALS.check(Instant::now());
        if verdict.suppressed_before > 0 {
            warn!(
                refused = verdict.suppressed_before,
                window_s = REFUSALS.window().as_secs(),
                "more data connections were refused than logged in the last window (see the sessions' rejected counters)"
            );
        }
        if verdict.log {
            warn!(worker, session = %self.key, listener = self.listener, peer = %self.peer, target = %self.target_addr, reason, "data connection refused");
        }
        Next::Close { reset: true }
    }

    /// One step of the connection's life.
    pub(crate) fn step(&mut self, slot: usize, ctx: &mut ConnCtx) -> Next {
        let state = std::mem::replace(&mut self.state, ConnState::Connecting(None));
        match state {
            ConnState::Preamble(inbound) => self.read_preamble(slot, ctx, inbound),
            ConnState::Connecting(inbound) => self.connecting(slot, ctx, inbound),
            ConnState::Offering(outbound) => self.offer(slot, ctx, outbound),
            ConnState::Relaying { relay, counted } => self.relay(slot, ctx, relay, counted),
        }
    }

    /// Inbound: TLS handshake and preamble from the peer gateway.
    fn read_preamble(&mut self, slot: usize, ctx: &mut ConnCtx, mut inbound: Box<Inbound>) -> Next {
        match inbound.drive(self.client.as_fd()) {
            Step::Pending => {
                self.state = ConnState::Preamble(inbound);
                Next::Wait
            }
            Step::Failed(reason) => self.refuse(ctx.worker, &reason),
            Step::Refuse(code, reason) => {
                let _ = inbound.answer(self.client.as_fd(), Some(code));
                self.refuse(ctx.worker, &reason)
            }
            Step::Done((preamble, early)) => self.verify(slot, ctx, inbound, preamble, early),
        }
    }

    /// Waiting for the target's connect to complete.
    fn connecting(
        &mut self,
        slot: usize,
        ctx: &mut ConnCtx,
        inbound: Option<Box<Inbound>>,
    ) -> Next {
        let Some(target) = self.target.as_ref() else {
            self.state = ConnState::Connecting(inbound);
            return Next::Wait;
        };
        match connect_result(target) {
            ConnectResult::Pending => {
                self.state = ConnState::Connecting(inbound);
                Next::Wait
            }
            ConnectResult::Failed(e) => {
                if inbound.is_none() {
                    if let Some(next) = self.fail_over(slot, ctx, &e.to_string()) {
                        return next;
                    }
                }
                bump(&self.counters.errors, 1);
                self.counters.failed(match inbound {
                    Some(_) => format!(
                        "the receiver {} could not be reached: {e}",
                        self.target_addr
                    ),
                    None => format!("the target {} could not be reached: {e}", self.target_addr),
                });
                warn!(worker = ctx.worker, session = %self.key, peer = %self.peer, target = %self.target_addr, error = %e, "target refused or unreachable; closing the client");
                if let Some(mut inbound) = inbound {
                    let _ = inbound.answer(self.client.as_fd(), Some(Refusal::ReceiverUnreachable));
                }
                Next::Close { reset: true }
            }
            ConnectResult::Connected => self.connected(ctx, inbound),
        }
    }

    /// Outbound: TLS handshake and preamble to the inbound gateway.
    fn offer(&mut self, slot: usize, ctx: &mut ConnCtx, mut outbound: Box<Outbound>) -> Next {
        let Some(target) = self.target.as_ref() else {
            return Next::Close { reset: true };
        };
        match outbound.drive(target.as_fd()) {
            Step::Pending => {
                self.state = ConnState::Offering(outbound);
                Next::Wait
            }
            Step::Failed(reason) | Step::Refuse(_, reason) => {
                let reason = format!("to the inbound gateway: {reason}");
                match self.fail_over(slot, ctx, &reason) {
                    Some(next) => next,
                    None => self.refuse(ctx.worker, &reason),
                }
            }
            Step::Done(early) => {
                let clean = outbound.at_record_boundary() && early.is_empty();
                let relay = match outbound.into_established() {
                    Some(tls) => self.tls_relay(ctx, tls, false, clean, early),
                    None => plain_relay(ctx.options),
                };
                self.start_relay(ctx, relay)
            }
        }
    }

    /// Relaying: one turn, and the session's counters brought up to date.
    fn relay(
        &mut self,
        slot: usize,
        ctx: &mut ConnCtx,
        mut relay: Relay,
        counted: (u64, u64, u64),
    ) -> Next {
        let Some(target) = self.target.as_ref() else {
            return Next::Close { reset: true };
        };
        let result = relay.turn(&self.client, target);
        let (up, down) = relay.delivered();
        let key_updates = relay.key_updates();
        bump(&self.counters.bytes_to_target, up - counted.0);
        bump(&self.counters.bytes_from_target, down - counted.1);
        if (up, down) != (counted.0, counted.1) {
            self.last_active = Instant::now();
        }
        bump(&self.counters.key_updates, key_updates - counted.2);
        self.state = ConnState::Relaying {
            relay,
            counted: (up, down, key_updates),
        };
        match result {
            Ok(Turn::Idle) => Next::Wait,
            Ok(Turn::MoreWork) => {
                ctx.again.push(token(Kind::Client, slot, self.generation));
                Next::Wait
            }
            Ok(Turn::Finished) => {
                debug!(worker = ctx.worker, session = %self.key, peer = %self.peer, bytes_to_target = up, bytes_from_target = down, "connection finished");
                Next::Close { reset: false }
            }
            Err(e) => {
                bump(&self.counters.errors, 1);
                if e.is_peer_violation() {
                    self.peer_violation(ctx.worker, &e);
                } else {
                    debug!(worker = ctx.worker, session = %self.key, peer = %self.peer, error = %e, bytes_to_target = up, bytes_from_target = down, "connection aborted");
                }
                Next::Close { reset: true }
            }
        }
    }

    /// The peer gateway broke TLS mid-stream: noted in the session's status
    /// and logged (rate-limited: a peer can make many).
    fn peer_violation(&self, worker: usize, e: &crate::relay::RelayError) {
        let reason = format!("the peer gateway broke TLS: {e}");
        let verdict = VIOLATIONS.check(Instant::now());
        if verdict.suppressed_before > 0 {
            warn!(
                aborted = verdict.suppressed_before,
                window_s = VIOLATIONS.window().as_secs(),
                "more connections were aborted for TLS violations than logged in the last window (see the sessions' error counters)"
            );
        }
        if verdict.log {
            warn!(worker, session = %self.key, peer = %self.peer, reason, "data connection aborted");
        }
        self.counters.failed(reason);
    }

    /// Inbound: the preamble arrived; check it against the listener's session.
    fn verify(
        &mut self,
        slot: usize,
        ctx: &mut ConnCtx,
        mut inbound: Box<Inbound>,
        preamble: Preamble,
        early: Vec<u8>,
    ) -> Next {
        let ListenerChannel::FromPeer {
            tls,
            uid,
            first_index,
            protocol,
            ..
        } = &self.channel
        else {
            return Next::Close { reset: true };
        };
        let expect = Expect {
            tls: *tls,
            uid,
            index: usize::from(*first_index) + self.listener,
            protocol: *protocol,
        };
        let is_loop = || {
            preamble
                .origin
                .is_some_and(|origin| ctx.options.loop_guard.is_own(origin))
        };
        let client = self.client.as_fd();
        let udp = match judge(&preamble, &expect, !early.is_empty(), is_loop) {
            Verdict::Refuse(answer, why) => {
                if let Some(answer) = answer {
                    let _ = inbound.answer(client, Some(answer));
                }
                return self.refuse(ctx.worker, why);
            }
            Verdict::Probe => {
                // An outbound s2cs checking this gateway and session: the
                // answer says it all; no receiver, and no connection counted.
                let _ = inbound.answer(client, None);
                let _ = inbound.flush_answer(client);
                let total = self.counters.conns_total.get();
                self.counters.conns_total.set(total.saturating_sub(1));
                debug!(worker = ctx.worker, session = %self.key, peer = %self.peer, "probe answered");
                return Next::Close { reset: false };
            }
            Verdict::Flow => true,
            Verdict::Stream => false,
        };
        if udp {
            return self.open_udp_flow(slot, ctx, inbound);
        }
        // The early bytes of a TLS peer stay with the setup; the relay delivers them.
        match self.connect_target(slot, ctx) {
            Ok(()) => {
                self.state = ConnState::Connecting(Some(inbound));
                Next::Again
            }
            Err(e) => {
                bump(&self.counters.errors, 1);
                self.counters.failed(format!(
                    "the receiver {} could not be reached: {e}",
                    self.target_addr
                ));
                warn!(worker = ctx.worker, session = %self.key, target = %self.target_addr, error = %e, "cannot connect to the receiver");
                let _ = inbound.answer(self.client.as_fd(), Some(Refusal::ReceiverUnreachable));
                Next::Close { reset: true }
            }
        }
    }

    /// Inbound, a UDP flow accepted: instead of a TCP connection to the
    /// receiver, a socket pair whose other end [`crate::udp`] serves with a
    /// UDP socket connected to the receiver. The rest (answer, relay,
    /// counters) is as for any connection.
    fn open_udp_flow(&mut self, slot: usize, ctx: &mut ConnCtx, mut inbound: Box<Inbound>) -> Next {
        let pair = crate::udp::connect_receiver(self.target_addr)
            .and_then(|receiver| Ok((receiver, crate::udp::flow_pair()?)));
        let (receiver, (ours, theirs)) = match pair {
            Ok(p) => p,
            Err(e) => {
                bump(&self.counters.errors, 1);
                warn!(worker = ctx.worker, session = %self.key, target = %self.target_addr, error = %e, "cannot open a UDP socket to the receiver");
                let _ = inbound.answer(self.client.as_fd(), Some(Refusal::ReceiverUnreachable));
                return Next::Close { reset: true };
            }
        };
        if !ctx.options.udp.inbound_flow(&self.key, receiver, theirs) {
            let _ = inbound.answer(self.client.as_fd(), Some(Refusal::WrongSession));
            return self.refuse(ctx.worker, "a UDP flow for a session being removed");
        }
        let target = OwnedFd::from(ours);
        if let Err(e) = ctx
            .reactor
            .register(target.as_fd(), token(Kind::Target, slot, self.generation))
        {
            bump(&self.counters.errors, 1);
            warn!(worker = ctx.worker, session = %self.key, error = %e, "cannot watch a UDP flow's socket");
            return Next::Close { reset: true };
        }
        self.target = Some(target);
        self.udp = true;
        self.state = ConnState::Connecting(Some(inbound));
        Next::Again
    }

    /// The target connection is up.
    fn connected(&mut self, ctx: &mut ConnCtx, inbound: Option<Box<Inbound>>) -> Next {
        match (inbound, self.channel.clone()) {
            (Some(inbound), _) => self.accept_peer(ctx, inbound),
            (
                None,
                ListenerChannel::ToPeer {
                    tls,
                    uid,
                    targets,
                    first_index,
                },
            ) => {
                // The inbound listener this target is answers to its own index.
                let udp = if self.udp { FLAG_UDP } else { 0 };
                let preamble = Preamble {
                    flags: if tls { FLAG_TLS | udp } else { udp },
                    conn_index: first_index.saturating_add(self.target_index as u16),
                    uid: uid.to_string(),
                    // Where the instrument connected from: lets the inbound
                    // gateway see that it is itself (a tunnel loop).
                    origin: rustix::net::getsockname(&self.client)
                        .ok()
                        .and_then(|a| std::net::SocketAddr::try_from(a).ok())
                        .and_then(|listener| Origin::new(self.peer, listener)),
                };
                let server_name = targets
                    .get(self.target_index)
                    .map(|t| t.server_name.clone())
                    .unwrap_or_default();
                let config = match (tls, ctx.options.tls.client()) {
                    (false, _) => None,
                    (true, Some(config)) => Some((config, server_name.as_str())),
                    (true, None) => {
                        return self.refuse(
                            ctx.worker,
                            "this gateway has no --peer-ca to verify the inbound gateway with",
                        );
                    }
                };
                match Outbound::new(config.as_ref().map(|(c, n)| (c, *n)), &preamble) {
                    Ok(outbound) => {
                        self.state = ConnState::Offering(Box::new(outbound));
                        Next::Again
                    }
                    Err(reason) => self.refuse(ctx.worker, &reason),
                }
            }
            (None, _) => {
                let relay = plain_relay(ctx.options);
                self.start_relay(ctx, relay)
            }
        }
    }

    /// Inbound, receiver connected: answer the peer gateway, then relay.
    fn accept_peer(&mut self, ctx: &mut ConnCtx, mut inbound: Box<Inbound>) -> Next {
        let client = self.client.as_fd();
        if let Err(e) = inbound.answer(client, None) {
            warn!(worker = ctx.worker, session = %self.key, peer = %self.peer, error = %e, "cannot accept the peer gateway's connection");
            return Next::Close { reset: true };
        }
        let clean = inbound.at_record_boundary();
        let early = inbound.take_early();
        // The answer goes out before the relay starts; a socket too
        // full for two bytes right after setup is not a peer to keep.
        match inbound.flush_answer(client) {
            Ok(true) => {}
            Ok(false) => return Next::Close { reset: true },
            Err(e) => {
                warn!(worker = ctx.worker, session = %self.key, peer = %self.peer, error = %e, "cannot accept the peer gateway's connection");
                return Next::Close { reset: true };
            }
        }
        let relay = match inbound.into_established() {
            Some(tls) => self.tls_relay(ctx, tls, true, clean, early),
            None => plain_relay(ctx.options),
        };
        self.start_relay(ctx, relay)
    }

    /// A relay for a set-up TLS session: the kernel's (kTLS, then splice)
    /// when this host offloads the session's suite and setup ended cleanly
    /// (at a record boundary, nothing buffered either way); else the
    /// user-space record layer.
    fn tls_relay(
        &self,
        ctx: &ConnCtx,
        established: Result<Established, String>,
        tls_on_client: bool,
        clean: bool,
        early: Vec<u8>,
    ) -> io::Result<Relay> {
        let Established { keys, secrets } = established.map_err(io::Error::other)?;
        let o = ctx.options;
        let suite = keys.suite();
        let secrets = if o.ktls.offloads(o.ktls_choice, suite) && clean && early.is_empty() {
            let fd = if tls_on_client {
                self.client.as_fd()
            } else {
                match self.target.as_ref() {
                    Some(t) => t.as_fd(),
                    None => return Err(io::Error::other("no target socket")),
                }
            };
            match crate::ktls::offload(fd, suite, secrets) {
                crate::ktls::Offload::Done => {
                    debug!(worker = ctx.worker, session = %self.key, peer = %self.peer, "connection offloaded to kTLS");
                    let relay = SpliceRelay::new(o.pipe_size);
                    return Ok(Relay::Splice(relay.with_ktls(tls_on_client)));
                }
                crate::ktls::Offload::Declined(secrets, reason) => {
                    debug!(
                        worker = ctx.worker,
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
        let cipher = |(seq, s)| Cipher::new(o.crypto, s, seq).map_err(io::Error::other);
        let session = TlsSession {
            tx: cipher(secrets.tx)?,
            rx: cipher(secrets.rx)?,
            keys,
            crypto: o.crypto,
            early,
            pending_ciphertext: Vec::new(),
        };
        let relay = TlsRelay::new(session, tls_on_client, o.rekey_records, o.rekey_any_suite);
        Ok(Relay::Tls(Box::new(relay)))
    }

    fn start_relay(&mut self, ctx: &ConnCtx, relay: io::Result<Relay>) -> Next {
        match relay {
            Ok(relay) => {
                self.deadline = None;
                self.state = ConnState::Relaying {
                    relay,
                    counted: (0, 0, 0),
                };
                Next::Again
            }
            Err(e) => {
                bump(&self.counters.errors, 1);
                warn!(worker = ctx.worker, session = %self.key, error = %e, "cannot set up forwarding; closing the connection");
                Next::Close { reset: true }
            }
        }
    }
}

/// A plaintext relay as configured (splice or copy).
fn plain_relay(options: &WorkerOptions) -> io::Result<Relay> {
    match options.forward {
        Forward::Copy => Ok(Relay::Copy(CopyRelay::new(options.pipe_size))),
        Forward::Splice => Ok(Relay::Splice(SpliceRelay::new(options.pipe_size))),
    }
}
