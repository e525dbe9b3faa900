//! The receiver side: a flow the peer gateway opened through the tunnel
//! leaves it here, through a UDP socket of its own connected to the
//! receiver; what the receiver sends back to that socket returns through
//! the same connection, to the sender that opened the flow.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use scistream_protocol::datagram::MAX_DATAGRAM;
use tokio::net::{UdpSocket, UnixStream};
use tracing::debug;

use super::Direction;
use super::flow::{self, Activity, FlowCtx, Queue};

/// Serves one flow until the tunnel closes it, it idles out, or the
/// session goes.
pub(super) async fn serve(
    ctx: FlowCtx,
    receiver: std::net::UdpSocket,
    stream: std::os::unix::net::UnixStream,
) {
    ctx.counters.flows_total.fetch_add(1, Ordering::Relaxed);
    ctx.counters.flows_open.fetch_add(1, Ordering::Relaxed);
    run(&ctx, receiver, stream).await;
    ctx.counters.flows_open.fetch_sub(1, Ordering::Relaxed);
}

async fn run(ctx: &FlowCtx, receiver: std::net::UdpSocket, stream: std::os::unix::net::UnixStream) {
    let (socket, stream) = match (UdpSocket::from_std(receiver), UnixStream::from_std(stream)) {
        (Ok(s), Ok(u)) => (Arc::new(s), u),
        (Err(e), _) | (_, Err(e)) => {
            debug!(session = %ctx.key, error = %e, "cannot serve a UDP flow");
            return;
        }
    };
    let peer = socket.peer_addr().ok();
    debug!(session = %ctx.key, receiver = ?peer, "UDP flow from the tunnel");
    let (r, w) = stream.into_split();
    let activity = Activity::new(ctx.started);
    let (queue, rx) = Queue::new(ctx.options.queue);
    let writer = flow::write_frames(rx, w, ctx, &activity, Direction::FromTarget);
    let out = socket.clone();
    let reader = flow::read_frames(r, ctx, &activity, Direction::ToTarget, |d| {
        let out = out.clone();
        // A receiver not (yet) listening makes the kernel report the
        // previous datagram's ICMP error on this send: that datagram is
        // lost, this one is sent again once.
        async move {
            match out.send(&d).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    Ok(out.send(&d).await.is_ok())
                }
                Err(_) => Ok(false),
            }
        }
    });
    let replies = async {
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        loop {
            match socket.recv(&mut buf).await {
                Ok(n) => {
                    if queue.offer(buf[..n].to_vec(), &ctx.counters) == flow::Offer::Closed {
                        return;
                    }
                }
                // ICMP port unreachable from the receiver: nothing to take.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                Err(e) => {
                    debug!(session = %ctx.key, error = %e, "UDP receive from the receiver failed");
                    return;
                }
            }
        }
    };
    tokio::select! {
        r = writer => if let Err(e) = r { debug!(session = %ctx.key, error = %e, "UDP flow: the tunnel stopped taking replies") },
        r = reader => if let Err(e) = r { debug!(session = %ctx.key, error = %e, "UDP flow: the tunnel broke") },
        _ = replies => {}
        _ = flow::idle_expiry(ctx, &activity) => debug!(session = %ctx.key, "UDP flow idle; closed"),
        _ = flow::session_gone(ctx.alive.clone()) => {}
    }
}
