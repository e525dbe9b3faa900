//! Whom the TLS clients of scistream-rs trust: `s2uc` verifying an `s2cs`
//! (`--server_cert`), and an outbound gateway verifying the inbound gateway
//! on the data channel (`--peer-ca`).
//!
//! - A **trust file** (PEM) holds CA certificates, gateway certificates, or
//!   both. Every certificate in it is a trust anchor, and also **pinned**: a
//!   server that presents exactly that certificate (byte for byte) is
//!   trusted even when the certificate is marked CA:TRUE, as the ones
//!   `openssl req -x509 -newkey …` makes are (OpenSSL 3 marks them so, and
//!   the Web PKI rules refuse a CA certificate as a server's own:
//!   `CaUsedAsEndEntity`). Many sites make their gateway certificates that
//!   way and hand them out as the trust file; SciStream's Python client
//!   accepts them.
//! - Without a trust file, the **system's CA store** (a gateway with a
//!   publicly issued certificate needs nothing more).
//!
//! The host name (or IP address) check stays in every case: a pinned
//! certificate is accepted only for the names it carries. Its validity dates
//! are not checked: a pinned certificate is trusted as the admin gave it.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Why trust anchors could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// The trust file cannot be read or holds no certificate.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The system's CA store is empty or unreadable.
    #[error("the system's CA store: {0}")]
    System(String),
}

/// Trust anchors, and the certificates trusted as pinned.
#[derive(Debug, Clone)]
pub struct Anchors {
    roots: Arc<RootCertStore>,
    pinned: Vec<CertificateDer<'static>>,
    /// Where they came from, for messages.
    pub source: String,
}

