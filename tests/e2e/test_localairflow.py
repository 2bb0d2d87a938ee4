"""LocalAirflow end to end: a real API server, scheduler and DAG processor run an asset chain,
once with the LocalExecutor on SQLite, once distributed (CeleryExecutor, PostgreSQL, Redis, two
Celery workers as processes of their own).

A producer DAG (triggered through REST, with conf) writes a file and updates an Asset; a
consumer DAG scheduled on that Asset copies the file. Then everything is stopped and no
process of the instance may survive.
"""

from __future__ import annotations

import contextlib
import signal
import textwrap
import uuid
from pathlib import Path

import psutil
import pytest
from tests.conftest import free_port
from vlmdata.airflow_client import AirflowClient
from vlmdata.localairflow import LocalAirflow
from vlmdata.services import celery_servers

pytestmark = pytest.mark.e2e

PRODUCER = '''
import os
from pathlib import Path

from airflow.sdk import DAG, Asset, task

with DAG("e2e_producer", schedule=None, catchup=False):

    @task(outlets=[Asset("vlmdata_e2e_probe")])
    def produce(dag_run=None):
        root = Path(os.environ["VLMDATA_ROOT"])
        root.mkdir(parents=True, exist_ok=True)
        (root / "produced.txt").write_text(dag_run.conf["token"])
        (root / "producer_staging.txt").write_text(os.environ.get("VLMDATA_STAGING", ""))

    produce()
'''

CONSUMER = '''
import os
from pathlib import Path

from airflow.sdk import DAG, Asset, task

with DAG("e2e_consumer", schedule=[Asset("vlmdata_e2e_probe")], catchup=False):

    @task
    def consume():
        root = Path(os.environ["VLMDATA_ROOT"])
        (root / "consumed.txt").write_text((root / "produced.txt").read_text())

    consume()
'''


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def processes_with_home(home: Path) -> list[psutil.Process]:
    """Live processes whose environment names this AIRFLOW_HOME (independent of LocalAirflow)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("AIRFLOW_HOME") == str(home) and alive(proc):
                found.append(proc)
        except psutil.Error:
            pass
    return found


@pytest.mark.parametrize("mode", ["local", "celery"])
def test_asset_chain_runs_and_stop_leaves_nothing(tmp_path: Path, mode: str) -> None:
    dags, data = tmp_path / "dags", tmp_path / "data"
    dags.mkdir()
    (dags / "producer.py").write_text(textwrap.dedent(PRODUCER))
    (dags / "consumer.py").write_text(textwrap.dedent(CONSUMER))
    token = uuid.uuid4().hex
    seen: list[psutil.Process] = []
    with contextlib.ExitStack() as stack:
        celery = stack.enter_context(celery_servers(tmp_path / "servers")) if mode == "celery" else None
        airflow = LocalAirflow(
            tmp_path / "home", dags, port=free_port(), log_server_port=free_port(),
            extra_env={"VLMDATA_ROOT": str(data)}, celery=celery,
        )
        stack.enter_context(airflow)
        airflow.wait_ready(timeout=300)  # ~40 s on an idle 2-core machine
        client = AirflowClient(airflow.url, airflow.user, airflow.admin_password)
        assert client.import_errors() == []
        assert {"e2e_producer", "e2e_consumer"} <= {d["dag_id"] for d in client.dags()}
        for dag_id in ("e2e_producer", "e2e_consumer"):
            client.unpause(dag_id)

        run_id = client.trigger("e2e_producer", conf={"token": token})
        state = client.wait_for_run("e2e_producer", run_id, timeout=180)
        assert state == "success", client.task_logs("e2e_producer", run_id)

        consumer_runs = client.wait_until(
            lambda: [r for r in client.runs("e2e_consumer") if r["state"] in ("success", "failed")], 120
        )
        assert len(consumer_runs) == 1
        run = consumer_runs[0]
        assert run["run_type"] == "asset_triggered"
        assert run["state"] == "success", client.task_logs("e2e_consumer", run["dag_run_id"])
        assert (data / "consumed.txt").read_text() == token
        assert client.import_errors() == []

        seen = airflow.processes()
        assert len(seen) >= 3  # at least the three components
        if celery is not None:
            check_celery(client, airflow, celery, run_id, data)

    assert [p for p in seen if alive(p)] == []
    assert airflow.processes() == []
    assert processes_with_home(airflow.home) == []


def check_celery(client: AirflowClient, airflow: LocalAirflow, celery, run_id: str, data: Path) -> None:
    """The producer ran on one of the two workers, with that worker's staging folder; killing a
    worker kills its whole tree and the instance notices no exit (the worker is forgotten)."""
    (ti,) = client.task_instances("e2e_producer", run_id)
    workers = {w.name: w for w in celery.workers}
    assert ti["hostname"] in workers
    assert (data / "producer_staging.txt").read_text() == str(workers[ti["hostname"]].staging)
    victims = airflow.worker_processes("worker1")
    assert victims and not set(victims) & set(airflow.worker_processes("worker2"))
    airflow.signal_worker("worker1", signal.SIGKILL)
    assert [p for p in victims if alive(p)] == []
    airflow.check_running()  # the other components and worker2 are up
    assert airflow.worker_processes("worker2")
