//! Membership: each node registers itself under an etcd lease it keeps
//! alive, and watches the others come and go. A node that dies or is cut
//! off from etcd disappears when its lease expires (`--etcd-lease-ttl`);
//! a node that loses etcd and gets it back registers again.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::ClusterError;
use super::etcd::{Client, Etcd, EtcdError, pb};
use super::options::ClusterSettings;

/// What a node says about itself in etcd.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct NodeRecord {
    pub(crate) node: String,
    /// Where its data listeners are (advertised to clients).
    pub(crate) listener_ip: IpAddr,
    /// Its control service.
    pub(crate) control: SocketAddr,
    /// `--capacity` in bit/s, if set.
    pub(crate) capacity_bps: Option<u64>,
    /// CPUs its data plane may use.
    pub(crate) cores: usize,
    /// `up` while its `s2ds` runs.
    pub(crate) data_plane: String,
    pub(crate) version: String,
}

/// The nodes registered now, as this node's watch sees them.
#[derive(Debug, Default)]
pub(crate) struct Members {
    nodes: RwLock<BTreeMap<String, NodeRecord>>,
}

impl Members {
    /// The live nodes' control addresses, by name.
    pub(crate) fn controls(&self) -> Vec<(String, SocketAddr)> {
        let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        nodes
            .values()
            .map(|r| (r.node.clone(), r.control))
            .collect()
    }

    /// How many nodes are live.
    pub(crate) fn len(&self) -> usize {
        self.nodes.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The live nodes' names, for log lines.
    pub(crate) fn names(&self) -> Vec<String> {
        let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        nodes.keys().cloned().collect()
    }

    fn set(&self, nodes: BTreeMap<String, NodeRecord>) {
        *self.nodes.write().unwrap_or_else(|p| p.into_inner()) = nodes;
    }

    /// Records a change; returns whether the node is new.
    fn put(&self, record: NodeRecord) -> bool {
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        nodes.insert(record.node.clone(), record).is_none()
    }

    fn remove(&self, node: &str) -> bool {
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        nodes.remove(node).is_some()
    }
}

/// Bounds an etcd call: its error, or a timeout, names what was tried.
pub(crate) async fn bounded<T, E: Into<EtcdError>>(
    what: &'static str,
    timeout: Duration,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, ClusterError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(ClusterError::Call {
            what,
            source: source.into(),
        }),
        Err(_) => Err(ClusterError::Timeout {
            what,
            after: timeout,
        }),
    }
}

/// This node's registration: its lease, renewed by [`Registration::keep`].
pub(crate) struct Registration {
    etcd: Etcd,
    settings: ClusterSettings,
    record: NodeRecord,
    /// The lease now (a new one after each registration); shared with
    /// [`super::Cluster`] to revoke it on leaving.
    lease: Arc<AtomicI64>,
    /// Whether the registration is live now (for the metrics).
    registered: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("settings", &self.settings)
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

impl Registration {
    /// Registers the node under a new lease. Taking over a name that is
    /// still registered (this node's previous run, or another `s2cs` given
    /// the same `--node`) is allowed, and said.
    pub(crate) async fn register(
        etcd: Etcd,
        settings: ClusterSettings,
        record: NodeRecord,
    ) -> Result<Registration, ClusterError> {
        let mut r = Registration {
            etcd,
            settings,
            record,
            lease: Arc::new(AtomicI64::new(0)),
            registered: Arc::default(),
        };
        r.put_record().await?;
        Ok(r)
    }

    fn key(&self) -> String {
        format!(
            "{}{}",
            super::keys::nodes(&self.settings.cluster),
            self.record.node
        )
    }

    async fn put_record(&mut self) -> Result<(), ClusterError> {
        let key = self.key();
        let old = self
            .etcd
            .call("read this node's key", |c| {
                let key = key.clone();
                async move { c.get(key, false).await }
            })
            .await?;
        if !old.kvs.is_empty() {
            warn!(node = %self.record.node, "this node name was registered already (a previous run, or another s2cs with the same --node); taking it over");
        }
        let ttl = self.settings.lease_ttl.as_secs().max(2) as i64;
        let lease = self
            .etcd
            .call("grant a lease", |c| async move { c.lease_grant(ttl).await })
            .await?;
        let value = serde_json::to_vec(&self.record).map_err(ClusterError::Encode)?;
        let id = lease.id;
        self.etcd
            .call("register this node", |c| {
                let (key, value) = (key.clone(), value.clone());
                async move { c.put(key, value, id).await }
            })
            .await?;
        self.lease.store(id, Ordering::Relaxed);
        self.registered.store(true, Ordering::Relaxed);
        info!(cluster = %self.settings.cluster, node = %self.record.node, ttl_s = ttl, "registered in the cluster");
        Ok(())
    }

    /// Keeps the lease alive for as long as the future runs; when etcd is
    /// lost, retries every second and registers again once it is back.
    pub(crate) async fn keep(mut self) {
        loop {
            let e = self.keep_alive().await;
            self.registered.store(false, Ordering::Relaxed);
            warn!(error = %e, "lost the cluster registration; registering again when etcd answers");
            self.etcd.rotate();
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                match self.put_record().await {
                    Ok(()) => break,
                    Err(e) => warn!(error = %e, "etcd still unavailable"),
                }
            }
        }
    }

