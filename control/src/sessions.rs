//! The session table and its state machine: `req` → `hello` → `update` → `release`.
//!
//! ```text
//!  req ──▶ AwaitingHello ──hello──▶ Ready ──update──▶ Forwarding ──update──▶ Forwarding
//!              │ timeout / caller gone      │                 │
//!              ▼                            ▼ release         ▼ release
//!           (removed, ports freed)      (removed)         (removed from s2ds, ports freed)
//! ```
//!
//! Sessions are keyed by (uid, role). A `req` holds no thread while it
//! waits: it is a future parked on a oneshot channel. If the caller goes
//! away, tonic drops that future and [`PendingReq`] frees the session.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use scistream_protocol::handoff::{Command, DataChannel, Outcome, SessionKey, SessionSpec};
use scistream_protocol::{Endpoint, MAX_LISTENERS_PER_SESSION, Role, pb, validate_uid};
use tokio::sync::{Notify, oneshot};
use tracing::{info, warn};

use crate::access::Access;
use crate::auth::Identity;
use crate::dataplane::{DataPlane, DataPlaneError};
use crate::error::ControlError;
use crate::ports::{BoundPort, PortAllocator, PortError};
use crate::store::{SessionStore, StoredPhase, StoredSession};

mod recover;
mod view;
pub use recover::Recovered;
pub use view::SessionView;

/// Timing knobs of the state machine.
#[derive(Debug, Clone)]
pub struct Timing {
    /// How long `req` waits for `hello`.
    pub hello_timeout: Duration,
    /// How long a `hello` waits for a `req` that has not arrived yet.
    pub hello_grace: Duration,
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitingHello,
    Ready,
    Forwarding,
}

#[derive(Debug)]
struct Session {
    /// Who created it: only they (or an administrator) may change it.
    owner: Identity,
    num_conn: usize,
    rate_kbps: u64,
    listeners: Vec<BoundPort>,
    phase: Phase,
    created: SystemTime,
    /// `prod_listeners` of the hello (the receivers, for PROD).
    receivers: Vec<String>,
    /// Targets per listener, as the user wrote them and as resolved.
    targets: Vec<String>,
    target_addrs: Vec<SocketAddr>,
    /// Host part of each target, to verify the peer gateway's certificate against.
    target_names: Vec<String>,
    hello_tx: Option<oneshot::Sender<()>>,
    /// Serialises update/release of this session across awaits.
    op_lock: Arc<tokio::sync::Mutex<()>>,
    /// Since when it has been Ready (hello done, no update yet).
    ready_since: Option<tokio::time::Instant>,
    /// Its inbound side requires the peer gateway's certificate (its uid is not random).
    client_cert: bool,
}

impl Session {
    fn listener_strings(&self) -> Vec<String> {
        self.listeners
            .iter()
            .map(|l| Endpoint::from_socket_addr(l.addr).to_string())
            .collect()
    }
}

#[derive(Debug)]
struct Table {
    sessions: BTreeMap<SessionKey, Session>,
    ports: PortAllocator,
}

/// All sessions of this gateway.
#[derive(Debug)]
pub struct Registry {
    table: Mutex<Table>,
    /// Fired whenever a session starts waiting for its hello.
    new_session: Notify,
    timing: Timing,
    policy: Policy,
    dataplane: DataPlane,
    store: Arc<SessionStore>,
}

fn invalid(what: &str, e: impl std::fmt::Display) -> ControlError {
    ControlError::InvalidArgument(format!("{what}: {e}"))
}

fn parse_role(role: &str) -> Result<Role, ControlError> {
    role.parse().map_err(|e| invalid("role", e))
}

/// An optional role: SciStream's older clients leave it empty in update.
fn parse_role_hint(role: &str) -> Result<Option<Role>, ControlError> {
    if role.is_empty() {
        Ok(None)
    } else {
        parse_role(role).map(Some)
    }
}

fn check_uid(uid: &str) -> Result<(), ControlError> {
    validate_uid(uid).map_err(|e| invalid("uid", e))
}

fn parse_endpoints(field: &str, items: &[String]) -> Result<Vec<Endpoint>, ControlError> {
    items
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.parse::<Endpoint>()
                .map_err(|e| invalid(&format!("{field}[{i}]"), e))
        })
        .collect()
}

