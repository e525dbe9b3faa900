//! Connecting to an S2CS over gRPC with TLS.

use std::path::PathBuf;
use std::time::Duration;

use scistream_protocol::pb::control_client::ControlClient;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::error::{ClientError, classify};

/// How to trust the control server.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Verify the server against this PEM file (its certificate or its CA).
    Root(PathBuf),
    /// No TLS at all (only against `s2cs --insecure`, for development).
    Insecure,
}

impl Trust {
    fn describe(&self) -> String {
        match self {
            Trust::Root(p) => p.display().to_string(),
            Trust::Insecure => "none (--insecure)".into(),
        }
    }
}

/// Adds the bearer token (or SciStream's `INVALID_TOKEN` placeholder) to every call.
#[derive(Clone)]
pub struct Auth {
    header: MetadataValue<tonic::metadata::Ascii>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Auth(<redacted>)")
    }
}

impl Auth {
    /// No token: sends `INVALID_TOKEN`, as SciStream's clients do.
    pub fn none() -> Self {
        Auth {
            header: MetadataValue::from_static("INVALID_TOKEN"),
        }
    }

    /// A bearer token, sent as `Bearer TOKEN`.
    pub fn bearer(token: &str) -> Result<Self, ClientError> {
        let header = format!("Bearer {token}").parse().map_err(|_| {
            ClientError::Input("the stored token holds characters not allowed in a header".into())
        })?;
        Ok(Auth { header })
    }
}

impl Interceptor for Auth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.header.clone());
        Ok(request)
    }
}

/// A gRPC client for one S2CS.
pub type Control = ControlClient<InterceptedService<Channel, Auth>>;

/// A connection to one S2CS, with what is needed to explain errors.
#[derive(Debug, Clone)]
pub struct Connection {
    /// The generated client.
    pub client: Control,
    /// `host:port` as the user gave it.
    pub addr: String,
}

fn split_host(addr: &str) -> Result<String, ClientError> {
    let e: scistream_protocol::Endpoint = addr
        .parse()
        .map_err(|e| ClientError::Input(format!("--s2cs: {e}")))?;
    Ok(match e.host {
        scistream_protocol::Host::Ip(ip) => ip.to_string(),
        scistream_protocol::Host::Name(n) => n,
    })
}

/// Connects (TCP and TLS) to `addr` (`host:port`).
pub async fn connect(addr: &str, trust: &Trust, auth: Auth) -> Result<Connection, ClientError> {
    let host = split_host(addr)?;
    let endpoint = match trust {
        Trust::Insecure => Endpoint::from_shared(format!("http://{addr}")),
        Trust::Root(_) => Endpoint::from_shared(format!("https://{addr}")),
    }
    .map_err(|e| ClientError::Input(format!("--s2cs {addr}: {e}")))?
    .connect_timeout(Duration::from_secs(10))
    .tcp_nodelay(true)
    .http2_keep_alive_interval(Duration::from_secs(30))
    .keep_alive_while_idle(true);
    let endpoint = match trust {
        Trust::Insecure => endpoint,
        Trust::Root(path) => {
            let pem = std::fs::read(path).map_err(|e| ClientError::TrustRoot {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                return Err(ClientError::TrustRoot {
                    path: path.clone(),
                    reason: "holds no PEM certificate".into(),
                });
            }
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(pem))
                .domain_name(host);
            endpoint
                .tls_config(tls)
                .map_err(|e| ClientError::TrustRoot {
                    path: path.clone(),
                    reason: e.to_string(),
                })?
        }
    };
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| classify(addr, &trust.describe(), &e))?;
    Ok(Connection {
        client: ControlClient::with_interceptor(channel, auth),
        addr: addr.to_owned(),
    })
}

impl Connection {
    /// Turns a failed call into a [`ClientError`].
    pub fn status_error(&self, rpc: &'static str, s: tonic::Status) -> ClientError {
        // Transport failures reach us as UNAVAILABLE/UNKNOWN statuses with a source.
        if let Some(src) = std::error::Error::source(&s) {
            if s.code() == tonic::Code::Unavailable || s.code() == tonic::Code::Unknown {
                return classify(&self.addr, "the configured trust root", src);
            }
        }
        ClientError::Status {
            addr: self.addr.clone(),
            rpc,
            code: code_name(s.code()).to_owned(),
            message: s.message().to_owned(),
            raw: s.code(),
        }
    }
}

/// The canonical gRPC name of a code (`NOT_FOUND`), as gRPC documentation and SciStream print it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
