//! `s2bench compare --udp-rates …`: UDP through a SciStream tunnel (TLS
//! between the gateways) and through socat's UDP forwarding chain (two
//! hops, plaintext), at rising offered rates, alternating, in one run:
//! what arrives (Mbit/s), what is lost, what comes out of order.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use serde::Serialize;

use super::peers;
use super::topology::{self, Env, Running};
use crate::udp;

/// What to measure.
#[derive(Debug, Clone)]
pub struct UdpCompareConfig {
    /// Offered rates, bits per second.
    pub rates: Vec<u64>,
    /// Datagram size.
    pub size: usize,
    /// Length of each measurement.
    pub duration: Duration,
    /// Rounds (each runs every rate through every topology).
    pub rounds: usize,
    /// The `s2cs` binary.
    pub s2cs: Option<std::path::PathBuf>,
}

/// One measurement.
#[derive(Debug, Clone, Serialize)]
pub struct UdpRound {
    /// `scistream-udp` or `socat-udp`.
    pub topology: String,
    /// Round number.
    pub round: usize,
    /// Offered rate, bit/s.
    pub offered_bps: u64,
    /// Datagrams sent.
    pub sent: u64,
    /// Rate the source reached, bit/s (below the offered one when this
    /// host cannot send faster).
    pub sent_bps: f64,
    /// Distinct intact datagrams received.
    pub received: u64,
    /// Received payload rate, bit/s (over the sending time).
    pub delivered_bps: f64,
    /// The sending time, seconds.
    pub seconds: f64,
    /// Lost, percent of sent.
    pub loss_pct: f64,
    /// Arrived after a later one.
    pub reordered: u64,
    /// Arrived damaged (never expected; counted to be sure).
    pub corrupt: u64,
    /// CPU time the forwarding processes (both gateways, or both socat
    /// hops with their children) used during the measurement, seconds.
    pub forwarder_cpu_s: f64,
}

/// The comparison's results.
#[derive(Debug, Clone, Serialize)]
pub struct UdpReport {
    /// Datagram size.
    pub size: usize,
    /// Every measurement.
    pub rounds: Vec<UdpRound>,
    /// Topologies that could not run, and why.
    pub skipped: Vec<(String, String)>,
}

struct Topology {
    name: &'static str,
    running: Running,
    sink: UdpSocket,
}

fn sink() -> Result<UdpSocket, String> {
    UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("cannot bind a UDP sink: {e}"))
}

