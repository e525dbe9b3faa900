//! `s2ds` killed under a running `s2cs`: the supervisor notices, starts a
//! new one and hands it every session's listeners again; connections that
//! arrived meanwhile wait in the kernel's backlog and are served; repeated
//! crashes back off, and every restart is logged and counted.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use scistream_testkit::{DigestReceiver, Gw, Pki, s2uc_tunnel, send_stream};

/// The pid of `s2cs`'s child `s2ds`, from /proc.
fn s2ds_of(s2cs: u32) -> Option<i32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let ppid: Option<u32> = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        if ppid == Some(s2cs) && stat.contains("(s2ds)") {
            return Some(pid);
        }
    }
    None
}

fn kill9(pid: i32) {
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    );
}

fn new_s2ds(gw: &Gw, old: i32) -> i32 {
    let s2cs = gw.gw.pid().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Ready means: s2cs got its hello (and re-handed the sessions next).
        if let Some(p) = s2ds_of(s2cs).filter(|&p| p != old) {
            if gw.log().contains(&format!("data plane ready pid={p} ")) {
                return p;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no new s2ds after 30 s:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_killed_s2ds_is_replaced_and_queued_connections_are_served() {
    let pki = Pki::new();
    let receiver = DigestReceiver::start();
    let hpc = Gw::start(Some(pki.gateway("hpc")), 8, &[]);
    let inst = Gw::start(Some(pki.gateway("inst")), 8, &[]);
    let t = s2uc_tunnel(
        &hpc,
        &inst,
        Some(&pki.ca),
        "127.0.0.1",
        receiver.addr.port(),
        4,
    );
    let entries = t.outbound;

    // Four streams running when the outbound gateway's s2ds is killed.
    let running: Vec<_> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let e = e.clone();
            std::thread::spawn(move || {
                std::panic::catch_unwind(|| send_stream(&e, i as u64, 4 << 30))
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let s2cs = inst.gw.pid().unwrap();
    let first = s2ds_of(s2cs).expect("s2ds runs under s2cs");
    kill9(first);
    scistream_testkit::wait_dead(first);
    // Ten new connections arrive while no s2ds runs: they wait in the backlog.
    let newcomers: Vec<_> = (0..10)
        .map(|i| {
            let e = entries[i % entries.len()].clone();
            std::thread::spawn(move || send_stream(&e, 1000 + i as u64, (1 << 20) + i as u64))
        })
        .collect();
    let second = new_s2ds(&inst, first);
    let sent: HashSet<(u64, u64)> = newcomers.into_iter().map(|h| h.join().unwrap()).collect();
    for r in running {
        // The streams inside the killed process die with it; that is the
        // one loss a crash costs, and their senders see an error.
        let _ = r.join();
    }
    let mut got = HashSet::new();
    while !sent.is_subset(&got) {
        got.insert(receiver.next(Duration::from_secs(60)));
    }

    // Repeated crashes back off and are counted.
    kill9(second);
    let third = new_s2ds(&inst, second);
    kill9(third);
    let _fourth = new_s2ds(&inst, third);
    let log = inst.log();
    assert!(log.contains("restarts=3"), "{log}");
    assert!(
        log.contains("restarting it in 200ms") && log.contains("restarting it in 400ms"),
        "backoff grows: {log}"
    );
    assert!(
        log.contains("listening sockets handed to the new data plane"),
        "{log}"
    );
    // And the tunnel still works.
    let again = send_stream(&entries[0], 77, 1 << 20);
    let mut seen = false;
    for _ in 0..10 {
        if receiver.next(Duration::from_secs(30)) == again {
            seen = true;
            break;
        }
    }
    assert!(seen, "a stream after three crashes arrived");
}

#[test]
fn an_s2ds_killed_while_starting_does_not_wedge_the_restarts() {
    // Regression: s2cs's connection to an s2ds that died before accepting
    // it stayed queued on the control socket, the next s2ds accepted that
    // dead connection first and exited, and so on forever.
    let pki = Pki::new();
    let receiver = DigestReceiver::start();
    let hpc = Gw::start(Some(pki.gateway("hpc")), 4, &[]);
    let inst = Gw::start(Some(pki.gateway("inst")), 4, &[]);
    let t = s2uc_tunnel(
        &hpc,
        &inst,
        Some(&pki.ca),
        "127.0.0.1",
        receiver.addr.port(),
        1,
    );
    let entry = t.outbound[0].clone();
    let s2cs = inst.gw.pid().unwrap();
    let mut old = s2ds_of(s2cs).unwrap();
    for _ in 0..3 {
        kill9(old);
        scistream_testkit::wait_dead(old);
        // Kill the next one the moment it exists, before it is ready.
        let deadline = Instant::now() + Duration::from_secs(30);
        old = loop {
            if let Some(p) = s2ds_of(s2cs).filter(|&p| p != old) {
                break p;
            }
            assert!(Instant::now() < deadline, "no new s2ds:\n{}", inst.log());
            std::thread::sleep(Duration::from_millis(2));
        };
    }
    kill9(old);
    scistream_testkit::wait_dead(old);
    new_s2ds(&inst, old);
    let sent = send_stream(&entry, 5, 1 << 20);
    let mut seen = false;
    for _ in 0..5 {
        if receiver.next(Duration::from_secs(30)) == sent {
            seen = true;
            break;
        }
    }
    assert!(seen, "the tunnel works after restarts that failed");
}
