//! The gateway process `s2cs`: start-up as a sequence of named steps, then
//! the serving loop ([`serve`]), control connections ([`accept`]) and
//! SIGHUP reloads ([`reload`]).
//!
//! Start-up order matters and is the order of [`run`]: files are loaded
//! and checked before anything is bound (a bad certificate is named before
//! a port is taken); the state directory and its tag secret come before
//! any log line names a session; the control and metrics ports are bound
//! before the data plane starts, so a port clash fails fast; the data plane
//! starts (or is adopted) before the registry exists, and stored sessions
//! are recovered before the first call is accepted.

mod accept;
mod reload;
mod serve;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::access::Access;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::dataplane::{Attached, DataPlane, DataPlaneConfig, LaunchError, Supervisor};
use crate::ports::PortAllocator;
use crate::sessions::{Policy, Registry, Timing};
use crate::state_dir::StateDir;
use crate::store::{SessionStore, StoredSession};
use crate::tls::DataTls;
use crate::tls::{self, TlsError};

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
    DataPlane(#[from] LaunchError),
    /// The gRPC server failed.
    #[error("control service failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// Cluster mode: etcd could not be used.
    #[error("cannot join the cluster: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
}

/// Validates what `run` would load — certificates, keys, the data
/// channel's files, authentication and access options — without binding or
/// starting anything. Returns the warnings start-up would log.
pub fn check_config(config: &Config) -> Result<Vec<String>, RunError> {
    let (_, warnings) = Files::load(config)?;
    config.state_dir().map_err(RunError::Config)?;
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
    let (files, warnings) = Files::load(&config)?;
    for w in &warnings {
        warn!("{w}");
    }
    raise_descriptor_limit();
    let state = State::open(&config, files.cluster.as_ref())?;
    let ports = Ports::bind(&config).await?;
    let (dataplane, supervisor, attached) = start_dataplane(&config, &state).await?;
    let registry = Arc::new(Registry::new(
        PortAllocator::new(config.listener_ip, config.port_range.clone()),
        Timing {
            hello_timeout: config.hello_timeout,
            hello_grace: config.hello_grace,
        },
        policy(&config, &files, &ports)?,
        dataplane,
        state.store.clone(),
    ));
    let cluster = files.cluster.clone();
    let gateway = serve::Gateway::new(&config, files, registry.clone(), supervisor);
    recover(gateway.registry(), state.stored, &attached).await;
    let cluster = match cluster {
        Some(settings) => {
            let mut cluster = join_cluster(&config, &ports, settings).await?;
            cluster.drop_released(&registry).await;
            cluster.publish_load(registry);
            Some(cluster)
        }
        None => None,
    };
    info!(
        control = %ports.control_addr,
        cluster = ?cluster.as_ref().map(|c| c.name()),
        cluster_nodes = ?cluster.as_ref().map(|c| c.nodes()),
        state_dir = %state.dir.display(),
        listener_ip = %config.listener_ip,
        port_range = %format!("{}-{}", config.port_range.start(), config.port_range.end()),
        "s2cs ready"
    );
    // Nodes of one gateway share its certificate: a node verifies another
    // with it when passing a call on.
    let relay = cluster.as_ref().map(|c| {
        let trust = if config.insecure {
            scistream_client::Trust::Insecure
        } else {
            scistream_client::Trust::Root(config.server_crt.clone())
        };
        Arc::new(c.relay(trust, config.hello_grace))
    });
    let result = gateway.serve(ports, relay, shutdown, on_listening).await;
    if let Some(cluster) = cluster {
        cluster.leave().await;
    }
    result
}

/// Cluster mode: registers this node in etcd (after recovery, so that a
/// node is listed only once it serves).
async fn join_cluster(
    config: &Config,
    ports: &Ports,
    settings: crate::cluster::ClusterSettings,
) -> Result<crate::cluster::Cluster, RunError> {
    let control = match ports.control_addr {
        a if a.ip().is_unspecified() => SocketAddr::new(config.listener_ip, a.port()),
        a => a,
    };
    if !config.insecure {
        check_node_certificate(&config.server_crt, control)?;
    }
    let record = crate::cluster::membership::NodeRecord {
        node: settings.node.clone(),
        listener_ip: config.listener_ip,
        control,
        capacity_bps: config.capacity,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        data_plane: "up".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    };
    Ok(crate::cluster::Cluster::join(settings, record).await?)
}

