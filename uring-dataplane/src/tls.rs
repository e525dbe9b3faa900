//! TLS 1.3 for the data channel: rustls configurations built from the files
//! `s2cs` names, and socket I/O adapters for rustls on non-blocking sockets.
//!
//! Suites: TLS 1.3 only, all AEAD (AES-128-GCM, AES-256-GCM,
//! ChaCha20-Poly1305), from the provider [`crate::crypto`] chose (*ring* or
//! AWS-LC, by measuring this CPU) in the order that measurement gave.
//! Session tickets and resumption are off (every connection is a fresh
//! handshake, and the secrets can move to the kernel with no ticket traffic
//! in flight).

use std::io::{self, Read, Write};
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// ALPN name of the data channel: a peer that is not a SciStream gateway
/// (or speaks another version) fails the handshake with a clear reason.
pub const ALPN: &[u8] = b"scistream-data/1";

/// Files for the data channel.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// Certificate chain this gateway presents (as inbound server, and as
    /// outbound client when the peer asks for one).
    pub cert: Option<PathBuf>,
    /// Its key.
    pub key: Option<PathBuf>,
    /// PEM bundle of the peer facilities' CAs (or certificates).
    pub peer_ca: Option<PathBuf>,
    /// Inbound: require and verify a client certificate (mutual TLS).
    pub require_client_cert: bool,
    /// Offer ChaCha20-Poly1305 first (a host that can offload only that suite to kTLS).
    pub prefer_chacha: bool,
    /// The crypto provider and suite order.
    pub crypto: crate::crypto::CryptoPlan,
}

/// The configurations the files allow, shared by every worker and
/// replaced as a whole by [`TlsContext::reload`] (connections keep the
/// configuration they started with).
#[derive(Debug, Clone, Default)]
pub struct TlsContext {
    files: TlsFiles,
    current: Arc<RwLock<TlsConfigs>>,
}

#[derive(Debug, Clone, Default)]
struct TlsConfigs {
    /// For `FromPeer` sessions (needs cert and key).
    server: Option<Arc<ServerConfig>>,
    /// For `FromPeer` sessions that require the peer's certificate (needs
    /// cert, key and the peer CA).
    server_mtls: Option<Arc<ServerConfig>>,
    /// For `ToPeer` sessions (needs the peer CA).
    client: Option<Arc<ClientConfig>>,
}

/// A problem with the TLS files.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {reason}")]
pub struct TlsFileError {
    what: &'static str,
    path: PathBuf,
    reason: String,
}

fn file_err(what: &'static str, path: &Path, reason: impl ToString) -> TlsFileError {
    TlsFileError {
        what,
        path: path.into(),
        reason: reason.to_string(),
    }
}

fn certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let bytes = std::fs::read(path).map_err(|e| file_err(what, path, e))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(what, path, format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(file_err(what, path, "holds no PEM certificate"));
    }
    Ok(certs)
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, TlsFileError> {
    let mut store = RootCertStore::empty();
    for c in certs("--peer-ca", path)? {
        store.add(c).map_err(|e| file_err("--peer-ca", path, e))?;
    }
    Ok(Arc::new(store))
}

/// The chosen provider's TLS 1.3 suites, in the measured order (or
/// ChaCha20-Poly1305 first when asked: the suite a kTLS host without key
/// updates can offload).
fn provider_for(
    plan: &crate::crypto::CryptoPlan,
    prefer_chacha: bool,
) -> Arc<rustls::crypto::CryptoProvider> {
    use crate::record::{Crypto, Suite};
    let mut p = match plan.crypto {
        Crypto::Ring => rustls::crypto::ring::default_provider(),
        Crypto::AwsLc => rustls::crypto::aws_lc_rs::default_provider(),
    };
    let suite_of = |name: &str| {
        if name.contains("CHACHA20") {
            Suite::Chacha20Poly1305
        } else if name.contains("AES_128") {
            Suite::Aes128Gcm
        } else {
            Suite::Aes256Gcm
        }
    };
    let rank = |name: &str| {
        if !name.starts_with("TLS13") {
            return 10;
        }
        let suite = suite_of(name);
        if prefer_chacha && suite == Suite::Chacha20Poly1305 {
            return 0;
        }
        1 + plan.suites.iter().position(|s| *s == suite).unwrap_or(5)
    };
    p.cipher_suites
        .sort_by_key(|s| rank(&format!("{:?}", s.suite())));
    Arc::new(p)
}

