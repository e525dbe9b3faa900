//! Session identity: the uid and the role, as `req`, `hello`, `update` carry them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest uid accepted, in bytes. Uids reach logs and file names.
pub const MAX_UID_LEN: usize = 128;

/// Most listeners (`num_conn`) one session may ask for. One handoff frame
/// carries all of a session's listening sockets, and `SCM_RIGHTS` carries at
/// most 253 descriptors per message.
pub const MAX_LISTENERS_PER_SESSION: usize = 128;

/// Why a uid was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UidError {
    /// No uid given.
    #[error("uid is empty")]
    Empty,
    /// Longer than [`MAX_UID_LEN`].
    #[error("uid is {0} bytes long; the limit is {MAX_UID_LEN}")]
    TooLong(usize),
    /// A character outside `[A-Za-z0-9._-]`.
    #[error("uid contains {0:?}; only letters, digits, '.', '_' and '-' are allowed")]
    BadChar(char),
}

/// Checks a uid: 1 to 128 bytes of `[A-Za-z0-9._-]`.
pub fn validate_uid(uid: &str) -> Result<(), UidError> {
    if uid.is_empty() {
        return Err(UidError::Empty);
    }
    if uid.len() > MAX_UID_LEN {
        return Err(UidError::TooLong(uid.len()));
    }
    match uid
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        Some(c) => Err(UidError::BadChar(c)),
        None => Ok(()),
    }
}

/// Shortest uid a gateway accepts for a new session: a uid is the data
/// channel's credential, and a short one can be guessed.
pub const MIN_UID_LEN: usize = 16;

/// How hard a uid is to guess, judged from its form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UidKind {
    /// A random UUID (version 4, or version 7 with its 74 random bits):
    /// what `s2uc` makes. Guessing one is out of reach.
    Random,
    /// A time-based UUID (versions 1, 2 and 6; SciStream's own client makes
    /// version 1): its unknown part is a timestamp, a 14-bit counter and
    /// often a known MAC address.
    TimeBased,
    /// Anything else (a name the user chose, a name-based UUID): its
    /// strength is unknown, so it is treated as weak.
    Other,
}

/// Classifies a uid by its form (see [`UidKind`]).
pub fn uid_kind(uid: &str) -> UidKind {
    let b = uid.as_bytes();
    let is_uuid = b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
    if !is_uuid {
        return UidKind::Other;
    }
    // The version is the first hex digit of the third group; random
    // versions also carry the RFC 4122 variant (10xx) in the fourth.
    let variant_ok = matches!(b[19].to_ascii_lowercase(), b'8' | b'9' | b'a' | b'b');
    match (b[14], variant_ok) {
        (b'4' | b'7', true) => UidKind::Random,
        (b'1' | b'2' | b'6', _) => UidKind::TimeBased,
        _ => UidKind::Other,
    }
}

/// Which end of a tunnel a session is.
///
/// SciStream's names: `PROD` is the producer-facing *inbound* gateway at the
/// HPC side (its listeners receive from the WAN and forward to receivers);
/// `CONS` is the *outbound* gateway at the instrument side (its listeners
/// receive from the instrument and forward to the inbound gateway).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Role {
    /// Inbound gateway (`"PROD"` on the wire).
    #[serde(rename = "PROD")]
    Prod,
    /// Outbound gateway (`"CONS"` on the wire).
    #[serde(rename = "CONS")]
    Cons,
}

impl Role {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Prod => "PROD",
            Role::Cons => "CONS",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role string that is neither `PROD` nor `CONS`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("role {0:?} is not valid: use \"PROD\" (inbound gateway) or \"CONS\" (outbound gateway)")]
pub struct RoleError(pub String);

