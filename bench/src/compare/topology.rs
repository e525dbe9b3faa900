//! The topologies `compare` measures: each takes the sink's port and gives
//! back the addresses a source connects to and the processes doing the
//! forwarding (whose CPU time is charged to it).

use std::any::Any;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use scistream_client::{Auth, RequestOptions, Trust};
use scistream_local::gateway::{GatewayOptions, LocalGateway};
use scistream_protocol::Protocol;

use super::peers;

/// A topology to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Source straight to sink.
    Direct,
    /// Two SciStream gateways, TLS 1.3 data channel (the default).
    Scistream,
    /// The same, plaintext data channel (`--data-tls off`).
    ScistreamPlain,
    /// The same, data plane forced onto epoll.
    ScistreamEpoll,
    /// The same, forwarding by read/write copies instead of splice.
    ScistreamCopy,
    /// The same, with 64 KiB pipes (the kernel default) instead of 1 MiB.
    ScistreamPipe64k,
    /// The TLS tunnel with another build's `s2cs`/`s2ds` (`--baseline-s2cs-bin`),
    /// to measure a change side by side with what it replaces.
    ScistreamBaseline,
    /// The TLS tunnel whose inbound side is a cluster of three `s2cs`
    /// nodes on the etcd at `--etcd`: one session's listeners spread over
    /// the three (`--placement spread`).
    ScistreamCluster3,
    /// Two HAProxy hops.
    Haproxy,
    /// Two stunnel hops, TLS 1.3 between them.
    Stunnel,
    /// Two HAProxy hops, TLS 1.3 between them.
    HaproxyTls,
    /// Two nginx stream hops, TLS 1.3 between them.
    NginxTls,
    /// Two socat hops.
    Socat,
    /// Two nginx stream hops.
    Nginx,
}

impl Kind {
    /// Every topology, in table order.
    pub const ALL: [Kind; 8] = [
        Kind::Direct,
        Kind::Scistream,
        Kind::HaproxyTls,
        Kind::NginxTls,
        Kind::Stunnel,
        Kind::Haproxy,
        Kind::Socat,
        Kind::Nginx,
    ];

    /// Variants of the SciStream tunnel, for measuring the data plane's choices.
    pub const VARIANTS: [Kind; 6] = [
        Kind::ScistreamPlain,
        Kind::ScistreamEpoll,
        Kind::ScistreamCopy,
        Kind::ScistreamPipe64k,
        Kind::ScistreamBaseline,
        Kind::ScistreamCluster3,
    ];

