//! Session tags: how logs, metrics and `s2uc status` name a session without
//! its uid.
//!
//! The uid is the data channel's credential (whoever presents it to an
//! inbound listener gets a stream to the receiver), so it never goes into a
//! log line or a metric label. A tag is the first 48 bits of
//! HMAC-SHA-256(gateway secret, uid), in hex: the same uid gets the same tag
//! on one gateway (across restarts, as the secret is kept in the state
//! directory), and without the secret a tag cannot be turned back into its
//! uid, even for a uid with little randomness in it.
//!
//! The secret is process-wide: `s2cs` sets it from its state directory at
//! start and passes it to `s2ds` in the environment ([`SECRET_ENV`]). A
//! process that never sets one gets a random secret (tags then differ per
//! process, and still reveal nothing).

use std::sync::OnceLock;

/// The environment variable that carries the secret from `s2cs` to `s2ds`
/// (64 hex digits).
pub const SECRET_ENV: &str = "SCISTREAM_TAG_KEY";

static SECRET: OnceLock<ring::hmac::Key> = OnceLock::new();

/// Sets the process's tag secret. Returns false when one was set (or
/// used) already; the first one stays.
pub fn set_secret(secret: &[u8; 32]) -> bool {
    SECRET
        .set(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret))
        .is_ok()
}

/// Sets the secret from [`SECRET_ENV`] when it holds 64 hex digits.
/// Returns whether it did.
pub fn set_secret_from_env() -> bool {
    let Some(hex) = std::env::var_os(SECRET_ENV) else {
        return false;
    };
    match decode_hex(&hex.to_string_lossy()) {
        Some(secret) => set_secret(&secret),
        None => false,
    }
}

/// The secret as [`SECRET_ENV`] carries it.
pub fn encode_secret(secret: &[u8; 32]) -> String {
    secret.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn key() -> &'static ring::hmac::Key {
    SECRET.get_or_init(|| {
        let rng = ring::rand::SystemRandom::new();
        ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng)
            .unwrap_or_else(|_| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[0u8; 32]))
    })
}

/// The tag of `uid`: 12 hex digits.
pub fn session_tag(uid: &str) -> String {
    let mac = ring::hmac::sign(key(), uid.as_bytes());
    mac.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tags_are_stable_short_and_keyed() {
        let a = session_tag("uid-one-0123456789");
        assert_eq!(a, session_tag("uid-one-0123456789"));
        assert_eq!(a.len(), 12);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, session_tag("uid-two-0123456789"));
        // Keyed: the same uid under another secret gives another tag.
        let other = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[7u8; 32]);
        let mac = ring::hmac::sign(&other, b"uid-one-0123456789");
        let unkeyed: String = mac.as_ref()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_ne!(a, unkeyed);
    }

    #[test]
    fn secrets_travel_as_hex() {
        let s = [0xa5u8; 32];
        let hex = encode_secret(&s);
        assert_eq!(hex.len(), 64);
        assert_eq!(decode_hex(&hex), Some(s));
        assert_eq!(decode_hex("xyz"), None);
        assert_eq!(decode_hex(&"g".repeat(64)), None);
    }
}
