//! The session state machine: a synchronous table of sessions and the
//! ports they hold. Its methods are the only places a session's phase
//! changes; none of them waits, writes to disk or talks to the data plane.
//! Each returns what its caller must carry out next (a record to persist,
//! a data-plane command with its sockets), and the caller does that after
//! letting go of the table ([`super::Registry`]).
//!
//! ```text
//!  on_req ─▶ AwaitingHello ─on_hello─▶ RecordingHello ─hello_recorded─▶ Ready ─finish_update─▶ Forwarding
//!                │ on_req_end             │ hello_not_recorded            │                     │
//!                ▼                        ▼                               ▼ remove              ▼ remove
//!            (removed, ports freed)   (removed, ports freed)          (removed)             (removed)
//! ```
//!
//! Sessions are keyed by (uid, role), so that one gateway can hold both
//! ends of a tunnel. Each session also has a serial number, so that a step
//! begun on one session is never finished on a later one with the same key.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use scistream_protocol::handoff::{Command, DataChannel, SessionKey, SessionSpec};
use scistream_protocol::{Endpoint, Protocol, Role, Target, pb};
use tokio::sync::oneshot;

use super::policy::Policy;
use super::request::{HelloMsg, NewSession};
use crate::auth::Identity;
use crate::error::ControlError;
use crate::ports::{BoundPort, PortAllocator, PortError, Sockets};
use crate::store::{StoredPhase, StoredSession};

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Its `req` holds listeners and waits for the application's hello.
    AwaitingHello,
    /// A hello arrived; it is being written to the store.
    RecordingHello,
    /// Hello done (and stored), no targets yet.
    Ready {
        /// Since when (for `--update-timeout`).
        since: Instant,
    },
    /// Handed to the data plane.
    Forwarding,
}

impl Phase {
    /// The name `list` and `status` show.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Phase::AwaitingHello | Phase::RecordingHello => "awaiting_hello",
            Phase::Ready { .. } => "ready",
            Phase::Forwarding => "forwarding",
        }
    }
}

/// One session.
#[derive(Debug)]
pub(crate) struct Session {
    /// Tells this session apart from an earlier one with the same key.
    pub(super) serial: u64,
    /// Who created it: only they (or an administrator) may change it.
    pub(super) owner: Identity,
    pub(super) num_conn: usize,
    pub(super) rate_kbps: u64,
    pub(super) listeners: Vec<BoundPort>,
    phase: Phase,
    pub(super) created: SystemTime,
    /// `prod_listeners` of the hello (the receivers, for PROD).
    pub(super) receivers: Vec<String>,
    /// One per listener once updated (the user's list, cycled).
    pub(super) targets: Vec<Target>,
    /// Its inbound side requires the peer gateway's certificate (its uid is not random).
    pub(super) client_cert: bool,
    /// Connection index of its first listener (part of a spread session).
    pub(super) first_index: u16,
    /// What its listeners carry.
    pub(super) protocol: Protocol,
    /// Serialises the steps of a hello, update or release of this session
    /// across the caller's awaits.
    op_lock: Arc<tokio::sync::Mutex<()>>,
    /// Wakes the waiting `req` once the hello is recorded.
    hello_tx: Option<oneshot::Sender<()>>,
}

impl Session {
    /// Its phase.
    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    /// Its listeners as the user sees them.
    pub(crate) fn listener_strings(&self) -> Vec<String> {
        self.listeners
            .iter()
            .map(|l| Endpoint::from_socket_addr(l.addr).to_string())
            .collect()
    }

    fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.listeners.iter().map(|l| l.addr.port())
    }
}

/// A `req` now waiting for its hello.
#[derive(Debug)]
pub(crate) struct Waiting {
    /// The session's serial.
    pub serial: u64,
    /// Its listeners.
    pub listeners: Vec<String>,
    /// Fires when its hello is recorded; closed when the session goes.
    pub hello: oneshot::Receiver<()>,
}

/// What became of a `req` that stopped waiting.
#[derive(Debug)]
pub(crate) enum ReqEnd {
    /// No hello came: the session is gone and its ports are free.
    Abandoned(Box<Session>),
    /// Its hello is being recorded: wait for that.
    Recording,
    /// Its hello is done: the reply.
    Ready(pb::Response),
    /// Released (or replaced) meanwhile.
    Gone,
}

