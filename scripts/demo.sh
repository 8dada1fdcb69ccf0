#!/usr/bin/env bash
# The main job on a default that works on a fresh machine: build ecr-push, start a throwaway
# local registry, push the bundled docker-save fixture into it, and read it back with skopeo.
#   ./scripts/demo.sh [image]     (default: fixtures/hello.docker-archive.tar)
set -euo pipefail
cd "$(dirname "$0")/.."

image="${1:-fixtures/hello.docker-archive.tar}"
for tool in docker-registry skopeo; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "installing $tool (scripts/install-test-deps.sh)" >&2
    ./scripts/install-test-deps.sh
  fi
done

cargo build --locked --release -j "${CARGO_BUILD_JOBS:-2}" >&2
binary=target/release/ecr-push

work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$work/registry.yml" <<YAML
version: 0.1
storage:
  filesystem:
    rootdirectory: $work/data
http:
  addr: 127.0.0.1:$port
log:
  level: error
YAML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
trap 'kill $registry_pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 50); do curl -fs "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break; sleep 0.1; done

echo "== ecr-push push $image --registry http://127.0.0.1:$port --repository demo/hello --tag demo" >&2
"$binary" push "$image" --registry "http://127.0.0.1:$port" --repository demo/hello --tag demo --tag latest
echo "== read back by an independent client (skopeo):" >&2
skopeo inspect --tls-verify=false "docker://127.0.0.1:$port/demo/hello:demo" | head -20