    /// Short name (for `--only` and tables).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Scistream => "scistream",
            Kind::ScistreamPlain => "scistream-plain",
            Kind::ScistreamEpoll => "scistream-epoll",
            Kind::ScistreamCopy => "scistream-copy",
            Kind::ScistreamPipe64k => "scistream-pipe64k",
            Kind::ScistreamBaseline => "scistream-baseline",
            Kind::ScistreamCluster3 => "scistream-cluster3",
            Kind::Haproxy => "haproxy",
            Kind::Stunnel => "stunnel",
            Kind::HaproxyTls => "haproxy-tls",
            Kind::NginxTls => "nginx-tls",
            Kind::Socat => "socat",
            Kind::Nginx => "nginx",
        }
    }

    /// What it is, for the table footnotes and JSON.
    pub fn description(self) -> &'static str {
        match self {
            Kind::Direct => "source to sink over loopback TCP, no proxy",
            Kind::Scistream => {
                "s2cs+s2ds outbound gateway -> s2cs+s2ds inbound gateway, set up with inbound/outbound requests over gRPC; TLS 1.3 data channel (kTLS when the kernel has it)"
            }
            Kind::ScistreamPlain => "scistream with a plaintext data channel (--data-tls off)",
            Kind::ScistreamEpoll => "scistream-plain on epoll (--engine epoll)",
            Kind::ScistreamCopy => {
                "scistream-plain forwarding by read/write through 1 MiB buffers (s2ds --forward copy)"
            }
            Kind::ScistreamPipe64k => "scistream-plain with 64 KiB pipes (--pipe-size 64KiB)",
            Kind::ScistreamBaseline => {
                "scistream (TLS) with the s2cs and s2ds of --baseline-s2cs-bin: another build, side by side"
            }
            Kind::ScistreamCluster3 => {
                "scistream (TLS) whose inbound side is three s2cs nodes of one cluster (etcd at --etcd), the session's listeners spread over them"
            }
            Kind::Haproxy => "haproxy -> haproxy, mode tcp, option splice-auto",
            Kind::Stunnel => "stunnel client -> stunnel server, TLS 1.3 between them",
            Kind::HaproxyTls => {
                "haproxy -> haproxy, mode tcp, TLS 1.3 between them (OpenSSL, its default suites), splice-auto"
            }
            Kind::NginxTls => "nginx stream -> nginx stream, TLS 1.3 between them, one worker each",
            Kind::Socat => "socat -> socat, fork per connection",
            Kind::Nginx => "nginx stream -> nginx stream, one worker each",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .chain(Kind::VARIANTS)
            .find(|k| k.name() == s)
    }

    /// Every name, comma-separated, for messages.
    pub fn names() -> String {
        Kind::ALL
            .into_iter()
            .chain(Kind::VARIANTS)
            .map(Kind::name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topology_parses_by_its_name() {
        let all: Vec<Kind> = Kind::ALL.into_iter().chain(Kind::VARIANTS).collect();
        assert_eq!(
            all.len(),
            14,
            "a new Kind must be listed in ALL or VARIANTS"
        );
        for k in all {
            assert_eq!(Kind::parse(k.name()), Some(k));
            assert!(Kind::names().contains(k.name()));
        }
        assert_eq!(Kind::parse("squid"), None);
    }
}

/// Files and programs topologies need.
#[derive(Debug, Clone)]
pub struct Env {
    /// Working directory (configs, logs, state).
    pub dir: PathBuf,
    /// The `s2cs` binary.
    pub s2cs: Option<PathBuf>,
    /// CA certificate.
    pub ca: PathBuf,
    /// A gateway certificate and key signed by it (valid for localhost, 127.0.0.1).
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// More arguments for every SciStream gateway (`s2bench compare --s2cs-arg`).
    pub s2cs_args: Vec<String>,
    /// Another build's `s2cs`, for `scistream-baseline`.
    pub baseline_s2cs: Option<PathBuf>,
    /// etcd's client URL, for `scistream-cluster3`.
    pub etcd: Option<String>,
}

impl Env {
    /// A working directory with throwaway certificates.
    pub fn create(dir: &Path, s2cs: Option<PathBuf>) -> Result<Env, String> {
        let ca = scistream_local::pki::Ca::new("s2bench CA").map_err(|e| e.to_string())?;
        let ca_path = dir.join("ca.crt");
        scistream_local::pki::write_file(&ca_path, &ca.cert_pem(), false)
            .map_err(|e| e.to_string())?;
        let w = ca
            .issue(&["localhost", "127.0.0.1"])
            .map_err(|e| e.to_string())?
            .write(dir, "gateway")
            .map_err(|e| e.to_string())?;
        Ok(Env {
            dir: dir.to_owned(),
            s2cs,
            ca: ca_path,
            cert: w.cert,
            key: w.key,
            s2cs_args: Vec::new(),
            baseline_s2cs: None,
            etcd: None,
        })
    }
}

/// A topology set up and ready.
pub struct Running {
    /// Where connection *i* of a source goes (cycled).
    pub entries: Vec<String>,
    /// Roots of the forwarding process trees.
    pub pids: Vec<u32>,
    _keep: Box<dyn Any>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("entries", &self.entries)
            .field("pids", &self.pids)
            .finish()
    }
}

impl Running {
    /// A peer chain, running.
    pub fn chain(c: peers::Chain) -> Running {
        Running {
            entries: vec![format!("127.0.0.1:{}", c.entry)],
            pids: c.pids(),
            _keep: Box::new(c),
        }
    }
}

