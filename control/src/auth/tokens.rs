//! `--auth tokens`: a file of static bearer tokens, for small sites and tests.
//!
//! ```text
//! # IDENTITY          TOKEN
//! alice@facility.org  9c1d0e6f3b2a4c5d8e7f6a5b4c3d2e1f
//! beamline-7          0f1e2d3c4b5a69788796a5b4c3d2e1f0
//! ```
//!
//! One identity and one token per line, separated by white space; `#`
//! starts a comment. The file must not be readable by group or others.
//! It is re-read on SIGHUP: a file that fails to parse then keeps the
//! previous tokens (and the error is logged). Tokens are held only as
//! SHA-256 digests and compared in constant time.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use subtle::ConstantTimeEq;
use tracing::{error, info};

use super::{Identity, token_digest};
use crate::error::ControlError;

/// Tokens shorter than this are refused: they could be guessed.
const MIN_TOKEN_LEN: usize = 16;

/// The tokens file, loaded.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    entries: RwLock<Vec<([u8; 32], String)>>,
}

/// Why a tokens (or identities) file cannot be used.
pub fn check_private(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} is readable by others (mode {mode:o}); it holds secrets: chmod 600 it",
            path.display()
        ));
    }
    Ok(())
}

fn parse(path: &Path) -> Result<Vec<([u8; 32], String)>, String> {
    check_private(path)?;
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut entries: Vec<([u8; 32], String)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let at = || format!("{} line {}", path.display(), n + 1);
        let mut words = line.split_whitespace();
        let (Some(identity), Some(token), None) = (words.next(), words.next(), words.next()) else {
            return Err(format!("{}: expected `IDENTITY TOKEN`", at()));
        };
        if token.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "{}: the token of {identity} is shorter than {MIN_TOKEN_LEN} characters",
                at()
            ));
        }
        if token.len() > super::MAX_TOKEN_LEN {
            return Err(format!("{}: the token of {identity} is too long", at()));
        }
        let digest = token_digest(token);
        if entries.iter().any(|(d, _)| *d == digest) {
            return Err(format!("{}: this token appears twice", at()));
        }
        entries.push((digest, identity.to_owned()));
    }
    if entries.is_empty() {
        return Err(format!("{} holds no token", path.display()));
    }
    Ok(entries)
}

impl TokenFile {
    /// Loads `path`.
    pub fn load(path: &Path) -> Result<Self, String> {
        let entries = parse(path)?;
        info!(path = %path.display(), tokens = entries.len(), "static tokens loaded");
        Ok(TokenFile {
            path: path.to_owned(),
            entries: RwLock::new(entries),
        })
    }

    /// Re-reads the file; on error keeps the tokens it had.
    pub fn reload(&self) {
        match parse(&self.path) {
            Ok(entries) => {
                info!(path = %self.path.display(), tokens = entries.len(), "static tokens re-read");
                *self.entries.write().unwrap_or_else(|p| p.into_inner()) = entries;
            }
            Err(e) => error!("keeping the previous static tokens: {e}"),
        }
    }

    /// The identity `token` stands for.
    pub fn identity(&self, token: &str) -> Result<Identity, ControlError> {
        let digest = token_digest(token);
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        // Compare against every entry, without stopping at a match.
        let mut found: Option<&str> = None;
        for (d, identity) in entries.iter() {
            if bool::from(d.ct_eq(&digest)) {
                found = Some(identity);
            }
        }
        match found {
            Some(id) => Ok(Identity {
                id: id.to_owned(),
                username: None,
                linked: Vec::new(),
                source: None,
            }),
            None => Err(ControlError::Unauthenticated(
                "the token is not one this gateway knows; ask its administrators for one".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(text: &str, mode: u32) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        f
    }

    #[test]
    fn tokens_map_to_identities_and_reload() {
        let f = file(
            "# comment\nalice  aaaaaaaaaaaaaaaaaaaa # trailing\n\nbob bbbbbbbbbbbbbbbbbbbb\n",
            0o600,
        );
        let t = TokenFile::load(f.path()).unwrap();
        assert_eq!(t.identity("aaaaaaaaaaaaaaaaaaaa").unwrap().id, "alice");
        assert_eq!(t.identity("bbbbbbbbbbbbbbbbbbbb").unwrap().id, "bob");
        let e = t.identity("cccccccccccccccccccc").unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        std::fs::write(f.path(), "carol cccccccccccccccccccc\n").unwrap();
        t.reload();
        assert!(t.identity("aaaaaaaaaaaaaaaaaaaa").is_err());
        assert_eq!(t.identity("cccccccccccccccccccc").unwrap().id, "carol");
        std::fs::write(f.path(), "broken\n").unwrap();
        t.reload();
        assert_eq!(
            t.identity("cccccccccccccccccccc").unwrap().id,
            "carol",
            "a bad file keeps the previous tokens"
        );
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let f = file("alice aaaaaaaaaaaaaaaaaaaa\n", 0o644);
        assert!(TokenFile::load(f.path()).unwrap_err().contains("chmod 600"));
        let f = file("alice short\n", 0o600);
        assert!(TokenFile::load(f.path()).unwrap_err().contains("shorter"));
        let f = file("alice aaaaaaaaaaaaaaaaaaaa extra\n", 0o600);
        assert!(TokenFile::load(f.path()).unwrap_err().contains("line 1"));
        let f = file("a aaaaaaaaaaaaaaaaaaaa\nb aaaaaaaaaaaaaaaaaaaa\n", 0o600);
        assert!(TokenFile::load(f.path()).unwrap_err().contains("twice"));
        let f = file("# nothing\n", 0o600);
        assert!(TokenFile::load(f.path()).unwrap_err().contains("no token"));
        assert!(TokenFile::load(Path::new("/nonexistent/tokens")).is_err());
    }
}
