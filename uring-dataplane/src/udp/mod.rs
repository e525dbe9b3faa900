//! UDP through the tunnel.
//!
//! A session that carries UDP has, on the instrument side (`ToPeer`), a UDP
//! socket on each listener's port. Datagrams are grouped into *flows* by
//! sender address and port. Each flow crosses the WAN as one ordinary data
//! connection of the session: this module makes a Unix socket pair, hands
//! one end to the worker of that listener as if it had been accepted there
//! ([`crate::worker::WorkerCommand::AdoptFlow`]), and the worker connects
//! to the session's target exactly as for a TCP client — TLS, the uid
//! capability in the preamble (flagged [`FLAG_UDP`]), the answer, the rate
//! cap, failover, counters. On this end of the pair the datagrams travel as
//! frames ([`scistream_protocol::datagram`]), whole or not at all.
//!
//! The inbound side's worker checks the preamble as for any connection;
//! for a flagged one of a session that carries UDP it makes a socket pair
//! instead of a TCP connection to the receiver, and a UDP socket connected
//! to the receiver ([`egress`]): datagrams go out of it one frame each, and
//! what the receiver sends back to it returns framed through the same
//! connection to the sender that opened the flow.
//!
//! Loss, not stalls: every way into a stream goes through a bounded queue
//! per flow; a datagram arriving at a full queue is dropped and counted
//! (the newest is dropped, so what is queued keeps its order). Nothing here
//! ever waits on the tunnel before taking the next datagram off a socket.
//!
//! The tasks run on one tokio runtime thread (`s2ds-udp`); the workers'
//! data path is not touched by it.
//!
//! [`FLAG_UDP`]: scistream_protocol::preamble::FLAG_UDP

mod egress;
mod flow;
mod ingress;
pub(crate) mod kernel;

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use scistream_protocol::handoff::{SessionKey, UdpStats};
use tokio::sync::watch;

use crate::worker::WorkerMailbox;

/// Counters of one session's UDP traffic on this gateway.
#[derive(Debug, Default)]
pub(crate) struct UdpCounters {
    flows_open: AtomicU64,
    flows_total: AtomicU64,
    datagrams_to_target: AtomicU64,
    bytes_to_target: AtomicU64,
    datagrams_from_target: AtomicU64,
    bytes_from_target: AtomicU64,
    dropped: AtomicU64,
    flows_expired: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl UdpCounters {
    fn snapshot(&self) -> UdpStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        UdpStats {
            flows_open: g(&self.flows_open),
            flows_total: g(&self.flows_total),
            datagrams_to_target: g(&self.datagrams_to_target),
            bytes_to_target: g(&self.bytes_to_target),
            datagrams_from_target: g(&self.datagrams_from_target),
            bytes_from_target: g(&self.bytes_from_target),
            dropped: g(&self.dropped),
            flows_expired: g(&self.flows_expired),
            kernel_dropped: 0,
        }
    }

    /// Datagrams that went on in one direction.
    fn forwarded(&self, dir: Direction, datagrams: u64, bytes: u64) {
        match dir {
            Direction::ToTarget => {
                add(&self.datagrams_to_target, datagrams);
                add(&self.bytes_to_target, bytes);
            }
            Direction::FromTarget => {
                add(&self.datagrams_from_target, datagrams);
                add(&self.bytes_from_target, bytes);
            }
        }
    }
}

/// Which way datagrams move, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// From the instrument towards the receiver.
    ToTarget,
    /// Replies, from the receiver towards the sender.
    FromTarget,
}

/// One session as this module knows it.
#[derive(Debug)]
struct UdpSession {
    counters: Arc<UdpCounters>,
    /// Dropped when the session is removed: every task of it ends.
    _alive: watch::Sender<()>,
    alive: watch::Receiver<()>,
}

/// Behaviour shared by every flow.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FlowOptions {
    /// A flow that moved nothing for this long is closed.
    pub idle: Duration,
    /// Datagrams queued per flow and direction.
    pub queue: usize,
    /// Flows open at once per listener.
    pub max_flows: usize,
}

