//! Who is calling: the bearer token in each call's `authorization`
//! metadata, checked as `--auth` says, becomes an [`Identity`].
//!
//! - `none`: nobody is checked; every caller is `anonymous` (a warning at
//!   start and on every response line says so).
//! - `introspect`: RFC 7662 token introspection at the authorization
//!   server (Globus Auth by default), cached ([`introspect`]).
//! - `tokens`: a file of static tokens and the identity each stands for
//!   ([`tokens`]), re-read on SIGHUP.
//!
//! Tokens arrive raw (SciStream's clients) or as `Bearer TOKEN` (s2uc).
//! A token is never logged; caches key on its SHA-256.

pub mod introspect;
pub mod setup;
pub mod tokens;

use std::fmt;

use sha2::{Digest, Sha256};
use tonic::metadata::MetadataMap;

use crate::error::ControlError;
pub use introspect::{Introspector, IntrospectorConfig};
pub use tokens::TokenFile;

/// Longest token accepted. Globus tokens are ~70 bytes and JWTs a few KiB;
/// anything longer is refused before it is hashed or sent anywhere.
pub const MAX_TOKEN_LEN: usize = 8192;

/// The identity of every caller under `--auth none`.
pub const ANONYMOUS: &str = "anonymous";

/// What SciStream's clients send when they have no token.
pub const NO_TOKEN: &str = "INVALID_TOKEN";

/// The caller of a control call.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    /// Stable id (the token's `sub`, or the name in the tokens file).
    pub id: String,
    /// Human-readable name, when the server gave one.
    pub username: Option<String>,
    /// Every identity linked to this one (Globus identity sets), including `id`.
    pub linked: Vec<String>,
    /// Where the call came from (not stored): what quotas count by when
    /// nobody is authenticated (`--auth none`).
    #[serde(skip)]
    pub source: Option<std::net::IpAddr>,
}

impl Identity {
    /// The caller when authentication is off.
    pub fn anonymous() -> Self {
        Identity {
            id: ANONYMOUS.into(),
            username: None,
            linked: Vec::new(),
            source: None,
        }
    }

    /// What per-identity quotas count by: the identity, or for an
    /// unauthenticated caller its source address (else one anonymous caller
    /// could use up every quota for everyone).
    pub fn quota_key(&self) -> String {
        match (self.id.as_str(), self.source) {
            (ANONYMOUS, Some(ip)) => format!("{ANONYMOUS}@{ip}"),
            _ => self.id.clone(),
        }
    }

    /// True when `name` is this identity: its id, its username, or a linked id.
    pub fn is(&self, name: &str) -> bool {
        self.id == name
            || self.username.as_deref() == Some(name)
            || self.linked.iter().any(|l| l == name)
    }

    /// The name for log lines and messages.
    pub fn display_name(&self) -> &str {
        self.username.as_deref().unwrap_or(&self.id)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names come from token servers and files: escaped, so that one
        // cannot break a log line.
        write!(f, "{}", crate::logsafe::escape(self.display_name()))?;
        if self.username.is_some() {
            write!(f, " ({})", crate::logsafe::escape(&self.id))?;
        }
        if let (ANONYMOUS, Some(ip)) = (self.id.as_str(), self.source) {
            write!(f, "@{ip}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// How calls are authenticated.
#[derive(Debug)]
pub enum Authenticator {
    /// Not at all.
    None,
    /// By token introspection.
    Introspect(Box<Introspector>),
    /// By a static tokens file.
    Tokens(TokenFile),
}

impl Authenticator {
    /// The mode's name, as `--auth` spells it.
    pub fn mode(&self) -> &'static str {
        match self {
            Authenticator::None => "none",
            Authenticator::Introspect(_) => "introspect",
            Authenticator::Tokens(_) => "tokens",
        }
    }

    /// The identity behind a call's metadata, or why there is none
    /// (`UNAUTHENTICATED`; `UNAVAILABLE` when the check itself failed).
    pub async fn authenticate(&self, metadata: &MetadataMap) -> Result<Identity, ControlError> {
        if let Authenticator::None = self {
            return Ok(Identity::anonymous());
        }
        let token = bearer_token(metadata)?;
        match self {
            Authenticator::None => Ok(Identity::anonymous()),
            Authenticator::Introspect(i) => i.identity(token).await,
            Authenticator::Tokens(t) => t.identity(token),
        }
    }

    /// Re-reads what is read from files (SIGHUP).
    pub fn reload(&self) {
        if let Authenticator::Tokens(t) = self {
            t.reload();
        }
    }
}

/// The token of a call: the `authorization` metadata, raw or `Bearer TOKEN`.
pub fn bearer_token(metadata: &MetadataMap) -> Result<&str, ControlError> {
    let unauthenticated = |why: &str| {
        ControlError::Unauthenticated(format!(
            "{why}; run `s2uc login --scope SCOPE` with this gateway's scope, then retry"
        ))
    };
    let value = metadata
        .get("authorization")
        .ok_or_else(|| unauthenticated("no authorization metadata in the call"))?;
    if value.len() > MAX_TOKEN_LEN + "Bearer ".len() {
        return Err(ControlError::Unauthenticated(format!(
            "the authorization metadata is {} bytes; tokens are at most {MAX_TOKEN_LEN}",
            value.len()
        )));
    }
    let text = value
        .to_str()
        .map_err(|_| unauthenticated("the authorization metadata is not printable ASCII"))?
        .trim();
    let token = match text.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        Some(_) => {
            return Err(unauthenticated(
                "the authorization metadata is neither a token nor `Bearer TOKEN`",
            ));
        }
        None => text,
    };
    if token.is_empty() || token == NO_TOKEN || token.eq_ignore_ascii_case("bearer") {
        return Err(unauthenticated("the call carries no token"));
    }
    Ok(token)
}

/// The SHA-256 of a token: what caches and comparisons use instead of it.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(v: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("authorization", v.parse().unwrap());
        m
    }

    #[test]
    fn tokens_raw_or_bearer() {
        assert_eq!(bearer_token(&md("abc")).unwrap(), "abc");
        assert_eq!(bearer_token(&md("Bearer abc")).unwrap(), "abc");
        assert_eq!(bearer_token(&md("bearer  abc ")).unwrap(), "abc");
        for bad in [
            "INVALID_TOKEN",
            "Bearer ",
            "Basic abc",
            "Bearer INVALID_TOKEN",
        ] {
            let e = bearer_token(&md(bad)).unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated, "{bad}");
            assert!(!e.to_string().contains("abc"), "never echo the token");
        }
        let e = bearer_token(&MetadataMap::new()).unwrap_err();
        assert!(e.to_string().contains("s2uc login"), "{e}");
        let long = "x".repeat(MAX_TOKEN_LEN + 100);
        let e = bearer_token(&md(&long)).unwrap_err();
        assert!(e.to_string().contains("at most"), "{e}");
    }

    #[test]
    fn identities_match_by_id_name_or_link() {
        let id = Identity {
            id: "u-1".into(),
            username: Some("alice@anl.gov".into()),
            linked: vec!["u-1".into(), "u-2".into()],
            source: None,
        };
        assert!(id.is("u-1") && id.is("alice@anl.gov") && id.is("u-2"));
        assert!(!id.is("bob"));
        assert_eq!(id.to_string(), "alice@anl.gov (u-1)");
    }
}
