"""URL-list crawl (OCR-VQA): plan shards, crawl each shard, merge the results, fill from mirrors.

Plain functions for four Airflow tasks, a module each:

* :mod:`.plan` (:func:`plan_shards`) reads the URL list (OCR-VQA's ``dataset.json``: a dict keyed
  by image id with an ``imageURL``), drops the ids whose ``<into>/<id>.jpg`` is already stored
  (one listing of the folder, never a stat per file) and writes deterministic shards of
  ``[id, url]`` pairs to ``_vlmdata/crawl/<source>/shards/<n>.json``. It returns one small
  description per shard (the key, not the URLs: XCom stays small), at most
  :data:`MAX_SHARDS` of them (Airflow's ``max_map_length`` is 1024), growing the shard size
  when the list is long.
* :mod:`.fetch` (:func:`crawl_shard`) fetches one shard with a thread pool on the shared HTTP
  stack (:mod:`vlmdata.fetch.http`). Every body is fully decoded with Pillow: JPEGs are stored
  byte for byte, anything else (GIF, PNG, WEBP, ...) is converted to a real RGB JPEG
  (:func:`vlmdata.images.to_jpeg`), because the annotations name ``<id>.jpg``. Dead URLs and
  undecodable bodies are recorded, never fatal.
* :mod:`.report` (:func:`finish`) merges the shard results into the crawl report and the
  manifest's image index, once per crawl.
* :mod:`.mirrors` (:func:`fill_from_mirrors`, :func:`fill_from_archive`) fills what is still
  missing from community mirror archives and adds it to that report.

:mod:`.keys` holds the storage keys they share. ``into`` is a storage key
(``data/ocr_vqa/images``), as is the list's key. A run lists the image folder twice: in
``plan_shards`` and in ``finish``; the mirror fill reads what is stored from finish's index.
"""

from __future__ import annotations

from ..fetch.http import RetryPolicy
from ..fetch.policy import CRAWL_POLICY
from ..mirrors import Mirrors
from ..storage import DATA_PREFIX, Storage
from .fetch import crawl_shard
from .keys import ARTIFACT, CrawlError, crawl_prefix, fill_record_key, image_key, mirrors_key, plan_key, report_key, result_key, shard_key
from .mirrors import fill_from_archive, fill_from_mirrors
from .plan import MAX_SHARDS, plan_shards
from .report import finish, missing_ids


def locations(source_id: str, catalog: dict) -> tuple[str, str]:
    """Storage keys of a crawl source's URL list and of the folder its images land in."""
    upstream = catalog[source_id].crawl
    list_target = catalog[upstream.list_source].artifact(upstream.list_artifact).target
    return f"{DATA_PREFIX}/{list_target}", f"{DATA_PREFIX}/{upstream.into}"


def crawl_all(storage: Storage, source_id: str, catalog: dict, mirrors: Mirrors | None = None, policy: RetryPolicy = RetryPolicy()) -> dict:
    """Plan, crawl every shard, finish, fill from the fallback mirrors, in one process: what the
    CLI does (Airflow maps the shards). ``policy`` is the mirror archives' download policy."""
    list_key, into = locations(source_id, catalog)
    for shard in plan_shards(storage, list_key, into, source_id=source_id):
        crawl_shard(storage, shard["key"], into, mirrors=mirrors)
    finish(storage, source_id, into)
    return fill_from_mirrors(storage, source_id, into, catalog[source_id].crawl.fallback_mirrors, mirrors=mirrors, policy=policy)


__all__ = [
    "ARTIFACT", "CRAWL_POLICY", "MAX_SHARDS", "CrawlError", "crawl_all", "crawl_prefix", "crawl_shard", "fill_from_archive", "fill_from_mirrors",
    "fill_record_key", "finish", "image_key", "locations", "missing_ids", "mirrors_key", "plan_key", "plan_shards", "report_key", "result_key", "shard_key",
]
