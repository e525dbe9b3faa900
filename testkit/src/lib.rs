//! Test support: the built binaries, gateways on loopback, certificates,
//! and receivers that prove what they got. Everything binds 127.0.0.1.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, missing_docs)]

pub mod etcd;
pub mod grpc;
pub mod oauth;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};

use std::path::{Path, PathBuf};

use std::process::{Command, Output};

use std::sync::atomic::{AtomicU16, Ordering};

use std::sync::mpsc;

use std::thread::JoinHandle;

use std::time::Duration;

pub use scistream_local::gateway::{GatewayOptions, LocalGateway};

use scistream_local::payload::{Digest, Generator};

use scistream_local::pki::Ca;

/// A built binary of this workspace (`s2cs`, `s2ds`, `s2uc`, ...).
/// `cargo test --workspace` builds them all before running any test.
pub fn bin(name: &str) -> PathBuf {
    scistream_local::gateway::sibling_binary(name).unwrap_or_else(|| {
        panic!("{name} is not built next to the test executable; run `cargo build --workspace` (cargo test --workspace builds it)")
    })
}

/// Ports of each test process's window (21 windows fit below the
/// ephemeral range, 20000-32599).
pub const PORT_WINDOW: u16 = 600;

/// Disjoint port ranges for the gateways of this test process, below the
/// ephemeral range. The allocator skips ports in use, so an overlap with
/// another process only costs ports, never correctness.
///
/// Each test process gets a window of [`PORT_WINDOW`] ports (by its pid),
/// and its ranges follow each other in it without overlapping until the
/// window is used up: a test file whose tests start many gateways at once
/// (the cluster tests use ~400 ports) must not hand two of them the same
/// ports. (With 200-port windows that wrapped, two concurrent tests shared
/// ports and a request failed with "0 of the 2 ports are free".)
pub fn port_range(len: u16) -> (u16, u16) {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let len = len.clamp(1, PORT_WINDOW);
    let base = 20000 + (std::process::id() % 21) as u16 * PORT_WINDOW;
    let mut offset = NEXT.fetch_add(len, Ordering::Relaxed) % PORT_WINDOW;
    if offset + len > PORT_WINDOW {
        offset = 0;
    }
    let start = base + offset;
    (start, start + len - 1)
}

/// A working directory with a CA and one certificate per gateway.
#[derive(Debug)]
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    ca_inner: Ca,
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca_inner = Ca::new("test CA").unwrap();
        let ca = dir.path().join("ca.crt");
        scistream_local::pki::write_file(&ca, &ca_inner.cert_pem(), false).unwrap();
        Pki { dir, ca, ca_inner }
    }

    /// Issues `NAME.crt`/`NAME.key` valid for localhost and 127.0.0.1.
    pub fn gateway(&self, name: &str) -> (PathBuf, PathBuf) {
        let w = self
            .ca_inner
            .issue(&["localhost", "127.0.0.1"])
            .unwrap()
            .write(self.dir.path(), name)
            .unwrap();
        (w.cert, w.key)
    }

    /// Issues `NAME.crt`/`NAME.key` valid for the given names and addresses.
    pub fn gateway_for(&self, name: &str, sans: &[&str]) -> (PathBuf, PathBuf) {
        let w = self
            .ca_inner
            .issue(sans)
            .unwrap()
            .write(self.dir.path(), name)
            .unwrap();
        (w.cert, w.key)
    }

    /// Issues `NAME.crt`/`NAME.key` for localhost and 127.0.0.1 that
    /// expired at the end of 2020.
    pub fn gateway_expired(&self, name: &str) -> (PathBuf, PathBuf) {
        let w = self
            .ca_inner
            .issue_expired(&["localhost", "127.0.0.1"])
            .unwrap()
            .write(self.dir.path(), name)
            .unwrap();
        (w.cert, w.key)
    }

    /// A CA that is not the one the gateways use.
    pub fn stranger_ca(&self) -> PathBuf {
        let other = Ca::new("someone else").unwrap();
        let p = self.dir.path().join("stranger-ca.crt");
        scistream_local::pki::write_file(&p, &other.cert_pem(), false).unwrap();
        p
    }
}

