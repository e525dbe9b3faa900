//! Who may do what here: the target policy (`--allow-targets`), the
//! identities that may create sessions (`--allow-identities`) and the
//! administrators (`--admins`).
//!
//! A gateway forwards to addresses its users name; without a target policy
//! it is an open relay into the facility network. `--allow-targets` takes
//! CIDR ranges, each with an optional port range:
//!
//! ```text
//! 10.0.0.0/8:5000-6000   192.168.7.12   [fd00::/8]:7000   0.0.0.0/0:443
//! ```

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use ipnet::IpNet;
use tracing::{error, info};

use crate::auth::Identity;
use crate::error::ControlError;

/// One allowed range of targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetRule {
    net: IpNet,
    ports: RangeInclusive<u16>,
}

impl TargetRule {
    /// True when this rule allows `addr` and is not a wildcard (`0.0.0.0/0`,
    /// `::/0`): the admin named these addresses on purpose.
    pub(crate) fn names(&self, addr: &SocketAddr) -> bool {
        self.net.prefix_len() > 0 && self.allows(addr)
    }

    pub(crate) fn allows(&self, addr: &SocketAddr) -> bool {
        let ip = match addr.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr.ip()),
            v4 => v4,
        };
        self.net.contains(&ip) && self.ports.contains(&addr.port())
    }
}

impl fmt::Display for TargetRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all = *self.ports.start() == 1 && *self.ports.end() == u16::MAX;
        match (self.net, all) {
            (net, true) => write!(f, "{net}"),
            (IpNet::V6(net), false) => write!(f, "[{net}]:{}", ports(&self.ports)),
            (net, false) => write!(f, "{net}:{}", ports(&self.ports)),
        }
    }
}

fn ports(r: &RangeInclusive<u16>) -> String {
    if r.start() == r.end() {
        r.start().to_string()
    } else {
        format!("{}-{}", r.start(), r.end())
    }
}

/// Parses `CIDR[:PORT[-PORT]]` (IPv6 in brackets when a port follows; a
/// bare address is a single host).
pub fn parse_target_rule(s: &str) -> Result<TargetRule, String> {
    let s = s.trim();
    let (net, port_text) = if let Some(rest) = s.strip_prefix('[') {
        let (net, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("'{s}': missing ']'"))?;
        match after.strip_prefix(':') {
            Some(p) => (net, Some(p)),
            None if after.is_empty() => (net, None),
            None => return Err(format!("'{s}': expected ':PORTS' after ']'")),
        }
    } else if s.matches(':').count() == 1 {
        let (net, p) = s.split_once(':').unwrap_or((s, ""));
        (net, Some(p))
    } else {
        (s, None)
    };
    let net: IpNet = match net.parse() {
        Ok(n) => n,
        Err(_) => net.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
            format!("'{net}' in '{s}' is not an address or CIDR range (e.g. 10.0.0.0/8)")
        })?,
    };
    let ports = match port_text {
        None => 1..=u16::MAX,
        Some(p) => scistream_protocol::parse::port_range(p)
            .or_else(|_| {
                p.parse::<u16>()
                    .ok()
                    .filter(|&n| n > 0)
                    .map(|n| n..=n)
                    .ok_or(())
            })
            .map_err(|_| format!("'{p}' in '{s}' is not a port or FIRST-LAST port range"))?,
    };
    Ok(TargetRule {
        net: net.trunc(),
        ports,
    })
}

/// Names from a file, one per line, `#` comments; re-read on SIGHUP.
#[derive(Debug)]
pub struct NameList {
    path: PathBuf,
    names: RwLock<Vec<String>>,
}

fn read_names(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

impl NameList {
    /// Loads `path`.
    pub fn load(path: &Path) -> Result<Self, String> {
        let names = read_names(path)?;
        info!(path = %path.display(), identities = names.len(), "allowed identities loaded");
        Ok(NameList {
            path: path.to_owned(),
            names: RwLock::new(names),
        })
    }

    /// Re-reads the file; on error keeps the names it had.
    pub fn reload(&self) {
        match read_names(&self.path) {
            Ok(names) => {
                info!(path = %self.path.display(), identities = names.len(), "allowed identities re-read");
                *self.names.write().unwrap_or_else(|p| p.into_inner()) = names;
            }
            Err(e) => error!("keeping the previous allowed identities: {e}"),
        }
    }

    fn contains(&self, identity: &Identity) -> bool {
        self.names
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|n| identity.is(n))
    }
}

