//! A drop-in for SciStream 1.2 (issue 16), through the real binaries:
//! `s2cs` started with the original's flags, a gateway with only its
//! certificate and key, an `openssl req -x509` certificate as the trust
//! file, an outbound update to a gateway that cannot be verified, `s2uc`'s
//! text output parsed with patterns written for the original's, `--mock`
//! and `prod-req`, the token header as the original sends it, a secret
//! without an id, and SciStream's default rate not throttling a stream.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use regex::Regex;
use scistream_local::gateway::{GatewayOptions, LocalGateway};
use scistream_protocol::pb;
use scistream_testkit::{DigestReceiver, Gw, Pki, bin, port_range, s2uc, send_stream, strings};

/// Starts `s2cs` with exactly `args` (plus a port and a state directory)
/// and returns its first stdout line and, after stopping it, its stderr.
fn start_with(args: &[&str]) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("s2cs.log");
    let (first, last) = port_range(4);
    let mut child = Command::new(bin("s2cs"))
        .args(args)
        .args(["--port=0", &format!("--port_range={first}-{last}")])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    (line, std::fs::read_to_string(&log).unwrap_or_default())
}

#[test]
fn s2cs_starts_with_scistreams_own_flags() {
    let pki = Pki::new();
    let (crt, key) = pki.gateway("gw");
    let (crt, key) = (crt.to_str().unwrap(), key.to_str().unwrap());
    // How SciStream's docs and tools start it.
    let (line, log) = start_with(&[
        &format!("--server_crt={crt}"),
        &format!("--server_key={key}"),
        "--verbose",
        "--listener_ip=127.0.0.1",
        "--type=StunnelSubprocess",
    ]);
    assert!(line.starts_with("s2cs listening on"), "{line}\n{log}");
    assert!(
        log.contains("--type StunnelSubprocess") && log.contains("the data server is always s2ds"),
        "{log}"
    );
    assert!(
        log.contains("DEBUG"),
        "--verbose turned debug logging on: {log}"
    );
    // Fire's other spellings.
    for args in [
        vec![
            "--verbose=True",
            "-l",
            "127.0.0.1",
            "--ssl=False",
            "-t",
            "Haproxy",
        ],
        vec!["--v", "-l=127.0.0.1", "--ssl", "False", "--type", "nginx"],
        vec![
            "--v=True",
            "--listener_ip",
            "127.0.0.1",
            "--ssl=False",
            "--verbose=False",
        ],
    ] {
        let (line, log) = start_with(&args);
        assert!(
            line.starts_with("s2cs listening on"),
            "{args:?}: {line}\n{log}"
        );
        assert!(
            log.contains("INSECURE MODE"),
            "--ssl=False is --insecure: {log}"
        );
    }
    // A type SciStream never had is named as such.
    let out = Command::new(bin("s2cs"))
        .args(["--type", "Squid", "--insecure"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("StunnelSubprocess"));
    // --version names the protocol it speaks.
    let out = Command::new(bin("s2cs")).arg("--version").output().unwrap();
    let v = String::from_utf8_lossy(&out.stdout);
    assert!(
        v.contains("SciStream 1.2") && v.contains("scistream.Control"),
        "{v}"
    );
}

#[test]
fn a_client_secret_without_a_client_id_is_refused() {
    let pki = Pki::new();
    let (crt, key) = pki.gateway("gw");
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin("s2cs"))
        .args(["--client_secret", "s3cret", "--port", "0"])
        .arg("--server_crt")
        .arg(&crt)
        .arg("--server_key")
        .arg(&key)
        .arg("--state-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it started open: {err}");
    assert!(
        err.contains("--client_id") && !err.contains("s3cret"),
        "{err}"
    );
}

