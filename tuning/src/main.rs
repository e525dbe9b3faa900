//! `s2tune`: what limits a SciStream gateway on this host, and the fix.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use scistream_protocol::units::{parse_duration, parse_rate};
use scistream_tuning::apply::{self, DEFAULT_STATE};
use scistream_tuning::check::{self, Status};
use scistream_tuning::host::{Facts, Root};
use scistream_tuning::rtt;
use scistream_tuning::target::{Target, format_ms};
use serde_json::json;

/// Network tuning for SciStream gateways and endpoints: checks this host
/// against the path it must fill, shows the arithmetic, and applies (and
/// reverts) the sysctl fixes.
#[derive(Debug, Parser)]
#[command(name = "s2tune", version, about, long_about = None, after_help = AFTER_HELP)]
struct Cli {
    /// Read /proc and /sys under DIR (DIR/proc, DIR/sys) instead of the
    /// host's: a copy of another host's tree, or a test tree.
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,

    /// One JSON object on stdout, for scripts.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Cmd,
}

const AFTER_HELP: &str = "\
A gateway for 100 Gbit/s over a 50 ms WAN:
  s2tune rtt peer-gw.example.org:5000          # measure the RTT
  s2tune check --rate 100Gbit --rtt 50ms       # what is wrong, and the fixes
  s2tune apply --rate 100Gbit --rtt 50ms       # the sysctl fixes as a diff
  sudo s2tune apply --rate 100Gbit --rtt 50ms --yes --persist /etc/sysctl.d/90-scistream.conf
  sudo s2tune revert                           # back to the values before";

#[derive(Debug, Clone, Copy, Args)]
struct PathArgs {
    /// Rate the path must carry, e.g. 100Gbit, 10Gb/s, 1.5Gbit. Without
    /// it (and --rtt), s2tune assumes a 100 Gbit/s path over 50 ms and says
    /// so: give your own.
    #[arg(long, value_parser = rate)]
    rate: Option<u64>,
    /// Round-trip time of the path, e.g. 50ms, 250us (see `s2tune rtt`).
    #[arg(long, value_parser = duration)]
    rtt: Option<Duration>,
}

/// The path assumed when --rate or --rtt is missing.
const ASSUMED_RATE: u64 = 100_000_000_000;
const ASSUMED_RTT: Duration = Duration::from_millis(50);

impl PathArgs {
    fn target(&self) -> Target {
        Target {
            rate_bps: self.rate.unwrap_or(ASSUMED_RATE),
            rtt: self.rtt.unwrap_or(ASSUMED_RTT),
        }
    }

    /// True (and said on stderr) when part of the path was assumed.
    fn assumed(&self) -> bool {
        let assumed = self.rate.is_none() || self.rtt.is_none();
        if assumed {
            eprintln!(
                "s2tune: ASSUMED PATH: {} -- the advice below is for that path, not necessarily yours. \
                 Give --rate (the rate the path must carry) and --rtt (s2tune rtt HOST measures it).",
                self.target().describe()
            );
        }
        assumed
    }
}

fn rate(s: &str) -> Result<u64, String> {
    match parse_rate(s) {
        Ok(0) => Err(format!("rate '{s}' must be above zero")),
        Ok(r) => Ok(r),
        Err(e) => Err(e.to_string()),
    }
}

fn duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s) {
        Ok(d) if d.is_zero() => Err(format!("'{s}' must be above zero")),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Inspect this host: one line per item (ok / warn / FAIL / ?), the
    /// current and recommended values, why it matters and the fix. Exit
    /// status 1 when an item fails.
    Check(PathArgs),
    /// Bandwidth-delay product and the buffer sizes (and s2cs flags) it implies.
    Bdp(PathArgs),
    /// Measure the round-trip time to HOST:PORT by timed TCP connects (an
    /// open or a closed port both answer within one round trip).
    Rtt(RttArgs),
    /// Show the sysctl fixes as a diff; with --yes apply them, saving the
    /// previous values for `s2tune revert`.
    Apply(ApplyArgs),
    /// Run s2bench over a grid of connections and buffer sizes (and TLS
    /// on/off with --loopback); print a table and the recommended
    /// --num_conn and buffers; write PREFIX.json and PREFIX.svg.
    Sweep(SweepArgs),
    /// Restore the values saved by `s2tune apply --yes`, and remove the
    /// file it persisted.
    Revert {
        /// The file `apply` saved the values in.
        #[arg(long, default_value = DEFAULT_STATE)]
        state: PathBuf,
    },
}

#[derive(Debug, Args)]
struct RttArgs {
    /// HOST:PORT (a peer gateway's control port, for example).
    target: String,
    /// Connects to time.
    #[arg(long, default_value_t = 10)]
    count: usize,
    /// Bound on each connect.
    #[arg(long, default_value = "2s", value_parser = duration)]
    timeout: Duration,
}

