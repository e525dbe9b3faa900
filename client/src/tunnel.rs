//! The two SciStream use cases and release, as calls a workflow tool can make.
//!
//! Each request sends `req` and `hello` concurrently on one HTTP/2
//! connection — the server holds a `hello` that overtakes its `req`, so
//! there is no sleep between them — then `update`.

use scistream_protocol::{Endpoint, MAX_LISTENERS_PER_SESSION, Protocol, Role, pb, validate_uid};
use serde::Serialize;

use crate::connect::Connection;
use crate::error::ClientError;

/// A tunnel end as the S2CS set it up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tunnel {
    /// The session uid (give it to the other side).
    pub uid: String,
    /// `PROD` (inbound gateway) or `CONS` (outbound gateway).
    pub role: Role,
    /// Listener addresses on this gateway.
    pub listeners: Vec<String>,
    /// Where each listener forwards to, in listener order.
    pub targets: Vec<String>,
    /// Rate cap asked for, kbit/s (0: none).
    pub rate_kbps: u32,
    /// What the `req` answered, before the update (SciStream's client
    /// prints it in protobuf text form).
    #[serde(skip)]
    pub requested: pb::Response,
}

/// Options common to both requests.
#[derive(Debug, Clone)]
pub struct RequestOptions {
    /// Parallel connections (listeners).
    pub num_conn: u32,
    /// Rate cap in kbit/s (0: none).
    pub rate_kbps: u32,
    /// What the listeners carry: TCP (SciStream's), UDP, or both.
    pub protocol: Protocol,
}

impl Default for RequestOptions {
    fn default() -> Self {
        RequestOptions {
            num_conn: 1,
            rate_kbps: 0,
            protocol: Protocol::Tcp,
        }
    }
}

impl RequestOptions {
    /// The `protocol` field of a `req`: empty for TCP, so that a TCP
    /// request is byte-for-byte what SciStream's client sends.
    fn protocol_field(&self) -> String {
        match self.protocol {
            Protocol::Tcp => String::new(),
            p => p.as_str().into(),
        }
    }

    fn check(&self) -> Result<(i32, i32), ClientError> {
        if self.num_conn == 0 || self.num_conn as usize > MAX_LISTENERS_PER_SESSION {
            return Err(ClientError::Input(format!(
                "--num_conn is {}; it must be between 1 and {MAX_LISTENERS_PER_SESSION}",
                self.num_conn
            )));
        }
        let rate = i32::try_from(self.rate_kbps).map_err(|_| {
            ClientError::Input(format!(
                "--rate {} is too large (kbit/s, at most {})",
                self.rate_kbps,
                i32::MAX
            ))
        })?;
        Ok((self.num_conn as i32, rate))
    }
}

/// Builds `IP:PORT` strings from `--remote_ip` and `--receiver_ports`.
pub fn receiver_endpoints(remote_ip: &str, ports: &[u16]) -> Result<Vec<String>, ClientError> {
    if ports.is_empty() {
        return Err(ClientError::Input(
            "--receiver_ports is empty: give at least one port".into(),
        ));
    }
    ports
        .iter()
        .map(|p| {
            let text = if remote_ip.contains(':') && !remote_ip.starts_with('[') {
                format!("[{remote_ip}]:{p}")
            } else {
                format!("{remote_ip}:{p}")
            };
            text.parse::<Endpoint>()
                .map(|e| e.to_string())
                .map_err(|e| ClientError::Input(format!("--remote_ip/--receiver_ports: {e}")))
        })
        .collect()
}

/// Parses `--receiver_ports` (`5001,5002`).
pub fn parse_ports(s: &str) -> Result<Vec<u16>, ClientError> {
    s.split(',')
        .map(|p| match p.trim().parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(ClientError::Input(format!(
                "--receiver_ports: '{p}' is not a port (1-65535); give a comma-separated list such as 5001,5002"
            ))),
        })
        .collect()
}

