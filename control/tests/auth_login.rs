//! The user's side of authentication, end to end with the real binaries:
//! `s2uc login` against a real OAuth2 server on loopback (the test plays
//! the browser and pastes the code on stdin), the token store, requests to
//! an `s2cs` that introspects every token, refresh of an expired token,
//! `check-auth` and `logout` with revocation.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use scistream_testkit::oauth::{CLIENT_ID, OAuthServer, RESOURCE_ID, RESOURCE_SECRET, SCOPE};
use scistream_testkit::{DigestReceiver, Gw, Pki, bin};

/// A user of s2uc: their own config directory, token store and config file.
struct User {
    home: tempfile::TempDir,
    config: PathBuf,
}

impl User {
    fn new(server: &OAuthServer, scopes: &[(&str, &str)]) -> User {
        let home = tempfile::tempdir().unwrap();
        let config = home.path().join("s2uc.toml");
        let mut text = format!(
            "auth_server = \"{}\"\nclient_id = \"{CLIENT_ID}\"\n[scopes]\n",
            server.url
        );
        for (host, scope) in scopes {
            text.push_str(&format!("\"{host}\" = \"{scope}\"\n"));
        }
        std::fs::write(&config, text).unwrap();
        User { home, config }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(bin("s2uc"));
        c.env("XDG_CONFIG_HOME", self.home.path())
            .arg("--config")
            .arg(&self.config);
        c
    }

    fn s2uc(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
    }

    fn store(&self) -> PathBuf {
        self.home.path().join("scistream/tokens.json")
    }

    /// `s2uc login`: reads the URL it prints, authorizes at the server as
    /// the server's current user, pastes the code.
    fn login(&self, server: &OAuthServer, scope: &str) -> Output {
        let mut child = self
            .command()
            .args(["login", "--scope", scope])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut printed = String::new();
        let url = loop {
            let mut line = String::new();
            assert!(
                stdout.read_line(&mut line).unwrap() > 0,
                "s2uc login printed no URL: {printed}"
            );
            printed.push_str(&line);
            if line.starts_with(&server.url) {
                break line.trim().to_owned();
            }
        };
        assert!(url.contains("code_challenge_method=S256"), "{url}");
        let code = server.authorize(&url);
        writeln!(child.stdin.take().unwrap(), "{code}").unwrap();
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
        let mut out = child.wait_with_output().unwrap();
        out.stdout = format!("{printed}{rest}").into_bytes();
        out
    }
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "unexpected success: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// An HPC gateway with TLS that checks tokens at `server`.
fn gateway(pki: &Pki, server: &OAuthServer, secret_dir: &tempfile::TempDir) -> Gw {
    let secret = secret_dir.path().join("client-secret");
    std::fs::write(&secret, format!("{RESOURCE_SECRET}\n")).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let introspect = format!("{}/introspect", server.url);
    Gw::start(
        Some(pki.gateway("hpc")),
        8,
        &[
            "--client_id",
            RESOURCE_ID,
            "--client_secret-file",
            secret.to_str().unwrap(),
            "--introspect-url",
            &introspect,
            "--required-scope",
            SCOPE,
            "--hello-timeout",
            "5s",
        ],
    )
}

fn inbound(
    user: &User,
    gw: &Gw,
    pki: &Pki,
    receiver: &DigestReceiver,
    scope: Option<&str>,
) -> Output {
    let port = receiver.addr.port().to_string();
    let control = gw.control();
    let mut args = vec![
        "inbound_request",
        "--s2cs",
        &control,
        "--server_cert",
        pki.ca.to_str().unwrap(),
        "--remote_ip",
        "127.0.0.1",
        "--receiver_ports",
        &port,
        "--num_conn",
        "1",
        "--json",
    ];
    if let Some(s) = scope {
        args.extend(["--scope", s]);
    }
    user.s2uc(&args)
}

fn find_access_token(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Object(m) => m.iter().find_map(|(k, v)| match v {
            serde_json::Value::String(s) if k == "access_token" => Some(s.clone()),
            other => find_access_token(other),
        }),
        _ => None,
    }
}

