//! `--auth introspect`: RFC 7662 token introspection, as SciStream's s2cs
//! does it against Globus Auth.
//!
//! Each token is posted (with `include=identity_set`) to the introspection
//! endpoint, authenticated with this gateway's client id and secret. A
//! token is accepted when it is `active`, not past its `exp`, carries the
//! required scope, and its `aud` names our client id. Verdicts are cached
//! under the token's SHA-256 — accepted ones until the token expires or
//! `--introspect-cache` passes (whichever is first: that bounds how long a
//! revoked token still works), refused ones briefly — and concurrent calls
//! with one token share one round trip. A slow or failing endpoint gives
//! `UNAVAILABLE` after `--introspect-timeout`, never a hang.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use scistream_oauth::Introspection;
use tokio::sync::OnceCell;
use tracing::{debug, error, warn};

use super::{Identity, token_digest};
use crate::error::ControlError;

/// Most verdicts held; beyond that, expired ones are dropped, then all.
const MAX_CACHED: usize = 10_000;

/// A secret that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How to introspect.
#[derive(Debug, Clone)]
pub struct IntrospectorConfig {
    /// The introspection endpoint.
    pub url: String,
    /// This gateway's client id (also the audience tokens must name).
    pub client_id: String,
    /// Its secret.
    pub client_secret: Secret,
    /// The scope a token must carry.
    pub required_scope: String,
    /// Bound on one introspection round trip.
    pub timeout: Duration,
    /// Longest an accepted token is trusted without asking again.
    pub cache_ttl: Duration,
    /// How long a refused token stays refused without asking again.
    pub negative_ttl: Duration,
    /// Extra CA (PEM) for the endpoint's certificate.
    pub ca: Option<PathBuf>,
}

#[derive(Debug, Clone)]
enum Verdict {
    Valid {
        identity: Identity,
        exp: u64,
    },
    Refused(String),
    /// The check itself failed; shared by the calls waiting, never cached.
    Unavailable(String),
}

#[derive(Debug)]
struct Cached {
    verdict: Verdict,
    until: SystemTime,
}

/// The introspecting authenticator.
pub struct Introspector {
    http: reqwest::Client,
    config: IntrospectorConfig,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
    in_flight: Mutex<HashMap<[u8; 32], Arc<OnceCell<Verdict>>>>,
}