/// Parses a listener list (`a:1,b:2`), as `outbound_request` takes it.
pub fn parse_listeners(s: &str) -> Result<Vec<String>, ClientError> {
    scistream_protocol::endpoint::parse_list(s)
        .map(|v| v.into_iter().map(|e| e.to_string()).collect())
        .map_err(|e| ClientError::Input(format!("inbound listener list: {e}")))
}

/// A fresh session uid: a random (v4) UUID, 122 bits of randomness.
pub fn new_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

async fn req_and_hello(
    conn: &Connection,
    uid: &str,
    role: Role,
    hello_role: Role,
    hello_listeners: Vec<String>,
    options: &RequestOptions,
) -> Result<pb::Response, ClientError> {
    let (num_conn, rate) = options.check()?;
    let mut req_client = conn.client.clone();
    let mut hello_client = conn.client.clone();
    let req = pb::Request {
        uid: uid.into(),
        role: role.as_str().into(),
        num_conn,
        rate,
        protocol: options.protocol_field(),
    };
    let hello = pb::Hello {
        uid: uid.into(),
        prod_listeners: hello_listeners,
        role: hello_role.as_str().into(),
    };
    let req = req_client.req(req);
    let hello = hello_client.hello(hello);
    tokio::pin!(req, hello);
    // A failed req is the answer at once: its hello would otherwise wait
    // for a session that will not come (up to the gateway's hello timeout;
    // a cluster node's refusal in 4 ms took s2uc 20 s). Dropping the hello
    // cancels it at the gateway.
    tokio::select! {
        r = &mut req => {
            let response = r.map_err(|s| conn.status_error("req", s))?;
            hello.await.map_err(|s| conn.status_error("hello", s))?;
            Ok(response.into_inner())
        }
        h = &mut hello => {
            match h {
                Ok(_) => Ok(req
                    .await
                    .map_err(|s| conn.status_error("req", s))?
                    .into_inner()),
                // The req's own error says most (e.g. ALREADY_EXISTS): give
                // it a moment to arrive, else report the hello's.
                Err(hello_error) => {
                    match tokio::time::timeout(std::time::Duration::from_secs(2), req).await {
                        Ok(Err(s)) => Err(conn.status_error("req", s)),
                        _ => Err(conn.status_error("hello", hello_error)),
                    }
                }
            }
        }
    }
}

async fn update(
    conn: &Connection,
    uid: &str,
    role: Role,
    targets: Vec<String>,
) -> Result<pb::Response, ClientError> {
    let mut client = conn.client.clone();
    let u = pb::UpdateTargets {
        uid: uid.into(),
        remote_listeners: targets,
        role: role.as_str().into(),
    };
    Ok(client
        .update(u)
        .await
        .map_err(|s| conn.status_error("update", s))?
        .into_inner())
}

/// Use case 1 (HPC side): listeners on the inbound gateway forwarding to
/// the receivers `remote_ip:port`.
pub async fn inbound_request(
    conn: &Connection,
    remote_ip: &str,
    receiver_ports: &[u16],
    options: &RequestOptions,
) -> Result<Tunnel, ClientError> {
    inbound_request_as(conn, &new_uid(), remote_ip, receiver_ports, options).await
}

/// [`inbound_request`] with a uid of the caller's choosing (`s2uc --mock`
/// uses SciStream's fixed test uid).
pub async fn inbound_request_as(
    conn: &Connection,
    uid: &str,
    remote_ip: &str,
    receiver_ports: &[u16],
    options: &RequestOptions,
) -> Result<Tunnel, ClientError> {
    options.check()?;
    validate_uid(uid).map_err(|e| ClientError::Input(format!("UID: {e}")))?;
    let receivers = receiver_endpoints(remote_ip, receiver_ports)?;
    let uid = uid.to_owned();
    let resp = req_and_hello(
        conn,
        &uid,
        Role::Prod,
        Role::Prod,
        receivers.clone(),
        options,
    )
    .await?;
    let targets = if resp.prod_listeners.is_empty() {
        receivers
    } else {
        resp.prod_listeners.clone()
    };
    let updated = match update(conn, &uid, Role::Prod, targets).await {
        Ok(u) => u,
        Err(e) => return Err(release_after_refused_update(conn, &uid, Role::Prod, e).await),
    };
    Ok(Tunnel {
        uid,
        role: Role::Prod,
        listeners: resp.listeners.clone(),
        targets: updated.prod_listeners,
        rate_kbps: options.rate_kbps,
        requested: resp,
    })
}