#[test]
fn login_request_check_auth_and_logout() {
    let server = OAuthServer::start();
    let pki = Pki::new();
    let secrets = tempfile::tempdir().unwrap();
    let gw = gateway(&pki, &server, &secrets);
    let receiver = DigestReceiver::start();
    let user = User::new(&server, &[]);

    // Without a token: UNAUTHENTICATED, and s2uc says what to do.
    let err = failed(&inbound(&user, &gw, &pki, &receiver, Some(SCOPE)));
    assert!(
        err.contains("UNAUTHENTICATED") && err.contains("s2uc login"),
        "{err}"
    );

    let out = ok(&user.login(&server, SCOPE));
    assert!(out.contains("Logged in"), "{out}");
    let mode = std::fs::metadata(user.store())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the token store is private");
    let stored = std::fs::read_to_string(user.store()).unwrap();
    let stored: serde_json::Value = serde_json::from_str(&stored).unwrap();
    let access = find_access_token(&stored).expect("an access token in the store");
    assert!(server.is_active(&access));

    // check-auth says it is valid and whose it is, never the token.
    let out = ok(&user.s2uc(&["check-auth", "--scope", SCOPE]));
    assert!(
        out.contains("valid") && out.contains("alice@example.org"),
        "{out}"
    );
    assert!(!out.contains(&access));
    let json = ok(&user.s2uc(&["check_auth", "--scope", SCOPE, "--json"]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["valid"], true);
    assert!(!json.contains(&access));

    // A request with the token succeeds; the gateway logs who, not the token.
    let out = ok(&inbound(&user, &gw, &pki, &receiver, Some(SCOPE)));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let uid = v["uid"].as_str().unwrap().to_owned();
    let log = gw.log();
    assert!(log.contains("alice@example.org"), "{log}");
    assert!(!log.contains(&access), "the token is never logged");

    // Another user cannot release alice's session.
    server.set_user("bob");
    let bob = User::new(&server, &[]);
    ok(&bob.login(&server, SCOPE));
    let control = gw.control();
    let release = |u: &User| {
        u.s2uc(&[
            "release",
            "--s2cs",
            &control,
            "--server_cert",
            pki.ca.to_str().unwrap(),
            "--scope",
            SCOPE,
            &uid,
        ])
    };
    // bob's token works, but the session is alice's: to bob it does not exist.
    let err = failed(&release(&bob));
    assert!(err.contains("NOT_FOUND") && !err.contains("alice"), "{err}");
    ok(&release(&user));

    // logout revokes at the server and deletes the store.
    let before = server.revocations();
    let out = ok(&user.s2uc(&["logout"]));
    assert!(out.contains("2 token(s) revoked"), "{out}");
    assert_eq!(server.revocations(), before + 2);
    assert!(!server.is_active(&access));
    assert!(!user.store().exists());
    let out = user.s2uc(&["check-auth", "--scope", SCOPE]);
    assert_eq!(out.status.code(), Some(1), "no valid token: exit status 1");
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.contains("No token stored"), "{out}");
}

#[test]
fn the_scope_comes_from_the_config_map_and_an_expired_token_is_refreshed() {
    let server = OAuthServer::start();
    let pki = Pki::new();
    let secrets = tempfile::tempdir().unwrap();
    let gw = gateway(&pki, &server, &secrets);
    let receiver = DigestReceiver::start();
    let user = User::new(&server, &[("localhost", SCOPE)]);

    // Tokens that expire at once; the refresh gets a long-lived one.
    server.set_lifetime(1);
    ok(&user.login(&server, SCOPE));
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let out = ok(&user.s2uc(&["check-auth", "--ip", "localhost"]));
    assert!(out.contains("expired (it will be refreshed"), "{out}");
    server.set_lifetime(3600);
    let refreshes = server.refreshes();

    // No --scope: the config maps this s2cs host to the scope.
    ok(&inbound(&user, &gw, &pki, &receiver, None));
    assert_eq!(server.refreshes(), refreshes + 1, "refreshed once");
    let out = ok(&user.s2uc(&["check-auth", "--ip", "localhost"]));
    assert!(out.contains("valid"), "{out}");
    // The refreshed token is reused, not refreshed again.
    ok(&inbound(&user, &gw, &pki, &receiver, None));
    assert_eq!(server.refreshes(), refreshes + 1);

    // A store that others can read is refused, naming the fix.
    std::fs::set_permissions(user.store(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = failed(&inbound(&user, &gw, &pki, &receiver, None));
    assert!(
        err.contains("read by others") && err.contains("600"),
        "{err}"
    );
}
