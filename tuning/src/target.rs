//! The path a gateway must fill, and the buffer sizes that follows from it.

use std::time::Duration;

use scistream_protocol::units::{format_rate, format_size};

/// Largest value Linux takes for a socket buffer sysctl (`INT_MAX`).
pub const MAX_BUFFER: u64 = i32::MAX as u64;
/// Smallest buffer maximum recommended, whatever the path (fasterdata's floor).
pub const MIN_BUFFER: u64 = 64 << 20;

/// A path: its rate and round-trip time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// Bits per second.
    pub rate_bps: u64,
    /// Round-trip time.
    pub rtt: Duration,
}

impl Target {
    /// Bytes in flight needed to fill the path: rate × RTT / 8.
    pub fn bdp(&self) -> u64 {
        (self.rate_bps as u128 * self.rtt.as_nanos() / 8 / 1_000_000_000) as u64
    }

    /// The socket buffer maximum to allow: twice the BDP (Linux gives
    /// part of each buffer to bookkeeping, and a loss must not stall the
    /// window), rounded up to a power of two, at least 64 MiB, at most INT_MAX.
    pub fn buffer(&self) -> u64 {
        self.bdp()
            .saturating_mul(2)
            .checked_next_power_of_two()
            .unwrap_or(MAX_BUFFER)
            .clamp(MIN_BUFFER, MAX_BUFFER)
    }

    /// `net.core.netdev_max_backlog` for this rate (fasterdata: 250000 at 100G).
    pub fn backlog(&self) -> u64 {
        match self.rate_bps {
            r if r >= 40_000_000_000 => 250_000,
            r if r >= 10_000_000_000 => 30_000,
            _ => 1000,
        }
    }

    /// One line naming the target.
    pub fn describe(&self) -> String {
        format!(
            "{} over {} RTT",
            format_rate(self.rate_bps as f64),
            format_ms(self.rtt)
        )
    }

    /// The arithmetic and what to set, for `s2tune bdp`.
    pub fn explain(&self) -> String {
        let bdp = self.bdp();
        let buffer = self.buffer();
        let per_conn = |n: u64| format_size(bdp.div_ceil(n));
        format!(
            "bandwidth-delay product
  {rate} bit/s x {rtt} / 8 = {bdp} bytes ({bdp_h}) must be in flight to fill the path

socket buffers
  buffer maximum = 2 x BDP, rounded up to a power of two, within 64 MiB..2 GiB-1
                 = {buffer} bytes ({buffer_h})
  sysctl -w net.core.rmem_max={buffer} net.core.wmem_max={buffer}
  sysctl -w net.ipv4.tcp_rmem='4096 131072 {buffer}' net.ipv4.tcp_wmem='4096 16384 {buffer}'
  (s2tune apply --rate {rate_arg} --rtt {rtt_arg} shows and applies these)

s2cs
  leave --sndbuf/--rcvbuf unset: the kernel autotunes each connection up to
  tcp_rmem/tcp_wmem's maximum. To pin them instead, each connection needs the
  BDP divided by the connections of a session: --num_conn 1: {c1}, 4: {c4}, 8: {c8}
  (e.g. s2cs --sndbuf {c4_arg} --rcvbuf {c4_arg} for sessions of 4 connections; needs
  net.core.rmem_max/wmem_max at least that).
  netdev_max_backlog for this rate: {backlog}",
            rate = self.rate_bps,
            rtt = format_ms(self.rtt),
            bdp_h = format_size(bdp),
            buffer_h = format_size(buffer),
            rate_arg = rate_arg(self.rate_bps),
            rtt_arg = format_ms(self.rtt).replace(' ', ""),
            c1 = per_conn(1),
            c4 = per_conn(4),
            c8 = per_conn(8),
            c4_arg = format!("{}MiB", bdp.div_ceil(4).div_ceil(1 << 20)),
            backlog = self.backlog(),
        )
    }
}

/// A rate as `s2tune --rate` takes it back (`100Gbit`).
pub fn rate_arg(bps: u64) -> String {
    for (div, unit) in [(1_000_000_000, "Gbit"), (1_000_000, "Mbit"), (1000, "kbit")] {
        if bps % div == 0 {
            return format!("{}{unit}", bps / div);
        }
    }
    format!("{bps}bit")
}

/// A duration in milliseconds for people (`50 ms`, `0.1 ms`).
pub fn format_ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms >= 10.0 {
        format!("{ms:.0} ms")
    } else {
        let s = format!("{ms:.3}");
        format!("{} ms", s.trim_end_matches('0').trim_end_matches('.'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scistream_protocol::units::{parse_duration, parse_rate};

    fn t(rate: &str, rtt: &str) -> Target {
        Target {
            rate_bps: parse_rate(rate).unwrap(),
            rtt: parse_duration(rtt).unwrap(),
        }
    }

    #[test]
    fn bdp_arithmetic() {
        assert_eq!(t("100Gbit", "50ms").bdp(), 625_000_000);
        assert_eq!(t("10Gbit", "50ms").bdp(), 62_500_000);
        assert_eq!(t("1.5Gb/s", "250ms").bdp(), 46_875_000);
        assert_eq!(t("10Gbit", "100us").bdp(), 125_000);
        assert_eq!(t("400Gbit", "200ms").bdp(), 10_000_000_000, "no overflow");
    }

    #[test]
    fn buffers_follow_the_bdp() {
        assert_eq!(
            t("100Gbit", "50ms").buffer(),
            MAX_BUFFER,
            "1.25 GB rounds past 2^30"
        );
        assert_eq!(t("10Gbit", "50ms").buffer(), 128 << 20);
        assert_eq!(t("1Gbit", "1ms").buffer(), MIN_BUFFER, "floor");
        assert_eq!(t("400Gbit", "200ms").buffer(), MAX_BUFFER, "ceiling");
        assert_eq!(t("100Gbit", "1ms").backlog(), 250_000);
        assert_eq!(t("10Gbit", "1ms").backlog(), 30_000);
    }

    #[test]
    fn explanation_shows_the_arithmetic() {
        let e = t("100Gbit", "50ms").explain();
        assert!(
            e.contains("100000000000 bit/s x 50 ms / 8 = 625000000 bytes"),
            "{e}"
        );
        assert!(e.contains("net.core.rmem_max=2147483647"), "{e}");
        assert!(e.contains("--rate 100Gbit --rtt 50ms"), "{e}");
        assert_eq!(format_ms(Duration::from_micros(100)), "0.1 ms");
    }

    #[test]
    fn units_parse_and_reject() {
        assert_eq!(parse_rate("10Gbit").unwrap(), 10_000_000_000);
        assert_eq!(parse_rate("1.5Gb/s").unwrap(), 1_500_000_000);
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("100us").unwrap(), Duration::from_micros(100));
        assert!(parse_rate("10Gbitt").is_err());
        assert!(parse_rate("-10Gbit").is_err());
        assert!(parse_duration("-5ms").is_err());
    }
}
