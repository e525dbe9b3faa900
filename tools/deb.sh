#!/usr/bin/env bash
# Assembles the Debian package from built binaries (tools/dist.sh calls it):
#   tools/deb.sh BIN_DIR OUT_DIR
# The binaries, the systemd unit from deploy/ (pointing at /usr/bin), the
# sample configuration, man pages and bash/zsh/fish completions that the
# binaries write from their own clap definitions (SCISTREAM_GENERATE, see
# docgen/). Built with Debian's dpkg-deb; no packaging tool to compile.
set -euo pipefail
cd "$(dirname "$0")/.."
bin_dir=${1:?usage: tools/deb.sh BIN_DIR OUT_DIR}
out=${2:?usage: tools/deb.sh BIN_DIR OUT_DIR}
command -v dpkg-deb >/dev/null || { echo "deb.sh: dpkg-deb is needed (Debian's dpkg)" >&2; exit 69; }

name=scistream-rs
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
glibc=$(ldd --version | sed -n '1s/.* \([0-9][0-9.]*\)$/\1/p')
bins=(s2uc s2cs s2ds s2bench s2tune)

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
install -d "$root/DEBIAN" "$root/usr/bin" "$root/usr/share/man/man1" \
  "$root/lib/systemd/system" "$root/usr/share/doc/$name/examples" \
  "$root/usr/share/bash-completion/completions" "$root/usr/share/zsh/vendor-completions" \
  "$root/usr/share/fish/vendor_completions.d"

for b in "${bins[@]}"; do
  install -m 0755 "$bin_dir/$b" "$root/usr/bin/$b"
  strip "$root/usr/bin/$b"
done

gen=$(mktemp -d)
for b in "${bins[@]}"; do
  SCISTREAM_GENERATE="man:$gen/man" "$root/usr/bin/$b" >/dev/null
  SCISTREAM_GENERATE="completions:$gen/completions" "$root/usr/bin/$b" >/dev/null
done
for page in "$gen"/man/*.1; do
  gzip -9n < "$page" > "$root/usr/share/man/man1/$(basename "$page").gz"
done
cp "$gen"/completions/bash/* "$root/usr/share/bash-completion/completions/"
cp "$gen"/completions/zsh/* "$root/usr/share/zsh/vendor-completions/"
cp "$gen"/completions/fish/* "$root/usr/share/fish/vendor_completions.d/"
rm -rf "$gen"

sed -e 's|/usr/local/bin/|/usr/bin/|g' \
    -e 's|^# Install: binaries in /usr/local/bin, |# Installed by the scistream-rs package (binaries in /usr/bin); |' \
    deploy/s2cs.service > "$root/lib/systemd/system/s2cs.service"
install -m 0644 deploy/s2cs.toml "$root/usr/share/doc/$name/examples/s2cs.toml"
# Monitoring: the scrape job, alert rules (with their promtool tests) and
# the Grafana dashboard, for the site's Prometheus and Grafana.
install -d "$root/usr/share/doc/$name/examples/prometheus" "$root/usr/share/doc/$name/examples/grafana"
install -m 0644 deploy/prometheus/*.yml "$root/usr/share/doc/$name/examples/prometheus/"
install -m 0644 deploy/grafana/scistream.json "$root/usr/share/doc/$name/examples/grafana/"
install -m 0644 README.md "$root/usr/share/doc/$name/README.md"
cat > "$root/usr/share/doc/$name/copyright" <<TXT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: scistream-rs
Files: *
License: Apache-2.0
 On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.
TXT

installed_kb=$(du -sk "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<TXT
Package: $name
Version: $version
Architecture: $arch
Maintainer: scistream-rs developers <scistream-rs@example.invalid>
Installed-Size: $installed_kb
Depends: libc6 (>= $glibc)
Suggests: etcd-server
Section: net
Priority: optional
Homepage: https://example.invalid/scistream-rs
Description: SciStream gateways: authenticated, encrypted streaming tunnels
 On-demand tunnels between scientific facilities, so that an instrument
 streams straight into an analysis service at an HPC centre, memory to
 memory, at line rate. Wire-compatible with SciStream's control protocol.
 .
 s2cs (control server, systemd unit s2cs.service), s2ds (data plane, started
 by s2cs), s2uc (client), s2bench (benchmarks), s2tune (host tuning).
 Configure /etc/scistream/s2cs.toml (sample in
 /usr/share/doc/scistream-rs/examples/), then: systemctl enable --now s2cs
TXT
for script in postinst postrm; do
  cat > "$root/DEBIAN/$script" <<'TXT'
#!/bin/sh
set -e
# Let systemd see the unit (added, changed or removed); not enabled here.
if [ -d /run/systemd/system ]; then systemctl daemon-reload >/dev/null 2>&1 || true; fi
TXT
  chmod 0755 "$root/DEBIAN/$script"
done

mkdir -p "$out"
deb="$out/${name}_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
ls -l "$deb" >&2
