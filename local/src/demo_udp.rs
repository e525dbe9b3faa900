//! `s2uc demo --udp`: the demo's datagram variant. One sender per
//! instrument-side listener (one UDP flow each) sends numbered datagrams
//! through the tunnel; the receiver checks that each arrives whole, intact
//! and in order within its flow. The senders keep a bounded number of
//! datagrams in flight (UDP has no flow control of its own; the gateways
//! drop what a tunnel cannot carry), so every datagram must arrive.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::payload::{Digest, Generator};

/// Datagram size: an Ethernet frame's worth (what detectors commonly send).
pub const DATAGRAM: usize = 1400;
/// Header: flow (u64), sequence number (u64), checksum of the rest (u64).
const HEADER: usize = 24;
/// Most datagrams in flight per flow.
const WINDOW: u64 = 32;
/// Receive-buffer bytes a queued datagram of [`DATAGRAM`] bytes takes, with
/// the kernel's overhead and a margin.
const QUEUED_COST: usize = 2560;

fn datagram(flow: u64, seq: u64) -> Vec<u8> {
    let mut d = vec![0u8; DATAGRAM];
    Generator::new(flow << 40 | seq).fill(&mut d[HEADER..]);
    let mut digest = Digest::default();
    digest.update(&d[HEADER..]);
    d[..8].copy_from_slice(&flow.to_le_bytes());
    d[8..16].copy_from_slice(&seq.to_le_bytes());
    d[16..24].copy_from_slice(&digest.value().1.to_le_bytes());
    d
}

fn field(d: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[at..at + 8]);
    u64::from_le_bytes(b)
}

/// What the demo saw.
#[derive(Debug)]
pub struct Outcome {
    /// Datagrams that arrived intact and in order.
    pub datagrams: u64,
    /// How long it took.
    pub elapsed: Duration,
}

/// Sends `per_flow` datagrams through each of `entries` to the receiver
/// bound on `receiver`, checking every one.
pub fn run(entries: &[SocketAddr], receiver: UdpSocket, per_flow: u64) -> anyhow::Result<Outcome> {
    receiver.set_read_timeout(Some(Duration::from_secs(10)))?;
    let flows = entries.len();
    // The flows together never have more in flight than the receiver's
    // buffer holds (the kernel caps the size asked at net.core.rmem_max),
    // so the demo loses nothing to its own receiver.
    let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&receiver, 4 << 20);
    let buffer = rustix::net::sockopt::socket_recv_buffer_size(&receiver).unwrap_or(212_992);
    let window = ((buffer / QUEUED_COST) as u64 / flows.max(1) as u64).clamp(1, WINDOW);
    let got: Arc<Vec<AtomicU64>> = Arc::new((0..flows).map(|_| AtomicU64::new(0)).collect());
    let total = per_flow * flows as u64;
    let check_got = got.clone();
    let check = std::thread::spawn(move || -> anyhow::Result<u64> {
        let mut buf = vec![0u8; 65_536];
        for _ in 0..total {
            let n = receiver
                .recv(&mut buf)
                .context("a datagram did not arrive within 10 s")?;
            let d = &buf[..n];
            if n != DATAGRAM {
                bail!("a datagram of {n} bytes arrived; {DATAGRAM} were sent (merged or split)");
            }
            let (flow, seq) = (field(d, 0), field(d, 8));
            let Some(expected) = check_got.get(flow as usize) else {
                bail!("a datagram of an unknown flow {flow} arrived");
            };
            if seq != expected.load(Ordering::Acquire) {
                bail!(
                    "flow {flow}: datagram {seq} arrived where {} was due",
                    expected.load(Ordering::Acquire)
                );
            }
            if d != datagram(flow, seq).as_slice() {
                bail!("flow {flow}: datagram {seq} arrived damaged");
            }
            expected.store(seq + 1, Ordering::Release);
        }
        Ok(total)
    });
    let started = Instant::now();
    let senders: Vec<_> = entries
        .iter()
        .enumerate()
        .map(|(flow, &entry)| {
            let got = got.clone();
            std::thread::spawn(move || -> std::io::Result<()> {
                let socket = UdpSocket::bind("127.0.0.1:0")?;
                for seq in 0..per_flow {
                    let deadline = Instant::now() + Duration::from_secs(15);
                    while seq >= got[flow].load(Ordering::Acquire) + window {
                        if Instant::now() > deadline {
                            return Ok(()); // the checker reports what is missing
                        }
                        std::thread::sleep(Duration::from_micros(20));
                    }
                    socket.send_to(&datagram(flow as u64, seq), entry)?;
                }
                Ok(())
            })
        })
        .collect();
    for s in senders {
        s.join()
            .map_err(|_| anyhow::anyhow!("sender thread panicked"))?
            .context("sending datagrams into the tunnel")?;
    }
    let datagrams = check
        .join()
        .map_err(|_| anyhow::anyhow!("receiver thread panicked"))??;
    Ok(Outcome {
        datagrams,
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_are_checked_on_a_direct_path() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = receiver.local_addr().unwrap();
        let out = run(&[to, to], receiver, 500).unwrap();
        assert_eq!(out.datagrams, 1000);
    }
}
