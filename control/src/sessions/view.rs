//! What `list` and `status` show: the sessions a caller may see, as plain data.

use std::time::SystemTime;

use scistream_protocol::Endpoint;
use scistream_protocol::handoff::{Command, Outcome, SessionKey, SessionStats};

use super::{Phase, Registry};
use crate::auth::Identity;
use crate::dataplane::DataPlaneError;

/// One session, as the control plane knows it.
#[derive(Debug, Clone)]
pub struct SessionView {
    /// Its key.
    pub key: SessionKey,
    /// Who created it.
    pub owner: Identity,
    /// `awaiting_hello`, `ready` or `forwarding`.
    pub phase: &'static str,
    /// Listener addresses.
    pub listeners: Vec<String>,
    /// Targets as the user gave them.
    pub targets: Vec<String>,
    /// Rate cap, kbit/s (0: none).
    pub rate_kbps: u64,
    /// When it was requested.
    pub created: SystemTime,
}

impl Registry {
    /// The sessions `who` may see (their own; every one for an
    /// administrator), optionally only those of `uid`.
    pub fn views(&self, who: &Identity, uid: Option<&str>) -> Vec<SessionView> {
        let admin = self.policy.access.is_admin(who);
        let table = self.lock();
        table
            .sessions
            .iter()
            .filter(|(k, _)| uid.is_none_or(|u| k.uid == u))
            .filter(|(_, s)| admin || who.is(&s.owner.id))
            .map(|(k, s)| SessionView {
                key: k.clone(),
                owner: s.owner.clone(),
                phase: match s.phase {
                    Phase::AwaitingHello => "awaiting_hello",
                    Phase::Ready => "ready",
                    Phase::Forwarding => "forwarding",
                },
                listeners: s
                    .listeners
                    .iter()
                    .map(|l| Endpoint::from_socket_addr(l.addr).to_string())
                    .collect(),
                targets: s.targets.clone(),
                rate_kbps: s.rate_kbps,
                created: s.created,
            })
            .collect()
    }

    /// The data plane's counters for every session it forwards.
    pub async fn dataplane_stats(&self) -> Result<Vec<SessionStats>, DataPlaneError> {
        match self.dataplane.call(Command::Stats, Vec::new()).await? {
            Outcome::Stats { sessions } => Ok(sessions),
            other => Err(DataPlaneError::Failed(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }
}
