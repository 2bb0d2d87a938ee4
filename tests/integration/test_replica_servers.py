"""The fakes behave as specified, checked with the real clients: requests and huggingface_hub."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx2
import pytest
import requests
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from PIL import Image

from vlmdata.replicas.data import (
    coco_like_zip,
    gif_bytes,
    jpeg_bytes,
    llava_annotation_json,
    llava_record,
    make_zip,
    png_bytes,
    truncated_jpeg_bytes,
)
from vlmdata.replicas.hf_hub import FakeHfHub, git_blob_sha1
from vlmdata.replicas.http_server import (
    FakeHttpServer,
    Resource,
    Response,
    corrupt,
    drop_after,
    http_date,
    ignore_range,
    redirect,
    reset_after,
    status,
    throttle,
)

DATA = bytes(range(256)) * 40  # 10,240 bytes, every offset distinguishable mod 256


@pytest.fixture
def srv():
    with FakeHttpServer() as server:
        server.add("/f.bin", DATA)
        yield server


@pytest.fixture
def hub():
    with FakeHfHub() as h:
        yield h


def read_until_error(resp: requests.Response) -> tuple[bytes, BaseException | None]:
    """Body bytes requests handed out before the stream failed, and the failure.

    urllib3 may hold back the last partial chunk when it raises: use raw_get for exact counts."""
    got = bytearray()
    try:
        for chunk in resp.iter_content(256):
            got += chunk
    except requests.RequestException as e:
        return bytes(got), e
    return bytes(got), None


def raw_get(url: str, headers: dict | None = None) -> tuple[int, bytes, BaseException | None]:
    """Status, exactly the body bytes that arrived, and how the read ended (http.client)."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        conn.request("GET", u.path, headers=headers or {})
        resp = conn.getresponse()
        try:
            return resp.status, resp.read(), None
        except http.client.IncompleteRead as e:
            return resp.status, e.partial, e
    finally:
        conn.close()


# ------------------------------------------------------------------------------ FakeHttpServer


def test_get_and_head_carry_validators_and_length(srv):
    r = requests.get(f"{srv.url}/f.bin")
    assert r.status_code == 200 and r.content == DATA
    assert r.headers["Content-Length"] == str(len(DATA))
    assert r.headers["ETag"] == f'"{hashlib.sha1(DATA).hexdigest()}"'
    assert r.headers["Accept-Ranges"] == "bytes"
    assert "GMT" in r.headers["Last-Modified"]

    h = requests.head(f"{srv.url}/f.bin")
    assert h.status_code == 200 and h.content == b""
    assert {k: h.headers[k] for k in ("Content-Length", "ETag", "Last-Modified")} == {
        k: r.headers[k] for k in ("Content-Length", "ETag", "Last-Modified")
    }
    assert requests.get(f"{srv.url}/missing").status_code == 404
    assert srv.url.startswith("http://127.0.0.1:") and not srv.url.endswith("/")


def test_ranges(srv):
    r = requests.get(f"{srv.url}/f.bin", headers={"Range": "bytes=10000-"})
    assert r.status_code == 206 and r.content == DATA[10000:]
    assert r.headers["Content-Range"] == f"bytes 10000-{len(DATA) - 1}/{len(DATA)}"

    r = requests.get(f"{srv.url}/f.bin", headers={"Range": "bytes=5-9"})
    assert r.status_code == 206 and r.content == DATA[5:10]
    assert r.headers["Content-Range"] == f"bytes 5-9/{len(DATA)}" and r.headers["Content-Length"] == "5"

    r = requests.get(f"{srv.url}/f.bin", headers={"Range": "bytes=-4"})
    assert r.status_code == 206 and r.content == DATA[-4:]

    r = requests.get(f"{srv.url}/f.bin", headers={"Range": f"bytes={len(DATA)}-"})
    assert r.status_code == 416 and r.headers["Content-Range"] == f"bytes */{len(DATA)}"


def test_if_range_with_etag_or_date(srv):
    first = requests.head(f"{srv.url}/f.bin").headers
    etag, date = first["ETag"], first["Last-Modified"]
    for validator in (etag, date):
        r = requests.get(f"{srv.url}/f.bin", headers={"Range": "bytes=100-", "If-Range": validator})
        assert r.status_code == 206 and r.content == DATA[100:]

    new = DATA[::-1]
    srv.replace("/f.bin", new)
    second = requests.head(f"{srv.url}/f.bin").headers
    assert second["ETag"] != etag and second["Last-Modified"] != date
    for validator in (etag, date, "W/" + second["ETag"]):  # stale validators, or a weak one
        r = requests.get(f"{srv.url}/f.bin", headers={"Range": "bytes=100-", "If-Range": validator})
        assert r.status_code == 200 and r.content == new and "Content-Range" not in r.headers

    srv.remove("/f.bin")
    assert requests.get(f"{srv.url}/f.bin").status_code == 404