/// Resolves an endpoint to one socket address (DNS names through the system resolver).
async fn resolve(e: &Endpoint) -> Result<SocketAddr, ControlError> {
    if let Some(addr) = e.socket_addr() {
        return Ok(addr);
    }
    let text = e.to_string();
    let lookup = tokio::net::lookup_host(text.clone());
    match tokio::time::timeout(Duration::from_secs(5), lookup).await {
        Ok(Ok(mut addrs)) => addrs.next().ok_or_else(|| {
            ControlError::InvalidArgument(format!("'{text}' resolves to no address"))
        }),
        Ok(Err(err)) => Err(ControlError::InvalidArgument(format!(
            "cannot resolve '{text}': {err}"
        ))),
        Err(_) => Err(ControlError::Unavailable(format!(
            "resolving '{text}' timed out after 5 s"
        ))),
    }
}

/// The host of an endpoint, as a certificate names it.
fn host_name(e: &Endpoint) -> String {
    match &e.host {
        scistream_protocol::Host::Ip(ip) => ip.to_string(),
        scistream_protocol::Host::Name(n) => n.clone(),
    }
}

/// A gateway as a person would name it: `name (address)` when they differ.
fn e_to_string(name: &str, addr: SocketAddr) -> String {
    if name == addr.ip().to_string() {
        addr.to_string()
    } else {
        format!("{name} ({addr})")
    }
}

fn cycle<T: Clone>(items: &[T], n: usize) -> Vec<T> {
    (0..n).map(|i| items[i % items.len()].clone()).collect()
}

fn dataplane_error(e: DataPlaneError) -> ControlError {
    match e {
        DataPlaneError::Failed(m) => ControlError::Internal(format!("data plane refused: {m}")),
        other => ControlError::Unavailable(format!("{other}; retry in a few seconds")),
    }
}

/// Frees a `req`'s session if the `req` ends without its hello (timeout,
/// or the caller went away and tonic dropped the call).
struct PendingReq<'a> {
    registry: &'a Registry,
    key: SessionKey,
    armed: bool,
}

impl Drop for PendingReq<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut table = self.registry.lock();
        if table
            .sessions
            .get(&self.key)
            .is_some_and(|s| s.phase == Phase::AwaitingHello)
        {
            if let Some(s) = table.sessions.remove(&self.key) {
                let ports: Vec<u16> = s.listeners.iter().map(|l| l.addr.port()).collect();
                let (owner, listeners) = (s.owner.to_string(), s.listener_strings());
                drop(s);
                table.ports.free(ports);
                info!(event = "timed_out", session = %self.key, %owner, ?listeners, "request ended before its hello; ports freed");
            }
        }
    }
}

impl Registry {
    /// An empty registry handing out ports from `ports`.
    pub fn new(
        ports: PortAllocator,
        timing: Timing,
        policy: Policy,
        dataplane: DataPlane,
        store: Arc<SessionStore>,
    ) -> Self {
        Registry {
            table: Mutex::new(Table {
                sessions: BTreeMap::new(),
                ports,
            }),
            new_session: Notify::new(),
            timing,
            policy,
            dataplane,
            store,
        }
    }

