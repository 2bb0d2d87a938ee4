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


@pytest.fixture
def s3_bucket(s3_endpoint):
    import boto3

    name = f"vlmdata-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    """The same test against both backends."""
    from vlmdata.storage import LocalStorage, S3Options, S3Storage

    if request.param == "local":
        return LocalStorage(tmp_path / "root")
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = request.getfixturevalue("s3_bucket")
    return S3Storage(f"s3://{bucket}/prefix", S3Options(endpoint_url=endpoint), staging=tmp_path / "staging")


logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request


@pytest.fixture
def waits(monkeypatch):
    """The waits between retries, recorded instead of slept (so Retry-After is observable)."""
    import time

    recorded = []
    monkeypatch.setattr(time, "sleep", recorded.append)
    return recorded
