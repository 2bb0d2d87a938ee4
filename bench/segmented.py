"""Segmented download on a link that limits each connection: ours against ``aria2c -x8 -s8``.

``bench.httpd`` serves the file capped at 20 MB/s per connection, with 50 ms added to each new
connection and to each answer (a distant server that limits every connection, as the Hub's CDN
or a university file server do). Contenders, all writing to the same disk:

* ours: ``vlmdata.fetch.http.download`` with its defaults (8 connections from 64 MiB on), sha256
  checked before the rename;
* ``aria2c -x8 -s8``: the tool a user picks for this, without any checksum;
* ``aria2c -x8 -s8 --checksum=sha-256=...``: the same, verifying the file after the transfer;
* ours on one stream (``VLMDATA_DOWNLOAD_CONNECTIONS=1``): what every download did before.

512 MiB by default (128 MiB with ``--quick``, ``--segmented-mib N`` for another size).
"""

from __future__ import annotations

from .common import SKIPPED, Context, Contender, Row, cell, fmt_bytes_rate, pair_rows, race, remove, run_tool, settle_disk, which
from .download import _check, make_file, serve

NAME = "segmented"
MiB = 1 << 20
RATE = 20e6  # bytes per second per connection
LATENCY = 0.05  # seconds


def run(ctx: Context) -> list[Row]:
    import requests

    from vlmdata.fetch.digest import Expected
    from vlmdata.fetch.http import download
    from vlmdata.fetch.segments import Segmenting

    size = (ctx.segmented_mib or (128 if ctx.quick else 512)) * MiB
    src_dir, out_dir = ctx.tmp / "served", ctx.tmp / "out"
    src_dir.mkdir()
    out_dir.mkdir()
    ctx.log(f"  writing a {size // MiB} MiB file")
    sha = make_file(src_dir / "big.bin", size)
    dest = out_dir / "big.bin"
    expected = Expected(size=size, sha256=sha)

    with serve("sendfile", src_dir, options=("--rate", str(RATE), "--latency", str(LATENCY))) as server:
        url = f"{server.url}/big.bin"

        def ours(segmenting: Segmenting):
            fetched = download(url, dest, expected, session=requests.Session(), progress_every=1e9, segmenting=segmenting)
            _check("ours", fetched.sha256, sha)

        def aria2c(*extra: str):
            run_tool(["aria2c", "-q", "-x8", "-s8", "-k1M", "--allow-overwrite=true", "--file-allocation=none", "--auto-file-renaming=false",
                      *extra, "-d", str(out_dir), "-o", dest.name, url])

        def clean():
            for path in out_dir.iterdir():
                remove(path)

        no_aria = None if which("aria2c") else f"aria2c {SKIPPED} (apt-get install aria2)"
        ours_c = Contender("vlmdata download (8 connections)", lambda: ours(Segmenting()), after=clean)
        peers = [
            Contender("aria2c -x8 -s8", aria2c, after=clean, skip=no_aria),
            Contender("aria2c -x8 -s8 --checksum", lambda: aria2c(f"--checksum=sha-256={sha}"), after=clean, skip=no_aria),
            Contender("vlmdata download, one stream", lambda: ours(Segmenting(connections=1)), after=clean),
        ]
        race([ours_c, *peers], ctx.rounds, ctx.log, settle=settle_disk)

    def rate(c):
        return cell(c.time, fmt_bytes_rate(size, c.time))

    def notes(c):
        if c.name == "aria2c -x8 -s8":
            return "no verification; goal: ours <= 1.11 (>= 0.9x aria2c's speed) with sha256 included"
        if c.name.endswith("--checksum"):
            return "aria2c hashes after the transfer"
        return "the single stream: one capped connection"

    name = f"download {size // MiB} MiB at {RATE / 1e6:.0f} MB/s per connection, +{LATENCY * 1000:.0f} ms, sha256 verified"
    return pair_rows(name, ours_c, peers, rate, rate, notes, lambda c: {"bytes": size, "rate_per_connection": RATE, "latency_s": LATENCY})
