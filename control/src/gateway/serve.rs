//! Serving: the gRPC service on the admitted control connections, the
//! metrics endpoint, session expiry and SIGHUP reloads while it runs; then
//! the graceful stop and the drain of the data.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use scistream_protocol::pb::control_server::ControlServer;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::server::Router;
use tracing::{info, warn};

use super::accept::{AbortOnDrop, Admission};
use super::reload::{self, notify_systemd};
use super::{Files, Ports, RunError};
use crate::config::Config;
use crate::conn_limits::ConnLimits;
use crate::dataplane::{Resync, Supervisor};
use crate::metrics::Metrics;
use crate::service::{ControlService, InFlight};
use crate::sessions::Registry;

/// Largest gRPC message accepted: far above any legitimate request
/// (128 listeners of 260 bytes), far below what could hurt.
const MAX_MESSAGE: usize = 256 * 1024;

/// Largest header block (metadata) a call may carry: room for any real
/// token, refusing megabytes of garbage before it is buffered.
const MAX_HEADERS: u32 = 64 * 1024;

/// How long calls in flight may take to finish once a stop was asked for.
const GRACEFUL_STOP: Duration = Duration::from_secs(5);

/// A started gateway: its sessions, its data plane's supervisor and what
/// serving needs.
pub(super) struct Gateway {
    registry: Arc<Registry>,
    files: Files,
    supervisor: JoinHandle<()>,
    stop_supervisor: watch::Sender<bool>,
    admission: Admission,
    update_timeout: Duration,
    drain_timeout: Duration,
}

impl Gateway {
    /// Takes over the registry and starts supervising the data plane, which
    /// is handed the forwarding sessions again whenever it restarts.
    pub(super) fn new(
        config: &Config,
        files: Files,
        registry: Arc<Registry>,
        supervisor: Supervisor,
    ) -> Gateway {
        let (stop_supervisor, stopped) = watch::channel(false);
        let weak = Arc::downgrade(&registry);
        let resync: Resync = Arc::new(move || {
            weak.upgrade()
                .map(|r| r.forwarding_sessions())
                .unwrap_or_default()
        });
        Gateway {
            registry,
            files,
            supervisor: tokio::spawn(supervisor.run(resync, stopped)),
            stop_supervisor,
            admission: Admission {
                limits: ConnLimits::new(
                    config.max_control_conns,
                    config.max_control_conns_per_source,
                ),
                setup_timeout: config.control_setup_timeout,
            },
            update_timeout: config.update_timeout,
            drain_timeout: config.drain_timeout,
        }
    }

    pub(super) fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Serves until `shutdown` completes, then stops calls gracefully,
    /// drains the data and stops the data plane's supervisor.
    pub(super) async fn serve(
        self,
        ports: Ports,
        relay: Option<Arc<crate::cluster::relay::Relay>>,
        shutdown: impl Future<Output = ()>,
        on_listening: impl FnOnce(SocketAddr, Option<SocketAddr>),
    ) -> Result<(), RunError> {
        let _expiry = self.expire_unused_sessions();
        let metrics = Arc::new(Metrics::new());
        if let Some(relay) = &relay {
            metrics.set_cluster(relay.clone());
        }
        let metrics_addr = ports.metrics.as_ref().and_then(|l| l.local_addr().ok());
        let _metrics_task = ports.metrics.map(|l| {
            let task = crate::metrics::serve(l, metrics.clone(), self.registry.clone());
            AbortOnDrop(tokio::spawn(task))
        });
        let in_flight = Arc::new(InFlight::default());
        let router = self.router(metrics, in_flight.clone(), relay);
        // Signal handlers first: systemd may send SIGHUP as soon as it hears
        // READY, and SIGHUP's default action would end the process.
        let hup = reload::catch_sighup();
        on_listening(ports.control_addr, metrics_addr);
        notify_systemd(&[sd_notify::NotifyState::Ready]);
        let acceptor = self.files.control_tls.clone().map(reload::shared_acceptor);
        let _reload = AbortOnDrop(tokio::spawn(reload::on_sighup(
            hup,
            &self.files,
            acceptor.clone(),
            self.registry.dataplane().clone(),
        )));
        let result = serve_until(
            router,
            ports.control,
            acceptor,
            self.admission.clone(),
            &in_flight,
            shutdown,
        )
        .await;
        drain(&self.registry, self.drain_timeout).await;
        let _ = self.stop_supervisor.send(true);
        let _ = self.supervisor.await;
        result.map_err(RunError::Serve)
    }

