//! The instrument side: a listener's UDP socket, its flows (one per sender
//! address and port), and the adoption of each flow's connection by the
//! listener's worker.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use scistream_protocol::datagram::MAX_DATAGRAM;
use scistream_protocol::loglimit::LogLimit;
use tokio::net::{UdpSocket, UnixStream};
use tracing::{debug, warn};

use super::flow::{self, Activity, FlowCtx, Offer, Queue};
use super::{Direction, UdpListener};
use crate::worker::WorkerCommand;

/// A sender whose flow ended this soon after it opened (the tunnel refused
/// it, say) gets its next flow no sooner than this after the last one
/// opened; its datagrams are dropped meanwhile. Bounds connection attempts
/// to one a second per sender when the way on is broken.
const REOPEN_AFTER: Duration = Duration::from_secs(1);

/// Datagrams refused for --udp-max-flows, logged one by one: 5 per 10 s.
static TOO_MANY: LogLimit = LogLimit::new(5, Duration::from_secs(10));

struct Flow {
    queue: Queue,
    opened: Instant,
}

/// Serves one listener's UDP socket until the session is removed.
pub(super) async fn serve(ctx: FlowCtx, l: UdpListener) {
    let socket = match UdpSocket::from_std(l.socket) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            warn!(session = %ctx.key, listener = l.index, error = %e, "cannot serve the UDP socket");
            return;
        }
    };
    let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    let gone = flow::session_gone(ctx.alive.clone());
    tokio::pin!(gone);
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = &mut gone => break,
            _ = sweep.tick() => {
                // Flows that ended on their own; keep recently refused ones a while.
                flows.retain(|_, f| !f.queue.is_closed() || f.opened.elapsed() < REOPEN_AFTER);
            }
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, sender)) => offer(&ctx, &l.worker, l.index, &socket, &mut flows, sender, &buf[..n]),
                Err(e) => {
                    debug!(session = %ctx.key, listener = l.index, error = %e, "UDP receive failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
    debug!(session = %ctx.key, listener = l.index, "UDP listener closed");
}

/// Puts a datagram into its flow, opening the flow when it is new.
fn offer(
    ctx: &FlowCtx,
    worker: &crate::worker::WorkerMailbox,
    index: usize,
    socket: &Arc<UdpSocket>,
    flows: &mut HashMap<SocketAddr, Flow>,
    sender: SocketAddr,
    datagram: &[u8],
) {
    if let Some(f) = flows.get(&sender) {
        match f.queue.offer(datagram.to_vec(), &ctx.counters) {
            Offer::Queued | Offer::Dropped => return,
            Offer::Closed if f.opened.elapsed() < REOPEN_AFTER => {
                ctx.counters.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Offer::Closed => {
                flows.remove(&sender);
            }
        }
    }
    if flows.len() >= ctx.options.max_flows {
        // Flows that ended make room first.
        flows.retain(|_, f| !f.queue.is_closed() || f.opened.elapsed() < REOPEN_AFTER);
        if flows.len() >= ctx.options.max_flows {
            ctx.counters.dropped.fetch_add(1, Ordering::Relaxed);
            let verdict = TOO_MANY.check(Instant::now());
            if verdict.log {
                warn!(session = %ctx.key, listener = index, %sender, max_flows = ctx.options.max_flows, "a datagram from a new sender dropped: this listener has as many UDP flows open as --udp-max-flows allows");
            }
            return;
        }
    }
    let Some(f) = open(ctx, worker, index, socket, sender) else {
        ctx.counters.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    };
    f.queue.offer(datagram.to_vec(), &ctx.counters);
    flows.insert(sender, f);
}

/// Opens a flow: a socket pair, one end adopted by the listener's worker
/// (which connects through the tunnel), the other served here.
fn open(
    ctx: &FlowCtx,
    worker: &crate::worker::WorkerMailbox,
    index: usize,
    socket: &Arc<UdpSocket>,
    sender: SocketAddr,
) -> Option<Flow> {
    let (worker_end, ours) = match super::flow_pair() {
        Ok(p) => p,
        Err(e) => {
            warn!(session = %ctx.key, listener = index, error = %e, "cannot open a UDP flow");
            return None;
        }
    };
    let adopt = WorkerCommand::AdoptFlow {
        key: ctx.key.clone(),
        index,
        fd: OwnedFd::from(worker_end),
        sender,
    };
    if let Err(e) = worker.send(adopt) {
        warn!(session = %ctx.key, listener = index, error = %e, "cannot open a UDP flow");
        return None;
    }
    let (queue, rx) = Queue::new(ctx.options.queue);
    ctx.counters.flows_total.fetch_add(1, Ordering::Relaxed);
    ctx.counters.flows_open.fetch_add(1, Ordering::Relaxed);
    debug!(session = %ctx.key, listener = index, %sender, "UDP flow opened");
    let ctx = ctx.clone();
    let socket = socket.clone();
    tokio::spawn(async move {
        run(&ctx, socket, sender, rx, ours).await;
        ctx.counters.flows_open.fetch_sub(1, Ordering::Relaxed);
        debug!(session = %ctx.key, listener = index, %sender, "UDP flow closed");
    });
    Some(Flow {
        queue,
        opened: Instant::now(),
    })
}

/// One flow, until it ends, idles out, or its session goes.
async fn run(
    ctx: &FlowCtx,
    socket: Arc<UdpSocket>,
    sender: SocketAddr,
    queue: tokio::sync::mpsc::Receiver<Vec<u8>>,
    stream: std::os::unix::net::UnixStream,
) {
    let stream = match UnixStream::from_std(stream) {
        Ok(s) => s,
        Err(e) => {
            warn!(session = %ctx.key, error = %e, "cannot serve a UDP flow");
            return;
        }
    };
    let (r, w) = stream.into_split();
    let activity = Activity::new(ctx.started);
    let writer = flow::write_frames(queue, w, ctx, &activity, Direction::ToTarget);
    let reader = flow::read_frames(r, ctx, &activity, Direction::FromTarget, |d| {
        let socket = socket.clone();
        async move { Ok(socket.send_to(&d, sender).await.is_ok()) }
    });
    tokio::select! {
        r = writer => if let Err(e) = r { debug!(session = %ctx.key, %sender, error = %e, "UDP flow: the tunnel stopped taking datagrams") },
        r = reader => if let Err(e) = r { debug!(session = %ctx.key, %sender, error = %e, "UDP flow: the tunnel broke") },
        _ = flow::idle_expiry(ctx, &activity) => debug!(session = %ctx.key, %sender, "UDP flow idle; closed"),
        _ = flow::session_gone(ctx.alive.clone()) => {}
    }
}
