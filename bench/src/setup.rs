//! `s2bench setup`: how long tunnel setup takes when many are set up at
//! once. Two gateways on loopback (TLS control and data channel, durable
//! session store), then PAIRS inbound+outbound request pairs with at most
//! CONCURRENCY in flight, each timed from the first call to the outbound
//! listeners being known; every session is released afterwards.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use scistream_client::{Auth, RequestOptions, Trust};
use scistream_local::gateway::{GatewayOptions, LocalGateway};
use serde::Serialize;

use crate::compare::topology::Env;

/// The measurement.
#[derive(Debug, Clone, Serialize)]
pub struct SetupReport {
    /// Pairs set up.
    pub pairs: usize,
    /// Most in flight at once.
    pub concurrency: usize,
    /// Latency percentiles of one pair, milliseconds.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
    /// Pairs per second over the whole run.
    pub pairs_per_s: f64,
    /// Connections (listeners) per session.
    pub conns: usize,
    /// Cluster mode: etcd's KV calls (range, put, txn, delete) per pair
    /// set up, from etcd's own counters (its `/metrics`) before and after
    /// the setups; the nodes' load keys (at most one put a second per
    /// node) are counted in.
    pub etcd_calls_per_setup: Option<f64>,
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct SetupPlan {
    /// Tunnel pairs to set up.
    pub pairs: usize,
    /// Most in flight at once.
    pub concurrency: usize,
    /// Connections per session.
    pub conns: usize,
    /// First port of the gateways' ranges.
    pub first_port: u16,
    /// The `s2cs` binary.
    pub s2cs: Option<PathBuf>,
    /// Cluster mode for the inbound side: nodes and etcd's client URL.
    pub cluster: Option<(usize, String)>,
}

impl SetupReport {
    /// One paragraph for people.
    pub fn table(&self) -> String {
        let etcd = self
            .etcd_calls_per_setup
            .map(|n| format!("   {n:.1} etcd calls/setup"))
            .unwrap_or_default();
        format!(
            "{} tunnel setups (inbound + outbound request, {} connections each), {} at once, TLS, loopback\n  p50 {:.1} ms   p95 {:.1} ms   p99 {:.1} ms   max {:.1} ms   {:.1} setups/s{etcd}\n",
            self.pairs,
            self.conns,
            self.concurrency,
            self.p50_ms,
            self.p95_ms,
            self.p99_ms,
            self.max_ms,
            self.pairs_per_s
        )
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len().saturating_sub(1)) as f64 * p).round() as usize;
    sorted.get(i).map(|d| d.as_secs_f64() * 1e3).unwrap_or(0.0)
}

