//! `s2tune check`, `apply` and `revert` against synthetic /proc and /sys
//! trees (a well-tuned and a badly tuned host), every recommendation
//! asserted; and the binary's arithmetic and unit handling.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use scistream_testkit::bin;
use scistream_tuning::apply;
use scistream_tuning::check::{Item, Status, evaluate};
use scistream_tuning::host::{Facts, Root};
use scistream_tuning::target::Target;

fn put(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, format!("{text}\n")).unwrap();
}

fn sysctl(dir: &Path, name: &str, value: &str) {
    put(dir, &format!("proc/sys/{}", name.replace('.', "/")), value);
}

fn nic(dir: &Path, name: &str, mtu: u32, node: i32) {
    put(dir, &format!("sys/class/net/{name}/type"), "1");
    put(dir, &format!("sys/class/net/{name}/mtu"), &mtu.to_string());
    put(
        dir,
        &format!("sys/class/net/{name}/device/numa_node"),
        &node.to_string(),
    );
}

/// A 100G gateway tuned as fasterdata says.
fn tuned(dir: &Path) {
    sysctl(dir, "net.core.rmem_max", "2147483647");
    sysctl(dir, "net.core.wmem_max", "2147483647");
    sysctl(dir, "net.ipv4.tcp_rmem", "4096\t131072\t2147483647");
    sysctl(dir, "net.ipv4.tcp_wmem", "4096\t16384\t2147483647");
    sysctl(dir, "net.ipv4.tcp_congestion_control", "bbr");
    sysctl(
        dir,
        "net.ipv4.tcp_available_congestion_control",
        "reno cubic bbr",
    );
    sysctl(dir, "net.core.default_qdisc", "fq");
    sysctl(dir, "net.ipv4.tcp_mtu_probing", "1");
    sysctl(dir, "net.core.netdev_max_backlog", "250000");
    sysctl(dir, "kernel.io_uring_disabled", "0");
    sysctl(dir, "kernel.osrelease", "6.12.0-amd64");
    nic(dir, "ens1f0", 9000, 0);
    put(dir, "sys/class/net/lo/type", "772");
    put(dir, "sys/class/net/docker0/type", "1"); // a bridge: no device
    put(dir, "sys/class/net/docker0/mtu", "1500");
    put(dir, "sys/devices/system/cpu/online", "0-15");
    for c in 0..16 {
        put(
            dir,
            &format!("sys/devices/system/cpu/cpu{c}/cpufreq/scaling_governor"),
            "performance",
        );
    }
    put(dir, "sys/devices/system/node/node0/cpulist", "0-15");
}

/// Debian's defaults on a small two-node box.
fn untuned(dir: &Path) {
    sysctl(dir, "net.core.rmem_max", "212992");
    sysctl(dir, "net.core.wmem_max", "212992");
    sysctl(dir, "net.ipv4.tcp_rmem", "4096\t131072\t6291456");
    sysctl(dir, "net.ipv4.tcp_wmem", "4096\t16384\t4194304");
    sysctl(dir, "net.ipv4.tcp_congestion_control", "cubic");
    sysctl(
        dir,
        "net.ipv4.tcp_available_congestion_control",
        "reno cubic",
    );
    sysctl(dir, "net.core.default_qdisc", "pfifo_fast");
    sysctl(dir, "net.ipv4.tcp_mtu_probing", "0");
    sysctl(dir, "net.core.netdev_max_backlog", "1000");
    sysctl(dir, "kernel.io_uring_disabled", "2");
    sysctl(dir, "kernel.osrelease", "5.10.0-28-amd64");
    nic(dir, "eth0", 1500, 1);
    put(dir, "sys/devices/system/cpu/online", "0-3");
    for c in 0..4 {
        put(
            dir,
            &format!("sys/devices/system/cpu/cpu{c}/cpufreq/scaling_governor"),
            if c == 0 { "powersave" } else { "schedutil" },
        );
    }
    put(dir, "sys/devices/system/node/node0/cpulist", "0-1");
    put(dir, "sys/devices/system/node/node1/cpulist", "2-3");
}

