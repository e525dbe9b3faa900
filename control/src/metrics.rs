//! Prometheus metrics of `s2cs`, served at `--metrics-addr` (`/metrics`).
//!
//! Two kinds of series:
//! - kept here as calls happen: calls per rpc and outcome, call latency
//!   per rpc, control failures by kind;
//! - read at each scrape: sessions by phase, each live session's bytes and
//!   connections (from `s2ds`'s counters), data-plane restarts. A released
//!   session is simply absent from the next scrape, so label cardinality is
//!   bounded by the sessions alive, never by history.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry as MetricRegistry;
use scistream_protocol::handoff::{SessionKey, SessionStats, UdpStats};
use tracing::{info, warn};

use crate::sessions::Registry;

/// The phases a session goes through, each reported even when empty.
const PHASES: [&str; 3] = ["awaiting_hello", "ready", "forwarding"];

type Labels = Vec<(&'static str, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn rpc_histogram() -> Histogram {
    // 1 ms .. ~33 s: a `req` may wait for its hello for a long time.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The metrics of one `s2cs`.
#[derive(Debug)]
pub struct Metrics {
    registry: MetricRegistry,
    calls: Family<Labels, Counter>,
    call_seconds: HistogramFamily,
    failures: Family<Labels, Counter>,
    snapshot: Arc<Snapshot>,
    scrape_lock: tokio::sync::Mutex<()>,
    /// Cluster mode: where the node and cluster series come from.
    cluster: std::sync::OnceLock<Arc<crate::cluster::relay::Relay>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Empty metrics, every family registered.
    pub fn new() -> Self {
        let mut registry = MetricRegistry::with_prefix("scistream");
        let calls = Family::<Labels, Counter>::default();
        registry.register(
            "control_calls",
            "Control calls answered, by rpc and outcome (ok or the gRPC code)",
            calls.clone(),
        );
        let call_seconds = HistogramFamily::new_with_constructor(rpc_histogram);
        registry.register(
            "control_call_duration_seconds",
            "Time to answer a control call, by rpc",
            call_seconds.clone(),
        );
        let failures = Family::<Labels, Counter>::default();
        registry.register(
            "control_failures",
            "Control calls refused or failed, by kind (unauthenticated, permission_denied, invalid_argument, resource_exhausted, ...)",
            failures.clone(),
        );
        let snapshot = Arc::new(Snapshot::default());
        registry.register_collector(Box::new(snapshot.clone()));
        Metrics {
            registry,
            calls,
            call_seconds,
            failures,
            snapshot,
            scrape_lock: tokio::sync::Mutex::new(()),
            cluster: std::sync::OnceLock::new(),
        }
    }

    /// Records one answered call: `Err(kind)` for a failure.
    pub fn observe_call(
        &self,
        rpc: &'static str,
        outcome: Result<(), &'static str>,
        took: Duration,
    ) {
        let outcome_label = match outcome {
            Ok(()) => "ok",
            Err(kind) => {
                self.failures
                    .get_or_create(&vec![("kind", kind.to_owned())])
                    .inc();
                kind
            }
        };
        self.calls
            .get_or_create(&vec![
                ("rpc", rpc.to_owned()),
                ("outcome", outcome_label.to_owned()),
            ])
            .inc();
        self.call_seconds
            .get_or_create(&vec![("rpc", rpc.to_owned())])
            .observe(took.as_secs_f64());
    }

    /// Reads the live state from `sessions` and renders the OpenMetrics text.
    /// Cluster mode: adds this node's and the cluster's series.
    pub(crate) fn set_cluster(&self, relay: Arc<crate::cluster::relay::Relay>) {
        let _ = self.cluster.set(relay);
    }

    pub async fn scrape(&self, sessions: &Registry) -> String {
        // One scrape at a time, so each encodes the state it read.
        let _one = self.scrape_lock.lock().await;
        let views = sessions.all_views();
        let stats = sessions.dataplane().stats().await;
        let mut live = Live {
            restarts: sessions.dataplane().restarts(),
            dataplane_up: stats.is_ok(),
            ports: sessions.data_ports(),
            cluster: self.cluster.get().map(|r| {
                let (cluster, node, live, registered) = r.view();
                (cluster.to_owned(), node.to_owned(), live, registered)
            }),
            ..Live::default()
        };
        let stats: HashMap<SessionKey, SessionStats> = stats
            .unwrap_or_default()
            .into_iter()
            .map(|s| (s.key.clone(), s))
            .collect();
        for v in views {
            *live.phases.entry(v.phase).or_default() += 1;
            let st = stats.get(&v.key).cloned().unwrap_or_default();
            live.sessions.push((v.key, st));
        }
        let mut out = String::new();
        *self.snapshot.live.lock().unwrap_or_else(|p| p.into_inner()) = live;
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            warn!(error = %e, "encoding the metrics failed");
        }
        out
    }
}