/// The UDP side of the data plane; cheap to clone.
#[derive(Debug, Clone)]
pub struct UdpPlane {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    runtime: tokio::runtime::Handle,
    sessions: Mutex<HashMap<SessionKey, UdpSession>>,
    options: FlowOptions,
    started: Instant,
}

/// A listener's UDP socket on the instrument side, with the worker that
/// owns that listener (flows are adopted there).
#[derive(Debug)]
pub(crate) struct UdpListener {
    /// Listener index within the session.
    pub index: usize,
    /// The bound socket (handed over by `s2cs`).
    pub socket: UdpSocket,
    /// The worker of listener `index`.
    pub worker: WorkerMailbox,
}

impl UdpPlane {
    /// Starts the runtime thread `s2ds-udp`.
    pub(crate) fn start(options: FlowOptions) -> io::Result<UdpPlane> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("s2ds-udp")
            .build()?;
        let handle = runtime.handle().clone();
        // The thread is never joined: it runs as long as the process.
        std::thread::Builder::new()
            .name("s2ds-udp".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
        Ok(UdpPlane {
            inner: Arc::new(Inner {
                runtime: handle,
                sessions: Mutex::new(HashMap::new()),
                options,
                started: Instant::now(),
            }),
        })
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<SessionKey, UdpSession>> {
        // A panic while holding the lock left nothing half-written that matters here.
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts serving a session that carries UDP: its instrument-side
    /// sockets (none on the inbound side, whose flows come from workers).
    pub(crate) fn add_session(
        &self,
        key: &SessionKey,
        listeners: Vec<UdpListener>,
    ) -> io::Result<()> {
        for l in &listeners {
            l.socket.set_nonblocking(true)?;
        }
        let (tx, rx) = watch::channel(());
        let counters = Arc::new(UdpCounters::default());
        self.sessions().insert(
            key.clone(),
            UdpSession {
                counters: counters.clone(),
                _alive: tx,
                alive: rx.clone(),
            },
        );
        for l in listeners {
            let ctx = flow::FlowCtx {
                key: key.clone(),
                counters: counters.clone(),
                alive: rx.clone(),
                options: self.inner.options,
                started: self.inner.started,
            };
            self.inner.runtime.spawn(ingress::serve(ctx, l));
        }
        Ok(())
    }

    /// Stops a session's UDP: its sockets close, its flows end.
    pub(crate) fn remove_session(&self, key: &SessionKey) {
        self.sessions().remove(key);
    }

    /// The session's counters (zero when it carries no UDP).
    pub(crate) fn stats(&self, key: &SessionKey) -> UdpStats {
        self.sessions()
            .get(key)
            .map(|s| s.counters.snapshot())
            .unwrap_or_default()
    }

    /// Inbound side: a flow the peer gateway opened and the worker
    /// accepted; `receiver` is connected to the session's receiver.
    /// False when the session is gone (the caller refuses the connection).
    pub(crate) fn inbound_flow(
        &self,
        key: &SessionKey,
        receiver: UdpSocket,
        stream: UnixStream,
    ) -> bool {
        let ctx = {
            let sessions = self.sessions();
            let Some(s) = sessions.get(key) else {
                return false;
            };
            flow::FlowCtx {
                key: key.clone(),
                counters: s.counters.clone(),
                alive: s.alive.clone(),
                options: self.inner.options,
                started: self.inner.started,
            }
        };
        self.inner
            .runtime
            .spawn(egress::serve(ctx, receiver, stream));
        true
    }
}

/// The pair of a flow: one end for the worker (non-blocking, as an
/// accepted socket would be), one for this module.
pub(crate) fn flow_pair() -> io::Result<(UnixStream, UnixStream)> {
    let (a, b) = UnixStream::pair()?;
    a.set_nonblocking(true)?;
    b.set_nonblocking(true)?;
    Ok((a, b))
}

/// A UDP socket connected to `receiver`, from an address of this host.
pub(crate) fn connect_receiver(receiver: SocketAddr) -> io::Result<UdpSocket> {
    let any: SocketAddr = if receiver.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(any)?;
    socket.connect(receiver)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}
