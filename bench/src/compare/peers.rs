//! Peer proxies in the same two-hop shape as a SciStream tunnel: each chain
//! is two processes, hop 1 (instrument gateway) forwarding to hop 2 (HPC
//! gateway) forwarding to the sink. Programs come from the host (Debian
//! packages `haproxy`, `stunnel4`, `socat`, `nginx-light` with
//! `libnginx-mod-stream`); a missing one is skipped with the reason.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where peer programs are looked for: `S2BENCH_PEER_PATH` (colon-separated)
/// if set, else `PATH` plus the sbin directories.
pub fn find_program(names: &[&str]) -> Option<PathBuf> {
    let dirs = match std::env::var_os("S2BENCH_PEER_PATH") {
        Some(p) => p,
        None => {
            let mut p = std::env::var_os("PATH").unwrap_or_default();
            p.push(":/usr/sbin:/sbin:/usr/local/sbin");
            p
        }
    };
    std::env::split_paths(&dirs)
        .flat_map(|d| names.iter().map(move |n| d.join(n)))
        .find(|p| p.is_file())
}

/// Threads (or worker processes) each hop of a peer chain gets: the host's
/// cores shared by the chain's two hops, at least one. HAProxy's and
/// nginx's documentation both size threads/workers to the cores they may
/// use; two processes with a thread per core each on a 2-core host only
/// contend (the tunnel's lead over HAProxy's TLS chain fell from 1.65-1.95x
/// to 1.08-1.22x when each HAProxy got one thread, 2026-12-04).
pub fn threads_per_hop() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// Buffer size the peers are given: their documentation's advice for bulk
/// throughput (HAProxy `tune.bufsize`, nginx `proxy_buffer_size`, socat `-b`).
pub const PEER_BUFFER: usize = 64 << 10;

/// The settings each peer runs with, for the report (beside the figures).
pub fn settings() -> serde_json::Value {
    let t = threads_per_hop();
    serde_json::json!({
        "haproxy": format!("nbthread {t}, tune.bufsize {PEER_BUFFER}, option splice-auto"),
        "nginx": format!("worker_processes {t}, proxy_buffer_size {}k", PEER_BUFFER >> 10),
        "socat": format!("-b{PEER_BUFFER}, fork"),
        "stunnel": "defaults (a thread per connection)",
    })
}

fn haproxy_global() -> String {
    format!(
        "global\n  maxconn 4000\n  nbthread {}\n  tune.bufsize {PEER_BUFFER}\n",
        threads_per_hop()
    )
}

