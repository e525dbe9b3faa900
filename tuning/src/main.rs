//! `s2tune`: network tuning for SciStream gateways.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use scistream_protocol::units::{format_size, parse_duration, parse_rate};

/// Network tuning for SciStream gateways and endpoints.
#[derive(Debug, Parser)]
#[command(name = "s2tune", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Bandwidth-delay product: how many bytes must be in flight to fill a path.
    Bdp {
        /// Path rate, e.g. 100Gbit, 10Gb/s.
        #[arg(long, value_parser = |s: &str| parse_rate(s).map_err(|e| e.to_string()))]
        rate: u64,
        /// Round-trip time, e.g. 50ms.
        #[arg(long, value_parser = |s: &str| parse_duration(s).map_err(|e| e.to_string()))]
        rtt: std::time::Duration,
    },
}

fn main() {
    match Cli::parse().command {
        Cmd::Bdp { rate, rtt } => {
            let bdp = (rate as f64 / 8.0 * rtt.as_secs_f64()).round() as u64;
            println!(
                "{rate} bit/s x {:.3} ms / 8 = {bdp} bytes ({}) must be in flight",
                rtt.as_secs_f64() * 1e3,
                format_size(bdp)
            );
        }
    }
}
