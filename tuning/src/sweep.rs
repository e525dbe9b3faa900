//! `s2tune sweep`: s2bench over a grid of parallel connections and socket
//! buffer sizes (and data-channel TLS on/off when sweep sets the tunnel
//! up), to find what this path needs.
//!
//! Two ways through:
//! - `--connect ADDR[,ADDR…]`: a running `s2bench sink`, directly or via an
//!   existing tunnel's outbound listeners (from `s2uc outbound_request`).
//!   The buffer size is the source's SO_SNDBUF; throughput is what the
//!   source got acknowledged.
//! - `--loopback`: sweep starts a sink and, for each TLS setting and buffer
//!   size, two gateways on loopback with `s2cs --sndbuf/--rcvbuf` and a
//!   tunnel through them, made with s2uc's requests. The sink verifies
//!   every byte.
//!
//! The recommendation is the cheapest point within 5 % of the fastest (the
//! noise of one run): fewest connections, then the smallest buffer, with
//! kernel autotuning counting as the smallest.

use std::path::PathBuf;
use std::time::Duration;

use indicatif_free::Progress;
use scistream_bench::compare::chart::Bar;
use scistream_bench::compare::topology::{self, Env};
use scistream_bench::report::summarize;
use scistream_bench::send::Stop;
use scistream_bench::sink::Sink;
use scistream_bench::source::{self, SourceConfig};
use scistream_protocol::units::format_size;
use serde::Serialize;

/// Where the streams go.
#[derive(Debug, Clone)]
pub enum Through {
    /// A sink (or tunnel listeners) someone else runs.
    Connect(Vec<String>),
    /// A tunnel sweep sets up on loopback (`s2cs` binary, if not next to s2tune).
    Loopback(Option<PathBuf>),
}

/// The grid and how long each point runs.
#[derive(Debug, Clone)]
pub struct SweepConfig {
    /// Where the streams go.
    pub through: Through,
    /// Parallel connections to try.
    pub conns: Vec<usize>,
    /// Buffer sizes to try (`None`: kernel autotuning).
    pub buffers: Vec<Option<u64>>,
    /// Data-channel TLS settings to try (loopback only).
    pub tls: Vec<bool>,
    /// Each point's duration.
    pub duration: Duration,
    /// Message size.
    pub msg_size: usize,
    /// Progress on stderr.
    pub progress: bool,
}

/// One measured point.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// Connections.
    pub conns: usize,
    /// Buffer size, bytes (`None`: autotuning).
    pub buffer: Option<u64>,
    /// Data-channel TLS (`None`: not set up by sweep).
    pub tls: Option<bool>,
    /// Throughput.
    pub gbps: f64,
    /// Every byte arrived intact (loopback) / the source finished (connect).
    pub ok: bool,
    /// What went wrong.
    pub error: Option<String>,
}

impl Point {
    /// A short label: `tls 4c 64MiB`.
    pub fn label(&self) -> String {
        let tls = match self.tls {
            Some(true) => "tls ",
            Some(false) => "plain ",
            None => "",
        };
        format!("{tls}{}c {}", self.conns, buffer_name(self.buffer))
    }
}

/// `auto` or `64.00 MiB`.
pub fn buffer_name(b: Option<u64>) -> String {
    b.map(format_size).unwrap_or_else(|| "auto".into())
}

/// The sweep's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct SweepReport {
    /// `connect` or `loopback`.
    pub mode: &'static str,
    /// Seconds per point.
    pub duration_s: f64,
    /// Every point, in the order run.
    pub points: Vec<Point>,
    /// The recommended point.
    pub best: Option<Point>,
}

/// A minimal progress line (the grid is small; no bar library needed here).
mod indicatif_free {
    /// Prints `[k/n] what` lines on stderr when enabled.
    #[derive(Debug)]
    pub struct Progress {
        pub on: bool,
        pub total: usize,
        pub done: usize,
    }

    impl Progress {
        pub fn step(&mut self, what: &str) {
            self.done += 1;
            if self.on {
                eprintln!("[{}/{}] {what}", self.done, self.total);
            }
        }
    }
}

