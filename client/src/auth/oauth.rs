//! OAuth2 for a native application (RFC 8252) with PKCE (RFC 7636): the
//! pieces `s2uc login`, refresh and `s2uc logout` are made of. Globus Auth
//! is the default server; any OAuth2/OIDC server works through its
//! discovery document.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::ClientError;

pub use scistream_oauth::{GLOBUS, SCISTREAM_CLIENT_ID, scope_string};

/// A PKCE verifier and its S256 challenge.
#[derive(Clone)]
pub struct Pkce {
    /// The secret the client keeps until the code exchange.
    pub verifier: String,
    /// BASE64URL(SHA256(verifier)), sent with the authorization request.
    pub challenge: String,
}

impl std::fmt::Debug for Pkce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkce")
            .field("challenge", &self.challenge)
            .finish_non_exhaustive()
    }
}

/// Random URL-safe text of `bytes` random bytes.
pub fn random_token(bytes: usize) -> Result<String, ClientError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf)
        .map_err(|e| ClientError::Input(format!("no randomness available: {e}")))?;
    Ok(URL_SAFE_NO_PAD.encode(buf))
}

impl Pkce {
    /// A fresh verifier (32 random bytes: 43 characters) and its challenge.
    pub fn generate() -> Result<Pkce, ClientError> {
        Ok(Pkce::from_verifier(random_token(32)?))
    }

    /// The challenge of a given verifier.
    pub fn from_verifier(verifier: String) -> Pkce {
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        Pkce {
            verifier,
            challenge,
        }
    }
}

/// An authorization server's endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// Where the user authorizes.
    pub authorize: String,
    /// Where codes and refresh tokens become tokens.
    pub token: String,
    /// Where tokens are revoked (RFC 7009), when the server has one.
    pub revoke: Option<String>,
    /// Where the user is sent after authorizing: a page that shows the code.
    pub redirect_uri: String,
}

impl Endpoints {
    /// Globus Auth's.
    pub fn globus() -> Endpoints {
        Endpoints {
            authorize: format!("{GLOBUS}/v2/oauth2/authorize"),
            token: format!("{GLOBUS}/v2/oauth2/token"),
            revoke: Some(format!("{GLOBUS}/v2/oauth2/token/revoke")),
            redirect_uri: format!("{GLOBUS}/v2/web/auth-code"),
        }
    }

    /// The endpoints of `server`: Globus's, or from the server's OIDC
    /// discovery document (`/.well-known/openid-configuration`).
    pub async fn for_server(
        http: &reqwest::Client,
        server: &str,
        redirect_uri: Option<&str>,
    ) -> Result<Endpoints, ClientError> {
        let server = server.trim_end_matches('/');
        if server == GLOBUS {
            let mut e = Endpoints::globus();
            if let Some(r) = redirect_uri {
                e.redirect_uri = r.to_owned();
            }
            return Ok(e);
        }
        #[derive(Deserialize)]
        struct Discovery {
            authorization_endpoint: String,
            token_endpoint: String,
            revocation_endpoint: Option<String>,
        }
        let url = format!("{server}/.well-known/openid-configuration");
        let d: Discovery = http
            .get(&url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| {
                ClientError::Auth(format!("cannot read the discovery document {url}: {e}"))
            })?
            .json()
            .await
            .map_err(|e| {
                ClientError::Auth(format!("{url} is not an OIDC discovery document: {e}"))
            })?;
        Ok(Endpoints {
            authorize: d.authorization_endpoint,
            token: d.token_endpoint,
            revoke: d.revocation_endpoint,
            // Out of band: the server shows the code for the user to paste.
            redirect_uri: redirect_uri
                .unwrap_or("urn:ietf:wg:oauth:2.0:oob")
                .to_owned(),
        })
    }

