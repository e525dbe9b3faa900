//! Tunnel loops between gateways. If a session's receiver is another
//! gateway's outbound listener whose target is this gateway's inbound
//! listener, every connection comes back as a new one, without end.
//!
//! Each inbound connection this data plane opens to a receiver registers
//! its two ends here (local and remote address). An outbound gateway puts
//! the two ends of its instrument's connection into the preamble
//! (`FLAG_ORIGIN`); when they are the two ends of one of ours, the
//! "instrument" was this gateway itself: the connection is refused as a
//! loop before a second one is made. Both ends must match: on one host a
//! local port alone can be in use by several connections at once.
//!
//! Shared by all workers of one `s2ds`: a set behind a mutex, touched once
//! per data connection set up, never per byte.

use std::collections::HashSet;

use scistream_protocol::preamble::Origin;
use std::sync::{Arc, Mutex, PoisonError};

/// Local addresses of this data plane's connections to receivers.
#[derive(Debug, Default)]
pub struct LoopGuard {
    addrs: Mutex<HashSet<Origin>>,
}

/// One registered address; unregistered when dropped (with its connection).
#[derive(Debug)]
pub struct Registered {
    guard: Arc<LoopGuard>,
    addr: Origin,
}

impl LoopGuard {
    /// Notes a connection to a receiver (`from` this host `to` the receiver).
    pub fn register(self: &Arc<Self>, addr: Origin) -> Registered {
        self.addrs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(addr);
        Registered {
            guard: self.clone(),
            addr,
        }
    }

    /// Whether `origin` is one of this data plane's connections to a receiver.
    pub fn is_own(&self, origin: Origin) -> bool {
        self.addrs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&origin)
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.guard
            .addrs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_own_while_registered() {
        let g = Arc::new(LoopGuard::default());
        let end = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let a = Origin::new(end(40000), end(5100)).unwrap();
        assert!(!g.is_own(a));
        let r = g.register(a);
        assert!(g.is_own(a));
        // The same local port towards another listener is another connection.
        assert!(!g.is_own(Origin::new(end(40000), end(5101)).unwrap()));
        drop(r);
        assert!(!g.is_own(a));
    }
}
