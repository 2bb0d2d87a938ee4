"""SA-1B through the library: a links file of signed, expiring URLs; tars from a fake CDN on loopback."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from vlmdata.replicas.data import jpeg_bytes, llava_record
from vlmdata.replicas.http_server import FakeHttpServer, Resource
from vlmdata.replicas.sa1b_cdn import FakeSa1bCdn
from vlmdata import acquire as acq
from vlmdata.acquire import Context, acquire, selected_artifacts
from vlmdata.catalog import load_catalog
from vlmdata.extract import UnsafeArchive
from vlmdata.fetch import sa1b
from vlmdata.fetch.http import FetchError, PermanentFetchError, RetryPolicy
from vlmdata.fetch.sa1b import (
    UNKNOWN,
    LinksFileError,
    load_tar_index,
    needed_report_key,
    parse_links,
    report_needed_shards,
    sa1b_discover,
    shards_for_annotation,
)
from vlmdata import status
from vlmdata.manifest import Manifest
from vlmdata.reports import NeededTars, load
from vlmdata.storage import LocalStorage

FAST = RetryPolicy(attempts=3, backoff=0.01)
IMAGES = "data/sam/images"
# Which image numbers each fake tar holds: not contiguous, as nothing guarantees they are.
SHARDS = {"sa_000000.tar": [1, 2], "sa_000001.tar": [5, 9], "sa_000002.tar": [3, 40]}


def _tar(numbers: list[int], prefix: str = "./") -> bytes:
    """Like Meta's tars: a "./" folder entry, then ./sa_<n>.jpg and ./sa_<n>.json (prefix="": bare names, no folder entry)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        if prefix:
            folder = tarfile.TarInfo(prefix)
            folder.type, folder.mode, folder.mtime = tarfile.DIRTYPE, 0o755, 1_680_000_000
            tf.addfile(folder)
        for n in numbers:
            for name, data in ((f"sa_{n}.jpg", jpeg_bytes(seed=n)), (f"sa_{n}.json", json.dumps({"image": {"image_id": n}, "annotations": []}).encode())):
                info = tarfile.TarInfo(prefix + name)
                info.size, info.mtime = len(data), 1_680_000_000
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(autouse=True)
def no_links_from_outside_the_test(monkeypatch):
    monkeypatch.delenv(sa1b.LINKS_ENV, raising=False)


@pytest.fixture
def cdn():
    with FakeHttpServer() as http:
        yield FakeSa1bCdn(http, {name: _tar(numbers) for name, numbers in SHARDS.items()})


def _links_file(tmp_path: Path, text: str, name: str = "sa1b_links.txt") -> Path:
    path = tmp_path / "user" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _source(**upstream):
    base = load_catalog()["sa1b"]
    return base.model_copy(update={"sa1b": base.sa1b.model_copy(update=upstream)})


def _ctx(storage) -> Context:
    return Context(storage, policy=FAST)


def _jpegs(numbers) -> dict[str, bytes]:
    return {f"{IMAGES}/sa_{n}.jpg": jpeg_bytes(seed=n) for n in numbers}


# ---------------------------------------------------------------- the links file


def test_links_from_env_and_range_selection(cdn, tmp_path, monkeypatch):
    text = cdn.sign()
    monkeypatch.setenv("VLMDATA_SA1B_LINKS", str(_links_file(tmp_path, text)))
    source = _source(first_shard=1, last_shard=2)
    ctx = _ctx(LocalStorage(tmp_path / "root"))
    found = {a.name: a for a in sa1b_discover(source, ctx)}
    assert sorted(found) == ["sa_000000.tar", "sa_000001.tar", "sa_000002.tar"]
    assert [a.name for a in selected_artifacts(source, ctx)] == ["sa_000001.tar", "sa_000002.tar"]  # the range
    assert found["sa_000000.tar"].optional  # outside it: only when named or with include_optional
    assert found["sa_000001.tar"].url == parse_links(text)["sa_000001.tar"]
    spec = found["sa_000001.tar"].extract
    assert (spec.into, spec.flatten, spec.include) == ("sam/images", True, ["*.jpg"])
    assert [a.name for a in selected_artifacts(source, ctx, only=["sa_000000.tar"])] == ["sa_000000.tar"]


