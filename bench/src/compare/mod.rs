//! `s2bench compare`: the same workload through every topology, in
//! alternating rounds (A B C … A B C …) so that drift on a shared machine
//! hits all of them alike; medians, CPU cost of the forwarders, ratios.

pub mod chart;
pub mod iperf;
pub mod machine;
pub mod peers;
pub mod topology;
pub mod udp;

use std::path::PathBuf;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::report::summarize;
use crate::send::Stop;
use crate::sink::Sink;
use crate::source::{self, SourceConfig};
use machine::{Machine, tree_cpu_seconds};
use topology::{Env, Kind, Running};

/// What to compare.
#[derive(Debug, Clone)]
pub struct CompareConfig {
    /// iperf3 load: offered rate of all streams together (`None`: unlimited).
    pub rate_bps: Option<u64>,
    /// Topologies to run (default: all).
    pub only: Vec<Kind>,
    /// Parallel connections; each value is measured separately.
    pub conns: Vec<usize>,
    /// Message size.
    pub msg_size: usize,
    /// Length of one measurement.
    pub duration: Duration,
    /// Rounds per (topology, connections).
    pub rounds: usize,
    /// `s2cs` to use (default: next to s2bench).
    pub s2cs: Option<PathBuf>,
    /// More arguments for every SciStream gateway.
    pub s2cs_args: Vec<String>,
    /// Another build's `s2cs`, measured as `scistream-baseline`.
    pub baseline_s2cs: Option<PathBuf>,
    /// etcd's client URL, for `scistream-cluster3`.
    pub etcd: Option<String>,
    /// Progress bar on stderr.
    pub progress: bool,
    /// What makes the traffic.
    pub load: Load,
}

/// The traffic `compare` pushes through each topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Load {
    /// s2bench's source and sink: every byte verified.
    S2bench,
    /// iperf3 client and server (not verified; the shape real applications have).
    Iperf3,
}

/// One measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    /// Round number.
    pub round: usize,
    /// Throughput at the sink.
    pub gbps: f64,
    /// Bytes the sink received.
    pub bytes: u64,
    /// Seconds from the sink's first byte to its last.
    pub seconds: f64,
    /// CPU seconds the forwarding processes used during the round.
    pub cpu_seconds: f64,
    /// Every byte verified, nothing lost.
    pub ok: bool,
    /// The error, when the round failed.
    pub error: Option<String>,
}

/// Results for one (topology, connections) pair.
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    /// Topology name.
    pub topology: &'static str,
    /// What it is.
    pub description: &'static str,
    /// Parallel connections.
    pub conns: usize,
    /// Every round.
    pub rounds: Vec<Round>,
    /// Median Gbit/s.
    pub median_gbps: f64,
    /// Lowest round.
    pub min_gbps: f64,
    /// Highest round.
    pub max_gbps: f64,
    /// CPU seconds of the forwarding processes per GiB moved (median).
    pub cpu_s_per_gib: Option<f64>,
}

/// The whole comparison, as written to `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// When it ran (RFC 3339, UTC).
    pub date: String,
    /// Where it ran.
    pub machine: Machine,
    /// The workload.
    pub workload: serde_json::Value,
    /// Measured series.
    pub series: Vec<Series>,
    /// Topologies not run, with the reason.
    pub skipped: Vec<(String, String)>,
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    scistream_protocol::units::format_utc(secs)
}

