//! OAuth2 pieces shared by `s2uc` and `s2cs`.
//!
//! SciStream secures its control plane with Globus Auth: `s2uc login`
//! obtains a token for a scope, every gRPC call carries it, and `s2cs`
//! checks it by token introspection (RFC 7662). Facilities that run their
//! own OAuth2/OIDC server use the same flows against other URLs. This crate
//! holds what both sides must agree on: the Globus defaults, how a scope id
//! becomes a scope string, the introspection response, and an HTTP client
//! that never sends a token over cleartext outside loopback.
#![forbid(unsafe_code)]

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Deserialize;

/// Globus Auth.
pub const GLOBUS: &str = "https://auth.globus.org";
/// Globus Auth's token introspection endpoint.
pub const GLOBUS_INTROSPECT: &str = "https://auth.globus.org/v2/oauth2/token/introspect";
/// SciStream's registered native-app client id at Globus Auth (public: a
/// native app has no secret).
pub const SCISTREAM_CLIENT_ID: &str = "4787c84e-9c55-4881-b941-cb6720cea11c";

/// Why an HTTP client or URL cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OAuthError {
    /// The extra CA file is unreadable or not PEM certificates.
    #[error("CA file {path}: {reason}")]
    Ca {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The URL would send a token in clear over a network, or is not http(s).
    #[error("{0}")]
    Url(String),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// The scope string of a scope id: a bare id at Globus Auth becomes
/// `https://auth.globus.org/scopes/ID/scistream` (as SciStream forms it);
/// anything that already looks like a scope (a URL, a URN, several scopes)
/// and any scope at another server is used as given.
pub fn scope_string(scope: &str, server: &str) -> String {
    let scope = scope.trim();
    if scope.contains(':') || scope.contains('/') || scope.contains(' ') {
        return scope.to_owned();
    }
    if is_globus(server) {
        format!("{GLOBUS}/scopes/{scope}/scistream")
    } else {
        scope.to_owned()
    }
}

/// True for a URL at Globus Auth.
pub fn is_globus(url: &str) -> bool {
    let u = url.trim_end_matches('/');
    u == GLOBUS || u.starts_with(&format!("{GLOBUS}/"))
}

/// Refuses `http://` URLs that are not loopback (tokens must not cross a
/// network in clear) and anything that is not http(s).
pub fn check_url(url: &str) -> Result<(), OAuthError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| OAuthError::Url(format!("'{url}' is not a URL: {e}")))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" => {
            let loopback = match parsed.host() {
                Some(url::Host::Domain(d)) => d == "localhost",
                Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
                Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
                None => false,
            };
            if loopback {
                Ok(())
            } else {
                Err(OAuthError::Url(format!(
                    "{url}: tokens are only sent over https (plain http is allowed to loopback only)"
                )))
            }
        }
        other => Err(OAuthError::Url(format!(
            "{url}: scheme '{other}' is not http(s)"
        ))),
    }
}

/// An HTTPS client trusting the system's roots plus `extra_ca` (a PEM
/// bundle, for a facility's own authorization server), with ring as the
/// crypto provider and every request bounded by `timeout`.
pub fn http_client(
    extra_ca: Option<&Path>,
    timeout: Duration,
) -> Result<reqwest::Client, OAuthError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // A malformed system certificate is the system's problem; skip it.
        let _ = roots.add(cert);
    }
    if let Some(path) = extra_ca {
        let ca_err = |reason: String| OAuthError::Ca {
            path: path.display().to_string(),
            reason,
        };
        let mut added = 0;
        for c in CertificateDer::pem_file_iter(path).map_err(|e| ca_err(e.to_string()))? {
            let c = c.map_err(|e| ca_err(e.to_string()))?;
            roots.add(c).map_err(|e| ca_err(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(ca_err("no PEM certificate in it".into()));
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| OAuthError::Client(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| OAuthError::Client(e.to_string()))
}

/// An RFC 7662 introspection response, with the Globus Auth extensions
/// (`identity_set`, asked for with `include=identity_set`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Introspection {
    /// Whether the token is valid now.
    pub active: bool,
    /// Space-separated scopes.
    #[serde(default)]
    pub scope: Option<String>,
    /// The OAuth2 client the token was issued to.
    #[serde(default)]
    pub client_id: Option<String>,
    /// The identity (subject) the token stands for.
    #[serde(default)]
    pub sub: Option<String>,
    /// Human-readable name of that identity.
    #[serde(default)]
    pub username: Option<String>,
    /// Expiry, seconds since the epoch.
    #[serde(default)]
    pub exp: Option<u64>,
    /// Audiences: a string or a list of strings.
    #[serde(default, deserialize_with = "one_or_many")]
    pub aud: Vec<String>,
    /// Every identity linked to the subject (Globus Auth).
    #[serde(default)]
    pub identity_set: Vec<String>,
}

impl Introspection {
    /// The scopes as a list.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.as_deref().unwrap_or("").split_ascii_whitespace()
    }
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
        Null(()),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
        OneOrMany::Null(()) => Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_strings() {
        let id = "c42c0dac-0a52-408e-a04f-5d31bfe0aef8";
        let globus = format!("https://auth.globus.org/scopes/{id}/scistream");
        assert_eq!(scope_string(id, GLOBUS), globus);
        assert_eq!(scope_string(id, "https://auth.globus.org/"), globus);
        assert_eq!(scope_string(&format!(" {id}\n"), GLOBUS), globus, "trimmed");
        let full = "https://auth.globus.org/scopes/abc/other";
        assert_eq!(scope_string(full, GLOBUS), full, "a full scope is kept");
        assert_eq!(
            scope_string("scistream", "https://idp.facility.org"),
            "scistream",
            "another server: as given"
        );
        assert_eq!(
            scope_string("urn:facility:scistream", GLOBUS),
            "urn:facility:scistream"
        );
        assert_eq!(scope_string("openid email", GLOBUS), "openid email");
        assert!(!is_globus("https://auth.globus.org.evil.example"));
    }

    #[test]
    fn plain_http_only_to_loopback() {
        assert!(check_url("https://auth.globus.org").is_ok());
        assert!(check_url("http://127.0.0.1:8080/token").is_ok());
        assert!(check_url("http://127.9.9.9/token").is_ok());
        assert!(check_url("http://[::1]:8080/token").is_ok());
        assert!(check_url("http://localhost/x").is_ok());
        assert!(check_url("http://idp.example.org/token").is_err());
        assert!(check_url("http://127.0.0.1.nip.io/token").is_err());
        assert!(check_url("ftp://x").is_err());
        assert!(check_url("not a url").is_err());
    }

    #[test]
    fn introspection_responses_parse() {
        let r: Introspection = serde_json::from_str(
            r#"{"active":true,"scope":"a b","aud":"s2cs","exp":5,"sub":"id1","identity_set":["id1","id2"]}"#,
        )
        .unwrap();
        assert_eq!(r.aud, vec!["s2cs"]);
        assert_eq!(r.scopes().collect::<Vec<_>>(), vec!["a", "b"]);
        let r: Introspection =
            serde_json::from_str(r#"{"active":true,"aud":["x","y"],"extra":1}"#).unwrap();
        assert_eq!(r.aud.len(), 2);
        let r: Introspection = serde_json::from_str(r#"{"active":false}"#).unwrap();
        assert!(!r.active && r.aud.is_empty());
    }
}
