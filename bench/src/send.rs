//! Writing an s2bench stream on one connection.

use std::io::{IoSlice, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::wire::{Body, HEADER_LEN, Header, Kind, now_ns};

/// When a sender stops.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stop {
    /// After this long.
    After(Duration),
    /// After this many payload bytes.
    Bytes(u64),
    /// When the flag turns true (a sink streaming back until the source ends).
    Flag,
}

/// One sender's plan.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Connection index.
    pub conn: u16,
    /// Payload size of a full message.
    pub msg_size: usize,
    /// When to stop.
    pub stop: Stop,
    /// Pace to this many bits per second (headers included); `None`: as fast as possible.
    pub rate_bps: Option<u64>,
    /// HELLO flags.
    pub flags: u8,
    /// Detector mode: frames per second of the whole source, the number of
    /// connections frames are spread over, and an optional frame count.
    pub detector: Option<(f64, u16, Option<u64>)>,
}

/// What a sender did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sent {
    /// Bytes written (headers included).
    pub bytes: u64,
    /// DATA/FRAME messages written.
    pub messages: u64,
}

fn write_all_vectored(w: &mut impl Write, mut a: &[u8], mut b: &[u8]) -> std::io::Result<()> {
    while !a.is_empty() || !b.is_empty() {
        let n = w.write_vectored(&[IoSlice::new(a), IoSlice::new(b)])?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let from_a = n.min(a.len());
        a = &a[from_a..];
        b = &b[n - from_a..];
    }
    Ok(())
}

/// A header for `plan` with everything else zero; callers fill in the rest.
fn base(plan: &Plan, kind: Kind, seq: u64, sent_ns: u64) -> Header {
    Header {
        kind,
        flags: plan.flags,
        conn: plan.conn,
        seq,
        sent_ns,
        len: 0,
        aux: 0,
        check: 0,
        aux2: 0,
    }
}

fn encode(h: Header) -> [u8; HEADER_LEN] {
    let mut b = [0u8; HEADER_LEN];
    h.encode(&mut b);
    b
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// Writes HELLO, messages per `plan`, then END. `stop_flag` ends a
/// [`Stop::Flag`] plan; `counter` is bumped with every byte written.
pub fn send(
    w: &mut impl Write,
    plan: &Plan,
    stop_flag: &AtomicBool,
    counter: &Arc<AtomicU64>,
) -> std::io::Result<Sent> {
    let (fps, frames) = plan.detector.map(|(f, _, n)| (f, n)).unwrap_or((0.0, None));
    let fps_milli = (fps * 1000.0).round() as u32;
    let hello = encode(Header {
        aux: fps_milli,
        aux2: frames.unwrap_or(0),
        ..base(plan, Kind::Hello, 0, now_ns())
    });
    w.write_all(&hello)?;
    let mut body = Body::new(plan.msg_size, u64::from(plan.conn) + 1);
    let start = Instant::now();
    let start_ns = now_ns();
    let mut sent = Sent {
        bytes: HEADER_LEN as u64,
        messages: 0,
    };
    let mut payload_bytes = 0u64;
    let per_conn_rate = plan.rate_bps.map(|r| r.max(1) as f64);
    for seq in 1u64.. {
        let mut len = body.len();
        let (kind, sent_at, frame_id) = if let Some((fps, spread, frames)) = plan.detector {
            // Frame ids conn, conn+spread, …: frame f is due at f / fps.
            let f = u64::from(plan.conn) + (seq - 1) * u64::from(spread);
            if frames.is_some_and(|n| f >= n) {
                break;
            }
            let due = Duration::from_secs_f64(f as f64 / fps);
            if let Stop::After(d) = plan.stop {
                if due >= d {
                    break;
                }
            }
            sleep_until(start + due);
            (Kind::Frame, start_ns + due.as_nanos() as u64, f)
        } else {
            match plan.stop {
                Stop::After(d) if start.elapsed() >= d => break,
                Stop::Bytes(total) => {
                    if payload_bytes >= total {
                        break;
                    }
                    len = len.min((total - payload_bytes) as usize);
                }
                Stop::Flag if stop_flag.load(Ordering::Relaxed) => break,
                _ => {}
            }
            if let Some(rate) = per_conn_rate {
                sleep_until(start + Duration::from_secs_f64(sent.bytes as f64 * 8.0 / rate));
            }
            (Kind::Data, now_ns(), 0)
        };
        let (payload, check) = body.message(seq, len);
        let h = encode(Header {
            len: payload.len() as u32,
            aux: fps_milli,
            check,
            aux2: frame_id,
            ..base(plan, kind, seq, sent_at)
        });
        write_all_vectored(w, &h, payload)?;
        let n = (HEADER_LEN + payload.len()) as u64;
        sent.bytes += n;
        sent.messages += 1;
        payload_bytes += payload.len() as u64;
        counter.fetch_add(n, Ordering::Relaxed);
    }
    let end = encode(Header {
        aux2: sent.messages,
        ..base(plan, Kind::End, sent.messages + 1, now_ns())
    });
    w.write_all(&end)?;
    w.flush()?;
    sent.bytes += HEADER_LEN as u64;
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receive::receive;

    fn round_trip(plan: Plan) -> (Sent, crate::receive::Received) {
        let mut buf = Vec::new();
        let counter = Arc::new(AtomicU64::new(0));
        let sent = send(&mut buf, &plan, &AtomicBool::new(false), &counter).unwrap();
        assert_eq!(
            counter.load(Ordering::Relaxed) + 2 * HEADER_LEN as u64,
            sent.bytes
        );
        let got = receive(&buf[..], &Arc::new(AtomicU64::new(0)), |_| {});
        (sent, got)
    }

    #[test]
    fn bytes_mode_sends_exactly_and_verifies() {
        let plan = Plan {
            conn: 3,
            msg_size: 1000,
            stop: Stop::Bytes(10_500),
            rate_bps: None,
            flags: 0,
            detector: None,
        };
        let (sent, got) = round_trip(plan);
        assert_eq!(sent.messages, 11, "10 full messages and one of 500 bytes");
        assert!(got.ok(), "{got:?}");
        assert_eq!((got.good, got.conn, got.bytes), (11, 3, sent.bytes));
    }

    #[test]
    fn detector_mode_spreads_frames_over_connections() {
        let plan = Plan {
            conn: 1,
            msg_size: 4096,
            stop: Stop::After(Duration::from_secs(60)),
            rate_bps: None,
            flags: 2,
            detector: Some((1000.0, 3, Some(10))),
        };
        let (sent, got) = round_trip(plan);
        assert_eq!(sent.messages, 3, "frames 1, 4, 7 of 0..10");
        let ids: Vec<u64> = got.frames.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, vec![1, 4, 7]);
        assert!(got.ok());
        assert_eq!(got.planned_frames, 10);
        assert_eq!(got.fps, 1000.0);
    }

    #[test]
    fn a_cut_stream_is_not_ok() {
        let mut buf = Vec::new();
        let plan = Plan {
            conn: 0,
            msg_size: 100,
            stop: Stop::Bytes(1000),
            rate_bps: None,
            flags: 0,
            detector: None,
        };
        send(
            &mut buf,
            &plan,
            &AtomicBool::new(false),
            &Arc::new(AtomicU64::new(0)),
        )
        .unwrap();
        buf.truncate(buf.len() - 60);
        let got = receive(&buf[..], &Arc::new(AtomicU64::new(0)), |_| {});
        assert!(!got.ok());
        assert!(got.error.is_some());
    }
}
