//! Kernel TLS: attaching the `tls` ULP, installing keys, and the two calls
//! that carry TLS record types (sending an alert, receiving a non-data
//! record). The crypto-info structures themselves come from the `ktls`
//! crate (`CryptoInfo::from_rustls`), not from here.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

/// `SOL_TLS` (linux/socket.h).
const SOL_TLS: libc::c_int = 282;
/// `TLS_TX`, `TLS_RX` (linux/tls.h).
const TLS_TX: libc::c_int = 1;
const TLS_RX: libc::c_int = 2;
/// `TLS_SET_RECORD_TYPE`, `TLS_GET_RECORD_TYPE` (linux/tls.h).
const TLS_SET_RECORD_TYPE: libc::c_int = 1;
const TLS_GET_RECORD_TYPE: libc::c_int = 2;

/// Which direction's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyDirection {
    /// Sending.
    Tx,
    /// Receiving.
    Rx,
}

/// Attaches the kernel's `tls` upper-layer protocol to a connected TCP
/// socket. `ENOENT` means the kernel has no kTLS (CONFIG_TLS off, or the
/// `tls` module not loaded).
pub fn attach_ulp(fd: impl AsFd) -> io::Result<()> {
    let name = b"tls";
    // SAFETY: `fd` is a live socket borrowed for the call; the option value
    // points to 3 bytes on our stack and that length is passed; the kernel
    // copies the name and keeps no pointer.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            libc::SOL_TCP,
            libc::TCP_ULP,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Installs keys for one direction.
pub fn install(fd: impl AsFd, dir: KeyDirection, info: &ktls::CryptoInfo) -> io::Result<()> {
    let opt = match dir {
        KeyDirection::Tx => TLS_TX,
        KeyDirection::Rx => TLS_RX,
    };
    // SAFETY: `info.as_ptr()` points to the crypto-info struct owned by
    // `info`, of `info.size()` bytes, alive for the call; the kernel copies it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            SOL_TLS,
            opt,
            info.as_ptr(),
            info.size() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A cmsg buffer holding one byte of data, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct OneByteCmsg {
    bytes: [u8; 32],
}

/// Sends one record of `record_type` (e.g. 21, an alert) with `payload`.
pub fn send_record(fd: BorrowedFd<'_>, record_type: u8, payload: &[u8]) -> io::Result<usize> {
    let mut control = OneByteCmsg { bytes: [0; 32] };
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // SAFETY: every pointer in `msg` points to locals alive for the whole
    // call (`iov`, `control`); CMSG_SPACE(1) (24 on 64-bit Linux) fits in the
    // 32 aligned bytes of `control`; CMSG_FIRSTHDR/CMSG_DATA stay inside it;
    // the kernel only reads from `payload`.
    let rc = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.bytes.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(1) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = SOL_TLS;
        (*cmsg).cmsg_type = TLS_SET_RECORD_TYPE;
        (*cmsg).cmsg_len = libc::CMSG_LEN(1) as _;
        *libc::CMSG_DATA(cmsg) = record_type;
        libc::sendmsg(fd.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
    };
    if rc >= 0 {
        Ok(rc as usize)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Receives one record into `buf`; returns its type (23 for application
/// data) and length. Used when `splice` stops at a non-data record.
pub fn recv_record(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(u8, usize)> {
    let mut control = OneByteCmsg { bytes: [0; 32] };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut record_type = 23u8;
    // SAFETY: as in `send_record`; the kernel writes at most `buf.len()`
    // bytes into `buf` and at most `msg_controllen` bytes into `control`;
    // the cmsg walk only reads headers the kernel wrote, within that length.
    let rc = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.bytes.as_mut_ptr().cast();
        msg.msg_controllen = control.bytes.len() as _;
        let rc = libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT);
        if rc >= 0 {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == SOL_TLS && (*cmsg).cmsg_type == TLS_GET_RECORD_TYPE {
                    record_type = *libc::CMSG_DATA(cmsg);
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        rc
    };
    if rc >= 0 {
        Ok((record_type, rc as usize))
    } else {
        Err(io::Error::last_os_error())
    }
}
