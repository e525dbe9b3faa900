//! The data plane's options, defined once.
//!
//! `s2ds` takes them on its command line; `s2cs` takes the same ones (they
//! appear in `s2cs --help` and its config file, in both spellings), checks
//! them with the same parsers, and hands them to the `s2ds` it starts with
//! [`DataPlaneOptions::to_args`]. So what `s2cs --check-config` accepts is
//! exactly what `s2ds` starts with.

use std::time::Duration;

use clap::Args;

/// Which readiness engine the data plane runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineChoice {
    /// io_uring when the kernel allows it, else epoll.
    Auto,
    /// epoll only.
    Epoll,
    /// io_uring only: fail at start when the kernel does not allow it.
    #[value(name = "io_uring", alias = "uring")]
    IoUring,
}

/// Whether kernel TLS may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KtlsChoice {
    /// When the kernel offers it and the connection's suite allows it.
    Auto,
    /// Never.
    Off,
}

/// Whose AEAD code encrypts the data channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CryptoChoice {
    /// Measure both at start and take the faster.
    Auto,
    /// *ring*.
    Ring,
    /// AWS-LC.
    #[value(name = "aws-lc")]
    AwsLc,
}

/// How plaintext legs are forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Forward {
    /// splice(2) through a per-connection pipe.
    Splice,
    /// read/write through a per-connection buffer.
    Copy,
}

/// The data plane's tuning and behaviour (not its TLS files, which `s2cs`
/// derives from its own).
#[derive(Debug, Clone, PartialEq, Eq, Args)]
#[command(next_help_heading = "Data plane (s2ds)")]
pub struct DataPlaneOptions {
    /// Readiness engine: auto (io_uring when the kernel allows it, else
    /// epoll), io_uring, or epoll.
    #[arg(long, value_enum, default_value = "auto", env = "S2DS_ENGINE")]
    pub engine: EngineChoice,

    /// Worker threads, one per core. Default: every core this process may run on.
    #[arg(long, value_parser = parse_workers)]
    pub workers: Option<usize>,

    /// Pipe size of each forwarding direction (F_SETPIPE_SZ), 4KiB-256MiB, e.g. 1MiB.
    #[arg(long = "pipe-size", alias = "pipe_size", default_value = "1MiB", value_parser = parse_pipe_size)]
    pub pipe_size: usize,

    /// SO_SNDBUF of forwarded sockets, 4KiB-2GiB, e.g. 64MiB (default: the
    /// kernel's autotuning). `s2tune bdp` says what a path needs.
    #[arg(long, value_parser = parse_buf)]
    pub sndbuf: Option<usize>,

    /// SO_RCVBUF of forwarded sockets, 4KiB-2GiB (default: the kernel's autotuning).
    #[arg(long, value_parser = parse_buf)]
    pub rcvbuf: Option<usize>,

    /// Leave Nagle's algorithm on (TCP_NODELAY is set by default).
    #[arg(long = "no-nodelay", alias = "no_nodelay")]
    pub no_nodelay: bool,

    /// How plaintext legs are forwarded: `splice` through a pipe (no copy in
    /// user space), or `copy` through a buffer of --pipe-size bytes.
    #[arg(long, value_enum, default_value = "splice")]
    pub forward: Forward,

    /// How long a data connection may take to finish its setup (TLS
    /// handshake, preamble, answer) before it is closed.
    #[arg(long = "handshake-timeout", alias = "handshake_timeout", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// Dead-peer detection: TCP keepalive probes after this much silence on
    /// a forwarded connection (then every third of it, 4 probes). An idle
    /// connection is never closed for being idle. `0s` turns keepalive off.
    #[arg(long, default_value = "30s", value_parser = parse_duration_or_zero)]
    pub keepalive: Duration,

    /// Close forwarded connections that moved no byte for this long. Off
    /// (`0s`) by default: detectors pause between scans for minutes, and a
    /// paused stream is not a dead one. (SciStream's HAProxy template cut
    /// idle streams after 50 s.)
    #[arg(long = "idle-timeout", alias = "idle_timeout", default_value = "0s", value_parser = parse_duration_or_zero)]
    pub idle_timeout: Duration,

