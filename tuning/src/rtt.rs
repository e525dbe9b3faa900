//! `s2tune rtt HOST:PORT`: round-trip time by timed TCP connects.
//!
//! A TCP connect completes after one round trip (SYN, SYN-ACK), whether
//! the port accepts or refuses (RST), so a closed port measures too. The
//! median of several connects is robust to one slow handshake.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// What the connects measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RttReport {
    /// The address measured.
    pub addr: SocketAddr,
    /// Each connect's time, in order.
    #[serde(serialize_with = "ser_micros")]
    pub samples: Vec<Duration>,
    /// Connects that timed out.
    pub timeouts: usize,
}

fn ser_micros<S: serde::Serializer>(v: &[Duration], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|d| d.as_secs_f64() * 1e6))
}

impl RttReport {
    fn sorted(&self) -> Vec<Duration> {
        let mut v = self.samples.clone();
        v.sort();
        v
    }

    /// The median.
    pub fn median(&self) -> Option<Duration> {
        let v = self.sorted();
        if v.is_empty() {
            return None;
        }
        let m = v.len() / 2;
        Some(if v.len() % 2 == 1 {
            v[m]
        } else {
            (v[m - 1] + v[m]) / 2
        })
    }

    /// The smallest.
    pub fn min(&self) -> Option<Duration> {
        self.sorted().first().copied()
    }

    /// The largest.
    pub fn max(&self) -> Option<Duration> {
        self.sorted().last().copied()
    }
}

/// Why nothing could be measured.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RttError {
    /// The address does not resolve.
    #[error("cannot resolve '{0}': {1}")]
    Resolve(String, String),
    /// Every connect failed other than by timeout or refusal.
    #[error("connecting to {addr} failed: {reason}")]
    Connect {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// Every connect timed out.
    #[error(
        "no answer from {addr} within {timeout:?} in {count} tries (filtered port or host down?)"
    )]
    NoAnswer {
        /// The address.
        addr: SocketAddr,
        /// Per-connect timeout.
        timeout: Duration,
        /// Tries.
        count: usize,
    },
}

/// Connects `count` times to `target` (each bounded by `timeout`, `gap`
/// apart), calling `progress` after each.
pub fn measure(
    target: &str,
    count: usize,
    timeout: Duration,
    gap: Duration,
    mut progress: impl FnMut(usize, Option<Duration>),
) -> Result<RttReport, RttError> {
    let addr = target
        .to_socket_addrs()
        .map_err(|e| RttError::Resolve(target.into(), e.to_string()))?
        .next()
        .ok_or_else(|| RttError::Resolve(target.into(), "no address".into()))?;
    let mut report = RttReport {
        addr,
        samples: Vec::new(),
        timeouts: 0,
    };
    let mut last_error = None;
    for i in 0..count {
        if i > 0 {
            std::thread::sleep(gap);
        }
        let start = Instant::now();
        let r = TcpStream::connect_timeout(&addr, timeout);
        let took = start.elapsed();
        let sample = match r {
            Ok(_) => Some(took),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(took),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                report.timeouts += 1;
                None
            }
            Err(e) => {
                last_error = Some(e.to_string());
                None
            }
        };
        if let Some(s) = sample {
            report.samples.push(s);
        }
        progress(i + 1, sample);
    }
    if report.samples.is_empty() {
        return Err(match last_error {
            Some(reason) => RttError::Connect { addr, reason },
            None => RttError::NoAnswer {
                addr,
                timeout,
                count,
            },
        });
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        let r = |ms: &[u64]| RttReport {
            addr: "127.0.0.1:1".parse().unwrap(),
            samples: ms.iter().map(|&m| Duration::from_millis(m)).collect(),
            timeouts: 0,
        };
        assert_eq!(r(&[5, 1, 3]).median(), Some(Duration::from_millis(3)));
        assert_eq!(r(&[4, 1, 3, 2]).median(), Some(Duration::from_micros(2500)));
        assert_eq!(r(&[]).median(), None);
        assert_eq!(r(&[4, 1, 9]).min(), Some(Duration::from_millis(1)));
    }

    #[test]
    fn measures_loopback_open_and_closed_ports() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let mut seen = 0;
        let r = measure(&addr, 5, Duration::from_secs(2), Duration::ZERO, |n, _| {
            seen = n
        })
        .unwrap();
        assert_eq!((r.samples.len(), seen), (5, 5));
        drop(l);
        // A refused connect is a round trip too.
        let r = measure(&addr, 3, Duration::from_secs(2), Duration::ZERO, |_, _| {}).unwrap();
        assert_eq!(r.samples.len(), 3);
        assert!(
            measure(
                "no-such-host.invalid:1",
                1,
                Duration::from_secs(1),
                Duration::ZERO,
                |_, _| {}
            )
            .is_err()
        );
    }
}