/// SciStream's `prod-req`: a PROD request whose hello comes from the
/// application itself (`s2uc hello`, or SciStream's application
/// controller), then the update to the receivers that hello announced.
/// Waits as long as the gateway holds the request (its hello timeout).
pub async fn prod_req(
    conn: &Connection,
    uid: &str,
    options: &RequestOptions,
) -> Result<Tunnel, ClientError> {
    let (num_conn, rate) = options.check()?;
    validate_uid(uid).map_err(|e| ClientError::Input(format!("UID: {e}")))?;
    let mut client = conn.client.clone();
    let resp = client
        .req(pb::Request {
            uid: uid.into(),
            role: Role::Prod.as_str().into(),
            num_conn,
            rate,
            protocol: options.protocol_field(),
        })
        .await
        .map_err(|s| conn.status_error("req", s))?
        .into_inner();
    let updated = update(conn, uid, Role::Prod, resp.prod_listeners.clone()).await?;
    Ok(Tunnel {
        uid: uid.to_owned(),
        role: Role::Prod,
        listeners: resp.listeners.clone(),
        targets: updated.prod_listeners,
        rate_kbps: options.rate_kbps,
        requested: resp,
    })
}

/// Use case 2 (instrument side): listeners on the outbound gateway
/// forwarding to the inbound gateway's listeners of session `uid`.
/// `announce` is what the hello carries (the instrument's address).
pub async fn outbound_request(
    conn: &Connection,
    uid: &str,
    inbound_listeners: Vec<String>,
    announce: Vec<String>,
    options: &RequestOptions,
) -> Result<Tunnel, ClientError> {
    options.check()?;
    validate_uid(uid).map_err(|e| ClientError::Input(format!("UID: {e}")))?;
    if inbound_listeners.is_empty() {
        return Err(ClientError::Input("no inbound listeners given".into()));
    }
    let resp = req_and_hello(conn, uid, Role::Cons, Role::Cons, announce, options).await?;
    let updated = match update(conn, uid, Role::Cons, inbound_listeners).await {
        Ok(u) => u,
        Err(e) => return Err(release_after_refused_update(conn, uid, Role::Cons, e).await),
    };
    Ok(Tunnel {
        uid: uid.to_owned(),
        role: Role::Cons,
        listeners: resp.listeners.clone(),
        targets: updated.prod_listeners,
        rate_kbps: options.rate_kbps,
        requested: resp,
    })
}

/// What a hello returned: the gateway's message and the session's listeners.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HelloReply {
    /// The gateway's words.
    pub message: String,
    /// The session's listeners on that gateway.
    pub listeners: Vec<String>,
}

/// Announces an application for the request `uid` waiting on this S2CS (as
/// SciStream's application controller does): the `req` returns once the
/// hello arrived. `prod_listeners` are the receivers, for a PROD session.
pub async fn hello(
    conn: &Connection,
    uid: &str,
    role: Role,
    prod_listeners: Vec<String>,
) -> Result<HelloReply, ClientError> {
    validate_uid(uid).map_err(|e| ClientError::Input(format!("UID: {e}")))?;
    for (i, l) in prod_listeners.iter().enumerate() {
        l.parse::<scistream_protocol::Endpoint>()
            .map_err(|e| ClientError::Input(format!("--prod-listeners[{i}] '{l}': {e}")))?;
    }
    let mut client = conn.client.clone();
    let r = client
        .hello(pb::Hello {
            uid: uid.into(),
            prod_listeners,
            role: role.as_str().into(),
        })
        .await
        .map_err(|s| conn.status_error("hello", s))?
        .into_inner();
    Ok(HelloReply {
        message: r.message,
        listeners: r.listeners,
    })
}

