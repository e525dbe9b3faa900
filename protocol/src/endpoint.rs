//! `host:port` strings as they appear in listener and receiver lists.
//!
//! Accepted forms: `192.0.2.7:5001`, `[2001:db8::7]:5001`, `hpc-node1.example.org:5001`.
//! Rejected, with a message naming the problem: an empty string, a missing port
//! (`foo`, `[::1]`), a port outside 1-65535 (`1.2.3.4:99999`), an IPv6 address
//! without brackets, a host name that is not a valid DNS name.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// The host half of an [`Endpoint`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    /// A literal IPv4 or IPv6 address.
    Ip(IpAddr),
    /// A DNS name, resolved by whoever connects.
    Name(String),
}

/// A parsed `host:port`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Address or name.
    pub host: Host,
    /// TCP port, never 0.
    pub port: u16,
}

/// Why a `host:port` string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// The string was empty.
    #[error("empty address: expected HOST:PORT such as 192.0.2.7:5001")]
    Empty,
    /// No `:PORT` part.
    #[error("'{0}' has no port: expected HOST:PORT such as 192.0.2.7:5001 or [2001:db8::7]:5001")]
    MissingPort(String),
    /// The port was not a number in 1-65535.
    #[error("'{0}' has an invalid port: ports are numbers from 1 to 65535")]
    BadPort(String),
    /// An IPv6 address without brackets, or a bracketed string that is not IPv6.
    #[error(
        "'{0}' is not a valid address: write IPv6 addresses in brackets, as [2001:db8::7]:5001"
    )]
    BadIpv6(String),
    /// The host was neither an IP address nor a valid DNS name.
    #[error("'{0}' is not a valid host: use an IP address or a DNS name")]
    BadHost(String),
}

impl Endpoint {
    /// An endpoint for a socket address.
    pub fn from_socket_addr(addr: SocketAddr) -> Self {
        Endpoint {
            host: Host::Ip(addr.ip()),
            port: addr.port(),
        }
    }

    /// The socket address, when the host is a literal IP.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self.host {
            Host::Ip(ip) => Some(SocketAddr::new(ip, self.port)),
            Host::Name(_) => None,
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}:{}", self.port),
            Host::Name(name) => write!(f, "{name}:{}", self.port),
        }
    }
}

fn parse_port(whole: &str, port: &str) -> Result<u16, EndpointError> {
    match port.parse::<u16>() {
        Ok(p) if p != 0 && !port.starts_with('+') => Ok(p),
        _ => Err(EndpointError::BadPort(whole.to_owned())),
    }
}

fn valid_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(EndpointError::Empty);
        }
        if let Some(rest) = s.strip_prefix('[') {
            let (ip, after) = rest
                .split_once(']')
                .ok_or_else(|| EndpointError::BadIpv6(s.into()))?;
            let ip: Ipv6Addr = ip.parse().map_err(|_| EndpointError::BadIpv6(s.into()))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| EndpointError::MissingPort(s.into()))?;
            return Ok(Endpoint {
                host: Host::Ip(IpAddr::V6(ip)),
                port: parse_port(s, port)?,
            });
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| EndpointError::MissingPort(s.into()))?;
        if host.contains(':') {
            return Err(EndpointError::BadIpv6(s.into()));
        }
        let port = parse_port(s, port)?;
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Endpoint {
                host: Host::Ip(ip),
                port,
            });
        }
        if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') || !valid_dns_name(host) {
            return Err(EndpointError::BadHost(s.into()));
        }
        Ok(Endpoint {
            host: Host::Name(host.to_ascii_lowercase()),
            port,
        })
    }
}

/// Parses a comma-separated list (`a:1,b:2`), rejecting empty items.
pub fn parse_list(s: &str) -> Result<Vec<Endpoint>, EndpointError> {
    s.split(',').map(str::parse).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_usual_forms() {
        let e: Endpoint = "127.0.0.1:5100".parse().unwrap();
        assert_eq!(e.socket_addr(), Some("127.0.0.1:5100".parse().unwrap()));
        let e: Endpoint = "[::1]:5100".parse().unwrap();
        assert_eq!(e.to_string(), "[::1]:5100");
        let e: Endpoint = "HPC-Node1.example.org:7001".parse().unwrap();
        assert_eq!(e.host, Host::Name("hpc-node1.example.org".into()));
        assert_eq!(e.to_string(), "hpc-node1.example.org:7001");
        assert_eq!(" 10.0.0.1:1 ".parse::<Endpoint>().unwrap().port, 1);
    }

    #[test]
    fn rejects_what_the_issue_lists() {
        assert_eq!("".parse::<Endpoint>(), Err(EndpointError::Empty));
        assert!(matches!(
            "foo".parse::<Endpoint>(),
            Err(EndpointError::MissingPort(_))
        ));
        assert!(matches!(
            "1.2.3.4:99999".parse::<Endpoint>(),
            Err(EndpointError::BadPort(_))
        ));
        assert!(matches!(
            "[::1]".parse::<Endpoint>(),
            Err(EndpointError::MissingPort(_))
        ));
        assert!(matches!(
            "::1:80".parse::<Endpoint>(),
            Err(EndpointError::BadIpv6(_))
        ));
        assert!(matches!(
            "1.2.3.4:0".parse::<Endpoint>(),
            Err(EndpointError::BadPort(_))
        ));
        assert!(matches!(
            "1.2.3.4:+80".parse::<Endpoint>(),
            Err(EndpointError::BadPort(_))
        ));
        assert!(matches!(
            "1.2.3.4:".parse::<Endpoint>(),
            Err(EndpointError::BadPort(_))
        ));
        assert!(matches!(
            "999.1.1.1:80".parse::<Endpoint>(),
            Err(EndpointError::BadHost(_))
        ));
        assert!(matches!(
            "a_b:80".parse::<Endpoint>(),
            Err(EndpointError::BadHost(_))
        ));
        assert!(matches!(
            "[zz]:80".parse::<Endpoint>(),
            Err(EndpointError::BadIpv6(_))
        ));
        assert!(matches!(
            ":80".parse::<Endpoint>(),
            Err(EndpointError::BadHost(_))
        ));
    }

    #[test]
    fn error_messages_say_what_to_write() {
        let msg = "foo".parse::<Endpoint>().unwrap_err().to_string();
        assert!(msg.contains("'foo'") && msg.contains("HOST:PORT"), "{msg}");
    }

    #[test]
    fn lists() {
        let l = parse_list("127.0.0.1:5100,127.0.0.1:5101").unwrap();
        assert_eq!(l.len(), 2);
        assert!(parse_list("127.0.0.1:5100,").is_err());
    }
}