def test_links_from_a_path_in_the_catalog_or_the_airflow_variable(cdn, tmp_path, monkeypatch):
    path = _links_file(tmp_path, cdn.sign())
    ctx = _ctx(LocalStorage(tmp_path / "root"))
    # links_variable may itself be a path (a private catalog pointing at shared storage).
    assert len(sa1b_discover(_source(links_variable=str(path), last_shard=2), ctx)) == 3
    # Inside a task the Variable wins over the environment; it holds the text or a path.
    monkeypatch.setenv("VLMDATA_SA1B_LINKS", str(tmp_path / "does-not-exist.txt"))
    newer = cdn.sign()
    variables = {"vlmdata_sa1b_links": newer}
    in_task = replace(ctx, variable=variables.get, memo={})
    assert sa1b.read_links(_source(), in_task) == parse_links(newer)
    variables["vlmdata_sa1b_links"] = str(path)
    assert sa1b.read_links(_source(), replace(in_task, memo={})) == parse_links(path.read_text())
    # Outside Airflow (no variables) the environment's file is what counts, and it is missing.
    with pytest.raises(LinksFileError, match="does-not-exist.txt.*cannot be read"):
        sa1b.read_links(_source(), replace(ctx, memo={}))


def test_no_links_file_says_where_to_put_it(tmp_path):
    with pytest.raises(LinksFileError) as info:
        sa1b_discover(_source(), _ctx(LocalStorage(tmp_path / "root")))
    message = str(info.value)
    assert "vlmdata_sa1b_links" in message and "VLMDATA_SA1B_LINKS" in message and "segment-anything-downloads" in message


def test_a_missing_env_file_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("VLMDATA_SA1B_LINKS", str(tmp_path / "nope.txt"))
    with pytest.raises(LinksFileError, match="nope.txt.*cannot be read"):
        sa1b.read_links(_source())


