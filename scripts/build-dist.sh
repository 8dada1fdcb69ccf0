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
# or that cannot resolve `localhost` and reach the TLS stack, fails this script.
set -euo pipefail
cd "$(dirname "$0")/.."

target=""
sums_only=false
while [ "$#" -gt 0 ]; do
  case "$1" in
    --target) target="${2:?--target needs a triple}"; shift 2 ;;
    --target=*) target="${1#--target=}"; shift ;;
    --sums-only) sums_only=true; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
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
# on loopback) and complete TLS handshakes (system trust store, and SSL_CERT_FILE).
smoke_test() {
  local binary="$1" work port out pid
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

  # localhost (/etc/hosts): resolved, then refused.
  expect "localhost resolves (files)" "$(push https://localhost:1)" "onnection refused"

  # TLS: a server whose certificate is signed by a throwaway CA.
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj /CN=dist-smoke-ca -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
    -keyout "$work/leaf.key" -out "$work/leaf.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > "$work/ext"
  openssl x509 -req -in "$work/leaf.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
    -CAcreateserial -days 1 -extfile "$work/ext" -out "$work/leaf.pem" 2>/dev/null
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  openssl s_server -quiet -accept "127.0.0.1:$port" -cert "$work/leaf.pem" -key "$work/leaf.key" \
    -www </dev/null >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  expect "TLS handshake, unknown CA refused" "$(push "https://localhost:$port")" "UnknownIssuer"
  out=$(SSL_CERT_FILE="$work/ca.pem" push "https://localhost:$port")
  case "$out" in
    *"certificate"*|*"UnknownIssuer"*|*"tls"*|*"TLS"*)
      echo "error: dist smoke test: TLS with SSL_CERT_FILE failed: $out" >&2; kill "$pid"; exit 1 ;;
  esac
  echo "ok: TLS handshake with the CA from SSL_CERT_FILE" >&2
  kill "$pid" 2>/dev/null || true

  # DNS: glibc's dns module, with /etc/resolv.conf replaced in a private mount namespace by a
  # DNS server on loopback that answers 127.0.0.1 for every A query.
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if sudo -n true 2>/dev/null; then sudo="sudo -n"; else
      echo "WARNING: DNS check not run: it needs root or passwordless sudo (a private mount namespace and port 53)" >&2
      return
    fi
  fi
  echo "nameserver 127.0.0.77" > "$work/resolv.conf"
  cat > "$work/dns.py" <<'PY'
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.77", 53))
s.settimeout(30)
while True:
    try:
        data, addr = s.recvfrom(512)
    except socket.timeout:
        break
    i = 12
    while data[i] != 0:
        i += data[i] + 1
    qtype = struct.unpack(">H", data[i + 1:i + 3])[0]
    answer = b""
    if qtype == 1:
        answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton("127.0.0.1")
    header = data[:2] + b"\x81\x80" + struct.pack(">HHHH", 1, 1 if answer else 0, 0, 0)
    s.sendto(header + data[12:i + 5] + answer, addr)
PY
  $sudo python3 "$work/dns.py" &
  pid=$!
  sleep 0.5
  out=$($sudo unshare -m sh -c 'mount --bind "$1" /etc/resolv.conf && exec "$2" push fixtures/hello.docker-archive.tar --registry https://registry.dist-smoke.test:1 --repository dist/smoke --tag smoke --retries 1 --timeout 5 --quiet' \
    sh "$work/resolv.conf" "$binary" 2>&1 || true)
  $sudo kill "$pid" 2>/dev/null || true
  expect "registry.dist-smoke.test resolves (dns)" "$out" "onnection refused"
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
