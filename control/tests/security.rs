//! What a local user or a remote caller can do to a gateway (issue 14),
//! each as a regression test against real processes: the state on disk,
//! the handoff socket, uids in logs and metrics, targets at the gateway
//! itself, recovery under a stricter policy, uid ownership, forged log
//! lines, over-long target lists, weak uids. A local attacker is played by
//! `nobody` (uid 65534): this test binary runs itself as that user.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use scistream_client::{Auth, Trust};
use scistream_protocol::pb::{Hello, Release, Request, UpdateTargets};
use scistream_testkit::grpc::{open, update};
use scistream_testkit::{DigestReceiver, Gw, Pki, bin, have_root, s2uc, s2uc_tunnel, send_stream};
use tonic::Code;

const NOBODY: u32 = 65534;

/// Set when this binary runs as another user to try the handoff socket.
const PROBE_ENV: &str = "SECURITY_TEST_PROBE_SOCKET";

/// Not a test of its own: when [`PROBE_ENV`] names a socket, connects to
/// it and prints what happened (run as `nobody` by the tests below).
#[test]
fn probe_helper() {
    let Some(path) = std::env::var_os(PROBE_ENV) else {
        return;
    };
    match scistream_protocol::handoff::connect(Path::new(&path)) {
        Err(e) => println!("PROBE connect failed: {e}"),
        Ok(fd) => {
            let _ = rustix::net::sockopt::set_socket_timeout(
                &fd,
                rustix::net::sockopt::Timeout::Recv,
                Some(Duration::from_secs(5)),
            );
            let mut r = scistream_protocol::handoff::Receiver::default();
            match r.recv::<scistream_protocol::handoff::FromDataPlane>(&fd) {
                Ok(Some((m, _))) => println!("PROBE got {m:?}"),
                Ok(None) => println!("PROBE closed without a word"),
                Err(e) => println!("PROBE recv failed: {e}"),
            }
        }
    }
}

