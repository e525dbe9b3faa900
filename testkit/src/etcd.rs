//! A real etcd member for tests: started on loopback with a temporary data
//! directory, stopped (or killed) by the test. Tests that need it skip with
//! a printed reason when Debian's `etcd-server`/`etcd-client` are missing.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One etcd member (a cluster of one).
#[derive(Debug)]
pub struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
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
    /// Starts a member and waits until it answers.
    pub fn start() -> Etcd {
        let mut e = Etcd {
            child: None,
            dir: tempfile::tempdir().unwrap(),
            client_port: free_port(),
            peer_port: free_port(),
        };
        e.restart();
        e
    }

    /// `http://127.0.0.1:PORT`, for `--etcd`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Starts the member again (after [`Etcd::kill`]) on the same ports and
    /// data directory, and waits until it answers.
    pub fn restart(&mut self) {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let data: PathBuf = self.dir.path().join("data");
        let log = std::fs::File::create(self.dir.path().join("etcd.log")).unwrap();
        let child = Command::new("etcd")
            .args(["--name", "m0", "--data-dir"])
            .arg(&data)
            .args(["--listen-client-urls", &self.url()])
            .args(["--advertise-client-urls", &self.url()])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("m0={peer}")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.ctl(&["endpoint", "health"]).is_none() {
            assert!(
                Instant::now() < deadline,
                "etcd did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILLs the member (it can be restarted).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs `etcdctl` against this member; its stdout, or `None` on failure.
    pub fn ctl(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &self.url(),
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

    /// etcd's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