fn port(s: &UdpSocket) -> Result<u16, String> {
    s.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// Runs the comparison.
pub fn run(cfg: &UdpCompareConfig) -> Result<UdpReport, String> {
    let size = udp::check_size(cfg.size)?;
    let dir = tempfile::Builder::new()
        .prefix("s2bench-udp-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let env = Env::create(dir.path(), cfg.s2cs.clone())?;
    let mut topologies = Vec::new();
    let mut skipped = Vec::new();
    let tunnel_sink = sink()?;
    match topology::scistream_udp(&env, port(&tunnel_sink)?, &[]) {
        Ok(running) => topologies.push(Topology {
            name: "scistream-udp",
            running,
            sink: tunnel_sink,
        }),
        Err(e) => skipped.push(("scistream-udp".to_owned(), e)),
    }
    let socat_sink = sink()?;
    match peers::socat_udp(dir.path(), port(&socat_sink)?) {
        Ok(chain) => {
            let running = Running::chain(chain);
            topologies.push(Topology {
                name: "socat-udp",
                running,
                sink: socat_sink,
            });
        }
        Err(e) => skipped.push(("socat-udp".to_owned(), e)),
    }
    for (name, why) in &skipped {
        eprintln!("skipped {name}: {why}");
    }
    let mut rounds = Vec::new();
    for round in 0..cfg.rounds {
        for &rate in &cfg.rates {
            // Alternate which topology goes first.
            let n = topologies.len();
            for k in 0..n {
                let t = &topologies[(k + round) % n];
                let r = measure(t, round, rate, size, cfg.duration)?;
                eprintln!(
                    "round {} {:>14} offered {:>8.1} Mbit/s, sent {:>8.1}: {:>8.1} Mbit/s arrived, {:.2}% lost, {} reordered",
                    round + 1,
                    r.topology,
                    rate as f64 / 1e6,
                    r.sent_bps / 1e6,
                    r.delivered_bps / 1e6,
                    r.loss_pct,
                    r.reordered
                );
                rounds.push(r);
            }
        }
    }
    Ok(UdpReport {
        size,
        rounds,
        skipped,
    })
}

fn measure(
    t: &Topology,
    round: usize,
    rate: u64,
    size: usize,
    duration: Duration,
) -> Result<UdpRound, String> {
    let entry: SocketAddr = t
        .running
        .entries
        .first()
        .ok_or("no entry")?
        .parse()
        .map_err(|e| format!("entry: {e}"))?;
    let sink = t.sink.try_clone().map_err(|e| e.to_string())?;
    let limit = duration + Duration::from_secs(10);
    let cpu_before = super::machine::tree_cpu_seconds(&t.running.pids);
    let receiver =
        std::thread::spawn(move || udp::receive(&sink, Duration::from_millis(700), limit));
    let sent =
        udp::send(entry, size, rate as f64, duration).map_err(|e| format!("UDP source: {e}"))?;
    let got = receiver
        .join()
        .map_err(|_| "the UDP sink panicked".to_owned())?
        .map_err(|e| format!("UDP sink: {e}"))?;
    let forwarder_cpu_s = super::machine::tree_cpu_seconds(&t.running.pids) - cpu_before;
    let secs = sent.elapsed.as_secs_f64().max(1e-9);
    Ok(UdpRound {
        topology: t.name.to_owned(),
        round,
        offered_bps: rate,
        sent: sent.datagrams,
        sent_bps: sent.bytes as f64 * 8.0 / secs,
        received: got.datagrams,
        delivered_bps: got.bytes as f64 * 8.0 / secs,
        seconds: secs,
        loss_pct: 100.0 * got.lost(Some(sent.datagrams)) as f64 / sent.datagrams.max(1) as f64,
        reordered: got.reordered,
        corrupt: got.corrupt,
        forwarder_cpu_s,
    })
}

/// Forwarder CPU seconds per gigabit that arrived.
fn cpu_per_gbit(r: &UdpRound) -> f64 {
    let gbit = r.delivered_bps * r.seconds / 1e9;
    if gbit > 0.0 {
        r.forwarder_cpu_s / gbit
    } else {
        f64::NAN
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

impl UdpReport {
    /// Medians per offered rate, the tunnel's delivered rate as a ratio of socat's.
    pub fn table(&self) -> String {
        let mut rates: Vec<u64> = self.rounds.iter().map(|r| r.offered_bps).collect();
        rates.sort_unstable();
        rates.dedup();
        let pick = |topology: &str, rate: u64, f: fn(&UdpRound) -> f64| {
            median(
                self.rounds
                    .iter()
                    .filter(|r| r.topology == topology && r.offered_bps == rate)
                    .map(f)
                    .collect(),
            )
        };
        let mut out = format!(
            "UDP, {}-byte datagrams, Mbit/s, medians over rounds (sent: what the source reached)\n",
            self.size
        );
        out.push_str(&format!(
            "{:>8} | {:>35} | {:>35} | {:>8}\n",
            "offered", "scistream-udp (TLS)", "socat-udp (plaintext)", "arrived"
        ));
        out.push_str(&format!(
            "{:>8} | {:>8} {:>8} {:>7} {:>9} | {:>8} {:>8} {:>7} {:>9} | {:>8}\n",
            "",
            "sent",
            "arrived",
            "lost %",
            "CPU s/Gb",
            "sent",
            "arrived",
            "lost %",
            "CPU s/Gb",
            "ratio"
        ));
        for rate in rates {
            let row = |t: &str| {
                (
                    pick(t, rate, |r| r.sent_bps) / 1e6,
                    pick(t, rate, |r| r.delivered_bps) / 1e6,
                    pick(t, rate, |r| r.loss_pct),
                    pick(t, rate, cpu_per_gbit),
                )
            };
            let ((ss, s, sl, su), (cs, c, cl, cu)) = (row("scistream-udp"), row("socat-udp"));
            out.push_str(&format!(
                "{:>8.0} | {ss:>8.1} {s:>8.1} {sl:>7.2} {su:>9.2} | {cs:>8.1} {c:>8.1} {cl:>7.2} {cu:>9.2} | {:>7.2}x\n",
                rate as f64 / 1e6,
                s / c
            ));
        }
        let reordered: u64 = self.rounds.iter().map(|r| r.reordered).sum();
        let corrupt: u64 = self.rounds.iter().map(|r| r.corrupt).sum();
        out.push_str(&format!(
            "reordered in all rounds: {reordered}; corrupt: {corrupt}\n"
        ));
        out
    }
}