def test_validators_can_be_left_out(srv):
    srv.add("/plain", b"abc", etag=None, last_modified=None)
    r = requests.get(f"{srv.url}/plain")
    assert r.content == b"abc" and "ETag" not in r.headers and "Last-Modified" not in r.headers
    srv.add("/dated", b"abc", etag=None, last_modified=http_date(0))
    assert requests.get(f"{srv.url}/dated").headers["Last-Modified"] == "Thu, 01 Jan 1970 00:00:00 GMT"


def test_keep_alive_reuses_one_connection(srv):
    with requests.Session() as s:
        for _ in range(3):
            s.get(f"{srv.url}/f.bin").raise_for_status()
    assert len({r.client_port for r in srv.requests}) == 1


def test_drop_after_sends_short_body_then_closes(srv):
    srv.script("/f.bin", drop_after(1000))
    r = requests.get(f"{srv.url}/f.bin", stream=True)
    assert r.status_code == 200 and r.headers["Content-Length"] == str(len(DATA))
    got, err = read_until_error(r)
    assert isinstance(err, requests.exceptions.ChunkedEncodingError) and "IncompleteRead" in repr(err)
    assert DATA.startswith(got)
    assert requests.get(f"{srv.url}/f.bin").content == DATA  # consumed: next request is fine

    srv.script("/f.bin", drop_after(1000))
    code, body, err = raw_get(f"{srv.url}/f.bin", {"Range": "bytes=100-"})
    assert (code, body) == (206, DATA[100:1100]) and isinstance(err, http.client.IncompleteRead)


def test_reset_after_aborts_with_rst(srv):
    srv.script("/f.bin", reset_after(1000))
    r = requests.get(f"{srv.url}/f.bin", stream=True)
    _, err = read_until_error(r)
    # Mid-body requests wraps the reset as ChunkedEncodingError; never a clean IncompleteRead.
    assert err is not None and "ConnectionResetError" in repr(err)

    srv.script("/f.bin", reset_after(0, send_headers=False))
    with pytest.raises(requests.ConnectionError, match="Connection reset by peer"):
        requests.get(f"{srv.url}/f.bin")


def test_status_faults_are_fifo_and_one_per_request(srv):
    srv.script("/f.bin", status(429, retry_after=1), status(503))
    r1, r2, r3 = (requests.get(f"{srv.url}/f.bin") for _ in range(3))
    assert (r1.status_code, r1.headers["Retry-After"]) == (429, "1")
    assert r2.status_code == 503 and "Retry-After" not in r2.headers
    assert r3.status_code == 200 and r3.content == DATA
    assert srv.count("GET", "/f.bin") == 3 and srv.pending_faults("/f.bin") == 0


def test_faults_wait_for_their_method(srv):
    srv.script("/f.bin", status(503), status(500, method="HEAD"))
    assert requests.head(f"{srv.url}/f.bin").status_code == 500  # skips the GET-only 503
    assert requests.head(f"{srv.url}/f.bin").status_code == 200
    assert requests.get(f"{srv.url}/f.bin").status_code == 503


def test_ignore_range_answers_whole_body(srv):
    srv.script("/f.bin", ignore_range())
    r = requests.get(f"{srv.url}/f.bin", headers={"Range": "bytes=100-"})
    assert r.status_code == 200 and r.content == DATA and "Content-Range" not in r.headers


def test_corrupt_flips_exactly_one_byte_at_absolute_offset(srv):
    srv.script("/f.bin", corrupt(5000), corrupt(5000))
    full = requests.get(f"{srv.url}/f.bin").content
    assert [i for i in range(len(DATA)) if full[i] != DATA[i]] == [5000]
    part = requests.get(f"{srv.url}/f.bin", headers={"Range": "bytes=4000-"}).content
    assert [i for i in range(len(part)) if part[i] != DATA[4000 + i]] == [1000]


def test_throttle_slows_the_body(srv):
    srv.script("/f.bin", throttle(40_000))  # 10 KiB at 40 kB/s: about 0.25 s
    t0 = time.monotonic()
    assert requests.get(f"{srv.url}/f.bin").content == DATA
    assert 0.2 < time.monotonic() - t0 < 2


