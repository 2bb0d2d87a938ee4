"""Hashing: Python's hashlib.sha256 (``vlmdata.fetch.digest.sha256_of``, what verify uses to
re-check kept files) against coreutils ``sha256sum`` and ``openssl dgst -sha256``.

The file is read once beforehand, so every contender hashes from the page cache: this
measures the hash, not the disk.
"""

from __future__ import annotations

from .common import SKIPPED, Context, Contender, Row, cell, fmt_bytes_rate, pair_rows, race, run_tool, which
from .download import GiB, make_file

NAME = "hashing"


def run(ctx: Context) -> list[Row]:
    from vlmdata.fetch.digest import sha256_of

    size = int((0.2 if ctx.quick else 1.0) * GiB)
    path = ctx.tmp / "file.bin"
    want = make_file(path, size)
    with path.open("rb") as handle:  # into the page cache
        while handle.read(8 << 20):
            pass

    def ours():
        with path.open("rb") as handle:
            got, count = sha256_of(handle)
        _same("ours", got, want)

    def sha256sum():
        _same("sha256sum", run_tool(["sha256sum", str(path)]).stdout.split()[0], want)

    def openssl():
        # "SHA2-256(path)= hex" or "SHA256(path)= hex" depending on the version
        _same("openssl", run_tool(["openssl", "dgst", "-sha256", str(path)]).stdout.rsplit("=", 1)[1].strip(), want)

    ours_c = Contender("hashlib.sha256", ours)
    peers = [
        Contender("sha256sum", sha256sum, skip=None if which("sha256sum") else f"sha256sum {SKIPPED}"),
        Contender("openssl dgst -sha256", openssl, skip=None if which("openssl") else f"openssl {SKIPPED}"),
    ]
    race([ours_c, *peers], ctx.rounds, ctx.log)
    rate = lambda c: cell(c.time, fmt_bytes_rate(size, c.time))  # noqa: E731
    notes = {
        "sha256sum": "coreutils' portable C sha256 (not linked to OpenSSL, so no SHA-NI)",
        "openssl dgst -sha256": "the same OpenSSL code hashlib calls, minus Python",
    }
    return pair_rows(f"sha256 of a {size / GiB:.1f} GiB file (page cache)", ours_c, peers, rate, rate, lambda c: notes[c.name], lambda c: {"bytes": size})


def _same(name: str, got: str, want: str) -> None:
    if got != want:
        raise RuntimeError(f"{name}: sha256 {got} != {want}")
