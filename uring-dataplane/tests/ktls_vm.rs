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
        // 71: the VM booted without kTLS (a module did not load): the script names it.
        other => panic!("the VM run failed ({other:?}):\n{stdout}\n{stderr}"),
    }
}

/// Fills the default kernel cache (once, under the script's lock) and
/// returns the kernel tree; `None` (after printing why) when it cannot.
fn prepared_kernel(test: &str) -> Option<PathBuf> {
    if let Some(why) = missing_tools() {
        eprintln!("SKIP {test}: {why}");
        return None;
    }
    let out = Command::new("bash")
        .arg(repo().join("tools/ktls-vm.sh"))
        .arg("--prepare")
        .output()
        .unwrap();
    match out.status.code() {
        Some(0) => Some(PathBuf::from(
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        )),
        Some(69) => {
            let why = String::from_utf8_lossy(&out.stderr);
            eprintln!("SKIP {test}: the kTLS VM cannot start here: {}", why.trim());
            None
        }
        other => panic!(
            "ktls-vm.sh --prepare failed ({other:?}): {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Starts the script on `cache` with `args`, not waiting for it.
fn spawn_vm(cache: &Path, deb: Option<&Path>, args: &[&str]) -> std::process::Child {
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("tools/ktls-vm.sh"))
        .args(args)
        .env("KTLS_VM_CACHE", cache)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if let Some(deb) = deb {
        cmd.env("KTLS_VM_DEB", deb);
    }
    cmd.spawn().unwrap()
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

#[test]
fn two_runs_at_once_fill_an_empty_cache_and_both_boot_with_ktls() {
    // The situation of a fresh machine: an empty cache and two runs at the
    // same moment. The package comes from the default cache (filled once,
    // under the lock) so this test does not download it again. One run
    // also carries a static binary (busybox): `--bin` must take those.
    let test = "two_runs_at_once_fill_an_empty_cache_and_both_boot_with_ktls";
    let Some(tree) = prepared_kernel(test) else {
        return;
    };
    let deb = PathBuf::from(format!("{}.deb", tree.display()));
    assert!(
        deb.is_file(),
        "the package is kept beside its tree: {deb:?}"
    );
    let cache = tempfile::tempdir().unwrap();
    let busybox = which("busybox");
    let ulp = ["--", "cat", "/proc/sys/net/ipv4/tcp_available_ulp"];
    let mut static_bin = vec!["--bin", busybox.to_str().unwrap()];
    static_bin.extend(ulp);
    let runs = [
        spawn_vm(cache.path(), Some(&deb), &ulp),
        spawn_vm(cache.path(), Some(&deb), &static_bin),
    ];
    for run in runs {
        let out = run.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
        assert!(
            stdout.split_whitespace().any(|u| u == "tls"),
            "the VM has the tls ULP: {stdout}\n{stderr}"
        );
    }
    let entries: Vec<String> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !entries.iter().any(|e| e.starts_with(".fill")),
        "no temporary tree is left behind: {entries:?}"
    );
}

#[test]
fn a_module_that_does_not_load_fails_the_run_with_its_name() {
    let test = "a_module_that_does_not_load_fails_the_run_with_its_name";
    let Some(tree) = prepared_kernel(test) else {
        return;
    };
    // A copy of the cache (hard links: no second copy of the kernel) whose
    // tls module is garbage.
    let cache = tempfile::tempdir().unwrap();
    let copy = cache.path().join(tree.file_name().unwrap());
    let cp = Command::new("cp")
        .arg("-al")
        .arg(&tree)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(cp.success());
    let module = find_file(&copy, "tls.ko").expect("the kernel has a tls module");
    std::fs::remove_file(&module).unwrap(); // a hard link: the real cache keeps its file
    // Compressed as the real one is, so that it reaches the VM's insmod.
    let xz = module.extension().is_some_and(|e| e == "xz");
    let garbage = if xz {
        let mut child = Command::new("xz")
            .arg("-c")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"not a module")
            .unwrap();
        child.wait_with_output().unwrap().stdout
    } else {
        b"not a module".to_vec()
    };
    std::fs::write(&module, garbage).unwrap();
    let kernel = tree.file_name().unwrap().to_str().unwrap().to_owned();
    let out = spawn_vm(cache.path(), None, &["--", "echo", "the command ran"])
        .wait_with_output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(71), "{kernel}: {stdout}\n{stderr}");
    assert!(
        stderr.contains("module tls did not load"),
        "the module is named: {stderr}"
    );
    assert!(!stdout.contains("the command ran"), "{stdout}");
}

fn which(tool: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/bin")])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{tool} not found"))
}

/// The first file under `dir` whose name starts with `prefix`.
fn find_file(dir: &Path, prefix: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()? {
        let path = entry.ok()?.path();
        if path.is_dir() && !path.is_symlink() {
            if let Some(found) = find_file(&path, prefix) {
                return Some(found);
            }
        } else if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        {
            return Some(path);
        }
    }
    None
}
