//! Kernel TLS offload: when to use it, and moving a set-up connection's
//! keys into the kernel.
//!
//! Offload is decided per connection, and only where it is safe for a
//! stream that lasts hours: AES-GCM allows about 2^24 records per key, so a
//! connection must be able to change keys, and the kernels this runs on so
//! far cannot take new keys on a kTLS socket (`EBUSY`, probed at start).
//! Such a host therefore offloads only ChaCha20-Poly1305 connections (no
//! per-key limit: the record counter wraps first) and offers that suite
//! first; AES-GCM connections stay in user space, where rustls changes keys.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;

use rustls::SupportedCipherSuite;
use tracing::info;

use crate::sys::ktls::{KeyDirection, attach_ulp, install};

/// What the kernel offers, probed once at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KtlsSupport {
    /// The `tls` ULP attaches.
    pub available: bool,
    /// Keys can be installed a second time (TLS 1.3 key updates).
    pub rekey: bool,
    /// ChaCha20-Poly1305 keys are accepted (its crypto modules are there).
    pub chacha: bool,
}

pub use scistream_protocol::options::KtlsChoice;

impl KtlsSupport {
    /// Probes the kernel on a loopback connection (nothing leaves the host).
    pub fn probe() -> KtlsSupport {
        probe_inner().unwrap_or_default()
    }

    /// Explains the probe in one log line.
    pub fn log(&self, choice: KtlsChoice) {
        match (choice, self.available, self.rekey) {
            (KtlsChoice::Off, _, _) => info!("kTLS off (--ktls off): TLS runs in user space"),
            (_, false, _) => {
                info!("kTLS unavailable (the kernel has no tls ULP): TLS runs in user space")
            }
            (_, true, true) => {
                info!("kTLS available with key updates: connections offload to the kernel")
            }
            (_, true, false) if self.chacha => info!(
                "kTLS available without key updates: ChaCha20-Poly1305 connections offload to the kernel, AES-GCM ones stay in user space"
            ),
            (_, true, false) => info!(
                "kTLS available but neither key updates nor ChaCha20-Poly1305 (its kernel modules are missing): TLS runs in user space"
            ),
        }
    }

    /// Whether a connection with this suite goes to the kernel: kTLS is
    /// there and the suite needs no key updates. (Kernels that take new
    /// keys exist, but none runs here to test against, so AES-GCM stays in
    /// user space even on those; see the crate README.)
    pub fn offloads(&self, choice: KtlsChoice, suite: SupportedCipherSuite) -> bool {
        choice == KtlsChoice::Auto && self.available && self.chacha && !has_key_limit(suite)
    }

    /// Whether this host offers ChaCha20-Poly1305 first: it is the suite it can offload.
    pub fn prefers_chacha(&self, choice: KtlsChoice) -> bool {
        choice == KtlsChoice::Auto && self.available && self.chacha
    }
}

/// True for suites with a per-key record limit (AES-GCM), which need key
/// updates on long connections.
pub fn has_key_limit(suite: SupportedCipherSuite) -> bool {
    suite
        .tls13()
        .is_some_and(|s| s.common.confidentiality_limit != u64::MAX)
}

/// Key material of the right shape for AES-256-GCM (zeros: for probing only).
fn probe_secrets() -> rustls::ConnectionTrafficSecrets {
    rustls::ConnectionTrafficSecrets::Aes256Gcm {
        key: rustls::crypto::cipher::AeadKey::from([0u8; 32]),
        iv: rustls::crypto::cipher::Iv::copy(&[0u8; 12]),
    }
}

/// A connected loopback socket with the `tls` ULP attached, or `None`.
fn probe_socket() -> io::Result<Option<(TcpStream, TcpStream)>> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let a = TcpStream::connect(listener.local_addr()?)?;
    let (b, _) = listener.accept()?;
    Ok(attach_ulp(&a).is_ok().then_some((a, b)))
}

