#!/usr/bin/env bash
# Installs what the test suite talks to: a real registry (docker-registry, CNCF distribution),
# an independent client (skopeo), htpasswd for Basic auth, the AWS API emulator (moto_server),
# and the linters the suite runs. Debian/Ubuntu, as root (or with sudo).
set -euo pipefail

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

packages=(docker-registry skopeo apache2-utils zstd file ca-certificates openssl)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The Debian package starts a registry on :5000 as a service where systemd runs; the tests start
# their own on free ports and do not need it.
python3 -m pip install --quiet 'moto[server]>=5.1,<6'
# The action and workflow linters (scripts/lint-actions.sh): check-jsonschema and zizmor, both
# pure PyPI installs that work offline afterwards.
python3 -m pip install --quiet -r "$(dirname "$0")/lint-requirements.txt"
# cargo deny (scripts/deny.sh) and cargo fuzz (scripts/fuzz.sh), from crates.io, compiled here
# (about 5 and 1 minutes on 2 cores).
for tool in cargo-deny cargo-fuzz; do
  command -v "$tool" >/dev/null 2>&1 || cargo install "$tool" --locked -j "${CARGO_BUILD_JOBS:-2}"
done
