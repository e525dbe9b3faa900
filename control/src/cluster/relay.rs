//! Passing a call on to the node that holds its session, so that any node
//! of the cluster serves the whole API. The call goes as it came: the same
//! message, the caller's `authorization` value and client mark; the holder
//! authenticates the caller itself, and its answer (or error) is the answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use scistream_client::connect::Control;
use scistream_client::{Auth, Trust};
use scistream_protocol::pb;
use tonic::Status;
use tonic::metadata::{MetadataMap, MetadataValue};
use tracing::{info, warn};

use super::directory::{Directory, Route};
use super::membership::Members;

/// Marks a call one node passes to another on behalf of a caller, so that
/// the receiving node answers for itself only (a `list` is not fanned out
/// again).
pub(crate) const RELAYED_HEADER: &str = "x-scistream-relayed";

/// The node holding a session, and a client of it.
pub(crate) type Holder = (String, Control);

/// The kinds of call, for where they are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rpc {
    /// Claims the uid for this node unless another node holds it.
    Req,
    /// Waits up to the hello grace time for the `req` to reach some node.
    Hello,
    /// Served where the uid is held, here when nowhere.
    Other,
}

/// What a node needs to pass calls on.
#[derive(Debug)]
pub(crate) struct Relay {
    directory: Arc<Directory>,
    members: Arc<Members>,
    /// This node's name.
    node: String,
    /// How this node verifies another node's control service: the
    /// gateway's own certificate (nodes of one gateway share it), or none
    /// under `--insecure`.
    trust: Trust,
    hello_grace: Duration,
}

impl Relay {
    pub(crate) fn new(
        directory: Arc<Directory>,
        members: Arc<Members>,
        node: String,
        trust: Trust,
        hello_grace: Duration,
    ) -> Relay {
        Relay {
            directory,
            members,
            node,
            trust,
            hello_grace,
        }
    }

    /// `None` when the call is served here; else a client of the node that
    /// holds the session, carrying the caller's credentials.
    pub(crate) async fn holder(
        &self,
        rpc: Rpc,
        uid: &str,
        metadata: &MetadataMap,
    ) -> Result<Option<Holder>, Status> {
        if uid.is_empty() {
            return Ok(None);
        }
        let route = match rpc {
            Rpc::Req => self.directory.claim(uid).await,
            Rpc::Hello => self.directory.route_waiting(uid, self.hello_grace).await,
            Rpc::Other => self.directory.route(uid).await,
        }
        .map_err(|e| Status::unavailable(e.to_string()))?;
        let Route::There { node, control } = route else {
            return Ok(None);
        };
        let client = self.connect(&node, control, metadata).await?;
        info!(%node, "passing the call on to the node that holds the session");
        Ok(Some((node, client)))
    }

    async fn connect(
        &self,
        node: &str,
        control: SocketAddr,
        metadata: &MetadataMap,
    ) -> Result<Control, Status> {
        let header = metadata
            .get("authorization")
            .cloned()
            .unwrap_or_else(|| MetadataValue::from_static("INVALID_TOKEN"));
        let marked = metadata.contains_key(scistream_protocol::CLIENT_HEADER);
        let auth = Auth::relayed(header, marked, RELAYED_HEADER);
        match scistream_client::connect(&control.to_string(), &self.trust, auth).await {
            Ok(c) => Ok(c.client),
            Err(e) => Err(Status::unavailable(format!(
                "node {node} ({control}) holds this session and cannot be reached: {e}"
            ))),
        }
    }

    /// (cluster, this node, live nodes now), for the metrics.
    pub(crate) fn view(&self) -> (&str, &str, usize) {
        (self.directory.cluster(), &self.node, self.members.len())
    }

    /// This node's name, shown with its sessions.
    pub(crate) fn node(&self) -> &str {
        &self.node
    }

    /// `list` at this node, for the caller: the other live nodes' own lists
    /// (a node that does not answer is skipped and logged).
    pub(crate) async fn list_elsewhere(&self, metadata: &MetadataMap) -> Vec<pb::SessionStatus> {
        if metadata.contains_key(RELAYED_HEADER) {
            return Vec::new();
        }
        let mut all = Vec::new();
        for (node, control) in self.members.controls() {
            if node == self.node {
                continue;
            }
            let listed = match self.connect(&node, control, metadata).await {
                Ok(mut c) => c.list(pb::ListRequest {}).await,
                Err(e) => Err(e),
            };
            match listed {
                Ok(l) => all.extend(l.into_inner().sessions),
                Err(e) => {
                    warn!(%node, error = %e.message(), "a node's sessions are left out of the list")
                }
            }
        }
        all
    }

    /// `release` served here: the uid is no longer held by this node.
    pub(crate) async fn forget(&self, uid: &str) {
        if let Err(e) = self.directory.forget(uid).await {
            warn!(error = %e, "the released session stays listed in etcd (harmless: its next call is served here)");
        }
    }
}
