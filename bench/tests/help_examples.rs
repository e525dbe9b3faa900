//! The gateway arguments `s2bench compare --help` gives as examples are ones
//! s2cs accepts (an example that s2cs rejects sent a network engineer astray).
#![allow(clippy::unwrap_used)]

use std::process::Command;

use scistream_testkit::bin;

#[test]
fn every_s2cs_arg_example_in_compare_help_is_accepted_by_s2cs() {
    let out = Command::new(env!("CARGO_BIN_EXE_s2bench"))
        .args(["compare", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    let examples: Vec<String> = help
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("--s2cs-arg="))
        .map(|a| a.trim_end_matches(['.', ',', ')']).to_owned())
        .collect();
    assert!(!examples.is_empty(), "the help gives no example: {help}");
    let state = tempfile::tempdir().unwrap();
    for arg in &examples {
        let out = Command::new(bin("s2cs"))
            .args(["--insecure", "--check-config", "--state-dir"])
            .arg(state.path())
            .arg(arg)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "s2cs rejects the help's example {arg}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
