//! `s2tune check`: one verdict per item, with the current value, the
//! recommended one for the target path, the command that fixes it and why.

use serde::Serialize;

use crate::host::Facts;
use crate::target::Target;

/// A verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine for the target.
    Ok,
    /// Costs throughput or robustness; fix when you can.
    Warn,
    /// Caps the tunnel below the target.
    Fail,
    /// This host does not expose it.
    Unknown,
}

impl Status {
    /// The four-letter tag of a line.
    pub fn tag(&self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
            Status::Unknown => "?",
        }
    }
}

/// One checked item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Item {
    /// What (a sysctl name, or a short name like `mtu eth0`).
    pub name: String,
    /// The verdict.
    pub status: Status,
    /// The value now.
    pub current: String,
    /// The value recommended for the target.
    pub recommended: String,
    /// The command that fixes it (empty when nothing to do).
    pub fix: String,
    /// Why it matters, in one sentence.
    pub why: String,
    /// The sysctl `apply` sets for it, with its value (None: not a sysctl fix).
    #[serde(skip)]
    pub sysctl: Option<(String, String)>,
}

fn item(
    name: &str,
    status: Status,
    current: impl Into<String>,
    recommended: impl Into<String>,
) -> Item {
    Item {
        name: name.into(),
        status,
        current: current.into(),
        recommended: recommended.into(),
        fix: String::new(),
        why: String::new(),
        sysctl: None,
    }
}

impl Item {
    fn why(mut self, why: &str) -> Self {
        self.why = why.into();
        self
    }

    fn fix(mut self, fix: impl Into<String>) -> Self {
        if self.status != Status::Ok {
            self.fix = fix.into();
        }
        self
    }

    /// A fix by one sysctl, which `apply` can make.
    fn sysctl_fix(mut self, name: &str, value: &str) -> Self {
        if matches!(self.status, Status::Warn | Status::Fail) {
            self.fix = if value.contains(' ') {
                format!("sysctl -w {name}='{value}'")
            } else {
                format!("sysctl -w {name}={value}")
            };
            self.sysctl = Some((name.into(), value.into()));
        }
        self
    }
}

fn unknown(name: &str, why: &str) -> Item {
    item(name, Status::Unknown, "not exposed", "-").why(why)
}

/// A buffer maximum: fail below the BDP, warn below the recommendation.
fn buffer_verdict(current: u64, target: &Target) -> Status {
    if current < target.bdp() {
        Status::Fail
    } else if current < target.buffer() {
        Status::Warn
    } else {
        Status::Ok
    }
}

/// The most a socket may ask for with SO_RCVBUF/SO_SNDBUF: it binds only
/// buffers pinned with --rcvbuf/--sndbuf, not autotuning (the default, and
/// what `s2tune bdp` advises), so a low value is a warning, never a failure.
fn core_max(f: &Facts, name: &str, target: &Target, why: &str) -> Item {
    let rec = target.buffer();
    match f.sysctl(name).and_then(|v| v.parse::<u64>().ok()) {
        None => unknown(name, why),
        Some(v) => item(
            name,
            if v < rec { Status::Warn } else { Status::Ok },
            v.to_string(),
            rec.to_string(),
        )
        .why(why)
        .sysctl_fix(name, &rec.to_string()),
    }
}

fn tcp_mem(f: &Facts, name: &str, default_mid: u64, target: &Target, why: &str) -> Item {
    let rec = target.buffer();
    let Some(v) = f.sysctl(name) else {
        return unknown(name, why);
    };
    let nums: Vec<u64> = v
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    let (min, mid, max) = match nums[..] {
        [a, b, c] => (a, b, c),
        _ => (4096, default_mid, 0),
    };
    let wanted = format!("{} {} {rec}", min.clamp(1, 4096), mid.max(default_mid));
    item(name, buffer_verdict(max, target), v, wanted.clone())
        .why(why)
        .sysctl_fix(name, &wanted)
}

