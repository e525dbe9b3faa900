//! The control thread: talks to `s2cs` over the handoff socket and turns its
//! commands into worker commands. One command at a time, in order; each is
//! answered after every worker involved has acknowledged it.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc;
use std::time::Duration;

use scistream_protocol::Target;
use scistream_protocol::handoff::{
    self, Command, DataChannel, Failure, FromDataPlane, HANDOFF_VERSION, HandoffError, Outcome,
    Request, SessionKey, SessionSpec, SessionStats,
};
use tracing::{debug, info, warn};

use crate::conn::ListenerChannel;
use crate::tls::TlsContext;
use crate::udp::{UdpListener, UdpPlane};
use crate::worker::{ListenerSpec, WorkerCommand, WorkerHandle};

/// How long the control thread waits for a worker's acknowledgement.
const WORKER_ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// The data plane as the control thread sees it: each session's listeners and
/// which worker holds them.
#[derive(Debug)]
pub struct SessionTable {
    workers: Vec<WorkerHandle>,
    engine: &'static str,
    tls: TlsContext,
    /// Worker index of each listener, per session.
    sessions: HashMap<SessionKey, Vec<usize>>,
    /// A duplicate of each session's listening sockets, with their
    /// addresses, to give back to a restarted `s2cs`.
    listeners: HashMap<SessionKey, Vec<(std::net::SocketAddr, OwnedFd)>>,
    next_worker: usize,
    udp: UdpPlane,
    /// A duplicate of each session's UDP sockets (instrument side), for
    /// `ExportListeners` after the TCP ones.
    udp_sockets: HashMap<SessionKey, Vec<OwnedFd>>,
}

fn failed(message: impl Into<String>) -> Outcome {
    Outcome::Failed {
        message: message.into(),
    }
}

/// The channel of a session's listeners.
fn listener_channel(spec: &SessionSpec) -> ListenerChannel {
    let uid: std::sync::Arc<str> = spec.key.uid.as_str().into();
    match &spec.channel {
        DataChannel::Raw => ListenerChannel::Raw,
        DataChannel::FromPeer { tls, client_cert } => ListenerChannel::FromPeer {
            tls: *tls,
            uid,
            client_cert: *client_cert,
            first_index: spec.first_index,
            protocol: spec.protocol,
        },
        DataChannel::ToPeer { tls } => ListenerChannel::ToPeer {
            tls: *tls,
            uid,
            targets: spec.targets.clone().into(),
            first_index: spec.first_index,
        },
    }
}

/// The UDP sockets handed over must be UDP sockets.
fn check_udp_sockets(fds: &[OwnedFd]) -> Result<(), String> {
    for fd in fds {
        match rustix::net::sockopt::socket_type(fd) {
            Ok(rustix::net::SocketType::DGRAM) => {}
            _ => return Err("a descriptor handed over as UDP is not a UDP socket".into()),
        }
    }
    Ok(())
}

/// Waits for `n` acknowledgements.
fn wait_acks(rx: &mpsc::Receiver<Result<(), String>>, n: usize) -> Result<(), String> {
    for _ in 0..n {
        match rx.recv_timeout(WORKER_ACK_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("a worker did not acknowledge within 10 s".into()),
        }
    }
    Ok(())
}

impl SessionTable {
    /// A data plane over started workers.
    pub fn new(
        workers: Vec<WorkerHandle>,
        engine: &'static str,
        tls: TlsContext,
        udp: UdpPlane,
    ) -> Self {
        SessionTable {
            workers,
            engine,
            tls,
            sessions: HashMap::new(),
            listeners: HashMap::new(),
            next_worker: 0,
            udp,
            udp_sockets: HashMap::new(),
        }
    }

    /// Number of sessions forwarded now.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Carries out one command.
    pub fn handle(&mut self, command: Command, fds: Vec<OwnedFd>) -> Outcome {
        match command {
            Command::AddSession(spec) => self.add_session(spec, fds),
            Command::UpdateTargets { key, targets } => self.update_targets(key, targets),
            Command::RemoveSession { key } => self.remove_session(&key),
            Command::Stats => self.stats(),
            Command::Drain => self.drain(),
            Command::ReloadTls => match self.tls.reload() {
                Ok(()) => {
                    tracing::info!(
                        "data-channel certificate, key and peer CA re-read; new connections use them"
                    );
                    Outcome::Done
                }
                Err(e) => {
                    tracing::error!(error = %e, "data-channel TLS files refused; keeping the ones in use");
                    failed(e.to_string())
                }
            },
            Command::ExportListeners { key } => match self.listeners.get(&key) {
                Some(l) => Outcome::Listeners {
                    addrs: l.iter().map(|(a, _)| *a).collect(),
                },
                None => failed(format!("no session {key}")),
            },
        }
    }

