//! Cluster mode's [`Operations`]: each call of an authenticated caller is
//! served where its session is. A `req` claims its uid for this node and
//! places its listeners ([`Relay::claim`]); the other calls go to the node
//! holding the session ([`Relay::route`]), which serves a session spread
//! over several nodes on every part ([`super::spread`]). A call for a
//! session held here, or for a part of one (another node's call), is this
//! node's [`Local`] registry's.

use std::str::FromStr;
use std::sync::Arc;

use scistream_protocol::pb;
use tonic::{Response, Status};

use super::directory::{Part, SessionRecord};
use super::relay::{Relay, Rpc, Served};
use super::spread::{self, Caller};
use crate::error::ControlError;
use crate::operations::{Call, Local, Operations, check_status_uid};

/// A node's operations: its own registry, and the other nodes.
#[derive(Debug)]
pub(crate) struct Router {
    local: Local,
    relay: Arc<Relay>,
}

impl Router {
    pub(crate) fn new(local: Local, relay: Arc<Relay>) -> Router {
        Router { local, relay }
    }

    /// The caller, for serving a session spread over nodes.
    fn caller(&self, call: &Call) -> Arc<Caller> {
        Arc::new(Caller {
            registry: self.local.registry.clone(),
            relay: self.relay.clone(),
            who: call.who.clone(),
            metadata: call.metadata.clone(),
            marked: call.marked(),
        })
    }

    /// Where a call for `uid` is served; the parts of its session when it
    /// is here and spread over nodes (of `role`, when the call names one).
    async fn route(
        &self,
        rpc: Rpc,
        call: &Call,
        uid: &str,
        role: Option<&str>,
    ) -> Result<Where, ControlError> {
        let served = self.relay.route(rpc, uid, &call.metadata).await;
        Ok(match served.map_err(|s| ControlError::from_status(&s))? {
            Served::There(node, holder) => Where::There(node, holder),
            Served::Here(record) => Where::Here(spread_parts(record, role)),
            Served::Claimed(_) => Where::Here(Vec::new()),
        })
    }

    /// The answer of the node holding the session, as this node's: its own
    /// errors as they are; a call that did not reach it names it and says
    /// when that answer changes.
    fn passed<T>(
        &self,
        node: &str,
        answer: Result<Response<T>, Status>,
    ) -> Result<T, ControlError> {
        answer.map(Response::into_inner).map_err(|s| {
            let transport = std::error::Error::source(&s).is_some();
            if transport && matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unknown) {
                ControlError::from_status(&self.relay.unanswered(node, &transport_words(&s)))
            } else {
                ControlError::from_status(&s)
            }
        })
    }

    /// Names this node on the sessions it lists that name none.
    fn name_node(&self, mut list: pb::SessionList) -> pb::SessionList {
        for s in &mut list.sessions {
            if s.node.is_empty() {
                s.node = self.relay.node().to_owned();
            }
        }
        list
    }
}

/// Where a call is served.
enum Where {
    /// At another node: its name and a client carrying the caller's credentials.
    There(String, Box<scistream_client::connect::Control>),
    /// Here: the session's parts when it is spread over nodes, else empty.
    Here(Vec<Part>),
}

/// A uid a `req` claimed in etcd: forgotten again when the `req` fails or
/// its caller goes away, so that refused requests leave no keys behind.
struct ClaimGuard {
    relay: Arc<Relay>,
    uid: String,
    armed: bool,
}

impl ClaimGuard {
    fn new(relay: Arc<Relay>, uid: &str) -> Self {
        ClaimGuard {
            relay,
            uid: uid.to_owned(),
            armed: true,
        }
    }

    /// The `req` succeeded: the claim stays.
    fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if self.armed {
            let (relay, uid) = (self.relay.clone(), std::mem::take(&mut self.uid));
            tokio::spawn(async move { relay.forget(&uid).await });
        }
    }
}

