#!/usr/bin/env bash
# Builds the packages users install:
#   target/wheels/scistream_rs-*.whl   pip install: the Python module and the five binaries
#   target/debian/scistream-rs_*.deb   apt/dpkg: binaries, systemd unit, man pages, completions
#
#   tools/dist.sh            release builds of both (what gets published)
#   tools/dist.sh --dev      unoptimised builds (CI: reuses the test build, minutes faster)
#   tools/dist.sh --wheel    only the wheel;  --deb  only the .deb
#
# Needs: the Rust toolchain; for the wheel, maturin (pip install maturin);
# for the .deb, dpkg-deb (Debian's dpkg). No protoc.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
want_wheel=1
want_deb=1
for a in "$@"; do
  case "$a" in
    --dev) profile=dev ;;
    --wheel) want_deb=0 ;;
    --deb) want_wheel=0 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "dist.sh: unknown option $a (see --help)" >&2; exit 64 ;;
  esac
done
outdir=$([ "$profile" = dev ] && echo debug || echo release)
bins=(s2uc s2cs s2ds s2bench s2tune)

step() { echo "== $*" >&2; }

step "building the binaries ($profile)"
cargo build --profile "$profile" --workspace --bins

if ((want_wheel)); then
  command -v maturin >/dev/null || { echo "dist.sh: maturin is not installed: pip install maturin" >&2; exit 69; }
  step "building the wheel"
  scripts=python/scistream_rs.data/scripts
  rm -rf python/scistream_rs.data
  mkdir -p "$scripts"
  for b in "${bins[@]}"; do
    cp "target/$outdir/$b" "$scripts/$b"
    strip "$scripts/$b" 2>/dev/null || true
  done
  # The Python crate is outside the workspace: give it the workspace's
  # resolved versions so it shares target/'s build of them.
  cp Cargo.lock python/Cargo.lock
  CARGO_TARGET_DIR="$PWD/target" maturin build --quiet -m python/Cargo.toml \
    --profile "$profile" --out target/wheels --compatibility linux --strip
  rm -rf python/scistream_rs.data python/Cargo.lock
  ls -l target/wheels/*.whl >&2
fi

if ((want_deb)); then
  step "building the Debian package"
  tools/deb.sh "target/$outdir" target/debian
fi
