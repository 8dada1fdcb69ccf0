#!/usr/bin/env python3
"""Make the benchmark images from real files of this machine, in every input form ecr-push reads.

    make-image.py --set full|quick|big --work DIR [--verify]

prints the path of a `forms.json` describing the result. Python 3.11 standard library only;
the layer tars are made by GNU tar, gzip by gzip(1), the checks by skopeo.

Why real files: the compression ratio decides how much work a pusher does (a legacy docker save
is gzipped on the way out) and how many bytes it sends; random bytes do not compress at all and
would make a gzip-bound push look upload-bound.

Sets:
  full   ~600 MB uncompressed in 6 layers (libraries, binaries, Python, docs, locales, app)
  quick  the same shape, ~100 MB (a smoke test)
  big    one ~2 GiB layer (the memory bound), legacy docker save only

Forms made for full/quick (the names are the keys of forms.json):
  legacy        docker save as before Docker 25: <id>/layer.tar (uncompressed), <config>.json,
                repositories, manifest.json (written last)
  docker25      docker save of Docker >= 25: an OCI layout with UNCOMPRESSED layer blobs, plus
                manifest.json pointing into blobs/, index.json annotated with
                io.containerd.image.name and org.opencontainers.image.ref.name
  oci           OCI image layout directory, gzip -6 layers, ref name "latest"
  oci-archive   that layout as a tar
  legacy-gz     gzip -6 of the legacy tar

Everything is deterministic (tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner,
gzip -n, JSON with sorted keys), and cached under WORK/images/<set>-<key>/, where the key hashes
this script, the layer specification and (path, type, size, mtime, link target) of every file
taken. A changed input therefore makes a new image; an unchanged one is reused. forms.json is
written last and marks a complete cache entry.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

MiB = 1024 * 1024

# (layer name, [(root directory, cap in bytes or None)]) - roots are walked in name order and
# files taken while they fit under the root's cap (a file that does not fit is left out).
SETS: dict[str, list[tuple[str, list[tuple[str, int | None]]]]] = {
    "full": [
        ("libs", [("/usr/lib/x86_64-linux-gnu", 180 * MiB)]),
        ("bin", [("/usr/bin", 100 * MiB)]),
        ("python", [("/usr/lib/python3.11", None)]),
        ("docs", [("/usr/share/doc", 100 * MiB), ("/usr/share/man", None)]),
        ("locale", [("/usr/share/locale", 80 * MiB)]),
        ("app", [("/etc", None), ("/usr/lib/python3/dist-packages", 20 * MiB)]),
    ],
    "quick": [
        ("libs", [("/usr/lib/x86_64-linux-gnu", 30 * MiB)]),
        ("bin", [("/usr/bin", 18 * MiB)]),
        ("python", [("/usr/lib/python3.11", 12 * MiB)]),
        ("docs", [("/usr/share/doc", 15 * MiB), ("/usr/share/man", 5 * MiB)]),
        ("locale", [("/usr/share/locale", 10 * MiB)]),
        ("app", [("/etc", None), ("/usr/lib/python3/dist-packages", 3 * MiB)]),
    ],
    # One layer of 2 GiB: a whole /usr-like tree (libraries, a JDK, headers, binaries, share).
    "big": [
        (
            "usr",
            [
                ("/usr/bin", None),
                ("/usr/include", None),
                ("/usr/lib/x86_64-linux-gnu", None),
                ("/usr/share", None),
                ("/usr/lib/jvm", None),
                ("/usr/lib/gcc", None),
                ("/usr/lib/python3.11", None),
                ("/usr/local", None),
                ("/usr/libexec", None),
            ],
        )
    ],
}
BIG_TOTAL = 2048 * MiB  # the "big" set stops at this many bytes of file content

TAR_FLAGS = [
    "--sort=name", "--mtime=@0", "--owner=0", "--group=0", "--numeric-owner", "--format=gnu",
]
IMAGE_NAME = "bench/image"
REF_NAME = "latest"

MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MT_OCI_LAYER_GZ = "application/vnd.oci.image.layer.v1.tar+gzip"


def log(msg: str) -> None:
    print(f"make-image: {msg}", file=sys.stderr, flush=True)


def tar_cost(size: int) -> int:
    """Bytes a regular file takes in a tar: a header plus the body padded to 512."""
    return 512 + (size + 511) // 512 * 512


def walk(root: str, cap: int | None, budget: int | None, seen: set):
    """Yield (path, lstat, link target) in depth-first name order, within the caps.

    A file whose inode was already taken (mesa's drivers are one file under many names) costs
    only a tar header: tar stores it as a hard link."""
    taken = 0
    stack = [root]
    while stack:
        path = stack.pop()
        try:
            st = os.lstat(path)
        except OSError:
            continue
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            yield path, st, None
            try:
                children = sorted(os.listdir(path), reverse=True)
            except OSError:
                continue
            stack.extend(os.path.join(path, c) for c in children)
        elif stat.S_ISLNK(mode):
            yield path, st, os.readlink(path)
        elif stat.S_ISREG(mode):
            if not os.access(path, os.R_OK):
                continue
            first = (st.st_dev, st.st_ino) not in seen
            cost = tar_cost(st.st_size) if first else 512
            if (cap is not None and taken + cost > cap) or (
                budget is not None and taken + cost > budget
            ):
                continue  # does not fit: leave it out, smaller files may still fit
            taken += cost
            seen.add((st.st_dev, st.st_ino))
            yield path, st, None
        # sockets, fifos, devices: not image content


def select(set_name: str) -> list[dict]:
    """The entries of every layer of a set, as path lists (relative to /) in tar order."""
    layers = []
    remaining = BIG_TOTAL if set_name == "big" else None
    for name, roots in SETS[set_name]:
        entries: dict[str, tuple] = {}
        seen: set = set()  # inodes in this layer
        inodes = 0
        for root, cap in roots:
            if not os.path.isdir(root):
                log(f"skipping missing {root}")
                continue
            # parents of the root, so the layer has every directory it needs
            parts = Path(root).parts[1:]
            for i in range(1, len(parts)):
                parent = "/" + "/".join(parts[:i])
                entries.setdefault(parent, ("d", 0, 0, ""))
            for path, st, target in walk(root, cap, remaining, seen):
                if stat.S_ISDIR(st.st_mode):
                    entries[path] = ("d", 0, 0, "")
                elif target is not None:
                    entries[path] = ("l", 0, st.st_mtime_ns, target)
                else:
                    # the inode number says which names tar stores as hard links
                    entries[path] = ("f", st.st_size, st.st_mtime_ns, "", st.st_ino)
                    cost = tar_cost(st.st_size) if len(seen) > inodes else 512
                    inodes = len(seen)
                    if remaining is not None:
                        remaining -= cost
        # depth-first name order, as tar --sort=name would recurse
        order = sorted(entries, key=lambda p: p.encode("utf-8", "surrogateescape").split(b"/"))
        content = sum(v[1] for v in {(v[4] if v[0] == "f" else p): v
                                     for p, v in entries.items()}.values())
        layers.append({"name": name, "roots": [r for r, _ in roots], "paths": order,
                       "stats": [entries[p] for p in order], "content_bytes": content})
    return layers


def cache_key(set_name: str, layers: list[dict]) -> str:
    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes())
    h.update(set_name.encode())
    for layer in layers:
        h.update(b"\0layer\0" + layer["name"].encode())
        for path, st in zip(layer["paths"], layer["stats"]):
            h.update(path.encode("utf-8", "surrogateescape") + b"\0" + repr(st).encode() + b"\n")
    return h.hexdigest()[:16]


def sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def run(cmd: list[str], ok=(0,), **kw) -> None:
    r = subprocess.run(cmd, **kw)
    if r.returncode not in ok:
        sys.exit(f"make-image: {cmd[0]} exited {r.returncode}: {' '.join(cmd[:6])} ...")


def make_layer_tar(layer: dict, out: Path) -> None:
    """GNU tar of exactly the selected entries, deterministic."""
    lst = out.with_suffix(".list")
    with open(lst, "wb") as f:
        for p in layer["paths"]:
            f.write(p[1:].encode("utf-8", "surrogateescape") + b"\0")
    # exit 1 = "some files differ" (a file changed while read on this shared machine): the tar
    # is still well-formed and its digest is computed from the tar itself, so it is usable.
    run(["tar", "--create", "--file", str(out), *TAR_FLAGS, "--no-recursion", "--null",
         "--ignore-failed-read", "-C", "/", "-T", str(lst)], ok=(0, 1))
    lst.unlink()


def gzip_files(pairs: list[tuple[Path, Path]]) -> None:
    """gzip -6 -n each src into dst, two at a time (this machine has 2 cores)."""
    pending = list(pairs)
    running: list[tuple[subprocess.Popen, object]] = []
    while pending or running:
        while pending and len(running) < 2:
            src, dst = pending.pop(0)
            f = open(dst, "wb")
            running.append((subprocess.Popen(["gzip", "-6", "-n", "-c", str(src)], stdout=f), f))
        proc, f = running.pop(0)
        if proc.wait() != 0:
            sys.exit("make-image: gzip failed")
        f.close()


def jdump(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def write_blob(blobs: Path, data: bytes) -> tuple[str, int]:
    d = hashlib.sha256(data).hexdigest()
    (blobs / d).write_bytes(data)
    return d, len(data)


def tar_dir(src: Path, out: Path, members: list[str]) -> None:
    """Deterministic tar of src's members, in the given order (each recursed in name order)."""
    run(["tar", "--create", "--file", str(out), *TAR_FLAGS, "-C", str(src), *members])


def build(set_name: str, layers: list[dict], dest: Path) -> dict:
    tmp = dest / "tmp"
    tmp.mkdir(parents=True)
    diff_ids, raw = [], []
    for i, layer in enumerate(layers):
        out = tmp / f"layer{i}.tar"
        log(f"layer {i} ({layer['name']}, {layer['content_bytes'] / MiB:.0f} MiB of files "
            f"from {', '.join(layer['roots'])})")
        make_layer_tar(layer, out)
        digest, size = sha256_file(out)
        diff_ids.append("sha256:" + digest)
        raw.append((out, digest, size))

    history = [{"created": "1970-01-01T00:00:00Z",
                "created_by": f"bench layer {l['name']}: {' '.join(l['roots'])}"} for l in layers]
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "WorkingDir": "/",
            "Labels": {"org.opencontainers.image.title": f"ecr-push bench image ({set_name})"},
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    }
    config_bytes = jdump(config)
    config_hex = hashlib.sha256(config_bytes).hexdigest()
    forms: dict = {
        "set": set_name,
        "layers": [{"name": l["name"], "roots": l["roots"], "diff_id": d,
                    "size": s} for l, d, (_, _, s) in zip(layers, diff_ids, raw)],
        "uncompressed_bytes": sum(s for _, _, s in raw),
        "config_digest": "sha256:" + config_hex,
        "forms": {},
    }

    # --- legacy docker save -----------------------------------------------------------------
    legacy = tmp / "legacy"
    legacy.mkdir()
    parent = ""
    layer_ids = []
    for i, (out, digest, _) in enumerate(raw):
        # v1 ids are a chain over the diff_ids, as docker derives them
        lid = hashlib.sha256(f"{parent} sha256:{digest}".encode()).hexdigest()
        layer_ids.append(lid)
        d = legacy / lid
        d.mkdir()
        os.link(out, d / "layer.tar")
        (d / "VERSION").write_text("1.0")
        v1 = {"id": lid, "created": "1970-01-01T00:00:00Z",
              "container_config": {"Cmd": None}, "os": "linux"}
        if parent:
            v1["parent"] = parent
        (d / "json").write_bytes(jdump(v1))
        parent = lid
    (legacy / f"{config_hex}.json").write_bytes(config_bytes)
    (legacy / "repositories").write_bytes(jdump({IMAGE_NAME: {REF_NAME: layer_ids[-1]}}))
    (legacy / "manifest.json").write_bytes(jdump([{
        "Config": f"{config_hex}.json",
        "RepoTags": [f"{IMAGE_NAME}:{REF_NAME}"],
        "Layers": [f"{lid}/layer.tar" for lid in layer_ids],
    }]))
    legacy_tar = dest / "legacy.docker-archive.tar"
    log("legacy docker save")
    # manifest.json last, as the readers must cope with (it is found only at the end)
    tar_dir(legacy, legacy_tar, [*layer_ids, f"{config_hex}.json", "repositories",
                                 "manifest.json"])
    forms["forms"]["legacy"] = {"path": legacy_tar.name, "ref": f"docker-archive:{legacy_tar}",
                                "bytes": legacy_tar.stat().st_size,
                                "sha256": sha256_file(legacy_tar)[0]}
    shutil.rmtree(legacy)

    if set_name == "big":
        for out, _, _ in raw:
            out.unlink()
        shutil.rmtree(tmp)
        return forms

    # --- Docker >= 25 docker save: OCI layout with uncompressed layers + manifest.json ------
    d25 = tmp / "docker25"
    blobs = d25 / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for out, digest, _ in raw:
        os.link(out, blobs / digest)
    (blobs / config_hex).write_bytes(config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_OCI_MANIFEST,
        "config": {"mediaType": MT_OCI_CONFIG, "digest": "sha256:" + config_hex,
                   "size": len(config_bytes)},
        "layers": [{"mediaType": MT_OCI_LAYER, "digest": "sha256:" + d, "size": s}
                   for _, d, s in raw],
    }
    m_hex, m_size = write_blob(blobs, jdump(manifest))
    (d25 / "index.json").write_bytes(jdump({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": MT_OCI_MANIFEST, "digest": "sha256:" + m_hex, "size": m_size,
            "annotations": {"io.containerd.image.name": f"docker.io/{IMAGE_NAME}:{REF_NAME}",
                            "org.opencontainers.image.ref.name": REF_NAME},
        }],
    }))
    (d25 / "oci-layout").write_bytes(jdump({"imageLayoutVersion": "1.0.0"}))
    (d25 / "manifest.json").write_bytes(jdump([{
        "Config": f"blobs/sha256/{config_hex}",
        "RepoTags": [f"{IMAGE_NAME}:{REF_NAME}"],
        "Layers": [f"blobs/sha256/{d}" for _, d, _ in raw],
    }]))
    (d25 / "repositories").write_bytes(jdump({IMAGE_NAME: {REF_NAME: diff_ids[-1][7:]}}))
    d25_tar = dest / "docker25.docker-archive.tar"
    log("Docker >= 25 docker save")
    # Docker writes the directory in name order: blobs/, index.json, manifest.json, ...
    tar_dir(d25, d25_tar, ["blobs", "index.json", "manifest.json", "oci-layout", "repositories"])
    forms["forms"]["docker25"] = {"path": d25_tar.name, "ref": f"docker-archive:{d25_tar}",
                                  "bytes": d25_tar.stat().st_size,
                                  "manifest_digest": "sha256:" + m_hex}
    shutil.rmtree(d25)

    # --- OCI layout (gzip -6 layers) and oci-archive ----------------------------------------
    oci = dest / "oci-layout"
    oblobs = oci / "blobs" / "sha256"
    oblobs.mkdir(parents=True)
    log("gzip -6 of each layer for the OCI layout")
    gz = [(out, tmp / f"{out.name}.gz") for out, _, _ in raw]
    gzip_files(gz)
    gz_layers = []
    for _, g in gz:
        d, s = sha256_file(g)
        os.replace(g, oblobs / d)
        gz_layers.append({"mediaType": MT_OCI_LAYER_GZ, "digest": "sha256:" + d, "size": s})
    (oblobs / config_hex).write_bytes(config_bytes)
    omanifest = {
        "schemaVersion": 2,
        "mediaType": MT_OCI_MANIFEST,
        "config": {"mediaType": MT_OCI_CONFIG, "digest": "sha256:" + config_hex,
                   "size": len(config_bytes)},
        "layers": gz_layers,
    }
    om_hex, om_size = write_blob(oblobs, jdump(omanifest))
    (oci / "index.json").write_bytes(jdump({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": MT_OCI_MANIFEST, "digest": "sha256:" + om_hex,
                       "size": om_size,
                       "annotations": {"org.opencontainers.image.ref.name": REF_NAME}}],
    }))
    (oci / "oci-layout").write_bytes(jdump({"imageLayoutVersion": "1.0.0"}))
    gz_total = len(config_bytes) + sum(l["size"] for l in gz_layers)
    forms["forms"]["oci"] = {"path": oci.name, "ref": f"oci:{oci}:{REF_NAME}",
                             "bytes": gz_total + om_size, "manifest_digest": "sha256:" + om_hex}
    forms["gzip6_pushed_bytes"] = gz_total
    oa = dest / "oci.oci-archive.tar"
    log("oci-archive")
    tar_dir(oci, oa, ["blobs", "index.json", "oci-layout"])
    forms["forms"]["oci-archive"] = {"path": oa.name, "ref": f"oci-archive:{oa}",
                                     "bytes": oa.stat().st_size,
                                     "manifest_digest": "sha256:" + om_hex}

    # --- gzip'd legacy docker save ----------------------------------------------------------
    log("gzip -6 of the legacy docker save")
    lgz = dest / "legacy.docker-archive.tar.gz"
    gzip_files([(legacy_tar, lgz)])
    forms["forms"]["legacy-gz"] = {"path": lgz.name, "ref": f"docker-archive:{lgz}",
                                   "bytes": lgz.stat().st_size}

    for out, _, _ in raw:
        out.unlink()
    shutil.rmtree(tmp)
    return forms