impl Anchors {
    /// Every certificate of a PEM trust file: anchors and pinned.
    pub fn from_file(path: &Path) -> Result<Anchors, TrustError> {
        let err = |reason: String| TrustError::File {
            path: path.to_owned(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read it: {e}")))?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<_, _>>()
            .map_err(|e| err(format!("not valid PEM: {e}")))?;
        if certs.is_empty() {
            return Err(err("holds no PEM certificate".into()));
        }
        let mut roots = RootCertStore::empty();
        for c in &certs {
            roots
                .add(c.clone())
                .map_err(|e| err(format!("a certificate in it is unusable: {e}")))?;
        }
        Ok(Anchors {
            roots: Arc::new(roots),
            pinned: certs,
            source: path.display().to_string(),
        })
    }

    /// The system's CA store (nothing pinned).
    pub fn system() -> Result<Anchors, TrustError> {
        let found = rustls_native_certs::load_native_certs();
        let mut roots = RootCertStore::empty();
        let (added, _ignored) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            let why = found
                .errors
                .first()
                .map(|e| e.to_string())
                .unwrap_or_else(|| "no certificate found".into());
            return Err(TrustError::System(why));
        }
        Ok(Anchors {
            roots: Arc::new(roots),
            pinned: Vec::new(),
            source: "the system's CA store".into(),
        })
    }

    /// From `file` when given, else the system's store.
    pub fn file_or_system(file: Option<&Path>) -> Result<Anchors, TrustError> {
        match file {
            Some(p) => Anchors::from_file(p),
            None => Anchors::system(),
        }
    }

    /// The anchors, for a client-certificate verifier (mutual TLS).
    pub fn roots(&self) -> Arc<RootCertStore> {
        self.roots.clone()
    }

    /// A server-certificate verifier: pinned certificates first, then the
    /// Web PKI rules against the anchors.
    pub fn verifier(
        &self,
        provider: Arc<CryptoProvider>,
    ) -> Result<Arc<dyn ServerCertVerifier>, TrustError> {
        let webpki = WebPkiServerVerifier::builder_with_provider(self.roots.clone(), provider)
            .build()
            .map_err(|e| TrustError::File {
                path: PathBuf::from(&self.source),
                reason: e.to_string(),
            })?;
        Ok(Arc::new(PinnedOrWebPki {
            pinned: self.pinned.clone(),
            webpki,
        }))
    }
}

/// Pinned certificates, else the Web PKI.
#[derive(Debug)]
struct PinnedOrWebPki {
    pinned: Vec<CertificateDer<'static>>,
    webpki: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for PinnedOrWebPki {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self
            .pinned
            .iter()
            .any(|p| p.as_ref() == end_entity.as_ref())
        {
            let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_name(&parsed, server_name)?;
            return Ok(ServerCertVerified::assertion());
        }
        self.webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// A certificate as an admin finds it in their files: `subject …, issued
/// by …` (the distinguished names as OpenSSL prints them), or a note that
/// it does not parse.
pub fn describe_certificate(der: &[u8]) -> String {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => format!("subject {}, issued by {}", cert.subject(), cert.issuer()),
        Err(_) => "a certificate that does not parse as X.509".into(),
    }
}

/// The first certificate of a PEM file, described ([`describe_certificate`]).
pub fn describe_certificate_file(path: &Path) -> Option<String> {
    let first = CertificateDer::pem_file_iter(path).ok()?.next()?.ok()?;
    Some(describe_certificate(&first))
}

/// The other side of a handshake sent `alert`. When it is about this side's
/// certificate (the inbound gateway verifying an outbound gateway's), says
/// which certificate was refused (`own`, as [`describe_certificate`] gives
/// it), why a certificate was asked for, and which trust file to change.
pub fn refused_by_peer(alert: rustls::AlertDescription, own: Option<&str>) -> String {
    use rustls::AlertDescription as A;
    let name = alert_name(alert);
    match alert {
        A::DecryptError
        | A::BadCertificate
        | A::UnknownCA
        | A::CertificateRequired
        | A::CertificateUnknown
        | A::CertificateExpired
        | A::CertificateRevoked
        | A::UnsupportedCertificate
        | A::AccessDenied => {
            let which = match own {
                Some(d) => format!("this gateway's certificate ({d})"),
                None => "this gateway's certificate".into(),
            };
            let fix = if alert == A::CertificateRequired {
                "give this gateway's s2cs a --data-cert (or --server_crt) issued by a CA that the \
                 inbound gateway's --peer-ca holds"
            } else if alert == A::CertificateExpired {
                "it has expired (or the two hosts' clocks disagree): renew this gateway's \
                 --data-cert (or --server_crt)"
            } else {
                "the inbound gateway's --peer-ca must hold the CA that issued it (or this \
                 gateway needs a certificate from a CA it holds)"
            };
            format!(
                "the inbound gateway refused {which} (TLS alert {name}): {fix}. It asks for a \
                 certificate when the session's uid is not random (SciStream's time-based uids get \
                 mutual TLS; a random uuid4 does not) or when it runs with --require-client-cert"
            )
        }
        _ => format!("the other side ended the TLS handshake with the alert {name}"),
    }
}

/// A TLS alert as the TLS specification names it (`certificate_expired`),
/// from rustls's name for it (`CertificateExpired`).
fn alert_name(alert: rustls::AlertDescription) -> String {
    let mut name = String::new();
    for (i, c) in format!("{alert:?}").chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                name.push('_');
            }
            name.push(c.to_ascii_lowercase());
        } else {
            name.push(c);
        }
    }
    name
}

/// For a certificate that does not name what was asked for: the name or
/// address asked for, and the names it carries, as an admin writes them
/// (`127.0.0.1`, `gw.example.org`), not as the library prints them.
pub fn name_mismatch(e: &rustls::Error) -> Option<(String, Vec<String>)> {
    let rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext {
        expected,
        presented,
    }) = e
    else {
        return None;
    };
    let expected = match expected {
        ServerName::DnsName(n) => n.as_ref().to_owned(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    };
    let presented = presented.iter().map(|p| plain_name(p)).collect();
    Some((expected, presented))
}

/// `DnsName("gw.example.org")` -> `gw.example.org`, `IpAddress(10.0.0.1)`
/// -> `10.0.0.1` (rustls's text for a certificate's names).
fn plain_name(p: &str) -> String {
    let inner = p
        .strip_prefix("DnsName(")
        .or_else(|| p.strip_prefix("IpAddress("))
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or(p);
    inner.trim_matches('"').to_owned()
}

