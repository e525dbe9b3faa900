//! `s2uc`'s command line: its commands and options, as SciStream's users
//! type them (both spellings of every name).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use scistream_client::Trust;
use scistream_client::config::ClientConfig;

/// SciStream user client: sets up and tears down authenticated, encrypted
/// streaming tunnels between facilities.
#[derive(Debug, Parser)]
#[command(name = "s2uc", version, about, long_about = None, after_help = AFTER_HELP)]
pub(crate) struct Cli {
    /// Print the result (or the error) as one JSON object on stdout, for workflow tools.
    #[arg(long, global = true)]
    pub(crate) json: bool,

    /// More log output on stderr.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,

    /// Configuration file (default --s2cs and --server_cert, auth server,
    /// client id, S2CS-to-scope map); flags given here win.
    /// Default: ~/.config/scistream/s2uc.toml when it exists.
    #[arg(long, global = true)]
    pub(crate) config: Option<PathBuf>,

    #[command(subcommand)]
    pub(crate) command: Cmd,
}

const AFTER_HELP: &str = "\
Use case 1, on the HPC side (the analysis service listens on 10.0.1.5:5001):
  s2uc inbound_request --s2cs hpc-gw:5000 --server_cert hpc.crt --remote_ip 10.0.1.5 --receiver_ports 5001
Use case 2, on the instrument side, with the UID and listeners printed by use case 1:
  s2uc outbound_request --s2cs inst-gw:5000 --server_cert inst.crt UID 198.51.100.7:5100,198.51.100.7:5101
Both spellings of commands and options work: inbound_request / inbound-request, --remote_ip / --remote-ip.";

#[derive(Debug, Subcommand)]
pub(crate) enum Cmd {
    /// Use case 1 (HPC side): open listeners on the inbound gateway that forward to your receivers.
    #[command(name = "inbound_request", visible_alias = "inbound-request")]
    InboundRequest(InboundArgs),
    /// Use case 2 (instrument side): open listeners on the outbound gateway that forward to the inbound gateway.
    #[command(name = "outbound_request", visible_alias = "outbound-request")]
    OutboundRequest(OutboundArgs),
    /// SciStream's `prod-req`: a PROD request whose hello comes from the
    /// application (`s2uc hello`, or SciStream's application controller);
    /// prints the gateway's answer as SciStream's client does, then forwards
    /// to the receivers that hello announced.
    #[command(name = "prod_req", visible_alias = "prod-req")]
    ProdReq(ProdReqArgs),
    /// Announce an application for a request waiting for its hello (what
    /// SciStream's application controller sent), e.g. after a `req` made by a workflow tool.
    Hello(HelloArgs),
    /// Your sessions on a gateway (every session, for its administrators).
    List(ListArgs),
    /// One session's state on a gateway: listeners, targets, connections and
    /// their data-channel mode, bytes and current throughput.
    Status(StatusArgs),
    /// Close a session's listeners and connections on one gateway and free its ports.
    Release(ReleaseArgs),
    /// Both halves of a tunnel in one command: the inbound request at the HPC
    /// gateway, then the outbound request at the instrument gateway; with
    /// `--run -- CMD`, held while CMD runs and released when it ends.
    #[command(after_help = CONNECT_HELP)]
    Connect(ConnectArgs),
    /// Run a whole tunnel on this machine (two gateways, loopback) and stream data through it.
    Demo(DemoArgs),
    /// Write a throwaway CA and gateway certificates, for trying SciStream out.
    Certs(CertsArgs),
    /// Log in to the authorization server (Globus Auth by default) and store tokens for a scope.
    Login(LoginArgs),
    /// Say whether a valid token is stored for a scope (never prints the token).
    #[command(name = "check-auth", visible_alias = "check_auth")]
    CheckAuth(CheckAuthArgs),
    /// Revoke every stored token and delete the token store.
    Logout,
}

