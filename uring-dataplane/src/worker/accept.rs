//! Taking connections in: accepting on a listener, refusing past the
//! session's cap, and starting a connection in the state its listener's
//! channel calls for. The decisions ([`admits`], [`start_of`]) are plain
//! functions, tested without a reactor.

use std::cmp::Reverse;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::net::SocketFlags;
use rustls::ServerConfig;
use scistream_protocol::handoff::SessionKey;
use tracing::{debug, warn};

use super::counters::{Counters, bump};
use super::{Kind, Worker, token};
use crate::conn::{Conn, ConnState, ListenerChannel, tune};
use crate::relay::set_reset_on_close;
use crate::setup::Inbound;

/// Connections accepted per listener per wake-up before others get a turn.
const ACCEPT_BATCH: usize = 64;

/// Connections refused past `--max-open-conns`, logged: 5 per 10 s.
static OVER_CAP: scistream_protocol::loglimit::LogLimit =
    scistream_protocol::loglimit::LogLimit::new(5, Duration::from_secs(10));

/// Whether a session with `open` connections on this worker may take one
/// more under `--max-open-conns` = `max`.
pub(crate) fn admits(open: u64, max: u64) -> bool {
    open < max
}

/// How a new connection of a listener starts, from its channel alone.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Start {
    /// From a peer gateway: read its preamble, in TLS with the server
    /// configuration that asks for a client certificate (`mutual`) or not;
    /// in the clear when `tls` is false.
    Preamble { tls: bool, mutual: bool },
    /// Raw, or to a peer gateway: connect to the target now.
    Connect { deadline: bool },
}

/// The start a listener's `channel` calls for.
pub(crate) fn start_of(channel: &ListenerChannel) -> Start {
    match channel {
        ListenerChannel::FromPeer {
            tls, client_cert, ..
        } => Start::Preamble {
            tls: *tls,
            mutual: *tls && *client_cert,
        },
        ListenerChannel::ToPeer { .. } => Start::Connect { deadline: true },
        ListenerChannel::Raw => Start::Connect { deadline: false },
    }
}

/// What a new connection takes from its listener.
struct Origin {
    key: SessionKey,
    index: usize,
    target_addr: SocketAddr,
    counters: Rc<Counters>,
    rate: Option<u64>,
    channel: ListenerChannel,
}

