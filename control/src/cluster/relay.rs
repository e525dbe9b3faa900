//! Passing a call on to the node that holds its session, so that any node
//! of the cluster serves the whole API. The call goes as it came: the same
//! message, the caller's `authorization` value and client mark; the holder
//! authenticates the caller itself, and its answer (or error) is the answer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use scistream_client::connect::Control;
use scistream_client::{Auth, Trust};
use scistream_protocol::pb;
use tokio::sync::OnceCell;
use tonic::Status;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::Channel;
use tracing::{info, warn};

use super::directory::{Directory, Part, Route, SessionRecord};
use super::identity::{NodeKey, Relayed};
use super::membership::Members;
use super::placement::{Candidate, Placement, Share};

/// Marks a call one node passes to another on behalf of a caller, so that
/// the receiving node answers for itself only (a `list` is not fanned out
/// again). Its value says how: `1` passed on to the node holding the
/// session, `part` to a node holding some of its listeners (served there,
/// on that node's own sessions, and not passed on again).
pub(crate) const RELAYED_HEADER: &str = "x-scistream-relayed";

/// Calls refused for a forged or stale node identity, logged: 20 per 10 s.
static FORGED: crate::logsafe::LogLimit =
    crate::logsafe::LogLimit::new(20, Duration::from_secs(10));

/// This node's channels to the others, by (node, control address); each
/// made once.
type Channels = HashMap<(String, SocketAddr), Arc<OnceCell<Channel>>>;

/// Where a call is served.
#[derive(Debug)]
pub(crate) enum Served {
    /// Here; with the session's record in cluster mode once it has one.
    Here(Option<SessionRecord>),
    /// Here: a `req` that has just claimed its uid with this placement.
    Claimed(Vec<Part>),
    /// At another node: its name and a client carrying the caller's credentials.
    There(String, Box<Control>),
}

/// The kinds of call other than `req`, for where they are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rpc {
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
    /// Signs the calls this node passes on, verifies the others' marks.
    node_key: Arc<NodeKey>,
    /// How this node verifies another node's control service: the
    /// gateway's own certificate (nodes of one gateway share it), or none
    /// under `--insecure`.
    trust: Trust,
    hello_grace: Duration,
    placement: Placement,
    /// `--etcd-lease-ttl`: how long a dead node stays a member.
    lease_ttl: Duration,
    /// Whether this node's registration in etcd is live now.
    registered: Arc<std::sync::atomic::AtomicBool>,
    /// One HTTP/2 channel per other node (see [`Relay::connect`]).
    channels: Mutex<Channels>,
}

impl Relay {
    /// The relay of this node of `cluster`: it verifies the other nodes'
    /// control services with `trust` and lets a `hello` wait `hello_grace`
    /// for its `req`.
    pub(crate) fn new(cluster: &super::Cluster, trust: Trust, hello_grace: Duration) -> Relay {
        Relay {
            directory: cluster.directory.clone(),
            members: cluster.members.clone(),
            node: cluster.node.clone(),
            node_key: cluster.node_key.clone(),
            trust,
            hello_grace,
            placement: cluster.settings.placement,
            lease_ttl: cluster.settings.lease_ttl,
            registered: cluster.registered.clone(),
            channels: Mutex::default(),
        }
    }

    /// Where a call for `uid` is served: here (with the session's record,
    /// if any), or at the node that holds the session. A `req` claims the
    /// uid for this node when no node holds it (see [`Relay::claim`]).
    pub(crate) async fn route(
        &self,
        rpc: Rpc,
        uid: &str,
        metadata: &MetadataMap,
    ) -> Result<Served, Status> {
        if uid.is_empty() || self.is_part_call(metadata)? {
            return Ok(Served::Here(None));
        }
        let route = match rpc {
            Rpc::Hello => self.directory.route_waiting(uid, self.hello_grace).await,
            Rpc::Other => self.directory.route(uid).await,
        }
        .map_err(|e| Status::unavailable(e.to_string()))?;
        self.served(uid, route, metadata).await
    }

