//! The control ↔ data plane handoff: how `s2cs` tells `s2ds` what to forward.
//!
//! Transport: a Unix `SOCK_SEQPACKET` socket (`s2ds` listens, `s2cs`
//! connects). Each packet is one JSON-encoded message; listening sockets
//! travel with the message that names them, as `SCM_RIGHTS`. Packet
//! boundaries are kept by the kernel, so there is no length prefix, and a
//! message and its descriptors always arrive together.
//!
//! Conversation:
//! 1. on connect, `s2ds` sends [`FromDataPlane::Hello`] (version, engine,
//!    the sessions it is already forwarding — non-empty when `s2cs`
//!    re-attaches after a restart);
//! 2. `s2cs` sends [`Request`]s, each with a fresh `id`;
//! 3. `s2ds` answers each with exactly one [`FromDataPlane::Reply`] carrying
//!    that `id`, after the work is done (a session added is accepting, a
//!    session removed has no open connection left).

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::session::{MAX_LISTENERS_PER_SESSION, Protocol, Role};
use crate::target::Target;

/// Version of this handoff protocol; bumped on any incompatible change.
pub const HANDOFF_VERSION: u32 = 2;

/// Largest message, in bytes. Well under the default Unix socket buffer
/// (`net.core.wmem_default`), so a send never needs more than one packet.
pub const MAX_MESSAGE_LEN: usize = 96 * 1024;

/// Most descriptors in one message.
pub const MAX_FDS_PER_MESSAGE: usize = MAX_LISTENERS_PER_SESSION;

/// Identifies a session: sessions are keyed by (uid, role) so that one
/// gateway can hold both ends of a tunnel.
///
/// The uid is a secret (the data channel's credential): `Display` and
/// `Debug` show the session's tag instead ([`crate::tag`]), so a key can go
/// into any log line.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionKey {
    /// The session uid.
    pub uid: String,
    /// Which end of the tunnel.
    pub role: Role,
}

impl SessionKey {
    /// The session's tag: what logs, metrics and `s2uc status` call it.
    pub fn tag(&self) -> String {
        crate::tag::session_tag(&self.uid)
    }
}

impl std::fmt::Display for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.tag(), self.role)
    }
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKey")
            .field("tag", &self.tag())
            .field("role", &self.role)
            .finish()
    }
}

/// Everything `s2ds` needs to forward one session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSpec {
    /// The session.
    pub key: SessionKey,
    /// Local address of each listening socket, in the order of the
    /// descriptors attached to the message.
    pub listeners: Vec<SocketAddr>,
    /// Where connections accepted on listener *i* go: `targets[i]`. Same
    /// length as `listeners` (the control plane cycles the user's list).
    pub targets: Vec<Target>,
    /// Rate cap for the whole session in kilobits per second, split evenly
    /// over its connections; 0 means no cap.
    pub rate_kbps: u64,
    /// What the session's connections carry.
    #[serde(default)]
    pub channel: DataChannel,
    /// The connection index of its first listener: 0, except for part of a
    /// session whose listeners are spread over several gateway nodes
    /// (listener *i* answers to, and its connections present, index
    /// `first_index + i`).
    #[serde(default)]
    pub first_index: u16,
    /// What the listeners carry. Only the instrument side (`ToPeer`) has
    /// UDP sockets: it frames each flow into a connection to its target;
    /// the inbound side (`FromPeer`) takes such connections when the
    /// session carries UDP, and plain ones when it carries TCP.
    #[serde(default)]
    pub protocol: Protocol,
}

/// How a session's connections cross between gateways.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DataChannel {
    /// Plain TCP on both sides, no preamble (inside one host or facility,
    /// and for measurement).
    #[default]
    Raw,
    /// Inbound gateway: accepted connections come from a peer gateway; each
    /// must present the session's uid in a preamble (inside TLS when `tls`)
    /// before a connection to the target is made.
    FromPeer {
        /// The channel is TLS 1.3 (this side is the server).
        tls: bool,
        /// The peer gateway must present a certificate that the peer CA
        /// verifies (mutual TLS) for this session: set for sessions whose
        /// uid is not random, so that knowing the uid is not enough.
        #[serde(default)]
        client_cert: bool,
    },
    /// Outbound gateway: connections to the targets (the inbound gateway's
    /// listeners) carry a preamble first (inside TLS when `tls`).
    ToPeer {
        /// The channel is TLS 1.3 (this side is the client); each target's
        /// certificate is verified against its [`Target::server_name`].
        tls: bool,
    },
}