/// Cluster mode: the other nodes dial this node at its control address and
/// verify its certificate (`--server_crt`) by that address, so a
/// certificate that does not name it is found here, at start, rather than
/// at the first spread request.
fn check_node_certificate(cert: &std::path::Path, control: SocketAddr) -> Result<(), RunError> {
    let chain = crate::tls::load_certs("--server_crt", cert)?;
    let Some((own, intermediates)) = chain.split_first() else {
        return Ok(());
    };
    let anchors =
        scistream_trust::Anchors::from_file(cert).map_err(|e| RunError::Config(e.to_string()))?;
    let verifier = anchors
        .verifier(Arc::new(rustls::crypto::ring::default_provider()))
        .map_err(|e| RunError::Config(e.to_string()))?;
    let name = rustls::pki_types::ServerName::IpAddress(control.ip().into());
    let now = rustls::pki_types::UnixTime::now();
    match verifier.verify_server_cert(own, intermediates, &name, &[], now) {
        Ok(_) => Ok(()),
        Err(e) => {
            let why = match scistream_trust::name_mismatch(&e) {
                Some((_, names)) if names.is_empty() => "it names no host or address".to_owned(),
                Some((_, names)) => format!("it names {}", names.join(", ")),
                None => scistream_trust::words(&e),
            };
            Err(RunError::Config(format!(
                "cluster mode: the other nodes reach this node at {control} and check its certificate \
                 (--server_crt {}) against that address, and it does not pass: {why}. Give the \
                 certificate a subjectAltName IP:{}, or set --listener-ip to an address it names",
                cert.display(),
                control.ip()
            )))
        }
    }
}

/// What start-up reads from files and options before binding anything.
struct Files {
    /// The control service's TLS; `None` under `--insecure`.
    control_tls: Option<Arc<rustls::ServerConfig>>,
    /// The control certificate and key paths (re-read on SIGHUP).
    control_cert: (PathBuf, PathBuf),
    /// The data channel's files; `None` under `--data-tls off`.
    data_tls: Option<DataTls>,
    auth: Arc<Authenticator>,
    access: Arc<Access>,
    /// Cluster mode's settings; `None` for a single node.
    cluster: Option<crate::cluster::ClusterSettings>,
}

impl Files {
    /// Loads and checks everything; returns the warnings to show.
    fn load(config: &Config) -> Result<(Files, Vec<String>), RunError> {
        let mut warnings = Vec::new();
        let control_tls = if config.insecure {
            warnings.push(
                "INSECURE MODE: the control service runs without TLS; anyone on the network can read and forge control calls. Use only for development."
                    .to_owned(),
            );
            None
        } else {
            Some(tls::server_config(&config.server_crt, &config.server_key)?)
        };
        let (data_tls, data_warning) = config.data_tls().map_err(RunError::DataChannel)?;
        if let Some(files) = &data_tls {
            check_data_tls(files)?;
        }
        warnings.extend(data_warning);
        let (auth, w) = crate::auth::setup::authenticator(config).map_err(RunError::Auth)?;
        warnings.extend(w);
        let (access, w) =
            crate::auth::setup::access(config, auth.mode()).map_err(RunError::Auth)?;
        warnings.extend(w);
        let cluster = config.cluster.settings().map_err(RunError::Config)?;
        let files = Files {
            control_tls,
            control_cert: (config.server_crt.clone(), config.server_key.clone()),
            data_tls,
            auth: Arc::new(auth),
            access: Arc::new(access),
            cluster,
        };
        Ok((files, warnings))
    }
}

/// Loads the data channel's certificate, key and peer CA as `s2ds` will,
/// so that a bad file is named here.
fn check_data_tls(files: &DataTls) -> Result<(), TlsError> {
    tls::load_certs("--data-cert", &files.cert)?;
    tls::load_key("--data-key", &files.key)?;
    if let Some(ca) = &files.peer_ca {
        tls::load_certs("--peer-ca", ca)?;
    }
    Ok(())
}

/// Every control connection and data listener holds a descriptor: running
/// out would turn away legitimate callers behind idle ones.
fn raise_descriptor_limit() {
    match scistream_protocol::nofile::raise_nofile_limit() {
        Ok(raised) => debug!(?raised, "RLIMIT_NOFILE"),
        Err(e) => warn!(error = %e, "cannot raise RLIMIT_NOFILE"),
    }
}

/// The state directory and what lives in it.
struct State {
    dir: PathBuf,
    tag_secret: [u8; crate::state_dir::SECRET_LEN],
    store: Arc<SessionStore>,
    /// Sessions of the previous run, to recover.
    stored: Vec<StoredSession>,
}