/// A gateway on loopback with its own state directory and log.
#[derive(Debug)]
pub struct Gw {
    pub gw: LocalGateway,
    pub dir: tempfile::TempDir,
    pub range: (u16, u16),
}

impl Gw {
    /// Kills the node as a crash would: SIGKILL to its `s2cs` and its
    /// `s2ds`, then waits until both are dead.
    pub fn kill9(&self) {
        let pid = self.gw.pid().unwrap();
        let s2ds = s2ds_pid(pid);
        for p in [pid, s2ds] {
            std::process::Command::new("kill")
                .args(["-9", &p.to_string()])
                .status()
                .unwrap();
            wait_dead(p as i32);
        }
    }

    /// Starts `s2cs` (with its `s2ds`); `tls` is `None` for `--insecure`.
    /// With TLS, the `ca.crt` next to the certificate (as [`Pki`] writes it)
    /// is the peer CA of the data channel.
    pub fn start(tls: Option<(PathBuf, PathBuf)>, range_len: u16, extra: &[&str]) -> Gw {
        let dir = tempfile::tempdir().unwrap();
        let range = port_range(range_len);
        let mut extra_args: Vec<String> = Vec::new();
        if let Some((cert, _)) = &tls {
            let ca = cert.with_file_name("ca.crt");
            if ca.is_file() && !extra.contains(&"--peer-ca") {
                extra_args.push("--peer-ca".into());
                extra_args.push(ca.display().to_string());
            }
        }
        // Tests drop gateways with connections still open: do not wait 30 s.
        if !extra.iter().any(|a| a.starts_with("--drain-timeout")) {
            extra_args.push("--drain-timeout=2s".into());
        }
        extra_args.extend(extra.iter().map(|s| s.to_string()));
        let opts = GatewayOptions {
            s2cs_bin: bin("s2cs"),
            listener_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port_range: range,
            tls,
            state_dir: dir.path().join("state"),
            log: Some(dir.path().join("s2cs.log")),
            extra_args,
        };
        let gw = LocalGateway::start(&opts).unwrap_or_else(|e| panic!("{e}"));
        Gw { gw, dir, range }
    }

    /// `s2uc status UID --json` at this gateway (trusting `ca`, or
    /// `--insecure` without one): the status of its first session of `uid`.
    pub fn status(&self, ca: Option<&Path>, uid: &str) -> serde_json::Value {
        let control = self.control();
        let mut args = vec!["status", "--s2cs", control.as_str()];
        let ca = ca.map(|p| p.display().to_string());
        match &ca {
            Some(ca) => args.extend(["--server_cert", ca.as_str()]),
            None => args.push("--insecure"),
        }
        args.push(uid);
        s2uc_json(&args)["sessions"][0].clone()
    }

    pub fn control(&self) -> String {
        self.gw.control()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("s2cs.log")).unwrap_or_default()
    }

    /// The metrics address it logged (started with `--metrics-addr`).
    pub fn metrics_addr(&self) -> SocketAddr {
        let log = self.log();
        let at = log
            .find("metrics at http://")
            .unwrap_or_else(|| panic!("no metrics address in the log:\n{log}"));
        let rest = &log[at + "metrics at http://".len()..];
        rest[..rest.find("/metrics").unwrap()].parse().unwrap()
    }

    /// The tag this gateway's logs and metrics give the session `uid`.
    pub fn tag(&self, uid: &str) -> String {
        tag_in(&self.dir.path().join("state"), uid)
    }
}

/// The tag that the gateway with state directory `state_dir` gives `uid`
/// (HMAC-SHA-256 with its `tag.key`, as `scistream_protocol::tag` computes it).
pub fn tag_in(state_dir: &Path, uid: &str) -> String {
    let secret = std::fs::read(state_dir.join("tag.key")).unwrap();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
    ring::hmac::sign(&key, uid.as_bytes()).as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Runs `s2uc` with `args`; returns its output.
pub fn s2uc(args: &[&str]) -> Output {
    Command::new(bin("s2uc")).args(args).output().unwrap()
}

/// One `GET /metrics` from a gateway's metrics endpoint: the whole HTTP
/// response (status line, headers, body).
pub fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    response
}