impl fmt::Debug for Introspector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Introspector")
            .field("url", &self.config.url)
            .field("client_id", &self.config.client_id)
            .field("required_scope", &self.config.required_scope)
            .finish_non_exhaustive()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Introspector {
    /// An introspector; fails on a bad URL or CA file.
    pub fn new(config: IntrospectorConfig) -> Result<Self, String> {
        scistream_oauth::check_url(&config.url).map_err(|e| format!("--introspect-url {e}"))?;
        let http = scistream_oauth::http_client(config.ca.as_deref(), config.timeout)
            .map_err(|e| format!("--auth-ca: {e}"))?;
        Ok(Introspector {
            http,
            config,
            cache: Mutex::default(),
            in_flight: Mutex::default(),
        })
    }

    /// The identity `token` stands for.
    pub async fn identity(&self, token: &str) -> Result<Identity, ControlError> {
        let digest = token_digest(token);
        let verdict = match self.cached(&digest) {
            Some(v) => v,
            None => {
                let cell = self
                    .in_flight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(digest)
                    .or_default()
                    .clone();
                let verdict = cell
                    .get_or_init(|| async {
                        // A flight that just landed may have cached it meanwhile.
                        match self.cached(&digest) {
                            Some(v) => v,
                            None => self.ask(token).await,
                        }
                    })
                    .await
                    .clone();
                // Cache first, then retire the flight: a call arriving in
                // between finds one or the other, never neither.
                self.remember(digest, &verdict);
                {
                    let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
                    if in_flight
                        .get(&digest)
                        .is_some_and(|c| Arc::ptr_eq(c, &cell))
                    {
                        in_flight.remove(&digest);
                    }
                }
                verdict
            }
        };
        match verdict {
            Verdict::Valid { identity, exp } if exp == 0 || exp > now_secs() => Ok(identity),
            Verdict::Valid { .. } => Err(ControlError::Unauthenticated(
                "the token has expired; s2uc refreshes it on the next call, or run s2uc login again"
                    .into(),
            )),
            Verdict::Refused(why) => Err(ControlError::Unauthenticated(why)),
            Verdict::Unavailable(why) => Err(ControlError::Unavailable(why)),
        }
    }

    fn cached(&self, digest: &[u8; 32]) -> Option<Verdict> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(digest)
            .filter(|c| c.until > SystemTime::now())
            .map(|c| c.verdict.clone())
    }

    fn remember(&self, digest: [u8; 32], verdict: &Verdict) {
        let now = SystemTime::now();
        let until = match verdict {
            Verdict::Valid { exp, .. } => {
                let by_ttl = now + self.config.cache_ttl;
                if *exp == 0 {
                    by_ttl
                } else {
                    by_ttl.min(UNIX_EPOCH + Duration::from_secs(*exp))
                }
            }
            Verdict::Refused(_) => now + self.config.negative_ttl,
            Verdict::Unavailable(_) => return,
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, c| c.until > now);
            if cache.len() >= MAX_CACHED {
                warn!(
                    entries = cache.len(),
                    "token cache full of live entries; emptying it"
                );
                cache.clear();
            }
        }
        cache.insert(
            digest,
            Cached {
                verdict: verdict.clone(),
                until,
            },
        );
    }

    /// One round trip to the endpoint.
    async fn ask(&self, token: &str) -> Verdict {
        let c = &self.config;
        let request = self
            .http
            .post(&c.url)
            .basic_auth(&c.client_id, Some(&c.client_secret.0))
            .form(&[("token", token), ("include", "identity_set")])
            .send();
        let response = match tokio::time::timeout(c.timeout, request).await {
            Err(_) => {
                return unavailable(format!(
                    "the token introspection endpoint {} did not answer within {} s",
                    c.url,
                    c.timeout.as_secs_f32()
                ));
            }
            Ok(Err(e)) if e.is_timeout() => {
                return unavailable(format!(
                    "the token introspection endpoint {} did not answer within {} s",
                    c.url,
                    c.timeout.as_secs_f32()
                ));
            }
            Ok(Err(e)) => {
                return unavailable(format!(
                    "cannot reach the token introspection endpoint {}: {}",
                    c.url,
                    error_chain(&e)
                ));
            }
            Ok(Ok(r)) => r,
        };
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            error!(url = %c.url, %status, client_id = %c.client_id,
                "the introspection endpoint refused this gateway's credentials: check --client_id and --client_secret");
            return unavailable(format!(
                "this gateway cannot check tokens: the introspection endpoint refused its credentials ({status}); tell the gateway's administrators"
            ));
        }
        if !status.is_success() {
            return unavailable(format!(
                "the token introspection endpoint {} answered {status}",
                c.url
            ));
        }
        let body = match tokio::time::timeout(c.timeout, response.bytes()).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                return unavailable(format!(
                    "reading the introspection answer failed: {}",
                    error_chain(&e)
                ));
            }
            Err(_) => {
                return unavailable(format!(
                    "the introspection answer from {} did not arrive within {} s",
                    c.url,
                    c.timeout.as_secs_f32()
                ));
            }
        };
        match serde_json::from_slice::<Introspection>(&body) {
            Ok(i) => self.judge(i),
            Err(e) => unavailable(format!(
                "the introspection endpoint {} sent an answer that is not RFC 7662 JSON: {e}",
                c.url
            )),
        }
    }

    fn judge(&self, i: Introspection) -> Verdict {
        let c = &self.config;
        let login = |why: String| {
            Verdict::Refused(format!(
                "{why}; run `s2uc login --scope SCOPE` for this gateway's scope ({})",
                c.required_scope
            ))
        };
        if !i.active {
            return login("the token is not active (expired, revoked, or not issued here)".into());
        }
        if let Some(exp) = i.exp {
            if exp <= now_secs() {
                return login("the token has expired".into());
            }
        }
        if !i.scopes().any(|s| s == c.required_scope) {
            return login(format!(
                "the token is not for this gateway's scope (it carries: {})",
                i.scope.as_deref().unwrap_or("no scope")
            ));
        }
        if !i.aud.contains(&c.client_id) {
            return login(format!(
                "the token's audience does not include this gateway ({})",
                c.client_id
            ));
        }
        let Some(id) = i.sub.clone().or_else(|| i.username.clone()) else {
            return login("the token names no identity (no sub)".into());
        };
        let mut linked = i.identity_set;
        if !linked.contains(&id) {
            linked.push(id.clone());
        }
        let identity = Identity {
            id,
            username: i.username,
            linked,
            source: None,
        };
        debug!(%identity, "token introspected");
        Verdict::Valid {
            identity,
            exp: i.exp.unwrap_or(0),
        }
    }
}

fn unavailable(why: String) -> Verdict {
    warn!("{why}");
    Verdict::Unavailable(format!("{why}; retry later"))
}

/// An error with its causes, for one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}
