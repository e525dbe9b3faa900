//! Client certificates on the inbound side (mutual TLS), verified by
//! rustls's WebPKI verifier, with one addition: when it refuses a
//! certificate, the certificate's subject and issuer are kept for the
//! refusal's log line and status, so the admin learns *which* certificate
//! the outbound gateway presented and which CA their `--peer-ca` lacks.
//!
//! The verifier is shared by every connection; handshakes run on their
//! worker thread from start to end of one `process` call, so the
//! description is handed over in a thread-local, read right after the
//! failed call ([`take_refused`]).

use std::cell::RefCell;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

thread_local! {
    static REFUSED: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// The description of the client certificate this thread's verifier
/// refused last, if any (cleared by reading).
pub fn take_refused() -> Option<String> {
    REFUSED.with(|r| r.borrow_mut().take())
}

/// Delegates to `inner`, remembering what it refused.
#[derive(Debug)]
pub struct NamingVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl NamingVerifier {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ClientCertVerifier>) -> NamingVerifier {
        NamingVerifier { inner }
    }
}

impl ClientCertVerifier for NamingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verdict = self
            .inner
            .verify_client_cert(end_entity, intermediates, now);
        if verdict.is_err() {
            let described = scistream_trust::describe_certificate(end_entity);
            REFUSED.with(|r| *r.borrow_mut() = Some(described));
        }
        verdict
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// What the inbound gateway's log and status say when the outbound
/// gateway's certificate is refused (`error`) or missing.
pub fn refusal_words(error: &rustls::Error) -> Option<String> {
    let why_asked = "this gateway asks the outbound gateway for a certificate because the \
        session's uid is not random (SciStream's time-based uids get mutual TLS) or because it \
        runs with --require-client-cert";
    match error {
        rustls::Error::NoCertificatesPresented => Some(format!(
            "the outbound gateway presented no certificate; {why_asked}: give the outbound \
             gateway's s2cs a --data-cert (or --server_crt) issued by a CA in this gateway's --peer-ca"
        )),
        rustls::Error::InvalidCertificate(_) => {
            let which = take_refused().unwrap_or_else(|| "its certificate".into());
            Some(format!(
                "the outbound gateway's certificate ({which}) is not trusted: {}; {why_asked}: \
                 add the CA that issued it to this gateway's --peer-ca",
                scistream_trust::words(error)
            ))
        }
        _ => None,
    }
}
