//! The deployment files in deploy/: the sample configuration parses with
//! the real s2cs (every key known), and the systemd unit passes
//! `systemd-analyze verify` where that tool exists.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

use scistream_testkit::bin;

fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

#[test]
fn the_sample_configuration_is_valid_s2cs_configuration() {
    let out = Command::new(bin("s2cs"))
        .arg("--config")
        .arg(deploy().join("s2cs.toml"))
        .arg("--print-config")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("capacity = \"100Gbit\"  # set"), "{text}");
}

#[test]
fn the_systemd_unit_verifies() {
    let Ok(v) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("SKIP the_systemd_unit_verifies: systemd-analyze is not installed");
        return;
    };
    if !v.status.success() {
        eprintln!("SKIP the_systemd_unit_verifies: systemd-analyze does not run here");
        return;
    }
    // verify wants the ExecStart binaries to exist: point them at ours.
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(deploy().join("s2cs.service"))
        .unwrap()
        .replace("/usr/local/bin/s2cs", bin("s2cs").to_str().unwrap());
    let path = dir.path().join("s2cs.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Lines about the host's other units are not ours.
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("s2cs.service"))
        .collect();
    assert!(out.status.success() && ours.is_empty(), "{text}");
}

/// What s2cs sends to `NOTIFY_SOCKET`, as systemd would receive it.
fn next_notification(sock: &std::os::unix::net::UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .expect("no notification from s2cs within 60 s");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn s2cs_notifies_systemd_when_ready_reloading_and_stopping() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixDatagram;
    use std::process::Stdio;
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut child = Command::new(bin("s2cs"))
        .args(["--insecure", "--port", "0", "--control-ip", "127.0.0.1"])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("NOTIFY_SOCKET", &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = next_notification(&sock);
    assert_eq!(ready, "READY=1\n");
    // Ready means serving: the control address is printed already.
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("s2cs listening on "), "{line}");

    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    let reloading = next_notification(&sock);
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading:?}"
    );
    assert_eq!(next_notification(&sock), "READY=1\n");

    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    assert_eq!(next_notification(&sock), "STOPPING=1\n");
    assert!(child.wait().unwrap().success());
}
