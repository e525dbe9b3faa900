//! The `s2ds` binary.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use scistream_dataplane::{Config, run};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // SCISTREAM_GENERATE=man:DIR|completions:DIR (tools/dist.sh): documentation, then exit.
    if let Some(code) = scistream_docgen::from_env(<Config as clap::CommandFactory>::command) {
        return code;
    }
    let config = Config::parse();
    // Logs name sessions by tag, with the key s2cs keeps in its state directory.
    scistream_protocol::tag::set_secret_from_env();
    let level = match config.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log_format == "json" {
        fmt.json().init();
    } else {
        fmt.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }

    // SIGTERM/SIGINT: stop at once; the kernel closes every socket. s2cs
    // keeps the listening sockets, so queued connections wait for the next s2ds.
    match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ]) {
        Ok(mut signals) => {
            std::thread::spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    tracing::info!(signal = sig, "stopping");
                    std::process::exit(0);
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "cannot install signal handlers"),
    }

    match run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("s2ds: {e}");
            ExitCode::from(1)
        }
    }
}
