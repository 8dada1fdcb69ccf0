#!/usr/bin/env bash
# Builds the release binary and places it in dist/ exactly as the release workflow does, so the
# GitHub Action can be tried from a checkout (`uses: ./`).
#
#   ./scripts/build-dist.sh                  build for this machine, place it, write SHA256SUMS
#   ./scripts/build-dist.sh --target TRIPLE  build for TRIPLE (the release workflow's matrix)
#   ./scripts/build-dist.sh --sums-only      only rewrite dist/SHA256SUMS from dist/ecr-push-*
#
# Linux binaries must be static: on this machine that is the gnu target with crt-static (musl
# has no std here); the release uses the musl targets. `--target` is always passed so that
# proc-macros and build scripts are built for the host, not static. The release profile in
# Cargo.toml already has fat LTO, codegen-units=1 and strip. A Linux build that is not static,
# or that cannot resolve `localhost` and a name through DNS, or complete TLS handshakes, fails
# this script. The DNS check needs root, passwordless sudo or unprivileged user namespaces;
# SKIP_DNS_CHECK=1 skips it where none is available (and says so).
set -euo pipefail
cd "$(dirname "$0")/.."

target=""
sums_only=false
while [ "$#" -gt 0 ]; do
  case "$1" in
    --target) target="${2:?--target needs a triple}"; shift 2 ;;
    --target=*) target="${1#--target=}"; shift ;;
    --sums-only) sums_only=true; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "error: unknown argument: $1" >&2; exit 2 ;;
  esac
done

host=$(rustc -vV | sed -n 's/^host: //p')
target="${target:-$host}"

# The name the action looks for: ecr-push-<os>-<arch>[.exe].
dist_name() {
  local arch os
  case "$1" in
    x86_64-*) arch=x86_64 ;;
    aarch64-*) arch=aarch64 ;;
    *) echo "error: no dist name for target $1" >&2; exit 2 ;;
  esac
  case "$1" in
    *-linux-*) os=linux ;;
    *-apple-darwin) os=macos ;;
    *-windows-*) os=windows ;;
    *) echo "error: no dist name for target $1" >&2; exit 2 ;;
  esac
  if [ "$os" = windows ]; then echo "ecr-push-$os-$arch.exe"; else echo "ecr-push-$os-$arch"; fi
}

sha256() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum "$@"; else shasum -a 256 "$@"; fi
}

write_sums() {
  (
    cd dist
    shopt -s nullglob
    binaries=(ecr-push-*)
    if [ "${#binaries[@]}" -eq 0 ]; then
      echo "error: no dist/ecr-push-* binaries to sum" >&2
      exit 1
    fi
    sha256 "${binaries[@]}" > SHA256SUMS
    echo "dist/SHA256SUMS:" >&2
    sed 's/^/  /' SHA256SUMS >&2
  )
}

# Runs the binary against servers on this machine only: it must resolve names through both
# name services a static glibc has (`files`: localhost; `dns`: a name answered by a DNS server
# on loopback) and complete TLS handshakes (system trust store, and SSL_CERT_FILE). Each check
# asserts what must happen (an HTTP answer, a DNS query), not the absence of some error words.
smoke_test() {
  local binary="$1" work port out https_pid
  work=$(mktemp -d)
  # shellcheck disable=SC2064 # expand $work now
  trap "kill \$(jobs -p) 2>/dev/null || true; rm -rf '$work'" EXIT
  push() {
    "$binary" push fixtures/hello.docker-archive.tar --registry "$1" --repository dist/smoke \
      --tag smoke --retries 1 --timeout 5 --quiet 2>&1 || true
  }
  expect() { # what, output, needle
    case "$2" in
      *"$3"*) echo "ok: $1" >&2 ;;
      *) echo "error: dist smoke test: $1: expected '$3' in: $2" >&2; exit 1 ;;
    esac
  }
  wait_for_file() { # path: written by a server once it listens
    for _ in $(seq 100); do [ -s "$1" ] && return 0; sleep 0.1; done
    echo "error: dist smoke test: a test server did not start ($1 not written)" >&2; exit 1
  }

  # localhost (/etc/hosts): resolved, then refused.
  expect "localhost resolves (files)" "$(push https://localhost:1)" "onnection refused"

  # TLS: an HTTPS server whose certificate is signed by a throwaway CA, answering every request
  # with HTTP 400 and noting it.
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj /CN=dist-smoke-ca -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
    -keyout "$work/leaf.key" -out "$work/leaf.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > "$work/ext"
  openssl x509 -req -in "$work/leaf.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
    -CAcreateserial -days 1 -extfile "$work/ext" -out "$work/leaf.pem" 2>/dev/null
  cat > "$work/https.py" <<'PY'
