//! Authentication for `s2uc`: `login`, `check-auth`, `logout`, and the
//! bearer token each request sends (refreshed when it has expired).

pub mod oauth;
pub mod store;

use std::io::{BufRead, Write};
use std::path::Path;

use serde::Serialize;

use crate::config::ClientConfig;
use crate::connect::Auth;
use crate::error::ClientError;
use oauth::{Endpoints, Pkce, check_url, http_client, scope_string};
use store::{StoredToken, TokenStore};

fn to_stored(
    resp: oauth::TokenResponse,
    endpoints_token: &str,
    revoke: Option<String>,
    client_id: &str,
    previous_refresh: Option<String>,
) -> StoredToken {
    StoredToken {
        access_token: resp.access_token,
        refresh_token: resp.refresh_token.or(previous_refresh),
        expires_at: resp.expires_in.map(|s| StoredToken::now() + s).unwrap_or(0),
        token_endpoint: endpoints_token.to_owned(),
        revocation_endpoint: revoke,
        client_id: client_id.to_owned(),
        identity: resp.username,
    }
}

/// `s2uc login`: prints the URL to open, reads the code the user pastes
/// from `input`, exchanges it and stores the tokens.
pub async fn login(
    config: &ClientConfig,
    scope_id: &str,
    store_path: &Path,
    mut input: impl BufRead,
    mut out: impl Write,
) -> Result<StoredToken, ClientError> {
    check_url(&config.auth_server)?;
    let scope = scope_string(scope_id, &config.auth_server);
    let mut store = TokenStore::open(store_path)?;
    if let Some(t) = store.tokens.get(&scope) {
        if !t.expired() || t.refresh_token.is_some() {
            let _ = writeln!(
                out,
                "Already logged in for scope {scope}; to use other credentials, run s2uc logout first."
            );
            return Ok(t.clone());
        }
    }
    let http = http_client(config.auth_ca.as_deref())?;
    let endpoints =
        Endpoints::for_server(&http, &config.auth_server, config.redirect_uri.as_deref()).await?;
    check_url(&endpoints.token)?;
    let pkce = Pkce::generate()?;
    let state = oauth::random_token(16)?;
    let url = endpoints.authorize_url(&config.client_id, &scope, &pkce, &state);
    let prompt = "Please authenticate with your facility's identity provider here";
    let _ = writeln!(
        out,
        "{prompt}:\n{}\n{url}\n{}\n",
        "-".repeat(prompt.len()),
        "-".repeat(prompt.len())
    );
    let _ = write!(out, "Enter the resulting authorization code here: ");
    let _ = out.flush();
    let mut code = String::new();
    input
        .read_line(&mut code)
        .map_err(|e| ClientError::Input(format!("reading the code: {e}")))?;
    let code = code.trim();
    if code.is_empty() {
        return Err(ClientError::Input("no authorization code given".into()));
    }
    let resp = oauth::exchange_code(&http, &endpoints, &config.client_id, code, &pkce).await?;
    let token = to_stored(
        resp,
        &endpoints.token,
        endpoints.revoke.clone(),
        &config.client_id,
        None,
    );
    store.tokens.insert(scope.clone(), token.clone());
    store.save()?;
    let _ = writeln!(
        out,
        "\nLogged in for scope {scope}. Tokens are stored in {} (readable by you only){}.",
        store.path().display(),
        if token.expires_at > 0 {
            format!(
                "; the access token expires at {}",
                scistream_protocol::units::format_utc(token.expires_at)
            )
        } else {
            String::new()
        }
    );
    Ok(token)
}

