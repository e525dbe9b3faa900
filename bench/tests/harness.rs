//! s2bench catches what it is there to catch, through real sockets.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use scistream_bench::report::summarize;
use scistream_bench::send::Stop;
use scistream_bench::sink::Sink;
use scistream_bench::source::{self, Detector, SourceConfig};
use scistream_testkit::bin;

/// What a misbehaving relay does to the stream.
#[derive(Clone, Copy)]
enum Fault {
    None,
    /// Flip one bit of the byte at this offset of every connection.
    FlipAt(u64),
    /// Close the connection with this index after this many bytes.
    CutAt(usize, u64),
}

/// A one-way relay in front of `to` (replies are not relayed).
fn relay(to: SocketAddr, fault: Fault) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for (index, client) in l.incoming().enumerate() {
            let Ok(mut client) = client else { continue };
            std::thread::spawn(move || {
                let mut up = TcpStream::connect(to).unwrap();
                let mut buf = vec![0u8; 64 << 10];
                let mut offset = 0u64;
                loop {
                    let n = match client.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    match fault {
                        Fault::FlipAt(at) if (offset..offset + n as u64).contains(&at) => {
                            buf[(at - offset) as usize] ^= 0x04
                        }
                        Fault::CutAt(i, at) if i == index && offset + n as u64 > at => {
                            let keep = (at - offset) as usize;
                            let _ = up.write_all(&buf[..keep]);
                            return; // both sockets dropped: the stream is cut
                        }
                        _ => {}
                    }
                    if up.write_all(&buf[..n]).is_err() {
                        return;
                    }
                    offset += n as u64;
                }
                let _ = up.shutdown(std::net::Shutdown::Write);
                // Wait for the sink to finish reading, then let the source see the close.
                let _ = up.read(&mut [0u8; 16]);
            });
        }
    });
    addr
}

fn config(target: SocketAddr, conns: usize, stop: Stop) -> SourceConfig {
    SourceConfig {
        targets: vec![target.to_string()],
        conns,
        msg_size: 64 << 10,
        stop,
        rate_bps: None,
        bidir: false,
        detector: None,
        progress: false,
        sndbuf: None,
    }
}

fn sink() -> Sink {
    Sink::start("127.0.0.1:0".parse().unwrap()).unwrap()
}

#[test]
fn a_clean_relay_verifies_and_a_corrupting_one_is_caught() {
    let s = sink();
    let clean = relay(s.addr, Fault::None);
    source::run(&config(clean, 2, Stop::Bytes(8 << 20))).unwrap();
    let got = s.collect(2, Duration::from_secs(30));
    let summary = summarize(&got.iter().map(|o| &o.received).collect::<Vec<_>>(), None);
    assert!(summary.ok, "{summary:?}");
    // 8 MiB of payload in 128 messages of 64 KiB, each with a 48-byte header,
    // plus a HELLO and an END per connection.
    assert_eq!(
        summary.bytes,
        (8 << 20) + 128 * 48 + 2 * 2 * 48,
        "payload plus every header"
    );

    // One bit flipped 1 MB into the stream, deep inside a payload.
    let bad = relay(s.addr, Fault::FlipAt(1_000_003));
    source::run(&config(bad, 1, Stop::Bytes(4 << 20))).unwrap();
    let got = s.collect(1, Duration::from_secs(30));
    let summary = summarize(&[&got[0].received], None);
    assert!(!summary.ok);
    assert_eq!(
        summary.corrupt, 1,
        "exactly the one damaged message: {summary:?}"
    );
    assert_eq!(summary.missing, 1, "and it counts as not delivered intact");
}

#[test]
fn a_cut_stream_is_reported_not_silent() {
    let s = sink();
    let cutting = relay(s.addr, Fault::CutAt(0, 3 << 20));
    // The source may or may not notice the cut before it finishes writing.
    let _ = source::run(&config(cutting, 1, Stop::Bytes(16 << 20)));
    let got = s.collect(1, Duration::from_secs(30));
    let summary = summarize(&[&got[0].received], None);
    assert!(!summary.ok);
    assert_eq!(summary.incomplete, 1);
    let why = summary.first_error.unwrap();
    assert!(
        why.contains("cut short") || why.contains("ended before its END"),
        "{why}"
    );
}

#[test]
fn pacing_holds_the_rate() {
    let s = sink();
    let mut cfg = config(s.addr, 2, Stop::After(Duration::from_secs(3)));
    cfg.rate_bps = Some(200_000_000);
    cfg.msg_size = 16 << 10;
    let r = source::run(&cfg).unwrap();
    let got = s.collect(2, Duration::from_secs(30));
    let summary = summarize(&got.iter().map(|o| &o.received).collect::<Vec<_>>(), None);
    assert!(summary.ok);
    let sent: u64 = r.sent.iter().map(|x| x.bytes).sum();
    let rate = sent as f64 * 8.0 / r.seconds;
    assert!(
        (170e6..=230e6).contains(&rate),
        "200 Mbit/s asked, {:.1} Mbit/s sent",
        rate / 1e6
    );
}