/// What went wrong under a call that did not reach its node, in words: the
/// deepest cause (e.g. "Connection refused (os error 111)"), not a
/// library's Debug text.
fn transport_words(s: &Status) -> String {
    let mut cause: &dyn std::error::Error = s;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// The parts of a session spread over several nodes (of `role`, when the
/// call names one); empty when all its listeners are on this node.
fn spread_parts(record: Option<SessionRecord>, role: Option<&str>) -> Vec<Part> {
    let Some(record) = record else {
        return Vec::new();
    };
    let role = role.and_then(|r| scistream_protocol::Role::from_str(r).ok());
    let parts: Vec<Part> = record
        .parts
        .into_iter()
        .filter(|p| role.is_none_or(|r| p.role == r.to_string()))
        .collect();
    if parts.iter().all(|p| p.node == record.node) {
        Vec::new()
    } else {
        parts
    }
}

#[tonic::async_trait]
impl Operations for Router {
    async fn req(&self, call: &Call, m: pb::Request) -> Result<pb::Response, ControlError> {
        let served = self.relay.claim(&m, &call.metadata).await;
        // A uid this req claimed is forgotten again unless the req succeeds.
        let (parts, claim) = match served.map_err(|s| ControlError::from_status(&s))? {
            Served::There(node, mut holder) => return self.passed(&node, holder.req(m).await),
            Served::Claimed(parts) => {
                let claim = Some(ClaimGuard::new(self.relay.clone(), &m.uid));
                (if parts.len() > 1 { parts } else { Vec::new() }, claim)
            }
            Served::Here(_) => (Vec::new(), None),
        };
        let first = self
            .relay
            .part_first_index(&call.metadata)
            .map_err(|s| ControlError::from_status(&s))?;
        let r = if parts.is_empty() {
            self.local.req_at(call, m, first).await
        } else {
            spread::req(self.caller(call), m.uid, m.protocol, parts).await
        };
        if let (Ok(_), Some(claim)) = (&r, claim) {
            claim.keep();
        }
        r
    }

    async fn hello(&self, call: &Call, m: pb::Hello) -> Result<pb::AppResponse, ControlError> {
        match self.route(Rpc::Hello, call, &m.uid, Some(&m.role)).await? {
            Where::There(node, mut holder) => self.passed(&node, holder.hello(m).await),
            Where::Here(parts) if parts.is_empty() => self.local.hello(call, m).await,
            Where::Here(parts) => spread::hello(self.caller(call), m, parts).await,
        }
    }

    async fn update(
        &self,
        call: &Call,
        m: pb::UpdateTargets,
    ) -> Result<pb::Response, ControlError> {
        match self.route(Rpc::Other, call, &m.uid, Some(&m.role)).await? {
            Where::There(node, mut holder) => self.passed(&node, holder.update(m).await),
            Where::Here(parts) if parts.is_empty() => self.local.update(call, m).await,
            Where::Here(parts) => spread::update(self.caller(call), m, parts).await,
        }
    }

    async fn release(&self, call: &Call, m: pb::Release) -> Result<pb::Response, ControlError> {
        let uid = m.uid.clone();
        let released = match self.route(Rpc::Other, call, &uid, None).await? {
            Where::There(node, mut holder) => {
                return self.passed(&node, holder.release(m).await);
            }
            Where::Here(parts) if parts.is_empty() => self.local.release(call, m).await?,
            Where::Here(parts) => {
                let pending = spread::release_parts(&self.caller(call), &uid, &parts).await?;
                pb::Response {
                    pending,
                    ..Default::default()
                }
            }
        };
        self.relay.forget(&uid).await;
        Ok(released)
    }

    async fn status(
        &self,
        call: &Call,
        m: pb::StatusRequest,
    ) -> Result<pb::SessionList, ControlError> {
        let list = match self.route(Rpc::Other, call, &m.uid, None).await? {
            Where::There(node, mut holder) => return self.passed(&node, holder.status(m).await),
            Where::Here(parts) if parts.is_empty() => self.local.status(call, m).await?,
            Where::Here(parts) => {
                check_status_uid(&m)?;
                spread::status(&self.caller(call), &m.uid, &parts, &self.local.rates).await?
            }
        };
        Ok(self.name_node(list))
    }

    /// This node's sessions, then the other nodes'.
    async fn list(&self, call: &Call) -> Result<pb::SessionList, ControlError> {
        let mut list = self.local.list(call).await?;
        for s in &mut list.sessions {
            s.node = self.relay.node().to_owned();
        }
        let elsewhere = self.relay.list_elsewhere(&call.metadata).await;
        list.sessions
            .extend(elsewhere.map_err(|s| ControlError::from_status(&s))?);
        Ok(list)
    }
}
