#!/usr/bin/env bash
# The GitHub Action's only step (action.yml runs this script and passes the inputs as ECR_PUSH_*
# environment variables, never inside the script text).
#
# 1. Finds the binary: the `binary-path` input (INPUT_BINARY_PATH), else
#    dist/ecr-push-<os>-<arch>[.exe] next to this script's action, checked against
#    dist/SHA256SUMS before it is run. Nothing is downloaded.
# 2. Drops empty ECR_PUSH_* variables: the runner sets every input, given or not, and an empty
#    value for a flag such as --jobs or --verify is an error to the binary, not "unset".
#    List inputs may be newline-separated in the workflow; they reach the binary comma-separated.
# 3. Runs `ecr-push push`, which writes $GITHUB_OUTPUT and the step summary itself.
set -euo pipefail

fail() {
  # One annotation line: workflow command data must not contain raw newlines or '%'.
  local message="$*"
  message=${message//%/%25}
  message=${message//$'\r'/%0D}
  message=${message//$'\n'/%0A}
  echo "::error title=ecr-push action::$message" >&2
  exit 1
}

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | cut -d' ' -f1
  elif command -v shasum >/dev/null 2>&1; then
    shasum -a 256 "$1" | cut -d' ' -f1
  else
    fail "neither sha256sum nor shasum is installed: cannot verify the ecr-push binary"
  fi
}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dist="$root/dist"

if [ -n "${INPUT_BINARY_PATH:-}" ]; then
  binary="$INPUT_BINARY_PATH"
  [ -f "$binary" ] || fail "binary-path: no file at '$binary'"
  [ -x "$binary" ] || fail "binary-path: '$binary' is not executable"
else
  case "${RUNNER_OS:-$(uname -s)}" in
    Linux) os=linux ;;
    macOS|Darwin) os=macos ;;
    Windows|MINGW*|MSYS*|CYGWIN*) os=windows ;;
    *) os=$(printf '%s' "${RUNNER_OS:-$(uname -s)}" | tr '[:upper:]' '[:lower:]') ;;
  esac
  case "${RUNNER_ARCH:-$(uname -m)}" in
    X64|x86_64|amd64|AMD64) arch=x86_64 ;;
    ARM64|aarch64|arm64) arch=aarch64 ;;
    *) arch=$(printf '%s' "${RUNNER_ARCH:-$(uname -m)}" | tr '[:upper:]' '[:lower:]') ;;
  esac
  name="ecr-push-$os-$arch"
  if [ "$os" = windows ]; then name="$name.exe"; fi
  binary="$dist/$name"

  if [ ! -f "$binary" ]; then
    available=$(cd "$dist" 2>/dev/null && for f in ecr-push-*; do [ -f "$f" ] && printf '%s ' "${f#ecr-push-}"; done || true)
    if [ -n "$available" ]; then
      fail "no ecr-push binary for this runner ($os-$arch) in this version of the action; it has: ${available% }. Use a runner of one of those platforms, or set binary-path to an ecr-push binary you built."
    fi
    fail "this version of the action has no binaries in dist/ (looked for $name): binaries are placed there on release tags. Use a release tag (e.g. @v1), or build one (scripts/build-dist.sh) and set binary-path."
  fi

  [ -f "$dist/SHA256SUMS" ] || fail "dist/SHA256SUMS is missing: refusing to run $name unverified"
  expected=$(awk -v n="$name" '$2 == n || $2 == "*" n { print $1; exit }' "$dist/SHA256SUMS")
  [ -n "$expected" ] || fail "dist/SHA256SUMS has no checksum for $name: refusing to run it unverified"
  found=$(sha256_of "$binary")
  if [ "$found" != "$expected" ]; then
    fail "checksum mismatch for dist/$name: SHA256SUMS says $expected, the file is $found; refusing to run it"
  fi
  [ -x "$binary" ] || chmod +x "$binary"
fi
unset INPUT_BINARY_PATH

# Lists: newline- or comma-separated in the workflow, comma-separated (trimmed, no empty items)
# for the binary.
for var in ECR_PUSH_TAGS ECR_PUSH_REGION ECR_PUSH_REGISTRY_ID ECR_PUSH_REGISTRY \
  ECR_PUSH_REPOSITORY_TAGS ECR_PUSH_CACHE_FROM ECR_PUSH_IGNORE_CVES; do
  [ -n "${!var:-}" ] || continue
  joined=""
  while IFS= read -r item; do
    item="${item#"${item%%[![:space:]]*}"}"
    item="${item%"${item##*[![:space:]]}"}"
    [ -n "$item" ] && joined="${joined:+$joined,}$item"
  done < <(printf '%s\n' "${!var}" | tr ',\r' '\n\n')
  export "$var=$joined"
done

# Empty (or blank) means "not set": let the binary apply its default.
while IFS= read -r var; do
  case "$var" in
    ECR_PUSH_*)
      value="${!var}"
      if [ -z "${value//[[:space:]]/}" ]; then unset "$var"; fi
      ;;
  esac
done < <(compgen -e)

exec "$binary" push
