//! The data-channel preamble: the first bytes an outbound gateway sends on
//! every connection to an inbound gateway (inside TLS when the channel is
//! encrypted), and the one-byte answer.
//!
//! ```text
//! preamble  "S2PA" | version u8 | flags u8 | conn index u16 (BE) | uid len u8 | uid
//!           [ origin: family u8 (4|6) | from address | from port u16 | to address | to port u16 ]
//!                                                               when FLAG_ORIGIN (addresses 4 or 16 bytes)
//! answer    0x06 (accepted)   or   0x7f | reason u8 (refused, then close)
//! ```
//!
//! The uid is the session's capability: the inbound gateway compares it, in
//! constant time, with the uid of the session bound to the listener the
//! connection arrived on, and connects to the receiver only if they match.
//! The outbound gateway sends nothing more until it has the answer, so no
//! stream starts towards a receiver that is not there, and a TLS record
//! boundary follows both messages (which lets kTLS take over cleanly).

use crate::session::{MAX_UID_LEN, validate_uid};

/// Preamble magic.
pub const MAGIC: [u8; 4] = *b"S2PA";
/// Version of this preamble.
pub const VERSION: u8 = 1;
/// Fixed header before the uid.
pub const HEADER_LEN: usize = 9;
/// Longest origin (IPv6).
const MAX_ORIGIN_LEN: usize = 1 + 2 * (16 + 2);
/// Longest preamble.
pub const MAX_LEN: usize = HEADER_LEN + MAX_UID_LEN + MAX_ORIGIN_LEN;
/// Flag: the channel is TLS.
pub const FLAG_TLS: u8 = 1;
/// Flag: a probe. The outbound `s2cs` checks, when a user points a session
/// at an inbound gateway, that it can reach and verify that gateway and that
/// the gateway knows the session: the inbound gateway checks the uid and
/// index as for any connection, answers, and closes, without connecting to
/// the receiver or counting a connection.
pub const FLAG_PROBE: u8 = 2;
/// Flag: the connection carries one UDP flow as frames
/// ([`crate::datagram`]) instead of a byte stream. An inbound gateway takes
/// it only for a session that carries UDP, and then sends the datagrams to
/// the receiver from a UDP socket of its own.
pub const FLAG_UDP: u8 = 4;
/// Flag: an [`Origin`] follows the uid: the connection that the outbound
/// gateway is forwarding, as it saw it (the instrument's address and its
/// own listener's). An inbound gateway that finds there one of its *own*
/// connections to a receiver (same two ends) knows that its receiver is
/// another gateway's outbound listener leading straight back to it: a
/// tunnel loop, refused before it can multiply connections.
pub const FLAG_ORIGIN: u8 = 8;
/// Every flag this version knows; a preamble with any other bit set is refused.
pub const KNOWN_FLAGS: u8 = FLAG_TLS | FLAG_PROBE | FLAG_UDP | FLAG_ORIGIN;
/// The answer byte for "accepted".
pub const ACCEPTED: u8 = 0x06;
/// The answer byte for "refused", followed by a [`Refusal`] code. Not a TLS
/// record type (0x14-0x18), so a plaintext gateway can tell a refusal from a
/// TLS peer's alert.
pub const REFUSED: u8 = 0x7f;

/// A decoded preamble. Its `Debug` leaves the uid out (a secret).
#[derive(Clone, PartialEq, Eq)]
pub struct Preamble {
    /// Flags ([`FLAG_TLS`]).
    pub flags: u8,
    /// Index of the outbound listener (connection *i* goes to inbound listener *i*).
    pub conn_index: u16,
    /// The session uid.
    pub uid: String,
    /// Where the forwarded connection came from ([`FLAG_ORIGIN`]); encoding
    /// sets the flag when present.
    pub origin: Option<Origin>,
}

/// The instrument-side connection an outbound gateway forwards: `from` the
/// instrument (its peer) `to` its listener. Both of one address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Origin {
    /// Where the connection came from.
    pub from: std::net::SocketAddr,
    /// The listener it reached.
    pub to: std::net::SocketAddr,
}

impl Origin {
    /// `None` when the two ends are of different address families.
    pub fn new(from: std::net::SocketAddr, to: std::net::SocketAddr) -> Option<Origin> {
        (from.is_ipv4() == to.is_ipv4()).then_some(Origin { from, to })
    }
}

