//! Runs and supervises `s2ds`, and carries commands to it.
//!
//! `s2cs` binds the control socket (`STATE_DIR/s2ds.sock`), keeps it, and
//! gives `s2ds` a duplicate as its standard input; `s2cs` then connects to
//! it. Because the socket is listening before `s2ds` starts, there is no
//! start-up race and no polling. When `s2ds` dies, the supervisor fails the
//! calls in flight, starts a new `s2ds` (backing off when crashes repeat),
//! and hands it every forwarding session's listening sockets again before
//! any queued call: the kernel kept their queued connections meanwhile.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use scistream_protocol::handoff::{
    self, Command, FromDataPlane, HANDOFF_VERSION, HandoffError, Outcome, Request, SessionSpec,
    SessionStats,
};
use tokio::io::Interest;
use tokio::net::UnixStream;
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

/// How `s2ds` is started.
#[derive(Debug, Clone)]
pub struct DataPlaneConfig {
    /// The `s2ds` executable.
    pub bin: PathBuf,
    /// Extra arguments for it.
    pub args: Vec<String>,
    /// Path of the control socket.
    pub socket_path: PathBuf,
    /// How long a command may take before the caller gets UNAVAILABLE.
    pub call_timeout: Duration,
    /// Environment variables set for `s2ds` (the session-tag secret).
    pub env: Vec<(String, String)>,
}

/// Data-plane failures as a control call sees them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataPlaneError {
    /// `s2ds` is down or restarting.
    #[error("the data plane (s2ds) is not running")]
    Down,
    /// `s2ds` did not answer in time.
    #[error("the data plane (s2ds) did not answer within {0:?}")]
    Timeout(Duration),
    /// `s2ds` refused the command.
    #[error("{0}")]
    Failed(String),
}

/// Failure to start the data plane.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    /// The control socket could not be created.
    #[error("cannot create the data-plane control socket {path}: {source}")]
    Socket {
        /// Its path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The binary could not be run.
    #[error("cannot start the data plane {bin}: {source} (use --s2ds-bin to point at s2ds)")]
    Spawn {
        /// The binary.
        bin: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// It started but did not become ready.
    #[error("the data plane {bin} did not become ready: {reason}")]
    NotReady {
        /// The binary.
        bin: PathBuf,
        /// What happened.
        reason: String,
    },
}

type Reply = Result<(Outcome, Vec<OwnedFd>), DataPlaneError>;

struct Call {
    command: Command,
    fds: Vec<OwnedFd>,
    reply: oneshot::Sender<Reply>,
}

/// A handle for sending commands to the data plane; cheap to clone.
#[derive(Clone, Debug)]
pub struct DataPlane {
    calls: mpsc::Sender<Call>,
    call_timeout: Duration,
    restarts: Arc<AtomicU64>,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("command", &self.command)
            .finish_non_exhaustive()
    }
}

impl DataPlane {
    /// Sends a command (with descriptors) and waits for its outcome. While
    /// `s2ds` restarts, the call waits in the queue, up to the call timeout.
    pub async fn call(
        &self,
        command: Command,
        fds: Vec<OwnedFd>,
    ) -> Result<Outcome, DataPlaneError> {
        self.call_fds(command, fds).await.map(|(o, _)| o)
    }

    /// Like [`DataPlane::call`], also returning the descriptors attached to the reply.
    pub async fn call_fds(
        &self,
        command: Command,
        fds: Vec<OwnedFd>,
    ) -> Result<(Outcome, Vec<OwnedFd>), DataPlaneError> {
        let (reply, rx) = oneshot::channel();
        let fut = async {
            self.calls
                .send(Call {
                    command,
                    fds,
                    reply,
                })
                .await
                .map_err(|_| DataPlaneError::Down)?;
            rx.await.map_err(|_| DataPlaneError::Down)?
        };
        match tokio::time::timeout(self.call_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(DataPlaneError::Timeout(self.call_timeout)),
        }
    }

