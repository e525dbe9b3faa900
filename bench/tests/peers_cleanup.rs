//! `s2bench compare` leaves no peer process behind: nginx's workers and
//! socat's per-connection forks are children of the process s2bench
//! started, and used to survive it, re-parented to init.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use scistream_bench::compare::peers;

/// Processes whose process group is `group`.
fn members(group: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // "pid (comm) state ppid pgrp ..."
            let Some((_, rest)) = stat.rsplit_once(") ") else {
                return false;
            };
            rest.split_whitespace().nth(2) == Some(&group.to_string())
        })
        .collect()
}

fn check(name: &str, start: fn(&std::path::Path, u16) -> Result<peers::Chain, String>) {
    let sink = TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let chain = match start(dir.path(), sink.local_addr().unwrap().port()) {
        Ok(c) => c,
        Err(why) => {
            eprintln!("SKIP {name}: {why}");
            return;
        }
    };
    // A connection through the chain, so that socat forks a child per hop.
    let mut c = TcpStream::connect(("127.0.0.1", chain.entry)).unwrap();
    c.write_all(b"x").unwrap();
    let _held = sink.accept().unwrap();
    let groups = chain.pids();
    let before: usize = groups.iter().map(|&g| members(g).len()).sum();
    assert!(
        before > groups.len(),
        "{name}: expected children beside the hops ({before})"
    );
    drop(chain);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<u32> = groups.iter().flat_map(|&g| members(g)).collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: processes left behind: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn nginx_and_socat_chains_leave_no_process_behind() {
    check("nginx", peers::nginx);
    check("socat", peers::socat);
}
