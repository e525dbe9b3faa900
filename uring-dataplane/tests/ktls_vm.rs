//! The real tunnel with kernel TLS, inside a small VM whose kernel has the
//! `tls` module (this host's kernel does not): `tools/ktls-vm.sh` boots a
//! Debian kernel under QEMU software emulation with `s2cs`, `s2ds`, `s2uc`
//! and `s2bench`. Skipped, with the reason, where QEMU or the kernel package
//! is not available. Needs Debian's qemu-system-x86 busybox-static cpio kmod
//! xz-utils (`.ci/run` installs them).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use scistream_testkit::{Pki, bin};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn missing_tools() -> Option<String> {
    for t in [
        "qemu-system-x86_64",
        "busybox",
        "cpio",
        "depmod",
        "xz",
        "apt-cache",
    ] {
        let found = std::env::var_os("PATH")
            .map(|p| {
                std::env::split_paths(&p)
                    .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
                    .any(|d| d.join(t).is_file())
            })
            .unwrap_or(false);
        if !found {
            return Some(format!(
                "{t} is not installed (apt-get install qemu-system-x86 busybox-static cpio kmod xz-utils)"
            ));
        }
    }
    None
}

/// Runs the tunnel script in the VM; `None` (after printing why) when the VM cannot run here.
fn run_in_vm(test: &str, bytes: &str, inst_args: &[&str]) -> Option<String> {
    if let Some(why) = missing_tools() {
        eprintln!("SKIP {test}: {why}");
        return None;
    }
    let pki = Pki::new();
    pki.gateway("hpc");
    pki.gateway("inst");
    let script = repo().join("uring-dataplane/tests/vm/ktls-tunnel.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("tools/ktls-vm.sh"));
    for b in ["s2cs", "s2ds", "s2uc", "s2bench"] {
        cmd.arg("--bin").arg(bin(b));
    }
    cmd.arg("--file")
        .arg(format!("{}:/certs", pki.dir.path().display()));
    cmd.arg("--file")
        .arg(format!("{}:/run.sh", script.display()));
    cmd.args(["--", "sh", "/run.sh", bytes]).args(inst_args);
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => Some(stdout),
        // 69: the VM's kernel or tools are unavailable here (no kernel package known to apt, no network).
        Some(69) => {
            eprintln!(
                "SKIP {test}: the kTLS VM cannot start here: {}",
                stderr.trim()
            );
            None
        }
        other => panic!("the VM run failed ({other:?}):\n{stdout}\n{stderr}"),
    }
}

fn section<'a>(out: &'a str, name: &str) -> &'a str {
    let start = out.find(&format!("=== {name}")).unwrap_or(out.len());
    let rest = &out[start..];
    let end = rest[4..]
        .find("\n=== ")
        .map(|i| i + 4)
        .unwrap_or(rest.len());
    &rest[..end]
}

#[test]
fn the_tunnel_runs_on_ktls_in_a_vm() {
    let Some(out) = run_in_vm("the_tunnel_runs_on_ktls_in_a_vm", "32MiB", &[]) else {
        return;
    };
    assert!(
        out.contains("SOURCE exit 0") && out.contains("SINK exit 0"),
        "{out}"
    );
    assert!(
        section(&out, "sink").contains("\"ok\": true"),
        "every byte verified:\n{out}"
    );
    for gw in ["hpc", "inst"] {
        let log = section(&out, gw);
        assert!(log.contains("kTLS available"), "{gw} detected kTLS:\n{out}");
        assert_eq!(
            log.matches("connection offloaded to kTLS").count(),
            2,
            "{gw}: both connections in the kernel:\n{out}"
        );
        assert!(
            !log.contains("aborted") && !log.contains("refused"),
            "{gw}:\n{out}"
        );
    }
}

#[test]
fn a_key_update_on_a_ktls_connection_ends_it_cleanly() {
    // The instrument gateway stays in user space and sends a KeyUpdate every
    // 64 records; the HPC gateway runs kTLS on a kernel that cannot take new
    // keys: it must end those connections (never decrypt with stale keys).
    let inst = [
        "--ktls=off",
        "--s2ds-arg=--prefer-chacha",
        "--s2ds-arg=--rekey-any-suite",
        "--s2ds-arg=--rekey-records=64",
    ];
    let Some(out) = run_in_vm(
        "a_key_update_on_a_ktls_connection_ends_it_cleanly",
        "16MiB",
        &inst,
    ) else {
        return;
    };
    let hpc = section(&out, "hpc");
    assert!(hpc.contains("connection offloaded to kTLS"), "{out}");
    assert!(
        hpc.contains("KeyUpdate") && hpc.contains("cannot install new kTLS keys"),
        "the reason is logged:\n{out}"
    );
    let sink = section(&out, "sink");
    assert!(
        sink.contains("\"ok\": false"),
        "the cut stream is reported, not silently corrupt:\n{out}"
    );
    assert!(
        sink.contains("\"corrupt\": 0"),
        "no byte was decrypted wrongly:\n{out}"
    );
}