    /// Dead-peer detection: TCP_USER_TIMEOUT, how long sent data may stay
    /// unacknowledged before the connection is ended. `0s` leaves the
    /// kernel default (~15 minutes).
    #[arg(long = "user-timeout", alias = "user_timeout", default_value = "60s", value_parser = parse_duration_or_zero)]
    pub user_timeout: Duration,

    /// Kernel TLS: `auto` moves connections into the kernel where it is safe
    /// (kTLS present, and a suite that needs no key updates or a kernel that
    /// takes new keys), `off` keeps TLS in user space.
    #[arg(long, value_enum, default_value = "auto", env = "S2DS_KTLS")]
    pub ktls: KtlsChoice,

    /// Whose AEAD code encrypts the data channel: `auto` seals a few MiB
    /// with *ring* and with AWS-LC at start and takes the faster (suite
    /// order from the same measurement), or `ring`, or `aws-lc`. The two
    /// gateways of a tunnel may differ.
    #[arg(long, value_enum, default_value = "auto", env = "S2DS_CRYPTO")]
    pub crypto: CryptoChoice,

    /// Do not pin the data plane's workers to cores.
    #[arg(long = "no-pin", alias = "no_pin")]
    pub no_pin: bool,

    /// UDP: a flow (one sender address and port) that moved no datagram
    /// either way for this long is dropped, with its connection through the
    /// tunnel; the sender's next datagram opens a new one.
    #[arg(long = "udp-idle", alias = "udp_idle", default_value = "60s", value_parser = parse_duration)]
    pub udp_idle: Duration,

    /// UDP: datagrams queued per flow and direction in front of a way on
    /// that cannot take more (the tunnel is slower than the sender); a
    /// datagram arriving at a full queue is dropped and counted (newest
    /// first: the ones queued keep their order and go on), 1-65536.
    #[arg(long = "udp-queue", alias = "udp_queue", default_value = "1024", value_parser = parse_udp_queue)]
    pub udp_queue: usize,

    /// UDP: most flows (senders) open at once per listener; each is a
    /// connection through the tunnel. A datagram from a new sender beyond
    /// this is dropped and counted, so that a sender changing its source
    /// port on every datagram cannot open thousands of connections, 1-65536.
    #[arg(long = "udp-max-flows", alias = "udp_max_flows", default_value = "1024", value_parser = parse_udp_flows)]
    pub udp_max_flows: usize,

    /// Most TCP connections one session may have open at once on each
    /// worker thread (a session's listeners are spread over the workers),
    /// 1-65536. A connection accepted beyond it is reset at once, counted as
    /// refused with the reason in the session's status, and logged (rate
    /// limited). This bounds what a tunnel loop between two gateways (an
    /// inbound session whose receiver is an outbound listener of a gateway
    /// whose session targets it) can open before its owner releases it.
    #[arg(long = "max-open-conns", alias = "max_open_conns", default_value = "1024", value_parser = parse_open_conns)]
    pub max_open_conns: usize,
}

impl Default for DataPlaneOptions {
    fn default() -> Self {
        DataPlaneOptions {
            engine: EngineChoice::Auto,
            workers: None,
            pipe_size: 1 << 20,
            sndbuf: None,
            rcvbuf: None,
            no_nodelay: false,
            forward: Forward::Splice,
            handshake_timeout: Duration::from_secs(10),
            keepalive: Duration::from_secs(30),
            idle_timeout: Duration::ZERO,
            user_timeout: Duration::from_secs(60),
            ktls: KtlsChoice::Auto,
            crypto: CryptoChoice::Auto,
            no_pin: false,
            udp_idle: Duration::from_secs(60),
            udp_queue: 1024,
            udp_max_flows: 1024,
            max_open_conns: 1024,
        }
    }
}

fn value_name<T: clap::ValueEnum>(v: T) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_owned())
        .unwrap_or_default()
}