/// A hello matched to a waiting session: record it, then call
/// [`Machine::hello_recorded`] (or [`Machine::hello_not_recorded`]).
#[derive(Debug)]
pub(crate) struct Recording {
    pub key: SessionKey,
    pub serial: u64,
    pub record: StoredSession,
    pub op_lock: Arc<tokio::sync::Mutex<()>>,
}

/// The sessions of this gateway and the ports they hold.
#[derive(Debug)]
pub(crate) struct Machine {
    sessions: BTreeMap<SessionKey, Session>,
    ports: PortAllocator,
    policy: Arc<Policy>,
    next_serial: u64,
}

impl Machine {
    /// An empty table handing out ports from `ports`.
    pub fn new(ports: PortAllocator, policy: Arc<Policy>) -> Self {
        Machine {
            sessions: BTreeMap::new(),
            ports,
            policy,
            next_serial: 1,
        }
    }

    /// Every session.
    pub fn sessions(&self) -> &BTreeMap<SessionKey, Session> {
        &self.sessions
    }

    /// The policy it admits sessions by.
    #[cfg(test)]
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Ports handed out now.
    pub fn ports_in_use(&self) -> usize {
        self.ports.in_use()
    }

    /// Ports this gateway may hand out (its `--port-range`).
    pub fn ports_capacity(&self) -> usize {
        self.ports.capacity()
    }

    /// `req`: checks who may use the uid and whether the gateway admits
    /// the session, then binds its listeners. The session waits for its hello.
    pub fn on_req(&mut self, who: &Identity, new: NewSession) -> Result<Waiting, ControlError> {
        let key = new.key;
        // A uid belongs to whoever first used it, across both roles:
        // nobody can take the other end of someone else's tunnel.
        if let Some((other, _)) = self
            .sessions
            .iter()
            .find(|(k, s)| k.uid == key.uid && !s.owner.is(&who.id))
        {
            return Err(ControlError::PermissionDenied(format!(
                "this uid is in use here by another identity (session {other}); use a new uid"
            )));
        }
        if self.sessions.contains_key(&key) {
            return Err(ControlError::AlreadyExists(format!(
                "a {} session with this uid exists already (session {key}); use a new uid or release it first",
                key.role
            )));
        }
        self.policy
            .admit(&self.sessions, who, new.num_conn, new.rate_kbps)?;
        let sockets = Sockets::for_session(key.role, new.protocol);
        let listeners = self
            .ports
            .allocate(new.num_conn, sockets)
            .map_err(|e| match e {
                PortError::Exhausted { .. } => ControlError::ResourceExhausted(e.to_string()),
                PortError::Bind { .. } => ControlError::Internal(e.to_string()),
            })?;
        let (hello_tx, hello) = oneshot::channel();
        let session = Session {
            serial: self.serial(),
            owner: who.clone(),
            num_conn: new.num_conn,
            rate_kbps: new.rate_kbps,
            listeners,
            phase: Phase::AwaitingHello,
            created: SystemTime::now(),
            receivers: Vec::new(),
            targets: Vec::new(),
            client_cert: new.client_cert,
            first_index: new.first_index,
            protocol: new.protocol,
            op_lock: Arc::default(),
            hello_tx: Some(hello_tx),
        };
        let waiting = Waiting {
            serial: session.serial,
            listeners: session.listener_strings(),
            hello,
        };
        self.sessions.insert(key, session);
        Ok(waiting)
    }

    fn serial(&mut self) -> u64 {
        self.next_serial += 1;
        self.next_serial - 1
    }

    /// The `req` of session `key` (`serial`) stopped waiting: timed out, or
    /// its caller went away. A session still without its hello goes.
    pub fn on_req_end(&mut self, key: &SessionKey, serial: u64) -> ReqEnd {
        let Some(s) = self.sessions.get(key).filter(|s| s.serial == serial) else {
            return ReqEnd::Gone;
        };
        match s.phase {
            Phase::AwaitingHello => match self.remove(key) {
                Some(s) => ReqEnd::Abandoned(Box::new(s)),
                None => ReqEnd::Gone,
            },
            Phase::RecordingHello => ReqEnd::Recording,
            Phase::Ready { .. } | Phase::Forwarding => ReqEnd::Ready(self.req_reply(key, s)),
        }
    }

    fn req_reply(&self, key: &SessionKey, s: &Session) -> pb::Response {
        pb::Response {
            listeners: s.listener_strings(),
            prod_listeners: match key.role {
                Role::Prod => s.receivers.clone(),
                Role::Cons => Vec::new(),
            },
            ..Default::default()
        }
    }

