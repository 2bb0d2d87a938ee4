"""The OCR-VQA URL-list crawl against a loopback server with dead, broken and misbehaving URLs,
on a local root and on S3."""

from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace

import pytest
from PIL import Image

from tests.conftest import storage_of
from vlmdata.replicas.data import gif_bytes, jpeg_bytes, make_zip, png_bytes, truncated_jpeg_bytes
from vlmdata.replicas.http_server import FakeHttpServer, Resource, reset_after, status
from vlmdata import crawl
from vlmdata.catalog import load_catalog
from vlmdata.crawl import crawl_shard, fill_from_archive, finish, missing_ids, plan_shards
from vlmdata.extract import UnsafeArchive
from vlmdata.fetch.http import RetryPolicy
from vlmdata.manifest import Manifest, index_key
from vlmdata.mirrors import Mirrors
from vlmdata.storage import LocalStorage
from vlmdata.verify import ImageIndex

AMAZON = "http://ecx.images-amazon.com/"
LIST_KEY = "data/ocr_vqa/dataset.json"
INTO = "data/ocr_vqa/images"
FAST = RetryPolicy(attempts=3, backoff=0.01, max_wait=5.0)
OK_KINDS = {"jpeg", "gif", "png", "429", "reset"}


@dataclass
class Site:
    listing: dict = field(default_factory=dict)
    kinds: dict = field(default_factory=dict)  # id -> kind
    paths: dict = field(default_factory=dict)  # id -> path on the fake
    served: dict = field(default_factory=dict)  # id -> bytes served

    def ids(self, *kinds: str) -> set[str]:
        return {i for i, k in self.kinds.items() if k in kinds}


def isbn(n: int) -> str:
    return f"{150000000 + n:09d}{'X' if n % 10 == 7 else n % 10}"  # some end in X, as ISBNs do


def build_site(srv: FakeHttpServer) -> Site:
    """~60 covers under Amazon-like URLs (with and without .jpg, whatever the real format)."""
    site = Site()
    n = iter(range(1000))

    def add(kind: str, data: bytes | None, content_type: str = "image/jpeg") -> str:
        number = next(n)
        image_id = isbn(number)
        suffix = ".jpg" if number % 2 else ""  # GIFs and PNGs hide behind .jpg URLs too
        tail = f"images/I/5{number:03d}xQ{image_id[-3:]}L._SX300_{suffix}"
        site.listing[image_id] = {
            "imageURL": AMAZON + tail,
            "questions": ["Who wrote this book?"], "answers": ["Someone"],
            "title": f"Book {number}", "authorName": "Someone", "genre": "Fiction", "split": 1,
        }
        site.kinds[image_id] = kind
        site.paths[image_id] = f"/amazon/{tail}"
        if data is not None:
            srv.add(site.paths[image_id], data, content_type=content_type)
            site.served[image_id] = data
        return image_id

    for i in range(40):
        add("jpeg", jpeg_bytes(60, 90, seed=i))
    for i in range(8):
        add("gif", gif_bytes(60, 90, seed=100 + i), "image/gif")
    for i in range(6):
        add("png", png_bytes(60, 90, seed=200 + i), "image/png")
    for _ in range(3):
        add("404", None)
    add("html", b"<!DOCTYPE html>\n<html><body>Sorry, we could not find that page.</body></html>\n", "text/html")
    add("truncated", truncated_jpeg_bytes(60, 90, seed=300))
    srv.script(site.paths[add("429", jpeg_bytes(60, 90, seed=301))], status(429, retry_after=2))
    srv.script(site.paths[add("reset", jpeg_bytes(60, 90, seed=302))], reset_after(100))
    always_busy = add("503", jpeg_bytes(60, 90, seed=303))
    srv.script(site.paths[always_busy], status(503, retry_after=3600), status(503), status(503))  # Retry-After bounded
    no_url = add("no_url", None)
    site.listing[no_url]["imageURL"] = ""
    return site


def image_gets(srv: FakeHttpServer) -> int:
    return sum(1 for r in srv.requests if r.method == "GET" and r.path.startswith("/amazon/"))


def stored(storage) -> dict[str, int]:
    return {key: size for key, size in storage.list(INTO)}


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# ------------------------------------------------------------------ one crawl, stage by stage
# One scenario per backend, run once (module fixtures) and read by the tests below in the order of
# the file: crawl the ~60 covers, finish, fill the gaps from a mirror archive, re-run. Each test
# reads its stage before a later fixture changes the storage (pytest runs a module's tests in
# file order, grouped by backend).


@dataclass
class Crawled:
    storage: object
    srv: FakeHttpServer
    site: Site
    mirrors: Mirrors
    shards: list
    replanned: list  # the plan made again before the crawl
    summaries: list
    waits: list  # the waits between retries, recorded instead of slept


@pytest.fixture(scope="module")
def crawled(module_storage):
    storage, waits = module_storage, []
    with FakeHttpServer() as srv:
        site = build_site(srv)
        storage.write_json(LIST_KEY, site.listing)
        mirrors = Mirrors({AMAZON: f"{srv.url}/amazon/"})
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(time, "sleep", waits.append)  # so Retry-After is observable
            shards = plan_shards(storage, LIST_KEY, INTO, shard_size=25)
            replanned = plan_shards(storage, LIST_KEY, INTO, shard_size=25)  # (a plan leaves out what is stored)
            summaries = [crawl_shard(storage, s["key"], INTO, mirrors=mirrors, policy=FAST, workers=8, per_host=4) for s in shards]
        yield Crawled(storage, srv, site, mirrors, shards, replanned, summaries, waits)


