//! Running an `s2cs` on this host as a child process: for `s2uc demo`, for
//! benchmarks and for tests. The child gets its own process group, so the
//! `s2ds` it starts is stopped with it even if `s2cs` was killed.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use rustix::process::{Pid, Signal};

/// How to start a local gateway.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// The `s2cs` executable.
    pub s2cs_bin: PathBuf,
    /// `--listener-ip`.
    pub listener_ip: IpAddr,
    /// `--port-range` as (first, last).
    pub port_range: (u16, u16),
    /// Certificate and key; `None` starts it `--insecure`.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// `--state-dir`.
    pub state_dir: PathBuf,
    /// File for its log (stderr); `None` inherits ours.
    pub log: Option<PathBuf>,
    /// More arguments.
    pub extra_args: Vec<String>,
}

/// A running `s2cs`.
#[derive(Debug)]
pub struct LocalGateway {
    /// Its control address (`127.0.0.1:PORT`).
    pub addr: SocketAddr,
    /// Its log file, if any.
    pub log: Option<PathBuf>,
    child: Option<Child>,
}

/// The last lines of a log file, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The directory of the running executable: where `s2cs`, `s2ds` and `s2uc` are installed together.
pub fn sibling_binary(name: &str) -> Option<PathBuf> {
    let dir = std::env::current_exe().ok()?.parent()?.to_path_buf();
    // Test executables live in target/<profile>/deps; the binaries one level up.
    [
        dir.join(name),
        dir.parent().map(|p| p.join(name)).unwrap_or_default(),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

impl LocalGateway {
    /// Starts `s2cs` on an ephemeral control port and waits until it serves.
    pub fn start(opts: &GatewayOptions) -> Result<LocalGateway, String> {
        let mut cmd = Command::new(&opts.s2cs_bin);
        cmd.arg("--port")
            .arg("0")
            .arg("--control-ip")
            .arg(opts.listener_ip.to_string())
            .arg("--listener-ip")
            .arg(opts.listener_ip.to_string())
            .arg("--port-range")
            .arg(format!("{}-{}", opts.port_range.0, opts.port_range.1))
            .arg("--state-dir")
            .arg(&opts.state_dir)
            .args(&opts.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .process_group(0);
        match &opts.tls {
            Some((cert, key)) => {
                cmd.arg("--server_crt")
                    .arg(cert)
                    .arg("--server_key")
                    .arg(key);
            }
            None => {
                cmd.arg("--insecure");
            }
        }
        if let Some(log) = &opts.log {
            let f = std::fs::File::create(log)
                .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
            cmd.stderr(f);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", opts.s2cs_bin.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout from s2cs")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so s2cs never blocks on a full pipe.
            for _ in lines {}
        });
        let mut gw = LocalGateway {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            log: opts.log.clone(),
            child: Some(child),
        };
        let explain = |gw: &LocalGateway, what: String| match &gw.log {
            Some(log) => format!(
                "{what}\n--- last lines of {} ---\n{}",
                log.display(),
                log_tail(log, 15)
            ),
            None => what,
        };
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => match line
                .strip_prefix("s2cs listening on ")
                .and_then(|a| a.trim().parse().ok())
            {
                Some(addr) => gw.addr = addr,
                None => {
                    return Err(explain(
                        &gw,
                        format!("s2cs printed an unexpected first line: {line}"),
                    ));
                }
            },
            Err(_) => {
                let status = gw.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
                let what = match status {
                    Some(s) => format!("s2cs exited ({s}) before serving"),
                    None => "s2cs did not start serving within 60 s".into(),
                };
                return Err(explain(&gw, what));
            }
        }
        Ok(gw)
    }

    /// `s2cs`'s process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// `host:port` to give `--s2cs`.
    pub fn control(&self) -> String {
        format!("localhost:{}", self.addr.port())
    }

    /// Sends a signal to `s2cs`.
    pub fn signal(&self, sig: Signal) {
        if let Some(pid) = self.pid().and_then(|p| Pid::from_raw(p as i32)) {
            let _ = rustix::process::kill_process(pid, sig);
        }
    }

    /// Stops `s2cs` with SIGTERM and waits (SIGKILL to the group after 10 s).
    pub fn stop(mut self) -> Option<ExitStatus> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let pid = Pid::from_raw(child.id() as i32)?;
        let _ = rustix::process::kill_process(pid, Signal::TERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => break None,
            }
        };
        // Whatever is left in the group (an s2ds whose s2cs was killed) goes too.
        let _ = rustix::process::kill_process_group(pid, Signal::KILL);
        if status.is_none() {
            let _ = child.kill();
            return child.wait().ok();
        }
        status
    }
}

impl Drop for LocalGateway {
    fn drop(&mut self) {
        self.shutdown();
    }
}
