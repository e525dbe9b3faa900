//! One function per `s2uc` command: what it asks the gateway and what it
//! prints. `run` picks the command.

use scistream_client::auth::store::TokenStore;
use scistream_client::config::ClientConfig;
use scistream_client::error::ClientError;
use scistream_client::tunnel::{parse_listeners, parse_ports, receiver_endpoints};
use scistream_client::{Auth, Connection, RequestOptions, connect};
use scistream_local::demo;
use serde_json::json;

use crate::args::{
    CertsArgs, CheckAuthArgs, Cli, Cmd, ControlArgs, DemoArgs, HelloArgs, InboundArgs, ListArgs,
    LoginArgs, MOCK_UID, OutboundArgs, ProdReqArgs, ReleaseArgs, RequestArgs, StatusArgs, trust,
};
use crate::output::{print_scistream_lines, print_tunnel, protobuf_text, python_list};

type Result<T = ()> = std::result::Result<T, anyhow::Error>;

/// Runs the command the user gave.
pub(crate) async fn run(cli: Cli) -> Result {
    let mut config = ClientConfig::load(cli.config.as_deref())?;
    let mut cli = cli;
    if let Some(c) = cli.command.control_mut() {
        c.default_from(&config);
    }
    if let Some(uid) = cli.command.uid_mut() {
        *uid = crate::args::resolve_uid(uid).map_err(ClientError::Input)?;
    }
    if let Cmd::OutboundRequest(a) = &mut cli.command {
        a.control.default_outbound();
    }
    let json = cli.json;
    match cli.command {
        Cmd::Login(a) => login(&mut config, a, json).await,
        Cmd::CheckAuth(a) => check_auth(&config, a, json),
        Cmd::Logout => logout(&config, json).await,
        Cmd::InboundRequest(a) => inbound_request(&config, a, json).await,
        Cmd::ProdReq(a) => prod_req(&config, a, json).await,
        Cmd::OutboundRequest(a) => outbound_request(&config, a, json).await,
        Cmd::Release(a) => release(&config, a, json).await,
        Cmd::List(a) => list(&config, a, json).await,
        Cmd::Status(a) => status(&config, a, json).await,
        Cmd::Hello(a) => hello(&config, a, json).await,
        Cmd::Connect(a) => {
            let code = crate::connect_cmd::connect_cmd(&config, a, json).await?;
            if code != 0 {
                std::process::exit(i32::from(code));
            }
            Ok(())
        }
        Cmd::Demo(a) => run_demo(a).await,
        Cmd::Certs(a) => certs(a, json),
    }
}

/// A connection to the S2CS the options name, with their trust root and
/// the token stored for its scope.
async fn control(
    config: &ClientConfig,
    c: &ControlArgs,
) -> std::result::Result<Connection, ClientError> {
    connect(c.s2cs(), &trust(c), auth(config, c).await?).await
}

async fn auth(config: &ClientConfig, c: &ControlArgs) -> std::result::Result<Auth, ClientError> {
    scistream_client::auth::bearer_for(
        config,
        c.scope.as_deref(),
        c.s2cs(),
        &TokenStore::default_path(),
    )
    .await
}

impl RequestArgs {
    pub(crate) fn options(&self) -> RequestOptions {
        RequestOptions {
            num_conn: self.num_conn,
            rate_kbps: self.rate,
            protocol: self.protocol,
        }
    }
}

/// A fresh uid, or SciStream's fixed test uid under `--mock True`.
fn uid(mock: bool) -> String {
    if mock {
        MOCK_UID.to_owned()
    } else {
        scistream_client::tunnel::new_uid()
    }
}

/// Checks a uid given on the command line.
fn check_uid(uid: &str) -> std::result::Result<(), ClientError> {
    scistream_protocol::validate_uid(uid).map_err(|e| ClientError::Input(format!("UID: {e}")))
}

async fn login(config: &mut ClientConfig, a: LoginArgs, json: bool) -> Result {
    if let Some(server) = a.auth_server {
        config.auth_server = server;
    }
    let stdin = std::io::stdin();
    let store = TokenStore::default_path();
    // Prompts go to stderr when stdout carries JSON.
    let token = if json {
        scistream_client::auth::login(config, &a.scope, &store, stdin.lock(), std::io::stderr())
            .await?
    } else {
        scistream_client::auth::login(config, &a.scope, &store, stdin.lock(), std::io::stdout())
            .await?
    };
    if json {
        println!(
            "{}",
            json!({"logged_in": true, "identity": token.identity, "expires_at": token.expires_at})
        );
    }
    Ok(())
}