    /// How many times `s2ds` was restarted after dying.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// A command whose only good answer is `Done`.
    async fn call_done(&self, command: Command) -> Result<(), DataPlaneError> {
        match self.call(command, Vec::new()).await? {
            Outcome::Done => Ok(()),
            Outcome::Failed { message } => Err(DataPlaneError::Failed(message)),
            other => Err(DataPlaneError::Failed(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }

    /// The counters of every session the data plane forwards.
    pub async fn stats(&self) -> Result<Vec<SessionStats>, DataPlaneError> {
        match self.call(Command::Stats, Vec::new()).await? {
            Outcome::Stats { sessions } => Ok(sessions),
            other => Err(DataPlaneError::Failed(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }

    /// Connections open over all sessions.
    pub async fn open_connections(&self) -> Result<u64, DataPlaneError> {
        Ok(self.stats().await?.iter().map(|s| s.conns_open).sum())
    }

    /// Closes every data listener, keeping open connections (the start of
    /// a graceful shutdown).
    pub async fn drain(&self) -> Result<(), DataPlaneError> {
        self.call_done(Command::Drain).await
    }

    /// Has the data plane read its TLS files again (SIGHUP).
    pub async fn reload_tls(&self) -> Result<(), DataPlaneError> {
        self.call_done(Command::ReloadTls).await
    }
}

/// Sessions to hand to a freshly started `s2ds`.
pub type Resync = Arc<dyn Fn() -> Vec<(SessionSpec, Vec<OwnedFd>)> + Send + Sync>;

/// The connected control socket.
///
/// It is a `SOCK_SEQPACKET` socket; tokio has no type for those, so it is
/// registered as a `UnixStream`, whose readiness (`readable`, `writable`,
/// `try_io`) is all this uses: every byte goes through the handoff's own
/// `sendmsg`/`recvmsg`, never through the stream's read/write.
struct Link {
    fd: UnixStream,
    receiver: handoff::Receiver,
    next_id: u64,
    pending: HashMap<u64, oneshot::Sender<Reply>>,
}

fn to_io(e: HandoffError) -> io::Error {
    match e {
        HandoffError::Io(e) => e,
        other => io::Error::other(other),
    }
}

impl Link {
    fn new(fd: OwnedFd) -> io::Result<Self> {
        rustix::io::ioctl_fionbio(&fd, true)?;
        let fd = UnixStream::from_std(std::os::unix::net::UnixStream::from(fd))?;
        Ok(Link {
            fd,
            receiver: handoff::Receiver::default(),
            next_id: 1,
            pending: HashMap::new(),
        })
    }

    async fn send(&mut self, command: Command, fds: &[OwnedFd]) -> io::Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let request = Request { id, command };
        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        loop {
            self.fd.writable().await?;
            let fd = &self.fd;
            match fd.try_io(Interest::WRITABLE, || {
                handoff::send(fd, &request, &borrowed).map_err(to_io)
            }) {
                Ok(()) => return Ok(id),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The next message and its descriptors; `Ok(None)` when `s2ds` closed the socket.
    async fn recv(&mut self) -> io::Result<Option<(FromDataPlane, Vec<OwnedFd>)>> {
        loop {
            self.fd.readable().await?;
            let (fd, receiver) = (&self.fd, &mut self.receiver);
            match fd.try_io(Interest::READABLE, || {
                receiver.recv::<FromDataPlane>(fd).map_err(to_io)
            }) {
                Ok(m) => return Ok(m),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn fail_pending(&mut self) {
        for (_, tx) in self.pending.drain() {
            let _ = tx.send(Err(DataPlaneError::Down));
        }
    }
}

/// Owns `s2ds` and the control socket.
#[derive(Debug)]
pub struct Supervisor {
    config: DataPlaneConfig,
    /// The control socket's listener, once this `s2cs` made one.
    listener: Option<OwnedFd>,
    calls: mpsc::Receiver<Call>,
    restarts: Arc<AtomicU64>,
    child: Option<Child>,
    /// A pidfd of the `s2ds` adopted from a previous `s2cs` (not our
    /// child), opened on the pid the kernel named as the Hello's sender.
    adopted: Option<OwnedFd>,
    link: Option<Link>,
}

/// What [`Supervisor::start`] found.
#[derive(Debug, Clone, Default)]
pub struct Attached {
    /// An `s2ds` left by a previous `s2cs` was still running and was adopted.
    pub adopted: bool,
    /// The sessions it is forwarding.
    pub sessions: Vec<handoff::SessionKey>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

enum Ended {
    Shutdown,
    Died(String),
}

impl Supervisor {
    /// Re-attaches to the `s2ds` a previous `s2cs` left running on this
    /// state directory, or else creates the control socket and starts a new
    /// `s2ds`, waiting until it is ready: a gateway whose data plane cannot
    /// start fails at once.
    pub async fn start(
        config: DataPlaneConfig,
    ) -> Result<(DataPlane, Supervisor, Attached), LaunchError> {
        let (tx, rx) = mpsc::channel(256);
        let restarts = Arc::new(AtomicU64::new(0));
        let mut sup = Supervisor {
            config,
            listener: None,
            calls: rx,
            restarts: restarts.clone(),
            child: None,
            adopted: None,
            link: None,
        };
        let attached = match sup.adopt().await {
            Some(sessions) => Attached {
                adopted: true,
                sessions,
            },
            None => {
                sup.spawn().await?;
                Attached::default()
            }
        };
        let handle = DataPlane {
            calls: tx,
            call_timeout: sup.config.call_timeout,
            restarts,
        };
        Ok((handle, sup, attached))
    }

    /// Connects to a running `s2ds` on the control socket, if there is one.
    ///
    /// Nothing in its messages is believed about who it is: the socket must
    /// have been made by this user (`SO_PEERCRED`), the kernel names the
    /// process that sent the Hello (`SCM_CREDENTIALS`), which must run as
    /// this user too, and it is held by a pidfd, so that stopping it later
    /// can never signal another process.
    async fn adopt(&mut self) -> Option<Vec<handoff::SessionKey>> {
        let fd = handoff::connect(&self.config.socket_path).ok()?;
        if let Err(e) = handoff::check_peer_is_same_user(&fd) {
            warn!(error = %e, path = %self.config.socket_path.display(), "not adopting the data plane on the control socket");
            return None;
        }
        let mut link = Link::new(fd).ok()?;
        let hello = tokio::time::timeout(Duration::from_secs(5), link.recv()).await;
        let (engine, workers, sessions) = match hello {
            Ok(Ok(Some((
                FromDataPlane::Hello {
                    version,
                    engine,
                    workers,
                    sessions,
                    ..
                },
                _,
            )))) if version == HANDOFF_VERSION => (engine, workers, sessions),
            other => {
                warn!(
                    ?other,
                    "a data plane answers on the control socket but cannot be adopted; starting a new one"
                );
                return None;
            }
        };
        let (pid, pidfd) = match adopted_pidfd(&mut link).await {
            Ok(found) => found,
            Err(why) => {
                warn!(%why, "not adopting the data plane on the control socket; starting a new one");
                return None;
            }
        };
        info!(pid, %engine, workers, sessions = sessions.len(),
            "re-attached to the data plane a previous s2cs left running");
        self.adopted = Some(pidfd);
        self.link = Some(link);
        Some(sessions)
    }

    /// The control socket's listener, created (replacing a stale socket
    /// file) the first time it is needed.
    fn control_listener(&mut self) -> Result<&OwnedFd, LaunchError> {
        if self.listener.is_none() {
            let path = self.config.socket_path.clone();
            match std::fs::remove_file(&path) {
                Ok(()) => debug!(path = %path.display(), "removed stale control socket"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(LaunchError::Socket { path, source }),
            }
            let l = handoff::listen(&path).map_err(|source| LaunchError::Socket {
                path: path.clone(),
                source,
            })?;
            // The directory is private already; the socket is too, whatever the umask.
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .map_err(|source| LaunchError::Socket { path, source })?;
            self.listener = Some(l);
        }
        self.listener.as_ref().ok_or_else(|| LaunchError::Socket {
            path: self.config.socket_path.clone(),
            source: io::Error::other("no listener"),
        })
    }

    async fn spawn(&mut self) -> Result<(), LaunchError> {
        let bin = self.config.bin.clone();
        // A fresh control socket for every s2ds: a connection this s2cs
        // queued for an s2ds that died before accepting it would otherwise
        // be the first thing the next one accepts, and it is dead.
        self.listener = None;
        let stdin = self
            .control_listener()?
            .try_clone()
            .map_err(|source| LaunchError::Spawn {
                bin: bin.clone(),
                source,
            })?;
        let mut child = tokio::process::Command::new(&bin)
            .arg("--control-stdin")
            .args(&self.config.args)
            .envs(self.config.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::from(stdin))
            .spawn()
            .map_err(|source| LaunchError::Spawn {
                bin: bin.clone(),
                source,
            })?;
        let not_ready = |reason: String| LaunchError::NotReady {
            bin: bin.clone(),
            reason,
        };
        let fd = handoff::connect(&self.config.socket_path)
            .map_err(|e| not_ready(format!("cannot connect: {e}")))?;
        let mut link = Link::new(fd).map_err(|e| not_ready(e.to_string()))?;
        let hello = tokio::select! {
            // Generous: under CPU emulation (the kTLS VM) start-up takes seconds.
            m = tokio::time::timeout(Duration::from_secs(60), link.recv()) => m,
            status = child.wait() => {
                return Err(not_ready(match status {
                    Ok(s) => format!("it exited ({s}) before it was ready; see its log above"),
                    Err(e) => format!("waiting for it failed: {e}"),
                }));
            }
        };
        match hello {
            Ok(Ok(Some((
                FromDataPlane::Hello {
                    version,
                    pid,
                    engine,
                    workers,
                    sessions,
                },
                _,
            )))) => {
                if version != HANDOFF_VERSION {
                    let _ = child.start_kill();
                    return Err(not_ready(format!(
                        "it speaks handoff version {version}, this s2cs speaks {HANDOFF_VERSION}; \
                         install s2cs and s2ds from the same release"
                    )));
                }
                info!(pid, %engine, workers, sessions = sessions.len(), "data plane ready");
            }
            Ok(Ok(other)) => {
                let _ = child.start_kill();
                return Err(not_ready(format!(
                    "unexpected first message {:?}",
                    other.map(|(m, _)| m)
                )));
            }
            Ok(Err(e)) => {
                let _ = child.start_kill();
                return Err(not_ready(e.to_string()));
            }
            Err(_) => {
                let _ = child.start_kill();
                return Err(not_ready("no hello within 60 s".into()));
            }
        }
        self.child = Some(child);
        self.link = Some(link);
        Ok(())
    }

    /// Serves calls, restarts `s2ds` when it dies, and stops it when
    /// `shutdown` turns true.
    pub async fn run(mut self, resync: Resync, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let started = Instant::now();
            match self.serve(&mut shutdown).await {
                Ended::Shutdown => {
                    self.stop().await;
                    return;
                }
                Ended::Died(reason) => {
                    let n = self.restarts.fetch_add(1, Ordering::Relaxed) + 1;
                    if let Some(link) = self.link.as_mut() {
                        link.fail_pending();
                    }
                    self.link = None;
                    self.adopted = None;
                    if let Some(mut child) = self.child.take() {
                        let _ = child.start_kill();
                        let _ = child.wait().await;
                    }
                    backoff = if started.elapsed() > Duration::from_secs(10) {
                        Duration::from_millis(100)
                    } else {
                        (backoff * 2).min(Duration::from_secs(5))
                    };
                    error!(%reason, restarts = n, "data plane died; restarting it in {backoff:?}");
                }
            }
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => { self.stop().await; return; }
                }
                match self.spawn().await {
                    Ok(()) => break,
                    Err(e) => {
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        error!(error = %e, "data plane restart failed; retrying in {backoff:?}");
                    }
                }
            }
            self.resync(&resync).await;
        }
    }

    /// Hands every forwarding session to a new `s2ds`, before any queued call.
    async fn resync(&mut self, resync: &Resync) {
        let Some(link) = self.link.as_mut() else {
            return;
        };
        let sessions = resync();
        let count = sessions.len();
        for (spec, fds) in sessions {
            let key = spec.key.clone();
            match link.send(Command::AddSession(spec), &fds).await {
                Ok(id) => {
                    let (tx, rx) = oneshot::channel();
                    link.pending.insert(id, tx);
                    tokio::spawn(async move {
                        match rx.await {
                            Ok(Ok((Outcome::Done, _))) => debug!(%key, "session re-handed"),
                            other => warn!(%key, ?other, "re-handing session failed"),
                        }
                    });
                }
                Err(e) => warn!(%key, error = %e, "cannot re-hand session"),
            }
        }
        if count > 0 {
            info!(
                sessions = count,
                "listening sockets handed to the new data plane"
            );
        }
    }

    async fn serve(&mut self, shutdown: &mut watch::Receiver<bool>) -> Ended {
        let Some(link) = self.link.as_mut() else {
            return Ended::Died("not running".into());
        };
        // An adopted s2ds is not our child: its death shows as the control
        // socket closing.
        let child = &mut self.child;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => return Ended::Shutdown,
                status = wait_child(child.as_mut()) => {
                    return Ended::Died(match status {
                        Ok(s) => format!("s2ds exited: {s}"),
                        Err(e) => format!("waiting for s2ds failed: {e}"),
                    });
                }
                msg = link.recv() => match msg {
                    Ok(Some((FromDataPlane::Reply { id, outcome }, fds))) => {
                        if let Some(tx) = link.pending.remove(&id) {
                            let _ = tx.send(Ok((outcome, fds)));
                        }
                    }
                    Ok(Some((other, _))) => warn!(?other, "unexpected message from s2ds"),
                    Ok(None) => return Ended::Died("s2ds closed its control socket".into()),
                    Err(e) => return Ended::Died(format!("control socket: {e}")),
                },
                call = self.calls.recv() => {
                    let Some(call) = call else { return Ended::Shutdown };
                    if call.reply.is_closed() {
                        continue;
                    }
                    match link.send(call.command, &call.fds).await {
                        Ok(id) => { link.pending.insert(id, call.reply); }
                        Err(e) => {
                            let _ = call.reply.send(Err(DataPlaneError::Down));
                            return Ended::Died(format!("control socket: {e}"));
                        }
                    }
                }
            }
        }
    }

    /// Stops `s2ds`: SIGTERM, then SIGKILL after 5 s.
    async fn stop(&mut self) {
        if let Some(link) = self.link.as_mut() {
            link.fail_pending();
        }
        self.link = None;
        if let Some(pidfd) = self.adopted.take() {
            stop_adopted(pidfd).await;
        }
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child
                .id()
                .and_then(|p| rustix::process::Pid::from_raw(p as i32))
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
                Ok(_) => info!("data plane stopped"),
                Err(_) => {
                    warn!("data plane did not stop within 5 s; killing it");
                    let _ = child.kill().await;
                }
            }
        }
        let _ = std::fs::remove_file(&self.config.socket_path);
    }
}

/// The pid and a pidfd of the process at the other end of `link`, as the
/// kernel names it: credentials are asked for only now, so every message
/// from here on was sent after the request and carries them
/// (`SCM_CREDENTIALS`). The pid may have been reused between an answer and
/// `pidfd_open`, so once the pidfd is open one more answer must come from
/// that same pid.
async fn adopted_pidfd(link: &mut Link) -> Result<(u32, OwnedFd), String> {
    handoff::pass_credentials(link.fd.as_fd())
        .map_err(|e| format!("cannot ask for its credentials: {e}"))?;
    let first = probe(link).await?;
    let me = rustix::process::geteuid().as_raw();
    if first.uid != me {
        return Err(format!(
            "it runs as uid {}, this s2cs as uid {me}",
            first.uid
        ));
    }
    let pid = rustix::process::Pid::from_raw(first.pid as i32)
        .ok_or_else(|| format!("the kernel named pid {}", first.pid))?;
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
        .map_err(|e| format!("cannot open a pidfd for pid {}: {e}", first.pid))?;
    let second = probe(link).await?;
    if second.pid != first.pid {
        return Err(format!(
            "its answers came from pid {} and then pid {}",
            first.pid, second.pid
        ));
    }
    Ok((first.pid, pidfd))
}

/// One round trip on `link`; who answered, as the kernel says.
async fn probe(link: &mut Link) -> Result<handoff::Sender, String> {
    let round_trip = async {
        link.send(Command::Stats, &[]).await?;
        link.recv().await
    };
    match tokio::time::timeout(Duration::from_secs(5), round_trip).await {
        Ok(Ok(Some((FromDataPlane::Reply { .. }, _)))) => {}
        other => return Err(format!("it did not answer: {other:?}")),
    }
    link.receiver
        .last_sender()
        .ok_or_else(|| "the kernel did not name the sender of its answer".to_owned())
}

/// Stops an adopted `s2ds` through its pidfd: SIGTERM, then SIGKILL after 5 s.
async fn stop_adopted(pidfd: OwnedFd) {
    use rustix::process::{Signal, pidfd_send_signal};
    if pidfd_send_signal(&pidfd, Signal::TERM).is_err() {
        return; // already gone
    }
    info!("asked the adopted data plane to stop");
    // A pidfd turns readable when its process exits.
    let waited = tokio::task::spawn_blocking(move || {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
        let five_s = Timespec {
            tv_sec: 5,
            tv_nsec: 0,
        };
        let exited = matches!(poll(&mut fds, Some(&five_s)), Ok(n) if n > 0);
        if !exited {
            let _ = pidfd_send_signal(&pidfd, Signal::KILL);
        }
        exited
    })
    .await;
    match waited {
        Ok(true) => info!("adopted data plane stopped"),
        _ => warn!("the adopted data plane did not stop within 5 s; killed it"),
    }
}

/// Waits for the child, or forever when there is none.
async fn wait_child(child: Option<&mut Child>) -> io::Result<std::process::ExitStatus> {
    match child {
        Some(c) => c.wait().await,
        None => std::future::pending().await,
    }
}