/// A TLS failure in words a gateway admin can act on: what is wrong with
/// the certificate and what to change, never a library's Debug text.
pub fn words(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => "its certificate is signed by a CA that the trust file does not hold \
                (give that CA, or the certificate itself, in the trust file)"
                .into(),
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                let presented = match name_mismatch(e) {
                    Some((expected, presented)) => format!(
                        " (asked for {expected}; it names {})",
                        if presented.is_empty() { "nothing".into() } else { presented.join(", ") }
                    ),
                    None => String::new(),
                };
                format!(
                    "its certificate does not name the host or address it was reached at{presented}: \
                     reissue it with that name in its subjectAltName, or connect by a name it carries"
                )
            }
            C::Expired | C::ExpiredContext { .. } => "its certificate has expired: renew it".into(),
            C::NotValidYet | C::NotValidYetContext { .. } => {
                "its certificate is not valid yet (check both hosts' clocks)".into()
            }
            C::Revoked => "its certificate has been revoked".into(),
            C::BadSignature => "its certificate's signature does not verify against the CA in the trust file \
                (a different CA of the same name?)"
                .into(),
            C::BadEncoding => "its certificate is not a well-formed X.509 certificate".into(),
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
                "its certificate is not issued for this use (extended key usage: serverAuth for a \
                 gateway, clientAuth for a client certificate)"
                    .into()
            }
            C::Other(other) if format!("{other:?}").contains("CaUsedAsEndEntity") => {
                "its certificate is a CA certificate (CA:TRUE, as `openssl req -x509` makes) used as \
                 the server's own: put exactly that certificate in the trust file (it is then pinned), \
                 or issue the gateway a certificate from a CA"
                    .into()
            }
            C::Other(other) if format!("{other:?}").contains("MissingOrMalformedExtensions") => {
                "its certificate lacks required extensions (a subjectAltName with the host name or \
                 address): reissue it with one"
                    .into()
            }
            other => format!("its certificate is not trusted ({other})"),
        },
        rustls::Error::AlertReceived(alert) => refused_by_peer(*alert, None),
        rustls::Error::NoCertificatesPresented => {
            "no certificate was presented, though one is required".into()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// A self-signed certificate marked CA:TRUE, as `openssl req -x509` makes.
    fn ca_true_self_signed(names: &[&str]) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().der().clone()
    }

    fn anchors_of(certs: &[CertificateDer<'static>]) -> Anchors {
        let mut roots = RootCertStore::empty();
        for c in certs {
            roots.add(c.clone()).unwrap();
        }
        Anchors {
            roots: Arc::new(roots),
            pinned: certs.to_vec(),
            source: "test".into(),
        }
    }

    #[test]
    fn certificates_are_described_by_subject_and_issuer() {
        let der = ca_true_self_signed(&["gw.example.org"]);
        let d = describe_certificate(&der);
        assert!(
            d.starts_with("subject ") && d.contains(", issued by "),
            "{d}"
        );
        assert_eq!(
            describe_certificate(b"not a certificate"),
            "a certificate that does not parse as X.509"
        );
    }

    #[test]
    fn a_pinned_ca_true_certificate_is_trusted_for_its_names_only() {
        let cert = ca_true_self_signed(&["gw.example.org", "127.0.0.1"]);
        let v = anchors_of(std::slice::from_ref(&cert))
            .verifier(provider())
            .unwrap();
        let now = UnixTime::now();
        for name in ["gw.example.org", "127.0.0.1"] {
            let name = ServerName::try_from(name).unwrap();
            v.verify_server_cert(&cert, &[], &name, &[], now).unwrap();
        }
        let other = ServerName::try_from("evil.example.org").unwrap();
        assert!(v.verify_server_cert(&cert, &[], &other, &[], now).is_err());
        // The same certificate, not pinned: the Web PKI refuses it as a server's own.
        let webpki = WebPkiServerVerifier::builder_with_provider(
            anchors_of(std::slice::from_ref(&cert)).roots(),
            provider(),
        )
        .build()
        .unwrap();
        let name = ServerName::try_from("gw.example.org").unwrap();
        let e = webpki
            .verify_server_cert(&cert, &[], &name, &[], now)
            .unwrap_err();
        assert!(format!("{e:?}").contains("CaUsedAsEndEntity"), "{e:?}");
        let said = words(&e);
        assert!(
            said.contains("CA certificate") && said.contains("trust file"),
            "{said}"
        );
        assert!(!said.contains("OtherError"), "no Debug text: {said}");
    }

    #[test]
    fn certificate_failures_are_said_in_words() {
        // A leaf certificate (CA:FALSE) its own issuer, which the trust file lacks.
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["gw.example.org".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "a leaf of no known CA");
        let stranger = params.self_signed(&key).unwrap().der().clone();
        let other_ca = ca_true_self_signed(&["ca.example.org"]);
        let webpki = WebPkiServerVerifier::builder_with_provider(
            anchors_of(&[other_ca]).roots(),
            provider(),
        )
        .build()
        .unwrap();
        let name = ServerName::try_from("gw.example.org").unwrap();
        let e = webpki
            .verify_server_cert(&stranger, &[], &name, &[], UnixTime::now())
            .unwrap_err();
        let said = words(&e);
        assert!(
            said.contains("CA that the trust file does not hold"),
            "{said}"
        );
        // A pinned certificate reached by a name it does not carry.
        let cert = ca_true_self_signed(&["gw.example.org"]);
        let v = anchors_of(std::slice::from_ref(&cert))
            .verifier(provider())
            .unwrap();
        let wrong = ServerName::try_from("10.9.8.7").unwrap();
        let e = v
            .verify_server_cert(&cert, &[], &wrong, &[], UnixTime::now())
            .unwrap_err();
        let said = words(&e);
        assert!(said.contains("does not name the host"), "{said}");
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::DecryptError);
        let said = words(&alert);
        assert!(
            said.contains("refused this gateway's certificate (TLS alert decrypt_error)")
                && said.contains("--peer-ca")
                && said.contains("not random"),
            "{said}"
        );
        let other = words(&rustls::Error::AlertReceived(
            rustls::AlertDescription::HandshakeFailure,
        ));
        assert!(other.contains("alert handshake_failure"), "{other}");
    }

    #[test]
    fn another_certificate_is_not_trusted_by_a_pin() {
        let pinned = ca_true_self_signed(&["gw.example.org"]);
        let stranger = ca_true_self_signed(&["gw.example.org"]);
        let v = anchors_of(&[pinned]).verifier(provider()).unwrap();
        let name = ServerName::try_from("gw.example.org").unwrap();
        assert!(
            v.verify_server_cert(&stranger, &[], &name, &[], UnixTime::now())
                .is_err()
        );
    }

    #[test]
    fn trust_files_are_checked() {
        let dir = std::env::temp_dir().join(format!("trust-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "nothing here\n").unwrap();
        let e = Anchors::from_file(&empty).unwrap_err();
        assert!(e.to_string().contains("holds no PEM certificate"), "{e}");
        let e = Anchors::from_file(&dir.join("missing.pem")).unwrap_err();
        assert!(e.to_string().contains("cannot read it"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod name_tests {
    use super::*;

    #[test]
    fn a_name_mismatch_reads_as_an_admin_writes_names() {
        let e =
            rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext {
                expected: ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into()),
                presented: vec![
                    "DnsName(\"localhost\")".into(),
                    "IpAddress(10.0.0.1)".into(),
                ],
            });
        let (asked, names) = name_mismatch(&e).unwrap();
        assert_eq!(asked, "127.0.0.1");
        assert_eq!(names, ["localhost", "10.0.0.1"]);
        let text = words(&e);
        assert!(
            text.contains("asked for 127.0.0.1; it names localhost, 10.0.0.1"),
            "{text}"
        );
        assert!(
            !text.contains("IpAddress") && !text.contains("DnsName"),
            "{text}"
        );
    }
}
