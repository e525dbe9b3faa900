//! The TLS 1.3 record layer of the user-space data path.
//!
//! rustls sets a connection up (handshake, certificates, preamble) and keeps
//! its key schedule (`rustls::kernel::KernelConnection`: new secrets on key
//! updates); once the connection carries data, the records are sealed and
//! opened here, in buffers the relay owns, the way kTLS does it in the
//! kernel: plaintext is read from the socket straight into the payload
//! slots of outgoing records and sealed in place, and incoming records are
//! opened in place and their payloads written to the socket from where they
//! lie. No copy beyond the kernel's, no allocation per record.
//!
//! ```text
//! record   type 0x17 | 0x0303 | length u16 | AEAD(payload ‖ inner type ‖ zeros) ‖ tag(16)
//! nonce    iv XOR (0⁴ ‖ sequence number, big endian)
//! aad      the 5-byte header
//! ```

use rustls::ConnectionTrafficSecrets;

/// Record header length.
pub const HEADER: usize = 5;
/// AEAD tag length (all TLS 1.3 suites).
pub const TAG: usize = 16;
/// Largest plaintext payload of one record.
pub const MAX_PAYLOAD: usize = 16 << 10;
/// Largest ciphertext (payload, inner type, padding, tag) a peer may send.
pub const MAX_CIPHERTEXT: usize = MAX_PAYLOAD + 256;
/// Room one full outgoing record takes: header, payload, inner type, tag.
pub const SLOT: usize = HEADER + MAX_PAYLOAD + 1 + TAG;

/// TLS content types (RFC 8446 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType {
    /// 21
    Alert,
    /// 22
    Handshake,
    /// 23
    ApplicationData,
    /// Anything else.
    Other(u8),
}

impl ContentType {
    fn code(self) -> u8 {
        match self {
            ContentType::Alert => 21,
            ContentType::Handshake => 22,
            ContentType::ApplicationData => 23,
            ContentType::Other(c) => c,
        }
    }

    fn from_code(c: u8) -> ContentType {
        match c {
            21 => ContentType::Alert,
            22 => ContentType::Handshake,
            23 => ContentType::ApplicationData,
            c => ContentType::Other(c),
        }
    }
}

/// The TLS 1.3 AEAD suites.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Suite {
    /// TLS_AES_128_GCM_SHA256.
    Aes128Gcm = 0,
    /// TLS_AES_256_GCM_SHA384.
    Aes256Gcm = 1,
    /// TLS_CHACHA20_POLY1305_SHA256.
    Chacha20Poly1305 = 2,
}

impl Suite {
    /// Every suite.
    pub const ALL: [Suite; 3] = [Suite::Aes128Gcm, Suite::Aes256Gcm, Suite::Chacha20Poly1305];

    /// Key length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            Suite::Aes128Gcm => 16,
            _ => 32,
        }
    }

    /// The suite's name as TLS spells it.
    pub fn name(self) -> &'static str {
        match self {
            Suite::Aes128Gcm => "AES_128_GCM",
            Suite::Aes256Gcm => "AES_256_GCM",
            Suite::Chacha20Poly1305 => "CHACHA20_POLY1305",
        }
    }
}

/// Which library's AEAD code seals and opens records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Crypto {
    /// *ring*.
    Ring,
    /// AWS-LC (aws-lc-rs).
    #[value(name = "aws-lc")]
    #[serde(rename = "aws-lc")]
    AwsLc,
}

impl Crypto {
    /// Its name, as `--crypto` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Crypto::Ring => "ring",
            Crypto::AwsLc => "aws-lc",
        }
    }
}

/// Why a record could not be sealed or opened. Every one ends the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The header is not that of a TLS 1.3 encrypted record.
    #[error("malformed TLS record header {0:02x?}")]
    Header([u8; HEADER]),
    /// Longer than TLS allows.
    #[error("TLS record of {0} bytes, more than TLS 1.3 allows")]
    TooLong(usize),
    /// The AEAD refused it: corrupted, forged, or out of sequence.
    #[error("a TLS record failed authentication (corrupted, forged or out of order)")]
    Decrypt,
    /// A decrypted record holds no content type (all padding).
    #[error("a TLS record holds no content type")]
    NoContentType,
    /// The key could not be set up.
    #[error("cannot use the negotiated key: {0}")]
    Key(String),
    /// 2^64 records under one key.
    #[error("record sequence number exhausted")]
    SequenceExhausted,
}

enum Key {
    // Boxed: ring keeps its key schedule inline (~550 bytes).
    Ring(Box<ring::aead::LessSafeKey>),
    AwsLc(aws_lc_rs::aead::LessSafeKey),
}

