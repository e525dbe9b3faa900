//! What this gateway allows: admission limits, uid strength, targets.
//! Pure checks over the session table; nothing here changes state.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use scistream_protocol::handoff::SessionKey;
use scistream_protocol::units::format_rate;
use scistream_protocol::{MAX_LISTENERS_PER_SESSION, Role, Target};

use super::machine::{Phase, Session};
use crate::access::Access;
use crate::auth::Identity;
use crate::error::ControlError;
use crate::store::StoredSession;

/// What this gateway allows and how it forwards.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Highest rate a request may ask for, bits per second.
    pub max_rate_bps: Option<u64>,
    /// The data channel between gateways is TLS 1.3 (else plaintext).
    pub data_tls: bool,
    /// Who may create sessions, administer them, and which targets are allowed.
    pub access: Arc<Access>,
    /// Most sessions at once (`None`: as many as the port range holds).
    pub max_sessions: Option<usize>,
    /// Most connections (listeners) one session may ask for.
    pub max_conns_per_session: usize,
    /// Sum of the sessions' rates this gateway admits, bits per second.
    pub capacity_bps: Option<u64>,
    /// Most requests one identity may have waiting for their hello.
    pub max_pending_per_identity: usize,
    /// Most data ports one identity (or anonymous source address) may hold.
    pub max_ports_per_identity: usize,
    /// Most sessions one identity (or anonymous source address) may hold.
    pub max_sessions_per_identity: usize,
    /// How sessions with a uid that is not random are protected.
    pub weak_uids: WeakUids,
    /// The data plane can verify a peer gateway's certificate (it has a
    /// peer CA), which `WeakUids::RequireClientCert` needs.
    pub verifies_peers: bool,
    /// This gateway's own endpoints, which no session may target.
    pub gateway: crate::targets::Gateway,
    /// Enforce the rate of requests from clients that do not mark their
    /// calls (SciStream's own, which always asks for 10 Mbit/s).
    pub enforce_unmarked_rates: bool,
    /// Checks inbound gateways before an outbound session forwards to them
    /// (TLS data channel only).
    pub probe: Option<crate::probe::PeerProbe>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_rate_bps: None,
            data_tls: false,
            access: Arc::default(),
            max_sessions: None,
            max_conns_per_session: MAX_LISTENERS_PER_SESSION,
            capacity_bps: None,
            max_pending_per_identity: 16,
            max_ports_per_identity: usize::MAX,
            max_sessions_per_identity: usize::MAX,
            weak_uids: WeakUids::Allow,
            verifies_peers: false,
            gateway: crate::targets::Gateway::default(),
            enforce_unmarked_rates: true,
            probe: None,
        }
    }
}

/// How a session whose uid is not a random UUID is protected (`--weak-uids`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeakUids {
    /// Its inbound side requires the peer gateway's certificate.
    RequireClientCert,
    /// Like any other session: the uid alone.
    Allow,
    /// Refused.
    Refuse,
}

impl std::str::FromStr for WeakUids {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "require-client-cert" => Ok(WeakUids::RequireClientCert),
            "allow" => Ok(WeakUids::Allow),
            "refuse" => Ok(WeakUids::Refuse),
            other => Err(format!(
                "--weak-uids {other:?}: expected require-client-cert, allow or refuse"
            )),
        }
    }
}

fn exhausted(message: String) -> ControlError {
    ControlError::ResourceExhausted(message)
}

impl Policy {
    /// Admission of a new session of `who` with `num_conn` listeners and
    /// `rate_kbps`: sessions in all, pending hellos, per-identity sessions
    /// and ports, and the gateway's capacity.
    pub(crate) fn admit(
        &self,
        sessions: &BTreeMap<SessionKey, Session>,
        who: &Identity,
        num_conn: usize,
        rate_kbps: u64,
    ) -> Result<(), ControlError> {
        if let Some(max) = self.max_sessions.filter(|&max| sessions.len() >= max) {
            return Err(exhausted(format!(
                "this gateway holds its maximum of {max} sessions; release unused sessions or try later"
            )));
        }
        let quota = who.quota_key();
        let theirs = || sessions.values().filter(|s| s.owner.quota_key() == quota);
        let pending = theirs().filter(|s| s.phase().awaits_hello()).count();
        if pending >= self.max_pending_per_identity {
            return Err(exhausted(format!(
                "{pending} requests of {who} are already waiting for their hello (the most allowed); \
                 send their hellos or let them time out"
            )));
        }
        let held = theirs().count();
        if held >= self.max_sessions_per_identity {
            return Err(exhausted(format!(
                "{who} holds {held} sessions here, the most one caller may; release some first"
            )));
        }
        let ports: usize = theirs().map(|s| s.listeners.len()).sum();
        if ports + num_conn > self.max_ports_per_identity {
            return Err(exhausted(format!(
                "{who} holds {ports} of the {} data ports one caller may hold here; \
                 ask for at most {} connections, or release a session first",
                self.max_ports_per_identity,
                self.max_ports_per_identity.saturating_sub(ports)
            )));
        }
        self.admit_rate(sessions, rate_kbps)
    }

