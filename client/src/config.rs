//! `s2uc`'s configuration file: which authorization server, which client,
//! and which scope each S2CS belongs to (SciStream hard-coded that map).
//!
//! `$XDG_CONFIG_HOME/scistream/s2uc.toml` (`~/.config/scistream/s2uc.toml`)
//! or `s2uc --config FILE`:
//!
//! ```toml
//! s2cs = "hpc-gw.example.org:5000"           # default --s2cs
//! server_cert = "hpc-gw-ca.pem"              # default --server_cert (relative: to this file)
//! auth_server = "https://auth.globus.org"   # or an OIDC issuer URL
//! client_id = "4787c84e-9c55-4881-b941-cb6720cea11c"
//! # redirect_uri = "..."                    # default: the server's code page
//! # auth_ca = "/etc/ssl/facility-ca.pem"    # extra CA for the auth server
//! [scopes]                                  # S2CS host -> scope id
//! "hpc-gw.example.org" = "c42c0dac-0a52-408e-a04f-5d31bfe0aef8"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::auth::oauth::{GLOBUS, SCISTREAM_CLIENT_ID};
use crate::error::ClientError;

/// The configuration.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Authorization server: Globus Auth, or an OIDC issuer.
    #[serde(default = "default_server")]
    pub auth_server: String,
    /// The OAuth2 client id of s2uc at that server.
    #[serde(default = "default_client")]
    pub client_id: String,
    /// Redirect URI registered for the client (default: the server's code page).
    pub redirect_uri: Option<String>,
    /// Extra CA certificate (PEM) for the auth server.
    pub auth_ca: Option<PathBuf>,
    /// Default `--s2cs` (HOST:PORT) when the command line gives none.
    pub s2cs: Option<String>,
    /// Default `--server_cert` when the command line gives none; a relative
    /// path is taken from the config file's directory.
    pub server_cert: Option<PathBuf>,
    /// S2CS host (as in `--s2cs`, without the port) to scope.
    #[serde(default)]
    pub scopes: BTreeMap<String, String>,
}

fn default_server() -> String {
    GLOBUS.into()
}

fn default_client() -> String {
    SCISTREAM_CLIENT_ID.into()
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            auth_server: default_server(),
            client_id: default_client(),
            redirect_uri: None,
            auth_ca: None,
            s2cs: None,
            server_cert: None,
            scopes: BTreeMap::new(),
        }
    }
}

/// `$XDG_CONFIG_HOME/scistream`, or `~/.config/scistream`.
pub fn config_dir() -> PathBuf {
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("scistream")
}

impl ClientConfig {
    /// Reads `path`, or the default file if it exists, or the defaults.
    pub fn load(path: Option<&Path>) -> Result<ClientConfig, ClientError> {
        let (path, required) = match path {
            Some(p) => (p.to_owned(), true),
            None => (config_dir().join("s2uc.toml"), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(ClientConfig::default());
            }
            Err(e) => {
                return Err(ClientError::Input(format!(
                    "config {}: {e}",
                    path.display()
                )));
            }
        };
        let mut config: ClientConfig = toml::from_str(&text)
            .map_err(|e| ClientError::Input(format!("config {}: {e}", path.display())))?;
        if let Some(s2cs) = &config.s2cs {
            if s2cs
                .rsplit_once(':')
                .is_none_or(|(_, p)| p.parse::<u16>().is_err())
            {
                return Err(ClientError::Input(format!(
                    "config {}: s2cs = {s2cs:?} is not HOST:PORT",
                    path.display()
                )));
            }
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        for p in [&mut config.server_cert, &mut config.auth_ca]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        }
        Ok(config)
    }

    /// The scope of an S2CS (`host:port`), from `[scopes]`.
    pub fn scope_for(&self, s2cs: &str) -> Option<&str> {
        let host = s2cs
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(s2cs)
            .trim_matches(['[', ']']);
        self.scopes
            .get(host)
            .or_else(|| self.scopes.get(s2cs))
            .map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_globus_and_scistreams_client() {
        let c = ClientConfig::default();
        assert_eq!(c.auth_server, "https://auth.globus.org");
        assert_eq!(c.client_id, SCISTREAM_CLIENT_ID);
    }

    #[test]
    fn scope_map_and_rejections() {
        let c: ClientConfig =
            toml::from_str("[scopes]\n\"hpc-gw\" = \"abc\"\n\"10.0.0.1\" = \"def\"\n").unwrap();
        assert_eq!(c.scope_for("hpc-gw:5000"), Some("abc"));
        assert_eq!(c.scope_for("10.0.0.1:5000"), Some("def"));
        assert_eq!(c.scope_for("other:5000"), None);
        let e = toml::from_str::<ClientConfig>("auth_servr = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("auth_servr"), "unknown keys are named: {e}");
    }
}