#[test]
fn detector_frames_are_accounted_once_and_losses_are_counted() {
    let s = sink();
    let mut cfg = config(s.addr, 4, Stop::After(Duration::from_secs(60)));
    cfg.detector = Some(Detector {
        frame_size: 256 << 10,
        fps: 400.0,
        frames: Some(60),
    });
    source::run(&cfg).unwrap();
    let got = s.collect(4, Duration::from_secs(30));
    let summary = summarize(
        &got.iter().map(|o| &o.received).collect::<Vec<_>>(),
        Some(Duration::from_secs(5)),
    );
    let f = summary.frames.clone().unwrap();
    assert!(summary.ok, "{summary:?}");
    assert_eq!((f.received, f.lost, f.duplicates, f.late), (60, 0, 0, 0));
    assert_eq!(f.fps_requested, 400.0);
    assert!(f.latency.count == 60);

    // One of four streams cut after a few frames: the missing frames are counted as lost.
    let cutting = relay(s.addr, Fault::CutAt(0, 1 << 20));
    let _ = source::run(&SourceConfig {
        targets: vec![cutting.to_string()],
        ..cfg
    });
    let got = s.collect(4, Duration::from_secs(30));
    let summary = summarize(&got.iter().map(|o| &o.received).collect::<Vec<_>>(), None);
    let f = summary.frames.unwrap();
    assert!(!summary.ok);
    assert!(f.lost > 0 && f.received + f.lost == 60, "{f:?}");
    assert_eq!(f.duplicates, 0);
}

#[test]
fn bidirectional_streams_are_verified_both_ways() {
    let s = sink();
    let mut cfg = config(s.addr, 2, Stop::Bytes(16 << 20));
    cfg.bidir = true;
    let r = source::run(&cfg).unwrap();
    let got = s.collect(2, Duration::from_secs(30));
    assert!(summarize(&got.iter().map(|o| &o.received).collect::<Vec<_>>(), None).ok);
    let reverse = summarize(&r.reverse.iter().collect::<Vec<_>>(), None);
    assert!(reverse.ok, "{reverse:?}");
    assert_eq!(reverse.conns, 2);
    assert!(reverse.messages > 0);
}

fn s2bench(args: &[&str]) -> std::process::Output {
    Command::new(bin("s2bench"))
        .args(args)
        .env("S2BENCH_PEER_PATH", "/nonexistent")
        .output()
        .unwrap()
}

