//! `s2uc demo`: a whole tunnel on loopback, end to end, in one command.
//!
//! Generates a throwaway facility CA and two gateway certificates, starts
//! two `s2cs` (HPC side and instrument side, each running its `s2ds`),
//! starts a receiver, makes the inbound then the outbound request through
//! the real gRPC API, streams data through the tunnel, checks byte count
//! and checksum at the receiver, prints the throughput, releases, and stops
//! everything it started.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use scistream_protocol::units::{format_rate, format_size};

use crate::gateway::{GatewayOptions, LocalGateway, sibling_binary};
use crate::payload::{Digest, Generator};
use crate::pki::Ca;
use scistream_client::connect::{Auth, Trust, connect};
use scistream_client::tunnel::{RequestOptions, inbound_request, outbound_request, release};

/// Demo settings.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Bytes to stream in total (split over the connections).
    pub bytes: u64,
    /// Parallel connections.
    pub num_conn: u32,
    /// Keep the working directory (certificates, logs).
    pub keep: bool,
    /// `s2cs` to run; default: next to this executable.
    pub s2cs_bin: Option<PathBuf>,
    /// Send UDP datagrams instead of TCP streams (`--protocol udp`).
    pub udp: bool,
}

const CHUNK: usize = 1 << 20;

fn say(step: &str) {
    println!("==> {step}");
}

/// Receives `n` connections; returns the multiset of (bytes, hash) it saw.
fn receiver(
    listener: TcpListener,
    n: usize,
) -> std::thread::JoinHandle<std::io::Result<Vec<(u64, u64)>>> {
    std::thread::spawn(move || {
        let mut handles = Vec::new();
        for _ in 0..n {
            let (mut s, _) = listener.accept()?;
            handles.push(std::thread::spawn(
                move || -> std::io::Result<(u64, u64)> {
                    s.set_read_timeout(Some(Duration::from_secs(60)))?;
                    let mut d = Digest::default();
                    let mut buf = vec![0u8; CHUNK];
                    loop {
                        let k = s.read(&mut buf)?;
                        if k == 0 {
                            break;
                        }
                        d.update(&buf[..k]);
                    }
                    Ok(d.value())
                },
            ));
        }
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("receiver thread panicked")))
            })
            .collect()
    })
}

/// Sends `bytes` of stream `seed` to `addr`; returns (bytes, hash).
fn sender(
    addr: String,
    seed: u64,
    bytes: u64,
) -> std::thread::JoinHandle<std::io::Result<(u64, u64)>> {
    std::thread::spawn(move || {
        let mut s = TcpStream::connect(&addr)?;
        s.set_nodelay(true)?;
        let mut g = Generator::new(seed);
        let mut d = Digest::default();
        let mut buf = vec![0u8; CHUNK];
        let mut left = bytes;
        while left > 0 {
            let n = CHUNK.min(left as usize);
            g.fill(&mut buf[..n]);
            s.write_all(&buf[..n])?;
            d.update(&buf[..n]);
            left -= n as u64;
        }
        s.shutdown(std::net::Shutdown::Write)?;
        // Wait for the receiver to finish (it closes after EOF).
        let _ = s.read(&mut [0u8; 1]);
        Ok(d.value())
    })
}

/// Runs the demo; `Ok(())` only when every byte arrived intact. On failure
/// the working directory (certificates, gateway logs) is kept and named.
pub async fn run(opts: DemoOptions) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("scistream-demo-")
        .tempdir()
        .context("cannot create a working directory")?;
    let result = run_in(&opts, dir.path()).await;
    if result.is_err() || opts.keep {
        let kept = dir.keep();
        match &result {
            Err(_) => eprintln!(
                "working directory kept for inspection (gateway logs: *-s2cs.log): {}",
                kept.display()
            ),
            Ok(()) => println!("working directory kept: {}", kept.display()),
        }
    }
    result
}

