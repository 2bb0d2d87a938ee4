"""Which images does an SA-1B tar hold? ``vlmdata.fetch.sa1b.index_remote_tar`` reads only the
member headers, through HTTP Range requests, against listing the tar as it streams by, as a
person would: ``curl URL | tar -t``, and Python's streaming ``tarfile`` over ``requests``.

The tar is SA-1B-shaped at a smaller scale (an image's JPEG and its mask JSON, ~470 KB per
member as in the real 10.5 GB tars of ~22,000 members), served by the sendfile server of the
download comparison. Loopback has no latency, so the times here measure request overhead
against bandwidth; the notes carry what decides it on a real link: bytes moved, and ours'
requests, each one round trip (they follow each other: a header says where the next one is).
"""

from __future__ import annotations

import io
import os
import tarfile

import requests

from .common import SKIPPED, Context, Contender, Row, cell, fmt_bytes_rate, pair_rows, race, run_tool, which
from .download import GiB, serve

NAME = "tar_index"
MEMBER = 470 * 1000  # bytes: SA-1B's 10.5 GB over its ~22,000 members


def make_tar(path, size: int) -> int:
    """An SA-1B-like tar of about ``size`` bytes; returns how many images it holds."""
    block = os.urandom(MEMBER)  # the listers never look at the data
    images = max(1, size // (2 * MEMBER))
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for n in range(1, images + 1):
            for name in (f"sa_{n}.jpg", f"sa_{n}.json"):
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(block), 1_680_000_000
                tar.addfile(info, io.BytesIO(block))
    return images


def run(ctx: Context) -> list[Row]:
    from vlmdata.catalog import load_catalog
    from vlmdata.fetch.remote import Context as FetchContext
    from vlmdata.fetch.sa1b import contents_key, index_remote_tar
    from vlmdata.storage import LocalStorage

    size = int((0.2 if ctx.quick else 1.0) * GiB)
    served = ctx.tmp / "served"
    served.mkdir()
    tar_path = served / "sa_000000.tar"
    images = make_tar(tar_path, size)
    size = tar_path.stat().st_size
    source, storage = load_catalog()["sa1b"], LocalStorage(ctx.tmp / "root")

    with serve("sendfile", served) as server:
        url = f"{server.url}/sa_000000.tar"

        def ours():
            _count("ours", len(index_remote_tar(source, "sa_000000.tar", url, FetchContext(storage))), images)

        def curl_tar():
            listing = run_tool(["bash", "-o", "pipefail", "-c", f"curl -sS --fail '{url}' | tar -tf -"]).stdout.split()
            _count("curl | tar -t", sum(name.endswith(".jpg") for name in listing), images)

        def python_stream():
            with requests.get(url, stream=True, timeout=60) as response, tarfile.open(fileobj=response.raw, mode="r|") as tar:
                _count("tarfile r|", sum(info.name.endswith(".jpg") for info in tar), images)

        ours_c = Contender("index_remote_tar (Range)", ours)
        peers = [
            Contender("curl | tar -t", curl_tar, skip=None if which("curl") and which("tar") else f"curl or tar {SKIPPED}"),
            Contender("requests + tarfile r| (stream)", python_stream),
        ]
        race([ours_c, *peers], ctx.rounds, ctx.log)
    requests_made = storage.read_json(contents_key(source.id, "sa_000000.tar"))["requests"]
    moved = requests_made * 2048  # the reader's readahead: what each request asks for

    def notes(peer: Contender) -> str:
        return (f"{images * 2} members: ours made {requests_made} requests moving ~{moved / 1e6:.1f} MB, the peer {size / 1e6:.0f} MB "
                f"({size / moved:.0f}x more). Off loopback ours waits a round trip per member (latency-bound: tars are indexed 8 at a time), "
                f"the peer the tar's size over the bandwidth (bandwidth-bound)")

    return pair_rows(
        f"list the images of a {size / GiB:.1f} GiB SA-1B-like tar over HTTP", ours_c, peers,
        lambda c: cell(c.time, f"{requests_made / c.time:,.0f} requests/s" if c.time else "-"),
        lambda c: cell(c.time, fmt_bytes_rate(size, c.time)),
        notes, lambda c: {"bytes": size, "members": images * 2, "requests": requests_made, "bytes_moved_ours": moved},
    )


def _count(name: str, got: int, want: int) -> None:
    if got != want:
        raise RuntimeError(f"{name}: listed {got} images, the tar holds {want}")
