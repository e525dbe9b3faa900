//! `s2ds` options. `s2cs` starts `s2ds` and passes these; people rarely do.

use std::path::PathBuf;

use clap::Parser;

use crate::reactor::EngineChoice;

/// SciStream data server: forwards the TCP streams of the sessions that
/// s2cs hands it. Normally started and supervised by s2cs; pass extra
/// options with `s2cs --s2ds-arg=...` (a repeated option: the last one wins,
/// so `--s2ds-arg` overrides what s2cs derives from its own flags).
#[derive(Debug, Clone, Parser)]
#[command(name = "s2ds", version, about, long_about = None, args_override_self = true)]
pub struct Config {
    /// Take the control socket (a listening Unix seqpacket socket) from
    /// standard input. This is how s2cs starts s2ds.
    #[arg(long = "control-stdin", conflicts_with = "control_socket")]
    pub control_stdin: bool,

    /// Listen for s2cs on this Unix socket path instead.
    #[arg(long = "control-socket")]
    pub control_socket: Option<PathBuf>,

    /// Worker threads, one per core. Default: every core this process may run on.
    #[arg(long)]
    pub workers: Option<usize>,

    /// Readiness engine. `auto` uses io_uring when the kernel allows it, else epoll.
    #[arg(long, value_enum, default_value = "auto", env = "S2DS_ENGINE")]
    pub engine: EngineChoice,

    /// Pipe size of each forwarding direction (F_SETPIPE_SZ), e.g. 1MiB, 256KiB.
    #[arg(long = "pipe-size", default_value = "1MiB", value_parser = parse_pipe_size)]
    pub pipe_size: usize,

    /// SO_SNDBUF for forwarded sockets, e.g. 64MiB (default: the kernel's autotuning).
    #[arg(long, value_parser = parse_buf)]
    pub sndbuf: Option<usize>,

    /// SO_RCVBUF for forwarded sockets (default: the kernel's autotuning).
    #[arg(long, value_parser = parse_buf)]
    pub rcvbuf: Option<usize>,

    /// Leave Nagle's algorithm on (TCP_NODELAY is set by default).
    #[arg(long = "no-nodelay")]
    pub no_nodelay: bool,

    /// How plaintext legs are forwarded: `splice` through a pipe (no copy in
    /// user space), or `copy` through a buffer of --pipe-size bytes.
    #[arg(long, value_enum, default_value = "splice")]
    pub forward: Forward,

    /// Data-channel certificate chain (PEM) this gateway presents to peer gateways.
    #[arg(long = "data-cert")]
    pub data_cert: Option<PathBuf>,

    /// Key of --data-cert (PEM).
    #[arg(long = "data-key")]
    pub data_key: Option<PathBuf>,

    /// PEM bundle of the peer facilities' CAs or gateway certificates: what an
    /// outbound gateway trusts, and what an inbound gateway checks client
    /// certificates against with --require-client-cert.
    #[arg(long = "peer-ca")]
    pub peer_ca: Option<PathBuf>,

    /// Inbound: require a client certificate from peer gateways, verified against --peer-ca.
    #[arg(long = "require-client-cert")]
    pub require_client_cert: bool,

    /// How long a data connection may take to finish its setup (TLS
    /// handshake, preamble, answer) before it is closed.
    #[arg(long = "handshake-timeout", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: std::time::Duration,

    /// Dead-peer detection: TCP keepalive probes start after this much
    /// silence on a forwarded connection (then every third of it, 4 probes).
    /// An idle connection is never closed for being idle: a paused detector
    /// is not a dead one. `0s` turns keepalive off.
    #[arg(long, default_value = "30s", value_parser = parse_duration_or_zero)]
    pub keepalive: std::time::Duration,

    /// Close forwarded connections that moved no byte for this long. Off
    /// (`0s`) by default: detectors pause between scans for minutes.
    #[arg(long = "idle-timeout", default_value = "0s", value_parser = parse_duration_or_zero)]
    pub idle_timeout: std::time::Duration,

    /// Dead-peer detection: TCP_USER_TIMEOUT, how long sent data may stay
    /// unacknowledged (or keepalive probes unanswered) before the
    /// connection is ended. `0s` leaves the kernel default (~15 minutes).
    #[arg(long = "user-timeout", default_value = "60s", value_parser = parse_duration_or_zero)]
    pub user_timeout: std::time::Duration,

    /// Refresh TLS keys (KeyUpdate) after this many records sent on a
    /// connection. For tests; the default stays far inside AES-GCM's limit.
    #[arg(long = "rekey-records", default_value_t = crate::tlsrelay::DEFAULT_REKEY_RECORDS, hide = true)]
    pub rekey_records: u64,

    /// Offer ChaCha20-Poly1305 first even without kTLS. For tests.
    #[arg(long = "prefer-chacha", hide = true)]
    pub prefer_chacha: bool,

    /// Refresh keys every --rekey-records records whatever the suite
    /// (normally only suites with a per-key limit). For tests.
    #[arg(long = "rekey-any-suite", hide = true)]
    pub rekey_any_suite: bool,

    /// Kernel TLS: `auto` offloads connections to the kernel where it can
    /// (see the crate README for which), `off` keeps TLS in user space.
    #[arg(long, value_enum, default_value = "auto", env = "S2DS_KTLS")]
    pub ktls: crate::ktls::KtlsChoice,

    /// Whose AEAD code encrypts the data channel: `auto` (default) seals a
    /// few MiB with *ring* and with AWS-LC at start and takes the faster
    /// (and orders the suites by the same measurement), or `ring`, or `aws-lc`.
    #[arg(long, value_enum, default_value = "auto", env = "S2DS_CRYPTO")]
    pub crypto: crate::crypto::CryptoChoice,

    /// Do not pin workers to cores.
    #[arg(long = "no-pin")]
    pub no_pin: bool,

    /// Log lines as `text` or `json` (one object per line).
    #[arg(long = "log-format", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// How plaintext legs are forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Forward {
    /// splice(2) through a per-connection pipe.
    Splice,
    /// read/write through a per-connection buffer.
    Copy,
}

fn parse_pipe_size(s: &str) -> Result<usize, String> {
    let n = scistream_protocol::units::parse_size(s).map_err(|e| e.to_string())?;
    if !(4096..=(256 << 20)).contains(&n) {
        return Err(format!("pipe size {s} is outside 4KiB-256MiB"));
    }
    usize::try_from(n).map_err(|e| e.to_string())
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    match scistream_protocol::units::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be above zero".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_duration_or_zero(s: &str) -> Result<std::time::Duration, String> {
    scistream_protocol::units::parse_duration(s).map_err(|e| e.to_string())
}

fn parse_buf(s: &str) -> Result<usize, String> {
    let n = scistream_protocol::units::parse_size(s).map_err(|e| e.to_string())?;
    if !(4096..=(2 << 30)).contains(&n) {
        return Err(format!("socket buffer {s} is outside 4KiB-2GiB"));
    }
    usize::try_from(n).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_rejections() {
        let c = Config::try_parse_from(["s2ds", "--control-stdin"]).unwrap();
        assert_eq!(c.pipe_size, 1 << 20);
        assert_eq!(c.engine, EngineChoice::Auto);
        assert!(Config::try_parse_from(["s2ds", "--pipe-size", "12"]).is_err());
        assert!(Config::try_parse_from(["s2ds", "--pipe-size", "8MQ"]).is_err());
        assert!(
            Config::try_parse_from(["s2ds", "--control-stdin", "--control-socket", "/x"]).is_err()
        );
    }
}
