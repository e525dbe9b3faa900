//! A UDP source and sink for measuring datagram forwarding: every datagram
//! carries its sequence number and a checksum of its payload, so the sink
//! counts loss, reordering, duplicates and corruption, not only bytes.
//!
//! ```text
//! datagram  seq u64 (LE) | fnv-1a of the rest u64 (LE) | payload
//! ```

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// Bytes of the header every datagram starts with.
pub const HEADER: usize = 16;

/// Largest datagram UDP carries over IPv4 (65 535 minus the IP and UDP headers).
pub const MAX_SIZE: usize = 65_507;

/// Checks a datagram size the user gave.
pub fn check_size(size: usize) -> Result<usize, String> {
    if size < HEADER {
        return Err(format!(
            "datagrams of {size} bytes cannot hold the {HEADER}-byte header (sequence number and checksum)"
        ));
    }
    if size > MAX_SIZE {
        return Err(format!(
            "datagrams of {size} bytes are impossible: UDP carries at most {MAX_SIZE} bytes over IPv4"
        ));
    }
    Ok(size)
}

fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Writes datagram `seq` into `buf` (its whole length).
pub fn fill(buf: &mut [u8], seq: u64) {
    for (i, b) in buf[HEADER..].iter_mut().enumerate() {
        *b = (seq as usize).wrapping_add(i) as u8;
    }
    let sum = fnv(&buf[HEADER..]);
    buf[..8].copy_from_slice(&seq.to_le_bytes());
    buf[8..16].copy_from_slice(&sum.to_le_bytes());
}

/// What a source sent.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sent {
    /// Datagrams.
    pub datagrams: u64,
    /// Bytes.
    pub bytes: u64,
    /// How long it sent.
    pub elapsed: Duration,
}

/// Sends `size`-byte datagrams to `to` at `rate_bps` bits per second for
/// `duration` (paced every millisecond; 0 = as fast as the socket takes
/// them).
pub fn send(
    to: SocketAddr,
    size: usize,
    rate_bps: f64,
    duration: Duration,
) -> std::io::Result<Sent> {
    let socket = UdpSocket::bind(if to.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" })?;
    let _ = socket2::SockRef::from(&socket).set_send_buffer_size(4 << 20);
    let mut buf = vec![0u8; size];
    let started = Instant::now();
    let mut sent = Sent::default();
    let per_second = rate_bps / (size as f64 * 8.0);
    while started.elapsed() < duration {
        let due = if rate_bps > 0.0 {
            (started.elapsed().as_secs_f64() * per_second) as u64
        } else {
            sent.datagrams + 64
        };
        while sent.datagrams < due {
            fill(&mut buf, sent.datagrams);
            match socket.send_to(&buf, to) {
                Ok(_) => {
                    sent.datagrams += 1;
                    sent.bytes += size as u64;
                }
                // ENOBUFS and the like: the host is saturated; count it as sent and lost.
                Err(e) if e.raw_os_error() == Some(105) => sent.datagrams += 1,
                Err(e) => return Err(e),
            }
        }
        if rate_bps > 0.0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    sent.elapsed = started.elapsed();
    Ok(sent)
}

/// What a sink received.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Received {
    /// Distinct datagrams that arrived intact.
    pub datagrams: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Arrived after one with a higher sequence number.
    pub reordered: u64,
    /// Arrived more than once.
    pub duplicates: u64,
    /// Wrong length for its header or wrong checksum.
    pub corrupt: u64,
    /// Highest sequence number seen, plus one (0: none).
    pub highest: u64,
}

impl Received {
    /// Datagrams lost out of `sent` (or, without it, out of `highest`).
    pub fn lost(&self, sent: Option<u64>) -> u64 {
        sent.unwrap_or(self.highest).saturating_sub(self.datagrams)
    }
}

/// Receives on `socket` until `quiet` passes with nothing (after the
/// first datagram), or `limit` passes in all.
pub fn receive(socket: &UdpSocket, quiet: Duration, limit: Duration) -> std::io::Result<Received> {
    let _ = socket2::SockRef::from(socket).set_recv_buffer_size(8 << 20);
    socket.set_read_timeout(Some(quiet))?;
    let started = Instant::now();
    let mut seen = Vec::<u64>::new();
    let mut r = Received::default();
    let mut buf = vec![0u8; 65_536];
    while started.elapsed() < limit {
        let n = match socket.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if r.highest > 0 || started.elapsed() > quiet * 4 {
                    break;
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        if n < HEADER
            || fnv(&buf[HEADER..n]) != u64::from_le_bytes(buf[8..16].try_into().unwrap_or_default())
        {
            r.corrupt += 1;
            continue;
        }
        let seq = u64::from_le_bytes(buf[..8].try_into().unwrap_or_default());
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= seen.len() {
            seen.resize(word + 1, 0);
        }
        if seen[word] & (1 << bit) != 0 {
            r.duplicates += 1;
            continue;
        }
        seen[word] |= 1 << bit;
        if seq + 1 < r.highest {
            r.reordered += 1;
        }
        r.highest = r.highest.max(seq + 1);
        r.datagrams += 1;
        r.bytes += n as u64;
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_reordering_and_corruption_are_counted() {
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = sink.local_addr().unwrap();
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut buf = vec![0u8; 100];
        for seq in [0u64, 1, 3, 2, 2, 5] {
            fill(&mut buf, seq);
            s.send_to(&buf, to).unwrap();
        }
        buf[50] ^= 1;
        s.send_to(&buf, to).unwrap();
        let r = receive(&sink, Duration::from_millis(300), Duration::from_secs(5)).unwrap();
        assert_eq!(
            (r.datagrams, r.highest, r.reordered, r.duplicates, r.corrupt),
            (5, 6, 1, 1, 1)
        );
        assert_eq!(r.lost(Some(6)), 1, "4 never came");
    }

    #[test]
    fn sizes_udp_cannot_carry_are_refused() {
        assert!(check_size(65_508).unwrap_err().contains("at most 65507"));
        assert!(check_size(8).is_err());
        assert_eq!(check_size(1400), Ok(1400));
    }
}