impl Worker {
    pub(super) fn accept(&mut self, slot: usize) {
        for _ in 0..ACCEPT_BATCH {
            let Some(l) = self.listeners.get(slot) else {
                return;
            };
            match rustix::net::accept_with(&l.fd, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC) {
                Ok(client) if !admits(l.counters.conns_open.get(), self.options.max_open_conns) => {
                    self.refuse_over_cap(slot, client);
                }
                Ok(client) => self.start_conn(slot, client, None),
                Err(Errno::AGAIN) => return,
                Err(Errno::INTR | Errno::CONNABORTED | Errno::PROTO) => continue,
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS/ENOMEM: the connection stays queued in
                    // the kernel; retry in a moment instead of spinning.
                    warn!(worker = self.id, session = %l.key, error = %e, "cannot accept a connection; retrying in 100 ms");
                    let t = token(Kind::Listener, slot, l.generation);
                    self.paused
                        .push((t, Instant::now() + Duration::from_millis(100)));
                    return;
                }
            }
        }
        if let Some(l) = self.listeners.get(slot) {
            self.again.push(token(Kind::Listener, slot, l.generation));
        }
    }

    /// A connection past `--max-open-conns`: reset at once, counted
    /// as refused with its reason, logged within a rate limit.
    fn refuse_over_cap(&self, slot: usize, client: OwnedFd) {
        let Some(l) = self.listeners.get(slot) else {
            return;
        };
        set_reset_on_close(&client);
        drop(client);
        bump(&l.counters.rejected, 1);
        let max = self.options.max_open_conns;
        l.counters.failed(format!(
            "a connection was refused: the session has {max} open on one worker, as many as --max-open-conns allows (a tunnel loop?)"
        ));
        if OVER_CAP.check(Instant::now()).log {
            warn!(worker = self.id, session = %l.key, listener = l.index, max, "a connection refused: the session has as many open as --max-open-conns allows on this worker; a loop between gateways ends here");
        }
    }

    /// Starts forwarding a connection of a listener: one it accepted, or a
    /// UDP flow's (`udp_sender`), whose client end is a Unix socket.
    pub(super) fn start_conn(
        &mut self,
        listener_slot: usize,
        client: OwnedFd,
        udp_sender: Option<SocketAddr>,
    ) {
        let Some(l) = self.listeners.get(listener_slot) else {
            return;
        };
        let from = Origin {
            key: l.key.clone(),
            index: l.index,
            target_addr: l.target,
            counters: l.counters.clone(),
            rate: l.rate,
            channel: l.channel.clone(),
        };
        let peer = match udp_sender {
            Some(sender) => sender,
            None => {
                tune(&client, &self.options, from.rate);
                peer_of(&client)
            }
        };
        bump(&from.counters.conns_total, 1);
        let start = start_of(&from.channel);
        let Some(state) = self.first_state(&from, peer, &start) else {
            set_reset_on_close(&client);
            return;
        };
        let deadline = match start {
            Start::Preamble { .. } | Start::Connect { deadline: true } => {
                Some(Instant::now() + self.options.handshake_timeout)
            }
            Start::Connect { deadline: false } => None,
        };
        let udp = udp_sender.is_some();
        let Some(slot) = self.add_conn(from, client, peer, state, deadline, udp) else {
            return;
        };
        if !matches!(start, Start::Preamble { .. }) {
            // Raw and outbound connections connect to their target at once.
            if let Err(e) = self.connect_target(slot) {
                if let Some(c) = self.conns.get(slot) {
                    bump(&c.counters.errors, 1);
                    warn!(worker = self.id, session = %c.key, target = %c.target_addr, error = %e, "cannot connect to target; closing the client");
                }
                self.close_conn(slot, true);
                return;
            }
        }
        // The peer may have sent already, or the connect completed at once (loopback).
        self.drive(slot);
    }

    /// The state a connection starts in; `None` (counted and logged) when
    /// this gateway cannot serve it.
    fn first_state(&self, from: &Origin, peer: SocketAddr, start: &Start) -> Option<ConnState> {
        let Start::Preamble { tls, mutual } = *start else {
            return Some(ConnState::Connecting(None));
        };
        let config: Option<Arc<ServerConfig>> = if tls {
            // A session whose uid is not random needs the peer's
            // certificate too: its own configuration, chosen per listener.
            let config = if mutual {
                self.options.tls.server_mtls()
            } else {
                self.options.tls.server()
            };
            if config.is_none() {
                bump(&from.counters.rejected, 1);
                warn!(worker = self.id, session = %from.key, %peer, client_cert = mutual, "TLS data channel asked for, but this gateway has no --data-cert (or no --peer-ca for mutual TLS); closing");
                return None;
            }
            config
        } else {
            None
        };
        match Inbound::new(config.as_ref()) {
            Ok(inbound) => Some(ConnState::Preamble(Box::new(inbound))),
            Err(e) => {
                bump(&from.counters.errors, 1);
                warn!(worker = self.id, session = %from.key, error = %e, "cannot start TLS; closing");
                None
            }
        }
    }

    /// Registers a new connection and its deadlines; its slot, or `None`
    /// (counted, logged, reset) when the reactor cannot watch it.
    fn add_conn(
        &mut self,
        from: Origin,
        client: OwnedFd,
        peer: SocketAddr,
        state: ConnState,
        deadline: Option<Instant>,
        udp: bool,
    ) -> Option<usize> {
        let generation = self.next_generation();
        let entry = self.conns.vacant_entry();
        let slot = entry.key();
        let t = token(Kind::Client, slot, generation);
        if let Err(e) = self.reactor.register(client.as_fd(), t) {
            bump(&from.counters.errors, 1);
            warn!(worker = self.id, session = %from.key, error = %e, "cannot watch a new connection; closing it");
            set_reset_on_close(&client);
            return None;
        }
        bump(&from.counters.conns_open, 1);
        debug!(worker = self.id, session = %from.key, index = from.index, %peer, target = %from.target_addr, "connection accepted");
        let span = tracing::debug_span!("conn", session = %from.key, listener = from.index, %peer);
        let now = Instant::now();
        entry.insert(Conn {
            span,
            key: from.key,
            listener: from.index,
            accepted: now,
            last_active: now,
            client,
            target: None,
            peer,
            target_addr: from.target_addr,
            target_index: from.index,
            attempts: 1,
            state,
            generation,
            counters: from.counters,
            rate: from.rate,
            channel: from.channel,
            deadline,
            udp,
            receiver_conn: None,
        });
        if let Some(at) = deadline {
            self.timers.push(Reverse((at, t)));
        }
        if let Some(idle) = self.options.idle_timeout {
            self.idle_timers.push(Reverse((now + idle, t)));
        }
        Some(slot)
    }
}

/// The address a connection came from (unspecified when the kernel no
/// longer knows: the peer is gone already).
fn peer_of(client: &OwnedFd) -> SocketAddr {
    rustix::net::getpeername(client)
        .ok()
        .flatten()
        .and_then(|a| SocketAddr::try_from(a).ok())
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_admits_up_to_max_open_connections() {
        assert!(admits(0, 1));
        assert!(admits(1023, 1024));
        assert!(!admits(1024, 1024));
        assert!(!admits(5, 0));
    }

    #[test]
    fn a_listeners_channel_decides_how_its_connections_start() {
        let uid: Arc<str> = Arc::from("u");
        let from_peer = |tls, client_cert| ListenerChannel::FromPeer {
            tls,
            uid: uid.clone(),
            client_cert,
            first_index: 0,
            protocol: scistream_protocol::Protocol::Tcp,
        };
        assert_eq!(
            start_of(&from_peer(true, true)),
            Start::Preamble {
                tls: true,
                mutual: true
            }
        );
        assert_eq!(
            start_of(&from_peer(true, false)),
            Start::Preamble {
                tls: true,
                mutual: false
            }
        );
        // No TLS, no client certificate, whatever the listener says.
        assert_eq!(
            start_of(&from_peer(false, true)),
            Start::Preamble {
                tls: false,
                mutual: false
            }
        );
        assert_eq!(
            start_of(&ListenerChannel::Raw),
            Start::Connect { deadline: false }
        );
    }
}