def shard_results(c: Crawled, kind: str) -> dict[str, str]:
    """``kind`` ("converted", "dead", "broken") of every shard's result, merged."""
    return {k: v for s in c.shards for k, v in c.storage.read_json(crawl.result_key(s["key"]))[kind].items()}


def test_the_plan_is_a_few_small_deterministic_shards_of_the_covers_with_a_url(crawled):
    assert [s["count"] for s in crawled.shards] == [25, 25, 12]  # 63 listed, one without a URL
    assert all(len(json.dumps(s)) < 200 for s in crawled.shards)  # XCom carries keys, not URLs
    assert crawled.replanned == crawled.shards  # deterministic


def test_the_crawl_stores_exactly_the_good_covers_each_a_real_jpeg(crawled):
    storage, site = crawled.storage, crawled.site
    assert sum(s["ok"] for s in crawled.summaries) == len(site.ids(*OK_KINDS)) == 56
    keys = stored(storage)
    assert set(keys) == {f"{INTO}/{i}.jpg" for i in site.ids(*OK_KINDS)}
    for image_id in site.ids(*OK_KINDS):
        image = decode(storage.read_bytes(f"{INTO}/{image_id}.jpg"))
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (60, 90)), image_id
    if isinstance(storage, LocalStorage):  # no temporary or partial file left anywhere
        assert sorted(p.name for p in storage.local_path(INTO).iterdir()) == sorted(k.rsplit("/", 1)[1] for k in keys)


def test_jpeg_covers_are_stored_byte_for_byte(crawled):
    for image_id in crawled.site.ids("jpeg", "429", "reset"):
        assert crawled.storage.read_bytes(f"{INTO}/{image_id}.jpg") == crawled.site.served[image_id], image_id


def test_gif_and_png_covers_are_converted_and_recorded_so(crawled):
    site = crawled.site
    assert shard_results(crawled, "converted") == {**{i: "GIF->JPEG" for i in site.ids("gif")}, **{i: "PNG->JPEG" for i in site.ids("png")}}


def test_dead_urls_are_recorded_with_their_status(crawled):
    site, dead = crawled.site, shard_results(crawled, "dead")
    assert set(dead) == site.ids("404", "503")
    assert all(dead[i] == "HTTP 404" for i in site.ids("404"))
    assert dead[next(iter(site.ids("503")))] == "HTTP 503 (after 3 attempts)"


def test_pages_and_truncated_images_are_recorded_as_broken_with_why(crawled):
    site, broken = crawled.site, shard_results(crawled, "broken")
    assert set(broken) == site.ids("html", "truncated")
    html = broken[next(iter(site.ids("html")))]
    assert "not an image" in html and "HTML" in html
    assert "does not decode" in broken[next(iter(site.ids("truncated")))]


def test_retries_wait_retry_after_capped_retry_a_reset_and_not_a_404(crawled):
    srv, site, waits = crawled.srv, crawled.site, crawled.waits
    assert 2.0 in waits and 5.0 in waits and max(waits) <= 5.0  # 429 waited its Retry-After; 3600 s was capped
    assert srv.count("GET", site.paths[next(iter(site.ids("429")))]) == 2
    assert srv.count("GET", site.paths[next(iter(site.ids("reset")))]) == 2
    assert all(srv.count("GET", site.paths[i]) == 1 for i in site.ids("404", "jpeg"))


def test_a_finished_shard_is_not_fetched_again(crawled):
    """A retried task after its results were written."""
    before = image_gets(crawled.srv)
    assert crawl_shard(crawled.storage, crawled.shards[0]["key"], INTO, mirrors=crawled.mirrors, policy=FAST)["skipped"]
    assert image_gets(crawled.srv) == before


@dataclass
class Finished:
    crawled: Crawled
    summary: dict
    missing: set[str]  # the listed covers the crawl could not store


@pytest.fixture(scope="module")
def finished(crawled):
    missing = crawled.site.ids("404", "503", "html", "truncated", "no_url")
    return Finished(crawled, finish(crawled.storage, "ocr_vqa", INTO), missing)


def test_finish_counts_what_was_stored_converted_dead_and_broken(finished):
    summary = finished.summary
    assert summary["stored"] == 56 and summary["missing"] == len(finished.missing) == 7
    assert (summary["converted"], summary["dead"], summary["broken"]) == (14, 5, 2)


def test_the_crawl_report_names_every_missing_cover_and_why(finished):
    storage, site = finished.crawled.storage, finished.crawled.site
    report = storage.read_json("_vlmdata/reports/ocr_vqa/crawl.json")
    assert set(report["missing"]) == finished.missing == set(missing_ids(storage, "ocr_vqa"))
    assert report["dead"][next(iter(site.ids("no_url")))] == "no imageURL in the list"
    assert set(report["broken"]) == site.ids("html", "truncated")


def test_the_manifest_records_the_folder_and_an_index_of_what_it_holds(finished):
    storage = finished.crawled.storage
    keys = stored(storage)
    record = Manifest(storage, "ocr_vqa").artifact("images")
    assert record.complete and record.placement.folder == INTO and record.placement.images
    assert record.placement.members == 56 and record.size == record.placement.bytes == sum(keys.values())
    assert record.sha256 == hashlib.sha256(storage.read_bytes(index_key("ocr_vqa", "images"))).hexdigest()
    assert sorted(Manifest(storage, "ocr_vqa").index("images")) == sorted([k, s, None] for k, s in keys.items())