#[derive(Debug, Args)]
pub(crate) struct LoginArgs {
    /// The scope to log in for: a Globus scope id, or a full scope string.
    #[arg(long)]
    pub(crate) scope: String,
    /// Authorization server (default: the config file's, else Globus Auth).
    #[arg(long = "auth-server", alias = "auth_server")]
    pub(crate) auth_server: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct CheckAuthArgs {
    /// The scope to check.
    #[arg(long, required_unless_present = "ip")]
    pub(crate) scope: Option<String>,
    /// Look the scope up from the config file's map, by S2CS host.
    #[arg(long)]
    pub(crate) ip: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ControlArgs {
    /// The S2CS to talk to, HOST:PORT [default: the config file's `s2cs`,
    /// else localhost:5000; for outbound_request localhost:6000, as
    /// SciStream's client].
    #[arg(long)]
    s2cs: Option<String>,
    /// PEM file to verify the S2CS with: its certificate or its CA
    /// [default: the config file's `server_cert`, else server.crt].
    #[arg(long = "server_cert", alias = "server-cert")]
    pub(crate) server_cert: Option<PathBuf>,
    /// Talk to an `s2cs --insecure` without TLS (development only).
    #[arg(long)]
    pub(crate) insecure: bool,
    /// Scope whose stored token to send (see `s2uc login`). Default: the
    /// scope the config file maps this S2CS's host to; without one, no token.
    #[arg(long)]
    pub(crate) scope: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct RequestArgs {
    /// Parallel connections: listeners opened on the gateway.
    #[arg(long = "num_conn", alias = "num-conn", default_value_t = 5)]
    pub(crate) num_conn: u32,
    /// Rate cap for the whole session in kbit/s, enforced by the gateways'
    /// kernels (split evenly over the connections); 0: no cap. SciStream's
    /// client sends 10000 by default; here the default is no cap, because
    /// the cap is enforced and 10 Mbit/s would throttle any real stream.
    #[arg(long, default_value_t = 0)]
    pub(crate) rate: u32,
    /// What the listeners carry: `tcp` (SciStream's), `udp` (datagrams
    /// only; the instrument side refuses TCP), or `both` on the same port
    /// numbers. UDP crosses between the gateways inside the same
    /// authenticated TLS channel, one connection per sender; datagrams are
    /// at most 64 KiB (UDP cannot carry more) and are dropped, and
    /// counted, when the tunnel cannot keep up. Both gateways of a tunnel
    /// must be asked for the same protocol.
    #[arg(long, default_value = "tcp", value_parser = parse_protocol)]
    pub(crate) protocol: scistream_protocol::Protocol,
}

fn parse_protocol(s: &str) -> Result<scistream_protocol::Protocol, String> {
    s.parse()
        .map_err(|e: scistream_protocol::ProtocolError| e.to_string())
}

#[derive(Debug, Args)]
pub(crate) struct InboundArgs {
    #[command(flatten)]
    pub(crate) control: ControlArgs,
    #[command(flatten)]
    pub(crate) request: RequestArgs,
    /// Address of the host running the receivers (the analysis service).
    #[arg(long = "remote_ip", alias = "remote-ip")]
    pub(crate) remote_ip: String,
    /// Receiver ports, comma-separated (5001,5002).
    #[arg(long = "receiver_ports", alias = "receiver-ports")]
    pub(crate) receiver_ports: String,
    /// SciStream's test switch: `True` uses its fixed uid
    /// 4f8583bc-a4d3-11ee-9fd6-034d1fcbd7c3 instead of a fresh one.
    #[arg(long, value_name = "BOOL", value_parser = parse_bool, default_value = "False", action = clap::ArgAction::Set)]
    pub(crate) mock: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ProdReqArgs {
    #[command(flatten)]
    pub(crate) control: ControlArgs,
    #[command(flatten)]
    pub(crate) request: RequestArgs,
    /// SciStream's test switch: `True` uses its fixed uid
    /// 4f8583bc-a4d3-11ee-9fd6-034d1fcbd7c3 instead of a fresh one.
    #[arg(long, value_name = "BOOL", value_parser = parse_bool, default_value = "False", action = clap::ArgAction::Set)]
    pub(crate) mock: bool,
}

/// `True`/`False` as SciStream's tutorials write them (also true/false, 1/0, yes/no).
fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("'{s}' is not True or False")),
    }
}

/// The uid SciStream's clients use with `--mock True`.
pub(crate) const MOCK_UID: &str = "4f8583bc-a4d3-11ee-9fd6-034d1fcbd7c3";

#[derive(Debug, Args)]
pub(crate) struct OutboundArgs {
    #[command(flatten)]
    pub(crate) control: ControlArgs,
    #[command(flatten)]
    pub(crate) request: RequestArgs,
    /// Address of the instrument (announced in the hello; informational).
    #[arg(long = "remote_ip", alias = "remote-ip")]
    pub(crate) remote_ip: Option<String>,
    /// Instrument ports, comma-separated (announced in the hello; informational).
    #[arg(long = "receiver_ports", alias = "receiver-ports")]
    pub(crate) receiver_ports: Option<String>,
    /// The UID printed by inbound_request.
    /// `-` reads it from standard input, `@FILE` from a file; without it,
    /// $SCISTREAM_UID (a uid on the command line is visible to every
    /// local user through `ps` while s2uc runs).
    #[arg(env = "SCISTREAM_UID", value_name = "UID", hide_env_values = true)]
    pub(crate) uid: String,
    /// The inbound gateway's listeners printed by inbound_request, comma-separated.
    pub(crate) inbound_listeners: String,
}

const CONNECT_HELP: &str = "\
Examples:
  s2uc connect --hpc hpc-gw:5000 --hpc-cert hpc.crt --inst inst-gw:5000 --inst-cert inst.crt \\
       --remote_ip 10.0.1.5 --receiver_ports 5001 --num_conn 2
  s2uc connect --hpc hpc-gw:5000 --hpc-cert hpc.crt --inst inst-gw:5000 --inst-cert inst.crt \\
       --remote_ip 10.0.1.5 --receiver_ports 5001 --run -- sh -c './acquire --out \"$SCISTREAM_LISTENERS\"'
With --run, CMD gets SCISTREAM_LISTENERS (the instrument-facing listeners, comma-separated) and
SCISTREAM_UID in its environment; both halves are released when CMD ends, or on SIGINT/SIGTERM
(passed on to CMD), and s2uc exits with CMD's status. When CMD ends by itself, the tunnel is
released once its connections have closed (what CMD sent has reached the receivers), or after
--drain-timeout. Without --run the tunnel stays up: release
it with `s2uc release UID` at both gateways. If the instrument gateway refuses its half, the HPC
gateway's half is released before s2uc reports the error.";

#[derive(Debug, Args)]
pub(crate) struct ConnectArgs {
    /// The HPC gateway's S2CS (the inbound side, next to the receivers), HOST:PORT.
    #[arg(long)]
    pub(crate) hpc: String,
    /// PEM file to verify the HPC gateway with: its certificate or its CA.
    #[arg(
        long = "hpc-cert",
        alias = "hpc_cert",
        required_unless_present = "insecure"
    )]
    pub(crate) hpc_cert: Option<PathBuf>,
    /// Scope whose stored token goes to the HPC gateway (default: the
    /// config file's map for its host; without one, no token).
    #[arg(long = "hpc-scope", alias = "hpc_scope")]
    pub(crate) hpc_scope: Option<String>,
    /// The instrument gateway's S2CS (the outbound side), HOST:PORT.
    #[arg(long)]
    pub(crate) inst: String,
    /// PEM file to verify the instrument gateway with.
    #[arg(
        long = "inst-cert",
        alias = "inst_cert",
        required_unless_present = "insecure"
    )]
    pub(crate) inst_cert: Option<PathBuf>,
    /// Scope whose stored token goes to the instrument gateway.
    #[arg(long = "inst-scope", alias = "inst_scope")]
    pub(crate) inst_scope: Option<String>,
    /// Talk to both gateways without TLS (`s2cs --insecure`, development only).
    #[arg(long)]
    pub(crate) insecure: bool,
    #[command(flatten)]
    pub(crate) request: RequestArgs,
    /// Address of the host running the receivers (the analysis service).
    #[arg(long = "remote_ip", alias = "remote-ip")]
    pub(crate) remote_ip: String,
    /// Receiver ports, comma-separated (5001,5002).
    #[arg(long = "receiver_ports", alias = "receiver-ports")]
    pub(crate) receiver_ports: String,
    /// Hold the tunnel while the command given after `--` runs, then release it.
    #[arg(long, requires = "command")]
    pub(crate) run: bool,
    /// After CMD ends, how long to wait for the tunnel's connections to
    /// close (data still in flight reaching the receivers) before releasing
    /// it, e.g. 30s, 2m.
    #[arg(long = "drain-timeout", alias = "drain_timeout", default_value = "60s", value_parser = parse_duration)]
    pub(crate) drain_timeout: std::time::Duration,
    /// The command --run runs (after `--`).
    #[arg(last = true, value_name = "CMD", requires = "run")]
    pub(crate) command: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ReleaseArgs {
    #[command(flatten)]
    pub(crate) control: ControlArgs,
    /// The session to release.
    /// `-` reads it from standard input, `@FILE` from a file; without it,
    /// $SCISTREAM_UID (a uid on the command line is visible to every
    /// local user through `ps` while s2uc runs).
    #[arg(env = "SCISTREAM_UID", value_name = "UID", hide_env_values = true)]
    pub(crate) uid: String,
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    pub(crate) control: ControlArgs,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    pub(crate) control: ControlArgs,
    /// The session.
    /// `-` reads it from standard input, `@FILE` from a file; without it,
    /// $SCISTREAM_UID (a uid on the command line is visible to every
    /// local user through `ps` while s2uc runs).
    #[arg(env = "SCISTREAM_UID", value_name = "UID", hide_env_values = true)]
    pub(crate) uid: String,
    /// Refresh every --interval, like top (Ctrl-C to stop).
    #[arg(long)]
    pub(crate) watch: bool,
    /// Refresh interval for --watch, seconds.
    #[arg(long, default_value_t = 2)]
    pub(crate) interval: u64,
}

