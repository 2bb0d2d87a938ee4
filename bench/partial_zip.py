"""A recipe needing part of a zip: ``vlmdata.fetch.zip_members.fetch_members`` fetches the wanted
members alone over HTTP Range requests, against today's way: the whole archive downloaded
(``vlmdata.fetch.http.download``, sha256 checked) and extracted (``vlmdata.extract.extract_zip``).

The zip is laid out like COCO's train2017.zip (``train2017/<id>.jpg``), its JPEGs of noise so
that they compress as little as photos do (~100 KB each, 20 KB with ``--quick``), served by the
download comparison's sendfile server. The wanted members are every tenth, every other, and
all of them: 10%, 50% and 100%, spread over the archive as a recipe's are. Each round starts
from an empty storage.

Each fraction runs twice: on loopback as it is, and with the server waiting 20 ms before each
answer (a round trip; ours makes ``Coalescing.workers`` requests at a time). Loopback has no
bandwidth limit either: the notes add an estimate for a link of 20 ms and 100 MB/s, where the
peer's one stream is bandwidth-bound.
"""

from __future__ import annotations

import hashlib
import io
import random
import zipfile
from pathlib import Path

from .common import Context, Contender, Row, cell, fmt_bytes_rate, pair_rows, race, remove
from .download import serve

NAME = "partial_zip"
_DATE = (2017, 1, 1, 0, 0, 0)
RTT, BANDWIDTH = 0.020, 100e6  # the link of the notes' estimate
FRACTIONS = ((10, 10), (50, 2), (100, 1))  # (percent, every n-th member)
DELAYS = (0.0, RTT)  # loopback as it is, then with a round trip's wait before each answer


def _photo(seed: int, side: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.frombytes("RGB", (side, side), random.Random(seed).randbytes(side * side * 3)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def make_zip(path: Path, count: int, side: int) -> list[str]:
    """A COCO-like zip of ``count`` JPEGs (64 distinct ones, repeated under other names); returns their names."""
    photos = [_photo(seed, side) for seed in range(64)]
    names = [f"{n:012d}.jpg" for n in range(count)]
    with zipfile.ZipFile(path, "w") as zf:
        for n, name in enumerate(names):
            zf.writestr(zipfile.ZipInfo(f"train2017/{name}", date_time=_DATE), photos[n % len(photos)], zipfile.ZIP_DEFLATED)
    return names


def run(ctx: Context) -> list[Row]:
    import requests

    from vlmdata.catalog import Extract
    from vlmdata.extract import extract_zip
    from vlmdata.fetch.digest import Expected
    from vlmdata.fetch.http import download
    from vlmdata.fetch.zip_members import fetch_members
    from vlmdata.storage import LocalStorage

    count, side = (400, 160) if ctx.quick else (2000, 360)
    served = ctx.tmp / "served"
    served.mkdir()
    archive = served / "train2017.zip"
    names = make_zip(archive, count, side)
    size = archive.stat().st_size
    sha256 = hashlib.sha256(archive.read_bytes()).hexdigest()
    spec, folder = Extract(into="coco/train2017", strip_components=1), "data/coco/train2017"
    ours_root, peer_root, staged = ctx.tmp / "ours", ctx.tmp / "peer", ctx.tmp / "staging" / "train2017.zip"
    rows: list[Row] = []
    for delay in DELAYS:
        with serve("sendfile", served, options=("--latency", str(delay))) as server:
            url = f"{server.url}/train2017.zip"
            for percent, step in FRACTIONS:
                wanted = names[::step]

                def ours(wanted=wanted):
                    result = fetch_members(url, wanted, LocalStorage(ours_root), folder, spec, session=requests.Session())
                    if result.fetched != len(wanted):
                        raise RuntimeError(f"fetched {result.fetched} of {len(wanted)} members")
                    return result

                def whole():
                    download(url, staged, Expected(size=size, sha256=sha256), session=requests.Session(), progress_every=1e9)
                    index = extract_zip(staged, LocalStorage(peer_root), folder, spec, progress_every=1e9)
                    staged.unlink()
                    return index

                def clean():
                    remove(ours_root)
                    remove(peer_root)
                    remove(staged)

                ours_c = Contender(f"fetch_members ({percent}%)", ours, before=clean, after=clean)
                peer = Contender("download + extract_zip (whole)", whole, before=clean, after=clean)
                race([ours_c, peer], ctx.rounds, ctx.log)
                rows += _rows(ours_c, peer, percent, delay, size, count, len(wanted))
    return rows


def _rows(ours: Contender, peer: Contender, percent: int, delay: float, size: int, count: int, wanted: int) -> list[Row]:
    from vlmdata.fetch.zip_members import Coalescing

    moved, requests_made = ours.result.bytes_moved, ours.result.requests
    # On a real link: ours' requests go `workers` at a time after the two for the directory.
    workers = Coalescing().workers
    ours_link = (2 + -(-(requests_made - 2) // workers)) * RTT + moved / BANDWIDTH
    peer_link = RTT + size / BANDWIDTH
    where = f"{delay * 1000:.0f} ms a request" if delay else "loopback"
    notes = (f"{wanted} of {count} members: ours moved {moved / 1e6:.1f} MB ({moved / size:.0%} of the archive) in {requests_made} requests, "
             f"the peer {size / 1e6:.1f} MB in 1; on a link of {RTT * 1000:.0f} ms and {BANDWIDTH / 1e6:.0f} MB/s (estimate): "
             f"ours ~{ours_link:.1f} s, the peer ~{peer_link:.1f} s")
    return pair_rows(
        f"{percent}% of a {size / 1e6:.0f} MB zip of JPEGs over HTTP ({where})", ours, [peer],
        lambda c: cell(c.time, fmt_bytes_rate(moved, c.time)),
        lambda c: cell(c.time, fmt_bytes_rate(size, c.time)),
        lambda c: notes,
        lambda c: {"archive_bytes": size, "members": count, "wanted_percent": percent, "delay_s": delay, "bytes_moved_ours": moved,
                   "bytes_moved_peer": size, "requests_ours": requests_made, "estimate_s_ours": ours_link, "estimate_s_peer": peer_link},
    )
