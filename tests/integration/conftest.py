"""Fixtures of the integration tests that several files share."""

from __future__ import annotations

from contextlib import contextmanager

import pytest

from vlmdata.replicas.hf_hub import FakeHfHub
from vlmdata.replicas.http_server import FakeHttpServer
from vlmdata.replicas.slice import SliceReplica


@contextmanager
def slice_upstreams(folder, patch: pytest.MonkeyPatch):
    """The slice's upstreams (COCO over HTTP, LLaVA-Instruct-150K on a Hub) on loopback, with
    the mirror map and catalog overlay a user would write: (replica, http server, hub)."""
    with FakeHttpServer() as http, FakeHfHub() as hub:
        replica = SliceReplica()
        for key, value in replica.install(http, hub, folder).items():
            patch.setenv(key, value)
        yield replica, http, hub


@pytest.fixture
def upstream(tmp_path, monkeypatch):
    with slice_upstreams(tmp_path, monkeypatch) as servers:
        yield servers


@pytest.fixture(scope="module")
def module_upstream(tmp_path_factory):
    """:func:`upstream` for the tests of a module that read one scenario's stages (unchanged by them)."""
    with pytest.MonkeyPatch.context() as patch, slice_upstreams(tmp_path_factory.mktemp("upstream"), patch) as servers:
        yield servers
