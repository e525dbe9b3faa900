//! `s2tune apply` and `s2tune revert`: the sysctl fixes of `check`, shown
//! as a diff, applied only with `--yes`, the previous values saved so that
//! `revert` restores them.
//!
//! The saved state is a JSON file (`--state`, default
//! `/var/lib/scistream/s2tune-saved.json`). A second `apply` keeps the
//! values saved by the first, so `revert` always returns to the host as it
//! was before s2tune touched it. `--persist PATH` also writes a
//! `sysctl.d` file so the values survive a reboot; `revert` deletes it.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::check::Item;
use crate::host::Root;

/// Default state file.
pub const DEFAULT_STATE: &str = "/var/lib/scistream/s2tune-saved.json";

/// First line of the files `--persist` writes (revert deletes only those).
const PERSIST_HEADER: &str = "# Written by s2tune apply";

/// One change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The sysctl.
    pub name: String,
    /// Its value now.
    pub from: String,
    /// The value to set.
    pub to: String,
}

/// What `apply` saved.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    /// Sysctl → value before s2tune changed it.
    pub previous: BTreeMap<String, String>,
    /// The `sysctl.d` file written, if any.
    pub persisted: Option<PathBuf>,
}

/// Why apply or revert failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// Not privileged enough.
    #[error(
        "changing sysctls needs root (CAP_SYS_ADMIN/CAP_NET_ADMIN): run it with sudo; nothing was changed"
    )]
    NotPrivileged,
    /// A write failed.
    #[error("cannot set {name} to '{value}': {source}")]
    Write {
        /// The sysctl.
        name: String,
        /// The value.
        value: String,
        /// Why.
        source: io::Error,
    },
    /// The state file.
    #[error("state file {path}: {reason}")]
    State {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// `revert` with nothing saved.
    #[error("nothing to revert: {0} does not exist (s2tune apply --yes writes it)")]
    NothingSaved(PathBuf),
}

/// The sysctl changes the items call for, restricted to `only` when given.
pub fn plan(items: &[Item], only: &[String]) -> Vec<Change> {
    items
        .iter()
        .filter_map(|i| {
            let (name, to) = i.sysctl.clone()?;
            if !only.is_empty() && !only.contains(&name) {
                return None;
            }
            let from = if name == "net.ipv4.tcp_congestion_control" {
                i.current.split(' ').next().unwrap_or("").to_owned()
            } else {
                i.current.clone()
            };
            Some(Change { name, from, to })
        })
        .collect()
}

/// The changes as a unified-diff-like text.
pub fn diff(changes: &[Change], target: &str) -> String {
    let mut s = format!("--- current\n+++ s2tune for {target}\n");
    for c in changes {
        s.push_str(&format!(
            "-{} = {}\n+{} = {}\n",
            c.name, c.from, c.name, c.to
        ));
    }
    s
}

fn state_err(path: &Path, reason: impl ToString) -> ApplyError {
    ApplyError::State {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn load(path: &Path) -> Result<Option<Saved>, ApplyError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| state_err(path, format!("not a state file s2tune wrote ({e})"))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(state_err(path, e)),
    }
}

fn store(path: &Path, saved: &Saved) -> Result<(), ApplyError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| state_err(path, e))?;
    }
    let text = serde_json::to_string_pretty(saved).map_err(|e| state_err(path, e))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(|e| state_err(path, e))?;
    std::fs::rename(&tmp, path).map_err(|e| state_err(path, e))
}

fn check_privilege(root: &Root) -> Result<(), ApplyError> {
    if root.is_host() && !rustix::process::geteuid().is_root() {
        return Err(ApplyError::NotPrivileged);
    }
    Ok(())
}

fn write(root: &Root, name: &str, value: &str) -> Result<(), ApplyError> {
    root.set_sysctl(name, value).map_err(|source| {
        if matches!(source.kind(), io::ErrorKind::PermissionDenied) {
            ApplyError::NotPrivileged
        } else {
            ApplyError::Write {
                name: name.into(),
                value: value.into(),
                source,
            }
        }
    })
}

/// Applies `changes`: saves the previous values in `state` (keeping older
/// saved ones), writes each sysctl, and writes `persist` when given. A
/// failed write undoes the writes made so far.
pub fn apply(
    root: &Root,
    changes: &[Change],
    state: &Path,
    persist: Option<&Path>,
    target: &str,
) -> Result<(), ApplyError> {
    check_privilege(root)?;
    let mut saved = load(state)?.unwrap_or_default();
    for c in changes {
        saved
            .previous
            .entry(c.name.clone())
            .or_insert_with(|| c.from.clone());
    }
    if let Some(p) = persist {
        saved.persisted = Some(p.to_owned());
    }
    store(state, &saved)?;
    for (n, c) in changes.iter().enumerate() {
        if let Err(e) = write(root, &c.name, &c.to) {
            for done in changes[..n].iter().rev() {
                let _ = root.set_sysctl(&done.name, &done.from);
            }
            return Err(e);
        }
    }
    if let Some(p) = persist {
        let mut text = format!("{PERSIST_HEADER} for {target}; s2tune revert removes it.\n");
        for c in changes {
            text.push_str(&format!("{} = {}\n", c.name, c.to));
        }
        std::fs::write(p, text).map_err(|e| state_err(p, e))?;
    }
    Ok(())
}

/// Restores the saved values, removes the persisted file s2tune wrote,
/// deletes the state. Returns what was restored.
pub fn revert(root: &Root, state: &Path) -> Result<Vec<Change>, ApplyError> {
    check_privilege(root)?;
    let saved = load(state)?.ok_or_else(|| ApplyError::NothingSaved(state.to_owned()))?;
    let mut restored = Vec::new();
    for (name, value) in &saved.previous {
        let from = root.sysctl(name).unwrap_or_default();
        write(root, name, value)?;
        restored.push(Change {
            name: name.clone(),
            from,
            to: value.clone(),
        });
    }
    if let Some(p) = &saved.persisted {
        let ours = std::fs::read_to_string(p)
            .map(|t| t.starts_with(PERSIST_HEADER))
            .unwrap_or(false);
        if ours {
            std::fs::remove_file(p).map_err(|e| state_err(p, e))?;
        }
    }
    std::fs::remove_file(state).map_err(|e| state_err(state, e))?;
    Ok(restored)
}
