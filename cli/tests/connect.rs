//! `s2uc connect`: both halves of a tunnel in one command, through two real
//! gateways (TLS control, TLS data channel) on loopback.
//! With `--run`: CMD streams through the tunnel, its exit status is
//! s2uc's, both halves are released after it (or on SIGINT); a refused
//! second half releases the first.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use scistream_local::payload::{Digest, Generator};
use scistream_testkit::{DigestReceiver, Gw, Pki, bin, refused, s2uc};

struct Gateways {
    pki: Pki,
    hpc: Gw,
    inst: Gw,
}

fn gateways() -> Gateways {
    let pki = Pki::new();
    let hpc = Gw::start(Some(pki.gateway("hpc")), 8, &[]);
    let inst = Gw::start(Some(pki.gateway("inst")), 8, &[]);
    Gateways { pki, hpc, inst }
}

impl Gateways {
    /// `s2uc connect` between the two gateways to `127.0.0.1:port`.
    fn connect(&self, port: u16, extra: &[&str]) -> Command {
        let ca = self.pki.ca.to_str().unwrap().to_owned();
        let mut c = Command::new(bin("s2uc"));
        c.args(["connect", "--hpc", &self.hpc.control(), "--hpc-cert", &ca])
            .args(["--inst", &self.inst.control(), "--inst-cert", &ca])
            .args([
                "--remote_ip",
                "127.0.0.1",
                "--receiver_ports",
                &port.to_string(),
            ])
            .args(["--num_conn", "2"])
            .args(extra);
        c
    }

    /// How many sessions a gateway holds (without authentication, `list`
    /// shows every session).
    fn sessions_at(&self, gw: &Gw) -> usize {
        let ca = self.pki.ca.to_str().unwrap();
        let out = s2uc(&[
            "list",
            "--json",
            "--s2cs",
            &gw.control(),
            "--server_cert",
            ca,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["sessions"].as_array().map_or(0, Vec::len)
    }
}

/// A payload file and its (bytes, hash) as the receiver computes them.
fn payload(dir: &std::path::Path, bytes: usize) -> (std::path::PathBuf, (u64, u64)) {
    let mut data = vec![0u8; bytes];
    Generator::new(7).fill(&mut data);
    let mut d = Digest::default();
    d.update(&data);
    let path = dir.join("payload.bin");
    std::fs::write(&path, &data).unwrap();
    (path, d.value())
}

/// Sends the file to the first listener in `$SCISTREAM_LISTENERS` with
/// bash's /dev/tcp, then exits with `code`.
fn sender_script(code: i32) -> String {
    format!(
        "L=${{SCISTREAM_LISTENERS%%,*}}; test -n \"$SCISTREAM_UID\" || exit 99; \
         cat \"$0\" > /dev/tcp/${{L%:*}}/${{L##*:}} || exit 98; exit {code}"
    )
}

#[test]
fn connect_run_streams_through_the_tunnel_exits_with_cmds_status_and_releases_both() {
    let g = gateways();
    let receiver = DigestReceiver::start();
    let dir = tempfile::tempdir().unwrap();
    let (file, want) = payload(dir.path(), 32 << 20);
    let out = g
        .connect(
            receiver.addr.port(),
            &["--json", "--run", "--", "bash", "-c"],
        )
        .arg(sender_script(3))
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "CMD's status: {stderr}");
    assert_eq!(receiver.next(Duration::from_secs(60)), want, "byte-exact");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["exit_code"], 3);
    assert_eq!(v["released"], true, "{v}");
    let listeners: Vec<String> = serde_json::from_value(v["listeners"].clone()).unwrap();
    assert_eq!(listeners.len(), 2);
    assert!(
        stderr.contains("both halves of the tunnel released"),
        "{stderr}"
    );
    assert_eq!(g.sessions_at(&g.hpc), 0, "HPC side released");
    assert_eq!(g.sessions_at(&g.inst), 0, "instrument side released");
    for l in &listeners {
        assert!(refused(l), "listener {l} closed");
    }
}