/// Runs [`probe_helper`] as `uid` against `socket`; its report.
fn probe_as(uid: u32, socket: &Path) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "probe_helper", "--nocapture", "--test-threads=1"])
        .env(PROBE_ENV, socket)
        .uid(uid)
        .gid(uid)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.find("PROBE").map(|at| &l[at..]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `cat FILE` as `uid`: whether it could read it.
fn readable_by(uid: u32, file: &Path) -> bool {
    Command::new("cat")
        .arg(file)
        .uid(uid)
        .gid(uid)
        .output()
        .unwrap()
        .status
        .success()
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o777
}

#[test]
fn state_on_disk_is_private_even_under_umask_000() {
    if !have_root("state_on_disk_is_private_even_under_umask_000") {
        return;
    }
    let pki = Pki::new();
    let work = tempfile::tempdir().unwrap();
    // The attacker may walk into the work directory, so only the state
    // directory's own protection stands between them and the state.
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let wrapper = work.path().join("s2cs-umask-000");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\numask 000\nexec {} \"$@\"\n",
            bin("s2cs").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = work.path().join("state");
    let (cert, key) = pki.gateway("hpc");
    let gw =
        scistream_local::gateway::LocalGateway::start(&scistream_local::gateway::GatewayOptions {
            s2cs_bin: wrapper,
            listener_ip: "127.0.0.1".parse().unwrap(),
            port_range: scistream_testkit::port_range(4),
            tls: Some((cert, key)),
            state_dir: state.clone(),
            log: Some(work.path().join("s2cs.log")),
            extra_args: vec![format!("--peer-ca={}", pki.ca.display())],
        })
        .unwrap();
    assert_eq!(mode(&state), 0o700, "the state directory");
    for f in ["sessions.redb", "s2ds.sock", "tag.key", "s2cs.lock"] {
        assert_eq!(mode(&state.join(f)), 0o600, "{f}");
        assert_eq!(std::fs::metadata(state.join(f)).unwrap().uid(), 0);
    }
    assert!(!readable_by(NOBODY, &state.join("sessions.redb")));
    assert!(!readable_by(NOBODY, &state.join("tag.key")));
    let probe = probe_as(NOBODY, &state.join("s2ds.sock"));
    assert!(probe.contains("connect failed"), "{probe}");
    // The owner can (the same probe as root connects; s2ds serves one
    // controller at a time, so it waits behind s2cs).
    let probe = probe_as(0, &state.join("s2ds.sock"));
    assert!(
        probe.starts_with("PROBE") && !probe.contains("connect failed"),
        "{probe}"
    );
    drop(gw);
}

#[test]
fn the_data_plane_refuses_a_controller_of_another_user() {
    if !have_root("the_data_plane_refuses_a_controller_of_another_user") {
        return;
    }
    // An s2ds on a socket an admin left open to everyone.
    let work = tempfile::tempdir().unwrap();
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = work.path().join("s2ds.sock");
    let log = std::fs::File::create(work.path().join("s2ds.log")).unwrap();
    let _s2ds = KillOnDrop(
        Command::new(bin("s2ds"))
            .arg("--control-socket")
            .arg(&socket)
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "s2ds did not make its socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(mode(&socket), 0o600, "s2ds makes its socket private");
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let probe = probe_as(NOBODY, &socket);
    assert!(probe.contains("closed without a word"), "{probe}");
    let text = std::fs::read_to_string(work.path().join("s2ds.log")).unwrap();
    assert!(
        text.contains("control connection refused") && text.contains("uid 65534"),
        "{text}"
    );
}

/// Kills a child process when dropped (also when an assertion fails).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_data_plane_of_another_user_is_never_adopted() {
    if !have_root("a_data_plane_of_another_user_is_never_adopted") {
        return;
    }
    // nobody runs an s2ds of its own, and its socket ends up where s2cs
    // looks for the one it left running (root moves it there: nobody
    // cannot write into the state directory).
    let work = tempfile::tempdir().unwrap();
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let fake_socket = work.path().join("fake.sock");
    let _fake = KillOnDrop(
        Command::new(bin("s2ds"))
            .arg("--control-socket")
            .arg(&fake_socket)
            .stderr(std::process::Stdio::null())
            .uid(NOBODY)
            .gid(NOBODY)
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fake_socket.exists() {
        assert!(
            Instant::now() < deadline,
            "the fake s2ds did not make its socket"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let state = work.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::rename(&fake_socket, state.join("s2ds.sock")).unwrap();
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let gw =
        scistream_local::gateway::LocalGateway::start(&scistream_local::gateway::GatewayOptions {
            s2cs_bin: bin("s2cs"),
            listener_ip: "127.0.0.1".parse().unwrap(),
            port_range: scistream_testkit::port_range(4),
            tls: None,
            state_dir: state.clone(),
            log: Some(work.path().join("s2cs.log")),
            extra_args: vec!["--drain-timeout=1s".into()],
        })
        .unwrap();
    let log = std::fs::read_to_string(work.path().join("s2cs.log")).unwrap();
    assert!(
        log.contains("not adopting the data plane") && log.contains("uid 65534"),
        "{log}"
    );
    assert!(
        log.contains("data plane ready"),
        "it started its own: {log}"
    );
    drop(gw);
}

#[test]
fn a_state_directory_another_user_owns_or_can_write_is_refused() {
    if !have_root("a_state_directory_another_user_owns_or_can_write_is_refused") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    for (setup, expected) in [
        ("foreign", "owned by uid 65534"),
        ("writable", "writable by everyone"),
    ] {
        let state = work.path().join(setup);
        std::fs::create_dir(&state).unwrap();
        match setup {
            "foreign" => std::os::unix::fs::chown(&state, Some(NOBODY), Some(NOBODY)).unwrap(),
            _ => std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap(),
        }
        let out = Command::new(bin("s2cs"))
            .args(["--insecure", "--port", "0", "--control-ip", "127.0.0.1"])
            .arg("--state-dir")
            .arg(&state)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{setup}: {err}");
        assert!(err.contains(expected), "{setup}: {err}");
    }
}

/// Every line of both gateways' logs (s2cs and s2ds, at debug level) and
/// every metric, after a tunnel, refused probes and failed calls: the uid
/// is in none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uids_are_in_no_log_line_and_no_metric() {
    let pki = Pki::new();
    let hpc = Gw::start(Some(pki.gateway("hpc")), 4, &["-v", "--metrics-addr=0"]);
    let inst = Gw::start(Some(pki.gateway("inst")), 4, &["-v"]);
    let receiver = DigestReceiver::start();
    let t = s2uc_tunnel(
        &hpc,
        &inst,
        Some(&pki.ca),
        "127.0.0.1",
        receiver.addr.port(),
        1,
    );
    let sent = send_stream(&t.outbound[0], 3, 1 << 20);
    assert_eq!(receiver.next(Duration::from_secs(30)), sent);
    // Refused probes on the inbound listener: garbage, and a TLS-less
    // client presenting the right uid (the listener wants TLS).
    for _ in 0..30 {
        let mut s = TcpStream::connect(&t.inbound[0]).unwrap();
        let _ = s.write_all(format!("S2PA\x01\x00\x00\x00\x24{}", t.uid).as_bytes());
        let _ = s.read(&mut [0u8; 16]);
    }
    // Calls that fail, naming the uid.
    let ca = pki.ca.to_str().unwrap();
    for args in [
        vec![
            "outbound_request",
            "--s2cs",
            &inst.control(),
            "--server_cert",
            ca,
            "--num_conn",
            "1",
            &t.uid,
            "127.0.0.1:9",
        ],
        vec![
            "status",
            "--s2cs",
            &hpc.control(),
            "--server_cert",
            ca,
            &t.uid,
        ],
    ] {
        let _ = s2uc(&args);
    }
    let metrics = scistream_testkit::scrape(hpc.metrics_addr());
    assert!(
        metrics.contains("scistream_session_bytes_total"),
        "{metrics}"
    );
    assert!(!metrics.contains(&t.uid), "{metrics}");
    // Status shows the tag that the lines use.
    let status = hpc.status(Some(Path::new(ca)), &t.uid);
    let tag = hpc.tag(&t.uid);
    assert_eq!(status["tag"], tag.as_str(), "{status}");
    let wait_until = Instant::now() + Duration::from_secs(10);
    while !hpc.log().contains("data connection refused") {
        assert!(Instant::now() < wait_until, "{}", hpc.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // 30 refused probes in well under 10 s: at most 20 lines one by one.
    let lines = hpc.log().matches("data connection refused").count();
    assert!((1..=20).contains(&lines), "{lines} refusal lines");
    for (name, log) in [("hpc", hpc.log()), ("inst", inst.log())] {
        assert!(
            log.contains(&format!("{tag}/")) || name == "inst",
            "{name} names the session by tag:\n{log}"
        );
        for (i, line) in log.lines().enumerate() {
            assert!(
                !line.contains(&t.uid),
                "{name} line {i} holds the uid: {line}"
            );
        }
    }
}

/// The uid a test's short name stands for (uids have at least 16 characters).
fn long(uid: &str) -> String {
    format!("{uid}-0123456789abcdef")
}

async fn grpc(gw: &Gw, pki: Option<&Pki>, token: Option<&str>) -> scistream_client::Connection {
    let trust = match pki {
        Some(p) => Trust::Root(p.ca.clone()),
        None => Trust::Insecure,
    };
    let auth = match token {
        Some(t) => Auth::bearer(t).unwrap(),
        None => Auth::none(),
    };
    scistream_client::connect(&gw.control(), &trust, auth)
        .await
        .unwrap()
}

fn denied(r: Result<(), tonic::Status>, code: Code, text: &str) {
    let e = r.unwrap_err();
    assert_eq!(e.code(), code, "{e:?}");
    assert!(
        e.message().contains(text),
        "{:?} lacks {text:?}",
        e.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_itself_is_never_a_target_and_no_loop_forms() {
    let gw = Gw::start(None, 8, &["--metrics-addr=0", "--hello-timeout=5s"]);
    let c = grpc(&gw, None, None).await;
    let control = gw.gw.addr.port();
    let metrics = gw.metrics_addr().port();
    let uid = long("self-target");
    open(&c, &uid, "PROD", 1, &["127.0.0.1:9"]).await.unwrap();
    for (target, why) in [
        (format!("127.0.0.1:{control}"), "own control port"),
        (format!("127.0.0.1:{metrics}"), "own metrics port"),
        (format!("127.0.0.2:{metrics}"), "own metrics port"),
        (format!("0.0.0.0:{metrics}"), "unspecified"),
        (format!("[::ffff:127.0.0.1]:{metrics}"), "own metrics port"),
        ("224.0.0.1:9".to_owned(), "multicast"),
    ] {
        denied(
            update(&c, &uid, "PROD", &[&target]).await,
            Code::PermissionDenied,
            why,
        );
    }
    // A CONS session aimed at its own listener, and at another session's.
    let cons = long("loop");
    let own = open(&c, &cons, "CONS", 1, &[]).await.unwrap();
    denied(
        update(&c, &cons, "CONS", &[&own[0]]).await,
        Code::PermissionDenied,
        "this very session",
    );
    let other = open(&c, &long("other"), "PROD", 1, &["127.0.0.1:9"])
        .await
        .unwrap();
    denied(
        update(&c, &cons, "CONS", &[&other[0]]).await,
        Code::PermissionDenied,
        "data port range",
    );
    // Nothing was set up: no connection loops through s2ds.
    assert!(!gw.log().contains("forwarding"), "{}", gw.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_ends_on_one_gateway_need_an_explicit_rule() {
    let receiver = DigestReceiver::start();
    // A rule that names loopback (not a wildcard) lets this gateway's own
    // data ports be targets.
    let gw = Gw::start(None, 4, &["--allow-targets=127.0.0.1/32"]);
    let c = grpc(&gw, None, None).await;
    let uid = scistream_client::tunnel::new_uid();
    let receivers = format!("127.0.0.1:{}", receiver.addr.port());
    let inbound = open(&c, &uid, "PROD", 1, &[&receivers]).await.unwrap();
    update(&c, &uid, "PROD", &[&receivers]).await.unwrap();
    let outbound = open(&c, &uid, "CONS", 1, &[]).await.unwrap();
    update(&c, &uid, "CONS", &[&inbound[0]]).await.unwrap();
    let sent = send_stream(&outbound[0], 5, 1 << 20);
    assert_eq!(receiver.next(Duration::from_secs(30)), sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_session_outside_a_stricter_policy_is_released() {
    let receiver = DigestReceiver::start();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let range = scistream_testkit::port_range(4);
    let start = |extra: &[&str]| {
        let mut args: Vec<String> = vec![
            "--state-dir".into(),
            state.display().to_string(),
            "--drain-timeout=1s".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        scistream_local::gateway::LocalGateway::start(&scistream_local::gateway::GatewayOptions {
            s2cs_bin: bin("s2cs"),
            listener_ip: "127.0.0.1".parse().unwrap(),
            port_range: range,
            tls: None,
            state_dir: state.clone(),
            log: Some(dir.path().join(format!("s2cs-{}.log", extra.len()))),
            extra_args: args,
        })
        .unwrap()
    };
    let gw = start(&[]);
    let c = scistream_client::connect(&gw.control(), &Trust::Insecure, Auth::none())
        .await
        .unwrap();
    let uid = scistream_client::tunnel::new_uid();
    let target = format!("127.0.0.1:{}", receiver.addr.port());
    let mut rc = c.client.clone();
    let (u1, u2) = (uid.clone(), uid.clone());
    let pending = tokio::spawn(async move {
        rc.req(Request {
            uid: u1,
            role: "PROD".into(),
            num_conn: 1,
            rate: 0,
            protocol: String::new(),
        })
        .await
    });
    c.client
        .clone()
        .hello(Hello {
            uid: u2,
            role: "PROD".into(),
            prod_listeners: vec![target.clone()],
        })
        .await
        .unwrap();
    pending.await.unwrap().unwrap();
    c.client
        .clone()
        .update(UpdateTargets {
            uid: uid.clone(),
            remote_listeners: vec![target.clone()],
            role: "PROD".into(),
        })
        .await
        .unwrap();
    drop(gw);
    // Back with a policy that no longer allows the receiver.
    let gw = start(&["--allow-targets=127.0.0.1:1-1024"]);
    let log = std::fs::read_to_string(dir.path().join("s2cs-1.log")).unwrap();
    assert!(
        log.contains("no longer passes this gateway's policy")
            && log.contains("outside this gateway's target policy"),
        "{log}"
    );
    let c = scistream_client::connect(&gw.control(), &Trust::Insecure, Auth::none())
        .await
        .unwrap();
    let e = c
        .client
        .clone()
        .release(Release {
            uid,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    // Its port is free again.
    assert!(std::net::TcpListener::bind(("127.0.0.1", range.0)).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uid_belongs_to_its_first_user_and_update_without_role_picks_theirs() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        "alice alice-token-0123456789abcdef\nbob bob-token-0123456789abcdef00\n",
    )
    .unwrap();
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
    let gw = Gw::start(
        None,
        8,
        &[
            "--tokens-file",
            tokens.to_str().unwrap(),
            "--hello-timeout=5s",
        ],
    );
    let alice = grpc(&gw, None, Some("alice-token-0123456789abcdef")).await;
    let bob = grpc(&gw, None, Some("bob-token-0123456789abcdef00")).await;
    let uid = scistream_client::tunnel::new_uid();
    open(&alice, &uid, "PROD", 1, &["127.0.0.1:9"])
        .await
        .unwrap();
    // bob cannot take the other end of alice's uid...
    let e = open(&bob, &uid, "CONS", 1, &[]).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("another identity"), "{e:?}");
    // ...nor release it.
    let e = bob
        .client
        .clone()
        .release(Release {
            uid: uid.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    // As for a uid nobody holds: nothing about alice's session is told.
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(!e.message().contains("alice"), "{e:?}");
    // alice's update without a role (as SciStream's client sends it) works.
    update(&alice, &uid, "", &["127.0.0.1:9"]).await.unwrap();
    alice
        .client
        .clone()
        .release(Release {
            uid,
            ..Default::default()
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_cannot_forge_a_log_line() {
    let gw = Gw::start(None, 4, &["--hello-timeout=5s"]);
    let c = grpc(&gw, None, None).await;
    let uid = long("forger");
    open(&c, &uid, "PROD", 1, &["127.0.0.1:9"]).await.unwrap();
    let forged = "x\n2026-12-01T00:00:00.000000Z  INFO call{rpc=\"release\"}: ok FORGED\u{1b}[2K";
    let e = update(&c, &uid, "PROD", &[forged]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gw.log().contains("call failed") {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = gw.log();
    assert!(log.contains("FORGED"), "{log}");
    for line in log.lines() {
        assert!(
            !line.starts_with("2026-12-01T00:00:00.000000Z"),
            "forged: {line}"
        );
        assert!(!line.contains('\u{1b}'), "escape sequence in {line:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlong_target_list_is_refused_before_any_name_is_resolved() {
    let gw = Gw::start(None, 4, &["--hello-timeout=5s"]);
    let c = grpc(&gw, None, None).await;
    let uid = long("many-targets");
    open(&c, &uid, "PROD", 2, &["127.0.0.1:9"]).await.unwrap();
    let many: Vec<String> = (0..10_000)
        .map(|i| format!("host-{i}.localhost:9"))
        .collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    denied(
        update(&c, &uid, "PROD", &refs).await,
        Code::InvalidArgument,
        "at most 2",
    );
    // And ownership comes first: another caller learns nothing about the list.
    assert!(!gw.log().contains("cannot resolve"), "{}", gw.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_uids_are_refused_and_weak_ones_need_the_peers_certificate() {
    let pki = Pki::new();
    let hpc = Gw::start(Some(pki.gateway("hpc")), 4, &["--hello-timeout=5s"]);
    let inst = Gw::start(Some(pki.gateway("inst")), 4, &["--hello-timeout=5s"]);
    let c = grpc(&hpc, Some(&pki), None).await;
    let e = open(&c, "short-uid", "PROD", 1, &["127.0.0.1:9"])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("at least 16"), "{e:?}");

    // A time-based uid, as SciStream's own client makes them.
    let receiver = DigestReceiver::start();
    let uid = "5b2e6f3c-cf2b-11ef-9a4e-0242ac120002";
    let target = format!("127.0.0.1:{}", receiver.addr.port());
    let inbound = open(&c, uid, "PROD", 1, &[&target]).await.unwrap();
    update(&c, uid, "PROD", &[&target]).await.unwrap();
    // Our outbound gateway presents its certificate: the tunnel works.
    let out = scistream_testkit::s2uc_json(&[
        "outbound_request",
        "--s2cs",
        &inst.control(),
        "--server_cert",
        pki.ca.to_str().unwrap(),
        "--num_conn",
        "1",
        uid,
        &inbound[0],
    ]);
    let entry = scistream_testkit::strings(&out, "listeners")[0].clone();
    let sent = send_stream(&entry, 8, 1 << 20);
    assert_eq!(receiver.next(Duration::from_secs(30)), sent);
    // Someone who knows the uid but has no certificate the peer CA signed
    // does not get past the handshake.
    assert!(
        tls_preamble_refused(&inbound[0], &pki.ca, uid),
        "a client without a certificate was let in"
    );

    // An instrument gateway whose certificate comes from another CA (of the
    // same name, as two sites' `openssl req` CAs often are): the user is
    // told which certificate was refused, why one was asked for, and which
    // --peer-ca to change; the inbound gateway's log says the same.
    let stranger = Pki::new();
    let foreign = Gw::start(
        Some(stranger.gateway("foreign")),
        4,
        &["--peer-ca", pki.ca.to_str().unwrap(), "--hello-timeout=5s"],
    );
    let out = s2uc(&[
        "outbound_request",
        "--s2cs",
        &foreign.control(),
        "--server_cert",
        stranger.ca.to_str().unwrap(),
        "--num_conn",
        "1",
        uid,
        &inbound[0],
    ]);
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{said}");
    for words in [
        "refused this gateway's certificate (subject",
        "issued by",
        "uid is not random",
        "--peer-ca",
    ] {
        assert!(said.contains(words), "{words:?} missing from: {said}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !hpc
        .log()
        .contains("the outbound gateway's certificate (subject")
    {
        assert!(Instant::now() < deadline, "{}", hpc.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        hpc.log()
            .contains("add the CA that issued it to this gateway's --peer-ca")
    );

    // A gateway that refuses weak uids says so.
    let strict = Gw::start(
        Some(pki.gateway("strict")),
        4,
        &["--weak-uids=refuse", "--hello-timeout=5s"],
    );
    let c = grpc(&strict, Some(&pki), None).await;
    let e = open(&c, uid, "PROD", 1, &["127.0.0.1:9"])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("--weak-uids refuse"), "{e:?}");
}

/// A TLS client (trusting `ca`, no certificate of its own) that presents
/// `uid` on `addr`: true when it is refused (handshake or preamble).
fn tls_preamble_refused(addr: &str, ca: &Path, uid: &str) -> bool {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"scistream-data/1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let preamble = scistream_protocol::preamble::Preamble {
        flags: scistream_protocol::preamble::FLAG_TLS,
        conn_index: 0,
        uid: uid.into(),
        origin: None,
    }
    .encode();
    if tls.write_all(&preamble).and_then(|()| tls.flush()).is_err() {
        return true;
    }
    let mut answer = [0u8; 1];
    !matches!(tls.read(&mut answer), Ok(1) if answer[0] == scistream_protocol::preamble::ACCEPTED)
}

/// Another identity's session and a uid nobody holds get the same answer to
/// release, update and status: NOT_FOUND in the same words (the tag aside),
/// no owner named. A req for it is still refused (PERMISSION_DENIED), since a
/// req must fail somehow, but without naming the owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_owner_learns_nothing_more_than_for_a_uid_nobody_holds() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        "alice alice-token-0123456789abcdef\nbob bob-token-0123456789abcdef00\n",
    )
    .unwrap();
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
    let gw = Gw::start(None, 8, &["--tokens-file", tokens.to_str().unwrap()]);
    let alice = grpc(&gw, None, Some("alice-token-0123456789abcdef")).await;
    let bob = grpc(&gw, None, Some("bob-token-0123456789abcdef00")).await;
    let held = scistream_client::tunnel::new_uid();
    let nobodys = scistream_client::tunnel::new_uid();
    open(&alice, &held, "PROD", 1, &["127.0.0.1:9"])
        .await
        .unwrap();
    update(&alice, &held, "PROD", &["127.0.0.1:9"])
        .await
        .unwrap();
    // Each uid has its own tag; the rest of the words must not differ.
    let answer = |r: Result<(), tonic::Status>, _uid: &str| {
        let e = r.unwrap_err();
        let m = e.message();
        let untagged = match m.find("(tag ") {
            Some(i) => {
                let end = m[i..].find(')').map_or(m.len(), |j| i + j);
                format!("{}(tag TAG{}", &m[..i], &m[end..])
            }
            None => m.to_owned(),
        };
        (e.code(), untagged)
    };
    let release = |uid: String| {
        let mut c = bob.client.clone();
        async move {
            c.release(Release {
                uid,
                ..Default::default()
            })
            .await
            .map(drop)
        }
    };
    let status = |uid: String| {
        let mut c = bob.client.clone();
        async move {
            c.status(scistream_protocol::pb::StatusRequest { uid })
                .await
                .map(drop)
        }
    };
    let a = answer(release(held.clone()).await, &held);
    let b = answer(release(nobodys.clone()).await, &nobodys);
    assert_eq!(a, b);
    assert_eq!(a.0, Code::NotFound);
    let a = answer(
        update(&bob, &held, "PROD", &["127.0.0.1:9"])
            .await
            .map(drop),
        &held,
    );
    let b = answer(
        update(&bob, &nobodys, "PROD", &["127.0.0.1:9"])
            .await
            .map(drop),
        &nobodys,
    );
    assert_eq!(a, b);
    let a = answer(status(held.clone()).await, &held);
    let b = answer(status(nobodys.clone()).await, &nobodys);
    assert_eq!(a, b);
    for (_, m) in [&a, &b] {
        assert!(!m.contains("alice"), "{m}");
    }
    // alice's session is untouched.
    let s = scistream_client::tunnel::status(&alice, &held)
        .await
        .unwrap();
    assert_eq!(s[0].phase, "forwarding");
}
