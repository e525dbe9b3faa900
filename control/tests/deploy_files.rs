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
