//! The session operations of an authenticated caller: what the gRPC
//! service calls once it has checked who is calling. A single gateway
//! serves them from its own [`Registry`] ([`Local`]); a node of a cluster
//! routes them over its registry and the other nodes
//! ([`crate::cluster::router::Router`]). The service neither knows nor
//! cares which.

use std::sync::Arc;

use scistream_protocol::pb;
use tonic::metadata::MetadataMap;

use crate::auth::Identity;
use crate::error::ControlError;
use crate::sessions::Registry;
use crate::status::RateMemory;

/// One authenticated call: who makes it, and its headers (passed on to
/// other nodes, which check the caller themselves).
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub(crate) who: Identity,
    pub(crate) metadata: MetadataMap,
}

impl Call {
    /// Whether the call comes from this project's client (its rates are
    /// meant as given; see [`crate::sessions::Policy`]).
    pub(crate) fn marked(&self) -> bool {
        self.metadata
            .contains_key(scistream_protocol::CLIENT_HEADER)
    }
}

/// What a caller can do with sessions.
#[tonic::async_trait]
pub(crate) trait Operations: Send + Sync + std::fmt::Debug {
    async fn req(&self, call: &Call, m: pb::Request) -> Result<pb::Response, ControlError>;
    async fn hello(&self, call: &Call, m: pb::Hello) -> Result<pb::AppResponse, ControlError>;
    async fn update(&self, call: &Call, m: pb::UpdateTargets)
    -> Result<pb::Response, ControlError>;
    async fn release(&self, call: &Call, m: pb::Release) -> Result<pb::Response, ControlError>;
    async fn status(
        &self,
        call: &Call,
        m: pb::StatusRequest,
    ) -> Result<pb::SessionList, ControlError>;
    async fn list(&self, call: &Call) -> Result<pb::SessionList, ControlError>;
}

/// A single gateway: every operation on its own registry.
#[derive(Debug, Clone)]
pub(crate) struct Local {
    pub(crate) registry: Arc<Registry>,
    /// The previous sample of each session's counters, for its rates.
    pub(crate) rates: Arc<RateMemory>,
}

impl Local {
    pub(crate) fn new(registry: Arc<Registry>) -> Local {
        Local {
            registry,
            rates: Arc::default(),
        }
    }

    /// `req` of a session whose first listener is connection `first` of
    /// the session (0, but for a cluster node's part of a spread session).
    pub(crate) async fn req_at(
        &self,
        call: &Call,
        m: pb::Request,
        first: u16,
    ) -> Result<pb::Response, ControlError> {
        self.registry
            .req_at(&call.who, m, call.marked(), first)
            .await
    }
}

/// `status` names a session by its uid, which must be well formed.
pub(crate) fn check_status_uid(m: &pb::StatusRequest) -> Result<(), ControlError> {
    scistream_protocol::validate_uid(&m.uid)
        .map_err(|e| ControlError::InvalidArgument(format!("uid: {e}")))
}

#[tonic::async_trait]
impl Operations for Local {
    async fn req(&self, call: &Call, m: pb::Request) -> Result<pb::Response, ControlError> {
        self.req_at(call, m, 0).await
    }

    async fn hello(&self, call: &Call, m: pb::Hello) -> Result<pb::AppResponse, ControlError> {
        self.registry.hello(&call.who, m).await
    }

    async fn update(
        &self,
        call: &Call,
        m: pb::UpdateTargets,
    ) -> Result<pb::Response, ControlError> {
        self.registry.update(&call.who, m).await
    }

    async fn release(&self, call: &Call, m: pb::Release) -> Result<pb::Response, ControlError> {
        self.registry.release(&call.who, m).await
    }

    async fn status(
        &self,
        call: &Call,
        m: pb::StatusRequest,
    ) -> Result<pb::SessionList, ControlError> {
        check_status_uid(&m)?;
        crate::status::sessions(&self.registry, &self.rates, &call.who, Some(&m.uid)).await
    }

    async fn list(&self, call: &Call) -> Result<pb::SessionList, ControlError> {
        crate::status::sessions(&self.registry, &self.rates, &call.who, None).await
    }
}
