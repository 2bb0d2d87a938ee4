"""vlmdata.fetch.zip_members: the needed members of a remote zip, fetched alone over HTTP Range
requests from a real loopback server, on a local root and on S3 (moto's server)."""

from __future__ import annotations

import io
import random
import zipfile
import zlib

import pytest
from PIL import Image

from vlmdata.catalog import Extract
from vlmdata.extract import UnsafeArchive, extract_zip
from vlmdata.fetch.http import FetchError, RangeNotSupported, RetryPolicy
from vlmdata.fetch.zip_members import TAIL, Coalescing, fetch_members, wanted_members
from vlmdata.manifest import ArtifactRecord, PartialRead
from vlmdata.replicas.http_server import FakeHttpServer, Fault, ignore_range, status
from vlmdata.storage import LocalStorage
from tests.unit.archive_helpers import WriteSpy, files_under
from tests.unit.test_extract import EXPECTED_REASON, GOOD_FIRST, HOSTILE, _zip_with

FOLDER = "data/coco/train2017"
SPEC = Extract(into="coco/train2017", strip_components=1)  # members are train2017/<name>.jpg, as COCO's zip
POLICY = RetryPolicy(attempts=3, backoff=0.05, max_wait=0.2)


def _photo(seed: int, side: int = 160) -> bytes:
    """A JPEG of noise: it compresses as little as a photo does (~20 KB here, COCO's are ~160 KB)."""
    buf = io.BytesIO()
    Image.frombytes("RGB", (side, side), random.Random(seed).randbytes(side * side * 3)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


IMAGES = {f"{n:012d}.jpg": _photo(n) for n in range(200)}


def _coco_zip(images: dict[str, bytes] = IMAGES) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in images.items():
            zf.writestr(zipfile.ZipInfo(f"train2017/{name}", date_time=(2017, 1, 1, 0, 0, 0)), data, zipfile.ZIP_DEFLATED)
    return buf.getvalue()


ARCHIVE = _coco_zip()


@pytest.fixture
def server():
    with FakeHttpServer() as srv:
        srv.add("/zips/train2017.zip", ARCHIVE)
        yield srv


def _span_bytes(archive: bytes, names: list[str]) -> int:
    """Bytes the named members occupy: local header to the next member (the least a fetch moves)."""
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        starts = sorted([i.header_offset for i in zf.infolist()] + [zf.start_dir])
        following = dict(zip(starts, starts[1:]))
        return sum(following[zf.getinfo(f"train2017/{n}").header_offset] - zf.getinfo(f"train2017/{n}").header_offset for n in names)


def _fetch(srv, wanted, storage, **options):
    return fetch_members(f"{srv.url}/zips/train2017.zip", wanted, storage, FOLDER, SPEC, policy=POLICY, **options)


def test_a_tenth_of_the_members_moves_about_a_tenth_of_the_bytes(server, storage):
    wanted = list(IMAGES)[::10]  # 20 of 200, spread over the archive
    result = _fetch(server, wanted, storage)

    sent = server.bytes_sent("/zips/train2017.zip")
    assert sent == result.bytes_moved
    assert sent <= _span_bytes(ARCHIVE, wanted) + TAIL + 1  # the members, the archive's end, the size probe
    assert sent <= 0.1 * len(ARCHIVE) + TAIL + 1
    # One request for the size, one for the end (the central directory is inside), one per member: none merged (no small gaps).
    assert server.count("GET", "/zips/train2017.zip") == result.requests == 2 + len(wanted)
    assert sorted(key.rsplit("/", 1)[1] for key, _ in storage.list(FOLDER)) == sorted(wanted)
    for name in wanted:
        data = storage.read_bytes(f"{FOLDER}/{name}")
        assert data == IMAGES[name]
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    assert result.fetched == 20 and result.members_in_archive == 200 and result.archive_size == len(ARCHIVE)
    assert sorted(result.index) == sorted([f"{FOLDER}/{n}", len(IMAGES[n]), zlib.crc32(IMAGES[n])] for n in wanted)
    assert result.not_in_archive == []


def test_a_later_call_fetches_only_the_members_still_missing(server, storage):
    first = list(IMAGES)[:200:10]
    _fetch(server, first, storage)
    server.clear_requests()
    more = list(IMAGES)[5:200:10]
    result = _fetch(server, first + more, storage)

    assert result.fetched == len(more) and len(result.index) == len(first) + len(more)
    assert server.bytes_sent("/zips/train2017.zip") <= _span_bytes(ARCHIVE, more) + TAIL + 1
    assert {key.rsplit("/", 1)[1] for key, _ in storage.list(FOLDER)} == set(first + more)
    assert all(storage.read_bytes(f"{FOLDER}/{n}") == IMAGES[n] for n in first + more)
    # Nothing missing: the central directory is read, no member.
    server.clear_requests()
    again = _fetch(server, first + more, storage)
    assert again.fetched == 0 and server.count("GET", "/zips/train2017.zip") == 2 and len(again.index) == 40


def test_neighbours_share_a_request_and_every_member_equals_a_full_extraction(server, tmp_path):
    storage = LocalStorage(tmp_path / "root")
    result = _fetch(server, list(IMAGES), storage)  # everything: contiguous, one request
    assert result.requests == 3 and result.fetched == 200
    full = LocalStorage(tmp_path / "full")
    (tmp_path / "whole.zip").write_bytes(ARCHIVE)
    index = extract_zip(tmp_path / "whole.zip", full, FOLDER, SPEC)
    assert sorted(result.index) == sorted(index)
    assert files_under(tmp_path / "root") == files_under(tmp_path / "full")


def test_zip64_archive(tmp_path, monkeypatch):
    # Forced zip64: a zip64 end of central directory record and locator, zip64 extras in the
    # central directory (offsets) and longer local headers than the central directory says.
    with monkeypatch.context() as patched:
        patched.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 5)
        patched.setattr(zipfile, "ZIP64_LIMIT", 1000)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
            for name, data in list(IMAGES.items())[:30]:
                with zf.open(zipfile.ZipInfo(f"train2017/{name}", date_time=(2017, 1, 1, 0, 0, 0)), "w", force_zip64=True) as member:
                    member.write(data)
        archive = buf.getvalue()
    assert b"PK\x06\x06" in archive[-200:] and b"PK\x06\x07" in archive[-200:]  # zip64 end record and locator
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:  # local extra fields shorter than the central directory's
        info = zf.getinfo(f"train2017/{list(IMAGES)[3]}")
        assert int.from_bytes(archive[info.header_offset + 28 : info.header_offset + 30], "little") < len(info.extra)
    storage = LocalStorage(tmp_path / "root")
    wanted = list(IMAGES)[:30:3]
    with FakeHttpServer() as srv:
        srv.add("/zips/train2017.zip", archive)
        result = _fetch(srv, wanted, storage)
    assert result.fetched == len(wanted) and result.members_in_archive == 30
    assert all(storage.read_bytes(f"{FOLDER}/{n}") == IMAGES[n] for n in wanted)