#[derive(Debug, Args)]
pub(crate) struct HelloArgs {
    #[command(flatten)]
    pub(crate) control: ControlArgs,
    /// The session announced.
    /// `-` reads it from standard input, `@FILE` from a file; without it,
    /// $SCISTREAM_UID (a uid on the command line is visible to every
    /// local user through `ps` while s2uc runs).
    #[arg(env = "SCISTREAM_UID", value_name = "UID", hide_env_values = true)]
    pub(crate) uid: String,
    /// PROD (the side with the receivers) or CONS.
    #[arg(long, default_value = "PROD")]
    pub(crate) role: String,
    /// The receivers (HOST:PORT, comma-separated), for a PROD session.
    #[arg(
        long = "prod-listeners",
        alias = "prod_listeners",
        value_delimiter = ','
    )]
    pub(crate) prod_listeners: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// How much to stream through the tunnel (e.g. 1GiB, 256MiB).
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    pub(crate) bytes: u64,
    /// Parallel connections.
    #[arg(long = "num_conn", alias = "num-conn", default_value_t = 2)]
    pub(crate) num_conn: u32,
    /// Keep the working directory (certificates, logs) afterwards.
    #[arg(long)]
    pub(crate) keep: bool,
    /// The s2cs binary (default: next to s2uc).
    #[arg(long = "s2cs-bin")]
    pub(crate) s2cs_bin: Option<PathBuf>,
    /// UDP instead of TCP: a `--protocol udp` tunnel, one flow of numbered
    /// 1400-byte datagrams per listener, each checked at the receiver.
    #[arg(long)]
    pub(crate) udp: bool,
}