    /// Sessions that got their hello but never their update hold ports and
    /// forward nothing: released after `--update-timeout` (0: never).
    fn expire_unused_sessions(&self) -> Option<AbortOnDrop> {
        if self.update_timeout.is_zero() {
            return None;
        }
        let registry = self.registry.clone();
        let after = self.update_timeout;
        let every = (after / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
        Some(AbortOnDrop(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                registry.expire_unused(after).await;
            }
        })))
    }

    /// The gRPC service with its message and header bounds.
    fn router(
        &self,
        metrics: Arc<Metrics>,
        in_flight: Arc<InFlight>,
        relay: Option<Arc<crate::cluster::relay::Relay>>,
    ) -> Router {
        let files = &self.files;
        let service = ControlServer::new(ControlService::new(
            operations(&self.registry, relay),
            in_flight,
            files.auth.clone(),
            metrics,
        ))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
        info!(
            tls = files.control_tls.is_some(),
            data_tls = files.data_tls.is_some(),
            auth = files.auth.mode(),
            target_policy = files.access.targets.is_some(),
            "control service configured"
        );
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .http2_max_header_list_size(MAX_HEADERS)
            // Cluster mode: another node passes every caller's calls over
            // one connection, and a `req` stays open until its hello (which
            // comes over the same connection). What one caller may have
            // waiting is bounded by --max-pending-per-identity, not here.
            .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
            .add_service(service)
    }
}

/// Calls in flight on one control connection.
const MAX_STREAMS_PER_CONNECTION: u32 = 4096;

/// Serves control connections until `shutdown`; then tonic stops taking new
/// calls and lets calls in flight finish. Idle clients may keep their
/// connections open forever, so the graceful phase is bounded.
async fn serve_until(
    router: Router,
    listener: tokio::net::TcpListener,
    acceptor: Option<reload::SharedAcceptor>,
    admission: Admission,
    in_flight: &InFlight,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let graceful = async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    };
    let serve = super::accept::serve(router, listener, acceptor, admission, graceful);
    tokio::pin!(serve);
    tokio::select! {
        r = &mut serve => r,
        () = shutdown => {
            notify_systemd(&[sd_notify::NotifyState::Stopping]);
            let _ = stop_tx.send(true);
            // Stop once the calls in flight are done (their responses get a
            // moment to be written), or after the bound.
            let calls_done = async {
                in_flight.idle().await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            tokio::select! {
                r = &mut serve => r,
                () = calls_done => Ok(()),
                () = tokio::time::sleep(GRACEFUL_STOP) => {
                    info!("calls still open after {GRACEFUL_STOP:?}; closing them");
                    Ok(())
                }
            }
        }
    }
}

/// Graceful shutdown of the data: listeners closed (ours and s2ds's), then
/// established connections get up to `timeout` to finish.
async fn drain(registry: &Registry, timeout: Duration) {
    let sessions = registry.close_listeners();
    if let Err(e) = registry.dataplane().drain().await {
        warn!(error = %e, "the data plane could not close its listeners");
        return;
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_logged = None;
    loop {
        let n = match registry.dataplane().open_connections().await {
            Ok(0) => return info!(sessions, "shutting down: no connection left open"),
            Ok(n) => n,
            Err(e) => return warn!(error = %e, "cannot count open connections; stopping now"),
        };
        if last_logged != Some(n) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            info!(
                connections = n,
                left_s = left.as_secs(),
                "shutting down: listeners closed, waiting for open connections to finish"
            );
            last_logged = Some(n);
        }
        if tokio::time::Instant::now() >= deadline {
            return warn!(
                connections = n,
                "drain timeout reached; closing the connections still open"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The session operations this gateway serves: its own registry, routed
/// over the cluster's other nodes in cluster mode.
fn operations(
    registry: &Arc<Registry>,
    relay: Option<Arc<crate::cluster::relay::Relay>>,
) -> Arc<dyn crate::operations::Operations> {
    let local = crate::operations::Local::new(registry.clone());
    match relay {
        Some(relay) => Arc::new(crate::cluster::router::Router::new(local, relay)),
        None => Arc::new(local),
    }
}
