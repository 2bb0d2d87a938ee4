"""The slice in real Airflow: API server, scheduler and DAG processor as processes, the
upstreams as loopback fakes, DAGs triggered through the REST API and chained by assets.

Runs once on a local storage root and once on S3 (moto's server), switching the root with
the ``vlmdata_root`` Variable as a user would.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from tests.conftest import free_port
from vlmdata.airflow_client import AirflowClient
from vlmdata.replicas.data import llava_record
from vlmdata.replicas.hf_hub import FakeHfHub
from vlmdata.replicas.http_server import FakeHttpServer, throttle
from vlmdata.replicas.slice import SliceReplica
from vlmdata.localairflow import LocalAirflow
from vlmdata.storage import LocalStorage, S3Options, S3Storage

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
ACQUIRE = ["acquire_coco_train2017", "acquire_llava_instruct_150k"]
CHAIN = [*ACQUIRE, "verify_coco_train2017", "verify_llava_instruct_150k", "layout_llava15", "layout_sharegpt4v", "mix_llava_instruct_150k"]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, s3_endpoint):
    work = tmp_path_factory.mktemp("e2e")
    with FakeHttpServer() as http, FakeHfHub() as hub:
        replica = SliceReplica()
        env = replica.install(http, hub, work)
        env.update({
            "VLMDATA_ROOT": str(work / "root"),
            "VLMDATA_STAGING": str(work / "staging"),
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
            # What a user sets in the UI (Admin > Connections); here as an environment connection.
            "AIRFLOW_CONN_AWS_DEFAULT": json.dumps({"conn_type": "aws", "login": "testing", "password": "testing", "extra": {"endpoint_url": s3_endpoint}}),
        })
        airflow = LocalAirflow(work / "airflow", REPO / "dags", port=free_port(), extra_env=env, log_server_port=free_port())
        with airflow:
            airflow.wait_ready(timeout=180)
            client = AirflowClient(airflow.url, airflow.user, airflow.admin_password)
            client.wait_until(lambda: set(CHAIN) <= {d["dag_id"] for d in client.dags()}, timeout=120)
            for dag_id in CHAIN:
                client.unpause(dag_id)
            yield client, replica, work, http, env
            print(airflow.log_dir)


def run_slice(client: AirflowClient, replica: SliceReplica) -> None:
    """Trigger both acquisitions; wait until the mixture is rebuilt and everything is idle."""
    started = time.time()
    before = len(client.runs("mix_llava_instruct_150k"))
    runs = {dag_id: client.trigger(dag_id) for dag_id in ACQUIRE}
    fetches = {"acquire_coco_train2017": {"train2017.zip"}, "acquire_llava_instruct_150k": set(replica.llava_files)}
    try:
        for dag_id, run_id in runs.items():
            assert client.wait_for_run(dag_id, run_id, timeout=300) == "success"
            # A fetch per planned artifact, named after it in the UI and the API (in any run of
            # the DAG: a refresh schedule may have started one before ours, which then has nothing to do).
            instances = [ti for run in client.runs(dag_id) for ti in client.task_instances(dag_id, run["dag_run_id"])]
            assert {ti["rendered_map_index"] for ti in instances if ti["task_id"] == "fetch" and ti["state"] == "success"} == fetches[dag_id]

        def settled():
            mixes = client.runs("mix_llava_instruct_150k")
            if len(mixes) <= before or mixes[-1]["state"] not in ("success", "failed"):
                return False
            return all(r["state"] in ("success", "failed") for dag_id in CHAIN for r in client.runs(dag_id))

        client.wait_until(settled, timeout=600, interval=3)
        failed = [(d, r["dag_run_id"]) for d in CHAIN for r in client.runs(d) if r["state"] == "failed"]
        assert not failed, "\n".join(client.task_logs(d, r) for d, r in failed)
    except BaseException:
        for dag_id in CHAIN:
            for run in client.runs(dag_id)[-2:]:
                print(client.task_logs(dag_id, run["dag_run_id"]))
        raise
    print(f"slice settled in {time.time() - started:.0f} s")


def check_outputs(storage, replica: SliceReplica) -> None:
    """What a user checks on the storage after the slice ran."""
    assert len(list(storage.list("data/coco/train2017"))) == len(replica.good_bare_names)  # broken ones quarantined
    assert {k.rsplit("coco_train2017/", 1)[1] for k, _ in storage.list("_vlmdata/quarantine/coco_train2017")} == replica.broken_keys
    assert storage.read_bytes("data/llava/llava_instruct_150k.json") == replica.llava_files["llava_instruct_150k.json"]
    manifest = storage.read_json("_vlmdata/sources/llava_instruct_150k/source.json")
    assert manifest["revision"] == replica.commit and manifest["published_at"]
    assert set(storage.read_json("_vlmdata/reports/coco_train2017/broken.json")) == replica.broken_keys
    report = storage.read_json("_vlmdata/reports/llava_instruct_150k/integrity.json")
    assert report["references"]["llava_instruct_150k.json"]["resolved"] == len(replica.good_bare_names)
    mixture = json.loads(storage.read_bytes("mixtures/llava_instruct_150k/llava_instruct_150k.json"))
    assert sorted(r["image"] for r in mixture) == sorted(f"coco/train2017/{n}" for n in replica.good_bare_names)
    lock = storage.read_json("mixtures/llava_instruct_150k/lock.json")
    assert lock["inputs"][0]["revision"] == replica.commit
    assert {d["reason"] for d in lock["dropped"]} >= {"image missing", "image broken"}
    layout = storage.read_json("_vlmdata/layouts/llava15.json")
    assert layout["views"]["playground/data/coco/train2017"] == "data/coco/train2017"


def test_slice_on_a_local_root(deployment):
    client, replica, work, _http, _env = deployment
    run_slice(client, replica)
    storage = LocalStorage(work / "root")
    check_outputs(storage, replica)
    view = work / "root" / "playground" / "data" / "coco" / "train2017"
    assert view.is_symlink() and len(list(view.iterdir())) == len(replica.good_bare_names)


def test_rerun_with_nothing_changed_fetches_nothing_and_emits_no_event(deployment):
    client, replica, work, _http, _env = deployment
    verify_runs = len(client.runs("verify_coco_train2017"))
    run_id = client.trigger("acquire_coco_train2017")
    assert client.wait_for_run("acquire_coco_train2017", run_id, timeout=300) == "success"
    states = {ti["task_id"]: ti["state"] for ti in client.task_instances("acquire_coco_train2017", run_id)}
    assert states["plan"] == "success" and states["publish"] == "skipped"
    time.sleep(10)  # an asset event would have queued a verify run by now
    assert len(client.runs("verify_coco_train2017")) == verify_runs


def test_verification_spreads_over_named_chunks_with_the_same_report(deployment):
    client, replica, work, _http, _env = deployment
    storage = LocalStorage(work / "root")
    before = storage.read_json("_vlmdata/reports/coco_train2017/integrity.json")
    run_id = client.trigger("verify_coco_train2017", {"chunk_images": 3, "mode": "full"})  # decode every image again
    assert client.wait_for_run("verify_coco_train2017", run_id, timeout=300) == "success", client.task_logs("verify_coco_train2017", run_id)
    chunks = sorted((ti for ti in client.task_instances("verify_coco_train2017", run_id) if ti["task_id"] == "check_images"), key=lambda ti: ti["map_index"])
    images = len(replica.good_bare_names)  # the broken ones are in the quarantine since the first run
    assert [(ti["rendered_map_index"], ti["state"], ti["pool"]) for ti in chunks] == [(f"images {i}-{min(i + 2, images - 1)}", "success", "vlmdata_decode") for i in range(0, images, 3)]
    after = storage.read_json("_vlmdata/reports/coco_train2017/integrity.json")
    assert after["checked_at"] > before["checked_at"]
    # The Rendered Template view of plan_verify: the chunk bounds the run was given, as numbers.
    plan = client.request("GET", f"dags/verify_coco_train2017/dagRuns/{run_id}/taskInstances/plan_verify").json()
    assert plan["rendered_fields"] == {"chunk_images": 3, "chunk_gib": 8, "mode": "full"}
    # The asset the report emitted names the report on the storage.
    (asset,) = [a for a in client.assets() if a["name"] == "vlmdata.verified.coco_train2017"]
    assert asset["uri"] == (work / "root" / "_vlmdata/reports/coco_train2017/integrity.json").resolve().as_uri()
    assert {k: v for k, v in after.items() if k != "checked_at"} == {k: v for k, v in before.items() if k != "checked_at"}
    # Triggered with the defaults (mode auto: changed, as nothing started it on its schedule):
    # nothing changed, so no image is decoded, and the report is the same.
    run_id = client.trigger("verify_coco_train2017")
    assert client.wait_for_run("verify_coco_train2017", run_id, timeout=300) == "success", client.task_logs("verify_coco_train2017", run_id)
    assert not [ti for ti in client.task_instances("verify_coco_train2017", run_id) if ti["task_id"] == "check_images" and ti["state"] == "success"]
    assert f"(mode changed): 0 of {images} images decoded this run" in client.task_logs("verify_coco_train2017", run_id)
    again = storage.read_json("_vlmdata/reports/coco_train2017/integrity.json")
    assert again["checked_at"] > after["checked_at"] and {k: v for k, v in again.items() if k != "checked_at"} == {k: v for k, v in after.items() if k != "checked_at"}
    # What the verified event starts (layouts, the mixture) settles before the next test moves the root.
    client.wait_until(lambda: all(r["state"] in ("success", "failed") for dag_id in CHAIN for r in client.runs(dag_id)), timeout=600, interval=3)


def test_slice_on_s3(deployment, s3_endpoint):
    client, replica, work, _http, _env = deployment
    bucket = "vlmdata-e2e"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    client.set_variable("vlmdata_root", f"s3://{bucket}/shared")
    run_slice(client, replica)
    check_outputs(S3Storage(f"s3://{bucket}/shared", S3Options(endpoint_url=s3_endpoint)), replica)


def test_a_cli_acquisition_beside_an_airflow_one_downloads_once(deployment, s3_endpoint):
    """A user runs `vlmdata acquire` while Airflow acquires the same source into the same root:
    the Airflow task waits for the CLI's lease, then finds the artifact current."""
    client, replica, work, http, env = deployment
    root = "s3://vlmdata-e2e/cli-beside-airflow"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    if "vlmdata-e2e" not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:  # test_slice_on_s3 makes it
        s3.create_bucket(Bucket="vlmdata-e2e")
    client.set_variable("vlmdata_root", root)
    zip_path = "/coco/zips/train2017.zip"
    http.script(zip_path, throttle(200))  # ~60 s: Airflow's tasks start while the CLI downloads
    gets = http.count("GET", zip_path)
    cli_env = {**os.environ, **env, "AWS_ENDPOINT_URL": s3_endpoint, "VLMDATA_STAGING": str(work / "cli-staging")}
    with (work / "cli.log").open("w") as out:
        cli = subprocess.Popen([sys.executable, "-m", "vlmdata.cli", "--root", root, "acquire", "coco_train2017"], env=cli_env, stdout=out, stderr=subprocess.STDOUT)
    try:
        client.wait_until(lambda: http.count("GET", zip_path) > gets or cli.poll() is not None, timeout=120)
        run_id = client.trigger("acquire_coco_train2017")
        assert client.wait_for_run("acquire_coco_train2017", run_id, timeout=600) == "success", client.task_logs("acquire_coco_train2017", run_id)
        assert cli.wait(300) == 0, (work / "cli.log").read_text()
    finally:
        if cli.poll() is None:
            cli.kill()
    logs = client.task_logs("acquire_coco_train2017", run_id)
    assert "waiting for vlmdata CLI" in logs and "already current" in logs
    assert http.count("GET", zip_path) == gets + 1  # one download in all
    storage = S3Storage(root, S3Options(endpoint_url=s3_endpoint))
    record = storage.read_json("_vlmdata/sources/coco_train2017/artifacts/train2017.zip.json")
    assert record["complete"] and record["sha256"] == hashlib.sha256(replica.coco_zip).hexdigest()
    assert len(list(storage.list("data/coco/train2017"))) == len(replica.coco_members)


