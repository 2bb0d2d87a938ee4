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
