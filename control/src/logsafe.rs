//! Strings from callers on their way into log lines.
//!
//! A caller controls the text of its uids, endpoints and identities, and
//! error messages quote them; written raw, a newline or an escape sequence
//! in them could forge a log line or repaint a terminal. [`escape`] keeps
//! printable text as it is and writes everything else as a Rust escape
//! (`\n`, `\u{1b}`), so one log line stays one line. [`LogLimit`] bounds
//! lines that anyone can cause (refused connections): it lives in
//! `scistream_protocol` as `s2ds` uses it too.

pub use scistream_protocol::loglimit::LogLimit;

/// `s` with control characters (and other non-printable ones) escaped.
pub fn escape(s: &str) -> String {
    if !s.chars().any(needs_escape) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if needs_escape(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn needs_escape(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}' || c == '\u{feff}'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_cannot_break_a_line() {
        assert_eq!(escape("10.0.0.1:5000"), "10.0.0.1:5000");
        assert_eq!(escape("héllo wörld"), "héllo wörld");
        let forged = "x\n2026-12-01T00:00:00Z INFO call{rpc=\"release\"}: ok\u{1b}[2K";
        let e = escape(forged);
        assert!(!e.contains('\n') && !e.contains('\u{1b}'), "{e}");
        assert!(e.contains("\\n") && e.contains("\\u{1b}"), "{e}");
    }
}