#[derive(Debug, Args)]
struct ApplyArgs {
    #[command(flatten)]
    path: PathArgs,
    /// Apply (without it: a dry run that only shows the diff).
    #[arg(long)]
    yes: bool,
    /// Also write the values to this sysctl.d file, to survive reboots.
    #[arg(long, value_name = "PATH")]
    persist: Option<PathBuf>,
    /// Only these sysctls (comma-separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Where the previous values are saved.
    #[arg(long, default_value = DEFAULT_STATE)]
    state: PathBuf,
}

#[derive(Debug, Args)]
struct SweepArgs {
    /// A running `s2bench sink` (HOST:PORT), or the listeners of an
    /// existing tunnel leading to one, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        required_unless_present = "loopback",
        conflicts_with = "loopback"
    )]
    connect: Vec<String>,
    /// Set up a sink and a tunnel (two gateways) on this host for each
    /// point: measures the gateways themselves.
    #[arg(long)]
    loopback: bool,
    /// Parallel connections to try.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8", value_parser = conns)]
    conns: Vec<usize>,
    /// Socket buffer sizes to try; `auto` is kernel autotuning.
    #[arg(long, value_delimiter = ',', default_value = "auto,16MiB,64MiB", value_parser = buffer)]
    buffers: Vec<Option<u64>>,
    /// Data-channel TLS settings to try (--loopback only).
    #[arg(long, value_delimiter = ',', default_value = "on,off", value_parser = ["on", "off"])]
    tls: Vec<String>,
    /// How long each point runs.
    #[arg(long, default_value = "5s", value_parser = duration)]
    duration: Duration,
    /// Message size.
    #[arg(long = "msg-size", default_value = "1MiB", value_parser = msg_size)]
    msg_size: u64,
    /// Write PREFIX.json and PREFIX.svg.
    #[arg(long, default_value = "s2tune-sweep")]
    report: PathBuf,
    /// The s2cs binary for --loopback (default: next to s2tune).
    #[arg(long = "s2cs-bin")]
    s2cs_bin: Option<PathBuf>,
}

fn conns(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=128).contains(&n) => Ok(n),
        _ => Err(format!("'{s}' is not a connection count between 1 and 128")),
    }
}

fn buffer(s: &str) -> Result<Option<u64>, String> {
    if s.trim() == "auto" {
        return Ok(None);
    }
    match scistream_protocol::units::parse_size(s) {
        Ok(0) => Err(format!("'{s}' must be above zero (or auto)")),
        Ok(n) if n > i32::MAX as u64 => Err(format!("'{s}' is above the kernel's 2 GiB - 1 limit")),
        Ok(n) => Ok(Some(n)),
        Err(e) => Err(e.to_string()),
    }
}

fn msg_size(s: &str) -> Result<u64, String> {
    match scistream_protocol::units::parse_size(s) {
        Ok(n) if (8..=(1 << 30)).contains(&n) => Ok(n),
        Ok(_) => Err(format!("'{s}': a message is between 8 bytes and 1GiB")),
        Err(e) => Err(e.to_string()),
    }
}

