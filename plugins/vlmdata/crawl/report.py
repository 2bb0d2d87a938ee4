"""The crawl's report and image index (the ``finish_crawl`` task, and a mirror fill after it).

:func:`finish` merges the shard results into ``_vlmdata/reports/<source>/crawl.json`` and records
a pseudo-artifact ``images`` in the source's manifest, with an index of every stored image, so
that verify (decode checks, ``ImageIndex``) sees the crawled images. It runs once per crawl: a
mirror fill afterwards adds what it placed to that report and index (:func:`add_fills`) instead
of merging every shard and listing the image folder again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath

import msgspec

from ..manifest import ArtifactRecord, Manifest, Placement, index_key, now
from ..reports import CrawlCounts, CrawlReport, FilledImage, MirrorOutcome, MissingIds, load, save
from ..storage import Storage
from .keys import ARTIFACT, crawl_prefix, image_key, mirrors_key, plan_key, present_ids, report_key

log = logging.getLogger("vlmdata.crawl")


def finish(storage: Storage, source_id: str, into: str) -> dict:
    """Merge the results into the crawl report, and record the folder in the manifest.

    The index (``manifest.index_key(source_id, "images")``) lists every ``<into>/<id>.jpg``
    stored now, crawled in this run or before, or filled from a mirror archive.
    """
    into = into.strip("/")
    prefix = crawl_prefix(source_id)
    plan = storage.read_json(plan_key(source_id), default={})
    converted: dict[str, str] = {}
    dead: dict[str, str] = dict(plan.get("dead", {}))
    broken: dict[str, str] = {}
    fetched_ok = 0
    done_shards = set()
    for key, _ in sorted(storage.list(f"{prefix}/results")):
        result = storage.read_json(key)
        done_shards.add(posixpath.basename(key))
        fetched_ok += result.get("ok", 0)
        converted.update(result.get("converted", {}))
        dead.update(result.get("dead", {}))
        broken.update(result.get("broken", {}))
    unfinished_ids: list[str] = []
    unfinished = []
    for key, _ in sorted(storage.list(f"{prefix}/shards")):
        if posixpath.basename(key) not in done_shards:
            unfinished.append(key)
            unfinished_ids += [image_id for image_id, _url in storage.read_json(key)["items"]]
    filled: dict[str, FilledImage] = {}
    for key, _ in sorted(storage.list(f"{prefix}/filled")):
        fill = storage.read_json(key)
        for image_id, member in fill.get("filled", {}).items():
            filled[image_id] = FilledImage(archive=fill.get("archive"), member=member, conversion=fill.get("converted", {}).get(image_id))

    present = present_ids(storage, into)  # one listing: the truth about what is stored
    filled = {i: f for i, f in filled.items() if i in present}
    for image_id, entry in filled.items():
        entry.upstream = dead.get(image_id) or broken.get(image_id)
    missing = sorted({*dead, *broken, *unfinished_ids} - set(present))
    still_dead = {i: r for i, r in sorted(dead.items()) if i not in present}
    still_broken = {i: r for i, r in sorted(broken.items()) if i not in present}
    report = CrawlReport(
        source=source_id, into=into, list_key=plan.get("list_key"), finished_at=now(),
        counts=CrawlCounts(listed=plan.get("listed"), fetched_this_run=fetched_ok, converted=len(converted),
                           invalid=len(plan.get("invalid", {})), unfinished_shards=len(unfinished)),
        converted=dict(sorted(converted.items())), dead=still_dead, broken=still_broken,
        filled_from_mirror=dict(sorted(filled.items())), invalid=plan.get("invalid", {}), unfinished_shards=unfinished, missing=missing,
        mirrors=msgspec.convert(storage.read_json(mirrors_key(source_id), default={}).get("mirrors", []), list[MirrorOutcome]),
    )
    return _publish(storage, report, present)


def add_fills(storage: Storage, source_id: str, into: str, placed: dict[str, tuple[FilledImage, int]], mirrors: list[dict] | None = None) -> dict:
    """Add the images a mirror archive placed (id -> (where from, stored size)) and, with
    ``mirrors``, the mirrors' outcomes to the report :func:`finish` wrote, and its index: no
    merge of the shards, no listing. Without a report and index of ``into`` yet (or one that does
    not read), :func:`finish` runs instead."""
    into = into.strip("/")
    try:
        report = load(storage, report_key(source_id), CrawlReport)
    except ValueError:  # not a report this version writes: merge afresh
        report = None
    present = indexed_ids(storage, source_id, into) if report and report.into == into else None
    if present is None:
        return finish(storage, source_id, into)
    for image_id, (fill, size) in placed.items():
        present[image_id] = size
        fill.upstream = report.dead.pop(image_id, None) or report.broken.pop(image_id, None)
        report.filled_from_mirror[image_id] = fill
    report.filled_from_mirror = dict(sorted(report.filled_from_mirror.items()))
    report.missing = [i for i in report.missing if i not in placed]
    report.finished_at = now()
    if mirrors is not None:
        report.mirrors = msgspec.convert(mirrors, list[MirrorOutcome])
    return _publish(storage, report, present, index=bool(placed))


def _publish(storage: Storage, report: CrawlReport, present: dict[str, int], *, index: bool = True) -> dict:
    """Write the index of ``present`` and its manifest record (unless ``index`` is False: it
    did not change), then the report with the counts of what it holds; return the counts."""
    source_id, into = report.source, report.into
    report.counts.stored, report.counts.dead, report.counts.broken = len(present), len(report.dead), len(report.broken)
    report.counts.filled_from_mirror, report.counts.missing = len(report.filled_from_mirror), len(report.missing)
    if index:
        index_bytes = json.dumps([[image_key(into, i), size, None] for i, size in sorted(present.items())], separators=(",", ":")).encode()
        total_bytes = sum(present.values())
        storage.write_bytes(index_key(source_id, ARTIFACT), index_bytes)
        manifest = Manifest(storage, source_id)
        list_key = report.list_key
        revision = next((r.revision for r in manifest.artifacts().values() if list_key and r.placement.target == list_key), None)
        manifest.save_artifact(ArtifactRecord(  # after the index it points to
            name=ARTIFACT,
            url=f"urllist:{list_key}" if list_key else f"urllist:{source_id}",
            size=total_bytes,
            sha256=hashlib.sha256(index_bytes).hexdigest(),
            fingerprint={"images": len(present), "missing": len(report.missing), "list": list_key},
            revision=revision,
            fetched_at=now(),
            placement=Placement(folder=into, images=True, members=len(present), bytes=total_bytes),
            complete=True,
        ))
    save(storage, report_key(source_id), report)
    counts = report.counts
    log.info("%s: %d images stored in %s (%d fetched this run, %d converted, %d filled from a mirror); %d missing (%d dead, %d broken, %d in unfinished shards)",
             source_id, counts.stored, into, counts.fetched_this_run, counts.converted, counts.filled_from_mirror, counts.missing, counts.dead,
             counts.broken, counts.unfinished_shards)
    return {"source": source_id, "report": report_key(source_id), "index": index_key(source_id, ARTIFACT), **msgspec.to_builtins(counts)}


def indexed_ids(storage: Storage, source_id: str, into: str) -> dict[str, int] | None:
    """id -> size of the images the last :func:`finish` indexed (None: no index yet): what is
    stored, without listing the folder again."""
    indexed = storage.read_json(index_key(source_id, ARTIFACT), default=None)
    prefix = f"{into.strip('/')}/"
    return None if indexed is None else {key[len(prefix):-len(".jpg")]: size for key, size, _crc in indexed}


def missing_ids(storage: Storage, source_id: str) -> list[str]:
    """The ids the last :func:`finish` found missing (what a mirror archive should fill)."""
    report = load(storage, report_key(source_id), MissingIds)
    return report.missing if report else []