impl SessionSpec {
    /// This side has a UDP socket per listener (the instrument side of a
    /// session carrying UDP): the message's descriptors are the TCP
    /// listeners, then as many UDP sockets, in listener order.
    pub fn has_udp_sockets(&self) -> bool {
        matches!(self.channel, DataChannel::ToPeer { .. }) && self.protocol.carries_udp()
    }

    /// This side accepts on its TCP sockets. Not on the instrument side of
    /// a UDP-only session, whose TCP sockets are bound but not listening
    /// (they hold the port number; a TCP client is refused by the kernel).
    /// The inbound side always accepts: the tunnel's connections, which
    /// carry the UDP flows too, are TCP.
    pub fn accepts_tcp(&self) -> bool {
        !matches!(self.channel, DataChannel::ToPeer { .. }) || self.protocol.carries_tcp()
    }

    /// The pacing rate of each connection, bytes per second: the session's
    /// rate split evenly over its listeners (`num_conn`). `None`: no cap.
    pub fn per_connection_rate(&self) -> Option<u64> {
        if self.rate_kbps == 0 {
            return None;
        }
        let n = self.listeners.len().max(1) as u64;
        Some((self.rate_kbps * 1000 / 8 / n).max(1))
    }
}

/// Counters of one connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnStats {
    /// The worker (core) that owns it for its whole life.
    pub worker: u32,
    /// Index of the listener that accepted it.
    pub listener: usize,
    /// The accepted client.
    pub peer: SocketAddr,
    /// Where it is forwarded.
    pub target: SocketAddr,
    /// Bytes from client to target.
    pub bytes_to_target: u64,
    /// Bytes from target to client.
    pub bytes_from_target: u64,
    /// Milliseconds since it was accepted.
    pub age_ms: u64,
    /// How its bytes are moved: `connecting`, `splice`.
    pub mode: String,
}

/// Most connections listed per session in a stats reply (the counts and
/// byte totals always cover all of them).
pub const MAX_LISTED_CONNECTIONS: usize = 200;

/// A command from `s2cs` to `s2ds`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Start accepting on the attached listening sockets (one per
    /// `spec.listeners` entry, same order).
    AddSession(SessionSpec),
    /// Change where new connections go. Connections already open stay as they are.
    UpdateTargets {
        /// The session.
        key: SessionKey,
        /// New target per listener.
        targets: Vec<Target>,
    },
    /// Close the session's listeners and every one of its connections.
    RemoveSession {
        /// The session.
        key: SessionKey,
    },
    /// Report counters.
    Stats,
    /// Close every listening socket (new connections are refused) and keep
    /// the open connections: the start of a graceful shutdown.
    Drain,
    /// Send back duplicates of the session's listening sockets (attached to
    /// the reply, in listener order): a restarted `s2cs` takes them back so
    /// that it can hand them to a new `s2ds` should this one die.
    ExportListeners {
        /// The session.
        key: SessionKey,
    },
    /// Read the data-channel certificate, key and peer CA files again; new
    /// connections use them, open ones keep theirs. A file that does not
    /// load fails the command and the configuration in use stays.
    ReloadTls,
}

/// A [`Command`] with the id its reply will carry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Chosen by the sender, unique per connection.
    pub id: u64,
    /// What to do.
    pub command: Command,
}

/// Counters of one session, summed over its connections.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStats {
    /// The session.
    pub key: SessionKey,
    /// Connections open now.
    pub conns_open: u64,
    /// Connections accepted since the session started.
    pub conns_total: u64,
    /// Bytes from accepted clients towards targets.
    pub bytes_to_target: u64,
    /// Bytes from targets back to accepted clients.
    pub bytes_from_target: u64,
    /// Connections that failed: target unreachable, reset, I/O error.
    pub errors: u64,
    /// Connections refused while being set up: failed TLS handshake, wrong
    /// or malformed preamble, setup timeout.
    #[serde(default)]
    pub rejected: u64,
    /// TLS key updates this gateway sent on the session's connections.
    #[serde(default)]
    pub key_updates: u64,
    /// Open connections, at most [`MAX_LISTED_CONNECTIONS`] of them.
    #[serde(default)]
    pub connections: Vec<ConnStats>,
    /// UDP flows and datagrams, when the session carries UDP.
    #[serde(default)]
    pub udp: UdpStats,
    /// Why the latest connection of the session failed or was refused.
    #[serde(default)]
    pub last_failure: Option<Failure>,
}

