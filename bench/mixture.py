"""Mixture: ``vlmdata.mix.build`` against the by-hand way (``json.load`` + a list comprehension
that keeps records whose image is in the index + writing the kept records out).

A LocalStorage is laid out as acquire and verify leave it: the annotation file
(``llava_instruct_150k.json``, records in the LLaVA conversation format from
``vlmdata.replicas.data.llava_record``) with its manifest record, and COCO's manifest record, file
index and ``broken.json`` report, written with the classes of ``vlmdata.manifest``. About 1%
of the referenced images are missing from the index, 0.5% are listed broken, 0.1% of the
records are malformed and 0.2% have no image.

Each build runs in a fresh process (``python -m bench.mixture --child ...``), so its peak RSS
(``VmHWM`` from /proc, else ``getrusage``'s ru_maxrss) is its own; the time is measured inside
the child around the build only (not the interpreter start-up or imports). Ours does more
than the peer: it validates every record, counts and lists every dropped record with its
reason, and writes a lock file with the inputs' hashes. The peer is measured in two variants:
``json.dump`` (the idiom, which runs Python's encoder in pure Python) and
``f.write(json.dumps(...))`` (the C encoder), so that ours is compared with the fast one too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path

from . import REPO_ROOT
from .common import Context, Contender, Row, fmt_count_rate, fmt_time, pair_rows, python, rotated, settle_disk

NAME = "mixture"
SOURCE, ARTIFACT = "llava_instruct_150k", "llava_instruct_150k.json"
IMAGES_SOURCE = "coco_train2017"
PEER_OUTPUT = "by-hand.json"
# llava_v1_5_mix665k.json holds 665K records in 1.05 GB: about 1.58 KB each. Padding every answer
# with this many characters of prose gives the synthetic records that size (2.5 answers on average).
ANSWER_CHARS = 450
_PROSE = " ".join(
    f"The {colour} {thing} sits {where} while {count} people look on, and the light falls {how}."
    for colour in ("red", "pale blue", "green", "dark", "yellow")
    for thing in ("bus", "cat", "kite", "plate of food", "street sign", "umbrella")
    for where in ("near the road", "on a table", "in the grass", "by the window")
    for count, how in (("two", "softly"), ("several", "from the left"), ("no", "across the scene"))
)


def _maxrss_mb() -> float:
    """Peak RSS of this process in MiB. Linux's VmHWM belongs to this process image alone;
    ru_maxrss would carry over the parent's peak from before fork+exec."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 1024 * 1024)