fn run_sweep(a: SweepArgs, json: bool) -> Result<ExitCode, anyhow::Error> {
    use scistream_tuning::sweep::{self, SweepConfig, Through};
    let msg_size = a.msg_size;
    let through = if a.loopback {
        Through::Loopback(a.s2cs_bin.clone())
    } else {
        Through::Connect(a.connect.clone())
    };
    let cfg = SweepConfig {
        through,
        conns: a.conns.clone(),
        buffers: a.buffers.clone(),
        tls: a.tls.iter().map(|t| t == "on").collect(),
        duration: a.duration,
        msg_size: msg_size as usize,
        progress: true,
    };
    let points = a.conns.len() * a.buffers.len() * if a.loopback { a.tls.len() } else { 1 };
    eprintln!(
        "s2tune sweep: {points} point(s) of {}, about {} s",
        format_ms(a.duration),
        (points as f64 * (a.duration.as_secs_f64() + 0.5)).ceil()
    );
    let report = sweep::run(&cfg).map_err(anyhow::Error::msg)?;
    let json_path = a.report.with_extension("json");
    let svg_path = a.report.with_extension("svg");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)? + "\n")
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", json_path.display()))?;
    scistream_bench::compare::chart::draw(
        &svg_path,
        &format!("s2tune sweep ({})", report.mode),
        &report.bars(),
    )
    .map_err(anyhow::Error::msg)?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.table());
        println!("{}", report.recommendation());
        println!("wrote {} and {}", json_path.display(), svg_path.display());
    }
    Ok(if report.best.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn main() -> ExitCode {
    // SCISTREAM_GENERATE=man:DIR|completions:DIR (tools/dist.sh): documentation, then exit.
    if let Some(code) = scistream_docgen::from_env(<Cli as clap::CommandFactory>::command) {
        return code;
    }
    let cli = Cli::parse();
    let json = cli.json;
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            if json {
                println!("{}", json!({"error": e.to_string()}));
            }
            eprintln!("s2tune: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, anyhow::Error> {
    let root = cli.root.as_deref().map(Root::under).unwrap_or_default();
    let json = cli.json;
    match cli.command {
        Cmd::Bdp(p) => bdp(&p, json),
        Cmd::Check(p) => check(&root, &p, json),
        Cmd::Rtt(a) => measure_rtt(&a, json),
        Cmd::Apply(a) => apply_fixes(&root, a, json),
        Cmd::Sweep(a) => run_sweep(a, json),
        Cmd::Revert { state } => revert(&root, &state, json),
    }
}

fn bdp(p: &PathArgs, json: bool) -> Result<ExitCode, anyhow::Error> {
    let t = p.target();
    let assumed = p.assumed();
    if json {
        println!(
            "{}",
            json!({"rate_bps": t.rate_bps, "rtt_s": t.rtt.as_secs_f64(), "bdp_bytes": t.bdp(), "assumed": assumed,
                   "buffer_max_bytes": t.buffer(), "netdev_max_backlog": t.backlog()})
        );
    } else {
        println!("{}", t.explain());
    }
    Ok(ExitCode::SUCCESS)
}

fn check(root: &Root, p: &PathArgs, json: bool) -> Result<ExitCode, anyhow::Error> {
    let t = p.target();
    let assumed = p.assumed();
    let items = check::evaluate(&Facts::gather(root), &t);
    if json {
        println!(
            "{}",
            json!({"target": {"rate_bps": t.rate_bps, "rtt_s": t.rtt.as_secs_f64(), "bdp_bytes": t.bdp(), "assumed": assumed},
                   "items": items})
        );
    } else {
        print!("{}", check::render(&items, &t));
    }
    Ok(if items.iter().any(|i| i.status == Status::Fail) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn measure_rtt(a: &RttArgs, json: bool) -> Result<ExitCode, anyhow::Error> {
    let count = a.count;
    if count == 0 {
        anyhow::bail!("--count must be at least 1");
    }
    let progress = |n, s: Option<Duration>| {
        if !json {
            match s {
                Some(d) => eprintln!("  connect {n}/{count}: {}", format_ms(d)),
                None => eprintln!("  connect {n}/{count}: no answer"),
            }
        }
    };
    let pause = Duration::from_millis(100);
    let report = rtt::measure(&a.target, count, a.timeout, pause, progress)?;
    let (Some(median), Some(min), Some(max)) = (report.median(), report.min(), report.max()) else {
        anyhow::bail!("no sample");
    };
    if json {
        println!(
            "{}",
            json!({"addr": report.addr.to_string(), "median_s": median.as_secs_f64(),
                   "min_s": min.as_secs_f64(), "max_s": max.as_secs_f64(),
                   "samples": report.samples.len(), "timeouts": report.timeouts})
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "rtt to {}: median {} (min {}, max {}, {} of {count} connects answered)",
        report.addr,
        format_ms(median),
        format_ms(min),
        format_ms(max),
        report.samples.len()
    );
    println!(
        "next: s2tune bdp --rate RATE --rtt {}",
        format_ms(median).replace(' ', "")
    );
    Ok(ExitCode::SUCCESS)
}

fn apply_fixes(root: &Root, a: ApplyArgs, json: bool) -> Result<ExitCode, anyhow::Error> {
    let t = a.path.target();
    if a.path.assumed() && a.yes {
        anyhow::bail!(
            "apply --yes changes this host's settings: give the path it must carry with --rate and --rtt \
             (s2tune does not apply buffer sizes for an assumed path)"
        );
    }
    let items = check::evaluate(&Facts::gather(root), &t);
    let known: Vec<&str> = scistream_tuning::host::SYSCTLS.to_vec();
    if let Some(bad) = a.only.iter().find(|o| !known.contains(&o.as_str())) {
        anyhow::bail!(
            "--only {bad}: not a sysctl s2tune manages ({})",
            known.join(", ")
        );
    }
    let changes = apply::plan(&items, &a.only);
    if changes.is_empty() {
        if json {
            println!("{}", json!({"changes": [], "applied": false}));
        } else {
            println!(
                "Nothing to change: every sysctl s2tune manages already suits {}.",
                t.describe()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !json {
        print!("{}", apply::diff(&changes, &t.describe()));
    }
    if a.yes {
        apply::apply(
            root,
            &changes,
            &a.state,
            a.persist.as_deref(),
            &t.describe(),
        )?;
    }
    if json {
        println!(
            "{}",
            json!({"changes": changes, "applied": a.yes, "state": a.state})
        );
    } else if a.yes {
        println!(
            "Applied {} change(s); previous values saved in {} (s2tune revert restores them){}.",
            changes.len(),
            a.state.display(),
            a.persist
                .map(|p| format!("; persisted in {}", p.display()))
                .unwrap_or_default()
        );
    } else {
        println!("Dry run: nothing changed. Add --yes to apply (as root).");
    }
    Ok(ExitCode::SUCCESS)
}

fn revert(root: &Root, state: &std::path::Path, json: bool) -> Result<ExitCode, anyhow::Error> {
    let restored = apply::revert(root, state)?;
    if json {
        println!("{}", json!({"restored": restored}));
    } else {
        for c in &restored {
            println!("{} = {} (was {})", c.name, c.to, c.from);
        }
        println!("Reverted {} sysctl(s).", restored.len());
    }
    Ok(ExitCode::SUCCESS)
}
