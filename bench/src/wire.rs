//! The s2bench stream format: what a source writes and a sink verifies.
//!
//! A connection starts with a HELLO message, then DATA (or FRAME) messages,
//! then END. Every message is a 48-byte header followed by `len` payload
//! bytes:
//!
//! ```text
//!  0  magic  "S2B1"     24  len    u32 payload bytes
//!  4  kind   u8         28  aux    u32 (HELLO: message size; FRAME: frames per second)
//!  5  flags  u8         32  check  u64 xxh3 of payload[8..]
//!  6  conn   u16        40  aux2   u64 (HELLO: planned frames; FRAME: frame id; END: messages sent)
//!  8  seq    u64 message number in this connection (HELLO is 0)
//! 16  sent   u64 send time, ns since the Unix epoch (FRAME: when the frame was due)
//! ```
//!
//! A payload is a fixed random body whose first 8 bytes are replaced by the
//! message's `seq`, so the source hashes nothing per message (the hash of
//! the fixed part goes in every header) while the sink hashes every payload
//! and checks its sequence: a flipped bit, a lost, duplicated or reordered
//! message are all caught, for one XXH3 pass (tens of GB/s per core).

use std::time::{SystemTime, UNIX_EPOCH};

use xxhash_rust::xxh3::xxh3_64;

/// Header size in bytes.
pub const HEADER_LEN: usize = 48;
/// Smallest message payload: the sequence number fits.
pub const MIN_MSG: usize = 8;
const MAGIC: [u8; 4] = *b"S2B1";

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// First message: stream parameters.
    Hello = 0,
    /// A stream message.
    Data = 1,
    /// A detector frame.
    Frame = 2,
    /// Last message: how many were sent.
    End = 3,
}

/// HELLO flag: the sink should stream back.
pub const FLAG_BIDIR: u8 = 1;
/// HELLO flag: detector frames follow.
pub const FLAG_DETECTOR: u8 = 2;

/// A decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Message kind.
    pub kind: Kind,
    /// Flags (HELLO).
    pub flags: u8,
    /// Connection index within the run.
    pub conn: u16,
    /// Message number.
    pub seq: u64,
    /// Send (or due) time, ns since the epoch.
    pub sent_ns: u64,
    /// Payload length.
    pub len: u32,
    /// Kind-specific.
    pub aux: u32,
    /// XXH3 of `payload[8..]`.
    pub check: u64,
    /// Kind-specific.
    pub aux2: u64,
}

/// Why a header was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Not an s2bench stream (or corrupted header).
    #[error("bad magic: not an s2bench stream, or a corrupted header")]
    Magic,
    /// Unknown kind byte.
    #[error("unknown message kind {0}")]
    Kind(u8),
    /// Payload larger than allowed.
    #[error("message of {0} bytes is larger than the 1 GiB limit")]
    TooLarge(u32),
}

/// Largest payload accepted by a sink.
pub const MAX_PAYLOAD: u32 = 1 << 30;

impl Header {
    /// Encodes into 48 bytes.
    pub fn encode(&self, out: &mut [u8; HEADER_LEN]) {
        out[0..4].copy_from_slice(&MAGIC);
        out[4] = self.kind as u8;
        out[5] = self.flags;
        out[6..8].copy_from_slice(&self.conn.to_le_bytes());
        out[8..16].copy_from_slice(&self.seq.to_le_bytes());
        out[16..24].copy_from_slice(&self.sent_ns.to_le_bytes());
        out[24..28].copy_from_slice(&self.len.to_le_bytes());
        out[28..32].copy_from_slice(&self.aux.to_le_bytes());
        out[32..40].copy_from_slice(&self.check.to_le_bytes());
        out[40..48].copy_from_slice(&self.aux2.to_le_bytes());
    }

