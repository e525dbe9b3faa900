//! `s2bench setup` measures concurrent tunnel setups end to end.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use scistream_testkit::bin;

#[test]
fn setup_reports_latency_percentiles() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("setup.json");
    let out = Command::new(bin("s2bench"))
        .args([
            "setup",
            "--pairs",
            "12",
            "--concurrency",
            "6",
            "--first-port",
            "5600",
            "--json",
        ])
        .arg(&json)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("12 tunnel setups") && text.contains("p95"),
        "{text}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let (p50, p99, max) = (
        v["p50_ms"].as_f64().unwrap(),
        v["p99_ms"].as_f64().unwrap(),
        v["max_ms"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p50 <= p99 && p99 <= max, "{v}");
    let out = Command::new(bin("s2bench"))
        .args(["setup", "--pairs", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn setup_against_a_cluster_spreads_the_requests_over_its_nodes() {
    use scistream_testkit::etcd::{Etcd, have_etcd};
    if !have_etcd("setup_against_a_cluster_spreads_the_requests_over_its_nodes") {
        return;
    }
    let etcd = Etcd::start();
    let out = Command::new(bin("s2bench"))
        .args([
            "setup",
            "--pairs",
            "8",
            "--concurrency",
            "4",
            "--first-port",
            "5700",
            "--cluster-nodes",
            "2",
            "--conns",
            "2",
            "--etcd",
            &etcd.url(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("8 tunnel setups"), "{text}");
    // Each session spread over both nodes: a claim, a placement and the
    // hello's lookup at least, counted from etcd's own metrics.
    let calls: f64 = text
        .split("setups/s")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no etcd calls/setup in {text}"));
    assert!(calls >= 3.0, "{text}");
    // Every session was released on its node: none is still claimed.
    assert!(etcd.get_prefix("/scistream/s2bench/sessions/").is_empty());
    // --cluster-nodes needs --etcd.
    let out = Command::new(bin("s2bench"))
        .args(["setup", "--cluster-nodes", "2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
