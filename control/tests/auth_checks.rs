//! What `s2cs` does with the token of each call and who may do what:
//! token introspection against a real OAuth2 server on loopback (valid,
//! expired, revoked, wrong scope, a burst, the endpoint down or slow), the
//! static tokens file with SIGHUP, session ownership and administrators,
//! the target policy, and hostile metadata. Plain tonic clients against
//! `s2cs --insecure` gateways, so each call's metadata is exactly the test's.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use scistream_protocol::pb::control_client::ControlClient;
use scistream_protocol::pb::{Hello, Release, Request, UpdateTargets};
use scistream_testkit::Gw;
use scistream_testkit::oauth::{OAuthServer, RESOURCE_ID, RESOURCE_SECRET, SCOPE};
use tonic::Code;
use tonic::transport::Channel;

type Client = ControlClient<Channel>;

async fn client(gw: &Gw) -> Client {
    ControlClient::connect(format!("http://{}", gw.gw.addr))
        .await
        .unwrap()
}

fn call<M>(m: M, authorization: Option<&str>) -> tonic::Request<M> {
    let mut r = tonic::Request::new(m);
    if let Some(a) = authorization {
        r.metadata_mut().insert("authorization", a.parse().unwrap());
    }
    r
}

/// A release of a uid nobody has: NOT_FOUND proves the caller got past
/// authentication, anything else is the authentication's verdict.
async fn probe(c: &Client, authorization: Option<&str>) -> Result<(), tonic::Status> {
    let r = c
        .clone()
        .release(call(
            Release {
                uid: "no-such-session".into(),
                ..Default::default()
            },
            authorization,
        ))
        .await;
    match r {
        Err(s) if s.code() == Code::NotFound => Ok(()),
        Err(s) => Err(s),
        Ok(_) => panic!("released a session that does not exist"),
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn private_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

fn introspecting(server: &OAuthServer, dir: &Path, secret: &str, extra: &[&str]) -> Gw {
    let secret = private_file(dir, &format!("secret-{}", extra.len()), secret);
    let url = format!("{}/introspect", server.url);
    let mut args = vec![
        "--client-id",
        RESOURCE_ID,
        "--client-secret-file",
        secret.to_str().unwrap(),
        "--introspect-url",
        &url,
        "--required-scope",
        SCOPE,
    ];
    args.extend_from_slice(extra);
    Gw::start(None, 4, &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_accepts_only_active_tokens_of_our_scope() {
    let server = OAuthServer::start();
    let dir = tempfile::tempdir().unwrap();
    let gw = introspecting(
        &server,
        dir.path(),
        RESOURCE_SECRET,
        &["--introspect-cache", "1s"],
    );
    let c = client(&gw).await;

    // Raw (as SciStream's client sends it) and `Bearer`.
    let t = server.issue("alice", SCOPE, 600);
    probe(&c, Some(&t)).await.unwrap();
    probe(&c, Some(&bearer(&t))).await.unwrap();

    let refused = |r: Result<(), tonic::Status>| {
        let s = r.unwrap_err();
        assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
        s.message().to_owned()
    };
    let m = refused(probe(&c, Some(&bearer(&server.issue("alice", "urn:other", 600)))).await);
    assert!(m.contains("scope") && m.contains(SCOPE), "{m}");
    refused(probe(&c, Some(&bearer(&server.issue("alice", SCOPE, 0)))).await);
    refused(probe(&c, Some("Bearer made-up-token")).await);
    let m = refused(probe(&c, Some("INVALID_TOKEN")).await);
    assert!(m.contains("s2uc login"), "{m}");
    let m = refused(probe(&c, None).await);
    assert!(m.contains("no authorization"), "{m}");

    // Revoked: refused once the cached verdict (1 s here) has aged out.
    let t = server.issue("carol", SCOPE, 600);
    probe(&c, Some(&bearer(&t))).await.unwrap();
    server.revoke_user("carol");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let m = refused(probe(&c, Some(&bearer(&t))).await);
    assert!(m.contains("not active"), "{m}");

    // A burst of calls with one new token makes one round trip.
    let t = bearer(&server.issue("dave", SCOPE, 600));
    let before = server.introspections();
    let calls: Vec<_> = (0..16)
        .map(|_| {
            let c = c.clone();
            let t = t.clone();
            tokio::spawn(async move { probe(&c, Some(&t)).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(server.introspections(), before + 1);

    // The gateway logs identities, never tokens.
    let log = gw.log();
    assert!(log.contains("dave@example.org"), "{log}");
    assert!(!log.contains(t.trim_start_matches("Bearer ")));

    // A gateway with the wrong client secret cannot check tokens: UNAVAILABLE, saying why.
    let wrong = introspecting(&server, dir.path(), "not-the-secret-000", &[]);
    let s = probe(
        &client(&wrong).await,
        Some(&bearer(&server.issue("alice", SCOPE, 600))),
    )
    .await
    .unwrap_err();
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert!(s.message().contains("credentials"), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_or_slow_introspection_endpoint_gives_unavailable_in_time() {
    let server = OAuthServer::start();
    let dir = tempfile::tempdir().unwrap();
    let gw = introspecting(
        &server,
        dir.path(),
        RESOURCE_SECRET,
        &["--introspect-timeout", "1s"],
    );
    let c = client(&gw).await;
    let known = bearer(&server.issue("alice", SCOPE, 600));
    probe(&c, Some(&known)).await.unwrap();

    server.set_down(true);
    let s = probe(&c, Some(&bearer(&server.issue("bob", SCOPE, 600))))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert!(s.message().contains("503"), "{s:?}");
    server.set_down(false);

    // Hanging endpoint: the call ends (well before this test's bound).
    server.set_delay(Duration::from_secs(30));
    let slow = bearer(&server.issue("bob", SCOPE, 600));
    let s = tokio::time::timeout(Duration::from_secs(20), probe(&c, Some(&slow)))
        .await
        .expect("the call must not hang on a slow endpoint")
        .unwrap_err();
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert!(s.message().contains("did not answer within"), "{s:?}");
    // Meanwhile s2cs serves callers whose tokens it knows.
    probe(&c, Some(&known)).await.unwrap();

    server.set_delay(Duration::ZERO);
    probe(&c, Some(&slow)).await.unwrap();
}

/// The uid a test's short name stands for (uids have at least 16 characters).
fn long(uid: &str) -> String {
    format!("{uid}-0123456789abcdef")
}

/// req + hello + update as SciStream's client does, as one caller.
async fn create(c: &Client, who: &str, uid: &str, receiver: &str) -> Result<(), tonic::Status> {
    let mut rc = c.clone();
    let who_req = who.to_owned();
    let uid_req = long(uid);
    let pending = tokio::spawn(async move {
        rc.req(call(
            Request {
                uid: uid_req,
                role: "PROD".into(),
                num_conn: 1,
                rate: 0,
                protocol: String::new(),
            },
            Some(&who_req),
        ))
        .await
    });
    let h = c
        .clone()
        .hello(call(
            Hello {
                uid: long(uid),
                role: "PROD".into(),
                prod_listeners: vec![receiver.into()],
            },
            Some(who),
        ))
        .await;
    let r = pending.await.unwrap();
    r?;
    h?;
    update(c, who, uid, receiver).await
}

async fn update(c: &Client, who: &str, uid: &str, target: &str) -> Result<(), tonic::Status> {
    c.clone()
        .update(call(
            UpdateTargets {
                uid: long(uid),
                remote_listeners: vec![target.into()],
                role: "PROD".into(),
            },
            Some(who),
        ))
        .await
        .map(|_| ())
}

async fn release(c: &Client, who: &str, uid: &str) -> Result<(), tonic::Status> {
    c.clone()
        .release(call(
            Release {
                uid: long(uid),
                ..Default::default()
            },
            Some(who),
        ))
        .await
        .map(|_| ())
}

fn code(r: Result<(), tonic::Status>) -> (Code, String) {
    let s = r.unwrap_err();
    (s.code(), s.message().to_owned())
}

async fn wait_for_log(gw: &Gw, text: &str, count: usize) {
    for _ in 0..100 {
        if gw.log().matches(text).count() >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("'{text}' not logged {count} times:\n{}", gw.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_tokens_ownership_admins_and_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let alice = "alice-token-0123456789abcdef";
    let bob = "bob-token-0123456789abcdef00";
    let carol = "carol-token-0123456789abcdef";
    let tokens = private_file(
        dir.path(),
        "tokens",
        &format!("# identity token\nalice {alice}\nbob {bob}\ncarol {carol}\n"),
    );
    let allowed = private_file(dir.path(), "allowed", "alice\n");
    let gw = Gw::start(
        None,
        8,
        &[
            "--tokens-file",
            tokens.to_str().unwrap(),
            "--allow-identities",
            allowed.to_str().unwrap(),
            "--admins",
            "carol",
            "--hello-timeout",
            "3s",
        ],
    );
    let log = gw.log();
    assert!(
        log.contains("open relay"),
        "no --allow-targets is warned about: {log}"
    );
    assert!(!log.contains("AUTHENTICATION IS OFF"), "{log}");
    let c = client(&gw).await;

    create(&c, alice, "s-alice", "127.0.0.1:7001")
        .await
        .unwrap();
    // bob is authenticated but not allowed to create, nor to touch alice's session.
    let (k, m) = code(create(&c, bob, "s-bob", "127.0.0.1:7001").await);
    assert_eq!(k, Code::PermissionDenied, "{m}");
    assert!(m.contains("bob") && m.contains("--allow-identities"), "{m}");
    // Another identity's session is answered as none at all, owner unnamed.
    let (k, m) = code(update(&c, bob, "s-alice", "127.0.0.1:7002").await);
    assert_eq!(k, Code::NotFound, "{m}");
    assert!(!m.contains("alice"), "{m}");
    let (k, m) = code(release(&c, bob, "s-alice").await);
    assert_eq!(k, Code::NotFound);
    assert!(!m.contains("alice"), "{m}");
    // alice may change her own; the admin may release anything.
    update(&c, alice, "s-alice", "127.0.0.1:7003")
        .await
        .unwrap();
    release(&c, carol, "s-alice").await.unwrap();

    // Wrong token, no metadata.
    let (k, _) = code(release(&c, "wrong-token-0123456789abcdef", "x").await);
    assert_eq!(k, Code::Unauthenticated);
    let (k, _) = code(probe(&c, None).await);
    assert_eq!(k, Code::Unauthenticated);

    // SIGHUP re-reads both files: bob may create now, alice has a new token.
    let alice2 = "alice-new-token-0123456789ab";
    std::fs::write(
        &tokens,
        format!("alice {alice2}\nbob {bob}\ncarol {carol}\n"),
    )
    .unwrap();
    std::fs::write(&allowed, "alice\nbob\n").unwrap();
    gw.gw.signal(rustix::process::Signal::HUP);
    wait_for_log(&gw, "allowed identities re-read", 1).await;
    create(&c, bob, "s-bob", "127.0.0.1:7001").await.unwrap();
    let (k, _) = code(release(&c, alice, "s-bob").await);
    assert_eq!(k, Code::Unauthenticated, "the old token no longer works");
    let (k, _) = code(release(&c, alice2, "s-bob").await);
    assert_eq!(k, Code::NotFound, "the new one does, but it is bob's");
    release(&c, bob, "s-bob").await.unwrap();

    // A tokens file that turns unreadable by mistake keeps the tokens in use.
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o644)).unwrap();
    gw.gw.signal(rustix::process::Signal::HUP);
    wait_for_log(&gw, "keeping the previous static tokens", 1).await;
    probe(&c, Some(bob)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_authorization_metadata_harms_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let token = "good-token-0123456789abcdef";
    let tokens = private_file(dir.path(), "tokens", &format!("alice {token}\n"));
    let gw = Gw::start(None, 4, &["--tokens-file", tokens.to_str().unwrap()]);
    let c = client(&gw).await;

    // Long but within the header limit: refused by the length check.
    let (k, m) = code(probe(&c, Some(&"x".repeat(60_000))).await);
    assert_eq!(k, Code::Unauthenticated);
    assert!(m.contains("at most"), "{m}");
    // Not a token scheme we know.
    let (k, _) = code(probe(&c, Some("Basic YWxpY2U6cHc=")).await);
    assert_eq!(k, Code::Unauthenticated);
    // 1 MB of garbage: refused (by the HTTP/2 header limit) without harm.
    let garbage = "g".repeat(1 << 20);
    let big = probe(&client(&gw).await, Some(&garbage)).await;
    assert!(big.is_err(), "a 1 MB authorization header was accepted");
    // s2cs is still there for everyone.
    probe(&client(&gw).await, Some(token)).await.unwrap();
    probe(&c, Some(token)).await.unwrap();
    assert!(gw.gw.pid().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_outside_the_policy_are_refused() {
    let gw = Gw::start(
        None,
        4,
        &[
            "--allow-targets",
            "127.0.0.1:7000-7010,[::1]:7000",
            "--hello-timeout",
            "3s",
        ],
    );
    let log = gw.log();
    assert!(log.contains("AUTHENTICATION IS OFF"), "{log}");
    assert!(!log.contains("open relay"), "{log}");
    let c = client(&gw).await;
    let none = "INVALID_TOKEN";

    create(&c, none, "inside", "127.0.0.1:7005").await.unwrap();
    let (k, m) = code(update(&c, none, "inside", "127.0.0.2:7005").await);
    assert_eq!(k, Code::PermissionDenied, "{m}");
    assert!(
        m.contains("127.0.0.2:7005")
            && m.contains("127.0.0.1/32:7000-7010")
            && m.contains("receiver"),
        "{m}"
    );
    let (k, m) = code(update(&c, none, "inside", "127.0.0.1:22").await);
    assert_eq!(k, Code::PermissionDenied, "{m}");
    // The refused update left the session as it was.
    update(&c, none, "inside", "[::1]:7000").await.unwrap();
    release(&c, none, "inside").await.unwrap();
    // Every response line says that nobody was authenticated.
    wait_for_log(&gw, "NONE (unauthenticated)", 3).await;
}
