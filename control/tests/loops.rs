//! A tunnel loop between two gateways (found by a hostile review): the HPC
//! gateway's session forwards to the instrument gateway's listener of the
//! same uid, whose session forwards back to the HPC gateway's listener. One
//! connection then chains hop after hop. `--max-open-conns` ends the
//! chain: both data planes' open files stay bounded, the session's status
//! says why connections were refused, another session streams meanwhile,
//! and the release closes the rest.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use scistream_testkit::grpc::{open, update};
use scistream_testkit::{
    DigestReceiver, Gw, Pki, open_fds, s2ds_pid, s2uc_json, s2uc_tunnel, send_stream,
};

const CAP: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_between_two_gateways_ends_at_the_cap_and_others_stream_meanwhile() {
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
    // Let the chain grow as far as it can.
    let deadline = Instant::now() + Duration::from_secs(20);
    let refused = || {
        let v = s2uc_json(&[
            "status",
            "--s2cs",
            &inst.control(),
            "--server_cert",
            pki.ca.to_str().unwrap(),
            &uid,
        ]);
        v["sessions"][0]["rejected"].as_u64().unwrap_or(0)
    };
    while refused() == 0 {
        assert!(
            Instant::now() < deadline,
            "the cap never refused a connection:\n{}",
            inst.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = (open_fds(hpc_s2ds), open_fds(inst_s2ds));
    // Each hop is a few descriptors on each side; the cap bounds the hops.
    let bound = 8 * CAP + 64;
    assert!(
        during.0 < before.0 + bound && during.1 < before.1 + bound,
        "open files before {before:?}, during the loop {during:?} (bound +{bound})"
    );
    // The cap refused a connection and said so (the chain then unwinds: each
    // hop's connection fails back, so the latest failure may be that one).
    assert!(refused() >= 1);
    assert!(
        inst.log().contains("a loop between gateways ends here")
            || hpc.log().contains("a loop between gateways ends here")
    );

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
