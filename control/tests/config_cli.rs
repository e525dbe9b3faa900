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
