//! `s2uc connect`: both halves of a tunnel in one command, and with `--run`
//! held while a command runs.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use rustix::process::Signal;
use scistream_client::auth::store::TokenStore;
use scistream_client::config::ClientConfig;
use scistream_client::error::ClientError;
use scistream_client::tunnel::{new_uid, parse_ports, receiver_endpoints};
use scistream_client::whole::{self, Gateways, WholeTunnel};
use scistream_client::{Connection, Trust, connect};
use serde_json::json;
use tokio::signal::unix::{SignalKind, signal};

use crate::args::ConnectArgs;

type Result<T = ()> = std::result::Result<T, anyhow::Error>;

/// How long CMD has to end after the signal s2uc got was passed on to it.
const CHILD_GRACE: Duration = Duration::from_secs(10);

/// Runs `s2uc connect`; returns the process's exit code.
pub(crate) async fn connect_cmd(config: &ClientConfig, a: ConnectArgs, json: bool) -> Result<u8> {
    let ports = parse_ports(&a.receiver_ports)?;
    receiver_endpoints(&a.remote_ip, &ports)?;
    let hpc = gateway(
        config,
        &a.hpc,
        a.hpc_cert.as_ref(),
        a.hpc_scope.as_deref(),
        a.insecure,
    );
    let inst = gateway(
        config,
        &a.inst,
        a.inst_cert.as_ref(),
        a.inst_scope.as_deref(),
        a.insecure,
    );
    let (hpc, inst) = tokio::try_join!(hpc, inst)?;
    let gateways = Gateways {
        hpc: &hpc,
        instrument: &inst,
    };
    let mut signals = Signals::new()?;
    let uid = new_uid();
    let options = a.request.options();
    let opening = whole::open(gateways, &uid, &a.remote_ip, &ports, &options);
    let t = tokio::select! {
        opened = opening => opened?,
        sig = signals.next() => {
            // Whatever was made so far is released by uid.
            let released = whole::close(gateways, &uid).await;
            eprintln!("s2uc: interrupted while the tunnel was being made; {}", released_words(&released));
            return Ok(128 + sig.as_raw() as u8);
        }
    };
    if !a.run {
        print_ready(&t, &a, json);
        return Ok(0);
    }
    eprintln!(
        "s2uc: tunnel {} up: listeners {}; running {}",
        t.uid,
        t.listeners().join(","),
        a.command.join(" ")
    );
    let outcome = run_holding(&t, &a.command, &mut signals).await;
    if let Ok(Ran::Exited(_)) = outcome
        && !whole::drained(gateways, &uid, a.drain_timeout).await
    {
        eprintln!(
            "s2uc: connections of the tunnel were still open {:?} after the command ended (--drain-timeout); releasing anyway",
            a.drain_timeout
        );
    }
    let released = whole::close(gateways, &uid).await;
    eprintln!("s2uc: {}", released_words(&released));
    let code = match &outcome {
        Ok(Ran::Exited(status)) => exit_code(*status),
        Ok(Ran::Signalled(sig)) => 128 + sig.as_raw() as u8,
        Err(_) => 127,
    };
    if json {
        println!(
            "{}",
            json!({"uid": t.uid, "listeners": t.listeners(), "exit_code": code,
                   "released": released.is_ok(),
                   "error": outcome.as_ref().err().map(|e| format!("{e:#}"))})
        );
    }
    std::io::stdout().flush()?;
    outcome?;
    released?;
    Ok(code)
}

async fn gateway(
    config: &ClientConfig,
    addr: &str,
    cert: Option<&PathBuf>,
    scope: Option<&str>,
    insecure: bool,
) -> std::result::Result<Connection, ClientError> {
    let trust = match (insecure, cert) {
        (true, _) => Trust::Insecure,
        (false, Some(c)) => Trust::Root(c.clone()),
        (false, None) => {
            return Err(ClientError::Input(format!(
                "no certificate to verify {addr} with: give --hpc-cert/--inst-cert FILE (or --insecure against s2cs --insecure)"
            )));
        }
    };
    let store = TokenStore::default_path();
    let auth = scistream_client::auth::bearer_for(config, scope, addr, &store).await?;
    connect(addr, &trust, auth).await
}

fn print_ready(t: &WholeTunnel, a: &ConnectArgs, json: bool) {
    if json {
        let half = |h: &scistream_client::Tunnel, s2cs: &str| json!({"s2cs": s2cs, "role": h.role, "listeners": h.listeners, "targets": h.targets});
        println!(
            "{}",
            json!({"uid": t.uid, "listeners": t.listeners(), "rate_kbps": t.outbound.rate_kbps,
                   "inbound": half(&t.inbound, &a.hpc), "outbound": half(&t.outbound, &a.inst)})
        );
        return;
    }
    println!("Tunnel ready.");
    println!("  uid:        {}", t.uid);
    println!(
        "  listeners:  {}   <- point the instrument's software here",
        t.listeners().join(",")
    );
    println!(
        "  HPC gateway {} forwards to {}",
        a.hpc,
        t.inbound.targets.join(",")
    );
    println!("Release both halves when done:");
    println!("  s2uc release --s2cs {} {}", a.inst, t.uid);
    println!("  s2uc release --s2cs {} {}", a.hpc, t.uid);
}

fn released_words(released: &std::result::Result<(), ClientError>) -> String {
    match released {
        Ok(()) => "both halves of the tunnel released".into(),
        Err(e) => format!("releasing the tunnel failed: {e}"),
    }
}

/// How CMD ended.
enum Ran {
    Exited(ExitStatus),
    /// s2uc got this signal, passed it on, and CMD ended (or was killed).
    Signalled(Signal),
}

/// Runs `command` with the tunnel in its environment until it ends, or
/// until s2uc gets SIGINT/SIGTERM (passed on to CMD, which gets
/// [`CHILD_GRACE`] to end before it is killed).
async fn run_holding(t: &WholeTunnel, command: &[String], signals: &mut Signals) -> Result<Ran> {
    let Some((program, args)) = command.split_first() else {
        return Err(ClientError::Input("--run needs a command after --".into()).into());
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env("SCISTREAM_LISTENERS", t.listeners().join(","))
        .env("SCISTREAM_UID", &t.uid)
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot run {program}: {e}"))?;
    tokio::select! {
        status = child.wait() => Ok(Ran::Exited(status?)),
        sig = signals.next() => {
            if let Some(pid) = child.id().and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
                let _ = rustix::process::kill_process(pid, sig);
            }
            if tokio::time::timeout(CHILD_GRACE, child.wait()).await.is_err() {
                eprintln!("s2uc: {program} did not end within {CHILD_GRACE:?} of the signal; killing it");
                let _ = child.kill().await;
            }
            Ok(Ran::Signalled(sig))
        }
    }
}

/// CMD's exit code, or 128 + the signal that ended it (as shells report).
fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => c as u8,
        (None, Some(s)) => 128 + s as u8,
        _ => 1,
    }
}

/// SIGINT and SIGTERM, caught from the start so that neither ends s2uc
/// with a tunnel left behind.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    /// The next signal.
    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.int.recv() => Signal::INT,
            _ = self.term.recv() => Signal::TERM,
        }
    }
}
