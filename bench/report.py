#!/usr/bin/env python3
"""Helpers of bench/compare.sh (Python 3.11 standard library only).

    report.py wait-idle MAX_SECONDS BUSY_PERCENT
        Sample /proc/stat once a second until the CPU (all cores together) was busy less than
        BUSY_PERCENT during the last second, or MAX_SECONDS have passed. Prints
        "<busy percent of the last second> <seconds waited> <1 if idle else 0>".
    report.py manifest-info < manifest-bytes
        Prints "<sha256 digest of the bytes> <config digest> <config+layer bytes> <layers>".
    report.py machine BINARY [BUILT_HERE 1|0]
        Prints the machine description (JSON) used in the report.
    report.py report RUNS_TSV CASES_JSON MACHINE_JSON OUT_JSON [SETTINGS_JSON]
        Prints the table of medians, ratios, peak RSS, pushed sizes and targets, and writes the
        same as JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time

RSS_TARGET_MIB = 64


def cpu_times() -> tuple[int, int]:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]), idle


def wait_idle(max_seconds: float, busy_percent: float) -> None:
    start = time.monotonic()
    busy = 100.0
    total0, idle0 = cpu_times()
    while True:
        time.sleep(1.0)
        total1, idle1 = cpu_times()
        dt = total1 - total0
        busy = 100.0 * (dt - (idle1 - idle0)) / dt if dt > 0 else 0.0
        total0, idle0 = total1, idle1
        waited = time.monotonic() - start
        if busy < busy_percent:
            print(f"{busy:.1f} {waited:.0f} 1")
            return
        if waited >= max_seconds:
            print(f"{busy:.1f} {waited:.0f} 0")
            return


def manifest_info() -> None:
    raw = sys.stdin.buffer.read()
    m = json.loads(raw)
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    if "manifests" in m:  # an index: not expected here, report it as such
        print(f"{digest} index 0 0")
        return
    size = m["config"]["size"] + sum(l["size"] for l in m["layers"])
    print(f"{digest} {m['config']['digest']} {size} {len(m['layers'])}")


def first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        text = (out.stdout or out.stderr).strip()
        return text.splitlines()[0] if text else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def machine(binary: str, built_here: bool) -> None:
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    flags = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = line
                break
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    os_name = "?"
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    os_name = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    info = {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "sha_ni": " sha_ni" in flags,
        "ram_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": os_name,
        "ecr_push": first_line([binary, "--version"]),
        "ecr_push_binary": binary,
        # a binary handed in (ECR_PUSH_BIN) may come from any commit: say so, not the tree's
        "ecr_push_commit": (first_line(["git", "-C", repo, "describe", "--always", "--dirty"])
                            if built_here else "ECR_PUSH_BIN, commit unknown"),
        "skopeo": first_line(["skopeo", "--version"]),
        "registry": first_line(["docker-registry", "--version"]),
        "gzip": first_line(["gzip", "--version"]),
        "tar": first_line(["tar", "--version"]),
        "python": platform.python_version(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(json.dumps(info, indent=2))


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def report(runs_tsv: str, cases_json: str, machine_json: str, out_json: str,
           settings_json: str | None = None) -> None:
    settings = {}
    if settings_json:
        with open(settings_json) as f:
            settings = json.load(f)
    with open(cases_json) as f:
        cases = json.load(f)
    with open(machine_json) as f:
        mach = json.load(f)
    rows = []
    with open(runs_tsv) as f:
        header = f.readline().rstrip("\n").split("\t")
        for line in f:
            if line.strip():
                rows.append(dict(zip(header, line.rstrip("\n").split("\t"))))

    results = []
    notes: list[str] = []
    for case in cases:
        cid = case["id"]
        res = {"case": cid, "description": case["description"], "form": case["form"],
               "tools": {}}
        for tool in ("ecr-push", "skopeo"):
            runs = [r for r in rows if r["case"] == cid and r["tool"] == tool]
            ok = [r for r in runs if r["rc"] == "0"]
            secs = [float(r["seconds"]) for r in ok]
            rss = [int(r["rss_kib"]) for r in runs if r["rss_kib"].isdigit()]
            sizes = sorted({int(r["pushed_bytes"]) for r in ok if r["pushed_bytes"].isdigit()})
            digests = sorted({r["manifest_digest"] for r in ok if r["manifest_digest"] != "-"})
            res["tools"][tool] = {
                "runs": len(runs),
                "failed": len(runs) - len(ok),
                "seconds": secs,
                "median_s": statistics.median(secs) if secs else None,
                "min_s": min(secs) if secs else None,
                "max_s": max(secs) if secs else None,
                "spread": ((max(secs) - min(secs)) / statistics.median(secs)) if secs else None,
                "peak_rss_mib": round(max(rss) / 1024, 1) if rss else None,
                "pushed_bytes": sizes[-1] if sizes else None,
                "manifest_digests": digests,
                "not_idle_runs": sum(1 for r in runs if r["idle"] != "1"),
                "cpu_busy_before_pct": [float(r["busy_pct"]) for r in runs],
            }
            for r in runs:
                if r["rc"] != "0":
                    notes.append(f"{cid}: {tool} run {r['run']} exited {r['rc']} (log {r['log']})")
            if len(sizes) > 1:
                notes.append(f"{cid}: {tool} pushed different sizes across runs: {sizes}")
            if tool == "ecr-push" and len(digests) > 1:
                notes.append(f"{cid}: ecr-push pushed {len(digests)} different manifest digests "
                             f"for the same input (not deterministic): {digests}")
            exp = case.get("expect_manifest_digest")
            if tool == "ecr-push" and exp and digests and digests != [exp]:
                notes.append(f"{cid}: ecr-push manifest digest {digests} differs from the local "
                             f"one {exp} (OCI input must be pushed byte for byte)")
            expc = case.get("expect_config_digest")
            cfgs = sorted({r["config_digest"] for r in ok if r["config_digest"] != "-"})
            if expc and cfgs and cfgs != [expc]:
                notes.append(f"{cid}: {tool} pushed config {cfgs}, expected {expc}")
        e, s = res["tools"]["ecr-push"], res["tools"]["skopeo"]
        ratio = (e["median_s"] / s["median_s"]) if e["median_s"] and s["median_s"] else None
        size_ratio = (e["pushed_bytes"] / s["pushed_bytes"]
                      if e["pushed_bytes"] and s["pushed_bytes"] else None)
        res["time_ratio"] = ratio
        # the same ratio per pair of adjacent runs (run n of each tool), whose median resists a
        # load that drifts during the case better than the ratio of the two medians
        by_run = {tool: {r["run"]: float(r["seconds"]) for r in rows
                         if r["case"] == cid and r["tool"] == tool and r["rc"] == "0"}
                  for tool in ("ecr-push", "skopeo")}
        pairs = [by_run["ecr-push"][n] / by_run["skopeo"][n] for n in by_run["ecr-push"]
                 if n in by_run["skopeo"] and by_run["skopeo"][n] > 0]
        res["paired_ratios"] = pairs
        res["paired_ratio_median"] = statistics.median(pairs) if pairs else None
        res["size_ratio"] = size_ratio
        checks = {}
        if case.get("time_target") is not None:
            checks["time"] = ratio is not None and ratio <= case["time_target"]
        if case.get("size_target") is not None:
            checks["size"] = size_ratio is not None and size_ratio <= case["size_target"]
        checks["rss"] = e["peak_rss_mib"] is not None and e["peak_rss_mib"] <= RSS_TARGET_MIB
        res["targets"] = {"time_ratio": case.get("time_target"),
                          "size_ratio": case.get("size_target"), "rss_mib": RSS_TARGET_MIB}
        res["checks"] = checks
        if e["failed"] or s["failed"] or not e["seconds"] or not s["seconds"]:
            res["result"] = "ERROR"
        else:
            res["result"] = "PASS" if all(checks.values()) else "FAIL"
        results.append(res)

    # ---- the table ----------------------------------------------------------------------------
    def mark(ok: bool | None) -> str:
        return "" if ok is None else (" ok" if ok else " X")

    hdr = ["case", "ecr-push s", "skopeo s", "ratio", "target", "RSS ecr MiB", "RSS sko MiB",
           "pushed ecr MB", "pushed sko MB", "size ratio", "result"]
    table = []
    for r in results:
        e, s = r["tools"]["ecr-push"], r["tools"]["skopeo"]
        t = r["targets"]
        table.append([
            r["case"],
            "-" if e["median_s"] is None else f"{e['median_s']:.3f}",
            "-" if s["median_s"] is None else f"{s['median_s']:.3f}",
            fmt_ratio(r["time_ratio"]) + mark(r["checks"].get("time")),
            "-" if t["time_ratio"] is None else f"<={t['time_ratio']}",
            ("-" if e["peak_rss_mib"] is None else f"{e['peak_rss_mib']:.0f}")
            + mark(r["checks"].get("rss")),
            "-" if s["peak_rss_mib"] is None else f"{s['peak_rss_mib']:.0f}",
            "-" if e["pushed_bytes"] is None else f"{e['pushed_bytes'] / 1e6:.1f}",
            "-" if s["pushed_bytes"] is None else f"{s['pushed_bytes'] / 1e6:.1f}",
            fmt_ratio(r["size_ratio"]) + mark(r["checks"].get("size"))
            + ("" if t["size_ratio"] is None else f" (<={t['size_ratio']})"),
            r["result"],
        ])
    widths = [max(len(str(x)) for x in col) for col in zip(hdr, *table)]

    def line(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    out = [line(hdr), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(row) for row in table]
    print()
    print("Medians of the timed runs; ratio = ecr-push / skopeo (lower is better); RSS = peak over")
    print(f"runs (target <= {RSS_TARGET_MIB} MiB for ecr-push); pushed = config + layer bytes of "
          "the pushed manifest.")
    print("\n".join(out))

    print("\nSpread of the runs (seconds: min / median / max; spread = (max-min)/median):")
    for r in results:
        parts = []
        for tool in ("ecr-push", "skopeo"):
            t = r["tools"][tool]
            if t["seconds"]:
                parts.append(f"{tool} {t['min_s']:.3f}/{t['median_s']:.3f}/{t['max_s']:.3f} "
                             f"({100 * t['spread']:.0f}%, n={len(t['seconds'])}"
                             + (f", {t['not_idle_runs']} started on a busy CPU"
                                if t["not_idle_runs"] else "") + ")")
        if r["paired_ratios"]:
            parts.append("ratio per run pair " + " ".join(f"{x:.2f}" for x in r["paired_ratios"])
                         + f" (median {r['paired_ratio_median']:.2f})")
        print(f"  {r['case']}: " + "; ".join(parts))

    print("\nMachine: " + f"{mach['cpu_model']}, {mach['cores']} cores"
          + (" (SHA-NI)" if mach.get("sha_ni") else "") + f", {mach['ram_gib']} GiB RAM, "
          f"kernel {mach['kernel']}, {mach['os']}")
    print(f"Tools: {mach['ecr_push']} ({mach['ecr_push_commit']}), {mach['skopeo']}, "
          f"{mach['registry']}, {mach['gzip']}, {mach['tar']}")
    if notes:
        print("\nNotes:")
        for n in notes:
            print("  - " + n)
    if settings:
        print(f"Settings: {settings['set']} image, {settings['runs']} runs per tool and case; "
              f"idle = CPU < {settings['idle_busy_pct']}% busy; {settings['runs_started_busy']} "
              f"run(s) started on a busy CPU after {settings['idle_waited_s']} s of waiting in all; "
              f"load average at the end {settings['load_average_at_end']}")
    summary = {"machine": mach, "settings": settings, "results": results, "notes": notes,
               "table": out}
    with open(out_json, "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")


def main() -> None:
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "wait-idle":
        wait_idle(float(sys.argv[2]), float(sys.argv[3]))
    elif cmd == "manifest-info":
        manifest_info()
    elif cmd == "machine":
        machine(sys.argv[2], len(sys.argv) < 4 or sys.argv[3] == "1")
    elif cmd == "report":
        report(*sys.argv[2:7])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
