"""A digest of a storage tree: what two runs must agree on, whatever executed them.

``tree_digest(storage)`` maps every stored file to the sha256 of its bytes. The files of the
system of record (``_vlmdata/``: manifests, file indexes, reports) and the mixtures' locks and
their summaries also record *when* they were written and by which Airflow run (``fetched_at``, ``checked_at``,
``by: airflow run manual__2026-...``) and how long a step took (a crawl shard's ``seconds``,
``images_per_second``): in those, every ISO-8601 timestamp is replaced by ``<time>``, every
Airflow run id by ``<run>`` (ids carry a random suffix) and every duration or rate by
``<timing>`` before hashing, so that two runs of the same inputs give the
same digest. Data files (``data/``) and mixture files are hashed as they are, byte for byte.

    differences(tree_digest(a), tree_digest(b))   # [] when the trees hold the same results
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from typing import Any

from .storage import Storage

# 2026-12-03T07:20:11.123456+00:00, 2026-12-03T07:20:11Z, 2026-12-03 07:20:11 ...
_TIMESTAMP = re.compile(rb"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?")
# manual__2026-12-03T10:18:36__1f2e3d4c, asset_triggered__2026-12-03T10:18:36.699004+00:00_nN7apQRw ...
_RUN_ID = re.compile(rb"\b(?:manual|scheduled|asset_triggered|backfill)__[\w.:+-]+")
TOP_FOLDERS = ("data", "mixtures", "_vlmdata")
# Coordination, not results: who held which lease, and when (vlmdata.lease).
COORDINATION = ("_vlmdata/leases/",)


def recorded_when(key: str) -> bool:
    """Whether a file records when and by which run it was written (its timestamps are masked)."""
    return key.startswith("_vlmdata/") or key.endswith(("lock.json", "/summary.json"))  # lock.json and <output>.lock.json


def _is_timing(name: str) -> bool:
    return name == "seconds" or name.endswith(("_seconds", "_per_second"))


def _mask_timings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: "<timing>" if _is_timing(k) else _mask_timings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_timings(v) for v in value]
    return value


def normalised(key: str, data: bytes) -> bytes:
    """The bytes to hash: masked (timestamps, durations) where :func:`recorded_when`, else as stored."""
    if not recorded_when(key):
        return data
    if key.endswith(".json"):
        try:
            data = json.dumps(_mask_timings(json.loads(data)), sort_keys=True).encode()
        except ValueError:  # not JSON after all: hashed with only the timestamps masked
            pass
    return _TIMESTAMP.sub(b"<time>", _RUN_ID.sub(b"<run>", data))


def tree_digest(storage: Storage, folders: Iterable[str] = TOP_FOLDERS, ignore: Iterable[str] = ()) -> dict[str, str]:
    """Key -> sha256 (hex) of every file under ``folders``, but the leases and keys starting with
    a prefix in ``ignore``; timestamps masked in the files :func:`recorded_when` names."""
    ignore = (*COORDINATION, *ignore)
    digest = {}
    for folder in folders:
        for key, _size in storage.list(folder):
            if not (ignore and key.startswith(ignore)):
                digest[key] = hashlib.sha256(normalised(key, storage.read_bytes(key))).hexdigest()
    return dict(sorted(digest.items()))


def differences(expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    """What differs between two digests, one line per file (missing, extra, other bytes)."""
    lines = [f"missing: {k}" for k in sorted(expected.keys() - actual.keys())]
    lines += [f"extra:   {k}" for k in sorted(actual.keys() - expected.keys())]
    lines += [f"differs: {k}" for k in sorted(expected.keys() & actual.keys()) if expected[k] != actual[k]]
    return lines
