//! The `s2uc` command line: [`args`] defines it, [`commands`] carries each
//! command out, [`output`] prints what SciStream's users and scripts read.
#![forbid(unsafe_code)]

mod args;
mod commands;
mod connect_cmd;
mod output;

use std::process::ExitCode;

use clap::Parser;
use scistream_client::error::ClientError;
use serde_json::json;

use args::Cli;

fn main() -> ExitCode {
    // SCISTREAM_GENERATE=man:DIR|completions:DIR (tools/dist.sh): documentation, then exit.
    if let Some(code) = scistream_docgen::from_env(<Cli as clap::CommandFactory>::command) {
        return code;
    }
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
    match runtime.block_on(commands::run(cli)) {
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
            if client.and_then(|c| c.grpc_code()) == Some(tonic::Code::Unauthenticated) {
                eprintln!(
                    "  The gateway needs a valid token: run s2uc login --scope SCOPE (its scope), or pass \
                     --scope / map the gateway to its scope in ~/.config/scistream/s2uc.toml; s2uc check-auth shows what is stored."
                );
            }
            ExitCode::from(if matches!(client, Some(ClientError::Input(_))) {
                2
            } else {
                1
            })
        }
    }
}