def setup(root: Path, records: int) -> dict:
    """Write the storage a mix reads; return what the by-hand peer needs to know."""
    from vlmdata.replicas.data import llava_record
    from vlmdata.catalog import load_catalog
    from vlmdata.manifest import ArtifactRecord, Manifest, Placement, index_key, now
    from vlmdata.storage import DATA_PREFIX, LocalStorage
    from vlmdata.verify import image_key, report_key

    storage = LocalStorage(root)
    catalog = load_catalog()
    annotation_artifact = catalog[SOURCE].artifact(ARTIFACT)
    annotation = annotation_artifact.annotation
    zip_artifact = next(a for a in catalog[IMAGES_SOURCE].artifacts if a.extract)

    n_images = max(1000, records * 6 // 10)
    names = [f"{i:012d}.jpg" for i in range(1, n_images + 1)]
    keys = [image_key(annotation, name) for name in names]
    missing = set(keys[::100])
    broken = {k: "does not decode: image file is truncated" for k in keys[50::200]}
    index = [[k, 10_000 + i % 5_000, zlib.crc32(k.encode())] for i, k in enumerate(keys) if k not in missing]

    target = f"{DATA_PREFIX}/{annotation_artifact.target}"
    path = root / target
    path.parent.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    with path.open("wb") as out:  # json.dumps(rows, indent=1), a record at a time (2 GB at the scale run)
        for j in range(records):
            if j % 500 == 499:
                row = llava_record(f"text-{j}", None, turns=1 + j % 3)
            else:
                row = llava_record(f"{j:09d}", names[(j * 7919) % n_images], turns=1 + j % 4)
            for turn in row["conversations"][1::2]:  # answers as long as mix665k's (1.58 KB per record in all)
                start = (j * 37) % (len(_PROSE) - ANSWER_CHARS)
                turn["value"] += " " + _PROSE[start:start + ANSWER_CHARS]
            if j % 1000 == 999:
                row["conversations"] = row["conversations"][:1]  # malformed: a question with no answer
            piece = (("[\n " if j == 0 else ",\n ") + json.dumps(row, indent=1).replace("\n", "\n ")).encode()
            out.write(piece)
            digest.update(piece)
            size += len(piece)
        tail = b"\n]" if records else b"[]"
        out.write(tail)
        digest.update(tail)
        size += len(tail)

    Manifest(storage, SOURCE).save_artifact(ArtifactRecord(
        name=ARTIFACT, url="http://127.0.0.1/llava_instruct_150k.json", size=size, sha256=digest.hexdigest(),
        revision="b" * 40, fetched_at=now(), placement=Placement(target=target, bytes=size), complete=True,
    ))
    Manifest(storage, IMAGES_SOURCE).save_artifact(ArtifactRecord(
        name=zip_artifact.name, url="http://127.0.0.1/train2017.zip", size=1, sha256="0" * 64, fetched_at=now(),
        placement=Placement(folder=f"{DATA_PREFIX}/{zip_artifact.extract.into}", images=True, members=len(index), bytes=sum(r[1] for r in index)),
        complete=True,
    ))
    storage.write_json(index_key(IMAGES_SOURCE, zip_artifact.name), index)
    storage.write_json(report_key(IMAGES_SOURCE, "broken.json"), broken)
    return {
        "annotation": target,
        "index": index_key(IMAGES_SOURCE, zip_artifact.name),
        "broken": report_key(IMAGES_SOURCE, "broken.json"),
        "prefix": image_key(annotation, "x").removesuffix("x"),
        "bytes": size,
        "data_path": annotation_artifact.target,
        "images": n_images,
    }


# ------------------------------------------------------------------------------- children


def _child_ours(root: Path, fmt: str) -> dict:
    from vlmdata.catalog import load_catalog
    from vlmdata.mix import Component, Recipe, build
    from vlmdata.storage import LocalStorage

    catalog = load_catalog()
    recipe = Recipe(id="bench_mix", title="bench", components=[Component(source=SOURCE, artifact=ARTIFACT)])
    storage = LocalStorage(root)
    before = _maxrss_mb()
    start = time.perf_counter()
    lock = build(recipe, storage, catalog, fmt=fmt, force=True)  # every round builds (the rerun comparison times the skip)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "rss_before_mb": before, "rss_peak_mb": _maxrss_mb(), "kept": lock.output.records, "dropped": len(lock.dropped)}


def _child_peer(root: Path, spec: dict, how: str) -> dict:
    """By hand: load the file, keep records whose image is indexed and not broken, write them
    out: ``json.load`` then ``json.dump`` (the idiom; Python's encoder runs in pure Python when
    it streams to a file) or ``f.write(json.dumps(...))`` (C encoder, one big string), or
    orjson's ``loads`` and ``dumps`` (the fastest by-hand way)."""
    import orjson

    loads = orjson.loads if how == "orjson" else json.loads
    before = _maxrss_mb()
    start = time.perf_counter()
    with open(root / spec["annotation"], "rb") as f:
        rows = loads(f.read()) if how == "orjson" else json.load(f)
    with open(root / spec["index"], "rb") as f:
        present = {path for path, _size, _crc in loads(f.read())}
    with open(root / spec["broken"], "rb") as f:
        broken = loads(f.read())
    prefix = spec["prefix"]
    kept = [r for r in rows if "image" not in r or ((k := prefix + r["image"]) in present and k not in broken)]
    with open(root / PEER_OUTPUT, "wb" if how == "orjson" else "w") as f:
        if how == "dump":
            json.dump(kept, f)
        elif how == "dumps":
            f.write(json.dumps(kept))
        else:
            f.write(orjson.dumps(kept))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "rss_before_mb": before, "rss_peak_mb": _maxrss_mb(), "kept": len(kept), "dropped": len(rows) - len(kept)}


def _child_needed(root: Path, spec: dict, how: str) -> dict:
    """Which images does the file reference: ours is what ``needed_by`` planning runs
    (``vlmdata.fetch.sa1b.needed_images``), the peer a set comprehension over ``json.load``
    (or ``orjson.loads``)."""
    before = _maxrss_mb()
    start = time.perf_counter()
    if how == "ours":
        from vlmdata.catalog import load_catalog
        from vlmdata.fetch.sa1b import needed_images
        from vlmdata.storage import LocalStorage

        catalog = load_catalog()
        start = time.perf_counter()
        found = len(needed_images(LocalStorage(root), catalog, [spec["data_path"]]))
    else:
        import orjson

        with open(root / spec["annotation"], "rb") as f:
            rows = orjson.loads(f.read()) if how == "orjson" else json.load(f)
        found = len({r["image"] for r in rows if "image" in r and r["image"].startswith("sam/images/")})
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "rss_before_mb": before, "rss_peak_mb": _maxrss_mb(), "found": found}


CHILDREN = {
    "ours-json": lambda root, spec: _child_ours(root, "json"),
    "ours-jsonl": lambda root, spec: _child_ours(root, "jsonl"),
    **{f"peer-{how}": (lambda how: lambda root, spec: _child_peer(root, spec, how))(how) for how in ("dump", "dumps", "orjson")},
    **{f"needed-{how}": (lambda how: lambda root, spec: _child_needed(root, spec, how))(how) for how in ("ours", "json", "orjson")},
}


