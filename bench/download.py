"""Download: ``vlmdata.fetch.http.download`` (stream + sha256 in one pass) against the peers.

All clients fetch the same file from the same loopback server (``bench.httpd``, sendfile, in
its own process) to a file on the same disk; outputs are deleted between runs so at most two
copies of the file exist. Peers:

* ``curl -o`` then ``sha256sum``: the two-pass way of getting a verified file;
* ``curl -o`` alone: the floor (no verification at all);
* ``hf_hub_download``: huggingface_hub's byte path, against the server posing as a Hub
  ``/resolve/`` endpoint (it checks only the size);
* ``requests`` streaming with no hashing: our client library without our work, to show what
  the hashing and bookkeeping cost;
* ours on one stream (``VLMDATA_DOWNLOAD_CONNECTIONS=1``): the segmented download (ours, 8
  connections from 64 MiB on) must be no slower on a link that does not limit connections;
* ``aria2c -x4``: parallel connections (docs/facts.md: no help on a fast link).

Two more rows measure the server itself (``curl -o /dev/null`` against each candidate
server), to say why the sendfile server is the one used.
"""

from __future__ import annotations

import hashlib
import os
import select
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

from . import REPO_ROOT
from .common import SKIPPED, Context, Contender, Row, cell, fmt_bytes_rate, pair_rows, python, race, remove, run_tool, settle_disk, which

NAME = "download"
GiB = 1 << 30

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def make_file(path: Path, size: int) -> str:
    """Incompressible bytes (every 8 MiB block differs); returns their sha256."""
    block = bytearray(os.urandom(8 << 20))
    digest = hashlib.sha256()
    with path.open("wb") as out:
        written, number = 0, 0
        while written < size:
            block[:8] = number.to_bytes(8, "little")
            piece = memoryview(block)[: min(len(block), size - written)]
            out.write(piece)
            digest.update(piece)
            written += len(piece)
            number += 1
    return digest.hexdigest()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start listening")


