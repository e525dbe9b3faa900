//! What a user sees when something is wrong: clear words, non-zero exit.

#![allow(clippy::unwrap_used)]

use scistream_testkit::{Gw, Pki, s2uc};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn untrusted_server_certificate_names_the_trust_root() {
    let pki = Pki::new();
    let gw = Gw::start(Some(pki.gateway("hpc")), 4, &[]);
    let stranger = pki.stranger_ca();
    let out = s2uc(&[
        "inbound_request",
        "--s2cs",
        &gw.control(),
        "--server_cert",
        stranger.to_str().unwrap(),
        "--remote_ip",
        "127.0.0.1",
        "--receiver_ports",
        "9",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("TLS") && err.contains(stranger.to_str().unwrap()),
        "{err}"
    );
    assert!(err.contains("--server_cert"), "says what to do: {err}");
}

#[test]
fn missing_trust_root_file_is_named() {
    let out = s2uc(&[
        "release",
        "abc",
        "--s2cs",
        "localhost:1",
        "--server_cert",
        "/nonexistent/hpc.crt",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("/nonexistent/hpc.crt"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn unreachable_s2cs_is_reported() {
    let pki = Pki::new();
    // A port nobody listens on: bind, note, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = s2uc(&[
        "release",
        "abc",
        "--s2cs",
        &format!("127.0.0.1:{port}"),
        "--server_cert",
        pki.ca.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot reach s2cs"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_input_is_refused_before_any_call() {
    for (args, needle) in [
        (
            vec![
                "inbound_request",
                "--remote_ip",
                "127.0.0.1",
                "--receiver_ports",
                "5001,x",
            ],
            "'x' is not a port",
        ),
        (
            vec![
                "inbound_request",
                "--remote_ip",
                "127.0.0.1",
                "--receiver_ports",
                "99999",
            ],
            "99999",
        ),
        (
            vec![
                "inbound_request",
                "--remote_ip",
                "bad host!",
                "--receiver_ports",
                "1",
            ],
            "not a valid host",
        ),
        (
            vec!["outbound_request", "uid-1", "127.0.0.1"],
            "has no port",
        ),
        (
            vec!["outbound_request", "bad/uid", "127.0.0.1:5100"],
            "uid contains '/'",
        ),
        (vec!["release", "", "--s2cs", "localhost:1"], "uid is empty"),
    ] {
        let out = s2uc(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn json_errors_carry_the_grpc_code() {
    let pki = Pki::new();
    let gw = Gw::start(Some(pki.gateway("hpc")), 4, &[]);
    let out = s2uc(&[
        "release",
        "no-such-uid",
        "--s2cs",
        &gw.control(),
        "--server_cert",
        pki.ca.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], "NOT_FOUND");
    let m = v["error"]["message"].as_str().unwrap();
    // The gateway names the session by tag, never echoing a uid.
    assert!(m.contains("tag") && !m.contains("no-such-uid"), "{m}");
}

#[test]
fn config_file_gives_default_s2cs_and_server_cert_and_flags_win() {
    let pki = Pki::new();
    let gw = Gw::start(Some(pki.gateway("hpc")), 2, &[]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(&pki.ca, dir.path().join("gw-ca.crt")).unwrap();
    let config = dir.path().join("s2uc.toml");
    let control = gw.control();
    // A relative server_cert is taken from the config file's directory.
    std::fs::write(
        &config,
        format!("s2cs = \"{control}\"\nserver_cert = \"gw-ca.crt\"\n"),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let out = s2uc(&["--config", cfg, "list", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["s2cs"], control.as_str());

    // The flag wins over the file.
    let out = s2uc(&["--config", cfg, "list", "--s2cs", "localhost:1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("localhost:1"), "{}", stderr(&out));
    let stranger = pki.stranger_ca();
    let out = s2uc(&[
        "--config",
        cfg,
        "list",
        "--server_cert",
        stranger.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(stranger.to_str().unwrap()),
        "{}",
        stderr(&out)
    );

    // Bad values and unknown keys are named (exit 2: bad input).
    std::fs::write(&config, "s2cs = \"hpc-gw\"\n").unwrap();
    let out = s2uc(&["--config", cfg, "list"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("s2cs") && err.contains("HOST:PORT"), "{err}");
    std::fs::write(&config, "server_crt = \"x.pem\"\n").unwrap();
    let out = s2uc(&["--config", cfg, "list"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("server_crt"), "{}", stderr(&out));
}

#[test]
fn a_refused_update_releases_what_the_request_made_and_only_that_role() {
    // One gateway holds both ends; it forwards only to 127.0.0.1:7000-7100.
    let gw = Gw::start(None, 8, &["--allow-targets", "127.0.0.1:7000-7100"]);
    let inbound = scistream_testkit::s2uc_json(&[
        "inbound_request",
        "--insecure",
        "--s2cs",
        &gw.control(),
        "--remote_ip",
        "127.0.0.1",
        "--receiver_ports",
        "7000",
        "--num_conn",
        "1",
    ]);
    let uid = inbound["uid"].as_str().unwrap();
    let out = s2uc(&[
        "outbound_request",
        "--insecure",
        "--s2cs",
        &gw.control(),
        "--num_conn",
        "1",
        uid,
        "127.0.0.1:9",
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("PERMISSION_DENIED"), "{err}");
    assert!(
        err.contains("the session this request made there was released"),
        "{err}"
    );
    let list = scistream_testkit::s2uc_json(&["list", "--insecure", "--s2cs", &gw.control()]);
    let roles: Vec<&str> = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        ["PROD"],
        "the inbound end stays, the refused outbound one is gone: {list}"
    );
    // The inbound end is released as usual.
    let out = s2uc(&["release", "--insecure", "--s2cs", &gw.control(), uid]);
    assert!(out.status.success(), "{}", stderr(&out));
}
