"""vlmdata.settings: Airflow's Variables and connections over the environment, handed to the
library through the context (the library itself reads no Airflow state)."""

from __future__ import annotations

import json

from airflow.sdk import Connection

from vlmdata import settings
from vlmdata.catalog import load_catalog
from vlmdata.fetch import sa1b
from vlmdata.fetch.sa1b import parse_links

LINKS = "file_name\tcdn_link\nsa_000000.tar\thttps://cdn.example/sa_000000.tar?sig=1\n"


def airflow_with(variables: dict[str, str], connections: dict[str, Connection]) -> settings.Settings:
    return settings._overridden(variables.get, connections.get)


def test_variables_and_connections_override_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("VLMDATA_ROOT", str(tmp_path / "from-env"))
    monkeypatch.setenv("HF_TOKEN", "env-token")
    aws = Connection(conn_id="aws_default", conn_type="aws", login="key", password="secret", extra=json.dumps({"endpoint_url": "http://127.0.0.1:9000", "region_name": "eu-west-1"}))
    hub = Connection(conn_id="huggingface_default", conn_type="generic", password="conn-token")
    found = airflow_with({"vlmdata_root": "s3://bucket/llava", "vlmdata_mirrors": "https://huggingface.co: http://127.0.0.1:8000\n"}, {"aws_default": aws, "huggingface_default": hub})
    assert found.root == "s3://bucket/llava"
    assert (found.s3.endpoint_url, found.s3.region_name) == ("http://127.0.0.1:9000", "eu-west-1")
    assert found.s3.session.get_credentials().get_frozen_credentials().access_key == "key"
    assert found.hf_token == "conn-token"
    assert found.mirrors.rewrite("https://huggingface.co/datasets/x") == "http://127.0.0.1:8000/datasets/x"


def test_without_airflow_values_the_environment_holds(monkeypatch, tmp_path):
    monkeypatch.setenv("VLMDATA_ROOT", str(tmp_path / "from-env"))
    monkeypatch.setenv("HF_TOKEN", "env-token")
    found = airflow_with({}, {})
    assert (found.root, found.hf_token) == (str(tmp_path / "from-env"), "env-token")


def test_the_context_carries_airflow_variables_to_the_transports(monkeypatch, tmp_path):
    """SA-1B's links file from the Variable a task sees, without the transport importing Airflow."""
    monkeypatch.setenv("VLMDATA_ROOT", str(tmp_path))
    monkeypatch.delenv(sa1b.LINKS_ENV, raising=False)
    ctx = airflow_with({"vlmdata_sa1b_links": LINKS}, {}).context()
    assert sa1b.read_links(load_catalog()["sa1b"], ctx) == parse_links(LINKS)
    assert set(ctx.catalog) == set(load_catalog())
    outside = settings.from_env().context()
    assert outside.variable("vlmdata_sa1b_links") is None
