//! Node identity: a call one node passes on to another carries proof that
//! a member of the cluster sent it, besides the original caller's token.
//!
//! A passed-on call is marked (`x-scistream-relayed`): `part;first=N` is a
//! node's call for its part of a spread session, served there without
//! routing or claiming. Anyone can write that header, so the mark carries a
//! MAC under a key only the cluster's nodes have:
//!
//! ```text
//! x-scistream-relayed: part;first=4;node=n2;t=1765152000;mac=<hex>
//! ```
//!
//! The MAC (HMAC-SHA-256) covers the call's kind, the sending node's name
//! and the time; a mark older or newer than [`SKEW`] is refused (nodes keep
//! their clocks with NTP). The key is derived from `--cluster-secret` when
//! the nodes have one; otherwise it is a random key the first node wrote
//! into etcd (`/scistream/CLUSTER/node-key`), so that proving membership
//! takes what joining takes: access to the cluster's etcd.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::ClusterError;
use super::etcd::{Etcd, get_op, pb, put_op, unchanged_since};
use super::options::ClusterSettings;

/// How far a mark's time may be from this node's clock.
pub(crate) const SKEW: Duration = Duration::from_secs(120);

/// The key the cluster's nodes sign their passed-on calls with.
pub(crate) struct NodeKey(ring::hmac::Key);

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeKey(<redacted>)")
    }
}

/// A verified mark: which node sent the call, and what kind of call it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Relayed {
    /// `1` (passed on to the session's holder) or `part;first=N`.
    pub(crate) how: String,
    pub(crate) node: String,
}

/// Why a mark was refused (said to the caller, who may be an attacker:
/// nothing about the key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum MarkError {
    #[error(
        "the call is marked as passed on by a node of this cluster, but carries no node identity"
    )]
    Unsigned,
    #[error("the call's node identity does not verify")]
    BadMac,
    #[error("the call's node identity is {0} s away from this node's clock (at most {max} s)", max = SKEW.as_secs())]
    Stale(u64),
}

impl NodeKey {
    /// The cluster's node key: from the cluster secret when there is one,
    /// else the one in etcd (written by the first node that needed it).
    pub(crate) async fn for_cluster(
        etcd: &Etcd,
        settings: &ClusterSettings,
    ) -> Result<NodeKey, ClusterError> {
        if let Some(secret) = &settings.secret {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret.0);
            let label = format!("scistream node identity, cluster {}", settings.cluster);
            let derived = ring::hmac::sign(&key, label.as_bytes());
            return Ok(NodeKey::from_bytes(derived.as_ref()));
        }
        let key = super::keys::node_key(&settings.cluster);
        let mut fresh = [0u8; 32];
        getrandom::fill(&mut fresh).map_err(|e| ClusterError::Random(e.to_string()))?;
        let answer = etcd
            .call("read or write the cluster's node key", |c| {
                let (when, then) = (unchanged_since(&key, 0), put_op(&key, fresh.to_vec()));
                let otherwise = get_op(&key);
                async move { c.txn(vec![when], vec![then], vec![otherwise]).await }
            })
            .await?;
        if answer.succeeded {
            return Ok(NodeKey::from_bytes(&fresh));
        }
        let stored = answer
            .responses
            .into_iter()
            .find_map(|r| match r.response {
                Some(pb::response_op::Response::ResponseRange(range)) => {
                    range.kvs.into_iter().next()
                }
                _ => None,
            })
            .map(|kv| kv.value)
            .filter(|v| v.len() >= 16)
            .ok_or(ClusterError::NodeKey)?;
        Ok(NodeKey::from_bytes(&stored))
    }

    pub(crate) fn from_bytes(bytes: &[u8]) -> NodeKey {
        NodeKey(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, bytes))
    }

    fn mac(&self, how: &str, node: &str, t: u64) -> String {
        let text = format!("scistream-relayed\n{how}\n{node}\n{t}");
        hex(ring::hmac::sign(&self.0, text.as_bytes()).as_ref())
    }

    /// The mark `node` puts on a call of kind `how`, at `now`.
    pub(crate) fn mark(&self, how: &str, node: &str, now: SystemTime) -> String {
        let t = unix(now);
        format!("{how};node={node};t={t};mac={}", self.mac(how, node, t))
    }

    /// Checks a mark at `now`: who sent it and what kind of call it is.
    pub(crate) fn verify(&self, mark: &str, now: SystemTime) -> Result<Relayed, MarkError> {
        let (how, proof) = mark.split_once(";node=").ok_or(MarkError::Unsigned)?;
        let (node, rest) = proof.split_once(";t=").ok_or(MarkError::Unsigned)?;
        let (t, mac) = rest.split_once(";mac=").ok_or(MarkError::Unsigned)?;
        let t: u64 = t.parse().map_err(|_| MarkError::BadMac)?;
        let text = format!("scistream-relayed\n{how}\n{node}\n{t}");
        let mac = unhex(mac).ok_or(MarkError::BadMac)?;
        ring::hmac::verify(&self.0, text.as_bytes(), &mac).map_err(|_| MarkError::BadMac)?;
        let off = unix(now).abs_diff(t);
        if off > SKEW.as_secs() {
            return Err(MarkError::Stale(off));
        }
        Ok(Relayed {
            how: how.to_owned(),
            node: node.to_owned(),
        })
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_verifies_under_its_key_only_and_names_its_node() {
        let key = NodeKey::from_bytes(b"0123456789abcdef0123456789abcdef");
        let now = SystemTime::now();
        let mark = key.mark("part;first=4", "n2", now);
        let seen = key.verify(&mark, now).expect("verifies");
        assert_eq!(seen.how, "part;first=4");
        assert_eq!(seen.node, "n2");
        let other = NodeKey::from_bytes(b"another key, another cluster....");
        assert_eq!(other.verify(&mark, now), Err(MarkError::BadMac));
    }

    #[test]
    fn an_edited_or_unsigned_or_old_mark_is_refused() {
        let key = NodeKey::from_bytes(b"0123456789abcdef0123456789abcdef");
        let now = SystemTime::now();
        let mark = key.mark("part;first=4", "n2", now);
        let edited = mark.replacen("first=4", "first=5", 1);
        assert_eq!(key.verify(&edited, now), Err(MarkError::BadMac));
        let renamed = mark.replacen("node=n2", "node=n3", 1);
        assert_eq!(key.verify(&renamed, now), Err(MarkError::BadMac));
        assert_eq!(key.verify("part;first=4", now), Err(MarkError::Unsigned));
        assert_eq!(key.verify("1", now), Err(MarkError::Unsigned));
        let later = now + Duration::from_secs(600);
        assert!(matches!(key.verify(&mark, later), Err(MarkError::Stale(_))));
        assert!(key.verify(&mark, now + SKEW / 2).is_ok());
    }
}