#[test]
fn bad_arguments_are_rejected_with_the_reason() {
    for (args, needle) in [
        (
            vec!["source", "--connect", "127.0.0.1:9", "--conns", "0"],
            "at least 1",
        ),
        (
            vec!["detector", "--connect", "127.0.0.1:9", "--frame-size", "0"],
            "above zero",
        ),
        (
            vec!["source", "--connect", "127.0.0.1:9", "--msg-size", "8MQ"],
            "'8MQ' is not a valid size",
        ),
        (
            vec!["source", "--connect", "127.0.0.1:9", "--rate", "10Gbitt"],
            "'10Gbitt' is not a valid rate",
        ),
        (
            vec![
                "source",
                "--connect",
                "127.0.0.1:9",
                "--duration",
                "5 parsecs",
            ],
            "not a valid duration",
        ),
        (
            vec!["source", "--connect", "127.0.0.1:9", "--msg-size", "4"],
            "between 8 bytes and 1GiB",
        ),
        (
            vec!["detector", "--connect", "127.0.0.1:9", "--fps", "-3"],
            "not a rate above zero",
        ),
        (
            vec!["compare", "--only", "direct,squid"],
            "unknown topology 'squid'",
        ),
    ] {
        let out = s2bench(&args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn the_command_line_runs_a_checked_stream_with_human_units() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let sink = Command::new(bin("s2bench"))
        .args([
            "sink", "--listen", &listen, "--conns", "2", "--json", "-", "-q",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(&listen).is_err() {
        assert!(std::time::Instant::now() < deadline, "sink did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = s2bench(&[
        "source",
        "--connect",
        &listen,
        "--conns",
        "2",
        "--bytes",
        "32MiB",
        "--msg-size",
        "64KiB",
        "--rate",
        "1.5Gb/s",
        "-q",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sink_out = sink.wait_with_output().unwrap();
    assert!(sink_out.status.success());
    let text = String::from_utf8_lossy(&sink_out.stdout);
    let json: serde_json::Value = serde_json::from_str(&text[text.find('{').unwrap()..]).unwrap();
    assert_eq!(json["sink"]["ok"], true);
    assert_eq!(json["sink"]["conns"], 2);
}

#[test]
fn compare_writes_json_and_svg_and_skips_absent_peers() {
    let dir = tempfile::tempdir().unwrap();
    let (json, svg) = (dir.path().join("c.json"), dir.path().join("c.svg"));
    let out = s2bench(&[
        "compare",
        "--only",
        "direct,scistream,haproxy,nginx",
        "--duration",
        "300ms",
        "--rounds",
        "2",
        "--conns",
        "1,2",
        "--json",
        json.to_str().unwrap(),
        "--chart",
        svg.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("skipped haproxy: haproxy not installed"),
        "{stderr}"
    );
    assert!(stdout.contains("skipped nginx"), "{stdout}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let series = report["series"].as_array().unwrap();
    assert_eq!(
        series.len(),
        4,
        "direct and scistream, at 1 and 2 connections"
    );
    for s in series {
        assert_eq!(s["rounds"].as_array().unwrap().len(), 2);
        assert!(s["median_gbps"].as_f64().unwrap() > 0.0);
        assert!(
            s["rounds"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["ok"] == true)
        );
    }
    assert!(report["machine"]["cores"].as_u64().unwrap() >= 1);
    assert!(!report["machine"]["kernel"].as_str().unwrap().is_empty());
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(
        chart.starts_with("<svg") && chart.contains("scistream x2"),
        "{}",
        &chart[..200.min(chart.len())]
    );
}

#[test]
fn compare_runs_the_peer_chains_that_are_installed() {
    let present: Vec<&str> = ["haproxy", "stunnel", "socat", "nginx"]
        .into_iter()
        .filter(|p| {
            let names: &[&str] = if *p == "stunnel" {
                &["stunnel4", "stunnel"]
            } else {
                std::slice::from_ref(p)
            };
            scistream_bench::compare::peers::find_program(names).is_some()
        })
        .collect();
    if present.is_empty() {
        eprintln!(
            "SKIP compare_runs_the_peer_chains_that_are_installed: none of haproxy, stunnel4, socat, nginx is installed"
        );
        return;
    }
    let only = present.join(",");
    let out = Command::new(bin("s2bench"))
        .args([
            "compare",
            "--only",
            &only,
            "--duration",
            "300ms",
            "--rounds",
            "1",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for p in present {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(p) && !l.contains("FAILED")),
            "{p} missing or failed:\n{stdout}"
        );
    }
}

#[test]
fn idle_connections_are_measured() {
    // Descriptors per idle connection, both gateways together: two sockets
    // each. Plaintext splices through pipes, but a pipe is made only when
    // the first byte arrives; TLS in user space needs none.
    for (tls, per_conn) in [("off", 4), ("on", 4)] {
        let out = Command::new(bin("s2bench"))
            .args(["idle", "--conns", "5,20", "--data-tls", tls])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rows: Vec<&str> = stdout
            .lines()
            .filter(|l| l.trim_start().starts_with(char::is_numeric))
            .collect();
        assert_eq!(rows.len(), 2, "{stdout}");
        let fds = |row: &str| {
            row.split_whitespace()
                .last()
                .unwrap()
                .parse::<usize>()
                .unwrap()
        };
        assert_eq!(
            fds(rows[1]) - fds(rows[0]),
            15 * per_conn,
            "data-tls {tls}: {stdout}"
        );
    }
}

#[test]
fn compare_udp_measures_the_tunnel_and_socat_side_by_side() {
    if scistream_bench::compare::peers::find_program(&["socat"]).is_none() {
        eprintln!("skipped: socat is not installed (Debian: socat)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("udp.json");
    let out = Command::new(bin("s2bench"))
        .args([
            "compare",
            "--udp-rates",
            "20Mbit,40Mbit",
            "--udp-size",
            "1200",
            "--duration",
            "500ms",
            "--rounds",
            "1",
            "--json",
            json.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("scistream-udp (TLS)"), "{stdout}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let rounds = report["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 4, "two rates through two topologies");
    for r in rounds {
        assert!(r["sent"].as_u64().unwrap() > 0, "{r}");
        assert!(r["received"].as_u64().unwrap() > 0, "nothing arrived: {r}");
        assert_eq!(r["corrupt"].as_u64(), Some(0), "{r}");
    }
    // A datagram UDP cannot carry is refused with the reason.
    let out = s2bench(&["compare", "--udp-rates", "1Mbit", "--udp-size", "70000"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at most 65507"));
}