impl State {
    fn open(
        config: &Config,
        cluster: Option<&crate::cluster::ClusterSettings>,
    ) -> Result<State, RunError> {
        let state = StateDir::prepare(&config.state_dir().map_err(RunError::Config)?)?;
        // Nodes of one cluster that share its secret name a session by one
        // tag, so one grep follows it across nodes; else each keeps its own.
        let tag_secret = match cluster.and_then(|c| c.shared_tag_secret()) {
            Some(shared) => shared,
            None => state.tag_secret()?,
        };
        // Every log line and metric names sessions by tag from here on.
        scistream_protocol::tag::set_secret(&tag_secret);
        let store = Arc::new(SessionStore::open(&state.private_file("sessions.redb")?)?);
        let stored = store.load()?;
        Ok(State {
            dir: state.path().to_owned(),
            tag_secret,
            store,
            stored,
        })
    }
}

/// The control and metrics ports, bound.
struct Ports {
    control: TcpListener,
    control_addr: SocketAddr,
    metrics: Option<TcpListener>,
}

impl Ports {
    async fn bind(config: &Config) -> Result<Ports, RunError> {
        let addr = SocketAddr::new(config.control_ip, config.port);
        let listen_error = |source| RunError::Listen { addr, source };
        let control = TcpListener::bind(addr).await.map_err(listen_error)?;
        let control_addr = control.local_addr().map_err(listen_error)?;
        let metrics = match config.metrics_addr {
            Some(addr) => Some(
                crate::metrics::bind(addr)
                    .await
                    .map_err(|source| RunError::MetricsListen { addr, source })?,
            ),
            None => None,
        };
        Ok(Ports {
            control,
            control_addr,
            metrics,
        })
    }

    fn metrics_port(&self) -> Option<u16> {
        let metrics = self.metrics.as_ref()?;
        metrics.local_addr().ok().map(|a| a.port())
    }
}

/// Starts `s2ds`, or adopts the one the previous `s2cs` left running.
async fn start_dataplane(
    config: &Config,
    state: &State,
) -> Result<(DataPlane, Supervisor, Attached), RunError> {
    Ok(Supervisor::start(DataPlaneConfig {
        bin: config.s2ds_bin(),
        args: config.s2ds_argv(),
        socket_path: state.dir.join("s2ds.sock"),
        call_timeout: Duration::from_secs(20),
        env: vec![(
            scistream_protocol::tag::SECRET_ENV.to_owned(),
            scistream_protocol::tag::encode_secret(&state.tag_secret),
        )],
    })
    .await?)
}

/// What sessions may be and do on this gateway.
fn policy(config: &Config, files: &Files, ports: &Ports) -> Result<Policy, RunError> {
    let data_tls = files.data_tls.as_ref();
    let probe = data_tls.and_then(|files| {
        crate::probe::PeerProbe::new(files, Duration::from_secs(5))
            .inspect_err(|e| warn!(error = %e, "outbound sessions cannot check their inbound gateways before forwarding"))
            .ok()
    });
    Ok(Policy {
        max_rate_bps: config.max_rate,
        data_tls: data_tls.is_some(),
        access: files.access.clone(),
        max_sessions: config.max_sessions,
        max_conns_per_session: config.conns_per_session(),
        capacity_bps: config.capacity,
        max_pending_per_identity: config.max_pending_per_identity,
        max_ports_per_identity: config.ports_per_identity(),
        max_sessions_per_identity: config.max_sessions_per_identity,
        weak_uids: config.weak_uids.parse().map_err(RunError::Config)?,
        enforce_unmarked_rates: config.unmarked_rates == "enforce",
        probe,
        verifies_peers: data_tls.is_some_and(|d| d.peer_ca.is_some()),
        gateway: crate::targets::Gateway {
            listener_ip: config.listener_ip,
            control_port: ports.control_addr.port(),
            metrics_port: ports.metrics_port(),
            data_ports: config.port_range.clone(),
        },
    })
}

/// Brings back the sessions of the previous run.
async fn recover(registry: &Registry, stored: Vec<StoredSession>, attached: &Attached) {
    if attached.adopted {
        info!(
            sessions = attached.sessions.len(),
            "adopted the data plane the previous s2cs left running"
        );
    }
    if stored.is_empty() && attached.sessions.is_empty() {
        return;
    }
    let r = registry.recover(stored, attached).await;
    info!(
        sessions = r.sessions,
        kept_forwarding = r.kept_forwarding,
        lost = r.lost.len(),
        orphans = r.orphans,
        "recovered the sessions of the previous s2cs"
    );
}