/// Runs `s2uc ... --json`, asserts success and parses stdout.
pub fn s2uc_json(args: &[&str]) -> serde_json::Value {
    let mut all: Vec<&str> = args.to_vec();
    all.push("--json");
    let out = s2uc(&all);
    assert!(
        out.status.success(),
        "s2uc {args:?} failed: {}\nstdout: {}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Both ends of a tunnel made with `s2uc`.
#[derive(Debug, Clone)]
pub struct TunnelEnds {
    pub uid: String,
    /// The inbound gateway's listeners.
    pub inbound: Vec<String>,
    /// The outbound gateway's listeners (where the instrument connects).
    pub outbound: Vec<String>,
}

/// How `s2uc` trusts a gateway in tests: the CA file, or `--insecure`.
fn trust_args(ca: Option<&Path>) -> Vec<String> {
    match ca {
        Some(ca) => vec!["--server_cert".into(), ca.display().to_string()],
        None => vec!["--insecure".into()],
    }
}

/// Use case 1 with the `s2uc` binary: an inbound request on the gateway
/// at `control` to receivers at `remote_ip`:`receiver_port`; its JSON answer.
pub fn s2uc_inbound(
    control: &str,
    ca: Option<&Path>,
    remote_ip: &str,
    receiver_port: u16,
    num_conn: usize,
) -> serde_json::Value {
    let trust = trust_args(ca);
    let (port, n) = (receiver_port.to_string(), num_conn.to_string());
    let mut args = vec!["inbound_request", "--s2cs", control];
    args.extend(trust.iter().map(String::as_str));
    args.extend([
        "--remote_ip",
        remote_ip,
        "--receiver_ports",
        &port,
        "--num_conn",
        &n,
    ]);
    s2uc_json(&args)
}

/// Use cases 1 and 2 with the `s2uc` binary: an inbound request on `hpc`
/// to receivers at `remote_ip`:`receiver_port`, then the outbound request
/// on `inst`. `ca` is the trust root, or `None` for `--insecure` gateways.
pub fn s2uc_tunnel(
    hpc: &Gw,
    inst: &Gw,
    ca: Option<&Path>,
    remote_ip: &str,
    receiver_port: u16,
    num_conn: usize,
) -> TunnelEnds {
    s2uc_tunnel_at(
        &hpc.control(),
        &inst.control(),
        ca,
        remote_ip,
        receiver_port,
        num_conn,
    )
}

/// [`s2uc_tunnel`] between the gateways at these control addresses.
pub fn s2uc_tunnel_at(
    hpc: &str,
    inst: &str,
    ca: Option<&Path>,
    remote_ip: &str,
    receiver_port: u16,
    num_conn: usize,
) -> TunnelEnds {
    let inbound = s2uc_inbound(hpc, ca, remote_ip, receiver_port, num_conn);
    let uid = inbound["uid"].as_str().unwrap().to_owned();
    let inbound = strings(&inbound, "listeners");
    let (joined, n) = (inbound.join(","), num_conn.to_string());
    let trust = trust_args(ca);
    let mut args = vec!["outbound_request", "--s2cs", inst];
    args.extend(trust.iter().map(String::as_str));
    args.extend(["--num_conn", &n, &uid, &joined]);
    let outbound = strings(&s2uc_json(&args), "listeners");
    TunnelEnds {
        uid,
        inbound,
        outbound,
    }
}

/// The strings of a JSON list field.
pub fn strings(v: &serde_json::Value, key: &str) -> Vec<String> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("no list {key} in {v}"))
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect()
}

/// A receiver that accepts connections and reports, per connection, the
/// (bytes, xxh3) of everything it read until EOF.
#[derive(Debug)]
pub struct DigestReceiver {
    pub addr: SocketAddr,
    results: mpsc::Receiver<(u64, u64)>,
    _thread: JoinHandle<()>,
}

