//! The state directory: sessions (`sessions.redb`), the data plane's handoff
//! socket (`s2ds.sock`), the lock, and the key that turns uids into log tags
//! (`tag.key`).
//!
//! Everything in it is secret or trusted: the store holds every session's
//! uid (the data channel's credential), and whoever can connect to the
//! handoff socket commands the data plane. So the directory is created
//! 0700, and refused at start when it is a symlink, is not owned by the
//! user `s2cs` runs as, or is writable by others (or sits below a directory
//! others can write to without the sticky bit); its files are 0600 whatever
//! the umask.

use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tracing::info;

/// Why the state directory cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("state directory {path}: {reason}")]
pub struct StateDirError {
    /// The directory (or the file in it).
    pub path: PathBuf,
    /// What is wrong and what to do.
    pub reason: String,
}

/// A prepared state directory, locked for this `s2cs` as long as it lives.
#[derive(Debug)]
pub struct StateDir {
    path: PathBuf,
    _lock: OwnedFd,
}

pub(crate) const SECRET_LEN: usize = 32;

impl StateDir {
    /// Creates `path` (mode 0700) if needed, checks who owns it and who can
    /// write to it and above it, and takes its lock, so two `s2cs` never share
    /// one directory.
    pub fn prepare(path: &Path) -> Result<StateDir, StateDirError> {
        let err = |reason: String| StateDirError {
            path: path.to_owned(),
            reason,
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(|e| err(format!("cannot create it: {e}")))?;
        check_dir(path)?;
        let lock_path = path.join("s2cs.lock");
        let lock = rustix::fs::open(
            &lock_path,
            rustix::fs::OFlags::CREATE
                | rustix::fs::OFlags::RDWR
                | rustix::fs::OFlags::CLOEXEC
                | rustix::fs::OFlags::NOFOLLOW,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .map_err(|e| err(format!("cannot open {}: {e}", lock_path.display())))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |_| err("another s2cs is using it; give each s2cs its own --state-dir".into()),
        )?;
        Ok(StateDir {
            path: path.to_owned(),
            _lock: lock,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A file of the directory, created if missing, made 0600 (an older
    /// s2cs, or a loose umask, may have left it readable by others).
    pub fn private_file(&self, name: &str) -> Result<PathBuf, StateDirError> {
        let path = self.path.join(name);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)
            .map_err(|e| StateDirError {
                path: path.clone(),
                reason: format!("cannot open it: {e}"),
            })?;
        file.set_permissions(Permissions::from_mode(0o600))
            .map_err(|e| StateDirError {
                path: path.clone(),
                reason: format!("cannot make it private (0600): {e}"),
            })?;
        Ok(path)
    }

    /// The secret that turns uids into log tags: made once (random), kept
    /// in `tag.key` (0600) so that tags stay the same across restarts.
    pub fn tag_secret(&self) -> Result<[u8; SECRET_LEN], StateDirError> {
        let path = self.private_file("tag.key")?;
        let err = |reason: String| StateDirError {
            path: path.clone(),
            reason,
        };
        let mut bytes = Vec::new();
        std::fs::File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| err(format!("cannot read it: {e}")))?;
        if bytes.is_empty() {
            let mut secret = [0u8; SECRET_LEN];
            getrandom::fill(&mut secret)
                .map_err(|e| err(format!("no randomness for a new key: {e}")))?;
            let mut f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| err(format!("cannot write it: {e}")))?;
            f.write_all(&secret)
                .and_then(|()| f.sync_all())
                .map_err(|e| err(format!("cannot write it: {e}")))?;
            info!(path = %path.display(), "made a new key for session tags");
            return Ok(secret);
        }
        bytes.try_into().map_err(|b: Vec<u8>| {
            err(format!(
                "it holds {} bytes, not {SECRET_LEN}; remove it to make a new one (session tags in logs then change)",
                b.len()
            ))
        })
    }
}

/// Refuses a directory that another user could read, replace or write into.
fn check_dir(path: &Path) -> Result<(), StateDirError> {
    let err = |path: &Path, reason: String| StateDirError {
        path: path.to_owned(),
        reason,
    };
    let me = rustix::process::geteuid().as_raw();
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| err(path, format!("cannot inspect it: {e}")))?;
    if meta.file_type().is_symlink() {
        return Err(err(
            path,
            "it is a symbolic link; give the real directory as --state-dir".into(),
        ));
    }
    if !meta.is_dir() {
        return Err(err(path, "it is not a directory".into()));
    }
    if meta.uid() != me {
        return Err(err(
            path,
            format!(
                "it is owned by uid {}, not by the user s2cs runs as (uid {me}); \
                 use a directory of your own, or chown it",
                meta.uid()
            ),
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(err(
            path,
            format!(
                "it is writable by {} (mode {:o}); chmod 700 it",
                if meta.mode() & 0o002 != 0 {
                    "everyone"
                } else {
                    "its group"
                },
                meta.mode() & 0o7777
            ),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        // Ours and not writable by others, only readable: tighten it.
        std::fs::set_permissions(path, Permissions::from_mode(0o700))
            .map_err(|e| err(path, format!("cannot make it private (0700): {e}")))?;
        info!(path = %path.display(), was = format!("{:o}", meta.mode() & 0o7777), "state directory made private (0700)");
    }
    // Above it, nobody else may be able to rename it away or swap it:
    // every ancestor belongs to root or to us, and is not writable by
    // others unless sticky (like /tmp).
    let canonical = path
        .canonicalize()
        .map_err(|e| err(path, format!("cannot resolve it: {e}")))?;
    for dir in canonical.ancestors().skip(1) {
        let m = std::fs::metadata(dir).map_err(|e| err(dir, format!("cannot inspect it: {e}")))?;
        let sticky = m.mode() & 0o1000 != 0;
        if m.uid() != 0 && m.uid() != me {
            return Err(err(
                path,
                format!(
                    "its parent {} belongs to uid {}, who could replace the state directory; \
                     choose a --state-dir under a directory of root or of uid {me}",
                    dir.display(),
                    m.uid()
                ),
            ));
        }
        if m.mode() & 0o022 != 0 && !sticky {
            return Err(err(
                path,
                format!(
                    "its parent {} is writable by others (mode {:o}), who could replace the state directory; \
                     choose another --state-dir",
                    dir.display(),
                    m.mode() & 0o7777
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_new_directory_is_private_and_locked() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("a/b/state");
        let state = StateDir::prepare(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let again = StateDir::prepare(&dir).unwrap_err();
        assert!(again.reason.contains("another s2cs"), "{again}");
        let f = state.private_file("sessions.redb").unwrap();
        assert_eq!(std::fs::metadata(f).unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn a_readable_directory_of_ours_is_tightened_and_loose_files_too() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.join("sessions.redb"), b"").unwrap();
        std::fs::set_permissions(dir.join("sessions.redb"), Permissions::from_mode(0o644)).unwrap();
        let state = StateDir::prepare(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        let f = state.private_file("sessions.redb").unwrap();
        assert_eq!(std::fs::metadata(f).unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn writable_symlinked_or_foreign_directories_are_refused() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, Permissions::from_mode(0o777)).unwrap();
        let e = StateDir::prepare(&dir).unwrap_err();
        assert!(e.reason.contains("writable by everyone"), "{e}");
        std::fs::set_permissions(&dir, Permissions::from_mode(0o770)).unwrap();
        let e = StateDir::prepare(&dir).unwrap_err();
        assert!(e.reason.contains("writable by its group"), "{e}");
        std::fs::set_permissions(&dir, Permissions::from_mode(0o700)).unwrap();
        let link = base.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let e = StateDir::prepare(&link).unwrap_err();
        assert!(e.reason.contains("symbolic link"), "{e}");
        if rustix::process::geteuid().is_root() {
            let foreign = base.path().join("foreign");
            std::fs::create_dir(&foreign).unwrap();
            std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
            let e = StateDir::prepare(&foreign).unwrap_err();
            assert!(e.reason.contains("owned by uid 65534"), "{e}");
            // A directory of ours below one another user can rename in.
            let inside = foreign.join("state");
            std::fs::create_dir(&inside).unwrap();
            std::fs::set_permissions(&inside, Permissions::from_mode(0o700)).unwrap();
            let e = StateDir::prepare(&inside).unwrap_err();
            assert!(e.reason.contains("belongs to uid 65534"), "{e}");
        }
    }

    #[test]
    fn the_tag_secret_is_made_once_and_kept() {
        let base = tempfile::tempdir().unwrap();
        let state = StateDir::prepare(base.path()).unwrap();
        let a = state.tag_secret().unwrap();
        let b = state.tag_secret().unwrap();
        assert_eq!(a, b);
        assert_ne!(a, [0u8; SECRET_LEN]);
        std::fs::write(base.path().join("tag.key"), b"short").unwrap();
        let e = state.tag_secret().unwrap_err();
        assert!(e.reason.contains("5 bytes"), "{e}");
    }
}
