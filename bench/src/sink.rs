//! The sink: accepts connections, verifies every stream, streams back when asked.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use crate::receive::{IDLE_LIMIT, Received, receive};
use crate::send::{Plan, Sent, Stop, send};
use crate::wire::FLAG_BIDIR;

/// One finished connection.
#[derive(Debug, Clone)]
pub struct ConnOutcome {
    /// Who connected.
    pub peer: SocketAddr,
    /// What arrived.
    pub received: Received,
    /// What was streamed back (bidirectional mode).
    pub reverse: Option<Result<Sent, String>>,
}

/// A running sink.
#[derive(Debug)]
pub struct Sink {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Bytes received so far, over all connections.
    pub counter: Arc<AtomicU64>,
    /// Connections open now.
    pub open: Arc<AtomicU64>,
    results: mpsc::Receiver<ConnOutcome>,
}

impl Sink {
    /// Listens on `addr` and serves every connection on its own thread.
    pub fn start(addr: SocketAddr) -> std::io::Result<Sink> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let (tx, rx) = mpsc::channel();
        let counter = Arc::new(AtomicU64::new(0));
        let open = Arc::new(AtomicU64::new(0));
        let (c, o) = (counter.clone(), open.clone());
        std::thread::Builder::new()
            .name("s2bench-sink".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    let (tx, c, o) = (tx.clone(), c.clone(), o.clone());
                    o.fetch_add(1, Ordering::Relaxed);
                    let spawned = std::thread::Builder::new()
                        .name("s2bench-conn".into())
                        .spawn(move || {
                            let outcome = serve(stream, &c);
                            o.fetch_sub(1, Ordering::Relaxed);
                            // A connection that sent nothing (a port probe, a scan) is not a stream.
                            if outcome.received.bytes > 0 {
                                let _ = tx.send(outcome);
                            }
                        });
                    if spawned.is_err() {
                        // Out of threads: the connection is dropped; the source sees it closed.
                        continue;
                    }
                }
            })?;
        Ok(Sink {
            addr,
            counter,
            open,
            results: rx,
        })
    }

    /// The next finished connection, waiting at most `timeout`.
    pub fn next(&self, timeout: Duration) -> Option<ConnOutcome> {
        self.results.recv_timeout(timeout).ok()
    }

    /// Drops outcomes nobody collected (from an earlier run).
    pub fn drain(&self) {
        while self.results.try_recv().is_ok() {}
    }

    /// Waits for `n` finished connections (fewer if `timeout` passes).
    pub fn collect(&self, n: usize, timeout: Duration) -> Vec<ConnOutcome> {
        let deadline = std::time::Instant::now() + timeout;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.results.recv_timeout(left) {
                Ok(o) => out.push(o),
                Err(_) => break,
            }
        }
        out
    }
}

fn serve(stream: TcpStream, counter: &Arc<AtomicU64>) -> ConnOutcome {
    let peer = stream
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let _ = stream.set_read_timeout(Some(IDLE_LIMIT));
    let _ = stream.set_nodelay(true);
    let done = Arc::new(AtomicBool::new(false));
    let mut writer = None;
    let writer_stream = stream.try_clone();
    let received = receive(&stream, counter, |hello| {
        if hello.flags & FLAG_BIDIR != 0 {
            let plan = Plan {
                conn: hello.conn,
                msg_size: (hello.aux as usize).max(8),
                stop: Stop::Flag,
                rate_bps: None,
                flags: 0,
                detector: None,
            };
            if let Ok(mut w) = writer_stream
                .as_ref()
                .map_err(|e| e.to_string())
                .and_then(|s| s.try_clone().map_err(|e| e.to_string()))
            {
                let done = done.clone();
                writer = Some(std::thread::spawn(move || {
                    let r = send(&mut w, &plan, &done, &Arc::new(AtomicU64::new(0)))
                        .map_err(|e| e.to_string());
                    let _ = w.shutdown(std::net::Shutdown::Write);
                    r
                }));
            }
        }
    });
    done.store(true, Ordering::Relaxed);
    let reverse = writer.map(|w| w.join().unwrap_or_else(|_| Err("writer panicked".into())));
    ConnOutcome {
        peer,
        received,
        reverse,
    }
}
