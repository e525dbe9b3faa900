//! Reading and verifying an s2bench stream: shared by the sink and by a
//! bidirectional source reading the reverse stream.

use std::io::{BufReader, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::stats::latency_histogram;
use crate::wire::{HEADER_LEN, Header, Kind, now_ns, verify};

/// What one direction of one connection delivered.
#[derive(Debug, Clone)]
pub struct Received {
    /// Connection index from the stream's HELLO.
    pub conn: u16,
    /// HELLO flags.
    pub flags: u8,
    /// Bytes read (headers included).
    pub bytes: u64,
    /// DATA/FRAME messages whose payload verified.
    pub good: u64,
    /// Messages whose payload or sequence failed verification.
    pub corrupt: u64,
    /// The END message arrived.
    pub clean_end: bool,
    /// Messages the sender said it sent (from END).
    pub sent: Option<u64>,
    /// One-way latency, µs.
    pub latency: Histogram<u64>,
    /// Detector frames: (frame id, latency µs) of each verified frame.
    pub frames: Vec<(u64, u64)>,
    /// Frames per second the detector announced (0: not a detector stream).
    pub fps: f64,
    /// Frames the detector planned (0: duration-based).
    pub planned_frames: u64,
    /// Time of the first and last byte, ns since the epoch.
    pub first_ns: u64,
    /// See `first_ns`.
    pub last_ns: u64,
    /// The reason reading stopped early, if it did.
    pub error: Option<String>,
}

impl Received {
    fn new() -> Self {
        Received {
            conn: 0,
            flags: 0,
            bytes: 0,
            good: 0,
            corrupt: 0,
            clean_end: false,
            sent: None,
            latency: latency_histogram(),
            frames: Vec::new(),
            fps: 0.0,
            planned_frames: 0,
            first_ns: 0,
            last_ns: 0,
            error: None,
        }
    }

    /// Messages the sender sent that did not arrive intact.
    pub fn missing(&self) -> u64 {
        self.sent.map(|s| s.saturating_sub(self.good)).unwrap_or(0)
    }

    /// Everything arrived, intact and complete.
    pub fn ok(&self) -> bool {
        self.clean_end && self.corrupt == 0 && self.missing() == 0 && self.error.is_none()
    }
}

/// Reads a whole stream from `r` until EOF, verifying each message.
/// `counter` is bumped with every byte read (for per-second meters);
/// `on_hello` sees the HELLO before any data is read.
pub fn receive(
    r: impl Read,
    counter: &Arc<AtomicU64>,
    mut on_hello: impl FnMut(&Header),
) -> Received {
    let mut out = Received::new();
    let mut r = BufReader::with_capacity(256 << 10, r);
    let mut header = [0u8; HEADER_LEN];
    let mut payload = Vec::new();
    let mut expect_seq = 1u64;
    let mut saw_hello = false;
    loop {
        match r.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                if !out.clean_end {
                    out.error
                        .get_or_insert_with(|| "stream ended before its END message".into());
                }
                break;
            }
            Err(e) => {
                out.error = Some(format!("reading: {e}"));
                break;
            }
        }
        let now = now_ns();
        if out.first_ns == 0 {
            out.first_ns = now;
        }
        let h = match Header::decode(&header) {
            Ok(h) => h,
            Err(e) => {
                // The stream cannot be framed any more: stop here.
                out.corrupt += 1;
                out.error = Some(format!("message {expect_seq}: {e}"));
                break;
            }
        };
        payload.resize(h.len as usize, 0);
        if let Err(e) = r.read_exact(&mut payload) {
            out.error = Some(format!("message {}: payload cut short: {e}", h.seq));
            break;
        }
        let done = now_ns();
        out.last_ns = done;
        let n = (HEADER_LEN + payload.len()) as u64;
        out.bytes += n;
        counter.fetch_add(n, Ordering::Relaxed);
        match h.kind {
            Kind::Hello => {
                if saw_hello {
                    out.corrupt += 1;
                }
                saw_hello = true;
                out.conn = h.conn;
                out.flags = h.flags;
                out.fps = f64::from(h.aux) / 1000.0;
                out.planned_frames = h.aux2;
                on_hello(&h);
            }
            Kind::Data | Kind::Frame => {
                if !saw_hello || out.clean_end || h.seq != expect_seq || !verify(&h, &payload) {
                    out.corrupt += 1;
                } else {
                    out.good += 1;
                    let lat_us = done.saturating_sub(h.sent_ns) / 1000;
                    let _ = out.latency.record(lat_us.max(1));
                    if h.kind == Kind::Frame {
                        out.frames.push((h.aux2, lat_us));
                    }
                }
                expect_seq = h.seq.wrapping_add(1);
            }
            Kind::End => {
                out.clean_end = true;
                out.sent = Some(h.aux2);
            }
        }
    }
    out
}

/// How long a sink waits on a silent connection before giving up on it.
pub const IDLE_LIMIT: Duration = Duration::from_secs(120);
