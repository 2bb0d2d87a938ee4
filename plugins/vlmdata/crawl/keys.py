"""Where a crawl keeps its state on the storage, and what names an image: shared by every step."""

from __future__ import annotations

import posixpath
import re
from urllib.parse import urlsplit

from ..storage import STATE_PREFIX, Storage

ARTIFACT = "images"  # the pseudo-artifact the crawled folder is recorded under

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


class CrawlError(RuntimeError):
    pass


def crawl_prefix(source_id: str) -> str:
    """Where a crawl keeps what its tasks hand each other (plan, shards, results, fill records)."""
    return f"{STATE_PREFIX}/crawl/{source_id}"


def plan_key(source_id: str) -> str:
    return f"{crawl_prefix(source_id)}/plan.json"


def mirrors_key(source_id: str) -> str:
    return f"{crawl_prefix(source_id)}/mirrors.json"


def shard_key(source_id: str, number: int) -> str:
    """A shard: the ``[id, url]`` pairs one mapped task fetches."""
    return f"{crawl_prefix(source_id)}/shards/{number:04d}.json"


def result_key(shard: str) -> str:
    """The results key of a shard key (``.../shards/0003.json`` -> ``.../results/0003.json``)."""
    head, name = posixpath.split(shard)
    folder, kind = posixpath.split(head)
    if kind != "shards":
        raise CrawlError(f"not a shard key: {shard!r}")
    return f"{folder}/results/{name}"


def report_key(source_id: str) -> str:
    """The crawl report (:class:`vlmdata.reports.CrawlReport`)."""
    return f"{STATE_PREFIX}/reports/{source_id}/crawl.json"


def fill_record_key(source_id: str, archive_name: str) -> str:
    """What one mirror archive placed, holds and is (its upstream fingerprint)."""
    return f"{crawl_prefix(source_id)}/filled/{re.sub(r'[^A-Za-z0-9._-]', '_', archive_name)}.json"


def image_key(into: str, image_id: str) -> str:
    return f"{into}/{image_id}.jpg"


def present_ids(storage: Storage, into: str) -> dict[str, int]:
    """id -> size of every non-empty ``<into>/<id>.jpg``, from one listing of the folder (207K
    objects at real scale: a run lists it in ``plan_shards`` and in ``finish`` only; the mirror
    fill reads finish's index instead)."""
    present = {}
    prefix = into.rstrip("/") + "/"
    for key, size in storage.list(into):
        name = key[len(prefix):] if key.startswith(prefix) else None
        if name and "/" not in name and name.endswith(".jpg") and size > 0:
            present[name[:-4]] = size
    return present


def invalid_id(image_id: object) -> str | None:
    """Why an id cannot name a file, or None."""
    if not isinstance(image_id, str) or not _ID_RE.fullmatch(image_id) or ".." in image_id:
        return f"id {image_id!r} cannot name a file (letters, digits, '.', '_', '-' only)"
    return None


def invalid_url(url: object) -> str | None:
    """Why an image URL cannot be fetched, or None."""
    if not isinstance(url, str) or not url.strip():
        return "no imageURL in the list"
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return f"imageURL {url!r} is not an http(s) URL"
    return None
