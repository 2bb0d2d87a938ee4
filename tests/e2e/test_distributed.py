"""The production topology on one machine: Airflow with the CeleryExecutor, PostgreSQL (metadata
and Celery results) and Redis (broker) as real servers, two Celery workers as processes of their
own (own hostname, staging folder, log server), storage on S3 (moto's server).

Every source's replica goes through acquisition, verification, both layouts and every mixture
(``vlmdata.demo.start_everything``, as ``test_every_source.py`` and the demo do). Beside it, from the same
replicas and into another prefix of the same bucket, a LocalExecutor Airflow does the same: the
two storage trees must hold the same files, manifests, mixtures and locks
(``vlmdata.treedigest``).
"""

from __future__ import annotations

import json
import time

import boto3
import pytest

from tests.e2e.catalogs import catalog_without_schedules
from tests.e2e.expected import dags_that_must_run, runs_that_went_wrong
from vlmdata.airflow_client import AirflowClient
from vlmdata.catalog import load_catalog
from vlmdata.demo import demo_airflow, start_everything
from vlmdata.localairflow import free_port
from vlmdata.mix import load_recipes
from vlmdata.replicas.sources import Replicas
from vlmdata.services import celery_servers
from vlmdata.storage import S3Options, S3Storage
from vlmdata.treedigest import differences, tree_digest

# The module's fixture runs both Airflows to the end in the first test's setup: ~10 minutes on
# an idle 2-core machine, more at a load of 5.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3000)]

BUCKET = "vlmdata-distributed"
ROOTS = {"local": f"s3://{BUCKET}/local-executor", "celery": f"s3://{BUCKET}/celery-executor"}


def s3_env(endpoint: str, root: str) -> dict[str, str]:
    """The storage root on S3 and the ``aws_default`` connection a user fills in."""
    connection = {"conn_type": "aws", "login": "testing", "password": "testing", "extra": {"endpoint_url": endpoint}}
    return {"VLMDATA_ROOT": root, "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(connection)}


def logs_of(client: AirflowClient, runs: list[tuple[str, str]]) -> str:
    return "\n".join(client.task_logs(dag_id, run_id) for dag_id, run_id in runs)


@pytest.fixture(scope="module")
def both(tmp_path_factory, s3_endpoint):
    """The same replicas run through a Celery Airflow and a LocalExecutor Airflow at once."""
    work = tmp_path_factory.mktemp("distributed")
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=BUCKET)
    started = time.monotonic()
    with Replicas(work / "replicas") as replicas, celery_servers(work / "servers", workers=2) as celery:
        catalog = {"VLMDATA_CATALOG": catalog_without_schedules(replicas, work / "catalog")}  # only the triggered runs
        airflows = {
            "celery": demo_airflow(replicas, work / "celery", port=free_port(), extra_env={**s3_env(s3_endpoint, ROOTS["celery"]), **catalog}, celery=celery),
            "local": demo_airflow(replicas, work / "local", port=free_port(), extra_env={**s3_env(s3_endpoint, ROOTS["local"]), **catalog}),
        }
        with airflows["celery"], airflows["local"]:
            clients, everything, outcomes = {}, {}, {}
            for name, airflow in airflows.items():
                airflow.wait_ready(timeout=900)
                clients[name] = AirflowClient(airflow.url, airflow.user, airflow.admin_password)
                everything[name] = start_everything(clients[name], progress=lambda text, name=name: print(f"[{name}] {text}", flush=True))
            for name, airflow in airflows.items():  # both run at once; wait for one, then the other
                try:
                    outcomes[name] = everything[name].wait(
                        timeout=2400, progress=lambda text, name=name: print(f"[{name}] {text}", flush=True), check=airflow.check_running,
                    )
                except BaseException:
                    client = clients[name]
                    unfinished = [(d["dag_id"], r["dag_run_id"]) for d in client.dags() for r in client.runs(d["dag_id"]) if r["state"] != "success"]
                    print(f"[{name}] logs of the runs that did not succeed:\n{logs_of(client, unfinished)}")
                    raise
            print(f"\nboth Airflows up and settled {time.monotonic() - started:.0f} s after the start; logs under {work}")
            runs = {name: (clients[name], outcomes[name], S3Storage(ROOTS[name], S3Options(endpoint_url=s3_endpoint))) for name in airflows}
            yield runs, celery, replicas


@pytest.mark.parametrize("executor", ["celery", "local"])
def test_every_run_succeeds(both, executor):
    runs, _celery, replicas = both
    client, outcome, _storage = runs[executor]
    wrong = runs_that_went_wrong(client, dags_that_must_run(replicas))
    assert not wrong, (wrong, logs_of(client, [(dag_id, run_id) for dag_id, runs in wrong.items() for run_id, _, state in runs if state != "success"]))
    assert set(outcome.triggered) == {f"acquire_{source_id}" for source_id in replicas.spot_checks}


def test_tasks_ran_on_both_workers(both):
    runs, celery, _replicas = both
    client, _outcome, _storage = runs["celery"]
    ran = [ti for ti in client.all_task_instances() if ti["state"] == "success"]
    by_worker = {w.name: sum(ti["hostname"] == w.name for ti in ran) for w in celery.workers}
    assert {ti["hostname"] for ti in ran} == set(by_worker), by_worker  # no task ran anywhere else
    assert all(by_worker.values()), by_worker
    print(f"task instances per worker: {by_worker}")


def test_outputs_equal_those_of_the_local_executor(both):
    runs, _celery, replicas = both
    digests = {name: tree_digest(storage) for name, (_client, _outcome, storage) in runs.items()}
    expected = digests["local"]
    # Not two empty trees: every source's manifest and files, every recipe's lock are there.
    assert {f"_vlmdata/sources/{s}/source.json" for s in load_catalog()} <= expected.keys()
    assert {f"data/{path}" for path in replicas.spot_checks.values()} <= expected.keys()
    assert {f"mixtures/{r}/lock.json" for r in load_recipes()} <= expected.keys()
    assert differences(expected, digests["celery"]) == []