def test_verification_reads_the_crawls_index(finished):
    images = ImageIndex.load(finished.crawled.storage, load_catalog(), ["ocr_vqa"])
    assert all(images.status(f"{INTO}/{i}.jpg") is None for i in finished.crawled.site.ids(*OK_KINDS))
    assert all(images.status(f"{INTO}/{i}.jpg") == "image missing" for i in finished.missing)


@dataclass
class Filled:
    finished: Finished
    members: dict[str, bytes]  # of the mirror archive
    kept: tuple[str, bytes]  # a cover stored before the fill, and its bytes
    result: dict


@pytest.fixture(scope="module")
def filled(finished, tmp_path_factory):
    """The fallback archive: every missing cover under other names and formats, one present
    already and one not in the list."""
    storage, site = finished.crawled.storage, finished.crawled.site
    kept_id = next(iter(site.ids("jpeg")))
    kept = storage.read_bytes(f"{INTO}/{kept_id}.jpg")
    m = sorted(finished.missing)
    members = {
        "images/": b"",
        f"images/{m[0]}.jpg": jpeg_bytes(60, 90, seed=500),
        f"other/{m[0]}.png": png_bytes(60, 90, seed=501),  # the .jpg of the same id wins
        f"{m[1]}.jpg": jpeg_bytes(60, 90, seed=502),
        f"images/{m[2]}.png": png_bytes(60, 90, seed=503),
        f"images/{m[3]}.gif": gif_bytes(60, 90, seed=504),
        **{f"images/{i}.jpg": jpeg_bytes(60, 90, seed=505 + n) for n, i in enumerate(m[4:])},
        f"images/{kept_id}.jpg": jpeg_bytes(60, 90, seed=600),  # present already: not touched
        "images/0000000000.jpg": jpeg_bytes(60, 90, seed=601),  # not in the list
    }
    archive = tmp_path_factory.mktemp("mirror") / "ocr_vqa_images_llava_v15.zip"
    archive.write_bytes(make_zip(members))
    result = fill_from_archive(storage, archive, INTO, missing_ids(storage, "ocr_vqa"))
    return Filled(finished, members, (kept_id, kept), result)


def test_a_mirror_archive_fills_exactly_the_missing_covers_as_jpegs(filled):
    storage, site, missing = filled.finished.crawled.storage, filled.finished.crawled.site, filled.finished.missing
    assert (filled.result["filled"], filled.result["converted"], filled.result["not_in_archive"]) == (7, 2, 0)
    assert set(stored(storage)) == {f"{INTO}/{i}.jpg" for i in site.ids(*OK_KINDS) | missing}
    for i in missing:
        assert decode(storage.read_bytes(f"{INTO}/{i}.jpg")).format == "JPEG", i
    first = sorted(missing)[0]
    assert storage.read_bytes(f"{INTO}/{first}.jpg") == filled.members[f"images/{first}.jpg"]  # its .jpg, not the .png


def test_a_mirror_archive_leaves_a_present_cover_untouched(filled):
    kept_id, kept = filled.kept
    assert filled.finished.crawled.storage.read_bytes(f"{INTO}/{kept_id}.jpg") == kept


def test_after_the_fill_the_report_manifest_and_index_name_what_the_mirror_filled(filled):
    storage, missing = filled.finished.crawled.storage, filled.finished.missing
    m = sorted(missing)
    report = storage.read_json("_vlmdata/reports/ocr_vqa/crawl.json")  # refreshed by the fill
    assert report["missing"] == [] and set(report["filled_from_mirror"]) == missing
    assert report["filled_from_mirror"][m[2]]["conversion"] == "PNG->JPEG"
    assert report["filled_from_mirror"][m[0]]["member"] == f"images/{m[0]}.jpg"
    assert len(Manifest(storage, "ocr_vqa").index("images")) == 63
    assert ImageIndex.load(storage, load_catalog(), ["ocr_vqa"]).status(f"{INTO}/{m[3]}.jpg") is None


def test_a_rerun_after_the_fill_plans_and_fetches_nothing(filled):
    c = filled.finished.crawled
    before = image_gets(c.srv)
    assert plan_shards(c.storage, LIST_KEY, INTO, shard_size=25) == []
    assert image_gets(c.srv) == before


def test_a_lost_cover_is_the_only_one_the_next_run_fetches(filled):
    """Last of the scenario: it deletes a cover."""
    c = filled.finished.crawled
    before = image_gets(c.srv)
    lost = sorted(c.site.ids("gif"))[0]
    c.storage.delete(f"{INTO}/{lost}.jpg")
    again = plan_shards(c.storage, LIST_KEY, INTO, shard_size=25)
    assert [s["count"] for s in again] == [1]
    crawl_shard(c.storage, again[0]["key"], INTO, mirrors=c.mirrors, policy=FAST)
    assert image_gets(c.srv) == before + 1
    assert finish(c.storage, "ocr_vqa", INTO)["stored"] == 63


def test_shards_grow_to_stay_under_the_map_limit(tmp_path):
    storage = LocalStorage(tmp_path / "root")
    storage.write_json(LIST_KEY, {isbn(i): {"imageURL": f"{AMAZON}images/I/{i}.jpg"} for i in range(63)})
    shards = plan_shards(storage, LIST_KEY, INTO, shard_size=5, max_shards=4)
    assert [s["count"] for s in shards] == [16, 16, 16, 15]
    items = [item for s in shards for item in storage.read_json(s["key"])["items"]]
    assert [i for i, _ in items] == sorted(isbn(i) for i in range(63))
    # A shorter plan removes the shards of the longer one.
    assert len(plan_shards(storage, LIST_KEY, INTO, shard_size=40)) == 2
    assert len(list(storage.list("_vlmdata/crawl/ocr_vqa/shards"))) == 2


