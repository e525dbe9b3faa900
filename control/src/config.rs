//! `s2cs` configuration: command-line options, their defaults and validation.

pub use scistream_protocol::parse::{
    conns as parse_conns, duration as parse_duration, duration_or_zero as parse_duration_or_zero,
    port_range as parse_port_range, rate as parse_rate, size as parse_size,
};
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// What `--version` prints: this build, and the protocol it speaks.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (scistream-rs; speaks SciStream 1.2's control protocol, gRPC scistream.Control)"
);

/// SciStream control server: allocates data listeners, accepts the
/// `scistream.Control` gRPC calls from `s2uc` (and SciStream's own clients),
/// and runs the data plane (`s2ds`) that forwards the streams.
#[derive(Debug, Clone, Parser)]
#[command(name = "s2cs", version = VERSION, about, long_about = None, after_help = AFTER_HELP, args_override_self = true)]
pub struct Config {
    /// Address the data listeners bind to and that is advertised to clients
    /// (the gateway's address as the peer gateway or the instrument sees it).
    #[arg(long = "listener-ip", alias = "listener_ip", default_value = "0.0.0.0")]
    pub listener_ip: IpAddr,

    /// TCP port of the gRPC control service.
    #[arg(long, default_value_t = 5000)]
    pub port: u16,

    /// Address the gRPC control service binds to.
    #[arg(long = "control-ip", alias = "control_ip", default_value = "0.0.0.0")]
    pub control_ip: IpAddr,

    /// Ports handed out for data listeners, as FIRST-LAST (inclusive).
    #[arg(long = "port-range", alias = "port_range", default_value = "5100-5200", value_parser = parse_port_range)]
    pub port_range: RangeInclusive<u16>,

