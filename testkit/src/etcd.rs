//! Real etcd for tests: one member, or a cluster of several, started on
//! loopback with temporary data directories and stopped (or killed) by the
//! test. Tests that need it skip with a printed reason when Debian's
//! `etcd-server`/`etcd-client` are missing.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One etcd cluster (of one member by default).
#[derive(Debug)]
pub struct Etcd {
    members: Vec<Member>,
    dir: tempfile::TempDir,
    tls: Option<EtcdTls>,
}

/// The files of an etcd that serves TLS and asks clients for certificates.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// The CA that signed the members' and the clients' certificates.
    pub ca: PathBuf,
    /// A client certificate and key that etcd accepts.
    pub client: (PathBuf, PathBuf),
    server: (PathBuf, PathBuf),
}

#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
    https: bool,
}

impl Member {
    fn client_url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }
    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
}

/// Whether `etcd` and `etcdctl` are installed; prints why a test skips.
pub fn have_etcd(test: &str) -> bool {
    let found = |b: &str| {
        Command::new(b)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    };
    let ok = found("etcd") && found("etcdctl");
    if !ok {
        eprintln!("SKIP {test}: needs etcd and etcdctl (Debian: etcd-server, etcd-client)");
    }
    ok
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl Etcd {
    /// Starts a one-member etcd and waits until it answers.
    pub fn start() -> Etcd {
        Etcd::cluster(1)
    }

    /// Starts `n` members that form one cluster, and waits until every
    /// member answers.
    pub fn cluster(n: usize) -> Etcd {
        Etcd::new(n, None)
    }

    /// Starts a one-member etcd that serves its clients over TLS with
    /// certificates from `pki` and refuses clients without a certificate
    /// that `pki`'s CA signed (`--client-cert-auth`).
    pub fn start_tls(pki: &crate::Pki) -> Etcd {
        let tls = EtcdTls {
            ca: pki.ca.clone(),
            client: pki.gateway("etcd-client"),
            server: pki.gateway("etcd-server"),
        };
        Etcd::new(1, Some(tls))
    }

    /// The TLS files, when this etcd serves TLS.
    pub fn tls(&self) -> Option<&EtcdTls> {
        self.tls.as_ref()
    }

    fn new(n: usize, tls: Option<EtcdTls>) -> Etcd {
        let members = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
                https: tls.is_some(),
            })
            .collect();
        let mut e = Etcd {
            members,
            dir: tempfile::tempdir().unwrap(),
            tls,
        };
        for i in 0..n {
            e.spawn(i);
        }
        for i in 0..n {
            e.wait_healthy(i);
        }
        e
    }

    /// Every member's client URL, comma-separated, for `--etcd`.
    pub fn url(&self) -> String {
        let urls: Vec<String> = self.members.iter().map(Member::client_url).collect();
        urls.join(",")
    }

    fn spawn(&mut self, i: usize) {
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect();
        let m = &self.members[i];
        let log = std::fs::File::create(self.dir.path().join(format!("{}.log", m.name))).unwrap();
        let mut etcd = Command::new("etcd");
        if let Some(tls) = &self.tls {
            etcd.arg("--cert-file")
                .arg(&tls.server.0)
                .arg("--key-file")
                .arg(&tls.server.1)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let child = etcd
            .args(["--name", &m.name, "--data-dir"])
            .arg(self.dir.path().join(&m.name))
            .args(["--listen-client-urls", &m.client_url()])
            .args(["--advertise-client-urls", &m.client_url()])
            .args(["--listen-peer-urls", &m.peer_url()])
            .args(["--initial-advertise-peer-urls", &m.peer_url()])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-token", "scistream-test"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.members[i].child = Some(child);
    }

    fn wait_healthy(&self, i: usize) {
        let url = self.members[i].client_url();
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.ctl_at(&url, &["endpoint", "health"]).is_none() {
            assert!(
                Instant::now() < deadline,
                "etcd member {i} did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts every stopped member again (after [`Etcd::kill`] or
    /// [`Etcd::kill_member`]) on the same ports and data, and waits until
    /// they answer.
    pub fn restart(&mut self) {
        let stopped: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.members[i].child.is_none())
            .collect();
        for &i in &stopped {
            self.spawn(i);
        }
        for &i in &stopped {
            self.wait_healthy(i);
        }
    }

    /// SIGKILLs every member (they can be restarted).
    pub fn kill(&mut self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
    }

    /// SIGKILLs one member.
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn ctl_at(&self, endpoints: &str, args: &[&str]) -> Option<String> {
        let mut ctl = Command::new("etcdctl");
        if let Some(tls) = &self.tls {
            ctl.arg("--cacert")
                .arg(&tls.ca)
                .arg("--cert")
                .arg(&tls.client.0)
                .arg("--key")
                .arg(&tls.client.1);
        }
        let out = ctl
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                endpoints,
                "--dial-timeout",
                "1s",
                "--command-timeout",
                "2s",
            ])
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `etcdctl` against the cluster; its stdout, or `None` on failure.
    pub fn ctl(&self, args: &[&str]) -> Option<String> {
        self.ctl_at(&self.url(), args)
    }

    /// The keys under `prefix` with their values.
    pub fn get_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let out = self.ctl(&["get", "--prefix", prefix]).unwrap_or_default();
        let lines: Vec<&str> = out.lines().collect();
        lines
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| (c[0].to_owned(), c[1].to_owned()))
            .collect()
    }

    /// How many `rpc` calls of etcd's KV service (`Range`, `Put`, `Txn`, ...)
    /// the first member has answered so far, from its Prometheus counters.
    /// Plain-HTTP members only.
    pub fn kv_calls(&self, rpc: &str) -> u64 {
        use std::io::{Read, Write};
        let host = format!("127.0.0.1:{}", self.members[0].client_port);
        let mut s = std::net::TcpStream::connect(&host).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET /metrics HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let method = format!("grpc_method=\"{rpc}\"");
        text.lines()
            .filter(|l| l.starts_with("grpc_server_handled_total{"))
            .filter(|l| l.contains("etcdserverpb.KV") && l.contains(&method))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// The members' own logs.
    pub fn log(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                std::fs::read_to_string(self.dir.path().join(format!("{}.log", m.name)))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