/// The caller's sessions on this S2CS (every one, for an administrator).
pub async fn list(conn: &Connection) -> Result<Vec<pb::SessionStatus>, ClientError> {
    let mut client = conn.client.clone();
    Ok(client
        .list(pb::ListRequest {})
        .await
        .map_err(|s| conn.status_error("list", s))?
        .into_inner()
        .sessions)
}

/// One uid's sessions on this S2CS, with their connections.
pub async fn status(conn: &Connection, uid: &str) -> Result<Vec<pb::SessionStatus>, ClientError> {
    validate_uid(uid).map_err(|e| ClientError::Input(format!("UID: {e}")))?;
    let mut client = conn.client.clone();
    Ok(client
        .status(pb::StatusRequest { uid: uid.into() })
        .await
        .map_err(|s| conn.status_error("status", s))?
        .into_inner()
        .sessions)
}

/// Whether the part's node reported its counters (a lost or unreachable
/// part is shown from the cluster's record, without them).
fn reported(s: &pb::SessionStatus) -> bool {
    !matches!(s.phase.as_str(), "lost" | "unreachable")
}

/// A byte count for people, or "unknown" for a part whose node did not report.
fn size_if_reported(s: &pb::SessionStatus, bytes: u64) -> String {
    if reported(s) {
        scistream_protocol::units::format_size(bytes)
    } else {
        "unknown".into()
    }
}

/// A rate for people, or "n/a" when the gateway had no earlier sample.
fn rate_or_pending(s: &pb::SessionStatus, bps: f64) -> String {
    if s.rates_pending || !reported(s) {
        "n/a".into()
    } else {
        scistream_protocol::units::format_rate(bps)
    }
}

/// A session status as JSON, for workflow tools (`bps_*` are null while
/// `rates_pending`).
pub fn status_json(s: &pb::SessionStatus) -> serde_json::Value {
    serde_json::json!({
        "uid": s.uid, "tag": s.tag, "node": s.node, "role": s.role, "owner": s.owner, "phase": s.phase,
        "listeners": s.listeners, "targets": s.targets, "rate_kbps": s.rate_kbps,
        "age_ms": s.age_ms, "conns_open": s.conns_open, "conns_total": s.conns_total,
        "bytes_to_target": reported(s).then_some(s.bytes_to_target),
        "bytes_from_target": reported(s).then_some(s.bytes_from_target),
        "reported": reported(s),
        "errors": s.errors, "rejected": s.rejected,
        "bps_to_target": (!s.rates_pending && reported(s)).then_some(s.bps_to_target),
        "bps_from_target": (!s.rates_pending && reported(s)).then_some(s.bps_from_target),
        "rates_pending": s.rates_pending,
        "last_failure": (!s.last_failure.is_empty()).then(|| serde_json::json!({
            "reason": s.last_failure, "age_ms": s.last_failure_age_ms,
        })),
        "connections": s.connections.iter().map(|c| serde_json::json!({
            "peer": c.peer, "target": c.target, "mode": c.mode,
            "bytes_to_target": c.bytes_to_target, "bytes_from_target": c.bytes_from_target,
            "age_ms": c.age_ms,
        })).collect::<Vec<_>>(),
        "protocol": protocol_name(s),
        "udp": {
            "flows_open": s.udp_flows_open, "flows_total": s.udp_flows_total,
            "flows_expired": s.udp_flows_expired,
            "datagrams_to_target": s.udp_datagrams_to_target,
            "bytes_to_target": s.udp_bytes_to_target,
            "datagrams_from_target": s.udp_datagrams_from_target,
            "bytes_from_target": s.udp_bytes_from_target,
            "dropped": s.udp_dropped,
            "kernel_dropped": s.udp_kernel_dropped,
        },
    })
}