/// Every item, for `facts` and the `target` path.
pub fn evaluate(f: &Facts, target: &Target) -> Vec<Item> {
    let mut items = vec![
        core_max(
            f,
            "net.core.rmem_max",
            target,
            "largest receive buffer a socket may pin (s2cs --rcvbuf); matters only with pinned buffers: autotuning (the default) is bound by tcp_rmem",
        ),
        core_max(
            f,
            "net.core.wmem_max",
            target,
            "largest send buffer a socket may pin (s2cs --sndbuf); matters only with pinned buffers: autotuning is bound by tcp_wmem",
        ),
        tcp_mem(
            f,
            "net.ipv4.tcp_rmem",
            131_072,
            target,
            "receive autotuning stops at the third value: below the BDP one connection cannot fill the path",
        ),
        tcp_mem(
            f,
            "net.ipv4.tcp_wmem",
            16_384,
            target,
            "send autotuning stops at the third value",
        ),
    ];
    items.push(congestion(f));
    items.push(match f.sysctl("net.core.default_qdisc") {
        None => unknown("net.core.default_qdisc", "fq paces each connection"),
        Some(q) => item(
            "net.core.default_qdisc",
            if q == "fq" { Status::Ok } else { Status::Warn },
            q,
            "fq",
        )
        .why("fq paces every connection (and enforces s2cs's per-session rate caps) instead of sending bursts that overflow switch buffers; existing interfaces also need: tc qdisc replace dev IF root fq")
        .sysctl_fix("net.core.default_qdisc", "fq"),
    });
    items.push(match f.sysctl("net.ipv4.tcp_mtu_probing") {
        None => unknown(
            "net.ipv4.tcp_mtu_probing",
            "finds the path MTU when ICMP is filtered",
        ),
        Some(v) => item(
            "net.ipv4.tcp_mtu_probing",
            if v == "0" { Status::Warn } else { Status::Ok },
            v,
            "1",
        )
        .why("with ICMP filtered on the path, jumbo-frame hosts stall without MTU probing")
        .sysctl_fix("net.ipv4.tcp_mtu_probing", "1"),
    });
    let backlog = target.backlog();
    items.push(
        match f
            .sysctl("net.core.netdev_max_backlog")
            .and_then(|v| v.parse::<u64>().ok())
        {
            None => unknown(
                "net.core.netdev_max_backlog",
                "packets queued per CPU before the stack drops them",
            ),
            Some(v) => item(
                "net.core.netdev_max_backlog",
                if v >= backlog {
                    Status::Ok
                } else {
                    Status::Warn
                },
                v.to_string(),
                backlog.to_string(),
            )
            .why("at high rates a short input queue drops packets before TCP sees them")
            .sysctl_fix("net.core.netdev_max_backlog", &backlog.to_string()),
        },
    );
    items.extend(mtus(f));
    items.push(governor(f));
    items.extend(cpus(f, target));
    items.push(nofile(f));
    items.push(memlock(f));
    items.push(io_uring(f));
    items.push(ktls(f));
    items.push(item("crypto", Status::Ok, f.crypto.clone(), "-").why(
        "s2ds --crypto auto seals with the faster provider on this CPU, suites in this order",
    ));
    items
}

fn congestion(f: &Facts) -> Item {
    let name = "net.ipv4.tcp_congestion_control";
    let why =
        "loss-based cubic/reno collapse on long lossy paths; bbr (or htcp) keeps the window open";
    let Some(cc) = f.sysctl(name) else {
        return unknown(name, why);
    };
    let available = f
        .sysctl("net.ipv4.tcp_available_congestion_control")
        .unwrap_or("")
        .to_owned();
    let current = format!("{cc} (available: {available})");
    if matches!(cc, "bbr" | "htcp") {
        return item(name, Status::Ok, current, cc.to_owned()).why(why);
    }
    let i = item(name, Status::Warn, current, "bbr").why(why);
    if available.split_whitespace().any(|a| a == "bbr") {
        i.sysctl_fix(name, "bbr")
    } else {
        i.fix(format!("modprobe tcp_bbr && sysctl -w {name}=bbr"))
    }
}