fn target() -> Target {
    Target {
        rate_bps: 100_000_000_000,
        rtt: std::time::Duration::from_millis(50),
    }
}

/// Facts of a tree, with the process and kernel probes fixed (they are the
/// test machine's, not the tree's).
fn facts(dir: &Path, good: bool) -> Facts {
    let mut f = Facts::gather(&Root::under(dir));
    f.nofile = (Some(1024), Some(if good { 1 << 20 } else { 4096 }));
    f.memlock = (Some(8 << 20), Some(8 << 20));
    f.io_uring = if good {
        Ok(())
    } else {
        Err("Operation not permitted (os error 1)".into())
    };
    f.ktls = scistream_dataplane::probe::KtlsSupport {
        available: good,
        rekey: false,
        chacha: good,
    };
    f
}

fn find<'a>(items: &'a [Item], name: &str) -> &'a Item {
    items
        .iter()
        .find(|i| i.name == name)
        .unwrap_or_else(|| panic!("no item {name} in {items:#?}"))
}

#[test]
fn a_tuned_host_passes_every_item() {
    let dir = tempfile::tempdir().unwrap();
    tuned(dir.path());
    let items = evaluate(&facts(dir.path(), true), &target());
    for i in &items {
        assert_eq!(i.status, Status::Ok, "{i:#?}");
        assert!(i.fix.is_empty() && i.sysctl.is_none(), "{i:#?}");
    }
    let names: Vec<&str> = items.iter().map(|i| i.name.as_str()).collect();
    assert!(
        names.contains(&"mtu ens1f0")
            && !names
                .iter()
                .any(|n| n.contains("docker0") || *n == "mtu lo"),
        "{names:?}"
    );
    assert!(apply::plan(&items, &[]).is_empty());
}

#[test]
fn an_untuned_host_gets_every_fix() {
    let dir = tempfile::tempdir().unwrap();
    untuned(dir.path());
    let items = evaluate(&facts(dir.path(), false), &target());
    let expect = |name: &str, status: Status, current: &str, recommended: &str, fix: &str| {
        let i = find(&items, name);
        assert_eq!(
            (i.status, i.current.as_str(), i.recommended.as_str()),
            (status, current, recommended),
            "{i:#?}"
        );
        assert!(i.fix.contains(fix), "{name}: fix '{}' lacks '{fix}'", i.fix);
        assert!(!i.why.is_empty());
    };
    // The pinning limits warn (autotuning is the default); the autotuning
    // limits below the BDP fail.
    expect(
        "net.core.rmem_max",
        Status::Warn,
        "212992",
        "2147483647",
        "sysctl -w net.core.rmem_max=2147483647",
    );
    expect(
        "net.core.wmem_max",
        Status::Warn,
        "212992",
        "2147483647",
        "sysctl -w net.core.wmem_max=2147483647",
    );
    expect(
        "net.ipv4.tcp_rmem",
        Status::Fail,
        "4096 131072 6291456",
        "4096 131072 2147483647",
        "sysctl -w net.ipv4.tcp_rmem='4096 131072 2147483647'",
    );
    expect(
        "net.ipv4.tcp_wmem",
        Status::Fail,
        "4096 16384 4194304",
        "4096 16384 2147483647",
        "net.ipv4.tcp_wmem='4096 16384 2147483647'",
    );
    expect(
        "net.ipv4.tcp_congestion_control",
        Status::Warn,
        "cubic (available: reno cubic)",
        "bbr",
        "modprobe tcp_bbr && sysctl -w net.ipv4.tcp_congestion_control=bbr",
    );
    expect(
        "net.core.default_qdisc",
        Status::Warn,
        "pfifo_fast",
        "fq",
        "sysctl -w net.core.default_qdisc=fq",
    );
    expect(
        "net.ipv4.tcp_mtu_probing",
        Status::Warn,
        "0",
        "1",
        "sysctl -w net.ipv4.tcp_mtu_probing=1",
    );
    expect(
        "net.core.netdev_max_backlog",
        Status::Warn,
        "1000",
        "250000",
        "netdev_max_backlog=250000",
    );
    expect(
        "mtu eth0",
        Status::Warn,
        "1500",
        "9000",
        "ip link set dev eth0 mtu 9000",
    );
    expect(
        "cpu governor",
        Status::Warn,
        "powersave,schedutil",
        "performance",
        "cpupower frequency-set -g performance",
    );
    expect("cores", Status::Warn, "4", "8+", "8 or more cores");
    expect(
        "numa",
        Status::Warn,
        "2 nodes; eth0 on node 1",
        "s2cs on the NIC's node",
        "numactl --cpunodebind=1 --membind=1",
    );
    expect(
        "RLIMIT_NOFILE",
        Status::Warn,
        "1024 (hard 4096)",
        "hard 65536+",
        "LimitNOFILE=65536",
    );
    expect(
        "RLIMIT_MEMLOCK",
        Status::Warn,
        "8388608 (hard 8388608)",
        "64 MiB+",
        "LimitMEMLOCK",
    );
    expect(
        "io_uring",
        Status::Warn,
        "unavailable: Operation not permitted (os error 1)",
        "available",
        "sysctl -w kernel.io_uring_disabled=0",
    );
    expect(
        "kTLS",
        Status::Warn,
        "unavailable (no tls ULP)",
        "available",
        "modprobe tls",
    );

    // A 1 Gbit/s LAN path needs less: the floor of 64 MiB, and the buffers only warn.
    let lan = Target {
        rate_bps: 1_000_000_000,
        rtt: std::time::Duration::from_millis(1),
    };
    let items = evaluate(&facts(dir.path(), false), &lan);
    let i = find(&items, "net.ipv4.tcp_rmem");
    assert_eq!(
        (i.status, i.recommended.as_str()),
        (Status::Warn, "4096 131072 67108864")
    );
    assert_eq!(
        find(&items, "net.core.netdev_max_backlog").status,
        Status::Ok
    );
}