/// A status's protocol; a gateway that does not report one (SciStream-era
/// scistream-rs) carries TCP.
fn protocol_name(s: &pb::SessionStatus) -> &str {
    if s.protocol.is_empty() {
        "tcp"
    } else {
        &s.protocol
    }
}

/// A session spread over several cluster nodes, summed over its nodes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionTotal {
    /// PROD or CONS.
    pub role: String,
    /// Nodes holding part of it (lost ones too).
    pub nodes: usize,
    /// Its listeners, on every node.
    pub listeners: usize,
    /// Listeners on nodes whose part is lost or does not answer.
    pub listeners_lost: usize,
    /// Connections open now, and since it started.
    pub conns_open: u64,
    /// Connections since it started.
    pub conns_total: u64,
    /// Bytes towards the target, and back.
    pub bytes_to_target: u64,
    /// Bytes back from the target.
    pub bytes_from_target: u64,
    /// Bits per second towards the target, and back.
    pub bps_to_target: f64,
    /// Bits per second back from the target.
    pub bps_from_target: f64,
}

/// Per role, the sum over nodes of a `status` that names more than one
/// node (cluster mode, a session spread over nodes); empty otherwise.
pub fn session_totals(sessions: &[pb::SessionStatus]) -> Vec<SessionTotal> {
    let mut totals: Vec<SessionTotal> = Vec::new();
    for s in sessions.iter().filter(|s| !s.node.is_empty()) {
        let t = match totals.iter_mut().position(|t| t.role == s.role) {
            Some(i) => &mut totals[i],
            None => {
                totals.push(SessionTotal {
                    role: s.role.clone(),
                    ..Default::default()
                });
                let last = totals.len() - 1;
                &mut totals[last]
            }
        };
        t.nodes += 1;
        t.listeners += s.listeners.len();
        if matches!(s.phase.as_str(), "lost" | "unreachable") {
            t.listeners_lost += s.listeners.len();
        }
        t.conns_open += s.conns_open;
        t.conns_total += s.conns_total;
        t.bytes_to_target += s.bytes_to_target;
        t.bytes_from_target += s.bytes_from_target;
        t.bps_to_target += s.bps_to_target;
        t.bps_from_target += s.bps_from_target;
    }
    totals.retain(|t| t.nodes > 1);
    totals
}

/// A `list` folded per session: each uid once, in the order first seen,
/// with its entries (one per node and role) and, for a session spread over
/// several nodes, its sums per role.
pub fn fold_list(
    sessions: &[pb::SessionStatus],
) -> Vec<(String, Vec<&pb::SessionStatus>, Vec<SessionTotal>)> {
    let mut folded: Vec<(String, Vec<&pb::SessionStatus>)> = Vec::new();
    for s in sessions {
        match folded.iter_mut().find(|(uid, _)| *uid == s.uid) {
            Some((_, entries)) => entries.push(s),
            None => folded.push((s.uid.clone(), vec![s])),
        }
    }
    folded
        .into_iter()
        .map(|(uid, entries)| {
            let owned: Vec<pb::SessionStatus> = entries.iter().map(|s| (*s).clone()).collect();
            let totals = session_totals(&owned);
            (uid, entries, totals)
        })
        .collect()
}

/// A session's sum over nodes as JSON.
pub fn total_json(t: &SessionTotal) -> serde_json::Value {
    serde_json::json!({
        "role": t.role, "nodes": t.nodes, "listeners": t.listeners,
        "listeners_lost": t.listeners_lost, "conns_open": t.conns_open,
        "conns_total": t.conns_total, "bytes_to_target": t.bytes_to_target,
        "bytes_from_target": t.bytes_from_target, "bps_to_target": t.bps_to_target,
        "bps_from_target": t.bps_from_target,
    })
}

