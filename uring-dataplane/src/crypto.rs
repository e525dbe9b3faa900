//! Which AEAD code seals the data channel's records, chosen by measuring.
//!
//! Two well-kept providers are built in, *ring* and AWS-LC (aws-lc-rs), and
//! which is faster depends on the CPU: on one 2-core Intel Xeon (VAES,
//! AVX-512) AWS-LC sealed AES-128-GCM at ~13 GB/s against ring's ~8; on an
//! AMD EPYC ring came out ahead. `--crypto auto` (the default) seals a few
//! MiB with each provider and suite at start (milliseconds), takes the
//! faster provider, and offers the suites in the order that measurement
//! gives. The choice and the figures are logged once; `s2tune check` shows
//! them. Two gateways of one tunnel may choose differently: it is TLS, the
//! records are the same.

use std::time::{Duration, Instant};

use crate::record::{Cipher, ContentType, Crypto, HEADER, MAX_PAYLOAD, SLOT, Suite};

pub use scistream_protocol::options::CryptoChoice;

/// One measured (provider, suite) pair.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Speed {
    /// Provider.
    pub crypto: Crypto,
    /// Suite.
    pub suite: Suite,
    /// Sealing speed, bytes per second (16 KiB records, one core).
    pub bytes_per_s: f64,
}

/// What was chosen, and from which figures.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CryptoPlan {
    /// The provider for the handshake and the records.
    pub crypto: Crypto,
    /// Suites to offer, fastest first.
    pub suites: Vec<Suite>,
    /// The measurements (empty when the provider was forced).
    pub measured: Vec<Speed>,
}

/// Longest one (provider, suite) measurement runs: on a slow or emulated
/// CPU the measurement stops here rather than delay the start.
const MAX_TIME: Duration = Duration::from_millis(15);

/// Seals up to `bytes` of 16 KiB records (for at most 15 ms) with `crypto`
/// and `suite`; bytes per second.
pub fn seal_speed(crypto: Crypto, suite: Suite, bytes: usize) -> f64 {
    let key = vec![7u8; suite.key_len()];
    let Ok(mut cipher) = Cipher::from_raw(crypto, suite, &key, [1u8; 12], 0) else {
        return 0.0;
    };
    let mut record = vec![0u8; SLOT];
    // One record to warm the code and the caches, then the measurement.
    let _ = cipher.seal(&mut record, MAX_PAYLOAD, ContentType::ApplicationData);
    let records = bytes.div_ceil(MAX_PAYLOAD).max(1);
    let started = Instant::now();
    let mut sealed = 0;
    while sealed < records {
        if cipher
            .seal(&mut record, MAX_PAYLOAD, ContentType::ApplicationData)
            .is_err()
        {
            return 0.0;
        }
        // The record is sealed in place: each round seals the last ciphertext again.
        record[..HEADER].fill(0);
        sealed += 1;
        if sealed % 16 == 0 && started.elapsed() >= MAX_TIME {
            break;
        }
    }
    let took = started.elapsed().max(Duration::from_nanos(1));
    (sealed * MAX_PAYLOAD) as f64 / took.as_secs_f64()
}

impl Default for CryptoPlan {
    fn default() -> Self {
        CryptoPlan {
            crypto: Crypto::Ring,
            suites: vec![Suite::Aes128Gcm, Suite::Aes256Gcm, Suite::Chacha20Poly1305],
            measured: Vec::new(),
        }
    }
}

impl CryptoPlan {
    /// The plan for `choice`: measured for `Auto` (each pair sealing
    /// `bytes`, the best of three tries), else the forced provider with the
    /// default suite order.
    pub fn choose(choice: CryptoChoice, bytes: usize) -> CryptoPlan {
        let forced = |crypto| CryptoPlan {
            crypto,
            suites: vec![Suite::Aes128Gcm, Suite::Aes256Gcm, Suite::Chacha20Poly1305],
            measured: Vec::new(),
        };
        match choice {
            CryptoChoice::Ring => return forced(Crypto::Ring),
            CryptoChoice::AwsLc => return forced(Crypto::AwsLc),
            CryptoChoice::Auto => {}
        }
        let mut measured = Vec::new();
        for crypto in [Crypto::Ring, Crypto::AwsLc] {
            for suite in Suite::ALL {
                let best = (0..3)
                    .map(|_| seal_speed(crypto, suite, bytes / 3))
                    .fold(0.0, f64::max);
                measured.push(Speed {
                    crypto,
                    suite,
                    bytes_per_s: best,
                });
            }
        }
        CryptoPlan::from_measurements(measured)
    }