    /// Records a session durably (before the reply that depends on it).
    fn persist(&self, key: &SessionKey, s: &Session) -> Result<(), ControlError> {
        let phase = match s.phase {
            Phase::Forwarding => StoredPhase::Forwarding,
            _ => StoredPhase::Ready,
        };
        let record = StoredSession {
            uid: key.uid.clone(),
            role: key.role,
            owner: s.owner.clone(),
            num_conn: s.num_conn,
            rate_kbps: s.rate_kbps,
            listeners: s.listeners.iter().map(|l| l.addr).collect(),
            receivers: s.receivers.clone(),
            targets: s.targets.clone(),
            target_addrs: s.target_addrs.clone(),
            target_names: s.target_names.clone(),
            phase,
            created_unix: s
                .created
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        self.store.put(&record).map_err(|e| {
            warn!(%key, error = %e, "cannot record the session durably");
            ControlError::Internal(format!(
                "this gateway cannot record session {key} durably ({e}); tell its administrators"
            ))
        })
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the lock leaves consistent data (every
        // mutation is a single map or set operation), so keep serving.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admission control: session count, pending requests per identity, capacity.
    fn admit(
        &self,
        table: &Table,
        who: &Identity,
        num_conn: usize,
        rate_kbps: u64,
    ) -> Result<(), ControlError> {
        if let Some(max) = self.policy.max_sessions {
            if table.sessions.len() >= max {
                return Err(ControlError::ResourceExhausted(format!(
                    "this gateway holds its maximum of {max} sessions; release unused sessions or try later"
                )));
            }
        }
        let pending = table
            .sessions
            .values()
            .filter(|s| s.phase == Phase::AwaitingHello && s.owner.quota_key() == who.quota_key())
            .count();
        if pending >= self.policy.max_pending_per_identity {
            return Err(ControlError::ResourceExhausted(format!(
                "{pending} requests of {who} are already waiting for their hello (the most allowed); \
                 send their hellos or let them time out"
            )));
        }
        let (sessions, ports) = table
            .sessions
            .values()
            .filter(|s| s.owner.quota_key() == who.quota_key())
            .fold((0, 0), |(n, p), s| (n + 1, p + s.listeners.len()));
        if sessions >= self.policy.max_sessions_per_identity {
            return Err(ControlError::ResourceExhausted(format!(
                "{who} holds {sessions} sessions here, the most one caller may; release some first"
            )));
        }
        if ports + num_conn > self.policy.max_ports_per_identity {
            return Err(ControlError::ResourceExhausted(format!(
                "{who} holds {ports} of the {} data ports one caller may hold here; \
                 ask for at most {} connections, or release a session first",
                self.policy.max_ports_per_identity,
                self.policy.max_ports_per_identity.saturating_sub(ports)
            )));
        }
        if let Some(capacity) = self.policy.capacity_bps {
            let reserved: u64 = table
                .sessions
                .values()
                .map(|s| s.rate_kbps.saturating_mul(1000))
                .sum();
            let left = capacity.saturating_sub(reserved);
            if rate_kbps.saturating_mul(1000) > left {
                return Err(ControlError::ResourceExhausted(format!(
                    "this gateway has {} of its {} capacity left ({} kbit/s); ask for at most that, or later",
                    scistream_protocol::units::format_rate(left as f64),
                    scistream_protocol::units::format_rate(capacity as f64),
                    left / 1000
                )));
            }
        }
        Ok(())
    }

    /// Checks a new session's uid for strength: `Ok(true)` when its inbound
    /// side must require the peer gateway's certificate (`--weak-uids`).
    fn uid_protection(&self, uid: &str, role: Role) -> Result<bool, ControlError> {
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
        match (self.policy.weak_uids, role) {
            (WeakUids::Allow, _) => Ok(false),
            (WeakUids::Refuse, _) => Err(ControlError::InvalidArgument(
                "the uid is not a random UUID, and this gateway refuses such uids (--weak-uids refuse); \
                 let s2uc make the uid"
                    .into(),
            )),
            // The outbound side presents its certificate when asked; the
            // inbound side is where the uid is checked.
            (WeakUids::RequireClientCert, Role::Cons) => Ok(false),
            (WeakUids::RequireClientCert, Role::Prod) if !self.policy.data_tls => Ok(false),
            (WeakUids::RequireClientCert, Role::Prod) if self.policy.verifies_peers => Ok(true),
            (WeakUids::RequireClientCert, Role::Prod) => Err(ControlError::FailedPrecondition(
                "the uid is not a random UUID (SciStream's own client makes time-based ones, which can be guessed); \
                 this gateway protects such sessions by requiring the peer gateway's certificate, but it has no \
                 --peer-ca to verify one. Use a random uid (s2uc makes them), or ask the gateway's admin for \
                 --peer-ca (or --weak-uids allow)"
                    .into(),
            )),
        }
    }

    /// `req`: allocate listeners and wait for the hello. `marked`: the call
    /// comes from this project's client, whose rate is meant (else see
    /// [`Policy::enforce_unmarked_rates`]).
    pub async fn req(
        &self,
        who: &Identity,
        mut r: pb::Request,
        marked: bool,
    ) -> Result<pb::Response, ControlError> {
        if !marked && !self.policy.enforce_unmarked_rates && r.rate > 0 {
            info!(
                rate_kbps = r.rate,
                "rate of a client that does not mark its requests (SciStream's own sends 10000 on every \
                 request, never enforced by SciStream): not enforced (--unmarked-rates ignore)"
            );
            r.rate = 0;
        }
        check_uid(&r.uid)?;
        self.policy.access.check_creator(who)?;
        let role = parse_role(&r.role)?;
        let num_conn = usize::try_from(r.num_conn)
            .ok()
            .filter(|&n| (1..=MAX_LISTENERS_PER_SESSION).contains(&n))
            .ok_or_else(|| {
                ControlError::InvalidArgument(format!(
                    "num_conn is {}; it must be between 1 and {MAX_LISTENERS_PER_SESSION}",
                    r.num_conn
                ))
            })?;
        let rate_kbps = u64::try_from(r.rate).map_err(|_| {
            ControlError::InvalidArgument(format!(
                "rate is {}; it must be 0 (no cap) or a positive number of kbit/s",
                r.rate
            ))
        })?;
        if let Some(max) = self.policy.max_rate_bps {
            if rate_kbps == 0 || rate_kbps.saturating_mul(1000) > max {
                return Err(ControlError::InvalidArgument(format!(
                    "rate {} is above what this gateway allows ({} kbit/s, {}); ask for at most {} kbit/s",
                    if rate_kbps == 0 {
                        "0 (no cap)".to_string()
                    } else {
                        format!("{rate_kbps} kbit/s")
                    },
                    max / 1000,
                    scistream_protocol::units::format_rate(max as f64),
                    max / 1000
                )));
            }
        }
        if num_conn > self.policy.max_conns_per_session {
            return Err(ControlError::InvalidArgument(format!(
                "num_conn is {num_conn}; this gateway allows at most {} connections per session",
                self.policy.max_conns_per_session
            )));
        }
        if self.policy.capacity_bps.is_some() && rate_kbps == 0 {
            return Err(ControlError::InvalidArgument(format!(
                "this gateway admits only rate-capped sessions (it has a capacity of {}): ask for a rate",
                scistream_protocol::units::format_rate(self.policy.capacity_bps.unwrap_or(0) as f64)
            )));
        }
        let client_cert = self.uid_protection(&r.uid, role)?;
        let key = SessionKey {
            uid: r.uid.clone(),
            role,
        };
        let (hello_tx, hello_rx) = oneshot::channel();
        let listeners = {
            let mut table = self.lock();
            // A uid belongs to whoever first used it, across both roles:
            // nobody can take the other end of someone else's tunnel.
            if let Some(other) = table
                .sessions
                .iter()
                .find(|(k, s)| k.uid == key.uid && !s.owner.is(&who.id))
            {
                return Err(ControlError::PermissionDenied(format!(
                    "this uid is in use here by another identity (session {}); use a new uid",
                    other.0
                )));
            }
            if table.sessions.contains_key(&key) {
                return Err(ControlError::AlreadyExists(format!(
                    "a {role} session with this uid exists already (session {key}); use a new uid or release it first"
                )));
            }
            self.admit(&table, who, num_conn, rate_kbps)?;
            let bound = table.ports.allocate(num_conn).map_err(|e| match e {
                PortError::Exhausted { .. } => ControlError::ResourceExhausted(e.to_string()),
                PortError::Bind { .. } => ControlError::Internal(e.to_string()),
            })?;
            let session = Session {
                owner: who.clone(),
                num_conn,
                rate_kbps,
                listeners: bound,
                phase: Phase::AwaitingHello,
                created: SystemTime::now(),
                receivers: Vec::new(),
                targets: Vec::new(),
                target_addrs: Vec::new(),
                target_names: Vec::new(),
                hello_tx: Some(hello_tx),
                op_lock: Arc::default(),
                ready_since: None,
                client_cert,
            };
            let listeners = session.listener_strings();
            table.sessions.insert(key.clone(), session);
            listeners
        };
        let mut pending = PendingReq {
            registry: self,
            key: key.clone(),
            armed: true,
        };
        self.new_session.notify_waiters();
        info!(event = "requested", session = %key, owner = %who, num_conn, rate_kbps, ?listeners, "requested; waiting for hello");

        let waited = tokio::time::timeout(self.timing.hello_timeout, hello_rx).await;
        let table = self.lock();
        let session = match table.sessions.get(&key) {
            Some(s) if s.phase != Phase::AwaitingHello => s,
            _ => {
                drop(table);
                drop(pending);
                return Err(match waited {
                    Err(_) => ControlError::DeadlineExceeded(format!(
                        "no hello for session {} within {} s; the listeners were released. \
                         Start the application (or s2uc) that sends the hello, then request again",
                        key,
                        self.timing.hello_timeout.as_secs()
                    )),
                    Ok(_) => ControlError::Aborted(format!(
                        "session {} was released while waiting for its hello",
                        key
                    )),
                });
            }
        };
        let prod_listeners = match role {
            Role::Prod => session.receivers.clone(),
            Role::Cons => Vec::new(),
        };
        let response = pb::Response {
            listeners: session.listener_strings(),
            prod_listeners,
        };
        let owner = session.owner.to_string();
        drop(table);
        pending.armed = false;
        info!(event = "ready", session = %key, %owner, listeners = ?response.listeners, "ready");
        Ok(response)
    }

    /// `hello`: bind an application's announcement to the `req` waiting for it.
    pub async fn hello(
        &self,
        who: &Identity,
        h: pb::Hello,
    ) -> Result<pb::AppResponse, ControlError> {
        check_uid(&h.uid)?;
        // The role in a hello is only a hint: SciStream's clients send "PROD"
        // for both ends, so the session's role comes from its `req`.
        let hint = parse_role(&h.role).ok();
        parse_endpoints("prod_listeners", &h.prod_listeners)?;
        let deadline = tokio::time::Instant::now() + self.timing.hello_grace;
        loop {
            let notified = self.new_session.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut table = self.lock();
                let waiting: Vec<SessionKey> = table
                    .sessions
                    .iter()
                    .filter(|(k, s)| k.uid == h.uid && s.phase == Phase::AwaitingHello)
                    .map(|(k, _)| k.clone())
                    .collect();
                let chosen = waiting
                    .iter()
                    .find(|k| Some(k.role) == hint)
                    .or_else(|| waiting.first())
                    .cloned();
                if let Some(key) = chosen {
                    let Some(session) = table.sessions.get_mut(&key) else {
                        return Err(ControlError::Internal("session vanished under lock".into()));
                    };
                    self.policy.access.check_owner(
                        who,
                        &session.owner,
                        &format!("session {key}"),
                    )?;
                    session.phase = Phase::Ready;
                    session.ready_since = Some(tokio::time::Instant::now());
                    session.receivers = h.prod_listeners.clone();
                    if let Err(e) = self.persist(&key, session) {
                        session.phase = Phase::AwaitingHello;
                        return Err(e);
                    }
                    if let Some(tx) = session.hello_tx.take() {
                        // The req may have given up this very moment; it re-checks the phase.
                        let _ = tx.send(());
                    }
                    info!(session = %key, receivers = ?h.prod_listeners, "hello");
                    return Ok(pb::AppResponse {
                        message: match key.role {
                            Role::Prod => "Sending Prod listeners...".into(),
                            Role::Cons => "Sending listeners...".into(),
                        },
                        listeners: session.listener_strings(),
                    });
                }
            }
            // Nothing waits for this hello yet: its req may still be on its
            // way (also when the uid's other role is here already, as when
            // one gateway holds both ends), so it is held for the grace time.
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let tag = scistream_protocol::tag::session_tag(&h.uid);
                if self.lock().sessions.keys().any(|k| k.uid == h.uid) {
                    return Err(ControlError::FailedPrecondition(format!(
                        "every session with this uid (tag {tag}) has had its hello already"
                    )));
                }
                return Err(ControlError::NotFound(format!(
                    "no request with this uid (tag {tag}) is waiting for a hello (waited {} s); \
                     send the req first, or check the uid",
                    self.timing.hello_grace.as_secs_f32()
                )));
            }
        }
    }

    /// Finds the session an update addresses, among those `who` may act on
    /// (their own; every one for an administrator). `role` may be absent,
    /// as SciStream's client sends it, when that leaves one session.
    fn find_key(
        &self,
        who: &Identity,
        uid: &str,
        role: Option<Role>,
    ) -> Result<SessionKey, ControlError> {
        let table = self.lock();
        let of_uid: Vec<(&SessionKey, &Session)> = table
            .sessions
            .iter()
            .filter(|(k, _)| k.uid == uid)
            .collect();
        let tag = || scistream_protocol::tag::session_tag(uid);
        if of_uid.is_empty() {
            return Err(match role {
                Some(role) => ControlError::NotFound(format!(
                    "no {role} session with this uid (tag {})",
                    tag()
                )),
                None => ControlError::NotFound(format!("no session with this uid (tag {})", tag())),
            });
        }
        let mine: Vec<&SessionKey> = of_uid
            .iter()
            .filter(|(k, s)| {
                role.is_none_or(|r| k.role == r)
                    && self.policy.access.check_owner(who, &s.owner, "").is_ok()
            })
            .map(|(k, _)| *k)
            .collect();
        match mine.as_slice() {
            [one] => Ok((*one).clone()),
            [] => {
                // Theirs to change, not the caller's: name the owner.
                let (k, s) = of_uid
                    .iter()
                    .find(|(k, _)| role.is_none_or(|r| k.role == r))
                    .ok_or_else(|| {
                        ControlError::NotFound(format!(
                            "no {} session with this uid (tag {})",
                            role.map(Role::as_str).unwrap_or(""),
                            tag()
                        ))
                    })?;
                self.policy
                    .access
                    .check_owner(who, &s.owner, &format!("session {k}"))?;
                Err(ControlError::Internal(format!(
                    "session {k}: owner check disagrees"
                )))
            }
            _ => Err(ControlError::InvalidArgument(format!(
                "this uid (tag {}) has both a PROD and a CONS session here; set the role",
                tag()
            ))),
        }
    }

    /// One probe per distinct inbound gateway (host and address) among the
    /// targets, all at once ([`crate::probe`]).
    async fn probe_inbound_gateways(
        &self,
        uid: &str,
        endpoints: &[Endpoint],
        addrs: &[SocketAddr],
    ) -> Result<(), ControlError> {
        let Some(probe) = &self.policy.probe else {
            return Ok(());
        };
        let mut seen = std::collections::HashSet::new();
        let mut probes = tokio::task::JoinSet::new();
        for (index, (e, addr)) in endpoints.iter().zip(addrs).enumerate() {
            let name = host_name(e);
            if !seen.insert((name.clone(), addr.ip())) {
                continue;
            }
            let (probe, uid, addr) = (probe.clone(), uid.to_owned(), *addr);
            probes.spawn(async move {
                let r = probe.check(addr, &name, &uid, index).await;
                (e_to_string(&name, addr), r)
            });
        }
        while let Some(done) = probes.join_next().await {
            let Ok((gateway, result)) = done else {
                continue;
            };
            if let Err(why) = result {
                return Err(ControlError::FailedPrecondition(format!(
                    "the inbound gateway {gateway} cannot be used: {}",
                    crate::logsafe::escape(&why)
                )));
            }
        }
        Ok(())
    }

    fn op_lock(&self, key: &SessionKey) -> Option<Arc<tokio::sync::Mutex<()>>> {
        self.lock().sessions.get(key).map(|s| s.op_lock.clone())
    }

    /// `update`: set the targets and start (or re-point) forwarding.
    pub async fn update(
        &self,
        who: &Identity,
        u: pb::UpdateTargets,
    ) -> Result<pb::Response, ControlError> {
        check_uid(&u.uid)?;
        let role = parse_role_hint(&u.role)?;
        if u.remote_listeners.is_empty() {
            return Err(ControlError::InvalidArgument(
                "remote_listeners is empty: give at least one HOST:PORT to forward to".into(),
            ));
        }
        // Who may change which session, and how many targets it can take,
        // are settled before any name is resolved.
        let key = self.find_key(who, &u.uid, role)?;
        let (num_conn, own_listeners) = {
            let table = self.lock();
            let s = table
                .sessions
                .get(&key)
                .ok_or_else(|| ControlError::NotFound(format!("session {key} was released")))?;
            (
                s.num_conn,
                s.listeners.iter().map(|l| l.addr).collect::<Vec<_>>(),
            )
        };
        if u.remote_listeners.len() > num_conn {
            return Err(ControlError::InvalidArgument(format!(
                "remote_listeners has {} entries; session {key} has {num_conn} connections, so at most {num_conn}",
                u.remote_listeners.len()
            )));
        }
        let endpoints = parse_endpoints("remote_listeners", &u.remote_listeners)?;
        let mut addrs = Vec::with_capacity(endpoints.len());
        for e in &endpoints {
            addrs.push(resolve(e).await?);
        }
        let field = match key.role {
            Role::Prod => "receiver",
            Role::Cons => "remote listener",
        };
        for a in &addrs {
            crate::targets::check(
                self.policy.access.targets.as_deref(),
                &self.policy.gateway,
                field,
                *a,
                &own_listeners,
            )?;
        }
        if key.role == Role::Cons && self.policy.data_tls {
            self.probe_inbound_gateways(&key.uid, &endpoints, &addrs)
                .await?;
        }
        let op_lock = self
            .op_lock(&key)
            .ok_or_else(|| ControlError::NotFound(format!("no session {key}")))?;
        let _op = op_lock.lock().await;

        let (command, fds, targets, listeners) = {
            let table = self.lock();
            let s = table
                .sessions
                .get(&key)
                .ok_or_else(|| ControlError::NotFound(format!("session {key} was released")))?;
            self.policy
                .access
                .check_owner(who, &s.owner, &format!("session {key}"))?;
            if s.phase == Phase::AwaitingHello {
                return Err(ControlError::FailedPrecondition(format!(
                    "session {key} is still waiting for its hello; update after the request returned"
                )));
            }
            let targets = cycle(&u.remote_listeners, s.num_conn);
            let target_addrs = cycle(&addrs, s.num_conn);
            let names: Vec<String> = endpoints.iter().map(host_name).collect();
            let target_names = cycle(&names, s.num_conn);
            let (command, fds) = if s.phase == Phase::Ready {
                let fds = s
                    .listeners
                    .iter()
                    .map(|l| l.listener.try_clone().map(OwnedFd::from))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| {
                        ControlError::Internal(format!("cannot duplicate listener: {e}"))
                    })?;
                let spec = SessionSpec {
                    key: key.clone(),
                    listeners: s.listeners.iter().map(|l| l.addr).collect(),
                    targets: target_addrs.clone(),
                    rate_kbps: s.rate_kbps,
                    channel: self.channel(key.role, s.client_cert, &target_names),
                };
                (Command::AddSession(spec), fds)
            } else {
                (
                    Command::UpdateTargets {
                        key: key.clone(),
                        targets: target_addrs.clone(),
                        server_names: target_names.clone(),
                    },
                    Vec::new(),
                )
            };
            (
                command,
                fds,
                (targets, target_addrs, target_names),
                s.listener_strings(),
            )
        };
        match self
            .dataplane
            .call(command, fds)
            .await
            .map_err(dataplane_error)?
        {
            Outcome::Failed { message } => {
                return Err(ControlError::Internal(format!(
                    "data plane refused the session: {message}"
                )));
            }
            Outcome::Done | Outcome::Stats { .. } | Outcome::Listeners { .. } => {}
        }
        {
            let mut table = self.lock();
            if let Some(s) = table.sessions.get_mut(&key) {
                s.phase = Phase::Forwarding;
                s.ready_since = None;
                s.targets = targets.0.clone();
                s.target_addrs = targets.1;
                s.target_names = targets.2;
                self.persist(&key, s)?;
            }
        }
        info!(event = "updated", session = %key, owner = %who, targets = ?targets.0, "updated; forwarding");
        Ok(pb::Response {
            listeners,
            prod_listeners: targets.0,
        })
    }

