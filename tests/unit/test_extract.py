"""vlmdata.extract: hostile archives write nothing; good ones land where the catalog says, resumably."""

from __future__ import annotations

import io
import stat
import time
import zipfile
import zlib
from pathlib import Path

import pytest

from vlmdata.replicas.data import jpeg_bytes, make_zip, png_bytes
from vlmdata.catalog import Extract
from vlmdata.extract import Limits, UnsafeArchive, extract_zip, plan
from vlmdata.storage import DiskFullError, LocalStorage
from tests.unit.archive_helpers import WriteSpy, files_under, write_archive

FOLDER = "data/src/images"
GOOD = {"ok/1.jpg": jpeg_bytes(seed=1), "ok/2.jpg": jpeg_bytes(seed=2)}


def _spec(**kwargs) -> Extract:
    return Extract(into=FOLDER, **kwargs)


def _zip_with(members: list[tuple[str, bytes, int | None]], compress=zipfile.ZIP_DEFLATED) -> bytes:
    """A zip from (name, data, mode) triples; mode (st_mode bits) goes to external_attr when given."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name, date_time=(2017, 1, 1, 0, 0, 0))
            info.compress_type = compress
            if mode is not None:
                info.external_attr = mode << 16
            zf.writestr(info, data)
    return buf.getvalue()


def _write(tmp_path: Path, data: bytes, name: str = "archive.zip") -> Path:
    return write_archive(tmp_path, data, name)


# ---------------------------------------------------------------- hostile archives

GOOD_FIRST = [("ok/1.jpg", GOOD["ok/1.jpg"], 0o100644), ("ok/2.jpg", GOOD["ok/2.jpg"], 0o100644)]

HOSTILE = {
    "traversal": [("../evil.jpg", b"evil", 0o100644)],
    "nested traversal": [("a/../../evil", b"evil", 0o100644)],
    "absolute": [("/etc/x", b"evil", 0o100644)],
    "drive letter": [("C:/evil.jpg", b"evil", 0o100644)],
    "symlink": [("ok/link.jpg", b"/etc/passwd", stat.S_IFLNK | 0o777)],
    "char device": [("ok/dev", b"", stat.S_IFCHR | 0o644)],
    "block device": [("ok/blk", b"", stat.S_IFBLK | 0o644)],
    "fifo": [("ok/fifo", b"", stat.S_IFIFO | 0o644)],
    "socket": [("ok/sock", b"", stat.S_IFSOCK | 0o644)],
    "backslash": [("ok\\..\\..\\evil.jpg", b"evil", 0o100644)],
    "plain backslash": [("dir\\x.jpg", b"evil", 0o100644)],
}

EXPECTED_REASON = {
    "traversal": r"'\.\.'",
    "nested traversal": r"'\.\.'",
    "absolute": "absolute",
    "drive letter": "absolute",
    "symlink": "symbolic link",
    "char device": "special file",
    "block device": "special file",
    "fifo": "special file",
    "socket": "special file",
    "backslash": "backslash",
    "plain backslash": "backslash",
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_member_writes_nothing(case, tmp_path, monkeypatch):
    # Good members come first: an extractor that checked as it wrote would already have written them.
    archive = _write(tmp_path, _zip_with(GOOD_FIRST + HOSTILE[case]))
    store = LocalStorage(tmp_path / "root")
    spy = WriteSpy(store, monkeypatch)
    with pytest.raises(UnsafeArchive, match=EXPECTED_REASON[case]):
        extract_zip(archive, store, FOLDER, _spec())
    assert spy.keys == []
    assert files_under(tmp_path) == ["in/archive.zip"]  # nothing in the root, nothing beside it


def test_members_without_a_file_type_are_regular_files(tmp_path):
    """Many zip writers store permission bits only (or nothing, on Windows): those are plain files."""
    archive = _write(tmp_path, _zip_with([("p/perm-only.jpg", b"1", 0o644), ("p/dos.jpg", b"2", 0), ("p/regular.jpg", b"3", 0o100600)]))
    store = LocalStorage(tmp_path / "root")
    index = extract_zip(archive, store, FOLDER, _spec())
    assert sorted(key for key, _, _ in index) == [f"{FOLDER}/p/dos.jpg", f"{FOLDER}/p/perm-only.jpg", f"{FOLDER}/p/regular.jpg"]
    assert store.read_bytes(f"{FOLDER}/p/perm-only.jpg") == b"1"


def test_unsafe_archive_message_names_the_member(tmp_path):
    archive = _write(tmp_path, _zip_with(GOOD_FIRST + [("a/../../evil", b"evil", 0o100644)]))
    with pytest.raises(UnsafeArchive) as info:
        extract_zip(archive, LocalStorage(tmp_path / "root"), FOLDER, _spec())
    assert "a/../../evil" in str(info.value)


def test_unsafe_archive_on_both_backends(storage, tmp_path, monkeypatch):
    archive = _write(tmp_path, _zip_with(GOOD_FIRST + HOSTILE["symlink"]))
    spy = WriteSpy(storage, monkeypatch)
    with pytest.raises(UnsafeArchive):
        extract_zip(archive, storage, FOLDER, _spec())
    assert spy.keys == []
    assert list(storage.list(FOLDER)) == []


def test_traversal_is_refused_even_when_strip_components_would_drop_it(tmp_path):
    archive = _write(tmp_path, _zip_with([("../x/ok.jpg", b"1", 0o100644)]))
    with pytest.raises(UnsafeArchive):
        extract_zip(archive, LocalStorage(tmp_path / "root"), FOLDER, _spec(strip_components=1))


def test_two_members_landing_on_the_same_path_with_flatten(tmp_path, monkeypatch):
    archive = _write(tmp_path, make_zip({"a/x.jpg": jpeg_bytes(seed=1), "b/x.jpg": jpeg_bytes(seed=2)}))
    store = LocalStorage(tmp_path / "root")
    spy = WriteSpy(store, monkeypatch)
    with pytest.raises(UnsafeArchive, match="both land") as info:
        extract_zip(archive, store, FOLDER, _spec(flatten=True))
    assert "a/x.jpg" in str(info.value) and "b/x.jpg" in str(info.value)
    assert spy.keys == []
    assert files_under(tmp_path) == ["in/archive.zip"]


def test_same_names_in_different_folders_are_fine_without_flatten(tmp_path):
    archive = _write(tmp_path, make_zip({"a/x.jpg": b"1", "b/x.jpg": b"2"}))
    store = LocalStorage(tmp_path / "root")
    extract_zip(archive, store, FOLDER, _spec())
    assert store.read_bytes(f"{FOLDER}/a/x.jpg") == b"1"
    assert store.read_bytes(f"{FOLDER}/b/x.jpg") == b"2"


def test_zip_bomb_is_refused(tmp_path, monkeypatch):
    zeros = bytes(50 * 1024 * 1024)
    data = _zip_with(GOOD_FIRST + [("ok/bomb.bin", zeros, 0o100644)])
    assert len(data) < 50 * 1024 * 1024 / 200  # the deflated member really is a ratio > 200
    archive = _write(tmp_path, data)
    store = LocalStorage(tmp_path / "root")
    spy = WriteSpy(store, monkeypatch)
    with pytest.raises(UnsafeArchive, match="zip bomb") as info:
        extract_zip(archive, store, FOLDER, _spec())
    assert "ok/bomb.bin" in str(info.value)
    assert spy.keys == []
    assert files_under(tmp_path) == ["in/archive.zip"]


def test_small_compressible_members_are_not_bombs(tmp_path):
    """A ratio check on tiny files would refuse every text file: it only applies above 1 MiB."""
    archive = _write(tmp_path, _zip_with([("notes.txt", bytes(500_000), 0o100644)]))
    store = LocalStorage(tmp_path / "root")
    extract_zip(archive, store, FOLDER, _spec())
    assert store.size(f"{FOLDER}/notes.txt") == 500_000


def test_max_members_exceeded(tmp_path, monkeypatch):
    archive = _write(tmp_path, make_zip({f"m/{i}.jpg": b"x" for i in range(5)}))
    store = LocalStorage(tmp_path / "root")
    spy = WriteSpy(store, monkeypatch)
    with pytest.raises(UnsafeArchive, match="limit of 4"):
        extract_zip(archive, store, FOLDER, _spec(), limits=Limits(max_members=4))
    assert spy.keys == []
    # At the limit it is fine.
    index = extract_zip(archive, store, FOLDER, _spec(), limits=Limits(max_members=5))
    assert len(index) == 5


def test_max_total_bytes_exceeded(tmp_path, monkeypatch):
    archive = _write(tmp_path, make_zip({"a.bin": b"a" * 600, "b.bin": b"b" * 600}))
    store = LocalStorage(tmp_path / "root")
    spy = WriteSpy(store, monkeypatch)
    with pytest.raises(UnsafeArchive, match="limit of 1000 bytes"):
        extract_zip(archive, store, FOLDER, _spec(), limits=Limits(max_total_bytes=1000))
    assert spy.keys == []
    assert files_under(tmp_path) == ["in/archive.zip"]
    assert len(extract_zip(archive, store, FOLDER, _spec(), limits=Limits(max_total_bytes=1200))) == 2


def test_lying_header_cannot_write_more_than_declared(tmp_path):
    """A member whose local data is longer than its declared size: only the declared bytes are read."""
    data = bytearray(_zip_with([("x.bin", b"A" * 100, 0o100644)], compress=zipfile.ZIP_STORED))
    # Shrink the declared size in the central directory to 10 bytes (CRC of the first 10 bytes too).
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        info = zf.infolist()[0]
    cd = data.rfind(b"PK\x01\x02")
    data[cd + 16:cd + 20] = zlib.crc32(b"A" * 10).to_bytes(4, "little")
    data[cd + 20:cd + 24] = (10).to_bytes(4, "little")
    data[cd + 24:cd + 28] = (10).to_bytes(4, "little")
    assert info.file_size == 100
    archive = _write(tmp_path, bytes(data))
    store = LocalStorage(tmp_path / "root")
    index = extract_zip(archive, store, FOLDER, _spec())
    assert index == [[f"{FOLDER}/x.bin", 10, zlib.crc32(b"A" * 10)]]
    assert store.read_bytes(f"{FOLDER}/x.bin") == b"A" * 10


# ---------------------------------------------------------------- normal extraction (both backends)


def _coco_zip() -> tuple[bytes, dict[str, bytes]]:
    members = {
        "train2017/": b"",
        "train2017/000000000001.jpg": jpeg_bytes(seed=1),
        "train2017/000000000002.jpg": jpeg_bytes(seed=2),
        "train2017/sub/": b"",
        "train2017/sub/000000000003.png": png_bytes(seed=3),
        "train2017/README.txt": b"read me",
    }
    return make_zip(members), members


def test_plain_extraction_and_index(storage, tmp_path):
    data, members = _coco_zip()
    archive = _write(tmp_path, data)
    index = extract_zip(archive, storage, FOLDER, _spec())
    files = {name: body for name, body in members.items() if not name.endswith("/")}
    expected = sorted([f"{FOLDER}/{name}", len(body), zlib.crc32(body)] for name, body in files.items())
    assert sorted(index) == expected
    for name, body in files.items():
        assert storage.read_bytes(f"{FOLDER}/{name}") == body
    # Folders are not objects; only the four files exist.
    assert sorted(dict(storage.list(FOLDER))) == sorted(f"{FOLDER}/{name}" for name in files)
    assert all(key.startswith(FOLDER + "/") for key, _, _ in index)


def test_strip_components(storage, tmp_path):
    data, members = _coco_zip()
    index = extract_zip(_write(tmp_path, data), storage, FOLDER, _spec(strip_components=1))
    assert sorted(key for key, _, _ in index) == [
        f"{FOLDER}/000000000001.jpg",
        f"{FOLDER}/000000000002.jpg",
        f"{FOLDER}/README.txt",
        f"{FOLDER}/sub/000000000003.png",
    ]
    assert storage.read_bytes(f"{FOLDER}/sub/000000000003.png") == members["train2017/sub/000000000003.png"]
    assert storage.size(f"{FOLDER}/train2017/000000000001.jpg") is None


def test_strip_components_drops_members_with_too_few_parts(tmp_path):
    archive = _write(tmp_path, make_zip({"top.txt": b"t", "a/b/c.jpg": b"c"}))
    store = LocalStorage(tmp_path / "root")
    index = extract_zip(archive, store, FOLDER, _spec(strip_components=2))
    assert [key for key, _, _ in index] == [f"{FOLDER}/c.jpg"]


def test_flatten(storage, tmp_path):
    data, members = _coco_zip()
    index = extract_zip(_write(tmp_path, data), storage, FOLDER, _spec(flatten=True))
    assert sorted(key for key, _, _ in index) == [
        f"{FOLDER}/000000000001.jpg",
        f"{FOLDER}/000000000002.jpg",
        f"{FOLDER}/000000000003.png",
        f"{FOLDER}/README.txt",
    ]
    assert storage.read_bytes(f"{FOLDER}/000000000003.png") == members["train2017/sub/000000000003.png"]


def test_include_globs(storage, tmp_path):
    data, _ = _coco_zip()
    index = extract_zip(_write(tmp_path, data), storage, FOLDER, _spec(include=["*.jpg", "*/sub/*.png"]))
    assert sorted(key for key, _, _ in index) == [
        f"{FOLDER}/train2017/000000000001.jpg",
        f"{FOLDER}/train2017/000000000002.jpg",
        f"{FOLDER}/train2017/sub/000000000003.png",
    ]
    assert storage.size(f"{FOLDER}/train2017/README.txt") is None
    assert sorted(dict(storage.list(FOLDER))) == sorted(key for key, _, _ in index)


def test_include_matches_the_path_after_strip_components(tmp_path):
    data, _ = _coco_zip()
    store = LocalStorage(tmp_path / "root")
    index = extract_zip(_write(tmp_path, data), store, FOLDER, _spec(strip_components=1, include=["sub/*"]))
    assert [key for key, _, _ in index] == [f"{FOLDER}/sub/000000000003.png"]


def test_plan_skips_folders():
    data, _ = _coco_zip()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        paths = [m.path for m in plan(zf, _spec())]
    assert paths == [
        "train2017/000000000001.jpg",
        "train2017/000000000002.jpg",
        "train2017/sub/000000000003.png",
        "train2017/README.txt",
    ]


def test_skip_present_resumes_without_rewriting(storage, tmp_path, monkeypatch):
    data, _ = _coco_zip()
    archive = _write(tmp_path, data)
    first = extract_zip(archive, storage, FOLDER, _spec())
    spy = WriteSpy(storage, monkeypatch)
    second = extract_zip(archive, storage, FOLDER, _spec())
    assert spy.keys == []
    assert second == first  # the index is complete even when nothing was written


def test_skip_present_writes_only_what_is_missing_or_wrong(storage, tmp_path, monkeypatch):
    data, members = _coco_zip()
    archive = _write(tmp_path, data)
    extract_zip(archive, storage, FOLDER, _spec())
    storage.delete(f"{FOLDER}/train2017/000000000001.jpg")  # never written by the killed run
    storage.write_bytes(f"{FOLDER}/train2017/000000000002.jpg", b"short")  # wrong size
    spy = WriteSpy(storage, monkeypatch)
    extract_zip(archive, storage, FOLDER, _spec())
    assert sorted(spy.keys) == [f"{FOLDER}/train2017/000000000001.jpg", f"{FOLDER}/train2017/000000000002.jpg"]
    for name in ("train2017/000000000001.jpg", "train2017/000000000002.jpg"):
        assert storage.read_bytes(f"{FOLDER}/{name}") == members[name]


def test_skip_present_false_rewrites_everything(storage, tmp_path, monkeypatch):
    data, members = _coco_zip()
    archive = _write(tmp_path, data)
    extract_zip(archive, storage, FOLDER, _spec())
    # Same size, different bytes: only a rewrite restores the archive's content.
    key = f"{FOLDER}/train2017/README.txt"
    storage.write_bytes(key, b"READ ME")
    spy = WriteSpy(storage, monkeypatch)
    extract_zip(archive, storage, FOLDER, _spec(), skip_present=False)
    assert len(spy.keys) == 4
    assert storage.read_bytes(key) == b"read me"


def test_skip_present_with_local_mtimes(tmp_path):
    data, _ = _coco_zip()
    archive = _write(tmp_path, data)
    store = LocalStorage(tmp_path / "root")
    extract_zip(archive, store, FOLDER, _spec())
    target = store.root / FOLDER / "train2017/000000000001.jpg"
    before = target.stat()
    extract_zip(archive, store, FOLDER, _spec())
    assert target.stat().st_ino == before.st_ino and target.stat().st_mtime_ns == before.st_mtime_ns
    extract_zip(archive, store, FOLDER, _spec(), skip_present=False)
    assert target.stat().st_ino != before.st_ino  # replaced by a fresh atomic write


# ---------------------------------------------------------------- corrupt archives


def _corrupt_member_zip() -> bytes:
    body = jpeg_bytes(seed=5)
    data = bytearray(_zip_with([("a/first.jpg", jpeg_bytes(seed=4), 0o100644), ("a/broken.jpg", body, 0o100644)], compress=zipfile.ZIP_STORED))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        info = zf.getinfo("a/broken.jpg")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    assert data[start:start + len(body)] == body
    data[start + len(body) // 2] ^= 0xFF  # one flipped byte: the stored CRC no longer matches
    return bytes(data)


def test_corrupt_member_raises_bad_zip_naming_the_member(storage, tmp_path):
    archive = _write(tmp_path, _corrupt_member_zip(), "images.zip")
    with pytest.raises(zipfile.BadZipFile) as info:
        extract_zip(archive, storage, FOLDER, _spec())
    message = str(info.value)
    assert "a/broken.jpg" in message and "images.zip" in message
    # The corrupt member never appears; what came before it is whole and kept for the next run.
    assert storage.size(f"{FOLDER}/a/broken.jpg") is None
    assert storage.read_bytes(f"{FOLDER}/a/first.jpg") == jpeg_bytes(seed=4)
    if isinstance(storage, LocalStorage):
        assert [p.name for p in (storage.root / FOLDER / "a").iterdir()] == ["first.jpg"]


def test_corrupt_deflated_member_raises_bad_zip(tmp_path):
    """Corruption inside a deflate stream may fail in zlib rather than at the CRC check."""
    body = jpeg_bytes(width=256, height=256, seed=6)
    data = bytearray(_zip_with([("d/broken.jpg", body, 0o100644)], compress=zipfile.ZIP_DEFLATED))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        info = zf.getinfo("d/broken.jpg")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for offset in range(10, info.compress_size - 10, 97):
        data[start + offset] ^= 0xA5
    archive = _write(tmp_path, bytes(data), "deflated.zip")
    store = LocalStorage(tmp_path / "root")
    with pytest.raises(zipfile.BadZipFile, match="d/broken.jpg"):
        extract_zip(archive, store, FOLDER, _spec())
    assert store.size(f"{FOLDER}/d/broken.jpg") is None


def test_not_a_zip_raises_bad_zip_naming_the_archive(storage, tmp_path):
    archive = _write(tmp_path, b"<html>rate limited</html>\n" * 50, "train2017.zip")
    with pytest.raises(zipfile.BadZipFile, match="train2017.zip"):
        extract_zip(archive, storage, FOLDER, _spec())
    assert list(storage.list(FOLDER)) == []


def test_truncated_zip_raises_bad_zip_naming_the_archive(tmp_path):
    data, _ = _coco_zip()
    archive = _write(tmp_path, data[: len(data) // 2], "cut.zip")
    with pytest.raises(zipfile.BadZipFile, match="cut.zip"):
        extract_zip(archive, LocalStorage(tmp_path / "root"), FOLDER, _spec())


# ------------------------------------------------------------- writes spread over threads


class _Overlap:
    """Wraps a storage's writes (write_bytes and write_stream, whichever the extraction uses):
    counts writes that overlap in time, and can fail one key."""

    def __init__(self, storage, monkeypatch, fail_key: str | None = None):
        import threading

        self.lock, self.now, self.most, self.done = threading.Lock(), 0, 0, []
        inner = threading.local()  # LocalStorage.write_bytes calls write_stream: count it once

        def slow(real):
            def write(key, data):
                if getattr(inner, "busy", False):
                    return real(key, data)
                with self.lock:
                    self.now += 1
                    self.most = max(self.most, self.now)
                inner.busy = True
                try:
                    time.sleep(0.02)  # a PUT's round trip: lets the next writes start meanwhile
                    if key == fail_key:
                        raise DiskFullError(f"no space left while writing {key}; free space and re-run (nothing partial was kept)")
                    result = real(key, data)
                    self.done.append(key)
                    return result
                finally:
                    inner.busy = False
                    with self.lock:
                        self.now -= 1

            return write

        for name in ("write_bytes", "write_stream"):
            monkeypatch.setattr(storage, name, slow(getattr(storage, name)))


def _many(count: int) -> dict[str, bytes]:
    return {f"img/{n:04d}.jpg": jpeg_bytes(seed=n) for n in range(count)}


def test_writes_overlap_where_the_storage_gains_from_threads_and_all_arrive(storage, tmp_path, monkeypatch):
    members = _many(24)
    archive = write_archive(tmp_path, make_zip(members), "many.zip")
    overlap = _Overlap(storage, monkeypatch)
    index = extract_zip(archive, storage, FOLDER, _spec())
    # S3: PUTs overlap, a slow round trip is not paid member after member; local: one at a time.
    assert (overlap.most > 1) == (storage.write_threads > 1) and (storage.write_threads > 1) == storage.url.startswith("s3://")
    assert sorted(overlap.done) == sorted(f"{FOLDER}/{name}" for name in members)
    assert [row[0] for row in index] == [f"{FOLDER}/{name}" for name in members]  # the index keeps the archive's order
    assert all(storage.read_bytes(f"{FOLDER}/{name}") == data for name, data in members.items())


def test_a_failed_write_stops_the_extraction_and_leaves_no_write_running(storage, tmp_path, monkeypatch):
    members = _many(100)  # more than the writes that may be queued (two per thread)
    archive = write_archive(tmp_path, make_zip(members), "many.zip")
    overlap = _Overlap(storage, monkeypatch, fail_key=f"{FOLDER}/img/0005.jpg")
    with pytest.raises(DiskFullError, match="img/0005.jpg"):
        extract_zip(archive, storage, FOLDER, _spec())
    assert overlap.now == 0  # every write had finished when the error reached the caller
    written = set(overlap.done)
    assert f"{FOLDER}/img/0099.jpg" not in written  # stopped early, not after reading everything
    assert {key for key, _ in storage.list(FOLDER)} == written  # complete files only; a re-run skips them


def test_big_members_stream_in_the_callers_thread(tmp_path):
    from vlmdata.extract import _Writers

    storage = LocalStorage(tmp_path / "root")
    big, small = b"b" * 5000, b"s" * 10
    with _Writers(storage, workers=4, inline_above=1000) as writers:
        writers.write("data/big.bin", io.BytesIO(big), len(big))
        assert storage.read_bytes("data/big.bin") == big  # already there: written before write() returned
        writers.write("data/small.bin", io.BytesIO(small), len(small))
    assert storage.read_bytes("data/small.bin") == small


# Members that would fail half-way through the writes: refused by the vetting, before any write.
WRITES_WOULD_FAIL = {
    "a file where a folder must be": ([("ok/a/b", b"file", 0o100644), ("ok/a/b/c.jpg", b"x", 0o100644)], "needs 'ok/a/b' as a folder"),
    "a folder where a file is": ([("ok/a/b/c.jpg", b"x", 0o100644), ("ok/a/b", b"file", 0o100644)], "needs as a folder"),
    "a name over 255 bytes": ([("ok/" + "n" * 240 + ".jpg", b"x", 0o100644)], "a name of 244 bytes, over the limit of 229"),
    "a path over 4 KiB": ([("/".join(["d" * 200] * 21) + "/x.jpg", b"x", 0o100644)], "its path is .* bytes, over the limit of 768"),
}


@pytest.mark.parametrize("case", sorted(WRITES_WOULD_FAIL))
def test_members_that_cannot_be_written_are_refused_before_any_write(case, storage, tmp_path, monkeypatch):
    members, reason = WRITES_WOULD_FAIL[case]
    archive = _write(tmp_path, _zip_with(GOOD_FIRST + members))
    spy = WriteSpy(storage, monkeypatch)
    with pytest.raises(UnsafeArchive, match=reason):
        extract_zip(archive, storage, FOLDER, _spec())
    assert spy.keys == [] and list(storage.list(FOLDER)) == []
