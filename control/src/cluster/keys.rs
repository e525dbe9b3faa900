//! The cluster's keys in etcd, all in one place. Everything a cluster
//! writes lives under `/scistream/CLUSTER/`:
//!
//! | key | value | lifetime |
//! |---|---|---|
//! | `nodes/NODE` | the node's record (JSON: control address, listener IP, capacity) | its lease |
//! | `load/NODE` | its load (listeners, booked rate) | its lease |
//! | `sessions/HASH` | a session's record (holder, parts) | until released |
//! | `node-key` | the key nodes sign passed-on calls with (without `--cluster-secret`) | the cluster's |
//!
//! `HASH` is a keyed hash of the uid (see [`super::directory`]): no uid is
//! ever written to etcd.

/// Everything of `cluster`.
pub(crate) fn cluster(cluster: &str) -> String {
    format!("/scistream/{cluster}/")
}

/// The registered nodes (a prefix).
pub(crate) fn nodes(cluster: &str) -> String {
    format!("{}nodes/", self::cluster(cluster))
}

/// The nodes' published loads (a prefix).
pub(crate) fn loads(cluster: &str) -> String {
    format!("{}load/", self::cluster(cluster))
}

/// A session's record, by the hex of its uid's keyed hash.
pub(crate) fn session(cluster: &str, hash_hex: &str) -> String {
    format!("{}sessions/{hash_hex}", self::cluster(cluster))
}

/// The cluster's node key.
pub(crate) fn node_key(cluster: &str) -> String {
    format!("{}node-key", self::cluster(cluster))
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_key_is_under_the_clusters_prefix() {
        let c = super::cluster("hpc");
        assert_eq!(c, "/scistream/hpc/");
        for k in [
            super::nodes("hpc"),
            super::loads("hpc"),
            super::session("hpc", "00ff"),
            super::node_key("hpc"),
        ] {
            assert!(k.starts_with(&c), "{k}");
        }
    }
}