    async fn served(
        &self,
        uid: &str,
        route: Route,
        metadata: &MetadataMap,
    ) -> Result<Served, Status> {
        let (record, revision) = match route {
            Route::Here(record) => return Ok(Served::Here(record)),
            Route::There { record, revision } => (record, revision),
        };
        let spread = record.parts.iter().any(|p| p.node != record.node);
        if spread && !self.is_live(&record.node) {
            // Its other parts live on: this node serves the session from now
            // on (the lost holder's part shows as lost).
            let taken = self.directory.take_over(uid, &record, revision).await;
            match taken.map_err(|e| Status::unavailable(e.to_string()))? {
                Some(mine) => {
                    warn!(lost = %record.node, "the node holding this session is gone from the cluster; this node holds it now");
                    return Ok(Served::Here(Some(mine)));
                }
                None => {
                    return Err(Status::unavailable(format!(
                        "the node holding this session ({}) is gone and another node is taking it over; retry",
                        record.node
                    )));
                }
            }
        }
        let client = self
            .connect(&record.node, record.control, metadata, "1")
            .await?;
        info!(node = %record.node, session = %scistream_protocol::tag::session_tag(uid), "passing the call on to the node that holds the session");
        Ok(Served::There(record.node, Box::new(client)))
    }

    /// A `req`: places its listeners (`--placement`), then claims the uid
    /// for this node with that placement in one etcd transaction. When
    /// another node holds the uid already, the call goes there.
    pub(crate) async fn claim(
        &self,
        request: &pb::Request,
        metadata: &MetadataMap,
    ) -> Result<Served, Status> {
        if request.uid.is_empty() || self.is_part_call(metadata)? {
            return Ok(Served::Here(None));
        }
        let n = usize::try_from(request.num_conn).unwrap_or(0);
        let spreadable = (2..=scistream_protocol::MAX_LISTENERS_PER_SESSION).contains(&n);
        let parts = match scistream_protocol::Role::from_str(&request.role) {
            Ok(role) if spreadable => self.place(n, request.rate, &role.to_string()).await?,
            // Malformed, out of bounds or one listener: this node answers
            // (and refuses what it must, as a single node does).
            _ => Vec::new(),
        };
        let held = self
            .directory
            .claim(&request.uid, &parts)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        match held {
            None => Ok(Served::Claimed(parts)),
            Some(route) => self.served(&request.uid, route, metadata).await,
        }
    }

    /// The parts of a session of `n` listeners at `rate`: empty when they
    /// all stay here.
    async fn place(&self, n: usize, rate: i32, role: &str) -> Result<Vec<Part>, Status> {
        if self.placement == Placement::Pack {
            return Ok(Vec::new());
        }
        let (nodes, loads) = super::load::read(self.directory.etcd(), self.directory.cluster())
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        if nodes.len() <= 1 {
            return Ok(Vec::new());
        }
        let candidate = |(node, control): (String, SocketAddr)| Candidate {
            load: loads.get(&node).copied().unwrap_or_default(),
            node,
            control,
        };
        let (me, others): (Vec<_>, Vec<_>) = nodes
            .into_iter()
            .map(candidate)
            .partition(|c| c.node == self.node);
        let Some(me) = me.into_iter().next() else {
            // Not registered this moment (etcd was lost): keep it here.
            return Ok(Vec::new());
        };
        let shares = super::placement::plan(n, me, others, self.placement);
        Ok(parts_of(&shares, n, rate, role))
    }

    /// A client of a node holding part of a session, for the caller. The
    /// marker carries the index of the part's first listener in the session.
    pub(crate) async fn part(
        &self,
        part: &Part,
        metadata: &MetadataMap,
    ) -> Result<Control, Status> {
        let how = format!("part;first={}", part.offset);
        self.connect(&part.node, part.control, metadata, &how).await
    }

    /// Whether `node` is registered now.
    pub(crate) fn is_live(&self, node: &str) -> bool {
        self.members.controls().iter().any(|(n, _)| n == node)
    }