def test_needed_by_reads_only_the_members_an_annotation_file_needs(deployment):
    """The DAG param in real Airflow: acquire_coco_train2017 with needed_by fetches from the zip
    only the images a user's annotation file references (docs/partial-zip.md)."""
    client, replica, work, _http, _env = deployment
    root = work / "needed-by-root"  # a root of its own: COCO is placed whole on the others
    storage = LocalStorage(root)
    wanted = replica.good_bare_names[:2]
    records = [llava_record(f"r{i}", f"coco/train2017/{name}") for i, name in enumerate(wanted)]
    storage.write_bytes("data/custom/two.json", json.dumps(records).encode())
    client.set_variable("vlmdata_root", str(root))
    run_id = client.trigger("acquire_coco_train2017", {"needed_by": ["custom/two.json"]})
    assert client.wait_for_run("acquire_coco_train2017", run_id, timeout=300) == "success", client.task_logs("acquire_coco_train2017", run_id)
    plan = client.request("GET", f"dags/acquire_coco_train2017/dagRuns/{run_id}/taskInstances/plan").json()
    assert plan["rendered_fields"]["needed_by"] == ["custom/two.json"]
    record = storage.read_json("_vlmdata/sources/coco_train2017/artifacts/train2017.zip.json")
    assert record["partial"]["members_present"] == 2 and record["partial"]["members_in_archive"] == len(replica.coco_members)
    assert sorted(key for key, _size in storage.list("data/coco/train2017")) == [f"data/coco/train2017/{name}" for name in wanted]
    # What the acquired event starts settles before the next test moves the root.
    client.wait_until(lambda: all(r["state"] in ("success", "failed") for dag_id in CHAIN for r in client.runs(dag_id)), timeout=600, interval=3)


