//! The cluster options of `s2cs` (`--cluster`, `--etcd`, `--node`, and
//! etcd's TLS client authentication).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use scistream_protocol::parse::duration as parse_duration;

/// Cluster mode: several `s2cs` nodes that are one gateway, coordinated
/// through etcd. Without `--cluster` the gateway is a single node with its
/// sessions in the state directory, as always.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Cluster (one gateway over several nodes, coordinated through etcd)")]
pub struct ClusterOptions {
    /// The cluster this node belongs to: every node of one gateway gives the
    /// same name (letters, digits, '-', '_', '.').
    #[arg(long, value_name = "NAME", value_parser = parse_name)]
    pub cluster: Option<String>,

    /// etcd's client URLs, comma-separated (http://10.0.0.5:2379, or
    /// https://… with --etcd-ca). Needs --cluster.
    #[arg(long, value_name = "URL,…", value_delimiter = ',')]
    pub etcd: Vec<String>,

    /// This node's name in the cluster, unique within it. Default: the
    /// host name.
    #[arg(long, value_name = "NAME", value_parser = parse_name)]
    pub node: Option<String>,

    /// CA bundle that verifies etcd's server certificates (https URLs).
    #[arg(long = "etcd-ca", alias = "etcd_ca", value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,

    /// Client certificate this node presents to etcd (etcd's
    /// --client-cert-auth), with --etcd-key.
    #[arg(long = "etcd-cert", alias = "etcd_cert", value_name = "FILE")]
    pub etcd_cert: Option<PathBuf>,

    /// The key of --etcd-cert.
    #[arg(long = "etcd-key", alias = "etcd_key", value_name = "FILE")]
    pub etcd_key: Option<PathBuf>,

    /// How long a node that stopped answering stays registered: its lease's
    /// time to live (renewed every third of it while the node runs).
    #[arg(long = "etcd-lease-ttl", alias = "etcd_lease_ttl", value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub lease_ttl: Duration,

    /// Bound on each call to etcd (and on connecting to it at start).
    #[arg(long = "etcd-timeout", alias = "etcd_timeout", value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub etcd_timeout: Duration,

    /// Where a `req`'s listeners go: `spread` over the live nodes, least
    /// loaded (booked rate, then listeners) first, so that one session's
    /// bandwidth adds up across nodes; `pack` keeps them all on the node
    /// that took the `req`. The node taking the `req` always keeps one.
    #[arg(long, value_enum, default_value_t = super::placement::Placement::Spread)]
    pub placement: super::placement::Placement,

    /// A secret every node of the cluster shares: a file readable by its
    /// owner only, at least 16 bytes. Session keys in etcd are then an HMAC
    /// of the uid with it, so that reading etcd reveals no uid. Without it
    /// they are an unkeyed hash, which anyone who reads etcd can search
    /// offline for guessable (time-based) uids; s2cs warns at start.
    #[arg(long = "cluster-secret", alias = "cluster_secret", value_name = "FILE")]
    pub cluster_secret: Option<PathBuf>,
}

/// The cluster secret's bytes; never printed.
#[derive(Clone)]
pub(crate) struct ClusterSecret(pub(crate) Vec<u8>);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

/// Reads `--cluster-secret`: owner-only, at least 16 bytes (a trailing
/// newline is not part of it).
fn read_secret(path: &std::path::Path) -> Result<ClusterSecret, String> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("--cluster-secret {shown}: cannot read it: {e}"))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "--cluster-secret {shown}: others may read it (mode {:o}); chmod 600 it",
            meta.permissions().mode() & 0o777
        ));
    }
    let mut bytes = std::fs::read(path)
        .map_err(|e| format!("--cluster-secret {shown}: cannot read it: {e}"))?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    if bytes.len() < 16 {
        return Err(format!(
            "--cluster-secret {shown}: {} bytes; use at least 16 (e.g. head -c 32 /dev/urandom | base64 > FILE)",
            bytes.len()
        ));
    }
    Ok(ClusterSecret(bytes))
}

fn parse_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "'{s}': use 1 to 64 letters, digits, '-', '_' or '.'"
        ))
    }
}

/// The cluster settings, checked: what a node needs to join.
#[derive(Debug, Clone)]
pub(crate) struct ClusterSettings {
    pub(crate) cluster: String,
    pub(crate) node: String,
    pub(crate) endpoints: Vec<String>,
    pub(crate) ca: Option<PathBuf>,
    pub(crate) identity: Option<(PathBuf, PathBuf)>,
    pub(crate) lease_ttl: Duration,
    pub(crate) timeout: Duration,
    pub(crate) placement: super::placement::Placement,
    pub(crate) secret: Option<ClusterSecret>,
}