/// One direction's key: seals (or opens) records in place, counting them.
pub struct Cipher {
    key: Key,
    iv: [u8; 12],
    seq: u64,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cipher")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl Cipher {
    /// A cipher for `secrets` (as rustls hands them out) starting at `seq`.
    pub fn new(
        crypto: Crypto,
        secrets: ConnectionTrafficSecrets,
        seq: u64,
    ) -> Result<Cipher, RecordError> {
        let (suite, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (Suite::Aes128Gcm, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (Suite::Aes256Gcm, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (Suite::Chacha20Poly1305, key, iv)
            }
            _ => return Err(RecordError::Key("a suite this relay does not know".into())),
        };
        let iv: [u8; 12] = iv
            .as_ref()
            .try_into()
            .map_err(|_| RecordError::Key("an IV that is not 12 bytes".into()))?;
        Cipher::from_raw(crypto, suite, key.as_ref(), iv, seq)
    }

    /// A cipher from raw key material.
    pub fn from_raw(
        crypto: Crypto,
        suite: Suite,
        key: &[u8],
        iv: [u8; 12],
        seq: u64,
    ) -> Result<Cipher, RecordError> {
        let suite = suite as usize;
        let key_err = |e: &dyn std::fmt::Debug| RecordError::Key(format!("{e:?}"));
        let key = match crypto {
            Crypto::Ring => {
                let alg = [
                    &ring::aead::AES_128_GCM,
                    &ring::aead::AES_256_GCM,
                    &ring::aead::CHACHA20_POLY1305,
                ][suite];
                let unbound = ring::aead::UnboundKey::new(alg, key).map_err(|e| key_err(&e))?;
                Key::Ring(Box::new(ring::aead::LessSafeKey::new(unbound)))
            }
            Crypto::AwsLc => {
                let alg = [
                    &aws_lc_rs::aead::AES_128_GCM,
                    &aws_lc_rs::aead::AES_256_GCM,
                    &aws_lc_rs::aead::CHACHA20_POLY1305,
                ][suite];
                let unbound =
                    aws_lc_rs::aead::UnboundKey::new(alg, key).map_err(|e| key_err(&e))?;
                Key::AwsLc(aws_lc_rs::aead::LessSafeKey::new(unbound))
            }
        };
        Ok(Cipher { key, iv, seq })
    }

    /// Records sealed or opened with this key so far (its sequence number).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    fn next_nonce(&mut self) -> Result<[u8; 12], RecordError> {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        self.seq = self
            .seq
            .checked_add(1)
            .ok_or(RecordError::SequenceExhausted)?;
        Ok(nonce)
    }

    /// Seals one record in place. `record` starts with room for the header;
    /// its payload (`payload_len` bytes) follows, then room for the inner
    /// content type and the tag. Returns the record's length on the wire.
    pub fn seal(
        &mut self,
        record: &mut [u8],
        payload_len: usize,
        content: ContentType,
    ) -> Result<usize, RecordError> {
        let total = HEADER + payload_len + 1 + TAG;
        if payload_len > MAX_PAYLOAD || record.len() < total {
            return Err(RecordError::TooLong(payload_len));
        }
        let (header, body) = record[..total].split_at_mut(HEADER);
        let length = (payload_len + 1 + TAG) as u16;
        header.copy_from_slice(&[0x17, 0x03, 0x03, (length >> 8) as u8, length as u8]);
        body[payload_len] = content.code();
        let (plain, tag_room) = body.split_at_mut(payload_len + 1);
        let nonce = self.next_nonce()?;
        match &self.key {
            Key::Ring(k) => {
                let tag = k
                    .seal_in_place_separate_tag(
                        ring::aead::Nonce::assume_unique_for_key(nonce),
                        ring::aead::Aad::from(&*header),
                        plain,
                    )
                    .map_err(|_| RecordError::Key("sealing failed".into()))?;
                tag_room.copy_from_slice(tag.as_ref());
            }
            Key::AwsLc(k) => {
                let tag = k
                    .seal_in_place_separate_tag(
                        aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce),
                        aws_lc_rs::aead::Aad::from(&*header),
                        plain,
                    )
                    .map_err(|_| RecordError::Key("sealing failed".into()))?;
                tag_room.copy_from_slice(tag.as_ref());
            }
        }
        Ok(total)
    }

    /// Opens the whole record `record` (header included) in place.
    /// Returns its content type and where its payload lies within `record`.
    pub fn open(
        &mut self,
        record: &mut [u8],
    ) -> Result<(ContentType, std::ops::Range<usize>), RecordError> {
        let len = check_header(record)?.ok_or(RecordError::TooLong(record.len()))?;
        if record.len() != HEADER + len {
            return Err(RecordError::TooLong(record.len()));
        }
        let (header, body) = record.split_at_mut(HEADER);
        let nonce = self.next_nonce()?;
        let plain_len = match &self.key {
            Key::Ring(k) => k
                .open_in_place(
                    ring::aead::Nonce::assume_unique_for_key(nonce),
                    ring::aead::Aad::from(&*header),
                    body,
                )
                .map_err(|_| RecordError::Decrypt)?
                .len(),
            Key::AwsLc(k) => k
                .open_in_place(
                    aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce),
                    aws_lc_rs::aead::Aad::from(&*header),
                    body,
                )
                .map_err(|_| RecordError::Decrypt)?
                .len(),
        };
        // The inner content type is the last byte that is not padding.
        let type_at = body[..plain_len]
            .iter()
            .rposition(|&b| b != 0)
            .ok_or(RecordError::NoContentType)?;
        Ok((
            ContentType::from_code(body[type_at]),
            HEADER..HEADER + type_at,
        ))
    }
}

