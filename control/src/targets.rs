//! Where a session may forward to: the admin's `--allow-targets` rules, and
//! the refusals that hold whatever the rules say.
//!
//! A target is checked on the address `s2ds` will connect to (after DNS
//! resolution, IPv4-mapped IPv6 taken as IPv4), in this order:
//!
//! 1. never the unspecified address (`0.0.0.0`, `::`: "this host"),
//!    multicast or broadcast;
//! 2. never one of the session's own listeners, and never this gateway's
//!    control or metrics port on any local address (a data client could
//!    otherwise talk to them from outside);
//! 3. this gateway's data port range on a local address (another session's
//!    listener: a loop, or a way around the uid check) and link-local
//!    addresses only with an *explicit* rule, one that names them (any rule
//!    but `0.0.0.0/0` / `::/0`);
//! 4. loopback only when the gateway itself listens on loopback (a
//!    development set-up), or with an explicit rule;
//! 5. then, when `--allow-targets` is given, one of its rules must allow it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::ops::RangeInclusive;

use crate::access::TargetRule;
use crate::error::ControlError;

/// This gateway's own endpoints, which no session may target.
#[derive(Debug, Clone)]
pub struct Gateway {
    /// The address data listeners bind to.
    pub listener_ip: IpAddr,
    /// The control service's port.
    pub control_port: u16,
    /// The metrics port, when served.
    pub metrics_port: Option<u16>,
    /// The data listeners' port range.
    pub data_ports: RangeInclusive<u16>,
}

impl Default for Gateway {
    fn default() -> Self {
        Gateway {
            listener_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            control_port: 0,
            metrics_port: None,
            data_ports: 0..=0,
        }
    }
}

/// The address as IPv4 when it is IPv4-mapped IPv6.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

fn is_broadcast(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if v4.is_broadcast())
}

