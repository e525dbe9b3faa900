//! `s2ds`, the SciStream data plane.
//!
//! `s2cs` hands it listening sockets over a Unix socket ([`control`]); it
//! spreads them over thread-per-core [`worker`]s, each with its own
//! [`reactor`], and forwards every accepted connection to its target
//! ([`relay`]): with `splice` through a per-connection pipe when both legs
//! are plaintext (or kTLS), else through the user-space TLS record layer
//! ([`record`]). Between gateways the data channel is TLS 1.3 ([`tls`],
//! [`setup`]: handshake, preamble, answer). UDP sessions have a thread of
//! their own (`udp`).
#![deny(unsafe_code)]

mod client_cert;
pub mod config;
mod conn;
mod control;
mod crypto;
mod ktls;
mod loop_guard;
pub mod probe;
mod reactor;
pub mod record;
pub mod relay;
pub mod setup;
mod sys;
pub mod tls;
mod udp;
mod worker;

use std::io;
use std::os::fd::{AsFd, OwnedFd};

pub use config::Config;

/// CPUs this process may run on, in order.
pub fn allowed_cpus() -> Vec<usize> {
    match rustix::thread::sched_getaffinity(None) {
        Ok(set) => (0..rustix::thread::CpuSet::MAX_CPU)
            .filter(|&c| set.is_set(c))
            .collect(),
        Err(_) => (0..std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1))
            .collect(),
    }
}

/// Errors starting the data plane.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// No control socket given.
    #[error("no control socket: pass --control-stdin (as s2cs does) or --control-socket PATH")]
    NoControl,
    /// The control socket could not be set up.
    #[error("control socket: {0}")]
    Control(io::Error),
    /// A data-channel TLS file is unusable.
    #[error("data-channel TLS: {0}")]
    Tls(tls::TlsFileError),
    /// The engine asked for cannot run here.
    #[error("{0}")]
    Engine(io::Error),
    /// The UDP thread could not be created.
    #[error("cannot start the UDP thread: {0}")]
    Udp(io::Error),
    /// A worker could not be created.
    #[error("cannot start worker {id}: {source}")]
    Worker {
        /// Worker number.
        id: usize,
        /// Why.
        source: io::Error,
    },
}

/// Starts workers and serves the control socket until no controller and no
/// session remain.
pub fn run(config: &Config) -> Result<(), StartError> {
    let listener = control_listener(config)?;
    match scistream_protocol::nofile::raise_nofile_limit() {
        Ok(raised) => tracing::debug!(?raised, "RLIMIT_NOFILE"),
        Err(e) => tracing::warn!(error = %e, "cannot raise RLIMIT_NOFILE"),
    }
    let (engine, why) = reactor::choose(config.dp.engine).map_err(StartError::Engine)?;
    match (why, config.dp.engine) {
        (Some(why), reactor::EngineChoice::Auto) => {
            tracing::warn!(reason = %why, "running the epoll engine")
        }
        (Some(why), _) => tracing::info!(reason = %why, "running the epoll engine"),
        (None, _) => {}
    }
    let ktls_support = ktls::KtlsSupport::probe();
    ktls_support.log(config.dp.ktls);
    let crypto = crypto::CryptoPlan::choose(config.dp.crypto, 8 << 20);
    tracing::info!(plan = %crypto.describe(), "data-channel crypto");
    let tls = tls::TlsContext::load(&tls::TlsFiles {
        cert: config.data_cert.clone(),
        key: config.data_key.clone(),
        peer_ca: config.peer_ca.clone(),
        require_client_cert: config.require_client_cert,
        prefer_chacha: ktls_support.prefers_chacha(config.dp.ktls) || config.prefer_chacha,
        crypto: crypto.clone(),
    })
    .map_err(StartError::Tls)?;
    let udp = udp::UdpPlane::start(udp::FlowOptions {
        idle: config.dp.udp_idle,
        queue: config.dp.udp_queue,
        max_flows: config.dp.udp_max_flows,
    })
    .map_err(StartError::Udp)?;
    let options = worker_options(config, &tls, &udp, ktls_support, crypto.crypto);
    let (workers, engine) = start_workers(config, engine, &options)?;
    tracing::info!(
        engine,
        workers = workers.len(),
        pipe_size = config.dp.pipe_size,
        pid = std::process::id(),
        "s2ds started"
    );
    control::run(
        listener,
        control::SessionTable::new(workers, engine, tls, udp),
    )
    .map_err(StartError::Control)
}

/// Where s2cs's commands come from: standard input (s2cs started us with
/// its end of a socket pair) or a Unix socket only this user may use.
fn control_listener(config: &Config) -> Result<OwnedFd, StartError> {
    if config.control_stdin {
        return std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map_err(StartError::Control);
    }
    let Some(path) = &config.control_socket else {
        return Err(StartError::NoControl);
    };
    let _ = std::fs::remove_file(path);
    let l = scistream_protocol::handoff::listen(path).map_err(StartError::Control)?;
    // Whatever the umask, only this user may command the data plane
    // (connections from other users are refused as well).
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(StartError::Control)?;
    Ok(l)
}

/// What every worker is given, from the options.
fn worker_options(
    config: &Config,
    tls: &tls::TlsContext,
    udp: &udp::UdpPlane,
    ktls: ktls::KtlsSupport,
    crypto: record::Crypto,
) -> worker::WorkerOptions {
    worker::WorkerOptions {
        max_open_conns: config.dp.max_open_conns as u64,
        udp: udp.clone(),
        tls: tls.clone(),
        ktls,
        ktls_choice: config.dp.ktls,
        handshake_timeout: config.dp.handshake_timeout,
        rekey_records: config.rekey_records,
        rekey_any_suite: config.rekey_any_suite,
        pipe_size: config.dp.pipe_size,
        sndbuf: config.dp.sndbuf,
        rcvbuf: config.dp.rcvbuf,
        nodelay: !config.dp.no_nodelay,
        keepalive: config.dp.keepalive,
        idle_timeout: (!config.dp.idle_timeout.is_zero()).then_some(config.dp.idle_timeout),
        user_timeout: config.dp.user_timeout,
        forward: config.dp.forward,
        crypto,
        loop_guard: Default::default(),
    }
}

/// One worker per allowed CPU (or `--workers`), each pinned to its CPU
/// unless `--no-pin`; the engine their reactors run.
fn start_workers(
    config: &Config,
    engine: reactor::Engine,
    options: &worker::WorkerOptions,
) -> Result<(Vec<worker::WorkerHandle>, &'static str), StartError> {
    let cpus = allowed_cpus();
    let n = config.dp.workers.unwrap_or(cpus.len()).max(1);
    let mut workers = Vec::with_capacity(n);
    let mut engine_name = "epoll";
    for id in 0..n {
        let cpu = (!config.dp.no_pin)
            .then(|| cpus.get(id % cpus.len().max(1)).copied())
            .flatten();
        let (handle, name) = worker::spawn(id, cpu, engine, options.clone())
            .map_err(|source| StartError::Worker { id, source })?;
        engine_name = name;
        workers.push(handle);
    }
    Ok((workers, engine_name))
}
