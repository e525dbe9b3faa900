//! Summaries of what sinks received, for people and for JSON.

use std::collections::HashMap;

use serde::Serialize;

use crate::receive::Received;
use crate::stats::{Latency, gbps, latency_histogram};

/// Detector-frame accounting.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Frames {
    /// Distinct frames that arrived intact.
    pub received: u64,
    /// Frames that arrived more than once.
    pub duplicates: u64,
    /// Frames the detector sent (or planned) that never arrived intact.
    pub lost: u64,
    /// Frames that arrived after the deadline.
    pub late: u64,
    /// The deadline, ms (0: none given).
    pub deadline_ms: f64,
    /// Frame latency: from when the frame was due to when its last byte arrived.
    pub latency: Latency,
    /// Frames per second asked for.
    pub fps_requested: f64,
    /// Frames per second delivered.
    pub fps_sustained: f64,
}

/// Everything one run delivered, over all its connections.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    /// Connections.
    pub conns: usize,
    /// Bytes (headers included).
    pub bytes: u64,
    /// Messages verified intact.
    pub messages: u64,
    /// From the first byte to the last, seconds.
    pub seconds: f64,
    /// Throughput.
    pub gbps: f64,
    /// Messages that failed verification.
    pub corrupt: u64,
    /// Messages sent but not received intact.
    pub missing: u64,
    /// Connections that ended without their END message.
    pub incomplete: u64,
    /// One-way latency.
    pub latency: Latency,
    /// Detector accounting, for detector streams.
    pub frames: Option<Frames>,
    /// First problem seen, if any.
    pub first_error: Option<String>,
    /// Nothing lost, nothing corrupt, every stream complete.
    pub ok: bool,
}

/// Summarises the streams of one run.
pub fn summarize(streams: &[&Received], deadline: Option<std::time::Duration>) -> Summary {
    let mut latency = latency_histogram();
    let (mut bytes, mut messages, mut corrupt, mut missing, mut incomplete) = (0, 0, 0, 0, 0);
    let (mut first, mut last) = (u64::MAX, 0u64);
    let mut first_error = None;
    for r in streams {
        bytes += r.bytes;
        messages += r.good;
        corrupt += r.corrupt;
        missing += r.missing();
        incomplete += u64::from(!r.clean_end);
        let _ = latency.add(&r.latency);
        if r.first_ns != 0 {
            first = first.min(r.first_ns);
        }
        last = last.max(r.last_ns);
        if first_error.is_none() {
            first_error = r
                .error
                .clone()
                .map(|e| format!("connection {}: {e}", r.conn));
        }
    }
    let seconds = if last > first {
        (last - first) as f64 / 1e9
    } else {
        0.0
    };
    let frames = streams.iter().any(|r| r.fps > 0.0).then(|| {
        let mut seen: HashMap<u64, u64> = HashMap::new();
        let mut frame_latency = latency_histogram();
        let mut late = 0;
        for r in streams {
            for &(id, lat_us) in &r.frames {
                *seen.entry(id).or_default() += 1;
                let _ = frame_latency.record(lat_us.max(1));
                if deadline.is_some_and(|d| lat_us as u128 > d.as_micros()) {
                    late += 1;
                }
            }
        }
        let planned = streams.iter().map(|r| r.planned_frames).max().unwrap_or(0);
        let sent: u64 = streams.iter().filter_map(|r| r.sent).sum();
        let expected = if planned > 0 { planned } else { sent };
        let received = seen.len() as u64;
        Frames {
            received,
            duplicates: seen.values().filter(|&&n| n > 1).count() as u64,
            lost: expected.saturating_sub(received),
            late,
            deadline_ms: deadline.map(|d| d.as_secs_f64() * 1e3).unwrap_or(0.0),
            latency: Latency::of(&frame_latency),
            fps_requested: streams.iter().map(|r| r.fps).fold(0.0, f64::max),
            fps_sustained: if seconds > 0.0 {
                received as f64 / seconds
            } else {
                0.0
            },
        }
    });
    let frames_ok = frames
        .as_ref()
        .is_none_or(|f| f.duplicates == 0 && f.lost == 0);
    Summary {
        conns: streams.len(),
        bytes,
        messages,
        seconds,
        gbps: gbps(bytes, seconds),
        corrupt,
        missing,
        incomplete,
        latency: Latency::of(&latency),
        frames,
        first_error,
        ok: corrupt == 0 && missing == 0 && incomplete == 0 && frames_ok,
    }
}

impl Summary {
    /// A few lines for people.
    pub fn human(&self, label: &str) -> String {
        let mut s = format!(
            "{label}: {} connection(s), {} in {:.2} s = {:.2} Gbit/s, {} messages verified",
            self.conns,
            scistream_protocol::units::format_size(self.bytes),
            self.seconds,
            self.gbps,
            self.messages
        );
        s += &format!("\n  one-way latency: {}", self.latency.human());
        if let Some(f) = &self.frames {
            s += &format!(
                "\n  frames: {} received, {} lost, {} duplicated, {} late (deadline {} ms); {:.1} fps sustained of {:.1} asked\n  frame latency: {}",
                f.received,
                f.lost,
                f.duplicates,
                f.late,
                f.deadline_ms,
                f.fps_sustained,
                f.fps_requested,
                f.latency.human()
            );
        }
        if self.ok {
            s += "\n  verified: every byte intact, nothing lost";
        } else {
            s += &format!(
                "\n  VERIFICATION FAILED: {} corrupt, {} missing, {} incomplete stream(s){}",
                self.corrupt,
                self.missing,
                self.incomplete,
                self.first_error
                    .as_ref()
                    .map(|e| format!("; first: {e}"))
                    .unwrap_or_default()
            );
        }
        s
    }
}