def test_per_host_limits_concurrent_requests(tmp_path):
    storage = LocalStorage(tmp_path / "root")
    body = jpeg_bytes(32, 48, seed=1)
    lock = threading.Lock()
    active = {"now": 0, "max": 0}

    def slow(req, match):
        with lock:
            active["now"] += 1
            active["max"] = max(active["max"], active["now"])
        time.sleep(0.05)
        with lock:
            active["now"] -= 1
        return Resource(body, content_type="image/jpeg")

    with FakeHttpServer() as srv:
        srv.route("GET", r"/covers/.*", slow)
        storage.write_json(LIST_KEY, {isbn(i): {"imageURL": f"{srv.url}/covers/{i}"} for i in range(30)})
        (shard,) = plan_shards(storage, LIST_KEY, INTO)
        summary = crawl_shard(storage, shard["key"], INTO, policy=FAST, workers=12, per_host=3)
        assert summary["ok"] == 30
        assert active["max"] == 3  # never more, and the pool did use the three
        ports = {r.client_port for r in srv.requests}
        assert len(ports) <= 12  # one kept-alive connection per worker thread, not one per image


def test_tar_mirror_and_unsafe_archives(tmp_path):
    storage = LocalStorage(tmp_path / "root")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in {"ocr_vqa/images/1111111111.gif": gif_bytes(seed=1), "ocr_vqa/images/2222222222.jpg": jpeg_bytes(seed=2)}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "ocr_vqa.tar").write_bytes(buf.getvalue())
    summary = fill_from_archive(storage, tmp_path / "ocr_vqa.tar", INTO, ["1111111111", "3333333333"])
    assert summary["filled"] == 1 and summary["converted"] == 1 and summary["not_in_archive"] == 1
    assert set(stored(storage)) == {f"{INTO}/1111111111.jpg"}
    assert decode(storage.read_bytes(f"{INTO}/1111111111.jpg")).format == "JPEG"

    (tmp_path / "evil.zip").write_bytes(make_zip({"images/4444444444.jpg": jpeg_bytes(seed=4), "../5555555555.jpg": jpeg_bytes(seed=5)}))
    with pytest.raises(UnsafeArchive):
        fill_from_archive(storage, tmp_path / "evil.zip", INTO, ["4444444444", "5555555555"])
    assert set(stored(storage)) == {f"{INTO}/1111111111.jpg"}  # vetted before anything was written


def test_a_retried_task_skips_what_its_first_attempt_stored(tmp_path):
    storage = LocalStorage(tmp_path / "root")
    with FakeHttpServer() as srv:
        listing = {}
        for i in range(6):
            srv.add(f"/c/{i}", jpeg_bytes(seed=i))
            listing[isbn(i)] = {"imageURL": f"{srv.url}/c/{i}"}
        storage.write_json(LIST_KEY, listing)
        (shard,) = plan_shards(storage, LIST_KEY, INTO)
        # What a killed first attempt leaves: its marker and two stored images, no results.
        storage.write_bytes(crawl.result_key(shard["key"]).replace("/results/", "/started/"), b"x")
        for i in (0, 1):
            storage.write_bytes(f"{INTO}/{isbn(i)}.jpg", jpeg_bytes(seed=i))
        summary = crawl_shard(storage, shard["key"], INTO, policy=FAST)
        assert summary["ok"] == 4
        assert sorted(r.path for r in srv.requests) == [f"/c/{i}" for i in range(2, 6)]
        assert len(stored(storage)) == 6
        assert not list(storage.list("_vlmdata/crawl/ocr_vqa/started"))