    /// PEM certificate (chain) of the control service.
    #[arg(
        long = "server_crt",
        alias = "server-crt",
        default_value = "server.crt"
    )]
    pub server_crt: PathBuf,

    /// PEM private key of the control service.
    #[arg(
        long = "server_key",
        alias = "server-key",
        default_value = "server.key"
    )]
    pub server_key: PathBuf,

    /// Development only: serve gRPC without TLS. Anyone on the network can
    /// read and forge control traffic. Logged as a warning at start.
    #[arg(long)]
    pub insecure: bool,

    /// How long a `req` waits for its `hello` before its ports are freed
    /// and the caller gets DEADLINE_EXCEEDED. Seconds, or with a unit: 90s, 3m.
    #[arg(long = "hello-timeout", alias = "hello_timeout", default_value = "180s", value_parser = parse_duration)]
    pub hello_timeout: Duration,

    /// How long a `hello` that arrives before its `req` is held, waiting
    /// for that `req`, before NOT_FOUND.
    #[arg(long = "hello-grace", alias = "hello_grace", default_value = "10s", value_parser = parse_duration)]
    pub hello_grace: Duration,

    /// Directory for this server's state (sessions, data-plane control
    /// socket, lock, tag key): created 0700; refused when another user owns
    /// it or can write to it. Default: /var/lib/scistream/s2cs-PORT as
    /// root, else $XDG_STATE_HOME/scistream/s2cs-PORT (~/.local/state/...).
    #[arg(long = "state-dir", alias = "state_dir")]
    pub state_dir: Option<PathBuf>,

    /// Path of the s2ds data-plane binary. Default: `s2ds` next to this executable.
    #[arg(long = "s2ds-bin", alias = "s2ds_bin")]
    pub s2ds_bin: Option<PathBuf>,

    /// Extra argument passed to every s2ds started (repeatable), e.g.
    /// `--s2ds-arg=--workers=4`.
    #[arg(long = "s2ds-arg", alias = "s2ds_arg", allow_hyphen_values = true)]
    pub s2ds_args: Vec<String>,

    /// Data channel between gateways: `on` (TLS 1.3, the default) or `off`
    /// (plaintext: only inside one facility, or for measurement). Both
    /// gateways of a tunnel must agree.
    #[arg(long = "data-tls", alias = "data_tls", default_value = "on", value_parser = ["on", "off"])]
    pub data_tls: String,

    /// Certificate chain (PEM) this gateway presents on the data channel.
    /// Default: --server_crt.
    #[arg(long = "data-cert", alias = "data_cert")]
    pub data_cert: Option<PathBuf>,

    /// Key of --data-cert. Default: --server_key.
    #[arg(long = "data-key", alias = "data_key")]
    pub data_key: Option<PathBuf>,

    /// PEM bundle of the CAs (or gateway certificates) of the peer facilities:
    /// what this gateway trusts when it connects to an inbound gateway (a
    /// certificate in it is also trusted as pinned, even one marked CA:TRUE),
    /// and checks client certificates against (mutual TLS: --require-client-cert,
    /// and sessions with weak uids). Optional: without it outbound sessions
    /// trust the system's CA store, and a gateway serving inbound sessions
    /// needs only its certificate and key.
    #[arg(long = "peer-ca", alias = "peer_ca")]
    pub peer_ca: Option<PathBuf>,

    /// As the inbound gateway, require a client certificate from the
    /// outbound gateway (mutual TLS), verified against --peer-ca.
    #[arg(long = "require-client-cert", alias = "require_client_cert")]
    pub require_client_cert: bool,

    /// The rate of a `req` that does not come from this project's `s2uc`
    /// (SciStream's own client sends `rate=10000`, 10 Mbit/s, on every
    /// request, and SciStream never enforced it): `ignore` (default: such
    /// sessions are not rate-capped) or `enforce`. Rates asked for through
    /// `s2uc --rate` are always enforced.
    #[arg(long = "unmarked-rates", alias = "unmarked_rates", default_value = "ignore", value_parser = ["ignore", "enforce"])]
    pub unmarked_rates: String,

    /// Highest rate a request may ask for, e.g. 10Gbit; requests above it,
    /// or without a cap (rate 0), get INVALID_ARGUMENT. Default: no bound.
    #[arg(long = "max-rate", alias = "max_rate", value_parser = parse_rate)]
    pub max_rate: Option<u64>,

    /// On SIGTERM/SIGINT: how long established connections may go on after
    /// the listeners closed, before the rest are closed.
    #[arg(long = "drain-timeout", alias = "drain_timeout", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Most sessions at once; past it requests get RESOURCE_EXHAUSTED.
    /// Default: as many as the port range holds.
    #[arg(long = "max-sessions", alias = "max_sessions", value_parser = clap::value_parser!(usize))]
    pub max_sessions: Option<usize>,

    /// Most connections (listeners) one session may ask for (1-128).
    /// Default: 128, or the per-identity port quota when that is smaller
    /// (a session must fit in what its owner may hold).
    #[arg(long = "max-conns-per-session", alias = "max_conns_per_session", value_parser = parse_conns)]
    pub max_conns_per_session: Option<usize>,

    /// Most data ports one identity may hold at once (under `--auth none`:
    /// one source address). Default: half the port range, so that no one
    /// caller can take every port.
    #[arg(long = "max-ports-per-identity", alias = "max_ports_per_identity", value_parser = clap::value_parser!(usize))]
    pub max_ports_per_identity: Option<usize>,

    /// Most sessions one identity (under `--auth none`: one source address)
    /// may hold at once.
    #[arg(
        long = "max-sessions-per-identity",
        alias = "max_sessions_per_identity",
        default_value_t = 64
    )]
    pub max_sessions_per_identity: usize,

    /// A session whose `update` never comes (its hello arrived, so it holds
    /// its ports, but it forwards nothing) is released after this long.
    /// `0s`: never.
    #[arg(long = "update-timeout", alias = "update_timeout", default_value = "10m", value_parser = parse_duration_or_zero)]
    pub update_timeout: Duration,

    /// Sessions whose uid is not a random UUID (SciStream's own client
    /// makes time-based ones): `require-client-cert` (default: the peer
    /// gateway must present a certificate the peer CA verifies, so knowing
    /// the uid is not enough), `allow` (the uid alone, as for random uids),
    /// or `refuse`.
    #[arg(long = "weak-uids", alias = "weak_uids", default_value = "require-client-cert", value_parser = ["require-client-cert", "allow", "refuse"])]
    pub weak_uids: String,

    /// Most control connections open at once, from everyone.
    #[arg(
        long = "max-control-conns",
        alias = "max_control_conns",
        default_value_t = 1024
    )]
    pub max_control_conns: usize,

    /// Most control connections open at once from one source address.
    #[arg(
        long = "max-control-conns-per-source",
        alias = "max_control_conns_per_source",
        default_value_t = 64
    )]
    pub max_control_conns_per_source: usize,

    /// A control connection must finish its TLS handshake and send its
    /// first HTTP/2 bytes within this long, or it is closed.
    #[arg(long = "control-setup-timeout", alias = "control_setup_timeout", default_value = "10s", value_parser = parse_duration)]
    pub control_setup_timeout: Duration,

    /// Admission control: the sum of the sessions' rates stays within this
    /// (e.g. 100Gbit); requests past it get RESOURCE_EXHAUSTED saying what is
    /// left, and uncapped requests (rate 0) are refused. Default: no admission control.
    #[arg(long, value_parser = parse_rate)]
    pub capacity: Option<u64>,

    /// Most requests one identity may have waiting for their hello.
    #[arg(
        long = "max-pending-per-identity",
        alias = "max_pending_per_identity",
        default_value_t = 16
    )]
    pub max_pending_per_identity: usize,

    /// The data plane's options, passed to every s2ds started (the same
    /// definitions s2ds has, so what is accepted here starts there).
    #[command(flatten)]
    pub dp: scistream_protocol::options::DataPlaneOptions,

    /// How calls are authenticated: `none` (every call accepted; only for
    /// development or a closed network), `introspect` (OAuth2 token
    /// introspection at --introspect-url, Globus Auth by default, with
    /// --client_id and a secret) or `tokens` (static tokens, --tokens-file).
    /// Default: introspect when --client_id is given, tokens when
    /// --tokens-file is, else none.
    #[arg(long, value_parser = ["none", "introspect", "tokens"], help_heading = "Authentication")]
    pub auth: Option<String>,

    /// This gateway's OAuth2 client id (at Globus Auth: the id of its
    /// registered resource server, also the id in its scope).
    #[arg(
        long = "client_id",
        alias = "client-id",
        help_heading = "Authentication"
    )]
    pub client_id: Option<String>,

    /// The client secret. Visible in process listings: prefer
    /// --client_secret-file or the S2CS_CLIENT_SECRET environment variable.
    #[arg(
        long = "client_secret",
        alias = "client-secret",
        help_heading = "Authentication"
    )]
    pub client_secret: Option<String>,

    /// File holding the client secret (its first line).
    #[arg(long = "client_secret-file", aliases = ["client-secret-file", "client_secret_file"], help_heading = "Authentication")]
    pub client_secret_file: Option<PathBuf>,

    /// RFC 7662 token introspection endpoint.
    #[arg(long = "introspect-url", alias = "introspect_url", default_value = scistream_oauth::GLOBUS_INTROSPECT, help_heading = "Authentication")]
    pub introspect_url: String,

    /// The scope tokens must carry. Default at Globus Auth:
    /// https://auth.globus.org/scopes/CLIENT_ID/scistream (SciStream's);
    /// required with another server.
    #[arg(
        long = "required-scope",
        alias = "required_scope",
        help_heading = "Authentication"
    )]
    pub required_scope: Option<String>,

    /// Bound on one introspection round trip; past it the call gets UNAVAILABLE.
    #[arg(long = "introspect-timeout", alias = "introspect_timeout", default_value = "5s", value_parser = parse_duration, help_heading = "Authentication")]
    pub introspect_timeout: Duration,

    /// Longest an introspected token is trusted before asking again (also
    /// how long a revoked token may still work here).
    #[arg(long = "introspect-cache", alias = "introspect_cache", default_value = "60s", value_parser = parse_duration, help_heading = "Authentication")]
    pub introspect_cache: Duration,

    /// Extra CA certificate (PEM) for the introspection endpoint.
    #[arg(long = "auth-ca", alias = "auth_ca", help_heading = "Authentication")]
    pub auth_ca: Option<PathBuf>,

    /// Static tokens: lines of `IDENTITY TOKEN`, mode 0600, re-read on SIGHUP.
    #[arg(
        long = "tokens-file",
        alias = "tokens_file",
        help_heading = "Authentication"
    )]
    pub tokens_file: Option<PathBuf>,

    /// Only the identities in this file (ids or usernames, one per line,
    /// re-read on SIGHUP) may create sessions.
    #[arg(
        long = "allow-identities",
        alias = "allow_identities",
        help_heading = "Authorization"
    )]
    pub allow_identities: Option<PathBuf>,

    /// Identities (ids or usernames, comma-separated) that may update and
    /// release any session, not only their own.
    #[arg(long, value_delimiter = ',', help_heading = "Authorization")]
    pub admins: Vec<String>,

    /// Targets this gateway may forward to: CIDR ranges with optional
    /// ports, comma-separated or repeated, e.g. 10.0.0.0/8:5000-6000,
    /// [fd00::/8]:7000. Without it every target is allowed (a warning says
    /// so at start): the gateway is then an open relay.
    #[arg(long = "allow-targets", alias = "allow_targets", value_delimiter = ',', value_parser = crate::access::parse_target_rule, help_heading = "Authorization")]
    pub allow_targets: Vec<crate::access::TargetRule>,

    /// TOML file of options (keys: the long options, either spelling);
    /// flags given on the command line win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long = "print-config", alias = "print_config")]
    pub print_config: bool,

    /// Validate the configuration, certificates, keys and auth files, then
    /// exit: 0 when it would start (for ExecStartPre/ExecReload).
    #[arg(long = "check-config", alias = "check_config")]
    pub check_config: bool,

    /// Serve Prometheus metrics over plain HTTP at http://ADDR/metrics.
    /// ADDR is IP:PORT, or a bare PORT meaning 127.0.0.1:PORT. Off by
    /// default; it names sessions by their log tags (never their uids) and
    /// shows their traffic, so keep it on loopback or a management network.
    #[arg(long = "metrics-addr", alias = "metrics_addr", value_name = "ADDR", value_parser = parse_metrics_addr)]
    pub metrics_addr: Option<SocketAddr>,

    /// Log lines as `text` (for people) or `json` (one object per line, for
    /// log shippers).
    #[arg(long = "log-format", alias = "log_format", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Cluster mode (etcd); off unless `--cluster` is given.
    #[command(flatten)]
    pub cluster: crate::cluster::ClusterOptions,
}

