"""The Hugging Face transport against the fake Hub: revisions, LFS sha256, tokens, endpoints."""

from __future__ import annotations

import json
import logging

import pytest

from vlmdata.replicas.hf_hub import FakeHfHub
from vlmdata.replicas.http_server import corrupt, reset_after
from vlmdata.acquire import Context, Pin, acquire, fetch_artifact, plan
from vlmdata.catalog import Source
from vlmdata.fetch.hf import hf_remotes, hub_endpoint
from vlmdata.fetch.http import FetchError, RetryPolicy
from vlmdata.mirrors import Mirrors
from vlmdata.storage import LocalStorage

FAST = RetryPolicy(attempts=3, backoff=0.01)
BIG = bytes(range(256)) * 64  # over the LFS threshold
SMALL = b'[{"id": "1"}]'


def source(repo="org/data", revision="main") -> Source:
    return Source.model_validate({
        "id": "demo", "title": "demo", "kind": "hf", "licence": {"name": "test"},
        "hf": {"repo": repo, "revision": revision},
        "artifacts": [
            {"name": "big.bin", "path": "big.bin", "target": "demo/big.bin"},
            {"name": "small.json", "path": "small.json", "target": "demo/small.json"},
        ],
    })


@pytest.fixture
def hub():
    with FakeHfHub() as fake:
        yield fake


def mirrors_to(hub) -> Mirrors:
    return Mirrors({"https://huggingface.co": hub.endpoint})


def test_remotes_carry_the_commit_and_lfs_sha256(hub):
    commit = hub.add_repo("org/data", {"big.bin": BIG, "small.json": SMALL})
    big, small = hf_remotes(source(), source().artifacts, Context(None, mirrors_to(hub), policy=FAST))
    assert big.revision == small.revision == commit
    assert big.expected.sha256 == hub.file("org/data", "big.bin").sha256 and big.expected.size == len(BIG)
    assert small.expected.git_sha1 == hub.file("org/data", "small.json").blob_id  # small files: the git blob id
    assert f"/resolve/{commit}/" in big.url  # the bytes come from the resolved commit, not the moving branch


def test_corrupted_lfs_bytes_are_caught_by_sha256(hub, tmp_path, storage):
    hub.add_repo("org/data", {"big.bin": BIG, "small.json": SMALL})
    hub.script_file("org/data", "big.bin", corrupt(100), corrupt(100))
    with pytest.raises(Exception, match="sha256"):
        acquire(source(), Context(storage, mirrors_to(hub), policy=FAST))
    assert not storage.exists("data/demo/big.bin")


def test_corrupted_small_file_is_caught_by_git_blob_id(hub, storage):
    hub.add_repo("org/data", {"big.bin": BIG, "small.json": SMALL})
    hub.script_file("org/data", "small.json", corrupt(3), corrupt(3))
    with pytest.raises(Exception, match="git blob sha1"):
        acquire(source(), Context(storage, mirrors_to(hub), policy=FAST), only=["small.json"])


def test_gated_repo_needs_a_token_and_the_token_is_never_logged(hub, storage, caplog):
    hub.add_repo("org/data", {"big.bin": BIG, "small.json": SMALL}, require_token="s3cret-token")
    with pytest.raises(FetchError, match="HTTP 401.*credentials"):
        acquire(source(), Context(storage, mirrors_to(hub), policy=FAST))
    with caplog.at_level(logging.DEBUG):
        acquire(source(), Context(storage, mirrors_to(hub), token="s3cret-token", policy=FAST))
    assert storage.read_bytes("data/demo/big.bin") == BIG
    assert "s3cret-token" not in caplog.text
    assert "s3cret-token" not in repr(Context(storage, token="s3cret-token"))


def test_unknown_revision_and_missing_file_get_clear_errors(hub, storage):
    hub.add_repo("org/data", {"big.bin": BIG})
    with pytest.raises(FetchError, match="revision not found"):
        acquire(source(revision="v9"), Context(storage, mirrors_to(hub), policy=FAST))
    with pytest.raises(FetchError, match="no file 'small.json'"):
        acquire(source(), Context(storage, mirrors_to(hub), policy=FAST))
    with pytest.raises(FetchError, match="repository not found"):
        acquire(source(repo="org/nothing"), Context(storage, mirrors_to(hub), policy=FAST))


