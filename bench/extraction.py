"""Extraction: ``vlmdata.extract.extract_zip`` into a LocalStorage against ``unzip -q`` and
``python -m zipfile -e``, on one zip of small JPEGs laid out like COCO's train2017.zip.
Ours runs as a task would: one process per available core (its parallel path); the same
extraction in one process is a peer too, so the table shows what the processes bring.

The JPEGs come from ``vlmdata.replicas.data.jpeg_bytes`` (a seed per file, so no two are alike),
generated once on both cores. Every contender extracts into a fresh, empty folder which is
removed afterwards; ours vets every member first, writes each through a temporary file
renamed into place, and returns the index the manifest keeps.
"""

from __future__ import annotations

import os
import zipfile
from multiprocessing import Pool
from pathlib import Path

from .common import SKIPPED, Context, Contender, Row, cell, fmt_count_rate, pair_rows, python, race, remove, run_tool, settle_disk, which

NAME = "extraction"
WIDTH, HEIGHT = 160, 120  # ~2.4 KiB each: small files, where the per-file cost dominates
_DATE = (2017, 1, 1, 0, 0, 0)


def _jpeg(seed: int) -> bytes:
    from vlmdata.replicas.data import jpeg_bytes

    return jpeg_bytes(WIDTH, HEIGHT, seed=seed)


def make_zip(path: Path, count: int, folder: str = "train2017") -> int:
    """A deflated zip with a ``folder/`` entry and ``count`` JPEGs; returns the bytes inside."""
    total = 0
    with zipfile.ZipFile(path, "w") as zf, Pool(os.cpu_count() or 1) as pool:
        info = zipfile.ZipInfo(f"{folder}/", date_time=_DATE)
        info.external_attr = 0o40755 << 16 | 0x10
        zf.writestr(info, b"")
        for seed, data in enumerate(pool.imap(_jpeg, range(1, count + 1), chunksize=64), start=1):
            info = zipfile.ZipInfo(f"{folder}/{seed:012d}.jpg", date_time=_DATE)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
            total += len(data)
    return total


def _count_files(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


def run(ctx: Context) -> list[Row]:
    from vlmdata.catalog import Extract
    from vlmdata.extract import extract_processes, extract_zip
    from vlmdata.storage import LocalStorage

    count = 5_000 if ctx.quick else 20_000
    archive = ctx.tmp / "train2017.zip"
    ctx.log(f"  generating {count} JPEGs of {WIDTH}x{HEIGHT} into a zip")
    payload = make_zip(archive, count)
    ctx.log(f"  zip: {archive.stat().st_size / 1e6:.0f} MB, {payload / 1e6:.0f} MB of JPEGs")
    out = ctx.tmp / "out"
    fresh = lambda: (remove(out), out.mkdir())  # noqa: E731
    written = {}

    def ours(processes=None):
        index = extract_zip(archive, LocalStorage(out), "data/coco", Extract(into="coco"), progress_every=1e9, processes=processes)
        if len(index) != count:
            raise RuntimeError(f"extract_zip indexed {len(index)} members, expected {count}")

    def unzip():
        run_tool(["unzip", "-q", str(archive), "-d", str(out)])

    def pyzipfile():
        run_tool([python(), "-m", "zipfile", "-e", str(archive), str(out)])

    def counted(name):
        return lambda: (written.__setitem__(name, _count_files(out)), remove(out))

    processes = extract_processes()
    ours_c = Contender(f"vlmdata extract_zip ({processes} processes)", ours, before=fresh, after=counted("ours"))
    peers = [
        Contender("vlmdata extract_zip, 1 process", lambda: ours(1), before=fresh, after=counted("ours, 1 process")),
        Contender("unzip -q", unzip, before=fresh, after=counted("unzip -q"), skip=None if which("unzip") else f"unzip {SKIPPED}"),
        Contender("python -m zipfile -e", pyzipfile, before=fresh, after=counted("python -m zipfile -e")),
    ]
    # Every run creates (and then deletes) `count` files: two rounds at full size keep the
    # whole bench within its time budget.
    race([ours_c, *peers], ctx.rounds if ctx.quick else min(ctx.rounds, 2), ctx.log, settle=settle_disk)
    for name, files in written.items():
        if files != count:
            raise RuntimeError(f"{name} wrote {files} files, expected {count}")
    rate = lambda c: cell(c.time, fmt_count_rate(count, c.time, "files"))  # noqa: E731
    notes = {
        "vlmdata extract_zip, 1 process": "the same work in one process: what the worker processes bring",
        "unzip -q": "no vetting, writes in place (a killed run leaves a partial file)",
        "python -m zipfile -e": "extractall in a fresh interpreter (~30 ms start-up included); no vetting beyond zipfile's own",
    }
    return pair_rows(
        f"extract {count:,} JPEGs ({payload / 1e6:.0f} MB)",
        ours_c,
        peers,
        rate,
        rate,
        lambda c: notes[c.name],
        lambda c: {"files": count, "bytes": payload},
    )