impl DataPlaneOptions {
    /// These options as `s2ds` arguments (every one, explicitly).
    pub fn to_args(&self) -> Vec<String> {
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        let mut v = vec![
            format!("--engine={}", value_name(self.engine)),
            format!("--pipe-size={}", self.pipe_size),
            format!("--forward={}", value_name(self.forward)),
            format!("--handshake-timeout={}", ms(self.handshake_timeout)),
            format!("--keepalive={}", ms(self.keepalive)),
            format!("--idle-timeout={}", ms(self.idle_timeout)),
            format!("--user-timeout={}", ms(self.user_timeout)),
            format!("--ktls={}", value_name(self.ktls)),
            format!("--crypto={}", value_name(self.crypto)),
            format!("--udp-idle={}", ms(self.udp_idle)),
            format!("--udp-queue={}", self.udp_queue),
            format!("--udp-max-flows={}", self.udp_max_flows),
            format!("--max-open-conns={}", self.max_open_conns),
        ];
        if let Some(n) = self.workers {
            v.push(format!("--workers={n}"));
        }
        if let Some(n) = self.sndbuf {
            v.push(format!("--sndbuf={n}"));
        }
        if let Some(n) = self.rcvbuf {
            v.push(format!("--rcvbuf={n}"));
        }
        if self.no_nodelay {
            v.push("--no-nodelay".into());
        }
        if self.no_pin {
            v.push("--no-pin".into());
        }
        v
    }
}

fn parse_udp_queue(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=65536).contains(&n) => Ok(n),
        _ => Err(format!(
            "'{s}' is not a queue length between 1 and 65536 datagrams"
        )),
    }
}

fn parse_udp_flows(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=65536).contains(&n) => Ok(n),
        _ => Err(format!(
            "'{s}' is not a number of flows between 1 and 65536"
        )),
    }
}

fn parse_open_conns(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=65536).contains(&n) => Ok(n),
        _ => Err(format!(
            "'{s}' is not a number of connections between 1 and 65536"
        )),
    }
}

fn parse_workers(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=1024).contains(&n) => Ok(n),
        _ => Err(format!("'{s}' is not a worker count between 1 and 1024")),
    }
}

fn parse_pipe_size(s: &str) -> Result<usize, String> {
    let n = crate::units::parse_size(s).map_err(|e| e.to_string())?;
    if !(4096..=(256 << 20)).contains(&n) {
        return Err(format!("pipe size {s} is outside 4KiB-256MiB"));
    }
    usize::try_from(n).map_err(|e| e.to_string())
}

fn parse_buf(s: &str) -> Result<usize, String> {
    let n = crate::units::parse_size(s).map_err(|e| e.to_string())?;
    if !(4096..=(2 << 30)).contains(&n) {
        return Err(format!("socket buffer {s} is outside 4KiB-2GiB"));
    }
    usize::try_from(n).map_err(|e| e.to_string())
}

use crate::parse::{duration as parse_duration, duration_or_zero as parse_duration_or_zero};

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        o: DataPlaneOptions,
    }

    fn parse(args: &[&str]) -> Result<DataPlaneOptions, String> {
        Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
            .map(|c| c.o)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_round_trip_through_the_arguments() {
        let d = parse(&[]).unwrap();
        assert_eq!(d, DataPlaneOptions::default());
        let args = d.to_args();
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(parse(&refs).unwrap(), d);
        let tuned = parse(&[
            "--engine",
            "epoll",
            "--workers",
            "3",
            "--pipe_size",
            "256KiB",
            "--sndbuf",
            "8MiB",
            "--no-nodelay",
            "--forward",
            "copy",
            "--keepalive",
            "0s",
            "--crypto",
            "aws-lc",
            "--no-pin",
        ])
        .unwrap();
        let args = tuned.to_args();
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(parse(&refs).unwrap(), tuned);
    }

    #[test]
    fn every_option_refuses_a_bad_value_with_the_reason() {
        for (args, says) in [
            (vec!["--engine=dpdk"], "dpdk"),
            (vec!["--workers=0"], "worker count"),
            (vec!["--pipe-size=12"], "4KiB-256MiB"),
            (vec!["--pipe-size=1GiB"], "4KiB-256MiB"),
            (vec!["--sndbuf=1"], "4KiB-2GiB"),
            (vec!["--rcvbuf=3GiB"], "4KiB-2GiB"),
            (vec!["--forward=zerocopy"], "zerocopy"),
            (vec!["--handshake-timeout=0s"], "above zero"),
            (vec!["--keepalive=soon"], "soon"),
            (vec!["--idle-timeout=-1s"], "-1s"),
            (vec!["--user-timeout=x"], "x"),
            (vec!["--ktls=maybe"], "maybe"),
            (vec!["--crypto=openssl"], "openssl"),
        ] {
            let e = parse(&args).unwrap_err();
            assert!(e.contains(says), "{args:?}: {e}");
        }
    }
}