fn put_addr(out: &mut Vec<u8>, a: std::net::SocketAddr) {
    match a.ip() {
        std::net::IpAddr::V4(ip) => out.extend_from_slice(&ip.octets()),
        std::net::IpAddr::V6(ip) => out.extend_from_slice(&ip.octets()),
    }
    out.extend_from_slice(&a.port().to_be_bytes());
}

fn get_addr(b: &[u8], v4: bool) -> std::net::SocketAddr {
    let n = if v4 { 4 } else { 16 };
    let port = u16::from_be_bytes([b[n], b[n + 1]]);
    let ip: std::net::IpAddr = if v4 {
        std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).into()
    } else {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&b[..16]);
        std::net::Ipv6Addr::from(octets).into()
    };
    std::net::SocketAddr::new(ip, port)
}

/// Why a preamble was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PreambleError {
    /// The first bytes are not the magic: not a SciStream gateway (a TLS
    /// ClientHello on a plaintext channel shows up here too).
    #[error("not a SciStream preamble (first bytes {0:02x?})")]
    Magic([u8; 4]),
    /// A version this gateway does not speak.
    #[error("preamble version {0}; this gateway speaks version 1")]
    Version(u8),
    /// The uid is empty, too long, or has characters a uid cannot have.
    #[error("malformed uid in preamble")]
    Uid,
    /// Flags this version does not know.
    #[error("unknown preamble flags {0:#04x}")]
    Flags(u8),
    /// The origin address is not IPv4 or IPv6.
    #[error("malformed origin address in preamble")]
    Origin,
}

impl PreambleError {
    /// The refusal code to send back.
    pub fn refusal(self) -> Refusal {
        match self {
            PreambleError::Version(_) => Refusal::Version,
            PreambleError::Magic(_)
            | PreambleError::Uid
            | PreambleError::Flags(_)
            | PreambleError::Origin => Refusal::Malformed,
        }
    }
}

/// Why an inbound gateway refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Refusal {
    /// The uid is not the session bound to this listener.
    WrongSession = 1,
    /// The receiver could not be reached.
    ReceiverUnreachable = 2,
    /// The preamble was malformed.
    Malformed = 3,
    /// The preamble version is not supported.
    Version = 4,
    /// The connection came back from this gateway's own receiver connection:
    /// the session's receiver leads to a gateway that forwards to it again.
    Loop = 5,
}

impl Refusal {
    /// Decodes a refusal code.
    pub fn from_code(c: u8) -> Option<Refusal> {
        Some(match c {
            1 => Refusal::WrongSession,
            2 => Refusal::ReceiverUnreachable,
            3 => Refusal::Malformed,
            4 => Refusal::Version,
            5 => Refusal::Loop,
            _ => return None,
        })
    }

    /// For logs.
    pub fn describe(self) -> &'static str {
        match self {
            Refusal::WrongSession => "the uid is not the session of that listener",
            Refusal::ReceiverUnreachable => "its receiver could not be reached",
            Refusal::Malformed => "the preamble was malformed",
            Refusal::Version => "it does not speak this preamble version",
            Refusal::Loop => {
                "the connection loops: the session's receiver is a gateway that forwards back to it"
            }
        }
    }
}

impl std::fmt::Debug for Preamble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Preamble")
            .field("flags", &self.flags)
            .field("conn_index", &self.conn_index)
            .field("uid", &format_args!("<{} bytes>", self.uid.len()))
            .field("origin", &self.origin)
            .finish()
    }
}

impl Preamble {
    /// Encodes. The uid must be valid (it came from a validated request).
    pub fn encode(&self) -> Vec<u8> {
        let uid = self.uid.as_bytes();
        let len = uid.len().min(MAX_UID_LEN);
        let mut out = Vec::with_capacity(MAX_LEN);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        let flags = match self.origin {
            Some(_) => self.flags | FLAG_ORIGIN,
            None => self.flags & !FLAG_ORIGIN,
        };
        out.push(flags);
        out.extend_from_slice(&self.conn_index.to_be_bytes());
        out.push(len as u8);
        out.extend_from_slice(&uid[..len]);
        if let Some(o) = self.origin {
            out.push(if o.from.is_ipv4() { 4 } else { 6 });
            put_addr(&mut out, o.from);
            put_addr(&mut out, o.to);
        }
        out
    }