def test_tar_with_a_link_is_refused(tmp_path):
    storage = LocalStorage(tmp_path / "root")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = jpeg_bytes(seed=1)
        info = tarfile.TarInfo("images/1111111111.jpg")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("images/2222222222.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    (tmp_path / "links.tar").write_bytes(buf.getvalue())
    with pytest.raises(UnsafeArchive):
        fill_from_archive(storage, tmp_path / "links.tar", INTO, ["1111111111", "2222222222"])
    assert stored(storage) == {}


# ----------------------------------------------------------------- fallback mirror archives

HUB = "https://huggingface.co"
TAR_URL = f"{HUB}/datasets/ej2/llava-ocr-vqa/resolve/main/ocr_vqa.tar"
ZIP_URL = f"{HUB}/datasets/weizhiwang/llava_v15_instruction_images/resolve/main/ocr_vqa_images_llava_v15.zip"


def hub_path(url: str) -> str:
    return url[len(HUB):]


def tar_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass
class Gaps:
    """A crawl with gaps, and two mirror archives served on the same loopback server."""

    srv: FakeHttpServer
    mirrors: Mirrors
    ok: list[str]
    dead: list[str]  # 404 upstream
    bad: str  # a truncated cover upstream
    tar: dict[str, bytes]
    zip: dict[str, bytes]

    def gets(self, url: str) -> list:
        return [r for r in self.srv.requests if r.method == "GET" and r.path == hub_path(url)]

    def heads(self, url: str) -> int:
        return self.srv.count("HEAD", hub_path(url))


def crawl_with_gaps(storage, srv: FakeHttpServer) -> Gaps:
    """Three covers crawled, two dead, one broken; the tar holds dead[0] (and ``bad``, broken there
    too, and a cover already stored), the zip holds ``bad`` as a good PNG; dead[1] is in neither."""
    ok, dead, bad = [isbn(1), isbn(2), isbn(3)], [isbn(4), isbn(7)], isbn(5)
    listing = {}
    for n, image_id in enumerate([*ok, *dead, bad]):
        listing[image_id] = {"imageURL": f"{AMAZON}images/I/{n}.jpg"}
        if image_id in ok:
            srv.add(f"/amazon/images/I/{n}.jpg", jpeg_bytes(60, 90, seed=n), content_type="image/jpeg")
        elif image_id == bad:
            srv.add(f"/amazon/images/I/{n}.jpg", truncated_jpeg_bytes(60, 90, seed=n), content_type="image/jpeg")
    storage.write_json(LIST_KEY, listing)
    mirrors = Mirrors({AMAZON: f"{srv.url}/amazon/", f"{HUB}/": f"{srv.url}/"})
    for shard in plan_shards(storage, LIST_KEY, INTO):
        crawl_shard(storage, shard["key"], INTO, mirrors=mirrors, policy=FAST)
    finish(storage, "ocr_vqa", INTO)
    assert set(missing_ids(storage, "ocr_vqa")) == {*dead, bad}
    tar_members = {
        f"ocr_vqa/images/{dead[0]}.jpg": jpeg_bytes(60, 90, seed=40),
        f"ocr_vqa/images/{bad}.jpg": truncated_jpeg_bytes(60, 90, seed=41),  # made from a crawl: broken there too
        f"ocr_vqa/images/{ok[0]}.jpg": jpeg_bytes(60, 90, seed=42),  # stored already: not touched
    }
    zip_members = {"ocr_vqa/": b"", "ocr_vqa/images/": b"", f"ocr_vqa/images/{bad}.png": png_bytes(60, 90, seed=43)}
    srv.add(hub_path(TAR_URL), tar_bytes(tar_members))
    srv.add(hub_path(ZIP_URL), make_zip(zip_members), content_type="application/zip")
    return Gaps(srv, mirrors, ok, dead, bad, tar_members, zip_members)


def staged_archives(storage) -> list[str]:
    folder = storage.staging_dir() / "ocr_vqa" / "mirrors"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# One mirror scenario per backend (module fixtures), five runs of fill_from_mirrors one after the
# other, each a stage the tests below read in the order of the file.


@dataclass
class Fill:
    """A run of fill_from_mirrors: its summary and the archive downloads so far."""

    gaps: Gaps
    storage: object
    summary: dict
    tar_gets: int
    zip_gets: int
    kept: bytes = b""  # the first fill: a cover stored before it, also in the tar


def fill(storage, gaps: Gaps) -> Fill:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(time, "sleep", lambda seconds: None)  # no retry waits
        summary = crawl.fill_from_mirrors(storage, "ocr_vqa", INTO, [TAR_URL, ZIP_URL], mirrors=gaps.mirrors, policy=FAST)
    return Fill(gaps, storage, summary, len(gaps.gets(TAR_URL)), len(gaps.gets(ZIP_URL)))


@pytest.fixture(scope="module", params=["local", "s3"])
def gaps_storage(request, tmp_path_factory):
    """A storage of its own (the crawl scenario above has module_storage)."""
    return storage_of(request, request.param, tmp_path_factory.mktemp(f"gaps-{request.param}"))


@pytest.fixture(scope="module")
def first_fill(gaps_storage):
    with FakeHttpServer() as srv, pytest.MonkeyPatch.context() as patch:
        patch.setattr(time, "sleep", lambda seconds: None)
        gaps = crawl_with_gaps(gaps_storage, srv)
        kept = gaps_storage.read_bytes(f"{INTO}/{gaps.ok[0]}.jpg")
        patch.undo()
        first = fill(gaps_storage, gaps)
        yield dc_replace(first, kept=kept)


def test_mirrors_fill_what_they_hold_and_count_it(first_fill):
    summary = first_fill.summary
    assert summary["filled_this_run"] == 2 and summary["missing"] == 1 and summary["stored"] == 5
    tar_outcome, zip_outcome = summary["mirrors"]
    assert tar_outcome == {"url": TAR_URL, "archive": "ocr_vqa.tar", "outcome": "filled", "filled": 1, "converted": 0, "broken": 1, "not_in_archive": 1}
    assert zip_outcome["outcome"] == "filled" and zip_outcome["filled"] == 1 and zip_outcome["converted"] == 1
    assert first_fill.tar_gets == first_fill.zip_gets == 1


def test_mirrors_place_good_covers_as_jpegs_and_leave_stored_ones_and_no_archive(first_fill):
    storage, gaps = first_fill.storage, first_fill.gaps
    assert storage.read_bytes(f"{INTO}/{gaps.dead[0]}.jpg") == gaps.tar[f"ocr_vqa/images/{gaps.dead[0]}.jpg"]
    assert decode(storage.read_bytes(f"{INTO}/{gaps.bad}.jpg")).format == "JPEG"  # the zip's PNG, converted
    assert storage.read_bytes(f"{INTO}/{gaps.ok[0]}.jpg") == first_fill.kept
    assert staged_archives(storage) == []  # applied and deleted


def test_the_report_and_the_index_name_what_the_mirrors_filled(first_fill):
    storage, gaps = first_fill.storage, first_fill.gaps
    report = storage.read_json(crawl.report_key("ocr_vqa"))
    assert report["missing"] == [gaps.dead[1]]
    assert report["filled_from_mirror"][gaps.dead[0]] == {"archive": "ocr_vqa.tar", "member": f"ocr_vqa/images/{gaps.dead[0]}.jpg", "conversion": None, "upstream": "HTTP 404"}
    assert report["filled_from_mirror"][gaps.bad]["archive"] == "ocr_vqa_images_llava_v15.zip"
    assert report["filled_from_mirror"][gaps.bad]["conversion"] == "PNG->JPEG"
    assert [m["outcome"] for m in report["mirrors"]] == ["filled", "filled"]
    assert len(Manifest(storage, "ocr_vqa").index("images")) == 5


def test_a_fill_record_names_the_archives_version_what_it_holds_and_what_is_broken_in_it(first_fill):
    gaps = first_fill.gaps
    record = first_fill.storage.read_json(crawl.fill_record_key("ocr_vqa", "ocr_vqa.tar"))
    assert record["upstream"]["etag"] == f'"{hashlib.sha1(tar_bytes(gaps.tar)).hexdigest()}"'
    assert record["upstream"]["size"] == len(tar_bytes(gaps.tar))
    assert record["holds"] == sorted([gaps.dead[0], gaps.bad, gaps.ok[0]]) and set(record["broken"]) == {gaps.bad}


@pytest.fixture(scope="module")
def unchanged_rerun(first_fill):
    return fill(first_fill.storage, first_fill.gaps)


def test_a_rerun_with_unchanged_archives_probes_each_once_and_downloads_nothing(unchanged_rerun):
    again, gaps = unchanged_rerun.summary, unchanged_rerun.gaps
    assert again["filled_this_run"] == 0 and again["missing"] == 1
    assert [(m["outcome"], m["reason"]) for m in again["mirrors"]] == [("skipped", "unchanged upstream; it holds none of the 1 missing images")] * 2
    assert unchanged_rerun.tar_gets == unchanged_rerun.zip_gets == 1
    assert gaps.heads(TAR_URL) == gaps.heads(ZIP_URL) == 1
    # Earlier fills stay named in the report after a rerun.
    assert set(unchanged_rerun.storage.read_json(crawl.report_key("ocr_vqa"))["filled_from_mirror"]) == {gaps.dead[0], gaps.bad}


@pytest.fixture(scope="module")
def lost_again(unchanged_rerun):
    """A filled cover lost again: the tar holds it only broken."""
    storage, gaps = unchanged_rerun.storage, unchanged_rerun.gaps
    storage.delete(f"{INTO}/{gaps.bad}.jpg")
    finish(storage, "ocr_vqa", INTO)
    return fill(storage, gaps)


def test_a_cover_lost_again_is_fetched_only_from_the_mirror_that_holds_it_good(lost_again):
    third = lost_again.summary
    assert third["mirrors"][0]["reason"] == "unchanged upstream; the 1 missing images it holds are broken in it"
    assert third["mirrors"][1]["outcome"] == "filled" and third["filled_this_run"] == 1
    assert (lost_again.tar_gets, lost_again.zip_gets) == (1, 2)


@pytest.fixture(scope="module")
def new_zip(lost_again):
    """A new version of the zip (a new ETag) that has the last gap."""
    gaps = lost_again.gaps
    gaps.zip[f"ocr_vqa/images/{gaps.dead[1]}.gif"] = gif_bytes(60, 90, seed=44)
    gaps.srv.replace(hub_path(ZIP_URL), make_zip(gaps.zip))
    return fill(lost_again.storage, gaps)


def test_a_new_version_of_an_archive_is_downloaded_again_and_fills_the_last_gap(new_zip):
    fourth, gaps = new_zip.summary, new_zip.gaps
    assert fourth["missing"] == 0 and fourth["filled_this_run"] == 1
    assert fourth["mirrors"][0]["outcome"] == "skipped" and fourth["mirrors"][1]["outcome"] == "filled"
    assert (new_zip.tar_gets, new_zip.zip_gets) == (1, 3)
    report = new_zip.storage.read_json(crawl.report_key("ocr_vqa"))
    assert report["missing"] == [] and set(report["filled_from_mirror"]) == {*gaps.dead, gaps.bad}


def test_with_nothing_missing_a_fill_sends_no_request(new_zip):
    before = len(new_zip.gaps.srv.requests)
    fifth = fill(new_zip.storage, new_zip.gaps).summary
    assert [m["reason"] for m in fifth["mirrors"]] == ["nothing missing"] * 2 and len(new_zip.gaps.srv.requests) == before


def test_a_dead_mirror_falls_through_to_the_next(storage, waits, caplog):
    gone = f"{HUB}/datasets/someone/gone/resolve/main/ocr_vqa_images.zip"
    busy = f"{HUB}/datasets/someone/busy/resolve/main/images.tar"
    with FakeHttpServer() as srv:
        gaps = crawl_with_gaps(storage, srv)
        srv.add(hub_path(busy), tar_bytes(gaps.tar))
        srv.script(hub_path(busy), *[status(503)] * FAST.attempts)
        with caplog.at_level("WARNING", logger="vlmdata.crawl"):
            summary = crawl.fill_from_mirrors(storage, "ocr_vqa", INTO, [gone, busy, ZIP_URL, TAR_URL], mirrors=gaps.mirrors, policy=FAST)
        outcomes = summary["mirrors"]
        assert [m["outcome"] for m in outcomes] == ["failed", "failed", "filled", "filled"]
        assert "HTTP 404" in outcomes[0]["reason"] and "giving up after 3 attempts: HTTP 503" in outcomes[1]["reason"]
        assert outcomes[2]["filled"] == 1 and outcomes[3]["filled"] == 1 and outcomes[3]["broken"] == 0  # the zip came first this time
        assert summary["missing"] == 1
        warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "trying the next one" in r.getMessage()]
        assert len(warned) == 2 and "gone" in warned[0] and "busy" in warned[1]
        assert [m["outcome"] for m in storage.read_json(crawl.report_key("ocr_vqa"))["mirrors"]] == ["failed", "failed", "filled", "filled"]
        # A failed mirror has no fill record: the next run asks it again.
        srv.add(hub_path(gone), make_zip({f"images/{gaps.dead[1]}.jpg": jpeg_bytes(60, 90, seed=50)}))
        again = crawl.fill_from_mirrors(storage, "ocr_vqa", INTO, [gone, busy, ZIP_URL, TAR_URL], mirrors=gaps.mirrors, policy=FAST)
        assert again["mirrors"][0]["outcome"] == "filled" and again["missing"] == 0
        assert [m["reason"] for m in again["mirrors"][1:]] == ["nothing missing"] * 3


