//! What `list` and `status` show: the sessions a caller may see, as plain data.

use std::time::SystemTime;

use scistream_protocol::handoff::SessionKey;

use super::Registry;
use super::machine::Session;
use crate::auth::Identity;

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
    /// What its listeners carry.
    pub protocol: scistream_protocol::Protocol,
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

    fn views_where(&self, keep: impl Fn(&SessionKey, &Session) -> bool) -> Vec<SessionView> {
        self.lock()
            .sessions()
            .iter()
            .filter(|(k, s)| keep(k, s))
            .map(|(k, s)| SessionView {
                key: k.clone(),
                owner: s.owner.clone(),
                phase: s.phase().name(),
                listeners: s.listener_strings(),
                targets: s.targets.iter().map(|t| t.given.clone()).collect(),
                rate_kbps: s.rate_kbps,
                created: s.created,
                protocol: s.protocol,
            })
            .collect()
    }
}

impl Registry {
    /// Data ports: (handed out now, the `--port-range`'s size).
    pub fn data_ports(&self) -> (usize, usize) {
        let machine = self.lock();
        (machine.ports_in_use(), machine.ports_capacity())
    }

    /// What this gateway's sessions hold now: (listeners, booked rate in kbit/s).
    pub fn booked(&self) -> (usize, u64) {
        let machine = self.lock();
        machine.sessions().values().fold((0, 0), |(l, r), s| {
            (l + s.listeners.len(), r.saturating_add(s.rate_kbps))
        })
    }
}
