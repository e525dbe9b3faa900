//! Human-friendly sizes, rates and durations, as every tool here accepts them.
//!
//! - sizes: `4096`, `64KiB`, `8MiB`, `1GiB`, `1.5GB`, `8M` (`k`/`M`/`G`/`T` are
//!   decimal, `Ki`/`Mi`/`Gi`/`Ti` binary; a trailing `B` is optional);
//! - rates in bits per second: `200Mbit`, `10Gbit`, `1.5Gb/s`, `10Gbps`,
//!   `500kbit`, or bytes with `B`: `1GB/s`, `100MiB/s`;
//! - durations: `250ms`, `100us`, `5s`, `3m`, `1h`, a bare number is seconds.

/// Why a value was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{input}' is not a valid {what}: {hint}")]
pub struct UnitError {
    input: String,
    what: &'static str,
    hint: &'static str,
}

fn err(input: &str, what: &'static str, hint: &'static str) -> UnitError {
    UnitError {
        input: input.chars().take(40).collect(),
        what,
        hint,
    }
}

fn split_number(s: &str) -> Option<(f64, &str)> {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, rest) = s.split_at(end);
    if num.is_empty() || num.starts_with('.') && num.len() == 1 {
        return None;
    }
    let value: f64 = num.parse().ok()?;
    value.is_finite().then_some((value, rest.trim()))
}

fn prefix_multiplier(p: &str) -> Option<f64> {
    Some(match p {
        "" => 1.0,
        "k" | "K" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" | "KI" | "ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    })
}

const SIZE_HINT: &str = "use a number of bytes with an optional unit: 4096, 64KiB, 8MiB, 1GB";

/// Parses a size in bytes.
pub fn parse_size(s: &str) -> Result<u64, UnitError> {
    let t = s.trim();
    let (value, unit) = split_number(t).ok_or_else(|| err(s, "size", SIZE_HINT))?;
    let unit = unit
        .strip_suffix('B')
        .or_else(|| unit.strip_suffix('b').filter(|u| u.is_empty()))
        .unwrap_or(unit);
    let mult = prefix_multiplier(unit).ok_or_else(|| err(s, "size", SIZE_HINT))?;
    let bytes = value * mult;
    if bytes.fract() != 0.0 && mult == 1.0 {
        return Err(err(s, "size", "a size in bytes must be a whole number"));
    }
    if bytes > u64::MAX as f64 / 2.0 {
        return Err(err(s, "size", "it is too large"));
    }
    Ok(bytes.round() as u64)
}

const RATE_HINT: &str =
    "use bits per second such as 200Mbit, 10Gbit, 1.5Gb/s, 10Gbps, or bytes such as 1GB/s";

/// Parses a rate, returning bits per second.
pub fn parse_rate(s: &str) -> Result<u64, UnitError> {
    let t = s.trim();
    let (value, unit) = split_number(t).ok_or_else(|| err(s, "rate", RATE_HINT))?;
    let unit = unit
        .strip_suffix("/s")
        .or_else(|| unit.strip_suffix("ps"))
        .unwrap_or(unit);
    let (prefix, bits_per_unit) = if let Some(p) = unit.strip_suffix("bit") {
        (p, 1.0)
    } else if let Some(p) = unit.strip_suffix("b") {
        (p, 1.0)
    } else if let Some(p) = unit.strip_suffix("B") {
        (p, 8.0)
    } else if unit.is_empty() {
        ("", 1.0)
    } else {
        return Err(err(s, "rate", RATE_HINT));
    };
    let mult = prefix_multiplier(prefix).ok_or_else(|| err(s, "rate", RATE_HINT))?;
    let bps = value * mult * bits_per_unit;
    if bps > 1e15 {
        return Err(err(s, "rate", "it is above 1 Pbit/s"));
    }
    Ok(bps.round() as u64)
}

const DURATION_HINT: &str = "use a number with a unit: 100us, 250ms, 5s, 3m, 1h";

/// Parses a duration.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, UnitError> {
    let t = s.trim();
    let (value, unit) = split_number(t).ok_or_else(|| err(s, "duration", DURATION_HINT))?;
    let secs = match unit {
        "" | "s" | "sec" | "secs" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "ns" => value / 1e9,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(err(s, "duration", DURATION_HINT)),
    };
    if secs > 1e9 {
        return Err(err(s, "duration", "it is too long"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// Formats bits per second for people: `9.87 Gbit/s`.
pub fn format_rate(bps: f64) -> String {
    let (v, u) = if bps >= 1e9 {
        (bps / 1e9, "Gbit/s")
    } else if bps >= 1e6 {
        (bps / 1e6, "Mbit/s")
    } else if bps >= 1e3 {
        (bps / 1e3, "kbit/s")
    } else {
        (bps, "bit/s")
    };
    format!("{v:.2} {u}")
}

/// Formats a byte count for people: `1.00 GiB`.
pub fn format_size(bytes: u64) -> String {
    let b = bytes as f64;
    let (v, u) = if b >= 1024.0 * 1024.0 * 1024.0 {
        (b / (1024.0 * 1024.0 * 1024.0), "GiB")
    } else if b >= 1024.0 * 1024.0 {
        (b / (1024.0 * 1024.0), "MiB")
    } else if b >= 1024.0 {
        (b / 1024.0, "KiB")
    } else {
        return format!("{bytes} B");
    };
    format!("{v:.2} {u}")
}

/// Formats seconds since the Unix epoch as RFC 3339 UTC: `2026-11-25T14:03:00Z`.
pub fn format_utc(secs: u64) -> String {
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        // Checked against `date -u -d @SECS`.
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(1_795_615_380), "2026-11-25T14:03:00Z");
    }

    use super::*;
    use std::time::Duration;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("8MiB").unwrap(), 8 << 20);
        assert_eq!(parse_size("8Mi").unwrap(), 8 << 20);
        assert_eq!(parse_size("1GB").unwrap(), 1_000_000_000);
        assert_eq!(parse_size("1.5KiB").unwrap(), 1536);
        assert_eq!(parse_size("8M").unwrap(), 8_000_000);
        assert!(parse_size("8MQ").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("1.5").is_err());
        assert!(parse_size("8MQ").unwrap_err().to_string().contains("'8MQ'"));
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("10Gbit").unwrap(), 10_000_000_000);
        assert_eq!(parse_rate("1.5Gb/s").unwrap(), 1_500_000_000);
        assert_eq!(parse_rate("200Mbit").unwrap(), 200_000_000);
        assert_eq!(parse_rate("10Gbps").unwrap(), 10_000_000_000);
        assert_eq!(parse_rate("1GB/s").unwrap(), 8_000_000_000);
        assert_eq!(parse_rate("100Gbit").unwrap(), 100_000_000_000);
        assert!(parse_rate("10Gbitt").is_err());
        assert!(parse_rate("-5Gbit").is_err());
        assert!(parse_rate("fast").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("100us").unwrap(), Duration::from_micros(100));
        assert_eq!(parse_duration("50ms").unwrap(), Duration::from_millis(50));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn formatting() {
        assert_eq!(format_rate(9.87e9), "9.87 Gbit/s");
        assert_eq!(format_size(1 << 30), "1.00 GiB");
        assert_eq!(format_size(12), "12 B");
    }
}
