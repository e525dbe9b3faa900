//! `s2ds` options. `s2cs` starts `s2ds` and passes these; people rarely do.

use std::path::PathBuf;

use clap::Parser;

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

    /// The data plane's tuning and behaviour (shared with s2cs, which
    /// passes them on).
    #[command(flatten)]
    pub dp: scistream_protocol::options::DataPlaneOptions,

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

    /// Refresh TLS keys (KeyUpdate) after this many records sent on a
    /// connection. For tests; the default stays far inside AES-GCM's limit.
    #[arg(long = "rekey-records", default_value_t = crate::relay::tls::DEFAULT_REKEY_RECORDS, hide = true)]
    pub rekey_records: u64,

    /// Offer ChaCha20-Poly1305 first even without kTLS. For tests.
    #[arg(long = "prefer-chacha", hide = true)]
    pub prefer_chacha: bool,

    /// Refresh keys every --rekey-records records whatever the suite
    /// (normally only suites with a per-key limit). For tests.
    #[arg(long = "rekey-any-suite", hide = true)]
    pub rekey_any_suite: bool,

    /// Log lines as `text` or `json` (one object per line).
    #[arg(long = "log-format", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

pub use scistream_protocol::options::Forward;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_rejections() {
        let c = Config::try_parse_from(["s2ds", "--control-stdin"]).unwrap();
        assert_eq!(c.dp.pipe_size, 1 << 20);
        assert_eq!(c.dp.engine, crate::reactor::EngineChoice::Auto);
        assert!(Config::try_parse_from(["s2ds", "--pipe-size", "12"]).is_err());
        assert!(Config::try_parse_from(["s2ds", "--pipe-size", "8MQ"]).is_err());
        assert!(
            Config::try_parse_from(["s2ds", "--control-stdin", "--control-socket", "/x"]).is_err()
        );
    }
}
