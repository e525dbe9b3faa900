//! The value parsers the binaries' command lines share (clap's
//! `value_parser`): durations, sizes, rates, connection counts and port
//! ranges, each with an error that names what was wrong.

use std::ops::RangeInclusive;
use std::time::Duration;

/// `180`, `180s`, `3m`, `500ms`: a positive duration.
pub fn duration(s: &str) -> Result<Duration, String> {
    match crate::units::parse_duration(s) {
        Ok(d) if d.is_zero() => Err(format!("duration '{s}' must be above zero")),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

/// A duration that may be zero (`0s`: off).
pub fn duration_or_zero(s: &str) -> Result<Duration, String> {
    crate::units::parse_duration(s).map_err(|e| e.to_string())
}

/// A size (`1MiB`), bytes, above zero.
pub fn size(s: &str) -> Result<u64, String> {
    match crate::units::parse_size(s) {
        Ok(0) => Err(format!("size '{s}' must be above zero")),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A rate (`10Gbit`, `1.5Gb/s`), bits per second, above zero.
pub fn rate(s: &str) -> Result<u64, String> {
    match crate::units::parse_rate(s) {
        Ok(0) => Err(format!("rate '{s}' must be above zero")),
        Ok(r) => Ok(r),
        Err(e) => Err(e.to_string()),
    }
}

/// A session's connection count, 1-128.
pub fn conns(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=crate::MAX_LISTENERS_PER_SESSION).contains(&n) => Ok(n),
        _ => Err(format!(
            "'{s}' is not a connection count between 1 and {}",
            crate::MAX_LISTENERS_PER_SESSION
        )),
    }
}

/// `FIRST-LAST`, e.g. `5100-5200`: ports 1-65535, not empty.
pub fn port_range(s: &str) -> Result<RangeInclusive<u16>, String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("'{s}' is not a port range: expected FIRST-LAST, e.g. 5100-5200"))?;
    let a: u16 = a
        .trim()
        .parse()
        .map_err(|_| format!("'{a}' in '{s}' is not a port (1-65535)"))?;
    let b: u16 = b
        .trim()
        .parse()
        .map_err(|_| format!("'{b}' in '{s}' is not a port (1-65535)"))?;
    if a == 0 {
        return Err(format!("port range '{s}' starts at 0; ports start at 1"));
    }
    if a > b {
        return Err(format!(
            "port range '{s}' is empty: the first port is above the last"
        ));
    }
    Ok(a..=b)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn each_parser_takes_what_it_should_and_names_what_it_refuses() {
        assert_eq!(duration("3m").unwrap(), Duration::from_secs(180));
        assert!(duration("0s").unwrap_err().contains("above zero"));
        assert_eq!(duration_or_zero("0s").unwrap(), Duration::ZERO);
        assert_eq!(size("1MiB").unwrap(), 1 << 20);
        assert!(size("0").unwrap_err().contains("above zero"));
        assert_eq!(rate("1Gbit").unwrap(), 1_000_000_000);
        assert_eq!(conns("128").unwrap(), 128);
        assert!(conns("129").unwrap_err().contains("between 1 and 128"));
        assert_eq!(port_range("5100-5200").unwrap(), 5100..=5200);
        assert!(port_range("5200-5100").unwrap_err().contains("empty"));
        assert!(port_range("0-10").unwrap_err().contains("starts at 0"));
    }
}
