"""Image checks: ``vlmdata.images.check_images`` (a Pillow decode of every image, spread over
processes) against Pillow's ``Image.verify()`` loop and ``jpeginfo -c``, on 640x480 JPEGs from
``vlmdata.replicas.data`` with a few truncated ones planted (``truncated_jpeg_bytes``: the first
half of a valid JPEG, which opens and passes ``verify()`` but does not decode).

Besides the time, each row says how many of the planted truncated files the contender caught
(and how many good files it wrongly flagged): a peer that is faster but misses them is not
doing the same job. A second row compares ours on one process with two by-hand loops: a
full-scale ``Image.open().load()``, and ``draft()`` at 1/8 scale then ``load()`` (libjpeg's DCT
scaling: it still reads every byte, so it still catches truncation); the difference to the
loop that does what ours does is our per-image bookkeeping.
"""

from __future__ import annotations

import os
import subprocess
from multiprocessing import Pool
from pathlib import Path

from .common import SKIPPED, Context, Contender, Row, cell, fmt_count_rate, pair_rows, race, which

NAME = "images"
WIDTH, HEIGHT = 640, 480
FOLDER = "data/img"


def _make(args: tuple[int, bool]) -> tuple[int, bytes]:
    from vlmdata.replicas.data import jpeg_bytes, truncated_jpeg_bytes

    seed, truncated = args
    return seed, (truncated_jpeg_bytes if truncated else jpeg_bytes)(WIDTH, HEIGHT, seed=seed)


def make_images(root: Path, count: int, planted: int) -> tuple[list[str], set[str]]:
    """``count`` JPEGs under ``root/FOLDER``, ``planted`` of them truncated (spread evenly).
    Returns the storage keys and the keys of the truncated ones."""
    step = max(1, count // max(planted, 1))
    bad_seeds = {1 + i * step for i in range(planted)}
    folder = root / FOLDER
    folder.mkdir(parents=True)
    keys, bad = [], set()
    with Pool(os.cpu_count() or 1) as pool:
        for seed, data in pool.imap_unordered(_make, [(s, s in bad_seeds) for s in range(1, count + 1)], chunksize=16):
            key = f"{FOLDER}/{seed:06d}.jpg"
            (root / key).write_bytes(data)
            keys.append(key)
            if seed in bad_seeds:
                bad.add(key)
    keys.sort()
    return keys, bad


def _pil_loop(paths: list[Path], mode: str) -> set[str]:
    """What a person writes by hand: open each file and ``verify()`` it, ``load()`` it, or
    ``draft()`` it to 1/8 scale and ``load()`` it. Returns the names that failed."""
    from PIL import Image

    failed = set()
    for path in paths:
        try:
            with Image.open(path) as image:
                if mode == "verify":
                    image.verify()
                    continue
                if mode == "draft":
                    image.draft(None, (max(1, image.width // 8), max(1, image.height // 8)))
                image.load()
        except Exception:  # noqa: BLE001 - any failure marks the file bad
            failed.add(path.name)
    return failed


def _jpeginfo(paths: list[Path], processes: int, tmp: Path) -> set[str]:
    """``jpeginfo -c`` over the files, split across ``processes`` runs in parallel; returns the
    names not reported OK. jpeginfo exits non-zero when it finds a bad file: not an error."""
    procs = []
    for number in range(processes):
        listing = tmp / f"jpeginfo-{number}.txt"
        listing.write_text("".join(f"{p}\n" for p in paths[number::processes]))
        procs.append(subprocess.Popen(["jpeginfo", "-c", "-f", str(listing)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    failed, seen = set(), 0
    for proc in procs:
        out, _ = proc.communicate()
        for line in out.splitlines():
            if not line.strip():
                continue
            seen += 1
            tokens = line.split()  # "<file> 640 x 480 24bit N JFIF <size> OK" (older: "[OK]"), else WARNING/ERROR <why>
            if not any(t.strip("[]") == "OK" for t in tokens[1:]):
                failed.add(Path(tokens[0]).name)
    if seen < len(paths):
        raise RuntimeError(f"jpeginfo reported {seen} of {len(paths)} files")
    return failed


def run(ctx: Context) -> list[Row]:
    from vlmdata.images import check_images
    from vlmdata.storage import LocalStorage

    count = 1_000 if ctx.quick else 3_000
    planted = count // 50
    root = ctx.tmp / "root"
    ctx.log(f"  generating {count} JPEGs of {WIDTH}x{HEIGHT} ({planted} truncated)")
    keys, bad_keys = make_images(root, count, planted)
    storage = LocalStorage(root)
    paths = [root / k for k in keys]
    bad = {Path(k).name for k in bad_keys}
    for path in paths:  # into the page cache: this measures decoding, not the disk
        path.read_bytes()

    def ours(workers):
        def go():
            results = check_images(storage, keys, workers=workers, progress_every=1e9)
            return {Path(k).name for k, r in results.items() if not r["ok"]}

        return go

    ours2 = Contender("vlmdata check_images workers=2", ours(2))
    ours1 = Contender("vlmdata check_images workers=1", ours(1))
    verify = Contender("PIL Image.verify() loop (1 process)", lambda: _pil_loop(paths, "verify"))
    load = Contender("PIL open+load() loop (1 process)", lambda: _pil_loop(paths, "load"))
    draft = Contender("PIL open+draft(1/8)+load() loop (1 process)", lambda: _pil_loop(paths, "draft"))
    jpeginfo = Contender("jpeginfo -c (2 processes)", lambda: _jpeginfo(paths, 2, ctx.tmp), skip=None if which("jpeginfo") else f"jpeginfo {SKIPPED}")
    race([ours2, ours1, verify, load, draft, jpeginfo], ctx.rounds, ctx.log)

    def caught(c) -> str:
        failed = c.result or set()
        wrong = len(failed - bad)
        return f"{len(failed & bad)}/{len(bad)} truncated caught" + (f", {wrong} good files flagged" if wrong else "")

    def rate(c):
        return cell(c.time, fmt_count_rate(count, c.time, "img")) + f"; {caught(c)}"

    def data(c):
        failed = c.result or set()
        return {"images": count, "planted_truncated": len(bad), "caught": len(failed & bad), "false_alarms": len(failed - bad)}

    notes = {
        verify.name: "verify() parses headers only: misses truncation; ours uses 2 processes",
        jpeginfo.name: "libjpeg in C, full-scale decode; same catches (truncation is its WARNING)",
        load.name: "full-scale decode by hand",
        draft.name: "reduced-scale decode by hand (what ours does for JPEGs): the gap is our per-image bookkeeping",
    }
    name = f"decode-check {count:,} JPEGs {WIDTH}x{HEIGHT}"
    rows = pair_rows(name, ours2, [verify, jpeginfo], rate, rate, lambda c: notes[c.name], data)
    rows += pair_rows(f"{name}, one process", ours1, [load, draft], rate, rate, lambda c: notes[c.name], data)
    return rows
