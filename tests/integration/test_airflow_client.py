"""AirflowClient against a loopback server that answers as Airflow's API does when its database
is busy: 500 once. Idempotent requests are sent again; a trigger (POST) is sent once."""

from __future__ import annotations

import pytest
import requests

from vlmdata import airflow_client
from vlmdata.airflow_client import AirflowClient
from vlmdata.replicas.http_server import FakeHttpServer, Response, status


@pytest.fixture
def api(monkeypatch):
    monkeypatch.setattr(airflow_client, "RETRY_WAIT", 0.0)
    with FakeHttpServer() as server:
        server.route("POST", "/auth/token", lambda req, m: Response.json({"access_token": "token"}, status=201))
        server.route("PATCH", "/api/v2/dags/d", lambda req, m: Response.json({"dag_id": "d", "is_paused": req.json()["is_paused"]}))
        server.route("POST", "/api/v2/dags/d/dagRuns", lambda req, m: Response.json({"dag_run_id": "r"}))
        yield server


def test_an_idempotent_request_is_sent_again_after_a_server_error(api):
    api.script("/api/v2/dags/d", status(500, body=b'{"detail": "Database error"}', method="PATCH"))
    AirflowClient(api.url, "admin", "pw").unpause("d")
    assert api.count("PATCH", "/api/v2/dags/d") == 2


def test_a_trigger_is_sent_once(api):
    api.script("/api/v2/dags/d/dagRuns", status(500, method="POST"))
    with pytest.raises(requests.HTTPError, match="500"):
        AirflowClient(api.url, "admin", "pw").trigger("d")
    assert api.count("POST", "/api/v2/dags/d/dagRuns") == 1


def test_retries_are_bounded(api):
    api.script("/api/v2/dags/d", *[status(503, method="PATCH")] * 10)
    with pytest.raises(requests.HTTPError, match="503"):
        AirflowClient(api.url, "admin", "pw").unpause("d")
    assert api.count("PATCH", "/api/v2/dags/d") == airflow_client.RETRIES + 1