/// The authorization to send to `s2cs`: the stored token of `scope` (or of
/// the scope mapped to the `s2cs` host), refreshed first if it expired;
/// `INVALID_TOKEN` when there is none, as SciStream's clients send.
pub async fn bearer_for(
    config: &ClientConfig,
    scope: Option<&str>,
    s2cs: &str,
    store_path: &Path,
) -> Result<Auth, ClientError> {
    let Some(scope_id) = scope.or_else(|| config.scope_for(s2cs)) else {
        return Ok(Auth::none());
    };
    let mut store = TokenStore::open(store_path)?;
    let Some((scope, token)) = stored(&store, config, scope_id) else {
        return Ok(Auth::none());
    };
    let token = token.clone();
    if !token.expired() {
        return Auth::bearer(&token.access_token);
    }
    let Some(refresh_token) = token.refresh_token.clone() else {
        // Expired without a way to refresh: send nothing valid; s2cs says to log in.
        return Ok(Auth::none());
    };
    let http = http_client(config.auth_ca.as_deref())?;
    check_url(&token.token_endpoint)?;
    let resp = oauth::refresh(&http, &token.token_endpoint, &token.client_id, &refresh_token).await.map_err(|e| {
        ClientError::Auth(format!("the stored token for {scope} expired and refreshing it failed ({e}); run s2uc login --scope {scope_id}"))
    })?;
    let mut fresh = to_stored(
        resp,
        &token.token_endpoint,
        token.revocation_endpoint.clone(),
        &token.client_id,
        Some(refresh_token),
    );
    if fresh.identity.is_none() {
        fresh.identity = token.identity.clone();
    }
    store.tokens.insert(scope, fresh.clone());
    store.save()?;
    Auth::bearer(&fresh.access_token)
}

/// The stored token of a scope id: under its scope string at the configured
/// server, or as given (a login with `--auth-server` at another server
/// stores a bare id as is).
fn stored<'a>(
    store: &'a TokenStore,
    config: &ClientConfig,
    scope_id: &str,
) -> Option<(String, &'a StoredToken)> {
    [
        scope_string(scope_id, &config.auth_server),
        scope_id.trim().to_owned(),
    ]
    .into_iter()
    .find_map(|s| store.tokens.get(&s).map(|t| (s, t)))
}

/// What `s2uc check-auth` reports (never the token).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AuthStatus {
    /// The scope string.
    pub scope: String,
    /// A token is stored.
    pub stored: bool,
    /// It has not expired.
    pub valid: bool,
    /// It can be refreshed.
    pub refreshable: bool,
    /// Expiry, RFC 3339, when known.
    pub expires_at: Option<String>,
    /// Identity, when known.
    pub identity: Option<String>,
}

/// `s2uc check-auth`.
pub fn check(
    config: &ClientConfig,
    scope_id: &str,
    store_path: &Path,
) -> Result<AuthStatus, ClientError> {
    let store = TokenStore::open(store_path)?;
    let (scope, t) = match stored(&store, config, scope_id) {
        Some((scope, t)) => (scope, Some(t)),
        None => (scope_string(scope_id, &config.auth_server), None),
    };
    Ok(AuthStatus {
        stored: t.is_some(),
        valid: t.is_some_and(|t| !t.expired()),
        refreshable: t.is_some_and(|t| t.refresh_token.is_some()),
        expires_at: t
            .filter(|t| t.expires_at > 0)
            .map(|t| scistream_protocol::units::format_utc(t.expires_at)),
        identity: t.and_then(|t| t.identity.clone()),
        scope,
    })
}

/// `s2uc logout`: revokes every stored token (best effort) and deletes the
/// store. Returns the revocations that failed, in words.
pub async fn logout(
    config: &ClientConfig,
    store_path: &Path,
) -> Result<(usize, Vec<String>), ClientError> {
    let store = TokenStore::open(store_path)?;
    let http = http_client(config.auth_ca.as_deref())?;
    let mut failures = Vec::new();
    let mut revoked = 0;
    for (scope, t) in &store.tokens {
        let Some(url) = &t.revocation_endpoint else {
            failures.push(format!(
                "{scope}: the server has no revocation endpoint; the tokens expire on their own"
            ));
            continue;
        };
        for (what, token) in [
            ("access", Some(&t.access_token)),
            ("refresh", t.refresh_token.as_ref()),
        ] {
            let Some(token) = token else { continue };
            match check_url(url) {
                Ok(()) => match oauth::revoke(&http, url, &t.client_id, token).await {
                    Ok(()) => revoked += 1,
                    Err(e) => failures.push(format!("{scope} ({what} token): {e}")),
                },
                Err(e) => failures.push(format!("{scope}: {e}")),
            }
        }
    }
    store.delete()?;
    Ok((revoked, failures))
}
