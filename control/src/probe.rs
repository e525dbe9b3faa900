//! Before an outbound session starts forwarding, can each inbound gateway
//! it points at be reached and verified, and does it know the session?
//!
//! SciStream checked nothing here: a session whose every connection would
//! fail (gateway down, certificate not trusted, wrong uid) was accepted,
//! and the instrument found out when its data went nowhere. `s2cs` makes
//! one bounded probe per distinct inbound gateway at `update`: TCP, the TLS
//! handshake with the data channel's trust (`--peer-ca`, else the system's
//! CA store; certificates in the trust file pinned) and this gateway's
//! certificate, then a preamble with the probe flag, which the inbound
//! gateway checks as any other (uid, index) and answers without
//! connecting to its receiver. A failure is FAILED_PRECONDITION naming the
//! gateway and the reason.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use scistream_protocol::preamble::{ACCEPTED, FLAG_PROBE, FLAG_TLS, Preamble, REFUSED, Refusal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use scistream_protocol::Target;

use crate::error::ControlError;
use crate::tls::DataTls;

/// ALPN of the data channel (as `s2ds` offers and requires it).
const ALPN: &[u8] = b"scistream-data/1";

/// Probes inbound gateways the way the outbound `s2ds` will connect to them.
#[derive(Debug, Clone)]
pub struct PeerProbe {
    config: Arc<rustls::ClientConfig>,
    timeout: Duration,
    /// This gateway's certificate, described for refusals.
    own: Option<String>,
}

impl PeerProbe {
    /// The probe for this gateway's data-channel files; `timeout` bounds
    /// each probe (connect, handshake, answer).
    pub fn new(files: &DataTls, timeout: Duration) -> Result<PeerProbe, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let anchors = scistream_trust::Anchors::file_or_system(files.peer_ca.as_deref())
            .map_err(|e| e.to_string())?;
        let verifier = anchors
            .verifier(provider.clone())
            .map_err(|e| e.to_string())?;
        let certs =
            crate::tls::load_certs("--data-cert", &files.cert).map_err(|e| e.to_string())?;
        let key = crate::tls::load_key("--data-key", &files.key).map_err(|e| e.to_string())?;
        let own = certs
            .first()
            .map(|c| scistream_trust::describe_certificate(c));
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(certs, key)
            .map_err(|e| e.to_string())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        Ok(PeerProbe {
            own,
            config: Arc::new(config),
            timeout,
        })
    }

    /// Checks the inbound gateway at `addr` (verified against `name`) for
    /// listener `index` of session `uid`. `Err` says why, for a person.
    pub async fn check(
        &self,
        addr: SocketAddr,
        name: &str,
        uid: &str,
        index: usize,
    ) -> Result<(), String> {
        match tokio::time::timeout(self.timeout, self.attempt(addr, name, uid, index)).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "no answer within {} s (a firewall dropping the data port range?)",
                self.timeout.as_secs_f32()
            )),
        }
    }

    async fn attempt(
        &self,
        addr: SocketAddr,
        name: &str,
        uid: &str,
        index: usize,
    ) -> Result<(), String> {
        let server_name = rustls::pki_types::ServerName::try_from(name.to_owned())
            .map_err(|_| format!("'{name}' is not a name to verify its certificate against"))?;
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        // The probe is a few small writes each waiting for an answer: with
        // Nagle on, the preamble waits for the ACK of the handshake's last
        // flight, a delayed ACK: ~40 ms on every update.
        tcp.set_nodelay(true)
            .map_err(|e| format!("cannot set TCP_NODELAY: {e}"))?;
        let mut tls = tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(server_name, tcp)
            .await
            .map_err(
                |e| match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                    Some(c @ rustls::Error::InvalidCertificate(_)) => format!(
                        "{} (the trust file here is --peer-ca)",
                        scistream_trust::words(c)
                    ),
                    Some(other) => {
                        format!("TLS handshake failed: {}", scistream_trust::words(other))
                    }
                    None => format!("TLS handshake failed: {e} (does it run with --data-tls off?)"),
                },
            )?;
        let preamble = Preamble {
            flags: FLAG_TLS | FLAG_PROBE,
            conn_index: u16::try_from(index).unwrap_or(u16::MAX),
            uid: uid.to_owned(),
            origin: None,
        }
        .encode();
        let sent = match tls.write_all(&preamble).await {
            Ok(()) => tls.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            // A refusal of our certificate may already be waiting (the
            // inbound gateway closed right after its alert).
            let mut byte = [0u8; 1];
            if let Err(r) = tls.read(&mut byte).await {
                if let Some(words) = self.refusal(&r) {
                    return Err(words);
                }
            }
            return Err(format!("sending the probe: {e}"));
        }
        let mut answer = [0u8; 2];
        // TLS 1.3: the inbound gateway judges our certificate after our
        // handshake is done, so its refusal arrives here.
        let mut n = tls.read(&mut answer).await.map_err(|e| {
            self.refusal(&e)
                .unwrap_or_else(|| format!("reading its answer: {e}"))
        })?;
        if n == 1 && answer[0] == REFUSED {
            n += tls.read(&mut answer[1..]).await.unwrap_or(0);
        }
        match answer[..n] {
            [ACCEPTED, ..] => Ok(()),
            [REFUSED, code] | [REFUSED, code, ..] => Err(format!(
                "it refuses the session's connections: {}",
                Refusal::from_code(code)
                    .map(Refusal::describe)
                    .unwrap_or("an unknown reason")
            )),
            [REFUSED] => Err("it refuses the session's connections".into()),
            [] => Err("it closed the connection without answering (an older gateway, or not a SciStream gateway)".into()),
            [other, ..] => Err(format!("it answered {other:#04x}, not a SciStream answer")),
        }
    }
}