def verify(forms: dict, dest: Path) -> None:
    """Ask an independent reader (skopeo) whether every form is the image we meant."""
    want = [l["diff_id"] for l in forms["layers"]]
    for name, form in forms["forms"].items():
        ref = form["ref"]
        if name == "legacy-gz":
            # skopeo 1.9 cannot read a gzip'd docker-archive; check it holds the legacy tar
            gz = subprocess.run(f"gzip -dc '{dest / form['path']}' | sha256sum", shell=True,
                                check=True, capture_output=True, text=True).stdout.split()[0]
            if gz != forms["forms"]["legacy"]["sha256"]:
                sys.exit("make-image: the gzip'd legacy tar does not hold the legacy tar")
            log("legacy-gz decompresses to the legacy docker save")
            continue
        cfg = json.loads(subprocess.run(["skopeo", "inspect", "--config", ref], check=True,
                                        capture_output=True).stdout)
        if cfg["rootfs"]["diff_ids"] != want:
            sys.exit(f"make-image: skopeo sees other diff_ids in {name} ({ref})")
        if "manifest_digest" in form and name != "docker25":
            raw = subprocess.run(["skopeo", "inspect", "--raw", ref], check=True,
                                 capture_output=True).stdout
            got = "sha256:" + hashlib.sha256(raw).hexdigest()
            if got != form["manifest_digest"]:
                sys.exit(f"make-image: skopeo reads manifest {got} from {ref}, "
                         f"expected {form['manifest_digest']}")
        log(f"skopeo reads {name}: {len(want)} layers, diff_ids match")
    (dest / "verified").write_text("skopeo inspect --raw / --config agreed\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--set", choices=sorted(SETS), required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--verify", action="store_true", help="check every form with skopeo once")
    args = ap.parse_args()

    layers = select(args.set)
    key = cache_key(args.set, layers)
    images = args.work.resolve() / "images"
    dest = images / f"{args.set}-{key}"
    fj = dest / "forms.json"
    if fj.exists():
        log(f"cached: {dest}")
    else:
        images.mkdir(parents=True, exist_ok=True)
        for old in images.glob(f"{args.set}-*"):
            log(f"removing stale {old.name}")
            shutil.rmtree(old)
        log(f"building {args.set} image in {dest} (key {key})")
        forms = build(args.set, layers, dest)
        forms["key"] = key
        fj.write_text(json.dumps(forms, indent=2) + "\n")
    if args.verify and not (dest / "verified").exists():
        verify(json.loads(fj.read_text()), dest)
    print(fj)


if __name__ == "__main__":
    main()
