//! What the control thread (and the UDP thread) ask of a worker, and how
//! the worker carries each out: one method per command.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc;

use scistream_protocol::Target;
use scistream_protocol::handoff::{MAX_LISTED_CONNECTIONS, SessionKey, SessionStats};
use tracing::{debug, info};

use super::counters::{conn_stats, session_stats};
use super::{Kind, Listener, Worker, token};
use crate::conn::ListenerChannel;

/// What the control thread asks of a worker.
#[derive(Debug)]
pub enum WorkerCommand {
    /// Accept on this listener and forward to its target.
    AddListener {
        /// The listener.
        listener: ListenerSpec,
        /// Acknowledgement.
        done: mpsc::Sender<Result<(), String>>,
    },
    /// A UDP flow's connection ([`crate::udp`]): forward it as if the
    /// listener `index` of the session had accepted it, flagged as UDP.
    AdoptFlow {
        /// The session.
        key: SessionKey,
        /// Listener index within the session.
        index: usize,
        /// This worker's end of the flow's socket pair.
        fd: OwnedFd,
        /// The UDP sender that opened the flow (for logs and status).
        sender: SocketAddr,
    },
    /// New targets for a session's listeners on this worker (by index).
    SetTargets {
        /// The session.
        key: SessionKey,
        /// Target per listener index.
        targets: Vec<Target>,
        /// Acknowledgement.
        done: mpsc::Sender<Result<(), String>>,
    },
    /// Close the session's listeners and connections on this worker.
    RemoveSession {
        /// The session.
        key: SessionKey,
        /// Acknowledgement.
        done: mpsc::Sender<Result<(), String>>,
    },
    /// Close every listener on this worker; connections stay (draining).
    CloseListeners {
        /// Acknowledgement.
        done: mpsc::Sender<Result<(), String>>,
    },
    /// Report counters.
    Stats {
        /// Where to send them.
        reply: mpsc::Sender<Vec<SessionStats>>,
    },
}

/// A listener to add ([`WorkerCommand::AddListener`]).
#[derive(Debug)]
pub struct ListenerSpec {
    /// The session.
    pub key: SessionKey,
    /// Listener index within the session.
    pub index: usize,
    /// The listening socket (non-blocking).
    pub fd: OwnedFd,
    /// Where its connections go.
    pub target: SocketAddr,
    /// Pacing of each connection, bytes per second.
    pub rate: Option<u64>,
    /// What its connections carry.
    pub channel: ListenerChannel,
    /// Accept TCP connections on it (false: a UDP-only session's
    /// instrument side, whose TCP socket only holds the port).
    pub accept: bool,
}

impl Worker {
    /// Carries out one command.
    pub(super) fn command(&mut self, cmd: WorkerCommand) {
        match cmd {
            WorkerCommand::AddListener { listener, done } => {
                let _ = done.send(self.add_listener(listener));
            }
            WorkerCommand::AdoptFlow {
                key,
                index,
                fd,
                sender,
            } => self.adopt_flow(&key, index, fd, sender),
            WorkerCommand::SetTargets { key, targets, done } => {
                self.set_targets(&key, &targets);
                let _ = done.send(Ok(()));
            }
            WorkerCommand::CloseListeners { done } => {
                self.close_listeners();
                let _ = done.send(Ok(()));
            }
            WorkerCommand::RemoveSession { key, done } => {
                self.remove_session(&key);
                let _ = done.send(Ok(()));
            }
            WorkerCommand::Stats { reply } => {
                let _ = reply.send(self.stats());
            }
        }
    }

    fn add_listener(&mut self, new: ListenerSpec) -> Result<(), String> {
        let counters = self.sessions.entry(new.key.clone()).or_default().clone();
        let generation = self.next_generation();
        let entry = self.listeners.vacant_entry();
        let t = token(Kind::Listener, entry.key(), generation);
        if new.accept {
            self.reactor
                .register(new.fd.as_fd(), t)
                .map_err(|e| e.to_string())?;
        }
        debug!(worker = self.id, session = %new.key, index = new.index, target = %new.target, "listener added");
        entry.insert(Listener {
            key: new.key,
            index: new.index,
            fd: new.fd,
            target: new.target,
            rate: new.rate,
            channel: new.channel,
            generation,
            counters,
            accepting: new.accept,
        });
        if new.accept {
            // Connections may have queued before we registered: accept them now.
            self.again.push(t);
        }
        Ok(())
    }

    /// A UDP flow's connection, forwarded as listener `index` would.
    fn adopt_flow(&mut self, key: &SessionKey, index: usize, fd: OwnedFd, sender: SocketAddr) {
        match self.listener_of(key, index) {
            Some(slot) => self.start_conn(slot, fd, Some(sender)),
            // The session went meanwhile: closing the pair ends the flow.
            None => {
                debug!(worker = self.id, session = %key, index, "UDP flow for a session no longer here")
            }
        }
    }

    /// The slot of the session's listener `index` on this worker.
    fn listener_of(&self, key: &SessionKey, index: usize) -> Option<usize> {
        self.listeners
            .iter()
            .find(|(_, l)| &l.key == key && l.index == index)
            .map(|(slot, _)| slot)
    }

    fn set_targets(&mut self, key: &SessionKey, targets: &[Target]) {
        let all: std::sync::Arc<[Target]> = targets.to_vec().into();
        for (_, l) in self.listeners.iter_mut().filter(|(_, l)| &l.key == key) {
            let Some(t) = targets.get(l.index) else {
                continue;
            };
            l.target = t.addr;
            if let ListenerChannel::ToPeer { targets, .. } = &mut l.channel {
                *targets = all.clone();
            }
        }
    }

    /// Closes every listener; connections stay (draining).
    fn close_listeners(&mut self) {
        let slots: Vec<usize> = self.listeners.iter().map(|(i, _)| i).collect();
        let n = slots.len();
        for slot in slots {
            self.remove_listener(slot);
        }
        info!(
            worker = self.id,
            listeners = n,
            "listeners closed; draining connections"
        );
    }

    fn remove_listener(&mut self, slot: usize) {
        let l = self.listeners.remove(slot);
        if l.accepting {
            self.reactor
                .deregister(l.fd.as_fd(), token(Kind::Listener, slot, l.generation));
        }
    }

    /// Every session's counters, with (up to a bound) its connections.
    fn stats(&self) -> Vec<SessionStats> {
        let mut stats: HashMap<&SessionKey, SessionStats> = self
            .sessions
            .iter()
            .map(|(key, c)| (key, session_stats(key, c)))
            .collect();
        for (_, c) in self.conns.iter() {
            let Some(s) = stats.get_mut(&c.key) else {
                continue;
            };
            if s.connections.len() < MAX_LISTED_CONNECTIONS {
                s.connections.push(conn_stats(self.id, c));
            }
        }
        stats.into_values().collect()
    }

    /// Closes the session's listeners and connections on this worker.
    fn remove_session(&mut self, key: &SessionKey) {
        let listeners: Vec<usize> = self
            .listeners
            .iter()
            .filter(|(_, l)| &l.key == key)
            .map(|(i, _)| i)
            .collect();
        for slot in listeners {
            self.remove_listener(slot);
        }
        let conns: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| &c.key == key)
            .map(|(i, _)| i)
            .collect();
        let n = conns.len();
        for slot in conns {
            self.close_conn(slot, true);
        }
        self.sessions.remove(key);
        info!(worker = self.id, session = %key, connections_closed = n, "session removed");
    }
}
