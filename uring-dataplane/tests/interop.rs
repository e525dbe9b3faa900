//! Our TLS 1.3 record layer against two TLS stacks that share no code with
//! it or with rustls: OpenSSL's libssl (through ctypes) and tlslite-ng (pure
//! Python), run by `tests/peers/tls_peer.py`.
//!
//! Each stack plays the outbound gateway against a real inbound `s2ds`
//! (which asks it for a client certificate) and the inbound gateway against
//! a real outbound `s2ds`, for every TLS 1.3 suite: bytes echoed back
//! intact, a KeyUpdate from the peer (with and without update_requested),
//! ours every 16 records, close_notify both ways.
//!
//! `SCISTREAM_INTEROP_BYTES` sets the bytes per OpenSSL case (default
//! 32 MiB; 1073741824 for the full gigabyte each way). tlslite-ng is pure
//! Python (about 1 MB/s here): 1 MiB per case. Python 3 and tlslite-ng come
//! from `.ci/run`; without them the cases skip with the reason.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{DataPlane, add_channel_session};
use scistream_protocol::Role;
use scistream_protocol::handoff::DataChannel;
use scistream_testkit::{EchoServer, Pki};

const UID: &str = "7a3e9c1d-5b2f-4e8a-9d6c-1f0e2b3a4c5d";
const SUITES: [&str; 3] = ["aes128", "aes256", "chacha"];

fn peer_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/tls_peer.py")
}

/// Why this host cannot run `stack`, if it cannot.
fn missing(stack: &str) -> Option<String> {
    let module = match stack {
        "tlslite" => "tlslite",
        _ => "ctypes",
    };
    let probe = if stack == "openssl" {
        "import ctypes, ctypes.util; ctypes.CDLL(ctypes.util.find_library('ssl') or 'libssl.so.3').SSL_key_update".to_string()
    } else {
        format!("import {module}")
    };
    match Command::new("python3").args(["-c", &probe]).output() {
        Err(e) => Some(format!("no python3 ({e})")),
        Ok(o) if !o.status.success() => Some(format!(
            "python3 cannot load {stack}: {}",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("")
        )),
        Ok(_) => None,
    }
}

