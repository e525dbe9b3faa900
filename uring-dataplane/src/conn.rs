//! One forwarded connection and its life on a worker: setup between
//! gateways (TLS handshake, preamble, answer), connecting to the target,
//! relaying, closing. The worker calls `Worker::drive` on every readiness
//! event of either socket; each call takes the connection as far as it can
//! ([`drive`]), with a [`ConnCtx`] of what it needs from the worker.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

mod drive;
mod verdict;
pub(crate) use drive::{ConnCtx, Next};

use rustix::io::Errno;
use scistream_protocol::handoff::SessionKey;
use socket2::{Domain, Socket, Type};
use tracing::warn;

use crate::relay::Relay;
use crate::setup::{Inbound, Outbound};
use crate::worker::{Counters, WorkerOptions};
use scistream_protocol::loglimit::LogLimit;

/// Refused data connections logged one by one: 20 per 10 s over all workers.
static REFUSALS: LogLimit = LogLimit::new(20, std::time::Duration::from_secs(10));

/// Connections aborted because the peer gateway broke TLS (a forged,
/// corrupted or out-of-place record): 20 per 10 s over all workers.
static VIOLATIONS: LogLimit = LogLimit::new(20, std::time::Duration::from_secs(10));

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
        /// The connection index of the session's first listener here.
        first_index: u16,
        /// Which connections it takes: plain streams (TCP), UDP flows
        /// (preamble flagged UDP), or both.
        protocol: scistream_protocol::Protocol,
    },
    /// To a peer gateway: preamble (in TLS when `tls`) before anything.
    ToPeer {
        /// TLS client.
        tls: bool,
        /// The session uid to present.
        uid: Arc<str>,
        /// Every target of the session (the inbound gateways' listeners):
        /// listener `i` goes to `targets[i]` first, and to the others in
        /// turn when that one fails during setup.
        targets: Arc<[scistream_protocol::Target]>,
        /// The connection index of the session's first target here.
        first_index: u16,
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
            ListenerChannel::ToPeer { tls, targets, .. } => f
                .debug_struct("ToPeer")
                .field("tls", tls)
                .field("targets", &targets.len())
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
    /// Outbound: which of the session's targets `target_addr` is.
    pub target_index: usize,
    /// Outbound: targets tried so far (setup failures move to the next).
    pub attempts: usize,
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
    /// It carries a UDP flow: outbound, its client is the flow's socket
    /// pair and its preamble is flagged UDP; inbound, its target is.
    pub udp: bool,
    /// Inbound: this connection's own address towards its receiver, known
    /// to the loop guard while the connection lives.
    pub receiver_conn: Option<crate::loop_guard::Registered>,
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