async fn run_in(opts: &DemoOptions, work: &std::path::Path) -> anyhow::Result<()> {
    if opts.udp {
        return run_udp(opts, work).await;
    }
    let gateways = start_gateways(opts, work)?;
    let service = TcpListener::bind((LOCALHOST, 0)).context("cannot start the receiver")?;
    let service_port = service.local_addr()?.port();
    let n = opts.num_conn as usize;
    let received = receiver(service, n);
    println!("    analysis service (receiver) listening on 127.0.0.1:{service_port}");

    let tunnel = open_tunnel(&gateways, opts, service_port).await?;
    say(&format!(
        "streaming {} through the tunnel over {n} connection(s)",
        format_size(opts.bytes)
    ));
    let started = Instant::now();
    let mut sent = send(&tunnel.outbound.listeners, opts.bytes, n)?;
    let mut got = tokio::task::spawn_blocking(move || received.join())
        .await?
        .map_err(|_| anyhow::anyhow!("receiver thread panicked"))?
        .context("receiving from the tunnel")?;
    let elapsed = started.elapsed();
    sent.sort_unstable();
    got.sort_unstable();
    let total: u64 = got.iter().map(|(b, _)| b).sum();
    println!(
        "    received {} in {:.2} s: {} through the tunnel",
        format_size(total),
        elapsed.as_secs_f64(),
        format_rate(total as f64 * 8.0 / elapsed.as_secs_f64())
    );

    tunnel.release().await?;
    // Stopping waits for the processes; let this runtime close our gRPC
    // connections meanwhile instead of blocking it.
    tokio::task::spawn_blocking(move || {
        gateways.hpc.stop();
        gateways.inst.stop();
    })
    .await?;

    if sent != got {
        bail!("data mismatch: sent (bytes, xxh3) {sent:x?}, received {got:x?}");
    }
    println!(
        "OK: every byte arrived intact (byte counts and XXH3 checksums match on all {n} streams)"
    );
    Ok(())
}

/// The demo with datagrams: a UDP receiver, a `--protocol udp` tunnel, one
/// flow per listener, every datagram checked.
async fn run_udp(opts: &DemoOptions, work: &std::path::Path) -> anyhow::Result<()> {
    let gateways = start_gateways(opts, work)?;
    let service = std::net::UdpSocket::bind((LOCALHOST, 0)).context("cannot start the receiver")?;
    let service_port = service.local_addr()?.port();
    println!("    analysis service (UDP receiver) on 127.0.0.1:{service_port}");
    let tunnel = open_tunnel(&gateways, opts, service_port).await?;
    let n = opts.num_conn as usize;
    let entries = tunnel
        .outbound
        .listeners
        .iter()
        .map(|l| l.parse().with_context(|| format!("listener {l}")))
        .collect::<anyhow::Result<Vec<std::net::SocketAddr>>>()?;
    let per_flow = (opts.bytes / crate::demo_udp::DATAGRAM as u64 / n as u64).max(1);
    say(&format!(
        "sending {} datagrams of {} bytes through the tunnel, one flow per listener ({n})",
        per_flow * n as u64,
        crate::demo_udp::DATAGRAM
    ));
    let outcome =
        tokio::task::spawn_blocking(move || crate::demo_udp::run(&entries, service, per_flow))
            .await?;
    let status = scistream_client::tunnel::status(&tunnel.inst, &tunnel.uid).await;
    tunnel.release().await?;
    tokio::task::spawn_blocking(move || {
        gateways.hpc.stop();
        gateways.inst.stop();
    })
    .await?;
    if let Some(s) = status.ok().as_ref().and_then(|v| v.first()) {
        println!(
            "    instrument gateway: {} flows, {} datagrams to target, {} dropped (queue), {} dropped (kernel)",
            s.udp_flows_total, s.udp_datagrams_to_target, s.udp_dropped, s.udp_kernel_dropped
        );
    }
    let outcome = outcome.context("datagrams through the tunnel")?;
    let bytes = outcome.datagrams * crate::demo_udp::DATAGRAM as u64;
    println!(
        "    received {} datagrams ({}) in {:.2} s: {}",
        outcome.datagrams,
        format_size(bytes),
        outcome.elapsed.as_secs_f64(),
        format_rate(bytes as f64 * 8.0 / outcome.elapsed.as_secs_f64())
    );
    println!("OK: every datagram arrived whole, intact and in order on all {n} flows");
    Ok(())
}

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// The two gateways of the demo and the CA both trust.
struct Gateways {
    hpc: LocalGateway,
    inst: LocalGateway,
    trust: Trust,
}