/// A free loopback port (bound and released; good enough for a benchmark).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until something accepts on `port`.
pub fn wait_listening(port: u16, child: &mut Child, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "{what} exited ({status}) before listening on {port}"
            ));
        }
        if Instant::now() > deadline {
            return Err(format!("{what} did not listen on {port} within 10 s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The processes of a running chain; killed when dropped.
#[derive(Debug, Default)]
pub struct Chain {
    /// Processes (hop 1, hop 2).
    pub children: Vec<Child>,
    /// Entry port (hop 1's listener).
    pub entry: u16,
}

impl Chain {
    /// Process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|c| c.id()).collect()
    }
}

impl Drop for Chain {
    /// Each hop runs in its own process group (nginx's workers and socat's
    /// forks are its children): the whole group is killed, so nothing is
    /// left behind re-parented to init.
    fn drop(&mut self) {
        for c in &mut self.children {
            if let Some(group) = rustix::process::Pid::from_raw(c.id() as i32) {
                let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(cmd: &mut Command, log: &Path, what: &str) -> Result<Child, String> {
    let f = std::fs::File::create(log)
        .map_err(|e| format!("{what}: cannot create {}: {e}", log.display()))?;
    let f2 = f.try_clone().map_err(|e| e.to_string())?;
    use std::os::unix::process::CommandExt;
    cmd.stdin(Stdio::null())
        .stdout(f)
        .stderr(f2)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start {what}: {e}"))
}

/// Starts two hops of `make_hop(listen, forward_to, hop_number)`.
fn two_hops(
    dir: &Path,
    sink: u16,
    what: &str,
    mut make_hop: impl FnMut(u16, u16, usize) -> Result<Command, String>,
) -> Result<Chain, String> {
    let (p1, p2) = (
        free_port().map_err(|e| e.to_string())?,
        free_port().map_err(|e| e.to_string())?,
    );
    let mut chain = Chain {
        children: Vec::new(),
        entry: p1,
    };
    for (hop, listen, to) in [(2usize, p2, sink), (1, p1, p2)] {
        let mut cmd = make_hop(listen, to, hop)?;
        let mut child = spawn(&mut cmd, &dir.join(format!("{what}-hop{hop}.log")), what)?;
        let ready = wait_listening(listen, &mut child, what);
        chain.children.push(child);
        ready?;
    }
    Ok(chain)
}

/// HAProxy in TCP mode, `option splice-auto` (its fastest forwarding).
pub fn haproxy(dir: &Path, sink: u16) -> Result<Chain, String> {
    let bin = find_program(&["haproxy"])
        .ok_or("haproxy not installed (Debian: apt-get install haproxy)")?;
    two_hops(dir, sink, "haproxy", |listen, to, hop| {
        let cfg = dir.join(format!("haproxy{hop}.cfg"));
        let text = format!(
            "{g}defaults\n  mode tcp\n  option splice-auto\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\nlisten hop{hop}\n  bind 127.0.0.1:{listen}\n  server next 127.0.0.1:{to}\n",
            g = haproxy_global()
        );
        std::fs::write(&cfg, text).map_err(|e| e.to_string())?;
        let mut c = Command::new(&bin);
        c.arg("-db").arg("-f").arg(&cfg);
        Ok(c)
    })
}

/// socat, one process per connection (`fork`).
pub fn socat(dir: &Path, sink: u16) -> Result<Chain, String> {
    let bin =
        find_program(&["socat"]).ok_or("socat not installed (Debian: apt-get install socat)")?;
    two_hops(dir, sink, "socat", |listen, to, _| {
        let mut c = Command::new(&bin);
        c.arg(format!("-b{PEER_BUFFER}"))
            .arg(format!("TCP-LISTEN:{listen},bind=127.0.0.1,fork,reuseaddr"))
            .arg(format!("TCP:127.0.0.1:{to}"));
        Ok(c)
    })
}

/// nginx `stream` proxies, one worker each.
pub fn nginx(dir: &Path, sink: u16) -> Result<Chain, String> {
    let bin = find_program(&["nginx"])
        .ok_or("nginx not installed (Debian: apt-get install nginx-light libnginx-mod-stream)")?;
    let module = [
        "/usr/lib/nginx/modules/ngx_stream_module.so",
        "/usr/lib64/nginx/modules/ngx_stream_module.so",
    ]
    .into_iter()
    .find(|p| Path::new(p).is_file());
    two_hops(dir, sink, "nginx", |listen, to, hop| {
        let prefix = dir.join(format!("nginx{hop}"));
        std::fs::create_dir_all(prefix.join("logs")).map_err(|e| e.to_string())?;
        let load = module
            .map(|m| format!("load_module {m};\n"))
            .unwrap_or_default();
        let text = format!(
            "{load}daemon off;\nworker_processes {t};\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log;\nevents {{ worker_connections 20000; }}\nstream {{\n  server {{\n    listen 127.0.0.1:{listen};\n    proxy_pass 127.0.0.1:{to};\n    proxy_timeout 1h;\n    proxy_buffer_size {b}k;\n  }}\n}}\n",
            p = prefix.display(),
            t = threads_per_hop(),
            b = PEER_BUFFER >> 10,
        );
        let cfg = prefix.join("nginx.conf");
        std::fs::write(&cfg, text).map_err(|e| e.to_string())?;
        let mut c = Command::new(&bin);
        c.arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&cfg)
            .arg("-e")
            .arg(prefix.join("logs/error.log"));
        Ok(c)
    })
}

/// HAProxy with TLS 1.3 between its two hops: hop 1 a TLS client that
/// verifies hop 2's certificate against the CA (as our outbound gateway
/// does), hop 2 a TLS server; OpenSSL's default suites; splice where the
/// legs are plaintext. Its defaults otherwise, as the plaintext chain.
pub fn haproxy_tls(
    dir: &Path,
    sink: u16,
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<Chain, String> {
    let bin = find_program(&["haproxy"])
        .ok_or("haproxy not installed (Debian: apt-get install haproxy)")?;
    // HAProxy wants the certificate and its key in one PEM file.
    let combined = dir.join("haproxy-gateway.pem");
    let pem = [cert, key]
        .iter()
        .map(std::fs::read_to_string)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("reading the gateway certificate: {e}"))?
        .join("\n");
    std::fs::write(&combined, pem).map_err(|e| e.to_string())?;
    two_hops(dir, sink, "haproxy-tls", |listen, to, hop| {
        let cfg = dir.join(format!("haproxy-tls{hop}.cfg"));
        let (bind, server) = if hop == 1 {
            (
                String::new(),
                format!(
                    " ssl verify required ca-file {} verifyhost localhost sni str(localhost) ssl-min-ver TLSv1.3",
                    ca.display()
                ),
            )
        } else {
            (
                format!(" ssl crt {} ssl-min-ver TLSv1.3", combined.display()),
                String::new(),
            )
        };
        let text = format!(
            "{g}defaults\n  mode tcp\n  option splice-auto\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\nlisten hop{hop}\n  bind 127.0.0.1:{listen}{bind}\n  server next 127.0.0.1:{to}{server}\n",
            g = haproxy_global()
        );
        std::fs::write(&cfg, text).map_err(|e| e.to_string())?;
        let mut c = Command::new(&bin);
        c.arg("-db").arg("-f").arg(&cfg);
        Ok(c)
    })
}

/// nginx `stream` proxies with TLS 1.3 between the hops (`proxy_ssl` on hop
/// 1, verifying hop 2 against the CA; an `ssl` listener on hop 2), one
/// worker each, as the plaintext chain.
pub fn nginx_tls(
    dir: &Path,
    sink: u16,
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<Chain, String> {
    let bin = find_program(&["nginx"])
        .ok_or("nginx not installed (Debian: apt-get install nginx-light libnginx-mod-stream)")?;
    let module = [
        "/usr/lib/nginx/modules/ngx_stream_module.so",
        "/usr/lib64/nginx/modules/ngx_stream_module.so",
    ]
    .into_iter()
    .find(|p| Path::new(p).is_file());
    two_hops(dir, sink, "nginx-tls", |listen, to, hop| {
        let prefix = dir.join(format!("nginx-tls{hop}"));
        std::fs::create_dir_all(prefix.join("logs")).map_err(|e| e.to_string())?;
        let load = module
            .map(|m| format!("load_module {m};\n"))
            .unwrap_or_default();
        let server = if hop == 1 {
            format!(
                "    listen 127.0.0.1:{listen};\n    proxy_pass 127.0.0.1:{to};\n    proxy_ssl on;\n    proxy_ssl_protocols TLSv1.3;\n    proxy_ssl_verify on;\n    proxy_ssl_trusted_certificate {};\n    proxy_ssl_name localhost;\n    proxy_ssl_server_name on;\n",
                ca.display()
            )
        } else {
            format!(
                "    listen 127.0.0.1:{listen} ssl;\n    proxy_pass 127.0.0.1:{to};\n    ssl_protocols TLSv1.3;\n    ssl_certificate {};\n    ssl_certificate_key {};\n",
                cert.display(),
                key.display()
            )
        };
        let text = format!(
            "{load}daemon off;\nworker_processes {t};\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log;\nevents {{ worker_connections 20000; }}\nstream {{\n  server {{\n{server}    proxy_timeout 1h;\n    proxy_buffer_size {b}k;\n  }}\n}}\n",
            p = prefix.display(),
            t = threads_per_hop(),
            b = PEER_BUFFER >> 10,
        );
        let cfg = prefix.join("nginx.conf");
        std::fs::write(&cfg, text).map_err(|e| e.to_string())?;
        let mut c = Command::new(&bin);
        c.arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&cfg)
            .arg("-e")
            .arg(prefix.join("logs/error.log"));
        Ok(c)
    })
}

/// stunnel: hop 1 a TLS 1.3 client verifying hop 2's certificate, hop 2 a TLS server.
pub fn stunnel(dir: &Path, sink: u16, ca: &Path, cert: &Path, key: &Path) -> Result<Chain, String> {
    let bin = find_program(&["stunnel4", "stunnel"])
        .ok_or("stunnel not installed (Debian: apt-get install stunnel4)")?;
    two_hops(dir, sink, "stunnel", |listen, to, hop| {
        let cfg = dir.join(format!("stunnel{hop}.conf"));
        let text = if hop == 1 {
            format!(
                "foreground = yes\npid =\n[hop1]\nclient = yes\naccept = 127.0.0.1:{listen}\nconnect = 127.0.0.1:{to}\nsslVersion = TLSv1.3\nCAfile = {}\nverifyChain = yes\ncheckHost = localhost\n",
                ca.display()
            )
        } else {
            format!(
                "foreground = yes\npid =\n[hop2]\naccept = 127.0.0.1:{listen}\nconnect = 127.0.0.1:{to}\nsslVersion = TLSv1.3\ncert = {}\nkey = {}\n",
                cert.display(),
                key.display()
            )
        };
        std::fs::write(&cfg, text).map_err(|e| e.to_string())?;
        let mut c = Command::new(&bin);
        c.arg(&cfg);
        Ok(c)
    })
}

/// socat's UDP forwarding in the same two-hop shape: hop 1 takes the
/// sender's datagrams and forwards them to hop 2, which forwards them to
/// the sink on `sink` (and replies back the same way). Each hop forks a
/// child per sender (as a tunnel opens a flow per sender), so every
/// measurement, with its own source port, gets through. Plaintext: socat
/// cannot carry UDP inside TLS over TCP.
pub fn socat_udp(dir: &Path, sink: u16) -> Result<Chain, String> {
    let socat = find_program(&["socat"]).ok_or("socat not installed (Debian: socat)")?;
    let hop2 = free_port().map_err(|e| e.to_string())?;
    let entry = free_port().map_err(|e| e.to_string())?;
    let hop = |listen: u16, to: u16, name: &str| {
        spawn(
            Command::new(&socat).args([
                "-b65536".to_string(),
                format!("UDP4-LISTEN:{listen},bind=127.0.0.1,reuseaddr,fork"),
                format!("UDP4:127.0.0.1:{to}"),
            ]),
            &dir.join(format!("socat-udp-{name}.log")),
            "socat (UDP)",
        )
    };
    let second = hop(hop2, sink, "hop2")?;
    let first = hop(entry, hop2, "hop1")?;
    // UDP has no accept to wait for: give both a moment to bind.
    std::thread::sleep(Duration::from_millis(300));
    Ok(Chain {
        children: vec![first, second],
        entry,
    })
}
