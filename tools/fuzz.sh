#!/usr/bin/env bash
# Runs every coverage-guided fuzz target in fuzz/ (cargo fuzz, libFuzzer,
# AddressSanitizer) for a bounded time each, starting from the seeds in
# fuzz/seeds/<target>/ and what earlier runs found in fuzz/corpus/<target>/.
#
#   tools/fuzz.sh                  # 10 s per target, optimised build
#   tools/fuzz.sh --ci             # what CI runs: unoptimised build (faster
#                                  #   to compile), 8 s per target
#   tools/fuzz.sh --seconds 600    # a soak: 10 min per target
#   tools/fuzz.sh --seconds 60 record preamble    # some targets only
#
# Needs the nightly toolchain and cargo-fuzz (installed here if missing:
# `cargo install --locked cargo-fuzz`). A crash stops the run with the
# input saved under fuzz/artifacts/<target>/; reproduce it with
# `cargo +nightly fuzz run <target> <that file>`, fix it, and add the file
# to fuzz/seeds/<target>/ so every later run replays it.
# Prints, per target, executions, coverage (libFuzzer's `cov`) and corpus size.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=10
profile=-O
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --ci) profile=--dev; seconds=8; shift ;;
    --seconds) seconds="${2:?--seconds needs a number}"; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
case "$seconds" in ''|*[!0-9]*) echo "fuzz.sh: --seconds wants whole seconds, not '$seconds'" >&2; exit 2 ;; esac

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz.sh: no nightly toolchain (rustup toolchain install nightly); cargo fuzz needs it" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz" >&2
  cargo install --locked cargo-fuzz
fi

# The workspace's lock file: the fuzz build uses the versions the product ships with.
cp Cargo.lock fuzz/Cargo.lock
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cd fuzz && cargo +nightly fuzz list)
fi

echo "fuzz.sh: building ${#targets[@]} targets"
start=$(date +%s)
mkdir -p fuzz/artifacts
if ! (cd fuzz && cargo +nightly fuzz build $profile) >fuzz/artifacts/build.log 2>&1; then
  tail -40 fuzz/artifacts/build.log >&2
  echo "fuzz.sh: the build failed; whole log in fuzz/artifacts/build.log" >&2
  exit 1
fi
echo "fuzz.sh: built in $(( $(date +%s) - start )) s"

printf '%-18s %12s %8s %8s %8s\n' target executions exec/s cov corpus
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/seeds/$t"
  log="fuzz/artifacts/$t.log"
  if ! (cd fuzz && cargo +nightly fuzz run $profile "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 -max_len=20000) >"$log" 2>&1; then
    echo "fuzz.sh: target $t FAILED; its log: $log" >&2
    grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" >&2 || tail -30 "$log" >&2
    exit 1
  fi
  execs=$(grep -oP 'stat::number_of_executed_units:\s*\K\d+' "$log" || echo '?')
  rate=$(grep -oP 'stat::average_exec_per_sec:\s*\K\d+' "$log" || echo '?')
  cov=$(grep -oP '#\d+\s+DONE\s+cov: \K\d+' "$log" || grep -oP 'cov: \K\d+' "$log" | tail -1 || echo '?')
  corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
  printf '%-18s %12s %8s %8s %8s\n' "$t" "$execs" "$rate" "$cov" "$corpus"
done