def test_a_hostile_or_bogus_mirror_archive_places_nothing_and_is_not_fetched_again_unchanged(storage, waits):
    hostile = f"{HUB}/datasets/someone/evil/resolve/main/ocr_vqa.zip"
    page = f"{HUB}/datasets/someone/page/resolve/main/images.tar"
    with FakeHttpServer() as srv:
        gaps = crawl_with_gaps(storage, srv)
        srv.add(hub_path(hostile), make_zip({f"images/{gaps.dead[0]}.jpg": jpeg_bytes(seed=60), "../../etc/cron.d/x.jpg": jpeg_bytes(seed=61)}))
        srv.add(hub_path(page), b"<!DOCTYPE html><html><body>Sign in to continue</body></html>", content_type="text/html")
        urls = [hostile, page, ZIP_URL]
        summary = crawl.fill_from_mirrors(storage, "ocr_vqa", INTO, urls, mirrors=gaps.mirrors, policy=FAST)
        evil, html, good = summary["mirrors"]
        assert evil["outcome"] == "failed" and evil["reason"].startswith("UnsafeArchive: member '../../etc/cron.d/x.jpg'")
        assert html["outcome"] == "failed" and html["reason"].startswith("NotAnArchive")
        assert good["outcome"] == "filled" and good["filled"] == 1
        assert not storage.exists(f"{INTO}/{gaps.dead[0]}.jpg")  # vetted before anything was written
        assert summary["missing"] == 2 and staged_archives(storage) == []
        # Refused with its fingerprint: unchanged, it is not downloaded again.
        again = crawl.fill_from_mirrors(storage, "ocr_vqa", INTO, urls, mirrors=gaps.mirrors, policy=FAST)
        assert again["mirrors"][0]["reason"].startswith("unchanged upstream since it was refused (UnsafeArchive")
        assert again["mirrors"][1]["reason"].startswith("unchanged upstream since it was refused (NotAnArchive")
        assert len(gaps.gets(hostile)) == len(gaps.gets(page)) == 1