#[derive(Debug, Args)]
pub(crate) struct CertsArgs {
    /// Directory to write into (created if needed).
    #[arg(long, default_value = ".")]
    pub(crate) out: PathBuf,
    /// Gateway certificates to issue: NAME writes NAME.crt and NAME.key.
    #[arg(long = "gateway", default_values = ["server"])]
    pub(crate) gateways: Vec<String>,
    /// DNS names and IP addresses the gateway certificates are valid for.
    #[arg(long = "name", default_values = ["localhost", "127.0.0.1"])]
    pub(crate) names: Vec<String>,
}

use scistream_protocol::parse::size as parse_size;

impl ControlArgs {
    pub(crate) fn s2cs(&self) -> &str {
        self.s2cs.as_deref().unwrap_or("localhost:5000")
    }

    /// For `outbound_request`, whose default gateway in SciStream's client
    /// is localhost:6000 (the instrument side's): the same here, said aloud.
    pub(crate) fn default_outbound(&mut self) {
        if self.s2cs.is_none() {
            eprintln!(
                "s2uc: no --s2cs given: using localhost:6000, SciStream's default for outbound_request \
                 (inbound_request and the other commands default to localhost:5000)"
            );
            self.s2cs = Some("localhost:6000".into());
        }
    }

    pub(crate) fn server_cert(&self) -> &std::path::Path {
        self.server_cert
            .as_deref()
            .unwrap_or(std::path::Path::new("server.crt"))
    }

