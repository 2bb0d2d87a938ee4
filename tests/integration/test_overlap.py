"""Writers that overlap, as separate `vlmdata` processes on local and S3 storage: two
acquisitions of one source at once, two builds of one mixture, and a writer frozen mid-download
(SIGSTOP) whose unit another run takes over. One correct result each time, nothing partial at a
final path, and the frozen writer stops by itself when it wakes."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vlmdata.lease import hold
from vlmdata.manifest import Manifest
from vlmdata.replicas.hf_hub import FakeHfHub
from vlmdata.replicas.http_server import FakeHttpServer, drop_after, throttle
from vlmdata.replicas.data import coco_like_zip
from vlmdata.replicas.slice import COCO_BROKEN, SliceReplica
from vlmdata.storage import LocalStorage

REPO = Path(__file__).resolve().parents[2]
ZIP = "/coco/zips/train2017.zip"


@pytest.fixture
def slice_env(request, storage, tmp_path, s3_endpoint):
    """The slice's replicas, and the environment a `vlmdata` process needs to use them and the
    storage. ``@pytest.mark.coco_images(n)``: a COCO zip of n images instead of a dozen."""
    with FakeHttpServer() as http, FakeHfHub() as hub:
        replica = SliceReplica()
        if marker := request.node.get_closest_marker("coco_images"):
            replica.coco_zip, replica.coco_members = coco_like_zip(marker.args[0], COCO_BROKEN)
        env = {**os.environ, **replica.install(http, hub, tmp_path)}
        env.update(VLMDATA_STAGING=str(tmp_path / "staging"), AWS_ENDPOINT_URL=s3_endpoint, PYTHONUNBUFFERED="1")
        yield http, replica, env


def vlmdata(storage, env, *args: str) -> subprocess.Popen:
    """A `vlmdata` process; its output goes to a file (``proc.log``) the test can read meanwhile."""
    log = Path(env["VLMDATA_STAGING"]).parent / f"vlmdata-{time.monotonic_ns()}.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "vlmdata.cli", "--root", storage.url, *args], env=env, cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT)
    proc.log = log
    return proc


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    proc.wait(timeout)
    return proc.returncode, proc.log.read_text()


def partial_file(storage) -> Path:
    return storage.staging_dir() / "coco_train2017" / "train2017.zip.part"


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{what}: {finish(proc, 30)}")
        time.sleep(0.1)


def assert_coco_complete(storage, replica: SliceReplica) -> None:
    """What a user checks after the runs: the manifest's sha256 is the upstream file's, every
    member it lists is there with its size, and no partial or temporary file is in the tree."""
    record = Manifest(storage, "coco_train2017").artifact("train2017.zip")
    assert record.complete and record.sha256 == hashlib.sha256(replica.coco_zip).hexdigest()
    index = Manifest(storage, "coco_train2017").index("train2017.zip")
    assert len(index) == len(replica.coco_members)
    for key, size, _crc in index:
        assert storage.size(key) == size
    leftovers = [key for key, _ in storage.list("data") if key.endswith((".part", ".vlmdata-tmp")) or "/." in key]
    assert not leftovers
    if isinstance(storage, LocalStorage):
        assert not [p for p in storage.root.rglob("*") if p.name.endswith(".vlmdata-tmp")]


def test_two_acquisitions_of_one_source_at_once_download_once(storage, slice_env):
    http, replica, env = slice_env
    http.script(ZIP, throttle(600))  # ~20 s: time for the second run to start, even on a busy machine
    first = vlmdata(storage, env, "acquire", "coco_train2017")
    wait_for(lambda: partial_file(storage).exists(), first, "the first download never started")
    second = vlmdata(storage, env, "acquire", "coco_train2017")
    (code1, log1), (code2, log2) = finish(first), finish(second)
    assert (code1, code2) == (0, 0), log1 + log2
    assert "waiting for vlmdata CLI" in log2 and "already current" in log2
    assert http.count("GET", ZIP) == 1  # one download; the second run found the artifact current
    assert_coco_complete(storage, replica)


def test_two_builds_of_one_mixture_wait_for_each_other_and_write_the_same_bytes(storage, slice_env):
    _http, _replica, env = slice_env
    for step in (("acquire", "coco_train2017"), ("acquire", "llava_instruct_150k"), ("verify", "coco_train2017", "--workers", "1")):
        code, log = finish(vlmdata(storage, env, *step))
        assert code == 0, log
    # A build in progress (held here), then two more started at once: they queue behind it.
    with hold(storage, "mixture/llava_instruct_150k", who="a running build"):
        builds = [vlmdata(storage, env, "mix", "llava_instruct_150k") for _ in range(2)]
        for build in builds:
            wait_for(lambda: "waiting for a running build" in build.log.read_text(), build, "the build did not wait")
    results = [finish(b) for b in builds]
    assert [code for code, _ in results] == [0, 0], results
    lock = storage.read_json("mixtures/llava_instruct_150k/lock.json")
    data = storage.read_bytes(lock["output"]["key"])
    assert hashlib.sha256(data).hexdigest() == lock["output"]["sha256"] and len(data) == lock["output"]["bytes"]
    assert '"sha256": "' + lock["output"]["sha256"] in results[0][1] + results[1][1]  # both built these bytes
    assert not [p for p in storage.staging_dir().rglob("*") if p.is_file() and "mixtures" in p.parts]


@pytest.mark.coco_images(300)
def test_a_frozen_writer_is_taken_over_and_stops_by_itself_when_it_wakes(storage, slice_env):
    http, replica, env = slice_env
    env["VLMDATA_LEASE_TTL"] = "3"
    # The first answer breaks off after two 64 KiB chunks were written to the partial file; the
    # resume crawls, and the writer is frozen in the middle of it.
    assert len(replica.coco_zip) > 200_000
    http.script(ZIP, drop_after(150_000), throttle(2000))
    zombie = vlmdata(storage, env, "acquire", "coco_train2017")
    try:
        wait_for(lambda: http.count("GET", ZIP) == 2, zombie, "the download never resumed")
        zombie.send_signal(signal.SIGSTOP)
        retry = vlmdata(storage, env, "acquire", "coco_train2017")
        code, log = finish(retry)
        assert code == 0, log
        assert "took the lease over from vlmdata CLI" in log and "(expired)" in log
        assert http.requests[-1].headers["Range"] == "bytes=131072-"  # it resumed the frozen writer's bytes
        assert_coco_complete(storage, replica)
        done = {key: storage.read_bytes(key) for key, _ in storage.list("data")}
        manifest = storage.read_bytes("_vlmdata/sources/coco_train2017/artifacts/train2017.zip.json")
    finally:
        zombie.send_signal(signal.SIGCONT)
    code, log = finish(zombie)
    assert code == 1 and "LeaseLost" in log, log
    # The zombie changed nothing the retry wrote.
    assert {key: storage.read_bytes(key) for key, _ in storage.list("data")} == done
    assert storage.read_bytes("_vlmdata/sources/coco_train2017/artifacts/train2017.zip.json") == manifest
    assert_coco_complete(storage, replica)