    /// Decodes 48 bytes.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, WireError> {
        if b[0..4] != MAGIC {
            return Err(WireError::Magic);
        }
        let kind = match b[4] {
            0 => Kind::Hello,
            1 => Kind::Data,
            2 => Kind::Frame,
            3 => Kind::End,
            k => return Err(WireError::Kind(k)),
        };
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or_default());
        let h = Header {
            kind,
            flags: b[5],
            conn: u16::from_le_bytes([b[6], b[7]]),
            seq: u64_at(8),
            sent_ns: u64_at(16),
            len: u32_at(24),
            aux: u32_at(28),
            check: u64_at(32),
            aux2: u64_at(40),
        };
        if h.len > MAX_PAYLOAD {
            return Err(WireError::TooLarge(h.len));
        }
        Ok(h)
    }
}

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The checksum of a payload as headers carry it.
pub fn payload_check(payload: &[u8]) -> u64 {
    xxh3_64(payload.get(MIN_MSG..).unwrap_or(&[]))
}

/// A reusable message body: random bytes, with room for the sequence number.
#[derive(Debug, Clone)]
pub struct Body {
    bytes: Vec<u8>,
    check: u64,
}

impl Body {
    /// A body of `size` (≥ 8) bytes.
    pub fn new(size: usize, seed: u64) -> Self {
        let mut bytes = vec![0u8; size.max(MIN_MSG)];
        scistream_local::payload::Generator::new(seed).fill(&mut bytes);
        let check = payload_check(&bytes);
        Body { bytes, check }
    }

    /// The payload for message `seq`, cut to `len` bytes, and its checksum.
    pub fn message(&mut self, seq: u64, len: usize) -> (&[u8], u64) {
        self.bytes[..MIN_MSG].copy_from_slice(&seq.to_le_bytes());
        let len = len.clamp(MIN_MSG, self.bytes.len());
        let check = if len == self.bytes.len() {
            self.check
        } else {
            payload_check(&self.bytes[..len])
        };
        (&self.bytes[..len], check)
    }

    /// Size of a full message.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Never empty (at least 8 bytes).
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Checks a received payload against its header.
pub fn verify(h: &Header, payload: &[u8]) -> bool {
    payload.len() >= MIN_MSG
        && payload[..MIN_MSG] == h.seq.to_le_bytes()
        && payload_check(payload) == h.check
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_rejections() {
        let h = Header {
            kind: Kind::Frame,
            flags: 3,
            conn: 7,
            seq: 42,
            sent_ns: 99,
            len: 1024,
            aux: 5,
            check: 0xdead,
            aux2: 77,
        };
        let mut b = [0u8; HEADER_LEN];
        h.encode(&mut b);
        assert_eq!(Header::decode(&b).unwrap(), h);
        let mut bad = b;
        bad[0] = b'X';
        assert_eq!(Header::decode(&bad), Err(WireError::Magic));
        let mut bad = b;
        bad[4] = 9;
        assert_eq!(Header::decode(&bad), Err(WireError::Kind(9)));
        let mut bad = b;
        bad[24..28].copy_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
        assert!(matches!(Header::decode(&bad), Err(WireError::TooLarge(_))));
    }

    #[test]
    fn payloads_verify_and_corruption_does_not() {
        let mut body = Body::new(4096, 1);
        for (seq, len) in [(0u64, 4096usize), (1, 4096), (2, 100)] {
            let (p, check) = body.message(seq, len);
            let mut p = p.to_vec();
            let h = Header {
                kind: Kind::Data,
                flags: 0,
                conn: 0,
                seq,
                sent_ns: 0,
                len: p.len() as u32,
                aux: 0,
                check,
                aux2: 0,
            };
            assert!(verify(&h, &p));
            p[len / 2] ^= 0x10;
            assert!(!verify(&h, &p), "flipped bit caught");
            p[len / 2] ^= 0x10;
            let wrong_seq = Header { seq: seq + 1, ..h };
            assert!(!verify(&wrong_seq, &p), "reordering caught");
        }
    }
}