/// What a scrape reads from the sessions and the data plane.
#[derive(Debug, Default)]
struct Live {
    phases: HashMap<&'static str, u64>,
    sessions: Vec<(SessionKey, SessionStats)>,
    restarts: u64,
    dataplane_up: bool,
    /// Data ports handed out, and the range's size.
    ports: (usize, usize),
    /// Cluster mode: (cluster, this node, live nodes, registered in etcd now).
    cluster: Option<(String, String, usize, bool)>,
}

/// The collector of the per-scrape series.
#[derive(Debug, Default)]
struct Snapshot {
    live: Mutex<Live>,
}

fn session_labels(key: &SessionKey) -> Labels {
    vec![("session", key.tag()), ("role", key.role.to_string())]
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        encode_gateway(&mut encoder, &live)?;
        if let Some(cluster) = &live.cluster {
            encode_cluster(&mut encoder, cluster)?;
        }
        encode_sessions(&mut encoder, &live.sessions)?;
        encode_udp(&mut encoder, &live.sessions)
    }
}

/// One gauge without labels.
fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

/// The gateway's own series: sessions by phase, the data plane, its ports.
fn encode_gateway(encoder: &mut DescriptorEncoder, live: &Live) -> Result<(), std::fmt::Error> {
    let mut m = encoder.encode_descriptor(
        "sessions",
        "Sessions on this gateway, by phase",
        None,
        ConstGauge::new(0i64).metric_type(),
    )?;
    for phase in PHASES {
        let n = live.phases.get(phase).copied().unwrap_or(0);
        let labels = [("phase", phase)];
        ConstGauge::new(n as i64).encode(m.encode_family(&labels)?)?;
    }
    let c = ConstCounter::new(live.restarts);
    c.encode(encoder.encode_descriptor(
        "dataplane_restarts",
        "Times s2ds died and was started again",
        None,
        c.metric_type(),
    )?)?;
    gauge(
        encoder,
        "dataplane_up",
        "1 when s2ds answered this scrape, 0 when it did not",
        i64::from(live.dataplane_up),
    )?;
    let (in_use, capacity) = live.ports;
    gauge(
        encoder,
        "data_ports_in_use",
        "Data ports (listeners) handed out to sessions now",
        in_use as i64,
    )?;
    gauge(
        encoder,
        "data_ports_capacity",
        "Data ports this gateway may hand out (the size of --port-range)",
        capacity as i64,
    )
}

/// Cluster mode: this node, and the cluster as it sees it.
fn encode_cluster(
    encoder: &mut DescriptorEncoder,
    (cluster, node, nodes, registered): &(String, String, usize, bool),
) -> Result<(), std::fmt::Error> {
    let info = ConstGauge::new(1i64);
    let mut m = encoder.encode_descriptor(
        "cluster_node_info",
        "This node of a gateway cluster (always 1): join on it to label this node's series by node",
        None,
        info.metric_type(),
    )?;
    let labels = [("cluster", cluster.as_str()), ("node", node.as_str())];
    info.encode(m.encode_family(&labels)?)?;
    gauge(
        encoder,
        "cluster_nodes",
        "Live nodes of this gateway's cluster, as this node's watch of etcd sees them",
        *nodes as i64,
    )?;
    gauge(
        encoder,
        "cluster_registered",
        "1 while this node's registration in etcd is live, 0 while etcd is lost (the node serves its own sessions on, places nothing new)",
        i64::from(*registered),
    )
}