    /// Changes the session's record (this node holds it).
    pub(crate) async fn change_record(&self, uid: &str, change: impl Fn(&mut SessionRecord)) {
        if let Err(e) = self.directory.modify(uid, change).await {
            warn!(error = %e, "the session's record in etcd is not up to date; status cannot show a lost part's targets");
        }
    }

    /// Records where `role`'s listeners are, once bound.
    pub(crate) async fn record_parts(&self, uid: &str, role: &str, parts: &[Part]) {
        if let Err(e) = self.directory.set_parts(uid, role, parts).await {
            warn!(error = %e, "the session's listeners are not recorded in etcd; status cannot show them if their node is lost");
        }
    }

    /// A client of `node` carrying the caller's credentials and the relay
    /// marker `how`, on this node's one HTTP/2 channel to that node (made
    /// on first use, kept while it works): the calls of every caller share
    /// it, so a busy node holds one connection per other node, not one per
    /// call waiting for its hello.
    async fn connect(
        &self,
        node: &str,
        control: SocketAddr,
        metadata: &MetadataMap,
        how: &str,
    ) -> Result<Control, Status> {
        // An address from a session record is followed, with the caller's
        // token, only to a live member at the control address it registered:
        // a record naming a dead node, or a live node at another address,
        // is not a reason to send anyone's credentials anywhere.
        let registered = self.members.controls().into_iter().find(|(n, _)| n == node);
        match registered {
            Some((_, at)) if at == control => {}
            Some((_, at)) => {
                warn!(%node, recorded = %control, registered = %at, "a session record names a node at another address than it registered; not followed");
                return Err(Status::unavailable(format!(
                    "node {node}: the session's record names {control}, but the node registered {at}; not followed (ask the gateway's administrators to check etcd)"
                )));
            }
            None => {
                return Err(Status::unavailable(format!(
                    "node {node} ({control}), which holds this session, is not a live member of the cluster now \
                     (stopped, or its lease expired); calls reach the session again once that node is back"
                )));
            }
        }
        let header = metadata
            .get("authorization")
            .cloned()
            .unwrap_or_else(|| MetadataValue::from_static("INVALID_TOKEN"));
        let marked = metadata.contains_key(scistream_protocol::CLIENT_HEADER);
        let mark = self
            .node_key
            .mark(how, &self.node, std::time::SystemTime::now());
        let mark = MetadataValue::try_from(mark.as_str())
            .map_err(|_| Status::internal("cannot write the call's node identity"))?;
        let auth = Auth::relayed(header, marked, (RELAYED_HEADER, mark));
        let channel = self.channel(node, control).await?;
        Ok(scistream_client::connect::with_auth(channel, auth))
    }

    /// The channel to `node`: made once (calls that need it meanwhile wait
    /// for that one connection rather than each opening its own), again
    /// after a failure, and anew when the node's address changes.
    async fn channel(&self, node: &str, control: SocketAddr) -> Result<Channel, Status> {
        let cell = {
            let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
            channels.retain(|(n, c), _| n != node || *c == control);
            channels
                .entry((node.to_owned(), control))
                .or_default()
                .clone()
        };
        let addr = control.to_string();
        let made = cell
            .get_or_try_init(|| scistream_client::connect::channel(&addr, &self.trust))
            .await;
        made.cloned().map_err(|e| {
            let why = match &e {
                scistream_client::ClientError::Unreachable { reason, .. }
                | scistream_client::ClientError::Tls { reason, .. } => reason.clone(),
                other => other.to_string(),
            };
            self.unanswered(&format!("{node} ({control})"), &why)
        })
    }

    /// UNAVAILABLE for a call `node` did not answer, saying when that
    /// changes: a dead node stays a member until its lease expires.
    pub(crate) fn unanswered(&self, node: &str, why: &str) -> Status {
        Status::unavailable(format!(
            "node {node} holds this session and does not answer ({why}); if it died, the cluster \
             notices within {} s (its lease, --etcd-lease-ttl): then a session spread over nodes is taken \
             over by a live node, and one held by that node alone waits for it to come back",
            self.lease_ttl.as_secs().max(1)
        ))
    }