    /// `release`: close every session of a uid and free its ports.
    pub async fn release(
        &self,
        who: &Identity,
        r: pb::Release,
    ) -> Result<pb::Response, ControlError> {
        check_uid(&r.uid)?;
        // The caller's own sessions of the uid (every one for an administrator).
        let keys: Vec<SessionKey> = {
            let table = self.lock();
            let of_uid: Vec<_> = table
                .sessions
                .iter()
                .filter(|(k, _)| k.uid == r.uid)
                .collect();
            let keys: Vec<SessionKey> = of_uid
                .iter()
                .filter(|(_, s)| self.policy.access.check_owner(who, &s.owner, "").is_ok())
                .map(|(k, _)| (*k).clone())
                .collect();
            if keys.is_empty() {
                if let Some((k, s)) = of_uid.first() {
                    self.policy
                        .access
                        .check_owner(who, &s.owner, &format!("session {k}"))?;
                }
            }
            keys
        };
        if keys.is_empty() {
            return Err(ControlError::NotFound(format!(
                "no session with this uid (tag {}) to release",
                scistream_protocol::tag::session_tag(&r.uid)
            )));
        }
        for key in keys {
            self.remove(&key, &who.to_string(), "released", false)
                .await?;
        }
        Ok(pb::Response::default())
    }

