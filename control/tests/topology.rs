//! A real multi-host topology, built by the test from network namespaces
//! and veth links:
//!
//! ```text
//!  instrument ── inst-gw ══ WAN (tbf 2 Gbit/s) ══ hpc-gw ── hpc
//!  10.77.1.2   10.77.1.1 │ 10.77.2.1   10.77.2.2 │ 10.77.3.1  10.77.3.2
//! ```
//!
//! The gateways do not route (ip_forward stays 0), so the instrument
//! cannot reach the HPC service (asserted); the tunnel does (asserted:
//! s2bench's sink verifies every byte). s2uc runs where its users sit: the
//! inbound request on the HPC host, the outbound one on the instrument.
//! Throughput is reported, not asserted. Skipped, with the reason, where
//! namespaces cannot be made.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use scistream_testkit::{Pki, bin, have_root};

struct Topology {
    tag: String,
    nets: Vec<String>,
}

impl Topology {
    fn ns(&self, short: &str) -> String {
        format!("{short}-{}", self.tag)
    }

    fn create(test: &str) -> Option<Topology> {
        if !have_root(test) {
            return None;
        }
        let tag = format!("{}", std::process::id() % 100000);
        let t = Topology {
            tag: tag.clone(),
            nets: ["ins", "igw", "hgw", "hpc"]
                .iter()
                .map(|n| format!("{n}-{tag}"))
                .collect(),
        };
        let ip = |args: &[&str]| -> Result<(), String> {
            let o = Command::new("ip")
                .args(args)
                .output()
                .map_err(|e| format!("cannot run ip: {e}"))?;
            if o.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "ip {} failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&o.stderr).trim()
                ))
            }
        };
        let build = || -> Result<(), String> {
            for n in &t.nets {
                ip(&["netns", "add", n])?;
                ip(&["-n", n, "link", "set", "lo", "up"])?;
            }
            let links = [("ins", "igw", 1), ("igw", "hgw", 2), ("hgw", "hpc", 3)];
            for (a, b, net) in links {
                let (na, nb) = (t.ns(a), t.ns(b));
                let (ia, ib) = (format!("v{net}a{tag}"), format!("v{net}b{tag}"));
                let (ia, ib) = (&ia[..ia.len().min(15)], &ib[..ib.len().min(15)]);
                ip(&[
                    "link", "add", ia, "netns", &na, "type", "veth", "peer", "name", ib, "netns",
                    &nb,
                ])?;
                // The gateway end gets .1 on the edges; on the WAN, igw is .1 and hgw .2.
                let (addr_a, addr_b) = match net {
                    1 => ("10.77.1.2/24", "10.77.1.1/24"),
                    2 => ("10.77.2.1/24", "10.77.2.2/24"),
                    _ => ("10.77.3.1/24", "10.77.3.2/24"),
                };
                ip(&["-n", &na, "addr", "add", addr_a, "dev", ia])?;
                ip(&["-n", &nb, "addr", "add", addr_b, "dev", ib])?;
                ip(&["-n", &na, "link", "set", ia, "up"])?;
                ip(&["-n", &nb, "link", "set", ib, "up"])?;
                if net == 2 {
                    // The WAN: 2 Gbit/s token bucket on both directions.
                    for (n, i) in [(&na, ia), (&nb, ib)] {
                        let o = Command::new("ip")
                            .args([
                                "netns", "exec", n, "tc", "qdisc", "add", "dev", i, "root", "tbf",
                                "rate", "2gbit", "burst", "2mb", "latency", "20ms",
                            ])
                            .output()
                            .map_err(|e| format!("cannot run tc: {e}"))?;
                        if !o.status.success() {
                            return Err(format!(
                                "tc tbf failed: {}",
                                String::from_utf8_lossy(&o.stderr).trim()
                            ));
                        }
                    }
                }
            }
            // The end hosts know a default route to their gateway; the gateways do not forward.
            ip(&[
                "-n",
                &t.ns("ins"),
                "route",
                "add",
                "default",
                "via",
                "10.77.1.1",
            ])?;
            ip(&[
                "-n",
                &t.ns("hpc"),
                "route",
                "add",
                "default",
                "via",
                "10.77.3.1",
            ])?;
            Ok(())
        };
        match build() {
            Ok(()) => Some(t),
            Err(e) => {
                eprintln!("SKIP {test}: {e}");
                None
            }
        }
    }

    fn cmd(&self, short: &str, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(short)]).arg(program);
        c
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for n in &self.nets {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.0.id() as i32) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::TERM);
        }
        std::thread::sleep(Duration::from_millis(200));
        if let Some(pid) = rustix::process::Pid::from_raw(self.0.id() as i32) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        let _ = self.0.wait();
    }
}