fn mtus(f: &Facts) -> Vec<Item> {
    if f.interfaces.is_empty() {
        return vec![unknown("mtu", "no ethernet interface found")];
    }
    f.interfaces
        .iter()
        .map(|i| {
            let name = format!("mtu {}", i.name);
            match i.mtu {
                None => unknown(&name, "the interface's MTU"),
                Some(m) => item(
                    &name,
                    if m >= 9000 { Status::Ok } else { Status::Warn },
                    m.to_string(),
                    "9000",
                )
                .why("jumbo frames cut per-packet cost six-fold; only where every hop of the path carries them")
                .fix(format!("ip link set dev {} mtu 9000", i.name)),
            }
        })
        .collect()
}

fn governor(f: &Facts) -> Item {
    let name = "cpu governor";
    if f.governors.is_empty() {
        return unknown(
            name,
            "frequency scaling is not exposed (VMs and some BIOS settings)",
        );
    }
    let mut kinds = f.governors.clone();
    kinds.sort();
    kinds.dedup();
    let all_perf = kinds.iter().all(|g| g == "performance");
    item(
        name,
        if all_perf { Status::Ok } else { Status::Warn },
        kinds.join(","),
        "performance",
    )
    .why("power-saving governors add latency and cap per-core throughput of the forwarding threads")
    .fix("cpupower frequency-set -g performance")
}

fn cpus(f: &Facts, target: &Target) -> Vec<Item> {
    let mut out = Vec::new();
    let wanted = match target.rate_bps {
        r if r >= 40_000_000_000 => 8,
        r if r >= 10_000_000_000 => 4,
        _ => 2,
    };
    out.push(match f.cpus {
        None => unknown("cores", "online CPUs"),
        Some(n) => item(
            "cores",
            if n >= wanted {
                Status::Ok
            } else {
                Status::Warn
            },
            n.to_string(),
            format!("{wanted}+"),
        )
        .why("s2ds runs one worker per core; TLS at line rate needs several")
        .fix(format!(
            "a gateway for {} wants {wanted} or more cores",
            target.describe()
        )),
    });
    match f.numa_nodes {
        None => out.push(unknown("numa", "NUMA layout")),
        Some(1) => {
            out.push(item("numa", Status::Ok, "1 node", "-").why("one node: nothing to pin"))
        }
        Some(n) => {
            let nodes: Vec<String> = f
                .interfaces
                .iter()
                .filter_map(|i| {
                    i.numa_node
                        .filter(|&x| x >= 0)
                        .map(|x| format!("{} on node {x}", i.name))
                })
                .collect();
            let node = f
                .interfaces
                .iter()
                .find_map(|i| i.numa_node.filter(|&x| x >= 0))
                .unwrap_or(0);
            out.push(
                item(
                    "numa",
                    Status::Warn,
                    format!(
                        "{n} nodes; {}",
                        if nodes.is_empty() {
                            "NIC node unknown".to_string()
                        } else {
                            nodes.join(", ")
                        }
                    ),
                    "s2cs on the NIC's node",
                )
                .why("memory and threads on the other node cross the interconnect for every byte")
                .fix(format!(
                    "numactl --cpunodebind={node} --membind={node} s2cs ..."
                )),
            );
        }
    }
    out
}

fn show_limit(l: Option<u64>) -> String {
    l.map(|v| v.to_string())
        .unwrap_or_else(|| "unlimited".into())
}

fn nofile(f: &Facts) -> Item {
    let (soft, hard) = f.nofile;
    let ok = hard.is_none_or(|h| h >= 65536);
    item(
        "RLIMIT_NOFILE",
        if ok { Status::Ok } else { Status::Warn },
        format!("{} (hard {})", show_limit(soft), show_limit(hard)),
        "hard 65536+",
    )
    .why("every forwarded connection holds two sockets and two pipe ends; s2ds raises its soft limit to the hard one")
    .fix("LimitNOFILE=65536 in the s2cs unit, or ulimit -Hn 65536")
}

