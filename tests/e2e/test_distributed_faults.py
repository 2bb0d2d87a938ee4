"""Workers that die or freeze in the distributed topology (CeleryExecutor, PostgreSQL, Redis,
two Celery workers, storage on S3): the task is retried on the other worker, the run succeeds,
the result is the clean run's, no partial file stands at a final path, and a frozen worker that
wakes up after its task was given away sends no asset event.

The COCO replica's archive is sent slowly (the replica server's ``throttle`` fault, one request)
so that the download is still running when the worker is killed or frozen; the retry fetches
it at full speed. The scheduler gives up on a silent task after ``HEARTBEAT_TIMEOUT`` seconds
(Airflow's default is 300) and retries it after the DAGs' retry delay (a minute).
"""

from __future__ import annotations

import hashlib
import io
import json
import signal
import zipfile
from pathlib import Path

import boto3
import psutil
import pytest
import yaml

from tests.e2e.catalogs import catalog_without_schedules
from tests.e2e.expected import dags_that_must_run
from vlmdata.airflow_client import AirflowClient
from vlmdata.demo import demo_airflow
from vlmdata.localairflow import free_port
from vlmdata.replicas.http_server import throttle
from vlmdata.replicas.sources import Replicas
from vlmdata.services import celery_servers
from vlmdata.storage import S3Options, S3Storage
from vlmdata.treedigest import differences, tree_digest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

BUCKET = "vlmdata-faults"
DAG = "acquire_coco_train2017"
ARCHIVE = "/coco/zips/train2017.zip"  # the replica server's path of the COCO archive
BULK_DAG = "acquire_fault_bulk"  # a source of our own: an archive of many small members
BULK_MEMBERS = 3000  # extracting them to S3 takes ~20 s on an idle machine (PUT per member)
HEARTBEAT_TIMEOUT = 60
DOWNLOAD_SECONDS = 90  # how long the throttled download would take


class Rig:
    """A distributed Airflow with only the COCO and fault_bulk acquisitions unpaused; each test
    stores under its own prefix of the bucket (the ``vlmdata_root`` Variable)."""

    def __init__(self, airflow, client: AirflowClient, replicas: Replicas, celery, endpoint: str):
        self.airflow, self.client, self.replicas, self.celery, self.endpoint = airflow, client, replicas, celery, endpoint

    def storage(self, prefix: str) -> S3Storage:
        return S3Storage(f"s3://{BUCKET}/{prefix}", S3Options(endpoint_url=self.endpoint))

    def trigger(self, prefix: str, dag_id: str = DAG) -> str:
        self.client.set_variable("vlmdata_root", f"s3://{BUCKET}/{prefix}")
        return self.client.trigger(dag_id)

    def wait_for_run(self, run_id: str, timeout: float, dag_id: str = DAG) -> None:
        state = self.client.wait_for_run(dag_id, run_id, timeout=timeout)
        assert state == "success", self.client.task_logs(dag_id, run_id)

    def fetch(self, run_id: str, dag_id: str = DAG) -> dict:
        (ti,) = [ti for ti in self.client.task_instances(dag_id, run_id) if ti["task_id"] == "fetch"]
        return ti

    def running_on(self, run_id: str, dag_id: str = DAG) -> str | None:
        """The worker the fetch task is running on, if it is running."""
        ti = self.fetch(run_id, dag_id)
        return ti["hostname"] if ti["state"] == "running" and ti["hostname"] in {w.name for w in self.celery.workers} else None

    def wait_until_downloading(self, run_id: str, gets_before: int) -> str:
        """Wait until the fetch task runs on a worker and the (slow) download of the archive has
        begun; return the worker's name."""
        return self.client.wait_until(
            lambda: self.replicas.http.count("GET", ARCHIVE) > gets_before and self.running_on(run_id), timeout=600, interval=1
        )

    def task_runners(self, worker: str) -> list:
        """The worker's task processes (Airflow titles them "airflow worker -- <task instance id>")."""
        found = []
        for proc in self.airflow.worker_processes(worker):
            try:
                if " ".join(proc.cmdline()).startswith("airflow worker -- "):
                    found.append(proc)
            except psutil.Error:  # gone meanwhile
                pass
        return found

    def other(self, worker: str) -> str:
        return next(w.name for w in self.celery.workers if w.name != worker)

    def restart(self, worker: str) -> None:
        self.airflow.start_worker(worker)
        self.airflow.wait_ready(timeout=600)  # answers a ping again