/// A session's sum over nodes for people.
pub fn total_text(t: &SessionTotal) -> String {
    use scistream_protocol::units::{format_rate, format_size};
    format!(
        "{} over {} nodes: {} listeners ({} lost), {} connections open, {} total; {} to target, {} back; now {} to target, {} back{}\n",
        t.role,
        t.nodes,
        t.listeners,
        t.listeners_lost,
        t.conns_open,
        t.conns_total,
        format_size(t.bytes_to_target),
        format_size(t.bytes_from_target),
        format_rate(t.bps_to_target),
        format_rate(t.bps_from_target),
        if t.listeners_lost > 0 {
            " (lost parts' bytes not known, not counted)"
        } else {
            ""
        },
    )
}

/// A session status for people.
pub fn status_text(s: &pb::SessionStatus, with_connections: bool) -> String {
    use scistream_protocol::units::format_size;
    let mut t = format!(
        "{} {} ({}, owner {}, age {} s)\n  log tag:   {}\n  listeners: {}\n  targets:   {}\n  rate cap:  {}\n  connections: {} open, {} total, {} failed, {} refused\n  bytes:     {} to target, {} back\n  now:       {} to target, {} back{}\n",
        s.uid,
        s.role,
        s.phase,
        s.owner,
        s.age_ms / 1000,
        if s.tag.is_empty() { "-" } else { &s.tag },
        s.listeners.join(","),
        if s.targets.is_empty() {
            "-".to_string()
        } else {
            s.targets.join(",")
        },
        if s.rate_kbps == 0 {
            "none".to_string()
        } else {
            format!("{} kbit/s", s.rate_kbps)
        },
        s.conns_open,
        s.conns_total,
        s.errors,
        s.rejected,
        size_if_reported(s, s.bytes_to_target),
        size_if_reported(s, s.bytes_from_target),
        rate_or_pending(s, s.bps_to_target),
        rate_or_pending(s, s.bps_from_target),
        if s.rates_pending {
            " (first look: ask again for a rate)"
        } else {
            ""
        },
    );
    t.push_str(&cluster_and_udp_text(s));
    if with_connections {
        for c in &s.connections {
            t.push_str(&format!(
                "    {} -> {}  {}  {} / {}  {} s\n",
                c.peer,
                c.target,
                c.mode,
                format_size(c.bytes_to_target),
                format_size(c.bytes_from_target),
                c.age_ms / 1000
            ));
        }
    }
    t
}

/// A status's optional lines: its node and a note for a part that does not
/// report (cluster mode), its last failure, its UDP counters.
fn cluster_and_udp_text(s: &pb::SessionStatus) -> String {
    use scistream_protocol::units::format_size;
    let mut t = String::new();
    if !s.node.is_empty() {
        t.push_str(&format!("  node:      {}\n", s.node));
    }
    match s.phase.as_str() {
        "lost" => t.push_str(
            "  note:      this part's node is gone from the cluster (its s2cs stopped, or its lease expired): \
             it does not report, so its bytes are not known; its s2ds may still forward the connections open there\n",
        ),
        "unreachable" => t.push_str(
            "  note:      this part's node does not answer now: its bytes are not known\n",
        ),
        _ => {}
    }
    if !s.last_failure.is_empty() {
        t.push_str(&format!(
            "  last failure: {} ({} s ago)\n",
            s.last_failure,
            s.last_failure_age_ms / 1000
        ));
    }
    if protocol_name(s) != "tcp" {
        t.push_str(&format!(
            "  protocol:  {}\n  udp flows: {} open, {} total, {} expired idle\n  datagrams: {} ({}) to target, {} ({}) back, {} dropped (flow queue full, or a new sender past --udp-max-flows), {} dropped by the kernel (receive buffer full)\n",
            protocol_name(s),
            s.udp_flows_open,
            s.udp_flows_total,
            s.udp_flows_expired,
            s.udp_datagrams_to_target,
            format_size(s.udp_bytes_to_target),
            s.udp_datagrams_from_target,
            format_size(s.udp_bytes_from_target),
            s.udp_dropped,
            s.udp_kernel_dropped,
        ));
    }
    t
}

