//! Dead peers end connections in bounded time instead of hanging them: the
//! receiver sits in a network namespace the test creates, behind a veth
//! link; the link goes down mid-stream (a silent WAN), and TCP_USER_TIMEOUT
//! with keepalive end the forwarded connection, so the instrument side sees
//! its connection closed. An idle connection is not cut for being idle.
//! Skipped, with the reason, without root or iproute2.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use scistream_testkit::{Gw, have_root, s2uc_tunnel};

struct Netns {
    name: String,
    host_if: String,
}

impl Netns {
    /// A namespace with a veth link to the host: host 10.201.N.1, namespace 10.201.N.2.
    fn create(test: &str, n: u8) -> Option<Netns> {
        if !have_root(test) {
            return None;
        }
        let pid = std::process::id();
        let name = format!("s2dp-{pid}-{n}");
        let host_if = format!("s2h{}{n}", pid % 10000);
        let peer_if = format!("s2p{}{n}", pid % 10000);
        let ns = Netns {
            name: name.clone(),
            host_if: host_if.clone(),
        };
        let steps: Vec<Vec<String>> = vec![
            vec!["netns".into(), "add".into(), name.clone()],
            vec![
                "link".into(),
                "add".into(),
                host_if.clone(),
                "type".into(),
                "veth".into(),
                "peer".into(),
                "name".into(),
                peer_if.clone(),
                "netns".into(),
                name.clone(),
            ],
            vec![
                "addr".into(),
                "add".into(),
                format!("10.201.{n}.1/30"),
                "dev".into(),
                host_if.clone(),
            ],
            vec!["link".into(), "set".into(), host_if.clone(), "up".into()],
            vec![
                "-n".into(),
                name.clone(),
                "addr".into(),
                "add".into(),
                format!("10.201.{n}.2/30"),
                "dev".into(),
                peer_if.clone(),
            ],
            vec![
                "-n".into(),
                name.clone(),
                "link".into(),
                "set".into(),
                peer_if,
                "up".into(),
            ],
            vec![
                "-n".into(),
                name.clone(),
                "link".into(),
                "set".into(),
                "lo".into(),
                "up".into(),
            ],
        ];
        for args in steps {
            match Command::new("ip").args(&args).output() {
                Ok(o) if o.status.success() => {}
                Ok(o) => {
                    eprintln!(
                        "SKIP {test}: ip {} failed: {}",
                        args.join(" "),
                        String::from_utf8_lossy(&o.stderr).trim()
                    );
                    return None;
                }
                Err(e) => {
                    eprintln!("SKIP {test}: cannot run ip (apt-get install iproute2): {e}");
                    return None;
                }
            }
        }
        Some(ns)
    }

    fn spawn(&self, args: &[&str]) -> Child {
        use std::os::unix::process::CommandExt;
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap()
    }

    /// Cuts the link silently: the namespace's end goes down, nothing is sent back.
    fn cut(&self) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "ip", "link", "set", "dev"])
            .arg(self.host_if.replace("s2h", "s2p"))
            .arg("down")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A process started in its own process group; the whole group (socat's
/// forked children included) is killed when dropped.
struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A sink in the namespace that reads and discards (socat), so that only
/// the link decides the connection's fate.
fn discard_sink(ns: &Netns, test: &str, ip: &str) -> Option<Kill> {
    if Command::new("socat").arg("-V").output().is_err() {
        eprintln!("SKIP {test}: socat is not installed (apt-get install socat)");
        return None;
    }
    let listen = format!("TCP-LISTEN:7001,bind={ip},fork,reuseaddr");
    Some(Kill(ns.spawn(&["socat", "-u", &listen, "OPEN:/dev/null"])))
}

/// Plaintext gateways with fast dead-peer detection, and a tunnel to the
/// receiver at `ip`:7001: (hpc, inst, outbound listener).
fn tunnel(ip: &str) -> (Gw, Gw, String) {
    let dp = [
        "--data-tls",
        "off",
        "--keepalive",
        "1s",
        "--user-timeout",
        "3s",
    ];
    let hpc = Gw::start(None, 4, &dp);
    let inst = Gw::start(None, 4, &dp);
    let t = s2uc_tunnel(&hpc, &inst, None, ip, 7001, 1);
    let entry = t.outbound[0].clone();
    (hpc, inst, entry)
}

fn wait_listening(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_millis(500)).is_err() {
        assert!(Instant::now() < deadline, "{addr} does not accept");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_silent_link_ends_the_forwarded_connection_in_bounded_time() {
    let test = "a_silent_link_ends_the_forwarded_connection_in_bounded_time";
    let Some(ns) = Netns::create(test, 1) else {
        return;
    };
    let Some(_sink) = discard_sink(&ns, test, "10.201.1.2") else {
        return;
    };
    wait_listening("10.201.1.2:7001");
    let (hpc, inst, entry) = tunnel("10.201.1.2");

    let mut s = TcpStream::connect(&entry).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(90))).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
    s.write_all(&[0u8; 1 << 16]).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    ns.cut();
    let cut_at = Instant::now();
    // Keep sending into the silence: the buffers fill, then the gateways'
    // user timeout ends the connection and a write fails.
    let chunk = vec![0u8; 1 << 20];
    let ended = loop {
        match s.write(&chunk) {
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                break Err(format!("still hanging after {:?}", cut_at.elapsed()));
            }
            Err(_) => break Ok(()),
        }
        if cut_at.elapsed() > Duration::from_secs(90) {
            break Err("never ended".to_string());
        }
    };
    ended.unwrap();
    let took = cut_at.elapsed();
    assert!(took < Duration::from_secs(60), "ended only after {took:?}");
    eprintln!("the silent link ended the connection after {took:?}");
    drop((hpc, inst));
}

#[test]
fn an_idle_connection_is_not_cut_for_being_idle() {
    let test = "an_idle_connection_is_not_cut_for_being_idle";
    let Some(ns) = Netns::create(test, 2) else {
        return;
    };
    let Some(_sink) = discard_sink(&ns, test, "10.201.2.2") else {
        return;
    };
    wait_listening("10.201.2.2:7001");
    let (_hpc, _inst, entry) = tunnel("10.201.2.2");
    let mut s = TcpStream::connect(&entry).unwrap();
    s.write_all(b"hello").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    // Silent for longer than keepalive + user timeout: the peers are alive
    // (they answer keepalives), so nothing may close it.
    let r = s.read(&mut [0u8; 8]);
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut),
        "an idle connection was closed: {r:?}"
    );
    s.write_all(b"still here").unwrap();
}
