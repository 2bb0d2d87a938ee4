"""The UI plugin's pieces that run without an Airflow: what it may serve, and that it refuses
anonymous requests (the browser test, tests/e2e/test_ui_browser.py, checks the rest)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from vlmdata.status import servable


@pytest.mark.parametrize("key", [
    "_vlmdata/reports/index.html",
    "_vlmdata/reports/coco_train2017/integrity.html",
    "_vlmdata/sources/coco_train2017/source.json",
    "_vlmdata/layouts/llava15.json",
    "mixtures/llava_instruct_150k/lock.json",
    "mixtures/llava_instruct_150k/composition.svg",
])
def test_reports_manifests_locks_and_charts_are_served(key):
    assert servable(key)


@pytest.mark.parametrize("key", [
    "data/coco/train2017/000000000001.jpg",  # the data tree
    "mixtures/llava_instruct_150k/llava_instruct_150k.json",  # a training file
    "_vlmdata/leases/verify/coco_train2017.json",
    "_vlmdata/reports/../leases/x.json",
    "_vlmdata/reports//x.json",
])
def test_the_data_tree_and_the_rest_are_not(key):
    assert not servable(key)


def test_the_app_refuses_anonymous_requests():
    from vlmdata.ui.app import create_app

    client = TestClient(create_app())
    for path in ("/", "/status.json", "/files/_vlmdata/reports/index.html"):
        response = client.get(path)
        assert response.status_code == 401, path


def test_the_plugin_is_registered_through_the_package_entry_point():
    from importlib.metadata import distributions, entry_points

    from vlmdata.ui import VlmdataPlugin

    # Airflow reads every distribution's entry points: a second copy of the package's metadata
    # on the path (the editable build's egg-info, which `make` removes) registers it twice.
    assert len([d for d in distributions() if d.metadata["Name"] == "vlmdata"]) == 1
    (entry,) = [e for e in entry_points(group="airflow.plugins") if e.name == "vlmdata"]
    assert entry.load() is VlmdataPlugin
    assert {link.name for link in VlmdataPlugin.operator_extra_links} == {"Integrity report", "Composition", "Lock", "Manifest"}


# ------------------------------------------------------------------ when the storage cannot be read


def _client(storage):
    """The real app on ``storage``, without Airflow's login (checked above) and run history."""
    from vlmdata.ui.app import create_app

    return TestClient(create_app(storage=lambda: storage, runs=lambda dag_ids: {}, dependencies=[]))


@pytest.fixture
def stopped_s3(tmp_path):
    """An S3 storage whose endpoint (moto's server) was there and is stopped."""
    import boto3
    from moto.server import ThreadedMotoServer

    from vlmdata.localairflow import free_port
    from vlmdata.storage import S3Options, S3Storage

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="vlmdata")
    storage = S3Storage("s3://vlmdata/root", S3Options(endpoint_url=endpoint), staging=tmp_path / "staging")
    storage.write_bytes("_vlmdata/reports/index.html", b"<p>index</p>")
    server.stop()
    return storage, endpoint


def test_a_storage_that_is_down_gets_a_page_naming_it_not_a_bare_500(stopped_s3):
    storage, endpoint = stopped_s3
    client = _client(storage)
    page = client.get("/", headers={"accept": "text/html"})
    assert page.status_code == 503 and page.headers["content-type"].startswith("text/html")
    assert "The storage cannot be read" in page.text and "s3://vlmdata/root" in page.text and endpoint in page.text
    assert 'href="/"' in page.text  # back to the vlmdata page
    data = client.get("/status.json")
    assert data.status_code == 503 and data.json()["error"] == "The storage cannot be read" and "s3://vlmdata/root" in data.json()["detail"]
    report = client.get("/files/_vlmdata/reports/index.html", headers={"accept": "text/html"})
    assert report.status_code == 502 and "_vlmdata/reports/index.html cannot be read" in report.text and endpoint in report.text


def test_a_bucket_that_does_not_exist_gets_a_page_naming_it(s3_endpoint, tmp_path):
    from vlmdata.storage import S3Options, S3Storage

    storage = S3Storage("s3://no-such-bucket/root", S3Options(endpoint_url=s3_endpoint), staging=tmp_path / "staging")
    data = _client(storage).get("/status.json")
    assert data.status_code == 503 and "NoSuchBucket" in data.json()["detail"] and "s3://no-such-bucket/root" in data.json()["detail"]


def test_a_file_that_is_not_there_is_a_404_naming_it(tmp_path):
    from vlmdata.storage import LocalStorage

    response = _client(LocalStorage(tmp_path / "root")).get("/files/_vlmdata/reports/gqa/integrity.html")
    assert response.status_code == 404 and "_vlmdata/reports/gqa/integrity.html is not on" in response.json()["detail"]
