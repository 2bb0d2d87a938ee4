"""The plan fixes what fetch gets: each fetch fetches the version its plan pinned, or fails
with UpstreamMoved; an acquisition records one version. Against the slice's replicas (COCO
over HTTP, LLaVA-Instruct-150K on the Hub), on a local root and on S3.

Plan, fetch and publish run as Airflow runs them: separate steps, each with a fresh context,
the pins passed as JSON (XCom) in between.
"""

from __future__ import annotations

import json

import pytest

from vlmdata.acquire import Context, Pin, UpstreamMoved, fetch_artifact, plan, publish
from vlmdata.catalog import load_catalog
from vlmdata.fetch.http import FetchError, RetryPolicy
from vlmdata.manifest import Manifest
from vlmdata.mirrors import Mirrors
from vlmdata.replicas.http_server import Resource
from vlmdata.replicas.slice import LLAVA_REPO

FAST = RetryPolicy(attempts=4, backoff=0.01)
COCO_ZIP = "/coco/zips/train2017.zip"


def context(storage) -> Context:
    """A fresh context, as each Airflow task builds its own."""
    return Context(storage, mirrors=Mirrors.from_env(), policy=FAST)


def through_xcom(pins: list[Pin]) -> list[Pin]:
    """What the mapped fetch tasks receive: the plan's pins as JSON."""
    return [Pin.from_dict(data) for data in json.loads(json.dumps([p.to_dict() for p in pins]))]


def flipped(data: bytes, offset: int) -> bytes:
    """Another version of the same size (a size change fails earlier, against the catalog)."""
    return data[:offset] + bytes([data[offset] ^ 0xFF]) + data[offset + 1 :]


def part_files(storage) -> list:
    return [p for p in storage.staging_dir().rglob("*") if p.name.endswith(".part")]


def test_a_push_between_plan_and_fetch_still_fetches_the_planned_commit(storage, upstream):
    replica, http, hub = upstream
    source = load_catalog()["llava_instruct_150k"]
    the_plan = plan(source, context(storage))
    pins = through_xcom(the_plan.pins)
    assert {p.revision for p in pins} == {replica.commit} and len(pins) == 6

    pushed = dict(replica.llava_files, **{"detail_23k.json": b"[]\n" + b" " * 3000, "conversation_58k.json": b"[]\n"})
    new_commit = hub.add_repo(LLAVA_REPO, pushed)  # main moves while the fetches wait for a worker
    hub.server.clear_requests()

    fetched = [fetch_artifact(source, pin, context(storage)) for pin in pins]
    summary = publish(source, context(storage), fetched)

    # The planned commit's bytes, not the pushed ones; the branch was never asked for again.
    for name in ("detail_23k.json", "conversation_58k.json", "llava_instruct_150k.json"):
        assert storage.read_bytes(f"data/llava/{name}") == replica.llava_files[name]
    asked = [r.path for r in hub.server.requests]
    assert asked and not any("/main" in path for path in asked), asked
    assert all(replica.commit in path for path in asked if "/resolve/" in path)
    # One coherent version: every artifact and the source record name the planned commit.
    records = Manifest(storage, source.id).artifacts()
    assert {r.revision for r in records.values()} == {replica.commit} != {new_commit}
    recorded = Manifest(storage, source.id).source()
    assert recorded.revision == summary["revision"] == replica.commit
    assert recorded.planned_at == pins[0].planned_at and recorded.published_at >= recorded.planned_at

    # The next acquisition plans again and takes the push, recording its commit.
    again = plan(source, context(storage))
    assert sorted(p.name for p in again.pins) == ["conversation_58k.json", "detail_23k.json"]
    summary = publish(source, context(storage), [fetch_artifact(source, pin, context(storage)) for pin in through_xcom(again.pins)])
    assert summary["revision"] == Manifest(storage, source.id).source().revision == new_commit
    assert storage.read_bytes("data/llava/detail_23k.json") == pushed["detail_23k.json"]


