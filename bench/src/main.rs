//! The `s2bench` command line.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use scistream_bench::report::{Summary, summarize};
use scistream_bench::send::Stop;
use scistream_bench::sink::Sink;
use scistream_bench::source::{self, Detector, SourceConfig};
use scistream_bench::stats::gbps;
use scistream_protocol::units;

/// Benchmark harness for streaming through SciStream tunnels: a source and a
/// sink that verify every byte, a detector-frame simulator, and side-by-side
/// comparisons of tunnels and peer proxies.
#[derive(Debug, Parser)]
#[command(name = "s2bench", version, about, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

const AFTER_HELP: &str = "\
Through a tunnel: run the sink next to the analysis service's receiver port,
give that port to `s2uc inbound_request --receiver_ports`, and point the
source at the outbound gateway's listeners:
  hpc$        s2bench sink --listen 0.0.0.0:7001 --conns 4
  instrument$ s2bench source --connect 10.0.2.1:6100,10.0.2.1:6101 --conns 4 --duration 30s
Sizes take units (8MiB, 1GB), rates bits per second (10Gbit, 1.5Gb/s), durations (250ms, 30s).";

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Accept streams, verify every byte, report throughput and latency.
    Sink(SinkArgs),
    /// Stream to a sink (directly or through a tunnel).
    Source(SourceArgs),
    /// Simulate an area detector: frames of a fixed size at a fixed rate.
    Detector(DetectorArgs),
    /// Measure direct TCP, the SciStream tunnel and peer proxies side by side.
    Compare(CompareArgs),
    /// Measure what idle connections through a tunnel cost s2ds (memory, descriptors).
    Idle(IdleArgs),
    /// Time tunnel setups (inbound + outbound request pairs) made many at
    /// once against two local gateways: latency percentiles and setups/s.
    Setup(SetupArgs),
    /// Send numbered, checksummed UDP datagrams at a set rate.
    #[command(name = "udp-source", alias = "udp_source")]
    UdpSource(UdpSourceArgs),
    /// Receive a udp-source's datagrams: loss, reordering, duplicates, corruption.
    #[command(name = "udp-sink", alias = "udp_sink")]
    UdpSink(UdpSinkArgs),
}

#[derive(Debug, Args)]
struct SetupArgs {
    /// Tunnel pairs to set up.
    #[arg(long, default_value = "200", value_parser = positive_usize)]
    pairs: usize,
    /// Most pairs in flight at once.
    #[arg(long, default_value = "200", value_parser = positive_usize)]
    concurrency: usize,
    /// Connections (listeners) per session; more than one spreads each
    /// session over the cluster nodes (--cluster-nodes).
    #[arg(long, default_value = "1", value_parser = positive_usize)]
    conns: usize,
    /// First port of the gateways' port ranges (pairs x conns + 11 ports each).
    #[arg(long = "first-port", default_value_t = 12000)]
    first_port: u16,
    /// Write the report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The s2cs binary (default: next to s2bench).
    #[arg(long = "s2cs-bin")]
    s2cs_bin: Option<PathBuf>,
    /// Make the inbound (HPC) side a cluster of this many s2cs nodes on the
    /// etcd at --etcd, the requests spread over them in turn (0: one
    /// single-node gateway, no etcd).
    #[arg(long = "cluster-nodes", default_value_t = 0, requires = "etcd")]
    cluster_nodes: usize,
    /// etcd's client URL(s) for --cluster-nodes.
    #[arg(long)]
    etcd: Option<String>,
}