class Server:
    def __init__(self, url: str, pid: int):
        self.url, self.pid = url, pid

    def cpu_seconds(self) -> float | None:
        """User + system CPU time the server process has used so far (Linux /proc), else None."""
        try:
            with open(f"/proc/{self.pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None


@contextmanager
def serve(kind: str, root: Path, file: Path | None = None, options: tuple[str, ...] = ()):
    """Start a server process of ``kind`` (sendfile, http.server, fake); yield a :class:`Server`.
    ``options`` go to the sendfile server (``--rate``, ``--latency``)."""
    if kind == "http.server":
        port = _free_port()
        proc = subprocess.Popen([python(), "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_listening(port, proc)
        except BaseException:
            _stop(proc)
            raise
    else:
        args = [python(), "-m", "bench.httpd", str(root), *options] if kind == "sendfile" else [python(), "-m", "bench.httpd", "--fake", str(file)]
        proc = subprocess.Popen(args, cwd=REPO_ROOT, stdout=subprocess.PIPE, stdin=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            ready, _, _ = select.select([proc.stdout], [], [], 120)
            line = proc.stdout.readline() if ready else ""
            if not line.strip().isdigit():
                raise RuntimeError(f"{kind} server did not start")
            port = int(line)
        except BaseException:
            _stop(proc)
            raise
    try:
        yield Server(f"http://127.0.0.1:{port}", proc.pid)
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    if proc.stdin:
        proc.stdin.close()
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout:
        proc.stdout.close()


def _check(name: str, got: str, want: str) -> None:
    if got != want:
        raise RuntimeError(f"{name}: sha256 {got} != {want}")


def run(ctx: Context) -> list[Row]:
    size = int((0.2 if ctx.quick else 1.0) * GiB)
    src_dir, out_dir = ctx.tmp / "served", ctx.tmp / "out"
    src_dir.mkdir()
    out_dir.mkdir()
    src = src_dir / "big.bin"
    ctx.log(f"  writing a {size / GiB:.1f} GiB file")
    sha = make_file(src, size)
    (src_dir / "probe.bin").write_bytes(b"probe\n")
    dest = out_dir / "big.bin"
    rows: list[Row] = []

    with serve("sendfile", src_dir) as server:
        base = server.url
        url = f"{base}/big.bin"
        rows += _clients(ctx, url, base, src, sha, size, dest, out_dir)
    rows += _servers(ctx, src_dir, src, size, dest)
    return rows


def _clients(ctx, url, base, src, sha, size, dest, out_dir) -> list[Row]:
    import requests

    from vlmdata.fetch.digest import Expected
    from vlmdata.fetch.http import download
    from vlmdata.fetch.segments import Segmenting

    def ours(segmenting=None):
        fetched = download(url, dest, Expected(size=size, sha256=sha), session=requests.Session(), progress_every=1e9, segmenting=segmenting)
        _check("ours", fetched.sha256, sha)

    split = {"curl": [], "sha256sum": []}

    def curl_then_sha256sum():
        t0 = time.perf_counter()
        run_tool(["curl", "-sS", "--fail", "-o", str(dest), url])
        t1 = time.perf_counter()
        out = run_tool(["sha256sum", str(dest)])
        split["curl"].append(t1 - t0)
        split["sha256sum"].append(time.perf_counter() - t1)
        _check("curl + sha256sum", out.stdout.split()[0], sha)

    def curl_alone():
        run_tool(["curl", "-sS", "--fail", "-o", str(dest), url])

    def requests_no_hash():
        with requests.get(url, stream=True, timeout=60) as response, dest.open("wb") as out:
            response.raise_for_status()
            for chunk in response.iter_content(1 << 16):
                out.write(chunk)

    hf_cache = out_dir / "hf-cache"
    hf_skip = _hf_probe(base, hf_cache)

    def hf():
        from huggingface_hub import hf_hub_download

        path = hf_hub_download("bench/blob", "big.bin", repo_type="dataset", revision="b" * 40, cache_dir=hf_cache, endpoint=base, token=False)
        if os.path.getsize(path) != size:
            raise RuntimeError("hf_hub_download: wrong size")

    def aria2c():
        run_tool(["aria2c", "-q", "-x4", "-s4", "-k1M", "--allow-overwrite=true", "--file-allocation=none", "--auto-file-renaming=false", "-d", str(out_dir), "-o", dest.name, url])

    clean = lambda: remove(dest)  # noqa: E731
    both = "curl" if not which("curl") else "sha256sum" if not which("sha256sum") else None
    ours_c = Contender("vlmdata download", ours, after=clean)
    peers = [
        Contender("curl -o + sha256sum", curl_then_sha256sum, after=clean, skip=f"{both} {SKIPPED}" if both else None),
        Contender("curl -o (no verification)", curl_alone, after=clean, skip=None if which("curl") else f"curl {SKIPPED}"),
        Contender("hf_hub_download", hf, after=lambda: remove(hf_cache), skip=hf_skip),
        Contender("requests stream, no hash", requests_no_hash, after=clean),
        Contender("vlmdata download, one stream", lambda: ours(Segmenting(connections=1)), after=clean),
        Contender("aria2c -x4", aria2c, after=lambda: (clean(), remove(out_dir / (dest.name + ".aria2"))), skip=None if which("aria2c") else f"aria2c {SKIPPED}"),
    ]
    race([ours_c, *peers], ctx.rounds, ctx.log, settle=settle_disk)

    def rate(c):
        return cell(c.time, fmt_bytes_rate(size, c.time))

    def notes(c):
        if c.name.startswith("curl -o +"):
            if not split["curl"]:
                return "the two-pass way: download, then hash"
            return f"two passes: curl {min(split['curl']):.2f} s + sha256sum {min(split['sha256sum']):.2f} s"
        if c.name == "hf_hub_download":
            return "checks the size only, no sha256"
        if c.name.startswith("requests"):
            return "our HTTP library with no hashing/bookkeeping: the part of ours that is not hashing"
        if c.name.endswith("one stream"):
            return "ours before segmented downloads (VLMDATA_DOWNLOAD_CONNECTIONS=1): goal ours <= 1.0 on this uncapped link"
        if c.name.startswith("aria2c"):
            return "4 connections, no verification"
        return "no verification"

    name = f"download {size / GiB:.1f} GiB, sha256 verified"
    return pair_rows(name, ours_c, peers, rate, rate, notes, lambda c: {"bytes": size, **({"split": split} if c.name.startswith("curl -o +") else {})})


def _hf_probe(base: str, cache: Path) -> str | None:
    """None when hf_hub_download works against our server, else why it is skipped."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:
        return f"huggingface_hub {SKIPPED}"
    try:
        path = hf_hub_download("bench/blob", "probe.bin", repo_type="dataset", revision="b" * 40, cache_dir=cache, endpoint=base, token=False)
        with open(path, "rb") as handle:
            ok = handle.read() == b"probe\n"
    except Exception as exc:  # noqa: BLE001 - any failure means: skip it, say why
        return f"skipped: hf_hub_download failed against the local server ({type(exc).__name__}: {str(exc)[:120]})"
    finally:
        remove(cache)
    return None if ok else "skipped: hf_hub_download returned wrong bytes"


def _servers(ctx, src_dir: Path, src: Path, size: int, dest: Path) -> list[Row]:
    """curl into /dev/null against each candidate server (no disk write on the client side, so
    the server is what limits): which one can feed a client at loopback speed."""
    if not which("curl"):
        return [Row("server (curl client)", "-", f"curl {SKIPPED}", None, "server comparison needs curl")]
    results, cpu = {}, {}
    for kind, label in (("sendfile", "bench.httpd (sendfile)"), ("http.server", "python -m http.server"), ("fake", "tests FakeHttpServer (in memory)")):
        c = Contender(label, None)
        with serve(kind, src_dir, src) as server:
            c.run = lambda base=server.url: run_tool(["curl", "-sS", "--fail", "-o", os.devnull, f"{base}/big.bin"])
            before = server.cpu_seconds()
            race([c], ctx.rounds, ctx.log)
            after = server.cpu_seconds()
        results[kind] = c
        cpu[label] = (after - before) / len(c.times) if before is not None and after is not None else None
    used = results["sendfile"]

    def rate(c):
        used_cpu = cpu.get(c.name)
        return cell(c.time, fmt_bytes_rate(size, c.time)) + (f", server CPU {used_cpu:.2f} s" if used_cpu is not None else "")

    return pair_rows(
        "server used (curl -o /dev/null; ratio = sendfile/other)",
        used,
        [results["http.server"], results["fake"]],
        rate,
        rate,
        lambda c: "harness check, not vlmdata: the sendfile server (the one every download row uses) leaves the client's 2 cores alone",
        lambda c: {"bytes": size, "server_cpu_s": cpu},
        subject="sendfile",
    )
