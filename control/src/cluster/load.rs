//! Each node's load in etcd (`/scistream/CLUSTER/load/NODE`, under the
//! node's lease): what placement reads to choose the least loaded nodes.
//! Written once a second when it changed, so a busy cluster of N nodes
//! costs at most N small writes a second, whatever the number of sessions.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tracing::debug;

use super::ClusterError;
use super::etcd::Etcd;
use super::etcd::{pb, prefix_op};
use super::keys;
use super::membership::nodes_of;
use super::placement::Load;
use crate::sessions::Registry;

/// Publishes this node's load for as long as the future runs.
pub(crate) async fn publish(
    etcd: Etcd,
    cluster: String,
    node: String,
    lease: Arc<AtomicI64>,
    registry: Arc<Registry>,
) {
    let key = format!("{}{node}", keys::loads(&cluster));
    let mut published: Option<(Load, i64)> = None;
    loop {
        let (listeners, booked_kbps) = registry.booked();
        let now = (
            Load {
                listeners,
                booked_kbps,
            },
            lease.load(Ordering::Relaxed),
        );
        if published != Some(now) {
            match put(&etcd, &key, now).await {
                Ok(()) => published = Some(now),
                Err(e) => debug!(error = %e, "cannot publish this node's load; trying again"),
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn put(etcd: &Etcd, key: &str, (load, lease): (Load, i64)) -> Result<(), ClusterError> {
    let value = serde_json::to_vec(&load).map_err(ClusterError::Encode)?;
    etcd.call("publish this node's load", |c| {
        let (key, value) = (key.to_owned(), value.clone());
        async move { c.put(key, value, lease).await }
    })
    .await?;
    Ok(())
}

/// What placement reads, in one etcd round trip: the nodes registered
/// this moment (name and control address) and every node's published load
/// (a node that has published nothing yet is taken as idle). Read from
/// etcd rather than this node's watch, which may lag a node that has just
/// joined by a few milliseconds.
pub(crate) async fn read(
    etcd: &Etcd,
    cluster: &str,
) -> Result<(Vec<(String, SocketAddr)>, BTreeMap<String, Load>), ClusterError> {
    let nodes = keys::nodes(cluster);
    let loads = keys::loads(cluster);
    let answer = etcd
        .call("read the nodes and their load", |c| {
            let ops = vec![prefix_op(&nodes), prefix_op(&loads)];
            async move { c.txn(Vec::new(), ops, Vec::new()).await }
        })
        .await?;
    let mut ranges = answer
        .responses
        .into_iter()
        .filter_map(|r| match r.response {
            Some(pb::response_op::Response::ResponseRange(range)) => Some(range.kvs),
            _ => None,
        });
    let (node_kvs, load_kvs) = (
        ranges.next().unwrap_or_default(),
        ranges.next().unwrap_or_default(),
    );
    let members = nodes_of(&node_kvs)
        .into_values()
        .map(|r| (r.node, r.control))
        .collect();
    let loads = load_kvs
        .iter()
        .filter_map(|kv| {
            let key = std::str::from_utf8(&kv.key).ok()?;
            let node = key.strip_prefix(&loads)?.to_owned();
            Some((node, serde_json::from_slice(&kv.value).ok()?))
        })
        .collect();
    Ok((members, loads))
}
