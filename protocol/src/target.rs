//! Where a listener's connections go: one [`Target`], from the user's
//! update to the data plane's worker.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::endpoint::{Endpoint, EndpointError, Host};

/// One forwarding target: the address connections are made to, the name
/// the peer gateway's certificate must carry there, and the text the user
/// gave (shown back to them).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Target {
    /// As the user wrote it: `HOST:PORT`, the host a name or an address.
    pub given: String,
    /// What it resolved to when the session was updated.
    pub addr: SocketAddr,
    /// The host part of `given`: what an outbound TLS data channel
    /// verifies the inbound gateway's certificate against.
    pub server_name: String,
}

/// For logs: `given` and, when it is a name, what it resolved to.
impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.given == self.addr.to_string() {
            write!(f, "{}", self.given)
        } else {
            write!(f, "{} ({})", self.given, self.addr)
        }
    }
}

/// A list of targets for a log line: `a, b (10.0.0.1:5100)`.
pub fn list(targets: &[Target]) -> String {
    targets
        .iter()
        .map(Target::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Target {
    /// A target the user gave as `given`, resolved to `addr`.
    pub fn new(given: &str, addr: SocketAddr) -> Result<Self, EndpointError> {
        let endpoint: Endpoint = given.parse()?;
        Ok(Target {
            given: given.to_owned(),
            addr,
            server_name: host_name(&endpoint),
        })
    }

    /// A target given as a literal socket address (tests, tools).
    pub fn from_addr(addr: SocketAddr) -> Self {
        let endpoint = Endpoint::from_socket_addr(addr);
        Target {
            given: endpoint.to_string(),
            addr,
            server_name: host_name(&endpoint),
        }
    }
}

/// The host of an endpoint, as a certificate names it.
pub fn host_name(e: &Endpoint) -> String {
    match &e.host {
        Host::Ip(ip) => ip.to_string(),
        Host::Name(n) => n.clone(),
    }
}

/// `targets` repeated in order until there are `n` of them (a session
/// with more listeners than targets spreads them round-robin).
pub fn cycle(targets: &[Target], n: usize) -> Vec<Target> {
    if targets.is_empty() {
        return Vec::new();
    }
    (0..n).map(|i| targets[i % targets.len()].clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_name_is_the_host_part() {
        let a: SocketAddr = "192.0.2.7:5001".parse().unwrap();
        let t = Target::new("gw.example.org:5001", a).unwrap();
        assert_eq!(t.server_name, "gw.example.org");
        assert_eq!(t.given, "gw.example.org:5001");
        let v6: SocketAddr = "[2001:db8::7]:5001".parse().unwrap();
        assert_eq!(
            Target::new("[2001:db8::7]:5001", v6).unwrap().server_name,
            "2001:db8::7"
        );
        assert_eq!(Target::from_addr(a).server_name, "192.0.2.7");
        assert!(Target::new("no-port", a).is_err());
    }

    #[test]
    fn cycle_repeats_in_order() {
        let t: Vec<Target> = (1..=2)
            .map(|p| Target::from_addr(SocketAddr::from(([127, 0, 0, 1], p))))
            .collect();
        let c = cycle(&t, 5);
        let ports: Vec<u16> = c.iter().map(|t| t.addr.port()).collect();
        assert_eq!(ports, [1, 2, 1, 2, 1]);
        assert!(cycle(&[], 3).is_empty());
    }
}
