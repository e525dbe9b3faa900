//! The `scistream.Control` gRPC service: authenticates each call once,
//! then hands it to the gateway's [`Operations`] (a single gateway's
//! registry, or a cluster node's router).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tokio::sync::Notify;

use scistream_protocol::pb;
use scistream_protocol::pb::control_server::Control;
use tonic::{Request, Response, Status};
use tracing::{Instrument, info, warn};

use crate::auth::{Authenticator, Identity};
use crate::error::ControlError;
use crate::operations::{Call, Operations};

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
    ops: Arc<dyn Operations>,
    in_flight: Arc<InFlight>,
    auth: Arc<Authenticator>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl ControlService {
    /// A service serving `ops`, checking callers with `auth` and counting
    /// its calls in `in_flight`.
    pub(crate) fn new(
        ops: Arc<dyn Operations>,
        in_flight: Arc<InFlight>,
        auth: Arc<Authenticator>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        ControlService {
            ops,
            in_flight,
            auth,
            metrics,
        }
    }

    /// One call: authenticate, run `op` as that caller, log the outcome.
    async fn call<M, T, F>(
        &self,
        rpc: &'static str,
        request: Request<M>,
        uid_of: fn(&M) -> &str,
        op: impl FnOnce(Arc<dyn Operations>, Call, M) -> F,
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
        let (metadata, _, m) = request.into_parts();
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
            Ok(who) => {
                let call = Call {
                    who: who.clone(),
                    metadata,
                };
                let r = op(self.ops.clone(), call, m).instrument(span).await;
                (Some(who), r)
            }
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
        self.call(
            "req",
            request,
            |m| &m.uid,
            |ops, call, m| async move { ops.req(&call, m).await },
        )
        .await
    }

    async fn update(
        &self,
        request: Request<pb::UpdateTargets>,
    ) -> Result<Response<pb::Response>, Status> {
        self.call(
            "update",
            request,
            |m| &m.uid,
            |ops, call, m| async move { ops.update(&call, m).await },
        )
        .await
    }

    async fn release(
        &self,
        request: Request<pb::Release>,
    ) -> Result<Response<pb::Response>, Status> {
        self.call(
            "release",
            request,
            |m| &m.uid,
            |ops, call, m| async move { ops.release(&call, m).await },
        )
        .await
    }

    async fn hello(
        &self,
        request: Request<pb::Hello>,
    ) -> Result<Response<pb::AppResponse>, Status> {
        self.call(
            "hello",
            request,
            |m| &m.uid,
            |ops, call, m| async move { ops.hello(&call, m).await },
        )
        .await
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::SessionList>, Status> {
        self.call(
            "list",
            request,
            |_| "",
            |ops, call, _| async move { ops.list(&call).await },
        )
        .await
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::SessionList>, Status> {
        self.call(
            "status",
            request,
            |m| &m.uid,
            |ops, call, m| async move { ops.status(&call, m).await },
        )
        .await
    }
}