impl TlsContext {
    /// Builds what the files allow; an unreadable or inconsistent file is an error.
    pub fn load(files: &TlsFiles) -> Result<TlsContext, TlsFileError> {
        Ok(TlsContext {
            files: files.clone(),
            current: Arc::new(RwLock::new(TlsConfigs::load(files)?)),
        })
    }

    /// The server configuration new inbound connections use, if any.
    pub fn server(&self) -> Option<Arc<ServerConfig>> {
        self.read().server.clone()
    }

    /// The server configuration for sessions that require a client
    /// certificate (mutual TLS), if the peer CA allows one.
    pub fn server_mtls(&self) -> Option<Arc<ServerConfig>> {
        self.read().server_mtls.clone()
    }

    /// The client configuration new outbound connections use, if any.
    pub fn client(&self) -> Option<Arc<ClientConfig>> {
        self.read().client.clone()
    }

    /// Reads the same files again (a renewed certificate, a changed peer
    /// CA bundle); new connections use the result. When a file does not
    /// load, the configuration in use is kept and the error returned.
    pub fn reload(&self) -> Result<(), TlsFileError> {
        let fresh = TlsConfigs::load(&self.files)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, TlsConfigs> {
        // Replaced as a whole, never left half-written: a poisoned lock
        // still holds a consistent value.
        self.current.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// This gateway's certificate chain and key (`--data-cert`, `--data-key`).
type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

impl TlsConfigs {
    fn load(files: &TlsFiles) -> Result<TlsConfigs, TlsFileError> {
        let identity = identity(files)?;
        let roots = files.peer_ca.as_deref().map(roots).transpose()?;
        let server = server_config(
            files,
            identity.as_ref(),
            roots.as_ref(),
            files.require_client_cert,
        )?;
        let server_mtls = if files.require_client_cert {
            server.clone()
        } else if roots.is_some() {
            server_config(files, identity.as_ref(), roots.as_ref(), true)?
        } else {
            None
        };
        let client = match anchors(files)? {
            Some(anchors) => Some(client_config(files, &anchors, identity.as_ref())?),
            None => None,
        };
        Ok(TlsConfigs {
            server,
            server_mtls,
            client,
        })
    }
}

/// The gateway's own certificate and key: both or neither.
fn identity(files: &TlsFiles) -> Result<Option<Identity>, TlsFileError> {
    match (&files.cert, &files.key) {
        (Some(c), Some(k)) => {
            let chain = certs("--data-cert", c)?;
            let bytes = std::fs::read(k).map_err(|e| file_err("--data-key", k, e))?;
            let key = PrivateKeyDer::from_pem_slice(&bytes)
                .map_err(|e| file_err("--data-key", k, format!("no usable PEM key ({e})")))?;
            Ok(Some((chain, key)))
        }
        (None, None) => Ok(None),
        _ => Err(file_err(
            "--data-cert/--data-key",
            Path::new("(one of them)"),
            "give both or neither",
        )),
    }
}

/// Whom an outbound gateway trusts: --peer-ca (its certificates also
/// pinned), else the system's CA store (`None`, with a warning, when
/// there is none).
fn anchors(files: &TlsFiles) -> Result<Option<scistream_trust::Anchors>, TlsFileError> {
    match scistream_trust::Anchors::file_or_system(files.peer_ca.as_deref()) {
        Ok(a) => Ok(Some(a)),
        Err(e) if files.peer_ca.is_some() => Err(file_err(
            "--peer-ca",
            files.peer_ca.as_deref().unwrap_or(Path::new("")),
            e,
        )),
        Err(e) => {
            tracing::warn!(error = %e, "no --peer-ca and no usable system CA store: outbound sessions over TLS cannot verify inbound gateways");
            Ok(None)
        }
    }
}

/// The inbound side's TLS server (TLS 1.3, the data channel's ALPN, no
/// tickets or early data, secrets extractable for the relay); with `mtls`
/// it asks for the peer gateway's certificate, verified against `roots`.
/// `None` without an identity.
fn server_config(
    files: &TlsFiles,
    identity: Option<&Identity>,
    roots: Option<&Arc<RootCertStore>>,
    mtls: bool,
) -> Result<Option<Arc<ServerConfig>>, TlsFileError> {
    let Some((chain, key)) = identity else {
        return Ok(None);
    };
    let provider = || provider_for(&files.crypto, files.prefer_chacha);
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| file_err("--data-cert", Path::new(""), e))?;
    let builder = if mtls {
        let roots = roots.cloned().ok_or_else(|| {
            file_err(
                "--require-client-cert",
                Path::new("(no --peer-ca)"),
                "needs --peer-ca to verify client certificates",
            )
        })?;
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|e| file_err("--peer-ca", Path::new(""), e))?;
        builder
            .with_client_cert_verifier(Arc::new(crate::client_cert::NamingVerifier::new(verifier)))
    } else {
        builder.with_no_client_auth()
    };
    let path = files.cert.clone().unwrap_or_default();
    let mut config = builder
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| file_err("--data-cert/--data-key", &path, e))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.send_tls13_tickets = 0;
    config.enable_secret_extraction = true;
    config.max_early_data_size = 0;
    Ok(Some(Arc::new(config)))
}