def _child_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.mixture")
    parser.add_argument("--child", choices=sorted(CHILDREN), required=True)
    parser.add_argument("root")
    parser.add_argument("--spec", default="{}")
    args = parser.parse_args(argv)
    print(json.dumps(CHILDREN[args.child](Path(args.root), json.loads(args.spec))))


def _in_child(kind: str, root: Path, spec: dict) -> dict:
    out = subprocess.run([python(), "-m", "bench.mixture", "--child", kind, str(root), "--spec", json.dumps(spec)], cwd=REPO_ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"mixture child {kind} failed: {out.stderr.strip()[-800:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------- comparison


def _race(ctx: Context, root: Path, spec: dict, contenders: dict[str, Contender]) -> dict[str, list[dict]]:
    """Every contender once per round in a fresh process, the order rotating; every run's result."""
    details: dict[str, list[dict]] = {k: [] for k in contenders}
    for number in range(1, ctx.rounds + 1):
        for kind in rotated(list(contenders), number):
            c = contenders[kind]
            settle_disk()  # the previous build's output is not written back on this one's time
            result = _in_child(kind, root, spec)
            details[kind].append(result)
            c.times.append(result["seconds"])
            c.result = result
            ctx.log(f"  round {number}/{ctx.rounds} {c.name}: {result['seconds']:.3f} s, peak RSS {result['rss_peak_mb']:.0f} MiB")
    return details


def run(ctx: Context) -> list[Row]:
    records = ctx.mixture_records or (50_000 if ctx.quick else 200_000)
    root = ctx.tmp / "root"
    ctx.log(f"  writing a {records:,}-record annotation, its manifest and a COCO index")
    spec = setup(root, records)
    input_mib = spec["bytes"] / 2**20
    ctx.log(f"  annotation: {spec['bytes'] / 1e6:.0f} MB, {spec['images']:,} images in the index")

    contenders = {
        "ours-json": Contender("vlmdata mix.build", None),
        "peer-dump": Contender("json.load + list comprehension + json.dump", None),
        "peer-dumps": Contender("json.load + list comprehension + write(json.dumps)", None),
        "peer-orjson": Contender("orjson.loads + list comprehension + orjson.dumps", None),
        "needed-ours": Contender("vlmdata needed_images (needed_by planning)", None),
        "needed-json": Contender("json.load + set comprehension", None),
        "needed-orjson": Contender("orjson.loads + set comprehension", None),
    }
    details = _race(ctx, root, spec, contenders)
    kind_of = {c.name: k for k, c in contenders.items()}

    def cell(c: Contender) -> str:
        runs = details[kind_of[c.name]]
        peak = max(r["rss_peak_mb"] for r in runs)
        grown = statistics.median(r["rss_peak_mb"] - r["rss_before_mb"] for r in runs)
        return f"{fmt_time(c.time)} ({fmt_count_rate(records, c.time, 'rec')}), peak RSS {peak:.0f} MiB = {peak / input_mib:.2f}x the input (+{grown:.0f})"

    notes = {
        "peer-dump": "the idiom; json.dump streams through the pure-Python encoder",
        "peer-dumps": "the tuned by-hand way: C encoder, the whole output as one string",
        "peer-orjson": "the fastest by-hand way: orjson both ways (its output escapes differ from json.dumps')",
    }
    r_ours = contenders["ours-json"].result

    def note(c: Contender) -> str:
        r_peer = c.result
        return (
            f"{notes[kind_of[c.name]]}; ours kept {r_ours['kept']:,}, listed {r_ours['dropped']:,} dropped with reasons "
            f"(image missing, broken, malformed) and wrote a lock; by hand kept {r_peer['kept']:,} (malformed records included)"
        )

    def data(c: Contender, ours: str) -> dict:
        return {"records": records, "annotation_bytes": spec["bytes"], "runs": {k: details[k] for k in (ours, kind_of[c.name])}}

    title = f"{records:,} records ({spec['bytes'] / 1e6:.0f} MB annotation)"
    rows = pair_rows(f"mix {title}", contenders["ours-json"], [contenders[k] for k in ("peer-dump", "peer-dumps", "peer-orjson")],
                     cell, cell, note, lambda c: data(c, "ours-json"))
    rows += pair_rows(f"needed_by planning, {title}", contenders["needed-ours"], [contenders["needed-json"], contenders["needed-orjson"]],
                      cell, cell, lambda c: "the referenced image paths of every record; ours normalises each and keeps the SAM ones",
                      lambda c: data(c, "needed-ours"))
    return rows


if __name__ == "__main__":
    _child_main(sys.argv[1:])