/// Sets up `kind` in front of a sink on `sink_port`, for up to `max_conns` connections.
pub fn setup(kind: Kind, env: &Env, sink_port: u16, max_conns: usize) -> Result<Running, String> {
    let chain = |c: peers::Chain| Running {
        entries: vec![format!("127.0.0.1:{}", c.entry)],
        pids: c.pids(),
        _keep: Box::new(c),
    };
    match kind {
        Kind::Direct => Ok(Running {
            entries: vec![format!("127.0.0.1:{sink_port}")],
            pids: Vec::new(),
            _keep: Box::new(()),
        }),
        Kind::Haproxy => peers::haproxy(&env.dir, sink_port).map(chain),
        Kind::Socat => peers::socat(&env.dir, sink_port).map(chain),
        Kind::Nginx => peers::nginx(&env.dir, sink_port).map(chain),
        Kind::Stunnel => {
            peers::stunnel(&env.dir, sink_port, &env.ca, &env.cert, &env.key).map(chain)
        }
        Kind::HaproxyTls => {
            peers::haproxy_tls(&env.dir, sink_port, &env.ca, &env.cert, &env.key).map(chain)
        }
        Kind::NginxTls => {
            peers::nginx_tls(&env.dir, sink_port, &env.ca, &env.cert, &env.key).map(chain)
        }
        Kind::Scistream => scistream(env, sink_port, max_conns, &[]),
        Kind::ScistreamBaseline => match &env.baseline_s2cs {
            Some(bin) => {
                let mut env = env.clone();
                env.s2cs = Some(bin.clone());
                scistream_named(&env, sink_port, max_conns, &[], "baseline")
            }
            None => Err("give another build's s2cs with --baseline-s2cs-bin".into()),
        },
        Kind::ScistreamCluster3 => match &env.etcd {
            Some(etcd) => scistream_cluster(env, sink_port, max_conns, etcd, 3),
            None => Err("scistream-cluster3 needs etcd: give its URL with --etcd".into()),
        },
        Kind::ScistreamPlain => scistream(env, sink_port, max_conns, &["--data-tls=off"]),
        Kind::ScistreamEpoll => scistream(
            env,
            sink_port,
            max_conns,
            &["--data-tls=off", "--engine=epoll"],
        ),
        Kind::ScistreamCopy => scistream(
            env,
            sink_port,
            max_conns,
            &["--data-tls=off", "--s2ds-arg=--forward=copy"],
        ),
        Kind::ScistreamPipe64k => scistream(
            env,
            sink_port,
            max_conns,
            &["--data-tls=off", "--pipe-size=64KiB"],
        ),
    }
}

/// Two gateways and a tunnel through them, set up as a user would.
pub fn scistream(
    env: &Env,
    sink_port: u16,
    conns: usize,
    s2cs_args: &[&str],
) -> Result<Running, String> {
    let tag = s2cs_args
        .join("")
        .replace(|c: char| !c.is_ascii_alphanumeric(), "");
    scistream_named(env, sink_port, conns, s2cs_args, &tag)
}

/// [`scistream`] with state directories named after `tag`.
fn scistream_named(
    env: &Env,
    sink_port: u16,
    conns: usize,
    s2cs_args: &[&str],
    tag: &str,
) -> Result<Running, String> {
    let hpc = start_gateway(env, &format!("hpc{tag}"), (25100, 25299), s2cs_args)?;
    let inst = start_gateway(env, &format!("inst{tag}"), (26100, 26299), s2cs_args)?;
    tunnel(env, sink_port, conns, vec![hpc], inst, Protocol::Tcp)
}

/// A UDP-only tunnel (one listener) through two gateways, in front of a
/// UDP sink on `sink_port`.
pub fn scistream_udp(env: &Env, sink_port: u16, s2cs_args: &[&str]) -> Result<Running, String> {
    let hpc = start_gateway(env, "hpc-udp", (25300, 25399), s2cs_args)?;
    let inst = start_gateway(env, "inst-udp", (26300, 26399), s2cs_args)?;
    tunnel(env, sink_port, 1, vec![hpc], inst, Protocol::Udp)
}

