"""Shard the images a URL list names and the storage lacks (the ``plan_crawl`` task)."""

from __future__ import annotations

import logging
import math

from ..manifest import now
from ..storage import Storage
from .keys import CrawlError, crawl_prefix, invalid_id, invalid_url, plan_key, present_ids, shard_key

log = logging.getLogger("vlmdata.crawl")

MAX_SHARDS = 1023  # below Airflow's default max_map_length (1024)


def plan_shards(
    storage: Storage,
    list_key: str,
    into: str,
    shard_size: int = 2000,
    *,
    source_id: str = "ocr_vqa",
    max_shards: int = MAX_SHARDS,
) -> list[dict]:
    """Write the shards of what is still missing; return ``[{"shard", "key", "count", "source"}]``.

    Deterministic: ids sorted, fixed-size chunks. Shards and results of an earlier plan are
    removed first (their ids are planned again if still missing). An empty list means
    nothing to fetch.
    """
    if shard_size < 1 or max_shards < 1:
        raise ValueError("shard_size and max_shards must be positive")
    into = into.strip("/")
    listing = storage.read_json(list_key)
    if not isinstance(listing, dict):
        raise CrawlError(f"{list_key}: expected a JSON object keyed by image id, got {type(listing).__name__}")
    present = present_ids(storage, into)
    pairs, dead, invalid = [], {}, {}
    for image_id, entry in listing.items():
        if problem := invalid_id(image_id):
            invalid[str(image_id)] = problem
            continue
        if image_id in present:
            continue
        url = entry.get("imageURL") if isinstance(entry, dict) else None
        if problem := invalid_url(url):
            dead[image_id] = problem  # still missing: a mirror archive may fill it
            continue
        pairs.append((image_id, url.strip()))
    pairs.sort()
    size = max(shard_size, math.ceil(len(pairs) / max_shards))
    prefix = crawl_prefix(source_id)
    for stale in ("shards", "results", "started"):
        storage.delete(f"{prefix}/{stale}")
    shards = []
    for number, start in enumerate(range(0, len(pairs), size)):
        chunk = pairs[start:start + size]
        key = shard_key(source_id, number)
        storage.write_json(key, {"source": source_id, "shard": number, "into": into, "items": [list(p) for p in chunk]})
        shards.append({"source": source_id, "shard": number, "key": key, "count": len(chunk)})
    storage.write_json(plan_key(source_id), {
        "source": source_id, "list_key": list_key, "into": into, "planned_at": now(),
        "listed": len(listing), "present": len(present), "planned": len(pairs),
        "shard_size": size, "shards": len(shards), "dead": dead, "invalid": invalid,
    })
    log.info("%s: %d listed, %d already stored, %d to fetch in %d shards of up to %d, %d without a usable URL, %d invalid ids",
             source_id, len(listing), len(present), len(pairs), len(shards), size, len(dead), len(invalid))
    return shards