    /// (cluster, this node, live nodes now, registered in etcd now), for
    /// the metrics.
    pub(crate) fn view(&self) -> (&str, &str, usize, bool) {
        (
            self.directory.cluster(),
            &self.node,
            self.members.len(),
            self.registered.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// This node's name, shown with its sessions.
    pub(crate) fn node(&self) -> &str {
        &self.node
    }

    /// `list` at this node, for the caller: the other live nodes' own lists
    /// (a node that does not answer is skipped and logged).
    pub(crate) async fn list_elsewhere(
        &self,
        metadata: &MetadataMap,
    ) -> Result<Vec<pb::SessionStatus>, Status> {
        if self.relayed(metadata)?.is_some() {
            return Ok(Vec::new());
        }
        let mut all = Vec::new();
        for (node, control) in self.members.controls() {
            if node == self.node {
                continue;
            }
            let listed = match self.connect(&node, control, metadata, "1").await {
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
        Ok(all)
    }

    /// The mark of a call another node passed on, verified: `None` for a
    /// call that carries none; PERMISSION_DENIED, changing nothing, for a
    /// mark without a valid node identity (an authenticated user sending
    /// the internal form of a call straight to a node).
    pub(crate) fn relayed(&self, metadata: &MetadataMap) -> Result<Option<Relayed>, Status> {
        let Some(value) = metadata.get(RELAYED_HEADER) else {
            return Ok(None);
        };
        let text = value.to_str().unwrap_or_default();
        let refused = |why: String| {
            let verdict = FORGED.check(std::time::Instant::now());
            if verdict.log {
                warn!(
                    suppressed_before = verdict.suppressed_before,
                    "a call marked as passed on by another node was refused: {why}"
                );
            }
            Err(Status::permission_denied(format!(
                "{RELAYED_HEADER}: {why}; only the nodes of this cluster pass calls on to each other"
            )))
        };
        // A valid MAC is the membership proof: only the cluster's nodes have
        // the key. (Not also "a live member now": a node that has just joined
        // may call before this node's watch has seen it.)
        match self.node_key.verify(text, std::time::SystemTime::now()) {
            Ok(r) => Ok(Some(r)),
            Err(e) => refused(e.to_string()),
        }
    }

    /// Whether this is another node's call for its part of a session
    /// (served here only); refused when its mark does not verify.
    fn is_part_call(&self, metadata: &MetadataMap) -> Result<bool, Status> {
        Ok(self
            .relayed(metadata)?
            .is_some_and(|r| r.how.starts_with("part;")))
    }

    /// The connection index of a part's first listener, from the verified
    /// mark of a call for that part (`part;first=N`); 0 for any other call.
    pub(crate) fn part_first_index(&self, metadata: &MetadataMap) -> Result<u16, Status> {
        let Some(r) = self.relayed(metadata)? else {
            return Ok(0);
        };
        match r.how.strip_prefix("part;first=") {
            Some(n) => n.parse().map_err(|_| {
                Status::invalid_argument(format!("{RELAYED_HEADER}: bad first index"))
            }),
            None => Ok(0),
        }
    }

    /// `release` served here: the uid is no longer held by this node.
    pub(crate) async fn forget(&self, uid: &str) {
        if let Err(e) = self.directory.forget(uid).await {
            warn!(error = %e, "the released session stays listed in etcd (harmless: its next call is served here)");
        }
    }
}

/// Parts from shares: offsets in the session's listener list, and each
/// part's share of the rate (a rate of 0 or less, no cap, stays as it is).
fn parts_of(shares: &[Share], n: usize, rate: i32, role: &str) -> Vec<Part> {
    let mut offset = 0;
    shares
        .iter()
        .map(|s| {
            let share = if rate > 0 {
                let r = i64::from(rate) * s.count as i64 / n.max(1) as i64;
                i32::try_from(r.max(1)).unwrap_or(rate)
            } else {
                rate
            };
            let part = Part {
                role: role.to_owned(),
                node: s.node.clone(),
                control: s.control,
                count: s.count,
                offset,
                rate: share,
                listeners: Vec::new(),
                owner: String::new(),
                targets: Vec::new(),
            };
            offset += s.count;
            part
        })
        .collect()
}
