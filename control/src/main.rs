//! The `s2cs` binary: parse options, set up logging, run until SIGTERM/SIGINT.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use scistream_control::{Config, run};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // SCISTREAM_GENERATE=man:DIR|completions:DIR (tools/dist.sh): documentation, then exit.
    if let Some(code) = scistream_docgen::from_env(<Config as clap::CommandFactory>::command) {
        return code;
    }
    let argv = match scistream_control::config_file::merged_args(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("s2cs: {e}");
            return ExitCode::from(2);
        }
    };
    // SciStream 1.2's spellings (--type, --verbose=True, --ssl=False, -l).
    let (argv, compat_notes) = match scistream_control::compat::translate(argv) {
        Ok(t) => (t.argv, t.notes),
        Err(e) => {
            eprintln!("s2cs: {e}");
            return ExitCode::from(2);
        }
    };
    let config = Config::parse_from(&argv);
    if config.print_config {
        return match scistream_control::config_file::print(&argv) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("s2cs: {e}");
                ExitCode::from(2)
            }
        };
    }
    if config.check_config {
        return check_config(&config, &compat_notes);
    }
    init_logs(&config);
    for n in &compat_notes {
        tracing::info!("{n}");
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("s2cs: cannot start the async runtime: {e}");
            return ExitCode::from(71);
        }
    };
    // Handlers are in place before s2cs says it is ready.
    let shutdown = {
        let _inside = runtime.enter();
        shutdown_signal()
    };
    let result = runtime.block_on(run(config, shutdown, |addr, metrics| {
        // Machine-readable lines on stdout, for scripts and tests that start
        // s2cs with --port 0: the control address first, always.
        println!("s2cs listening on {addr}");
        if let Some(m) = metrics {
            println!("s2cs metrics on {m}");
        }
    }));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("s2cs: {e}");
            ExitCode::from(1)
        }
    }
}

/// Catches SIGTERM and SIGINT from now on (inside the runtime); the
/// future completes at the first of them.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            // Without signal handlers we still serve; Ctrl-C then kills the process.
            std::future::pending::<()>().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    }
}

/// `--check-config`: reads and checks everything, starts nothing.
fn check_config(config: &Config, compat_notes: &[String]) -> ExitCode {
    for n in compat_notes {
        eprintln!("note: {n}");
    }
    match scistream_control::check_config(config) {
        Ok(warnings) => {
            for w in &warnings {
                eprintln!("warning: {w}");
            }
            println!("configuration OK");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("s2cs: configuration error: {e}");
            ExitCode::from(1)
        }
    }
}

/// Logs to stderr: text (coloured on a terminal) or JSON (`--log-format`),
/// at the level `-v` asks for unless RUST_LOG says otherwise.
fn init_logs(config: &Config) {
    let default_level = match config.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log_format == "json" {
        fmt.json().init();
    } else {
        fmt.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}