/// Makes a throwaway CA and certificates in `work`, and starts both
/// gateways (each `s2cs` with its `s2ds`) on loopback.
fn start_gateways(opts: &DemoOptions, work: &std::path::Path) -> anyhow::Result<Gateways> {
    let s2cs = match &opts.s2cs_bin {
        Some(p) => p.clone(),
        None => sibling_binary("s2cs").context(
            "s2cs was not found next to s2uc; build the whole workspace first: cargo build --release",
        )?,
    };
    say("generating a throwaway facility CA and gateway certificates");
    let ca = Ca::new("scistream demo CA")?;
    let ca_path = work.join("ca.crt");
    crate::pki::write_file(&ca_path, &ca.cert_pem(), false)?;
    let names = ["localhost", "127.0.0.1"];
    let hpc_cert = ca.issue(&names)?.write(work, "hpc")?;
    let inst_cert = ca.issue(&names)?.write(work, "inst")?;

    say("starting the HPC gateway (s2cs + s2ds) and the instrument gateway");
    let gateway = |name: &str, range: (u16, u16), cert: &crate::pki::Written| GatewayOptions {
        s2cs_bin: s2cs.clone(),
        listener_ip: LOCALHOST,
        port_range: range,
        tls: Some((cert.cert.clone(), cert.key.clone())),
        state_dir: work.join(format!("{name}-state")),
        log: Some(work.join(format!("{name}-s2cs.log"))),
        extra_args: vec!["--peer-ca".into(), ca_path.display().to_string()],
    };
    let hpc = LocalGateway::start(&gateway("hpc", (5100, 5199), &hpc_cert))
        .map_err(anyhow::Error::msg)?;
    let inst = LocalGateway::start(&gateway("inst", (6100, 6199), &inst_cert))
        .map_err(anyhow::Error::msg)?;
    println!(
        "    HPC gateway s2cs at {}, instrument gateway s2cs at {}",
        hpc.control(),
        inst.control()
    );
    Ok(Gateways {
        hpc,
        inst,
        trust: Trust::Root(ca_path),
    })
}

/// The session, open on both gateways.
struct Tunnel {
    uid: String,
    outbound: scistream_client::Tunnel,
    hpc: scistream_client::Connection,
    inst: scistream_client::Connection,
}

/// The two requests a user makes, through the real gRPC API.
async fn open_tunnel(
    g: &Gateways,
    opts: &DemoOptions,
    service_port: u16,
) -> anyhow::Result<Tunnel> {
    let n = opts.num_conn;
    let protocol = if opts.udp {
        scistream_protocol::Protocol::Udp
    } else {
        scistream_protocol::Protocol::Tcp
    };
    let options = RequestOptions {
        num_conn: n,
        rate_kbps: 0,
        protocol,
    };
    let flag = if opts.udp { " --protocol udp" } else { "" };
    say(&format!(
        "s2uc inbound_request --s2cs {} --server_cert ca.crt --remote_ip 127.0.0.1 --receiver_ports {service_port} --num_conn {n} --rate 0{flag}",
        g.hpc.control()
    ));
    let hpc = connect(&g.hpc.control(), &g.trust, Auth::none()).await?;
    let inbound = inbound_request(&hpc, "127.0.0.1", &[service_port], &options).await?;
    let listeners = inbound.listeners.join(",");
    println!("    uid {}  inbound listeners {listeners}", inbound.uid);

    say(&format!(
        "s2uc outbound_request --s2cs {} --server_cert ca.crt --num_conn {n} --rate 0{flag} {} {listeners}",
        g.inst.control(),
        inbound.uid,
    ));
    let inst = connect(&g.inst.control(), &g.trust, Auth::none()).await?;
    let announce = vec!["127.0.0.1:1".into()];
    let outbound =
        outbound_request(&inst, &inbound.uid, inbound.listeners, announce, &options).await?;
    println!(
        "    outbound listeners {} (the detector connects here)",
        outbound.listeners.join(",")
    );
    Ok(Tunnel {
        uid: inbound.uid,
        outbound,
        hpc,
        inst,
    })
}

impl Tunnel {
    async fn release(self) -> anyhow::Result<()> {
        say("releasing the session on both gateways");
        release(&self.inst, &self.uid).await?;
        release(&self.hpc, &self.uid).await?;
        Ok(())
    }
}

/// Sends `bytes` spread over the first `n` listeners, one thread each;
/// returns what each sent (bytes, XXH3).
fn send(listeners: &[String], bytes: u64, n: usize) -> anyhow::Result<Vec<(u64, u64)>> {
    let per_conn = bytes / n as u64;
    let senders: Vec<_> = listeners
        .iter()
        .take(n)
        .enumerate()
        .map(|(i, l)| {
            let extra = if i == 0 { bytes % n as u64 } else { 0 };
            sender(l.clone(), i as u64 + 1, per_conn + extra)
        })
        .collect();
    let mut sent = Vec::new();
    for s in senders {
        sent.push(
            s.join()
                .map_err(|_| anyhow::anyhow!("sender thread panicked"))?
                .context("sending through the tunnel")?,
        );
    }
    Ok(sent)
}