class ListingCounter(LocalStorage):
    """The real local storage, counting the listings asked of it per folder."""

    def __init__(self, root):
        super().__init__(root)
        self.listings = Counter()

    def list_stamped(self, prefix):
        self.listings[prefix.strip("/")] += 1
        return super().list_stamped(prefix)


def test_a_crawl_lists_the_image_folder_twice_and_merges_the_shards_once(tmp_path, waits):
    """plan_shards and finish list the image folder (207K objects at real scale); the mirror fill
    after them reads what is stored from finish's index and adds what it placed to its report."""
    storage = ListingCounter(tmp_path / "root")
    with FakeHttpServer() as srv:
        gaps = crawl_with_gaps(storage, srv)  # plan, crawl the shard, finish
        summary = crawl.fill_from_mirrors(storage, "ocr_vqa", INTO, [TAR_URL, ZIP_URL], mirrors=gaps.mirrors, policy=FAST)
    assert summary["filled_this_run"] == 2 and summary["missing"] == 1
    assert storage.listings[INTO] == 2
    assert storage.listings["_vlmdata/crawl/ocr_vqa/results"] == 1  # one merge of the shards' results
    # What the fill added is what a full merge finds.
    added = storage.read_json(crawl.report_key("ocr_vqa"))
    index = Manifest(storage, "ocr_vqa").index("images")
    assert len(index) == 5 and set(added["filled_from_mirror"]) == {gaps.dead[0], gaps.bad}
    finish(storage, "ocr_vqa", INTO)
    merged = storage.read_json(crawl.report_key("ocr_vqa"))
    assert {**added, "finished_at": None} == {**merged, "finished_at": None}
    assert Manifest(storage, "ocr_vqa").index("images") == index


def resumed_from(request) -> int:
    return int(request.headers["Range"].removeprefix("bytes=").removesuffix("-"))


