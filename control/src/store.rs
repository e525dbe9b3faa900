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
use scistream_protocol::handoff::SessionKey;
use scistream_protocol::{Protocol, Role, Target};
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
#[serde(from = "StoredForm")]
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
    /// One target per listener once updated.
    pub targets: Vec<Target>,
    /// Phase.
    pub phase: StoredPhase,
    /// Creation, seconds since the epoch.
    pub created_unix: u64,
    /// Connection index of its first listener (part of a session spread
    /// over cluster nodes; else 0).
    pub first_index: u16,
    /// What its listeners carry (records of older releases: TCP).
    pub protocol: Protocol,
}

/// What the store may hold: this release's form, or the first release's,
/// whose targets were three parallel lists (text, address, name).
#[derive(Deserialize)]
struct StoredForm {
    uid: String,
    role: Role,
    owner: Identity,
    num_conn: usize,
    rate_kbps: u64,
    listeners: Vec<SocketAddr>,
    receivers: Vec<String>,
    targets: Vec<StoredTarget>,
    #[serde(default)]
    target_addrs: Vec<SocketAddr>,
    #[serde(default)]
    target_names: Vec<String>,
    phase: StoredPhase,
    created_unix: u64,
    #[serde(default)]
    first_index: u16,
    #[serde(default)]
    protocol: Protocol,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StoredTarget {
    Whole(Target),
    Given(String),
}

impl From<StoredForm> for StoredSession {
    fn from(f: StoredForm) -> Self {
        let targets = f
            .targets
            .into_iter()
            .enumerate()
            .filter_map(|(i, t)| match t {
                StoredTarget::Whole(t) => Some(t),
                StoredTarget::Given(given) => Some(Target {
                    given,
                    addr: *f.target_addrs.get(i)?,
                    server_name: f.target_names.get(i).cloned().unwrap_or_default(),
                }),
            })
            .collect();
        StoredSession {
            uid: f.uid,
            role: f.role,
            owner: f.owner,
            num_conn: f.num_conn,
            rate_kbps: f.rate_kbps,
            listeners: f.listeners,
            receivers: f.receivers,
            targets,
            phase: f.phase,
            created_unix: f.created_unix,
            first_index: f.first_index,
            protocol: f.protocol,
        }
    }
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
    #[cfg(test)]
    pub fn put_raw(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.write(|t| t.insert(key, value).map(|_| ()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(uid: &str) -> StoredSession {
        StoredSession {
            first_index: 0,
            protocol: Protocol::Tcp,
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
            targets: vec![Target::from_addr("10.0.0.5:7000".parse().unwrap()); 2],
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
    fn the_first_releases_form_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.redb");
        let old = br#"{"uid":"a","role":"CONS","owner":{"id":"anonymous","username":null,"linked":[]},
            "num_conn":2,"rate_kbps":0,"listeners":["127.0.0.1:5100","127.0.0.1:5101"],"receivers":[],
            "targets":["gw.example.org:7000","gw.example.org:7000"],
            "target_addrs":["10.0.0.5:7000","10.0.0.5:7000"],"target_names":["gw.example.org","gw.example.org"],
            "phase":"forwarding","created_unix":1}"#;
        SessionStore::open(&path)
            .unwrap()
            .put_raw("a/CONS", old)
            .unwrap();
        let loaded = SessionStore::open(&path).unwrap().load().unwrap();
        let want = Target::new("gw.example.org:7000", "10.0.0.5:7000".parse().unwrap()).unwrap();
        assert_eq!(loaded[0].targets, vec![want; 2]);
        assert_eq!(loaded[0].phase, StoredPhase::Forwarding);
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
