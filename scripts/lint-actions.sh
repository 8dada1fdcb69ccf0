#!/usr/bin/env bash
# Lints the GitHub Action and the workflows, offline:
# - action.yml against the GitHub Action metadata schema, each workflow against the workflow
#   schema (check-jsonschema's vendored schemas);
# - zizmor's security audits (template injection, credential persistence, unpinned actions,
#   excessive permissions, ...): any finding above low severity fails.
# Install the tools with scripts/install-test-deps.sh (pip install -r scripts/lint-requirements.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool in check-jsonschema zizmor; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "error: the action linters are not installed (missing: ${missing[*]}); run scripts/install-test-deps.sh or: python3 -m pip install -r scripts/lint-requirements.txt" >&2
  exit 2
fi

workflows=(.github/workflows/*.yml)
echo "check-jsonschema $(check-jsonschema --version | awk '{print $NF}'): action.yml, ${workflows[*]}" >&2
check-jsonschema --builtin-schema vendor.github-actions action.yml
check-jsonschema --builtin-schema vendor.github-workflows "${workflows[@]}"

echo "$(zizmor --version) --offline: action.yml, ${workflows[*]}" >&2
# Everything zizmor finds is shown; only findings above low fail.
zizmor --offline --no-progress action.yml "${workflows[@]}" >&2 || true
zizmor --offline --no-progress --min-severity medium action.yml "${workflows[@]}"