    /// Closes every listener on every worker; connections go on.
    fn drain(&mut self) -> Outcome {
        self.listeners.clear();
        let (tx, rx) = mpsc::channel();
        let mut asked = 0;
        for w in &self.workers {
            if w.send(WorkerCommand::CloseListeners { done: tx.clone() })
                .is_ok()
            {
                asked += 1;
            }
        }
        info!("draining: listeners closed, open connections continue");
        match wait_acks(&rx, asked) {
            Ok(()) => Outcome::Done,
            Err(e) => failed(e),
        }
    }

    /// Duplicates of a session's listening sockets (for `ExportListeners`).
    fn export(&self, key: &SessionKey) -> Vec<OwnedFd> {
        let tcp = self
            .listeners
            .get(key)
            .into_iter()
            .flatten()
            .map(|(_, fd)| fd);
        let udp = self.udp_sockets.get(key).into_iter().flatten();
        tcp.chain(udp)
            .filter_map(|fd| fd.try_clone().ok())
            .collect()
    }

    fn add_session(&mut self, spec: SessionSpec, mut fds: Vec<OwnedFd>) -> Outcome {
        let key = spec.key.clone();
        if self.sessions.contains_key(&key) {
            return failed(format!("session {key} is already being forwarded"));
        }
        let n = spec.listeners.len();
        let checked = check_counts(&spec, fds.len())
            .and_then(|()| self.check_channel(&spec))
            .and_then(|()| check_udp_sockets(&fds[n.min(fds.len())..]))
            .and_then(|()| check_listeners(&fds[..n.min(fds.len())], spec.accepts_tcp()));
        if let Err(e) = checked {
            return failed(format!("session {key}: {e}"));
        }
        let udp_fds = fds.split_off(n);
        let copies: Vec<_> = fds
            .iter()
            .zip(&spec.listeners)
            .filter_map(|(fd, addr)| fd.try_clone().ok().map(|c| (*addr, c)))
            .collect();
        let (placed, acks) = match self.place_listeners(&spec, fds) {
            Ok(p) => p,
            Err(e) => return failed(e),
        };
        let mut result = wait_acks(&acks, placed.len());
        if result.is_ok() && spec.protocol.carries_udp() {
            result = self.add_udp(&spec, &placed, udp_fds);
        }
        self.sessions.insert(key.clone(), placed);
        self.listeners.insert(key.clone(), copies);
        match result {
            Ok(()) => {
                info!(session = %key, listeners = ?spec.listeners, targets = %scistream_protocol::target::list(&spec.targets), rate_kbps = spec.rate_kbps, "forwarding");
                Outcome::Done
            }
            Err(e) => {
                self.remove_session(&key);
                failed(format!("session {key}: {e}"))
            }
        }
    }

    /// Hands each listener to the next worker in turn: the worker of each
    /// listener, and where their acknowledgements arrive.
    fn place_listeners(
        &mut self,
        spec: &SessionSpec,
        fds: Vec<OwnedFd>,
    ) -> Result<(Vec<usize>, Acks), String> {
        let (tx, rx) = mpsc::channel();
        let mut placement = Vec::with_capacity(fds.len());
        let rate = spec.per_connection_rate();
        for (index, (fd, target)) in fds.into_iter().zip(spec.targets.iter()).enumerate() {
            let w = self.next_worker % self.workers.len();
            self.next_worker += 1;
            let listener = ListenerSpec {
                key: spec.key.clone(),
                index,
                fd,
                target: target.addr,
                rate,
                channel: listener_channel(spec),
                accept: spec.accepts_tcp(),
            };
            let cmd = WorkerCommand::AddListener {
                listener,
                done: tx.clone(),
            };
            self.workers[w].send(cmd)?;
            placement.push(w);
        }
        Ok((placement, rx))
    }

    /// Starts a session's UDP: its sockets on the instrument side (each
    /// listener's flows are adopted by that listener's worker); on the
    /// inbound side only its counters, for the flows its workers accept.
    fn add_udp(
        &mut self,
        spec: &SessionSpec,
        placement: &[usize],
        udp_fds: Vec<OwnedFd>,
    ) -> Result<(), String> {
        let copies = udp_fds
            .iter()
            .filter_map(|fd| fd.try_clone().ok())
            .collect();
        let listeners = udp_fds
            .into_iter()
            .zip(placement)
            .enumerate()
            .map(|(index, (fd, &w))| UdpListener {
                index,
                socket: std::net::UdpSocket::from(fd),
                worker: self.workers[w].mailbox(),
            })
            .collect();
        self.udp
            .add_session(&spec.key, listeners)
            .map_err(|e| format!("cannot serve its UDP sockets: {e}"))?;
        self.udp_sockets.insert(spec.key.clone(), copies);
        Ok(())
    }