/// Runs the comparison. Lines about skipped topologies go to stderr.
pub fn run(cfg: &CompareConfig) -> Result<Report, String> {
    let dir = tempfile::Builder::new()
        .prefix("s2bench-compare-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let mut env = Env::create(dir.path(), cfg.s2cs.clone())?;
    env.s2cs_args = cfg.s2cs_args.clone();
    env.baseline_s2cs = cfg.baseline_s2cs.clone();
    env.etcd = cfg.etcd.clone();
    let sink = Sink::start("127.0.0.1:0".parse().map_err(|e| format!("{e}"))?)
        .map_err(|e| format!("cannot start the sink: {e}"))?;
    let iperf = match cfg.load {
        Load::Iperf3 => Some(iperf::Server::start()?),
        Load::S2bench => None,
    };
    let target_port = iperf.as_ref().map(|s| s.port).unwrap_or(sink.addr.port());
    let max_conns = cfg.conns.iter().copied().max().unwrap_or(1);

    let mut running: Vec<(Kind, Running)> = Vec::new();
    let mut skipped = Vec::new();
    for &kind in &cfg.only {
        match topology::setup(kind, &env, target_port, max_conns) {
            Ok(r) => running.push((kind, r)),
            Err(reason) => {
                eprintln!("skipped {}: {reason}", kind.name());
                skipped.push((kind.name().to_owned(), reason));
            }
        }
    }

    let pairs: Vec<(usize, usize)> = cfg
        .conns
        .iter()
        .flat_map(|&c| (0..running.len()).map(move |t| (t, c)))
        .collect();
    let total = (pairs.len() * cfg.rounds) as u64;
    let bar = if cfg.progress {
        ProgressBar::new(total)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} rounds  {msg}  (~{eta} left)")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut results: Vec<Vec<Round>> = vec![Vec::new(); pairs.len()];
    for round in 0..cfg.rounds {
        for (i, &(t, conns)) in pairs.iter().enumerate() {
            let (kind, r) = &running[t];
            bar.set_message(format!("round {} {} x{conns}", round + 1, kind.name()));
            results[i].push(match &iperf {
                Some(server) => measure_iperf(round, r, server, conns, cfg),
                None => measure(round, r, &sink, conns, cfg),
            });
            bar.inc(1);
        }
    }
    bar.finish_and_clear();

    let series = pairs
        .iter()
        .zip(results)
        .map(|(&(t, conns), rounds)| {
            let kind = running[t].0;
            let mut g: Vec<f64> = rounds.iter().map(|r| r.gbps).collect();
            let mut cpu: Vec<f64> = rounds
                .iter()
                .filter(|r| r.bytes > 0)
                .map(|r| r.cpu_seconds / (r.bytes as f64 / (1u64 << 30) as f64))
                .collect();
            Series {
                topology: kind.name(),
                description: kind.description(),
                conns,
                median_gbps: median(&mut g),
                min_gbps: g.first().copied().unwrap_or(0.0),
                max_gbps: g.last().copied().unwrap_or(0.0),
                cpu_s_per_gib: (kind != Kind::Direct && !cpu.is_empty()).then(|| median(&mut cpu)),
                rounds,
            }
        })
        .collect();
    drop(running);
    Ok(Report {
        date: utc_now(),
        machine: Machine::read(),
        workload: serde_json::json!({
            "load": cfg.load, "conns": cfg.conns, "msg_size": cfg.msg_size, "duration_s": cfg.duration.as_secs_f64(), "rounds": cfg.rounds,
            "offered_rate_bps": cfg.rate_bps,
            "peer_settings": peers::settings(),
        }),
        series,
        skipped,
    })
}

fn measure_iperf(
    round: usize,
    r: &Running,
    server: &iperf::Server,
    conns: usize,
    cfg: &CompareConfig,
) -> Round {
    let cpu_before = tree_cpu_seconds(&r.pids);
    let entry = r.entries.first().cloned().unwrap_or_default();
    let result = server.run(&entry, conns, cfg.duration, cfg.rate_bps);
    let cpu_seconds = tree_cpu_seconds(&r.pids) - cpu_before;
    match result {
        Ok(m) => Round {
            round,
            gbps: m.bits_per_second / 1e9,
            bytes: m.bytes,
            seconds: m.seconds,
            cpu_seconds,
            ok: true,
            error: None,
        },
        Err(e) => Round {
            round,
            gbps: 0.0,
            bytes: 0,
            seconds: 0.0,
            cpu_seconds,
            ok: false,
            error: Some(e),
        },
    }
}

fn measure(round: usize, r: &Running, sink: &Sink, conns: usize, cfg: &CompareConfig) -> Round {
    sink.drain();
    let cpu_before = tree_cpu_seconds(&r.pids);
    let source = SourceConfig {
        targets: r.entries.clone(),
        conns,
        msg_size: cfg.msg_size,
        stop: Stop::After(cfg.duration),
        rate_bps: None,
        bidir: false,
        detector: None,
        progress: false,
        sndbuf: None,
    };
    let sent = source::run(&source);
    let outcomes = sink.collect(
        if sent.is_ok() { conns } else { 0 },
        cfg.duration + Duration::from_secs(60),
    );
    let cpu_seconds = tree_cpu_seconds(&r.pids) - cpu_before;
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
    Round {
        round,
        gbps: s.gbps,
        bytes: s.bytes,
        seconds: s.seconds,
        cpu_seconds,
        ok: error.is_none(),
        error,
    }
}

impl Report {
    /// The table for people.
    pub fn table(&self) -> String {
        let load = match self.workload["load"].as_str() {
            Some("iperf3") => "iperf3 client and server".to_owned(),
            _ => format!(
                "s2bench source and sink, {} messages",
                scistream_protocol::units::format_size(
                    self.workload["msg_size"].as_u64().unwrap_or(0)
                )
            ),
        };
        let mut out = format!(
            "{} on {} ({} cores, Linux {}), {} rounds of {} s, {load}\n",
            self.date,
            self.machine.cpu_model,
            self.machine.cores,
            self.machine.kernel,
            self.workload["rounds"],
            self.workload["duration_s"],
        );
        if let Some(rate) = self.workload["offered_rate_bps"].as_u64() {
            out += &format!(
                "offered rate: {} (all streams together), the same for every topology\n",
                scistream_protocol::units::format_rate(rate as f64)
            );
        }
        if let Some(peers) = self.workload["peer_settings"].as_object() {
            let list: Vec<String> = peers
                .iter()
                .map(|(k, v)| format!("{k}: {}", v.as_str().unwrap_or("")))
                .collect();
            out += &format!("peers as tuned: {}\n", list.join("; "));
        }
        out += &format!(
            "{:<18} {:>5} {:>10} {:>10} {:>10} {:>12} {:>9} {:>13}\n",
            "topology",
            "conns",
            "Gbit/s med",
            "Gbit/s min",
            "Gbit/s max",
            "CPU s/GiB",
            "vs direct",
            "tunnel vs it"
        );
        for s in &self.series {
            let find = |name: &str| {
                self.series
                    .iter()
                    .find(|x| x.topology == name && x.conns == s.conns)
                    .map(|x| x.median_gbps)
            };
            let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                _ => "-".into(),
            };
            out += &format!(
                "{:<18} {:>5} {:>10.2} {:>10.2} {:>10.2} {:>12} {:>9} {:>13}{}\n",
                s.topology,
                s.conns,
                s.median_gbps,
                s.min_gbps,
                s.max_gbps,
                s.cpu_s_per_gib
                    .map(|c| format!("{c:.3}"))
                    .unwrap_or_else(|| "-".into()),
                ratio(Some(s.median_gbps), find("direct")),
                ratio(find("scistream"), Some(s.median_gbps)),
                if s.rounds.iter().all(|r| r.ok) {
                    ""
                } else {
                    "  FAILED ROUNDS"
                }
            );
        }
        for (name, why) in &self.skipped {
            out += &format!("skipped {name}: {why}\n");
        }
        out += "Gbit/s: received at the sink, per round; CPU s/GiB: CPU seconds of the \
            topology's processes per GiB carried; vs direct: its median over direct TCP's; \
            tunnel vs it: the SciStream tunnel's median over its (above 1: the tunnel is faster)\n";
        out
    }

    /// The chart bars.
    pub fn bars(&self) -> Vec<chart::Bar> {
        let multi = self.series.iter().any(|s| s.conns != self.series[0].conns);
        self.series
            .iter()
            .map(|s| chart::Bar {
                label: if multi {
                    format!("{} x{}", s.topology, s.conns)
                } else {
                    s.topology.to_owned()
                },
                median: s.median_gbps,
                min: s.min_gbps,
                max: s.max_gbps,
            })
            .collect()
    }

    /// Every round of every series verified.
    pub fn all_ok(&self) -> bool {
        self.series.iter().all(|s| s.rounds.iter().all(|r| r.ok))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&mut []), 0.0);
    }

    #[test]
    fn dates_look_right() {
        let d = utc_now();
        assert_eq!(d.len(), 20);
        assert!(d.starts_with("20") && d.ends_with('Z'), "{d}");
    }
}
