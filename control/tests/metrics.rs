//! The Prometheus endpoint: scraped over real HTTP from a live gateway
//! carrying known traffic, parsed, checked for names, types and values, and
//! checked that a released session leaves the metrics.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use scistream_testkit::{DigestReceiver, Gw, Pki, s2uc, s2uc_tunnel, send_stream};

/// One scrape: families' types, and every sample by its full series name.
struct Scrape {
    types: HashMap<String, String>,
    samples: HashMap<String, f64>,
    text: String,
}

impl Scrape {
    fn value(&self, series: &str) -> f64 {
        *self
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("no series {series} in\n{}", self.text))
    }

    fn has_uid(&self, uid: &str) -> bool {
        self.samples.keys().any(|k| k.contains(uid))
    }
}

fn scrape(addr: SocketAddr) -> Scrape {
    let response = scistream_testkit::scrape(addr);
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "no EOF marker:\n{body}");
    let mut types = HashMap::new();
    let mut helps = HashMap::new();
    let mut samples = HashMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, t) = rest.split_once(' ').unwrap();
            types.insert(name.to_owned(), t.to_owned());
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, h) = rest.split_once(' ').unwrap();
            helps.insert(name.to_owned(), h.to_owned());
        } else if line == "# EOF" || line.starts_with("# UNIT ") {
        } else {
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("not a sample: {line}"));
            let v: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line}"));
            samples.insert(series.to_owned(), v);
        }
    }
    for name in types.keys() {
        assert!(helps.contains_key(name), "{name} has no HELP");
    }
    Scrape {
        types,
        samples,
        text: body.to_owned(),
    }
}

fn metrics_addr(gw: &Gw) -> SocketAddr {
    gw.metrics_addr()
}

#[test]
fn metrics_show_live_sessions_calls_and_forget_released_sessions() {
    let pki = Pki::new();
    let hpc = Gw::start(
        Some(pki.gateway("hpc")),
        4,
        &["--metrics-addr", "127.0.0.1:0"],
    );
    let inst = Gw::start(Some(pki.gateway("inst")), 4, &[]);
    let addr = metrics_addr(&hpc);
    assert!(addr.ip().is_loopback());

    let before = scrape(addr);
    for (name, t) in [
        ("scistream_sessions", "gauge"),
        ("scistream_dataplane_restarts", "counter"),
        ("scistream_dataplane_up", "gauge"),
        ("scistream_session_bytes", "counter"),
        ("scistream_session_connections_open", "gauge"),
        ("scistream_session_connections", "counter"),
        ("scistream_session_connection_errors", "counter"),
        ("scistream_session_connections_rejected", "counter"),
    ] {
        assert_eq!(
            before.types.get(name).map(String::as_str),
            Some(t),
            "{name}:\n{}",
            before.text
        );
    }
    assert_eq!(
        before.value("scistream_sessions{phase=\"forwarding\"}"),
        0.0
    );
    assert_eq!(before.value("scistream_dataplane_up"), 1.0);
    assert_eq!(before.value("scistream_dataplane_restarts_total"), 0.0);

    // A tunnel carrying 16 MiB, and a call that fails.
    let receiver = DigestReceiver::start();
    let t = s2uc_tunnel(
        &hpc,
        &inst,
        Some(&pki.ca),
        "127.0.0.1",
        receiver.addr.port(),
        1,
    );
    let sent = 16u64 << 20;
    send_stream(&t.outbound[0], 1, sent);
    receiver.next(Duration::from_secs(30));
    let ca = pki.ca.to_str().unwrap();
    let control = hpc.control();
    let refused = s2uc(&[
        "release",
        "--s2cs",
        &control,
        "--server_cert",
        ca,
        "00000000-0000-0000-0000-000000000000",
    ]);
    assert!(!refused.status.success());

    let during = scrape(addr);
    for (name, t) in [
        ("scistream_control_calls", "counter"),
        ("scistream_control_call_duration_seconds", "histogram"),
        ("scistream_control_failures", "counter"),
    ] {
        assert_eq!(
            during.types.get(name).map(String::as_str),
            Some(t),
            "{name}"
        );
    }
    assert_eq!(
        during.value("scistream_sessions{phase=\"forwarding\"}"),
        1.0
    );
    let uid = &t.uid;
    // Sessions are labelled by tag: the uid (a credential) is in no series.
    assert!(!during.text.contains(uid.as_str()), "{}", during.text);
    let tag = hpc.tag(uid);
    let bytes = during.value(&format!(
        "scistream_session_bytes_total{{session=\"{tag}\",role=\"PROD\",direction=\"to_target\"}}"
    ));
    let off = (bytes - sent as f64).abs() / sent as f64;
    assert!(off < 0.03, "{bytes} bytes counted, {sent} sent");
    assert_eq!(
        during.value(&format!(
            "scistream_session_connections_total{{session=\"{tag}\",role=\"PROD\"}}"
        )),
        1.0
    );
    assert!(during.value("scistream_control_calls_total{rpc=\"req\",outcome=\"ok\"}") >= 1.0);
    assert!(during.value("scistream_control_calls_total{rpc=\"hello\",outcome=\"ok\"}") >= 1.0);
    assert_eq!(
        during.value("scistream_control_calls_total{rpc=\"release\",outcome=\"not_found\"}"),
        1.0
    );
    assert_eq!(
        during.value("scistream_control_failures_total{kind=\"not_found\"}"),
        1.0
    );
    let req_calls = during.value("scistream_control_call_duration_seconds_count{rpc=\"req\"}");
    assert!(req_calls >= 1.0);
    assert_eq!(
        during.value("scistream_control_call_duration_seconds_bucket{le=\"+Inf\",rpc=\"req\"}"),
        req_calls,
        "{}",
        during.text
    );

    // Released: the session's series are gone, the call counters stay.
    let released = s2uc(&["release", "--s2cs", &control, "--server_cert", ca, uid]);
    assert!(released.status.success(), "{released:?}");
    let after = scrape(addr);
    assert!(!after.has_uid(&tag), "{tag} still in\n{}", after.text);
    assert_eq!(after.value("scistream_sessions{phase=\"forwarding\"}"), 0.0);
    assert!(after.value("scistream_control_calls_total{rpc=\"release\",outcome=\"ok\"}") >= 1.0);
}

#[test]
fn metrics_are_off_by_default_and_a_taken_port_stops_the_start() {
    let pki = Pki::new();
    let hpc = Gw::start(Some(pki.gateway("hpc")), 2, &[]);
    assert!(!hpc.log().contains("metrics at http://"), "{}", hpc.log());

    // The port is taken: s2cs names the option and exits.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (crt, key) = pki.gateway("other");
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(scistream_testkit::bin("s2cs"))
        .args(["--port", "0", "--data-tls", "off", "--metrics-addr", &port])
        .arg("--server_crt")
        .arg(&crt)
        .arg("--server_key")
        .arg(&key)
        .arg("--state-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--metrics-addr") && err.contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );

    let out = std::process::Command::new(scistream_testkit::bin("s2cs"))
        .args(["--metrics-addr", "metrics.example:x", "--insecure"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--metrics-addr") && err.contains("IP:PORT"),
        "{err}"
    );
}
