//! `s2uc demo`, the README's first command, end to end (small amounts):
//! TCP streams checked byte for byte, and `--udp` datagrams checked one by
//! one, each through two real gateways it starts and stops itself.
#![allow(clippy::unwrap_used)]

use scistream_testkit::bin;

fn demo(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(bin("s2uc"))
        .arg("demo")
        .args(["--s2cs-bin", bin("s2cs").to_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_demo_streams_tcp_and_udp_through_a_real_tunnel() {
    let (ok, out) = demo(&["--bytes", "64MiB"]);
    assert!(ok, "{out}");
    assert!(out.contains("OK: every byte arrived intact"), "{out}");

    let (ok, out) = demo(&["--udp", "--bytes", "16MiB", "--num_conn", "3"]);
    assert!(ok, "{out}");
    assert!(out.contains("--protocol udp"), "{out}");
    assert!(
        out.contains("OK: every datagram arrived whole, intact and in order on all 3 flows"),
        "{out}"
    );
    assert!(
        out.contains("3 flows, 11982 datagrams to target, 0 dropped"),
        "{out}"
    );
}