GOOD_ROW = "sa_000000.tar\thttps://cdn.example/sa_000000.tar?oh=1"
MALFORMED = {
    "no header": (f"{GOOD_ROW}\n", 1, "header"),
    "comma separated": ("file_name,cdn_link\nsa_000000.tar,https://x/y\n", 1, "header"),
    "three fields": (f"file_name\tcdn_link\n{GOOD_ROW}\nsa_000001.tar\thttps://x/1\textra\n", 3, "2 tab-separated fields"),
    "one field": (f"file_name\tcdn_link\n\n{GOOD_ROW}\nsa_000001.tar https://x/1\n", 4, "2 tab-separated fields"),
    "not a tar name": (f"file_name\tcdn_link\n{GOOD_ROW}\nsa_1.jpg\thttps://x/1\n", 3, "not an SA-1B tar name"),
    "not a URL": (f"file_name\tcdn_link\n{GOOD_ROW}\nsa_000001.tar\tftp://x/1\n", 3, "not an http"),
    "duplicate": (f"file_name\tcdn_link\n{GOOD_ROW}\n{GOOD_ROW}x\n", 3, "first on line 2"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_links_file_names_the_line(case):
    text, line, what = MALFORMED[case]
    with pytest.raises(LinksFileError, match=what) as info:
        parse_links(text, "links.txt")
    assert f"links.txt, line {line}:" in str(info.value)


def test_parse_accepts_crlf_bom_and_trailing_blank_lines():
    text = "\ufefffile_name\tcdn_link\r\nsa_000007.tar\thttps://x/7?oh=a&oe=b\r\n\r\n"
    assert parse_links(text) == {"sa_000007.tar": "https://x/7?oh=a&oe=b"}


def test_default_range_needs_every_shard_in_the_links_file(cdn, tmp_path, monkeypatch):
    monkeypatch.setenv("VLMDATA_SA1B_LINKS", str(_links_file(tmp_path, cdn.sign())))
    with pytest.raises(LinksFileError, match="no row for 48 of the shards sa_000000.tar..sa_000050.tar") as info:
        acq.plan(load_catalog()["sa1b"], _ctx(LocalStorage(tmp_path / "root")), acknowledge=True)
    assert "sa_000003.tar" in str(info.value)
    assert cdn.http.requests == []  # refused before any link is probed


# ---------------------------------------------------------------- acquisition


def test_acquire_places_only_the_jpegs_flat_and_a_refreshed_links_file_fetches_nothing(cdn, storage, tmp_path, monkeypatch):
    links = _links_file(tmp_path, cdn.sign())
    monkeypatch.setenv("VLMDATA_SA1B_LINKS", str(links))
    source = _source(first_shard=0, last_shard=1)
    result = acquire(source, _ctx(storage), acknowledge=True)
    assert sorted(result["changed"]) == ["sa_000000.tar", "sa_000001.tar"]

    expected = _jpegs([1, 2, 5, 9])
    assert dict(storage.list("data")) == {key: len(body) for key, body in expected.items()}  # no masks, no tars, flat
    for key, body in expected.items():
        assert storage.read_bytes(key) == body
    assert cdn.gets("sa_000002.tar") == 0  # outside the range
    record = Manifest(storage, "sa1b").artifact("sa_000001.tar")
    assert record.complete and record.size == len(cdn.tars["sa_000001.tar"])
    assert record.sha256 == hashlib.sha256(cdn.tars["sa_000001.tar"]).hexdigest()
    assert record.fingerprint == {"file_name": "sa_000001.tar", "size": len(cdn.tars["sa_000001.tar"])}  # no signature
    assert "?" not in record.url.replace("?<redacted>", "")  # the signed link's credentials are not stored
    assert "?<redacted>" in record.url

    # The user refreshes the links file: new signatures for the same tars, the old ones revoked.
    gets = cdn.gets()
    links.write_text(cdn.sign())
    again = acquire(source, _ctx(storage), acknowledge=True)
    assert again["changed"] == []
    assert cdn.gets() == gets  # probed (HEAD), not downloaded
    assert dict(storage.list("data")) == {key: len(body) for key, body in expected.items()}


def test_an_unsorted_links_file_of_opaque_links_fetches_each_tar_by_its_row(cdn, storage, tmp_path, monkeypatch):
    """Meta's links file is not in shard order and its links do not name their tar (an opaque
    CDN path, the signature and the CDN's parameters in the query): a row's file_name is all
    that ties a link to its tar. The manifest records each link without its query."""
    text = cdn.sign()
    rows = [line.split("\t") for line in text.splitlines()[1:]]
    assert [name for name, _ in rows] != sorted(name for name, _ in rows)
    assert not any(name[:-4] in link for name, link in rows)
    assert all({"_nc_gid", "_nc_oc", "ccb", "oh", "oe", "_nc_sid"} <= set(urlsplit(link).query.replace("&", "=").split("=")) for _, link in rows)
    monkeypatch.setenv("VLMDATA_SA1B_LINKS", str(_links_file(tmp_path, text)))
    acquire(_source(first_shard=0, last_shard=2), _ctx(storage), acknowledge=True)
    manifest = Manifest(storage, "sa1b")
    for name, numbers in SHARDS.items():
        assert sorted(key for key, _, _ in manifest.index(name)) == sorted(f"{IMAGES}/sa_{n}.jpg" for n in numbers), name
        assert manifest.artifact(name).url == f"{cdn.http.url}{cdn.path(name)}?<redacted>"
    assert not [key for prefix in ("data", "_vlmdata") for key, _ in storage.list(prefix) if any(t.encode() in storage.read_bytes(key) for t in cdn.signatures())]


def test_expired_link_asks_for_a_fresh_links_file(cdn, tmp_path, monkeypatch):
    stale = cdn.sign()
    cdn.sign()  # the CDN moved on: the file the user holds has expired
    monkeypatch.setenv("VLMDATA_SA1B_LINKS", str(_links_file(tmp_path, stale)))
    storage = LocalStorage(tmp_path / "root")
    with pytest.raises(PermanentFetchError) as info:
        acquire(_source(last_shard=1), _ctx(storage), acknowledge=True)
    message = str(info.value)
    assert "HTTP 403" in message and "URL signature expired" in message
    assert "fresh links file" in message and "`vlmdata_sa1b_links`" in message and "VLMDATA_SA1B_LINKS" in message
    assert parse_links(stale)["sa_000000.tar"].split("?")[1] not in message  # the signature is not echoed
    assert cdn.gets() == cdn.gets("sa_000000.tar") == 1  # one ranged GET to read the CDN's error, no download
    assert list(storage.list("data")) == []


def test_a_cdn_that_refuses_head_on_valid_links_still_works(tmp_path, monkeypatch):
    with FakeHttpServer() as http:
        cdn = FakeSa1bCdn(http, {"sa_000000.tar": _tar([1, 2], prefix="")}, refuse_head=True)
        monkeypatch.setenv("VLMDATA_SA1B_LINKS", str(_links_file(tmp_path, cdn.sign())))
        storage = LocalStorage(tmp_path / "root")
        assert acquire(_source(last_shard=0), _ctx(storage), acknowledge=True)["changed"] == ["sa_000000.tar"]
    assert dict(storage.list("data")) == {key: len(body) for key, body in _jpegs([1, 2]).items()}


def test_out_of_range_shard_when_named_and_masks_when_asked(cdn, tmp_path, monkeypatch):
    monkeypatch.setenv("VLMDATA_SA1B_LINKS", str(_links_file(tmp_path, cdn.sign())))
    storage = LocalStorage(tmp_path / "root")
    acquire(_source(last_shard=0, keep_masks=True), _ctx(storage), acknowledge=True, only=["sa_000002.tar"])
    assert sorted(dict(storage.list("data"))) == [f"{IMAGES}/sa_3.jpg", f"{IMAGES}/sa_3.json", f"{IMAGES}/sa_40.jpg", f"{IMAGES}/sa_40.json"]
    assert cdn.gets("sa_000000.tar") == 0


def test_licence_must_be_acknowledged(cdn, tmp_path, monkeypatch):
    monkeypatch.setenv("VLMDATA_SA1B_LINKS", str(_links_file(tmp_path, cdn.sign())))
    with pytest.raises(acq.LicenceNotAcknowledged):
        acquire(_source(last_shard=0), _ctx(LocalStorage(tmp_path / "root")))
    assert cdn.gets() == 0


def test_hostile_tar_from_the_cdn_places_nothing(tmp_path, monkeypatch):
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as tf:
        for name, data in (("sa_1.jpg", jpeg_bytes(seed=1)), ("../../../etc/cron.d/x.jpg", b"evil")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    with FakeHttpServer() as http:
        cdn = FakeSa1bCdn(http, {"sa_000000.tar": evil.getvalue()})
        monkeypatch.setenv("VLMDATA_SA1B_LINKS", str(_links_file(tmp_path, cdn.sign())))
        storage = LocalStorage(tmp_path / "root")
        with pytest.raises(UnsafeArchive, match=r"'\.\.'"):
            acquire(_source(last_shard=0), _ctx(storage), acknowledge=True)
    assert list(storage.list("data")) == []
    assert not Manifest(storage, "sa1b").artifact("sa_000000.tar").complete


# ---------------------------------------------------------------- which tars a mixture needs


def _sharegpt4v_like() -> list[dict]:
    """Records as in share-captioner_coco_lcs_sam_1246k_1107.json: paths relative to data/."""
    return [
        llava_record("000000000001", "coco/train2017/000000000001.jpg"),
        llava_record("sa_1", "sam/images/sa_1.jpg"),
        llava_record("sa_2", "sam/images/sa_2.jpg"),
        llava_record("sa_5", "sam/images/sa_5.jpg"),
        llava_record("sa_40", "sam/images/sa_40.jpg"),
        llava_record("sa_545504", "sam/images/sa_545504.jpg"),  # in a tar nobody here has seen
        llava_record("sa_1-again", "sam/images/sa_1.jpg"),  # referenced twice, counted once
        llava_record("text-only"),
        llava_record("00453", "llava/llava_pretrain/images/00453/004539375.jpg"),
    ]


def test_shards_for_annotation_needs_an_index_to_know():
    records = _sharegpt4v_like()
    assert shards_for_annotation(records, "") == {p: UNKNOWN for p in ("sam/images/sa_1.jpg", "sam/images/sa_2.jpg", "sam/images/sa_5.jpg", "sam/images/sa_40.jpg", "sam/images/sa_545504.jpg")}
    index = {"sa_000000.tar": ["sa_1.jpg", "sa_2.jpg"], "sa_000002.tar": ["data/sam/images/sa_3.jpg", "data/sam/images/sa_40.jpg"]}
    mapping = shards_for_annotation(records, "", index)
    assert mapping["sam/images/sa_1.jpg"] == "sa_000000.tar" and mapping["sam/images/sa_40.jpg"] == "sa_000002.tar"
    assert mapping["sam/images/sa_5.jpg"] == UNKNOWN and mapping["sam/images/sa_545504.jpg"] == UNKNOWN
    # Records relative to another image folder resolve to the same tree paths.
    relative = [llava_record("sa_1", "images/sa_1.jpg")]
    assert shards_for_annotation(relative, "sam", index) == {"sam/images/sa_1.jpg": "sa_000000.tar"}


def test_report_needed_shards_grows_with_what_was_fetched(cdn, tmp_path, monkeypatch):
    monkeypatch.setenv("VLMDATA_SA1B_LINKS", str(_links_file(tmp_path, cdn.sign())))
    storage = LocalStorage(tmp_path / "root")
    records = _sharegpt4v_like()
    source = _source(first_shard=0, last_shard=0)

    before = report_needed_shards(storage, records)
    assert (before.referenced, before.present, before.tars, len(before.unknown)) == (5, [], {}, 5)

    acquire(source, _ctx(storage), acknowledge=True)  # sa_000000.tar: images 1 and 2
    after = report_needed_shards(storage, records)
    assert after.present == ["sam/images/sa_1.jpg", "sam/images/sa_2.jpg"]
    assert after.tars == {}  # sa_5 and sa_40 sit in tars not fetched: nobody can say which
    assert after.unknown == ["sam/images/sa_5.jpg", "sam/images/sa_40.jpg", "sam/images/sa_545504.jpg"]
    assert "3 unaccounted for" in after.summary() and UNKNOWN in after.summary()

    # An index of a tar's contents (a colleague's, say) places its images before it is fetched.
    index_file = tmp_path / "user" / "index.json"
    index_file.write_text(json.dumps({"sa_000002.tar": ["sa_3.jpg", "sa_40.jpg"]}))
    known = report_needed_shards(storage, records, index=load_tar_index(index_file))
    assert known.tars == {"sa_000002.tar": ["sam/images/sa_40.jpg"]}
    assert known.unknown == ["sam/images/sa_5.jpg", "sam/images/sa_545504.jpg"]
    account = known.account()
    assert account.tars == {"sa_000002.tar": 1} and account.unaccounted == 2

    # Fetching what the report names resolves those images; a deleted image is traced to its tar
    # through the manifest's index of the tar that placed it.
    acquire(source, _ctx(storage), acknowledge=True, only=["sa_000001.tar", "sa_000002.tar"])
    storage.delete(f"{IMAGES}/sa_2.jpg")
    final = report_needed_shards(storage, records)
    assert final.present == ["sam/images/sa_1.jpg", "sam/images/sa_5.jpg", "sam/images/sa_40.jpg"]
    assert final.tars == {"sa_000000.tar": ["sam/images/sa_2.jpg"]}
    assert final.unknown == ["sam/images/sa_545504.jpg"]


def test_a_reset_mid_tar_is_recovered(cdn, tmp_path, monkeypatch, waits):
    """The shared download core retries it (resume offsets are tested there; this tar is smaller than one read)."""
    from vlmdata.replicas.http_server import reset_after
    from vlmdata.storage import LocalStorage

    monkeypatch.setenv("VLMDATA_SA1B_LINKS", str(_links_file(tmp_path, cdn.sign())))
    cdn.http.script(cdn.path("sa_000001.tar"), reset_after(len(cdn.tars["sa_000001.tar"]) // 2))
    storage = LocalStorage(tmp_path / "root")
    result = acquire(_source(first_shard=0, last_shard=1), _ctx(storage), acknowledge=True)
    assert sorted(result["changed"]) == ["sa_000000.tar", "sa_000001.tar"]
    assert cdn.gets("sa_000001.tar") == 2 and len(waits) == 1  # one reset, one retry
    assert all(storage.read_bytes(key) == body for key, body in _jpegs([1, 2, 5, 9]).items())


# ------------------------------------------------- choosing tars by what an annotation file needs

PT_FILE = "sharegpt4v/share-captioner_coco_lcs_sam_1246k_1107.json"  # the catalog's target: paths relative to data/


def _put_annotation(storage, records, path: str = PT_FILE) -> None:
    storage.write_bytes(f"data/{path}", json.dumps(records).encode())


def _ranged_gets(cdn, name: str) -> tuple[int, int]:
    """(GETs of the whole tar, ranged GETs) of one tar."""
    gets = [r for r in cdn.http.requests if r.method == "GET" and r.path == cdn.path(name)]
    ranged = [r for r in gets if r.headers.get("Range", "").startswith("bytes=") and not r.headers["Range"].endswith("-")]
    return len(gets) - len(ranged), len(ranged)


def test_a_tar_is_indexed_from_its_member_headers_without_fetching_it(cdn, storage, tmp_path, monkeypatch):
    monkeypatch.setenv("VLMDATA_SA1B_LINKS", str(_links_file(tmp_path, cdn.sign())))
    ctx = _ctx(storage)
    link = sa1b.read_links(_source(), ctx)["sa_000002.tar"]
    assert sa1b.index_remote_tar(_source(), "sa_000002.tar", link, ctx) == ["sa_3.jpg", "sa_40.jpg"]
    whole, ranged = _ranged_gets(cdn, "sa_000002.tar")
    assert whole == 0 and ranged <= 2 * 2 + 2  # about one small range per member (jpg + json per image), never the tar
    kept = storage.read_json(sa1b.contents_key("sa1b", "sa_000002.tar"))
    assert kept["images"] == ["sa_3.jpg", "sa_40.jpg"] and kept["size"] == len(cdn.tars["sa_000002.tar"])
    assert sa1b.tar_index(storage)["sa_000002.tar"] == ["sa_3.jpg", "sa_40.jpg"]  # known from now on


def test_long_names_and_a_tar_with_many_members_are_indexed_exactly(tmp_path, monkeypatch):
    """PAX headers (long names) and a readahead smaller than the headers still hop correctly."""
    numbers = list(range(100, 160))
    body = io.BytesIO()
    with tarfile.open(fileobj=body, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for n in numbers:
            data = jpeg_bytes(seed=n)
            info = tarfile.TarInfo(f"{'deep/' * 30}sa_{n}.jpg")  # > 100 characters: a PAX header each
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    with FakeHttpServer() as http:
        cdn = FakeSa1bCdn(http, {"sa_000007.tar": body.getvalue()})
        monkeypatch.setenv("VLMDATA_SA1B_LINKS", str(_links_file(tmp_path, cdn.sign())))
        ctx = _ctx(LocalStorage(tmp_path / "root"))
        link = sa1b.read_links(_source(), ctx)["sa_000007.tar"]
        assert sa1b.index_remote_tar(_source(), "sa_000007.tar", link, ctx) == [f"sa_{n}.jpg" for n in numbers]


@pytest.mark.parametrize("damage", ["header", "truncated"])
def test_a_damaged_tar_is_not_indexed_partially(tmp_path, monkeypatch, damage):
    body = bytearray(_tar([1, 2, 3], prefix=""))  # bare names: the offsets below count from the first image
    second = 512 + len(jpeg_bytes(seed=1)) + (-len(jpeg_bytes(seed=1)) % 512)  # the header after sa_1.jpg
    if damage == "header":
        body[second + 148 : second + 156] = b"garbage!"  # the header checksum field
    else:
        del body[second + 700 :]  # ends inside the second member's data
    with FakeHttpServer() as http:
        cdn = FakeSa1bCdn(http, {"sa_000004.tar": bytes(body)})
        monkeypatch.setenv("VLMDATA_SA1B_LINKS", str(_links_file(tmp_path, cdn.sign())))
        ctx = _ctx(LocalStorage(tmp_path / "root"))
        said = "after 1 members, no valid header" if damage == "header" else "unexpected end of data"
        with pytest.raises(FetchError, match=f"sa_000004.tar: not a readable tar at .*: {said}"):
            sa1b.index_remote_tar(_source(), "sa_000004.tar", sa1b.read_links(_source(), ctx)["sa_000004.tar"], ctx)
        assert not ctx.storage.exists(sa1b.contents_key("sa1b", "sa_000004.tar"))


def test_indexing_an_expired_link_or_a_server_without_ranges_fails_clearly(cdn, tmp_path, monkeypatch):
    from vlmdata.replicas.http_server import ignore_range

    old = cdn.sign()
    monkeypatch.setenv("VLMDATA_SA1B_LINKS", str(_links_file(tmp_path, old)))
    ctx = _ctx(LocalStorage(tmp_path / "root"))
    link = sa1b.read_links(_source(), ctx)["sa_000001.tar"]
    cdn.sign()  # the user's file is now stale
    with pytest.raises(PermanentFetchError, match="refresh the links file|links file.*expired|expired"):
        sa1b.index_remote_tar(_source(), "sa_000001.tar", link, ctx)
    fresh = parse_links(cdn.sign())["sa_000001.tar"]
    cdn.http.script(cdn.path("sa_000001.tar"), ignore_range())
    with pytest.raises(FetchError, match="does not answer Range requests"):
        sa1b.index_remote_tar(_source(), "sa_000001.tar", fresh, ctx)
    assert not list(ctx.storage.list("_vlmdata/sources/sa1b/tar-contents"))  # nothing half-known kept


def test_needed_by_fetches_only_the_tars_holding_missing_images(cdn, storage, tmp_path, monkeypatch):
    monkeypatch.setenv("VLMDATA_SA1B_LINKS", str(_links_file(tmp_path, cdn.sign())))
    source = _source(first_shard=0, last_shard=0)
    acquire(source, _ctx(storage), acknowledge=True)  # the range: sa_000000.tar, images 1 and 2
    _put_annotation(storage, _sharegpt4v_like())

    dry = acquire(source, _ctx(storage), needed_by=[PT_FILE], dry_run=True)
    assert [item["name"] for item in dry["fetch"]] == ["sa_000001.tar", "sa_000002.tar"]  # sa_5 and sa_40
    assert cdn.gets("sa_000001.tar") == _ranged_gets(cdn, "sa_000001.tar")[1]  # the dry run only read headers
    report = load(storage, needed_report_key("sa1b"), NeededTars)
    assert (report.present, report.tars, report.unaccounted, report.tars_searched) == (2, {"sa_000001.tar": 1, "sa_000002.tar": 1}, 1, 3)
    assert report.unaccounted_examples == ["sam/images/sa_545504.jpg"] and "in none of the 3 tars" in report.summary and report.needed_by == [PT_FILE]
    # The same account as a page, linked from the vlmdata page's SA-1B row.
    page = storage.read_bytes(needed_report_key("sa1b", page=True)).decode()
    assert all(f"<code>{tar}</code>" in page for tar in report.tars) and "sa_545504.jpg" in page and PT_FILE in page
    (row,) = [s for s in status.gather(storage, load_catalog(), {}, {}).sources if s.id == "sa1b"]
    assert row.needed_tars == needed_report_key("sa1b", page=True)

    def ranged() -> int:
        return sum(_ranged_gets(cdn, name)[1] for name in cdn.tars)

    indexed = ranged()
    result = acquire(source, _ctx(storage), needed_by=[PT_FILE])
    assert sorted(result["changed"]) == ["sa_000001.tar", "sa_000002.tar"]
    assert [_ranged_gets(cdn, name)[0] for name in sorted(cdn.tars)] == [1, 1, 1]  # one download of each tar
    assert ranged() == indexed  # the indexes the dry run made were kept, not read again
    assert all(storage.read_bytes(key) == body for key, body in _jpegs([1, 2, 5, 9, 3, 40]).items())

    requests_before = len(cdn.http.requests)
    again = acquire(source, _ctx(storage), needed_by=[PT_FILE])
    assert again["changed"] == [] and again["artifacts"] == 3
    assert [r for r in cdn.http.requests[requests_before:] if r.method == "GET"] == []  # nothing needed: nothing read


def test_indexing_stops_once_every_missing_image_is_placed(cdn, tmp_path, monkeypatch):
    monkeypatch.setenv("VLMDATA_SA1B_LINKS", str(_links_file(tmp_path, cdn.sign())))
    ctx = _ctx(LocalStorage(tmp_path / "root"))
    needed = sa1b.locate_tars(_source(), ctx, ["sam/images/sa_2.jpg"], workers=1)
    assert needed.tars == {"sa_000000.tar": ["sam/images/sa_2.jpg"]} and needed.searched is None
    assert cdn.gets("sa_000001.tar") == cdn.gets("sa_000002.tar") == 0  # shard order, one at a time, stopped early


def test_needed_by_names_what_is_wrong(cdn, storage, tmp_path, monkeypatch):
    monkeypatch.setenv("VLMDATA_SA1B_LINKS", str(_links_file(tmp_path, cdn.sign())))
    with pytest.raises(FileNotFoundError, match=f"{PT_FILE} is not in the data tree.*acquire the source"):
        acquire(_source(), _ctx(storage), acknowledge=True, needed_by=[PT_FILE])
    storage.write_bytes(f"data/{PT_FILE}", b'{"not": "a list"}')
    with pytest.raises(ValueError, match="expected a JSON list"):
        acquire(_source(), _ctx(storage), acknowledge=True, needed_by=[PT_FILE])
    with pytest.raises(ValueError, match="expected a JSON list"):  # zips over HTTP choose their members by it too
        acq.plan(load_catalog()["coco_train2017"], _ctx(storage), needed_by=[PT_FILE])
    with pytest.raises(ValueError, match="kind 'hf' without zip archives have no such choice"):
        acq.plan(load_catalog()["llava_instruct_150k"], _ctx(storage), needed_by=[PT_FILE])
    assert cdn.gets() == 0


def test_the_cli_says_which_tars_an_annotation_file_needs(cdn, tmp_path, monkeypatch, capsys):
    from vlmdata.cli import main

    monkeypatch.setenv("VLMDATA_SA1B_LINKS", str(_links_file(tmp_path, cdn.sign())))
    root = tmp_path / "root"
    _put_annotation(LocalStorage(root), _sharegpt4v_like())
    assert main(["--root", str(root), "acquire", "sa1b", "--acknowledge-licence", "--dry-run", "--needed-by", PT_FILE]) == 0
    said = json.loads(capsys.readouterr().out)
    assert [item["name"] for item in said["fetch"]] == ["sa_000000.tar", "sa_000001.tar", "sa_000002.tar"]  # sa_1 and sa_2, sa_5, sa_40
    assert cdn.gets() == sum(_ranged_gets(cdn, name)[1] for name in cdn.tars)  # headers only


# ------------------------------------------------------------- what the plan pins


def test_the_pins_hold_no_signature_and_each_fetch_signs_with_the_links_file_it_reads(cdn, tmp_path, monkeypatch):
    links = _links_file(tmp_path, cdn.sign())
    monkeypatch.setenv("VLMDATA_SA1B_LINKS", str(links))
    storage = LocalStorage(tmp_path / "root")
    source = _source(first_shard=0, last_shard=1)
    xcom = json.dumps([pin.to_dict() for pin in acq.plan(source, _ctx(storage), acknowledge=True).pins])  # what the fetch tasks get
    for link in parse_links(links.read_text()).values():
        assert link.split("?", 1)[1] not in xcom and "oh=00_" not in xcom
    assert [pin["url"] for pin in json.loads(xcom)] == [f"{cdn.http.url}{cdn.path(name)}?<redacted>" for name in ("sa_000000.tar", "sa_000001.tar")]

    # The links expire while the fetches wait; the user refreshes the file and the old
    # signatures are revoked: the fetches sign with the links file they read themselves,
    # even when the new links name another CDN host.
    links.write_text(cdn.sign().replace("127.0.0.1", "localhost"))
    fetched = [acq.fetch_artifact(source, acq.Pin.from_dict(pin), _ctx(storage)) for pin in json.loads(xcom)]
    assert [f["fetched"] for f in fetched] == [True, True]
    assert dict(storage.list("data")) == {key: len(body) for key, body in _jpegs([1, 2, 5, 9]).items()}


def test_a_tar_that_changed_since_the_plan_is_not_fetched(cdn, tmp_path, monkeypatch):
    monkeypatch.setenv("VLMDATA_SA1B_LINKS", str(_links_file(tmp_path, cdn.sign())))
    storage = LocalStorage(tmp_path / "root")
    source = _source(first_shard=0, last_shard=0)
    (pin,) = acq.plan(source, _ctx(storage), acknowledge=True).pins
    other = _tar([1, 2, *range(100, 120)])  # more images: a larger tar
    cdn.resources["sa_000000.tar"] = Resource(other, etag='"other"', last_modified=cdn.http.next_http_date())
    with pytest.raises(acq.UpstreamMoved, match=f"size: {len(cdn.tars['sa_000000.tar'])} -> {len(other)}"):
        acq.fetch_artifact(source, pin, _ctx(storage))
    assert cdn.gets() == 0 and list(storage.list("data")) == []
    assert Manifest(storage, "sa1b").artifact("sa_000000.tar") is None


def test_a_dry_run_with_needed_by_and_no_cdn_says_what_it_cannot_tell(cdn, tmp_path, monkeypatch, waits):
    """The tars' headers cannot be read (the links' host does not resolve): the dry run answers at
    once, fetches nothing, keeps the tars it was told by name, and says the choice is unknown."""
    links = "file_name\tcdn_link\n" + "".join(f"{name}\thttp://cdn.mirror.invalid/{name}?oh=s3cret&oe=1\n" for name in sorted(cdn.tars))
    monkeypatch.setenv("VLMDATA_SA1B_LINKS", str(_links_file(tmp_path, links)))
    storage = LocalStorage(tmp_path / "root")
    _put_annotation(storage, _sharegpt4v_like())
    dry = acquire(_source(), _ctx(storage), acknowledge=True, needed_by=[PT_FILE], only=["sa_000002.tar"], dry_run=True)
    assert [item["name"] for item in dry["fetch"]] == ["sa_000002.tar"] and dry["fetch"][0]["size_is"] in ("approximate", "unknown")
    assert "does not resolve" in dry["offline"]["unreachable"] and "s3cret" not in json.dumps(dry)
    assert any(f"which artifacts {PT_FILE} need could not be determined" in note for note in dry["offline"]["notes"])
    assert waits == [] and cdn.gets() == 0
    with pytest.raises(PermanentFetchError, match="does not resolve"):  # an acquisition fails, at once
        acquire(_source(), _ctx(storage), acknowledge=True, needed_by=[PT_FILE])
