//! Thousands of concurrent connections through one session: all open at
//! once through two real gateways, counted by both, a sample of them then
//! carrying their own bytes (verified at the receiver, each on its own
//! connection), and every descriptor given back on release.
//!
//! The count: a connection that has carried nothing holds two sockets in
//! each `s2ds` and no pipe (pipes come with the first byte), so 10 000
//! connections need about 20 000 descriptors per `s2ds`. This host's hard
//! RLIMIT_NOFILE is 20 000 (raising it needs CAP_SYS_RESOURCE, which root
//! lacks here), so the test opens as many as fit below it with a margin,
//! capped at 10 000, and prints the number.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use scistream_testkit::{Gw, open_fds, s2ds_pid, s2uc_json, s2uc_tunnel};

/// One accepted connection: what arrived so far, and whether it ended.
struct Held {
    stream: TcpStream,
    bytes: Vec<u8>,
    eof: bool,
}

/// Accepts every connection and holds it, without a thread per connection.
struct Holder {
    port: u16,
    accepted: Arc<Mutex<Vec<Held>>>,
}

impl Holder {
    fn start() -> Holder {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let a = accepted.clone();
        std::thread::spawn(move || {
            for stream in l.incoming().flatten() {
                stream.set_nonblocking(true).unwrap();
                a.lock().unwrap().push(Held {
                    stream,
                    bytes: Vec::new(),
                    eof: false,
                });
            }
        });
        Holder { port, accepted }
    }

    fn count(&self) -> usize {
        self.accepted.lock().unwrap().len()
    }

    /// Every message that arrived complete (up to its EOF) so far.
    fn messages(&self) -> HashSet<Vec<u8>> {
        let mut all = self.accepted.lock().unwrap();
        let mut buf = [0u8; 4096];
        for h in all.iter_mut().filter(|h| !h.eof) {
            loop {
                match h.stream.read(&mut buf) {
                    Ok(0) => {
                        h.eof = true;
                        break;
                    }
                    Ok(n) => h.bytes.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("a held connection failed: {e}"),
                }
            }
        }
        all.iter()
            .filter(|h| h.eof && !h.bytes.is_empty())
            .map(|h| h.bytes.clone())
            .collect()
    }
}

fn conns_open(gw: &Gw, uid: &str) -> u64 {
    let control = gw.control();
    let v = s2uc_json(&["status", "--s2cs", &control, "--insecure", uid]);
    v["sessions"][0]["conns_open"].as_u64().unwrap()
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn thousands_of_concurrent_connections_through_one_session() {
    use rustix::process::{Resource, getrlimit};
    let limit = getrlimit(Resource::Nofile);
    // Ours (this process holds both ends) and the s2ds's (raised to the hard limit).
    let ours = limit.current.unwrap_or(1 << 20);
    let hard = limit.maximum.unwrap_or(1 << 20);
    let n = (ours.min(hard).saturating_sub(1500) / 2).min(10_000) as usize;
    eprintln!("{n} concurrent connections (RLIMIT_NOFILE soft {ours}, hard {hard})");

    let target = Holder::start();
    // Far past the default --max-open-conns: this is the many-connection case.
    let args = [
        "--data-tls",
        "off",
        "--pipe-size",
        "64KiB",
        "--max-open-conns",
        "65536",
    ];
    let hpc = Gw::start(None, 4, &args);
    let inst = Gw::start(None, 4, &args);
    let t = s2uc_tunnel(&hpc, &inst, None, "127.0.0.1", target.port, 1);
    let entry = t.outbound[0].clone();
    let s2ds = [
        s2ds_pid(inst.gw.pid().unwrap()),
        s2ds_pid(hpc.gw.pid().unwrap()),
    ];
    let fds_before = s2ds.map(open_fds);
    let rss_before: u64 = s2ds.iter().map(|&p| rss_kib(p)).sum();

    // All open at once (in batches, so the listen backlog keeps up).
    let started = Instant::now();
    let mut open = Vec::with_capacity(n);
    for i in 0..n {
        open.push(TcpStream::connect(&entry).unwrap());
        if i % 500 == 499 {
            wait_for("the receiver accepting", Duration::from_secs(60), || {
                target.count() + 500 > i
            });
        }
    }
    wait_for(
        "every connection reaching the receiver",
        Duration::from_secs(120),
        || target.count() == n,
    );
    eprintln!(
        "{n} connections through the tunnel in {:?}",
        started.elapsed()
    );
    assert_eq!(conns_open(&inst, &t.uid), n as u64);
    assert_eq!(conns_open(&hpc, &t.uid), n as u64);
    let rss_after: u64 = s2ds.iter().map(|&p| rss_kib(p)).sum();
    eprintln!(
        "both s2ds: {:.2} KiB resident and {:.1} descriptors per connection",
        rss_after.saturating_sub(rss_before) as f64 / n as f64,
        (s2ds.map(open_fds).iter().sum::<usize>() - fds_before.iter().sum::<usize>()) as f64
            / n as f64
    );

    // A sample carries its own bytes and ends; each message arrives whole,
    // on a connection of its own.
    let mut sent = HashSet::new();
    for (i, s) in open.iter_mut().enumerate().step_by(100) {
        let msg = format!("connection {i} of {n}: {}", "x".repeat(i % 977)).into_bytes();
        s.write_all(&msg).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        sent.insert(msg);
    }
    wait_for("the sample's bytes", Duration::from_secs(60), || {
        target.messages().len() >= sent.len()
    });
    assert_eq!(target.messages(), sent);

    // Released: every connection closed and every descriptor given back.
    let control = inst.control();
    s2uc_json(&["release", "--s2cs", &control, "--insecure", &t.uid]);
    let control = hpc.control();
    s2uc_json(&["release", "--s2cs", &control, "--insecure", &t.uid]);
    drop(open);
    for (pid, before) in s2ds.iter().zip(fds_before) {
        // The session's listener goes too: fewer descriptors than before.
        wait_for(
            "s2ds giving its descriptors back",
            Duration::from_secs(60),
            || open_fds(*pid) <= before,
        );
    }
}
