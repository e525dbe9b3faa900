//! The `s2uc` command line.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use scistream_client::auth::store::TokenStore;
use scistream_client::config::ClientConfig;
use scistream_client::error::ClientError;
use scistream_client::tunnel::{parse_listeners, parse_ports, receiver_endpoints};
use scistream_client::{Auth, Connection, RequestOptions, Trust, Tunnel, connect, demo};
use serde_json::json;

/// SciStream user client: sets up and tears down authenticated, encrypted
/// streaming tunnels between facilities.
#[derive(Debug, Parser)]
#[command(name = "s2uc", version, about, long_about = None, after_help = AFTER_HELP)]
struct Cli {
    /// Print the result (or the error) as one JSON object on stdout, for workflow tools.
    #[arg(long, global = true)]
    json: bool,

    /// More log output on stderr.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    /// Configuration file (default --s2cs and --server_cert, auth server,
    /// client id, S2CS-to-scope map); flags given here win.
    /// Default: ~/.config/scistream/s2uc.toml when it exists.
    #[arg(long, global = true)]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Cmd,
}

const AFTER_HELP: &str = "\
Use case 1, on the HPC side (the analysis service listens on 10.0.1.5:5001):
  s2uc inbound_request --s2cs hpc-gw:5000 --server_cert hpc.crt --remote_ip 10.0.1.5 --receiver_ports 5001
Use case 2, on the instrument side, with the UID and listeners printed by use case 1:
  s2uc outbound_request --s2cs inst-gw:5000 --server_cert inst.crt UID 198.51.100.7:5100,198.51.100.7:5101
Both spellings of commands and options work: inbound_request / inbound-request, --remote_ip / --remote-ip.";

