//! Start-up and the serving loop of `s2cs`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use scistream_protocol::pb::control_server::ControlServer;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::conn_limits::{Admitted, ConnLimits, ConnSlot, Refused, await_preface};
use crate::dataplane::{DataPlaneConfig, Resync, StartError, Supervisor};
use crate::ports::PortAllocator;
use crate::service::{ControlService, InFlight};
use crate::sessions::{Policy, Registry, Timing};
use crate::state_dir::StateDir;
use crate::store::SessionStore;
use crate::tls::{self, TlsError};

/// Largest gRPC message accepted: far above any legitimate request
/// (128 listeners of 260 bytes), far below what could hurt.
const MAX_MESSAGE: usize = 256 * 1024;

/// Largest header block (metadata) a call may carry: room for any real
/// token, refusing megabytes of garbage before it is buffered.
const MAX_HEADERS: u32 = 64 * 1024;

/// How long calls in flight may take to finish once a stop was asked for.
const GRACEFUL_STOP: Duration = Duration::from_secs(5);

/// Why `s2cs` could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// Certificate or key problem.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The data channel cannot be set up as configured.
    #[error("{0}")]
    DataChannel(String),
    /// An option cannot be used as given.
    #[error("{0}")]
    Config(String),
    /// Authentication or authorization options are unusable.
    #[error("{0}")]
    Auth(String),
    /// The session store cannot be used.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// State directory problem.
    #[error(transparent)]
    StateDir(#[from] crate::state_dir::StateDirError),
    /// The control port could not be bound.
    #[error(
        "cannot listen on {addr} for the control service: {source}; is another s2cs running? (choose another --port)"
    )]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The metrics port could not be bound.
    #[error("cannot listen on {addr} for metrics: {source} (choose another --metrics-addr)")]
    MetricsListen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The data plane did not start.
    #[error(transparent)]
    DataPlane(#[from] StartError),
    /// The gRPC server failed.
    #[error("control service failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Loads the data channel's certificate, key and peer CA as `s2ds` will,
/// so that a bad file is named here.
fn check_data_tls(files: &crate::config::DataTls) -> Result<(), TlsError> {
    tls::load_certs("--data-cert", &files.cert)?;
    tls::load_key("--data-key", &files.key)?;
    if let Some(ca) = &files.peer_ca {
        tls::load_certs("--peer-ca", ca)?;
    }
    Ok(())
}

/// Validates what `run` would load — certificates, keys, the data
/// channel's files, authentication and access options — without binding or
/// starting anything. Returns the warnings start-up would log.
pub fn check_config(config: &Config) -> Result<Vec<String>, RunError> {
    let mut warnings = Vec::new();
    if config.insecure {
        warnings.push("--insecure: the control service would run without TLS".to_owned());
    } else {
        tls::server_config(&config.server_crt, &config.server_key)?;
    }
    config.state_dir().map_err(RunError::Config)?;
    let (data_tls, data_warning) = config.data_tls().map_err(RunError::DataChannel)?;
    if let Some(files) = &data_tls {
        check_data_tls(files)?;
    }
    warnings.extend(data_warning);
    let (auth, w) = crate::auth::setup::authenticator(config).map_err(RunError::Auth)?;
    warnings.extend(w);
    let (_, w) = crate::auth::setup::access(config, auth.mode()).map_err(RunError::Auth)?;
    warnings.extend(w);
    if !config.s2ds_bin().is_file() {
        return Err(RunError::DataChannel(format!(
            "the data plane binary {} does not exist (--s2ds-bin)",
            config.s2ds_bin().display()
        )));
    }
    Ok(warnings)
}

/// Runs `s2cs` until `shutdown` completes. `on_listening` is called with the
/// bound control address (and the metrics address, if any) once the service
/// accepts calls.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
    on_listening: impl FnOnce(SocketAddr, Option<SocketAddr>),
) -> Result<(), RunError> {
    let tls = if config.insecure {
        warn!(
            "INSECURE MODE: the control service runs without TLS; anyone on the network can read and forge control calls. Use only for development."
        );
        None
    } else {
        Some(tls::server_config(&config.server_crt, &config.server_key)?)
    };

    let (data_tls, data_warning) = config.data_tls().map_err(RunError::DataChannel)?;
    if let Some(files) = &data_tls {
        check_data_tls(files)?;
    }
    if let Some(w) = &data_warning {
        warn!("{w}");
    }

    // Every control connection and data listener holds a descriptor:
    // running out would turn away legitimate callers behind idle ones.
    match scistream_protocol::nofile::raise_nofile_limit() {
        Ok(raised) => debug!(?raised, "RLIMIT_NOFILE"),
        Err(e) => warn!(error = %e, "cannot raise RLIMIT_NOFILE"),
    }
    let (auth, auth_warnings) =
        crate::auth::setup::authenticator(&config).map_err(RunError::Auth)?;
    let (access, access_warnings) =
        crate::auth::setup::access(&config, auth.mode()).map_err(RunError::Auth)?;
    for w in auth_warnings.iter().chain(&access_warnings) {
        warn!("{w}");
    }
    let auth = Arc::new(auth);
    let access = Arc::new(access);

    let state = StateDir::prepare(&config.state_dir().map_err(RunError::Config)?)?;
    let state_dir = state.path().to_owned();
    let tag_secret = state.tag_secret()?;
    // Every log line and metric names sessions by tag from here on.
    scistream_protocol::tag::set_secret(&tag_secret);

    let control_addr = SocketAddr::new(config.control_ip, config.port);
    let listener = TcpListener::bind(control_addr)
        .await
        .map_err(|source| RunError::Listen {
            addr: control_addr,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| RunError::Listen {
        addr: control_addr,
        source,
    })?;

    let metrics_listener = match config.metrics_addr {
        Some(addr) => Some(
            crate::metrics::bind(addr)
                .await
                .map_err(|source| RunError::MetricsListen { addr, source })?,
        ),
        None => None,
    };

    let store_path = state.private_file("sessions.redb")?;
    let store = Arc::new(SessionStore::open(&store_path).map_err(RunError::Store)?);
    let stored = store.load().map_err(RunError::Store)?;

    let (dataplane, supervisor, attached) = Supervisor::start(DataPlaneConfig {
        bin: config.s2ds_bin(),
        args: config.s2ds_argv(),
        socket_path: state_dir.join("s2ds.sock"),
        call_timeout: Duration::from_secs(20),
        env: vec![(
            scistream_protocol::tag::SECRET_ENV.to_owned(),
            scistream_protocol::tag::encode_secret(&tag_secret),
        )],
    })
    .await?;

    let registry = Arc::new(Registry::new(
        PortAllocator::new(config.listener_ip, config.port_range.clone()),
        Timing {
            hello_timeout: config.hello_timeout,
            hello_grace: config.hello_grace,
        },
        Policy {
            max_rate_bps: config.max_rate,
            data_tls: data_tls.is_some(),
            access: access.clone(),
            max_sessions: config.max_sessions,
            max_conns_per_session: config.conns_per_session(),
            capacity_bps: config.capacity,
            max_pending_per_identity: config.max_pending_per_identity,
            max_ports_per_identity: config.ports_per_identity(),
            max_sessions_per_identity: config.max_sessions_per_identity,
            weak_uids: config.weak_uids.parse().map_err(RunError::Config)?,
            enforce_unmarked_rates: config.unmarked_rates == "enforce",
            probe: match &data_tls {
                Some(files) => match crate::probe::PeerProbe::new(files, Duration::from_secs(5)) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        warn!(error = %e, "outbound sessions cannot check their inbound gateways before forwarding");
                        None
                    }
                },
                None => None,
            },
            verifies_peers: data_tls.as_ref().is_some_and(|d| d.peer_ca.is_some()),
            gateway: crate::targets::Gateway {
                listener_ip: config.listener_ip,
                control_port: local.port(),
                metrics_port: metrics_listener
                    .as_ref()
                    .and_then(|l| l.local_addr().ok())
                    .map(|a| a.port()),
                data_ports: config.port_range.clone(),
            },
        },
        dataplane,
        store,
    ));
    let (stop_tx, stop_rx) = watch::channel(false);
    let weak = Arc::downgrade(&registry);
    let resync: Resync = Arc::new(move || {
        weak.upgrade()
            .map(|r| r.forwarding_sessions())
            .unwrap_or_default()
    });
    let supervisor = tokio::spawn(supervisor.run(resync, stop_rx));
    if !stored.is_empty() || !attached.sessions.is_empty() {
        let r = registry.recover(stored, &attached).await;
        info!(
            sessions = r.sessions,
            kept_forwarding = r.kept_forwarding,
            lost = r.lost.len(),
            orphans = r.orphans,
            "recovered the sessions of the previous s2cs"
        );
    }

    // Sessions that got their hello but never their update hold ports and
    // forward nothing: released after --update-timeout.
    let _expiry = (!config.update_timeout.is_zero()).then(|| {
        let registry = registry.clone();
        let after = config.update_timeout;
        let every = (after / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
        AbortOnDrop(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                registry.expire_unused(after).await;
            }
        }))
    });

    let metrics = Arc::new(crate::metrics::Metrics::new());
    let (_metrics_task, metrics_local) = match metrics_listener {
        Some(l) => {
            let local = l.local_addr().ok();
            let task = tokio::spawn(crate::metrics::serve(l, metrics.clone(), registry.clone()));
            (Some(AbortOnDrop(task)), local)
        }
        None => (None, None),
    };
    let in_flight = Arc::new(InFlight::default());
    let service = ControlServer::new(ControlService::new(
        registry.clone(),
        in_flight.clone(),
        auth.clone(),
        metrics,
    ))
    .max_decoding_message_size(MAX_MESSAGE)
    .max_encoding_message_size(MAX_MESSAGE);
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .http2_max_header_list_size(MAX_HEADERS)
        .add_service(service);

    info!(
        control = %local,
        tls = tls.is_some(),
        data_tls = data_tls.is_some(),
        auth = auth.mode(),
        target_policy = access.targets.is_some(),
        listener_ip = %config.listener_ip,
        port_range = %format!("{}-{}", config.port_range.start(), config.port_range.end()),
        state_dir = %state_dir.display(),
        "s2cs ready"
    );
    // Signal handlers first: systemd may send SIGHUP as soon as it hears
    // READY, and SIGHUP's default action would end the process.
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    if let Err(e) = &hup {
        warn!(error = %e, "cannot catch SIGHUP: files are read at start only");
    }
    on_listening(local, metrics_local);
    notify_systemd(&[sd_notify::NotifyState::Ready]);
    // The control certificate is re-read on SIGHUP; connections keep theirs.
    let acceptor =
        tls.map(|t| Arc::new(std::sync::RwLock::new(tokio_rustls::TlsAcceptor::from(t))));
    let cert_reload = acceptor
        .clone()
        .map(|a| (a, config.server_crt.clone(), config.server_key.clone()));
    let _reload = AbortOnDrop(tokio::spawn(reload_on_sighup(
        hup.ok(),
        auth.clone(),
        access.clone(),
        cert_reload,
        data_tls.map(|files| (registry.clone(), files)),
    )));

    // Graceful stop: on the signal, tonic stops taking new calls and lets
    // calls in flight finish; idle clients may keep their connections open
    // forever, so the graceful phase is bounded.
    let (signal_tx, signal_rx) = watch::channel(false);
    let graceful = {
        let mut rx = signal_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let admission = Admission {
        limits: ConnLimits::new(
            config.max_control_conns,
            config.max_control_conns_per_source,
        ),
        setup_timeout: config.control_setup_timeout,
    };
    let serve = async {
        match acceptor {
            Some(acceptor) => {
                let (tx, rx) = mpsc::channel(64);
                let accept_loop = AbortOnDrop(tokio::spawn(accept_tls(
                    listener,
                    acceptor,
                    admission.clone(),
                    tx,
                )));
                let r = server
                    .serve_with_incoming_shutdown(ReceiverStream::new(rx), graceful)
                    .await;
                drop(accept_loop);
                r
            }
            None => {
                let (tx, rx) = mpsc::channel(64);
                let accept_loop =
                    AbortOnDrop(tokio::spawn(accept_plain(listener, admission.clone(), tx)));
                let r = server
                    .serve_with_incoming_shutdown(ReceiverStream::new(rx), graceful)
                    .await;
                drop(accept_loop);
                r
            }
        }
    };
    tokio::pin!(serve);
    let result = tokio::select! {
        r = &mut serve => r,
        () = shutdown => {
            notify_systemd(&[sd_notify::NotifyState::Stopping]);
            let _ = signal_tx.send(true);
            // Idle client connections would hold tonic's graceful stop open
            // forever: stop once the calls in flight are done (their
            // responses get a moment to be written), or after the bound.
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
    };
    drain(&registry, config.drain_timeout).await;
    let _ = stop_tx.send(true);
    let _ = supervisor.await;
    result.map_err(RunError::Serve)
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
        match registry.dataplane().open_connections().await {
            Ok(0) => {
                info!(sessions, "shutting down: no connection left open");
                return;
            }
            Ok(n) => {
                if last_logged != Some(n) {
                    info!(
                        connections = n,
                        left_s = deadline
                            .saturating_duration_since(tokio::time::Instant::now())
                            .as_secs(),
                        "shutting down: listeners closed, waiting for open connections to finish"
                    );
                    last_logged = Some(n);
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot count open connections; stopping now");
                return;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            warn!(
                connections = last_logged.unwrap_or(0),
                "drain timeout reached; closing the connections still open"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The acceptor of the control port, replaced when the certificate is re-read.
type SharedAcceptor = Arc<std::sync::RwLock<tokio_rustls::TlsAcceptor>>;

/// Re-reads the tokens and identities files, and the control certificate,
/// on each SIGHUP. A certificate that does not load is refused (with an
/// error) and the one in use is kept.
async fn reload_on_sighup(
    hup: Option<tokio::signal::unix::Signal>,
    auth: Arc<crate::auth::Authenticator>,
    access: Arc<crate::access::Access>,
    cert: Option<(SharedAcceptor, PathBuf, PathBuf)>,
    data_tls: Option<(Arc<Registry>, crate::config::DataTls)>,
) {
    let Some(mut hup) = hup else {
        return;
    };
    while hup.recv().await.is_some() {
        let now = sd_notify::NotifyState::monotonic_usec_now();
        match now {
            Ok(now) => notify_systemd(&[sd_notify::NotifyState::Reloading, now]),
            Err(_) => notify_systemd(&[sd_notify::NotifyState::Reloading]),
        }
        info!("SIGHUP: re-reading certificates, the peer CA bundle, tokens and identities files");
        auth.reload();
        access.reload();
        if let Some((acceptor, crt, key)) = &cert {
            match tls::server_config(crt, key) {
                Ok(config) => {
                    *acceptor.write().unwrap_or_else(|p| p.into_inner()) =
                        tokio_rustls::TlsAcceptor::from(config);
                    info!(cert = %crt.display(), "control certificate re-read; new connections use it");
                }
                Err(e) => {
                    error!(error = %e, "the new control certificate is refused; keeping the one in use")
                }
            }
        }
        if let Some((registry, files)) = &data_tls {
            reload_data_tls(registry, files).await;
        }
        notify_systemd(&[sd_notify::NotifyState::Ready]);
    }
}

/// The data channel's certificate, key and peer CA: checked here, then
/// re-read by `s2ds`; a broken file keeps the ones in use.
async fn reload_data_tls(registry: &Registry, files: &crate::config::DataTls) {
    if let Err(e) = check_data_tls(files) {
        error!(error = %e, "the new data-channel TLS files are refused; the data plane keeps the ones in use");
        return;
    }
    match registry.dataplane().reload_tls().await {
        Ok(()) => info!(
            cert = %files.cert.display(),
            peer_ca = %files.peer_ca.as_deref().map(|p| p.display().to_string()).unwrap_or_else(|| "the system's CA store".into()),
            "data-channel certificate and peer CA re-read; new connections use them"
        ),
        Err(e) => {
            error!(error = %e, "the data plane refused the new TLS files; it keeps the ones in use")
        }
    }
}

/// Tells systemd (`Type=notify` / `notify-reload`) about readiness, reloads
/// and stopping; does nothing when not started by systemd (no
/// `NOTIFY_SOCKET`).
fn notify_systemd(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        warn!(error = %e, "cannot notify systemd through NOTIFY_SOCKET");
    }
}

/// Aborts a task when dropped (also when the future holding it is dropped).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

type Incoming<T> = mpsc::Sender<Result<Admitted<T>, io::Error>>;

/// How the accept loops bound control connections.
#[derive(Debug, Clone)]
struct Admission {
    limits: Arc<ConnLimits>,
    /// TLS handshake plus HTTP/2 preface must be done within this.
    setup_timeout: Duration,
}

impl Admission {
    /// A slot for a connection from `peer`, or `None` (logged, rate-limited).
    fn admit(&self, peer: SocketAddr) -> Option<ConnSlot> {
        match self.limits.admit(peer.ip()) {
            Ok(slot) => Some(slot),
            Err(why) => {
                let verdict = REFUSED_CONTROL.check(std::time::Instant::now());
                if verdict.log {
                    warn!(
                        %peer,
                        limit = match why {
                            Refused::Global => "--max-control-conns",
                            Refused::PerSource => "--max-control-conns-per-source",
                        },
                        suppressed_before = verdict.suppressed_before,
                        "control connection refused: too many open"
                    );
                }
                None
            }
        }
    }
}

/// Refused control connections logged one by one: 10 per 10 s.
static REFUSED_CONTROL: crate::logsafe::LogLimit =
    crate::logsafe::LogLimit::new(10, Duration::from_secs(10));

async fn accept_plain(
    listener: TcpListener,
    admission: Admission,
    tx: Incoming<tokio::net::TcpStream>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let Some(slot) = admission.admit(peer) else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let tx = tx.clone();
                let deadline = admission.setup_timeout;
                tokio::spawn(async move {
                    match await_preface(stream, slot, deadline).await {
                        Ok(admitted) => {
                            let _ = tx.send(Ok(admitted)).await;
                        }
                        Err(e) => {
                            debug!(%peer, error = %e, "control connection closed before it spoke HTTP/2")
                        }
                    }
                });
            }
            Err(e) => accept_error(e).await,
        }
    }
}

async fn accept_tls(
    listener: TcpListener,
    acceptor: SharedAcceptor,
    admission: Admission,
    tx: Incoming<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let Some(slot) = admission.admit(peer) else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let acceptor = acceptor.read().unwrap_or_else(|p| p.into_inner()).clone();
                let tx = tx.clone();
                let deadline = admission.setup_timeout;
                // Each handshake runs on its own and is bounded in time, so a
                // client that stalls mid-handshake (or after it) holds up nobody.
                tokio::spawn(async move {
                    let started = tokio::time::Instant::now();
                    let tls = match tokio::time::timeout(deadline, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            return debug!(%peer, error = %e, "control TLS handshake failed");
                        }
                        Err(_) => return debug!(%peer, "control TLS handshake timed out"),
                    };
                    let left = deadline.saturating_sub(started.elapsed());
                    match await_preface(tls, slot, left).await {
                        Ok(admitted) => {
                            let _ = tx.send(Ok(admitted)).await;
                        }
                        Err(e) => {
                            debug!(%peer, error = %e, "control connection closed before it spoke HTTP/2")
                        }
                    }
                });
            }
            Err(e) => accept_error(e).await,
        }
    }
}

/// Accept errors (EMFILE, ENFILE, ENOBUFS…) are transient: log and pause
/// briefly instead of spinning.
async fn accept_error(e: io::Error) {
    warn!(error = %e, "accepting a control connection failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}
