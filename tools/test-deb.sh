#!/usr/bin/env bash
# The Debian package installed and removed for real (root, dpkg): builds it
# (unoptimised, as CI does; --release for an optimised one), installs it,
# checks what a gateway admin relies on, and removes it again.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=--dev
[ "${1:-}" = --release ] && profile=
[ "$(id -u)" = 0 ] || { echo "test-deb.sh: needs root (dpkg -i)"; exit 77; }
rm -f target/debian/scistream-rs_*.deb
tools/dist.sh $profile --deb
deb=$(ls target/debian/scistream-rs_*.deb)
fail() { echo "test-deb.sh: FAIL: $*" >&2; dpkg -r scistream-rs >/dev/null 2>&1 || true; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

dpkg -i "$deb" >/dev/null || fail "dpkg -i $deb"
dpkg -s scistream-rs | grep -q '^Status: install ok installed' || fail "not installed"
for b in s2uc s2cs s2ds s2bench s2tune; do
  [ "$(command -v $b)" = "/usr/bin/$b" ] || fail "$b is not /usr/bin/$b"
  "/usr/bin/$b" --help >/dev/null || fail "$b --help"
  [ -f "/usr/share/man/man1/$b.1.gz" ] || fail "no man page for $b"
  [ -f "/usr/share/bash-completion/completions/$b" ] || fail "no bash completion for $b"
  [ -f "/usr/share/zsh/vendor-completions/_$b" ] || fail "no zsh completion for $b"
  [ -f "/usr/share/fish/vendor_completions.d/$b.fish" ] || fail "no fish completion for $b"
done
/usr/bin/s2uc --help | grep -q inbound_request || fail "s2uc --help does not list inbound_request"
zcat /usr/share/man/man1/s2uc-connect.1.gz | grep -q -- 'drain' || fail "s2uc-connect.1 lacks its options"
grep -q '^ExecStart=/usr/bin/s2cs ' /lib/systemd/system/s2cs.service || fail "the unit does not run /usr/bin/s2cs"
examples=/usr/share/doc/scistream-rs/examples
for f in prometheus/scistream-alerts.yml prometheus/scistream-alerts.test.yml \
         prometheus/prometheus.example.yml grafana/scistream.json; do
  [ -f "$examples/$f" ] || fail "no $examples/$f"
done
if command -v promtool >/dev/null; then
  (cd "$examples/prometheus" && promtool check rules scistream-alerts.yml >/dev/null) \
    || fail "the installed alert rules do not pass promtool check rules"
fi
sample=$examples/s2cs.toml
[ -f "$sample" ] || fail "no sample configuration"
# The sample names files a site still has to make: --check-config says which.
if /usr/bin/s2cs --config "$sample" --check-config >"$work/sample.out" 2>&1; then
  fail "the sample configuration passed --check-config without its certificates"
fi
grep -q '/etc/scistream/' "$work/sample.out" || fail "check-config did not name the missing file: $(cat "$work/sample.out")"
# A complete configuration passes, with the installed s2ds found next to s2cs.
/usr/bin/s2uc certs --out "$work" --gateway gw >/dev/null
cat > "$work/s2cs.toml" <<TOML
listener-ip = "127.0.0.1"
port = 5000
port-range = "5100-5200"
server_crt = "$work/gw.crt"
server_key = "$work/gw.key"
peer-ca = "$work/ca.crt"
state-dir = "$work/state"
TOML
/usr/bin/s2cs --config "$work/s2cs.toml" --check-config || fail "s2cs --check-config with a complete configuration"

dpkg -r scistream-rs >/dev/null || fail "dpkg -r"
for b in s2uc s2cs s2ds s2bench s2tune; do
  [ ! -e "/usr/bin/$b" ] || fail "/usr/bin/$b left after dpkg -r"
done
[ ! -e /usr/share/man/man1/s2uc.1.gz ] || fail "man pages left after dpkg -r"
[ ! -e /lib/systemd/system/s2cs.service ] || fail "unit left after dpkg -r"
echo "test-deb.sh: $deb installed, checked and removed: 1 passed, 0 failed"