    /// Refuses sessions this data plane cannot serve, with what is missing.
    fn check_channel(&self, spec: &SessionSpec) -> Result<(), String> {
        match &spec.channel {
            DataChannel::FromPeer { tls: true, .. } if self.tls.server().is_none() => {
                Err("the TLS data channel needs a certificate: s2cs --data-cert/--data-key (default --server_crt/--server_key)".into())
            }
            DataChannel::FromPeer { tls: true, client_cert: true } if self.tls.server_mtls().is_none() => {
                Err("this session needs the peer gateway's certificate verified (mutual TLS), and this data plane has no --peer-ca to verify it with".into())
            }
            DataChannel::ToPeer { tls: true, .. } if self.tls.client().is_none() => {
                Err("the TLS data channel needs the peer facilities' CA: s2cs --peer-ca FILE".into())
            }
            _ => Ok(()),
        }
    }

    fn update_targets(&mut self, key: SessionKey, targets: Vec<Target>) -> Outcome {
        let Some(placement) = self.sessions.get(&key) else {
            return failed(format!("no session {key} is being forwarded"));
        };
        if targets.len() != placement.len() {
            return failed(format!(
                "session {key} has {} listeners but {} targets were given",
                placement.len(),
                targets.len()
            ));
        }
        let mut involved: Vec<usize> = placement.clone();
        involved.sort_unstable();
        involved.dedup();
        let (tx, rx) = mpsc::channel();
        for &w in &involved {
            let cmd = WorkerCommand::SetTargets {
                key: key.clone(),
                targets: targets.clone(),
                done: tx.clone(),
            };
            if let Err(e) = self.workers[w].send(cmd) {
                return failed(e);
            }
        }
        match wait_acks(&rx, involved.len()) {
            Ok(()) => {
                info!(session = %key, targets = %scistream_protocol::target::list(&targets), "targets updated");
                Outcome::Done
            }
            Err(e) => failed(e),
        }
    }

    fn remove_session(&mut self, key: &SessionKey) -> Outcome {
        self.listeners.remove(key);
        self.udp_sockets.remove(key);
        self.udp.remove_session(key);
        let Some(mut involved) = self.sessions.remove(key) else {
            debug!(session = %key, "remove: session not here (already removed)");
            return Outcome::Done;
        };
        involved.sort_unstable();
        involved.dedup();
        let (tx, rx) = mpsc::channel();
        for &w in &involved {
            let _ = self.workers[w].send(WorkerCommand::RemoveSession {
                key: key.clone(),
                done: tx.clone(),
            });
        }
        match wait_acks(&rx, involved.len()) {
            Ok(()) => Outcome::Done,
            Err(e) => failed(e),
        }
    }

    fn stats(&mut self) -> Outcome {
        let (tx, rx) = mpsc::channel();
        let mut asked = 0;
        for w in &self.workers {
            if w.send(WorkerCommand::Stats { reply: tx.clone() }).is_ok() {
                asked += 1;
            }
        }
        let mut merged: HashMap<SessionKey, SessionStats> = HashMap::new();
        for _ in 0..asked {
            let Ok(list) = rx.recv_timeout(WORKER_ACK_TIMEOUT) else {
                return failed("a worker did not report its counters within 10 s");
            };
            for s in list {
                let m = merged.entry(s.key.clone()).or_insert_with(|| SessionStats {
                    key: s.key.clone(),
                    ..Default::default()
                });
                m.conns_open += s.conns_open;
                m.conns_total += s.conns_total;
                m.bytes_to_target += s.bytes_to_target;
                m.bytes_from_target += s.bytes_from_target;
                m.errors += s.errors;
                m.rejected += s.rejected;
                m.key_updates += s.key_updates;
                m.last_failure = Failure::latest(m.last_failure.take(), s.last_failure);
                m.connections.extend(s.connections);
            }
        }
        let mut sessions: Vec<SessionStats> = merged.into_values().collect();
        sessions.sort_by(|a, b| a.key.cmp(&b.key));
        let kernel = if self.udp_sockets.is_empty() {
            HashMap::new()
        } else {
            crate::udp::kernel::drops_by_inode()
        };
        for s in &mut sessions {
            s.udp = self.udp.stats(&s.key);
            s.udp.kernel_dropped = self
                .udp_sockets
                .get(&s.key)
                .into_iter()
                .flatten()
                .filter_map(crate::udp::kernel::inode)
                .filter_map(|ino| kernel.get(&ino))
                .sum();
            s.connections.sort_by_key(|c| (c.listener, c.age_ms));
            s.connections
                .truncate(scistream_protocol::handoff::MAX_LISTED_CONNECTIONS);
        }
        Outcome::Stats { sessions }
    }

