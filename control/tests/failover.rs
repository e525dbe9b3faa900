//! An outbound connection whose target fails during setup tries the
//! session's other targets (issue 18: a lost inbound node must not stop new
//! connections from the instrument side).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use scistream_testkit::{DigestReceiver, Gw, Pki, s2uc_inbound, s2uc_json, send_stream, strings};

/// A loopback address and port nothing listens on.
fn dead_target(ip: &str) -> String {
    let l = std::net::TcpListener::bind((ip, 0)).unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr.to_string()
}

/// Inbound with two listeners on `hpc`; outbound on `inst` whose first
/// target is dead and second is the inbound's second listener. Sends
/// through the outbound's FIRST listener and checks that it arrives.
fn first_target_dead(hpc: &Gw, inst: &Gw, ca: Option<&Path>, dead: &str) {
    let receiver = DigestReceiver::start();
    let inbound = s2uc_inbound(&hpc.control(), ca, "127.0.0.1", receiver.addr.port(), 2);
    let uid = inbound["uid"].as_str().unwrap().to_owned();
    let listeners = strings(&inbound, "listeners");
    let targets = format!("{dead},{}", listeners[1]);
    let ca = ca.map(|p| p.display().to_string());
    let mut args = vec!["outbound_request", "--s2cs"];
    let control = inst.control();
    args.push(&control);
    match &ca {
        Some(ca) => args.extend(["--server_cert", ca]),
        None => args.push("--insecure"),
    }
    args.extend(["--num_conn", "2", &uid, &targets]);
    let outbound = strings(&s2uc_json(&args), "listeners");

    let sent = send_stream(&outbound[0], 7, 8 << 20);
    let got = receiver.next(Duration::from_secs(30));
    assert_eq!(
        sent, got,
        "the stream through the dead target's listener arrived whole"
    );
    assert!(
        inst.log().contains("trying the session's next target"),
        "{}",
        inst.log()
    );
}

#[test]
fn plaintext_connections_fail_over_to_the_next_target() {
    let hpc = Gw::start(None, 4, &[]);
    let inst = Gw::start(None, 4, &[]);
    first_target_dead(&hpc, &inst, None, &dead_target("127.0.0.1"));
}

#[test]
fn tls_connections_fail_over_with_the_next_targets_name() {
    let pki = Pki::new();
    let hpc = Gw::start(Some(pki.gateway("hpc")), 4, &[]);
    let inst = Gw::start(Some(pki.gateway("inst")), 4, &[]);
    // Another address: the update's probe finds that gateway unusable,
    // accepts the session because the other one answers, and says so.
    first_target_dead(&hpc, &inst, Some(&pki.ca), &dead_target("127.0.0.9"));
    assert!(
        inst.log()
            .contains("its connections will use the session's other targets"),
        "{}",
        inst.log()
    );
}