    /// Takes one session out of the store, the table and the data plane,
    /// and frees its ports. `event` names why in the log line. With
    /// `only_if_ready`, a session that got its update meanwhile is kept.
    async fn remove(
        &self,
        key: &SessionKey,
        by: &str,
        event: &str,
        only_if_ready: bool,
    ) -> Result<(), ControlError> {
        let Some(op_lock) = self.op_lock(key) else {
            return Ok(());
        };
        let _op = op_lock.lock().await;
        if only_if_ready
            && self
                .lock()
                .sessions
                .get(key)
                .is_none_or(|s| s.phase != Phase::Ready)
        {
            return Ok(());
        }
        // Out of the store first, so a restart cannot bring it back.
        self.store.remove(key).map_err(|e| {
            ControlError::Internal(format!(
                "this gateway cannot record the release of {key} durably ({e}); the session is kept"
            ))
        })?;
        // Out of the table next, so a data-plane restart cannot bring it back.
        let Some(session) = self.lock().sessions.remove(key) else {
            return Ok(());
        };
        if session.phase == Phase::Forwarding {
            let removal = self
                .dataplane
                .call(Command::RemoveSession { key: key.clone() }, Vec::new());
            match removal.await {
                Ok(Outcome::Failed { message }) => {
                    warn!(%key, %message, "data plane could not remove session")
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(%key, error = %e, "data plane unreachable during release; its restart drops the session")
                }
            }
        }
        let ports: Vec<u16> = session.listeners.iter().map(|l| l.addr.port()).collect();
        let (owner, listeners) = (session.owner.to_string(), session.listener_strings());
        drop(session);
        self.lock().ports.free(ports);
        info!(event, session = %key, %owner, by, ?listeners, "released");
        Ok(())
    }