/// Why a connection failed, and how long ago.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// In words (no uid, no secret).
    pub reason: String,
    /// Milliseconds since it happened.
    pub age_ms: u64,
}

impl Failure {
    /// The more recent of two failures.
    pub fn latest(a: Option<Failure>, b: Option<Failure>) -> Option<Failure> {
        match (a, b) {
            (Some(a), Some(b)) => Some(if b.age_ms < a.age_ms { b } else { a }),
            (a, b) => a.or(b),
        }
    }
}

/// A session's UDP counters on one gateway. "To target" is the direction
/// from the instrument towards the receiver; "from target" the replies.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UdpStats {
    /// Flows open now (one per sender address and port).
    pub flows_open: u64,
    /// Flows since the session started.
    pub flows_total: u64,
    /// Datagrams forwarded towards the receiver.
    pub datagrams_to_target: u64,
    /// Their payload bytes.
    pub bytes_to_target: u64,
    /// Datagrams forwarded back towards their sender.
    pub datagrams_from_target: u64,
    /// Their payload bytes.
    pub bytes_from_target: u64,
    /// Datagrams dropped because the way on could not take them (queue
    /// full: the tunnel or the receiver is slower than the sender).
    pub dropped: u64,
    /// Flows closed after moving nothing for the idle time.
    pub flows_expired: u64,
    /// Datagrams the kernel dropped on the session's UDP sockets before
    /// `s2ds` took them (receive buffer full), from `/proc/net/udp`.
    #[serde(default)]
    pub kernel_dropped: u64,
}

impl Default for SessionKey {
    fn default() -> Self {
        SessionKey {
            uid: String::new(),
            role: Role::Prod,
        }
    }
}

/// The outcome of one [`Request`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    /// Done, nothing to report.
    Done,
    /// Counters, for [`Command::Stats`].
    Stats {
        /// One entry per session.
        sessions: Vec<SessionStats>,
    },
    /// Listening sockets, for [`Command::ExportListeners`]: their
    /// addresses, the descriptors attached in the same order.
    Listeners {
        /// Local address of each.
        addrs: Vec<SocketAddr>,
    },
    /// The command failed; the message says why, for a person.
    Failed {
        /// What went wrong.
        message: String,
    },
}

/// A message from `s2ds` to `s2cs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FromDataPlane {
    /// First message on every control connection.
    Hello {
        /// [`HANDOFF_VERSION`] of the data plane.
        version: u32,
        /// Process id of `s2ds`.
        pid: u32,
        /// I/O engine in use (`io_uring` or `epoll`).
        engine: String,
        /// Number of worker threads.
        workers: u32,
        /// Sessions already being forwarded.
        sessions: Vec<SessionKey>,
    },
    /// The answer to the [`Request`] with this id.
    Reply {
        /// The request's id.
        id: u64,
        /// What happened.
        outcome: Outcome,
    },
}

/// Handoff failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandoffError {
    /// The socket failed.
    #[error("control socket I/O: {0}")]
    Io(#[from] io::Error),
    /// A message did not fit in [`MAX_MESSAGE_LEN`], or its descriptors did
    /// not fit in [`MAX_FDS_PER_MESSAGE`].
    #[error("handoff message too large ({0})")]
    TooLarge(String),
    /// A message arrived cut short by the kernel.
    #[error("handoff message truncated")]
    Truncated,
    /// A message that is not valid JSON for the expected type.
    #[error("malformed handoff message: {0}")]
    Decode(#[from] serde_json::Error),
}

/// Encodes and sends one message with its descriptors.
pub fn send<T: Serialize>(
    sock: impl AsFd,
    message: &T,
    fds: &[BorrowedFd<'_>],
) -> Result<(), HandoffError> {
    let bytes = serde_json::to_vec(message)?;
    if bytes.len() > MAX_MESSAGE_LEN {
        return Err(HandoffError::TooLarge(format!("{} bytes", bytes.len())));
    }
    if fds.len() > MAX_FDS_PER_MESSAGE {
        return Err(HandoffError::TooLarge(format!("{} descriptors", fds.len())));
    }
    let mut space =
        vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(HandoffError::TooLarge(format!("{} descriptors", fds.len())));
    }
    let sent = rustix::net::sendmsg(
        sock,
        &[IoSlice::new(&bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )
    .map_err(io::Error::from)?;
    if sent != bytes.len() {
        // SOCK_SEQPACKET sends all or nothing; anything else is a kernel surprise.
        return Err(HandoffError::Truncated);
    }
    Ok(())
}

/// The sender of a message as the kernel saw it (`SCM_CREDENTIALS`, present
/// when the receiving socket has [`pass_credentials`] on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sender {
    /// Process id of the process that sent the message.
    pub pid: u32,
    /// Its user id.
    pub uid: u32,
}

/// A reusable receive buffer.
#[derive(Debug)]
pub struct Receiver {
    buf: Vec<u8>,
    space: Vec<MaybeUninit<u8>>,
    sender: Option<Sender>,
}

impl Default for Receiver {
    fn default() -> Self {
        Receiver {
            buf: vec![0; MAX_MESSAGE_LEN + 1],
            space: vec![
                MaybeUninit::uninit();
                rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE), ScmCredentials(1))
            ],
            sender: None,
        }
    }
}