def bulk_archive() -> tuple[bytes, dict[str, bytes]]:
    """A zip of BULK_MEMBERS small text files, byte-for-byte the same on every call."""
    members = {f"bulk/{i:05d}.txt": f"member {i}\n".encode() * 20 for i in range(BULK_MEMBERS)}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)), data)
    return buffer.getvalue(), members


def bulk_source(folder: Path, url: str, data: bytes) -> None:
    """The fault_bulk source (a user's, as VLMDATA_CATALOG allows), its archive at ``url``."""
    source = {
        "id": "fault_bulk", "title": "Many small members", "kind": "http", "refresh": None,
        "licence": {"name": "test data"},
        "artifacts": [{"name": "bulk.zip", "url": url, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "extract": {"into": "fault", "images": False}}],
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "fault_bulk.yaml").write_text(yaml.safe_dump(source, sort_keys=False))


@pytest.fixture(scope="module")
def rig(tmp_path_factory, s3_endpoint):
    work = tmp_path_factory.mktemp("faults")
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=BUCKET)
    connection = {"conn_type": "aws", "login": "testing", "password": "testing", "extra": {"endpoint_url": s3_endpoint}}
    env = {"VLMDATA_ROOT": f"s3://{BUCKET}/unused", "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(connection),
           # The frozen worker's lease on its artifact expires within the heartbeat timeout, so the
           # retry on the other worker takes the unit over as soon as Airflow hands it the task.
           "VLMDATA_LEASE_TTL": "30"}
    with Replicas(work / "replicas") as replicas, celery_servers(work / "servers", workers=2) as celery:
        data, _members = bulk_archive()
        replicas.http.add("/fault/bulk.zip", data, content_type="application/zip")
        bulk_source(work / "catalog", f"{replicas.http.url}/fault/bulk.zip", data)
        env["VLMDATA_CATALOG"] = catalog_without_schedules(replicas, work / "catalog")  # only the tests' runs write
        airflow = demo_airflow(replicas, work, port=free_port(), extra_env=env, celery=celery, task_heartbeat_timeout=HEARTBEAT_TIMEOUT)
        with airflow:
            airflow.wait_ready(timeout=900)
            client = AirflowClient(airflow.url, airflow.user, airflow.admin_password)
            every_dag = dags_that_must_run(replicas) | {BULK_DAG, "verify_fault_bulk"}
            client.wait_until(lambda: every_dag <= {d["dag_id"] for d in client.dags()}, timeout=300)
            # Only these two run: the verify, layout and mixture DAGs (unpaused on creation) are
            # paused, so that each test's storage holds what its acquisition wrote and no more.
            for dag in client.dags():
                client.set_paused(dag["dag_id"], dag["dag_id"] not in (DAG, BULK_DAG))
            yield Rig(airflow, client, replicas, celery, s3_endpoint)


@pytest.fixture(scope="module")
def clean(rig):
    """The digest of a clean acquisition: what every faulted one must end up with."""
    run_id = rig.trigger("clean")
    rig.wait_for_run(run_id, timeout=600)
    digest = tree_digest(rig.storage("clean"))
    assert any(key.startswith("data/coco/train2017/") for key in digest)
    return digest


