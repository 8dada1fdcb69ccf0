#!/usr/bin/env bash
# ecr-push against skopeo, side by side on this machine: cold pushes of every input form, warm
# re-pushes with no local cache, and a 2 GiB single-layer image for the memory bound. Prints a
# table (medians, ratio ecr-push/skopeo, peak RSS, pushed size, targets of issue 7, PASS/FAIL)
# and writes the same as JSON. See bench/README.md.
#
#   bench/compare.sh                 full run (~600 MB image, 5 runs per tool and case, 2 GiB case)
#   BENCH_QUICK=1 bench/compare.sh   smoke test (~100 MB image, 2 runs, no 2 GiB case)
#
# Environment:
#   ECR_PUSH_BIN=path    benchmark this binary instead of building target/release/ecr-push
#   RUNS=n               timed runs per tool and case (default 5; quick: 2)
#   BIG_RUNS=n           timed runs per tool of the 2 GiB case (default 3)
#   CASES="a b"          only these cases (ids as printed: cold-legacy, warm-oci, big-legacy, ...)
#   IDLE_MAX=s           longest wait for an idle CPU before each run (default 20)
#   IDLE_BUDGET=s        total of those waits in one benchmark (default 300); past it, each run
#                        only samples the CPU for a second, so a busy machine cannot stretch the
#                        benchmark without bound
#   IDLE_BUSY=pct        "idle" means all cores together less busy than this (default 15)
#   BENCH_WORK=dir       cache of images and logs (default bench/.work)
#   BENCH_OUT=file       JSON results (default bench/results.json)
#   BENCH_REGISTRY_TMP=dir  where the registry keeps its blobs (default /dev/shm if it has room)
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."
root=$PWD

quick=${BENCH_QUICK:-0}
if [[ $quick == 1 ]]; then
  set_name=quick
  runs=${RUNS:-2}
else
  set_name=full
  runs=${RUNS:-5}
fi
big_runs=${BIG_RUNS:-3}
idle_max=${IDLE_MAX:-20}
idle_budget=${IDLE_BUDGET:-300}
idle_spent=0
idle_busy=${IDLE_BUSY:-15}
work=$(mkdir -p "${BENCH_WORK:-$root/bench/.work}" && cd "${BENCH_WORK:-$root/bench/.work}" && pwd)
out_json=${BENCH_OUT:-$root/bench/results.json}
only=" ${CASES:-} "

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
want() { [[ $only == "  " || $only == *" $1 "* ]]; }

