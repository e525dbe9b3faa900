//! From `s2cs` options to an [`Authenticator`] and an [`Access`] policy,
//! with the warnings start-up logs.

use std::path::Path;

use super::{Authenticator, Introspector, IntrospectorConfig, TokenFile, introspect::Secret};
use crate::access::{Access, NameList};
use crate::config::Config;

/// The environment variable holding the client secret.
pub const SECRET_ENV: &str = "S2CS_CLIENT_SECRET";

fn read_secret_file(path: &Path) -> Result<String, String> {
    super::tokens::check_private(path).map_err(|e| format!("--client_secret-file {e}"))?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--client_secret-file {}: {e}", path.display()))?;
    let secret = text.lines().next().unwrap_or("").trim().to_owned();
    if secret.is_empty() {
        return Err(format!("--client_secret-file {} is empty", path.display()));
    }
    Ok(secret)
}

/// The authenticator `config` asks for, and warnings to log.
pub fn authenticator(config: &Config) -> Result<(Authenticator, Vec<String>), String> {
    let mut warnings = Vec::new();
    // SciStream turns authentication on when a secret is given; starting
    // open because the id is missing would hand an admin who copied an old
    // command line an unauthenticated gateway.
    let secret_given = config.client_secret.is_some()
        || config.client_secret_file.is_some()
        || std::env::var(SECRET_ENV).is_ok_and(|s| !s.is_empty());
    if secret_given && config.client_id.is_none() && config.auth.is_none() {
        return Err(format!(
            "a client secret is given (--client_secret, --client_secret-file or {SECRET_ENV}) but no --client_id: \
             give --client_id (this gateway's Globus Auth client id, the id in its scope) to check tokens, \
             or remove the secret"
        ));
    }
    let mode = config.auth.clone().unwrap_or_else(|| {
        if config.client_id.is_some() {
            "introspect".into()
        } else if config.tokens_file.is_some() {
            "tokens".into()
        } else {
            "none".into()
        }
    });
    let auth = match mode.as_str() {
        "none" => {
            warnings.push(
                "AUTHENTICATION IS OFF (--auth none): every control call is accepted from anyone who can reach this port. \
                 Use --client_id (token introspection) or --tokens-file outside development"
                    .into(),
            );
            Authenticator::None
        }
        "tokens" => {
            let path = config
                .tokens_file
                .as_deref()
                .ok_or("--auth tokens needs --tokens-file FILE")?;
            Authenticator::Tokens(TokenFile::load(path).map_err(|e| format!("--tokens-file {e}"))?)
        }
        "introspect" => introspector(config, &mut warnings)?,
        other => {
            return Err(format!(
                "--auth {other}: expected none, introspect or tokens"
            ));
        }
    };
    if !matches!(auth, Authenticator::Introspect(_))
        && (config.client_secret.is_some() || config.client_secret_file.is_some())
    {
        warnings.push(format!(
            "a client secret is given but --auth is {}: it is not used",
            auth.mode()
        ));
    }
    Ok((auth, warnings))
}

/// `--auth introspect`: the introspection client, with this gateway's
/// client id, secret and the scope tokens must carry.
fn introspector(config: &Config, warnings: &mut Vec<String>) -> Result<Authenticator, String> {
    let client_id = config
        .client_id
        .clone()
        .ok_or("--auth introspect needs --client_id (this gateway's OAuth2 client id)")?;
    let from_env = std::env::var(SECRET_ENV).ok().filter(|s| !s.is_empty());
    let secret = match (&config.client_secret_file, &config.client_secret, from_env) {
        (Some(path), _, _) => read_secret_file(path)?,
        (None, Some(s), _) => {
            warnings.push(format!(
                "--client_secret on the command line is visible to every user in process listings; \
                 use --client_secret-file or the {SECRET_ENV} environment variable"
            ));
            s.clone()
        }
        (None, None, Some(s)) => s,
        (None, None, None) => {
            return Err(format!(
                "token introspection needs this gateway's client secret: --client_secret-file FILE, \
                 the {SECRET_ENV} environment variable, or --client_secret"
            ));
        }
    };
    let required_scope = match &config.required_scope {
        Some(s) => s.clone(),
        None if scistream_oauth::is_globus(&config.introspect_url) => {
            scistream_oauth::scope_string(&client_id, scistream_oauth::GLOBUS)
        }
        None => {
            return Err(format!(
                "--introspect-url {} is not Globus Auth: give the scope tokens must carry with --required-scope",
                config.introspect_url
            ));
        }
    };
    let i = Introspector::new(IntrospectorConfig {
        url: config.introspect_url.clone(),
        client_id,
        client_secret: Secret(secret),
        required_scope,
        timeout: config.introspect_timeout,
        cache_ttl: config.introspect_cache,
        negative_ttl: config
            .introspect_cache
            .min(std::time::Duration::from_secs(5)),
        ca: config.auth_ca.clone(),
    })?;
    Ok(Authenticator::Introspect(Box::new(i)))
}

/// The access policy `config` asks for, and warnings to log.
pub fn access(config: &Config, auth_mode: &str) -> Result<(Access, Vec<String>), String> {
    let mut warnings = Vec::new();
    let targets = if config.allow_targets.is_empty() {
        warnings.push(
            "no --allow-targets: this gateway forwards to any address a caller names (an open relay into this network); \
             restrict it, e.g. --allow-targets 10.0.0.0/8:5000-6000"
                .into(),
        );
        None
    } else {
        Some(config.allow_targets.clone())
    };
    let creators = config
        .allow_identities
        .as_deref()
        .map(|p| NameList::load(p).map_err(|e| format!("--allow-identities {e}")))
        .transpose()?;
    if auth_mode == "none" && (creators.is_some() || !config.admins.is_empty()) {
        warnings.push(
            "--allow-identities and --admins have no effect without authentication: every caller is `anonymous`".into(),
        );
    }
    Ok((
        Access {
            targets,
            creators,
            admins: config.admins.clone(),
        },
        warnings,
    ))
}