/// [`scistream`] whose inbound side is `nodes` nodes of one cluster: the
/// session's listeners are spread over them.
fn scistream_cluster(
    env: &Env,
    sink_port: u16,
    conns: usize,
    etcd: &str,
    nodes: u16,
) -> Result<Running, String> {
    let cluster = format!("s2bench{}", std::process::id());
    let mut hpc = Vec::new();
    for k in 0..nodes {
        let node_args = [
            format!("--cluster={cluster}"),
            format!("--etcd={etcd}"),
            format!("--node=hpc{k}"),
        ];
        let args: Vec<&str> = node_args.iter().map(String::as_str).collect();
        let first = 27100 + 100 * k;
        hpc.push(start_gateway(
            env,
            &format!("cluster-hpc{k}"),
            (first, first + 99),
            &args,
        )?);
    }
    // Placement uses the nodes this node sees: let the others' joins land.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let inst = start_gateway(env, "cluster-inst", (26100, 26299), &[])?;
    tunnel(env, sink_port, conns, hpc, inst, Protocol::Tcp)
}

fn start_gateway(
    env: &Env,
    name: &str,
    range: (u16, u16),
    s2cs_args: &[&str],
) -> Result<LocalGateway, String> {
    let s2cs = env
        .s2cs
        .clone()
        .or_else(|| scistream_local::gateway::sibling_binary("s2cs"))
        .ok_or("s2cs not found next to s2bench; build the workspace (cargo build --release) or pass --s2cs-bin")?;
    LocalGateway::start(&GatewayOptions {
        s2cs_bin: s2cs,
        listener_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        port_range: range,
        tls: Some((env.cert.clone(), env.key.clone())),
        state_dir: env.dir.join(format!("{name}-state")),
        log: Some(env.dir.join(format!("{name}-s2cs.log"))),
        // Both gateways share this one host here; pinned, both would put
        // connection 0 on core 0. Real gateways are separate hosts, and the
        // peer proxies are not pinned either.
        extra_args: [
            format!("--peer-ca={}", env.ca.display()),
            "--s2ds-arg=--no-pin".to_owned(),
        ]
        .into_iter()
        .chain(env.s2cs_args.iter().cloned())
        .chain(s2cs_args.iter().map(|a| a.to_string()))
        .collect(),
    })
}

/// The tunnel through the inbound side `hpc` (its first node takes the
/// requests) and the outbound gateway `inst`, set up as a user would.
fn tunnel(
    env: &Env,
    sink_port: u16,
    conns: usize,
    hpc: Vec<LocalGateway>,
    inst: LocalGateway,
    protocol: Protocol,
) -> Result<Running, String> {
    let first = hpc.first().ok_or("no inbound gateway")?.control();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let trust = Trust::Root(env.ca.clone());
    let options = RequestOptions {
        num_conn: conns as u32,
        rate_kbps: 0,
        protocol,
    };
    let outbound = runtime
        .block_on(async {
            let h = scistream_client::connect(&first, &trust, Auth::none()).await?;
            let inbound =
                scistream_client::inbound_request(&h, "127.0.0.1", &[sink_port], &options).await?;
            let i = scistream_client::connect(&inst.control(), &trust, Auth::none()).await?;
            scistream_client::outbound_request(
                &i,
                &inbound.uid,
                inbound.listeners.clone(),
                Vec::new(),
                &options,
            )
            .await
        })
        .map_err(|e| e.to_string())?;
    let pids = hpc
        .iter()
        .chain(std::iter::once(&inst))
        .filter_map(LocalGateway::pid)
        .collect();
    Ok(Running {
        entries: outbound.listeners,
        pids,
        _keep: Box::new((hpc, inst, runtime)),
    })
}