#[test]
fn connect_without_run_leaves_the_tunnel_up_and_prints_it() {
    let g = gateways();
    let receiver = DigestReceiver::start();
    let out = g
        .connect(receiver.addr.port(), &["--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let uid = v["uid"].as_str().unwrap().to_owned();
    assert_eq!(v["outbound"]["role"], "CONS");
    assert_eq!(v["inbound"]["role"], "PROD");
    assert_eq!(v["listeners"], v["outbound"]["listeners"]);
    assert_eq!(g.sessions_at(&g.hpc), 1);
    assert_eq!(g.sessions_at(&g.inst), 1);
    let first = v["listeners"][0].as_str().unwrap();
    let sent = scistream_testkit::send_stream(first, 5, 1 << 20);
    assert_eq!(receiver.next(Duration::from_secs(30)), sent);
    let ca = g.pki.ca.to_str().unwrap();
    for gw in [&g.inst, &g.hpc] {
        let out = s2uc(&[
            "release",
            "--s2cs",
            &gw.control(),
            "--server_cert",
            ca,
            &uid,
        ]);
        assert!(out.status.success());
    }
    // The text form names the uid, the listeners and how to release.
    let out = g.connect(receiver.addr.port(), &[]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Tunnel ready.") && text.contains("s2uc release --s2cs"),
        "{text}"
    );
}

#[test]
fn sigint_during_run_releases_both_halves() {
    let g = gateways();
    let receiver = DigestReceiver::start();
    let child = g
        .connect(receiver.addr.port(), &["--run", "--", "sleep", "60"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while g.sessions_at(&g.inst) == 0 {
        assert!(Instant::now() < deadline, "tunnel not made in time");
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "128 + SIGINT: {stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "sleep was ended"
    );
    assert!(
        stderr.contains("both halves of the tunnel released"),
        "{stderr}"
    );
    assert_eq!(g.sessions_at(&g.hpc), 0);
    assert_eq!(g.sessions_at(&g.inst), 0);
}

#[test]
fn a_refused_outbound_half_releases_the_inbound_one() {
    let g = gateways();
    let receiver = DigestReceiver::start();
    // More connections than the instrument gateway (8 ports) takes: its req
    // is refused after the HPC gateway (32 ports) made its half.
    let big = Gw::start(Some(g.pki.gateway("hpc2")), 32, &[]);
    let ca = g.pki.ca.to_str().unwrap().to_owned();
    let out = Command::new(bin("s2uc"))
        .args(["connect", "--hpc", &big.control(), "--hpc-cert", &ca])
        .args(["--inst", &g.inst.control(), "--inst-cert", &ca])
        .args(["--remote_ip", "127.0.0.1", "--receiver_ports"])
        .arg(receiver.addr.port().to_string())
        .args(["--num_conn", "12"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("could not make its half") && stderr.contains("was released"),
        "{stderr}"
    );
    assert!(
        stderr.contains("refused req"),
        "the instrument gateway's reason: {stderr}"
    );
    assert_eq!(g.sessions_at(&big), 0, "the inbound half was released");
    assert_eq!(
        g.sessions_at(&g.inst),
        0,
        "nothing left on the instrument side"
    );
}

#[test]
fn bad_input_is_refused_before_any_call() {
    let g = gateways();
    for (extra, want) in [(vec!["--run"], "CMD"), (vec!["--", "true"], "--run")] {
        let out = g.connect(9, &extra).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {stderr}");
        assert!(stderr.contains(want), "{extra:?}: {stderr}");
    }
    let out = Command::new(bin("s2uc"))
        .args([
            "connect",
            "--hpc",
            &g.hpc.control(),
            "--inst",
            &g.inst.control(),
        ])
        .args(["--remote_ip", "127.0.0.1", "--receiver_ports", "0"])
        .args(["--insecure"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--receiver_ports"), "{stderr}");
    assert_eq!(g.sessions_at(&g.hpc), 0);
}
