//! A small but real OAuth2 authorization server for tests, on loopback:
//! OIDC discovery, the authorization-code flow with PKCE (S256), refresh
//! tokens, RFC 7009 revocation and RFC 7662 introspection (with Globus
//! Auth's `identity_set`), with real token issuance, expiry and revocation.
//!
//! The "browser" is the test: [`OAuthServer::authorize`] opens the URL
//! `s2uc login` prints, as the user [`OAuthServer::set_user`] named, and
//! returns the code the page shows. Introspection can be made to fail
//! ([`OAuthServer::set_down`]) or to hang ([`OAuthServer::set_delay`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

/// The resource server (the s2cs) the tokens are for.
pub const RESOURCE_ID: &str = "s2cs-test-resource";
/// Its secret.
pub const RESOURCE_SECRET: &str = "s2cs-test-secret-0123456789";
/// The scope tokens for this resource carry.
pub const SCOPE: &str = "urn:test:scistream";
/// The public client id `s2uc` uses.
pub const CLIENT_ID: &str = "s2uc-test-client";

#[derive(Debug, Clone)]
struct Grant {
    user: String,
    scope: String,
    expires: u64,
    revoked: bool,
}

#[derive(Debug)]
struct Pending {
    user: String,
    scope: String,
    challenge: String,
    client_id: String,
    redirect_uri: String,
}

#[derive(Debug, Default)]
struct Inner {
    user: String,
    access: HashMap<String, Grant>,
    refresh: HashMap<String, Grant>,
    codes: HashMap<String, Pending>,
    lifetime: u64,
    down: bool,
    delay: Duration,
}

#[derive(Debug, Default)]
struct Shared {
    inner: Mutex<Inner>,
    introspections: AtomicU64,
    refreshes: AtomicU64,
    revocations: AtomicU64,
    counter: AtomicU64,
}

/// The server; stops when dropped.
#[derive(Debug)]
pub struct OAuthServer {
    /// Its base URL (`http://127.0.0.1:PORT`), also its OIDC issuer.
    pub url: String,
    shared: Arc<Shared>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl OAuthServer {
    /// Starts the server on an ephemeral loopback port.
    pub fn start() -> OAuthServer {
        let shared = Arc::new(Shared::default());
        {
            let mut i = shared.inner.lock().unwrap();
            i.user = "alice".into();
            i.lifetime = 3600;
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let url = format!("http://{addr}");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .route("/revoke", post(revoke))
            .route("/introspect", post(introspect))
            .with_state(shared.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stop_rx.await;
                    })
                    .await;
            });
        });
        OAuthServer {
            url,
            shared,
            _stop: stop_tx,
        }
    }

    /// Who is "logged in" at the server when the test opens an authorize URL.
    pub fn set_user(&self, user: &str) {
        self.shared.inner.lock().unwrap().user = user.into();
    }

    /// Lifetime of the access tokens issued from now on.
    pub fn set_lifetime(&self, secs: u64) {
        self.shared.inner.lock().unwrap().lifetime = secs;
    }

    /// Introspection answers 503 while down.
    pub fn set_down(&self, down: bool) {
        self.shared.inner.lock().unwrap().down = down;
    }

    /// Introspection waits this long before answering.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.inner.lock().unwrap().delay = delay;
    }

    /// Issues an access token directly (no login), for `user` and `scope`.
    pub fn issue(&self, user: &str, scope: &str, lifetime: u64) -> String {
        let token = new_token(&self.shared, "at");
        self.shared.inner.lock().unwrap().access.insert(
            token.clone(),
            Grant {
                user: user.into(),
                scope: scope.into(),
                expires: now() + lifetime,
                revoked: false,
            },
        );
        token
    }

    /// Revokes every token of `user` at the server (as an admin would).
    pub fn revoke_user(&self, user: &str) {
        let mut guard = self.shared.inner.lock().unwrap();
        let i = &mut *guard;
        for g in i.access.values_mut().chain(i.refresh.values_mut()) {
            if g.user == user {
                g.revoked = true;
            }
        }
    }

    /// Plays the browser: opens the authorize URL `s2uc login` printed and
    /// returns the code the page shows.
    pub fn authorize(&self, url: &str) -> String {
        let path = url.strip_prefix(&self.url).expect("URL of another server");
        let mut s = std::net::TcpStream::connect(self.url.trim_start_matches("http://")).unwrap();
        use std::io::{Read, Write};
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "authorize failed: {out}");
        let body = out.split("\r\n\r\n").nth(1).unwrap_or("");
        body.trim()
            .strip_prefix("Your authorization code: ")
            .unwrap_or_else(|| panic!("no code in {body}"))
            .to_owned()
    }

    /// Introspection round trips so far.
    pub fn introspections(&self) -> u64 {
        self.shared.introspections.load(Ordering::SeqCst)
    }

    /// Refresh grants so far.
    pub fn refreshes(&self) -> u64 {
        self.shared.refreshes.load(Ordering::SeqCst)
    }

    /// Revocations so far.
    pub fn revocations(&self) -> u64 {
        self.shared.revocations.load(Ordering::SeqCst)
    }

    /// Whether `token` is an access token the server considers active.
    pub fn is_active(&self, token: &str) -> bool {
        let i = self.shared.inner.lock().unwrap();
        i.access
            .get(token)
            .is_some_and(|g| !g.revoked && g.expires > now())
    }
}