fn probe_inner() -> io::Result<KtlsSupport> {
    let Some((a, _b)) = probe_socket()? else {
        return Ok(KtlsSupport::default());
    };
    let chacha = match probe_socket()? {
        Some((c, _d)) => {
            let secrets = rustls::ConnectionTrafficSecrets::Chacha20Poly1305 {
                key: rustls::crypto::cipher::AeadKey::from([0u8; 32]),
                iv: rustls::crypto::cipher::Iv::copy(&[0u8; 12]),
            };
            let info = ktls::CryptoInfo::from_rustls(
                rustls::crypto::ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
                (0, secrets),
            )
            .map_err(io::Error::other)?;
            install(&c, KeyDirection::Tx, &info).is_ok()
        }
        None => false,
    };
    let info = ktls::CryptoInfo::from_rustls(
        rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
        (0, probe_secrets()),
    )
    .map_err(io::Error::other)?;
    install(&a, KeyDirection::Tx, &info)?;
    let rekey = install(&a, KeyDirection::Tx, &info).is_ok();
    Ok(KtlsSupport {
        available: true,
        rekey,
        chacha,
    })
}

/// How moving a session into the kernel went.
pub enum Offload {
    /// The kernel has the keys: plain I/O on the socket carries application data.
    Done,
    /// Not moved; the keys are handed back and the session goes on in user space.
    Declined(Box<rustls::ExtractedSecrets>, String),
    /// The kernel refused the keys after the ULP was attached: the session is lost.
    Failed(String),
}

impl std::fmt::Debug for Offload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Offload::Done => f.write_str("Done"),
            Offload::Declined(_, why) => write!(f, "Declined({why})"),
            Offload::Failed(why) => write!(f, "Failed({why})"),
        }
    }
}

/// Moves a set-up TLS session's keys into the kernel for `fd`: after this,
/// plain `read`/`write`/`splice` on `fd` carry application data, encrypted
/// and decrypted by the kernel. Attaching the ULP is tried first, while the
/// session can still go on in user space.
pub fn offload(
    fd: impl AsFd + Copy,
    suite: SupportedCipherSuite,
    secrets: rustls::ExtractedSecrets,
) -> Offload {
    if let Err(e) = attach_ulp(fd) {
        return Offload::Declined(Box::new(secrets), format!("cannot attach the tls ULP: {e}"));
    }
    let result = (|| {
        let tx = ktls::CryptoInfo::from_rustls(suite, secrets.tx).map_err(|e| e.to_string())?;
        let rx = ktls::CryptoInfo::from_rustls(suite, secrets.rx).map_err(|e| e.to_string())?;
        install(fd, KeyDirection::Tx, &tx)
            .map_err(|e| format!("kernel refused the sending keys: {e}"))?;
        install(fd, KeyDirection::Rx, &rx)
            .map_err(|e| format!("kernel refused the receiving keys: {e}"))
    })();
    match result {
        Ok(()) => Offload::Done,
        Err(e) => Offload::Failed(e),
    }
}

/// What a non-data record received on a kTLS socket means for the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlRecord {
    /// close_notify: the peer finished sending (a clean end of this direction).
    CloseNotify,
    /// A fatal alert (or any other alert): the connection ends with this error.
    Alert(String),
    /// A handshake message, in TLS 1.3 after the handshake: KeyUpdate or
    /// NewSessionTicket. This host cannot install new keys: end the
    /// connection rather than read data with the wrong keys.
    Handshake(String),
    /// Application data after all (the caller reads it as data).
    Data,
}