fn source_config(
    targets: Vec<String>,
    conns: usize,
    buffer: Option<u64>,
    cfg: &SweepConfig,
) -> SourceConfig {
    SourceConfig {
        targets,
        conns,
        msg_size: cfg.msg_size,
        stop: Stop::After(cfg.duration),
        rate_bps: None,
        bidir: false,
        detector: None,
        progress: false,
        sndbuf: buffer,
    }
}

/// Runs the sweep.
pub fn run(cfg: &SweepConfig) -> Result<SweepReport, String> {
    if cfg.conns.is_empty() || cfg.buffers.is_empty() {
        return Err("the grid is empty: give at least one --conns and one --buffers value".into());
    }
    let points = match &cfg.through {
        Through::Connect(targets) => connect(cfg, targets),
        Through::Loopback(s2cs) => loopback(cfg, s2cs.clone())?,
    };
    Ok(SweepReport {
        mode: match cfg.through {
            Through::Connect(_) => "connect",
            Through::Loopback(_) => "loopback",
        },
        duration_s: cfg.duration.as_secs_f64(),
        best: recommend(&points),
        points,
    })
}

fn connect(cfg: &SweepConfig, targets: &[String]) -> Vec<Point> {
    let mut progress = Progress {
        on: cfg.progress,
        total: cfg.conns.len() * cfg.buffers.len(),
        done: 0,
    };
    let mut points = Vec::new();
    for &buffer in &cfg.buffers {
        for &conns in &cfg.conns {
            progress.step(&format!(
                "{conns} connection(s), buffer {}",
                buffer_name(buffer)
            ));
            let r = source::run(&source_config(targets.to_vec(), conns, buffer, cfg));
            points.push(match r {
                Ok(r) => {
                    let bytes: u64 = r.sent.iter().map(|s| s.bytes).sum();
                    Point {
                        conns,
                        buffer,
                        tls: None,
                        gbps: if r.seconds > 0.0 {
                            bytes as f64 * 8.0 / r.seconds / 1e9
                        } else {
                            0.0
                        },
                        ok: true,
                        error: None,
                    }
                }
                Err(e) => Point {
                    conns,
                    buffer,
                    tls: None,
                    gbps: 0.0,
                    ok: false,
                    error: Some(e.to_string()),
                },
            });
        }
    }
    points
}