    /// The plan the measurements give: the provider whose fastest suite is
    /// fastest, its suites in order of speed.
    pub fn from_measurements(measured: Vec<Speed>) -> CryptoPlan {
        let best = measured
            .iter()
            .max_by(|a, b| a.bytes_per_s.total_cmp(&b.bytes_per_s))
            .map(|s| s.crypto)
            .unwrap_or(Crypto::Ring);
        let mut mine: Vec<&Speed> = measured.iter().filter(|s| s.crypto == best).collect();
        mine.sort_by(|a, b| b.bytes_per_s.total_cmp(&a.bytes_per_s));
        CryptoPlan {
            crypto: best,
            suites: mine.iter().map(|s| s.suite).collect(),
            measured,
        }
    }

    /// One line for the log.
    pub fn describe(&self) -> String {
        let figures: Vec<String> = self
            .measured
            .iter()
            .map(|s| {
                format!(
                    "{} {} {:.1} GB/s",
                    s.crypto.name(),
                    s.suite.name(),
                    s.bytes_per_s / 1e9
                )
            })
            .collect();
        let order: Vec<&str> = self.suites.iter().map(|s| s.name()).collect();
        if figures.is_empty() {
            format!(
                "{} (forced), suites {}",
                self.crypto.name(),
                order.join(" > ")
            )
        } else {
            format!(
                "{} (measured: {}), suites {}",
                self.crypto.name(),
                figures.join(", "),
                order.join(" > ")
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fastest_provider_and_its_suite_order_are_chosen() {
        let s = |crypto, suite, gbps: f64| Speed {
            crypto,
            suite,
            bytes_per_s: gbps * 1e9,
        };
        let plan = CryptoPlan::from_measurements(vec![
            s(Crypto::Ring, Suite::Aes128Gcm, 8.0),
            s(Crypto::Ring, Suite::Aes256Gcm, 7.0),
            s(Crypto::Ring, Suite::Chacha20Poly1305, 1.6),
            s(Crypto::AwsLc, Suite::Aes128Gcm, 13.0),
            s(Crypto::AwsLc, Suite::Aes256Gcm, 10.7),
            s(Crypto::AwsLc, Suite::Chacha20Poly1305, 1.5),
        ]);
        assert_eq!(plan.crypto, Crypto::AwsLc);
        assert_eq!(
            plan.suites,
            vec![Suite::Aes128Gcm, Suite::Aes256Gcm, Suite::Chacha20Poly1305]
        );
        assert!(plan.describe().contains("aws-lc AES_128_GCM 13.0 GB/s"));
        // A CPU where ChaCha wins (no AES instructions).
        let plan = CryptoPlan::from_measurements(vec![
            s(Crypto::Ring, Suite::Aes128Gcm, 0.4),
            s(Crypto::Ring, Suite::Chacha20Poly1305, 1.2),
            s(Crypto::AwsLc, Suite::Aes128Gcm, 0.3),
        ]);
        assert_eq!(plan.crypto, Crypto::Ring);
        assert_eq!(plan.suites[0], Suite::Chacha20Poly1305);
    }

    #[test]
    fn measuring_here_gives_a_plan_with_every_suite() {
        let plan = CryptoPlan::choose(CryptoChoice::Auto, 1 << 20);
        assert_eq!(plan.measured.len(), 6);
        assert!(
            plan.measured.iter().all(|s| s.bytes_per_s > 0.0),
            "{plan:?}"
        );
        assert_eq!(plan.suites.len(), 3);
        let forced = CryptoPlan::choose(CryptoChoice::Ring, 1 << 20);
        assert_eq!(forced.crypto, Crypto::Ring);
        assert!(forced.measured.is_empty());
    }
}
