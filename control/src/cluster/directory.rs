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

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ClusterError;
use super::etcd::{Etcd, get_op, pb, put_op, unchanged_since};

/// Where a call for a uid is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// On this node; with the session's record when it has one (a `req`
    /// that just claimed the uid has none yet).
    Here(Option<SessionRecord>),
    /// On another node: the session's record (its holder, and where its
    /// listeners are) at this revision of its key.
    There {
        record: SessionRecord,
        revision: i64,
    },
}

/// A session in etcd: the node that holds it (serves its calls) and where
/// its listeners are placed. Keyed by a hash of the uid, which is never
/// written in clear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionRecord {
    pub(crate) node: String,
    pub(crate) control: SocketAddr,
    /// Its listeners' placement, per role (empty: all on the holder).
    #[serde(default)]
    pub(crate) parts: Vec<Part>,
}

/// Some of a session's listeners, on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Part {
    /// PROD or CONS.
    pub(crate) role: String,
    pub(crate) node: String,
    pub(crate) control: SocketAddr,
    /// How many listeners.
    pub(crate) count: usize,
    /// The index of its first listener in the session's list.
    pub(crate) offset: usize,
    /// Its share of the session's rate (the `req`'s units).
    pub(crate) rate: i32,
    /// Its listeners, once bound.
    #[serde(default)]
    pub(crate) listeners: Vec<String>,
    /// Who requested the session (as logs name identities), once bound.
    #[serde(default)]
    pub(crate) owner: String,
    /// Where its listeners forward to (as the `update` gave them), once updated.
    #[serde(default)]
    pub(crate) targets: Vec<String>,
}

