//! `s2tune apply` then `revert` on a real kernel, inside a network
//! namespace the test creates: the per-namespace TCP knobs change there
//! and come back, and the host's stay untouched. Skipped, with the reason,
//! without root or iproute2.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

use scistream_testkit::{bin, have_root};

struct Netns(String);

impl Netns {
    fn create(test: &str) -> Option<Netns> {
        if !have_root(test) {
            return None;
        }
        let name = format!("s2tune-test-{}", std::process::id());
        match Command::new("ip").args(["netns", "add", &name]).output() {
            Ok(o) if o.status.success() => Some(Netns(name)),
            Ok(o) => {
                eprintln!(
                    "SKIP {test}: ip netns add failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIP {test}: cannot run ip (apt-get install iproute2): {e}");
                None
            }
        }
    }

    fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .output()
            .unwrap()
    }

    fn sysctl(&self, name: &str) -> String {
        let out = self.exec(&["cat", &format!("/proc/sys/{}", name.replace('.', "/"))]);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn host(name: &str) -> String {
    std::fs::read_to_string(format!("/proc/sys/{}", name.replace('.', "/")))
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn apply_and_revert_inside_a_namespace_leave_the_host_alone() {
    let Some(ns) = Netns::create("apply_and_revert_inside_a_namespace_leave_the_host_alone") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("saved.json");
    let knobs = [
        "net.ipv4.tcp_rmem",
        "net.ipv4.tcp_wmem",
        "net.ipv4.tcp_mtu_probing",
    ];
    let host_before: Vec<String> = knobs.iter().map(|k| host(k)).collect();
    let ns_before: Vec<String> = knobs.iter().map(|k| ns.sysctl(k)).collect();
    // A fresh namespace starts from the kernel's defaults, far below 10G x 50 ms.
    assert_eq!(ns_before[2], "0", "{ns_before:?}");

    let s2tune = bin("s2tune");
    let s2tune = s2tune.to_str().unwrap();
    let only = knobs.join(",");
    let out = ns.exec(&[
        s2tune,
        "apply",
        "--rate",
        "10Gbit",
        "--rtt",
        "50ms",
        "--yes",
        "--only",
        &only,
        "--state",
        state.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let rmem = ns.sysctl("net.ipv4.tcp_rmem");
    assert!(
        rmem.ends_with(" 134217728"),
        "10G x 50 ms: 128 MiB maximum, got {rmem}"
    );
    assert!(ns.sysctl("net.ipv4.tcp_wmem").ends_with(" 134217728"));
    assert_eq!(ns.sysctl("net.ipv4.tcp_mtu_probing"), "1");
    let host_during: Vec<String> = knobs.iter().map(|k| host(k)).collect();
    assert_eq!(host_during, host_before, "the host's values are untouched");

    // check inside the namespace now passes those items.
    let out = ns.exec(&[
        s2tune, "--json", "check", "--rate", "10Gbit", "--rtt", "50ms",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for k in knobs {
        let item = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == k)
            .unwrap();
        assert_eq!(item["status"], "ok", "{item}");
    }

    let out = ns.exec(&[s2tune, "revert", "--state", state.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ns_after: Vec<String> = knobs.iter().map(|k| ns.sysctl(k)).collect();
    assert_eq!(ns_after, ns_before);
    assert_eq!(
        knobs.iter().map(|k| host(k)).collect::<Vec<_>>(),
        host_before
    );
}

#[test]
fn apply_without_privilege_refuses_clearly() {
    if !have_root("apply_without_privilege_refuses_clearly") {
        return;
    }
    // As nobody, on the real host: refused before anything is written.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("saved.json");
    let before = host("net.ipv4.tcp_mtu_probing");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin("s2tune"))
        .args([
            "apply",
            "--rate",
            "10Gbit",
            "--rtt",
            "20ms",
            "--yes",
            "--only",
            "net.ipv4.tcp_mtu_probing,net.core.rmem_max",
            "--state",
            state.to_str().unwrap(),
        ])
        .output();
    let Ok(out) = out else {
        eprintln!("SKIP apply_without_privilege_refuses_clearly: setpriv is not available");
        return;
    };
    let err = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    if stdout.contains("Nothing to change") {
        eprintln!("SKIP apply_without_privilege_refuses_clearly: this host needs no change");
        return;
    }
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{err}");
    assert!(
        err.contains("needs root") && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(host("net.ipv4.tcp_mtu_probing"), before);
    assert!(!state.exists());
}