def test_without_upstream_a_dry_run_answers_and_an_acquisition_fails_at_once(deployment):
    """The mirror map (the Variable a user edits) sends COCO to a host that never resolves: the
    dry run succeeds from the catalog's sizes and says so; an acquisition fails on its first
    try, without Airflow's retries (it used to take about 10 minutes)."""
    client, _replica, work, _http, env = deployment
    # A root of its own: on the earlier tests' roots COCO is placed already, and an offline dry
    # run lists what is placed apart from what it would fetch.
    client.set_variable("vlmdata_root", str(work / "offline-root"))
    client.set_variable("vlmdata_mirrors", "http://images.cocodataset.org/: http://coco.mirror.invalid/\n")
    try:
        dry = client.trigger("acquire_coco_train2017", {"dry_run": True})
        assert client.wait_for_run("acquire_coco_train2017", dry, timeout=300) == "success", client.task_logs("acquire_coco_train2017", dry)
        plan = next(ti for ti in client.task_instances("acquire_coco_train2017", dry) if ti["task_id"] == "plan")
        logs = client.task_logs("acquire_coco_train2017", dry)
        assert plan["try_number"] == 1 and "DRY RUN WITHOUT UPSTREAM" in logs and "'coco.mirror.invalid' does not resolve" in logs
        assert "train2017.zip (declared" in logs
        real = client.trigger("acquire_coco_train2017")
        assert client.wait_for_run("acquire_coco_train2017", real, timeout=300) == "failed"
        plan = next(ti for ti in client.task_instances("acquire_coco_train2017", real) if ti["task_id"] == "plan")
        assert (plan["state"], plan["try_number"]) == ("failed", 1)
        assert "does not resolve" in client.task_logs("acquire_coco_train2017", real)
    finally:
        client.set_variable("vlmdata_mirrors", Path(env["VLMDATA_MIRRORS"]).read_text())
