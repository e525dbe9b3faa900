//! Forwarding one connection through a user-space buffer (`read` then
//! `write`), the alternative to [`super::SpliceRelay`]. Kept so the
//! two can be measured side by side (`s2ds --forward copy`); buffers are
//! allocated on a direction's first data, so an idle connection costs none.

use std::os::fd::OwnedFd;

use super::{Direction, Directions, ROUNDS_PER_TURN, RelayError, Turn, would_block};

/// A direction's buffer: `buf[start..end]` read, not yet written.
#[derive(Debug, Default)]
pub(crate) struct Buffer {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// A connection forwarded by copying.
#[derive(Debug)]
pub struct CopyRelay {
    size: usize,
    directions: Directions<Buffer>,
}

impl CopyRelay {
    /// A relay whose directions buffer up to `size` bytes each.
    pub fn new(size: usize) -> Self {
        CopyRelay {
            size,
            directions: Directions::new(Buffer::default),
        }
    }

    /// Bytes delivered (to the target, to the client).
    pub fn delivered(&self) -> (u64, u64) {
        self.directions.delivered()
    }

    /// Moves whatever can move now, in both directions.
    pub fn turn(&mut self, client: &OwnedFd, target: &OwnedFd) -> Result<Turn, RelayError> {
        let size = self.size;
        self.directions
            .turn(client, target, |d, src, dst| pump(d, size, src, dst))
    }
}

/// Runs one direction until it would block or its budget is spent.
fn pump(
    d: &mut Direction<Buffer>,
    size: usize,
    src: &OwnedFd,
    dst: &OwnedFd,
) -> Result<Turn, RelayError> {
    if d.shut {
        return Ok(Turn::Idle);
    }
    for _ in 0..ROUNDS_PER_TURN {
        let mut progressed = false;
        let b = &mut d.buf;
        if !d.eof && b.end < size {
            if b.buf.is_empty() {
                b.buf = vec![0u8; size];
            }
            match rustix::io::read(src, &mut b.buf[b.end..]) {
                Ok(0) => {
                    d.eof = true;
                    progressed = true;
                }
                Ok(n) => {
                    b.end += n;
                    progressed = true;
                }
                Err(e) if would_block(e) => {}
                Err(e) => return Err(d.read_error(e)),
            }
        }
        let b = &mut d.buf;
        if b.start < b.end {
            match rustix::io::write(dst, &b.buf[b.start..b.end]) {
                Ok(n) => {
                    b.start += n;
                    d.delivered += n as u64;
                    progressed |= n > 0;
                    if b.start == b.end {
                        (b.start, b.end) = (0, 0);
                    }
                }
                Err(e) if would_block(e) => {}
                Err(e) => return Err(d.write_error(e)),
            }
        }
        if d.eof && d.buf.start == d.buf.end {
            d.shut_destination(dst)?;
            return Ok(Turn::Idle);
        }
        if !progressed {
            return Ok(Turn::Idle);
        }
    }
    Ok(Turn::MoreWork)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::test_pair as pair;
    use std::io::{Read, Write};
    use std::time::Duration;

    #[test]
    fn copies_and_half_closes() {
        let (client, mut cp) = pair();
        let (target, mut tp) = pair();
        let mut r = CopyRelay::new(4096);
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let writer = std::thread::spawn(move || {
            cp.write_all(&data).unwrap();
            cp.shutdown(std::net::Shutdown::Write).unwrap();
            cp
        });
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            tp.read_to_end(&mut got).unwrap();
            (got, tp)
        });
        let mut cp = loop {
            let _ = r.turn(&client, &target).unwrap();
            if writer.is_finished() && r.delivered().0 == 100_000 {
                let _ = r.turn(&client, &target).unwrap();
                break writer.join().unwrap();
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let (got, mut tp) = reader.join().unwrap();
        assert_eq!(got.len(), 100_000);
        assert!(got.iter().enumerate().all(|(i, b)| *b == i as u8));
        tp.write_all(b"ok").unwrap();
        tp.shutdown(std::net::Shutdown::Write).unwrap();
        let mut back = Vec::new();
        while r.turn(&client, &target).unwrap() != Turn::Finished {
            std::thread::sleep(Duration::from_millis(1));
        }
        cp.read_to_end(&mut back).unwrap();
        assert_eq!(back, b"ok");
    }
}
