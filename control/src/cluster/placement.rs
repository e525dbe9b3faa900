//! Where a session's listeners go: how many on which live node.
//!
//! The node that took the `req` (the session's holder) decides, from the
//! live nodes and the load each publishes ([`super::load`]). It always
//! keeps at least one listener itself. Each chosen node then admits its
//! share under its own limits (`--capacity`, ports, quotas) and binds the
//! ports itself, so two placements at once can never book one port twice
//! or take a node over its capacity: the node that owns the resource is
//! the one that books it, atomically.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// How `req` spreads a session's listeners (`--placement`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Placement {
    /// Over the live nodes, least loaded first, so that a session's
    /// bandwidth adds up across nodes.
    #[default]
    Spread,
    /// All on the node that took the `req` (the other nodes stay free for
    /// other sessions).
    Pack,
}

/// What a node has booked now, as it publishes it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Load {
    /// Listeners held by its sessions.
    pub(crate) listeners: usize,
    /// Rate booked by its sessions, kbit/s.
    pub(crate) booked_kbps: u64,
}

/// A live node that may take listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub(crate) node: String,
    pub(crate) control: SocketAddr,
    pub(crate) load: Load,
}

/// How many of a session's listeners one node takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Share {
    pub(crate) node: String,
    pub(crate) control: SocketAddr,
    pub(crate) count: usize,
}

/// Shares for `n` listeners; the first share is always `me`'s (the holder
/// keeps at least one listener). `others` are the other live nodes.
pub(crate) fn plan(
    n: usize,
    me: Candidate,
    mut others: Vec<Candidate>,
    placement: Placement,
) -> Vec<Share> {
    let share = |c: &Candidate, count| Share {
        node: c.node.clone(),
        control: c.control,
        count,
    };
    if placement == Placement::Pack || others.is_empty() || n <= 1 {
        return vec![share(&me, n.max(1))];
    }
    // Least booked rate first, then fewest listeners, then by name (so
    // that equal nodes are chosen in a stable order).
    others.sort_by(|a, b| {
        (a.load.booked_kbps, a.load.listeners, &a.node).cmp(&(
            b.load.booked_kbps,
            b.load.listeners,
            &b.node,
        ))
    });
    let nodes: Vec<&Candidate> = std::iter::once(&me).chain(others.iter()).take(n).collect();
    let (each, extra) = (n / nodes.len(), n % nodes.len());
    nodes
        .iter()
        .enumerate()
        .map(|(i, c)| share(c, each + usize::from(i < extra)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, port: u16, booked_kbps: u64, listeners: usize) -> Candidate {
        Candidate {
            node: name.into(),
            control: SocketAddr::from(([127, 0, 0, 1], port)),
            load: Load {
                listeners,
                booked_kbps,
            },
        }
    }

    fn counts(shares: &[Share]) -> Vec<(&str, usize)> {
        shares.iter().map(|s| (s.node.as_str(), s.count)).collect()
    }

    #[test]
    fn spread_divides_evenly_holder_first_then_least_loaded() {
        let me = node("a", 1, 500, 9);
        let others = vec![node("b", 2, 100, 0), node("c", 3, 0, 4)];
        let p = plan(6, me.clone(), others.clone(), Placement::Spread);
        assert_eq!(counts(&p), vec![("a", 2), ("c", 2), ("b", 2)]);
        let p = plan(7, me.clone(), others.clone(), Placement::Spread);
        assert_eq!(counts(&p), vec![("a", 3), ("c", 2), ("b", 2)]);
        let p = plan(2, me, others, Placement::Spread);
        assert_eq!(counts(&p), vec![("a", 1), ("c", 1)]);
    }

    #[test]
    fn equal_load_is_ordered_by_listeners_then_name() {
        let me = node("z", 1, 0, 0);
        let others = vec![node("c", 3, 0, 1), node("b", 2, 0, 1), node("d", 4, 0, 0)];
        let p = plan(4, me, others, Placement::Spread);
        assert_eq!(counts(&p), vec![("z", 1), ("d", 1), ("b", 1), ("c", 1)]);
    }

    #[test]
    fn pack_one_node_or_one_connection_stays_on_the_holder() {
        let me = node("a", 1, 0, 0);
        let others = vec![node("b", 2, 0, 0)];
        assert_eq!(
            counts(&plan(5, me.clone(), others.clone(), Placement::Pack)),
            vec![("a", 5)]
        );
        assert_eq!(
            counts(&plan(1, me.clone(), others, Placement::Spread)),
            vec![("a", 1)]
        );
        assert_eq!(
            counts(&plan(4, me, Vec::new(), Placement::Spread)),
            vec![("a", 4)]
        );
    }

    #[test]
    fn every_listener_is_placed_exactly_once() {
        for n in 1..40 {
            for k in 0..6 {
                let others = (0..k).map(|i| node(&format!("n{i}"), i, 0, 0)).collect();
                let p = plan(n, node("me", 99, 0, 0), others, Placement::Spread);
                assert_eq!(p.iter().map(|s| s.count).sum::<usize>(), n);
                assert!(p.iter().all(|s| s.count > 0));
                assert_eq!(p[0].node, "me");
            }
        }
    }
}
