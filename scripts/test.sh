#!/usr/bin/env bash
# The whole test suite: formatting, lints, the action/workflow linters, unit tests, the
# end-to-end tests against a real registry (docker-registry), the AWS API emulator (moto_server)
# and skopeo, the static release binary (scripts/build-dist.sh), cargo deny (scripts/deny.sh)
# and a bounded run of every fuzz target (scripts/fuzz.sh; FUZZ_SECONDS each, 0 to skip).
# Installs what is missing first when it can (root or sudo on Debian/Ubuntu).
set -euo pipefail
cd "$(dirname "$0")/.."

need=(docker-registry skopeo htpasswd moto_server zstd file openssl check-jsonschema zizmor cargo-deny cargo-fuzz)
missing=()
for tool in "${need[@]}"; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
if [ "${#missing[@]}" -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" -eq 0 ] || command -v sudo >/dev/null 2>&1; }; then
    echo "installing test dependencies (missing: ${missing[*]})" >&2
    ./scripts/install-test-deps.sh
  else
    echo "error: the tests need: ${missing[*]}; install them with scripts/install-test-deps.sh (Debian/Ubuntu)" >&2
    exit 2
  fi
fi

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
jobs="${CARGO_BUILD_JOBS:-2}"

cargo fmt --check
cargo clippy --locked -j "$jobs" --all-targets -- -D warnings
# Licences, duplicate crates, sources; advisories when the RustSec database can be fetched
# (the script says so when it cannot).
./scripts/deny.sh
# action.yml and the workflows: schemas and zizmor (fails if the linters are missing).
./scripts/lint-actions.sh
cargo test --locked -j "$jobs" -- --test-threads="${TEST_THREADS:-4}"
# The release binary as a release builds it (fat LTO, a few minutes): fails unless `file` and
# `ldd` say static and it resolves localhost and reaches the TLS stack.
./scripts/build-dist.sh
# The image readers under cargo fuzz for a bounded time (an instrumented build of its own in
# target/fuzz: about 10 minutes cold on 2 cores, seconds when warm).
if [ "${FUZZ_SECONDS:-30}" = 0 ]; then
  echo "fuzz: skipped (FUZZ_SECONDS=0)"
else
  ./scripts/fuzz.sh
fi