/// A gateway with only its certificate and key, as SciStream's start.
fn bare_gateway(name: &str, crt: &Path, key: &Path, dir: &Path, extra: &[&str]) -> LocalGateway {
    LocalGateway::start(&GatewayOptions {
        s2cs_bin: bin("s2cs"),
        listener_ip: IpAddr::from([127, 0, 0, 1]),
        port_range: port_range(8),
        tls: Some((crt.to_owned(), key.to_owned())),
        state_dir: dir.join(format!("{name}-state")),
        log: Some(dir.join(format!("{name}.log"))),
        extra_args: extra
            .iter()
            .map(|s| s.to_string())
            .chain(["--drain-timeout=1s".to_owned()])
            .collect(),
    })
    .unwrap()
}

/// `s2uc` inbound then outbound request, returning the outbound listener.
fn tunnel(hpc: &str, hpc_trust: &Path, inst: &str, inst_trust: &Path, receiver: u16) -> String {
    let inbound = scistream_testkit::s2uc_json(&[
        "inbound_request",
        "--s2cs",
        hpc,
        "--server_cert",
        hpc_trust.to_str().unwrap(),
        "--remote_ip",
        "127.0.0.1",
        "--receiver_ports",
        &receiver.to_string(),
        "--num_conn",
        "1",
    ]);
    let uid = inbound["uid"].as_str().unwrap().to_owned();
    let listeners = strings(&inbound, "listeners").join(",");
    let outbound = scistream_testkit::s2uc_json(&[
        "outbound_request",
        "--s2cs",
        inst,
        "--server_cert",
        inst_trust.to_str().unwrap(),
        "--num_conn",
        "1",
        &uid,
        &listeners,
    ]);
    strings(&outbound, "listeners")[0].clone()
}

#[test]
fn an_inbound_gateway_with_only_its_certificate_and_key_carries_a_tunnel() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = pki.gateway("hpc");
    let hpc = bare_gateway("hpc", &crt, &key, dir.path(), &[]);
    // The outbound side has the right trust.
    let inst = Gw::start(Some(pki.gateway("inst")), 4, &[]);
    let receiver = DigestReceiver::start();
    let entry = tunnel(
        &hpc.control(),
        &pki.ca,
        &inst.control(),
        &pki.ca,
        receiver.addr.port(),
    );
    let sent = send_stream(&entry, 11, 4 << 20);
    assert_eq!(receiver.next(Duration::from_secs(30)), sent);
}

