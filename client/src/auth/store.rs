//! The token store: access and refresh tokens per scope, in one JSON file
//! readable by its owner only. A store that others can read is refused,
//! not used: its tokens may already be someone else's.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::ClientError;

/// The tokens of one scope.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredToken {
    /// Bearer token.
    pub access_token: String,
    /// For getting a new access token.
    pub refresh_token: Option<String>,
    /// When the access token expires, seconds since the Unix epoch (0: unknown).
    pub expires_at: u64,
    /// Token endpoint (for refresh).
    pub token_endpoint: String,
    /// Revocation endpoint (for logout).
    pub revocation_endpoint: Option<String>,
    /// The client the tokens were issued to.
    pub client_id: String,
    /// The identity, when the server said.
    pub identity: Option<String>,
}

impl std::fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredToken")
            .field("expires_at", &self.expires_at)
            .field("identity", &self.identity)
            .field("refreshable", &self.refresh_token.is_some())
            .finish_non_exhaustive()
    }
}

impl StoredToken {
    /// Seconds since the Unix epoch.
    pub fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    /// True when the access token has (nearly: 30 s margin) expired.
    pub fn expired(&self) -> bool {
        self.expires_at != 0 && Self::now() + 30 >= self.expires_at
    }
}

/// The store: scope string → tokens.
#[derive(Debug, Default)]
pub struct TokenStore {
    path: PathBuf,
    /// Tokens by scope string.
    pub tokens: BTreeMap<String, StoredToken>,
}

impl TokenStore {
    /// The default location: `$XDG_CONFIG_HOME/scistream/tokens.json`
    /// (`~/.config/scistream/tokens.json`).
    pub fn default_path() -> PathBuf {
        crate::config::config_dir().join("tokens.json")
    }

    /// Opens the store at `path` (empty when the file does not exist).
    pub fn open(path: &Path) -> Result<TokenStore, ClientError> {
        let mut store = TokenStore {
            path: path.to_owned(),
            tokens: BTreeMap::new(),
        };
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(store),
            Err(e) => {
                return Err(ClientError::Input(format!(
                    "token store {}: {e}",
                    path.display()
                )));
            }
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(ClientError::Input(format!(
                "token store {} can be read by others (mode {mode:o}): its tokens may be compromised. \
                 Remove it (s2uc logout, or rm) and log in again; it must be mode 600",
                path.display()
            )));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| ClientError::Input(format!("token store {}: {e}", path.display())))?;
        store.tokens = serde_json::from_str(&text).map_err(|e| {
            ClientError::Input(format!(
                "token store {} is not valid JSON ({e}); remove it and log in again",
                path.display()
            ))
        })?;
        Ok(store)
    }

    /// Writes the store atomically, mode 0600 from the start.
    pub fn save(&self) -> Result<(), ClientError> {
        let err = |e: std::io::Error| {
            ClientError::Input(format!(
                "cannot write the token store {}: {e}",
                self.path.display()
            ))
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        let tmp = self.path.with_extension("json.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        f.write_all(
            serde_json::to_string_pretty(&self.tokens)
                .map_err(|e| err(std::io::Error::other(e)))?
                .as_bytes(),
        )
        .map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)
    }

    /// Deletes the file.
    pub fn delete(self) -> Result<(), ClientError> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ClientError::Input(format!(
                "cannot delete {}: {e}",
                self.path.display()
            ))),
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> StoredToken {
        StoredToken {
            access_token: "secret-access".into(),
            refresh_token: Some("secret-refresh".into()),
            expires_at: StoredToken::now() + 3600,
            token_endpoint: "https://idp/token".into(),
            revocation_endpoint: None,
            client_id: "c".into(),
            identity: Some("alice".into()),
        }
    }

    #[test]
    fn saved_0600_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/tokens.json");
        let mut s = TokenStore::open(&path).unwrap();
        let t = token();
        s.tokens.insert("scope".into(), t.clone());
        s.save().unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(TokenStore::open(&path).unwrap().tokens["scope"], t);
    }

    #[test]
    fn a_store_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        std::fs::write(&path, "{}").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = TokenStore::open(&path).unwrap_err().to_string();
        assert!(
            e.contains("can be read by others") && e.contains("644"),
            "{e}"
        );
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let text = format!("{:?}", token());
        assert!(!text.contains("secret"), "{text}");
    }
}