#[derive(Debug, Subcommand)]
enum Cmd {
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
struct LoginArgs {
    /// The scope to log in for: a Globus scope id, or a full scope string.
    #[arg(long)]
    scope: String,
    /// Authorization server (default: the config file's, else Globus Auth).
    #[arg(long = "auth-server", alias = "auth_server")]
    auth_server: Option<String>,
}

#[derive(Debug, Args)]
struct CheckAuthArgs {
    /// The scope to check.
    #[arg(long, required_unless_present = "ip")]
    scope: Option<String>,
    /// Look the scope up from the config file's map, by S2CS host.
    #[arg(long)]
    ip: Option<String>,
}

#[derive(Debug, Args)]
struct ControlArgs {
    /// The S2CS to talk to, HOST:PORT [default: the config file's `s2cs`,
    /// else localhost:5000].
    #[arg(long)]
    s2cs: Option<String>,
    /// PEM file to verify the S2CS with: its certificate or its CA
    /// [default: the config file's `server_cert`, else server.crt].
    #[arg(long = "server_cert", alias = "server-cert")]
    server_cert: Option<PathBuf>,
    /// Talk to an `s2cs --insecure` without TLS (development only).
    #[arg(long)]
    insecure: bool,
    /// Scope whose stored token to send (see `s2uc login`). Default: the
    /// scope the config file maps this S2CS's host to; without one, no token.
    #[arg(long)]
    scope: Option<String>,
}

#[derive(Debug, Args)]
struct RequestArgs {
    /// Parallel connections: listeners opened on the gateway.
    #[arg(long = "num_conn", alias = "num-conn", default_value_t = 5)]
    num_conn: u32,
    /// Rate cap for the whole session in kbit/s, enforced by the gateways'
    /// kernels (split evenly over the connections); 0: no cap. SciStream's
    /// client sends 10000 by default; here the default is no cap, because
    /// the cap is enforced and 10 Mbit/s would throttle any real stream.
    #[arg(long, default_value_t = 0)]
    rate: u32,
}

#[derive(Debug, Args)]
struct InboundArgs {
    #[command(flatten)]
    control: ControlArgs,
    #[command(flatten)]
    request: RequestArgs,
    /// Address of the host running the receivers (the analysis service).
    #[arg(long = "remote_ip", alias = "remote-ip")]
    remote_ip: String,
    /// Receiver ports, comma-separated (5001,5002).
    #[arg(long = "receiver_ports", alias = "receiver-ports")]
    receiver_ports: String,
    /// SciStream's test switch: `True` uses its fixed uid
    /// 4f8583bc-a4d3-11ee-9fd6-034d1fcbd7c3 instead of a fresh one.
    #[arg(long, value_name = "BOOL", value_parser = parse_bool, default_value = "False", action = clap::ArgAction::Set)]
    mock: bool,
}

#[derive(Debug, Args)]
struct ProdReqArgs {
    #[command(flatten)]
    control: ControlArgs,
    #[command(flatten)]
    request: RequestArgs,
    /// SciStream's test switch: `True` uses its fixed uid
    /// 4f8583bc-a4d3-11ee-9fd6-034d1fcbd7c3 instead of a fresh one.
    #[arg(long, value_name = "BOOL", value_parser = parse_bool, default_value = "False", action = clap::ArgAction::Set)]
    mock: bool,
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
const MOCK_UID: &str = "4f8583bc-a4d3-11ee-9fd6-034d1fcbd7c3";

#[derive(Debug, Args)]
struct OutboundArgs {
    #[command(flatten)]
    control: ControlArgs,
    #[command(flatten)]
    request: RequestArgs,
    /// Address of the instrument (announced in the hello; informational).
    #[arg(long = "remote_ip", alias = "remote-ip")]
    remote_ip: Option<String>,
    /// Instrument ports, comma-separated (announced in the hello; informational).
    #[arg(long = "receiver_ports", alias = "receiver-ports")]
    receiver_ports: Option<String>,
    /// The UID printed by inbound_request.
    uid: String,
    /// The inbound gateway's listeners printed by inbound_request, comma-separated.
    inbound_listeners: String,
}

#[derive(Debug, Args)]
struct ReleaseArgs {
    #[command(flatten)]
    control: ControlArgs,
    /// The session to release.
    uid: String,
}

#[derive(Debug, Args)]
struct ListArgs {
    #[command(flatten)]
    control: ControlArgs,
}

#[derive(Debug, Args)]
struct StatusArgs {
    #[command(flatten)]
    control: ControlArgs,
    /// The session.
    uid: String,
    /// Refresh every --interval, like top (Ctrl-C to stop).
    #[arg(long)]
    watch: bool,
    /// Refresh interval for --watch, seconds.
    #[arg(long, default_value_t = 2)]
    interval: u64,
}

#[derive(Debug, Args)]
struct HelloArgs {
    #[command(flatten)]
    control: ControlArgs,
    /// The session announced.
    uid: String,
    /// PROD (the side with the receivers) or CONS.
    #[arg(long, default_value = "PROD")]
    role: String,
    /// The receivers (HOST:PORT, comma-separated), for a PROD session.
    #[arg(
        long = "prod-listeners",
        alias = "prod_listeners",
        value_delimiter = ','
    )]
    prod_listeners: Vec<String>,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// How much to stream through the tunnel (e.g. 1GiB, 256MiB).
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    bytes: u64,
    /// Parallel connections.
    #[arg(long = "num_conn", alias = "num-conn", default_value_t = 2)]
    num_conn: u32,
    /// Keep the working directory (certificates, logs) afterwards.
    #[arg(long)]
    keep: bool,
    /// The s2cs binary (default: next to s2uc).
    #[arg(long = "s2cs-bin")]
    s2cs_bin: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct CertsArgs {
    /// Directory to write into (created if needed).
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// Gateway certificates to issue: NAME writes NAME.crt and NAME.key.
    #[arg(long = "gateway", default_values = ["server"])]
    gateways: Vec<String>,
    /// DNS names and IP addresses the gateway certificates are valid for.
    #[arg(long = "name", default_values = ["localhost", "127.0.0.1"])]
    names: Vec<String>,
}

fn parse_size(s: &str) -> Result<u64, String> {
    match scistream_protocol::units::parse_size(s) {
        Ok(0) => Err("size must be above zero".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

impl ControlArgs {
    fn s2cs(&self) -> &str {
        self.s2cs.as_deref().unwrap_or("localhost:5000")
    }

    /// For `outbound_request`, whose default gateway in SciStream's client
    /// is localhost:6000 (the instrument side's): the same here, said aloud.
    fn default_outbound(&mut self) {
        if self.s2cs.is_none() {
            eprintln!(
                "s2uc: no --s2cs given: using localhost:6000, SciStream's default for outbound_request \
                 (inbound_request and the other commands default to localhost:5000)"
            );
            self.s2cs = Some("localhost:6000".into());
        }
    }

    fn server_cert(&self) -> &std::path::Path {
        self.server_cert
            .as_deref()
            .unwrap_or(std::path::Path::new("server.crt"))
    }

    /// Fills what the command line left out from the config file.
    fn default_from(&mut self, config: &ClientConfig) {
        if self.s2cs.is_none() {
            self.s2cs.clone_from(&config.s2cs);
        }
        if self.server_cert.is_none() {
            self.server_cert.clone_from(&config.server_cert);
        }
    }
}

impl Cmd {
    /// The control-server options of commands that talk to an S2CS.
    fn control_mut(&mut self) -> Option<&mut ControlArgs> {
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

fn trust(c: &ControlArgs) -> Trust {
    if c.insecure {
        Trust::Insecure
    } else {
        Trust::Root(c.server_cert().to_owned())
    }
}

/// The lines SciStream's client prints for a request, which scripts parse:
/// its `uid; s2cs; access_token; role` header and the line after it (the
/// token is never printed: `INVALID_TOKEN` when there is none, `REDACTED`
/// when there is one), its progress lines, the gateway's answer in protobuf
/// text form, and the listeners as a Python list.
fn print_scistream_lines(t: &Tunnel, s2cs: &str, has_token: bool, hello_sent: bool) {
    let role = t.role.as_str();
    let token = if has_token {
        "REDACTED"
    } else {
        "INVALID_TOKEN"
    };
    println!("uid; s2cs; access_token; role");
    println!("{} {s2cs} {token} {role}", t.uid);
    println!("sending client request message");
    println!("started client request");
    println!("waiting for hello message");
    if hello_sent {
        println!("Hello message sent successfully");
    }
    print!("{}", protobuf_text(&t.requested));
    println!();
    println!("Listeners: {}", python_list(&t.listeners));
}

/// A `Response` as Python's `print(message)` shows it (protobuf text format).
fn protobuf_text(r: &scistream_protocol::pb::Response) -> String {
    let mut out = String::new();
    for l in &r.listeners {
        out.push_str(&format!("listeners: \"{l}\"\n"));
    }
    for l in &r.prod_listeners {
        out.push_str(&format!("prod_listeners: \"{l}\"\n"));
    }
    out
}

/// A list of strings as Python prints one: `['a', 'b']`.
fn python_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("'{i}'")).collect();
    format!("[{}]", quoted.join(", "))
}

fn print_tunnel(t: &Tunnel, json: bool, s2cs: &str) {
    if json {
        println!(
            "{}",
            json!({"uid": t.uid, "role": t.role, "listeners": t.listeners, "targets": t.targets, "rate_kbps": t.rate_kbps, "s2cs": s2cs})
        );
        return;
    }
    let cap = if t.rate_kbps == 0 {
        "none".to_string()
    } else {
        format!("{} kbit/s", t.rate_kbps)
    };
    match t.role {
        scistream_protocol::Role::Prod => {
            println!("Inbound tunnel ready on {s2cs}.");
            println!("  uid:        {}", t.uid);
            println!("  listeners:  {}", t.listeners.join(","));
            println!("  forwarding to receivers: {}", t.targets.join(","));
            println!("  rate cap:   {cap}");
            println!("Next, on the instrument side:");
            println!(
                "  s2uc outbound_request --s2cs INSTRUMENT_S2CS:PORT --server_cert INSTRUMENT.crt {} {}",
                t.uid,
                t.listeners.join(",")
            );
        }
        scistream_protocol::Role::Cons => {
            println!("Outbound tunnel ready on {s2cs}.");
            println!("  uid:        {}", t.uid);
            println!(
                "  listeners:  {}   <- point the instrument's software here",
                t.listeners.join(",")
            );
            println!("  forwarding to inbound gateway: {}", t.targets.join(","));
            println!("  rate cap:   {cap}");
        }
    }
}

/// A connection to the S2CS the options name, with their trust root and
/// the token stored for its scope.
async fn control(config: &ClientConfig, c: &ControlArgs) -> Result<Connection, ClientError> {
    connect(c.s2cs(), &trust(c), auth(config, c).await?).await
}

async fn auth(config: &ClientConfig, c: &ControlArgs) -> Result<Auth, ClientError> {
    scistream_client::auth::bearer_for(
        config,
        c.scope.as_deref(),
        c.s2cs(),
        &TokenStore::default_path(),
    )
    .await
}

async fn run(cli: Cli) -> Result<(), anyhow::Error> {
    let mut config = ClientConfig::load(cli.config.as_deref())?;
    let mut cli = cli;
    if let Some(c) = cli.command.control_mut() {
        c.default_from(&config);
    }
    if let Cmd::OutboundRequest(a) = &mut cli.command {
        a.control.default_outbound();
    }
    match cli.command {
        Cmd::Login(a) => {
            if let Some(server) = a.auth_server {
                config.auth_server = server;
            }
            let stdin = std::io::stdin();
            // Prompts go to stderr when stdout carries JSON.
            let token = if cli.json {
                scistream_client::auth::login(
                    &config,
                    &a.scope,
                    &TokenStore::default_path(),
                    stdin.lock(),
                    std::io::stderr(),
                )
                .await?
            } else {
                scistream_client::auth::login(
                    &config,
                    &a.scope,
                    &TokenStore::default_path(),
                    stdin.lock(),
                    std::io::stdout(),
                )
                .await?
            };
            if cli.json {
                println!(
                    "{}",
                    json!({"logged_in": true, "identity": token.identity, "expires_at": token.expires_at})
                );
            }
        }
        Cmd::CheckAuth(a) => {
            let scope = match (&a.scope, &a.ip) {
                (Some(s), _) => s.clone(),
                (None, Some(ip)) => config.scope_for(ip).map(str::to_owned).ok_or_else(|| {
                    ClientError::Input(format!(
                        "no scope is configured for {ip}: add it under [scopes] in the config file"
                    ))
                })?,
                (None, None) => {
                    return Err(ClientError::Input("give --scope SCOPE or --ip HOST".into()).into());
                }
            };
            let st = scistream_client::auth::check(&config, &scope, &TokenStore::default_path())?;
            if cli.json {
                println!("{}", serde_json::to_string(&st)?);
            } else if !st.stored {
                println!(
                    "No token stored for scope {}. Run: s2uc login --scope {scope}",
                    st.scope
                );
            } else {
                println!(
                    "Token for scope {}: {}{}{}",
                    st.scope,
                    if st.valid {
                        "valid"
                    } else if st.refreshable {
                        "expired (it will be refreshed on next use)"
                    } else {
                        "expired; run s2uc login again"
                    },
                    st.expires_at
                        .as_ref()
                        .map(|e| format!(", expires at {e}"))
                        .unwrap_or_default(),
                    st.identity
                        .as_ref()
                        .map(|i| format!(", identity {i}"))
                        .unwrap_or_default()
                );
            }
            if !st.valid && !st.refreshable {
                std::process::exit(1);
            }
        }
        Cmd::Logout => {
            let (revoked, failures) =
                scistream_client::auth::logout(&config, &TokenStore::default_path()).await?;
            if cli.json {
                println!(
                    "{}",
                    json!({"logged_out": true, "revoked": revoked, "failures": failures})
                );
            } else {
                println!("Logged out: {revoked} token(s) revoked, token store deleted.");
                for f in &failures {
                    eprintln!("  could not revoke {f}");
                }
            }
        }
        Cmd::InboundRequest(a) => {
            let ports = parse_ports(&a.receiver_ports)?;
            receiver_endpoints(&a.remote_ip, &ports)?;
            let auth = auth(&config, &a.control).await?;
            let has_token = auth.has_token();
            let conn = connect(a.control.s2cs(), &trust(&a.control), auth).await?;
            let options = RequestOptions {
                num_conn: a.request.num_conn,
                rate_kbps: a.request.rate,
            };
            let uid = if a.mock {
                MOCK_UID.to_owned()
            } else {
                scistream_client::tunnel::new_uid()
            };
            let t = scistream_client::tunnel::inbound_request_as(
                &conn,
                &uid,
                &a.remote_ip,
                &ports,
                &options,
            )
            .await?;
            if !cli.json {
                print_scistream_lines(&t, a.control.s2cs(), has_token, true);
            }
            print_tunnel(&t, cli.json, a.control.s2cs());
        }
        Cmd::ProdReq(a) => {
            let auth = auth(&config, &a.control).await?;
            let has_token = auth.has_token();
            let conn = connect(a.control.s2cs(), &trust(&a.control), auth).await?;
            let options = RequestOptions {
                num_conn: a.request.num_conn,
                rate_kbps: a.request.rate,
            };
            let uid = if a.mock {
                MOCK_UID.to_owned()
            } else {
                scistream_client::tunnel::new_uid()
            };
            if !cli.json {
                // As SciStream's prod-req: the uid first, so that the
                // application can send its hello while this waits.
                println!("uid; s2cs; access_token; role");
                let token = if has_token {
                    "REDACTED"
                } else {
                    "INVALID_TOKEN"
                };
                println!("{uid} {} {token} PROD", a.control.s2cs());
                println!("waiting for hello message");
                use std::io::Write;
                let _ = std::io::stdout().flush();
            }
            let t = scistream_client::tunnel::prod_req(&conn, &uid, &options).await?;
            if !cli.json {
                print!("{}", protobuf_text(&t.requested));
                println!();
                println!("{}", python_list(&t.listeners));
                println!("Listeners: {}", python_list(&t.listeners));
            }
            print_tunnel(&t, cli.json, a.control.s2cs());
        }
        Cmd::OutboundRequest(a) => {
            let listeners = parse_listeners(&a.inbound_listeners)?;
            scistream_protocol::validate_uid(&a.uid)
                .map_err(|e| ClientError::Input(format!("UID: {e}")))?;
            let announce = match (&a.remote_ip, &a.receiver_ports) {
                (Some(ip), Some(ports)) => receiver_endpoints(ip, &parse_ports(ports)?)?,
                _ => Vec::new(),
            };
            let auth = auth(&config, &a.control).await?;
            let has_token = auth.has_token();
            let conn = connect(a.control.s2cs(), &trust(&a.control), auth).await?;
            let options = RequestOptions {
                num_conn: a.request.num_conn,
                rate_kbps: a.request.rate,
            };
            let t =
                scistream_client::outbound_request(&conn, &a.uid, listeners, announce, &options)
                    .await?;
            if !cli.json {
                print_scistream_lines(&t, a.control.s2cs(), has_token, true);
            }
            print_tunnel(&t, cli.json, a.control.s2cs());
        }
        Cmd::Release(a) => {
            scistream_protocol::validate_uid(&a.uid)
                .map_err(|e| ClientError::Input(format!("UID: {e}")))?;
            let conn = control(&config, &a.control).await?;
            scistream_client::release(&conn, &a.uid).await?;
            if cli.json {
                println!(
                    "{}",
                    json!({"uid": a.uid, "released": true, "s2cs": a.control.s2cs()})
                );
            } else {
                println!("Released {} on {}.", a.uid, a.control.s2cs());
            }
        }
        Cmd::List(a) => {
            let conn = control(&config, &a.control).await?;
            let sessions = scistream_client::tunnel::list(&conn).await?;
            if cli.json {
                let v: Vec<_> = sessions
                    .iter()
                    .map(scistream_client::tunnel::status_json)
                    .collect();
                println!("{}", json!({"s2cs": a.control.s2cs(), "sessions": v}));
            } else if sessions.is_empty() {
                println!("No session of yours on {}.", a.control.s2cs());
            } else {
                for s in &sessions {
                    print!("{}", scistream_client::tunnel::status_text(s, false));
                }
            }
        }
        Cmd::Status(a) => {
            let conn = control(&config, &a.control).await?;
            loop {
                let sessions = scistream_client::tunnel::status(&conn, &a.uid).await?;
                if cli.json {
                    let v: Vec<_> = sessions
                        .iter()
                        .map(scistream_client::tunnel::status_json)
                        .collect();
                    println!("{}", json!({"s2cs": a.control.s2cs(), "sessions": v}));
                } else {
                    if a.watch {
                        // Clear the screen and go home, like top.
                        print!("\x1b[2J\x1b[H");
                    }
                    for s in &sessions {
                        print!("{}", scistream_client::tunnel::status_text(s, true));
                    }
                }
                if !a.watch {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_secs(a.interval.max(1))).await;
            }
        }
        Cmd::Hello(a) => {
            let role: scistream_protocol::Role = a
                .role
                .parse()
                .map_err(|e| ClientError::Input(format!("--role: {e}")))?;
            let conn = control(&config, &a.control).await?;
            let r = scistream_client::tunnel::hello(&conn, &a.uid, role, a.prod_listeners).await?;
            if cli.json {
                println!(
                    "{}",
                    json!({"uid": a.uid, "message": r.message, "listeners": r.listeners})
                );
            } else {
                println!("{}", r.message);
                println!("  listeners: {}", r.listeners.join(","));
            }
        }
        Cmd::Demo(a) => {
            demo::run(demo::DemoOptions {
                bytes: a.bytes,
                num_conn: a.num_conn.max(1),
                keep: a.keep,
                s2cs_bin: a.s2cs_bin,
            })
            .await?;
        }
        Cmd::Certs(a) => {
            std::fs::create_dir_all(&a.out)?;
            let ca = scistream_client::pki::Ca::new("scistream throwaway CA")?;
            let ca_path = a.out.join("ca.crt");
            scistream_client::pki::write_file(&ca_path, &ca.cert_pem(), false)?;
            let names: Vec<&str> = a.names.iter().map(String::as_str).collect();
            let mut written = Vec::new();
            for g in &a.gateways {
                let w = ca.issue(&names)?.write(&a.out, g)?;
                written.push(json!({"gateway": g, "cert": w.cert, "key": w.key}));
                if !cli.json {
                    println!(
                        "wrote {} and {} (valid for {})",
                        w.cert.display(),
                        w.key.display(),
                        a.names.join(", ")
                    );
                }
            }
            if cli.json {
                println!("{}", json!({"ca": ca_path, "gateways": written}));
            } else {
                println!(
                    "wrote {} (the trust root: give it to s2uc as --server_cert)",
                    ca_path.display()
                );
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    // SciStream's client prints its version for `-v`; here `-v` is
    // verbosity, so alone (where it does nothing else) it still prints it.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args == ["-v"] {
        println!("s2uc {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let json = cli.json;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("s2uc: cannot start the async runtime: {e}");
            return ExitCode::from(71);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let client = e.downcast_ref::<ClientError>();
            if json {
                let code = client
                    .and_then(|c| c.grpc_code())
                    .map(scistream_client::connect::code_name);
                println!(
                    "{}",
                    json!({"error": {"message": e.to_string(), "code": code}})
                );
            }
            eprintln!("s2uc: {e:#}");
            match client.and_then(|c| c.grpc_code()) {
                Some(tonic::Code::Unauthenticated) => eprintln!(
                    "  The gateway needs a valid token: run s2uc login --scope SCOPE (its scope), or pass \
                     --scope / map the gateway to its scope in ~/.config/scistream/s2uc.toml; s2uc check-auth shows what is stored."
                ),
                Some(tonic::Code::PermissionDenied) => eprintln!(
                    "  Your identity is known but not allowed to do this here: ask the gateway's administrators."
                ),
                _ => {}
            }
            ExitCode::from(if matches!(client, Some(ClientError::Input(_))) {
                2
            } else {
                1
            })
        }
    }
}