/// Classifies a record received by [`crate::sys::ktls::recv_record`].
pub fn classify(record_type: u8, payload: &[u8]) -> ControlRecord {
    match record_type {
        23 => ControlRecord::Data,
        21 => match payload {
            [_, 0] => ControlRecord::CloseNotify,
            [level, desc] => {
                ControlRecord::Alert(format!("the peer sent TLS alert {desc} (level {level})"))
            }
            _ => ControlRecord::Alert("malformed TLS alert".into()),
        },
        22 => {
            let what = match payload.first() {
                Some(24) => "a KeyUpdate",
                Some(4) => "a NewSessionTicket",
                Some(t) => {
                    return ControlRecord::Handshake(format!(
                        "the peer sent handshake message {t} after the handshake"
                    ));
                }
                None => "an empty handshake record",
            };
            ControlRecord::Handshake(format!(
                "the peer sent {what}; this kernel cannot install new kTLS keys, so the connection ends instead of decrypting with stale keys"
            ))
        }
        other => ControlRecord::Alert(format!("unexpected TLS record type {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::ring::cipher_suite as suites;

    #[test]
    fn record_types_are_handled() {
        assert_eq!(classify(21, &[1, 0]), ControlRecord::CloseNotify);
        assert!(matches!(classify(21, &[2, 40]), ControlRecord::Alert(m) if m.contains("40")));
        assert!(
            matches!(classify(22, &[24, 0, 0, 1, 0]), ControlRecord::Handshake(m) if m.contains("KeyUpdate"))
        );
        assert!(
            matches!(classify(22, &[4]), ControlRecord::Handshake(m) if m.contains("NewSessionTicket"))
        );
        assert_eq!(classify(23, b"data"), ControlRecord::Data);
        assert!(matches!(classify(99, &[]), ControlRecord::Alert(_)));
    }

    #[test]
    fn offload_decision() {
        let none = KtlsSupport {
            available: false,
            rekey: false,
            chacha: false,
        };
        let no_rekey = KtlsSupport {
            available: true,
            rekey: false,
            chacha: true,
        };
        let no_chacha = KtlsSupport {
            available: true,
            rekey: false,
            chacha: false,
        };
        let chacha = suites::TLS13_CHACHA20_POLY1305_SHA256;
        let aes = suites::TLS13_AES_256_GCM_SHA384;
        // No ULP (this host): never.
        assert!(!none.offloads(KtlsChoice::Auto, chacha));
        assert!(!none.prefers_chacha(KtlsChoice::Auto));
        // kTLS without key updates: only the suite without a key limit.
        assert!(no_rekey.offloads(KtlsChoice::Auto, chacha));
        assert!(!no_rekey.offloads(KtlsChoice::Auto, aes));
        assert!(no_rekey.prefers_chacha(KtlsChoice::Auto));
        assert!(!no_rekey.offloads(KtlsChoice::Off, chacha));
        // kTLS without the ChaCha modules: nothing, and no ChaCha preference.
        assert!(
            !no_chacha.offloads(KtlsChoice::Auto, chacha)
                && !no_chacha.prefers_chacha(KtlsChoice::Auto)
        );
        assert!(has_key_limit(aes) && !has_key_limit(chacha));
    }

    #[test]
    fn kernel_structures_are_built_from_extracted_secrets() {
        let aes =
            ktls::CryptoInfo::from_rustls(suites::TLS13_AES_256_GCM_SHA384, (7, probe_secrets()))
                .unwrap();
        let chacha = ktls::CryptoInfo::from_rustls(
            suites::TLS13_CHACHA20_POLY1305_SHA256,
            (
                7,
                rustls::ConnectionTrafficSecrets::Chacha20Poly1305 {
                    key: rustls::crypto::cipher::AeadKey::from([1u8; 32]),
                    iv: rustls::crypto::cipher::Iv::copy(&[2u8; 12]),
                },
            ),
        )
        .unwrap();
        // linux/tls.h: tls12_crypto_info_aes_gcm_256 is 56 bytes, ..._chacha20_poly1305 is 56 too.
        assert_eq!((aes.size(), chacha.size()), (56, 56));
    }

    #[test]
    fn this_host_is_probed_without_harm() {
        let s = KtlsSupport::probe();
        // Whatever the kernel, the probe answers; without the ULP there is no rekey.
        assert!(s.available || !s.rekey);
    }
}
