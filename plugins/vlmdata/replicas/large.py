"""A storage as a large deployment leaves it, without its data: every catalog source acquired
and verified, every recipe built, and beside each summary the whole report it summarises,
listing ``records`` entries (broken images per source, every dead URL of the crawl, every
dropped record of each mixture: millions at real scale).

What the UI's status page is measured and tested on (``bench/status_page.py``,
``tests/integration/test_status.py``): it must read the summaries, never the whole reports.
With ``corrupt=True`` the whole reports are not JSON at all, so that a page that reads one fails.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import msgspec

from ..catalog import Source
from ..crawl import report_key as crawl_report_key
from ..manifest import Manifest, SourceRecord
from ..mix import Recipe, latest_lock_key, lock_summary, parse_lock, summary_key
from ..reports import CrawlCounts, CrawlReport, ImageCheck, IntegrityReport, save
from ..storage import Storage
from ..verify import report_key

ACQUIRED_AT = "2026-11-30T08:00:00+00:00"
CHECKED_AT = "2026-11-30T09:00:00+00:00"
CRAWLED = "ocr_vqa"


def _whole(storage: Storage, key: str, entries, corrupt: bool) -> None:
    """A whole report: ``entries`` as JSON, or (corrupt) the same bytes cut short."""
    data = json.dumps(entries, separators=(",", ":")).encode()
    storage.write_bytes(key, data[: len(data) // 2] if corrupt else data)


def fill(storage: Storage, catalog: Mapping[str, Source], recipes: Mapping[str, Recipe], records: int, corrupt: bool = False) -> None:
    for source in catalog.values():
        Manifest(storage, source.id).save_source(SourceRecord(source=source.id, kind=source.kind, revision="0" * 40, published_at=ACQUIRED_AT))
        broken = {f"data/{source.id}/images/{n:09d}.jpg": "does not decode: truncated" for n in range(records)}
        report = IntegrityReport(source.id, CHECKED_AT, quarantined=records)
        report.images = ImageCheck(checked=2 * records, ok=records, broken=dict(list(broken.items())[:50]), broken_count=records)
        report.warn(f"{records} images do not decode", sorted(broken), every="broken.json")
        if source.id == CRAWLED:
            dead = {f"{n:010d}": "HTTP 404" for n in range(records)}
            crawl = CrawlReport(source.id, f"data/{source.id}/images", CHECKED_AT, CrawlCounts(listed=2 * records, stored=records, dead=records, missing=records), dead=dead, missing=sorted(dead))
            report.crawl = crawl.note()
            _whole(storage, crawl_report_key(source.id), msgspec.to_builtins(crawl), corrupt)
        report.settle()
        save(storage, report_key(source.id), report)
        _whole(storage, report_key(source.id, "broken.json"), broken, corrupt)
    for recipe in recipes.values():
        dropped = [{"component": "all", "id": str(n), "image": f"coco/{n:012d}.jpg", "reason": "image missing"} for n in range(records)]
        lock = {
            "recipe": {"id": recipe.id}, "seed": 0, "format": "json", "vlmdata": "bench", "built_at": CHECKED_AT, "image_folder": "data", "inputs": [],
            "counts": {"all": {"available": 2 * records, "sampled": 2 * records, "kept": records, "dropped": {"image missing": records}}},
            "output": {"key": f"mixtures/{recipe.id}/{recipe.id}.json", "records": records, "sha256": "0" * 64, "bytes": 100 * records},
            "dropped": dropped,
        }
        storage.write_json(summary_key(recipe.id), lock_summary(parse_lock(lock)))
        _whole(storage, latest_lock_key(recipe.id), lock, corrupt)

