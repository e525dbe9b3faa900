//! SIGHUP: files re-read while serving (tokens, identities, the control
//! certificate, the data channel's certificate and peer CA), and what
//! systemd is told.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_rustls::TlsAcceptor;
use tracing::{error, info, warn};

use super::{Files, check_data_tls};
use crate::access::Access;
use crate::auth::Authenticator;
use crate::dataplane::DataPlane;
use crate::tls;
use crate::tls::DataTls;

/// The acceptor of the control port, replaced when the certificate is re-read.
pub(super) type SharedAcceptor = Arc<RwLock<TlsAcceptor>>;

pub(super) fn shared_acceptor(config: Arc<rustls::ServerConfig>) -> SharedAcceptor {
    Arc::new(RwLock::new(TlsAcceptor::from(config)))
}

/// The SIGHUP stream, or `None` (warned) when it cannot be caught.
pub(super) fn catch_sighup() -> Option<Signal> {
    signal(SignalKind::hangup())
        .inspect_err(|e| warn!(error = %e, "cannot catch SIGHUP: files are read at start only"))
        .ok()
}

/// What a SIGHUP re-reads.
struct Reloadable {
    auth: Arc<Authenticator>,
    access: Arc<Access>,
    control_cert: Option<(SharedAcceptor, PathBuf, PathBuf)>,
    data_tls: Option<(DataPlane, DataTls)>,
}

/// Re-reads the tokens and identities files, the control certificate and
/// the data channel's files on each SIGHUP. A certificate that does not
/// load is refused (with an error) and the one in use is kept.
pub(super) fn on_sighup(
    hup: Option<Signal>,
    files: &Files,
    acceptor: Option<SharedAcceptor>,
    dataplane: DataPlane,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let (crt, key) = files.control_cert.clone();
    let what = Reloadable {
        auth: files.auth.clone(),
        access: files.access.clone(),
        control_cert: acceptor.map(|a| (a, crt, key)),
        data_tls: files.data_tls.clone().map(|f| (dataplane, f)),
    };
    async move {
        let Some(mut hup) = hup else {
            return;
        };
        while hup.recv().await.is_some() {
            match sd_notify::NotifyState::monotonic_usec_now() {
                Ok(now) => notify_systemd(&[sd_notify::NotifyState::Reloading, now]),
                Err(_) => notify_systemd(&[sd_notify::NotifyState::Reloading]),
            }
            what.reload().await;
            notify_systemd(&[sd_notify::NotifyState::Ready]);
        }
    }
}

impl Reloadable {
    async fn reload(&self) {
        info!("SIGHUP: re-reading certificates, the peer CA bundle, tokens and identities files");
        self.auth.reload();
        self.access.reload();
        if let Some((acceptor, crt, key)) = &self.control_cert {
            match tls::server_config(crt, key) {
                Ok(config) => {
                    *acceptor.write().unwrap_or_else(|p| p.into_inner()) =
                        TlsAcceptor::from(config);
                    info!(cert = %crt.display(), "control certificate re-read; new connections use it");
                }
                Err(e) => {
                    error!(error = %e, "the new control certificate is refused; keeping the one in use")
                }
            }
        }
        if let Some((dataplane, files)) = &self.data_tls {
            reload_data_tls(dataplane, files).await;
        }
    }
}

/// The data channel's certificate, key and peer CA: checked here, then
/// re-read by `s2ds`; a broken file keeps the ones in use.
async fn reload_data_tls(dataplane: &DataPlane, files: &DataTls) {
    if let Err(e) = check_data_tls(files) {
        error!(error = %e, "the new data-channel TLS files are refused; the data plane keeps the ones in use");
        return;
    }
    match dataplane.reload_tls().await {
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
pub(super) fn notify_systemd(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        warn!(error = %e, "cannot notify systemd through NOTIFY_SOCKET");
    }
}
