"""Fixtures of the integration tests that several files share."""

from __future__ import annotations

import pytest

from vlmdata.replicas.hf_hub import FakeHfHub
from vlmdata.replicas.http_server import FakeHttpServer
from vlmdata.replicas.slice import SliceReplica


@pytest.fixture
def upstream(tmp_path, monkeypatch):
    """The slice's upstreams (COCO over HTTP, LLaVA-Instruct-150K on a Hub) on loopback, with
    the mirror map and catalog overlay a user would write: (replica, http server, hub)."""
    with FakeHttpServer() as http, FakeHfHub() as hub:
        replica = SliceReplica()
        for key, value in replica.install(http, hub, tmp_path).items():
            monkeypatch.setenv(key, value)
        yield replica, http, hub
