"""The Google Drive transport against the fake Drive: warning pages, quota pages, resume,
folder listings, and an acquisition of a Drive folder on a local root and on S3."""

from __future__ import annotations

import hashlib
import io
import random
import socket
from datetime import date

import pytest
from PIL import Image

from vlmdata.replicas.data import jpeg_bytes, make_zip
from vlmdata.replicas.gdrive import _QUOTA_PAGE, FakeDrive
from vlmdata.replicas.http_server import drop_after, reset_after, status
from vlmdata import acquire as acq
from vlmdata.acquire import Context, acquire
from vlmdata.catalog import Source, load_catalog
from vlmdata.fetch.digest import Expected
from vlmdata.fetch.gdrive import (
    GDRIVE,
    QUOTA_ATTEMPTS,
    DriveClient,
    DriveQuotaExceeded,
    Entry,
    _FolderPage,
    artifact_for,
    gdrive_remotes,
    listing_date,
)
from vlmdata.fetch.http import FetchError, PermanentFetchError, RetryPolicy, download
from vlmdata.mirrors import Mirrors
from vlmdata.storage import LocalStorage
from vlmdata.verify import verify_source

FAST = RetryPolicy(attempts=6, backoff=0.01)
SMALL = b'{"hello": "drive"}\n'
LARGE = bytes(range(256)) * 800  # 200 KiB: over the fake's warning threshold
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """A name outside loopback is refused before any packet leaves, and fails the test."""
    real = socket.getaddrinfo
    refused = []

    def guarded(host, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else host
        if name not in LOOPBACK:
            refused.append(name)
            raise OSError(f"test tried to reach {name}")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    yield
    assert not refused, f"tried to reach public hosts: {refused}"


@pytest.fixture
def make_drive():
    drives = []

    def make(**options) -> FakeDrive:
        drive = FakeDrive(**options).start()
        drives.append(drive)
        return drive

    yield make
    for drive in drives:
        drive.stop()


@pytest.fixture
def local(tmp_path) -> LocalStorage:
    """For tests about Drive itself; the acquisition test runs on both backends (`storage`)."""
    return LocalStorage(tmp_path / "root")


def client_for(drive: FakeDrive) -> DriveClient:
    return DriveClient(Mirrors(drive.mirrors()), FAST)


def gets(drive: FakeDrive, path: str, file_id: str | None = None) -> list:
    return [r for r in drive.server.requests if r.method == "GET" and r.path == path and (file_id is None or r.query.get("id") == [file_id])]


# --------------------------------------------------------------------------------- resolving


def test_small_file_resolves_to_the_uc_url_without_moving_bytes(make_drive, tmp_path):
    drive = make_drive()
    fid = drive.add_file("a.json", SMALL)
    resolved = client_for(drive).resolve(fid)
    assert resolved.url == f"{drive.url}/uc?export=download&id={fid}"
    assert resolved.size == len(SMALL) and resolved.filename == "a.json"
    assert resolved.last_modified == drive.file(fid).last_modified
    assert drive.byte_requests() == []  # a HEAD told us: no GET of the file while planning
    download(resolved.url, tmp_path / "a.json", Expected(size=resolved.size), policy=FAST)
    assert (tmp_path / "a.json").read_bytes() == SMALL


@pytest.mark.parametrize(
    "options",
    [{}, {"real_urls": True, "uc_redirects": True}, {"require_uuid": True}],
    ids=["warning-page", "drive-today-real-hosts-mirrored", "uuid-required"],
)
def test_large_file_resolves_through_the_warning_page(make_drive, tmp_path, options):
    drive = make_drive(**options)
    fid = drive.add_file("big.zip", LARGE)
    resolved = client_for(drive).resolve(fid)
    assert resolved.url.startswith(f"{drive.url}/download?") and f"id={fid}" in resolved.url
    assert "confirm=t" in resolved.url and "uuid=" in resolved.url  # exactly what the form submits
    assert resolved.size == len(LARGE) and resolved.filename == "big.zip"
    assert drive.byte_requests() == []  # planning read the page and HEADed the bytes URL
    download(resolved.url, tmp_path / "big.zip", Expected(size=resolved.size, sha256=hashlib.sha256(LARGE).hexdigest()), policy=FAST)
    assert (tmp_path / "big.zip").read_bytes() == LARGE


@pytest.mark.parametrize("page_status", [200, 403])
def test_quota_page_is_retried_then_succeeds(make_drive, page_status):
    drive = make_drive(quota_status=page_status)
    fid = drive.add_file("a.json", SMALL)
    drive.quota_exceeded(fid, times=2)
    resolved = client_for(drive).resolve(fid)
    assert resolved.size == len(SMALL)
    assert len(gets(drive, "/uc", fid)) == 2  # two quota pages read, then a HEAD found the file


def test_persistent_quota_fails_the_plan_with_drives_reason(make_drive, local):
    drive = make_drive()
    fid = drive.add_file("sam.zip", LARGE)
    drive.quota_exceeded(fid, times=100)
    source = Source.model_validate({
        "id": "drive_quota", "title": "t", "kind": "gdrive", "licence": {"name": "test"}, "gdrive": {},
        "artifacts": [{"name": "sam.zip", "drive_id": fid, "target": "t/sam.zip"}],
    })
    with pytest.raises(DriveQuotaExceeded) as caught:
        acq.plan(source, Context(local, mirrors=Mirrors(drive.mirrors()), policy=FAST))
    message = str(caught.value)
    assert "quota" in message and "Too many users have viewed or downloaded this file recently" in message
    assert "retry later" in message and "mirror" in message
    assert len(gets(drive, "/uc", fid)) == QUOTA_ATTEMPTS  # a few tries, not the whole retry budget


def test_unknown_ids_fail_clearly(make_drive):
    drive = make_drive()
    client = client_for(drive)
    with pytest.raises(PermanentFetchError, match=r"file 1nope: not found .*HTTP 404"):
        client.resolve("1nope")
    with pytest.raises(PermanentFetchError, match=r"folder 1nofolder: not found"):
        client.list_folder("1nofolder")
    assert len(drive.server.requests) == 2  # not retried


def test_a_page_without_form_or_quota_is_not_shared(make_drive):
    drive = make_drive()
    fid = drive.add_file("secret.zip", LARGE, shared=False)
    with pytest.raises(PermanentFetchError, match="not shared as 'Anyone with the link'"):
        client_for(drive).resolve(fid)


# ---------------------------------------------------------------------------------- resuming


# Cuts beyond fetch.http's 64 KiB read size, so that some bytes reach the disk before the break.
@pytest.mark.parametrize("fault", [drop_after(150_000), reset_after(150_000)], ids=["drop", "reset"])
@pytest.mark.parametrize("etags", [False, True], ids=["last-modified", "etag"])
def test_download_resumes_on_the_usercontent_url(make_drive, tmp_path, fault, etags):
    drive = make_drive(etags=etags)
    fid = drive.add_file("big.zip", LARGE)
    resolved = client_for(drive).resolve(fid)
    drive.script_file(fid, fault, status(503))
    download(resolved.url, tmp_path / "big.zip", Expected(size=len(LARGE), sha256=hashlib.sha256(LARGE).hexdigest()), policy=FAST)
    assert (tmp_path / "big.zip").read_bytes() == LARGE
    sent = drive.byte_requests(fid)
    assert [r.path for r in sent] == ["/download"] * 3 and sent[0].headers.get("Range") is None
    resumed_at = int(sent[-1].headers["Range"].removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_at <= 150_000
    validator = drive.file(fid).etag if etags else drive.file(fid).last_modified
    assert sent[-1].headers["If-Range"] == validator  # guarded against a new version


def test_a_killed_download_resumes_under_a_fresh_warning_page_uuid(make_drive, tmp_path):
    """A new task attempt resolves again and gets a new uuid: the .part still resumes."""
    drive = make_drive(require_uuid=True)
    fid = drive.add_file("big.zip", LARGE)
    first = client_for(drive).resolve(fid)
    drive.script_file(fid, reset_after(150_000))
    with pytest.raises(FetchError, match="partial file is kept"):
        download(first.url, tmp_path / "big.zip", Expected(size=len(LARGE)), policy=RetryPolicy(attempts=1))
    second = client_for(drive).resolve(fid)
    assert second.url != first.url
    download(second.url, tmp_path / "big.zip", Expected(size=len(LARGE), sha256=hashlib.sha256(LARGE).hexdigest()), policy=FAST)
    assert (tmp_path / "big.zip").read_bytes() == LARGE
    resumed_at = int(drive.byte_requests(fid)[-1].headers["Range"].removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_at <= 150_000  # the bytes of the killed attempt were kept


def test_a_new_version_during_a_resume_starts_over(make_drive, tmp_path):
    drive = make_drive()
    fid = drive.add_file("big.zip", LARGE)
    resolved = client_for(drive).resolve(fid)
    drive.script_file(fid, drop_after(150_000))
    new = LARGE[::-1]
    original_fetch = drive._bytes

    def replace_after_first(req, f):
        if drive.byte_requests(fid):  # second request: upstream changed meanwhile
            drive.replace_file(fid, new)
            f = drive.file(fid)
        return original_fetch(req, f)

    drive._bytes = replace_after_first
    download(resolved.url, tmp_path / "big.zip", Expected(), policy=FAST)
    assert (tmp_path / "big.zip").read_bytes() == new  # If-Range failed: whole new file, no splice


# ----------------------------------------------------------------------------------- folders


def test_folder_listing_recurses_into_sub_folders(make_drive):
    drive = make_drive()
    top = drive.add_folder("WebData")
    zip_id = drive.add_file("wikiart.zip", LARGE, folder=top)
    readme = drive.add_file("notes & more.txt", SMALL, folder=top)
    extra = drive.add_folder("extra", parent=top)
    deep = drive.add_folder("deeper", parent=extra)
    inner = drive.add_file("inner.json", SMALL, folder=deep)
    drive.add_file("elsewhere.bin", SMALL)  # not in the folder
    entries = client_for(drive).list_folder(top)
    assert sorted((e.path, e.id) for e in entries) == sorted([("wikiart.zip", zip_id), ("notes & more.txt", readme), ("extra/deeper/inner.json", inner)])
    assert all(not e.folder and e.modified and date.fromisoformat(e.modified) for e in entries)
    assert len(gets(drive, "/embeddedfolderview")) == 3  # one page per folder


def test_listing_parser_on_drive_markup():
    page = (
        '<div class="flip-entries">'
        '<div class="flip-entry" id="entry-1Doc" tabindex="0" role="link"><div class="flip-entry-info">'
        '<a href="https://docs.google.com/document/d/1Doc/edit?usp=drive_web"><div class="flip-entry-title">A doc</div></a></div>'
        '<div class="flip-entry-last-modified"><div>Sep 15</div></div></div>'
        '<div class="flip-entry" id="entry-1F" tabindex="0" role="link"><div class="flip-entry-info">'
        '<a href="https://drive.google.com/file/d/1F/view?usp=drive_web"><div class="flip-entry-visual"><div class="flip-entry-thumb"><img src="x"></div></div>'
        '<div class="flip-entry-title">a &amp; b.zip</div></a></div>'
        '<div class="flip-entry-last-modified"><div>3:45 PM</div></div></div>'
        '<div class="flip-entry" id="entry-1D"><div class="flip-entry-info"><a href="https://drive.google.com/drive/u/0/folders/1D">'
        '<div class="flip-entry-title">sub</div></a></div><div class="flip-entry-last-modified"><div>Jan 2, 2024</div></div></div>'
        "</div>"
    )
    today = date(2025, 6, 1)
    assert _FolderPage.parse(page).entries(today) == [Entry("1F", "a & b.zip", folder=False, modified="2025-06-01"), Entry("1D", "sub", folder=True)]
    assert _FolderPage.parse("<html><body>Sign in</body></html>").listing is False
    assert listing_date("Dec 18, 2023", today) == "2023-12-18" and listing_date("Sep 15", today) == "2025-09-15"
    assert listing_date("18.12.23", today) == "18.12.23"  # another locale: kept as shown


def test_listing_date_is_the_fingerprint_only_without_validators(make_drive, local):
    for validators in (True, False):
        drive = make_drive(validators=validators)
        folder = drive.add_folder("F")
        fid = drive.add_file("a.bin", SMALL, folder=folder)
        source = Source.model_validate({"id": "f", "title": "t", "kind": "gdrive", "licence": {"name": "test"}, "gdrive": {"folder_id": folder}})
        ctx = Context(local, mirrors=Mirrors(drive.mirrors()), policy=FAST)
        (remote,) = gdrive_remotes(source, GDRIVE.discover(source, ctx), ctx)
        if validators:
            assert remote.fingerprint == {"drive_id": fid, "size": len(SMALL), "etag": None, "last_modified": drive.file(fid).last_modified}
        else:
            assert remote.fingerprint == {"drive_id": fid, "size": len(SMALL), "etag": None, "last_modified": None, "modified": "2024-01-01"}


def test_webdata_archive_rules():
    webdata = load_catalog()["webdata"]

    def placed(name: str, source: Source = webdata):
        artifact = artifact_for(source, Entry("1x", name, folder=False, path=name))
        return (artifact.extract.into, artifact.extract.strip_components) if artifact.extract else artifact.target

    assert placed("wikiart.zip") == ("wikiart/images", 3)
    assert placed("share_textvqa.zip") == ("share_textvqa/images", 3)
    assert placed("web-celebrity.zip") == ("web-celebrity/images", 3)
    assert placed("web-landmakr.zip") == ("web-landmark/images", 3)
    assert placed("other.zip") == "webdata/other.zip"
    assert placed("README.txt") == "webdata/README.txt"
    assert placed("wikiart.zip", load_catalog()["sharegpt4v_sam_9k"]) == "sharegpt4v_sam_9k/wikiart.zip"  # rules are per source


# ------------------------------------------------------------------------- catalog entries


def test_catalog_drive_entries_resolve_through_the_mirror_map(make_drive, local):
    """The real catalog's Drive sources, their real ids served by the fake behind real host names."""
    drive = make_drive(real_urls=True, uc_redirects=True)
    catalog = load_catalog()
    storage = local
    ctx = Context(storage, mirrors=Mirrors(drive.mirrors()), policy=FAST)

    ocr = catalog["ocr_vqa"]  # artifacts named by `path` inside the folder
    folder = drive.add_folder("OCR-VQA", id=ocr.gdrive.folder_id)
    dataset = drive.add_file("dataset.json", SMALL, folder=folder)
    drive.add_file("loadDataset.py", b"print('hi')\n", folder=folder)
    remotes = gdrive_remotes(ocr, list(ocr.artifacts), ctx)
    assert [r.fingerprint["drive_id"] for r in remotes][0] == dataset
    assert all(r.url.startswith(f"{drive.url}/download?") for r in remotes) and remotes[0].expected.size == len(SMALL)

    sam = catalog["sharegpt4v_sam_9k"]  # one file by `drive_id`
    drive.add_file("sam_images_share-sft.zip", make_zip({"sam/sa_1.jpg": jpeg_bytes(seed=1), "sam/notes.txt": b"x"}), id=sam.artifacts[0].drive_id)
    result = acquire(sam, ctx, acknowledge=True)
    assert result["changed"] == ["sam_images_share-sft.zip"]
    assert [k for k, _ in storage.list("data/sam/images")] == ["data/sam/images/sa_1.jpg"]  # flattened, .jpg only

    webdata = catalog["webdata"]  # no artifacts: the listing decides
    drive.add_folder("WebData", id=webdata.gdrive.folder_id)
    assert acq.artifacts_of(webdata, ctx) == []


def test_path_missing_from_the_folder_names_what_is_there(make_drive, local):
    drive = make_drive()
    ocr = load_catalog()["ocr_vqa"]
    folder = drive.add_folder("OCR-VQA", id=ocr.gdrive.folder_id)
    drive.add_file("dataset.json", SMALL, folder=folder)
    with pytest.raises(PermanentFetchError, match=r"no file 'loadDataset.py' in Drive folder .*\['dataset.json'\]"):
        gdrive_remotes(ocr, list(ocr.artifacts), Context(local, mirrors=Mirrors(drive.mirrors()), policy=FAST))


# ---------------------------------------------------------------------------- end to end


def _noisy_jpeg(seed: int) -> bytes:
    """A JPEG of noise: about 50 KB that deflate cannot shrink, so archives get big quickly."""
    rng = random.Random(seed)
    buf = io.BytesIO()
    Image.frombytes("RGB", (160, 120), rng.randbytes(160 * 120 * 3)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _images(folder: str, seeds, noisy: bool = False) -> dict[str, bytes]:
    """Members laid out as third-party scripts report WebData's archives: data/<folder>/images/."""
    return {f"data/{folder}/images/{n}.jpg": _noisy_jpeg(n) if noisy else jpeg_bytes(seed=n) for n in seeds}


def test_acquire_a_drive_folder(make_drive, storage):
    drive = make_drive(warn_above=8 * 1024)
    top = drive.add_folder("WebData")
    wikiart_members = _images("wikiart", range(8), noisy=True)
    wikiart = drive.add_file("wikiart.zip", make_zip(wikiart_members), folder=top)
    celebrity = drive.add_file("web-celebrity.zip", make_zip(_images("web-celebrity", [1])), folder=top)
    readme = drive.add_file("README.txt", b"academic use only\n", folder=top)
    extra = drive.add_folder("extra", parent=top)
    drive.add_file("notes.json", SMALL, folder=extra)
    sam = drive.add_file("sam_images_share-sft.zip", make_zip({"x/sa_7.jpg": jpeg_bytes(seed=7)}))  # outside the folder
    assert len(drive.file(wikiart).data) > 160_000 and len(drive.file(celebrity).data) <= 8 * 1024  # one of each path

    source = Source.model_validate({
        "id": "webdata", "title": "WebData (test)", "kind": "gdrive",
        "licence": {"name": "academic", "acknowledge": True},
        "gdrive": {"folder_id": top},
        "artifacts": [{"name": "sam_images_share-sft.zip", "drive_id": sam, "extract": {"into": "sam/images", "flatten": True}}],
    })
    def ctx() -> Context:  # a fresh one per run, as each Airflow task gets
        return Context(storage, mirrors=Mirrors(drive.mirrors()), policy=FAST)

    drive.script_file(wikiart, reset_after(150_000))  # the big archive's connection breaks once

    first = acquire(source, ctx(), acknowledge=True)
    assert sorted(first["changed"]) == sorted(["sam_images_share-sft.zip", "wikiart.zip", "web-celebrity.zip", "README.txt", "extra/notes.json"])
    assert dict(storage.list("data/wikiart/images")) == {f"data/wikiart/images/{n}.jpg": len(wikiart_members[f"data/wikiart/images/{n}.jpg"]) for n in range(8)}
    assert [k for k, _ in storage.list("data/web-celebrity/images")] == ["data/web-celebrity/images/1.jpg"]
    assert [k for k, _ in storage.list("data/sam/images")] == ["data/sam/images/sa_7.jpg"]
    assert storage.read_bytes("data/webdata/README.txt") == b"academic use only\n"
    assert storage.read_bytes("data/webdata/extra/notes.json") == SMALL
    assert [r.headers.get("Range") is not None for r in drive.byte_requests(wikiart)] == [False, True]  # resumed
    report = verify_source(source, storage, {source.id: source})  # discovered artifacts are verified from the manifest
    assert report.failures == [] and report.images.ok == 8 + 1 + 1

    # Nothing changed upstream: no byte moves (HEADs and pages only).
    before = len(drive.byte_requests())
    drive.server.clear_requests()
    again = acquire(source, ctx())
    assert again["changed"] == [] and len(drive.byte_requests()) == before
    assert gets(drive, "/download") == [] and gets(drive, "/uc", readme) == []
    assert len(gets(drive, "/embeddedfolderview")) == 2  # the folder and its sub-folder, listed once per step

    # New bytes under the same ids: exactly those are fetched again; stale members go.
    drive.replace_file(readme, b"academic use only, v2\n")
    drive.replace_file(wikiart, make_zip(_images("wikiart", [0, 1, 20, 21, 22, 23, 24, 25], noisy=True)))
    third = acquire(source, ctx())
    assert sorted(third["changed"]) == ["README.txt", "wikiart.zip"]
    assert storage.read_bytes("data/webdata/README.txt") == b"academic use only, v2\n"
    assert sorted(k.rsplit("/", 1)[1] for k, _ in storage.list("data/wikiart/images")) == sorted(f"{n}.jpg" for n in [0, 1, 20, 21, 22, 23, 24, 25])


def test_a_drive_folder_that_changed_since_the_plan_fails_those_fetches(make_drive, local):
    drive = make_drive()
    top = drive.add_folder("WebData")
    replaced = drive.add_file("README.txt", b"v1\n", folder=top)
    removed = drive.add_file("notes.json", SMALL, folder=top)
    drive.add_file("kept.json", SMALL, folder=top)
    source = Source.model_validate({"id": "webdata", "title": "WebData (test)", "kind": "gdrive", "licence": {"name": "test"}, "gdrive": {"folder_id": top}, "artifacts": []})

    def ctx() -> Context:  # a fresh one per fetch, as each Airflow task gets
        return Context(local, mirrors=Mirrors(drive.mirrors()), policy=FAST)

    pins = {pin.name: pin for pin in acq.plan(source, ctx()).pins}
    assert sorted(pins) == ["README.txt", "kept.json", "notes.json"]
    drive.remove(replaced)
    new_id = drive.add_file("README.txt", b"v2\n", folder=top)  # another file under the same name
    drive.remove(removed)

    with pytest.raises(acq.UpstreamMoved, match=f"drive_id: '{replaced}' -> '{new_id}'"):
        acq.fetch_artifact(source, pins["README.txt"], ctx())
    with pytest.raises(acq.UpstreamMoved, match="notes.json: listed -> no longer listed"):
        acq.fetch_artifact(source, pins["notes.json"], ctx())
    assert acq.fetch_artifact(source, pins["kept.json"], ctx())["fetched"]
    assert [key for key, _ in local.list("data")] == ["data/webdata/kept.json"]
    assert drive.byte_requests(new_id) == []


def test_a_quota_page_during_a_pinned_download_is_waited_out_not_taken_for_a_new_version(make_drive, local, waits):
    drive = make_drive()
    fid = drive.add_file("big.zip", LARGE)
    source = Source.model_validate({"id": "demo", "title": "demo", "kind": "gdrive", "licence": {"name": "test"}, "gdrive": {}, "artifacts": [{"name": "big.zip", "drive_id": fid, "target": "demo/big.zip"}]})
    ctx = Context(local, mirrors=Mirrors(drive.mirrors()), policy=FAST)
    (pin,) = acq.plan(source, ctx).pins
    drive.script_file(fid, drop_after(150_000))
    serve, gets = drive._bytes, []

    def quota_page_on_the_resume(req, f):
        gets.extend([req] if req.method == "GET" else [])
        return drive._page(200, _QUOTA_PAGE) if len(gets) == 2 else serve(req, f)

    drive._bytes = quota_page_on_the_resume
    acq.fetch_artifact(source, pin, ctx)
    assert local.read_bytes("data/demo/big.zip") == LARGE
    assert len(gets) == 3 and gets[2].headers.get("Range")  # the page was waited out, then the download resumed