/// The outbound side's TLS client: verifies inbound gateways with
/// `anchors`, presents the gateway's identity when it has one.
fn client_config(
    files: &TlsFiles,
    anchors: &scistream_trust::Anchors,
    identity: Option<&Identity>,
) -> Result<Arc<ClientConfig>, TlsFileError> {
    let provider = || provider_for(&files.crypto, files.prefer_chacha);
    let verifier = anchors
        .verifier(provider())
        .map_err(|e| file_err("--peer-ca", Path::new(&anchors.source), e))?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| file_err("--peer-ca", Path::new(""), e))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .map_err(|e| file_err("--data-cert/--data-key", Path::new(""), e))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    config.enable_secret_extraction = true;
    Ok(Arc::new(config))
}

/// `Read`/`Write` on a borrowed non-blocking socket (`EAGAIN` is `WouldBlock`).
#[derive(Debug)]
pub struct FdIo<'a>(pub BorrowedFd<'a>);

impl Read for FdIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(rustix::io::read(self.0, buf)?)
    }
}

impl Write for FdIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(rustix::net::send(
            self.0,
            buf,
            rustix::net::SendFlags::NOSIGNAL,
        )?)
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        Ok(rustix::io::writev(self.0, bufs)?)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads a TLS byte stream without ever crossing a record boundary: it
/// reads the 5-byte record header, then at most the record's body. During
/// setup this keeps every byte after the last setup record in the kernel,
/// where kTLS (or the user-space relay) takes it from.
#[derive(Debug, Default)]
pub struct RecordReader {
    header: [u8; 5],
    have: usize,
    body_left: usize,
    /// The first header seen, for diagnosing a peer that is not speaking TLS.
    pub first: Option<[u8; 5]>,
}

impl RecordReader {
    /// Reads into `buf` from `fd`, stopping at the current record's end.
    pub fn read(&mut self, fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.body_left == 0 {
            let want = (5 - self.have).min(buf.len());
            let n = rustix::io::read(fd, &mut buf[..want])?;
            self.header[self.have..self.have + n].copy_from_slice(&buf[..n]);
            self.have += n;
            if self.have == 5 {
                self.first.get_or_insert(self.header);
                self.body_left = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                self.have = 0;
            }
            return Ok(n);
        }
        let want = self.body_left.min(buf.len());
        let n = rustix::io::read(fd, &mut buf[..want])?;
        self.body_left -= n;
        Ok(n)
    }

    /// True between records: nothing of a started record is left unread.
    pub fn at_boundary(&self) -> bool {
        self.body_left == 0 && self.have == 0
    }

    /// Why a peer failed the handshake, in words, from its first bytes.
    pub fn diagnose(&self) -> Option<&'static str> {
        let first = self.first?;
        if first[..4] == scistream_protocol::preamble::MAGIC {
            Some(
                "the peer sent a plaintext SciStream preamble: it runs with --data-tls off while this gateway requires TLS",
            )
        } else if first[0] != 0x16 && first[0] != 0x15 && first[0] != 0x17 {
            Some("the peer is not speaking TLS")
        } else {
            None
        }
    }
}

/// Adapts a [`RecordReader`] to `Read` for rustls's `read_tls`.
#[derive(Debug)]
pub struct RecordRead<'a, 'b>(pub &'a mut RecordReader, pub BorrowedFd<'b>);

impl Read for RecordRead<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(self.1, buf)
    }
}
