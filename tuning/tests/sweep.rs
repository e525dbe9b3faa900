//! `s2tune sweep` on loopback with tiny grids: through a tunnel it sets up
//! itself (TLS on and off, every byte verified by the sink), and straight
//! to a sink the test runs.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use scistream_bench::sink::Sink;
use scistream_testkit::bin;

fn report(prefix: &std::path::Path) -> serde_json::Value {
    let json = std::fs::read_to_string(prefix.with_extension("json")).unwrap();
    let svg = std::fs::read_to_string(prefix.with_extension("svg")).unwrap();
    assert!(svg.contains("<svg"), "an SVG chart");
    serde_json::from_str(&json).unwrap()
}

#[test]
fn sweep_through_a_loopback_tunnel() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("sweep");
    let out = Command::new(bin("s2tune"))
        .args([
            "sweep",
            "--loopback",
            "--conns",
            "1,2",
            "--buffers",
            "auto",
            "--tls",
            "on,off",
            "--duration",
            "1s",
        ])
        .arg("--s2cs-bin")
        .arg(bin("s2cs"))
        .arg("--report")
        .arg(&prefix)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("[4/4] plaintext tunnel, 2 connection(s), buffer auto"),
        "progress: {stderr}"
    );
    assert!(
        stdout.contains("tls 1 conn") && stdout.contains("plain 2 conn"),
        "{stdout}"
    );
    assert!(
        stdout.contains("recommended: s2uc ... --num_conn"),
        "{stdout}"
    );
    let v = report(&prefix);
    let points = v["points"].as_array().unwrap();
    assert_eq!(points.len(), 4);
    for p in points {
        assert_eq!(p["ok"], true, "{p}");
        assert!(p["gbps"].as_f64().unwrap() > 0.0, "{p}");
    }
    assert!(v["best"]["conns"].as_u64().is_some());
}

#[test]
fn sweep_straight_to_a_sink() {
    let sink = Sink::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("direct");
    let out = Command::new(bin("s2tune"))
        .args([
            "--json",
            "sweep",
            "--connect",
            &sink.addr.to_string(),
            "--conns",
            "1,3",
            "--buffers",
            "auto,1MiB",
            "--duration",
            "500ms",
        ])
        .arg("--report")
        .arg(&prefix)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let v = report(&prefix);
    assert_eq!(stdout["points"], v["points"]);
    assert_eq!(v["mode"], "connect");
    let points = v["points"].as_array().unwrap();
    assert_eq!(points.len(), 4);
    assert!(
        points
            .iter()
            .any(|p| p["buffer"] == 1 << 20 && p["conns"] == 3 && p["ok"] == true)
    );
    // The sink saw every stream end cleanly.
    let got = sink.collect(1 + 3 + 1 + 3, std::time::Duration::from_secs(10));
    assert_eq!(got.len(), 8);

    // Nothing listening: every point fails, exit status 1, errors named.
    drop(sink);
    let out = Command::new(bin("s2tune"))
        .args([
            "sweep",
            "--connect",
            "127.0.0.1:1",
            "--conns",
            "1",
            "--buffers",
            "auto",
            "--duration",
            "200ms",
        ])
        .arg("--report")
        .arg(&prefix)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("error at 1c auto") && stdout.contains("nothing to recommend"),
        "{stdout}"
    );
}

#[test]
fn sweep_refuses_bad_grids() {
    for args in [
        vec!["sweep", "--loopback", "--conns", "0"],
        vec!["sweep", "--loopback", "--buffers", "huge"],
        vec!["sweep", "--loopback", "--tls", "maybe"],
        vec!["sweep"],
    ] {
        let out = Command::new(bin("s2tune")).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}