def test_a_corrupt_member_raises_naming_it_and_never_reaches_its_final_path(storage):
    names = list(IMAGES)[:3]
    archive = bytearray(_coco_zip({n: IMAGES[n] for n in names}))
    with zipfile.ZipFile(io.BytesIO(bytes(archive))) as zf:
        info = zf.getinfo(f"train2017/{names[1]}")
    archive[info.header_offset + 30 + len(info.filename) + len(info.extra) + info.compress_size // 2] ^= 0xFF
    with FakeHttpServer() as srv:
        srv.add("/zips/train2017.zip", bytes(archive))
        with pytest.raises(zipfile.BadZipFile) as raised:
            _fetch(srv, names, storage)
    assert names[1] in str(raised.value) and "train2017.zip" in str(raised.value)
    assert storage.size(f"{FOLDER}/{names[1]}") is None
    assert storage.read_bytes(f"{FOLDER}/{names[0]}") == IMAGES[names[0]]  # written before, whole
    if isinstance(storage, LocalStorage):
        assert files_under(storage.root) == [f"{FOLDER}/{names[0]}"]  # no temporary file left


def test_a_local_header_that_disagrees_with_the_central_directory_is_refused(tmp_path):
    names = list(IMAGES)[:3]
    archive = bytearray(_coco_zip({n: IMAGES[n] for n in names}))
    with zipfile.ZipFile(io.BytesIO(bytes(archive))) as zf:
        info = zf.getinfo(f"train2017/{names[1]}")
    archive[info.header_offset + 30 + len("train2017/")] ^= 0x01  # the local header names another file
    with FakeHttpServer() as srv:
        srv.add("/zips/train2017.zip", bytes(archive))
        with pytest.raises(zipfile.BadZipFile, match=f"{names[1]}.*differ"):
            _fetch(srv, names[1:2], LocalStorage(tmp_path / "root"))
    assert files_under(tmp_path) == []


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_members_are_refused_as_in_a_full_extraction_even_unwanted(case, tmp_path, monkeypatch):
    storage = LocalStorage(tmp_path / "root")
    spy = WriteSpy(storage, monkeypatch)
    with FakeHttpServer() as srv:
        srv.add("/evil.zip", _zip_with(GOOD_FIRST + HOSTILE[case]))
        with pytest.raises(UnsafeArchive, match=EXPECTED_REASON[case]):
            fetch_members(f"{srv.url}/evil.zip", ["ok/1.jpg"], storage, "data/src/images", Extract(into="src/images"), policy=POLICY)
        assert srv.count("GET", "/evil.zip") == 2  # the size and the end: no member was fetched
    assert spy.keys == [] and files_under(tmp_path) == []


def test_a_server_that_ignores_range_raises_range_not_supported(server, tmp_path):
    server.script("/zips/train2017.zip", ignore_range())
    storage = LocalStorage(tmp_path / "root")
    with pytest.raises(RangeNotSupported, match="does not answer Range requests; download the whole file instead"):
        _fetch(server, list(IMAGES)[:5], storage)
    assert server.count("GET", "/zips/train2017.zip") == 1 and files_under(tmp_path) == []


def test_a_member_request_that_fails_for_a_while_is_retried(server, tmp_path):
    # The size and the end answer; then one member request gets a 503 (whichever of the 8 comes first).
    server.script("/zips/train2017.zip", Fault(), Fault(), status(503, retry_after=0))
    wanted = list(IMAGES)[::10]
    result = _fetch(server, wanted, LocalStorage(tmp_path / "root"))
    assert result.fetched == len(wanted) and server.count("GET", "/zips/train2017.zip") == 2 + len(wanted) + 1
    assert all(LocalStorage(tmp_path / "root").read_bytes(f"{FOLDER}/{n}") == IMAGES[n] for n in wanted)


def test_an_archive_that_changes_while_it_is_read_fails_the_read(server, tmp_path):
    # A member request answered 200: with If-Range, what a server sends when the validator no longer matches.
    server.script("/zips/train2017.zip", Fault(), Fault(), ignore_range())
    with pytest.raises(FetchError, match="changed while it was being read") as raised:
        _fetch(server, list(IMAGES)[::10], LocalStorage(tmp_path / "root"), coalescing=Coalescing(workers=1))
    assert not isinstance(raised.value, RangeNotSupported)
    assert files_under(tmp_path) == []  # the first member's request failed: nothing written


def test_a_member_larger_than_a_range_streams_in_chunks(tmp_path):
    big = {"big.jpg": _photo(7, side=1400), **dict(list(IMAGES.items())[:3])}  # ~1.6 MB
    archive = _coco_zip(big)
    with FakeHttpServer() as srv:
        srv.add("/zips/train2017.zip", archive)
        storage = LocalStorage(tmp_path / "root")
        result = _fetch(srv, ["big.jpg"], storage, coalescing=Coalescing(max_range=512 << 10, stream_chunk=256 << 10))
    assert storage.read_bytes(f"{FOLDER}/big.jpg") == big["big.jpg"]
    # The size, the end, then the member in several pieces (as zipfile and the writer read it), none read twice.
    assert result.requests >= 2 + 2
    assert result.bytes_moved <= _span_bytes(archive, ["big.jpg"]) + TAIL + 1


def test_wanted_paths_the_archive_lacks_are_reported(server, tmp_path):
    result = _fetch(server, ["000000000001.jpg", "elsewhere/x.jpg"], LocalStorage(tmp_path / "root"))
    assert result.fetched == 1 and result.not_in_archive == ["elsewhere/x.jpg"]


def test_the_manifest_records_a_partial_read_and_old_records_still_load(server, tmp_path):
    result = _fetch(server, list(IMAGES)[:10], LocalStorage(tmp_path / "root"))
    record = ArtifactRecord(name="train2017.zip", url=result.url, size=result.archive_size, sha256="", fetched_at="now", partial=result.record())
    loaded = ArtifactRecord.model_validate_json(record.model_dump_json())
    assert loaded.partial == PartialRead(archive_size=len(ARCHIVE), validator=result.validator, members_in_archive=200, members_present=10,
                                         members_fetched=10, bytes_moved=result.bytes_moved, requests=result.requests)
    assert loaded.partial.validator  # the If-Range validator: what a later read compares
    old = ArtifactRecord.model_validate({"name": "a.zip", "url": "u", "size": 1, "sha256": "x", "fetched_at": "t"})
    assert old.partial is None


def test_wanted_members_from_annotation_records():
    records = [
        {"id": 1, "image": "coco/train2017/000000000001.jpg"},
        {"id": 2, "image": ["coco/train2017/000000000002.jpg", "gqa/images/x.jpg"]},
        {"id": 3},  # text only
        {"id": 4, "image": "train2017/000000000004.jpg"},  # relative to a folder the layout links
        {"id": 5, "image": "coco/train2017/000000000001.jpg"},  # twice: once
    ]
    assert wanted_members(records, "", "coco/train2017", links={"train2017": "coco/train2017"}) == [
        "000000000001.jpg", "000000000002.jpg", "000000000004.jpg"]
    assert wanted_members(records, "", "gqa/images") == ["x.jpg"]


def test_an_archive_comment_is_read_past(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("train2017/000000000003.jpg", IMAGES["000000000003.jpg"])
        zf.comment = b"x" * 30_000  # the end record is no longer the last 22 bytes: zipfile searches
    with FakeHttpServer() as srv:
        srv.add("/zips/train2017.zip", buf.getvalue())
        result = _fetch(srv, ["000000000003.jpg"], LocalStorage(tmp_path / "root"))
    assert result.fetched == 1


def test_not_a_zip_raises_bad_zip_naming_the_archive(tmp_path):
    with FakeHttpServer() as srv:
        srv.add("/zips/train2017.zip", b"<html>Sign in to continue</html>" * 100)
        with pytest.raises(zipfile.BadZipFile, match="train2017.zip: not a readable zip archive"):
            _fetch(srv, ["000000000003.jpg"], LocalStorage(tmp_path / "root"))


def test_the_images_an_annotation_file_references_from_the_slice_replica(tmp_path):
    """The catalog's COCO and LLaVA-Instruct entries, the slice replica's zip and annotation files:
    detail_23k's images first, then the mix665k recipe's, which adds one more COCO image."""
    from vlmdata.annotations import Records
    from vlmdata.catalog import load_catalog
    from vlmdata.replicas.slice import SliceReplica

    catalog, replica = load_catalog(), SliceReplica()
    coco = catalog["coco_train2017"].artifacts[0]
    llava = {a.name: a for a in catalog["llava_instruct_150k"].artifacts}
    storage, folder = LocalStorage(tmp_path / "root"), f"data/{coco.extract.into}"

    def wanted(name: str) -> list[str]:
        records = Records.read(io.BytesIO(replica.llava_files[name]), name)
        return wanted_members(records, llava[name].annotation.image_folder, coco.extract.into)

    bare = [m.split("/", 1)[1] for m in replica.coco_members]
    assert wanted("detail_23k.json") == [f"train2017/{n}" for n in bare[:3]]
    assert wanted("llava_v1_5_mix665k.json") == [f"train2017/{n}" for n in bare[:4]]  # gqa's image and the text record left out
    with FakeHttpServer() as srv:
        srv.add("/coco/zips/train2017.zip", replica.coco_zip)
        url = f"{srv.url}/coco/zips/train2017.zip"
        first = fetch_members(url, wanted("detail_23k.json"), storage, folder, coco.extract, policy=POLICY)
        second = fetch_members(url, wanted("llava_v1_5_mix665k.json"), storage, folder, coco.extract, policy=POLICY)
    assert (first.fetched, second.fetched) == (3, 1)
    (tmp_path / "train2017.zip").write_bytes(replica.coco_zip)
    full = extract_zip(tmp_path / "train2017.zip", LocalStorage(tmp_path / "full"), folder, coco.extract)
    assert second.index == [entry for entry in full if entry[0].rsplit("/", 1)[1] in bare[:4]]
    assert files_under(tmp_path / "root") == [f"{folder}/train2017/{n}" for n in bare[:4]]
