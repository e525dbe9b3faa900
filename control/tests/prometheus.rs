//! The monitoring an operator installs from `deploy/`: the alert rules pass
//! `promtool check rules` and their unit tests (`promtool test rules`), and a
//! real Prometheus (Debian's `prometheus`) scrapes a real gateway carrying a
//! tunnel: the target is up, the rules load healthy, the session's bytes
//! arrive, and every query of the Grafana dashboard runs without error and
//! returns data where the tunnel made some. Skips with the reason when
//! Prometheus is not installed.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use scistream_testkit::{DigestReceiver, Gw, Pki, s2uc_tunnel, send_stream};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn have(program: &str, test: &str) -> bool {
    match Command::new(program).arg("--version").output() {
        Ok(o) if o.status.success() => true,
        _ => {
            eprintln!(
                "SKIP {test}: {program} is not installed (Debian: apt-get install prometheus)"
            );
            false
        }
    }
}

#[test]
fn the_alert_rules_check_and_pass_their_unit_tests() {
    if !have(
        "promtool",
        "the_alert_rules_check_and_pass_their_unit_tests",
    ) {
        return;
    }
    let dir = deploy().join("prometheus");
    for args in [
        ["check", "rules", "scistream-alerts.yml"],
        ["test", "rules", "scistream-alerts.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(target: std::net::SocketAddr) -> Prometheus {
        Prometheus::scraping(&[target], |rules| rules)
    }

    /// Scrapes `targets` every second, with the deployed rules as `edit`
    /// leaves them (a test shortens an alert's `for:`; its expression is
    /// the deployed one).
    fn scraping(
        targets: &[std::net::SocketAddr],
        edit: impl FnOnce(String) -> String,
    ) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let rules =
            std::fs::read_to_string(deploy().join("prometheus/scistream-alerts.yml")).unwrap();
        std::fs::write(dir.path().join("scistream-alerts.yml"), edit(rules)).unwrap();
        let config = dir.path().join("prometheus.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [scistream-alerts.yml]\nscrape_configs:\n  - job_name: scistream\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Prometheus {
            child,
            port,
            _dir: dir,
        }
    }

    /// GET `path` from Prometheus's HTTP API: the JSON body.
    fn get(&self, path: &str) -> Option<serde_json::Value> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let body = text.split_once("\r\n\r\n")?.1;
        serde_json::from_str(body).ok()
    }

    fn query(&self, expr: &str) -> serde_json::Value {
        self.get(&format!("/api/v1/query?query={}", urlish(expr)))
            .unwrap_or_else(|| panic!("no answer to {expr}"))
    }

    /// Waits until `expr` returns at least one series.
    fn wait_for(&self, expr: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(v) = self.get(&format!("/api/v1/query?query={}", urlish(expr))) {
                if v["data"]["result"]
                    .as_array()
                    .is_some_and(|r| !r.is_empty())
                {
                    return v;
                }
            }
            assert!(Instant::now() < deadline, "{expr} never returned data");
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

fn urlish(expr: &str) -> String {
    expr.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn a_real_prometheus_scrapes_a_gateway_and_the_dashboard_queries_run() {
    let test = "a_real_prometheus_scrapes_a_gateway_and_the_dashboard_queries_run";
    if !have("prometheus", test) {
        return;
    }
    let pki = Pki::new();
    let hpc = Gw::start(Some(pki.gateway("hpc")), 4, &["--metrics-addr=0"]);
    let inst = Gw::start(Some(pki.gateway("inst")), 4, &[]);
    let prom = Prometheus::start(hpc.metrics_addr());

    // A tunnel with traffic, so the session series exist.
    let receiver = DigestReceiver::start();
    let t = s2uc_tunnel(
        &hpc,
        &inst,
        Some(&pki.ca),
        "127.0.0.1",
        receiver.addr.port(),
        1,
    );
    let sent = send_stream(&t.outbound[0], 3, 8 << 20);
    assert_eq!(receiver.next(Duration::from_secs(60)), sent);

    let up = prom.wait_for("up{job=\"scistream\"} == 1");
    assert_eq!(up["data"]["result"][0]["value"][1], "1", "{up}");
    let bytes = prom.wait_for("scistream_session_bytes_total{direction=\"to_target\"} > 0");
    let session = bytes["data"]["result"][0]["metric"]["session"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(session.len(), 12, "sessions are named by tag: {bytes}");

    // The rules loaded, healthy, none firing for a healthy gateway.
    let rules = prom.get("/api/v1/rules").unwrap();
    let groups = rules["data"]["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 3, "{rules}");
    for g in groups {
        for r in g["rules"].as_array().unwrap() {
            assert_eq!(r["health"], "ok", "{r}");
        }
    }
    let firing = prom.get("/api/v1/alerts").unwrap();
    assert!(
        !firing.to_string().contains("ScistreamDataPlaneDown"),
        "{firing}"
    );

    // Rates need two scrapes of a series.
    prom.wait_for("count_over_time(scistream_control_calls_total[1m]) >= 2");
    prom.wait_for("count_over_time(scistream_session_bytes_total[1m]) >= 2");

    // Every dashboard query is valid PromQL against the real series.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy().join("grafana/scistream.json")).unwrap(),
    )
    .unwrap();
    let mut with_data = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        let expr = panel["targets"][0]["expr"].as_str().unwrap();
        let v = prom.query(expr);
        assert_eq!(v["status"], "success", "{}: {expr}: {v}", panel["title"]);
        if v["data"]["result"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
        {
            with_data += 1;
        }
    }
    assert!(
        with_data >= 4,
        "only {with_data} dashboard panels have data"
    );
}

/// Three cluster nodes on a real etcd, scraped by a real Prometheus: the
/// cluster series are there, no alert fires while all three live, and
/// killing a node fires `ScistreamClusterNodeLost` (its deployed
/// expression; `for:` shortened from 2m to 5s for the test).
#[test]
fn killing_a_cluster_node_fires_the_node_lost_alert() {
    use scistream_testkit::etcd::{Etcd, have_etcd};
    let test = "killing_a_cluster_node_fires_the_node_lost_alert";
    if !have("prometheus", test) || !have_etcd(test) {
        return;
    }
    let etcd = Etcd::start();
    let url = etcd.url();
    let node = |name: &str| {
        let args = [
            "--cluster",
            "hpc",
            "--etcd",
            &url,
            "--node",
            name,
            "--etcd-lease-ttl",
            "2s",
            "--metrics-addr=0",
        ];
        Gw::start(None, 4, &args)
    };
    let nodes = [node("a"), node("b"), node("c")];
    let targets: Vec<_> = nodes.iter().map(Gw::metrics_addr).collect();
    let prom = Prometheus::scraping(&targets, |rules| {
        let at = rules.find("alert: ScistreamClusterNodeLost").unwrap();
        let (head, tail) = rules.split_at(at);
        format!("{head}{}", tail.replacen("for: 2m", "for: 5s", 1))
    });
    let all = prom.wait_for(
        "max by (cluster) (scistream_cluster_nodes * on (instance) group_left (cluster) scistream_cluster_node_info) == 3",
    );
    assert_eq!(
        all["data"]["result"][0]["metric"]["cluster"], "hpc",
        "{all}"
    );
    prom.wait_for("count(scistream_cluster_registered == 1) == 3");
    prom.wait_for("scistream_data_ports_capacity == 4");
    std::thread::sleep(Duration::from_secs(3));
    let alerts = prom.get("/api/v1/alerts").unwrap();
    assert!(!alerts.to_string().contains("ScistreamCluster"), "{alerts}");

    nodes[2].kill9();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let alerts = prom.get("/api/v1/alerts").unwrap();
        let firing = alerts["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| {
                a["labels"]["alertname"] == "ScistreamClusterNodeLost"
                    && a["labels"]["cluster"] == "hpc"
                    && a["state"] == "firing"
            });
        if firing {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the node-lost alert never fired: {alerts}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