/// True when `ip` is an address of this host: loopback, or one a socket
/// can bind to.
pub fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// Checks one target of a session (`field` names it in the message).
pub fn check(
    rules: Option<&[TargetRule]>,
    gateway: &Gateway,
    field: &str,
    addr: SocketAddr,
    own_listeners: &[SocketAddr],
) -> Result<(), ControlError> {
    let addr = canonical(addr);
    let ip = addr.ip();
    let refuse = |why: String| ControlError::PermissionDenied(format!("{field} {addr}: {why}"));
    if ip.is_unspecified() {
        return Err(refuse(
            "the unspecified address means this gateway itself; name the host to forward to".into(),
        ));
    }
    if ip.is_multicast() || is_broadcast(ip) {
        return Err(refuse(
            "multicast and broadcast addresses cannot be forwarded to".into(),
        ));
    }
    let local = is_local(ip);
    let own_port = |port: u16| {
        own_listeners
            .iter()
            .map(|l| canonical(*l))
            .any(|l| l.port() == port && (l.ip() == ip || (l.ip().is_unspecified() && local)))
    };
    if own_port(addr.port()) {
        return Err(refuse(
            "that is a listener of this very session; it would forward into itself".into(),
        ));
    }
    if local && addr.port() == gateway.control_port {
        return Err(refuse("that is this gateway's own control port".into()));
    }
    if local && gateway.metrics_port == Some(addr.port()) {
        return Err(refuse("that is this gateway's own metrics port".into()));
    }
    let explicit = rules.is_some_and(|r| r.iter().any(|r| r.names(&addr)));
    // This gateway's listeners bind --listener-ip: another gateway on the
    // same host (127.0.0.2 beside 127.0.0.3) may use the same port numbers.
    let binds_here = ip == canonical(SocketAddr::new(gateway.listener_ip, 0)).ip()
        || (gateway.listener_ip.is_unspecified() && local);
    if binds_here && gateway.data_ports.contains(&addr.port()) && !explicit {
        return Err(refuse(format!(
            "that is in this gateway's own data port range {}-{} (another session's listener); \
             to put both ends of a tunnel on one gateway, allow it with an explicit --allow-targets rule \
             (e.g. {}:{}-{})",
            gateway.data_ports.start(),
            gateway.data_ports.end(),
            ip,
            gateway.data_ports.start(),
            gateway.data_ports.end()
        )));
    }
    if is_link_local(ip) && !explicit {
        return Err(refuse(
            "link-local addresses need an explicit --allow-targets rule".into(),
        ));
    }
    if ip.is_loopback() && !gateway.listener_ip.is_loopback() && !explicit {
        return Err(refuse(format!(
            "loopback targets are refused on a gateway that listens on {} (not loopback); \
             allow them with an explicit --allow-targets rule (e.g. {ip}:{})",
            gateway.listener_ip,
            addr.port()
        )));
    }
    if let Some(rules) = rules {
        if !rules.iter().any(|r| r.allows(&addr)) {
            let policy: Vec<String> = rules.iter().map(|r| r.to_string()).collect();
            return Err(refuse(format!(
                "outside this gateway's target policy (--allow-targets {})",
                policy.join(",")
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::access::parse_target_rule;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn gw(listener_ip: &str) -> Gateway {
        Gateway {
            listener_ip: listener_ip.parse().unwrap(),
            control_port: 5000,
            metrics_port: Some(9464),
            data_ports: 5100..=5200,
        }
    }

    fn rules(list: &[&str]) -> Vec<TargetRule> {
        list.iter().map(|r| parse_target_rule(r).unwrap()).collect()
    }

    fn refused(r: Result<(), ControlError>) -> String {
        let e = r.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        e.to_string()
    }

    #[test]
    fn the_gateway_itself_is_never_a_target() {
        let g = gw("127.0.0.1");
        let open = rules(&["0.0.0.0/0:1-65535", "::/0"]);
        for t in [
            "127.0.0.1:9464",
            "0.0.0.0:9464",
            "[::ffff:127.0.0.1]:9464",
            "127.0.0.2:5000",
        ] {
            let m = refused(check(Some(&open), &g, "receiver", a(t), &[]));
            assert!(m.contains("own") || m.contains("unspecified"), "{t}: {m}");
        }
        assert!(refused(check(None, &g, "x", a("[::]:80"), &[])).contains("unspecified"));
        assert!(refused(check(None, &g, "x", a("224.0.0.1:80"), &[])).contains("multicast"));
        assert!(refused(check(None, &g, "x", a("255.255.255.255:80"), &[])).contains("broadcast"));
    }

    #[test]
    fn data_ports_of_this_gateway_need_an_explicit_rule_and_own_listeners_are_never_allowed() {
        let g = gw("127.0.0.1");
        let m = refused(check(None, &g, "remote listener", a("127.0.0.1:5150"), &[]));
        assert!(m.contains("data port range"), "{m}");
        let wildcard = rules(&["0.0.0.0/0"]);
        assert!(check(Some(&wildcard), &g, "x", a("127.0.0.1:5150"), &[]).is_err());
        let explicit = rules(&["127.0.0.1:5100-5200"]);
        assert!(check(Some(&explicit), &g, "x", a("127.0.0.1:5150"), &[]).is_ok());
        let own = [a("127.0.0.1:5150")];
        let m = refused(check(Some(&explicit), &g, "x", a("127.0.0.1:5150"), &own));
        assert!(m.contains("this very session"), "{m}");
        let own_any = [a("0.0.0.0:5151")];
        assert!(check(Some(&explicit), &g, "x", a("127.0.0.1:5151"), &own_any).is_err());
    }

    #[test]
    fn another_gateway_on_this_host_may_use_the_same_port_numbers() {
        // SciStream's tutorial: two s2cs on 127.0.0.2 and 127.0.0.3, both
        // with data ports 5100-5200; the instrument side targets the other.
        let inst = gw("127.0.0.3");
        assert!(check(None, &inst, "remote listener", a("127.0.0.2:5100"), &[]).is_ok());
        let m = refused(check(
            None,
            &inst,
            "remote listener",
            a("127.0.0.3:5100"),
            &[],
        ));
        assert!(
            m.contains("data port range"),
            "its own address still is: {m}"
        );
        // Listening on every address: any local address is this gateway's.
        let any = gw("0.0.0.0");
        let m = refused(check(
            None,
            &any,
            "remote listener",
            a("127.0.0.2:5100"),
            &[],
        ));
        assert!(m.contains("data port range"), "{m}");
    }

    #[test]
    fn loopback_only_on_a_loopback_gateway_or_explicitly() {
        let dev = gw("127.0.0.1");
        assert!(check(None, &dev, "x", a("127.0.0.1:7000"), &[]).is_ok());
        let prod = gw("10.1.2.3");
        let m = refused(check(None, &prod, "x", a("127.0.0.1:7000"), &[]));
        assert!(m.contains("loopback"), "{m}");
        let m = refused(check(None, &prod, "x", a("[::1]:7000"), &[]));
        assert!(m.contains("loopback"), "{m}");
        assert!(
            check(
                Some(&rules(&["0.0.0.0/0"])),
                &prod,
                "x",
                a("127.0.0.1:7000"),
                &[]
            )
            .is_err(),
            "a wildcard rule is not explicit"
        );
        assert!(
            check(
                Some(&rules(&["127.0.0.1:7000"])),
                &prod,
                "x",
                a("127.0.0.1:7000"),
                &[]
            )
            .is_ok()
        );
        assert!(check(None, &prod, "x", a("169.254.1.1:80"), &[]).is_err());
        assert!(
            check(
                Some(&rules(&["169.254.0.0/16"])),
                &prod,
                "x",
                a("169.254.1.1:80"),
                &[]
            )
            .is_ok()
        );
    }

    #[test]
    fn rules_still_decide_the_rest() {
        let g = gw("127.0.0.1");
        let r = rules(&["127.0.0.1:7000-7010"]);
        assert!(check(Some(&r), &g, "x", a("127.0.0.1:7005"), &[]).is_ok());
        let m = refused(check(Some(&r), &g, "receiver", a("127.0.0.1:22"), &[]));
        assert!(
            m.contains("127.0.0.1:22") && m.contains("127.0.0.1/32:7000-7010"),
            "{m}"
        );
        assert!(
            check(None, &g, "x", a("192.0.2.7:80"), &[]).is_ok(),
            "no rules: open, as before"
        );
    }
}