def test_an_http_file_changed_between_plan_and_fetch_fails_and_keeps_what_was_there(storage, upstream):
    replica, http, _hub = upstream
    source = load_catalog()["coco_train2017"]
    publish(source, context(storage), [fetch_artifact(source, pin, context(storage)) for pin in plan(source, context(storage)).pins])
    manifest = Manifest(storage, source.id)
    record, placed = manifest.artifact("train2017.zip").model_dump(), dict(storage.list("data/coco"))
    published = manifest.source().model_dump()

    http.replace(COCO_ZIP, flipped(replica.coco_zip, 100))  # a new upstream version: planned
    (pin,) = through_xcom(plan(source, context(storage)).pins)
    newest = http.replace(COCO_ZIP, flipped(replica.coco_zip, 200))  # and another, before the fetch runs
    gets = http.count("GET", COCO_ZIP)

    with pytest.raises(UpstreamMoved) as raised:
        fetch_artifact(source, pin, context(storage))
    message = str(raised.value)
    assert f"etag: {pin.fingerprint['etag']!r} -> {newest.etag!r}" in message
    assert f"last_modified: {pin.fingerprint['last_modified']!r} -> {newest.last_modified!r}" in message
    assert "coco_train2017/train2017.zip" in message and pin.planned_at in message and "Run the acquisition again" in message
    # Nothing moved: no download, the placed files and the manifest as they were.
    assert http.count("GET", COCO_ZIP) == gets and part_files(storage) == []
    assert dict(storage.list("data/coco")) == placed
    assert manifest.artifact("train2017.zip").model_dump() == record and manifest.source().model_dump() == published


def test_a_change_after_the_fetch_checked_its_pin_is_refused_before_a_byte_is_written(storage, upstream):
    replica, http, _hub = upstream
    source = load_catalog()["coco_train2017"]
    (pin,) = through_xcom(plan(source, context(storage)).pins)
    # Upstream changes between the fetch's HEAD and its GET: HEAD still sees the pinned
    # version, the GET gets the next one.
    newer = Resource(flipped(replica.coco_zip, 300), etag='"next-version"', last_modified=http.next_http_date())
    http.route("GET", COCO_ZIP, lambda request, match: newer if request.method == "GET" else None)

    with pytest.raises(UpstreamMoved, match=f"etag: '{pin.fingerprint['etag']}' -> '\"next-version\"'"):
        fetch_artifact(source, pin, context(storage))
    assert http.count("GET", COCO_ZIP) == 1  # refused on the answer's headers: not retried
    assert part_files(storage) == [] and not list(storage.list("data/coco"))
    assert Manifest(storage, source.id).artifact("train2017.zip") is None


def test_the_pins_are_json_and_the_dry_run_reads_as_before(storage, upstream):
    replica, _http, _hub = upstream
    the_plan = plan(load_catalog()["coco_train2017"], context(storage), check_space=False)
    (data,) = json.loads(json.dumps([p.to_dict() for p in the_plan.pins]))
    assert data["name"] == "train2017.zip" and data["url"].endswith(COCO_ZIP)
    assert data["expected"]["size"] == len(replica.coco_zip) and data["expected"]["md5"]
    assert data["fingerprint"]["etag"] and data["fingerprint"]["size"] == len(replica.coco_zip)
    assert the_plan.fetch == [{"name": "train2017.zip", "url": data["url"], "size": len(replica.coco_zip), "revision": None}]


def test_publish_refuses_fetches_of_two_plans(storage, upstream):
    source = load_catalog()["llava_instruct_150k"]
    fetched = [fetch_artifact(source, pin, context(storage)) for pin in plan(source, context(storage)).pins]
    other = dict(fetched[0], revision="0" * 40, planned_at="2020-01-01T00:00:00+00:00")
    with pytest.raises(FetchError, match="different plans"):
        publish(source, context(storage), [*fetched, other])
    assert Manifest(storage, source.id).source() is None  # nothing published


def test_the_fetch_task_fails_without_retries_when_upstream_moved(tmp_path, upstream, monkeypatch):
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow-home"))  # before Airflow is imported
    from airflow.sdk.exceptions import AirflowFailException

    from vlmdata.operators.acquire import HttpFetchOperator
    from vlmdata.storage import LocalStorage

    replica, http, _hub = upstream
    monkeypatch.setenv("AIRFLOW_VAR_VLMDATA_ROOT", str(tmp_path / "root"))  # the Variable the task reads
    (pin,) = plan(load_catalog()["coco_train2017"], context(LocalStorage(tmp_path / "root"))).pins
    http.replace(COCO_ZIP, flipped(replica.coco_zip, 100))
    task = HttpFetchOperator(task_id="fetch", source_id="coco_train2017", pin=pin.to_dict())
    with pytest.raises(AirflowFailException, match="upstream changed since the plan.*Run the acquisition again"):
        task.execute({})