impl ClusterSettings {
    /// The session-tag secret every node of the cluster derives from the
    /// cluster secret (`None` without one): HMAC-SHA-256(secret, a label
    /// and the cluster's name), never the cluster secret itself.
    pub(crate) fn shared_tag_secret(&self) -> Option<[u8; 32]> {
        let secret = self.secret.as_ref()?;
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret.0);
        let label = format!("scistream session tags, cluster {}", self.cluster);
        let mac = ring::hmac::sign(&key, label.as_bytes());
        mac.as_ref().try_into().ok()
    }
}

impl ClusterOptions {
    /// `None` in single-node mode; the settings, or what is wrong with the
    /// options, in cluster mode.
    pub(crate) fn settings(&self) -> Result<Option<ClusterSettings>, String> {
        let Some(cluster) = self.cluster.clone() else {
            if !self.etcd.is_empty() || self.node.is_some() {
                return Err("--etcd and --node need --cluster NAME".into());
            }
            return Ok(None);
        };
        if self.etcd.is_empty() {
            return Err("--cluster needs --etcd URL[,URL…] (etcd's client URLs)".into());
        }
        let endpoints = self
            .etcd
            .iter()
            .map(|u| check_endpoint(u, self.etcd_ca.is_some()))
            .collect::<Result<Vec<_>, _>>()?;
        let identity = match (&self.etcd_cert, &self.etcd_key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            _ => return Err("--etcd-cert and --etcd-key go together".into()),
        };
        if self.lease_ttl < Duration::from_secs(2) {
            return Err("--etcd-lease-ttl must be at least 2s".into());
        }
        let node = match &self.node {
            Some(n) => n.clone(),
            None => host_name()?,
        };
        Ok(Some(ClusterSettings {
            cluster,
            node,
            endpoints,
            ca: self.etcd_ca.clone(),
            identity,
            lease_ttl: self.lease_ttl,
            timeout: self.etcd_timeout,
            placement: self.placement,
            secret: self
                .cluster_secret
                .as_deref()
                .map(read_secret)
                .transpose()?,
        }))
    }
}

/// An etcd client URL: `http://host:port`, `https://host:port`, or
/// `host:port` (http, or https when a CA is given).
fn check_endpoint(url: &str, tls: bool) -> Result<String, String> {
    let url = url.trim();
    let (scheme, rest) = match url.split_once("://") {
        Some((s @ ("http" | "https"), rest)) => (s, rest),
        Some((other, _)) => {
            return Err(format!(
                "--etcd {url}: scheme '{other}' is not http or https"
            ));
        }
        None => (if tls { "https" } else { "http" }, url),
    };
    let hostport = rest.trim_end_matches('/');
    match hostport.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {}
        _ => {
            return Err(format!(
                "--etcd {url}: give HOST:PORT (etcd's client URL, e.g. http://10.0.0.5:2379)"
            ));
        }
    }
    if scheme == "https" && !tls {
        return Err(format!(
            "--etcd {url}: https needs --etcd-ca to verify etcd with"
        ));
    }
    Ok(format!("{scheme}://{hostport}"))
}

fn host_name() -> Result<String, String> {
    let name = rustix::system::uname();
    let name = name.nodename().to_string_lossy();
    let name = name.split('.').next().unwrap_or_default();
    parse_name(name)
        .map_err(|e| format!("the host name cannot be a node name ({e}): give --node NAME"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(args: &[&str]) -> Result<Option<ClusterSettings>, String> {
        #[derive(clap::Parser)]
        struct T {
            #[command(flatten)]
            c: ClusterOptions,
        }
        let mut argv = vec!["t"];
        argv.extend(args);
        let t = <T as clap::Parser>::try_parse_from(argv).map_err(|e| e.to_string())?;
        t.c.settings()
    }

    #[test]
    fn single_node_unless_cluster_is_given() {
        assert!(options(&[]).unwrap().is_none());
        let e = options(&["--etcd", "127.0.0.1:2379"]).unwrap_err();
        assert!(e.contains("--cluster"), "{e}");
    }

    #[test]
    fn endpoints_are_checked_and_normalised() {
        let s = options(&[
            "--cluster",
            "gw",
            "--node",
            "a",
            "--etcd",
            "127.0.0.1:2379,http://[::1]:2379/",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.endpoints, ["http://127.0.0.1:2379", "http://[::1]:2379"]);
        for bad in ["127.0.0.1", "ftp://x:1", "https://x:2379", "x:0"] {
            let e = options(&["--cluster", "gw", "--node", "a", "--etcd", bad]).unwrap_err();
            assert!(e.contains("--etcd"), "{bad}: {e}");
        }
        let e = options(&["--cluster", "gw", "--node", "a"]).unwrap_err();
        assert!(e.contains("--etcd"), "{e}");
        let e = options(&[
            "--cluster",
            "gw",
            "--node",
            "a",
            "--etcd",
            "x:1",
            "--etcd-cert",
            "c",
        ])
        .unwrap_err();
        assert!(e.contains("--etcd-key"), "{e}");
        let e = options(&["--cluster", "g w", "--etcd", "x:1"]).unwrap_err();
        assert!(e.contains("letters"), "{e}");
    }
}
