//! Forwarding one connection through a user-space buffer (`read` then
//! `write`), the alternative to [`crate::relay::SpliceRelay`]. Kept so the
//! two can be measured side by side (`s2ds --forward copy`); buffers are
//! allocated on a direction's first data, so an idle connection costs none.

use std::os::fd::OwnedFd;

use rustix::io::Errno;
use rustix::net::Shutdown;

use crate::relay::{RelayError, Turn};

const ROUNDS_PER_TURN: usize = 16;

#[derive(Debug)]
struct Direction {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
    shut: bool,
    delivered: u64,
}

/// A connection forwarded by copying.
#[derive(Debug)]
pub struct CopyRelay {
    size: usize,
    to_target: Direction,
    to_client: Direction,
}

impl CopyRelay {
    /// A relay whose directions buffer up to `size` bytes each.
    pub fn new(size: usize) -> Self {
        let dir = || Direction {
            buf: Vec::new(),
            start: 0,
            end: 0,
            eof: false,
            shut: false,
            delivered: 0,
        };
        CopyRelay {
            size,
            to_target: dir(),
            to_client: dir(),
        }
    }

    /// Bytes delivered (to the target, to the client).
    pub fn delivered(&self) -> (u64, u64) {
        (self.to_target.delivered, self.to_client.delivered)
    }

    /// Moves whatever can move now, in both directions.
    pub fn turn(&mut self, client: &OwnedFd, target: &OwnedFd) -> Result<Turn, RelayError> {
        let a = pump(
            &mut self.to_target,
            self.size,
            client,
            target,
            ("client", "target"),
        )?;
        let b = pump(
            &mut self.to_client,
            self.size,
            target,
            client,
            ("target", "client"),
        )?;
        Ok(if self.to_target.shut && self.to_client.shut {
            Turn::Finished
        } else if a == Turn::MoreWork || b == Turn::MoreWork {
            Turn::MoreWork
        } else {
            Turn::Idle
        })
    }
}

fn pump(
    d: &mut Direction,
    size: usize,
    src: &OwnedFd,
    dst: &OwnedFd,
    sides: (&'static str, &'static str),
) -> Result<Turn, RelayError> {
    if d.shut {
        return Ok(Turn::Idle);
    }
    for _ in 0..ROUNDS_PER_TURN {
        let mut progressed = false;
        if !d.eof && d.end < size {
            if d.buf.is_empty() {
                d.buf = vec![0u8; size];
            }
            match rustix::io::read(src, &mut d.buf[d.end..]) {
                Ok(0) => {
                    d.eof = true;
                    progressed = true;
                }
                Ok(n) => {
                    d.end += n;
                    progressed = true;
                }
                Err(Errno::AGAIN | Errno::INTR) => {}
                Err(e) => {
                    return Err(RelayError::Read {
                        side: sides.0,
                        source: e.into(),
                    });
                }
            }
        }
        if d.start < d.end {
            match rustix::io::write(dst, &d.buf[d.start..d.end]) {
                Ok(n) => {
                    d.start += n;
                    d.delivered += n as u64;
                    progressed |= n > 0;
                    if d.start == d.end {
                        (d.start, d.end) = (0, 0);
                    }
                }
                Err(Errno::AGAIN | Errno::INTR) => {}
                Err(e) => {
                    return Err(RelayError::Write {
                        side: sides.1,
                        source: e.into(),
                    });
                }
            }
        }
        if d.eof && d.start == d.end {
            match rustix::net::shutdown(dst, Shutdown::Write) {
                Ok(()) | Err(Errno::NOTCONN) => {}
                Err(e) => {
                    return Err(RelayError::Write {
                        side: sides.1,
                        source: e.into(),
                    });
                }
            }
            d.shut = true;
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
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    fn pair() -> (OwnedFd, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (ours, _) = l.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        (OwnedFd::from(ours), peer)
    }

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