impl Receiver {
    /// Who sent the last message received, when the kernel said so.
    pub fn last_sender(&self) -> Option<Sender> {
        self.sender
    }

    /// Receives and decodes one message. `Ok(None)` when the peer closed the
    /// socket. Descriptors arrive close-on-exec.
    pub fn recv<T: DeserializeOwned>(
        &mut self,
        sock: impl AsFd,
    ) -> Result<Option<(T, Vec<OwnedFd>)>, HandoffError> {
        let mut control = RecvAncillaryBuffer::new(&mut self.space);
        let msg = rustix::net::recvmsg(
            sock,
            &mut [IoSliceMut::new(&mut self.buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        // Take ownership of every descriptor first, so none leaks on an error path.
        let mut fds = Vec::new();
        self.sender = None;
        for m in control.drain() {
            match m {
                RecvAncillaryMessage::ScmRights(received) => fds.extend(received),
                RecvAncillaryMessage::ScmCredentials(cred) => {
                    self.sender = Some(Sender {
                        pid: cred.pid.as_raw_nonzero().get() as u32,
                        uid: cred.uid.as_raw(),
                    });
                }
                _ => {}
            }
        }
        if msg
            .flags
            .intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC)
            || msg.bytes > MAX_MESSAGE_LEN
        {
            return Err(HandoffError::Truncated);
        }
        if msg.bytes == 0 {
            return Ok(None);
        }
        let value = serde_json::from_slice(&self.buf[..msg.bytes])?;
        Ok(Some((value, fds)))
    }
}

fn seqpacket_socket() -> io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Binds and listens on a Unix seqpacket socket at `path`.
pub fn listen(path: &Path) -> io::Result<OwnedFd> {
    let fd = seqpacket_socket()?;
    rustix::net::bind(&fd, &SocketAddrUnix::new(path)?)?;
    rustix::net::listen(&fd, 8)?;
    Ok(fd)
}

/// Connects to the Unix seqpacket socket at `path` (blocking connect; the
/// socket stays blocking).
pub fn connect(path: &Path) -> io::Result<OwnedFd> {
    let fd = seqpacket_socket()?;
    rustix::net::connect(&fd, &SocketAddrUnix::new(path)?)?;
    Ok(fd)
}

/// The user id of the process at the other end of a connected handoff
/// socket (`SO_PEERCRED`: for the connecting side, the process that
/// created the listening socket; for the accepting side, the process that
/// connected).
pub fn peer_uid(sock: impl AsFd) -> io::Result<u32> {
    Ok(rustix::net::sockopt::socket_peercred(sock)?.uid.as_raw())
}

/// Refuses a handoff peer that runs as another user than this process:
/// only the same user may command (or be) the data plane.
pub fn check_peer_is_same_user(sock: impl AsFd) -> io::Result<()> {
    let theirs = peer_uid(sock)?;
    let ours = rustix::process::geteuid().as_raw();
    if theirs == ours {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("the handoff peer runs as uid {theirs}, this process as uid {ours}"),
        ))
    }
}

/// Asks the kernel to attach the sender's credentials to every message
/// received on `sock` ([`Receiver::last_sender`]).
pub fn pass_credentials(sock: impl AsFd) -> io::Result<()> {
    Ok(rustix::net::sockopt::set_socket_passcred(sock, true)?)
}

/// Accepts one control connection (close-on-exec).
pub fn accept(listener: impl AsFd) -> io::Result<OwnedFd> {
    Ok(rustix::net::accept_with(listener, SocketFlags::CLOEXEC)?)
}