#[test]
fn an_empty_tree_is_unknown_not_failed() {
    let dir = tempfile::tempdir().unwrap();
    let items = evaluate(&facts(dir.path(), true), &target());
    for name in [
        "net.core.rmem_max",
        "net.ipv4.tcp_rmem",
        "net.core.default_qdisc",
        "mtu",
        "cpu governor",
        "cores",
        "numa",
    ] {
        assert_eq!(find(&items, name).status, Status::Unknown, "{name}");
    }
}

#[test]
fn apply_shows_a_diff_then_applies_and_reverts_on_the_tree() {
    let dir = tempfile::tempdir().unwrap();
    untuned(dir.path());
    let root = dir.path().to_str().unwrap();
    let state = dir.path().join("saved.json");
    let persist = dir.path().join("90-scistream.conf");
    let s2tune = |args: &[&str]| {
        Command::new(bin("s2tune"))
            .arg("--root")
            .arg(root)
            .args(args)
            .output()
            .unwrap()
    };
    let read = |name: &str| Root::under(dir.path()).sysctl(name).unwrap();

    // Dry run by default: the diff, nothing written.
    let out = s2tune(&[
        "apply",
        "--rate",
        "100Gbit",
        "--rtt",
        "50ms",
        "--state",
        state.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("-net.core.rmem_max = 212992\n+net.core.rmem_max = 2147483647"),
        "{text}"
    );
    assert!(
        text.contains("+net.core.default_qdisc = fq") && text.contains("Dry run"),
        "{text}"
    );
    assert!(
        !text.contains("tcp_congestion_control"),
        "bbr is not available: no sysctl fix"
    );
    assert_eq!(read("net.core.rmem_max"), "212992");
    assert!(!state.exists());

    let out = s2tune(&[
        "apply",
        "--rate",
        "100Gbit",
        "--rtt",
        "50ms",
        "--yes",
        "--state",
        state.to_str().unwrap(),
        "--persist",
        persist.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read("net.core.rmem_max"), "2147483647");
    assert_eq!(read("net.ipv4.tcp_wmem"), "4096 16384 2147483647");
    assert_eq!(
        read("kernel.io_uring_disabled"),
        "2",
        "io_uring works on this machine: the probe passed, so no fix"
    );
    let conf = std::fs::read_to_string(&persist).unwrap();
    assert!(conf.contains("net.core.default_qdisc = fq"), "{conf}");

    // A second apply (another target) keeps the original values for revert.
    let out = s2tune(&[
        "apply",
        "--rate",
        "1Gbit",
        "--rtt",
        "1ms",
        "--yes",
        "--state",
        state.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let out = s2tune(&["revert", "--state", state.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read("net.core.rmem_max"), "212992");
    assert_eq!(read("net.ipv4.tcp_rmem"), "4096 131072 6291456");
    assert_eq!(read("net.core.default_qdisc"), "pfifo_fast");
    assert!(!persist.exists() && !state.exists());
    let out = s2tune(&["revert", "--state", state.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to revert"));

    // --only limits the plan; unknown names are refused.
    let out = s2tune(&[
        "apply",
        "--only",
        "net.ipv4.tcp_mtu_probing",
        "--state",
        state.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("tcp_mtu_probing") && !text.contains("rmem_max"),
        "{text}"
    );
    let out = s2tune(&["apply", "--only", "vm.swappiness"]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("vm.swappiness")
    );
}

#[test]
fn bdp_and_units_from_the_command_line() {
    let out = Command::new(bin("s2tune"))
        .args(["bdp", "--rate", "100Gbit", "--rtt", "50ms"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("= 625000000 bytes"), "{text}");
    let out = Command::new(bin("s2tune"))
        .args(["--json", "bdp", "--rate", "1.5Gb/s", "--rtt", "100us"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["bdp_bytes"], 18750);
    for (rate, rtt, bad) in [
        ("10Gbitt", "50ms", "10Gbitt"),
        ("-10Gbit", "50ms", "-10Gbit"),
        ("10Gbit", "-5ms", "-5ms"),
        ("10Gbit", "0ms", "0ms"),
    ] {
        let out = Command::new(bin("s2tune"))
            .args(["bdp", &format!("--rate={rate}"), &format!("--rtt={rtt}")])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert!(err.contains(bad), "{bad}: the error names the input: {err}");
    }
}

#[test]
fn check_json_on_a_tree() {
    let dir = tempfile::tempdir().unwrap();
    untuned(dir.path());
    let out = Command::new(bin("s2tune"))
        .args([
            "--root",
            dir.path().to_str().unwrap(),
            "--json",
            "check",
            "--rate",
            "10Gbit",
            "--rtt",
            "20ms",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "failing items: exit 1");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["target"]["bdp_bytes"], 25_000_000);
    let items = v["items"].as_array().unwrap();
    let rmem = items
        .iter()
        .find(|i| i["name"] == "net.core.rmem_max")
        .unwrap();
    assert_eq!(rmem["status"], "warn", "only pinned buffers need it");
    assert_eq!(rmem["recommended"], "67108864");
    let tcp_rmem = items
        .iter()
        .find(|i| i["name"] == "net.ipv4.tcp_rmem")
        .unwrap();
    assert_eq!(tcp_rmem["status"], "fail", "autotuning stops below the BDP");
    assert_eq!(v["target"]["assumed"], false);
}

#[test]
fn without_rate_and_rtt_the_path_is_assumed_aloud_and_apply_yes_refuses() {
    let dir = tempfile::tempdir().unwrap();
    untuned(dir.path());
    let root = dir.path().to_str().unwrap();
    let out = Command::new(bin("s2tune"))
        .args(["--root", root, "--json", "check"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ASSUMED PATH") && err.contains("--rtt"),
        "{err}"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["target"]["assumed"], true);
    let state = dir.path().join("state.json");
    let out = Command::new(bin("s2tune"))
        .args(["--root", root, "apply", "--yes", "--state"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("give the path it must carry with --rate and --rtt"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!state.exists(), "nothing applied");
}
