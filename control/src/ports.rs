//! Data-listener port allocation.
//!
//! A port is handed out only after binding a listening socket on it
//! succeeded, so a port held by any other process is skipped, and the
//! allocator's own bookkeeping (under one lock) rules out double allocation
//! under concurrent requests. Allocation continues after the last port
//! handed out, so a port just freed is not reused at once (clients that
//! still hold its address get a refusal, not someone else's stream).

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::ops::RangeInclusive;

use scistream_protocol::Role;
use socket2::{Domain, Protocol, Socket, Type};

/// Backlog of each data listener: connections queue here while the data
/// plane is (re)starting.
const LISTEN_BACKLOG: i32 = 1024;

/// Receive buffer asked for each UDP socket.
const UDP_RCVBUF: usize = 8 << 20;

/// Allocation failures.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// Not enough free ports.
    #[error(
        "only {free} of the {wanted} ports asked for are free in the port range {first}-{last}; \
         release unused sessions or ask for fewer connections"
    )]
    Exhausted {
        /// Ports asked for.
        wanted: usize,
        /// Ports that could be bound.
        free: usize,
        /// Range start.
        first: u16,
        /// Range end.
        last: u16,
    },
    /// The listener address cannot be bound at all (not an address of this host, …).
    #[error("cannot bind data listeners on {ip}: {source}; check --listener-ip")]
    Bind {
        /// The configured listener address.
        ip: IpAddr,
        /// The bind error.
        source: io::Error,
    },
}

/// Hands out ports of a range, each with its bound listening socket.
#[derive(Debug)]
pub struct PortAllocator {
    ip: IpAddr,
    range: RangeInclusive<u16>,
    in_use: BTreeSet<u16>,
    next: u16,
}

/// A port handed out, with its sockets.
#[derive(Debug)]
pub struct BoundPort {
    /// The TCP socket (blocking; the data plane sets what it needs):
    /// listening, except on the instrument side of a UDP-only session,
    /// where it only holds the port number.
    pub listener: TcpListener,
    /// The UDP socket on the same port, when the listener takes datagrams.
    pub udp: Option<UdpSocket>,
    /// Its address.
    pub addr: SocketAddr,
}

/// Which sockets a listener needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sockets {
    /// The TCP socket listens (else it is only bound).
    pub listen_tcp: bool,
    /// A UDP socket is bound on the same port.
    pub udp: bool,
}

impl Sockets {
    /// TCP only, listening: SciStream's listeners.
    pub const TCP: Sockets = Sockets {
        listen_tcp: true,
        udp: false,
    };

    /// What a session's listeners need. UDP enters the tunnel at the
    /// instrument side (`CONS`); the inbound side (`PROD`) always listens
    /// on TCP: the tunnel's connections, UDP flows included, are TCP.
    pub fn for_session(role: Role, protocol: scistream_protocol::Protocol) -> Sockets {
        match role {
            Role::Prod => Sockets::TCP,
            Role::Cons => Sockets {
                listen_tcp: protocol.carries_tcp(),
                udp: protocol.carries_udp(),
            },
        }
    }
}

fn bind_port(addr: SocketAddr, sockets: Sockets) -> io::Result<BoundPort> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    if sockets.listen_tcp {
        socket.listen(LISTEN_BACKLOG)?;
    }
    let udp = if sockets.udp {
        let u = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if addr.is_ipv6() {
            u.set_only_v6(true)?;
        }
        u.bind(&addr.into())?;
        // Room for bursts while the data plane takes datagrams off: the
        // kernel caps this at net.core.rmem_max (`s2tune` shows it), and
        // what overflows it is lost before any counter sees it.
        let _ = u.set_recv_buffer_size(UDP_RCVBUF);
        Some(u.into())
    } else {
        None
    };
    Ok(BoundPort {
        listener: socket.into(),
        udp,
        addr,
    })
}

impl PortAllocator {
    /// An allocator for `range` on `ip`.
    pub fn new(ip: IpAddr, range: RangeInclusive<u16>) -> Self {
        let next = *range.start();
        PortAllocator {
            ip,
            range,
            in_use: BTreeSet::new(),
            next,
        }
    }

    /// Number of ports in the range.
    pub fn capacity(&self) -> usize {
        usize::from(self.range.end() - self.range.start()) + 1
    }

    /// Ports currently handed out.
    pub fn in_use(&self) -> usize {
        self.in_use.len()
    }

