//! Recovery after an `s2cs` restart: the stored sessions come back with
//! their listeners, taken back from the `s2ds` that kept forwarding them
//! (so no connection is dropped and no port changes), or bound again when
//! the data plane was restarted too.

use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use scistream_protocol::handoff::{Command, Outcome, SessionKey, SessionSpec};
use tracing::{error, info, warn};

use super::{Phase, Registry, Session};
use crate::dataplane::Attached;
use crate::ports::{BoundPort, PortAllocator};
use crate::store::{StoredPhase, StoredSession};

/// What recovery did, for the start-up log and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Sessions back in service.
    pub sessions: usize,
    /// Of those, still forwarded by the adopted data plane (connections kept).
    pub kept_forwarding: usize,
    /// Sessions that could not come back (and why).
    pub lost: Vec<String>,
    /// Sessions the data plane had that the store did not (removed).
    pub orphans: usize,
}

impl Registry {
    /// Checks a stored session against this start's policy: its uid, its
    /// listeners against the listener address and port range, its targets
    /// against the target rules. `Ok(client_cert)` as for a new session.
    fn still_allowed(&self, s: &StoredSession) -> Result<bool, String> {
        let client_cert = self
            .uid_protection(&s.uid, s.role)
            .map_err(|e| e.to_string())?;
        let gw = &self.policy.gateway;
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
        let field = match s.role {
            scistream_protocol::Role::Prod => "receiver",
            scistream_protocol::Role::Cons => "remote listener",
        };
        for t in &s.target_addrs {
            crate::targets::check(
                self.policy.access.targets.as_deref(),
                gw,
                field,
                *t,
                &s.listeners,
            )
            .map_err(|e| e.to_string())?;
        }
        Ok(client_cert)
    }

    async fn listeners_from_dataplane(&self, key: &SessionKey) -> Result<Vec<BoundPort>, String> {
        match self
            .dataplane
            .call_fds(Command::ExportListeners { key: key.clone() }, Vec::new())
            .await
        {
            Ok((Outcome::Listeners { addrs }, fds)) if fds.len() == addrs.len() => Ok(addrs
                .into_iter()
                .zip(fds)
                .map(|(addr, fd)| BoundPort {
                    listener: TcpListener::from(fd),
                    addr,
                })
                .collect()),
            Ok((other, fds)) => Err(format!(
                "the data plane answered {other:?} with {} descriptors",
                fds.len()
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Brings `stored` sessions back; `attached` is what the data plane
    /// already forwards. Call before serving.
    pub async fn recover(&self, stored: Vec<StoredSession>, attached: &Attached) -> Recovered {
        let mut report = Recovered::default();
        for s in stored {
            let key = s.key();
            let in_dataplane = attached.sessions.contains(&key);
            // What the store holds was allowed by the policy of its day;
            // this start's policy (targets, port range, uid rules) decides now.
            let client_cert = match self.still_allowed(&s) {
                Ok(client_cert) => client_cert,
                Err(why) => {
                    warn!(%key, %why, "stored session released: it no longer passes this gateway's policy");
                    report.lost.push(format!("{key}: {why}"));
                    if let Err(e) = self.store.remove(&key) {
                        error!(%key, error = %e, "cannot remove the released session from the store");
                    }
                    if in_dataplane {
                        let _ = self
                            .dataplane
                            .call(Command::RemoveSession { key: key.clone() }, Vec::new())
                            .await;
                    }
                    continue;
                }
            };
            let listeners = if in_dataplane {
                self.listeners_from_dataplane(&key).await
            } else {
                s.listeners
                    .iter()
                    .map(|&a| {
                        PortAllocator::rebind(a).map_err(|e| format!("cannot bind {a} again: {e}"))
                    })
                    .collect()
            };
            let listeners = match listeners {
                Ok(l) => l,
                Err(why) => {
                    error!(%key, %why, "session lost in recovery; its users must request it again");
                    report.lost.push(format!("{key}: {why}"));
                    if let Err(e) = self.store.remove(&key) {
                        error!(%key, error = %e, "cannot remove the lost session from the store");
                    }
                    if in_dataplane {
                        let _ = self
                            .dataplane
                            .call(Command::RemoveSession { key: key.clone() }, Vec::new())
                            .await;
                    }
                    continue;
                }
            };
            let phase = match s.phase {
                StoredPhase::Ready => Phase::Ready,
                StoredPhase::Forwarding => Phase::Forwarding,
            };
            let session = Session {
                owner: s.owner.clone(),
                num_conn: s.num_conn,
                rate_kbps: s.rate_kbps,
                listeners,
                phase,
                created: UNIX_EPOCH + Duration::from_secs(s.created_unix),
                receivers: s.receivers.clone(),
                targets: s.targets.clone(),
                target_addrs: s.target_addrs.clone(),
                target_names: s.target_names.clone(),
                hello_tx: None,
                op_lock: Arc::default(),
                ready_since: (phase == Phase::Ready).then(tokio::time::Instant::now),
                client_cert,
            };
            if phase == Phase::Forwarding && !in_dataplane {
                let fds: Result<Vec<OwnedFd>, _> = session
                    .listeners
                    .iter()
                    .map(|l| l.listener.try_clone().map(OwnedFd::from))
                    .collect();
                let spec = SessionSpec {
                    key: key.clone(),
                    listeners: session.listeners.iter().map(|l| l.addr).collect(),
                    targets: session.target_addrs.clone(),
                    rate_kbps: session.rate_kbps,
                    channel: self.channel(key.role, session.client_cert, &session.target_names),
                };
                match fds {
                    Ok(fds) => match self.dataplane.call(Command::AddSession(spec), fds).await {
                        Ok(Outcome::Done) => {}
                        other => {
                            warn!(%key, ?other, "the data plane did not take the recovered session; new connections wait until it restarts")
                        }
                    },
                    Err(e) => warn!(%key, error = %e, "cannot duplicate listeners"),
                }
            }
            if in_dataplane {
                report.kept_forwarding += 1;
            }
            {
                let mut table = self.lock();
                for l in &session.listeners {
                    table.ports.claim(l.addr.port());
                }
                table.sessions.insert(key.clone(), session);
            }
            report.sessions += 1;
            info!(%key, owner = %s.owner, phase = ?s.phase, kept = in_dataplane, "session recovered");
        }
        for key in &attached.sessions {
            if self.lock().sessions.contains_key(key) {
                continue;
            }
            warn!(%key, "the data plane forwards a session the store does not know; removing it");
            let _ = self
                .dataplane
                .call(Command::RemoveSession { key: key.clone() }, Vec::new())
                .await;
            report.orphans += 1;
        }
        report
    }
}
