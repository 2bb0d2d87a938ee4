"""The HTTP fetch core against a real loopback server with scripted faults."""

from __future__ import annotations

import hashlib
import logging

import pytest

from vlmdata.replicas.http_server import FakeHttpServer, corrupt, drop_after, ignore_range, reset_after, status
from vlmdata.fetch.digest import Expected, IntegrityError
from vlmdata.fetch.http import FetchError, RetryPolicy, download

DATA = bytes(range(256)) * 4096  # 1 MiB
SHA = hashlib.sha256(DATA).hexdigest()
FAST = RetryPolicy(attempts=5, backoff=0.01)


@pytest.fixture
def server():
    with FakeHttpServer() as srv:
        srv.add("/f.bin", DATA)
        yield srv


def ranges(srv) -> list[str | None]:
    return [r.headers.get("Range") for r in srv.requests if r.method == "GET"]


def test_plain_download_verifies_and_renames(server, tmp_path):
    got = download(f"{server.url}/f.bin", tmp_path / "f.bin", Expected(size=len(DATA), sha256=SHA), policy=FAST)
    assert (tmp_path / "f.bin").read_bytes() == DATA
    assert got.sha256 == SHA and got.size == len(DATA)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]  # no .part left behind


@pytest.mark.parametrize("fault", [drop_after(300_000), reset_after(300_000)], ids=["drop", "reset"])
def test_resumes_after_a_broken_connection(server, tmp_path, waits, fault):
    server.script("/f.bin", fault)
    download(f"{server.url}/f.bin", tmp_path / "f.bin", Expected(sha256=SHA), policy=FAST)
    assert (tmp_path / "f.bin").read_bytes() == DATA
    sent = ranges(server)
    assert len(sent) == 2 and sent[0] is None
    resumed_at = int(sent[1].removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_at <= 300_000  # resumed from the bytes on disk, not restarted
    assert server.requests[-1].headers.get("If-Range")  # guarded against a changed upstream


def test_retry_after_is_honoured_on_429_and_503_is_retried(server, tmp_path, waits):
    server.script("/f.bin", status(429, retry_after=7), status(503))
    download(f"{server.url}/f.bin", tmp_path / "f.bin", Expected(sha256=SHA), policy=FAST)
    assert waits[0] == 7  # the server's Retry-After, not our backoff
    assert len(waits) == 2 and waits[1] < 1
    assert (tmp_path / "f.bin").read_bytes() == DATA


def test_server_ignoring_range_means_start_over(server, tmp_path, waits):
    server.script("/f.bin", drop_after(500_000), ignore_range())
    download(f"{server.url}/f.bin", tmp_path / "f.bin", Expected(sha256=SHA), policy=FAST)
    assert (tmp_path / "f.bin").read_bytes() == DATA  # not 500 kB of old bytes + the whole file


def test_changed_etag_mid_download_restarts_with_the_new_version(server, tmp_path, waits):
    new = DATA[::-1]
    server.script("/f.bin", drop_after(400_000))
    dest = tmp_path / "f.bin"
    with pytest.raises(FetchError):
        download(f"{server.url}/f.bin", dest, policy=RetryPolicy(attempts=1))
    server.replace("/f.bin", new)  # upstream changes while we were away
    got = download(f"{server.url}/f.bin", dest, policy=FAST)
    assert dest.read_bytes() == new and got.sha256 == hashlib.sha256(new).hexdigest()
    assert server.requests[-1].headers.get("If-Range")  # the 200 answer to If-Range made us restart


def test_a_killed_download_resumes_from_the_bytes_on_disk(server, tmp_path, waits):
    """A worker killed mid-download leaves the .part; the next task attempt continues it."""
    server.script("/f.bin", drop_after(600_000))
    dest = tmp_path / "f.bin"
    with pytest.raises(FetchError, match="re-running resumes"):
        download(f"{server.url}/f.bin", dest, policy=RetryPolicy(attempts=1))
    on_disk = (tmp_path / "f.bin.part").stat().st_size
    assert 600_000 - (1 << 16) < on_disk <= 600_000  # at most the chunk being read is lost
    assert not dest.exists()
    download(f"{server.url}/f.bin", dest, Expected(sha256=SHA), policy=FAST)
    assert dest.read_bytes() == DATA
    assert ranges(server)[-1] == f"bytes={on_disk}-"


def test_flipped_byte_is_caught_and_fetched_again(server, tmp_path, waits, caplog):
    server.script("/f.bin", corrupt(12345))
    with caplog.at_level(logging.WARNING):
        download(f"{server.url}/f.bin", tmp_path / "f.bin", Expected(sha256=SHA), policy=FAST)
    assert (tmp_path / "f.bin").read_bytes() == DATA
    assert "do not verify" in caplog.text


def test_persistently_wrong_bytes_fail_and_leave_nothing(server, tmp_path, waits):
    server.script("/f.bin", corrupt(1), corrupt(2))
    with pytest.raises(IntegrityError, match="sha256"):
        download(f"{server.url}/f.bin", tmp_path / "f.bin", Expected(sha256=SHA), policy=FAST)
    assert list(tmp_path.iterdir()) == []


def test_md5_only_catalog_entries_are_checked(server, tmp_path, waits):
    wrong = hashlib.md5(b"other").hexdigest()
    with pytest.raises(IntegrityError, match="md5"):
        download(f"{server.url}/f.bin", tmp_path / "f.bin", Expected(md5=wrong), policy=FAST)
    got = download(f"{server.url}/f.bin", tmp_path / "f.bin", Expected(md5=hashlib.md5(DATA).hexdigest()), policy=FAST)
    assert got.md5 == hashlib.md5(DATA).hexdigest()


def test_size_mismatch_is_an_integrity_error(server, tmp_path, waits):
    with pytest.raises(IntegrityError, match="size"):
        download(f"{server.url}/f.bin", tmp_path / "f.bin", Expected(size=len(DATA) + 1), policy=FAST)


def test_dead_url_gets_a_clear_error_without_retries(server, tmp_path, waits):
    with pytest.raises(FetchError, match="404.*not found upstream"):
        download(f"{server.url}/gone.zip", tmp_path / "gone.zip", policy=FAST)
    assert waits == []


def test_retries_are_bounded(server, tmp_path, waits):
    server.script("/f.bin", *[status(503)] * 5)
    with pytest.raises(FetchError, match="giving up after 5 attempts: HTTP 503"):
        download(f"{server.url}/f.bin", tmp_path / "f.bin", policy=FAST)


def test_resume_without_a_validator_restarts_instead_of_splicing(tmp_path, waits):
    with FakeHttpServer() as srv:
        srv.add("/n.bin", DATA, etag=None, last_modified=None)
        srv.script("/n.bin", drop_after(100_000))
        download(f"{srv.url}/n.bin", tmp_path / "n.bin", Expected(sha256=SHA), policy=FAST)
        assert ranges(srv) == [None, None]


def test_progress_is_logged(server, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="vlmdata.fetch"):
        download(f"{server.url}/f.bin", tmp_path / "f.bin", Expected(size=len(DATA)), policy=FAST, progress_every=0)
    assert "f.bin: 1.0 MiB of 1.0 MiB (100.0%)" in caplog.text


def test_an_html_page_answering_a_resume_keeps_the_partial(tmp_path, waits):
    """Drive may answer a resume with its quota page: the bytes on disk must survive it."""
    with FakeHttpServer() as srv:
        original = srv.add("/f.bin", DATA)
        srv.script("/f.bin", drop_after(300_000))
        with pytest.raises(FetchError):
            download(f"{srv.url}/f.bin", tmp_path / "f.bin", policy=RetryPolicy(attempts=1))
        kept = (tmp_path / "f.bin.part").stat().st_size
        srv.add("/f.bin", b"<html>Too many users have viewed this file</html>", content_type="text/html")
        with pytest.raises(FetchError, match="HTML page instead"):
            download(f"{srv.url}/f.bin", tmp_path / "f.bin", policy=RetryPolicy(attempts=2, backoff=0.01))
        assert (tmp_path / "f.bin.part").stat().st_size == kept
        srv.add("/f.bin", DATA, etag=original.etag, last_modified=original.last_modified)  # the quota lifts
        download(f"{srv.url}/f.bin", tmp_path / "f.bin", Expected(sha256=SHA), policy=FAST)
        assert (tmp_path / "f.bin").read_bytes() == DATA
        assert ranges(srv)[-1] == f"bytes={kept}-"


def test_range_reader_reads_what_is_asked_and_notices_a_changed_file(server, waits):
    from vlmdata.fetch.http import RangeReader

    reader = RangeReader(f"{server.url}/f.bin", policy=FAST, readahead=4096)
    reader.seek(100_000)
    assert reader.read(10) == DATA[100_000:100_010] and reader.read(100) == DATA[100_010:100_110]  # one range serves both
    assert reader.size == len(DATA) and reader.requests == 1
    assert reader.seek(-5, 2) == len(DATA) - 5 and reader.read(100) == DATA[-5:] and reader.read(1) == b""
    server.script("/f.bin", reset_after(10))
    reader.seek(500_000)
    assert reader.read(8000) == DATA[500_000:508_000]  # a reset range is fetched again
    assert ranges(server)[-1] == "bytes=500000-507999" and len(waits) == 1
    server.replace("/f.bin", DATA[::-1])
    reader.seek(0)
    with pytest.raises(FetchError, match="changed while it was being read"):
        reader.read(1)


def test_giving_up_says_whether_a_partial_file_was_kept(tmp_path, waits):
    """The hint after the retries tells the truth about what is left on disk."""
    from vlmdata.fetch.http import FetchError, RetryPolicy, download
    from vlmdata.replicas.http_server import FakeHttpServer, drop_after, status

    with FakeHttpServer() as http:
        http.add("/nothing.bin", b"x" * 200_000)
        http.script("/nothing.bin", *[status(503)] * 3)
        with pytest.raises(FetchError, match=r"giving up after 3 attempts: HTTP 503\. Nothing was downloaded\."):
            download(f"{http.url}/nothing.bin", tmp_path / "nothing.bin", policy=RetryPolicy(attempts=3))
        http.add("/some.bin", b"y" * 200_000)
        http.script("/some.bin", drop_after(140_000), *[status(503)] * 2)
        with pytest.raises(FetchError, match=r"The partial file is kept; re-running resumes it\."):
            download(f"{http.url}/some.bin", tmp_path / "some.bin", policy=RetryPolicy(attempts=3))
        assert (tmp_path / "some.bin.part").stat().st_size == 131072
