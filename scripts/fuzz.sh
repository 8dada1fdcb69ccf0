#!/usr/bin/env bash
# Runs each cargo-fuzz target (fuzz/) for a bounded time: FUZZ_SECONDS each (default 30).
# cargo fuzz needs nightly flags; this project has the stable toolchain only, so they are
# unlocked with RUSTC_BOOTSTRAP=1 (for this build only). No sanitizer: the crate forbids
# unsafe code, and without ASan the runs are about twice as fast; panics, overflows (debug
# assertions are on), hangs and runaway memory are what is caught.
# A crash prints the input (and its base64) and fails the script; new corpus entries go to a
# temporary directory, so the tree stays clean.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-30}"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "error: cargo-fuzz is not installed; run scripts/install-test-deps.sh" >&2
  exit 2
fi
export RUSTC_BOOTSTRAP=1
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
flags=(--fuzz-dir fuzz --sanitizer none --debug-assertions --target-dir target/fuzz)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

start=$(date +%s)
cargo fuzz build "${flags[@]}"
echo "fuzz: build took $(( $(date +%s) - start )) s"

for target in tar_index docker_archive oci_layout manifest; do
  case "$target" in
    tar_index) seeds=(fixtures) ;;
    manifest) seeds=(fuzz/seeds/structured fixtures/multi-platform.oci fixtures/oci-layout-umoci) ;;
    *) seeds=(fuzz/seeds/structured fixtures) ;;
  esac
  mkdir -p "$work/$target"
  log="$work/$target.log"
  if ! cargo fuzz run "${flags[@]}" "$target" "$work/$target" "${seeds[@]}" -- \
      -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -timeout=10 \
      -dict=fuzz/dictionary.txt -print_final_stats=1 -artifact_prefix="$work/" >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "error: fuzz target $target failed; the input that crashed it is printed above" >&2
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  units=$(sed -n 's/^stat::new_units_added: *//p' "$log")
  echo "fuzz: $target: $runs runs in ${seconds} s ($rate/s), $units new inputs, no crash"
done
