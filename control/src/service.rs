//! The `scistream.Control` gRPC service: thin glue from tonic to the [`Registry`].

use std::sync::Arc;
use std::time::Instant;

use scistream_protocol::pb;
use scistream_protocol::pb::control_server::Control;
use tonic::{Request, Response, Status};
use tracing::{debug, warn};

use crate::error::ControlError;
use crate::sessions::Registry;

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct ControlService {
    registry: Arc<Registry>,
}

impl ControlService {
    /// A service over `registry`.
    pub fn new(registry: Arc<Registry>) -> Self {
        ControlService { registry }
    }
}

fn finish<T>(
    rpc: &'static str,
    uid: &str,
    started: Instant,
    r: Result<T, ControlError>,
) -> Result<Response<T>, Status> {
    let elapsed_ms = started.elapsed().as_millis() as u64;
    match r {
        Ok(v) => {
            debug!(rpc, uid, elapsed_ms, "ok");
            Ok(Response::new(v))
        }
        Err(e) => {
            warn!(rpc, uid, elapsed_ms, code = ?e.code(), error = %e, "call failed");
            Err(e.into())
        }
    }
}

/// A uid safe to put in a log line, whatever the caller sent.
fn loggable(uid: &str) -> String {
    uid.chars()
        .take(64)
        .filter(|c| c.is_ascii_graphic())
        .collect()
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn req(&self, request: Request<pb::Request>) -> Result<Response<pb::Response>, Status> {
        let started = Instant::now();
        let r = request.into_inner();
        let uid = loggable(&r.uid);
        finish("req", &uid, started, self.registry.req(r).await)
    }

    async fn update(
        &self,
        request: Request<pb::UpdateTargets>,
    ) -> Result<Response<pb::Response>, Status> {
        let started = Instant::now();
        let r = request.into_inner();
        let uid = loggable(&r.uid);
        finish("update", &uid, started, self.registry.update(r).await)
    }

    async fn release(
        &self,
        request: Request<pb::Release>,
    ) -> Result<Response<pb::Response>, Status> {
        let started = Instant::now();
        let r = request.into_inner();
        let uid = loggable(&r.uid);
        finish("release", &uid, started, self.registry.release(r).await)
    }

    async fn hello(
        &self,
        request: Request<pb::Hello>,
    ) -> Result<Response<pb::AppResponse>, Status> {
        let started = Instant::now();
        let r = request.into_inner();
        let uid = loggable(&r.uid);
        finish("hello", &uid, started, self.registry.hello(r).await)
    }
}
