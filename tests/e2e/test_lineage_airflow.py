"""OpenLineage events of the slice in real Airflow: the provider sends them over HTTP to a
loopback collector (what Marquez or another backend would receive), and the events of a
mixture lead back to every upstream file of its lock."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.lineage_chain import roots
from vlmdata.airflow_client import AirflowClient
from vlmdata.lineage import dataset_name
from vlmdata.localairflow import LocalAirflow
from vlmdata.replicas.hf_hub import FakeHfHub
from vlmdata.replicas.http_server import FakeHttpServer
from vlmdata.replicas.slice import SliceReplica
from vlmdata.storage import LocalStorage

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
ACQUIRE = ["acquire_coco_train2017", "acquire_llava_instruct_150k"]
CHAIN = [*ACQUIRE, "verify_coco_train2017", "verify_llava_instruct_150k", "mix_llava_instruct_150k"]


class Collector(ThreadingHTTPServer):
    """An OpenLineage HTTP endpoint on loopback that keeps every event it is sent."""

    def __init__(self):
        self.events: list[dict] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                collector.events.append(json.loads(body))
                self.send_response(201)
                self.end_headers()

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", free_port()), Handler)

    def completed(self, task: str) -> list[dict]:
        """The COMPLETE events of a task (job ``<dag>.<task>``)."""
        return [e for e in self.events if e["eventType"] == "COMPLETE" and e["job"]["name"] == task]


def names(datasets: list[dict]) -> set[tuple[str, str]]:
    return {(d["namespace"], d["name"]) for d in datasets}


def test_a_mixtures_events_lead_back_to_every_upstream_file_of_its_lock(tmp_path):
    with Collector() as collector, FakeHttpServer() as http, FakeHfHub() as hub:
        threading.Thread(target=collector.serve_forever, daemon=True).start()
        replica = SliceReplica()
        env = replica.install(http, hub, tmp_path)
        env.update({
            "VLMDATA_ROOT": str(tmp_path / "root"),
            "VLMDATA_STAGING": str(tmp_path / "staging"),
            # What a deployment sets to send the events to Marquez or another backend.
            "AIRFLOW__OPENLINEAGE__DISABLED": "False",
            "AIRFLOW__OPENLINEAGE__NAMESPACE": "vlmdata-e2e",
            "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps({"type": "http", "url": f"http://127.0.0.1:{collector.server_port}", "endpoint": "api/v1/lineage"}),
            "AIRFLOW__OPENLINEAGE__EXECUTION_TIMEOUT": "120",  # a busy machine: the default 10 s can cut an event off
        })
        with LocalAirflow(tmp_path / "airflow", REPO / "dags", port=free_port(), extra_env=env, log_server_port=free_port()) as airflow:
            airflow.wait_ready(timeout=180)
            client = AirflowClient(airflow.url, airflow.user, airflow.admin_password)
            client.wait_until(lambda: set(CHAIN) <= {d["dag_id"] for d in client.dags()}, timeout=120)
            for dag_id in CHAIN:
                client.unpause(dag_id)
            for dag_id in ACQUIRE:
                run_id = client.trigger(dag_id)
                assert client.wait_for_run(dag_id, run_id, timeout=300) == "success", client.task_logs(dag_id, run_id)

            def settled():  # every run done, and an event for each mixture built (sent as its task ends)
                mixes = [r for r in client.runs("mix_llava_instruct_150k") if r["state"] == "success"]
                done = all(r["state"] in ("success", "failed") for dag_id in CHAIN for r in client.runs(dag_id))
                return done and mixes and len(collector.completed("mix_llava_instruct_150k.build")) >= len(mixes)

            client.wait_until(settled, timeout=600, interval=3)
            failed = [(d, r["dag_run_id"]) for d in CHAIN for r in client.runs(d) if r["state"] == "failed"]
            assert not failed, "\n".join(client.task_logs(d, r) for d, r in failed)
        collector.shutdown()

    lock = LocalStorage(tmp_path / "root").read_json("mixtures/llava_instruct_150k/lock.json")
    mix = collector.completed("mix_llava_instruct_150k.build")[-1]  # the build whose lock is on the storage
    assert mix["job"]["namespace"] == "vlmdata-e2e"
    assert mix["run"]["facets"]["vlmdata"]["counts"]["records"] == lock["output"]["records"]
    (training,) = [d for d in mix["outputs"] if d["name"].endswith("/llava_instruct_150k.json")]
    assert training["outputFacets"]["outputStatistics"]["rowCount"] == lock["output"]["records"]

    # Each fetch names the upstream file (no query string) at its revision, and what it placed.
    fetches = collector.completed("acquire_llava_instruct_150k.fetch") + collector.completed("acquire_coco_train2017.fetch")
    assert len(fetches) == len(replica.llava_files) + 1
    upstream = {(d["namespace"], d["name"]): d for e in fetches for d in e["inputs"]}
    assert all("?" not in name for _, name in upstream)
    assert {d["facets"]["version"]["datasetVersion"] for k, d in upstream.items() if "LLaVA" in k[1]} == {replica.commit}

    # The chain, as a data catalog follows it: the training file, the steps that wrote what it
    # read, back to files no step wrote: the lock's annotation file, and through the integrity
    # reports COCO's zip and LLaVA's other files. Every upstream file, nothing else.
    steps = [(names(e["inputs"]), names(e["outputs"])) for e in collector.events if e["eventType"] == "COMPLETE"]
    chain_roots = roots(steps, names([training]))
    assert {dataset_name(item["url"].split("?")[0]) for item in lock["inputs"]} <= chain_roots
    assert chain_roots == set(upstream)
