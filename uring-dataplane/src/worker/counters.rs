//! A session's counters on one worker, and the statistics the control
//! thread asks for: plain cells, since only the worker's thread touches
//! them.

use std::time::Instant;

use scistream_protocol::handoff::{ConnStats, Failure, SessionKey, SessionStats};

use crate::conn::{Conn, ConnState};

/// Counters of one session on this worker. Plain cells: only this thread touches them.
#[derive(Debug, Default)]
pub struct Counters {
    pub(crate) conns_open: std::cell::Cell<u64>,
    pub(crate) conns_total: std::cell::Cell<u64>,
    pub(crate) bytes_to_target: std::cell::Cell<u64>,
    pub(crate) bytes_from_target: std::cell::Cell<u64>,
    pub(crate) errors: std::cell::Cell<u64>,
    pub(crate) rejected: std::cell::Cell<u64>,
    pub(crate) key_updates: std::cell::Cell<u64>,
    /// Why the session's latest connection failed or was refused, and when.
    pub(crate) last_failure: std::cell::RefCell<Option<(Instant, String)>>,
}

impl Counters {
    /// Notes why a connection of the session failed (shown in its status).
    pub(crate) fn failed(&self, why: impl Into<String>) {
        *self.last_failure.borrow_mut() = Some((Instant::now(), why.into()));
    }

    pub(super) fn last_failure(&self) -> Option<Failure> {
        self.last_failure
            .borrow()
            .as_ref()
            .map(|(at, why)| Failure {
                reason: why.clone(),
                age_ms: at.elapsed().as_millis() as u64,
            })
    }
}

pub(crate) fn bump(c: &std::cell::Cell<u64>, by: u64) {
    c.set(c.get().wrapping_add(by));
}

/// A session's statistics on worker `worker`, without its connections.
pub(super) fn session_stats(key: &SessionKey, c: &Counters) -> SessionStats {
    SessionStats {
        key: key.clone(),
        conns_open: c.conns_open.get(),
        conns_total: c.conns_total.get(),
        bytes_to_target: c.bytes_to_target.get(),
        bytes_from_target: c.bytes_from_target.get(),
        errors: c.errors.get(),
        rejected: c.rejected.get(),
        key_updates: c.key_updates.get(),
        last_failure: c.last_failure(),
        connections: Vec::new(),
        udp: Default::default(),
    }
}

/// One connection as `status --detail` lists it.
pub(super) fn conn_stats(worker: usize, c: &Conn) -> ConnStats {
    let (up, down) = match &c.state {
        ConnState::Relaying { relay, .. } => relay.delivered(),
        _ => (0, 0),
    };
    let mode = c.state.mode();
    ConnStats {
        worker: worker as u32,
        listener: c.listener,
        peer: c.peer,
        target: c.target_addr,
        bytes_to_target: up,
        bytes_from_target: down,
        age_ms: c.accepted.elapsed().as_millis() as u64,
        // A UDP flow's connection says so: `udp+tls`, `udp+ktls`, …
        mode: if c.udp {
            format!("udp+{mode}")
        } else {
            mode.into()
        },
    }
}
