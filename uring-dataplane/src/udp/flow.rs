//! What both ends of a flow share: the queue into the tunnel, the writer
//! that frames it, the reader that takes frames off, and the idle clock.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use scistream_protocol::datagram::{self, Deframer};
use scistream_protocol::handoff::SessionKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, watch};

use super::{Direction, FlowOptions, UdpCounters};

/// What a flow's tasks need from their session.
#[derive(Debug, Clone)]
pub(super) struct FlowCtx {
    pub key: SessionKey,
    pub counters: Arc<UdpCounters>,
    /// Changes (closes) when the session is removed.
    pub alive: watch::Receiver<()>,
    pub options: FlowOptions,
    pub started: Instant,
}

/// Most bytes written into the stream in one go.
const WRITE_BATCH: usize = 256 * 1024;

/// When a flow last moved a datagram, in ms since the plane started.
#[derive(Debug)]
pub(super) struct Activity {
    started: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    pub fn new(started: Instant) -> Arc<Activity> {
        let a = Arc::new(Activity {
            started,
            last_ms: AtomicU64::new(0),
        });
        a.touch();
        a
    }

    pub fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Idle for at least `idle`.
    pub fn idle_for(&self, idle: std::time::Duration) -> bool {
        let now = self.started.elapsed().as_millis() as u64;
        now.saturating_sub(self.last_ms.load(Ordering::Relaxed)) >= idle.as_millis() as u64
    }
}

/// The bounded queue in front of the tunnel.
#[derive(Debug, Clone)]
pub(super) struct Queue {
    tx: mpsc::Sender<Vec<u8>>,
}

/// What became of a datagram offered to a queue.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Offer {
    Queued,
    /// The queue is full: dropped (and counted).
    Dropped,
    /// The flow has ended.
    Closed,
}

impl Queue {
    pub fn new(len: usize) -> (Queue, mpsc::Receiver<Vec<u8>>) {
        let (tx, rx) = mpsc::channel(len.max(1));
        (Queue { tx }, rx)
    }

    /// Queues a datagram without waiting.
    pub fn offer(&self, datagram: Vec<u8>, counters: &UdpCounters) -> Offer {
        if datagram.len() > datagram::MAX_DATAGRAM {
            // Not from a UDP socket (the receive buffers are one byte longer
            // than any datagram, so that this is caught, not framed).
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            return Offer::Dropped;
        }
        match self.tx.try_send(datagram) {
            Ok(()) => Offer::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                Offer::Dropped
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Offer::Closed,
        }
    }

    /// The flow behind the queue has ended.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Frames queued datagrams into the stream until the queue closes or the
/// stream breaks. Datagrams are counted when they are in the stream.
pub(super) async fn write_frames(
    mut queue: mpsc::Receiver<Vec<u8>>,
    mut stream: OwnedWriteHalf,
    ctx: &FlowCtx,
    activity: &Activity,
    dir: Direction,
) -> io::Result<()> {
    let mut batch = Vec::with_capacity(WRITE_BATCH + datagram::MAX_DATAGRAM);
    while let Some(first) = queue.recv().await {
        batch.clear();
        let (mut n, mut bytes) = (0u64, 0u64);
        let mut next = Some(first);
        while let Some(d) = next.take() {
            batch.extend_from_slice(&datagram::header(d.len()));
            batch.extend_from_slice(&d);
            n += 1;
            bytes += d.len() as u64;
            if batch.len() < WRITE_BATCH {
                next = queue.try_recv().ok();
            }
        }
        stream.write_all(&batch).await?;
        ctx.counters.forwarded(dir, n, bytes);
        activity.touch();
    }
    stream.shutdown().await
}

/// Reads frames off the stream and hands each datagram to `deliver`, until
/// the stream ends (`Ok`) or breaks, or carries an impossible frame.
pub(super) async fn read_frames<F, Fut>(
    mut stream: OwnedReadHalf,
    ctx: &FlowCtx,
    activity: &Activity,
    dir: Direction,
    mut deliver: F,
) -> io::Result<()>
where
    F: FnMut(Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = io::Result<bool>>,
{
    let mut deframer = Deframer::new();
    let mut buf = vec![0u8; WRITE_BATCH];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return match deframer.pending() {
                0 => Ok(()),
                left => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the stream ended inside a frame ({left} bytes of it)"),
                )),
            };
        }
        deframer.push(&buf[..n]);
        loop {
            let d = match deframer.next_datagram() {
                Ok(Some(d)) => d.to_vec(),
                Ok(None) => break,
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            };
            let len = d.len() as u64;
            if deliver(d).await? {
                ctx.counters.forwarded(dir, 1, len);
            } else {
                ctx.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
            activity.touch();
        }
    }
}

/// Resolves once the session is removed.
pub(super) async fn session_gone(mut alive: watch::Receiver<()>) {
    while alive.changed().await.is_ok() {}
}

/// Resolves once the flow has been idle for the configured time; counts it.
pub(super) async fn idle_expiry(ctx: &FlowCtx, activity: &Activity) {
    let idle = ctx.options.idle;
    let tick = (idle / 4).clamp(
        std::time::Duration::from_millis(20),
        std::time::Duration::from_secs(5),
    );
    loop {
        tokio::time::sleep(tick).await;
        if activity.idle_for(idle) {
            ctx.counters.flows_expired.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
}