#[derive(Debug, Args)]
struct IdleArgs {
    /// Idle connections to hold, cumulative steps, e.g. 100,1000.
    #[arg(long, value_delimiter = ',', default_value = "100,1000", value_parser = positive_usize)]
    conns: Vec<usize>,
    /// Data channel of the tunnel: on (TLS, the default) or off (plaintext, splice).
    #[arg(long = "data-tls", default_value = "on", value_parser = ["on", "off"])]
    data_tls: String,
    /// Write the report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The s2cs binary (default: next to s2bench).
    #[arg(long = "s2cs-bin")]
    s2cs_bin: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct CompareArgs {
    /// Topologies to run, comma-separated: direct, scistream, haproxy-tls,
    /// nginx-tls, stunnel (the encrypting peers), haproxy, socat, nginx
    /// (plaintext peers); and data-plane variants scistream-plain,
    /// scistream-epoll, scistream-copy, scistream-pipe64k.
    #[arg(long, value_delimiter = ',', default_value = "direct,scistream,haproxy-tls,nginx-tls,stunnel,haproxy,socat,nginx", value_parser = topology)]
    only: Vec<scistream_bench::compare::topology::Kind>,
    /// Parallel connections; a list measures each, e.g. 1,4.
    #[arg(long, value_delimiter = ',', default_value = "1", value_parser = positive_usize)]
    conns: Vec<usize>,
    /// Message size.
    #[arg(long = "msg-size", default_value = "1MiB", value_parser = size)]
    msg_size: u64,
    /// Length of each measurement.
    #[arg(long, default_value = "5s", value_parser = duration)]
    duration: Duration,
    /// Rounds; each round runs every topology once, in turn.
    #[arg(long, default_value = "3", value_parser = positive_usize)]
    rounds: usize,
    /// Write every round's numbers and the machine's description as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw a bar chart (SVG) of median Gbit/s with min-max whiskers.
    #[arg(long)]
    chart: Option<PathBuf>,
    /// The s2cs binary (default: next to s2bench).
    #[arg(long = "s2cs-bin")]
    s2cs_bin: Option<PathBuf>,
    /// Another build's s2cs (with its s2ds next to it), measured side by
    /// side as the `scistream-baseline` topology (add it to --only).
    #[arg(long = "baseline-s2cs-bin")]
    baseline_s2cs_bin: Option<PathBuf>,
    /// The traffic: `s2bench` (its source and sink, every byte verified) or
    /// `iperf3` (iperf3 -c through each topology to iperf3 -s).
    #[arg(long, value_enum, default_value = "s2bench")]
    load: scistream_bench::compare::Load,
    /// Extra argument for every SciStream gateway (repeatable), e.g.
    /// --s2cs-arg=--no-pin or --s2cs-arg=--ktls=off.
    #[arg(long = "s2cs-arg", allow_hyphen_values = true)]
    s2cs_args: Vec<String>,
    /// etcd's client URL, for the `scistream-cluster3` topology (its
    /// inbound side three cluster nodes; add it to --only).
    #[arg(long)]
    etcd: Option<String>,
    /// Compare UDP instead: a UDP-only tunnel (TLS between the gateways)
    /// against socat's two-hop UDP chain, at each of these offered rates,
    /// e.g. 100Mbit,500Mbit,1Gbit (uses --duration, --rounds, --json).
    #[arg(long = "udp-rates", value_delimiter = ',', value_parser = rate)]
    udp_rates: Vec<u64>,
    /// Datagram size for --udp-rates (16-65507 bytes; UDP carries no more).
    #[arg(long = "udp-size", default_value = "1400", value_parser = udp_size)]
    udp_size: usize,
    /// With --load iperf3: offer this rate (all streams together, e.g.
    /// 2Gbit) instead of as fast as it goes, so every topology carries the
    /// same traffic and the CPU s/GiB column compares like with like (the
    /// figure that carries over to a real NIC).
    #[arg(long, value_parser = rate)]
    rate: Option<u64>,
}

#[derive(Debug, Args)]
struct UdpSourceArgs {
    /// Where to send (a tunnel's listener, or a UDP sink).
    #[arg(long)]
    connect: SocketAddr,
    /// Offered rate, bits per second (0: as fast as the socket takes them).
    #[arg(long, default_value = "100Mbit", value_parser = rate)]
    rate: u64,
    /// Datagram size, 16-65507 bytes (UDP carries no more over IPv4).
    #[arg(long, default_value = "1400", value_parser = udp_size)]
    size: usize,
    /// How long to send.
    #[arg(long, default_value = "10s", value_parser = duration)]
    duration: Duration,
}

#[derive(Debug, Args)]
struct UdpSinkArgs {
    /// Address to receive on.
    #[arg(long)]
    listen: SocketAddr,
    /// Stop after this much silence once datagrams have come.
    #[arg(long, default_value = "2s", value_parser = duration)]
    quiet: Duration,
    /// Stop after this long in any case.
    #[arg(long, default_value = "1h", value_parser = duration)]
    limit: Duration,
}

fn udp_size(s: &str) -> Result<usize, String> {
    let n = size(s)?;
    scistream_bench::udp::check_size(usize::try_from(n).map_err(|e| e.to_string())?)
}

fn topology(s: &str) -> Result<scistream_bench::compare::topology::Kind, String> {
    scistream_bench::compare::topology::Kind::parse(s.trim()).ok_or_else(|| {
        format!(
            "unknown topology '{s}': use {}",
            scistream_bench::compare::topology::Kind::names()
        )
    })
}

fn run_udp_compare(a: &CompareArgs) -> anyhow::Result<bool> {
    let cfg = scistream_bench::compare::udp::UdpCompareConfig {
        rates: a.udp_rates.clone(),
        size: a.udp_size,
        duration: a.duration,
        rounds: a.rounds,
        s2cs: a.s2cs_bin.clone(),
    };
    let report = scistream_bench::compare::udp::run(&cfg).map_err(anyhow::Error::msg)?;
    print!("{}", report.table());
    write_json(&a.json, &serde_json::to_value(&report)?)?;
    Ok(report.skipped.is_empty())
}

fn run_compare(a: CompareArgs) -> anyhow::Result<bool> {
    if !a.udp_rates.is_empty() {
        return run_udp_compare(&a);
    }
    let msg_size = check_msg(a.msg_size, "--msg-size")?;
    if a.rate.is_some() && a.load != scistream_bench::compare::Load::Iperf3 {
        anyhow::bail!(
            "--rate needs --load iperf3 (s2bench's own load always sends as fast as it can)"
        );
    }
    let cfg = scistream_bench::compare::CompareConfig {
        rate_bps: a.rate,
        only: a.only,
        conns: a.conns,
        msg_size,
        duration: a.duration,
        rounds: a.rounds,
        s2cs: a.s2cs_bin,
        s2cs_args: a.s2cs_args,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        load: a.load,
        baseline_s2cs: a.baseline_s2cs_bin,
        etcd: a.etcd,
    };
    let report = scistream_bench::compare::run(&cfg).map_err(anyhow::Error::msg)?;
    print!("{}", report.table());
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &a.chart {
        let title = format!(
            "s2bench compare, {} ({} cores), {}",
            report.machine.cpu_model,
            report.machine.cores,
            &report.date[..10]
        );
        scistream_bench::compare::chart::draw(path, &title, &report.bars())
            .map_err(anyhow::Error::msg)?;
    }
    Ok(report.all_ok())
}

#[derive(Debug, Args)]
struct SinkArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:7001")]
    listen: SocketAddr,
    /// Exit after this many connections finished (default: run until killed,
    /// with a report whenever every open connection has finished).
    #[arg(long, value_parser = positive_usize)]
    conns: Option<usize>,
    /// Detector frames later than this count as late, e.g. 50ms.
    #[arg(long, value_parser = duration)]
    deadline: Option<Duration>,
    /// Write the report as JSON to this file (`-` for stdout).
    #[arg(long)]
    json: Option<PathBuf>,
    /// No per-second lines.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Debug, Args)]
struct Common {
    /// Where to connect: HOST:PORT, or a comma-separated list that
    /// connections cycle through (a tunnel's listeners).
    #[arg(long, value_delimiter = ',', required = true)]
    connect: Vec<String>,
    /// Parallel connections.
    #[arg(long, default_value = "1", value_parser = positive_usize)]
    conns: usize,
    /// How long to run, e.g. 10s (default 10s unless --bytes/--frames is given).
    #[arg(long, value_parser = duration)]
    duration: Option<Duration>,
    /// Write the report as JSON to this file (`-` for stdout).
    #[arg(long)]
    json: Option<PathBuf>,
    /// No per-second lines.
    #[arg(long, short)]
    quiet: bool,
    /// SO_SNDBUF of each connection, e.g. 64MiB (default: kernel autotuning,
    /// bounded by net.ipv4.tcp_wmem; an explicit size is bounded by net.core.wmem_max).
    #[arg(long, value_parser = size)]
    sndbuf: Option<u64>,
}

#[derive(Debug, Args)]
struct SourceArgs {
    #[command(flatten)]
    common: Common,
    /// Total payload to send instead of a duration, e.g. 10GiB.
    #[arg(long, value_parser = size, conflicts_with = "duration")]
    bytes: Option<u64>,
    /// Message size, e.g. 1MiB, 64KiB.
    #[arg(long = "msg-size", default_value = "1MiB", value_parser = size)]
    msg_size: u64,
    /// Pace the source to this total rate, e.g. 200Mbit, 10Gbit.
    #[arg(long, value_parser = rate)]
    rate: Option<u64>,
    /// The sink streams back at the same time (both directions measured).
    #[arg(long)]
    bidir: bool,
}

#[derive(Debug, Args)]
struct DetectorArgs {
    #[command(flatten)]
    common: Common,
    /// Frame size, e.g. 8MiB for a 2k x 2k 16-bit detector.
    #[arg(long = "frame-size", default_value = "8MiB", value_parser = size)]
    frame_size: u64,
    /// Frames per second, over all connections.
    #[arg(long, default_value = "10", value_parser = positive_f64, allow_negative_numbers = true)]
    fps: f64,
    /// Number of frames (instead of --duration).
    #[arg(long, conflicts_with = "duration", value_parser = positive_u64)]
    frames: Option<u64>,
}

fn size(s: &str) -> Result<u64, String> {
    match units::parse_size(s) {
        Ok(0) => Err("must be above zero".into()),
        Ok(n) if n > u64::from(scistream_bench::wire::MAX_PAYLOAD) && s.contains('i') => Ok(n),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn rate(s: &str) -> Result<u64, String> {
    match units::parse_rate(s) {
        Ok(0) => Err("must be above zero".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn duration(s: &str) -> Result<Duration, String> {
    match units::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be above zero".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

fn positive_usize(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) if n > 10_000 => Err("at most 10000".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("'{s}' is not a whole number")),
    }
}

fn positive_u64(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("'{s}' is not a whole number")),
    }
}

fn positive_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() && v <= 1e6 => Ok(v),
        _ => Err(format!("'{s}' is not a rate above zero")),
    }
}

fn write_json(path: &Option<PathBuf>, value: &serde_json::Value) -> anyhow::Result<()> {
    let Some(path) = path else { return Ok(()) };
    let text = serde_json::to_string_pretty(value)?;
    if path.as_os_str() == "-" {
        println!("{text}");
    } else {
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn check_msg(n: u64, what: &str) -> anyhow::Result<usize> {
    if n < scistream_bench::wire::MIN_MSG as u64
        || n > u64::from(scistream_bench::wire::MAX_PAYLOAD)
    {
        bail!("{what} must be between 8 bytes and 1GiB (got {n} bytes)");
    }
    Ok(n as usize)
}

fn run_sink(a: SinkArgs) -> anyhow::Result<bool> {
    let sink = Sink::start(a.listen).with_context(|| format!("cannot listen on {}", a.listen))?;
    eprintln!("sink listening on {}", sink.addr);
    let meter = scistream_bench::stats::Meter::start("sink  ", sink.counter.clone(), !a.quiet);
    let mut all_ok = true;
    let mut batch = Vec::new();
    let mut finished = 0usize;
    loop {
        let Some(outcome) = sink.next(Duration::from_secs(3600)) else {
            continue;
        };
        finished += 1;
        batch.push(outcome);
        let run_over = match a.conns {
            Some(n) => finished >= n,
            None => sink.open.load(std::sync::atomic::Ordering::Relaxed) == 0,
        };
        if !run_over {
            continue;
        }
        let streams: Vec<_> = batch.iter().map(|o| &o.received).collect();
        let summary = summarize(&streams, a.deadline);
        all_ok &= summary.ok;
        println!("{}", summary.human("sink"));
        for o in &batch {
            if let Some(Err(e)) = &o.reverse {
                eprintln!("  reverse stream to {} failed: {e}", o.peer);
                all_ok = false;
            }
        }
        write_json(&a.json, &serde_json::json!({ "sink": summary }))?;
        batch.clear();
        if a.conns.is_some() {
            meter.finish();
            return Ok(all_ok);
        }
    }
}

fn run_source(c: &Common, cfg: SourceConfig) -> anyhow::Result<bool> {
    let r = source::run(&cfg)?;
    let bytes: u64 = r.sent.iter().map(|s| s.bytes).sum();
    let messages: u64 = r.sent.iter().map(|s| s.messages).sum();
    println!(
        "source: {} connection(s), {} sent in {:.2} s = {:.2} Gbit/s, {messages} messages",
        cfg.conns,
        units::format_size(bytes),
        r.seconds,
        gbps(bytes, r.seconds)
    );
    let reverse: Option<Summary> = cfg
        .bidir
        .then(|| summarize(&r.reverse.iter().collect::<Vec<_>>(), None));
    if let Some(rev) = &reverse {
        println!("{}", rev.human("reverse"));
    }
    write_json(
        &c.json,
        &serde_json::json!({
            "source": {"conns": cfg.conns, "bytes": bytes, "messages": messages, "seconds": r.seconds,
                       "gbps": gbps(bytes, r.seconds), "per_second_gbps": r.per_second},
            "reverse": reverse,
        }),
    )?;
    Ok(reverse.is_none_or(|s| s.ok))
}

fn main() -> ExitCode {
    // SCISTREAM_GENERATE=man:DIR|completions:DIR (tools/dist.sh): documentation, then exit.
    if let Some(code) = scistream_docgen::from_env(<Cli as clap::CommandFactory>::command) {
        return code;
    }
    // A source or sink with thousands of connections needs a descriptor each.
    let _ = scistream_protocol::nofile::raise_nofile_limit();
    let result = match Cli::parse().command {
        Cmd::Sink(a) => run_sink(a),
        Cmd::Compare(a) => run_compare(a),
        Cmd::UdpSource(a) => (|| {
            let sent = scistream_bench::udp::send(a.connect, a.size, a.rate as f64, a.duration)
                .with_context(|| format!("sending to {}", a.connect))?;
            println!(
                "sent {} datagrams of {} bytes in {:.1} s ({:.1} Mbit/s)",
                sent.datagrams,
                a.size,
                sent.elapsed.as_secs_f64(),
                sent.bytes as f64 * 8.0 / sent.elapsed.as_secs_f64().max(1e-9) / 1e6
            );
            Ok(true)
        })(),
        Cmd::UdpSink(a) => (|| {
            let socket = std::net::UdpSocket::bind(a.listen)
                .with_context(|| format!("cannot listen on {}", a.listen))?;
            let r = scistream_bench::udp::receive(&socket, a.quiet, a.limit)?;
            println!(
                "received {} datagrams ({} bytes); lost {} of {} (by sequence number); {} reordered, {} duplicates, {} corrupt",
                r.datagrams,
                r.bytes,
                r.lost(None),
                r.highest,
                r.reordered,
                r.duplicates,
                r.corrupt
            );
            Ok(r.corrupt == 0)
        })(),
        Cmd::Setup(a) => (|| {
            let cluster = a.etcd.clone().map(|etcd| (a.cluster_nodes.max(1), etcd));
            let plan = scistream_bench::setup::SetupPlan {
                pairs: a.pairs,
                concurrency: a.concurrency,
                conns: a.conns,
                first_port: a.first_port,
                s2cs: a.s2cs_bin,
                cluster,
            };
            let report = scistream_bench::setup::run(&plan).map_err(anyhow::Error::msg)?;
            print!("{}", report.table());
            write_json(&a.json, &serde_json::to_value(&report)?)?;
            Ok(true)
        })(),
        Cmd::Idle(a) => (|| {
            let mut steps = a.conns.clone();
            steps.sort_unstable();
            let report = scistream_bench::idle::run(&steps, a.s2cs_bin, a.data_tls == "on")
                .map_err(anyhow::Error::msg)?;
            print!("{}", report.table());
            write_json(&a.json, &serde_json::to_value(&report)?)?;
            Ok(true)
        })(),
        Cmd::Source(a) => check_msg(a.msg_size, "--msg-size").and_then(|msg_size| {
            let stop = match (a.bytes, a.common.duration) {
                (Some(b), _) => Stop::Bytes(b),
                (None, d) => Stop::After(d.unwrap_or(Duration::from_secs(10))),
            };
            let cfg = SourceConfig {
                targets: a.common.connect.clone(),
                conns: a.common.conns,
                msg_size,
                stop,
                rate_bps: a.rate,
                bidir: a.bidir,
                detector: None,
                progress: !a.common.quiet,
                sndbuf: a.common.sndbuf,
            };
            run_source(&a.common, cfg)
        }),
        Cmd::Detector(a) => check_msg(a.frame_size, "--frame-size").and_then(|frame_size| {
            let stop = Stop::After(if a.frames.is_some() {
                Duration::from_secs(u64::MAX / 4)
            } else {
                a.common.duration.unwrap_or(Duration::from_secs(10))
            });
            let cfg = SourceConfig {
                targets: a.common.connect.clone(),
                conns: a.common.conns,
                msg_size: frame_size,
                stop,
                rate_bps: None,
                bidir: false,
                detector: Some(Detector {
                    frame_size,
                    fps: a.fps,
                    frames: a.frames,
                }),
                progress: !a.common.quiet,
                sndbuf: a.common.sndbuf,
            };
            run_source(&a.common, cfg)
        }),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("s2bench: {e:#}");
            ExitCode::from(1)
        }
    }
}
