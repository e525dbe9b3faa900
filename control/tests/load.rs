//! 200 concurrent inbound/outbound request pairs against one pair of
//! gateways (TLS control, TLS data channel, durable store): all succeed,
//! every session carries data, and after release no port is left taken (a
//! second round of 200 fits in the same 210-port ranges).
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use scistream_client::{Auth, RequestOptions, Trust};
use scistream_local::gateway::{GatewayOptions, LocalGateway};
use scistream_testkit::{DigestReceiver, Pki, bin, refused};

const PAIRS: usize = 200;

fn gateway(pki: &Pki, name: &str, range: (u16, u16), dir: &std::path::Path) -> LocalGateway {
    let (cert, key) = pki.gateway(name);
    LocalGateway::start(&GatewayOptions {
        s2cs_bin: bin("s2cs"),
        listener_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        port_range: range,
        tls: Some((cert, key)),
        state_dir: dir.join(name),
        log: Some(dir.join(format!("{name}.log"))),
        extra_args: vec![
            format!("--peer-ca={}", pki.ca.display()),
            "--max-pending-per-identity=1000".into(),
            // One caller sets up every tunnel: lift the per-caller quotas.
            "--max-sessions-per-identity=1000".into(),
            "--max-ports-per-identity=1000".into(),
            "--drain-timeout=2s".into(),
        ],
    })
    .unwrap()
}

/// One round: PAIRS tunnels set up concurrently; returns (uid, outbound listener) and setup times.
async fn round(
    hpc: &LocalGateway,
    inst: &LocalGateway,
    pki: &Pki,
    receiver: u16,
) -> (Vec<(String, String)>, Vec<Duration>) {
    let trust = Trust::Root(pki.ca.clone());
    let h = scistream_client::connect(&hpc.control(), &trust, Auth::none())
        .await
        .unwrap();
    let i = scistream_client::connect(&inst.control(), &trust, Auth::none())
        .await
        .unwrap();
    let options = RequestOptions {
        num_conn: 1,
        rate_kbps: 0,
        ..Default::default()
    };
    let tasks: Vec<_> = (0..PAIRS)
        .map(|_| {
            let (h, i, o) = (h.clone(), i.clone(), options.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let inbound =
                    scistream_client::inbound_request(&h, "127.0.0.1", &[receiver], &o).await?;
                let outbound = scistream_client::outbound_request(
                    &i,
                    &inbound.uid,
                    inbound.listeners.clone(),
                    Vec::new(),
                    &o,
                )
                .await?;
                Ok::<_, scistream_client::ClientError>((
                    inbound.uid,
                    outbound.listeners[0].clone(),
                    started.elapsed(),
                ))
            })
        })
        .collect();
    let mut tunnels = Vec::new();
    let mut times = Vec::new();
    for t in tasks {
        let (uid, entry, took) = t.await.unwrap().unwrap();
        tunnels.push((uid, entry));
        times.push(took);
    }
    (tunnels, times)
}

async fn release_all(
    hpc: &LocalGateway,
    inst: &LocalGateway,
    pki: &Pki,
    tunnels: &[(String, String)],
) {
    let trust = Trust::Root(pki.ca.clone());
    let h = scistream_client::connect(&hpc.control(), &trust, Auth::none())
        .await
        .unwrap();
    let i = scistream_client::connect(&inst.control(), &trust, Auth::none())
        .await
        .unwrap();
    let tasks: Vec<_> = tunnels
        .iter()
        .map(|(uid, _)| {
            let (h, i, uid) = (h.clone(), i.clone(), uid.clone());
            tokio::spawn(async move {
                scistream_client::release(&i, &uid).await?;
                scistream_client::release(&h, &uid).await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_tunnels_then_no_port_left_behind() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    // Below the ephemeral range (32768+) and below testkit's ranges (20000+).
    let base = 10000 + (std::process::id() % 20) as u16 * 500;
    let hpc = gateway(&pki, "hpc", (base, base + 209), dir.path());
    let inst = gateway(&pki, "inst", (base + 250, base + 459), dir.path());
    let receiver = DigestReceiver::start();

    for r in 0..2 {
        let (tunnels, mut times) = round(&hpc, &inst, &pki, receiver.addr.port()).await;
        assert_eq!(tunnels.len(), PAIRS);
        times.sort();
        eprintln!(
            "round {r}: {PAIRS} concurrent tunnel setups: p50 {:?}, p95 {:?}, max {:?}",
            percentile(&times, 0.5),
            percentile(&times, 0.95),
            percentile(&times, 1.0)
        );
        // Every tunnel carries data (a few bytes each, checked at the receiver).
        let sent: Vec<(u64, u64)> = tokio::task::spawn_blocking({
            let entries: Vec<String> = tunnels.iter().map(|t| t.1.clone()).collect();
            move || {
                entries
                    .iter()
                    .enumerate()
                    .map(|(k, e)| scistream_testkit::send_stream(e, k as u64, 1000 + k as u64))
                    .collect()
            }
        })
        .await
        .unwrap();
        let got: Vec<(u64, u64)> = (0..PAIRS)
            .map(|_| receiver.next(Duration::from_secs(30)))
            .collect();
        let mut a = sent.clone();
        let mut b = got;
        a.sort();
        b.sort();
        assert_eq!(a, b, "every tunnel delivered its stream");
        release_all(&hpc, &inst, &pki, &tunnels).await;
        for (_, entry) in &tunnels {
            assert!(refused(entry), "{entry} still listens after release");
        }
    }
}
