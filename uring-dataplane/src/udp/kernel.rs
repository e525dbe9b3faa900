//! Datagrams the kernel dropped before `s2ds` could take them: a UDP
//! socket's receive buffer was full (a burst faster than the UDP thread, or
//! `net.core.rmem_max` too small). The kernel counts them per socket in
//! `/proc/net/udp` and `/proc/net/udp6` (the `drops` column), which is read
//! here by the sockets' inode numbers.

use std::collections::HashMap;
use std::os::fd::AsFd;

/// The kernel's drop counter of each UDP socket of this network namespace, by inode.
pub(crate) fn drops_by_inode() -> HashMap<u64, u64> {
    let mut all = HashMap::new();
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            parse(&text, &mut all);
        }
    }
    all
}

/// Adds the rows of one table: `inode` is the 10th column, `drops` the 13th.
fn parse(table: &str, into: &mut HashMap<u64, u64>) {
    for row in table.lines().skip(1) {
        let cols: Vec<&str> = row.split_whitespace().collect();
        let (Some(inode), Some(drops)) = (cols.get(9), cols.get(12)) else {
            continue;
        };
        if let (Ok(inode), Ok(drops)) = (inode.parse::<u64>(), drops.parse::<u64>()) {
            *into.entry(inode).or_default() += drops;
        }
    }
}

/// The inode of a socket (`None` if it cannot be read).
pub(crate) fn inode(fd: impl AsFd) -> Option<u64> {
    rustix::fs::fstat(fd).ok().map(|st| st.st_ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_are_read_by_inode() {
        let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
  187: 0100007F:9DA3 0100007F:870D 01 00000000:00000000 00:00000000 00000000     0        0 5725130 2 000000001718ab05 0\n\
  239: 0100007F:9DD7 00000000:0000 07 00000000:00034000 00:00000000 00000000     0        0 5725688 2 00000000c6193f50 1234\n\
  garbage\n";
        let mut m = HashMap::new();
        parse(table, &mut m);
        assert_eq!(m.get(&5725688), Some(&1234));
        assert_eq!(m.get(&5725130), Some(&0));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn a_live_socket_is_found() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let ino = inode(&s).unwrap();
        assert_eq!(drops_by_inode().get(&ino), Some(&0));
    }
}
