//! This node's clients of the etcd members: one per member, tried in turn,
//! so that a dead member costs a call at most one attempt and the members
//! that answer carry on (a single balanced channel over all members was
//! seen to hang on a killed member until the call's deadline).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

mod client;

use client::EtcdTls;
pub(crate) use client::{Client, EtcdError, get_op, pb, prefix_op, put_op, unchanged_since};

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
        let tls = match &settings.ca {
            Some(ca) => Some(EtcdTls {
                ca_pem: read(ca)?,
                identity_pem: match &settings.identity {
                    Some((cert, key)) => Some((read(cert)?, read(key)?)),
                    None => None,
                },
            }),
            None => None,
        };
        let clients = settings
            .endpoints
            .iter()
            .map(|url| Client::lazy(url, tls.as_ref(), t))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| ClusterError::Call {
                what: "connect",
                source,
            })?;
        let etcd = Etcd {
            clients: clients.into(),
            preferred: Arc::default(),
            timeout: t,
        };
        let reached = etcd.call("reach a member", |c| async move { c.status().await });
        match reached.await {
            Err(e) if settings.ca.is_some() && settings.identity.is_none() => {
                return Err(ClusterError::NoClientCertificate(Box::new(e)));
            }
            other => other?,
        };
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
        Fut: Future<Output = Result<T, EtcdError>>,
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
