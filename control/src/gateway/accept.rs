//! Control connections: admitted within the per-source and global limits,
//! each TLS handshake and HTTP/2 preface bounded in time, then handed to
//! tonic.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, Router};
use tracing::{debug, warn};

use super::reload::SharedAcceptor;
use crate::conn_limits::{Admitted, ConnLimits, ConnSlot, Refused, await_preface};

/// Aborts a task when dropped (also when the future holding it is dropped).
pub(super) struct AbortOnDrop(pub(super) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How the accept loop bounds control connections.
#[derive(Debug, Clone)]
pub(super) struct Admission {
    pub(super) limits: Arc<ConnLimits>,
    /// TLS handshake plus HTTP/2 preface must be done within this.
    pub(super) setup_timeout: Duration,
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

/// Serves `router` on the connections `listener` accepts (with TLS when
/// there is an acceptor) until `graceful` completes.
pub(super) async fn serve(
    router: Router,
    listener: TcpListener,
    acceptor: Option<SharedAcceptor>,
    admission: Admission,
    graceful: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    match acceptor {
        Some(acceptor) => {
            let handshake = move |stream| {
                let acceptor = acceptor.read().unwrap_or_else(|p| p.into_inner()).clone();
                async move { acceptor.accept(stream).await }
            };
            serve_on(router, listener, admission, handshake, graceful).await
        }
        None => {
            let handshake = |stream| async { Ok(stream) };
            serve_on(router, listener, admission, handshake, graceful).await
        }
    }
}

async fn serve_on<S, H, F>(
    router: Router,
    listener: TcpListener,
    admission: Admission,
    handshake: H,
    graceful: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error>
where
    S: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    H: Fn(TcpStream) -> F + Send + 'static,
    F: Future<Output = io::Result<S>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    let _accept = AbortOnDrop(tokio::spawn(accept_loop(
        listener, admission, handshake, tx,
    )));
    router
        .serve_with_incoming_shutdown(ReceiverStream::new(rx), graceful)
        .await
}

type Incoming<S> = mpsc::Sender<Result<Admitted<S>, io::Error>>;

/// Accepts connections, admits them, and runs each one's handshake and
/// preface wait on its own task, bounded in time, so a client that stalls
/// mid-handshake (or after it) holds up nobody.
async fn accept_loop<S, H, F>(
    listener: TcpListener,
    admission: Admission,
    handshake: H,
    tx: Incoming<S>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(TcpStream) -> F,
    F: Future<Output = io::Result<S>> + Send + 'static,
{
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS… are transient: pause, don't spin.
                warn!(error = %e, "accepting a control connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(slot) = admission.admit(peer) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let handshake = handshake(stream);
        let deadline = admission.setup_timeout;
        let tx = tx.clone();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let stream = match tokio::time::timeout(deadline, handshake).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return debug!(%peer, error = %e, "control TLS handshake failed"),
                Err(_) => return debug!(%peer, "control TLS handshake timed out"),
            };
            let left = deadline.saturating_sub(started.elapsed());
            match await_preface(stream, slot, left).await {
                Ok(admitted) => {
                    let _ = tx.send(Ok(admitted)).await;
                }
                Err(e) => {
                    debug!(%peer, error = %e, "control connection closed before it spoke HTTP/2")
                }
            }
        });
    }
}