def test_faults_combine(srv):
    srv.script("/f.bin", throttle(100_000) | drop_after(3000))
    t0 = time.monotonic()
    _, body, err = raw_get(f"{srv.url}/f.bin")
    assert body == DATA[:3000] and isinstance(err, http.client.IncompleteRead)
    assert time.monotonic() - t0 > 0.02


def test_redirect(srv):
    srv.add("/elsewhere", b"moved")
    srv.script("/f.bin", redirect(f"{srv.url}/elsewhere"))
    r = requests.get(f"{srv.url}/f.bin")
    assert r.content == b"moved" and r.history[0].status_code == 302
    assert r.history[0].headers["Location"] == f"{srv.url}/elsewhere"


def test_request_log_is_thread_safe(srv):
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: requests.get(f"{srv.url}/f.bin").status_code, range(40)))
    assert codes == [200] * 40 and srv.count("GET", "/f.bin") == 40
    rec = srv.requests[0]
    assert (rec.method, rec.path) == ("GET", "/f.bin") and "user-agent" in rec.headers  # case-insensitive


def test_routes_share_range_and_fault_machinery(srv):
    seen = []

    def blob(req, m):
        seen.append(m["name"])
        return Resource(m["name"].encode() * 100, etag='"v1"', headers={"X-Extra": "yes"}, fault_key="blob")

    srv.route("GET", r"/blobs/(?P<name>[a-z]+)", blob)
    srv.route("POST", r"/echo", lambda req, m: Response.json({"got": req.form()}, status=201))
    srv.route("GET", r"/maybe/(?P<n>\d+)", lambda req, m: None if m["n"] == "0" else Response(204))

    r = requests.get(f"{srv.url}/blobs/ab", headers={"Range": "bytes=2-5", "If-Range": '"v1"'})
    assert (r.status_code, r.content, r.headers["X-Extra"]) == (206, b"abab", "yes")
    assert requests.head(f"{srv.url}/blobs/ab").headers["Content-Length"] == "200"  # GET routes take HEAD

    srv.script("blob", drop_after(10))  # keyed by the handler's fault_key, not the path
    _, body, err = raw_get(f"{srv.url}/blobs/cd")
    assert body == b"cdcdcdcdcd" and err is not None

    r = requests.post(f"{srv.url}/echo", data={"paths": ["a", "b"]})
    assert r.status_code == 201 and r.json() == {"got": {"paths": ["a", "b"]}}
    assert requests.get(f"{srv.url}/maybe/0").status_code == 404  # None falls through
    assert requests.get(f"{srv.url}/maybe/1").status_code == 204
    assert requests.post(f"{srv.url}/blobs/ab").status_code == 404  # method not routed


def test_handler_bug_is_a_500_not_a_hang(srv, capsys):
    srv.route("GET", r"/boom", lambda req, m: 1 / 0)
    r = requests.get(f"{srv.url}/boom")
    assert r.status_code == 500 and b"ZeroDivisionError" in r.content
    assert requests.get(f"{srv.url}/f.bin").status_code == 200


# -------------------------------------------------------------------------------- FakeHfHub

BIG = os.urandom(4096)  # over the default lfs_threshold: an LFS file
SMALL = b'{"hello": "world"}\n'


def add_data_repo(hub, **kwargs):
    return hub.add_repo("org/data", {"README.md": b"# data\n", "json/small.json": SMALL, "images.zip": BIG}, **kwargs)


def test_dataset_info_reports_the_commit(hub):
    sha = add_data_repo(hub)
    api = HfApi(endpoint=hub.endpoint, token=False)
    info = api.dataset_info("org/data", revision="main")
    assert info.sha == sha and len(sha) == 40 and int(sha, 16) >= 0
    assert sorted(s.rfilename for s in info.siblings) == ["README.md", "images.zip", "json/small.json"]
    assert api.dataset_info("org/data").sha == sha  # GET /api/datasets/{repo}
    detailed = {s.rfilename: s for s in api.dataset_info("org/data", files_metadata=True).siblings}
    assert detailed["images.zip"].lfs.sha256 == hashlib.sha256(BIG).hexdigest()
    assert api.repo_info("org/data", repo_type="dataset", expand=["sha"]).sha == sha


