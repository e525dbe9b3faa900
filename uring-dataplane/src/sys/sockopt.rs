//! Socket options rustix and socket2 do not cover.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// Sets `SO_MAX_PACING_RATE` (bytes per second; `u64::MAX` removes the cap).
/// The kernel paces this socket's sends to the rate (TCP's internal pacing,
/// or the `fq` qdisc), so nothing in user space touches the data path.
pub fn set_max_pacing_rate(fd: impl AsFd, bytes_per_second: u64) -> io::Result<()> {
    let fd = fd.as_fd();
    let value: u64 = bytes_per_second;
    // SAFETY: `fd` is a live descriptor borrowed for the call; the option
    // value points to a u64 on our stack and its exact size is passed, which
    // the kernel accepts for SO_MAX_PACING_RATE (64-bit values since 4.20,
    // read as 32 bits before). The kernel copies it and keeps no pointer.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MAX_PACING_RATE,
            (&raw const value).cast(),
            std::mem::size_of::<u64>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads `SO_MAX_PACING_RATE` (tests: the option set is the one read).
#[cfg(test)]
fn max_pacing_rate(fd: impl AsFd) -> io::Result<u64> {
    let fd = fd.as_fd();
    let mut value: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: as above; `value` and `len` are valid for writes of their
    // sizes for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MAX_PACING_RATE,
            (&raw mut value).cast(),
            &raw mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_rate_round_trips() {
        let s = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(s.local_addr().unwrap()).unwrap();
        set_max_pacing_rate(&c, 25_000_000).unwrap();
        assert_eq!(max_pacing_rate(&c).unwrap(), 25_000_000);
    }
}