impl FromStr for Role {
    type Err = RoleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "PROD" | "prod" => Ok(Role::Prod),
            "CONS" | "cons" => Ok(Role::Cons),
            other => Err(RoleError(other.chars().take(32).collect())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids() {
        assert!(validate_uid("4f1c2a9e-3b7d-4c1e-9f00-123456789abc").is_ok());
        assert!(validate_uid("run_42.a-b").is_ok());
        assert_eq!(validate_uid(""), Err(UidError::Empty));
        assert_eq!(validate_uid(&"a".repeat(129)), Err(UidError::TooLong(129)));
        assert!(validate_uid(&"a".repeat(128)).is_ok());
        assert_eq!(validate_uid("a/b"), Err(UidError::BadChar('/')));
        assert_eq!(validate_uid("a b"), Err(UidError::BadChar(' ')));
        assert_eq!(validate_uid("é"), Err(UidError::BadChar('é')));
        assert_eq!(validate_uid("a\n"), Err(UidError::BadChar('\n')));
    }

    #[test]
    fn uid_kinds() {
        assert_eq!(
            uid_kind("4f1c2a9e-3b7d-4c1e-9f00-123456789abc"),
            UidKind::Random
        );
        assert_eq!(
            uid_kind("0190a6f2-7c3e-7b1a-8f00-123456789abc"),
            UidKind::Random
        );
        // What Python's uuid.uuid1() makes (SciStream's client).
        assert_eq!(
            uid_kind("5b2e6f3c-cf2b-11ef-9a4e-0242ac120002"),
            UidKind::TimeBased
        );
        assert_eq!(
            uid_kind("4f1c2a9e-3b7d-4c1e-7f00-123456789abc"),
            UidKind::Other,
            "bad variant"
        );
        assert_eq!(uid_kind("run-2026-12-01-detector-7"), UidKind::Other);
        assert_eq!(
            uid_kind("4f1c2a9e-3b7d-5c1e-9f00-123456789abc"),
            UidKind::Other,
            "name-based"
        );
    }

    #[test]
    fn roles() {
        assert_eq!("PROD".parse::<Role>().unwrap(), Role::Prod);
        assert_eq!("CONS".parse::<Role>().unwrap(), Role::Cons);
        assert!("".parse::<Role>().is_err());
        assert!(
            "producer"
                .parse::<Role>()
                .unwrap_err()
                .to_string()
                .contains("PROD")
        );
        assert_eq!(serde_json::to_string(&Role::Cons).unwrap(), "\"CONS\"");
    }
}

/// What a session's listeners carry (`--protocol` of `s2uc`, field 5 of
/// `Request`). SciStream's own clients never send the field: `tcp`.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP streams only (SciStream's behaviour).
    #[default]
    Tcp,
    /// UDP datagrams only: the instrument side's listeners take datagrams
    /// and refuse TCP connections.
    Udp,
    /// Both, on the same port numbers (as SciStream's Nginx data server did).
    Both,
}

impl Protocol {
    /// The spelling on the wire and in `--protocol`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Both => "both",
        }
    }

    /// TCP connections are taken.
    pub fn carries_tcp(self) -> bool {
        self != Protocol::Udp
    }

    /// UDP datagrams are taken.
    pub fn carries_udp(self) -> bool {
        self != Protocol::Tcp
    }

    /// The request field: empty (an old client) is TCP.
    pub fn from_request(s: &str) -> Result<Protocol, ProtocolError> {
        if s.is_empty() {
            Ok(Protocol::Tcp)
        } else {
            s.parse()
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A protocol that is not `tcp`, `udp` or `both`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("protocol {0:?} is not valid: use \"tcp\", \"udp\" or \"both\"")]
pub struct ProtocolError(pub String);

impl FromStr for Protocol {
    type Err = ProtocolError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "both" | "tcp+udp" | "udp+tcp" => Ok(Protocol::Both),
            _ => Err(ProtocolError(s.chars().take(32).collect())),
        }
    }
}

#[cfg(test)]
mod protocol_tests {
    use super::Protocol;

    #[test]
    fn protocol_spellings() {
        assert_eq!(Protocol::from_request("").unwrap(), Protocol::Tcp);
        assert_eq!(Protocol::from_request("UDP").unwrap(), Protocol::Udp);
        assert_eq!("both".parse::<Protocol>().unwrap(), Protocol::Both);
        let e = Protocol::from_request("sctp").unwrap_err();
        assert!(e.to_string().contains("\"sctp\""), "{e}");
        assert!(Protocol::Both.carries_tcp() && Protocol::Both.carries_udp());
        assert!(!Protocol::Udp.carries_tcp() && !Protocol::Tcp.carries_udp());
    }
}
