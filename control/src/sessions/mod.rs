//! Sessions: `req` → `hello` → `update` → `release`, as the gRPC calls
//! drive them.
//!
//! - [`request`] turns each gRPC message into a typed, checked value;
//! - [`policy`] holds what this gateway allows (admission, uids, targets);
//! - [`machine`] is the state machine: a synchronous table whose methods
//!   are the only places a session changes phase, and which say what to
//!   do next (a record to store, a command for the data plane);
//! - this module, the [`Registry`], is the asynchronous layer: it locks the
//!   machine, calls it, lets go, and then carries out the effects (store
//!   writes and data-plane calls never happen with the table locked);
//! - [`recover`] brings stored sessions back after a restart, [`view`]
//!   shows them to `list`, `status` and the metrics.
//!
//! A `req` holds no thread while it waits for its hello: it is a future
//! parked on a oneshot channel. If the caller goes away, tonic drops that
//! future and [`PendingReq`] tells the machine.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use scistream_protocol::handoff::{Command, Outcome, SessionKey};
use scistream_protocol::{Role, pb};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::auth::Identity;
use crate::dataplane::{DataPlane, DataPlaneError};
use crate::error::ControlError;
use crate::ports::PortAllocator;
use crate::store::{SessionStore, StoredSession};

mod machine;
mod policy;
mod recover;
pub(crate) mod request;
#[cfg(test)]
mod tests;
pub(crate) mod view;

use machine::{Machine, ReqEnd, Waiting};
pub use policy::Policy;
use request::{HelloMsg, NewSession, TargetsUpdate};

/// Timing knobs of the state machine.
#[derive(Debug, Clone)]
pub struct Timing {
    /// How long `req` waits for `hello`.
    pub hello_timeout: Duration,
    /// How long a `hello` waits for a `req` that has not arrived yet.
    pub hello_grace: Duration,
}

/// All sessions of this gateway.
#[derive(Debug)]
pub struct Registry {
    machine: Mutex<Machine>,
    /// Fired whenever a session starts waiting for its hello.
    new_session: Notify,
    timing: Timing,
    policy: Arc<Policy>,
    dataplane: DataPlane,
    store: Arc<SessionStore>,
}

fn dataplane_error(e: DataPlaneError) -> ControlError {
    match e {
        DataPlaneError::Failed(m) => ControlError::Internal(format!("data plane refused: {m}")),
        other => ControlError::Unavailable(format!("{other}; retry in a few seconds")),
    }
}

/// Tells the machine when a `req` ends without its hello (the caller went
/// away and tonic dropped the call).
struct PendingReq<'a> {
    registry: &'a Registry,
    key: SessionKey,
    serial: u64,
    armed: bool,
}

impl Drop for PendingReq<'_> {
    fn drop(&mut self) {
        if self.armed {
            let end = self.registry.lock().on_req_end(&self.key, self.serial);
            if let ReqEnd::Abandoned(s) = end {
                log_abandoned(&self.key, &s.owner, &s.listener_strings());
            }
        }
    }
}