/// Each live session's bytes and connections, labelled by its tag.
fn encode_sessions(
    encoder: &mut DescriptorEncoder,
    sessions: &[(SessionKey, SessionStats)],
) -> Result<(), std::fmt::Error> {
    let mut m = encoder.encode_descriptor(
        "session_bytes",
        "Bytes forwarded by a live session, by direction (to_target: from the accepted clients towards the targets)",
        None,
        ConstCounter::new(0u64).metric_type(),
    )?;
    for (key, st) in sessions {
        for (direction, bytes) in [
            ("to_target", st.bytes_to_target),
            ("from_target", st.bytes_from_target),
        ] {
            let mut labels = session_labels(key);
            labels.push(("direction", direction.to_owned()));
            ConstCounter::new(bytes).encode(m.encode_family(&labels)?)?;
        }
    }
    let mut m = encoder.encode_descriptor(
        "session_connections_open",
        "Data connections open now, per live session",
        None,
        ConstGauge::new(0i64).metric_type(),
    )?;
    for (key, st) in sessions {
        let labels = session_labels(key);
        ConstGauge::new(st.conns_open as i64).encode(m.encode_family(&labels)?)?;
    }
    for (name, help, value) in [
        (
            "session_connections",
            "Data connections accepted, per live session",
            (|s: &SessionStats| s.conns_total) as fn(&SessionStats) -> u64,
        ),
        (
            "session_connection_errors",
            "Data connections that failed (target unreachable, reset, I/O error), per live session",
            |s| s.errors,
        ),
        (
            "session_connections_rejected",
            "Data connections refused during setup (TLS handshake, preamble, timeout), per live session",
            |s| s.rejected,
        ),
    ] {
        let mut m =
            encoder.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
        for (key, st) in sessions {
            let labels = session_labels(key);
            ConstCounter::new(value(st)).encode(m.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

/// A session's UDP counters; only sessions that carried UDP have series.
fn encode_udp(
    encoder: &mut DescriptorEncoder,
    sessions: &[(SessionKey, SessionStats)],
) -> Result<(), std::fmt::Error> {
    let udp: Vec<_> = sessions
        .iter()
        .filter(|(_, st)| st.udp.flows_total > 0)
        .collect();
    for (name, help, pairs) in [
        (
            "session_udp_datagrams",
            "UDP datagrams forwarded by a session, by direction (to_target: from the senders towards the receiver)",
            (|u: &UdpStats| [u.datagrams_to_target, u.datagrams_from_target])
                as fn(&UdpStats) -> [u64; 2],
        ),
        (
            "session_udp_bytes",
            "UDP payload bytes forwarded by a session, by direction",
            |u| [u.bytes_to_target, u.bytes_from_target],
        ),
    ] {
        let mut m =
            encoder.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
        for (key, st) in &udp {
            for (direction, n) in ["to_target", "from_target"].into_iter().zip(pairs(&st.udp)) {
                let mut labels = session_labels(key);
                labels.push(("direction", direction.to_owned()));
                ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
            }
        }
    }
    for (name, help, value) in [
        (
            "session_udp_dropped",
            "UDP datagrams a session dropped because the way on could not take them (full queue), on this gateway",
            (|u: &UdpStats| u.dropped) as fn(&UdpStats) -> u64,
        ),
        (
            "session_udp_kernel_dropped",
            "UDP datagrams the kernel dropped on a session's sockets before the gateway took them (receive buffer full)",
            |u| u.kernel_dropped,
        ),
        (
            "session_udp_flows",
            "UDP flows (one per sender address and port) a session opened",
            |u| u.flows_total,
        ),
        (
            "session_udp_flows_expired",
            "UDP flows closed for being idle (--udp-idle)",
            |u| u.flows_expired,
        ),
    ] {
        let mut m =
            encoder.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
        for (key, st) in &udp {
            let labels = session_labels(key);
            ConstCounter::new(value(&st.udp)).encode(m.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

/// Serves `GET /metrics` on `addr` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    sessions: Arc<Registry>,
) {
    use axum::http::header::CONTENT_TYPE;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            let sessions = sessions.clone();
            async move {
                let body = metrics.scrape(&sessions).await;
                (
                    [(
                        CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    body,
                )
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        warn!(error = %e, "the metrics endpoint stopped");
    }
}

/// Binds the metrics endpoint (so a taken port stops the start).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    if let Ok(local) = listener.local_addr() {
        info!(metrics = %local, "serving Prometheus metrics at http://{local}/metrics");
    }
    Ok(listener)
}