/// `IP:PORT`, `[IPv6]:PORT`, or a bare `PORT` on loopback.
fn parse_metrics_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse().map_err(|_| {
        format!("{s:?} is not an address: give IP:PORT (e.g. 127.0.0.1:9464) or a port")
    })
}

const AFTER_HELP: &str = "\
Every option with an underscore or a hyphen takes both spellings
(--server_crt / --server-crt, --port-range / --port_range).

Example (HPC gateway, tokens checked at Globus Auth):
  S2CS_CLIENT_SECRET=... s2cs --listener-ip 10.0.1.1 --port 5000 \\
       --port-range 5100-5200 --server_crt hpc.crt --server_key hpc.key \\
       --peer-ca facilities-ca.pem --client_id ID \\
       --allow-targets 10.0.1.0/24:7000-7100

SIGHUP re-reads, without dropping a connection: --tokens-file,
--allow-identities, the control certificate
(--server_crt/--server_key), and the data channel's --data-cert,
--data-key and --peer-ca (s2ds re-reads them too). A file that does not
load is refused with an error and the one in use is kept.";

pub use crate::tls::DataTls;

impl Config {
    /// Parses `argv` as clap would, returning clap's error.
    pub fn try_parse_from_args(argv: &[std::ffi::OsString]) -> Result<Config, clap::Error> {
        Config::try_parse_from(argv)
    }