    /// Fills what the command line left out from the config file.
    pub(crate) fn default_from(&mut self, config: &ClientConfig) {
        if self.s2cs.is_none() {
            self.s2cs.clone_from(&config.s2cs);
        }
        if self.server_cert.is_none() {
            self.server_cert.clone_from(&config.server_cert);
        }
    }
}

impl Cmd {
    /// The uid argument of commands that take one.
    pub(crate) fn uid_mut(&mut self) -> Option<&mut String> {
        match self {
            Cmd::OutboundRequest(a) => Some(&mut a.uid),
            Cmd::Release(a) => Some(&mut a.uid),
            Cmd::Status(a) => Some(&mut a.uid),
            Cmd::Hello(a) => Some(&mut a.uid),
            _ => None,
        }
    }

    /// The control-server options of commands that talk to an S2CS.
    pub(crate) fn control_mut(&mut self) -> Option<&mut ControlArgs> {
        match self {
            Cmd::InboundRequest(a) => Some(&mut a.control),
            Cmd::OutboundRequest(a) => Some(&mut a.control),
            Cmd::ProdReq(a) => Some(&mut a.control),
            Cmd::Hello(a) => Some(&mut a.control),
            Cmd::List(a) => Some(&mut a.control),
            Cmd::Status(a) => Some(&mut a.control),
            Cmd::Release(a) => Some(&mut a.control),
            _ => None,
        }
    }
}

pub(crate) fn trust(c: &ControlArgs) -> Trust {
    if c.insecure {
        Trust::Insecure
    } else {
        Trust::Root(c.server_cert().to_owned())
    }
}

use scistream_protocol::parse::duration_or_zero as parse_duration;

/// A uid argument as given: `-` (one line of standard input), `@FILE` (the
/// file's first line) or the uid itself.
pub(crate) fn resolve_uid(given: &str) -> Result<String, String> {
    let text = match given {
        "-" => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|e| format!("UID: cannot read it from standard input: {e}"))?;
            line
        }
        file if file.starts_with('@') => std::fs::read_to_string(&file[1..])
            .map_err(|e| format!("UID: cannot read {}: {e}", &file[1..]))?
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned(),
        uid => return Ok(uid.to_owned()),
    };
    let uid = text.trim().to_owned();
    if uid.is_empty() {
        return Err(format!("UID: {given} gave an empty uid"));
    }
    Ok(uid)
}
