"""Catalog overlays of the end-to-end tests that start Airflow on the replicas."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from vlmdata.replicas.sources import Replicas


def catalog_without_schedules(replicas: Replicas, folder: Path) -> str:
    """A ``VLMDATA_CATALOG`` value: the replicas' catalog, then ``folder`` with the same entries
    but no refresh schedule, so that an acquisition runs only when a test triggers it. (A
    schedule whose last interval has ended fires as soon as its DAG is unpaused: that run would
    overlap the test's run of the same source, and which one finishes last decides what the
    reports say.) Put more source files in ``folder`` to add sources."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(replicas.catalog_path.glob("*.yaml")):
        source = yaml.safe_load(path.read_text())
        (folder / path.name).write_text(yaml.safe_dump({**source, "refresh": None}, sort_keys=False, allow_unicode=True))
    return os.pathsep.join([str(replicas.catalog_path), str(folder)])
