//! TLS for the gRPC control service.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The data channel's TLS files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataTls {
    /// Certificate chain this gateway presents.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// The peer facilities' CAs (or gateway certificates, trusted as
    /// pinned); `None`: outbound sessions trust the system's CA store, and
    /// client certificates (mutual TLS) cannot be verified.
    pub peer_ca: Option<PathBuf>,
}

/// Problems with the control service's certificate or key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{what} {path}: {reason}")]
    File {
        /// Which file (`--server_crt`, `--server_key`).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("certificate {cert} and key {key} do not work together: {source}")]
    Pair {
        /// Certificate path.
        cert: PathBuf,
        /// Key path.
        key: PathBuf,
        /// rustls's reason.
        source: rustls::Error,
    },
}

fn file_error(what: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        what,
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// Reads a PEM certificate chain.
pub fn load_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| file_error(what, path, e))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(what, path, format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(
            what,
            path,
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(certs)
}

/// Reads a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(what: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| file_error(what, path, e))?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| file_error(what, path, format!("holds no usable PEM private key ({e})")))
}

/// The rustls configuration of the control service (TLS 1.3 and 1.2, ALPN h2).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs("--server_crt", cert)?;
    let private_key = load_key("--server_key", key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Pair {
            cert: cert.into(),
            key: key.into(),
            source,
        })?
        .with_no_client_auth()
        .with_single_cert(certs, private_key)
        .map_err(|source| TlsError::Pair {
            cert: cert.into(),
            key: key.into(),
            source,
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}
