//! Control-plane latency: one inbound request as s2uc makes it (req and
//! hello concurrently, then update) plus its release, against a real s2cs
//! (gRPC over TLS, with its s2ds) on loopback. Needs the workspace's
//! binaries: `cargo build --release --workspace` first.

use std::net::{IpAddr, Ipv4Addr};

use criterion::{Criterion, criterion_group, criterion_main};
use scistream_client::{Auth, RequestOptions, Trust};
use scistream_local::gateway::{GatewayOptions, LocalGateway, sibling_binary};

fn round_trip(c: &mut Criterion) {
    let Some(s2cs) = sibling_binary("s2cs") else {
        eprintln!(
            "SKIP control_plane: s2cs not built; run `cargo build --release --workspace` first"
        );
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = scistream_local::pki::Ca::new("bench CA").expect("CA");
    let ca_path = dir.path().join("ca.crt");
    scistream_local::pki::write_file(&ca_path, &ca.cert_pem(), false).expect("write CA");
    let cert = ca
        .issue(&["localhost", "127.0.0.1"])
        .expect("cert")
        .write(dir.path(), "gw")
        .expect("write cert");
    let gw = LocalGateway::start(&GatewayOptions {
        s2cs_bin: s2cs,
        listener_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        port_range: (37100, 37199),
        tls: Some((cert.cert, cert.key)),
        state_dir: dir.path().join("state"),
        log: Some(dir.path().join("s2cs.log")),
        extra_args: vec!["--peer-ca".into(), ca_path.display().to_string()],
    })
    .expect("s2cs starts");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let conn = rt
        .block_on(scistream_client::connect(
            &gw.control(),
            &Trust::Root(ca_path),
            Auth::none(),
        ))
        .expect("connect");
    let options = RequestOptions {
        num_conn: 4,
        rate_kbps: 0,
        ..Default::default()
    };
    c.bench_function("inbound_request_and_release", |b| {
        b.iter(|| {
            rt.block_on(async {
                let t = scistream_client::inbound_request(&conn, "127.0.0.1", &[9], &options)
                    .await
                    .expect("request");
                scistream_client::release(&conn, &t.uid)
                    .await
                    .expect("release");
            })
        })
    });
    drop(conn);
    rt.block_on(async { tokio::task::yield_now().await });
    gw.stop();
}

criterion_group!(benches, round_trip);
criterion_main!(benches);
