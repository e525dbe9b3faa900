//! Turning the gRPC messages into typed values: every field checked once,
//! with a message that names it. Nothing here looks at the session table.

use std::net::SocketAddr;
use std::time::Duration;

use scistream_protocol::handoff::SessionKey;
use scistream_protocol::units::format_rate;
use scistream_protocol::{
    Endpoint, MAX_LISTENERS_PER_SESSION, Protocol, Role, Target, pb, validate_uid,
};
use tracing::info;

use super::policy::Policy;
use crate::auth::Identity;
use crate::error::ControlError;

fn invalid(what: &str, e: impl std::fmt::Display) -> ControlError {
    ControlError::InvalidArgument(format!("{what}: {e}"))
}

fn uid(uid: String) -> Result<String, ControlError> {
    validate_uid(&uid).map_err(|e| invalid("uid", e))?;
    Ok(uid)
}

fn role(role: &str) -> Result<Role, ControlError> {
    role.parse().map_err(|e| invalid("role", e))
}

fn endpoints(field: &str, items: &[String]) -> Result<Vec<Endpoint>, ControlError> {
    items
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.parse::<Endpoint>()
                .map_err(|e| invalid(&format!("{field}[{i}]"), e))
        })
        .collect()
}

/// A `req`: a new session to hold listeners for.
#[derive(Debug, Clone)]
pub(crate) struct NewSession {
    /// Its key.
    pub key: SessionKey,
    /// Listeners to allocate.
    pub num_conn: usize,
    /// Rate cap, kbit/s (0: none).
    pub rate_kbps: u64,
    /// Its inbound side requires the peer gateway's certificate.
    pub client_cert: bool,
    /// Connection index of its first listener (see [`SessionSpec::first_index`]).
    ///
    /// [`SessionSpec::first_index`]: scistream_protocol::handoff::SessionSpec::first_index
    pub first_index: u16,
    /// What its listeners carry.
    pub protocol: Protocol,
}

impl NewSession {
    /// Checks a `req` of `who` against the message rules and this
    /// gateway's limits. `marked`: the call comes from this project's
    /// client, whose rate is meant (else see [`Policy::enforce_unmarked_rates`]).
    pub fn parse(
        r: pb::Request,
        marked: bool,
        who: &Identity,
        policy: &Policy,
    ) -> Result<Self, ControlError> {
        let uid = uid(r.uid)?;
        policy.access.check_creator(who)?;
        let role = role(&r.role)?;
        let num_conn = usize::try_from(r.num_conn)
            .ok()
            .filter(|&n| (1..=MAX_LISTENERS_PER_SESSION).contains(&n))
            .ok_or_else(|| {
                ControlError::InvalidArgument(format!(
                    "num_conn is {}; it must be between 1 and {MAX_LISTENERS_PER_SESSION}",
                    r.num_conn
                ))
            })?;
        let rate_kbps = rate(r.rate, marked, policy)?;
        if num_conn > policy.max_conns_per_session {
            return Err(ControlError::InvalidArgument(format!(
                "num_conn is {num_conn}; this gateway allows at most {} connections per session",
                policy.max_conns_per_session
            )));
        }
        let client_cert = policy.uid_protection(&uid, role)?;
        let protocol = Protocol::from_request(&r.protocol)
            .map_err(|e| ControlError::InvalidArgument(e.to_string()))?;
        Ok(NewSession {
            protocol,
            key: SessionKey { uid, role },
            num_conn,
            rate_kbps,
            client_cert,
            first_index: 0,
        })
    }
}

/// The rate of a `req`, kbit/s, checked against the gateway's limits.
fn rate(rate: i32, marked: bool, policy: &Policy) -> Result<u64, ControlError> {
    if !marked && !policy.enforce_unmarked_rates && rate > 0 {
        info!(
            rate_kbps = rate,
            "rate of a client that does not mark its requests (SciStream's own sends 10000 on every \
             request, never enforced by SciStream): not enforced (--unmarked-rates ignore)"
        );
        return capped(0, policy);
    }
    let rate_kbps = u64::try_from(rate).map_err(|_| {
        ControlError::InvalidArgument(format!(
            "rate is {rate}; it must be 0 (no cap) or a positive number of kbit/s"
        ))
    })?;
    capped(rate_kbps, policy)
}

