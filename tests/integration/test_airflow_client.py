"""AirflowClient against a loopback server that answers as Airflow's API does when its database
is busy: 500 once. Idempotent requests are sent again; so is a trigger, under the run id the
client chose, so that a repeat can never make a second run."""

from __future__ import annotations

import pytest
import requests

from vlmdata import airflow_client
from vlmdata.airflow_client import AirflowClient
from vlmdata.replicas.http_server import FakeHttpServer, Response, reset_after, status


@pytest.fixture
def api(waits):  # the waits between attempts are recorded, not slept
    with FakeHttpServer() as server:
        server.route("POST", "/auth/token", lambda req, m: Response.json({"access_token": "token"}, status=201))
        server.route("PATCH", "/api/v2/dags/d", lambda req, m: Response.json({"dag_id": "d", "is_paused": req.json()["is_paused"]}))
        created: list[str] = []

        def trigger(req, m):  # as Airflow: a second run under an existing run id is a conflict
            run_id = req.json()["dag_run_id"]
            if run_id in created:
                return Response.json({"detail": "DAG run already exists"}, status=409)
            created.append(run_id)
            return Response.json({"dag_run_id": run_id})

        server.route("POST", "/api/v2/dags/d/dagRuns", trigger)
        server.created = created
        yield server


def test_an_idempotent_request_is_sent_again_after_a_server_error(api):
    api.script("/api/v2/dags/d", status(500, body=b'{"detail": "Database error"}', method="PATCH"))
    AirflowClient(api.url, "admin", "pw").unpause("d")
    assert api.count("PATCH", "/api/v2/dags/d") == 2


def test_a_trigger_that_met_a_server_error_is_sent_again_and_makes_one_run(api):
    api.script("/api/v2/dags/d/dagRuns", status(500, method="POST"))
    run_id = AirflowClient(api.url, "admin", "pw").trigger("d")
    assert api.count("POST", "/api/v2/dags/d/dagRuns") == 2 and api.created == [run_id]


def test_a_trigger_whose_answer_was_lost_after_the_run_was_made_is_not_made_twice(api):
    """The first POST created the run but its answer never arrived (the connection was reset
    before it): the repeat is refused as a conflict, which the client takes as done."""
    api.script("/api/v2/dags/d/dagRuns", reset_after(0, send_headers=False, method="POST"))  # after the handler ran
    run_id = AirflowClient(api.url, "admin", "pw").trigger("d")
    assert api.created == [run_id] and api.count("POST", "/api/v2/dags/d/dagRuns") == 2


def test_retries_are_bounded_and_wait_longer_each_time(api, waits):
    api.script("/api/v2/dags/d", *[status(503, method="PATCH")] * 10)
    with pytest.raises(requests.HTTPError, match="503"):
        AirflowClient(api.url, "admin", "pw").unpause("d")
    assert api.count("PATCH", "/api/v2/dags/d") == airflow_client.RETRIES + 1
    assert len(waits) == airflow_client.RETRIES and waits == sorted(set(waits)) and waits[0] > 0