import http.server, ssl, sys
cert, key, port_file, requests = sys.argv[1:5]
class Answer(http.server.BaseHTTPRequestHandler):
    def answer(self):
        with open(requests, "a") as log:
            log.write(f"{self.command} {self.path}\n")
        body = b'{"errors":[{"code":"DIST_SMOKE","message":"answered over TLS"}]}'
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = answer
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), Answer)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
with open(port_file, "w") as f:
    f.write(str(server.server_address[1]))
server.serve_forever()
PY
  python3 "$work/https.py" "$work/leaf.pem" "$work/leaf.key" "$work/port" "$work/requests" &
  https_pid=$!
  wait_for_file "$work/port"
  port=$(cat "$work/port")
  expect "TLS handshake, unknown CA refused" "$(push "https://localhost:$port")" "UnknownIssuer"
  if [ -s "$work/requests" ]; then
    echo "error: dist smoke test: a request was sent over a TLS connection that had to fail" >&2
    exit 1
  fi
  out=$(SSL_CERT_FILE="$work/ca.pem" push "https://localhost:$port")
  expect "TLS handshake with the CA from SSL_CERT_FILE" "$out" "the registry answered HTTP 400"
  if [ ! -s "$work/requests" ]; then
    echo "error: dist smoke test: the HTTPS server got no request: $out" >&2
    exit 1
  fi
  kill "$https_pid" 2>/dev/null || true

  dns_check "$binary" "$work"
}