    /// The state directory, defaulted as documented on the option. Never a
    /// shared temporary directory: without `HOME` or `XDG_STATE_HOME` (and
    /// not root) it must be given.
    pub fn state_dir(&self) -> Result<PathBuf, String> {
        if let Some(dir) = &self.state_dir {
            return Ok(dir.clone());
        }
        let leaf = format!("s2cs-{}", self.port);
        if rustix::process::geteuid().is_root() {
            return Ok(PathBuf::from("/var/lib/scistream").join(leaf));
        }
        let base = std::env::var_os("XDG_STATE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .map(|h| PathBuf::from(h).join(".local/state"))
            })
            .ok_or_else(|| {
                "neither HOME nor XDG_STATE_HOME is set, so there is no private place for the state: \
                 give --state-dir DIR (a directory only this user can write)"
                    .to_owned()
            })?;
        Ok(base.join("scistream").join(leaf))
    }

    /// The data channel's TLS files, checked: `Ok(None)` for a plaintext
    /// channel (asked for, or forced by --insecure without certificates,
    /// with the warning to log).
    pub fn data_tls(&self) -> Result<(Option<DataTls>, Option<String>), String> {
        if self.data_tls == "off" {
            if self.require_client_cert {
                return Err(
                    "--require-client-cert needs the TLS data channel; remove --data-tls off"
                        .into(),
                );
            }
            return Ok((None, Some("the data channel between gateways is PLAINTEXT (--data-tls off): use only inside one facility".into())));
        }
        let cert = self
            .data_cert
            .clone()
            .unwrap_or_else(|| self.server_crt.clone());
        let key = self
            .data_key
            .clone()
            .unwrap_or_else(|| self.server_key.clone());
        if self.insecure && (!cert.is_file() || !key.is_file() || self.peer_ca.is_none()) {
            return Ok((None, Some("--insecure without --data-cert/--data-key and --peer-ca: the data channel between gateways is PLAINTEXT".into())));
        }
        if self.require_client_cert && self.peer_ca.is_none() {
            return Err(
                "--require-client-cert needs --peer-ca FILE: the CAs (or gateway certificates) of the peer \
                 facilities whose certificates this gateway checks"
                    .into(),
            );
        }
        Ok((
            Some(DataTls {
                cert,
                key,
                peer_ca: self.peer_ca.clone(),
            }),
            None,
        ))
    }

    /// The arguments s2ds gets: the data-plane options, the data
    /// channel's files, logging, then `--s2ds-arg`s (which win).
    pub fn s2ds_argv(&self) -> Vec<String> {
        let mut v = self.dp.to_args();
        if let Ok((Some(tls), _)) = self.data_tls() {
            v.push(format!("--data-cert={}", tls.cert.display()));
            v.push(format!("--data-key={}", tls.key.display()));
            if let Some(ca) = &tls.peer_ca {
                v.push(format!("--peer-ca={}", ca.display()));
            }
            if self.require_client_cert {
                v.push("--require-client-cert".into());
            }
        }
        if self.verbose > 0 {
            v.push(format!("-{}", "v".repeat(self.verbose.into())));
        }
        if self.log_format != "text" {
            v.push(format!("--log-format={}", self.log_format));
        }
        v.extend(self.s2ds_args.iter().cloned());
        v
    }

    /// Data ports one identity may hold (see `--max-ports-per-identity`).
    pub fn ports_per_identity(&self) -> usize {
        let range = usize::from(self.port_range.end() - self.port_range.start()) + 1;
        self.max_ports_per_identity.unwrap_or((range / 2).max(1))
    }

    /// Connections one session may ask for (see `--max-conns-per-session`).
    pub fn conns_per_session(&self) -> usize {
        self.max_conns_per_session.unwrap_or_else(|| {
            self.ports_per_identity()
                .clamp(1, scistream_protocol::MAX_LISTENERS_PER_SESSION)
        })
    }

    /// The s2ds binary to run.
    pub fn s2ds_bin(&self) -> PathBuf {
        if let Some(bin) = &self.s2ds_bin {
            return bin.clone();
        }
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join("s2ds")))
            .unwrap_or_else(|| PathBuf::from("s2ds"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_scistream() {
        let c = Config::try_parse_from(["s2cs"]).unwrap();
        assert_eq!(c.port, 5000);
        assert_eq!(c.port_range, 5100..=5200);
        assert_eq!(c.hello_timeout, Duration::from_secs(180));
        assert_eq!(c.server_crt, PathBuf::from("server.crt"));
        assert!(!c.insecure);
    }

    #[test]
    fn both_spellings() {
        let a =
            Config::try_parse_from(["s2cs", "--server_crt", "a", "--port_range", "1-2"]).unwrap();
        let b =
            Config::try_parse_from(["s2cs", "--server-crt", "a", "--port-range", "1-2"]).unwrap();
        assert_eq!(a.server_crt, b.server_crt);
        assert_eq!(a.port_range, b.port_range);
        let c = Config::try_parse_from(["s2cs", "--listener_ip", "127.0.0.1"]).unwrap();
        assert_eq!(c.listener_ip.to_string(), "127.0.0.1");
    }

    #[test]
    fn data_plane_options_reach_s2ds() {
        let c = Config::try_parse_from([
            "s2cs",
            "--engine",
            "epoll",
            "--pipe-size",
            "256KiB",
            "--sndbuf",
            "8MiB",
            "--max-rate",
            "10Gbit",
            "--s2ds-arg=--no-pin",
        ])
        .unwrap();
        assert_eq!(c.max_rate, Some(10_000_000_000));
        let argv = c.s2ds_argv();
        for want in [
            "--engine=epoll",
            "--ktls=auto",
            "--crypto=auto",
            "--pipe-size=262144",
            "--sndbuf=8388608",
            "--handshake-timeout=10000ms",
            "--data-cert=server.crt",
            "--data-key=server.key",
        ] {
            assert!(argv.contains(&want.to_string()), "{want} in {argv:?}");
        }
        assert_eq!(
            argv.last().map(String::as_str),
            Some("--no-pin"),
            "--s2ds-arg last"
        );
        assert!(Config::try_parse_from(["s2cs", "--engine", "dpdk"]).is_err());
        let e = Config::try_parse_from(["s2cs", "--crypto", "openssl"]).unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("openssl")
                && m.contains("auto")
                && m.contains("ring")
                && m.contains("aws-lc"),
            "{m}"
        );
        let c = Config::try_parse_from(["s2cs", "--crypto", "aws-lc"]).unwrap();
        assert!(c.s2ds_argv().contains(&"--crypto=aws-lc".to_string()));
        assert!(Config::try_parse_from(["s2cs", "--max-rate", "fast"]).is_err());
        assert!(Config::try_parse_from(["s2cs", "--sndbuf", "0"]).is_err());
        // What s2ds would refuse at start is refused here already.
        assert!(Config::try_parse_from(["s2cs", "--pipe-size", "12"]).is_err());
    }

    #[test]
    fn data_channel_needs_its_files_or_says_so() {
        // Only a certificate and key, as SciStream's gateways start: TLS,
        // trusting the system's CA store for outbound sessions.
        let c = Config::try_parse_from(["s2cs"]).unwrap();
        let (tls, warning) = c.data_tls().unwrap();
        assert_eq!(tls.unwrap().peer_ca, None);
        assert!(warning.is_none());
        let c = Config::try_parse_from(["s2cs", "--require-client-cert"]).unwrap();
        assert!(c.data_tls().unwrap_err().contains("--peer-ca"));
        let c = Config::try_parse_from([
            "s2cs",
            "--peer-ca",
            "ca.pem",
            "--data-cert",
            "d.crt",
            "--data-key",
            "d.key",
        ])
        .unwrap();
        let (tls, warning) = c.data_tls().unwrap();
        assert_eq!(tls.unwrap().cert, PathBuf::from("d.crt"));
        assert!(warning.is_none());
        let c = Config::try_parse_from(["s2cs", "--peer-ca", "ca.pem"]).unwrap();
        assert_eq!(
            c.data_tls().unwrap().0.unwrap().key,
            PathBuf::from("server.key"),
            "defaults to the control key"
        );
        let c = Config::try_parse_from(["s2cs", "--data-tls", "off"]).unwrap();
        assert!(c.data_tls().unwrap().1.unwrap().contains("PLAINTEXT"));
        let c = Config::try_parse_from(["s2cs", "--insecure"]).unwrap();
        assert!(
            c.data_tls().unwrap().0.is_none(),
            "development mode without certificates: plaintext, with a warning"
        );
        assert!(Config::try_parse_from(["s2cs", "--data-tls", "maybe"]).is_err());
        let c =
            Config::try_parse_from(["s2cs", "--data-tls", "off", "--require-client-cert"]).unwrap();
        assert!(c.data_tls().is_err());
    }

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range("5100-5200").unwrap(), 5100..=5200);
        assert_eq!(parse_port_range("7-7").unwrap(), 7..=7);
        assert!(parse_port_range("5200-5100").unwrap_err().contains("empty"));
        assert!(parse_port_range("0-10").is_err());
        assert!(parse_port_range("5100").unwrap_err().contains("FIRST-LAST"));
        assert!(parse_port_range("5100-70000").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("180").unwrap(), Duration::from_secs(180));
        assert_eq!(parse_duration("3m").unwrap(), Duration::from_secs(180));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("10parsecs").is_err());
    }

    #[test]
    fn quotas_fit_the_port_range() {
        let c = Config::try_parse_from(["s2cs"]).unwrap();
        assert_eq!(c.ports_per_identity(), 50, "half of 5100-5200");
        assert_eq!(
            c.conns_per_session(),
            50,
            "a session fits its owner's quota"
        );
        let c = Config::try_parse_from(["s2cs", "--port-range", "5000-5999"]).unwrap();
        assert_eq!((c.ports_per_identity(), c.conns_per_session()), (500, 128));
        let c = Config::try_parse_from(["s2cs", "--port-range", "7-7"]).unwrap();
        assert_eq!((c.ports_per_identity(), c.conns_per_session()), (1, 1));
        let c = Config::try_parse_from([
            "s2cs",
            "--max-ports-per-identity",
            "8",
            "--max-conns-per-session",
            "4",
        ])
        .unwrap();
        assert_eq!((c.ports_per_identity(), c.conns_per_session()), (8, 4));
        assert_eq!(c.update_timeout, Duration::from_secs(600));
        assert_eq!(c.weak_uids, "require-client-cert");
        assert!(Config::try_parse_from(["s2cs", "--weak-uids", "maybe"]).is_err());
    }

    #[test]
    fn default_state_dir_depends_on_port() {
        let a = Config::try_parse_from(["s2cs", "--port", "5000"]).unwrap();
        let b = Config::try_parse_from(["s2cs", "--port", "6000"]).unwrap();
        assert_ne!(a.state_dir().unwrap(), b.state_dir().unwrap());
    }
}