impl PeerProbe {
    /// `e`, when it is the inbound gateway's alert, in words that say what to change.
    fn refusal(&self, e: &std::io::Error) -> Option<String> {
        match e.get_ref()?.downcast_ref::<rustls::Error>()? {
            rustls::Error::AlertReceived(alert) => Some(scistream_trust::refused_by_peer(
                *alert,
                self.own.as_deref(),
            )),
            _ => None,
        }
    }
}

/// A gateway as a person would name it: `name (address)` when they differ.
fn gateway_name(name: &str, addr: SocketAddr) -> String {
    if name == addr.ip().to_string() {
        addr.to_string()
    } else {
        format!("{name} ({addr})")
    }
}

/// One probe per distinct inbound gateway (host and address) among the
/// `targets` of session `uid`, all at once. Refused only when none can be
/// used (connections fail over between a session's targets); gateways that
/// cannot are logged. Without a probe, nothing is checked.
pub async fn check_inbound_gateways(
    probe: Option<&PeerProbe>,
    uid: &str,
    targets: &[Target],
) -> Result<(), ControlError> {
    let Some(probe) = probe else {
        return Ok(());
    };
    let mut seen = std::collections::HashSet::new();
    let mut probes = tokio::task::JoinSet::new();
    for (index, t) in targets.iter().enumerate() {
        if !seen.insert((t.server_name.clone(), t.addr.ip())) {
            continue;
        }
        let (probe, uid, t) = (probe.clone(), uid.to_owned(), t.clone());
        probes.spawn(async move {
            let r = probe.check(t.addr, &t.server_name, &uid, index).await;
            (gateway_name(&t.server_name, t.addr), r)
        });
    }
    let probed = probes.len();
    let mut failed = Vec::new();
    while let Some(done) = probes.join_next().await {
        let Ok((gateway, result)) = done else {
            continue;
        };
        if let Err(why) = result {
            failed.push(format!(
                "the inbound gateway {gateway} cannot be used: {}",
                crate::logsafe::escape(&why)
            ));
        }
    }
    // Connections fail over to the session's other targets, so the session
    // is refused only when no inbound gateway can be used at all.
    if !failed.is_empty() && failed.len() == probed {
        failed.sort();
        return Err(ControlError::FailedPrecondition(failed.join("; ")));
    }
    for why in &failed {
        tracing::warn!("{why}; its connections will use the session's other targets");
    }
    Ok(())
}
