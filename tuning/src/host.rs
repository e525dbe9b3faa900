//! The host as `s2tune` sees it: sysctls under `PROC/sys`, devices under
//! `SYS`, and the probes that only the running kernel can answer.
//!
//! Everything read from files goes through a [`Root`], so tests run
//! `check` and `apply` against a synthetic tree; the real host
//! (`/proc`, `/sys`) is the default.

use std::io;
use std::path::{Path, PathBuf};

/// Where `/proc` and `/sys` are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    /// `/proc` (sysctls are under `sys/`).
    pub proc: PathBuf,
    /// `/sys`.
    pub sys: PathBuf,
}

impl Default for Root {
    fn default() -> Self {
        Root {
            proc: PathBuf::from("/proc"),
            sys: PathBuf::from("/sys"),
        }
    }
}

impl Root {
    /// A synthetic tree: `DIR/proc` and `DIR/sys`.
    pub fn under(dir: &Path) -> Root {
        Root {
            proc: dir.join("proc"),
            sys: dir.join("sys"),
        }
    }

    /// True for the real host.
    pub fn is_host(&self) -> bool {
        *self == Root::default()
    }

    /// The file of a sysctl (`net.core.rmem_max` → `PROC/sys/net/core/rmem_max`).
    pub fn sysctl_path(&self, name: &str) -> PathBuf {
        self.proc.join("sys").join(name.replace('.', "/"))
    }

    /// A sysctl's value, white space normalised (`4096\t131072\t6291456` →
    /// `4096 131072 6291456`); `None` when the host does not expose it.
    pub fn sysctl(&self, name: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.sysctl_path(name)).ok()?;
        Some(text.split_whitespace().collect::<Vec<_>>().join(" "))
    }

    /// A numeric sysctl (the first number of a vector).
    pub fn sysctl_u64(&self, name: &str) -> Option<u64> {
        self.sysctl(name)?.split_whitespace().next()?.parse().ok()
    }

    /// Writes a sysctl.
    pub fn set_sysctl(&self, name: &str, value: &str) -> io::Result<()> {
        std::fs::write(self.sysctl_path(name), format!("{value}\n"))
    }

    /// A file under `SYS`, trimmed.
    pub fn sys_file(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.sys.join(rel))
            .ok()
            .map(|s| s.trim().to_owned())
    }

    /// Entries of a directory under `SYS` (sorted names).
    pub fn sys_dir(&self, rel: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.sys.join(rel))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

/// Counts the CPUs in a list like `0-3,8-11`.
pub fn cpu_list_len(list: &str) -> Option<usize> {
    let mut n = 0;
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                n += b.checked_sub(a)? + 1;
            }
            None => {
                part.parse::<usize>().ok()?;
                n += 1;
            }
        }
    }
    Some(n)
}

/// A network interface.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// Its MTU.
    pub mtu: Option<u32>,
    /// The NUMA node of its device, when it has one.
    pub numa_node: Option<i32>,
}

/// What `check` looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// Sysctl values by name (absent: not exposed).
    pub sysctls: std::collections::BTreeMap<&'static str, Option<String>>,
    /// Ethernet interfaces backed by a device (not loopback, bridges, veths).
    pub interfaces: Vec<Interface>,
    /// Frequency governor of each CPU that exposes one.
    pub governors: Vec<String>,
    /// Online CPUs.
    pub cpus: Option<usize>,
    /// NUMA nodes.
    pub numa_nodes: Option<usize>,
    /// Kernel release (`6.1.0-18-amd64`).
    pub kernel: Option<String>,
    /// RLIMIT_NOFILE (soft, hard); `None` is unlimited.
    pub nofile: (Option<u64>, Option<u64>),
    /// RLIMIT_MEMLOCK (soft, hard); `None` is unlimited.
    pub memlock: (Option<u64>, Option<u64>),
    /// An io_uring ring as s2ds needs it could be set up (else why not).
    pub io_uring: Result<(), String>,
    /// The kernel's TLS offload, as s2ds probes it.
    pub ktls: scistream_dataplane::probe::KtlsSupport,
    /// The data channel's crypto provider and suite order as `s2ds --crypto
    /// auto` would choose them here, with the figures.
    pub crypto: String,
}