def test_a_mirror_download_resumes_after_resets_within_a_run_and_across_runs(storage, waits):
    with FakeHttpServer() as srv:
        gaps = crawl_with_gaps(storage, srv)
        # Big enough that a reset leaves whole chunks on disk (the download reads 64 KiB at a time).
        gaps.tar["ocr_vqa/dataset.json"] = random.Random(7).randbytes(1_500_000)
        data = tar_bytes(gaps.tar)
        srv.replace(hub_path(TAR_URL), data)
        # Three resets use up FAST's attempts: the mirror fails this run, its partial file stays.
        srv.script(hub_path(TAR_URL), *[reset_after(300_000)] * FAST.attempts)
        first = crawl.fill_from_mirrors(storage, "ocr_vqa", INTO, [TAR_URL], mirrors=gaps.mirrors, policy=FAST)
        assert first["mirrors"][0]["outcome"] == "failed" and "giving up after 3 attempts" in first["mirrors"][0]["reason"]
        gets = gaps.gets(TAR_URL)
        assert gets[0].headers.get("Range") is None
        assert 0 < resumed_from(gets[1]) < resumed_from(gets[2]) <= 600_000  # resumed each time, never restarted
        assert all(r.headers.get("If-Range") for r in gets[1:])  # guarded against a changed archive
        assert staged_archives(storage) == ["ocr_vqa.tar.part", "ocr_vqa.tar.part.json"]
        on_disk = (storage.staging_dir() / "ocr_vqa" / "mirrors" / "ocr_vqa.tar.part").stat().st_size
        # The next run picks up the bytes on disk, is reset once more and resumes again.
        srv.script(hub_path(TAR_URL), reset_after(300_000))
        second = crawl.fill_from_mirrors(storage, "ocr_vqa", INTO, [TAR_URL], mirrors=gaps.mirrors, policy=FAST)
        later = gaps.gets(TAR_URL)[3:]
        assert len(later) == 2 and resumed_from(later[0]) == on_disk < resumed_from(later[1])
        assert second["mirrors"][0]["outcome"] == "filled" and second["filled_this_run"] == 1
        record = storage.read_json(crawl.fill_record_key("ocr_vqa", "ocr_vqa.tar"))
        assert record["upstream"]["size"] == len(data) and record["upstream"]["sha256"] == hashlib.sha256(data).hexdigest()
        assert storage.read_bytes(f"{INTO}/{gaps.dead[0]}.jpg") == gaps.tar[f"ocr_vqa/images/{gaps.dead[0]}.jpg"]
        assert staged_archives(storage) == []


def test_an_unreachable_signed_cdn_is_recorded_without_the_signature(storage, waits):
    """A mirror on the Hub answers with a signed CDN link (as the Hub does for LFS files). When
    that CDN cannot be reached, the mirror's failure is recorded, but not the link's query."""
    from vlmdata.replicas.hf_hub import FakeHfHub

    with FakeHttpServer() as srv, FakeHfHub(lfs_cdn=True) as hub:
        gaps = crawl_with_gaps(storage, srv)
        hub.add_repo("ej2/llava-ocr-vqa", {"ocr_vqa.tar": tar_bytes(gaps.tar)})
        hub.cdn.stop()  # connections refused: requests names the URL it could not reach
        mirrors = Mirrors({AMAZON: f"{srv.url}/amazon/", HUB: hub.endpoint})
        summary = crawl.fill_from_mirrors(storage, "ocr_vqa", INTO, [TAR_URL], mirrors=mirrors, policy=FAST)
    (outcome,) = summary["mirrors"]
    assert outcome["outcome"] == "failed" and "giving up after 3 attempts: ConnectionError" in outcome["reason"]
    assert "?<redacted>" in outcome["reason"]
    recorded = [key for prefix in ("data", "_vlmdata") for key, _ in storage.list(prefix) if b"Signature=" in storage.read_bytes(key)]
    assert recorded == []


def test_a_dead_signed_cover_url_is_recorded_without_its_query(storage, waits):
    """A list (or a mirror map) may point covers at signed URLs: the crawl report says why a
    cover is dead without the URL's credentials."""
    with FakeHttpServer() as gone:
        url = f"{gone.url}/covers/1.jpg?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=5ec2e7c0ffee"
    storage.write_json(LIST_KEY, {"0000000001": {"imageURL": url}})  # nobody listens there any more
    for shard in plan_shards(storage, LIST_KEY, INTO):
        crawl_shard(storage, shard["key"], INTO, policy=FAST)
    finish(storage, "ocr_vqa", INTO)
    report = storage.read_json(crawl.report_key("ocr_vqa"))
    assert "ConnectionError" in report["dead"]["0000000001"] and "?<redacted>" in report["dead"]["0000000001"]
    written = [key for prefix in ("_vlmdata/reports", "_vlmdata/crawl/ocr_vqa/results") for key, _ in storage.list(prefix)]
    assert written and [key for key in written if b"5ec2e7c0ffee" in storage.read_bytes(key)] == []  # the list and its shards hold it: they are the input


def test_the_integrity_report_names_the_crawls_dead_and_converted_images(storage, waits):
    """OCR-VQA's report page says what its crawl could not store, not just that the stored
    images decode."""
    from vlmdata.verify import verify_source

    with FakeHttpServer() as srv:
        site = build_site(srv)
        storage.write_json(LIST_KEY, site.listing)
        mirrors = Mirrors({AMAZON: f"{srv.url}/amazon/"})
        for shard in plan_shards(storage, LIST_KEY, INTO, shard_size=25):
            crawl_shard(storage, shard["key"], INTO, mirrors=mirrors, policy=FAST, workers=8, per_host=4)
        finish(storage, "ocr_vqa", INTO)
    report = verify_source(load_catalog()["ocr_vqa"], storage, load_catalog(), workers=1)
    assert report.crawl.counts.missing == 7 and set(report.crawl.dead) == site.ids("404", "503", "no_url")
    (not_stored,) = [w for w in report.warnings if w.text.startswith("7 images of the list are not stored (5 dead URLs, 2 broken upstream)")]
    assert set(not_stored.files) == site.ids("404", "503", "no_url", "html", "truncated")  # the finding names every missing id
    page = storage.read_bytes("_vlmdata/reports/ocr_vqa/integrity.html").decode()
    assert all(image_id in page for image_id in site.ids("404", "gif")) and "GIF-&gt;JPEG" in page and "crawl.json" in page
