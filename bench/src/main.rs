//! `s2bench`: the benchmark harness for streaming through SciStream tunnels.
//!
//! This first version only describes itself; the source, sink, detector
//! simulator and `compare` land with the benchmark issue.
#![forbid(unsafe_code)]

use clap::Parser;

/// Benchmark harness for streaming through SciStream tunnels (source, sink,
/// detector simulator, side-by-side comparisons). Its commands are being built.
#[derive(Debug, Parser)]
#[command(name = "s2bench", version, about)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
    eprintln!(
        "s2bench: no command yet; see `s2bench --help`. Use `s2uc demo` for an end-to-end run."
    );
    std::process::exit(2);
}