    /// How many bytes the preamble starting in `buf` needs in total, once
    /// enough is there to know (the header). Lets a reader take exactly the
    /// preamble off a socket and nothing after it.
    pub fn wanted(buf: &[u8]) -> usize {
        if buf.len() < HEADER_LEN {
            return HEADER_LEN;
        }
        let base = HEADER_LEN + usize::from(buf[8]);
        if buf[5] & FLAG_ORIGIN == 0 {
            return base;
        }
        match buf.get(base) {
            None => base + 1,
            Some(6) => base + 1 + 2 * (16 + 2),
            // IPv4, or a family that parse() refuses once it sees it.
            Some(_) => base + 1 + 2 * (4 + 2),
        }
    }

    /// Decodes from the start of `buf`: `Ok(None)` when more bytes are
    /// needed, `Ok(Some((preamble, used)))`, or the reason it can never be
    /// a valid preamble (checked as early as the bytes allow).
    pub fn parse(buf: &[u8]) -> Result<Option<(Preamble, usize)>, PreambleError> {
        let have = buf.len().min(4);
        if buf[..have] != MAGIC[..have] {
            let mut first = [0u8; 4];
            first[..have].copy_from_slice(&buf[..have]);
            return Err(PreambleError::Magic(first));
        }
        if buf.len() > 4 && buf[4] != VERSION {
            return Err(PreambleError::Version(buf[4]));
        }
        if buf.len() > 5 && buf[5] & !KNOWN_FLAGS != 0 {
            return Err(PreambleError::Flags(buf[5]));
        }
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = usize::from(buf[8]);
        if len == 0 || len > MAX_UID_LEN {
            return Err(PreambleError::Uid);
        }
        if buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let uid = std::str::from_utf8(&buf[HEADER_LEN..HEADER_LEN + len])
            .map_err(|_| PreambleError::Uid)?;
        validate_uid(uid).map_err(|_| PreambleError::Uid)?;
        let mut used = HEADER_LEN + len;
        let mut origin = None;
        if buf[5] & FLAG_ORIGIN != 0 {
            let Some(&family) = buf.get(used) else {
                return Ok(None);
            };
            let addr_len = match family {
                4 => 4,
                6 => 16,
                _ => return Err(PreambleError::Origin),
            };
            let Some(a) = buf.get(used + 1..used + 1 + 2 * (addr_len + 2)) else {
                return Ok(None);
            };
            let v4 = addr_len == 4;
            origin = Some(Origin {
                from: get_addr(a, v4),
                to: get_addr(&a[addr_len + 2..], v4),
            });
            used += 1 + 2 * (addr_len + 2);
        }
        Ok(Some((
            Preamble {
                // The origin flag is said by `origin`.
                flags: buf[5] & !FLAG_ORIGIN,
                conn_index: u16::from_be_bytes([buf[6], buf[7]]),
                uid: uid.to_owned(),
                origin,
            },
            used,
        )))
    }
}

