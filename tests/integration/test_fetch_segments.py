"""Segmented downloads (several connections, one file) against a real loopback server."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import subprocess
import sys
import threading
import time

import pytest

from vlmdata.fetch.digest import Expected, IntegrityError
from vlmdata.fetch.http import FetchError, RetryPolicy, download
from vlmdata.fetch.segments import Segmenting
from vlmdata.replicas.http_server import FakeHttpServer, corrupt, drop_after, ignore_range, status, throttle

MiB = 1 << 20
DATA = random.Random(7).randbytes(4 * MiB)
SHA = hashlib.sha256(DATA).hexdigest()
FAST = RetryPolicy(attempts=5, backoff=0.01)
ONCE = RetryPolicy(attempts=1)
# 4 connections on a 4 MiB file: about a dozen pieces of 256 to 512 KiB, split further at the end.
SPLIT = Segmenting(connections=4, threshold=MiB, min_piece=256 << 10)
# Pieces of exactly 1 MiB and no splitting of pieces in flight: every request is served whole.
WHOLE = Segmenting(connections=4, threshold=MiB, min_piece=MiB)


@pytest.fixture
def server():
    with FakeHttpServer() as srv:
        srv.add("/f.bin", DATA)
        yield srv


def gets(srv):
    return [r for r in srv.requests if r.method == "GET"]


def span(request) -> tuple[int, int]:
    """(first, last) byte of a request's Range."""
    first, last = request.headers["Range"].removeprefix("bytes=").split("-")
    return int(first), int(last)


def interrupted(server, dest) -> dict:  # (no `waits` fixture with it: throttle() sleeps)
    """A first attempt that dies mid-way: the first connection drops after 600 kB, while the
    others are half-way through their pieces. Returns the segment state it left."""
    server.script("/f.bin", throttle(2 * MiB) | drop_after(600_000), *[throttle(MiB)] * 3)
    with pytest.raises(FetchError, match="re-running resumes each piece"):
        download(f"{server.url}/f.bin", dest, Expected(size=len(DATA), sha256=SHA), policy=ONCE, segmenting=WHOLE)
    assert not dest.exists()
    return json.loads(dest.with_name("f.bin.part.segments.json").read_text())


def test_the_pieces_make_the_file_and_its_checksums(server, tmp_path):
    md5 = hashlib.md5(DATA).hexdigest()
    got = download(f"{server.url}/f.bin", tmp_path / "f.bin", Expected(size=len(DATA), sha256=SHA, md5=md5), policy=FAST, segmenting=SPLIT)
    assert (tmp_path / "f.bin").read_bytes() == DATA
    assert (got.sha256, got.md5, got.size) == (SHA, md5, len(DATA))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]  # no .part, no state left
    requests = gets(server)
    assert len(requests) > 4 and len({r.client_port for r in requests}) > 1  # several connections
    assert all(r.headers.get("Range") for r in requests)
    assert all(r.headers.get("If-Range") == server.requests[0].headers.get("ETag", got.etag) for r in requests[1:])
    covered = sorted(span(r) for r in requests)
    assert covered[0][0] == 0 and covered[-1][1] == len(DATA) - 1


def test_a_resumed_download_fetches_only_the_missing_bytes_of_each_piece(server, tmp_path):
    dest = tmp_path / "f.bin"
    state = interrupted(server, dest)
    missing = len(DATA) - state["untaken"] + sum(end - (start + done) for start, end, done in state["pieces"])
    assert 0 < missing < len(DATA)
    assert sum(1 for start, end, done in state["pieces"] if done > 0) >= 2  # several pieces were under way
    server.clear_requests()
    download(f"{server.url}/f.bin", dest, Expected(size=len(DATA), sha256=SHA), policy=FAST, segmenting=WHOLE)
    assert dest.read_bytes() == DATA
    again = gets(server)
    assert sum(last - first + 1 for first, last in map(span, again)) == missing  # bytes served the second time
    assert {start + done for start, end, done in state["pieces"] if done < end - start} <= {span(r)[0] for r in again}
    assert all(r.headers.get("If-Range") for r in again)


