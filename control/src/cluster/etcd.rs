//! This node's clients of the etcd members: one per member, tried in turn,
//! so that a dead member costs a call at most one attempt and the members
//! that answer carry on (a single balanced channel over all members was
//! seen to hang on a killed member until the call's deadline).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use super::ClusterError;
use super::options::ClusterSettings;

/// Clients of every etcd member, and which one answered last.
#[derive(Clone)]
pub(crate) struct Etcd {
    clients: Arc<[Client]>,
    preferred: Arc<AtomicUsize>,
    timeout: Duration,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("members", &self.clients.len())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Etcd {
    /// Clients of the members (TLS when a CA is given), and one call that
    /// shows some member answers within `--etcd-timeout`.
    pub(crate) async fn connect(settings: &ClusterSettings) -> Result<Etcd, ClusterError> {
        let t = settings.timeout;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(t)
            .with_keep_alive(Duration::from_secs(5), t);
        if let Some(ca) = &settings.ca {
            let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read(ca)?));
            if let Some((cert, key)) = &settings.identity {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            options = options.with_tls(tls);
        }
        let mut clients = Vec::new();
        for endpoint in &settings.endpoints {
            let connect = Client::connect([endpoint.as_str()], Some(options.clone()));
            clients.push(super::membership::bounded("connect", t, connect).await?);
        }
        let etcd = Etcd {
            clients: clients.into(),
            preferred: Arc::default(),
            timeout: t,
        };
        etcd.call("reach a member", |mut c| async move { c.status().await })
            .await?;
        Ok(etcd)
    }

    /// Runs `call` on the member that answered last, then on the others in
    /// turn, until one answers; the whole bounded by `--etcd-timeout`.
    pub(crate) async fn call<T, F, Fut>(
        &self,
        what: &'static str,
        call: F,
    ) -> Result<T, ClusterError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let n = self.clients.len();
        let start = self.preferred.load(Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + self.timeout;
        let per_attempt = (self.timeout / n.max(1) as u32).max(Duration::from_secs(1));
        let mut last = ClusterError::Timeout {
            what,
            after: self.timeout,
        };
        for k in 0..n {
            let i = (start + k) % n;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            match tokio::time::timeout(per_attempt.min(left), call(self.clients[i].clone())).await {
                Ok(Ok(v)) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(v);
                }
                Ok(Err(source)) => last = ClusterError::Call { what, source },
                Err(_) => {
                    last = ClusterError::Timeout {
                        what,
                        after: self.timeout,
                    }
                }
            }
        }
        Err(last)
    }

    /// The client of the member that answered last, for streams (watch,
    /// lease keep-alive).
    pub(crate) fn client(&self) -> Client {
        self.clients[self.preferred.load(Ordering::Relaxed) % self.clients.len()].clone()
    }

    /// A stream on the preferred member failed: prefer the next one.
    pub(crate) fn rotate(&self) {
        let n = self.clients.len();
        let _ = self
            .preferred
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |i| Some((i + 1) % n));
    }
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, ClusterError> {
    std::fs::read(path).map_err(|source| ClusterError::TlsFile {
        path: path.display().to_string(),
        source,
    })
}
