//! The `scistream.Control` gRPC service: thin glue from tonic to the [`Registry`].

use crate::cluster::directory::{Part, SessionRecord};
use crate::cluster::relay::{Relay, Rpc, Served};
use crate::cluster::spread::{self, Caller};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tokio::sync::Notify;

use scistream_protocol::pb;
use scistream_protocol::pb::control_server::Control;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use tracing::{Instrument, info, warn};

use crate::auth::{Authenticator, Identity};
use crate::error::ControlError;
use crate::sessions::Registry;

/// Counts calls in flight, so a stop can wait for them and no longer.
#[derive(Debug, Default)]
pub struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

/// One call in flight; dropping it (also when tonic drops the call) ends it.
#[derive(Debug)]
pub struct CallGuard(Arc<InFlight>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl InFlight {
    fn enter(self: &Arc<Self>) -> CallGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        CallGuard(self.clone())
    }

    /// Waits until no call is in flight.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct ControlService {
    registry: Arc<Registry>,
    in_flight: Arc<InFlight>,
    auth: Arc<Authenticator>,
    rates: Arc<crate::status::RateMemory>,
    metrics: Arc<crate::metrics::Metrics>,
    /// Cluster mode: calls for sessions another node holds go there.
    relay: Option<Arc<Relay>>,
}

impl ControlService {
    /// A service over `registry`, checking callers with `auth` and
    /// counting its calls in `in_flight`.
    pub fn new(
        registry: Arc<Registry>,
        in_flight: Arc<InFlight>,
        auth: Arc<Authenticator>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        ControlService {
            registry,
            in_flight,
            auth,
            rates: Arc::default(),
            metrics,
            relay: None,
        }
    }

    /// Cluster mode: passes calls on to the node holding their session.
    pub fn with_relay(mut self, relay: Option<Arc<Relay>>) -> Self {
        self.relay = relay;
        self
    }

    /// Where a call for `uid` is served (always here on a single node).
    async fn route<M>(&self, rpc: Rpc, request: &Request<M>, uid: &str) -> Result<Served, Status> {
        match &self.relay {
            Some(relay) if self.admitted(request).await => {
                relay.route(rpc, uid, request.metadata()).await
            }
            _ => Ok(Served::Here(None)),
        }
    }

    /// Cluster mode: only an authenticated caller's call touches etcd (a
    /// claim, a lookup) or another node; any other is answered here, where
    /// it fails its authentication as on a single node. (The node serving
    /// the call checks the caller again; verdicts are cached.)
    async fn admitted<M>(&self, request: &Request<M>) -> bool {
        self.auth.authenticate(request.metadata()).await.is_ok()
    }

    /// Cluster mode: the caller, for serving a session spread over nodes.
    fn caller(&self, relay: &Arc<Relay>, who: Identity, metadata: MetadataMap) -> Arc<Caller> {
        let marked = metadata.contains_key(scistream_protocol::CLIENT_HEADER);
        Arc::new(Caller {
            registry: self.registry.clone(),
            relay: relay.clone(),
            who,
            metadata,
            marked,
        })
    }