def test_upstream_changed_between_attempts_starts_over(server, tmp_path):
    dest = tmp_path / "f.bin"
    state = interrupted(server, dest)
    new = DATA[::-1]
    server.replace("/f.bin", new)
    server.clear_requests()
    got = download(f"{server.url}/f.bin", dest, Expected(size=len(new), sha256=hashlib.sha256(new).hexdigest()), policy=FAST, segmenting=SPLIT)
    assert dest.read_bytes() == new and got.sha256 == hashlib.sha256(new).hexdigest()
    first, second = gets(server)[:2]
    assert first.headers["If-Range"] == state["validator"]  # answered 200: another version
    assert second.headers["Range"].startswith("bytes=0-") and "If-Range" not in second.headers  # from zero


@pytest.mark.parametrize("kind", ["ignores Range", "no validator"])
def test_a_server_that_cannot_serve_pieces_gets_the_single_stream(tmp_path, waits, kind):
    with FakeHttpServer() as srv:
        if kind == "ignores Range":
            srv.add("/f.bin", DATA)
            srv.script("/f.bin", ignore_range())
        else:
            srv.add("/f.bin", DATA, etag=None, last_modified=None)
        got = download(f"{srv.url}/f.bin", tmp_path / "f.bin", Expected(size=len(DATA), sha256=SHA), policy=FAST, segmenting=SPLIT)
        assert (tmp_path / "f.bin").read_bytes() == DATA and got.sha256 == SHA
        first, then = [r.headers.get("Range") for r in gets(srv)]
        assert first.startswith("bytes=0-") and then is None  # one try, then one stream from zero
        assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_a_corrupt_piece_fails_the_checksum_and_leaves_nothing(server, tmp_path, waits):
    server.script("/f.bin", *[corrupt(3 * MiB + 5)] * 40)  # whichever request carries that byte flips it
    with pytest.raises(IntegrityError, match="sha256"):
        download(f"{server.url}/f.bin", tmp_path / "f.bin", Expected(size=len(DATA), sha256=SHA), policy=FAST, segmenting=SPLIT)
    assert list(tmp_path.iterdir()) == []


def test_a_failing_piece_is_retried_on_its_own(server, tmp_path, waits):
    server.script("/f.bin", *[status(503)] * 1, drop_after(100_000))
    got = download(f"{server.url}/f.bin", tmp_path / "f.bin", Expected(size=len(DATA), sha256=SHA), policy=FAST, segmenting=SPLIT)
    assert got.sha256 == SHA and (tmp_path / "f.bin").read_bytes() == DATA


def test_every_connection_checks_the_lease_before_writing(server, tmp_path):
    class Lost(Exception):
        pass

    checked_in = set()
    calls = 0
    lock = threading.Lock()

    def guard():
        nonlocal calls
        with lock:
            checked_in.add(threading.current_thread().name)
            calls += 1
            if calls > 12:
                raise Lost("lease lost")

    server.script("/f.bin", *[throttle(4 * MiB)] * 4)
    with pytest.raises(Lost):
        download(f"{server.url}/f.bin", tmp_path / "f.bin", Expected(size=len(DATA), sha256=SHA), policy=FAST, segmenting=SPLIT, guard=guard)
    assert len({name for name in checked_in if name.startswith("vlmdata-segment-")}) > 1
    assert not (tmp_path / "f.bin").exists() and (tmp_path / "f.bin.part").exists()  # kept for the lease's next holder


def test_small_files_and_one_connection_keep_the_single_stream(server, tmp_path):
    download(f"{server.url}/f.bin", tmp_path / "a.bin", Expected(size=len(DATA), sha256=SHA), policy=FAST, segmenting=Segmenting(connections=1, threshold=MiB))
    download(f"{server.url}/f.bin", tmp_path / "b.bin", Expected(size=len(DATA), sha256=SHA), policy=FAST, segmenting=Segmenting(threshold=8 * MiB))
    assert [r.headers.get("Range") for r in gets(server)] == [None, None]


def test_settings_from_the_environment():
    assert Segmenting.from_env({}) == Segmenting()
    got = Segmenting.from_env({"VLMDATA_DOWNLOAD_CONNECTIONS": "16", "VLMDATA_SEGMENTED_FROM": "1G"})
    assert (got.connections, got.threshold) == (16, 1 << 30)
    assert Segmenting.from_env({"VLMDATA_SEGMENTED_FROM": "512MiB"}).threshold == 512 * MiB
    with pytest.raises(ValueError, match="VLMDATA_DOWNLOAD_CONNECTIONS must be a whole number"):
        Segmenting.from_env({"VLMDATA_DOWNLOAD_CONNECTIONS": "many"})
    with pytest.raises(ValueError, match="VLMDATA_SEGMENTED_FROM must be a size"):
        Segmenting.from_env({"VLMDATA_SEGMENTED_FROM": "64 MB/s"})


