#!/usr/bin/env bash
# Installs what the test suite talks to: a real registry (docker-registry, CNCF distribution),
# an independent client (skopeo), htpasswd for Basic auth, the AWS API emulator (moto_server),
# and the linters the suite runs. Debian/Ubuntu, as root (or with sudo).
#
#   ./scripts/install-test-deps.sh                 everything
#   ./scripts/install-test-deps.sh system python   only these parts (what a CI job needs):
#     system      Debian packages: docker-registry skopeo apache2-utils zstd file ca-certificates openssl
#     python      moto[server], and the action linters (check-jsonschema, zizmor)
#     cargo-deny  for scripts/deny.sh (compiled from crates.io, about 5 minutes on 2 cores)
#     cargo-fuzz  for scripts/fuzz.sh (about 1 minute)
set -euo pipefail

parts=("$@")
if [ "${#parts[@]}" -eq 0 ]; then parts=(system python cargo-deny cargo-fuzz); fi
for part in "${parts[@]}"; do
  case "$part" in
    system|python|cargo-deny|cargo-fuzz) ;;
    *) echo "error: unknown part '$part' (system, python, cargo-deny, cargo-fuzz)" >&2; exit 2 ;;
  esac
done
wants() { [[ " ${parts[*]} " == *" $1 "* ]]; }

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

if wants system; then
  packages=(docker-registry skopeo apache2-utils zstd file ca-certificates openssl)
  missing=()
  for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
  # The Debian package starts a registry on :5000 as a service where systemd runs; the tests
  # start their own on free ports and do not need it.
fi

if wants python; then
  python3 -m pip install --quiet 'moto[server]>=5.1,<6'
  # The action and workflow linters (scripts/lint-actions.sh): check-jsonschema and zizmor, both
  # pure PyPI installs that work offline afterwards.
  python3 -m pip install --quiet -r "$(dirname "$0")/lint-requirements.txt"
fi

# cargo deny (scripts/deny.sh) and cargo fuzz (scripts/fuzz.sh), from crates.io, compiled here.
for tool in cargo-deny cargo-fuzz; do
  if wants "$tool" && ! command -v "$tool" >/dev/null 2>&1; then
    cargo install "$tool" --locked -j "${CARGO_BUILD_JOBS:-2}"
  fi
done