fn capped(rate_kbps: u64, policy: &Policy) -> Result<u64, ControlError> {
    if let Some(max) = policy.max_rate_bps {
        if rate_kbps == 0 || rate_kbps.saturating_mul(1000) > max {
            let asked = if rate_kbps == 0 {
                "0 (no cap)".to_string()
            } else {
                format!("{rate_kbps} kbit/s")
            };
            return Err(ControlError::InvalidArgument(format!(
                "rate {asked} is above what this gateway allows ({} kbit/s, {}); ask for at most {} kbit/s",
                max / 1000,
                format_rate(max as f64),
                max / 1000
            )));
        }
    }
    if let (Some(capacity), 0) = (policy.capacity_bps, rate_kbps) {
        return Err(ControlError::InvalidArgument(format!(
            "this gateway admits only rate-capped sessions (it has a capacity of {}): ask for a rate",
            format_rate(capacity as f64)
        )));
    }
    Ok(rate_kbps)
}

/// A `hello`: an application announcing itself for a waiting `req`.
#[derive(Debug, Clone)]
pub(crate) struct HelloMsg {
    /// The session uid.
    pub uid: String,
    /// The role it names, a hint only: SciStream's clients send "PROD" for
    /// both ends, so the session's role comes from its `req`.
    pub role_hint: Option<Role>,
    /// `prod_listeners`: the receivers (for a PROD session).
    pub receivers: Vec<String>,
}

impl HelloMsg {
    /// Checks a `hello`.
    pub fn parse(h: pb::Hello) -> Result<Self, ControlError> {
        let uid = uid(h.uid)?;
        endpoints("prod_listeners", &h.prod_listeners)?;
        Ok(HelloMsg {
            uid,
            role_hint: role(&h.role).ok(),
            receivers: h.prod_listeners,
        })
    }
}

/// An `update`: where a session's connections go from now on.
#[derive(Debug, Clone)]
pub(crate) struct TargetsUpdate {
    /// The session uid.
    pub uid: String,
    /// The role, absent from SciStream's client (then the uid must name one session).
    pub role: Option<Role>,
    /// `remote_listeners`, unparsed: who may change the session is settled
    /// before its targets are looked at.
    pub given: Vec<String>,
}

impl TargetsUpdate {
    /// Checks an `update`'s uid, role and that it names targets.
    pub fn parse(u: pb::UpdateTargets) -> Result<Self, ControlError> {
        let uid = uid(u.uid)?;
        let role = if u.role.is_empty() {
            None
        } else {
            Some(role(&u.role)?)
        };
        if u.remote_listeners.is_empty() {
            return Err(ControlError::InvalidArgument(
                "remote_listeners is empty: give at least one HOST:PORT to forward to".into(),
            ));
        }
        Ok(TargetsUpdate {
            uid,
            role,
            given: u.remote_listeners,
        })
    }

    /// The targets, parsed and resolved, for a session of `key` with
    /// `num_conn` listeners.
    pub async fn resolve(
        &self,
        key: &SessionKey,
        num_conn: usize,
    ) -> Result<Vec<Target>, ControlError> {
        if self.given.len() > num_conn {
            return Err(ControlError::InvalidArgument(format!(
                "remote_listeners has {} entries; session {key} has {num_conn} connections, so at most {num_conn}",
                self.given.len()
            )));
        }
        let parsed = endpoints("remote_listeners", &self.given)?;
        let mut targets = Vec::with_capacity(parsed.len());
        for (given, e) in self.given.iter().zip(&parsed) {
            let addr = resolve(e).await?;
            targets.push(Target::new(given, addr).map_err(|e| invalid("remote_listeners", e))?);
        }
        Ok(targets)
    }
}

/// A `release`'s uid.
pub(crate) fn release_uid(r: pb::Release) -> Result<String, ControlError> {
    uid(r.uid)
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
