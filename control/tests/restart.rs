//! Restarting `s2cs` loses nothing: sessions are stored durably before each
//! reply; a killed `s2cs` leaves `s2ds` forwarding, and the next `s2cs` on
//! the same state directory re-attaches to it, takes the listeners back,
//! and serves `release` for sessions it did not create. When `s2ds` died
//! too, the listeners are bound again and forwarding resumes.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use rustix::process::Signal;
use scistream_local::gateway::{GatewayOptions, LocalGateway};
use scistream_testkit::{
    DigestReceiver, Pki, bin, port_range, refused, s2uc, s2uc_json, s2uc_tunnel_at, send_stream,
};

fn options(pki: &Pki, name: &str, dir: &Path) -> GatewayOptions {
    let (cert, key) = pki.gateway(name);
    GatewayOptions {
        s2cs_bin: bin("s2cs"),
        listener_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        port_range: port_range(8),
        tls: Some((cert, key)),
        state_dir: dir.join(format!("{name}-state")),
        log: Some(dir.join(format!("{name}.log"))),
        extra_args: vec![format!("--peer-ca={}", pki.ca.display())],
    }
}

fn restart(opts: &GatewayOptions, n: usize) -> LocalGateway {
    let mut o = opts.clone();
    o.log = o.log.map(|l| l.with_extension(format!("{n}.log")));
    LocalGateway::start(&o).unwrap()
}

fn log(gw: &LocalGateway) -> String {
    std::fs::read_to_string(gw.log.as_ref().unwrap()).unwrap_or_default()
}

/// Inbound on `hpc` to the receiver, outbound on `inst`: (uid, outbound listeners).
fn tunnel(
    pki: &Pki,
    hpc: &LocalGateway,
    inst: &LocalGateway,
    receiver: u16,
) -> (String, Vec<String>) {
    let t = s2uc_tunnel_at(
        &hpc.control(),
        &inst.control(),
        Some(&pki.ca),
        "127.0.0.1",
        receiver,
        1,
    );
    (t.uid, t.outbound)
}

fn release(pki: &Pki, gw: &LocalGateway, uid: &str) {
    s2uc_json(&[
        "release",
        "--s2cs",
        &gw.control(),
        "--server_cert",
        pki.ca.to_str().unwrap(),
        uid,
    ]);
}

#[test]
fn killing_s2cs_mid_stream_loses_neither_the_stream_nor_the_session() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let hpc_opts = options(&pki, "hpc", dir.path());
    let inst_opts = options(&pki, "inst", dir.path());
    // The first generation stays in scope to the end: dropping it would
    // kill its process group, which still holds the adopted s2ds.
    let hpc1 = LocalGateway::start(&hpc_opts).unwrap();
    let inst1 = LocalGateway::start(&inst_opts).unwrap();
    let receiver = DigestReceiver::start();
    let (uid, outbound) = tunnel(&pki, &hpc1, &inst1, receiver.addr.port());

    let bytes = 10u64 << 30;
    let entry = outbound[0].clone();
    let sender = std::thread::spawn(move || send_stream(&entry, 7, bytes));
    std::thread::sleep(Duration::from_millis(500));
    hpc1.signal(Signal::KILL);
    inst1.signal(Signal::KILL);
    // The next s2cs opens the same store: only once these are dead.
    for gw in [&hpc1, &inst1] {
        scistream_testkit::wait_dead(gw.pid().unwrap() as i32);
    }

    let hpc2 = restart(&hpc_opts, 2);
    let inst2 = restart(&inst_opts, 2);
    for gw in [&hpc2, &inst2] {
        let l = log(gw);
        assert!(l.contains("re-attached to the data plane"), "{l}");
        assert!(
            l.contains("session recovered") && l.contains("kept=true"),
            "{l}"
        );
    }
    let sent = sender.join().unwrap();
    let got = receiver.next(Duration::from_secs(120));
    assert_eq!(
        got, sent,
        "the 10 GiB stream arrived whole across both restarts"
    );

    // The new s2cs serves the sessions it recovered: a second stream, then release.
    let again = send_stream(&outbound[0], 8, 1 << 20);
    assert_eq!(receiver.next(Duration::from_secs(30)), again);
    release(&pki, &hpc2, &uid);
    release(&pki, &inst2, &uid);
    assert!(
        refused(&outbound[0]),
        "the outbound listener closed on release"
    );
    let out = s2uc(&[
        "release",
        "--s2cs",
        &hpc2.control(),
        "--server_cert",
        pki.ca.to_str().unwrap(),
        &uid,
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NOT_FOUND"),
        "released for good"
    );
    drop((hpc2, inst2, hpc1, inst1));
}

#[test]
fn a_restart_after_both_daemons_died_binds_the_listeners_again() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let hpc_opts = options(&pki, "hpc", dir.path());
    let inst_opts = options(&pki, "inst", dir.path());
    let hpc1 = LocalGateway::start(&hpc_opts).unwrap();
    let inst1 = LocalGateway::start(&inst_opts).unwrap();
    let receiver = DigestReceiver::start();
    let (uid, outbound) = tunnel(&pki, &hpc1, &inst1, receiver.addr.port());
    let before = send_stream(&outbound[0], 1, 4 << 20);
    assert_eq!(receiver.next(Duration::from_secs(30)), before);

    // s2cs and s2ds both gone (the whole process group), on both gateways.
    drop(hpc1);
    drop(inst1);
    assert!(refused(&outbound[0]));
    let hpc2 = restart(&hpc_opts, 2);
    let inst2 = restart(&inst_opts, 2);
    let l = log(&inst2);
    assert!(
        l.contains("session recovered") && l.contains("kept=false"),
        "{l}"
    );
    let after = send_stream(&outbound[0], 2, 4 << 20);
    assert_eq!(
        receiver.next(Duration::from_secs(30)),
        after,
        "same listener, same tunnel"
    );
    release(&pki, &hpc2, &uid);
    release(&pki, &inst2, &uid);
}

#[test]
fn a_damaged_session_store_stops_the_start_with_the_reason() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let opts = options(&pki, "hpc", dir.path());
    std::fs::create_dir_all(&opts.state_dir).unwrap();
    let store = opts.state_dir.join("sessions.redb");
    std::fs::write(&store, vec![0x5a; 16384]).unwrap();
    let e = LocalGateway::start(&opts).unwrap_err();
    assert!(
        e.contains("sessions.redb") && e.contains("cannot be opened"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(&store).unwrap(),
        vec![0x5a; 16384],
        "never silently replaced"
    );
}