/// Checks the header at the start of `buf`: `Ok(Some(len))` gives the
/// ciphertext length that follows it, `Ok(None)` means fewer than 5 bytes.
pub fn check_header(buf: &[u8]) -> Result<Option<usize>, RecordError> {
    let Some(h) = buf.get(..HEADER) else {
        return Ok(None);
    };
    let header: [u8; HEADER] = [h[0], h[1], h[2], h[3], h[4]];
    // After the handshake every TLS 1.3 record is application_data on the
    // outside, with the legacy version 0x0303.
    if header[0] != 0x17 || header[1] != 0x03 || header[2] != 0x03 {
        return Err(RecordError::Header(header));
    }
    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    if !(TAG + 1..=MAX_CIPHERTEXT).contains(&len) {
        return Err(RecordError::TooLong(len));
    }
    Ok(Some(len))
}

/// The KeyUpdate handshake message (RFC 8446 §4.6.3): `request` asks the
/// peer to update its own keys too.
pub fn key_update_message(request: bool) -> [u8; 5] {
    [24, 0, 0, 1, u8::from(request)]
}

/// The close_notify alert.
pub const CLOSE_NOTIFY: [u8; 2] = [1, 0];

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cipher(crypto: Crypto, suite: Suite, seq: u64) -> Cipher {
        let key: Vec<u8> = (1..=suite.key_len() as u8).collect();
        Cipher::from_raw(crypto, suite, &key, [9u8; 12], seq).unwrap()
    }

    #[test]
    fn every_suite_round_trips_across_providers() {
        for suite in Suite::ALL {
            for (a, b) in [
                (Crypto::Ring, Crypto::AwsLc),
                (Crypto::AwsLc, Crypto::Ring),
                (Crypto::Ring, Crypto::Ring),
            ] {
                let mut tx = cipher(a, suite, 7);
                let mut rx = cipher(b, suite, 7);
                for len in [0usize, 1, 1000, MAX_PAYLOAD] {
                    let mut rec = vec![0u8; SLOT];
                    for (i, x) in rec[HEADER..HEADER + len].iter_mut().enumerate() {
                        *x = (i * 7) as u8;
                    }
                    let n = tx
                        .seal(&mut rec, len, ContentType::ApplicationData)
                        .unwrap();
                    assert_eq!(check_header(&rec).unwrap(), Some(n - HEADER));
                    let (ty, range) = rx.open(&mut rec[..n]).unwrap();
                    assert_eq!(ty, ContentType::ApplicationData);
                    assert_eq!(range.len(), len);
                    assert!(
                        rec[range]
                            .iter()
                            .enumerate()
                            .all(|(i, x)| *x == (i * 7) as u8),
                        "suite {suite:?} {a:?}->{b:?} len {len}"
                    );
                }
                assert_eq!(tx.seq(), 11);
            }
        }
    }

    #[test]
    fn tampering_and_replay_are_caught() {
        let mut tx = cipher(Crypto::Ring, Suite::Aes128Gcm, 0);
        let mut rx = cipher(Crypto::Ring, Suite::Aes128Gcm, 0);
        let mut rec = vec![0u8; SLOT];
        let n = tx
            .seal(&mut rec, 100, ContentType::ApplicationData)
            .unwrap();
        let mut flipped = rec[..n].to_vec();
        flipped[HEADER + 3] ^= 1;
        assert_eq!(rx.open(&mut flipped).unwrap_err(), RecordError::Decrypt);
        // The receiver's sequence moved on: the genuine record, replayed
        // after a lost one, no longer opens.
        assert_eq!(
            rx.open(&mut rec[..n].to_vec()).unwrap_err(),
            RecordError::Decrypt
        );
        assert!(matches!(
            check_header(&[0x16, 3, 3, 0, 40]),
            Err(RecordError::Header(_))
        ));
        assert!(matches!(
            check_header(&[0x17, 3, 3, 0xff, 0xff]),
            Err(RecordError::TooLong(_))
        ));
        assert_eq!(check_header(&[0x17, 3]).unwrap(), None);
    }

    #[test]
    fn padding_is_stripped_to_the_content_type() {
        let mut tx = cipher(Crypto::AwsLc, Suite::Chacha20Poly1305, 0);
        let mut rx = cipher(Crypto::Ring, Suite::Chacha20Poly1305, 0);
        // A peer may pad: payload, type, then zeros, all sealed.
        let mut rec = vec![0u8; SLOT];
        rec[HEADER..HEADER + 2].copy_from_slice(&CLOSE_NOTIFY);
        rec[HEADER + 2] = 21;
        // seal() puts the type right after what it is told is payload, so
        // hand it payload ‖ type ‖ padding as "payload" and type 0 (padding).
        let n = tx.seal(&mut rec, 3 + 10, ContentType::Other(0)).unwrap();
        let (ty, range) = rx.open(&mut rec[..n]).unwrap();
        assert_eq!(ty, ContentType::Alert);
        assert_eq!(&rec[range], &CLOSE_NOTIFY);
    }
}