def slow_archive(rig: Rig) -> int:
    """The next download of the archive takes about DOWNLOAD_SECONDS; returns the number of
    downloads so far."""
    size = len(rig.replicas.files["coco_train2017"]["train2017.zip"])
    rig.replicas.http.script(ARCHIVE, throttle(size / DOWNLOAD_SECONDS))
    return rig.replicas.http.count("GET", ARCHIVE)


def no_partial_files(storage: S3Storage) -> list[str]:
    return [key for folder in ("data", "_vlmdata") for key, _ in storage.list(folder) if key.endswith((".part", ".vlmdata-tmp"))]


def test_a_worker_killed_mid_download_is_retried_on_the_other(rig, clean):
    gets = slow_archive(rig)
    run_id = rig.trigger("killed")
    worker = rig.wait_until_downloading(run_id, gets)
    killed = rig.airflow.signal_worker(worker, signal.SIGKILL)
    assert killed and rig.airflow.worker_processes(worker) == []
    try:
        rig.wait_for_run(run_id, timeout=900)
        ti = rig.fetch(run_id)
        assert ti["try_number"] >= 2 and ti["hostname"] == rig.other(worker)
        storage = rig.storage("killed")
        assert no_partial_files(storage) == []
        assert differences(clean, tree_digest(storage)) == []
    finally:
        rig.restart(worker)


def test_a_frozen_worker_loses_its_task_and_sends_no_event_when_it_wakes(rig, clean):
    gets = slow_archive(rig)
    run_id = rig.trigger("frozen")
    worker = rig.wait_until_downloading(run_id, gets)
    frozen = rig.airflow.signal_worker(worker, signal.SIGSTOP)
    try:
        rig.wait_for_run(run_id, timeout=900)  # the scheduler gave the task to the other worker
        ti = rig.fetch(run_id)
        assert ti["try_number"] >= 2 and ti["hostname"] == rig.other(worker)
        events = rig.client.asset_events(source_dag_id=DAG, source_run_id=run_id)
        assert len(events) == 1
    finally:
        for proc in frozen:  # wake every process that was frozen, even if it is not found again
            try:
                proc.send_signal(signal.SIGCONT)
            except psutil.Error:  # gone meanwhile
                pass
    # The zombie task finds that its try is over and ends (what it sent on its way is recorded
    # by then); its worker carries on.
    rig.client.wait_until(lambda: not rig.task_runners(worker), timeout=600, interval=2)
    rig.airflow.check_running()
    assert rig.client.asset_events(source_dag_id=DAG, source_run_id=run_id) == events
    storage = rig.storage("frozen")
    assert no_partial_files(storage) == []
    assert differences(clean, tree_digest(storage)) == []


def test_a_worker_killed_mid_extraction_is_retried_on_the_other(rig):
    _data, members = bulk_archive()
    expected = {f"data/fault/{name}": hashlib.sha256(data).hexdigest() for name, data in members.items()}
    run_id = rig.trigger("extract-killed", BULK_DAG)
    storage = rig.storage("extract-killed")
    written = {}

    def extracting():  # some members are on S3, not all, and the task still runs
        worker = rig.running_on(run_id, BULK_DAG)
        written["count"] = sum(1 for _ in storage.list("data/fault"))
        return worker if worker and written["count"] >= 100 else None

    worker = rig.client.wait_until(extracting, timeout=600, interval=0.5)
    rig.airflow.signal_worker(worker, signal.SIGKILL)
    assert written["count"] < BULK_MEMBERS, "the extraction had finished before the kill: make the archive larger"
    try:
        rig.wait_for_run(run_id, timeout=900, dag_id=BULK_DAG)
        ti = rig.fetch(run_id, BULK_DAG)
        assert ti["try_number"] >= 2 and ti["hostname"] == rig.other(worker)
        assert no_partial_files(storage) == []
        assert differences(expected, tree_digest(storage, folders=["data"])) == []
        manifest = storage.read_json("_vlmdata/sources/fault_bulk/source.json")
        assert manifest["published_at"]
    finally:
        rig.restart(worker)
