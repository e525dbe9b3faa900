#!/usr/bin/env bash
# The Python package's tests: builds the wheel (unoptimised, as CI does;
# `--release` for an optimised one), installs it into a fresh venv under
# target/, and runs python/tests with pytest against real gateways started
# from the venv's own bin/. maturin and pytest come from PyPI; a missing
# Python, venv module or package is an error, not a skip.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=--dev
[ "${1:-}" = --release ] && profile= && shift
python3 -c 'import venv' || { echo "test-python.sh: python3 with the venv module is needed (Debian: python3-venv)" >&2; exit 69; }
command -v maturin >/dev/null || python3 -m pip install --quiet maturin
rm -f target/wheels/scistream_rs-*.whl
tools/dist.sh $profile --wheel
# The Python crate is outside the workspace, so the workspace's clippy run
# does not see it.
cp Cargo.lock python/Cargo.lock
CARGO_TARGET_DIR="$PWD/target" cargo clippy --quiet --manifest-path python/Cargo.toml -- -D warnings
rm -f python/Cargo.lock
venv=target/pytest-venv
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet pytest target/wheels/scistream_rs-*.whl
cd python/tests
exec "../../$venv/bin/python" -m pytest -q "$@"