    /// Serves one controller connection until it closes.
    pub fn serve_controller(&mut self, conn: &OwnedFd) -> Result<(), HandoffError> {
        let mut keys: Vec<SessionKey> = self.sessions.keys().cloned().collect();
        keys.sort();
        let hello = FromDataPlane::Hello {
            version: HANDOFF_VERSION,
            pid: std::process::id(),
            engine: self.engine.to_owned(),
            workers: self.workers.len() as u32,
            sessions: keys,
        };
        handoff::send(conn, &hello, &[])?;
        let mut receiver = handoff::Receiver::default();
        loop {
            let Some((request, fds)) = receiver.recv::<Request>(conn.as_fd())? else {
                return Ok(());
            };
            let Request { id, command } = request;
            debug!(id, ?command, descriptors = fds.len(), "command");
            let export = match &command {
                Command::ExportListeners { key } => Some(key.clone()),
                _ => None,
            };
            let outcome = self.handle(command, fds);
            let out_fds = match (&outcome, export) {
                (Outcome::Listeners { .. }, Some(key)) => self.export(&key),
                _ => Vec::new(),
            };
            let borrowed: Vec<_> = out_fds.iter().map(|f| f.as_fd()).collect();
            handoff::send(conn, &FromDataPlane::Reply { id, outcome }, &borrowed)?;
        }
    }
}

/// Accepts controllers one after another. Returns when a controller
/// leaves and no session is left to forward (nothing for s2ds to do until
/// a new s2cs starts one, which starts its own s2ds).
pub fn run(listener: OwnedFd, mut dp: SessionTable) -> io::Result<()> {
    loop {
        let conn = handoff::accept(&listener)?;
        // Only the user s2ds runs as may command it: whoever holds this
        // socket can hand it sockets and read every session.
        if let Err(e) = handoff::check_peer_is_same_user(&conn) {
            warn!(error = %e, "control connection refused");
            continue;
        }
        info!("control connection from s2cs");
        match dp.serve_controller(&conn) {
            Ok(()) => info!(
                sessions = dp.session_count(),
                "s2cs closed the control connection"
            ),
            Err(e) => warn!(error = %e, sessions = dp.session_count(), "control connection failed"),
        }
        if dp.session_count() == 0 {
            info!("no controller and no session left; exiting");
            return Ok(());
        }
        info!(
            sessions = dp.session_count(),
            "still forwarding; waiting for s2cs to reconnect"
        );
    }
}

/// Where the workers acknowledge the listeners handed to them.
type Acks = mpsc::Receiver<Result<(), String>>;

/// As many sockets as the session has listeners (twice as many with UDP),
/// and a target per listener.
fn check_counts(spec: &SessionSpec, sockets: usize) -> Result<(), String> {
    let n = spec.listeners.len();
    let expected = if spec.has_udp_sockets() { 2 * n } else { n };
    if sockets == expected && spec.targets.len() == n {
        return Ok(());
    }
    Err(format!(
        "{sockets} sockets ({expected} expected: {}), {n} listener addresses and {} targets do not match",
        if spec.has_udp_sockets() {
            "TCP and UDP"
        } else {
            "TCP"
        },
        spec.targets.len()
    ))
}

/// Each TCP socket handed over listens when the session accepts TCP (and
/// does not otherwise), and is made non-blocking.
fn check_listeners(fds: &[OwnedFd], accept: bool) -> Result<(), String> {
    for fd in fds {
        match rustix::net::sockopt::socket_acceptconn(fd) {
            Ok(listening) if listening == accept => {}
            _ => {
                return Err(format!(
                    "a descriptor handed over is not a {}",
                    if accept {
                        "listening socket"
                    } else {
                        "bound TCP socket that does not listen (UDP-only session)"
                    }
                ));
            }
        }
        rustix::io::ioctl_fionbio(fd, true)
            .map_err(|e| format!("cannot make a listener non-blocking: {e}"))?;
    }
    Ok(())
}