def test_new_commit_moves_the_branch_and_old_commit_stays(hub, tmp_path):
    old = add_data_repo(hub)
    new = hub.add_repo("org/data", {"json/small.json": b"[]"})
    api = HfApi(endpoint=hub.endpoint, token=False)
    assert new != old and api.dataset_info("org/data", revision="main").sha == new
    assert api.dataset_info("org/data", revision=old).sha == old
    assert [s.rfilename for s in api.dataset_info("org/data").siblings] == ["json/small.json"]
    p = hf_hub_download(
        "org/data", "json/small.json", repo_type="dataset", revision=old,
        endpoint=hub.endpoint, local_dir=tmp_path / "old", cache_dir=tmp_path / "cache", token=False,
    )
    assert open(p, "rb").read() == SMALL
    assert hub.add_tag("org/data", "v1", old) == old
    assert api.dataset_info("org/data", revision="v1").sha == old
    # An unchanged file keeps the commit that last changed it.
    (entry,) = api.get_paths_info("org/data", ["json/small.json"], repo_type="dataset", expand=True)
    assert entry.last_commit.oid == new


def test_get_paths_info_gives_lfs_sha256_and_git_blob_ids(hub):
    add_data_repo(hub)
    api = HfApi(endpoint=hub.endpoint, token=False)
    infos = {i.path: i for i in api.get_paths_info("org/data", ["images.zip", "json/small.json", "json", "nope"], repo_type="dataset", revision="main")}
    assert set(infos) == {"images.zip", "json/small.json", "json"}  # unknown paths are left out
    big = infos["images.zip"]
    assert big.size == len(BIG) and big.lfs.sha256 == hashlib.sha256(BIG).hexdigest() and big.lfs.size == len(BIG)
    assert big.blob_id == git_blob_sha1(hub.file("org/data", "images.zip").pointer)  # git stores the pointer
    small = infos["json/small.json"]
    assert small.lfs is None and small.blob_id == git_blob_sha1(SMALL)
    assert git_blob_sha1(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"  # = git hash-object


def test_list_repo_tree_recursive_flat_and_paginated(hub):
    add_data_repo(hub)
    api = HfApi(endpoint=hub.endpoint, token=False)
    everything = {e.path: type(e).__name__ for e in api.list_repo_tree("org/data", repo_type="dataset", recursive=True)}
    assert everything == {"README.md": "RepoFile", "images.zip": "RepoFile", "json": "RepoFolder", "json/small.json": "RepoFile"}
    top = {e.path for e in api.list_repo_tree("org/data", repo_type="dataset")}
    assert top == {"README.md", "images.zip", "json"}
    assert [e.path for e in api.list_repo_tree("org/data", "json", repo_type="dataset")] == ["json/small.json"]
    with pytest.raises(RemoteEntryNotFoundError):
        list(api.list_repo_tree("org/data", "nope", repo_type="dataset"))

    hub.page_size = 1
    assert len(list(api.list_repo_tree("org/data", repo_type="dataset", recursive=True))) == 4
    assert sum(1 for r in hub.server.requests if r.path.endswith("/tree/main") and "cursor=" in r.query_string) == 3


def test_hf_hub_download_returns_the_bytes(hub, tmp_path):
    sha = add_data_repo(hub)
    for name, data in (("images.zip", BIG), ("json/small.json", SMALL)):
        p = hf_hub_download(
            "org/data", name, repo_type="dataset", revision=sha,
            endpoint=hub.endpoint, local_dir=tmp_path, cache_dir=tmp_path / "cache", token=False,
        )
        assert open(p, "rb").read() == data and p == str(tmp_path / name)


def test_resolve_headers_match_the_hub(hub):
    sha = add_data_repo(hub)
    url = hf_hub_url("org/data", "images.zip", repo_type="dataset", endpoint=hub.endpoint)
    meta = get_hf_file_metadata(url, token=False)
    assert (meta.commit_hash, meta.etag, meta.size) == (sha, hashlib.sha256(BIG).hexdigest(), len(BIG))

    h = requests.head(url).headers
    assert h["X-Linked-Etag"] == h["ETag"] == f'"{hashlib.sha256(BIG).hexdigest()}"'
    assert h["X-Linked-Size"] == str(len(BIG)) and h["X-Repo-Commit"] == sha
    assert not any(k.lower().startswith("x-xet") for k in h)

    small = requests.head(hub.resolve_url("org/data", "json/small.json")).headers
    assert small["ETag"] == f'"{git_blob_sha1(SMALL)}"' and "X-Linked-Etag" not in small

    r = requests.get(url, headers={"Range": "bytes=4000-", "If-Range": h["ETag"]})
    assert r.status_code == 206 and r.content == BIG[4000:]
    r = requests.get(url, headers={"Range": "bytes=4000-", "If-Range": '"stale"'})
    assert r.status_code == 200 and r.content == BIG


def test_errors_map_to_huggingface_hub_exceptions(hub, tmp_path):
    add_data_repo(hub)
    api = HfApi(endpoint=hub.endpoint, token=False)
    with pytest.raises(RepositoryNotFoundError):
        api.dataset_info("org/none")
    with pytest.raises(RevisionNotFoundError):
        api.dataset_info("org/data", revision="nope")
    kw = dict(repo_type="dataset", endpoint=hub.endpoint, local_dir=tmp_path, cache_dir=tmp_path / "c", token=False)
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download("org/data", "missing.txt", **kw)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("org/data", "README.md", revision="nope", **kw)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/none", "README.md", **kw)
    r = requests.head(hub.resolve_url("org/data", "missing.txt"))
    assert r.status_code == 404 and r.headers["X-Error-Code"] == "EntryNotFound" and r.headers["X-Repo-Commit"]


def test_gated_repo_needs_the_token_for_files(hub, tmp_path):
    add_data_repo(hub, require_token="secret")
    kw = dict(repo_type="dataset", endpoint=hub.endpoint, local_dir=tmp_path, cache_dir=tmp_path / "c")
    with pytest.raises(GatedRepoError):
        hf_hub_download("org/data", "images.zip", token=False, **kw)
    r = requests.head(hub.resolve_url("org/data", "images.zip"))
    assert (r.status_code, r.headers["X-Error-Code"]) == (401, "GatedRepo")
    # Like the Hub, a gated repo's metadata and listing are public.
    assert HfApi(endpoint=hub.endpoint, token=False).dataset_info("org/data").gated == "auto"
    p = hf_hub_download("org/data", "images.zip", token="secret", **kw)
    assert open(p, "rb").read() == BIG


def test_private_repo_hides_itself(hub):
    hub.add_repo("org/secret", {"a.txt": b"a"}, require_token="secret", private=True)
    with pytest.raises(RepositoryNotFoundError) as e:
        HfApi(endpoint=hub.endpoint, token=False).dataset_info("org/secret")
    assert e.value.response.status_code == 401 and not isinstance(e.value, GatedRepoError)
    assert HfApi(endpoint=hub.endpoint, token="secret").dataset_info("org/secret").private is True


def test_script_file_faults_reach_huggingface_hub(hub, tmp_path):
    add_data_repo(hub)
    kw = dict(repo_type="dataset", endpoint=hub.endpoint, cache_dir=tmp_path / "c", token=False)
    resolve = "/datasets/org/data/resolve/main/images.zip"

    # A clean early close: huggingface_hub retries by itself (after a 1 s sleep).
    hub.script_file("org/data", "images.zip", drop_after(1000))
    p = hf_hub_download("org/data", "images.zip", local_dir=tmp_path / "a", **kw)
    assert open(p, "rb").read() == BIG
    assert (hub.server.count("HEAD", resolve), hub.server.count("GET", resolve)) == (1, 2)  # the HEAD took no fault

    # A reset is not retried: it surfaces, and no partial file is left behind.
    hub.script_file("org/data", "images.zip", reset_after(1000))
    with pytest.raises(httpx2.ReadError):
        hf_hub_download("org/data", "images.zip", local_dir=tmp_path / "b", **kw)
    assert not (tmp_path / "b" / "images.zip").exists()


def test_lfs_files_can_redirect_to_a_cdn_origin(tmp_path):
    with FakeHfHub(lfs_cdn=True) as hub:
        add_data_repo(hub, require_token="secret")
        url = hf_hub_url("org/data", "images.zip", repo_type="dataset", endpoint=hub.endpoint)
        r = requests.head(url, headers={"Authorization": "Bearer secret"})
        assert r.status_code == 302 and r.headers["Location"].startswith(hub.cdn.url)
        assert r.headers["X-Linked-Size"] == str(len(BIG)) and r.headers["X-Repo-Commit"]

        hub.script_file("org/data", "images.zip", status(429, retry_after=0))  # lands on the CDN response
        p = hf_hub_download(
            "org/data", "images.zip", repo_type="dataset", endpoint=hub.endpoint,
            local_dir=tmp_path, cache_dir=tmp_path / "c", token="secret",
        )
        assert open(p, "rb").read() == BIG
        gets = [q for q in hub.cdn.requests if q.method == "GET"]
        assert len(gets) == 2 and all("Authorization" not in q.headers for q in gets)  # no token off-Hub


def test_model_repos_and_snapshot_download(hub, tmp_path):
    hub.add_repo("org/model", {"config.json": b"{}", "weights/model.bin": BIG}, repo_type="model")
    api = HfApi(endpoint=hub.endpoint, token=False)
    assert api.model_info("org/model").sha == hub.head("org/model", repo_type="model")
    p = hf_hub_download("org/model", "config.json", endpoint=hub.endpoint, local_dir=tmp_path / "m", cache_dir=tmp_path / "c", token=False)
    assert open(p, "rb").read() == b"{}"

    add_data_repo(hub)
    root = snapshot_download("org/data", repo_type="dataset", endpoint=hub.endpoint, local_dir=tmp_path / "snap", cache_dir=tmp_path / "c", token=False)
    assert open(os.path.join(root, "images.zip"), "rb").read() == BIG
    assert open(os.path.join(root, "json", "small.json"), "rb").read() == SMALL


def test_hub_can_share_a_server_with_plain_files():
    with FakeHttpServer() as server:
        hub = FakeHfHub(server)
        hub.add_repo("org/data", {"a.txt": b"a"})
        server.add("/zips/x.zip", b"zip")
        assert HfApi(endpoint=hub.endpoint, token=False).dataset_info("org/data").sha == hub.head("org/data")
        assert requests.get(f"{server.url}/zips/x.zip").content == b"zip"


# ------------------------------------------------------------------------------------- data


def decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()  # a full decode: verify() would miss truncation
    return img


def test_images_are_real_distinct_and_deterministic():
    img = decode(jpeg_bytes(64, 48, seed=1))
    assert (img.format, img.size) == ("JPEG", (64, 48))
    assert jpeg_bytes(seed=1) == jpeg_bytes(seed=1) != jpeg_bytes(seed=2)
    assert decode(png_bytes(seed=3)).format == "PNG" and decode(gif_bytes(seed=3)).format == "GIF"


def test_truncated_jpeg_opens_but_does_not_decode():
    data = truncated_jpeg_bytes()
    Image.open(io.BytesIO(data)).verify()  # what a shallow check would accept
    with pytest.raises(OSError):
        decode(data)


def test_make_zip_is_deflated_and_stable():
    blob = make_zip({"d/": b"", "d/a.txt": b"a" * 1000})
    zf = zipfile.ZipFile(io.BytesIO(blob))
    assert zf.getinfo("d/").is_dir()
    assert zf.getinfo("d/a.txt").compress_type == zipfile.ZIP_DEFLATED and zf.read("d/a.txt") == b"a" * 1000
    assert blob == make_zip({"d/": b"", "d/a.txt": b"a" * 1000})


def test_coco_like_zip_plants_broken_members():
    blob, names = coco_like_zip(5, {2: "truncated", "train2017/000000000003.jpg": "empty", 4: "not_an_image", 5: "gif"})
    assert names[0] == "train2017/000000000001.jpg" and len(names) == 5
    zf = zipfile.ZipFile(io.BytesIO(blob))
    assert zf.namelist() == ["train2017/", *names]
    assert decode(zf.read(names[0])).format == "JPEG"
    with pytest.raises(OSError):
        decode(zf.read(names[1]))
    assert zf.read(names[2]) == b""
    with pytest.raises(OSError):
        decode(zf.read(names[3]))
    assert decode(zf.read(names[4])).format == "GIF"  # decodes, but is no JPEG
    with pytest.raises(ValueError):
        coco_like_zip(2, {1: "melted"})


def test_llava_records_and_annotation_files():
    rec = llava_record("42", "coco/train2017/000000000042.jpg", turns=2)
    assert rec["image"] == "coco/train2017/000000000042.jpg"
    assert [t["from"] for t in rec["conversations"]] == ["human", "gpt", "human", "gpt"]
    assert rec["conversations"][0]["value"].startswith("<image>\n")
    assert "<image>" not in rec["conversations"][2]["value"]
    assert llava_record("1", "a.jpg", image_last=True)["conversations"][0]["value"].endswith("\n<image>")
    assert "image" not in llava_record("t")

    _, names = coco_like_zip(2)
    records = json.loads(llava_annotation_json(names, extra_missing=["train2017/999.jpg"], text_only=1))
    assert [r.get("image") for r in records] == [*names, "train2017/999.jpg", None]
    assert records[0]["id"] == "000000000001"
