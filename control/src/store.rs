//! Durable session state: every session that has had its hello, written
//! (in one redb transaction, fsynced) before the reply that depends on it,
//! so that a restarted `s2cs` recovers what its users were told.
//!
//! `STATE_DIR/sessions.redb`, one table `sessions`: key `UID/ROLE`, value
//! the JSON of a [`StoredSession`]. Requests still waiting for their hello
//! are not stored: their caller's call dies with the process, and the
//! listeners they held are free again.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable, TableDefinition};
use scistream_protocol::Role;
use scistream_protocol::handoff::SessionKey;
use serde::{Deserialize, Serialize};

use crate::auth::Identity;

const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");

/// Where a stored session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoredPhase {
    /// Hello done, no targets yet.
    Ready,
    /// Handed to the data plane.
    Forwarding,
}

/// A session as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSession {
    /// Its uid.
    pub uid: String,
    /// Its role.
    pub role: Role,
    /// Who created it.
    pub owner: Identity,
    /// Connections (listeners).
    pub num_conn: usize,
    /// Rate cap, kbit/s (0: none).
    pub rate_kbps: u64,
    /// The listeners' addresses.
    pub listeners: Vec<SocketAddr>,
    /// Receivers announced by the hello.
    pub receivers: Vec<String>,
    /// Targets as the user wrote them, resolved, and the names to verify.
    pub targets: Vec<String>,
    /// Resolved targets.
    pub target_addrs: Vec<SocketAddr>,
    /// Certificate names of the targets.
    pub target_names: Vec<String>,
    /// Phase.
    pub phase: StoredPhase,
    /// Creation, seconds since the epoch.
    pub created_unix: u64,
}

impl StoredSession {
    /// Its key.
    pub fn key(&self) -> SessionKey {
        SessionKey {
            uid: self.uid.clone(),
            role: self.role,
        }
    }
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The file cannot be opened as a redb database.
    #[error(
        "the session store {path} cannot be opened: {reason}. Its sessions are NOT dropped: \
         repair or move the file aside yourself (moving it aside forgets every session in it)"
    )]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// An entry cannot be decoded.
    #[error(
        "the session store {path} holds an unreadable entry '{key}': {reason}. Refusing to start \
         rather than dropping it; move the file aside to start without its sessions"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The entry.
        key: String,
        /// Why.
        reason: String,
    },
    /// A read or write failed.
    #[error("the session store {path}: {reason}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The store.
pub struct SessionStore {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStore")
            .field("path", &self.path)
            .finish()
    }
}

fn key_text(key: &SessionKey) -> String {
    format!("{}/{}", key.uid, key.role)
}

impl SessionStore {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(|e| StoreError::Open {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let store = SessionStore {
            db,
            path: path.to_owned(),
        };
        // Create the table up front, so that reading an empty store works.
        store.write(|t| {
            let _ = t;
            Ok(())
        })?;
        Ok(store)
    }

    fn io(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }

    fn write(
        &self,
        f: impl FnOnce(&mut redb::Table<&str, &[u8]>) -> Result<(), redb::StorageError>,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.io(e))?;
        {
            let mut table = txn.open_table(SESSIONS).map_err(|e| self.io(e))?;
            f(&mut table).map_err(|e| self.io(e))?;
        }
        txn.commit().map_err(|e| self.io(e))
    }

    /// Records `s` (replacing what was stored under its key), durably.
    pub fn put(&self, s: &StoredSession) -> Result<(), StoreError> {
        let value = serde_json::to_vec(s).map_err(|e| self.io(e))?;
        let key = key_text(&s.key());
        self.write(|t| t.insert(key.as_str(), value.as_slice()).map(|_| ()))
    }

    /// Forgets a session, durably.
    pub fn remove(&self, key: &SessionKey) -> Result<(), StoreError> {
        let key = key_text(key);
        self.write(|t| t.remove(key.as_str()).map(|_| ()))
    }

    /// Every stored session.
    pub fn load(&self) -> Result<Vec<StoredSession>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.io(e))?;
        let table = txn.open_table(SESSIONS).map_err(|e| self.io(e))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| self.io(e))? {
            let (k, v) = entry.map_err(|e| self.io(e))?;
            let s: StoredSession =
                serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                    path: self.path.clone(),
                    key: k.value().to_owned(),
                    reason: e.to_string(),
                })?;
            out.push(s);
        }
        Ok(out)
    }

    /// Writes raw bytes under a key (tests: to plant a corrupt entry).
    #[doc(hidden)]
    pub fn put_raw(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.write(|t| t.insert(key, value).map(|_| ()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(uid: &str) -> StoredSession {
        StoredSession {
            uid: uid.into(),
            role: Role::Prod,
            owner: Identity::anonymous(),
            num_conn: 2,
            rate_kbps: 0,
            listeners: vec![
                "127.0.0.1:5100".parse().unwrap(),
                "127.0.0.1:5101".parse().unwrap(),
            ],
            receivers: vec!["10.0.0.5:7000".into()],
            targets: vec!["10.0.0.5:7000".into(); 2],
            target_addrs: vec!["10.0.0.5:7000".parse().unwrap(); 2],
            target_names: vec!["10.0.0.5".into(); 2],
            phase: StoredPhase::Forwarding,
            created_unix: 1,
        }
    }

    #[test]
    fn sessions_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.redb");
        {
            let s = SessionStore::open(&path).unwrap();
            assert!(s.load().unwrap().is_empty());
            s.put(&session("a")).unwrap();
            s.put(&session("b")).unwrap();
            s.remove(&session("a").key()).unwrap();
        }
        let s = SessionStore::open(&path).unwrap();
        assert_eq!(s.load().unwrap(), vec![session("b")]);
    }

    #[test]
    fn damage_is_an_error_never_silence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.redb");
        {
            let s = SessionStore::open(&path).unwrap();
            s.put_raw("x/PROD", b"{not json").unwrap();
        }
        let e = SessionStore::open(&path).unwrap().load().unwrap_err();
        assert!(
            e.to_string().contains("x/PROD") && e.to_string().contains("move the file aside"),
            "{e}"
        );
        let garbage = dir.path().join("garbage.redb");
        std::fs::write(&garbage, vec![0x5a; 8192]).unwrap();
        let e = SessionStore::open(&garbage).unwrap_err();
        assert!(e.to_string().contains("cannot be opened"), "{e}");
    }
}