    /// Releases the sessions that have waited for their `update` longer
    /// than `after` (they hold ports and forward nothing). Returns how many.
    pub async fn expire_unused(&self, after: Duration) -> usize {
        let now = tokio::time::Instant::now();
        let stale: Vec<SessionKey> = self
            .lock()
            .sessions
            .iter()
            .filter(|(_, s)| {
                s.phase == Phase::Ready
                    && s.ready_since
                        .is_some_and(|t| now.duration_since(t) >= after)
            })
            .map(|(k, _)| k.clone())
            .collect();
        let mut n = 0;
        for key in stale {
            match self
                .remove(&key, "this gateway (--update-timeout)", "expired", true)
                .await
            {
                Ok(()) => n += 1,
                Err(e) => {
                    warn!(%key, error = %e, "cannot release a session that never got its update")
                }
            }
        }
        n
    }

    /// The data channel of a session: an inbound (PROD) gateway receives
    /// from the peer gateway, an outbound (CONS) gateway sends to it.
    fn channel(&self, role: Role, client_cert: bool, target_names: &[String]) -> DataChannel {
        let tls = self.policy.data_tls;
        match role {
            Role::Prod => DataChannel::FromPeer {
                tls,
                client_cert: tls && client_cert,
            },
            Role::Cons => DataChannel::ToPeer {
                tls,
                server_names: target_names.to_vec(),
            },
        }
    }