fn check_auth(config: &ClientConfig, a: CheckAuthArgs, json: bool) -> Result {
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
    let st = scistream_client::auth::check(config, &scope, &TokenStore::default_path())?;
    if json {
        println!("{}", serde_json::to_string(&st)?);
    } else if !st.stored {
        println!(
            "No token stored for scope {}. Run: s2uc login --scope {scope}",
            st.scope
        );
    } else {
        let state = if st.valid {
            "valid"
        } else if st.refreshable {
            "expired (it will be refreshed on next use)"
        } else {
            "expired; run s2uc login again"
        };
        let expires = st.expires_at.as_ref().map(|e| format!(", expires at {e}"));
        let identity = st.identity.as_ref().map(|i| format!(", identity {i}"));
        println!(
            "Token for scope {}: {state}{}{}",
            st.scope,
            expires.unwrap_or_default(),
            identity.unwrap_or_default()
        );
    }
    if !st.valid && !st.refreshable {
        std::process::exit(1);
    }
    Ok(())
}

async fn logout(config: &ClientConfig, json: bool) -> Result {
    let (revoked, failures) =
        scistream_client::auth::logout(config, &TokenStore::default_path()).await?;
    if json {
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
    Ok(())
}

async fn inbound_request(config: &ClientConfig, a: InboundArgs, json: bool) -> Result {
    let ports = parse_ports(&a.receiver_ports)?;
    receiver_endpoints(&a.remote_ip, &ports)?;
    let auth = auth(config, &a.control).await?;
    let has_token = auth.has_token();
    let conn = connect(a.control.s2cs(), &trust(&a.control), auth).await?;
    let t = scistream_client::tunnel::inbound_request_as(
        &conn,
        &uid(a.mock),
        &a.remote_ip,
        &ports,
        &a.request.options(),
    )
    .await?;
    if !json {
        print_scistream_lines(&t, a.control.s2cs(), has_token, true);
    }
    print_tunnel(&t, json, a.control.s2cs());
    Ok(())
}

async fn prod_req(config: &ClientConfig, a: ProdReqArgs, json: bool) -> Result {
    let auth = auth(config, &a.control).await?;
    let has_token = auth.has_token();
    let conn = connect(a.control.s2cs(), &trust(&a.control), auth).await?;
    let uid = uid(a.mock);
    if !json {
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
    let t = scistream_client::tunnel::prod_req(&conn, &uid, &a.request.options()).await?;
    if !json {
        print!("{}", protobuf_text(&t.requested));
        println!();
        println!("{}", python_list(&t.listeners));
        println!("Listeners: {}", python_list(&t.listeners));
    }
    print_tunnel(&t, json, a.control.s2cs());
    Ok(())
}

async fn outbound_request(config: &ClientConfig, a: OutboundArgs, json: bool) -> Result {
    let listeners = parse_listeners(&a.inbound_listeners)?;
    check_uid(&a.uid)?;
    let announce = match (&a.remote_ip, &a.receiver_ports) {
        (Some(ip), Some(ports)) => receiver_endpoints(ip, &parse_ports(ports)?)?,
        _ => Vec::new(),
    };
    let auth = auth(config, &a.control).await?;
    let has_token = auth.has_token();
    let conn = connect(a.control.s2cs(), &trust(&a.control), auth).await?;
    let options = a.request.options();
    let t =
        scistream_client::outbound_request(&conn, &a.uid, listeners, announce, &options).await?;
    if !json {
        print_scistream_lines(&t, a.control.s2cs(), has_token, true);
    }
    print_tunnel(&t, json, a.control.s2cs());
    Ok(())
}

async fn release(config: &ClientConfig, a: ReleaseArgs, json: bool) -> Result {
    check_uid(&a.uid)?;
    let conn = control(config, &a.control).await?;
    let pending = scistream_client::tunnel::release_reporting(&conn, &a.uid).await?;
    if json {
        println!(
            "{}",
            json!({"uid": a.uid, "released": true, "s2cs": a.control.s2cs(), "pending": pending})
        );
    } else {
        println!("Released {} on {}.", a.uid, a.control.s2cs());
        for p in &pending {
            println!("  pending: {p}");
        }
    }
    Ok(())
}

fn print_sessions(
    s2cs: &str,
    sessions: &[scistream_protocol::pb::SessionStatus],
    json: bool,
    detail: bool,
) {
    if json {
        let v: Vec<_> = sessions
            .iter()
            .map(scistream_client::tunnel::status_json)
            .collect();
        println!("{}", json!({"s2cs": s2cs, "sessions": v}));
    } else {
        for s in sessions {
            print!("{}", scistream_client::tunnel::status_text(s, detail));
        }
    }
}

async fn list(config: &ClientConfig, a: ListArgs, json: bool) -> Result {
    use scistream_client::tunnel::{fold_list, status_json, status_text, total_json, total_text};
    let conn = control(config, &a.control).await?;
    let sessions = scistream_client::tunnel::list(&conn).await?;
    // Cluster mode: a session spread over nodes is one entry, its sums
    // first, then one block per node.
    let folded = fold_list(&sessions);
    if json {
        let v: Vec<_> = sessions.iter().map(status_json).collect();
        let spread: Vec<_> = folded
            .iter()
            .filter(|(_, _, totals)| !totals.is_empty())
            .map(|(uid, _, totals)| {
                let totals: Vec<_> = totals.iter().map(total_json).collect();
                json!({"uid": uid, "totals": totals})
            })
            .collect();
        println!(
            "{}",
            json!({"s2cs": a.control.s2cs(), "sessions": v, "spread": spread})
        );
        return Ok(());
    }
    if sessions.is_empty() {
        println!("No session of yours on {}.", a.control.s2cs());
    }
    for (uid, entries, totals) in &folded {
        if !totals.is_empty() {
            println!("{uid}: spread over nodes");
            for t in totals {
                print!("  {}", total_text(t));
            }
        }
        for s in entries {
            print!("{}", status_text(s, false));
        }
    }
    Ok(())
}

async fn status(config: &ClientConfig, a: StatusArgs, json: bool) -> Result {
    let conn = control(config, &a.control).await?;
    loop {
        let sessions = scistream_client::tunnel::status(&conn, &a.uid).await?;
        if a.watch && !json {
            // Clear the screen and go home, like top.
            print!("\x1b[2J\x1b[H");
        }
        let totals = scistream_client::tunnel::session_totals(&sessions);
        if json {
            let sessions: Vec<_> = sessions
                .iter()
                .map(scistream_client::tunnel::status_json)
                .collect();
            let totals: Vec<_> = totals
                .iter()
                .map(scistream_client::tunnel::total_json)
                .collect();
            println!(
                "{}",
                json!({"s2cs": a.control.s2cs(), "sessions": sessions, "totals": totals})
            );
        } else {
            print_sessions(a.control.s2cs(), &sessions, false, true);
            for t in &totals {
                print!("{}", scistream_client::tunnel::total_text(t));
            }
        }
        if !a.watch {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_secs(a.interval.max(1))).await;
    }
}

async fn hello(config: &ClientConfig, a: HelloArgs, json: bool) -> Result {
    let role: scistream_protocol::Role = a
        .role
        .parse()
        .map_err(|e| ClientError::Input(format!("--role: {e}")))?;
    let conn = control(config, &a.control).await?;
    let r = scistream_client::tunnel::hello(&conn, &a.uid, role, a.prod_listeners).await?;
    if json {
        println!(
            "{}",
            json!({"uid": a.uid, "message": r.message, "listeners": r.listeners})
        );
    } else {
        println!("{}", r.message);
        println!("  listeners: {}", r.listeners.join(","));
    }
    Ok(())
}

async fn run_demo(a: DemoArgs) -> Result {
    demo::run(demo::DemoOptions {
        bytes: a.bytes,
        num_conn: a.num_conn.max(1),
        keep: a.keep,
        s2cs_bin: a.s2cs_bin,
        udp: a.udp,
    })
    .await?;
    Ok(())
}

fn certs(a: CertsArgs, json: bool) -> Result {
    std::fs::create_dir_all(&a.out)?;
    let ca = scistream_local::pki::Ca::new("scistream throwaway CA")?;
    let ca_path = a.out.join("ca.crt");
    scistream_local::pki::write_file(&ca_path, &ca.cert_pem(), false)?;
    let names: Vec<&str> = a.names.iter().map(String::as_str).collect();
    let mut written = Vec::new();
    for g in &a.gateways {
        let w = ca.issue(&names)?.write(&a.out, g)?;
        written.push(json!({"gateway": g, "cert": w.cert, "key": w.key}));
        if !json {
            println!(
                "wrote {} and {} (valid for {})",
                w.cert.display(),
                w.key.display(),
                a.names.join(", ")
            );
        }
    }
    if json {
        println!("{}", json!({"ca": ca_path, "gateways": written}));
    } else {
        println!(
            "wrote {} (the trust root: give it to s2uc as --server_cert)",
            ca_path.display()
        );
    }
    Ok(())
}