    /// Renews the lease every third of its time to live until that fails.
    async fn keep_alive(&mut self) -> ClusterError {
        let t = self.settings.timeout;
        let lease = self.lease.load(Ordering::Relaxed);
        let client = self.etcd.client();
        let (keeper, mut answers) =
            match bounded("keep the lease alive", t, client.lease_keep_alive(lease)).await {
                Ok(k) => k,
                Err(e) => return e,
            };
        let every = self.settings.lease_ttl / 3;
        loop {
            if let Err(e) = bounded("renew the lease", t, keeper.keep_alive()).await {
                return e;
            }
            match bounded("renew the lease", t, answers.message()).await {
                Ok(Some(a)) if a.ttl > 0 => {}
                Ok(_) => return ClusterError::LeaseExpired,
                Err(e) => return e,
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Leaves the cluster at once (graceful stop): the lease is revoked, so
    /// the other nodes see this one go now rather than after its TTL.
    pub(crate) async fn leave(etcd: &Etcd, lease: i64) {
        let revoke = etcd.call("revoke the lease", |c| async move {
            c.lease_revoke(lease).await
        });
        match revoke.await {
            Ok(_) => info!("left the cluster"),
            Err(e) => {
                warn!(error = %e, "could not leave the cluster cleanly; the other nodes see this one go when its lease expires")
            }
        }
    }

    pub(crate) fn lease(&self) -> Arc<AtomicI64> {
        self.lease.clone()
    }

    pub(crate) fn registered(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.registered.clone()
    }
}

/// Reads the registered nodes into `members` once: a node knows its
/// cluster before it serves (see [`super::Cluster::join`]). Returns the
/// revision read, from which [`watch_members`] follows the changes.
pub(crate) async fn read_members(
    etcd: &Etcd,
    settings: &ClusterSettings,
    members: &Members,
) -> Result<i64, ClusterError> {
    read_once(
        &etcd.client(),
        &super::keys::nodes(&settings.cluster),
        settings.timeout,
        members,
    )
    .await
}

/// Keeps `members` up to date from etcd: a watch from `revision` (the
/// first read's), then after an error a fresh read and a watch from it.
pub(crate) async fn watch_members(
    etcd: Etcd,
    settings: ClusterSettings,
    members: Arc<Members>,
    mut revision: i64,
) {
    let prefix = super::keys::nodes(&settings.cluster);
    loop {
        let client = etcd.client();
        let watched = async {
            if revision == 0 {
                revision = read_once(&client, &prefix, settings.timeout, &members).await?;
            }
            follow(&client, &prefix, settings.timeout, &members, revision).await
        };
        if let Err(e) = watched.await {
            warn!(error = %e, "watching the cluster's nodes failed; watching again");
            etcd.rotate();
        }
        revision = 0;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn read_once(
    client: &Client,
    prefix: &str,
    timeout: Duration,
    members: &Members,
) -> Result<i64, ClusterError> {
    let now = bounded(
        "read the cluster's nodes",
        timeout,
        client.get(prefix, true),
    )
    .await?;
    members.set(nodes_of(&now.kvs));
    info!(nodes = ?members.names(), "cluster nodes");
    Ok(now.header.map(|h| h.revision).unwrap_or(0))
}

/// The readable node records among `kvs` (the nodes prefix's keys), by name.
pub(crate) fn nodes_of(kvs: &[pb::KeyValue]) -> BTreeMap<String, NodeRecord> {
    kvs.iter()
        .filter_map(|kv| serde_json::from_slice::<NodeRecord>(&kv.value).ok())
        .map(|r| (r.node.clone(), r))
        .collect()
}

/// Applies the changes after `revision` until the watch ends or fails.
async fn follow(
    client: &Client,
    prefix: &str,
    timeout: Duration,
    members: &Members,
    revision: i64,
) -> Result<(), ClusterError> {
    let mut stream = bounded(
        "watch the cluster's nodes",
        timeout,
        client.watch(prefix, true, revision + 1),
    )
    .await?;
    while let Some(answer) = stream
        .message()
        .await
        .map_err(|source| ClusterError::Call {
            what: "watch the cluster's nodes",
            source,
        })?
    {
        for event in &answer.events {
            apply(members, prefix, event);
        }
    }
    Ok(())
}

/// One change of the nodes' keys, applied to `members` (joins and leaves logged).
fn apply(members: &Members, prefix: &str, event: &pb::Event) {
    let Some(kv) = &event.kv else {
        return;
    };
    let key = String::from_utf8_lossy(&kv.key);
    let name = key.trim_start_matches(prefix);
    match event.r#type() {
        pb::event::EventType::Put => match serde_json::from_slice::<NodeRecord>(&kv.value) {
            Ok(r) => {
                if members.put(r) {
                    info!(node = %name, nodes = ?members.names(), "a node joined the cluster");
                }
            }
            Err(e) => warn!(node = %name, error = %e, "a node's record is not readable; ignored"),
        },
        pb::event::EventType::Delete => {
            if members.remove(name) {
                info!(node = %name, nodes = ?members.names(), "a node left the cluster (it stopped, or its lease expired)");
            }
        }
    }
}