/// The sysctls `check` reads.
pub const SYSCTLS: &[&str] = &[
    "net.core.rmem_max",
    "net.core.wmem_max",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
    "net.ipv4.tcp_congestion_control",
    "net.ipv4.tcp_available_congestion_control",
    "net.core.default_qdisc",
    "net.ipv4.tcp_mtu_probing",
    "net.core.netdev_max_backlog",
    "kernel.io_uring_disabled",
];

fn limit(resource: rustix::process::Resource) -> (Option<u64>, Option<u64>) {
    let r = rustix::process::getrlimit(resource);
    (r.current, r.maximum)
}

impl Facts {
    /// Reads the facts of `root` and probes the running kernel.
    pub fn gather(root: &Root) -> Facts {
        let sysctls = SYSCTLS.iter().map(|&n| (n, root.sysctl(n))).collect();
        let interfaces = root
            .sys_dir("class/net")
            .into_iter()
            .filter(|name| {
                // Ethernet (type 1) with a device behind it: physical or
                // paravirtual NICs, not bridges, veths or ifbs.
                name != "lo"
                    && root.sys_file(&format!("class/net/{name}/type")).as_deref() == Some("1")
                    && root.sys.join(format!("class/net/{name}/device")).exists()
            })
            .map(|name| Interface {
                mtu: root
                    .sys_file(&format!("class/net/{name}/mtu"))
                    .and_then(|m| m.parse().ok()),
                numa_node: root
                    .sys_file(&format!("class/net/{name}/device/numa_node"))
                    .and_then(|m| m.parse().ok()),
                name,
            })
            .collect();
        let governors = root
            .sys_dir("devices/system/cpu")
            .iter()
            .filter(|c| {
                c.starts_with("cpu") && c[3..].chars().all(|ch| ch.is_ascii_digit()) && c.len() > 3
            })
            .filter_map(|c| {
                root.sys_file(&format!("devices/system/cpu/{c}/cpufreq/scaling_governor"))
            })
            .collect();
        let cpus = root
            .sys_file("devices/system/cpu/online")
            .and_then(|l| cpu_list_len(&l));
        let nodes = root
            .sys_dir("devices/system/node")
            .iter()
            .filter(|n| {
                n.starts_with("node") && n[4..].chars().all(|ch| ch.is_ascii_digit()) && n.len() > 4
            })
            .count();
        let kernel = std::fs::read_to_string(root.proc.join("sys/kernel/osrelease"))
            .ok()
            .map(|s| s.trim().to_owned());
        Facts {
            sysctls,
            interfaces,
            governors,
            cpus,
            numa_nodes: (nodes > 0).then_some(nodes),
            kernel,
            nofile: limit(rustix::process::Resource::Nofile),
            memlock: limit(rustix::process::Resource::Memlock),
            io_uring: scistream_dataplane::probe::io_uring().map_err(|e| e.to_string()),
            ktls: scistream_dataplane::probe::KtlsSupport::probe(),
            crypto: scistream_dataplane::probe::CryptoPlan::choose(
                scistream_dataplane::probe::CryptoChoice::Auto,
                8 << 20,
            )
            .describe(),
        }
    }

    /// A sysctl's value.
    pub fn sysctl(&self, name: &str) -> Option<&str> {
        self.sysctls.get(name).and_then(|v| v.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(cpu_list_len("0-3,8-11"), Some(8));
        assert_eq!(cpu_list_len("0"), Some(1));
        assert_eq!(cpu_list_len("0-1\n"), Some(2));
        assert_eq!(cpu_list_len("3-1"), None);
        assert_eq!(cpu_list_len("x"), None);
    }

    #[test]
    fn sysctl_paths_and_whitespace() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::under(dir.path());
        let p = root.sysctl_path("net.ipv4.tcp_rmem");
        assert!(p.ends_with("proc/sys/net/ipv4/tcp_rmem"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, "4096\t131072\t6291456\n").unwrap();
        assert_eq!(
            root.sysctl("net.ipv4.tcp_rmem").unwrap(),
            "4096 131072 6291456"
        );
        assert_eq!(root.sysctl_u64("net.ipv4.tcp_rmem"), Some(4096));
        assert_eq!(root.sysctl("net.core.rmem_max"), None);
        assert!(!root.is_host() && Root::default().is_host());
    }
}