fn loopback(cfg: &SweepConfig, s2cs: Option<PathBuf>) -> Result<Vec<Point>, String> {
    let dir = tempfile::Builder::new()
        .prefix("s2tune-sweep-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let env = Env::create(dir.path(), s2cs)?;
    let sink = Sink::start("127.0.0.1:0".parse().map_err(|e| format!("{e}"))?)
        .map_err(|e| format!("cannot start the sink: {e}"))?;
    let max_conns = cfg.conns.iter().copied().max().unwrap_or(1);
    let mut progress = Progress {
        on: cfg.progress,
        total: cfg.tls.len() * cfg.buffers.len() * cfg.conns.len(),
        done: 0,
    };
    let mut points = Vec::new();
    for &tls in &cfg.tls {
        for &buffer in &cfg.buffers {
            let mut args = vec![format!("--data-tls={}", if tls { "on" } else { "off" })];
            if let Some(b) = buffer {
                args.push(format!("--sndbuf={b}"));
                args.push(format!("--rcvbuf={b}"));
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let tunnel = topology::scistream(&env, sink.addr.port(), max_conns, &args)
                .map_err(|e| format!("cannot set up the tunnel ({}): {e}", args.join(" ")))?;
            for &conns in &cfg.conns {
                let what = format!(
                    "{} tunnel, {conns} connection(s), buffer {}",
                    if tls { "TLS" } else { "plaintext" },
                    buffer_name(buffer)
                );
                progress.step(&what);
                sink.drain();
                let sent = source::run(&source_config(tunnel.entries.clone(), conns, buffer, cfg));
                let outcomes = sink.collect(
                    if sent.is_ok() { conns } else { 0 },
                    cfg.duration + Duration::from_secs(60),
                );
                let streams: Vec<_> = outcomes.iter().map(|o| &o.received).collect();
                let s = summarize(&streams, None);
                let error = match (&sent, s.ok) {
                    (Err(e), _) => Some(e.to_string()),
                    (Ok(_), false) => Some(
                        s.first_error
                            .clone()
                            .unwrap_or_else(|| "verification failed".into()),
                    ),
                    _ if outcomes.len() < conns => Some(format!(
                        "only {} of {conns} streams finished",
                        outcomes.len()
                    )),
                    _ => None,
                };
                points.push(Point {
                    conns,
                    buffer,
                    tls: Some(tls),
                    gbps: s.gbps,
                    ok: error.is_none(),
                    error,
                });
            }
        }
    }
    Ok(points)
}

/// The cheapest point within 5 % of the fastest.
pub fn recommend(points: &[Point]) -> Option<Point> {
    let fastest = points
        .iter()
        .filter(|p| p.ok)
        .map(|p| p.gbps)
        .fold(0.0f64, f64::max);
    if fastest <= 0.0 {
        return None;
    }
    points
        .iter()
        .filter(|p| p.ok && p.gbps >= 0.95 * fastest)
        .min_by_key(|p| (p.conns, p.buffer.unwrap_or(0)))
        .cloned()
}

impl SweepReport {
    /// The table: a row per TLS setting and connection count, a column per buffer.
    pub fn table(&self) -> String {
        let mut buffers: Vec<Option<u64>> = Vec::new();
        let mut rows: Vec<(Option<bool>, usize)> = Vec::new();
        for p in &self.points {
            if !buffers.contains(&p.buffer) {
                buffers.push(p.buffer);
            }
            if !rows.contains(&(p.tls, p.conns)) {
                rows.push((p.tls, p.conns));
            }
        }
        let mut s = format!("{:<16}", "Gbit/s");
        for b in &buffers {
            s.push_str(&format!("{:>14}", buffer_name(*b)));
        }
        s.push('\n');
        for (tls, conns) in rows {
            let name = match tls {
                Some(true) => format!("tls {conns} conn"),
                Some(false) => format!("plain {conns} conn"),
                None => format!("{conns} conn"),
            };
            s.push_str(&format!("{name:<16}"));
            for b in &buffers {
                let cell = self
                    .points
                    .iter()
                    .find(|p| p.tls == tls && p.conns == conns && p.buffer == *b)
                    .map(|p| {
                        if p.ok {
                            format!("{:.2}", p.gbps)
                        } else {
                            "error".into()
                        }
                    })
                    .unwrap_or_default();
                s.push_str(&format!("{cell:>14}"));
            }
            s.push('\n');
        }
        for p in self.points.iter().filter(|p| !p.ok) {
            s.push_str(&format!(
                "error at {}: {}\n",
                p.label(),
                p.error.as_deref().unwrap_or("?")
            ));
        }
        s
    }

    /// What to set, in words.
    pub fn recommendation(&self) -> String {
        let Some(b) = &self.best else {
            return "no point of the grid completed: nothing to recommend".into();
        };
        let buffers = match b.buffer {
            None => "leave socket buffers to kernel autotuning (no --sndbuf/--rcvbuf)".to_string(),
            Some(n) => format!("s2cs --sndbuf {n} --rcvbuf {n} ({})", format_size(n)),
        };
        format!(
            "recommended: s2uc ... --num_conn {} and {buffers} ({:.2} Gbit/s, within 5% of the fastest point{})",
            b.conns,
            b.gbps,
            match b.tls {
                Some(true) => ", TLS data channel",
                Some(false) => ", plaintext data channel",
                None => "",
            }
        )
    }

    /// Bars for the SVG chart.
    pub fn bars(&self) -> Vec<Bar> {
        self.points
            .iter()
            .map(|p| Bar {
                label: p.label(),
                median: p.gbps,
                min: p.gbps,
                max: p.gbps,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(conns: usize, buffer: Option<u64>, gbps: f64, ok: bool) -> Point {
        Point {
            conns,
            buffer,
            tls: None,
            gbps,
            ok,
            error: None,
        }
    }

    #[test]
    fn the_cheapest_point_near_the_fastest_wins() {
        let points = vec![
            p(1, None, 5.0, true),
            p(4, None, 9.8, true),
            p(8, None, 10.0, true),
            p(4, Some(64 << 20), 9.9, true),
            p(2, None, 50.0, false),
        ];
        let best = recommend(&points).unwrap();
        assert_eq!(
            (best.conns, best.buffer),
            (4, None),
            "4 connections are within 5% of 8"
        );
        assert!(recommend(&[p(1, None, 1.0, false)]).is_none());
    }
}