/// `openssl req -x509 -newkey …`: OpenSSL 3 marks the certificate CA:TRUE.
fn openssl_self_signed(dir: &Path, name: &str) -> Option<(PathBuf, PathBuf)> {
    let (crt, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "30",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .ok()?;
    out.status.success().then_some((crt, key))
}

#[test]
fn an_openssl_x509_certificate_is_accepted_by_s2uc_and_on_the_data_channel() {
    let dir = tempfile::tempdir().unwrap();
    let (Some((hpc_crt, hpc_key)), Some((inst_crt, inst_key))) = (
        openssl_self_signed(dir.path(), "hpc"),
        openssl_self_signed(dir.path(), "inst"),
    ) else {
        eprintln!(
            "SKIP an_openssl_x509_certificate_is_accepted: the openssl command is not available"
        );
        return;
    };
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&hpc_crt)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("CA:TRUE"),
        "the case under test: a self-signed certificate marked CA:TRUE"
    );
    let hpc = bare_gateway("hpc", &hpc_crt, &hpc_key, dir.path(), &[]);
    // The outbound gateway trusts the inbound gateway's certificate itself.
    let inst = bare_gateway(
        "inst",
        &inst_crt,
        &inst_key,
        dir.path(),
        &[&format!("--peer-ca={}", hpc_crt.display())],
    );
    let receiver = DigestReceiver::start();
    let entry = tunnel(
        &hpc.control(),
        &hpc_crt,
        &inst.control(),
        &inst_crt,
        receiver.addr.port(),
    );
    let sent = send_stream(&entry, 12, 4 << 20);
    assert_eq!(receiver.next(Duration::from_secs(30)), sent);
    // A pinned certificate still has to carry the name dialled: one made
    // for another host, dialled by address, is refused.
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "30",
        ])
        .args([
            "-subj",
            "/CN=other.example",
            "-addext",
            "subjectAltName=DNS:other.example",
        ])
        .arg("-keyout")
        .arg(dir.path().join("other.key"))
        .arg("-out")
        .arg(dir.path().join("other.crt"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let other = bare_gateway(
        "other",
        &dir.path().join("other.crt"),
        &dir.path().join("other.key"),
        dir.path(),
        &[],
    );
    let out = s2uc(&[
        "list",
        "--s2cs",
        &other.addr.to_string(),
        "--server_cert",
        dir.path().join("other.crt").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a pinned certificate was accepted for a name it does not carry"
    );
    assert!(
        err.contains("does not name the host or address it was reached at"),
        "{err}"
    );
}

#[test]
fn an_outbound_update_to_an_unverifiable_inbound_gateway_is_refused_with_the_reason() {
    let pki = Pki::new();
    let hpc = Gw::start(Some(pki.gateway("hpc")), 4, &[]);
    let stranger = pki.stranger_ca();
    let inst = Gw::start(
        Some(pki.gateway("inst")),
        4,
        &["--peer-ca", stranger.to_str().unwrap()],
    );
    let ca = pki.ca.to_str().unwrap();
    let (listeners, err) = outbound_attempt(&pki, &hpc, &inst);
    assert!(
        err.contains("FAILED_PRECONDITION")
            && err.contains(&listeners)
            && err.contains("a CA that the trust file does not hold")
            && err.contains("--peer-ca"),
        "{err}"
    );
    assert!(
        !err.contains("UnknownIssuer"),
        "words, not Debug text: {err}"
    );
    // The right uid but a gateway that does not know the session: named too.
    let inst_ok = Gw::start(Some(pki.gateway("inst2")), 4, &[]);
    let out = s2uc(&[
        "outbound_request",
        "--s2cs",
        &inst_ok.control(),
        "--server_cert",
        ca,
        "--num_conn",
        "1",
        "9d4b2f6e-1c3a-4e5f-8a7b-0c1d2e3f4a5b",
        &listeners,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("FAILED_PRECONDITION") && err.contains("refuses"),
        "{err}"
    );
}

#[test]
fn text_output_parses_with_patterns_written_for_scistreams_client() {
    let hpc = Gw::start(None, 4, &[]);
    let inst = Gw::start(None, 4, &[]);
    let receiver = DigestReceiver::start();
    let out = s2uc(&[
        "inbound_request",
        "--s2cs",
        &hpc.control(),
        "--insecure",
        "--remote_ip",
        "127.0.0.1",
        "--receiver_ports",
        &receiver.addr.port().to_string(),
        "--num_conn",
        "2",
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    // What scripts written for SciStream's s2uc look for.
    let header = Regex::new(r"(?m)^uid; s2cs; access_token; role$").unwrap();
    let line = Regex::new(r"(?m)^([0-9a-f-]{36}) (\S+) (\S+) (PROD|CONS)$").unwrap();
    let listener = Regex::new(r#"(?m)^listeners: "([^"]+)"$"#).unwrap();
    let prod = Regex::new(r#"(?m)^prod_listeners: "([^"]+)"$"#).unwrap();
    let list = Regex::new(r"(?m)^Listeners: \[((?:'[^']+'(?:, )?)+)\]$").unwrap();
    assert!(header.is_match(&text), "{text}");
    let l = line.captures(&text).unwrap();
    let uid = l[1].to_owned();
    assert_eq!(&l[2], hpc.control().as_str());
    assert_eq!(
        &l[3], "INVALID_TOKEN",
        "no token: the placeholder SciStream sends"
    );
    assert_eq!(&l[4], "PROD");
    assert!(text.contains("Hello message sent successfully"), "{text}");
    let listeners: Vec<String> = listener
        .captures_iter(&text)
        .map(|c| c[1].to_owned())
        .collect();
    assert_eq!(listeners.len(), 2, "{text}");
    let receivers: Vec<String> = prod.captures_iter(&text).map(|c| c[1].to_owned()).collect();
    assert_eq!(
        receivers,
        vec![format!("127.0.0.1:{}", receiver.addr.port())]
    );
    let from_list: Vec<String> = list.captures(&text).unwrap()[1]
        .split(", ")
        .map(|s| s.trim_matches('\'').to_owned())
        .collect();
    assert_eq!(from_list, listeners);
    // What the script parsed is what works: the outbound side with it.
    let out = s2uc(&[
        "outbound_request",
        "--s2cs",
        &inst.control(),
        "--insecure",
        "--num_conn",
        "2",
        &uid,
        &from_list.join(","),
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    let l = line.captures(&text).unwrap();
    assert_eq!((&l[1], &l[4]), (uid.as_str(), "CONS"));
    let entry = list.captures(&text).unwrap()[1]
        .split(", ")
        .next()
        .unwrap()
        .trim_matches('\'')
        .to_owned();
    let sent = send_stream(&entry, 13, 1 << 20);
    assert_eq!(receiver.next(Duration::from_secs(30)), sent);
}

#[test]
fn mock_and_prod_req_behave_as_in_scistreams_tutorials() {
    let hpc = Gw::start(None, 8, &["--hello-timeout=20s"]);
    // --mock True: SciStream's fixed uid.
    let out = s2uc(&[
        "inbound_request",
        "--s2cs",
        &hpc.control(),
        "--insecure",
        "--remote_ip",
        "127.0.0.1",
        "--receiver_ports",
        "9",
        "--num_conn",
        "1",
        "--mock",
        "True",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("4f8583bc-a4d3-11ee-9fd6-034d1fcbd7c3 "),
        "{text}"
    );
    assert!(
        s2uc(&[
            "release",
            "--s2cs",
            &hpc.control(),
            "--insecure",
            "4f8583bc-a4d3-11ee-9fd6-034d1fcbd7c3"
        ])
        .status
        .success()
    );
    let out = s2uc(&[
        "inbound_request",
        "--s2cs",
        &hpc.control(),
        "--insecure",
        "--remote_ip",
        "127.0.0.1",
        "--receiver_ports",
        "9",
        "--num_conn",
        "1",
        "--mock",
        "False",
    ]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("4f8583bc-a4d3-11ee-9fd6-034d1fcbd7c3"));
    assert!(
        !s2uc(&[
            "inbound_request",
            "--insecure",
            "--remote_ip",
            "x",
            "--receiver_ports",
            "9",
            "--mock",
            "maybe"
        ])
        .status
        .success()
    );

    // prod-req waits for the application's hello, then prints the answer.
    let mut child = Command::new(bin("s2uc"))
        .args([
            "prod-req",
            "--s2cs",
            &hpc.control(),
            "--insecure",
            "--num_conn",
            "2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut head = String::new();
    let uid = loop {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "prod-req printed no uid: {head}"
        );
        head.push_str(&line);
        if line.ends_with(" PROD\n") {
            break line.split(' ').next().unwrap().to_owned();
        }
    };
    let hello = s2uc(&[
        "hello",
        "--s2cs",
        &hpc.control(),
        "--insecure",
        &uid,
        "--role",
        "PROD",
        "--prod-listeners",
        "127.0.0.1:7001",
    ]);
    assert!(
        hello.status.success(),
        "{}",
        String::from_utf8_lossy(&hello.stderr)
    );
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(child.wait().unwrap().success(), "{head}{rest}");
    assert!(
        head.starts_with("uid; s2cs; access_token; role\n"),
        "{head}"
    );
    let listener = Regex::new(r#"(?m)^listeners: "127\.0\.0\.1:\d+"$"#).unwrap();
    assert_eq!(listener.find_iter(&rest).count(), 2, "{rest}");
    assert!(
        rest.contains("prod_listeners: \"127.0.0.1:7001\""),
        "{rest}"
    );
    assert!(
        Regex::new(r"(?m)^\['127\.0\.0\.1:\d+', '127\.0\.0\.1:\d+'\]$")
            .unwrap()
            .is_match(&rest),
        "{rest}"
    );
}

/// A control server that records the metadata of the calls it gets.
#[derive(Default, Clone)]
struct Recorder {
    seen: Arc<Mutex<Vec<tonic::metadata::MetadataMap>>>,
}

#[tonic::async_trait]
impl pb::control_server::Control for Recorder {
    async fn req(
        &self,
        r: tonic::Request<pb::Request>,
    ) -> Result<tonic::Response<pb::Response>, tonic::Status> {
        self.seen.lock().unwrap().push(r.metadata().clone());
        Err(tonic::Status::unavailable("recorded"))
    }
    async fn update(
        &self,
        r: tonic::Request<pb::UpdateTargets>,
    ) -> Result<tonic::Response<pb::Response>, tonic::Status> {
        self.seen.lock().unwrap().push(r.metadata().clone());
        Err(tonic::Status::unavailable("recorded"))
    }
    async fn release(
        &self,
        r: tonic::Request<pb::Release>,
    ) -> Result<tonic::Response<pb::Response>, tonic::Status> {
        self.seen.lock().unwrap().push(r.metadata().clone());
        Err(tonic::Status::unavailable("recorded"))
    }
    async fn hello(
        &self,
        r: tonic::Request<pb::Hello>,
    ) -> Result<tonic::Response<pb::AppResponse>, tonic::Status> {
        self.seen.lock().unwrap().push(r.metadata().clone());
        Err(tonic::Status::unavailable("recorded"))
    }
    async fn list(
        &self,
        _: tonic::Request<pb::ListRequest>,
    ) -> Result<tonic::Response<pb::SessionList>, tonic::Status> {
        Err(tonic::Status::unimplemented("no"))
    }
    async fn status(
        &self,
        _: tonic::Request<pb::StatusRequest>,
    ) -> Result<tonic::Response<pb::SessionList>, tonic::Status> {
        Err(tonic::Status::unimplemented("no"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_goes_out_bare_as_scistreams_client_sends_it() {
    let recorder = Recorder::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = recorder.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(pb::control_server::ControlServer::new(server))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    // A stored token for a scope.
    let home = tempfile::tempdir().unwrap();
    let store = home.path().join("scistream");
    std::fs::create_dir_all(&store).unwrap();
    let token = "AgZ3token-from-globus-0123456789";
    std::fs::write(
        store.join("tokens.json"),
        format!(
            r#"{{"test-scope": {{"access_token": "{token}", "refresh_token": null, "expires_at": 0,
               "token_endpoint": "https://127.0.0.1:9/token", "revocation_endpoint": null,
               "client_id": "c", "identity": null}}}}"#
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        store.join("tokens.json"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin("s2uc"))
            .env("XDG_CONFIG_HOME", home.path())
            .args([
                "inbound_request",
                "--s2cs",
                &addr.to_string(),
                "--insecure",
                "--scope",
                "test-scope",
            ])
            .args(["--remote_ip", "127.0.0.1", "--receiver_ports", "9"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!out.status.success(), "the recorder refuses every call");
    assert!(!String::from_utf8_lossy(&out.stdout).contains(token));
    assert!(!String::from_utf8_lossy(&out.stderr).contains(token));
    let seen = recorder.seen.lock().unwrap().clone();
    assert!(!seen.is_empty());
    for md in &seen {
        assert_eq!(
            md.get("authorization").unwrap().to_str().unwrap(),
            token,
            "the bare token"
        );
        assert!(
            md.get(scistream_protocol::CLIENT_HEADER).is_some(),
            "our client marks its calls"
        );
    }
}

/// Seconds to move `bytes` through `entry` to `receiver`.
fn time_stream(entry: &str, receiver: &DigestReceiver, bytes: u64) -> f64 {
    let started = Instant::now();
    let sent = send_stream(entry, 21, bytes);
    assert_eq!(receiver.next(Duration::from_secs(120)), sent);
    started.elapsed().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scistreams_default_rate_is_not_enforced_and_a_deliberate_one_is() {
    let hpc = Gw::start(None, 8, &[]);
    let inst = Gw::start(None, 8, &[]);
    let receiver = DigestReceiver::start();
    // As SciStream's own client: rate 10000 on every req, no mark.
    let uid = "5b2e6f3c-cf2b-11ef-9a4e-0242ac120002";
    let calls = |gw: &Gw, role: &str, targets: Vec<String>| {
        let addr = gw.control();
        let role = role.to_owned();
        async move {
            let mut c = pb::control_client::ControlClient::connect(format!("http://{addr}"))
                .await
                .unwrap();
            let mut rc = c.clone();
            let r = role.clone();
            let req = tokio::spawn(async move {
                rc.req(pb::Request {
                    uid: uid.into(),
                    role: r,
                    num_conn: 1,
                    rate: 10000,
                    protocol: String::new(),
                })
                .await
            });
            tokio::time::sleep(Duration::from_millis(200)).await;
            c.hello(pb::Hello {
                uid: uid.into(),
                prod_listeners: targets.clone(),
                role: "PROD".into(),
            })
            .await
            .unwrap();
            let listeners = req.await.unwrap().unwrap().into_inner().listeners;
            c.update(pb::UpdateTargets {
                uid: uid.into(),
                remote_listeners: targets,
                role,
            })
            .await
            .unwrap();
            listeners
        }
    };
    let inbound = calls(
        &hpc,
        "PROD",
        vec![format!("127.0.0.1:{}", receiver.addr.port())],
    )
    .await;
    let outbound = calls(&inst, "CONS", inbound).await;
    let secs = tokio::task::spawn_blocking({
        let entry = outbound[0].clone();
        let receiver = receiver;
        move || (time_stream(&entry, &receiver, 16 << 20), receiver)
    })
    .await
    .unwrap();
    let (secs, receiver) = secs;
    let mbps = (16u64 << 20) as f64 * 8.0 / secs / 1e6;
    assert!(
        mbps > 50.0,
        "SciStream's default rate throttled the stream to {mbps:.1} Mbit/s"
    );
    assert!(
        hpc.log().contains("not enforced (--unmarked-rates ignore)"),
        "{}",
        hpc.log()
    );

    // Through s2uc, --rate 16000 (16 Mbit/s) is enforced.
    let t = scistream_testkit::s2uc_json(&[
        "inbound_request",
        "--s2cs",
        &hpc.control(),
        "--insecure",
        "--remote_ip",
        "127.0.0.1",
        "--receiver_ports",
        &receiver.addr.port().to_string(),
        "--num_conn",
        "1",
        "--rate",
        "16000",
    ]);
    let uid = t["uid"].as_str().unwrap().to_owned();
    let inbound = strings(&t, "listeners").join(",");
    let t = scistream_testkit::s2uc_json(&[
        "outbound_request",
        "--s2cs",
        &inst.control(),
        "--insecure",
        "--num_conn",
        "1",
        "--rate",
        "16000",
        &uid,
        &inbound,
    ]);
    let entry = strings(&t, "listeners")[0].clone();
    let (secs, _) =
        tokio::task::spawn_blocking(move || (time_stream(&entry, &receiver, 4 << 20), ()))
            .await
            .unwrap();
    let mbps = (4u64 << 20) as f64 * 8.0 / secs / 1e6;
    assert!(mbps < 32.0, "a 16 Mbit/s cap let {mbps:.1} Mbit/s through");
}

/// The outbound update of a tunnel whose inbound gateway's data-channel
/// certificate is wrong: `s2uc outbound_request`'s error output.
fn outbound_to_inbound_with_data_cert(
    pki: &Pki,
    data: (std::path::PathBuf, std::path::PathBuf),
) -> String {
    let (cert, key) = (data.0.display().to_string(), data.1.display().to_string());
    let hpc = Gw::start(
        Some(pki.gateway("hpc")),
        4,
        &["--data-cert", &cert, "--data-key", &key],
    );
    let inst = Gw::start(Some(pki.gateway("inst")), 4, &[]);
    outbound_error(pki, &hpc, &inst)
}

/// A tunnel from `inst` to `hpc` whose outbound request must fail: the
/// inbound listeners (joined) and `s2uc outbound_request`'s error output.
fn outbound_attempt(pki: &Pki, hpc: &Gw, inst: &Gw) -> (String, String) {
    let ca = pki.ca.to_str().unwrap();
    let inbound = scistream_testkit::s2uc_json(&[
        "inbound_request",
        "--s2cs",
        &hpc.control(),
        "--server_cert",
        ca,
        "--remote_ip",
        "127.0.0.1",
        "--receiver_ports",
        "9",
        "--num_conn",
        "1",
    ]);
    let uid = inbound["uid"].as_str().unwrap();
    let listeners = strings(&inbound, "listeners").join(",");
    let out = s2uc(&[
        "outbound_request",
        "--s2cs",
        &inst.control(),
        "--server_cert",
        ca,
        "--num_conn",
        "1",
        uid,
        &listeners,
    ]);
    assert!(!out.status.success());
    (listeners, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// [`outbound_attempt`]'s error output alone.
fn outbound_error(pki: &Pki, hpc: &Gw, inst: &Gw) -> String {
    outbound_attempt(pki, hpc, inst).1
}

/// Each way an inbound gateway's data certificate can be wrong is named
/// in words at the outbound request, with the gateway it concerns: an
/// expired certificate, and one that names another host.
#[test]
fn an_expired_or_misnamed_inbound_data_certificate_is_named_at_the_outbound_request() {
    let pki = Pki::new();
    let err = outbound_to_inbound_with_data_cert(&pki, pki.gateway_expired("old"));
    assert!(
        err.contains("FAILED_PRECONDITION")
            && err.contains("its certificate has expired: renew it"),
        "{err}"
    );
    assert!(!err.contains("Expired"), "words, not Debug text: {err}");

    let err =
        outbound_to_inbound_with_data_cert(&pki, pki.gateway_for("misnamed", &["other.example"]));
    assert!(
        err.contains("FAILED_PRECONDITION")
            && err.contains("does not name the host or address it was reached at")
            && err.contains("asked for 127.0.0.1; it names other.example"),
        "{err}"
    );
    assert!(
        !err.contains("DnsName") && !err.contains("IpAddress"),
        "{err}"
    );
}

/// The other way round: the outbound gateway's own certificate has
/// expired, and the inbound gateway asks for it (--require-client-cert):
/// the outbound request says the inbound gateway refused this gateway's
/// certificate as expired, and what to renew.
#[test]
fn an_expired_outbound_certificate_refused_by_the_inbound_gateway_says_renew_it() {
    let pki = Pki::new();
    let hpc = Gw::start(Some(pki.gateway("hpc")), 4, &["--require-client-cert"]);
    let (cert, key) = pki.gateway_expired("old-inst");
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let inst = Gw::start(
        Some(pki.gateway("inst")),
        4,
        &["--data-cert", &cert, "--data-key", &key],
    );
    let err = outbound_error(&pki, &hpc, &inst);
    assert!(
        err.contains("FAILED_PRECONDITION")
            && err.contains("the inbound gateway refused this gateway's certificate")
            && err.contains("certificate_expired")
            && err.contains("renew this gateway's --data-cert"),
        "{err}"
    );
}