fn new_token(shared: &Shared, kind: &str) -> String {
    let n = shared.counter.fetch_add(1, Ordering::SeqCst);
    let mut h = Sha256::new();
    h.update(format!("{kind}{n}{:?}", SystemTime::now()).as_bytes());
    h.update(std::process::id().to_le_bytes());
    format!("{kind}_{}", URL_SAFE_NO_PAD.encode(h.finalize()))
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

async fn discovery(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Json<serde_json::Value> {
    let _ = s;
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    let base = format!("http://{host}");
    Json(json!({
        "issuer": base,
        "authorization_endpoint": format!("{base}/authorize"),
        "token_endpoint": format!("{base}/token"),
        "revocation_endpoint": format!("{base}/revoke"),
        "introspection_endpoint": format!("{base}/introspect"),
        "code_challenge_methods_supported": ["S256"],
    }))
}

#[derive(Deserialize)]
struct AuthorizeQuery {
    response_type: String,
    client_id: String,
    redirect_uri: String,
    scope: String,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
}

async fn authorize(State(s): State<Arc<Shared>>, Query(q): Query<AuthorizeQuery>) -> Response {
    if q.response_type != "code" {
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_response_type", "");
    }
    let (Some(challenge), Some("S256")) = (q.code_challenge, q.code_challenge_method.as_deref())
    else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "PKCE with S256 is required",
        );
    };
    let code = new_token(&s, "code");
    let mut i = s.inner.lock().unwrap();
    let user = i.user.clone();
    i.codes.insert(
        code.clone(),
        Pending {
            user,
            scope: q.scope,
            challenge,
            client_id: q.client_id,
            redirect_uri: q.redirect_uri,
        },
    );
    (StatusCode::OK, format!("Your authorization code: {code}\n")).into_response()
}

fn issue_pair(s: &Shared, i: &mut Inner, user: &str, scope: &str) -> serde_json::Value {
    let access = new_token(s, "at");
    let refresh = new_token(s, "rt");
    let grant = Grant {
        user: user.into(),
        scope: scope.into(),
        expires: now() + i.lifetime,
        revoked: false,
    };
    i.access.insert(access.clone(), grant.clone());
    i.refresh.insert(
        refresh.clone(),
        Grant {
            expires: u64::MAX,
            ..grant
        },
    );
    json!({
        "access_token": access,
        "refresh_token": refresh,
        "token_type": "Bearer",
        "expires_in": i.lifetime,
        "scope": scope,
        "username": format!("{user}@example.org"),
    })
}

async fn token(State(s): State<Arc<Shared>>, Form(f): Form<HashMap<String, String>>) -> Response {
    let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
    let mut i = s.inner.lock().unwrap();
    match get("grant_type") {
        "authorization_code" => {
            let Some(p) = i.codes.remove(get("code")) else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "unknown or used code",
                );
            };
            let verifier_hash =
                URL_SAFE_NO_PAD.encode(Sha256::digest(get("code_verifier").as_bytes()));
            if verifier_hash != p.challenge {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "PKCE verification failed",
                );
            }
            if p.client_id != get("client_id") || p.redirect_uri != get("redirect_uri") {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "client or redirect_uri mismatch",
                );
            }
            let body = issue_pair(&s, &mut i, &p.user, &p.scope);
            Json(body).into_response()
        }
        "refresh_token" => {
            let Some(g) = i.refresh.get(get("refresh_token")).cloned() else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "unknown refresh token",
                );
            };
            if g.revoked {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "refresh token revoked",
                );
            }
            s.refreshes.fetch_add(1, Ordering::SeqCst);
            let access = new_token(&s, "at");
            let lifetime = i.lifetime;
            i.access.insert(
                access.clone(),
                Grant {
                    expires: now() + lifetime,
                    ..g.clone()
                },
            );
            Json(json!({
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": lifetime,
                "scope": g.scope,
            }))
            .into_response()
        }
        _ => oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", ""),
    }
}

async fn revoke(
    State(s): State<Arc<Shared>>,
    Form(f): Form<HashMap<String, String>>,
) -> StatusCode {
    let token = f.get("token").cloned().unwrap_or_default();
    let mut guard = s.inner.lock().unwrap();
    let i = &mut *guard;
    let mut found = false;
    for map in [&mut i.access, &mut i.refresh] {
        if let Some(g) = map.get_mut(&token) {
            g.revoked = true;
            found = true;
        }
    }
    if found {
        s.revocations.fetch_add(1, Ordering::SeqCst);
    }
    // RFC 7009: unknown tokens are not an error.
    StatusCode::OK
}

async fn introspect(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    s.introspections.fetch_add(1, Ordering::SeqCst);
    let (down, delay) = {
        let i = s.inner.lock().unwrap();
        (i.down, i.delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if down {
        return (StatusCode::SERVICE_UNAVAILABLE, "down for maintenance").into_response();
    }
    let expected = format!(
        "Basic {}",
        STANDARD.encode(format!("{RESOURCE_ID}:{RESOURCE_SECRET}"))
    );
    if headers.get("authorization").and_then(|h| h.to_str().ok()) != Some(expected.as_str()) {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "bad client credentials",
        );
    }
    let token = f.get("token").cloned().unwrap_or_default();
    let i = s.inner.lock().unwrap();
    let Some(g) = i.access.get(&token) else {
        return Json(json!({"active": false})).into_response();
    };
    if g.revoked || g.expires <= now() {
        return Json(json!({"active": false})).into_response();
    }
    let sub = format!("id-{}", g.user);
    let mut body = json!({
        "active": true,
        "scope": g.scope,
        "client_id": CLIENT_ID,
        "sub": sub,
        "username": format!("{}@example.org", g.user),
        "exp": g.expires,
        "aud": [RESOURCE_ID, "other-audience"],
    });
    if f.get("include").is_some_and(|v| v.contains("identity_set")) {
        body["identity_set"] = json!([sub]);
    }
    Json(body).into_response()
}
