"""Shared fixtures: every storage test runs against a local root and against S3 (moto's server)."""

from __future__ import annotations

import logging
import os
import uuid

import pytest

# Tests never reach a public host: credentials are fake and every endpoint is loopback.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.pop("VLMDATA_CATALOG", None)
os.environ.pop("VLMDATA_MIRRORS", None)
os.environ.pop("HF_TOKEN", None)


from vlmdata.localairflow import free_port  # noqa: E402  (re-exported for the tests)


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 protocol server (moto) on loopback."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def new_bucket(s3_endpoint: str) -> str:
    import boto3

    name = f"vlmdata-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_bucket(s3_endpoint):
    return new_bucket(s3_endpoint)


def storage_of(request, backend: str, work):
    """A new empty storage on ``backend`` ("local" or "s3"), with its files under ``work``."""
    from vlmdata.storage import LocalStorage, S3Options, S3Storage

    if backend == "local":
        return LocalStorage(work / "root")
    endpoint = request.getfixturevalue("s3_endpoint")
    return S3Storage(f"s3://{new_bucket(endpoint)}/prefix", S3Options(endpoint_url=endpoint), staging=work / "staging")


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    """The same test against both backends."""
    return storage_of(request, request.param, tmp_path)


@pytest.fixture(scope="module", params=["local", "s3"])
def module_storage(request, tmp_path_factory):
    """One storage per backend for the tests of a module that read one scenario's stages."""
    return storage_of(request, request.param, tmp_path_factory.mktemp(request.param))


logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request


@pytest.fixture
def waits(monkeypatch):
    """The waits between retries, recorded instead of slept (so Retry-After is observable)."""
    import time

    recorded = []
    monkeypatch.setattr(time, "sleep", recorded.append)
    return recorded
