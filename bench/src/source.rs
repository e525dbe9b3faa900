//! The source: opens connections and streams over each.

use std::io::Read;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant};

use crate::receive::{Received, receive};
use crate::send::{Plan, Sent, Stop, send};
use crate::stats::Meter;
use crate::wire::{FLAG_BIDIR, FLAG_DETECTOR};

/// Detector-frame mode.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detector {
    /// Bytes per frame.
    pub frame_size: usize,
    /// Frames per second, over all connections.
    pub fps: f64,
    /// Number of frames; `None`: for the run's duration.
    pub frames: Option<u64>,
}

/// What to send.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Where to connect, one address per connection (cycled): a sink, or a
    /// tunnel's listeners.
    pub targets: Vec<String>,
    /// Parallel connections.
    pub conns: usize,
    /// Message size.
    pub msg_size: usize,
    /// When to stop: after a duration, or after a number of payload bytes in total.
    pub stop: Stop,
    /// Total rate over all connections, bit/s.
    pub rate_bps: Option<u64>,
    /// The sink streams back too.
    pub bidir: bool,
    /// Detector-frame mode.
    pub detector: Option<Detector>,
    /// Print per-second throughput on stderr.
    pub progress: bool,
    /// SO_SNDBUF of each connection (default: kernel autotuning).
    pub sndbuf: Option<u64>,
}

/// Source failures.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Connecting failed.
    #[error("connection {conn}: cannot connect to {addr}: {source}")]
    Connect {
        /// Connection index.
        conn: usize,
        /// Address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// Sending failed.
    #[error("connection {conn}: {source}")]
    Send {
        /// Connection index.
        conn: usize,
        /// Why.
        source: std::io::Error,
    },
}

/// What a source run did.
#[derive(Debug, Clone)]
pub struct SourceResult {
    /// Per connection.
    pub sent: Vec<Sent>,
    /// Reverse streams (bidirectional mode).
    pub reverse: Vec<Received>,
    /// Wall time from first byte to the sink's close.
    pub seconds: f64,
    /// Gbit/s each second.
    pub per_second: Vec<f64>,
}

fn resolve(addr: &str) -> std::io::Result<SocketAddr> {
    addr.to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))
}

/// Runs a source to completion.
pub fn run(cfg: &SourceConfig) -> Result<SourceResult, SourceError> {
    let mut streams = Vec::with_capacity(cfg.conns);
    for conn in 0..cfg.conns {
        let addr = cfg.targets[conn % cfg.targets.len()].clone();
        let s = resolve(&addr)
            .and_then(|a| TcpStream::connect_timeout(&a, Duration::from_secs(10)))
            .map_err(|source| SourceError::Connect {
                conn,
                addr: addr.clone(),
                source,
            })?;
        let _ = s.set_nodelay(true);
        if let Some(n) = cfg.sndbuf {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            rustix::net::sockopt::set_socket_send_buffer_size(&s, n).map_err(|e| {
                SourceError::Connect {
                    conn,
                    addr: addr.clone(),
                    source: e.into(),
                }
            })?;
        }
        streams.push(s);
    }
    let counter = Arc::new(AtomicU64::new(0));
    let meter = Meter::start("source", counter.clone(), cfg.progress);
    let started = Instant::now();
    let n = cfg.conns as u64;
    let mut handles = Vec::new();
    for (conn, stream) in streams.into_iter().enumerate() {
        let stop = match cfg.stop {
            Stop::Bytes(total) => Stop::Bytes(total / n + if conn == 0 { total % n } else { 0 }),
            other => other,
        };
        let mut flags = if cfg.bidir { FLAG_BIDIR } else { 0 };
        let (msg_size, detector) = match cfg.detector {
            Some(d) => {
                flags |= FLAG_DETECTOR;
                (d.frame_size, Some((d.fps, cfg.conns as u16, d.frames)))
            }
            None => (cfg.msg_size, None),
        };
        let plan = Plan {
            conn: conn as u16,
            msg_size,
            stop,
            rate_bps: cfg.rate_bps.map(|r| r / n),
            flags,
            detector,
        };
        let counter = counter.clone();
        let bidir = cfg.bidir;
        handles.push(std::thread::spawn(
            move || -> Result<(Sent, Option<Received>), SourceError> {
                let mut stream = stream;
                let reader = if bidir {
                    let r = stream
                        .try_clone()
                        .map_err(|source| SourceError::Send { conn, source })?;
                    Some(std::thread::spawn(move || {
                        receive(&r, &Arc::new(AtomicU64::new(0)), |_| {})
                    }))
                } else {
                    None
                };
                let sent = send(&mut stream, &plan, &AtomicBool::new(false), &counter)
                    .map_err(|source| SourceError::Send { conn, source })?;
                let _ = stream.shutdown(std::net::Shutdown::Write);
                let reverse = match reader {
                    Some(r) => r.join().ok(),
                    None => {
                        // Wait for the sink to close: then it has read everything.
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(120)));
                        let _ = stream.read(&mut [0u8; 64]);
                        None
                    }
                };
                Ok((sent, reverse))
            },
        ));
    }
    let mut sent = Vec::new();
    let mut reverse = Vec::new();
    let mut first_error = None;
    for (conn, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok((s, r))) => {
                sent.push(s);
                reverse.extend(r);
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(_) => {
                first_error.get_or_insert(SourceError::Send {
                    conn,
                    source: std::io::Error::other("sender thread panicked"),
                });
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let per_second = meter.finish();
    match first_error {
        Some(e) => Err(e),
        None => Ok(SourceResult {
            sent,
            reverse,
            seconds,
            per_second,
        }),
    }
}
