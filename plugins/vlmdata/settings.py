"""Where the data goes, through which mirrors, with which credentials.

Outside Airflow (the CLI, tests): environment variables and boto3's standard chain.
Inside a task: Airflow Variables and connections first, the environment second:

| setting      | Airflow                        | environment                  | default  |
|--------------|--------------------------------|------------------------------|----------|
| storage root | Variable ``vlmdata_root``      | ``VLMDATA_ROOT``             | ``./data`` |
| mirror map   | Variable ``vlmdata_mirrors``   | ``VLMDATA_MIRRORS`` (a file) | none     |
| S3           | connection ``aws_default`` (as the Amazon provider reads it) | ``AWS_*``, ``AWS_ENDPOINT_URL`` | boto3 chain |
| Hub token    | connection ``huggingface_default`` (password) | ``HF_TOKEN``  | none     |
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import redaction
from .catalog import Source, load_catalog
from .mirrors import Mirrors
from .storage import S3Options, Storage, open_storage

if TYPE_CHECKING:
    from .fetch.remote import Context

log = logging.getLogger("vlmdata.settings")


@dataclass
class Settings:
    root: str
    mirrors: Mirrors = field(default_factory=Mirrors)
    s3: S3Options = field(default_factory=S3Options)
    hf_token: str | None = field(default=None, repr=False)
    # Named values of the deployment (Airflow Variables inside a task); none outside Airflow.
    variable: Callable[[str], str | None] = field(default=lambda name: None, repr=False)

    def storage(self) -> Storage:
        return open_storage(self.root, self.s3 if self.root.startswith("s3://") else None)

    def context(self, **overrides) -> Context:
        from .fetch.remote import Context  # requests: imported by the tasks that use it, not at DAG parse

        return Context(storage=self.storage(), mirrors=self.mirrors, token=self.hf_token, variable=self.variable, catalog=load_catalog(), **overrides)


def root_from_env() -> str:
    """The storage root the environment names (``VLMDATA_ROOT``, else ``./data``). The DAG files
    name their assets' URIs after it when parsed (:func:`vlmdata.dagfactory.on_storage`)."""
    return os.environ.get("VLMDATA_ROOT") or "./data"


def from_env(root: str | None = None) -> Settings:
    return Settings(
        root=root or root_from_env(),
        mirrors=Mirrors.from_env(),
        s3=S3Options(endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None),
        hf_token=os.environ.get("HF_TOKEN") or None,
    )


def _airflow_connection(conn_id: str):
    from airflow.sdk import BaseHook

    try:
        return BaseHook.get_connection(conn_id)
    except Exception:  # AirflowNotFoundException: no such connection, use the environment
        return None


def from_airflow() -> Settings:
    """Inside a running task: Variables and connections override the environment. Every
    operator starts here, so this is also where the task's log handlers get the redaction
    filter (:mod:`vlmdata.redaction`)."""
    from airflow.sdk import Variable
    from airflow.sdk.log import mask_secret

    redaction.install()
    redaction.add_masker(mask_secret)
    return _overridden(lambda key: Variable.get(key, default=None), _airflow_connection)


def from_airflow_server() -> Settings:
    """In the API server (the UI plugin, :mod:`vlmdata.ui`): the same settings, read from the
    metadata database (the Task SDK's accessors there see only environment Variables)."""
    from airflow.models import Connection, Variable

    def connection(conn_id: str):
        try:
            return Connection.get_connection_from_secrets(conn_id)
        except Exception:  # AirflowNotFoundException: no such connection, use the environment
            return None

    return _overridden(lambda key: Variable.get(key, default_var=None), connection)


def _overridden(variable: Callable[[str], str | None], connection: Callable[[str], Any]) -> Settings:
    """The environment's settings with Airflow's Variables and connections on top."""
    settings = from_env(variable("vlmdata_root"))
    settings.variable = variable
    mirrors_text = variable("vlmdata_mirrors")
    if mirrors_text:
        settings.mirrors = Mirrors.from_env(mirrors_text)
    if settings.root.startswith("s3://") and (aws := connection("aws_default")):
        settings.s3 = s3_options(aws, settings.s3.endpoint_url)
    if hf := connection("huggingface_default"):
        settings.hf_token = hf.password or settings.hf_token
    return settings


def s3_options(connection: Any, default_endpoint: str | None = None) -> S3Options:
    """An AWS connection read as Airflow's Amazon provider reads it: keys (login, password),
    ``profile_name``, ``role_arn`` (assumed through STS, refreshed before it expires),
    ``region_name``, and ``endpoint_url`` (or ``service_config.s3.endpoint_url``) in the extra."""
    from airflow.providers.amazon.aws.hooks.base_aws import BaseSessionFactory

    factory = BaseSessionFactory(conn=connection)
    return S3Options(
        endpoint_url=factory.conn.get_service_endpoint_url("s3") or default_endpoint,
        region_name=factory.conn.region_name,
        session=factory.create_session(),
    )


def catalog() -> dict[str, Source]:
    return load_catalog()
