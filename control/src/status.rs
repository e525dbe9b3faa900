//! `list` and `status`: sessions joined with the data plane's counters, and
//! throughput since the previous look.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use scistream_protocol::handoff::{SessionKey, SessionStats};
use scistream_protocol::pb;

use crate::auth::Identity;
use crate::error::ControlError;
use crate::sessions::Registry;
use crate::sessions::view::SessionView;

/// The previous counters of each session, to turn bytes into rates.
#[derive(Debug, Default)]
pub struct RateMemory {
    last: Mutex<HashMap<SessionKey, (Instant, u64, u64)>>,
}

impl RateMemory {
    /// Bits per second each way since the previous look; `None` when there
    /// is no previous look (first status) or it was under 0.2 s ago.
    fn rates(&self, key: &SessionKey, to: u64, from: u64) -> Option<(f64, f64)> {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let r = match last.get(key) {
            Some(&(at, t0, f0)) if now.duration_since(at).as_secs_f64() >= 0.2 => {
                let secs = now.duration_since(at).as_secs_f64();
                Some((
                    to.saturating_sub(t0) as f64 * 8.0 / secs,
                    from.saturating_sub(f0) as f64 * 8.0 / secs,
                ))
            }
            // Too soon: keep the older sample, so the next look has a base.
            Some(_) => return None,
            None => None,
        };
        last.insert(key.clone(), (now, to, from));
        r
    }

    /// Forgets sessions that are gone (bounded memory).
    fn retain(&self, live: &[SessionKey]) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.retain(|k, _| live.contains(k));
    }
}

/// The sessions `who` may see (of `uid` only, when given), with counters.
pub async fn sessions(
    registry: &Registry,
    rates: &RateMemory,
    who: &Identity,
    uid: Option<&str>,
) -> Result<pb::SessionList, ControlError> {
    let views = registry.views(who, uid);
    if let Some(uid) = uid {
        if views.is_empty() {
            return Err(ControlError::NotFound(format!(
                "no session with this uid (tag {}) that you may see here",
                scistream_protocol::tag::session_tag(uid)
            )));
        }
    }
    let stats: HashMap<SessionKey, SessionStats> = registry
        .dataplane()
        .stats()
        .await
        .map_err(|e| ControlError::Unavailable(format!("the data plane's counters: {e}")))?
        .into_iter()
        .map(|s| (s.key.clone(), s))
        .collect();
    let all_live: Vec<SessionKey> = stats.keys().cloned().collect();
    let now = SystemTime::now();
    let sessions = views
        .into_iter()
        .map(|v| {
            let st = stats.get(&v.key).cloned().unwrap_or_default();
            let measured = rates.rates(&v.key, st.bytes_to_target, st.bytes_from_target);
            session_status(v, &st, measured, now)
        })
        .collect();
    rates.retain(&all_live);
    Ok(pb::SessionList { sessions })
}

/// One session's status: what the control plane knows of it (`v`), the
/// data plane's counters (`st`) and its rates since the last look
/// (`measured`; `None` on the first look).
fn session_status(
    v: SessionView,
    st: &SessionStats,
    measured: Option<(f64, f64)>,
    now: SystemTime,
) -> pb::SessionStatus {
    let (bps_to, bps_from) = measured.unwrap_or_default();
    pb::SessionStatus {
        uid: v.key.uid.clone(),
        tag: v.key.tag(),
        role: v.key.role.to_string(),
        owner: v.owner.to_string(),
        phase: v.phase.into(),
        listeners: v.listeners,
        targets: v.targets,
        rate_kbps: v.rate_kbps,
        age_ms: now
            .duration_since(v.created)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        conns_open: st.conns_open,
        conns_total: st.conns_total,
        bytes_to_target: st.bytes_to_target,
        bytes_from_target: st.bytes_from_target,
        errors: st.errors,
        rejected: st.rejected,
        bps_to_target: bps_to,
        bps_from_target: bps_from,
        rates_pending: measured.is_none(),
        last_failure: st
            .last_failure
            .as_ref()
            .map(|f| f.reason.clone())
            .unwrap_or_default(),
        last_failure_age_ms: st.last_failure.as_ref().map_or(0, |f| f.age_ms),
        connections: st.connections.iter().map(connection_status).collect(),
        node: String::new(),
        protocol: v.protocol.as_str().into(),
        udp_flows_open: st.udp.flows_open,
        udp_flows_total: st.udp.flows_total,
        udp_datagrams_to_target: st.udp.datagrams_to_target,
        udp_bytes_to_target: st.udp.bytes_to_target,
        udp_datagrams_from_target: st.udp.datagrams_from_target,
        udp_bytes_from_target: st.udp.bytes_from_target,
        udp_dropped: st.udp.dropped,
        udp_flows_expired: st.udp.flows_expired,
        udp_kernel_dropped: st.udp.kernel_dropped,
    }
}

fn connection_status(c: &scistream_protocol::handoff::ConnStats) -> pb::ConnectionStatus {
    pb::ConnectionStatus {
        peer: c.peer.to_string(),
        target: c.target.to_string(),
        mode: c.mode.clone(),
        bytes_to_target: c.bytes_to_target,
        bytes_from_target: c.bytes_from_target,
        age_ms: c.age_ms,
    }
}
