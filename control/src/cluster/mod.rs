//! Cluster mode: one gateway spread over several `s2cs` nodes, coordinated
//! through etcd (`--cluster NAME --etcd URL… --node NAME`).
//!
//! Each node registers itself under a lease it keeps alive and watches the
//! other nodes ([`membership`]); etcd holds which node holds each session
//! and where its parts are ([`directory`]); a `req` places a session's
//! listeners over the nodes ([`placement`], [`load`]) and its holder serves
//! the session's calls on every part ([`spread`]); a call for a session
//! another node holds is passed on to it ([`relay`]), signed with the
//! node's identity ([`identity`]). [`router`] is the cluster's
//! [`crate::operations::Operations`], the one entry the gRPC service calls;
//! [`keys`] is the whole etcd key layout. Single-node mode (no
//! `--cluster`) does not touch etcd at all. docs/CLUSTER.md says what a
//! cluster does and what is missing.

pub(crate) mod directory;
pub(crate) mod etcd;
pub(crate) mod identity;
pub(crate) mod keys;
mod load;
pub(crate) mod membership;
pub(crate) mod options;
pub(crate) mod placement;
pub(crate) mod relay;
pub(crate) mod router;
pub(crate) mod spread;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use membership::{Members, NodeRecord, Registration};
pub use options::ClusterOptions;
pub(crate) use options::ClusterSettings;

/// What went wrong talking to etcd.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// etcd could not be reached or refused the call.
    #[error("etcd: cannot {what}: {source}")]
    Call {
        /// What was being done.
        what: &'static str,
        /// Why.
        source: etcd::EtcdError,
    },
    /// etcd did not answer in time (quorum lost, or unreachable).
    #[error("etcd: cannot {what}: no answer within {after:?} (is etcd up, with a quorum?)")]
    Timeout {
        /// What was being done.
        what: &'static str,
        /// The bound (`--etcd-timeout`).
        after: Duration,
    },
    /// etcd over TLS did not answer a node that has no client certificate.
    #[error(
        "{0}; if etcd asks its clients for certificates (etcd --client-cert-auth), give this node's with --etcd-cert and --etcd-key"
    )]
    NoClientCertificate(Box<ClusterError>),
    /// This node's lease expired before it was renewed.
    #[error("etcd: this node's lease expired before it was renewed")]
    LeaseExpired,
    /// A TLS file for etcd could not be read.
    #[error("etcd TLS: cannot read {path}: {source}")]
    TlsFile {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Other writers kept changing a record this node tried to change.
    #[error("etcd: cannot {0}: the record kept changing under this node; try again")]
    Contended(&'static str),
    /// A record could not be encoded.
    #[error("etcd: cannot encode a record: {0}")]
    Encode(serde_json::Error),
    /// The system's random source failed.
    #[error("cannot draw random bytes: {0}")]
    Random(String),
    /// The node key in etcd is missing or too short (written by something else).
    #[error(
        "etcd: the cluster's node key (/scistream/CLUSTER/node-key) is unreadable or shorter than 16 bytes; delete it so that the next node writes a new one"
    )]
    NodeKey,
}

/// This node's membership while `s2cs` runs.
pub(crate) struct Cluster {
    etcd: etcd::Etcd,
    settings: ClusterSettings,
    lease: Arc<std::sync::atomic::AtomicI64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    directory: Arc<directory::Directory>,
    members: Arc<Members>,
    node: String,
    /// Signs the calls this node passes on, verifies the others'.
    node_key: Arc<identity::NodeKey>,
    /// Whether this node's registration in etcd is live now.
    registered: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Connects to etcd, registers this node and starts keeping its lease
    /// alive and watching the other nodes. Fails (naming etcd) when etcd
    /// does not answer within `--etcd-timeout`.
    pub(crate) async fn join(
        settings: ClusterSettings,
        record: NodeRecord,
    ) -> Result<Cluster, ClusterError> {
        let etcd = etcd::Etcd::connect(&settings).await?;
        let node = record.node.clone();
        if settings.secret.is_none() {
            tracing::warn!(
                "no --cluster-secret: session keys in etcd are an unkeyed hash of the uid, which anyone who can read etcd can search offline for guessable uids; give every node the same secret file"
            );
        }
        let directory = Arc::new(directory::Directory::new(
            etcd.clone(),
            settings.cluster.clone(),
            record.node.clone(),
            record.control,
            settings.secret.as_ref(),
        ));
        let node_key = Arc::new(identity::NodeKey::for_cluster(&etcd, &settings).await?);
        let registration = Registration::register(etcd.clone(), settings.clone(), record).await?;
        let lease = registration.lease();
        let registered = registration.registered();
        // The cluster's nodes are known before this node serves: a request
        // made as soon as its control port answers is placed over them all.
        let members = Arc::new(Members::default());
        let revision = membership::read_members(&etcd, &settings, &members).await?;
        let watch =
            membership::watch_members(etcd.clone(), settings.clone(), members.clone(), revision);
        let tasks = vec![tokio::spawn(registration.keep()), tokio::spawn(watch)];
        Ok(Cluster {
            etcd,
            settings,
            lease,
            tasks,
            directory,
            members,
            node,
            node_key,
            registered,
        })
    }

    /// What this node needs to pass calls on to the node holding their
    /// session.
    pub(crate) fn relay(
        &self,
        trust: scistream_client::Trust,
        hello_grace: Duration,
    ) -> relay::Relay {
        relay::Relay::new(self, trust, hello_grace)
    }

    /// Publishes this node's load (what placement reads) from now on.
    pub(crate) fn publish_load(&mut self, registry: Arc<crate::sessions::Registry>) {
        let task = load::publish(
            self.etcd.clone(),
            self.settings.cluster.clone(),
            self.node.clone(),
            self.lease.clone(),
            registry,
        );
        self.tasks.push(tokio::spawn(task));
    }

    /// Releases the sessions recovered from this node's state directory
    /// that the cluster no longer holds: released at another node while
    /// this one was down (or cut off). Without this, a restarted node would
    /// bring a released capability back to life and hold its ports.
    pub(crate) async fn drop_released(&self, registry: &crate::sessions::Registry) {
        for uid in registry.uids() {
            match self.directory.holds(&uid).await {
                Ok(true) => {}
                Ok(false) => {
                    let n = registry
                        .release_here(
                            &uid,
                            "the cluster (released at another node while this one was away)",
                        )
                        .await;
                    tracing::info!(
                        session = %scistream_protocol::tag::session_tag(&uid),
                        released = n,
                        "a recovered session was released elsewhere meanwhile; released here too"
                    );
                }
                Err(e) => tracing::warn!(
                    session = %scistream_protocol::tag::session_tag(&uid),
                    error = %e,
                    "cannot tell whether a recovered session is still held; kept"
                ),
            }
        }
    }

    /// The nodes this node knows (itself included), read before it serves.
    pub(crate) fn nodes(&self) -> Vec<String> {
        self.members.names()
    }

    /// The cluster's name.
    pub(crate) fn name(&self) -> &str {
        &self.settings.cluster
    }

    /// Leaves the cluster: the registration is revoked at once.
    pub(crate) async fn leave(self) {
        for t in &self.tasks {
            t.abort();
        }
        let lease = self.lease.load(Ordering::Relaxed);
        Registration::leave(&self.etcd, lease).await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
