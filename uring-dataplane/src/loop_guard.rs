//! Tunnel loops between gateways. If a session's receiver is another
//! gateway's outbound listener whose target is this gateway's inbound
//! listener, every connection comes back as a new one, without end.
//!
//! Each inbound connection this data plane opens to a receiver registers
//! its local address here. An outbound gateway puts the address its
//! instrument connected from into the preamble (`FLAG_ORIGIN`); when that
//! address is one of ours, the "instrument" was this gateway itself: the
//! connection is refused as a loop before a second one is made.
//!
//! Shared by all workers of one `s2ds`: a set behind a mutex, touched once
//! per data connection set up, never per byte.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// Local addresses of this data plane's connections to receivers.
#[derive(Debug, Default)]
pub struct LoopGuard {
    addrs: Mutex<HashSet<SocketAddr>>,
}

/// One registered address; unregistered when dropped (with its connection).
#[derive(Debug)]
pub struct Registered {
    guard: Arc<LoopGuard>,
    addr: SocketAddr,
}

impl LoopGuard {
    /// Notes a connection to a receiver from `addr`.
    pub fn register(self: &Arc<Self>, addr: SocketAddr) -> Registered {
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
    pub fn is_own(&self, origin: SocketAddr) -> bool {
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
        let a: SocketAddr = ([127, 0, 0, 1], 40000).into();
        assert!(!g.is_own(a));
        let r = g.register(a);
        assert!(g.is_own(a));
        assert!(!g.is_own(([127, 0, 0, 1], 40001).into()));
        drop(r);
        assert!(!g.is_own(a));
    }
}
