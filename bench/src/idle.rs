//! `s2bench idle`: what idle connections cost the data plane. Sets up a
//! SciStream tunnel on loopback, opens connections through it that carry
//! nothing, and reads the resident memory and descriptor count of both
//! gateways' `s2ds` from /proc at each step.

use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::compare::machine::{Machine, process_tree, rss_bytes};
use crate::compare::topology::{Env, scistream};

/// Connections opened before waiting for the service to catch up (below
/// the service's listen backlog of 128).
const PACE: usize = 100;

/// One step.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Idle connections open through the tunnel.
    pub conns: usize,
    /// Resident memory of both gateways' s2ds, bytes.
    pub s2ds_rss: u64,
    /// Growth over the tunnel with no connection, per connection, bytes.
    pub rss_per_conn: f64,
    /// Descriptors held by both s2ds.
    pub s2ds_fds: usize,
}

/// The whole measurement.
#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    /// Where.
    pub machine: Machine,
    /// The data channel was TLS.
    pub data_tls: bool,
    /// s2ds resident memory with the tunnel set up and no connection.
    pub baseline_rss: u64,
    /// Each step.
    pub steps: Vec<Step>,
}

fn s2ds_pids(roots: &[u32]) -> Vec<u32> {
    roots
        .iter()
        .flat_map(|&r| process_tree(r).into_iter().filter(move |&p| p != r))
        .collect()
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Opens idle connections in steps (`counts`, cumulative) and measures.
pub fn run(
    counts: &[usize],
    s2cs: Option<std::path::PathBuf>,
    data_tls: bool,
) -> Result<IdleReport, String> {
    let dir = tempfile::Builder::new()
        .prefix("s2bench-idle-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let env = Env::create(dir.path(), s2cs)?;
    // A service that accepts connections and keeps them, reading nothing.
    let holder = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let port = holder.local_addr().map_err(|e| e.to_string())?.port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let held = accepted.clone();
    std::thread::spawn(move || {
        let mut keep = Vec::new();
        for s in holder.incoming().flatten() {
            keep.push(s);
            held.fetch_add(1, Ordering::Relaxed);
        }
    });
    // Idle connections by the thousand through one session: past the
    // default --max-open-conns.
    let args: &[&str] = if data_tls {
        &["--max-open-conns=65536"]
    } else {
        &["--data-tls=off", "--max-open-conns=65536"]
    };
    let tunnel = scistream(&env, port, 4, args)?;
    let pids = s2ds_pids(&tunnel.pids);
    if pids.len() != 2 {
        return Err(format!("expected two s2ds processes, found {pids:?}"));
    }
    let rss = || pids.iter().map(|&p| rss_bytes(p)).sum::<u64>();
    std::thread::sleep(Duration::from_millis(300));
    let baseline_rss = rss();
    let mut clients = Vec::new();
    let mut steps = Vec::new();
    for &n in counts {
        while clients.len() < n {
            let entry = &tunnel.entries[clients.len() % tunnel.entries.len()];
            clients.push(
                TcpStream::connect(entry)
                    .map_err(|e| format!("connection {}: {e}", clients.len()))?,
            );
            // In steps, so that no listen queue on the way overflows (an
            // overflowed handshake waits for SYN-ACK retransmits, seconds).
            if clients.len() % PACE == 0 {
                let deadline = Instant::now() + Duration::from_secs(30);
                while accepted.load(Ordering::Relaxed) + PACE < clients.len()
                    && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        // Wait until every connection went through both gateways.
        let deadline = Instant::now() + Duration::from_secs(120);
        while accepted.load(Ordering::Relaxed) < n {
            if Instant::now() > deadline {
                return Err(format!(
                    "only {} of {n} connections reached the service",
                    accepted.load(Ordering::Relaxed)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(500));
        let now = rss();
        steps.push(Step {
            conns: n,
            s2ds_rss: now,
            rss_per_conn: now.saturating_sub(baseline_rss) as f64 / n as f64,
            s2ds_fds: pids.iter().map(|&p| fds(p)).sum(),
        });
    }
    drop(clients);
    drop(tunnel);
    Ok(IdleReport {
        machine: Machine::read(),
        data_tls,
        baseline_rss,
        steps,
    })
}

impl IdleReport {
    /// The table for people.
    pub fn table(&self) -> String {
        let mut s = format!(
            "s2ds resident memory, both gateways together, {} data channel (baseline with the tunnel set up: {})\n{:>8} {:>12} {:>16} {:>10}\n",
            if self.data_tls { "TLS" } else { "plaintext" },
            scistream_protocol::units::format_size(self.baseline_rss),
            "conns",
            "s2ds RSS",
            "RSS per conn",
            "s2ds fds"
        );
        for st in &self.steps {
            s += &format!(
                "{:>8} {:>12} {:>14.0} B {:>10}\n",
                st.conns,
                scistream_protocol::units::format_size(st.s2ds_rss),
                st.rss_per_conn,
                st.s2ds_fds
            );
        }
        s
    }
}
