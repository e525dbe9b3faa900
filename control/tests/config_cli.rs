//! `s2cs --config`, `--print-config` and `--check-config` through the binary.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use scistream_testkit::{Pki, bin};

#[test]
fn check_and_print_config() {
    let pki = Pki::new();
    let (crt, key) = pki.gateway("gw");
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("s2cs.toml");
    std::fs::write(
        &conf,
        format!(
            "server_crt = {:?}\nserver_key = {:?}\npeer-ca = {:?}\nport-range = \"6100-6120\"\nallow-targets = [\"10.0.0.0/8:5000-6000\"]\nclient_secret = \"s3cr3t-value\"\nauth = \"none\"\n",
            crt, key, pki.ca
        ),
    )
    .unwrap();
    let s2cs = |args: &[&str]| {
        Command::new(bin("s2cs"))
            .arg("--config")
            .arg(&conf)
            .args(args)
            .output()
            .unwrap()
    };

    let out = s2cs(&["--check-config"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration OK"));
    assert!(
        stderr.contains("AUTHENTICATION IS OFF"),
        "warnings are shown: {stderr}"
    );

    let out = s2cs(&["--print-config", "--port", "7000"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(!text.contains("s3cr3t-value"), "{text}");
    assert!(
        text.contains("port = \"7000\"") && text.contains("port-range = \"6100-6120\""),
        "{text}"
    );
    assert!(
        text.contains("allow-targets = [\"10.0.0.0/8:5000-6000\"]"),
        "{text}"
    );

    // A broken certificate: --check-config fails and names the file.
    std::fs::write(&crt, "not a certificate").unwrap();
    let out = s2cs(&["--check-config"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("gw.crt"), "{stderr}");

    // An unknown key stops everything with the key's name.
    std::fs::write(&conf, "prot = 5000\n").unwrap();
    let out = s2cs(&["--check-config"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown key 'prot'"));
}

/// Every data-plane option: a value `s2ds` would refuse at start is
/// refused by `s2cs --check-config` too, with the same words, because both
/// take it through one definition (`scistream_protocol::options`).
#[test]
fn check_config_refuses_what_s2ds_would_refuse() {
    for (flag, bad) in [
        ("--engine", "dpdk"),
        ("--workers", "0"),
        ("--pipe-size", "12"),
        ("--pipe-size", "1GiB"),
        ("--sndbuf", "1"),
        ("--rcvbuf", "3GiB"),
        ("--forward", "zerocopy"),
        ("--handshake-timeout", "0s"),
        ("--keepalive", "soon"),
        ("--idle-timeout", "-1s"),
        ("--user-timeout", "x"),
        ("--ktls", "maybe"),
        ("--crypto", "openssl"),
    ] {
        let s2cs = std::process::Command::new(scistream_testkit::bin("s2cs"))
            .args(["--insecure", "--check-config", &format!("{flag}={bad}")])
            .output()
            .unwrap();
        let s2ds = std::process::Command::new(scistream_testkit::bin("s2ds"))
            .args([
                "--control-socket",
                "/nonexistent/never-bound.sock",
                &format!("{flag}={bad}"),
            ])
            .output()
            .unwrap();
        assert!(
            !s2cs.status.success() && !s2ds.status.success(),
            "{flag} {bad}"
        );
        let (a, b) = (
            String::from_utf8_lossy(&s2cs.stderr).into_owned(),
            String::from_utf8_lossy(&s2ds.stderr).into_owned(),
        );
        let reason = |e: &str| {
            e.lines()
                .find(|l| l.contains("invalid value"))
                .map(|l| l.split("': ").last().unwrap_or("").to_owned())
                .unwrap_or_default()
        };
        assert!(a.contains(bad) && b.contains(bad), "{flag}: {a}\n{b}");
        assert_eq!(
            reason(&a),
            reason(&b),
            "{flag} {bad}: the same words\n{a}\n{b}"
        );
    }
}