fn kernel_at_least(f: &Facts, major: u32, minor: u32) -> bool {
    let Some(k) = &f.kernel else { return false };
    let mut parts = k
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    match (parts.next(), parts.next()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}

fn memlock(f: &Facts) -> Item {
    let (soft, hard) = f.memlock;
    let accounted_elsewhere = kernel_at_least(f, 5, 12);
    let ok = accounted_elsewhere || soft.is_none_or(|s| s >= 64 << 20);
    item(
        "RLIMIT_MEMLOCK",
        if ok { Status::Ok } else { Status::Warn },
        format!("{} (hard {})", show_limit(soft), show_limit(hard)),
        if accounted_elsewhere {
            "any (kernel 5.12+ accounts io_uring memory to the cgroup)"
        } else {
            "64 MiB+"
        },
    )
    .why("io_uring rings count against it on kernels before 5.12")
    .fix("LimitMEMLOCK=64M in the s2cs unit")
}

fn io_uring(f: &Facts) -> Item {
    let disabled = f
        .sysctl("kernel.io_uring_disabled")
        .unwrap_or("0")
        .to_owned();
    match &f.io_uring {
        Ok(()) => {
            item("io_uring", Status::Ok, "available", "available").why("s2ds's default engine")
        }
        Err(e) => {
            let i = item(
                "io_uring",
                Status::Warn,
                format!("unavailable: {e}"),
                "available",
            )
            .why("without it s2ds falls back to epoll (slightly more CPU per byte)");
            if disabled != "0" {
                i.sysctl_fix("kernel.io_uring_disabled", "0")
            } else {
                i.fix("allow io_uring_setup in the service's seccomp/container policy")
            }
        }
    }
}

fn ktls(f: &Facts) -> Item {
    let k = f.ktls;
    let why = "kernel TLS lets s2ds splice encrypted streams without copying through user space";
    if !k.available {
        return item(
            "kTLS",
            Status::Warn,
            "unavailable (no tls ULP)",
            "available",
        )
        .why(why)
        .fix("modprobe tls (kernel built with CONFIG_TLS); otherwise TLS stays in user space");
    }
    let detail = match (k.rekey, k.chacha) {
        (true, _) => "available, with key updates",
        (false, true) => {
            "available for ChaCha20-Poly1305 (no key updates: AES-GCM stays in user space)"
        }
        (false, false) => "available, but neither key updates nor ChaCha20 modules",
    };
    let status = if k.rekey || k.chacha {
        Status::Ok
    } else {
        Status::Warn
    };
    item("kTLS", status, detail, "available")
        .why(why)
        .fix("modprobe chacha20poly1305")
}

/// Prints the items as aligned lines, with the reason and fix under each
/// item that is not ok.
pub fn render(items: &[Item], target: &Target) -> String {
    let w = items.iter().map(|i| i.name.len()).max().unwrap_or(0);
    let mut s = format!("s2tune check for {}\n\n", target.describe());
    for i in items {
        s.push_str(&format!(
            "[{:>4}] {:w$}  {}",
            i.status.tag(),
            i.name,
            i.current,
        ));
        if i.status != Status::Ok && i.recommended != "-" {
            s.push_str(&format!("  (recommended: {})", i.recommended));
        }
        s.push('\n');
        if matches!(i.status, Status::Warn | Status::Fail) {
            s.push_str(&format!("       {:w$}  why: {}\n", "", i.why));
            if !i.fix.is_empty() {
                s.push_str(&format!("       {:w$}  fix: {}\n", "", i.fix));
            }
        }
    }
    let count = |st: Status| items.iter().filter(|i| i.status == st).count();
    s.push_str(&format!(
        "\n{} ok, {} warn, {} fail, {} unknown",
        count(Status::Ok),
        count(Status::Warn),
        count(Status::Fail),
        count(Status::Unknown)
    ));
    if items.iter().any(|i| i.sysctl.is_some()) {
        s.push_str(&format!(
            "\nthe sysctl fixes: s2tune apply --rate {} --rtt {} (a dry run until --yes)",
            crate::target::rate_arg(target.rate_bps),
            crate::target::format_ms(target.rtt).replace(' ', "")
        ));
    }
    s.push('\n');
    s
}
