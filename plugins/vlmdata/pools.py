"""Airflow pools, one per upstream host: work spreads over workers, a host is not flooded; and
``vlmdata_decode`` for the image chunks of the verify DAGs.

Airflow never schedules a task whose pool does not exist, so the pools must be created where
the DAGs run: ``make run``, the demo and the tests create them (``LocalAirflow``); elsewhere
``vlmdata pools > pools.json && airflow pools import pools.json``.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from .catalog import Source
from .kinds import kind_named

# Slots: how many downloads may hit a host at once. The Hub and plain HTTP servers take
# several connections well; Drive answers quota pages to eager clients.
SLOTS = {"huggingface.co": 4, "drive.google.com": 2, "github.com": 2}
DEFAULT_SLOTS = 3
CRAWL_SLOTS = 2  # crawl tasks; each limits its own per-host connections
# Image-decoding chunks of the verify DAGs running at once in the whole deployment. Each one
# starts a decoder per core of its worker, so one slot per worker keeps every worker busy
# without two chunks fighting over one worker's cores: resize it to the number of workers
# (Admin > Pools, or edit the exported pools.json).
DECODE_POOL = "vlmdata_decode"
DECODE_SLOTS = 2


def _host(source: Source) -> str:
    """The kind's host (vlmdata.kinds), else the host of the source's first artifact URL."""
    host = kind_named(source.kind).pool_host
    if host:
        return host
    urls = [a.url for a in source.artifacts if a.url]
    return urlsplit(urls[0]).hostname if urls else source.id


def _name(text: str) -> str:
    return "vlmdata_" + re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def fetch_pool(source: Source) -> str:
    return _name(_host(source))


def crawl_pool(source: Source) -> str:
    return _name(f"crawl {source.id}")


def mirror_pool(source: Source) -> str:
    """The pool of the host of the first fallback mirror archive (the source's own without one)."""
    mirrors = source.crawl.fallback_mirrors if source.crawl else []
    return _name(urlsplit(mirrors[0]).hostname) if mirrors else fetch_pool(source)


def pools(catalog: dict[str, Source]) -> dict[str, dict]:
    """``airflow pools import`` format: name -> slots and description."""
    users: dict[str, list[str]] = {}
    found: dict[str, dict] = {}

    def downloads(host: str, user: str) -> None:
        name = _name(host)
        users.setdefault(name, []).append(user)
        found[name] = {"slots": SLOTS.get(host, DEFAULT_SLOTS), "description": f"downloads from {host} ({', '.join(users[name])})", "include_deferred": False}

    for source in catalog.values():
        downloads(_host(source), source.id)
        if source.crawl:
            found[crawl_pool(source)] = {"slots": CRAWL_SLOTS, "description": f"image crawl of {source.id}", "include_deferred": False}
            for host in dict.fromkeys(urlsplit(url).hostname for url in source.crawl.fallback_mirrors):
                downloads(host, f"{source.id} mirrors")
    found[DECODE_POOL] = {"slots": DECODE_SLOTS, "description": "verification: image chunks decoded at once, each with one process per core of its worker (one slot per worker)", "include_deferred": False}
    return found