def test_the_connections_share_one_retry_budget(server, tmp_path):
    """Eight connections must not wait eight times as long as one stream would (task timeouts)."""
    server.script("/f.bin", throttle(100 * MiB), *[status(503)] * 20)  # the first answer is fine, then 503s
    with pytest.raises(FetchError, match="giving up after 3 attempts: HTTP 503"):
        download(f"{server.url}/f.bin", tmp_path / "f.bin", Expected(size=len(DATA), sha256=SHA), policy=RetryPolicy(attempts=3, backoff=0.01), segmenting=SPLIT)
    answered_503 = 20 - server.pending_faults("/f.bin")
    assert 3 <= answered_503 <= 3 + SPLIT.connections - 1  # 3 failures in all (and those already in flight), not 3 per connection


def test_a_download_stopped_before_its_rename_only_hashes_again(server, tmp_path):
    """Every piece written, then the worker died before the rename: no byte is fetched again."""
    (tmp_path / "f.bin.part").write_bytes(DATA)
    state = {"url": "", "validator": server.add("/f.bin", DATA).etag, "size": len(DATA), "untaken": len(DATA), "pieces": []}
    (tmp_path / "f.bin.part.segments.json").write_text(json.dumps(state))
    got = download(f"{server.url}/f.bin", tmp_path / "f.bin", Expected(size=len(DATA), sha256=SHA), policy=FAST, segmenting=SPLIT)
    assert got.sha256 == SHA and (tmp_path / "f.bin").read_bytes() == DATA and gets(server) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_more_connections_than_requests_pools_by_default(server, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="urllib3"):
        download(f"{server.url}/f.bin", tmp_path / "f.bin", Expected(size=len(DATA), sha256=SHA), policy=FAST,
                 segmenting=Segmenting(connections=16, threshold=MiB, min_piece=64 << 10))
    assert (tmp_path / "f.bin").read_bytes() == DATA
    assert "pool is full" not in caplog.text  # no connection opened only to be thrown away after its piece


def test_progress_is_logged(server, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="vlmdata.fetch"):
        download(f"{server.url}/f.bin", tmp_path / "f.bin", Expected(size=len(DATA), sha256=SHA), policy=FAST, segmenting=SPLIT, progress_every=0)
    assert "f.bin: 4.0 MiB of 4.0 MiB (100.0%)" in caplog.text


def test_a_killed_worker_is_resumed_piece_by_piece(server, tmp_path):
    """SIGKILL mid-download (no clean-up at all): the next attempt fetches what the segment state
    says is missing, piece by piece, and the file verifies."""
    dest = tmp_path / "f.bin"
    state_file = tmp_path / "f.bin.part.segments.json"
    server.script("/f.bin", *[throttle(256 << 10)] * 4)  # 4 pieces of 1 MiB, 4 s each
    code = (
        "import sys; from pathlib import Path; from vlmdata.fetch.http import download; from vlmdata.fetch.digest import Expected\n"
        "from vlmdata.fetch.segments import Segmenting\n"
        f"download({server.url + '/f.bin'!r}, Path({str(dest)!r}), Expected(size={len(DATA)}), segmenting=Segmenting(connections=4, threshold={MiB}, min_piece={MiB}))\n"
    )
    worker = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 120  # a loaded machine starts Python slowly
        while time.monotonic() < deadline and worker.poll() is None:
            state = json.loads(state_file.read_text()) if state_file.exists() else {"pieces": []}
            if sum(1 for start, end, done in state["pieces"] if done) >= 2:
                break
            time.sleep(0.1)
    finally:
        worker.kill()
        worker.wait()
    state = json.loads(state_file.read_text())
    missing = len(DATA) - state["untaken"] + sum(end - (start + done) for start, end, done in state["pieces"])
    assert sum(1 for start, end, done in state["pieces"] if done) >= 2 and missing < len(DATA)
    server.clear_requests()
    download(f"{server.url}/f.bin", dest, Expected(size=len(DATA), sha256=SHA), policy=FAST, segmenting=WHOLE)
    assert dest.read_bytes() == DATA
    assert sum(last - first + 1 for first, last in map(span, gets(server))) == missing