fn log_abandoned(key: &SessionKey, owner: &Identity, listeners: &[String]) {
    info!(event = "timed_out", session = %key, %owner, ?listeners, "request ended before its hello; ports freed");
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
        let policy = Arc::new(policy);
        Registry {
            machine: Mutex::new(Machine::new(ports, policy.clone())),
            new_session: Notify::new(),
            timing,
            policy,
            dataplane,
            store,
        }
    }

    /// The data plane this registry hands sessions to.
    pub fn dataplane(&self) -> &DataPlane {
        &self.dataplane
    }

    fn lock(&self) -> MutexGuard<'_, Machine> {
        // Every machine method leaves the table consistent before anything
        // that can panic, so a poisoned lock still holds good data.
        self.machine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a session durably (before the reply that depends on it).
    fn persist(&self, record: &StoredSession) -> Result<(), ControlError> {
        self.store.put(record).map_err(|e| {
            let key = record.key();
            warn!(%key, error = %e, "cannot record the session durably");
            ControlError::Internal(format!(
                "this gateway cannot record session {key} durably ({e}); tell its administrators"
            ))
        })
    }

    /// `req`: allocate listeners and wait for the hello. `marked`: the call
    /// comes from this project's client, whose rate is meant (else see
    /// [`Policy::enforce_unmarked_rates`]). `first_index`: the connection
    /// index of its first listener, 0 except for part of a session whose
    /// listeners are spread over several cluster nodes.
    pub async fn req_at(
        &self,
        who: &Identity,
        r: pb::Request,
        marked: bool,
        first_index: u16,
    ) -> Result<pb::Response, ControlError> {
        let mut new = NewSession::parse(r, marked, who, &self.policy)?;
        new.first_index = first_index;
        let key = new.key.clone();
        let (num_conn, rate_kbps) = (new.num_conn, new.rate_kbps);
        let Waiting {
            serial,
            listeners,
            mut hello,
        } = self.lock().on_req(who, new)?;
        let mut pending = PendingReq {
            registry: self,
            key: key.clone(),
            serial,
            armed: true,
        };
        self.new_session.notify_waiters();
        info!(event = "requested", session = %key, owner = %who, num_conn, rate_kbps, ?listeners, "requested; waiting for hello");

        let waited = tokio::time::timeout(self.timing.hello_timeout, &mut hello).await;
        let mut end = self.lock().on_req_end(&key, serial);
        if matches!(end, ReqEnd::Recording) {
            // The hello is being stored this moment: its outcome decides.
            let _ = hello.await;
            end = self.lock().on_req_end(&key, serial);
        }
        pending.armed = false;
        match end {
            ReqEnd::Ready(response) => {
                info!(event = "ready", session = %key, owner = %who, listeners = ?response.listeners, "ready");
                Ok(response)
            }
            ReqEnd::Abandoned(s) if waited.is_err() => {
                log_abandoned(&key, &s.owner, &s.listener_strings());
                Err(ControlError::DeadlineExceeded(format!(
                    "no hello for session {key} within {} s; the listeners were released. \
                     Start the application (or s2uc) that sends the hello, then request again",
                    self.timing.hello_timeout.as_secs()
                )))
            }
            _ => Err(ControlError::Aborted(format!(
                "session {key} was released while waiting for its hello"
            ))),
        }
    }

    /// `hello`: bind an application's announcement to the `req` waiting
    /// for it; a hello that arrives first waits up to the grace time.
    pub async fn hello(
        &self,
        who: &Identity,
        h: pb::Hello,
    ) -> Result<pb::AppResponse, ControlError> {
        let hello = HelloMsg::parse(h)?;
        let deadline = tokio::time::Instant::now() + self.timing.hello_grace;
        let recording = loop {
            let notified = self.new_session.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(r) = self.lock().on_hello(who, &hello)? {
                break r;
            }
            // Nothing waits for this hello yet: its req may still be on its
            // way (also when the uid's other role is here already, as when
            // one gateway holds both ends), so it is held for the grace time.
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let waited = self.timing.hello_grace;
                return Err(self.lock().hello_unmatched(&hello.uid, waited));
            }
        };
        let key = recording.key.clone();
        let _op = recording.op_lock.lock().await;
        if !self.lock().is_current(&key, recording.serial) {
            return Err(ControlError::Aborted(format!(
                "session {key} was released while its hello was recorded"
            )));
        }
        if let Err(e) = self.persist(&recording.record) {
            self.lock().hello_not_recorded(&key, recording.serial);
            return Err(e);
        }
        let now = tokio::time::Instant::now().into_std();
        match self.lock().hello_recorded(&key, recording.serial, now) {
            Some(reply) => {
                info!(session = %key, receivers = ?hello.receivers, "hello");
                Ok(reply)
            }
            None => Err(ControlError::Aborted(format!(
                "session {key} was released while its hello was recorded"
            ))),
        }
    }

    /// `update`: set the targets and start (or re-point) forwarding.
    pub async fn update(
        &self,
        who: &Identity,
        u: pb::UpdateTargets,
    ) -> Result<pb::Response, ControlError> {
        let update = TargetsUpdate::parse(u)?;
        // Who may change which session, and how many targets it can take,
        // are settled before any name is resolved.
        let (key, (num_conn, own_listeners)) = {
            let machine = self.lock();
            let key = machine.find_for(who, &update.uid, update.role)?;
            let bounds = machine.update_bounds(&key)?;
            (key, bounds)
        };
        let targets = update.resolve(&key, num_conn).await?;
        self.policy
            .check_targets(key.role, &targets, &own_listeners)?;
        if key.role == Role::Cons && self.policy.data_tls {
            crate::probe::check_inbound_gateways(self.policy.probe.as_ref(), &key.uid, &targets)
                .await?;
        }
        let op_lock = self
            .lock()
            .op_lock(&key)
            .ok_or_else(|| ControlError::NotFound(format!("session {key} was released")))?;
        let _op = op_lock.lock().await;
        let (command, fds) = self.lock().begin_update(who, &key, &targets)?;
        match self.dataplane.call(command, fds).await {
            Err(e) => return Err(dataplane_error(e)),
            Ok(Outcome::Failed { message }) => {
                return Err(ControlError::Internal(format!(
                    "data plane refused the session: {message}"
                )));
            }
            Ok(_) => {}
        }
        let finished = self.lock().finish_update(&key, &targets);
        let (record, reply) = finished.ok_or_else(|| {
            ControlError::Aborted(format!("session {key} went during the update"))
        })?;
        self.persist(&record)?;
        info!(event = "updated", session = %key, owner = %who, targets = ?reply.prod_listeners, "updated; forwarding");
        Ok(reply)
    }

    /// `release`: close every session of a uid (only `role`'s, when the
    /// request names one) and free its ports.
    pub async fn release(
        &self,
        who: &Identity,
        r: pb::Release,
    ) -> Result<pb::Response, ControlError> {
        let role = match r.role.as_str() {
            "" => None,
            given => Some(
                given
                    .parse::<scistream_protocol::Role>()
                    .map_err(|e| ControlError::InvalidArgument(format!("release: {e}")))?,
            ),
        };
        let uid = request::release_uid(r)?;
        let mut keys = self.lock().releasable(who, &uid)?;
        if let Some(role) = role {
            keys.retain(|k| k.role == role);
            if keys.is_empty() {
                return Err(ControlError::NotFound(format!(
                    "no {role} session with this uid (tag {}) to release",
                    scistream_protocol::tag::session_tag(&uid)
                )));
            }
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
        let Some(op_lock) = self.lock().op_lock(key) else {
            return Ok(());
        };
        let _op = op_lock.lock().await;
        if only_if_ready && !self.lock().is_ready(key) {
            return Ok(());
        }
        // Out of the store first, so a restart cannot bring it back.
        self.store.remove(key).map_err(|e| {
            ControlError::Internal(format!(
                "this gateway cannot record the release of {key} durably ({e}); the session is kept"
            ))
        })?;
        // Out of the table next, so a data-plane restart cannot bring it back.
        let Some(session) = self.lock().remove(key) else {
            return Ok(());
        };
        if session.phase() == machine::Phase::Forwarding {
            let removal = Command::RemoveSession { key: key.clone() };
            match self.dataplane.call(removal, Vec::new()).await {
                Ok(Outcome::Failed { message }) => {
                    warn!(%key, %message, "data plane could not remove session")
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(%key, error = %e, "data plane unreachable during release; its restart drops the session")
                }
            }
        }
        let (owner, listeners) = (&session.owner, session.listener_strings());
        info!(event, session = %key, %owner, by, ?listeners, "released");
        Ok(())
    }

    /// Releases the sessions that have waited for their `update` longer
    /// than `after` (they hold ports and forward nothing). Returns how many.
    pub async fn expire_unused(&self, after: Duration) -> usize {
        let now = tokio::time::Instant::now().into_std();
        let stale = self.lock().expired(now, after);
        let mut n = 0;
        for key in stale {
            let by = "this gateway (--update-timeout)";
            match self.remove(&key, by, "expired", true).await {
                Ok(()) => n += 1,
                Err(e) => {
                    warn!(%key, error = %e, "cannot release a session that never got its update")
                }
            }
        }
        n
    }

    /// The uids of the sessions held here.
    pub fn uids(&self) -> Vec<String> {
        let mut uids: Vec<String> = self
            .lock()
            .sessions()
            .keys()
            .map(|k| k.uid.clone())
            .collect();
        uids.dedup();
        uids
    }

    /// Releases every session of `uid` held here, on this gateway's own
    /// authority (`by` says why, in the log). How many went.
    pub async fn release_here(&self, uid: &str, by: &str) -> usize {
        let keys: Vec<SessionKey> = self
            .lock()
            .sessions()
            .keys()
            .filter(|k| k.uid == uid)
            .cloned()
            .collect();
        let mut n = 0;
        for key in keys {
            match self.remove(&key, by, "released", false).await {
                Ok(()) => n += 1,
                Err(e) => warn!(%key, error = %e, "cannot release a session"),
            }
        }
        n
    }

    /// Sessions the data plane must be forwarding, with duplicates of their
    /// listening sockets, for re-handing to a restarted `s2ds`.
    pub fn forwarding_sessions(
        &self,
    ) -> Vec<(
        scistream_protocol::handoff::SessionSpec,
        Vec<std::os::fd::OwnedFd>,
    )> {
        let machine = self.lock();
        let mut out = Vec::new();
        for key in machine.forwarding() {
            match machine.handoff(&key) {
                Some(Ok(handoff)) => out.push(handoff),
                Some(Err(e)) => {
                    warn!(%key, error = %e, "cannot duplicate listeners to re-hand them")
                }
                None => {}
            }
        }
        out
    }

    /// Shutdown: closes this process's copies of every listening socket
    /// (the sessions stay in the store for the next start).
    pub fn close_listeners(&self) -> usize {
        self.lock().take_all()
    }
}