/// The cluster's session directory, as one node uses it.
pub(crate) struct Directory {
    etcd: Etcd,
    cluster: String,
    me: SessionRecord,
    /// `--cluster-secret`: session keys are an HMAC of the uid with it.
    secret: Option<ring::hmac::Key>,
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
    pub(crate) fn new(
        etcd: Etcd,
        cluster: String,
        node: String,
        control: SocketAddr,
        secret: Option<&super::options::ClusterSecret>,
    ) -> Directory {
        Directory {
            etcd,
            secret: secret.map(|s| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &s.0)),
            cluster,
            me: SessionRecord {
                node,
                control,
                parts: Vec::new(),
            },
        }
    }

    pub(crate) fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    pub(crate) fn cluster(&self) -> &str {
        &self.cluster
    }

    fn key(&self, uid: &str) -> String {
        let text = format!("{}\n{uid}", self.cluster);
        let hex: String = match &self.secret {
            Some(key) => ring::hmac::sign(key, text.as_bytes()).as_ref()[..16]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            None => Sha256::digest(text.as_bytes())[..16]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        };
        super::keys::session(&self.cluster, &hex)
    }

    fn route_of(&self, value: &[u8], revision: i64) -> Route {
        match serde_json::from_slice::<SessionRecord>(value) {
            Ok(record) if record.node != self.me.node => Route::There { record, revision },
            Ok(h) => Route::Here(Some(h)),
            // Unreadable (written by something else, or damaged): ignored,
            // this node serves the call; said once per call, never the value.
            Err(e) => {
                tracing::warn!(revision, error = %e, "a session record in etcd is not readable; ignored");
                Route::Here(None)
            }
        }
    }

    /// `req`: the uid becomes this node's, with its listeners placed as
    /// `parts` (empty: all here): `None`. When some node (this one too)
    /// holds it already: where.
    pub(crate) async fn claim(
        &self,
        uid: &str,
        parts: &[Part],
    ) -> Result<Option<Route>, ClusterError> {
        let key = self.key(uid);
        let mut record = self.me.clone();
        record.parts = parts.to_vec();
        let value = serde_json::to_vec(&record).map_err(ClusterError::Encode)?;
        let answer = self
            .etcd
            .call("claim a session", |c| {
                let (when, then) = (unchanged_since(&key, 0), put_op(&key, value.clone()));
                let otherwise = get_op(&key);
                async move { c.txn(vec![when], vec![then], vec![otherwise]).await }
            })
            .await?;
        if answer.succeeded {
            return Ok(None);
        }
        let held = answer
            .responses
            .into_iter()
            .find_map(|op| match op.response {
                Some(pb::response_op::Response::ResponseRange(g)) => g
                    .kvs
                    .into_iter()
                    .next()
                    .map(|kv| (kv.value, kv.mod_revision)),
                _ => None,
            });
        Ok(Some(
            held.map_or(Route::Here(None), |(v, r)| self.route_of(&v, r)),
        ))
    }

    /// `hello`, `update`, `release`, `status`: where the uid is held; here
    /// when no node holds it.
    pub(crate) async fn route(&self, uid: &str) -> Result<Route, ClusterError> {
        Ok(self.holder(uid).await?.unwrap_or(Route::Here(None)))
    }

    /// Whether the cluster still holds `uid` (its record is in etcd).
    pub(crate) async fn holds(&self, uid: &str) -> Result<bool, ClusterError> {
        Ok(self.holder(uid).await?.is_some())
    }

    async fn holder(&self, uid: &str) -> Result<Option<Route>, ClusterError> {
        Ok(self.holder_at(uid).await?.0)
    }

    /// Where `uid` is held (if anywhere), and etcd's revision at the read.
    async fn holder_at(&self, uid: &str) -> Result<(Option<Route>, i64), ClusterError> {
        let key = self.key(uid);
        let answer = self
            .etcd
            .call("find a session", |c| {
                let key = key.clone();
                async move { c.get(key, false).await }
            })
            .await?;
        let revision = answer.header.as_ref().map_or(0, |h| h.revision);
        let route = answer
            .kvs
            .first()
            .map(|kv| self.route_of(&kv.value, kv.mod_revision));
        Ok((route, revision))
    }

    /// Like [`Directory::route`], waiting up to `grace` for a holder to
    /// appear (a `hello` that overtook its `req` on another node). It
    /// watches the session's key from the revision it read, so the holder
    /// is seen the moment its claim lands, and etcd is asked nothing more
    /// while it waits.
    pub(crate) async fn route_waiting(
        &self,
        uid: &str,
        grace: Duration,
    ) -> Result<Route, ClusterError> {
        let (held, revision) = self.holder_at(uid).await?;
        if let Some(route) = held {
            return Ok(route);
        }
        let key = self.key(uid);
        let claimed = async {
            let mut watch = self
                .etcd
                .client()
                .watch(key, false, revision + 1)
                .await
                .map_err(|source| ClusterError::Call {
                    what: "watch for a session's claim",
                    source,
                })?;
            while let Some(answer) = watch.message().await.map_err(|source| ClusterError::Call {
                what: "watch for a session's claim",
                source,
            })? {
                let put = answer
                    .events
                    .iter()
                    .filter(|e| e.r#type() == pb::event::EventType::Put)
                    .filter_map(|e| e.kv.as_ref())
                    .next_back();
                if let Some(kv) = put {
                    return Ok(Some(self.route_of(&kv.value, kv.mod_revision)));
                }
            }
            Ok::<_, ClusterError>(None)
        };
        match tokio::time::timeout(grace, claimed).await {
            Ok(Ok(Some(route))) => Ok(route),
            // No claim in time (or the watch ended): served here, where the
            // hello waits for its req or fails as on a single node.
            Ok(Ok(None)) | Err(_) => Ok(Route::Here(None)),
            // The watch failed: one more read decides.
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "watching for a session's claim failed; reading it again");
                self.route(uid).await
            }
        }
    }

    /// Sets the placement of `role`'s listeners in the session's record
    /// (this node holds it).
    pub(crate) async fn set_parts(
        &self,
        uid: &str,
        role: &str,
        parts: &[Part],
    ) -> Result<(), ClusterError> {
        self.modify(uid, |record| {
            record.parts.retain(|p| p.role != role);
            record.parts.extend_from_slice(parts);
        })
        .await
    }

    /// Changes the session's record with `change`: compare-and-swap on the
    /// record's revision (read again and retried when another change landed
    /// first, as when both roles of one uid are placed at once).
    pub(crate) async fn modify(
        &self,
        uid: &str,
        change: impl Fn(&mut SessionRecord),
    ) -> Result<(), ClusterError> {
        let key = self.key(uid);
        for _ in 0..8 {
            let now = self
                .etcd
                .call("read a session's record", |c| {
                    let key = key.clone();
                    async move { c.get(key, false).await }
                })
                .await?;
            let (mut record, revision) = match now.kvs.first() {
                Some(kv) => (
                    serde_json::from_slice(&kv.value).unwrap_or_else(|_| self.me.clone()),
                    kv.mod_revision,
                ),
                None => (self.me.clone(), 0),
            };
            change(&mut record);
            let what = "change a session's record";
            if self.put_if_unchanged(what, &key, &record, revision).await? {
                return Ok(());
            }
        }
        Err(ClusterError::Contended("change a session's record"))
    }

    /// The session's holder is gone from the cluster: this node becomes its
    /// holder, unless the record changed since `revision` (another node took
    /// it over first, or the holder came back): then `None`.
    pub(crate) async fn take_over(
        &self,
        uid: &str,
        record: &SessionRecord,
        revision: i64,
    ) -> Result<Option<SessionRecord>, ClusterError> {
        let key = self.key(uid);
        let mut mine = record.clone();
        mine.node = self.me.node.clone();
        mine.control = self.me.control;
        let put = self.put_if_unchanged("take a session over", &key, &mine, revision);
        Ok(put.await?.then_some(mine))
    }

    /// Writes `record` at `key` if the key is still at `revision` (0: does
    /// not exist); whether it was written.
    async fn put_if_unchanged(
        &self,
        what: &'static str,
        key: &str,
        record: &SessionRecord,
        revision: i64,
    ) -> Result<bool, ClusterError> {
        let value = serde_json::to_vec(record).map_err(ClusterError::Encode)?;
        let answer = self
            .etcd
            .call(what, |c| {
                let (when, then) = (unchanged_since(key, revision), put_op(key, value.clone()));
                async move { c.txn(vec![when], vec![then], Vec::new()).await }
            })
            .await?;
        Ok(answer.succeeded)
    }

    /// `release` at the holder: the uid is no longer held.
    pub(crate) async fn forget(&self, uid: &str) -> Result<(), ClusterError> {
        let key = self.key(uid);
        self.etcd
            .call("forget a session", |c| {
                let key = key.clone();
                async move { c.delete(key).await }
            })
            .await?;
        Ok(())
    }
}