/// A connected pair, for tests and for spawning a data plane without a path.
pub fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::os::fd::AsFd;

    fn key() -> SessionKey {
        SessionKey {
            uid: "u1".into(),
            role: Role::Prod,
        }
    }

    #[test]
    fn message_and_descriptors_travel_together() {
        let (a, b) = pair().unwrap();
        let l1 = TcpListener::bind("127.0.0.1:0").unwrap();
        let l2 = TcpListener::bind("127.0.0.1:0").unwrap();
        let spec = SessionSpec {
            first_index: 0,
            protocol: Default::default(),
            key: key(),
            listeners: vec![l1.local_addr().unwrap(), l2.local_addr().unwrap()],
            targets: vec![Target::from_addr("127.0.0.1:9".parse().unwrap()); 2],
            rate_kbps: 0,
            channel: Default::default(),
        };
        let req = Request {
            id: 7,
            command: Command::AddSession(spec.clone()),
        };
        send(&a, &req, &[l1.as_fd(), l2.as_fd()]).unwrap();
        let (got, fds): (Request, _) = Receiver::default().recv(&b).unwrap().unwrap();
        assert_eq!(got, req);
        assert_eq!(fds.len(), 2);
        // The received descriptor is the same listening socket.
        let l = TcpListener::from(fds.into_iter().next().unwrap());
        assert_eq!(l.local_addr().unwrap(), spec.listeners[0]);
    }

    #[test]
    fn the_kernel_names_the_sender() {
        let (a, b) = pair().unwrap();
        check_peer_is_same_user(&a).unwrap();
        pass_credentials(&b).unwrap();
        let req = Request {
            id: 1,
            command: Command::Stats,
        };
        send(&a, &req, &[]).unwrap();
        let mut r = Receiver::default();
        let _: (Request, _) = r.recv(&b).unwrap().unwrap();
        let sender = r.last_sender().unwrap();
        assert_eq!(sender.pid, std::process::id());
        assert_eq!(sender.uid, rustix::process::geteuid().as_raw());
    }

    #[test]
    fn keys_show_their_tag_not_their_uid() {
        let k = SessionKey {
            uid: "a-secret-uid-0123456789".into(),
            role: Role::Cons,
        };
        for shown in [k.to_string(), format!("{k:?}")] {
            assert!(!shown.contains("a-secret-uid"), "{shown}");
            assert!(shown.contains(&k.tag()), "{shown}");
        }
    }

    #[test]
    fn eof_is_none_and_garbage_is_an_error() {
        let (a, b) = pair().unwrap();
        rustix::net::send(&a, b"{not json", SendFlags::empty()).unwrap();
        let mut r = Receiver::default();
        assert!(matches!(
            r.recv::<Request>(&b),
            Err(HandoffError::Decode(_))
        ));
        drop(a);
        assert!(r.recv::<Request>(&b).unwrap().is_none());
    }

    #[test]
    fn oversized_messages_are_refused_before_sending() {
        let (a, _b) = pair().unwrap();
        let big = Outcome::Failed {
            message: "x".repeat(MAX_MESSAGE_LEN),
        };
        assert!(matches!(
            send(&a, &big, &[]),
            Err(HandoffError::TooLarge(_))
        ));
    }

    #[test]
    fn the_largest_session_fits_in_one_message() {
        // Every listener forwarding to its own longest DNS name.
        let name = format!(
            "{}.{}.{}.{}",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61)
        );
        let addr: SocketAddr = "[2001:db8:1234:5678:9abc:def0:1234:5678]:65535"
            .parse()
            .unwrap();
        let target = Target::new(&format!("{name}:65535"), addr).unwrap();
        let n = MAX_LISTENERS_PER_SESSION;
        let spec = SessionSpec {
            first_index: 0,
            protocol: Default::default(),
            key: SessionKey {
                uid: "u".repeat(crate::session::MAX_UID_LEN),
                role: Role::Cons,
            },
            listeners: vec![addr; n],
            targets: vec![target; n],
            rate_kbps: u64::MAX,
            channel: DataChannel::ToPeer { tls: true },
        };
        let request = Request {
            id: u64::MAX,
            command: Command::AddSession(spec),
        };
        let len = serde_json::to_vec(&request).unwrap().len();
        assert!(len <= MAX_MESSAGE_LEN, "{len} bytes");
    }

    #[test]
    fn wire_shape_is_stable() {
        let r = Request {
            id: 1,
            command: Command::RemoveSession { key: key() },
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"id":1,"command":{"op":"remove_session","key":{"uid":"u1","role":"PROD"}}}"#
        );
    }
}