/// Releases every session of `uid` on this S2CS.
pub async fn release(conn: &Connection, uid: &str) -> Result<(), ClientError> {
    release_role(conn, uid, None).await.map(drop)
}

/// [`release`], and what the gateway could not release now (cluster mode:
/// one line per part on a node that is down, which releases it when back).
pub async fn release_reporting(conn: &Connection, uid: &str) -> Result<Vec<String>, ClientError> {
    release_role(conn, uid, None).await
}

/// Releases `uid`'s session of `role` on this S2CS (every role: `None`).
/// Naming the role is a scistream-rs extension: SciStream's s2cs ignores it
/// and releases every role.
pub async fn release_role(
    conn: &Connection,
    uid: &str,
    role: Option<Role>,
) -> Result<Vec<String>, ClientError> {
    validate_uid(uid).map_err(|e| ClientError::Input(format!("UID: {e}")))?;
    let mut client = conn.client.clone();
    let r = pb::Release {
        uid: uid.into(),
        role: role.map(|r| r.as_str().to_owned()).unwrap_or_default(),
    };
    let answer = client
        .release(r)
        .await
        .map_err(|s| conn.status_error("release", s))?;
    Ok(answer.into_inner().pending)
}

/// The `update` of a request this client made was refused: the session
/// the `req` made holds its ports until the gateway's `--update-timeout`.
/// Release it (that role only: the other end of the tunnel may live on the
/// same gateway) and say so in the error.
async fn release_after_refused_update(
    conn: &Connection,
    uid: &str,
    role: Role,
    refused: ClientError,
) -> ClientError {
    let note = match release_role(conn, uid, Some(role)).await {
        Ok(_) => "the session this request made there was released".to_owned(),
        Err(e) => format!(
            "the session this request made there could not be released ({e}); it holds its ports \
             until the gateway's --update-timeout, or `s2uc release {uid}` there"
        ),
    };
    refused.with_note(&note)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spread_session_is_summed_per_role_over_its_nodes() {
        let part = |node: &str, role: &str, phase: &str, n: usize, bytes: u64| pb::SessionStatus {
            node: node.into(),
            role: role.into(),
            phase: phase.into(),
            listeners: (0..n).map(|i| format!("127.0.0.1:{i}")).collect(),
            bytes_to_target: bytes,
            conns_open: n as u64,
            ..Default::default()
        };
        let spread = [
            part("a", "PROD", "forwarding", 2, 10),
            part("b", "PROD", "forwarding", 2, 20),
            part("c", "PROD", "lost", 2, 0),
            part("a", "CONS", "forwarding", 1, 5),
        ];
        let totals = session_totals(&spread);
        assert_eq!(totals.len(), 1, "one node only: no sum: {totals:?}");
        let t = &totals[0];
        assert_eq!(
            (t.role.as_str(), t.nodes, t.listeners, t.listeners_lost),
            ("PROD", 3, 6, 2)
        );
        assert_eq!((t.bytes_to_target, t.conns_open), (30, 6));
        // A single gateway names no node: nothing to sum.
        let single = [part("", "PROD", "forwarding", 4, 1)];
        assert!(session_totals(&single).is_empty());
    }

    #[test]
    fn receivers_are_built_and_checked() {
        assert_eq!(
            receiver_endpoints("10.0.1.5", &[5001, 5002]).unwrap(),
            vec!["10.0.1.5:5001", "10.0.1.5:5002"]
        );
        assert_eq!(receiver_endpoints("::1", &[7]).unwrap(), vec!["[::1]:7"]);
        assert!(receiver_endpoints("bad host", &[7]).is_err());
        assert!(receiver_endpoints("10.0.0.1", &[]).is_err());
    }

    #[test]
    fn ports() {
        assert_eq!(parse_ports("5001,5002").unwrap(), vec![5001, 5002]);
        assert!(parse_ports("5001,").is_err());
        assert!(parse_ports("0").is_err());
        assert!(
            parse_ports("99999")
                .unwrap_err()
                .to_string()
                .contains("99999")
        );
    }

    #[test]
    fn options() {
        assert!(
            RequestOptions {
                num_conn: 0,
                rate_kbps: 1,
                ..Default::default()
            }
            .check()
            .is_err()
        );
        assert!(
            RequestOptions {
                num_conn: 129,
                rate_kbps: 1,
                ..Default::default()
            }
            .check()
            .is_err()
        );
        assert!(
            RequestOptions {
                num_conn: 5,
                rate_kbps: u32::MAX,
                ..Default::default()
            }
            .check()
            .is_err()
        );
        assert_eq!(
            RequestOptions {
                num_conn: 5,
                rate_kbps: 10000,
                ..Default::default()
            }
            .check()
            .unwrap(),
            (5, 10000)
        );
    }

    #[test]
    fn uids_are_random_v4() {
        let a = new_uid();
        assert_ne!(a, new_uid());
        assert_eq!(uuid::Uuid::parse_str(&a).unwrap().get_version_num(), 4);
        validate_uid(&a).unwrap();
    }
}

