//! The uid off the command line (where `ps` shows it to every local user):
//! `-` reads it from standard input, `@FILE` from a file, and without it
//! `$SCISTREAM_UID`; the argument itself still works (SciStream's spelling).

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::{Command, Stdio};

use scistream_testkit::{Gw, bin, s2uc_json};

fn status(
    gw: &Gw,
    uid_arg: Option<&str>,
    stdin: Option<&str>,
    env: Option<&str>,
) -> std::process::Output {
    let mut c = Command::new(bin("s2uc"));
    c.args(["status", "--json", "--insecure", "--s2cs", &gw.control()]);
    if let Some(a) = uid_arg {
        c.arg(a);
    }
    c.env_remove("SCISTREAM_UID");
    if let Some(e) = env {
        c.env("SCISTREAM_UID", e);
    }
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn uid_of(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["sessions"][0]["uid"].as_str().unwrap().to_owned()
}

#[test]
fn the_uid_comes_from_stdin_a_file_or_the_environment() {
    let gw = Gw::start(None, 4, &[]);
    let made = s2uc_json(&[
        "inbound_request",
        "--insecure",
        "--s2cs",
        &gw.control(),
        "--remote_ip",
        "127.0.0.1",
        "--receiver_ports",
        "9",
        "--num_conn",
        "1",
    ]);
    let uid = made["uid"].as_str().unwrap().to_owned();

    assert_eq!(
        uid_of(&status(&gw, Some(&uid), None, None)),
        uid,
        "as an argument"
    );
    assert_eq!(
        uid_of(&status(&gw, Some("-"), Some(&format!("{uid}\n")), None)),
        uid,
        "stdin"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("uid");
    std::fs::write(&file, format!("{uid}\n")).unwrap();
    let at = format!("@{}", file.display());
    assert_eq!(uid_of(&status(&gw, Some(&at), None, None)), uid, "@FILE");
    assert_eq!(
        uid_of(&status(&gw, None, None, Some(&uid))),
        uid,
        "SCISTREAM_UID"
    );

    // Bad sources are named, exit 2, nothing asked of the gateway.
    let out = status(&gw, Some("-"), Some(""), None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty uid"));
    let out = status(&gw, Some("@/nonexistent/uid"), None, None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/uid"));
    let out = status(&gw, None, None, None);
    assert!(!out.status.success(), "no uid at all is refused");

    // release reads it the same way.
    let mut c = Command::new(bin("s2uc"))
        .args(["release", "--insecure", "--s2cs", &gw.control(), "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(uid.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !status(&gw, Some(&uid), None, None).status.success(),
        "released"
    );
}
