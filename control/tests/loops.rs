//! A tunnel loop between two gateways (found by a hostile review): the HPC
//! gateway's session forwards to the instrument gateway's listener of the
//! same uid, whose session forwards back to the HPC gateway's listener. One
//! connection would chain hop after hop. The first time it comes back to
//! the HPC gateway, the preamble's origin is the HPC gateway's own
//! connection to its receiver: refused there as a loop, with a log line
//! naming the session and the reason in its status. Both data planes'
//! open files stay bounded, another session streams meanwhile, and the
//! release closes the rest. (`--max-open-conns` is the backstop for loops
//! the origin cannot show, e.g. through a third gateway.)
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use scistream_testkit::grpc::{open, update};
use scistream_testkit::{DigestReceiver, Gw, Pki, open_fds, s2ds_pid, s2uc_tunnel, send_stream};

const CAP: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_between_two_gateways_is_cut_at_its_first_return_and_others_stream() {
    let pki = Pki::new();
    let cap = format!("--max-open-conns={CAP}");
    let hpc = Gw::start(Some(pki.gateway("hpc")), 8, &[&cap]);
    let inst = Gw::start(Some(pki.gateway("inst")), 8, &[&cap]);
    let trust = scistream_client::Trust::Root(pki.ca.clone());
    let none = scistream_client::Auth::none;
    let h = scistream_client::connect(&hpc.control(), &trust, none())
        .await
        .unwrap();
    let i = scistream_client::connect(&inst.control(), &trust, none())
        .await
        .unwrap();
    let (hpc_s2ds, inst_s2ds) = (
        s2ds_pid(hpc.gw.pid().unwrap()),
        s2ds_pid(inst.gw.pid().unwrap()),
    );
    let before = (open_fds(hpc_s2ds), open_fds(inst_s2ds));

    // The loop: the instrument side's listener first, the HPC side's session
    // forwards to it, then the instrument side's session forwards to the HPC side.
    let uid = scistream_client::tunnel::new_uid();
    let inst_listener = open(&i, &uid, "CONS", 1, &[]).await.unwrap();
    let inst_refs: Vec<&str> = inst_listener.iter().map(String::as_str).collect();
    let hpc_listener = open(&h, &uid, "PROD", 1, &inst_refs).await.unwrap();
    let hpc_refs: Vec<&str> = hpc_listener.iter().map(String::as_str).collect();
    update(&h, &uid, "PROD", &inst_refs).await.unwrap();
    update(&i, &uid, "CONS", &hpc_refs).await.unwrap();

    let mut first = TcpStream::connect(&inst_listener[0]).unwrap();
    let _ = first.write_all(b"round and round");
    // The loop is cut at its first return to the HPC gateway.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = || hpc.status(Some(&pki.ca), &uid);
    while status()["rejected"].as_u64().unwrap_or(0) == 0 {
        assert!(
            Instant::now() < deadline,
            "the loop was never refused:\n{}",
            hpc.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let s = status();
    assert!(
        s["conns_total"].as_u64().unwrap() <= 3,
        "the loop ran for more than a round: {s}"
    );
    let during = (open_fds(hpc_s2ds), open_fds(inst_s2ds));
    let bound = 64;
    assert!(
        during.0 < before.0 + bound && during.1 < before.1 + bound,
        "open files before {before:?}, during the loop {during:?} (bound +{bound})"
    );
    let log = hpc.log();
    assert!(log.contains("a tunnel loop"), "{log}");
    // Named by its tag (keyed per gateway) and role; never by its uid.
    assert!(
        log.lines()
            .any(|l| l.contains("a tunnel loop") && l.contains("session=") && l.contains("/PROD")),
        "the log line does not name the session: {log}"
    );
    assert!(!log.contains(&uid), "the uid is in the log");
    assert!(!inst.log().contains("a loop between gateways ends here"));

    // Another session through the same gateways streams meanwhile.
    let receiver = DigestReceiver::start();
    let t = s2uc_tunnel(
        &hpc,
        &inst,
        Some(&pki.ca),
        "127.0.0.1",
        receiver.addr.port(),
        1,
    );
    let sent = send_stream(&t.outbound[0], 9, 16 << 20);
    assert_eq!(receiver.next(Duration::from_secs(60)), sent);

    // The release closes what the loop holds.
    scistream_client::release(&i, &uid).await.unwrap();
    scistream_client::release(&h, &uid).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = (open_fds(hpc_s2ds), open_fds(inst_s2ds));
        if now.0 < before.0 + 32 && now.1 < before.1 + 32 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still open after the release: {now:?} (before {before:?})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(first);
}
