//! UDP datagrams inside a gateway-to-gateway stream.
//!
//! A UDP flow (one sender address and port at the instrument side) crosses
//! the WAN as one ordinary data connection between the gateways — the same
//! TLS, the same uid check, the same rate cap — whose preamble carries
//! [`crate::preamble::FLAG_UDP`]. After the answer, both directions carry
//! frames:
//!
//! ```text
//! frame   length u32 (BE) | datagram (length bytes, 0..=65535)
//! ```
//!
//! A frame is written whole or not at all (the gateway drops a datagram
//! before framing it, never half-way), so every datagram arrives whole,
//! never merged with another nor split. A length over [`MAX_DATAGRAM`]
//! cannot come from UDP: the stream is corrupt and is closed.

/// Largest datagram a frame carries: UDP's 16-bit length field bounds every
/// datagram (65 507 payload bytes over IPv4, 65 527 over IPv6); no UDP
/// sender can make a bigger one.
pub const MAX_DATAGRAM: usize = 65_535;

/// Bytes before each datagram.
pub const HEADER_LEN: usize = 4;

/// A frame header that no UDP datagram can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a frame of {0} bytes: no UDP datagram is longer than 65535 bytes (the stream is corrupt)")]
pub struct FrameError(pub u32);

/// The header of a frame carrying `len` bytes.
///
/// # Panics
/// Never for a datagram received from a UDP socket; a caller passing more
/// than [`MAX_DATAGRAM`] bytes has a bug.
pub fn header(len: usize) -> [u8; HEADER_LEN] {
    assert!(len <= MAX_DATAGRAM, "datagram of {len} bytes");
    (len as u32).to_be_bytes()
}

/// The datagram length a header announces.
pub fn parse_header(h: [u8; HEADER_LEN]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(h);
    if len as usize > MAX_DATAGRAM {
        return Err(FrameError(len));
    }
    Ok(len as usize)
}

/// Takes whole frames off a byte stream that arrives in arbitrary pieces.
#[derive(Debug, Default)]
pub struct Deframer {
    buf: Vec<u8>,
    start: usize,
}

impl Deframer {
    /// An empty deframer.
    pub fn new() -> Self {
        Deframer::default()
    }

    /// Adds bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 1 << 20 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole datagram, if one is in.
    pub fn next_datagram(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let rest = &self.buf[self.start..];
        let Some(h) = rest.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let len = parse_header([h[0], h[1], h[2], h[3]])?;
        if rest.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let from = self.start + HEADER_LEN;
        self.start = from + len;
        Ok(Some(&self.buf[from..from + len]))
    }

    /// Bytes of a frame not yet complete.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_survive_any_split() {
        let datagrams: Vec<Vec<u8>> = [0usize, 1, 2, 1000, MAX_DATAGRAM]
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|b| (b + i) as u8).collect())
            .collect();
        let mut stream = Vec::new();
        for d in &datagrams {
            stream.extend_from_slice(&header(d.len()));
            stream.extend_from_slice(d);
        }
        for piece in [1, 3, 4, 5, 7919, stream.len()] {
            let mut deframer = Deframer::new();
            let mut got = Vec::new();
            for chunk in stream.chunks(piece) {
                deframer.push(chunk);
                while let Some(d) = deframer.next_datagram().unwrap() {
                    got.push(d.to_vec());
                }
            }
            assert_eq!(got, datagrams, "pieces of {piece}");
            assert_eq!(deframer.pending(), 0);
        }
    }

    #[test]
    fn an_impossible_length_is_an_error() {
        let mut deframer = Deframer::new();
        deframer.push(&65_536u32.to_be_bytes());
        let e = deframer.next_datagram().unwrap_err();
        assert_eq!(e, FrameError(65_536));
        assert!(e.to_string().contains("65535"));
    }
}