/// Starts s2cs in a namespace; waits for its "listening" line.
fn s2cs(
    t: &Topology,
    short: &str,
    listener_ip: &str,
    cert: &(std::path::PathBuf, std::path::PathBuf),
    pki: &Pki,
    dir: &std::path::Path,
) -> Proc {
    use std::os::unix::process::CommandExt;
    let mut c = t.cmd(short, &bin("s2cs"));
    c.args([
        "--port",
        "5000",
        "--control-ip",
        "0.0.0.0",
        "--listener-ip",
        listener_ip,
        "--port-range",
        "5100-5110",
    ])
    .arg("--server_crt")
    .arg(&cert.0)
    .arg("--server_key")
    .arg(&cert.1)
    .arg("--peer-ca")
    .arg(&pki.ca)
    .arg("--state-dir")
    .arg(dir.join(short))
    .stdout(Stdio::piped())
    .stderr(std::fs::File::create(dir.join(format!("{short}.log"))).unwrap())
    .process_group(0);
    let mut child = c.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.starts_with("s2cs listening"),
        "{short}: {line}\n{}",
        std::fs::read_to_string(dir.join(format!("{short}.log"))).unwrap_or_default()
    );
    Proc(child)
}

fn json(out: Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_tunnel_across_a_rate_limited_wan_between_separate_hosts() {
    let test = "a_tunnel_across_a_rate_limited_wan_between_separate_hosts";
    let Some(t) = Topology::create(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let igw_cert = pki.gateway_for("igw", &["10.77.1.1", "10.77.2.1"]);
    let hgw_cert = pki.gateway_for("hgw", &["10.77.2.2", "10.77.3.1"]);
    let _igw = s2cs(&t, "igw", "10.77.1.1", &igw_cert, &pki, dir.path());
    let _hgw = s2cs(&t, "hgw", "10.77.2.2", &hgw_cert, &pki, dir.path());
    let report = dir.path().join("sink.json");
    let sink = Proc(
        t.cmd("hpc", &bin("s2bench"))
            .args([
                "sink",
                "--listen",
                "10.77.3.2:7001",
                "--conns",
                "2",
                "-q",
                "--json",
            ])
            .arg(&report)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    // No direct path from the instrument to the HPC service.
    let direct = t
        .cmd("ins", &bin("s2bench"))
        .args([
            "source",
            "--connect",
            "10.77.3.2:7001",
            "--bytes",
            "1MiB",
            "-q",
        ])
        .output()
        .unwrap();
    assert!(
        !direct.status.success(),
        "the instrument reached the HPC service directly"
    );

    // Use case 1 on the HPC host, use case 2 on the instrument.
    let ca = pki.ca.to_str().unwrap();
    let inbound = json(
        t.cmd("hpc", &bin("s2uc"))
            .args([
                "inbound_request",
                "--s2cs",
                "10.77.3.1:5000",
                "--server_cert",
                ca,
                "--remote_ip",
                "10.77.3.2",
                "--receiver_ports",
                "7001",
                "--num_conn",
                "2",
                "--json",
            ])
            .output()
            .unwrap(),
    );
    let uid = inbound["uid"].as_str().unwrap();
    let listeners: Vec<String> = inbound["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert!(
        listeners.iter().all(|l| l.starts_with("10.77.2.2:")),
        "{listeners:?}"
    );
    let outbound = json(
        t.cmd("ins", &bin("s2uc"))
            .args([
                "outbound_request",
                "--s2cs",
                "10.77.1.1:5000",
                "--server_cert",
                ca,
                "--num_conn",
                "2",
                "--json",
                uid,
                &listeners.join(","),
            ])
            .output()
            .unwrap(),
    );
    let entries: Vec<String> = outbound["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();

    let source = t
        .cmd("ins", &bin("s2bench"))
        .args([
            "source",
            "--connect",
            &entries.join(","),
            "--conns",
            "2",
            "--bytes",
            "512MiB",
            "-q",
            "--json",
            "-",
        ])
        .output()
        .unwrap();
    assert!(
        source.status.success(),
        "{}",
        String::from_utf8_lossy(&source.stderr)
    );
    let mut sink = sink;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while sink.0.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the sink did not finish"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let sink = &r["sink"];
    assert_eq!(sink["ok"], true, "every byte verified across the WAN: {r}");
    assert!(sink["bytes"].as_u64().unwrap() >= 512 << 20, "{r}");
    eprintln!(
        "through the tunnel over a 2 Gbit/s WAN: {} Gbit/s",
        sink["gbps"]
    );
}