# ---- tools ---------------------------------------------------------------------------------
missing=()
command -v docker-registry >/dev/null || missing+=(docker-registry)
command -v skopeo >/dev/null || missing+=(skopeo)
[[ -x /usr/bin/time ]] || missing+=(time)
command -v curl >/dev/null || missing+=(curl)
command -v gzip >/dev/null || missing+=(gzip)
if ((${#missing[@]})); then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    log "installing ${missing[*]}"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
  else
    echo "bench: missing ${missing[*]}: install them (Debian: sudo apt-get install ${missing[*]})" >&2
    exit 2
  fi
fi
tar --version 2>/dev/null | grep -q 'GNU tar' || { echo "bench: GNU tar is needed" >&2; exit 2; }

rundir=$work/last-run
rm -rf "$rundir"
mkdir -p "$rundir/logs" "$rundir/tmp"

# ---- the binary (a private copy: a parallel `cargo build` must not swap it mid-run) -----------
if [[ -n ${ECR_PUSH_BIN:-} ]]; then
  src_bin=$ECR_PUSH_BIN
else
  log "cargo build --release --locked -j2"
  cargo build --release --locked -j2 >&2
  src_bin=$root/target/release/ecr-push
fi
[[ -x $src_bin ]] || { echo "bench: $src_bin is not an executable" >&2; exit 2; }
bin=$rundir/ecr-push
cp "$src_bin" "$bin"
# The copy is what runs; the description names the source, and the commit only if built here.
built_here=$([[ -n ${ECR_PUSH_BIN:-} ]] && echo 0 || echo 1)
python3 bench/report.py machine "$src_bin" "$built_here" >"$rundir/machine.json"

# ---- images (cached in $work/images, keyed on their inputs) ------------------------------------
log "images ($set_name set; built once, then cached)"
forms=$(python3 bench/make-image.py --set "$set_name" --work "$work" --verify)
big_forms=""
if [[ $quick != 1 ]] && want big-legacy; then
  big_forms=$(python3 bench/make-image.py --set big --work "$work" --verify)
fi
images=$(dirname "$forms")

# ---- the registry --------------------------------------------------------------------------
reg_tmp=${BENCH_REGISTRY_TMP:-}
if [[ -z $reg_tmp ]]; then
  reg_tmp=${TMPDIR:-/tmp}
  # tmpfs keeps the registry's disk writes out of the timings (ECR's storage is not ours either)
  if [[ -d /dev/shm && -w /dev/shm ]] &&
    (($(df -Pk /dev/shm | awk 'NR==2 {print $4}') > 10 * 1024 * 1024)); then
    reg_tmp=/dev/shm
  fi
fi
regdir=$(mktemp -d "$reg_tmp/ecr-push-bench.XXXXXX")
registry_pid=""
cleanup() {
  if [[ -n $registry_pid ]]; then
    kill "$registry_pid" 2>/dev/null || true
    wait "$registry_pid" 2>/dev/null || true
  fi
  rm -rf "$regdir" "$rundir/tmp"
}
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$regdir/config.yml" <<YAML
version: 0.1
storage:
  filesystem:
    rootdirectory: $regdir/data
http:
  addr: 127.0.0.1:$port
log:
  level: error
YAML
docker-registry serve "$regdir/config.yml" >"$rundir/registry.log" 2>&1 &
registry_pid=$!
reg=127.0.0.1:$port
for _ in $(seq 100); do
  curl -fs "http://$reg/v2/" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs "http://$reg/v2/" >/dev/null || { echo "bench: registry did not start" >&2; cat "$rundir/registry.log" >&2; exit 1; }
log "registry at http://$reg (storage $regdir)"

# ---- running one timed push ------------------------------------------------------------------
skopeo_caches=(
  /var/lib/containers/cache/blob-info-cache-v1.boltdb
  "${XDG_DATA_HOME:-$HOME/.local/share}/containers/cache/blob-info-cache-v1.boltdb"
)
clear_skopeo_cache() { rm -f "${skopeo_caches[@]}"; }

runs_tsv=$rundir/runs.tsv
printf 'case\ttool\trun\tseconds\ttime_e\trss_kib\trc\tbusy_pct\twaited_s\tidle\trepo\ttag\tmanifest_digest\tconfig_digest\tpushed_bytes\tlayers\tlog\n' >"$runs_tsv"
not_idle=0

# push_cmd TOOL CASE_FORM SOURCE_PATH SKOPEO_REF REPO TAG: the command line of one push
push() {
  local tool=$1 form=$2 path=$3 ref=$4 repo=$5 tag=$6
  if [[ $tool == ecr-push ]]; then
    # a fresh, empty cache home: no local cache of any kind, whatever the defaults become
    local home
    home=$(mktemp -d "$rundir/tmp/cache.XXXXXX")
    XDG_CACHE_HOME=$home "$bin" push "$path" --registry "http://$reg" --repository "$repo" \
      --tag "$tag" --quiet
  elif [[ $form == legacy-gz ]]; then
    # skopeo 1.9 cannot read a gzip'd docker-archive: what a user does is gunzip first
    local plain=$rundir/tmp/legacy-gz.tar
    gzip -dc "$path" >"$plain"
    local rc=0
    skopeo copy --quiet --dest-tls-verify=false "docker-archive:$plain" "docker://$reg/$repo:$tag" || rc=$?
    rm -f "$plain"
    return "$rc"
  else
    skopeo copy --quiet --dest-tls-verify=false "$ref" "docker://$reg/$repo:$tag"
  fi
}
export -f push
export bin reg rundir

# timed CASE TOOL RUN FORM PATH REF REPO TAG
timed() {
  local case=$1 tool=$2 n=$3 form=$4 path=$5 ref=$6 repo=$7 tag=$8
  local busy waited idle max=$idle_max
  ((idle_budget - idle_spent < max)) && max=$((idle_budget - idle_spent))
  ((max < 1)) && max=1
  read -r busy waited idle < <(python3 bench/report.py wait-idle "$max" "$idle_busy")
  idle_spent=$((idle_spent + waited))
  if [[ $idle != 1 ]]; then
    not_idle=$((not_idle + 1))
    log "CPU still ${busy}% busy after ${waited}s: running anyway"
  fi
  if [[ $tool == skopeo ]]; then clear_skopeo_cache; fi
  local logf=$rundir/logs/$case-$tool-$n.log tf=$rundir/logs/$case-$tool-$n.time rc=0
  # /usr/bin/time gives the peak RSS (%M, KiB: the largest of the process tree) and its own
  # wall time (%e, 10 ms steps); the seconds reported come from the shell's microsecond clock
  # around it, so the warm pushes of a few tens of milliseconds are still resolved.
  local t0=$EPOCHREALTIME
  /usr/bin/time -f '%e %M' -o "$tf" bash -c 'push "$@"' _ "$tool" "$form" "$path" "$ref" "$repo" "$tag" \
    >"$logf" 2>&1 || rc=$?
  local t1=$EPOCHREALTIME
  local secs rss etime
  read -r etime rss < <(tail -n 1 "$tf")
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
  local mdig=- cdig=- size=- layers=-
  if [[ $rc == 0 ]]; then
    local info
    if info=$(skopeo inspect --raw --tls-verify=false "docker://$reg/$repo:$tag" 2>>"$logf" |
      python3 bench/report.py manifest-info); then
      read -r mdig cdig size layers <<<"$info"
    fi
  else
    log "$case $tool run $n FAILED (exit $rc), log $logf:"
    tail -n 5 "$logf" | sed 's/^/    /' >&2
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$case" "$tool" \
    "$n" "$secs" "$etime" "$rss" "$rc" "$busy" "$waited" "$idle" "$repo" "$tag" "$mdig" "$cdig" "$size" \
    "$layers" "$logf" >>"$runs_tsv"
  log "$(printf '%-17s %-8s #%s %8ss %7s KiB  pushed %s B  (cpu %s%% busy before)' \
    "$case" "$tool" "$n" "$secs" "$rss" "$size" "$busy")"
}

# untimed seed push for the warm cases; stops the benchmark if it fails
seed() {
  local tool=$1 form=$2 path=$3 ref=$4 repo=$5
  local logf=$rundir/logs/seed-${repo//\//_}.log
  if [[ $tool == skopeo ]]; then clear_skopeo_cache; fi
  if ! bash -c 'push "$@"' _ "$tool" "$form" "$path" "$ref" "$repo" seed >"$logf" 2>&1; then
    log "seed push of $repo by $tool failed:"
    tail -n 5 "$logf" >&2 || true
    return 1
  fi
}

# the page cache holds the source before the first run, so neither tool pays for the disk
warm_page_cache() { find "$1" -type f -exec cat {} + >/dev/null; }

form_field() { # FORMS_JSON FORM FIELD
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["forms"][sys.argv[2]][sys.argv[3]])' "$@"
}

# ---- the cases -----------------------------------------------------------------------------
cases_json=$rundir/cases.json
python3 - "$forms" "$big_forms" "$cases_json" "$quick" <<'PY'
import json, sys
forms = json.load(open(sys.argv[1]))
big = json.load(open(sys.argv[2])) if sys.argv[2] else None
f = forms["forms"]
cfg = forms["config_digest"]
mb = forms["uncompressed_bytes"] / 1e6
cases = [
    {"id": "cold-legacy", "form": "legacy", "time_target": 0.5, "size_target": 1.05,
     "description": f"cold push, legacy docker save ({mb:.0f} MB uncompressed)"},
    {"id": "cold-docker25", "form": "docker25", "time_target": 0.5,
     "description": "cold push, Docker >= 25 docker save (OCI layout inside, layers uncompressed)",
     "expect_manifest_digest": f["docker25"]["manifest_digest"]},
    {"id": "cold-oci", "form": "oci", "time_target": 0.8,
     "description": "cold push, OCI layout (gzip -6 layers)",
     "expect_manifest_digest": f["oci"]["manifest_digest"]},
    {"id": "cold-oci-archive", "form": "oci-archive", "time_target": 0.8,
     "description": "cold push, oci-archive",
     "expect_manifest_digest": f["oci-archive"]["manifest_digest"]},
    {"id": "cold-legacy-gz", "form": "legacy-gz", "time_target": 0.5,
     "description": "cold push, gzip'd legacy docker save (skopeo: gunzip to a file, then copy)"},
    {"id": "warm-legacy", "form": "legacy", "time_target": 0.1,
     "description": "warm re-push, legacy docker save: all blobs in the repository, new tag, no local cache"},
    # No time target: with an OCI source skopeo knows every digest and only HEADs each blob, so
    # both tools are at the floor (process start and a few requests). The 0.1x target is for the
    # re-push where skopeo has to recompress every layer to learn its digest (warm-legacy).
    {"id": "warm-oci", "form": "oci", "time_target": None,
     "description": "warm re-push, OCI layout: all blobs in the repository, new tag, no local cache",
     "expect_manifest_digest": f["oci"]["manifest_digest"]},
]
for c in cases:
    c["expect_config_digest"] = cfg
    c["source"] = sys.argv[1]
if big:
    cases.append({"id": "big-legacy", "form": "legacy", "time_target": None,
                  "description": f"cold push, {big['uncompressed_bytes'] / 2**30:.2f} GiB single-layer legacy docker save (memory bound)",
                  "expect_config_digest": big["config_digest"], "source": sys.argv[2]})
json.dump(cases, open(sys.argv[3], "w"), indent=2)
PY
# keep only the selected cases in the report
python3 - "$cases_json" "$only" <<'PY'
import json, sys
cases = json.load(open(sys.argv[1]))
only = sys.argv[2].split()
if only:
    cases = [c for c in cases if c["id"] in only]
json.dump(cases, open(sys.argv[1], "w"), indent=2)
PY

log "ecr-push: $(cat "$rundir/machine.json" | python3 -c 'import json,sys; m=json.load(sys.stdin); print(m["ecr_push"], m["ecr_push_commit"])')"
log "$runs runs per tool and case, tools alternating (ABBA), idle = CPU < ${idle_busy}% busy (wait <= ${idle_max}s)"

tools_order() { # run number -> order of the tools (alternate which goes first)
  if (($1 % 2)); then echo "ecr-push skopeo"; else echo "skopeo ecr-push"; fi
}

for form in legacy docker25 oci oci-archive legacy-gz; do
  case=cold-$form
  want "$case" || continue
  path=$images/$(form_field "$forms" "$form" path)
  ref=$(form_field "$forms" "$form" ref)
  log "== $case ($path)"
  warm_page_cache "$path"
  for n in $(seq "$runs"); do
    for tool in $(tools_order "$n"); do
      short=$([[ $tool == ecr-push ]] && echo ecr || echo skopeo)
      timed "$case" "$tool" "$n" "$form" "$path" "$ref" "bench/$case-$n-$short" t
    done
  done
done

for form in legacy oci; do
  case=warm-$form
  want "$case" || continue
  path=$images/$(form_field "$forms" "$form" path)
  ref=$(form_field "$forms" "$form" ref)
  log "== $case: seeding each tool's repository once (untimed)"
  warm_page_cache "$path"
  seed ecr-push "$form" "$path" "$ref" "bench/$case-ecr"
  seed skopeo "$form" "$path" "$ref" "bench/$case-skopeo"
  for n in $(seq "$runs"); do
    for tool in $(tools_order "$n"); do
      short=$([[ $tool == ecr-push ]] && echo ecr || echo skopeo)
      timed "$case" "$tool" "$n" "$form" "$path" "$ref" "bench/$case-$short" "t$n"
    done
  done
done

if [[ -n $big_forms ]]; then
  case=big-legacy
  bigdir=$(dirname "$big_forms")
  path=$bigdir/$(form_field "$big_forms" legacy path)
  ref=$(form_field "$big_forms" legacy ref)
  log "== $case ($path)"
  warm_page_cache "$path"
  for n in $(seq "$big_runs"); do
    for tool in $(tools_order "$n"); do
      short=$([[ $tool == ecr-push ]] && echo ecr || echo skopeo)
      timed "$case" "$tool" "$n" legacy "$path" "$ref" "bench/$case-$n-$short" t
    done
  done
fi

((not_idle == 0)) || log "$not_idle runs started while the CPU was still busy (waited ${idle_spent}s in all; see the spread below)"
cat >"$rundir/settings.json" <<JSON
{"set": "$set_name", "runs": $runs, "big_runs": $big_runs, "idle_busy_pct": $idle_busy,
 "idle_max_s": $idle_max, "idle_budget_s": $idle_budget, "idle_waited_s": $idle_spent,
 "runs_started_busy": $not_idle, "registry_storage": "$reg_tmp",
 "load_average_at_end": "$(cut -d' ' -f1-3 /proc/loadavg)"}
JSON
python3 bench/report.py report "$runs_tsv" "$cases_json" "$rundir/machine.json" "$out_json" \
  "$rundir/settings.json"
cp "$out_json" "$rundir/results.json"
echo
echo "JSON: $out_json; logs and per-run data: $rundir (runs.tsv)"