fn bytes_for(stack: &str) -> u64 {
    if stack == "tlslite" {
        return 1 << 20;
    }
    std::env::var("SCISTREAM_INTEROP_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32 << 20)
}

struct Peer {
    child: Child,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Peer {
    #[allow(clippy::too_many_arguments)]
    fn spawn(
        stack: &str,
        role: &str,
        addr: &str,
        pki: &Pki,
        name: &str,
        suite: &str,
        bytes: u64,
        key_update: &str,
    ) -> Peer {
        let (cert, key) = pki.gateway(name);
        let mut child = Command::new("python3")
            .arg(peer_script())
            .args([
                "--stack", stack, "--role", role, "--addr", addr, "--uid", UID,
            ])
            .args(["--suite", suite, "--key-update", key_update])
            .arg("--bytes")
            .arg(bytes.to_string())
            .arg("--ca")
            .arg(&pki.ca)
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Peer { child, stdout }
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.stdout.read_line(&mut l).unwrap();
        l.trim().to_owned()
    }

    /// Waits for the peer's JSON summary; panics with its reason on failure.
    fn finish(mut self, case: &str, gateway: &DataPlane) -> serde_json::Value {
        let summary = self.line();
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "{case}: the peer failed (its reason is above); our gateway's log:\n{}",
            gateway.log()
        );
        serde_json::from_str(&summary).unwrap_or_else(|e| panic!("{case}: {summary:?}: {e}"))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn gateway(pki: &Pki, name: &str) -> DataPlane {
    let (c, k) = pki.gateway(name);
    DataPlane::start(&[
        "--workers",
        "1",
        "--data-cert",
        &s(&c),
        "--data-key",
        &s(&k),
        "--peer-ca",
        &s(&pki.ca),
        "--rekey-records",
        "16",
        "--rekey-any-suite",
    ])
}

fn check(case: &str, summary: &serde_json::Value, suite: &str, bytes: u64) {
    assert_eq!(summary["intact"], true, "{case}: {summary}");
    assert_eq!(summary["bytes"], bytes, "{case}: {summary}");
    let name: String = summary["suite"]
        .as_str()
        .unwrap_or("")
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect::<String>()
        .to_ascii_lowercase();
    let want = match suite {
        "aes128" => "aes128gcm",
        "aes256" => "aes256gcm",
        _ => "chacha20poly1305",
    };
    assert!(
        name.contains(want),
        "{case}: negotiated {name}, wanted {want}"
    );
}

/// The peer is the outbound gateway; ours is the inbound one, asking for a
/// client certificate, its receiver an echo server.
fn peer_as_outbound(stack: &str) {
    let pki = Pki::new();
    let echo = EchoServer::start();
    let mut inbound = gateway(&pki, "hpc");
    let channel = DataChannel::FromPeer {
        tls: true,
        client_cert: true,
    };
    let (listeners, _fds): (Vec<SocketAddr>, Vec<OwnedFd>) =
        add_channel_session(&mut inbound, UID, Role::Prod, vec![echo.addr], channel);
    let bytes = bytes_for(stack);
    for suite in SUITES {
        for key_update in ["plain", "requested"] {
            let case =
                format!("{stack} as outbound gateway, {suite}, peer key update {key_update}");
            eprintln!("{case}: {bytes} bytes");
            let peer = Peer::spawn(
                stack,
                "client",
                &listeners[0].to_string(),
                &pki,
                "inst",
                suite,
                bytes,
                key_update,
            );
            let summary = peer.finish(&case, &inbound);
            check(&case, &summary, suite, bytes);
        }
    }
    let log = inbound.log();
    assert!(!log.contains("panicked"), "{log}");
}

/// The peer is the inbound gateway (an echo behind its TLS); ours is the
/// outbound one, and the test is the instrument.
fn peer_as_inbound(stack: &str) {
    let pki = Pki::new();
    let bytes = bytes_for(stack);
    for suite in SUITES {
        for key_update in ["plain", "requested"] {
            let case = format!("{stack} as inbound gateway, {suite}, peer key update {key_update}");
            eprintln!("{case}: {bytes} bytes");
            let mut peer = Peer::spawn(
                stack,
                "server",
                "127.0.0.1:0",
                &pki,
                "hpc",
                suite,
                bytes,
                key_update,
            );
            let port: u16 = peer.line().parse().unwrap();
            let target: SocketAddr = ([127, 0, 0, 1], port).into();
            let mut outbound = gateway(&pki, "inst");
            let (entries, _fds) = add_channel_session(
                &mut outbound,
                UID,
                Role::Cons,
                vec![target],
                DataChannel::ToPeer { tls: true },
            );
            let sent = instrument(entries[0], bytes);
            assert_eq!(sent, bytes, "{case}");
            let summary = peer.finish(&case, &outbound);
            check(&case, &summary, suite, bytes);
            let log = outbound.log();
            assert!(!log.contains("panicked"), "{log}");
        }
    }
}

/// Sends `bytes` to `entry` while reading the echo back; checks it and
/// returns how many bytes came back, after a clean end.
fn instrument(entry: SocketAddr, bytes: u64) -> u64 {
    let mut tx = TcpStream::connect(entry).unwrap();
    tx.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut rx = tx.try_clone().unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = 0u64;
        let mut buf = vec![0u8; 64 << 10];
        let mut mismatch = None;
        loop {
            let n = rx.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            for (k, b) in buf[..n].iter().enumerate() {
                let at = got + k as u64;
                if *b != byte_at(at) && mismatch.is_none() {
                    mismatch = Some(at);
                }
            }
            got += n as u64;
        }
        assert_eq!(mismatch, None, "the echo differs at this offset");
        got
    });
    let mut chunk = vec![0u8; 64 << 10];
    let mut at = 0u64;
    while at < bytes {
        let n = (bytes - at).min(chunk.len() as u64) as usize;
        for (k, b) in chunk[..n].iter_mut().enumerate() {
            *b = byte_at(at + k as u64);
        }
        tx.write_all(&chunk[..n]).unwrap();
        at += n as u64;
    }
    tx.shutdown(Shutdown::Write).unwrap();
    reader.join().unwrap()
}

fn byte_at(i: u64) -> u8 {
    (i.wrapping_mul(2654435761) >> 13) as u8
}

fn run(test: &str, stack: &str, body: fn(&str)) {
    if let Some(why) = missing(stack) {
        eprintln!("SKIP {test}: {why}");
        return;
    }
    body(stack);
}

#[test]
fn openssl_as_outbound_gateway() {
    run("openssl_as_outbound_gateway", "openssl", peer_as_outbound);
}

#[test]
fn openssl_as_inbound_gateway() {
    run("openssl_as_inbound_gateway", "openssl", peer_as_inbound);
}

#[test]
fn tlslite_as_outbound_gateway() {
    run("tlslite_as_outbound_gateway", "tlslite", peer_as_outbound);
}

#[test]
fn tlslite_as_inbound_gateway() {
    run("tlslite_as_inbound_gateway", "tlslite", peer_as_inbound);
}