    /// `hello`: takes the session of `hello.uid` that waits for it (the
    /// role named in the hello first). `Ok(None)`: none waits yet.
    pub fn on_hello(
        &mut self,
        who: &Identity,
        hello: &HelloMsg,
    ) -> Result<Option<Recording>, ControlError> {
        // Only the caller's own (or, for an administrator, any): another
        // identity's waiting request is as if none waited.
        let waiting = |k: &&SessionKey| {
            let s = &self.sessions[*k];
            k.uid == hello.uid && s.phase == Phase::AwaitingHello && self.may_change(who, s)
        };
        let key = self
            .sessions
            .keys()
            .filter(waiting)
            .find(|k| Some(k.role) == hello.role_hint)
            .or_else(|| self.sessions.keys().find(waiting))
            .cloned();
        let Some(key) = key else {
            return Ok(None);
        };
        let Some(s) = self.sessions.get_mut(&key) else {
            return Ok(None);
        };
        s.phase = Phase::RecordingHello;
        s.receivers = hello.receivers.clone();
        let mut record = record(&key, s);
        record.phase = StoredPhase::Ready;
        Ok(Some(Recording {
            serial: s.serial,
            op_lock: s.op_lock.clone(),
            key,
            record,
        }))
    }

    /// Why a hello for `uid` found no session waiting (after its grace time).
    pub fn hello_unmatched(&self, uid: &str, waited: Duration) -> ControlError {
        // The same answer whether sessions of the uid exist (their hellos
        // came already) or not: it tells nothing of others' sessions.
        let tag = scistream_protocol::tag::session_tag(uid);
        ControlError::NotFound(format!(
            "no request with this uid (tag {tag}) is waiting for a hello (waited {} s); \
             send the req first, check the uid, or its hello came already",
            waited.as_secs_f32()
        ))
    }

    /// True while the session `key` is the one numbered `serial`.
    pub fn is_current(&self, key: &SessionKey, serial: u64) -> bool {
        self.sessions.get(key).is_some_and(|s| s.serial == serial)
    }

    /// The hello of session `key` is stored: it is ready, its `req` is
    /// woken. `None` when the session went meanwhile (forget the record).
    pub fn hello_recorded(
        &mut self,
        key: &SessionKey,
        serial: u64,
        now: Instant,
    ) -> Option<pb::AppResponse> {
        let s = self
            .sessions
            .get_mut(key)
            .filter(|s| s.serial == serial && s.phase == Phase::RecordingHello)?;
        s.phase = Phase::Ready { since: now };
        if let Some(tx) = s.hello_tx.take() {
            // Its req may have gone away: the session stays ready, and
            // `--update-timeout` releases it if nobody updates it.
            let _ = tx.send(());
        }
        Some(pb::AppResponse {
            message: match key.role {
                Role::Prod => "Sending Prod listeners...".into(),
                Role::Cons => "Sending listeners...".into(),
            },
            listeners: s.listener_strings(),
        })
    }

    /// The hello of session `key` could not be stored: the session goes
    /// (its `req` learns it), and its ports are free.
    pub fn hello_not_recorded(&mut self, key: &SessionKey, serial: u64) -> Option<Session> {
        if self.is_current(key, serial) {
            self.remove(key)
        } else {
            None
        }
    }