    /// The URL the user opens to authorize.
    pub fn authorize_url(&self, client_id: &str, scope: &str, pkce: &Pkce, state: &str) -> String {
        let q = [
            ("response_type", "code"),
            ("client_id", client_id),
            ("redirect_uri", &self.redirect_uri),
            ("scope", scope),
            ("code_challenge", &pkce.challenge),
            ("code_challenge_method", "S256"),
            ("state", state),
            ("access_type", "offline"),
            ("prompt", "login"),
        ];
        let query: Vec<String> = q
            .iter()
            .map(|(k, v)| format!("{k}={}", urlencode(v)))
            .collect();
        format!("{}?{}", self.authorize, query.join("&"))
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A token endpoint's answer.
#[derive(Clone, Deserialize)]
pub struct TokenResponse {
    /// The bearer token.
    pub access_token: String,
    /// Lets the client get a new access token without the user.
    pub refresh_token: Option<String>,
    /// Seconds the access token is valid.
    pub expires_in: Option<u64>,
    /// The granted scope.
    pub scope: Option<String>,
    /// Globus: the identity's username, when the server says.
    pub username: Option<String>,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

async fn token_request(
    http: &reqwest::Client,
    url: &str,
    form: &[(&str, &str)],
) -> Result<TokenResponse, ClientError> {
    let resp =
        http.post(url).form(form).send().await.map_err(|e| {
            ClientError::Auth(format!("cannot reach the token endpoint {url}: {e}"))
        })?;
    let status = resp.status();
    if !status.is_success() {
        #[derive(Deserialize)]
        struct OAuthError {
            error: Option<String>,
            error_description: Option<String>,
        }
        let detail = resp
            .json::<OAuthError>()
            .await
            .ok()
            .map(|e| {
                format!(
                    "{} {}",
                    e.error.unwrap_or_default(),
                    e.error_description.unwrap_or_default()
                )
            })
            .unwrap_or_default();
        return Err(ClientError::Auth(format!(
            "the token endpoint refused ({status}): {}",
            detail.trim()
        )));
    }
    resp.json()
        .await
        .map_err(|e| ClientError::Auth(format!("unreadable answer from the token endpoint: {e}")))
}

/// Exchanges an authorization code (with its PKCE verifier) for tokens.
pub async fn exchange_code(
    http: &reqwest::Client,
    endpoints: &Endpoints,
    client_id: &str,
    code: &str,
    pkce: &Pkce,
) -> Result<TokenResponse, ClientError> {
    token_request(
        http,
        &endpoints.token,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &endpoints.redirect_uri),
            ("client_id", client_id),
            ("code_verifier", &pkce.verifier),
        ],
    )
    .await
}

/// Gets a new access token with a refresh token.
pub async fn refresh(
    http: &reqwest::Client,
    token_url: &str,
    client_id: &str,
    refresh_token: &str,
) -> Result<TokenResponse, ClientError> {
    token_request(
        http,
        token_url,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", client_id),
        ],
    )
    .await
}

/// Revokes a token (RFC 7009).
pub async fn revoke(
    http: &reqwest::Client,
    url: &str,
    client_id: &str,
    token: &str,
) -> Result<(), ClientError> {
    let resp = http
        .post(url)
        .form(&[("token", token), ("client_id", client_id)])
        .send()
        .await
        .map_err(|e| {
            ClientError::Auth(format!("cannot reach the revocation endpoint {url}: {e}"))
        })?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(ClientError::Auth(format!(
            "the revocation endpoint {url} answered {}",
            resp.status()
        )))
    }
}

/// The HTTPS client for the authorization server (system roots plus `extra_ca`).
pub fn http_client(extra_ca: Option<&std::path::Path>) -> Result<reqwest::Client, ClientError> {
    scistream_oauth::http_client(extra_ca, std::time::Duration::from_secs(10))
        .map_err(|e| ClientError::Input(e.to_string()))
}

/// Refuses `http://` URLs that are not loopback: tokens must not cross a network in clear.
pub fn check_url(url: &str) -> Result<(), ClientError> {
    scistream_oauth::check_url(url).map_err(|e| ClientError::Input(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_matches_the_rfc_7636_test_vector() {
        // RFC 7636, Appendix B.
        let p = Pkce::from_verifier("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".into());
        assert_eq!(p.challenge, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
        let fresh = Pkce::generate().unwrap();
        assert_eq!(fresh.verifier.len(), 43);
        assert!(
            fresh
                .verifier
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_ne!(fresh.verifier, Pkce::generate().unwrap().verifier);
    }

    #[test]
    fn authorize_url_carries_pkce_and_encodes() {
        let p = Pkce::from_verifier("v".repeat(43));
        let url = Endpoints::globus().authorize_url(
            "cid",
            "https://auth.globus.org/scopes/x/scistream",
            &p,
            "st",
        );
        assert!(url.starts_with(
            "https://auth.globus.org/v2/oauth2/authorize?response_type=code&client_id=cid"
        ));
        assert!(
            url.contains(&format!("code_challenge={}", p.challenge))
                && url.contains("code_challenge_method=S256")
        );
        assert!(url.contains("scope=https%3A%2F%2Fauth.globus.org%2Fscopes%2Fx%2Fscistream"));
        assert!(url.contains("redirect_uri=https%3A%2F%2Fauth.globus.org%2Fv2%2Fweb%2Fauth-code"));
    }
}
