//! Which node holds a session: one key per session uid in etcd, so that a
//! call reaching any node of the cluster goes to the node that holds the
//! session (clients behind DNS round-robin or a load balancer).
//!
//! The key is a hash of the uid (the uid is the data channel's credential
//! and is never written anywhere in clear). A `req` claims its uid for the
//! node it reached, in one etcd transaction (two nodes claiming at once:
//! one wins, the other passes the call on); `release` at the holder
//! forgets it.

use std::net::SocketAddr;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ClusterError;
use super::etcd::Etcd;
use super::membership::prefix;

/// Where a call for a uid is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// On this node.
    Here,
    /// On another node, reached at its control address.
    There { node: String, control: SocketAddr },
}

#[derive(Debug, Serialize, Deserialize)]
struct Holder {
    node: String,
    control: SocketAddr,
}

/// The cluster's session directory, as one node uses it.
pub(crate) struct Directory {
    etcd: Etcd,
    cluster: String,
    me: Holder,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("cluster", &self.cluster)
            .field("node", &self.me.node)
            .finish_non_exhaustive()
    }
}

impl Directory {
    pub(crate) fn new(etcd: Etcd, cluster: String, node: String, control: SocketAddr) -> Directory {
        Directory {
            etcd,
            cluster,
            me: Holder { node, control },
        }
    }

    pub(crate) fn cluster(&self) -> &str {
        &self.cluster
    }

    fn key(&self, uid: &str) -> String {
        let digest = Sha256::digest(format!("{}\n{uid}", self.cluster).as_bytes());
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        format!("{}sessions/{hex}", prefix(&self.cluster))
    }

    fn route_of(&self, value: &[u8]) -> Route {
        match serde_json::from_slice::<Holder>(value) {
            Ok(h) if h.node != self.me.node => Route::There {
                node: h.node,
                control: h.control,
            },
            // Ours, or unreadable (then this node serves it).
            _ => Route::Here,
        }
    }

    /// `req`: the uid becomes this node's unless another node holds it.
    pub(crate) async fn claim(&self, uid: &str) -> Result<Route, ClusterError> {
        let key = self.key(uid);
        let value = serde_json::to_vec(&self.me).map_err(ClusterError::Encode)?;
        let answer = self
            .etcd
            .call("claim a session", |mut c| {
                let txn = Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key.clone(), value.clone(), None)])
                    .or_else([TxnOp::get(key.clone(), None)]);
                async move { c.txn(txn).await }
            })
            .await?;
        if answer.succeeded() {
            return Ok(Route::Here);
        }
        let held = answer.op_responses().into_iter().find_map(|op| match op {
            etcd_client::TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        });
        Ok(held.map_or(Route::Here, |v| self.route_of(&v)))
    }

    /// `hello`, `update`, `release`, `status`: where the uid is held; here
    /// when no node holds it.
    pub(crate) async fn route(&self, uid: &str) -> Result<Route, ClusterError> {
        Ok(self.holder(uid).await?.unwrap_or(Route::Here))
    }

    async fn holder(&self, uid: &str) -> Result<Option<Route>, ClusterError> {
        let key = self.key(uid);
        let answer = self
            .etcd
            .call("find a session", |mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
        Ok(answer.kvs().first().map(|kv| self.route_of(kv.value())))
    }

    /// Like [`Directory::route`], waiting up to `grace` for a holder to
    /// appear (a `hello` that overtook its `req` on another node).
    pub(crate) async fn route_waiting(
        &self,
        uid: &str,
        grace: Duration,
    ) -> Result<Route, ClusterError> {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            if let Some(route) = self.holder(uid).await? {
                return Ok(route);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(Route::Here);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `release` at the holder: the uid is no longer held.
    pub(crate) async fn forget(&self, uid: &str) -> Result<(), ClusterError> {
        let key = self.key(uid);
        self.etcd
            .call("forget a session", |mut c| {
                let key = key.clone();
                async move { c.delete(key, None).await }
            })
            .await?;
        Ok(())
    }
}