    fn admit_rate(
        &self,
        sessions: &BTreeMap<SessionKey, Session>,
        rate_kbps: u64,
    ) -> Result<(), ControlError> {
        let Some(capacity) = self.capacity_bps else {
            return Ok(());
        };
        let reserved: u64 = sessions
            .values()
            .map(|s| s.rate_kbps.saturating_mul(1000))
            .sum();
        let left = capacity.saturating_sub(reserved);
        if rate_kbps.saturating_mul(1000) > left {
            return Err(exhausted(format!(
                "this gateway has {} of its {} capacity left ({} kbit/s); ask for at most that, or later",
                format_rate(left as f64),
                format_rate(capacity as f64),
                left / 1000
            )));
        }
        Ok(())
    }

    /// Checks a new session's uid for strength: `Ok(true)` when its inbound
    /// side must require the peer gateway's certificate (`--weak-uids`).
    pub(crate) fn uid_protection(&self, uid: &str, role: Role) -> Result<bool, ControlError> {
        if uid.len() < scistream_protocol::MIN_UID_LEN {
            return Err(ControlError::InvalidArgument(format!(
                "the uid is {} characters long; a uid is the data channel's credential, so this gateway needs \
                 at least {} (s2uc makes random 36-character uids)",
                uid.len(),
                scistream_protocol::MIN_UID_LEN
            )));
        }
        if scistream_protocol::uid_kind(uid) == scistream_protocol::UidKind::Random {
            return Ok(false);
        }
        match (self.weak_uids, role) {
            (WeakUids::Allow, _) => Ok(false),
            (WeakUids::Refuse, _) => Err(ControlError::InvalidArgument(
                "the uid is not a random UUID, and this gateway refuses such uids (--weak-uids refuse); \
                 let s2uc make the uid"
                    .into(),
            )),
            // The outbound side presents its certificate when asked; the
            // inbound side is where the uid is checked.
            (WeakUids::RequireClientCert, Role::Cons) => Ok(false),
            (WeakUids::RequireClientCert, Role::Prod) if !self.data_tls => Ok(false),
            (WeakUids::RequireClientCert, Role::Prod) if self.verifies_peers => Ok(true),
            (WeakUids::RequireClientCert, Role::Prod) => Err(ControlError::FailedPrecondition(
                "the uid is not a random UUID (SciStream's own client makes time-based ones, which can be guessed); \
                 this gateway protects such sessions by requiring the peer gateway's certificate, but it has no \
                 --peer-ca to verify one. Use a random uid (s2uc makes them), or ask the gateway's admin for \
                 --peer-ca (or --weak-uids allow)"
                    .into(),
            )),
        }
    }

    /// Checks a session's targets against the target rules and this
    /// gateway's own endpoints (`listeners`: the session's own).
    pub(crate) fn check_targets(
        &self,
        role: Role,
        targets: &[Target],
        listeners: &[SocketAddr],
    ) -> Result<(), ControlError> {
        let field = match role {
            Role::Prod => "receiver",
            Role::Cons => "remote listener",
        };
        for t in targets {
            crate::targets::check(
                self.access.targets.as_deref(),
                &self.gateway,
                field,
                t.addr,
                listeners,
            )?;
        }
        Ok(())
    }

    /// Checks a stored session against this start's policy: its uid, its
    /// listeners against the listener address and port range, its targets
    /// against the target rules. `Ok(client_cert)` as for a new session.
    pub(crate) fn still_allows(&self, s: &StoredSession) -> Result<bool, String> {
        let client_cert = self
            .uid_protection(&s.uid, s.role)
            .map_err(|e| e.to_string())?;
        let gw = &self.gateway;
        for l in &s.listeners {
            if !gw.data_ports.contains(&l.port()) {
                return Err(format!(
                    "its listener {l} is outside the port range {}-{}",
                    gw.data_ports.start(),
                    gw.data_ports.end()
                ));
            }
            if !gw.listener_ip.is_unspecified()
                && crate::targets::canonical(*l).ip() != gw.listener_ip
            {
                return Err(format!(
                    "its listener {l} is not on the listener address {}",
                    gw.listener_ip
                ));
            }
        }
        self.check_targets(s.role, &s.targets, &s.listeners)
            .map_err(|e| e.to_string())?;
        Ok(client_cert)
    }
}

impl Phase {
    /// Still waiting for (or recording) its hello.
    pub(crate) fn awaits_hello(&self) -> bool {
        matches!(self, Phase::AwaitingHello | Phase::RecordingHello)
    }
}
