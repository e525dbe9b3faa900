//! The open-file limit every component raises at start: each forwarded
//! connection holds up to six descriptors (two sockets, two pipes), each
//! control connection and data listener one, each benchmark connection one.

use rustix::process::{Resource, getrlimit, setrlimit};

/// Raises the soft open-file limit (`RLIMIT_NOFILE`) to the hard limit.
/// Returns `(before, now)` when it changed; an error when the kernel refused.
pub fn raise_nofile_limit() -> std::io::Result<Option<(u64, u64)>> {
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        return Ok(None);
    }
    let before = limit.current.unwrap_or(u64::MAX);
    limit.current = limit.maximum;
    setrlimit(Resource::Nofile, limit)?;
    Ok(Some((before, limit.current.unwrap_or(u64::MAX))))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        super::raise_nofile_limit().unwrap();
        let l = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert_eq!(l.current, l.maximum);
    }
}