def test_hf_endpoint_is_honoured_and_mirrors_apply_on_top(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example")
    assert hub_endpoint(Mirrors()) == "https://hf-mirror.example"
    assert hub_endpoint(Mirrors({"https://hf-mirror.example": "http://127.0.0.1:9"})) == "http://127.0.0.1:9"
    monkeypatch.delenv("HF_ENDPOINT")
    assert hub_endpoint(Mirrors()) == "https://huggingface.co"


def test_the_pins_hold_no_token_and_each_fetch_brings_its_own(hub, tmp_path):
    hub.add_repo("org/data", {"big.bin": BIG, "small.json": SMALL}, require_token="s3cret-token")
    storage = LocalStorage(tmp_path / "root")
    pins = plan(source(), Context(storage, mirrors_to(hub), token="s3cret-token", policy=FAST)).pins
    xcom = json.dumps([pin.to_dict() for pin in pins])  # what the fetch tasks get
    assert "s3cret-token" not in xcom and "Bearer" not in xcom
    big = Pin.from_dict(json.loads(xcom)[0])
    with pytest.raises(FetchError, match="HTTP 401"):  # the plan's token did not travel with the pin
        fetch_artifact(source(), big, Context(storage, mirrors_to(hub), policy=FAST))
    fetch_artifact(source(), big, Context(storage, mirrors_to(hub), token="s3cret-token", policy=FAST))
    assert storage.read_bytes("data/demo/big.bin") == BIG


def test_hub_api_resets_are_retried_and_a_501_is_not(hub, storage, waits):
    """huggingface_hub talks httpx: a reset is an httpx.TransportError, not an OSError; it is
    retried like any transient error. A 501 (or 505) will not pass on a retry: it fails at once."""
    from vlmdata.fetch.http import PermanentFetchError
    from vlmdata.replicas.http_server import reset_after, status

    hub.add_repo("org/data", {"big.bin": BIG, "small.json": SMALL})
    info = "/api/datasets/org/data/revision/main"
    hub.server.script(info, reset_after(0, send_headers=False), reset_after(0, send_headers=False))
    remotes = hf_remotes(source(), source().artifacts, Context(storage, mirrors_to(hub), policy=FAST))
    assert remotes[0].revision == hub.head("org/data") and len(waits) == 2  # two retries, then through
    hub.server.script(info, status(501))
    with pytest.raises(PermanentFetchError, match="501"):
        hf_remotes(source(), source().artifacts, Context(storage, mirrors_to(hub), policy=FAST))
    assert len(waits) == 2  # no retry for the 501


def test_a_host_name_that_does_not_resolve_fails_at_once(storage, waits, monkeypatch):
    """No network, or a typo in a mirror map: the resolver's answer will not change in the next
    seconds, so no retry (it used to cost 8 attempts per try and 3 tries in Airflow)."""
    import socket

    from vlmdata.fetch.http import PermanentFetchError, download

    def no_resolver(host, *args, **kwargs):  # this machine has no DNS to ask: the resolver's answer
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_resolver)
    with pytest.raises(PermanentFetchError, match="does not resolve.*mirror map"):
        hf_remotes(source(), source().artifacts, Context(storage, Mirrors({"https://huggingface.co": "http://hub.mirror.example"}), policy=RetryPolicy()))
    with pytest.raises(PermanentFetchError, match="does not resolve"):
        download("http://files.mirror.example/x.zip", storage.staging_dir() / "x.zip", policy=RetryPolicy())
    assert waits == []


def test_a_download_resumed_after_its_signed_cdn_link_expired_asks_the_hub_again(storage, waits, monkeypatch):
    """The Hub sends LFS files through signed CDN links that expire (an hour; long downloads
    drop before that): a resume goes through the resolve URL for a fresh link, never back to
    the redirect it was handed."""
    import time

    big = BIG * 32  # 512 KiB: the reset comes after several 64 KiB reads were written
    with FakeHfHub(lfs_cdn=True) as hub:
        hub.add_repo("org/data", {"big.bin": big, "small.json": SMALL})
        hub.script_file("org/data", "big.bin", reset_after(len(big) // 2))
        monkeypatch.setattr(time, "sleep", lambda seconds: (waits.append(seconds), hub.expire_cdn_links()))  # the hour passes while it waits
        acquire(source(), Context(storage, mirrors_to(hub), policy=FAST))
        gets = [r for r in hub.cdn.requests if r.method == "GET"]
    assert storage.read_bytes("data/demo/big.bin") == big and len(waits) == 1
    resumed_from = int(gets[1].headers["Range"].removeprefix("bytes=").removesuffix("-"))
    assert len(gets) == 2 and 0 < resumed_from <= len(big) // 2  # resumed from what was written, on a new signature
    assert gets[0].query["Signature"] != gets[1].query["Signature"]