/// Compares a presented uid with the session's in constant time (for equal
/// lengths; a length mismatch is not a secret: uids of one kind have one length).
pub fn uid_matches(presented: &str, expected: &str) -> bool {
    use subtle::ConstantTimeEq;
    presented.len() == expected.len() && bool::from(presented.as_bytes().ct_eq(expected.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Preamble {
        Preamble {
            flags: FLAG_TLS,
            conn_index: 3,
            uid: "4f1c2a9e-3b7d-4c1e-9f00-123456789abc".into(),
            origin: None,
        }
    }

    #[test]
    fn an_origin_round_trips_and_is_read_exactly() {
        for (from, to) in [
            ("192.0.2.7:40001", "192.0.2.9:5100"),
            ("[2001:db8::5]:6553", "[2001:db8::1]:5100"),
        ] {
            let p = Preamble {
                origin: Origin::new(from.parse().unwrap(), to.parse().unwrap()),
                ..sample()
            };
            let bytes = p.encode();
            assert_ne!(bytes[5] & FLAG_ORIGIN, 0);
            for cut in 0..bytes.len() {
                assert_eq!(
                    Preamble::parse(&bytes[..cut]),
                    Ok(None),
                    "prefix of {cut} bytes"
                );
                assert!(Preamble::wanted(&bytes[..cut]) <= bytes.len());
            }
            assert_eq!(Preamble::wanted(&bytes), bytes.len());
            let mut more = bytes.clone();
            more.extend_from_slice(b"data");
            assert_eq!(Preamble::parse(&more), Ok(Some((p, bytes.len()))));
        }
        let mut bad = Preamble {
            origin: Origin::new(
                "192.0.2.7:1".parse().unwrap(),
                "192.0.2.8:2".parse().unwrap(),
            ),
            ..sample()
        }
        .encode();
        let family = HEADER_LEN + sample().uid.len();
        bad[family] = 5;
        assert_eq!(Preamble::parse(&bad), Err(PreambleError::Origin));
    }

    #[test]
    fn round_trip_and_exact_length() {
        let p = sample();
        let bytes = p.encode();
        assert_eq!(Preamble::wanted(&bytes[..4]), HEADER_LEN);
        assert_eq!(Preamble::wanted(&bytes), bytes.len());
        for cut in 0..bytes.len() {
            assert_eq!(
                Preamble::parse(&bytes[..cut]),
                Ok(None),
                "prefix of {cut} bytes"
            );
        }
        let mut with_payload = bytes.clone();
        with_payload.extend_from_slice(b"payload after");
        assert_eq!(Preamble::parse(&with_payload), Ok(Some((p, bytes.len()))));
    }

    #[test]
    fn rejections_come_as_early_as_possible() {
        assert!(
            matches!(
                Preamble::parse(b"\x16\x03\x01"),
                Err(PreambleError::Magic(_))
            ),
            "a TLS ClientHello"
        );
        assert!(matches!(
            Preamble::parse(b"GET / HTTP/1.1"),
            Err(PreambleError::Magic(_))
        ));
        assert_eq!(Preamble::parse(b"S2PA\x02"), Err(PreambleError::Version(2)));
        assert_eq!(
            Preamble::parse(b"S2PA\x01\x00\x00\x00\x00"),
            Err(PreambleError::Uid)
        );
        assert_eq!(
            Preamble::parse(b"S2PA\x01\x00\x00\x00\x03a/b"),
            Err(PreambleError::Uid)
        );
        assert_eq!(
            Preamble::parse(b"S2PA\x01\x00\x00\x00\x81"),
            Err(PreambleError::Uid)
        );
        assert_eq!(
            Preamble::parse(b"S2PA\x01\x1f"),
            Err(PreambleError::Flags(0x1f)),
            "an unknown flag"
        );
    }

    #[test]
    fn uid_comparison() {
        assert!(uid_matches("abc", "abc"));
        assert!(!uid_matches("abd", "abc"));
        assert!(!uid_matches("ab", "abc"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Arbitrary bytes never panic the parser, and anything it accepts is
        /// a well-formed preamble that re-encodes to exactly the bytes it used.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(Some((p, used))) = Preamble::parse(&bytes) {
                prop_assert!(validate_uid(&p.uid).is_ok());
                prop_assert_eq!(p.encode(), bytes[..used].to_vec());
            }
        }

        /// A valid preamble with any byte changed inside its uid is never
        /// taken for the original session.
        #[test]
        fn a_changed_uid_never_matches(pos in 0usize..36, byte in any::<u8>()) {
            let p = sample();
            let mut bytes = p.encode();
            let i = HEADER_LEN + pos;
            prop_assume!(bytes[i] != byte);
            bytes[i] = byte;
            if let Ok(Some((q, _))) = Preamble::parse(&bytes) {
                prop_assert!(!uid_matches(&q.uid, &p.uid));
            }
        }

        /// Structured fuzzing: valid headers with arbitrary uids and flags.
        #[test]
        fn valid_shapes_round_trip(flags in any::<u8>(), idx in any::<u16>(), uid in "[A-Za-z0-9._-]{1,128}") {
            let p = Preamble { flags: flags & !FLAG_ORIGIN, conn_index: idx, uid, origin: None };
            let bytes = p.encode();
            if flags & !KNOWN_FLAGS == 0 {
                prop_assert_eq!(Preamble::parse(&bytes), Ok(Some((p, bytes.len()))));
            } else {
                prop_assert_eq!(Preamble::parse(&bytes), Err(PreambleError::Flags(flags & !FLAG_ORIGIN)));
            }
        }
    }
}