#[cfg(test)]
mod udp_status_tests {
    use super::*;

    #[test]
    fn a_lost_part_shows_its_bytes_as_unknown_not_zero() {
        let lost = pb::SessionStatus {
            uid: "u".into(),
            role: "PROD".into(),
            phase: "lost".into(),
            node: "n3".into(),
            listeners: vec!["127.0.0.1:5100".into()],
            ..Default::default()
        };
        let text = status_text(&lost, false);
        assert!(
            text.contains("bytes:     unknown to target, unknown back"),
            "{text}"
        );
        assert!(text.contains("its s2ds may still forward"), "{text}");
        assert!(!text.contains("0 B"), "{text}");
        let v = status_json(&lost);
        assert_eq!(v["reported"], false);
        assert!(v["bytes_to_target"].is_null(), "{v}");
        let live = pb::SessionStatus {
            phase: "forwarding".into(),
            bytes_to_target: 7,
            ..lost
        };
        assert_eq!(status_json(&live)["bytes_to_target"], 7);
        assert!(!status_text(&live, false).contains("note:"));
    }

    #[test]
    fn udp_counters_show_in_text_and_json_and_tcp_sessions_stay_as_they_were() {
        let s = pb::SessionStatus {
            protocol: "both".into(),
            udp_flows_open: 2,
            udp_flows_total: 3,
            udp_datagrams_to_target: 1000,
            udp_bytes_to_target: 1_400_000,
            udp_dropped: 7,
            udp_kernel_dropped: 5,
            ..Default::default()
        };
        let text = status_text(&s, false);
        assert!(text.contains("protocol:  both"), "{text}");
        assert!(text.contains("udp flows: 2 open, 3 total"), "{text}");
        assert!(
            text.contains("7 dropped (flow queue full, or a new sender past --udp-max-flows), 5 dropped by the kernel"),
            "{text}"
        );
        let json = status_json(&s);
        assert_eq!(json["protocol"], "both");
        assert_eq!(json["udp"]["datagrams_to_target"], 1000);
        assert_eq!(json["udp"]["kernel_dropped"], 5);
        // No earlier sample at the gateway: the rate is n/a, not 0.
        let first = pb::SessionStatus {
            rates_pending: true,
            ..Default::default()
        };
        assert!(status_text(&first, false).contains("now:       n/a"));
        assert!(status_json(&first)["bps_to_target"].is_null());
        assert_eq!(status_json(&s)["bps_to_target"], 0.0);
        // A gateway that reports no protocol (an older release) carries TCP.
        let tcp = pb::SessionStatus::default();
        assert!(!status_text(&tcp, false).contains("udp"));
        assert_eq!(status_json(&tcp)["protocol"], "tcp");
    }
}
