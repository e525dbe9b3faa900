//! A harness that drives `s2ds` over its control socket the way `s2cs`
//! does, and the engines to run each scenario on.
#![allow(clippy::unwrap_used, dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, Command};
use std::time::Duration;

use scistream_protocol::Role;
use scistream_protocol::handoff::{
    self, Command as Cmd, FromDataPlane, Outcome, Receiver, Request, SessionKey, SessionSpec,
};
use scistream_testkit::bin;

/// The engines to test on this host: epoll always, io_uring when the kernel allows it.
pub fn engines(test: &str) -> Vec<&'static str> {
    let mut v = vec!["epoll"];
    match scistream_dataplane::probe::io_uring() {
        Ok(_) => v.push("io_uring"),
        Err(e) => eprintln!("SKIP {test} on io_uring: {e}"),
    }
    v
}

pub struct DataPlane {
    pub child: Child,
    pub sock: OwnedFd,
    pub rx: Receiver,
    pub next: u64,
    pub path: std::path::PathBuf,
    pub _dir: tempfile::TempDir,
}

impl DataPlane {
    pub fn start(args: &[&str]) -> DataPlane {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s2ds.sock");
        let listener = handoff::listen(&path).unwrap();
        // Its log goes to a file the test can read (and prints on failure).
        let log = std::fs::File::create(dir.path().join("s2ds.log")).unwrap();
        let child = Command::new(bin("s2ds"))
            .arg("--control-stdin")
            .args(args)
            .stdin(std::process::Stdio::from(listener))
            .stderr(log)
            .spawn()
            .unwrap();
        let sock = handoff::connect(&path).unwrap();
        let mut rx = Receiver::default();
        let (hello, _): (FromDataPlane, _) = rx.recv(&sock).unwrap().unwrap();
        assert!(
            matches!(hello, FromDataPlane::Hello { version: handoff::HANDOFF_VERSION, ref sessions, .. } if sessions.is_empty()),
            "{hello:?}"
        );
        DataPlane {
            child,
            sock,
            rx,
            next: 1,
            path,
            _dir: dir,
        }
    }

    pub fn call(&mut self, command: Cmd, fds: &[&OwnedFd]) -> Outcome {
        let id = self.next;
        self.next += 1;
        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        handoff::send(&self.sock, &Request { id, command }, &borrowed).unwrap();
        let (reply, _): (FromDataPlane, _) = self.rx.recv(&self.sock).unwrap().unwrap();
        match reply {
            FromDataPlane::Reply { id: got, outcome } => {
                assert_eq!(got, id);
                outcome
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Everything s2ds logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("s2ds.log")).unwrap_or_default()
    }

    /// Waits until the log contains `needle` (up to 10 s).
    pub fn wait_log(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "s2ds never logged {needle:?}; its log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .count()
    }
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn key(uid: &str) -> SessionKey {
    SessionKey {
        uid: uid.into(),
        role: Role::Prod,
    }
}

pub fn listener() -> (OwnedFd, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    (OwnedFd::from(l), a)
}

pub fn echo_once(addr: SocketAddr, msg: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(msg).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    back
}

pub fn stats(dp: &mut DataPlane) -> Vec<scistream_protocol::handoff::SessionStats> {
    match dp.call(Cmd::Stats, &[]) {
        Outcome::Stats { sessions } => sessions,
        other => panic!("{other:?}"),
    }
}

/// A session over `n` fresh listeners forwarding to `target`; returns the listeners' addresses.
pub fn add_session(
    dp: &mut DataPlane,
    uid: &str,
    n: usize,
    target: SocketAddr,
    rate_kbps: u64,
) -> (Vec<SocketAddr>, Vec<OwnedFd>) {
    let (fds, addrs): (Vec<OwnedFd>, Vec<SocketAddr>) = (0..n).map(|_| listener()).unzip();
    let spec = SessionSpec {
        first_index: 0,
        protocol: Default::default(),
        key: key(uid),
        listeners: addrs.clone(),
        targets: targets(&vec![target; n]),
        rate_kbps,
        channel: Default::default(),
    };
    let refs: Vec<&OwnedFd> = fds.iter().collect();
    assert_eq!(dp.call(Cmd::AddSession(spec), &refs), Outcome::Done);
    (addrs, fds)
}

/// A session with an explicit data channel over `n` fresh listeners, each forwarding to `targets[i]`.
pub fn add_channel_session(
    dp: &mut DataPlane,
    uid: &str,
    role: Role,
    targets: Vec<SocketAddr>,
    channel: scistream_protocol::handoff::DataChannel,
) -> (Vec<SocketAddr>, Vec<OwnedFd>) {
    let (fds, addrs): (Vec<OwnedFd>, Vec<SocketAddr>) =
        (0..targets.len()).map(|_| listener()).unzip();
    let spec = SessionSpec {
        first_index: 0,
        protocol: Default::default(),
        key: SessionKey {
            uid: uid.into(),
            role,
        },
        listeners: addrs.clone(),
        targets: self::targets(&targets),
        rate_kbps: 0,
        channel,
    };
    let refs: Vec<&OwnedFd> = fds.iter().collect();
    let outcome = dp.call(Cmd::AddSession(spec), &refs);
    assert_eq!(outcome, Outcome::Done, "{}", dp.log());
    (addrs, fds)
}

/// Targets given as literal addresses.
pub fn targets(addrs: &[SocketAddr]) -> Vec<scistream_protocol::Target> {
    addrs
        .iter()
        .map(|&a| scistream_protocol::Target::from_addr(a))
        .collect()
}