    /// The session an update addresses, among those `who` may act on
    /// (their own; every one for an administrator). `role` may be absent,
    /// as SciStream's client sends it, when that leaves one session.
    pub fn find_for(
        &self,
        who: &Identity,
        uid: &str,
        role: Option<Role>,
    ) -> Result<SessionKey, ControlError> {
        let tag = || scistream_protocol::tag::session_tag(uid);
        let of_uid: Vec<(&SessionKey, &Session)> = self
            .sessions
            .iter()
            .filter(|(k, _)| k.uid == uid && role.is_none_or(|r| k.role == r))
            .collect();
        // Another identity's session is answered as no session at all: a
        // caller learns nothing of sessions that are not theirs.
        let none = || {
            let role = role.map(|r| format!("{r} ")).unwrap_or_default();
            ControlError::NotFound(format!("no {role}session with this uid (tag {})", tag()))
        };
        let mine: Vec<&SessionKey> = of_uid
            .iter()
            .filter(|(_, s)| self.may_change(who, s))
            .map(|(k, _)| *k)
            .collect();
        match mine.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(none()),
            _ => Err(ControlError::InvalidArgument(format!(
                "this uid (tag {}) has both a PROD and a CONS session here; set the role",
                tag()
            ))),
        }
    }

    fn may_change(&self, who: &Identity, s: &Session) -> bool {
        self.policy.access.check_owner(who, &s.owner, "").is_ok()
    }

    /// What an update of `key` is checked against: its number of
    /// connections and its own listeners.
    pub fn update_bounds(
        &self,
        key: &SessionKey,
    ) -> Result<(usize, Vec<std::net::SocketAddr>), ControlError> {
        let s = self.get(key)?;
        Ok((s.num_conn, s.listeners.iter().map(|l| l.addr).collect()))
    }

    fn get(&self, key: &SessionKey) -> Result<&Session, ControlError> {
        self.sessions
            .get(key)
            .ok_or_else(|| ControlError::NotFound(format!("session {key} was released")))
    }

    /// The lock that serialises hello, update and release of `key`.
    pub fn op_lock(&self, key: &SessionKey) -> Option<Arc<tokio::sync::Mutex<()>>> {
        self.sessions.get(key).map(|s| s.op_lock.clone())
    }

    /// The data-plane command that makes session `key` forward to
    /// `targets` (with the listening sockets it needs); nothing changes
    /// until [`Machine::finish_update`].
    pub fn begin_update(
        &self,
        who: &Identity,
        key: &SessionKey,
        targets: &[Target],
    ) -> Result<(Command, Vec<OwnedFd>), ControlError> {
        let s = self.get(key)?;
        if !self.may_change(who, s) {
            return Err(ControlError::NotFound(format!(
                "no session with this uid (tag {})",
                key.tag()
            )));
        }
        let targets = scistream_protocol::target::cycle(targets, s.num_conn);
        match s.phase {
            Phase::AwaitingHello | Phase::RecordingHello => {
                Err(ControlError::FailedPrecondition(format!(
                    "session {key} is still waiting for its hello; update after the request returned"
                )))
            }
            Phase::Ready { .. } => {
                let spec = self.spec(key, s, targets);
                Ok((Command::AddSession(spec), dup_listeners(s)?))
            }
            Phase::Forwarding => Ok((
                Command::UpdateTargets {
                    key: key.clone(),
                    targets,
                },
                Vec::new(),
            )),
        }
    }

    /// The data plane took the update: session `key` forwards to
    /// `targets`. Returns the record to persist and the reply.
    pub fn finish_update(
        &mut self,
        key: &SessionKey,
        targets: &[Target],
    ) -> Option<(StoredSession, pb::Response)> {
        let s = self.sessions.get_mut(key)?;
        s.targets = scistream_protocol::target::cycle(targets, s.num_conn);
        s.phase = Phase::Forwarding;
        let reply = pb::Response {
            listeners: s.listener_strings(),
            prod_listeners: s.targets.iter().map(|t| t.given.clone()).collect(),
            ..Default::default()
        };
        Some((record(key, s), reply))
    }

    /// The keys of `uid`'s sessions that `who` may release (their own;
    /// every one for an administrator).
    pub fn releasable(&self, who: &Identity, uid: &str) -> Result<Vec<SessionKey>, ControlError> {
        let keys: Vec<SessionKey> = self
            .sessions
            .iter()
            .filter(|(k, s)| k.uid == uid && self.may_change(who, s))
            .map(|(k, _)| k.clone())
            .collect();
        // Another identity's session is answered as no session at all.
        if keys.is_empty() {
            return Err(ControlError::NotFound(format!(
                "no session with this uid (tag {}) to release",
                scistream_protocol::tag::session_tag(uid)
            )));
        }
        Ok(keys)
    }

    /// True when session `key` is ready (hello done, no update).
    pub fn is_ready(&self, key: &SessionKey) -> bool {
        self.sessions
            .get(key)
            .is_some_and(|s| matches!(s.phase, Phase::Ready { .. }))
    }

    /// Takes session `key` out of the table and frees its ports (the data
    /// plane's copies of its listeners keep them bound until it lets go).
    /// The caller removes it from the data plane when it was forwarding.
    pub fn remove(&mut self, key: &SessionKey) -> Option<Session> {
        let s = self.sessions.remove(key)?;
        self.ports.free(s.ports());
        Some(s)
    }

    /// Sessions ready for longer than `after` without an update.
    pub fn expired(&self, now: Instant, after: Duration) -> Vec<SessionKey> {
        self.sessions
            .iter()
            .filter(|(_, s)| {
                matches!(s.phase, Phase::Ready { since } if now.saturating_duration_since(since) >= after)
            })
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Puts back a stored session with its listeners (recovery).
    pub fn restore(
        &mut self,
        stored: StoredSession,
        listeners: Vec<BoundPort>,
        client_cert: bool,
        now: Instant,
    ) {
        for l in &listeners {
            self.ports.claim(l.addr.port());
        }
        let session = Session {
            serial: self.serial(),
            owner: stored.owner,
            num_conn: stored.num_conn,
            rate_kbps: stored.rate_kbps,
            listeners,
            phase: match stored.phase {
                StoredPhase::Ready => Phase::Ready { since: now },
                StoredPhase::Forwarding => Phase::Forwarding,
            },
            created: SystemTime::UNIX_EPOCH + Duration::from_secs(stored.created_unix),
            receivers: stored.receivers,
            targets: stored.targets,
            client_cert,
            first_index: stored.first_index,
            protocol: stored.protocol,
            op_lock: Arc::default(),
            hello_tx: None,
        };
        let key = SessionKey {
            uid: stored.uid,
            role: stored.role,
        };
        if let Some(old) = self.sessions.insert(key, session) {
            self.ports.free(old.ports());
        }
    }

    /// What the data plane needs to forward session `key`, with duplicates
    /// of its listening sockets.
    pub fn handoff(
        &self,
        key: &SessionKey,
    ) -> Option<std::io::Result<(SessionSpec, Vec<OwnedFd>)>> {
        let s = self.sessions.get(key)?;
        let spec = self.spec(key, s, s.targets.clone());
        Some(dup_fds(s).map(|fds| (spec, fds)))
    }

    /// The keys of the sessions the data plane must be forwarding.
    pub fn forwarding(&self) -> Vec<SessionKey> {
        self.sessions
            .iter()
            .filter(|(_, s)| s.phase == Phase::Forwarding)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Shutdown: every session out of the table (closing this process's
    /// copies of their listeners; the store keeps them for the next start).
    pub fn take_all(&mut self) -> usize {
        let sessions = std::mem::take(&mut self.sessions);
        for s in sessions.values() {
            self.ports.free(s.ports());
        }
        sessions.len()
    }

    /// The one place a [`SessionSpec`] is built.
    fn spec(&self, key: &SessionKey, s: &Session, targets: Vec<Target>) -> SessionSpec {
        let tls = self.policy.data_tls;
        SessionSpec {
            key: key.clone(),
            listeners: s.listeners.iter().map(|l| l.addr).collect(),
            targets,
            rate_kbps: s.rate_kbps,
            channel: match key.role {
                Role::Prod => DataChannel::FromPeer {
                    tls,
                    client_cert: tls && s.client_cert,
                },
                Role::Cons => DataChannel::ToPeer { tls },
            },
            first_index: s.first_index,
            protocol: s.protocol,
        }
    }
}

/// Copies of a session's sockets for the data plane: the TCP ones, then
/// the UDP ones (see [`SessionSpec::has_udp_sockets`]).
fn dup_fds(s: &Session) -> std::io::Result<Vec<OwnedFd>> {
    let tcp = s
        .listeners
        .iter()
        .map(|l| l.listener.try_clone().map(OwnedFd::from));
    let udp = s
        .listeners
        .iter()
        .filter_map(|l| l.udp.as_ref())
        .map(|u| u.try_clone().map(OwnedFd::from));
    tcp.chain(udp).collect()
}

fn dup_listeners(s: &Session) -> Result<Vec<OwnedFd>, ControlError> {
    dup_fds(s).map_err(|e| ControlError::Internal(format!("cannot duplicate listener: {e}")))
}

/// A session as the store keeps it.
fn record(key: &SessionKey, s: &Session) -> StoredSession {
    StoredSession {
        uid: key.uid.clone(),
        role: key.role,
        owner: s.owner.clone(),
        num_conn: s.num_conn,
        rate_kbps: s.rate_kbps,
        listeners: s.listeners.iter().map(|l| l.addr).collect(),
        receivers: s.receivers.clone(),
        targets: s.targets.clone(),
        phase: match s.phase {
            Phase::Forwarding => StoredPhase::Forwarding,
            _ => StoredPhase::Ready,
        },
        created_unix: s
            .created
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        first_index: s.first_index,
        protocol: s.protocol,
    }
}
