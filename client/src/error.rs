//! Client errors, each saying what to fix.

use std::path::PathBuf;

/// What went wrong talking to an S2CS.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Bad command-line or API input, caught before any call.
    #[error("{0}")]
    Input(String),
    /// The trust root could not be read.
    #[error("cannot use --server_cert {path}: {reason}")]
    TrustRoot {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// No TCP connection to the S2CS.
    #[error(
        "cannot reach s2cs at {addr}: {reason}. Is s2cs running there, and are the host and port right?"
    )]
    Unreachable {
        /// `host:port`.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The TLS handshake failed (usually: certificate not trusted or wrong name).
    #[error(
        "TLS with s2cs at {addr} failed: {reason}. The trust root used was {trust}; pass the \
         gateway's certificate or its CA with --server_cert (and check that the certificate \
         names the host you connect to)"
    )]
    Tls {
        /// `host:port`.
        addr: String,
        /// rustls's reason.
        reason: String,
        /// The trust root file.
        trust: String,
    },
    /// Talking to the authorization server failed.
    #[error("{0}")]
    Auth(String),
    /// The S2CS answered with an error status.
    #[error("s2cs at {addr} refused {rpc}: {code}: {message}")]
    Status {
        /// `host:port`.
        addr: String,
        /// Which call.
        rpc: &'static str,
        /// gRPC code name.
        code: String,
        /// The server's message.
        message: String,
        /// The raw code, for programs.
        raw: tonic::Code,
    },
    /// The outbound half of a whole tunnel failed after the inbound half
    /// was made; the inbound half was released (unless `released` is false).
    #[error(
        "the instrument gateway {instrument} could not make its half of the tunnel: {cause}; {}",
        if *released { format!("the HPC gateway's half at {hpc} was released, nothing is left behind") }
        else { format!("releasing the half at {hpc} failed too: run s2uc release there with the uid") }
    )]
    SecondHalf {
        /// The instrument gateway's `host:port`.
        instrument: String,
        /// The HPC gateway's `host:port`.
        hpc: String,
        /// Why the outbound request failed.
        cause: Box<ClientError>,
        /// Whether both gateways released what they held.
        released: bool,
    },
}

impl ClientError {
    /// The same error with `note` added to the gateway's message (what the
    /// client did about it).
    pub fn with_note(self, note: &str) -> ClientError {
        match self {
            ClientError::Status {
                addr,
                rpc,
                code,
                message,
                raw,
            } => ClientError::Status {
                addr,
                rpc,
                code,
                message: format!("{message}; {note}"),
                raw,
            },
            other => other,
        }
    }

    /// The gRPC code, when the server answered with one.
    pub fn grpc_code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Status { raw, .. } => Some(*raw),
            ClientError::SecondHalf { cause, .. } => cause.grpc_code(),
            _ => None,
        }
    }
}

/// Finds the most telling cause in an error's chain.
pub(crate) fn classify(
    addr: &str,
    trust: &str,
    err: &(dyn std::error::Error + 'static),
) -> ClientError {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    let mut last = err.to_string();
    while let Some(e) = cur {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return ClientError::Tls {
                addr: addr.into(),
                reason: scistream_trust::words(tls),
                trust: trust.into(),
            };
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return ClientError::Tls {
                    addr: addr.into(),
                    reason: scistream_trust::words(tls),
                    trust: trust.into(),
                };
            }
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::HostUnreachable
                    | std::io::ErrorKind::NetworkUnreachable
                    | std::io::ErrorKind::AddrNotAvailable
            ) {
                return ClientError::Unreachable {
                    addr: addr.into(),
                    reason: io.to_string(),
                };
            }
        }
        last = e.to_string();
        cur = e.source();
    }
    let lower = last.to_lowercase();
    if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake") {
        ClientError::Tls {
            addr: addr.into(),
            reason: last,
            trust: trust.into(),
        }
    } else {
        ClientError::Unreachable {
            addr: addr.into(),
            reason: last,
        }
    }
}
