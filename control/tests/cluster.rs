//! Cluster mode, membership (issue 18, first step): nodes register in a
//! real etcd under a lease, see each other come and go, leave at once on a
//! graceful stop, disappear when killed, register again when etcd comes
//! back; a node that cannot reach etcd does not start, and says why.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use scistream_testkit::etcd::{Etcd, have_etcd};
use scistream_testkit::{Gw, bin};

const PREFIX: &str = "/scistream/gw/nodes/";

fn node(etcd: &Etcd, name: &str) -> Gw {
    node_with(etcd, name, "5s")
}

/// A node of cluster `gw`; `etcd_timeout` bounds each etcd call (long
/// enough for a new etcd leader to be elected when one dies).
fn node_with(etcd: &Etcd, name: &str, etcd_timeout: &str) -> Gw {
    Gw::start(
        None,
        16,
        &[
            "--insecure",
            "--cluster",
            "gw",
            "--etcd",
            &etcd.url(),
            "--node",
            name,
            "--etcd-lease-ttl",
            "2s",
            "--etcd-timeout",
            etcd_timeout,
            "--hello-timeout",
            "20s",
            "--metrics-addr",
            "127.0.0.1:0",
        ],
    )
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The node's Prometheus metrics, as text.
fn metrics_text(gw: &Gw) -> String {
    scistream_testkit::scrape(gw.metrics_addr())
}

fn registered(etcd: &Etcd) -> Vec<String> {
    etcd.get_prefix(PREFIX)
        .into_iter()
        .map(|(k, _)| k.trim_start_matches(PREFIX).to_owned())
        .collect()
}

#[test]
fn nodes_register_see_each_other_and_leave() {
    if !have_etcd("nodes_register_see_each_other_and_leave") {
        return;
    }
    let etcd = Etcd::start();
    let a = node(&etcd, "a");
    let b = node(&etcd, "b");
    wait_for("both nodes registered", Duration::from_secs(10), || {
        registered(&etcd) == ["a", "b"]
    });
    // Each record says where the node's control service is.
    let records = etcd.get_prefix(PREFIX);
    let a_record: serde_json::Value = serde_json::from_str(&records[0].1).unwrap();
    assert_eq!(a_record["node"], "a");
    let a_port = a.control().rsplit(':').next().unwrap().to_owned();
    assert!(
        a_record["control"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{a_port}")),
        "{a_record}"
    );
    // a sees b join (b registered after a's watch started).
    wait_for("a's log to show b joining", Duration::from_secs(10), || {
        a.log().contains("a node joined the cluster") && a.log().contains("node=b")
    });
    // a's metrics name it and count the live nodes.
    let metrics = metrics_text(&a);
    assert!(
        metrics.contains("scistream_cluster_node_info{cluster=\"gw\",node=\"a\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("scistream_cluster_nodes 2"), "{metrics}");

    // Killed: gone when its lease expires (2 s), and b says so.
    a.kill9();
    let killed = Instant::now();
    wait_for(
        "a's registration to expire",
        Duration::from_secs(10),
        || registered(&etcd) == ["b"],
    );
    assert!(
        killed.elapsed() >= Duration::from_millis(500),
        "expired by its lease, not at once"
    );
    wait_for("b's log to show a leaving", Duration::from_secs(5), || {
        b.log().contains("a node left the cluster")
    });
    // A node that comes back rejoins.
    let a = node(&etcd, "a");
    wait_for("a back", Duration::from_secs(10), || {
        registered(&etcd) == ["a", "b"]
    });
    drop(a);

    // Graceful stop: the lease is revoked, so the node leaves at once.
    let log = b.log();
    drop(b);
    assert!(registered(&etcd).is_empty(), "b left on stop:\n{log}");
}

#[test]
fn a_node_registers_again_when_etcd_comes_back() {
    if !have_etcd("a_node_registers_again_when_etcd_comes_back") {
        return;
    }
    let mut etcd = Etcd::start();
    let a = node(&etcd, "a");
    wait_for("a registered", Duration::from_secs(10), || {
        registered(&etcd) == ["a"]
    });
    etcd.kill();
    // Longer than the lease: when etcd returns, the old lease has expired.
    std::thread::sleep(Duration::from_secs(3));
    etcd.restart();
    wait_for("a registered again", Duration::from_secs(20), || {
        registered(&etcd) == ["a"]
    });
    wait_for("a's log to say so", Duration::from_secs(5), || {
        a.log().matches("registered in the cluster").count() >= 2
    });
    assert!(
        a.log().contains("lost the cluster registration"),
        "{}",
        a.log()
    );
}

#[test]
fn nodes_join_an_etcd_that_serves_tls_and_asks_for_client_certificates() {
    if !have_etcd("nodes_join_an_etcd_that_serves_tls_and_asks_for_client_certificates") {
        return;
    }
    let pki = scistream_testkit::Pki::new();
    let etcd = Etcd::start_tls(&pki);
    let tls = etcd.tls().unwrap().clone();
    let (ca, cert, key) = (
        tls.ca.display().to_string(),
        tls.client.0.display().to_string(),
        tls.client.1.display().to_string(),
    );
    let cluster_args = |name: &str| {
        vec![
            "--insecure".to_owned(),
            "--cluster".into(),
            "gw".into(),
            "--etcd".into(),
            etcd.url(),
            "--node".into(),
            name.into(),
            "--etcd-lease-ttl".into(),
            "2s".into(),
            "--etcd-ca".into(),
            ca.clone(),
        ]
    };
    let with_cert = |name: &str| {
        let mut a = cluster_args(name);
        a.extend([
            "--etcd-cert".into(),
            cert.clone(),
            "--etcd-key".into(),
            key.clone(),
        ]);
        a
    };
    let a_args = with_cert("a");
    let b_args = with_cert("b");
    let a = Gw::start(
        None,
        8,
        &a_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let b = Gw::start(
        None,
        8,
        &b_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    wait_for(
        "both nodes registered over TLS",
        Duration::from_secs(10),
        || registered(&etcd) == ["a", "b"],
    );
    wait_for(
        "a sees b through its TLS watch",
        Duration::from_secs(10),
        || a.log().contains("a node joined the cluster") && a.log().contains("node=b"),
    );
    // The lease is renewed over TLS: still registered after several TTLs.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(registered(&etcd), ["a", "b"], "{}", a.log());

    // A node without a client certificate is refused by etcd, and says so
    // without starting.
    let state = tempfile::tempdir().unwrap();
    let out = Command::new(bin("s2cs"))
        .args([
            "--port",
            "0",
            "--listener-ip",
            "127.0.0.1",
            "--etcd-timeout",
            "3s",
        ])
        .args(cluster_args("c"))
        .arg("--state-dir")
        .arg(state.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot join the cluster: etcd"), "{err}");
    assert!(err.contains("--etcd-cert and --etcd-key"), "{err}");
    assert!(!err.contains("Status {"), "no Debug text: {err}");
    eprintln!("s2cs without a client certificate said: {err}");
    assert_eq!(registered(&etcd), ["a", "b"]);
    drop((a, b));
}

#[test]
fn without_etcd_a_node_does_not_start_and_names_etcd() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let state = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = Command::new(bin("s2cs"))
        .args(["--insecure", "--port", "0", "--listener-ip", "127.0.0.1"])
        .args([
            "--cluster",
            "gw",
            "--node",
            "a",
            "--etcd",
            &url,
            "--etcd-timeout",
            "1s",
        ])
        .arg("--state-dir")
        .arg(state.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot join the cluster: etcd"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "bounded in time"
    );
}

#[test]
fn check_config_refuses_half_a_cluster_configuration() {
    for (args, want) in [
        (vec!["--etcd", "127.0.0.1:2379"], "--cluster"),
        (vec!["--cluster", "gw"], "--etcd"),
        (vec!["--cluster", "gw", "--etcd", "127.0.0.1"], "HOST:PORT"),
        (
            vec!["--cluster", "gw", "--etcd", "https://127.0.0.1:2379"],
            "--etcd-ca",
        ),
    ] {
        let out = Command::new(bin("s2cs"))
            .args(["--insecure", "--check-config", "--state-dir", "/tmp/unused"])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn quorum_lost_new_requests_are_unavailable_established_streams_go_on() {
    use scistream_testkit::{DigestReceiver, StreamSender, s2uc, s2uc_tunnel};
    if !have_etcd("quorum_lost_new_requests_are_unavailable_established_streams_go_on") {
        return;
    }
    let mut etcd = Etcd::cluster(3);
    // The HPC side is a cluster node; the instrument side a single gateway.
    // Killing etcd's leader costs an election: the bound covers it.
    let hpc = node_with(&etcd, "a", "10s");
    let inst = Gw::start(None, 4, &["--insecure"]);
    let receiver = DigestReceiver::start();
    let port = receiver.addr.port();
    let request = |hpc: &Gw| {
        s2uc(&[
            "inbound_request",
            "--insecure",
            "--s2cs",
            &hpc.control(),
            "--remote_ip",
            "127.0.0.1",
            "--receiver_ports",
            &port.to_string(),
            "--num_conn",
            "1",
            "--json",
        ])
    };
    let t = s2uc_tunnel(&hpc, &inst, None, "127.0.0.1", port, 1);
    let mut stream = StreamSender::open(&t.outbound[0], 11);
    stream.send(2 << 20);

    // One member of three lost: nothing noticeable.
    etcd.kill_member(0);
    let out = request(&hpc);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        hpc.log()
    );

    // Quorum lost: new requests fail, naming etcd, within a bound...
    etcd.kill_member(1);
    let started = Instant::now();
    let out = request(&hpc);
    let err =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a request succeeded without quorum");
    assert!(err.contains("UNAVAILABLE") && err.contains("etcd"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "bounded: {:?}",
        started.elapsed()
    );
    // ...and the established stream goes on, byte-exact.
    stream.send(2 << 20);
    let sent = stream.finish();
    assert_eq!(receiver.next(Duration::from_secs(30)), sent);

    // Members back: requests are served again.
    etcd.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = request(&hpc);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "requests not served again: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            hpc.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The other nodes dial a node at its control address and verify its
/// certificate by that address: a node whose certificate does not name it
/// does not start, and says what to change (it used to be found at the
/// first spread request, with advice meant for clients).
#[test]
fn a_node_whose_certificate_does_not_name_its_control_address_does_not_start() {
    if !have_etcd("a_node_whose_certificate_does_not_name_its_control_address_does_not_start") {
        return;
    }
    let etcd = Etcd::start();
    let pki = scistream_testkit::Pki::new();
    let run = |cert: &std::path::Path, key: &std::path::Path| {
        let state = tempfile::tempdir().unwrap();
        Command::new(bin("s2cs"))
            .args(["--port", "0", "--listener-ip", "127.0.0.1"])
            .args(["--cluster", "gw", "--node", "a", "--etcd", &etcd.url()])
            .arg("--server_crt")
            .arg(cert)
            .arg("--server_key")
            .arg(key)
            .args(["--data-tls", "off"])
            .arg("--state-dir")
            .arg(state.path())
            .output()
            .unwrap()
    };
    let (cert, key) = pki.gateway_for("named", &["localhost"]);
    let out = run(&cert, &key);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the other nodes reach this node at 127.0.0.1:"),
        "{err}"
    );
    assert!(err.contains("subjectAltName IP:127.0.0.1"), "{err}");
    assert!(err.contains("it names localhost"), "{err}");
    assert!(!err.contains("NotValidForName"), "no Debug text: {err}");
    assert!(registered(&etcd).is_empty(), "it did not register");

    // With the address in the certificate, the same node starts and joins.
    let (cert, key) = pki.gateway("good");
    let gw = Gw::start(
        Some((cert, key)),
        4,
        &[
            "--cluster",
            "gw",
            "--node",
            "a",
            "--etcd",
            &etcd.url(),
            "--data-tls",
            "off",
        ],
    );
    wait_for("the node registered", Duration::from_secs(10), || {
        registered(&etcd) == ["a"]
    });
    drop(gw);
}