/// etcd's KV calls so far, from its Prometheus counters at `URL/metrics`.
fn etcd_kv_calls(url: &str) -> Result<u64, String> {
    use std::io::{Read, Write};
    let first = url.split(',').next().unwrap_or(url);
    let host = first
        .strip_prefix("http://")
        .ok_or_else(|| format!("{first}: counting etcd calls needs an http:// URL"))?
        .trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(host).map_err(|e| format!("etcd {host}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {host}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("grpc_server_handled_total{"))
        .filter(|l| l.contains("etcdserverpb.KV"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

/// Runs the measurement.
pub fn run(plan: &SetupPlan) -> Result<SetupReport, String> {
    let SetupPlan {
        pairs,
        concurrency,
        conns,
        first_port,
        ..
    } = *plan;
    let (s2cs, cluster) = (plan.s2cs.clone(), plan.cluster.clone());
    let dir = tempfile::Builder::new()
        .prefix("s2bench-setup-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let env = Env::create(dir.path(), s2cs)?;
    let s2cs = env
        .s2cs
        .clone()
        .or_else(|| scistream_local::gateway::sibling_binary("s2cs"))
        .ok_or("s2cs not found next to s2bench; build the workspace or pass --s2cs-bin")?;
    let span = u16::try_from(pairs * conns + 10).map_err(|_| "too many pairs x conns")?;
    let gateway = |name: &str, first: u16, more: &[String]| GatewayOptions {
        s2cs_bin: s2cs.clone(),
        listener_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        port_range: (first, first + span),
        tls: Some((env.cert.clone(), env.key.clone())),
        state_dir: dir.path().join(name),
        log: Some(dir.path().join(format!("{name}.log"))),
        extra_args: vec![
            format!("--peer-ca={}", env.ca.display()),
            format!("--max-pending-per-identity={}", concurrency + 1),
            // One caller sets up every pair: lift the per-caller quotas.
            format!("--max-ports-per-identity={}", usize::from(span) + 1),
            format!("--max-sessions-per-identity={}", usize::from(span) + 1),
            "--drain-timeout=1s".into(),
        ]
        .into_iter()
        .chain(more.iter().cloned())
        .collect(),
    };
    let nodes = cluster.as_ref().map_or(1, |(n, _)| *n);
    let ranges = u32::try_from(nodes + 1).map_err(|_| "too many nodes")?;
    if u32::from(first_port) + (u32::from(span) + 1) * ranges > 65535 {
        return Err("the port ranges would pass 65535: lower --first-port or --pairs".into());
    }
    let mut hpc = Vec::new();
    for k in 0..nodes {
        let more: Vec<String> = match &cluster {
            Some((_, etcd)) => vec![
                "--cluster=s2bench".into(),
                format!("--etcd={etcd}"),
                format!("--node=hpc{k}"),
            ],
            None => Vec::new(),
        };
        let first = first_port + (span + 1) * k as u16;
        hpc.push(LocalGateway::start(&gateway(
            &format!("hpc{k}"),
            first,
            &more,
        ))?);
    }
    let inst_first = first_port + (span + 1) * nodes as u16;
    let inst = LocalGateway::start(&gateway("inst", inst_first, &[]))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let trust = Trust::Root(env.ca.clone());
    runtime.block_on(async {
        let err = |e: scistream_client::ClientError| e.to_string();
        let mut hs = Vec::new();
        for node in &hpc {
            let control = node.control();
            let c = scistream_client::connect(&control, &trust, Auth::none());
            hs.push(c.await.map_err(err)?);
        }
        let i = scistream_client::connect(&inst.control(), &trust, Auth::none())
            .await
            .map_err(err)?;
        let gate = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
        let options = RequestOptions {
            num_conn: u32::try_from(conns).map_err(|_| "too many conns")?,
            rate_kbps: 0,
            ..Default::default()
        };
        let etcd_url = cluster.as_ref().map(|(_, url)| url.clone());
        let etcd_before = etcd_url.as_deref().map(etcd_kv_calls).transpose()?;
        let started = Instant::now();
        let tasks: Vec<_> = (0..pairs)
            .map(|k| {
                let h = hs[k % hs.len()].clone();
                let (i, o, gate) = (i.clone(), options.clone(), gate.clone());
                tokio::spawn(async move {
                    let _permit = gate.acquire_owned().await.map_err(|e| e.to_string())?;
                    let t = Instant::now();
                    let inbound = scistream_client::inbound_request(&h, "127.0.0.1", &[9], &o)
                        .await
                        .map_err(|e| e.to_string())?;
                    scistream_client::outbound_request(
                        &i,
                        &inbound.uid,
                        inbound.listeners,
                        Vec::new(),
                        &o,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                    Ok::<_, String>((inbound.uid, t.elapsed()))
                })
            })
            .collect();
        let mut times = Vec::with_capacity(pairs);
        let mut uids = Vec::with_capacity(pairs);
        for t in tasks {
            let (uid, took) = t.await.map_err(|e| e.to_string())??;
            uids.push(uid);
            times.push(took);
        }
        let total = started.elapsed();
        let etcd_calls_per_setup = match (etcd_url.as_deref(), etcd_before) {
            (Some(url), Some(before)) => {
                let after = etcd_kv_calls(url)?;
                Some(after.saturating_sub(before) as f64 / pairs as f64)
            }
            _ => None,
        };
        for (k, uid) in uids.iter().enumerate() {
            scistream_client::release(&i, uid).await.map_err(err)?;
            scistream_client::release(&hs[k % hs.len()], uid)
                .await
                .map_err(err)?;
        }
        times.sort();
        Ok(SetupReport {
            pairs,
            concurrency,
            p50_ms: percentile(&times, 0.5),
            p95_ms: percentile(&times, 0.95),
            p99_ms: percentile(&times, 0.99),
            max_ms: percentile(&times, 1.0),
            pairs_per_s: pairs as f64 / total.as_secs_f64(),
            conns,
            etcd_calls_per_setup,
        })
    })
}