/// The access policy of a gateway.
#[derive(Debug, Default)]
pub struct Access {
    /// Allowed targets; `None`: every target (warned about at start).
    pub targets: Option<Vec<TargetRule>>,
    /// Who may create sessions; `None`: every authenticated caller.
    pub creators: Option<NameList>,
    /// Who may update or release any session.
    pub admins: Vec<String>,
}

impl Access {
    /// Re-reads what comes from files.
    pub fn reload(&self) {
        if let Some(c) = &self.creators {
            c.reload();
        }
    }

    /// May `who` create a session?
    pub fn check_creator(&self, who: &Identity) -> Result<(), ControlError> {
        match &self.creators {
            Some(list) if !list.contains(who) && !self.is_admin(who) => {
                Err(ControlError::PermissionDenied(format!(
                    "{who} may not create sessions on this gateway (not in its --allow-identities list); ask its administrators"
                )))
            }
            _ => Ok(()),
        }
    }

    /// True for an administrator.
    pub fn is_admin(&self, who: &Identity) -> bool {
        self.admins.iter().any(|a| who.is(a))
    }

    /// May `who` act on a session that `owner` created?
    pub fn check_owner(
        &self,
        who: &Identity,
        owner: &Identity,
        what: &str,
    ) -> Result<(), ControlError> {
        if who.is(&owner.id) || self.is_admin(who) {
            Ok(())
        } else {
            Err(ControlError::PermissionDenied(format!(
                "{what} belongs to {owner}; {who} may not change it (only its creator or an administrator may)"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn target_rules_parse_and_match() {
        let r = parse_target_rule("10.0.0.0/8:5000-6000").unwrap();
        assert!(r.allows(&addr("10.1.2.3:5000")) && r.allows(&addr("10.1.2.3:6000")));
        assert!(!r.allows(&addr("10.1.2.3:6001")) && !r.allows(&addr("11.0.0.1:5500")));
        assert_eq!(r.to_string(), "10.0.0.0/8:5000-6000");
        let r = parse_target_rule("192.168.7.12").unwrap();
        assert!(r.allows(&addr("192.168.7.12:1")) && !r.allows(&addr("192.168.7.13:1")));
        assert_eq!(r.to_string(), "192.168.7.12/32");
        let r = parse_target_rule("127.0.0.1:7000").unwrap();
        assert!(r.allows(&addr("127.0.0.1:7000")) && !r.allows(&addr("127.0.0.1:7001")));
        let r = parse_target_rule("[fd00::/8]:7000-7010").unwrap();
        assert!(r.allows(&addr("[fd12::1]:7005")) && !r.allows(&addr("[fe80::1]:7005")));
        assert_eq!(r.to_string(), "[fd00::/8]:7000-7010");
        let r = parse_target_rule("::1").unwrap();
        assert!(r.allows(&addr("[::1]:9")));
        let r = parse_target_rule("10.0.0.0/8").unwrap();
        assert!(r.allows(&addr("[::ffff:10.0.0.1]:80")), "v4-mapped");
        assert_eq!(
            parse_target_rule("10.1.2.3/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
        for bad in [
            "",
            "10.0.0.0/33",
            "host.example:80",
            "10.0.0.0/8:0",
            "10.0.0.0/8:x",
            "[::1",
            "[::1]x",
        ] {
            assert!(parse_target_rule(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn owners_and_admins() {
        let alice = Identity {
            id: "a".into(),
            username: Some("alice".into()),
            linked: vec![],
            source: None,
        };
        let bob = Identity {
            id: "b".into(),
            username: Some("bob".into()),
            linked: vec![],
            source: None,
        };
        let a = Access {
            admins: vec!["bob".into()],
            ..Access::default()
        };
        assert!(a.check_owner(&alice, &alice, "s").is_ok());
        assert!(a.check_owner(&bob, &alice, "s").is_ok(), "admin");
        let a = Access::default();
        let e = a.check_owner(&bob, &alice, "session x").unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.to_string().contains("alice"), "{e}");
    }
}