impl DigestReceiver {
    pub fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let mut d = Digest::default();
                    let mut buf = vec![0u8; 1 << 20];
                    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        d.update(&buf[..n]);
                    }
                    let _ = tx.send(d.value());
                });
            }
        });
        DigestReceiver {
            addr,
            results: rx,
            _thread: thread,
        }
    }

    /// The next finished connection's (bytes, hash).
    pub fn next(&self, timeout: Duration) -> (u64, u64) {
        self.results
            .recv_timeout(timeout)
            .expect("receiver got no complete stream in time")
    }
}

/// An echo server: every connection gets back what it sends, half-close included.
#[derive(Debug)]
pub struct EchoServer {
    pub addr: SocketAddr,
    _thread: JoinHandle<()>,
}

impl EchoServer {
    pub fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let thread = std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 1 << 16];
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = s.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        EchoServer {
            addr,
            _thread: thread,
        }
    }
}

/// A stream to `addr` sent in parts (a test can do things between them),
/// with the (bytes, xxh3) of all it sent, as [`DigestReceiver`] reports.
#[derive(Debug)]
pub struct StreamSender {
    s: TcpStream,
    g: Generator,
    d: Digest,
}

impl StreamSender {
    pub fn open(addr: &str, seed: u64) -> StreamSender {
        StreamSender {
            s: TcpStream::connect(addr).unwrap(),
            g: Generator::new(seed),
            d: Digest::default(),
        }
    }

    /// Sends `bytes` more.
    pub fn send(&mut self, bytes: u64) {
        let mut buf = vec![0u8; 1 << 20];
        let mut left = bytes;
        while left > 0 {
            let n = buf.len().min(left as usize);
            self.g.fill(&mut buf[..n]);
            self.s.write_all(&buf[..n]).unwrap();
            self.d.update(&buf[..n]);
            left -= n as u64;
        }
    }

    /// Ends the stream (FIN), waits for the far end to close, and returns
    /// what was sent.
    pub fn finish(mut self) -> (u64, u64) {
        self.s.shutdown(std::net::Shutdown::Write).unwrap();
        self.s
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let _ = self.s.read(&mut [0u8; 16]);
        self.d.value()
    }
}

/// Sends `bytes` of seeded data to `addr` and closes; (bytes, xxh3) sent.
pub fn send_stream(addr: &str, seed: u64, bytes: u64) -> (u64, u64) {
    let mut s = StreamSender::open(addr, seed);
    s.send(bytes);
    s.finish()
}

/// True when nothing listens on `addr` (connection refused).
pub fn refused(addr: &str) -> bool {
    matches!(TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2)), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
}

/// Whether a test that needs root can run; prints why not.
pub fn have_root(test: &str) -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        eprintln!("SKIP {test}: needs root");
    }
    root
}

/// Reads a file into a string, empty when missing.
pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// The pid of the `s2ds` that the `s2cs` with pid `s2cs` started.
pub fn s2ds_pid(s2cs: u32) -> u32 {
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ..."; comm may hold spaces and parentheses.
        let Some((comm_end, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let ppid = rest.split(' ').nth(1).and_then(|p| p.parse::<u32>().ok());
        if comm_end.ends_with("(s2ds") && ppid == Some(s2cs) {
            return pid;
        }
    }
    panic!("no s2ds started by s2cs {s2cs}");
}

/// Descriptors open in process `pid`.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// One round trip of "ping" through `conn` to an [`EchoServer`]: `true` when
/// it came back within `timeout`, `false` when the connection was closed
/// (or nothing came).
pub fn echoes(conn: &mut TcpStream, timeout: Duration) -> bool {
    conn.set_read_timeout(Some(timeout)).unwrap();
    if conn.write_all(b"ping").is_err() {
        return false;
    }
    let mut buf = [0u8; 4];
    matches!(conn.read_exact(&mut buf), Ok(()) if &buf == b"ping")
}

/// Waits until `pid` is dead (gone or a zombie): a killed process may
/// still complete the system call it was in.
pub fn wait_dead(pid: i32) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, r)| r.trim_start().chars().next())
            })
            .flatten();
        if matches!(state, None | Some('Z') | Some('X')) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "process {pid} survived SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