# glibc's `dns` module (musl's resolver, for a musl build): /etc/resolv.conf is replaced, in a
# private mount and network namespace, by one naming a DNS server on loopback that answers
# 127.0.0.1 for every A query. The namespaces need root, passwordless sudo, or unprivileged user
# namespaces (`unshare -r`); without any of them this check fails, unless SKIP_DNS_CHECK=1 says
# to skip it (and it says so, loudly).
dns_check() {
  local binary="$1" work="$2" out
  local namespace=()
  if [ "$(id -u)" -eq 0 ]; then
    namespace=(unshare --mount --net)
  elif sudo -n true 2>/dev/null; then
    namespace=(sudo -n unshare --mount --net)
  elif unshare --map-root-user --mount --net sh -c 'ip link set lo up' 2>/dev/null; then
    namespace=(unshare --map-root-user --mount --net)
  elif [ "${SKIP_DNS_CHECK:-0}" = 1 ]; then
    echo "WARNING: DNS check SKIPPED (SKIP_DNS_CHECK=1): DNS resolution of this binary is NOT verified" >&2
    return 0
  else
    echo "error: dist smoke test: the DNS check needs a private mount and network namespace: run as root, with passwordless sudo, or where unprivileged user namespaces are allowed (unshare -r); or set SKIP_DNS_CHECK=1 to skip it knowingly" >&2
    exit 1
  fi
  command -v ip >/dev/null 2>&1 || { echo "error: dist smoke test: the DNS check needs ip (iproute2)" >&2; exit 1; }
  echo "nameserver 127.0.0.77" > "$work/resolv.conf"
  cat > "$work/dns.py" <<'PY'
import socket, struct, sys
ready, queries = sys.argv[1:3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.77", 53))
open(ready, "w").write("listening")
s.settimeout(30)
while True:
    try:
        data, addr = s.recvfrom(512)
    except socket.timeout:
        break
    i, labels = 12, []
    while data[i] != 0:
        labels.append(data[i + 1:i + 1 + data[i]].decode())
        i += data[i] + 1
    qtype = struct.unpack(">H", data[i + 1:i + 3])[0]
    with open(queries, "a") as log:
        log.write(f"{qtype} {'.'.join(labels)}\n")
    answer = b""
    if qtype == 1:
        answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton("127.0.0.1")
    header = data[:2] + b"\x81\x80" + struct.pack(">HHHH", 1, 1 if answer else 0, 0, 0)
    s.sendto(header + data[12:i + 5] + answer, addr)
PY
  # Inside the namespaces: loopback up (a new network namespace starts with it down), the
  # resolver pointed at the server, the server started, then the binary.
  # shellcheck disable=SC2016 # expanded by the inner shell
  out=$("${namespace[@]}" sh -c '
      ip link set lo up && mount --bind "$1" /etc/resolv.conf || exit 1
      python3 "$2" "$3" "$4" & dns=$!
      for _ in $(seq 100); do [ -s "$3" ] && break; sleep 0.1; done
      "$5" push fixtures/hello.docker-archive.tar --registry https://registry.dist-smoke.test:1 \
        --repository dist/smoke --tag smoke --retries 1 --timeout 5 --quiet 2>&1
      kill "$dns" 2>/dev/null
      true' \
    sh "$work/resolv.conf" "$work/dns.py" "$work/dns-ready" "$work/queries" "$binary" 2>&1 || true)
  expect "registry.dist-smoke.test resolves (dns)" "$out" "onnection refused"
  if ! grep -q '^1 registry\.dist-smoke\.test$' "$work/queries" 2>/dev/null; then
    echo "error: dist smoke test: the DNS server was not asked for registry.dist-smoke.test: $out" >&2
    exit 1
  fi
}

mkdir -p dist
if "$sums_only"; then
  write_sums
  exit 0
fi

name=$(dist_name "$target")
rustflags="${RUSTFLAGS:-}"
case "$target" in
  *-linux-gnu|*-linux-musl|*-windows-msvc) rustflags="$rustflags -C target-feature=+crt-static" ;;
esac

start=$(date +%s)
echo "building $target (release profile: fat LTO, codegen-units=1, strip)" >&2
RUSTFLAGS="$rustflags" cargo build --release --locked -j "${CARGO_BUILD_JOBS:-2}" --target "$target"
echo "built in $(( $(date +%s) - start )) s" >&2

built="${CARGO_TARGET_DIR:-target}/$target/release/ecr-push"
case "$target" in *-windows-*) built="$built.exe" ;; esac
cp "$built" "dist/$name"
chmod +x "dist/$name"
size=$(wc -c < "dist/$name")
echo "dist/$name: $size bytes ($(( (size + 524288) / 1048576 )) MiB)" >&2

# Linux: prove it is static and that name resolution and TLS start up.
case "$target" in
  *-linux-*)
    description=$(file -L "dist/$name")
    echo "$description" >&2
    case "$description" in
      *"statically linked"*|*"static-pie linked"*) ;;
      *) echo "error: dist/$name is not statically linked" >&2; exit 1 ;;
    esac
    # ldd exits non-zero for a static binary; its words are what matter.
    ldd_out=$(ldd "dist/$name" 2>&1 || true)
    echo "ldd: $ldd_out" >&2
    case "$ldd_out" in
      *"not a dynamic executable"*|*"statically linked"*) ;;
      *) echo "error: ldd finds dynamic dependencies in dist/$name" >&2; exit 1 ;;
    esac
    if [ "${target%%-*}" = "${host%%-*}" ]; then
      smoke_test "dist/$name"
    fi
    ;;
esac

write_sums