    /// Sessions the data plane must be forwarding, with duplicates of their
    /// listening sockets, for re-handing to a restarted `s2ds`.
    pub fn forwarding_sessions(&self) -> Vec<(SessionSpec, Vec<OwnedFd>)> {
        let table = self.lock();
        let mut out = Vec::new();
        for (key, s) in table
            .sessions
            .iter()
            .filter(|(_, s)| s.phase == Phase::Forwarding)
        {
            let fds: Result<Vec<OwnedFd>, _> = s
                .listeners
                .iter()
                .map(|l| l.listener.try_clone().map(OwnedFd::from))
                .collect();
            match fds {
                Ok(fds) => out.push((
                    SessionSpec {
                        key: key.clone(),
                        listeners: s.listeners.iter().map(|l| l.addr).collect(),
                        targets: s.target_addrs.clone(),
                        rate_kbps: s.rate_kbps,
                        channel: self.channel(key.role, s.client_cert, &s.target_names),
                    },
                    fds,
                )),
                Err(e) => warn!(%key, error = %e, "cannot duplicate listeners to re-hand them"),
            }
        }
        out
    }

    /// Shutdown: closes this process's copies of every listening socket
    /// (the sessions stay in the store for the next start).
    pub fn close_listeners(&self) -> usize {
        let sessions = std::mem::take(&mut self.lock().sessions);
        sessions.len()
    }

    /// Connections the data plane has open, over all sessions.
    pub async fn open_connections(&self) -> Result<u64, DataPlaneError> {
        match self.dataplane.call(Command::Stats, Vec::new()).await? {
            Outcome::Stats { sessions } => Ok(sessions.iter().map(|s| s.conns_open).sum()),
            other => Err(DataPlaneError::Failed(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }

    /// Closes the data plane's listeners (graceful shutdown).
    pub async fn drain(&self) -> Result<(), DataPlaneError> {
        match self.dataplane.call(Command::Drain, Vec::new()).await? {
            Outcome::Failed { message } => Err(DataPlaneError::Failed(message)),
            _ => Ok(()),
        }
    }

    /// Number of sessions, and when the oldest started (for logs and tests).
    pub fn len(&self) -> usize {
        self.lock().sessions.len()
    }

    /// True when there is no session.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ports handed out now.
    pub fn ports_in_use(&self) -> usize {
        self.lock().ports.in_use()
    }

    /// Creation time of a session.
    pub fn created(&self, key: &SessionKey) -> Option<SystemTime> {
        self.lock().sessions.get(key).map(|s| s.created)
    }
}
