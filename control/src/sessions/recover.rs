//! Recovery after an `s2cs` restart: the stored sessions come back with
//! their listeners, taken back from the `s2ds` that kept forwarding them
//! (so no connection is dropped and no port changes), or bound again when
//! the data plane was restarted too.

use std::net::TcpListener;

use scistream_protocol::handoff::{Command, Outcome, SessionKey};
use tracing::{error, info, warn};

use super::Registry;
use crate::dataplane::Attached;
use crate::ports::{BoundPort, PortAllocator, Sockets};
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
    /// The session's sockets, back from the data plane: the TCP ones, then
    /// the UDP ones when the session has them on this side.
    async fn listeners_from_dataplane(
        &self,
        key: &SessionKey,
        sockets: Sockets,
    ) -> Result<Vec<BoundPort>, String> {
        let export = Command::ExportListeners { key: key.clone() };
        let per_listener = if sockets.udp { 2 } else { 1 };
        match self.dataplane.call_fds(export, Vec::new()).await {
            Ok((Outcome::Listeners { addrs }, mut fds))
                if fds.len() == per_listener * addrs.len() =>
            {
                let udp = fds.split_off(addrs.len());
                let mut udp = udp.into_iter().map(std::net::UdpSocket::from);
                Ok(addrs
                    .into_iter()
                    .zip(fds)
                    .map(|(addr, fd)| BoundPort {
                        listener: TcpListener::from(fd),
                        udp: udp.next(),
                        addr,
                    })
                    .collect())
            }
            Ok((other, fds)) => Err(format!(
                "the data plane answered {other:?} with {} descriptors",
                fds.len()
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Forgets a stored session that cannot come back, also in the data plane.
    async fn drop_stored(&self, key: &SessionKey, in_dataplane: bool) {
        if let Err(e) = self.store.remove(key) {
            error!(%key, error = %e, "cannot remove the released session from the store");
        }
        if in_dataplane {
            let _ = self
                .dataplane
                .call(Command::RemoveSession { key: key.clone() }, Vec::new())
                .await;
        }
    }

    /// Brings `stored` sessions back; `attached` is what the data plane
    /// already forwards. Call before serving.
    pub async fn recover(&self, stored: Vec<StoredSession>, attached: &Attached) -> Recovered {
        let mut report = Recovered::default();
        for s in stored {
            let key = s.key();
            let in_dataplane = attached.sessions.contains(&key);
            match self.recover_one(s, in_dataplane).await {
                Ok(()) => {
                    report.sessions += 1;
                    report.kept_forwarding += usize::from(in_dataplane);
                }
                Err(why) => {
                    report.lost.push(format!("{key}: {why}"));
                    self.drop_stored(&key, in_dataplane).await;
                }
            }
        }
        for key in &attached.sessions {
            if self.lock().sessions().contains_key(key) {
                continue;
            }
            warn!(%key, "the data plane forwards a session the store does not know; removing it");
            self.drop_stored(key, true).await;
            report.orphans += 1;
        }
        report
    }

    async fn recover_one(&self, s: StoredSession, in_dataplane: bool) -> Result<(), String> {
        let key = s.key();
        // What the store holds was allowed by the policy of its day;
        // this start's policy (targets, port range, uid rules) decides now.
        let client_cert = self.policy.still_allows(&s).inspect_err(|why| {
            warn!(%key, %why, "stored session released: it no longer passes this gateway's policy");
        })?;
        let sockets = Sockets::for_session(s.role, s.protocol);
        let listeners = if in_dataplane {
            self.listeners_from_dataplane(&key, sockets).await
        } else {
            s.listeners
                .iter()
                .map(|&a| {
                    PortAllocator::rebind(a, sockets)
                        .map_err(|e| format!("cannot bind {a} again: {e}"))
                })
                .collect()
        }
        .inspect_err(|why| {
            error!(%key, %why, "session lost in recovery; its users must request it again");
        })?;
        let (owner, phase) = (s.owner.to_string(), s.phase);
        let now = tokio::time::Instant::now().into_std();
        self.lock().restore(s, listeners, client_cert, now);
        if phase == StoredPhase::Forwarding && !in_dataplane {
            self.hand_again(&key).await;
        }
        info!(%key, %owner, ?phase, kept = in_dataplane, "session recovered");
        Ok(())
    }

    /// Hands a recovered forwarding session to a data plane that lost it.
    async fn hand_again(&self, key: &SessionKey) {
        let handoff = self.lock().handoff(key);
        match handoff {
            Some(Ok((spec, fds))) => {
                match self.dataplane.call(Command::AddSession(spec), fds).await {
                    Ok(Outcome::Done) => {}
                    other => {
                        warn!(%key, ?other, "the data plane did not take the recovered session; new connections wait until it restarts")
                    }
                }
            }
            Some(Err(e)) => warn!(%key, error = %e, "cannot duplicate listeners"),
            None => {}
        }
    }
}