    /// Binds `n` listeners on free ports (free for TCP, and for UDP too
    /// when `sockets.udp`), or none at all.
    pub fn allocate(&mut self, n: usize, sockets: Sockets) -> Result<Vec<BoundPort>, PortError> {
        let (first, last) = (*self.range.start(), *self.range.end());
        let mut got = Vec::with_capacity(n);
        let start = self.next;
        let mut port = start;
        for _ in 0..self.capacity() {
            if got.len() == n {
                break;
            }
            let candidate = port;
            port = if port == last { first } else { port + 1 };
            if self.in_use.contains(&candidate) {
                continue;
            }
            let addr = SocketAddr::new(self.ip, candidate);
            match bind_port(addr, sockets) {
                Ok(bound) => got.push(bound),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::AddrInUse | io::ErrorKind::PermissionDenied
                    ) =>
                {
                    continue;
                }
                Err(source) => {
                    return Err(PortError::Bind {
                        ip: self.ip,
                        source,
                    });
                }
            }
        }
        if got.len() < n {
            return Err(PortError::Exhausted {
                wanted: n,
                free: got.len(),
                first,
                last,
            });
        }
        self.next = port;
        self.in_use.extend(got.iter().map(|b| b.addr.port()));
        Ok(got)
    }

    /// Marks a recovered session's port as handed out.
    pub fn claim(&mut self, port: u16) {
        self.in_use.insert(port);
    }

    /// Binds a listener again on an address a recovered session had.
    pub fn rebind(addr: SocketAddr, sockets: Sockets) -> io::Result<BoundPort> {
        bind_port(addr, sockets)
    }

    /// Returns ports to the pool. The caller closes the sockets.
    pub fn free(&mut self, ports: impl IntoIterator<Item = u16>) {
        for p in ports {
            self.in_use.remove(&p);
        }
    }
}

/// `len` consecutive ports that are free on 127.0.0.1 right now (tests).
#[cfg(test)]
pub(crate) fn free_range(len: u16) -> RangeInclusive<u16> {
    // Probing from an ephemeral port.
    loop {
        let probe = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let start = probe.local_addr().map(|a| a.port()).unwrap_or(0);
        drop(probe);
        if start < 1024 || start > 65535 - len {
            continue;
        }
        let end = start + len - 1;
        if (start..=end).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return start..=end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn a_port_taken_for_udp_elsewhere_is_skipped_when_udp_is_wanted() {
        let range = free_range(3);
        let first = *range.start();
        let squatter = UdpSocket::bind(("127.0.0.1", first)).unwrap();
        let mut a = PortAllocator::new(IpAddr::V4(Ipv4Addr::LOCALHOST), range.clone());
        let both = Sockets {
            listen_tcp: true,
            udp: true,
        };
        let got = a.allocate(1, both).unwrap();
        assert_eq!(got[0].addr.port(), first + 1, "UDP port {first} is taken");
        assert!(got[0].udp.is_some());
        let udp_only = Sockets {
            listen_tcp: false,
            udp: true,
        };
        let got = a.allocate(1, udp_only).unwrap();
        let tcp = std::net::TcpStream::connect(got[0].addr);
        assert!(tcp.is_err(), "a UDP-only listener refuses TCP clients");
        drop(squatter);
    }

    #[test]
    fn allocates_frees_and_skips_ports_held_elsewhere() {
        let range = free_range(4);
        let first = *range.start();
        let squatter = TcpListener::bind(("127.0.0.1", first + 1)).unwrap();
        let mut a = PortAllocator::new(IpAddr::V4(Ipv4Addr::LOCALHOST), range.clone());
        let got = a.allocate(2, Sockets::TCP).unwrap();
        let ports: Vec<u16> = got.iter().map(|b| b.addr.port()).collect();
        assert_eq!(
            ports,
            vec![first, first + 2],
            "the squatted port is skipped"
        );
        // Only one left that can be bound: asking for two fails and leaks nothing.
        let err = a.allocate(2, Sockets::TCP).unwrap_err();
        assert!(
            matches!(
                err,
                PortError::Exhausted {
                    wanted: 2,
                    free: 1,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(a.in_use(), 2);
        drop(squatter);
        drop(got);
        a.free(ports);
        assert_eq!(a.in_use(), 0);
        assert_eq!(a.allocate(4, Sockets::TCP).unwrap().len(), 4);
    }

    #[test]
    fn bad_listener_ip_is_reported_not_skipped() {
        let mut a = PortAllocator::new("192.0.2.1".parse().unwrap(), free_range(2));
        assert!(matches!(
            a.allocate(1, Sockets::TCP),
            Err(PortError::Bind { .. })
        ));
    }
}
