//! What `list` and `status` show: the sessions a caller may see, as plain data.

use std::time::SystemTime;

use scistream_protocol::Endpoint;
use scistream_protocol::handoff::{Command, Outcome, SessionKey, SessionStats};

use super::{Phase, Registry, Session};
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
        self.views_where(|k, s| uid.is_none_or(|u| k.uid == u) && (admin || who.is(&s.owner.id)))
    }

    /// Every session, for the metrics endpoint (which shows no owners).
    pub fn all_views(&self) -> Vec<SessionView> {
        self.views_where(|_, _| true)
    }

    /// How many times the data plane was restarted after dying.
    pub fn dataplane_restarts(&self) -> u64 {
        self.dataplane.restarts()
    }

    fn views_where(&self, keep: impl Fn(&SessionKey, &Session) -> bool) -> Vec<SessionView> {
        let table = self.lock();
        table
            .sessions
            .iter()
            .filter(|(k, s)| keep(k, s))
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

    /// Has the data plane read its TLS files again (SIGHUP).
    pub async fn reload_dataplane_tls(&self) -> Result<(), DataPlaneError> {
        match self.dataplane.call(Command::ReloadTls, Vec::new()).await? {
            Outcome::Done => Ok(()),
            other => Err(DataPlaneError::Failed(format!(
                "unexpected answer {other:?}"
            ))),
        }
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
