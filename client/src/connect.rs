//! Connecting to an S2CS over gRPC with TLS.

use std::path::PathBuf;
use std::time::Duration;

use scistream_protocol::pb::control_client::ControlClient;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

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

/// Adds the token (or SciStream's `INVALID_TOKEN` placeholder) to every
/// call, and marks the call as made by this client
/// ([`scistream_protocol::CLIENT_HEADER`]: `s2cs` then enforces the rate it
/// asks for).
#[derive(Clone)]
pub struct Auth {
    header: MetadataValue<tonic::metadata::Ascii>,
    /// Mark the call as this client's (`false` only when relaying a call
    /// that came without the mark).
    mark: bool,
    /// A header and its value set on relayed calls (a cluster node's own marker).
    relayed: Option<(&'static str, MetadataValue<tonic::metadata::Ascii>)>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Auth(<redacted>)")
    }
}

impl Auth {
    /// True when a token is sent (not `INVALID_TOKEN`).
    pub fn has_token(&self) -> bool {
        self.header.as_bytes() != b"INVALID_TOKEN"
    }

    /// No token: sends `INVALID_TOKEN`, as SciStream's clients do.
    pub fn none() -> Self {
        Auth {
            header: MetadataValue::from_static("INVALID_TOKEN"),
            mark: true,
            relayed: None,
        }
    }

    /// A token, sent bare as SciStream's client sends it (SciStream's
    /// `s2cs` hands the header's value as it is to Globus's token checker;
    /// ours takes `Bearer TOKEN` too).
    pub fn bearer(token: &str) -> Result<Self, ClientError> {
        let header = token.parse().map_err(|_| {
            ClientError::Input("the stored token holds characters not allowed in a header".into())
        })?;
        Ok(Auth {
            header,
            mark: true,
            relayed: None,
        })
    }

    /// A call relayed as it came: its `authorization` value, and the
    /// client mark only if it carried one (a cluster node passing a call
    /// on to the node that holds the session).
    /// `relayed` (a header name and its value) is set on every call, so
    /// that the receiving node knows how the call was passed on.
    pub fn relayed(
        header: MetadataValue<tonic::metadata::Ascii>,
        mark: bool,
        relayed: (&'static str, MetadataValue<tonic::metadata::Ascii>),
    ) -> Self {
        Auth {
            header,
            mark,
            relayed: Some(relayed),
        }
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
        if let Some((h, v)) = &self.relayed {
            request.metadata_mut().insert(*h, v.clone());
        }
        if self.mark {
            request.metadata_mut().insert(
                scistream_protocol::CLIENT_HEADER,
                MetadataValue::from_static(CLIENT_MARK),
            );
        }
        Ok(request)
    }
}

/// This client's mark on every call.
const CLIENT_MARK: &str = concat!("scistream-rs/", env!("CARGO_PKG_VERSION"));

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

/// The TLS client configuration for `--server_cert PATH`: its
/// certificates as trust anchors, and pinned (so a self-signed certificate
/// marked CA:TRUE, as `openssl req -x509` makes, works as given; see
/// `scistream-trust`). ALPN h2, as gRPC wants.
fn tls_config(path: &std::path::Path) -> Result<std::sync::Arc<rustls::ClientConfig>, ClientError> {
    let fail = |reason: String| ClientError::TrustRoot {
        path: path.to_owned(),
        reason,
    };
    let anchors = scistream_trust::Anchors::from_file(path).map_err(|e| match e {
        scistream_trust::TrustError::File { reason, .. } => fail(reason),
        other => fail(other.to_string()),
    })?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let verifier = anchors
        .verifier(provider.clone())
        .map_err(|e| fail(e.to_string()))?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(std::sync::Arc::new(config))
}

/// Connects (TCP and TLS) to `addr` (`host:port`).
pub async fn connect(addr: &str, trust: &Trust, auth: Auth) -> Result<Connection, ClientError> {
    let channel = channel(addr, trust).await?;
    Ok(Connection {
        client: ControlClient::with_interceptor(channel, auth),
        addr: addr.to_owned(),
    })
}

/// A client on an existing channel, sending `auth` with every call (one
/// HTTP/2 connection carries the calls of many callers, each with its own
/// credentials: a cluster node passing calls on to another).
pub fn with_auth(channel: Channel, auth: Auth) -> Control {
    ControlClient::with_interceptor(channel, auth)
}

/// The HTTP/2 channel (TCP and TLS) to `addr` (`host:port`), without a
/// client: see [`with_auth`].
pub async fn channel(addr: &str, trust: &Trust) -> Result<Channel, ClientError> {
    let host = split_host(addr)?;
    // TLS is this client's own (a connector below), so the URI stays http.
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| ClientError::Input(format!("--s2cs {addr}: {e}")))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    match trust {
        Trust::Insecure => endpoint.connect().await,
        Trust::Root(path) => {
            let config = tls_config(path)?;
            let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|_| {
                ClientError::Input(format!(
                    "--s2cs {addr}: '{host}' is not a host name or IP address"
                ))
            })?;
            let target = addr.to_owned();
            let connector = tower::service_fn(move |_: tonic::transport::Uri| {
                let (config, name, target) = (config.clone(), name.clone(), target.clone());
                async move {
                    let tcp = tokio::net::TcpStream::connect(&target).await?;
                    tcp.set_nodelay(true)?;
                    let tls = tokio_rustls::TlsConnector::from(config)
                        .connect(name, tcp)
                        .await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
                }
            });
            endpoint.connect_with_connector(connector).await
        }
    }
    .map_err(|e| classify(addr, &trust.describe(), &e))
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