    /// One call: authenticate, run `op` as that caller, log the outcome.
    async fn call<M, T, F>(
        &self,
        rpc: &'static str,
        request: Request<M>,
        uid_of: fn(&M) -> &str,
        op: impl FnOnce(Identity, M) -> F,
    ) -> Result<Response<T>, Status>
    where
        F: std::future::Future<Output = Result<T, ControlError>>,
    {
        let _call = self.in_flight.enter();
        let started = Instant::now();
        let source = request.remote_addr().map(|a| a.ip());
        let who = self
            .auth
            .authenticate(request.metadata())
            .await
            .map(|mut who| {
                who.source = source;
                who
            });
        let m = request.into_inner();
        // Every line logged while serving the call names the rpc and the
        // session's tag (never its uid, a secret).
        let uid = uid_of(&m);
        let uid = if uid.is_empty() {
            "-".to_owned()
        } else {
            scistream_protocol::tag::session_tag(uid)
        };
        let span = tracing::info_span!("call", rpc, session = %uid);
        let (who, r) = match who {
            Ok(who) => (Some(who.clone()), op(who, m).instrument(span).await),
            Err(e) => (None, Err(e)),
        };
        self.metrics.observe_call(
            rpc,
            r.as_ref().map(|_| ()).map_err(ControlError::kind),
            started.elapsed(),
        );
        finish(rpc, &uid, who.as_ref(), self.auth.mode(), started, r)
    }
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

/// The answer of the node holding the session, as this node's: its own
/// errors as they are; a call that did not reach it names it and says
/// when that answer changes.
fn passed<T>(
    relay: Option<&Arc<Relay>>,
    node: &str,
    answer: Result<Response<T>, Status>,
) -> Result<Response<T>, Status> {
    answer.map_err(|s| {
        let transport = std::error::Error::source(&s).is_some();
        match relay {
            Some(relay)
                if transport
                    && matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unknown) =>
            {
                relay.unanswered(node, &transport_words(&s))
            }
            _ => s,
        }
    })
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

/// Failed calls logged one by one: 50 per 10 s.
static FAILED_CALLS: crate::logsafe::LogLimit =
    crate::logsafe::LogLimit::new(50, std::time::Duration::from_secs(10));

fn finish<T>(
    rpc: &'static str,
    uid: &str,
    who: Option<&Identity>,
    auth: &'static str,
    started: Instant,
    r: Result<T, ControlError>,
) -> Result<Response<T>, Status> {
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let caller = who.map(|w| w.to_string()).unwrap_or_else(|| "-".into());
    // With --auth none every line says so: nobody was checked.
    let auth = if auth == "none" {
        "NONE (unauthenticated)"
    } else {
        auth
    };
    match r {
        Ok(v) => {
            info!(rpc, session = uid, caller, auth, elapsed_ms, "ok");
            Ok(Response::new(v))
        }
        Err(e) => {
            // Anyone who reaches the port can make calls fail: a burst of
            // lines per window, then one summary line.
            let verdict = FAILED_CALLS.check(std::time::Instant::now());
            if verdict.suppressed_before > 0 {
                warn!(
                    failed = verdict.suppressed_before,
                    window_s = FAILED_CALLS.window().as_secs(),
                    "more control calls failed than logged in the last window (see scistream_control_failures_total)"
                );
            }
            if verdict.log {
                let error = crate::logsafe::escape(&e.to_string());
                warn!(rpc, session = uid, caller, auth, elapsed_ms, code = ?e.code(), %error, "call failed");
            }
            Err(e.into())
        }
    }
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn req(&self, request: Request<pb::Request>) -> Result<Response<pb::Response>, Status> {
        let served = match &self.relay {
            Some(relay) if self.admitted(&request).await => {
                relay.claim(request.get_ref(), request.metadata()).await?
            }
            _ => Served::Here(None),
        };
        // A uid this req claimed is forgotten again unless the req succeeds.
        let mut claim = None;
        let parts = match served {
            Served::There(node, mut holder) => {
                return passed(
                    self.relay.as_ref(),
                    &node,
                    holder.req(request.into_inner()).await,
                );
            }
            Served::Claimed(parts) => {
                claim = self
                    .relay
                    .clone()
                    .map(|r| ClaimGuard::new(r, &request.get_ref().uid));
                if parts.len() > 1 { parts } else { Vec::new() }
            }
            Served::Here(_) => Vec::new(),
        };
        let metadata = request.metadata().clone();
        let marked = metadata.contains_key(scistream_protocol::CLIENT_HEADER);
        let first = match &self.relay {
            Some(relay) => relay.part_first_index(&metadata)?,
            None => 0,
        };
        let r = self
            .call(
                "req",
                request,
                |m| &m.uid,
                |who, m| async move {
                    match &self.relay {
                        Some(relay) if !parts.is_empty() => {
                            spread::req(self.caller(relay, who, metadata), m.uid, m.protocol, parts)
                                .await
                        }
                        _ => self.registry.req_at(&who, m, marked, first).await,
                    }
                },
            )
            .await;
        if let (Ok(_), Some(claim)) = (&r, claim) {
            claim.keep();
        }
        r
    }

    async fn update(
        &self,
        request: Request<pb::UpdateTargets>,
    ) -> Result<Response<pb::Response>, Status> {
        let uid = request.get_ref().uid.clone();
        let parts = match self.route(Rpc::Other, &request, &uid).await? {
            Served::There(node, mut holder) => {
                return passed(
                    self.relay.as_ref(),
                    &node,
                    holder.update(request.into_inner()).await,
                );
            }
            Served::Here(record) => spread_parts(record, Some(&request.get_ref().role)),
            Served::Claimed(_) => Vec::new(),
        };
        let metadata = request.metadata().clone();
        self.call(
            "update",
            request,
            |m| &m.uid,
            |who, m| async move {
                match &self.relay {
                    Some(relay) if !parts.is_empty() => {
                        spread::update(self.caller(relay, who, metadata), m, parts).await
                    }
                    _ => self.registry.update(&who, m).await,
                }
            },
        )
        .await
    }

    async fn release(
        &self,
        request: Request<pb::Release>,
    ) -> Result<Response<pb::Response>, Status> {
        let uid = request.get_ref().uid.clone();
        let parts = match self.route(Rpc::Other, &request, &uid).await? {
            Served::There(node, mut holder) => {
                return passed(
                    self.relay.as_ref(),
                    &node,
                    holder.release(request.into_inner()).await,
                );
            }
            Served::Here(record) => spread_parts(record, None),
            Served::Claimed(_) => Vec::new(),
        };
        let metadata = request.metadata().clone();
        let r = self
            .call(
                "release",
                request,
                |m| &m.uid,
                |who, m| async move {
                    match &self.relay {
                        Some(relay) if !parts.is_empty() => {
                            let caller = self.caller(relay, who, metadata);
                            let pending = spread::release_parts(&caller, &m.uid, &parts).await?;
                            Ok(pb::Response {
                                pending,
                                ..Default::default()
                            })
                        }
                        _ => self.registry.release(&who, m).await,
                    }
                },
            )
            .await;
        if let (Ok(_), Some(relay)) = (&r, &self.relay) {
            relay.forget(&uid).await;
        }
        r
    }

    async fn hello(
        &self,
        request: Request<pb::Hello>,
    ) -> Result<Response<pb::AppResponse>, Status> {
        let uid = request.get_ref().uid.clone();
        let parts = match self.route(Rpc::Hello, &request, &uid).await? {
            Served::There(node, mut holder) => {
                return passed(
                    self.relay.as_ref(),
                    &node,
                    holder.hello(request.into_inner()).await,
                );
            }
            Served::Here(record) => spread_parts(record, Some(&request.get_ref().role)),
            Served::Claimed(_) => Vec::new(),
        };
        let metadata = request.metadata().clone();
        self.call(
            "hello",
            request,
            |m| &m.uid,
            |who, m| async move {
                match &self.relay {
                    Some(relay) if !parts.is_empty() => {
                        spread::hello(self.caller(relay, who, metadata), m, parts).await
                    }
                    _ => self.registry.hello(&who, m).await,
                }
            },
        )
        .await
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::SessionList>, Status> {
        let metadata = request.metadata().clone();
        let mut list = self
            .call(
                "list",
                request,
                |_| "",
                |who, _| async move {
                    crate::status::sessions(&self.registry, &self.rates, &who, None).await
                },
            )
            .await?;
        if let Some(relay) = &self.relay {
            // Cluster mode: this node's sessions, then the other nodes'.
            let sessions = &mut list.get_mut().sessions;
            for s in sessions.iter_mut() {
                s.node = relay.node().to_owned();
            }
            sessions.extend(relay.list_elsewhere(&metadata).await?);
        }
        Ok(list)
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::SessionList>, Status> {
        let uid = request.get_ref().uid.clone();
        let parts = match self.route(Rpc::Other, &request, &uid).await? {
            Served::There(node, mut holder) => {
                return passed(
                    self.relay.as_ref(),
                    &node,
                    holder.status(request.into_inner()).await,
                );
            }
            Served::Here(record) => spread_parts(record, None),
            Served::Claimed(_) => Vec::new(),
        };
        let metadata = request.metadata().clone();
        self.call(
            "status",
            request,
            |m| &m.uid,
            |who, m| async move {
                scistream_protocol::validate_uid(&m.uid)
                    .map_err(|e| ControlError::InvalidArgument(format!("uid: {e}")))?;
                match &self.relay {
                    Some(relay) if !parts.is_empty() => {
                        let caller = self.caller(relay, who, metadata);
                        spread::status(&caller, &m.uid, &parts, &self.rates).await
                    }
                    _ => {
                        crate::status::sessions(&self.registry, &self.rates, &who, Some(&m.uid))
                            .await
                    }
                }
            },
        )
        .await
        .map(|mut list| {
            if let Some(relay) = &self.relay {
                for s in &mut list.get_mut().sessions {
                    if s.node.is_empty() {
                        s.node = relay.node().to_owned();
                    }
                }
            }
            list
        })
    }
}
