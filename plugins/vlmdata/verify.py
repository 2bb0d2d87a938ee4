"""Integrity of one source: checksums, archive members, image decodes, annotations, references.

Three steps, so that the decoding spreads over workers: :func:`plan_verify` checks the artifacts
and splits the images into chunks, :func:`check_chunk` decodes one chunk (a mapped Airflow task
each), :func:`report_verify` gathers the chunks' results from the storage and writes the report.
:func:`verify_source` (the CLI) runs them in a row.

Nothing changed, nothing done: ``verified.msgpack`` beside the report records what the last
verification saw of every image (size, stamp, CRC-32, decode result; :class:`VerifiedImages`).
A run in the ``changed`` mode (an acquisition's or a referenced source's event, a manual
trigger) decodes only images whose size or stamp differ from the record and carries the others'
results over; the ``crc`` mode (the weekly run, for bit rot) reads every image and also decodes
those whose CRC-32 differs from the record; ``full`` decodes every one. The report is the same
whichever mode. Decoded bytes that differ from their zip member's CRC-32 (the manifest's
index) are broken.

The report goes to ``_vlmdata/reports/<source>/integrity.json``; the images that failed to
decode go to ``broken.json`` beside it, which the cross-reference of other sources and the
mixture builds read (presence comes from the manifests' indexes, never from a stat per file:
600k ``exists`` calls on a network mount take minutes).
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import msgspec

from . import pages
from .annotations import AnnotationError, Records, check_records, fast_or_json, image_path, record_problem
from .catalog import Annotation, Source
from .fetch.digest import sha256_of
from .lease import current_guard, exclusive
from .manifest import Manifest, index_key, now
from .reports import MAX_EXAMPLES, AnnotationCheck, ArtifactCheck, CrawlReport, ImageCheck, IntegrityReport, References, SeenImage, Tally, VerifiedImages, load, save
from .storage import DATA_PREFIX, STATE_PREFIX, Storage

log = logging.getLogger("vlmdata.verify")


class IntegrityFailure(RuntimeError):
    pass


def report_key(source_id: str, name: str = "integrity.json") -> str:
    return f"{STATE_PREFIX}/reports/{source_id}/{name}"


def needed_report_key(source_id: str, page: bool = False) -> str:
    """SA-1B's needed-tars account (JSON), or its page (``page``: HTML beside it)."""
    return report_key(source_id, f"needed_tars.{'html' if page else 'json'}")


def image_key(annotation: Annotation, image: str) -> str:
    """Storage key of an annotation's image: ``data/<image_folder>/<image>``, following the
    annotation's links (a folder the records expect -> the data-tree folder holding the files)."""
    path = image_path(annotation.image_folder, image)
    if annotation.links:
        for expected, actual in sorted(annotation.links.items(), key=lambda kv: -len(kv[0])):
            if path.startswith(expected + "/"):
                path = actual + path[len(expected):]
                break
    return f"{DATA_PREFIX}/{path}"


@dataclass
class ImageIndex:
    """Every image the acquired sources placed, and the ones that failed their decode check."""

    present: set[str]
    broken: dict[str, str]
    owners: dict[str, str]  # data-tree folder -> source id that fills it
    acquired: set[str]

    @classmethod
    def load(cls, storage: Storage, catalog: dict[str, Source], source_ids: list[str]) -> ImageIndex:
        present: set[str] = set()
        broken: dict[str, str] = {}
        acquired = set()
        for source_id in source_ids:
            manifest = Manifest(storage, source_id)
            records = manifest.artifacts()
            if records:
                acquired.add(source_id)
            for record in records.values():
                if record.placement.folder:
                    present.update(path for path, _size, _crc in manifest.index(record.name))
            broken.update(storage.read_json(report_key(source_id, "broken.json"), default={}))
        owners = {}
        for source in catalog.values():
            for artifact in source.artifacts:
                if artifact.extract:
                    owners[f"{DATA_PREFIX}/{artifact.extract.into}"] = source.id
            if source.crawl:
                owners[f"{DATA_PREFIX}/{source.crawl.into}"] = source.id
        return cls(present, broken, owners, acquired)

    @staticmethod
    def state(storage: Storage, source_ids: list[str]) -> str:
        """A sha256 over everything :meth:`load` reads for these sources (each artifact record,
        the file indexes, ``broken.json``): equal states give equal indexes, so a mixture built
        on one need not be built again (``mix.build``'s "nothing changed" check). Hashing the
        files' bytes costs far less than decoding them."""
        digest = hashlib.sha256()
        for source_id in source_ids:
            manifest = Manifest(storage, source_id)
            digest.update(f"\0source {source_id}\0".encode())
            for name, record in sorted(manifest.artifacts().items()):
                digest.update(msgspec.json.encode([name, record.sha256, record.revision, record.complete, record.placement.folder]))
                if record.placement.folder:
                    digest.update(_bytes_or_none(storage, index_key(source_id, record.name)))
            digest.update(b"\0broken\0" + _bytes_or_none(storage, report_key(source_id, "broken.json")))
        return digest.hexdigest()

    def status(self, key: str) -> str | None:
        """None when the image is usable, else why not."""
        if key in self.broken:
            return f"image broken: {self.broken[key]}"
        if key in self.present:
            return None
        owner = next((sid for folder, sid in self.owners.items() if key.startswith(folder + "/")), None)
        if owner and owner not in self.acquired:
            return f"image missing: source {owner} not acquired"
        return "image missing"


def _bytes_or_none(storage: Storage, key: str) -> bytes:
    return storage.read_bytes(key) if storage.exists(key) else b"\0none"


def _tally(bucket: dict[str, Tally], reason: str, example) -> None:
    entry = bucket.setdefault(reason, Tally())
    entry.count += 1
    if len(entry.examples) < MAX_EXAMPLES:
        entry.examples.append(example)


def check_references(records: Sequence, annotation: Annotation, images: ImageIndex) -> References:
    unresolved: dict[str, Tally] = {}
    resolved = 0
    for record in records:
        if record_problem(record) or "image" not in record:
            continue
        key = image_key(annotation, record["image"])
        reason = images.status(key)
        if reason is None:
            resolved += 1
        else:
            _tally(unresolved, reason, record["image"])
    return References(resolved, sum(u.count for u in unresolved.values()), unresolved)


# A chunk of images is one mapped task: about ten minutes of decoding on a 2-core worker, few
# enough tasks for Airflow (SA-1B's 570K images: 29), and a result file of a few MB.
CHUNK_IMAGES = 20_000
CHUNK_BYTES = 8 * 1024**3
ABANDONED_AFTER = timedelta(days=7)  # a verification's chunks not reported by then are dropped


VERIFIED = "verified.msgpack"  # beside the report: what the last verification saw (VerifiedImages)
MODES = {
    "changed": "decode only the images new or changed (size or stamp) since the last verification",
    "crc": "read every image: decode the new or changed ones and those whose CRC-32 differs from the last verification's (bit rot)",
    "full": "decode every image",
}


def verify_mode(mode: str | None, run_type: str | None = None) -> str:
    """The mode of a run: the one asked for, or when it is empty or ``auto``, by what started the
    run: the weekly schedule's run (``run_type`` ``scheduled``) compares CRCs, any other decodes
    only what changed."""
    if mode in (None, "", "auto"):
        return "crc" if run_type == "scheduled" else "changed"
    if mode not in MODES:
        raise ValueError(f"verification mode {mode!r}: one of auto, {', '.join(MODES)}")
    return mode


def verify_source(source: Source, storage: Storage, catalog: dict[str, Source], workers: int | None = None, *, max_images: int = CHUNK_IMAGES, max_bytes: int = CHUNK_BYTES, mode: str = "changed") -> IntegrityReport:
    """The three steps of the ``verify_<source>`` DAG in a row: plan, every chunk, report."""
    plan_id = new_plan_id()
    for chunk in plan_verify(source, storage, plan_id, max_images=max_images, max_bytes=max_bytes, mode=mode):
        check_chunk(storage, chunk, workers)
    return report_verify(source, storage, catalog, plan_id)


def new_plan_id() -> str:
    """A fresh plan id outside Airflow (the CLI); a DAG run uses its run id."""
    return f"{now().replace(':', '').replace('+', '_')}-{uuid.uuid4().hex[:8]}"


def chunks_prefix(source_id: str, plan_id: str) -> str:
    """Where a verification's plan, each chunk's keys and each chunk's results live until its report."""
    if not re.fullmatch(r"[A-Za-z0-9._-]+", plan_id):
        raise ValueError(f"plan id {plan_id!r}: letters, digits, '.', '_' and '-' only")
    return report_key(source_id, f"chunks/{plan_id}")


def chunk_limits(images: int | None, gib: float | None) -> dict[str, int]:
    """``plan_verify``'s bounds from the form's values (an empty field: the default)."""
    return {
        "max_images": CHUNK_IMAGES if images in (None, "") else int(images),
        "max_bytes": CHUNK_BYTES if gib in (None, "") else int(float(gib) * 1024**3),
    }


def chunk_images(images: list[tuple], max_images: int = CHUNK_IMAGES, max_bytes: int = CHUNK_BYTES) -> list[list[tuple]]:
    """Consecutive runs of ``(key, size)``, in their order, of at most ``max_images`` images and
    ``max_bytes`` bytes each (an image larger than ``max_bytes`` is a chunk of its own)."""
    if max_images < 1 or max_bytes < 1:
        raise ValueError(f"a chunk needs room for an image: max_images={max_images}, max_bytes={max_bytes}")
    chunks: list[list[tuple]] = []
    current: list[tuple] = []
    size = 0
    for key, nbytes in images:
        if current and (len(current) >= max_images or size + nbytes > max_bytes):
            chunks.append(current)
            current, size = [], 0
        current.append((key, nbytes))
        size += nbytes
    if current:
        chunks.append(current)
    return chunks


def to_read(key: str, size: int, stamp: str, archive_crc: int | None, last: SeenImage | None, mode: str) -> tuple[SeenImage, list | None]:
    """What the record holds for one listed image until its chunk is read, and what the chunk
    must do with it: None (its last result carries over), or ``[key, compare, archive_crc]``
    (:func:`vlmdata.images.check_stored`: decode, or with ``compare`` first compare the CRC-32)."""
    unchanged = last is not None and last.ok is not None and (last.size, last.stamp) == (size, stamp)
    if unchanged and mode == "changed":
        return last, None
    if unchanged and mode == "crc" and last.crc32 is not None:
        return last, [key, last.crc32, archive_crc]
    return SeenImage(size, stamp), [key, None, archive_crc]


def plan_verify(source: Source, storage: Storage, plan_id: str, *, max_images: int = CHUNK_IMAGES, max_bytes: int = CHUNK_BYTES, mode: str = "changed") -> list[dict]:
    """Step 1: re-hash kept files, check every extracted member is present with its size, and
    split the images to read (``mode``: :data:`MODES`) into chunks. The partial report, the
    record-to-be (:data:`VERIFIED`) and each chunk's keys go to the storage under
    :func:`chunks_prefix`; the return value (what each mapped task receives) is small."""
    mode = verify_mode(mode)
    from .images import is_image_name  # Pillow: not at DAG parse

    prefix = chunks_prefix(source.id, plan_id)
    storage.delete(prefix)  # a plan run again in the same run must not meet the old results
    drop_abandoned_plans(storage, source.id)
    manifest = Manifest(storage, source.id)
    records = manifest.artifacts()
    report = IntegrityReport(source.id, now())
    last = VerifiedImages.load(storage, report_key(source.id, VERIFIED)).images
    seen = VerifiedImages()  # every listed image, with its last result until its chunk reads it
    reads: list[tuple[list, int]] = []  # ([key, compare, archive_crc], size)
    for artifact in source.artifacts:
        if not artifact.optional and (artifact.name not in records or not records[artifact.name].complete):
            report.fail(f"{artifact.name}: not acquired")
    # What was placed is in the manifest, discovered artifacts (Drive folders, shards) included.
    for name, record in sorted(records.items()):
        if not record.complete:
            continue
        # An archive read in part (needed_by) has no sha256: its members are checked from the index below.
        entry = report.artifacts[name] = ArtifactCheck(None if record.partial else record.sha256, record.size, record.revision)
        if record.placement.target:
            if storage.size(record.placement.target) is None:
                report.fail(f"{name}: missing at {record.placement.target}", [record.placement.target])
                continue
            with storage.open_read(record.placement.target) as handle:
                digest, size = sha256_of(handle)
            entry.checksum = "ok" if (digest, size) == (record.sha256, record.size) else "mismatch"
            if entry.checksum != "ok":
                report.fail(f"{name}: sha256 {digest} differs from the manifest's {record.sha256} (changed on disk)", [record.placement.target])
        else:
            index = manifest.index(name)
            listing = {key: (size, stamp) for key, size, stamp in storage.list_stamped(record.placement.folder)}  # the one listing
            present = {key: size for key, (size, _stamp) in listing.items()}
            quarantined = manifest.quarantined()
            missing = [path for path, size, _ in index if path not in present and path not in quarantined]
            wrong_size = [path for path, size, _ in index if path in present and present[path] != size]
            entry.members, entry.missing, entry.wrong_size = len(index), len(missing), len(wrong_size)
            for what, paths in (("missing", missing), ("size differs from the archive", wrong_size)):
                if paths:
                    report.fail(f"{name}: {len(paths)} extracted files {what}", paths)
            if record.placement.images:
                for path, _size, crc in index:
                    if path in listing and is_image_name(path):
                        size, stamp = listing[path]
                        seen.images[path], read = to_read(path, size, stamp, crc, last.get(path), mode)
                        if read:
                            reads.append((read, size))
    chunks = []
    first = 0
    for number, part in enumerate(chunk_images(reads, max_images, max_bytes)):
        end = first + len(part) - 1
        chunk = {
            "source": source.id, "plan": plan_id, "number": number, "label": f"images {first}-{end}",
            "count": len(part), "compare": sum(1 for read, _ in part if read[1] is not None), "bytes": sum(size for _, size in part),
            "keys": f"{prefix}/{number}.keys.json", "results": f"{prefix}/{number}.json",
        }
        storage.write_json(chunk["keys"], [read for read, _ in part])
        chunks.append(chunk)
        first = end + 1
    # Nothing to read and nothing gone: the report reads the record as it is (no copy written).
    changes = bool(reads) or seen.images != last
    if changes:
        seen.save(storage, f"{prefix}/{VERIFIED}")
    compare = sum(c["compare"] for c in chunks)
    storage.write_json(f"{prefix}/plan.json", {"report": msgspec.to_builtins(report), "chunks": chunks, "mode": mode, "changes": changes})
    log.info(
        "%s (mode %s): %d images: %d to decode, %d to compare by CRC-32, %d unchanged since the last verification (its results carry over); %d chunks of up to %d images and %.1f GiB",
        source.id, mode, len(seen.images), len(reads) - compare, compare, len(seen.images) - len(reads), len(chunks), max_images, max_bytes / 1024**3,
    )
    return chunks


def drop_abandoned_plans(storage: Storage, source_id: str, older_than: timedelta = ABANDONED_AFTER) -> list[str]:
    """Delete the chunks of verifications planned more than ``older_than`` ago and never reported
    (a run whose chunk failed for good); a younger one may still be retried, or be running."""
    dropped = []
    limit = datetime.now(timezone.utc) - older_than
    for key, _size in list(storage.list(report_key(source_id, "chunks"))):
        if key.endswith("/plan.json") and datetime.fromisoformat(storage.read_json(key)["report"]["checked_at"]) < limit:
            storage.delete(key.rsplit("/", 1)[0])
            dropped.append(key.rsplit("/", 2)[1])
    if dropped:
        log.info("%s: dropped the chunks of abandoned verifications %s", source_id, dropped)
    return dropped


def check_chunk(storage: Storage, chunk: dict, workers: int | None = None) -> dict:
    """Step 2, once per chunk, on any worker: decode its images (``workers`` processes, by
    default one per core this process may use). The results go to the storage as ``[key,
    result]`` pairs in the chunk's order; a retry after they were written decodes nothing again."""
    if storage.exists(chunk["results"]):
        pairs = storage.read_json(chunk["results"])
        log.info("%s: already checked (%s)", chunk["label"], chunk["results"])
    else:
        from .images import check_images  # Pillow: imported where images are decoded, not at DAG parse

        results = check_images(storage, storage.read_json(chunk["keys"]), workers)
        pairs = [[key, result] for key, result in results.items()]
        storage.write_json(chunk["results"], pairs)
    decoded = [result for _, result in pairs if not result.get("same")]
    broken = sum(1 for result in decoded if not result["ok"])
    return {"chunk": chunk["number"], "label": chunk["label"], "checked": len(pairs), "decoded": len(decoded), "broken": broken, "results": chunk["results"]}


class IncompleteVerification(RuntimeError):
    pass


@exclusive(lambda source, storage, *args, **kwargs: (storage, f"verify/{source.id}"))
def report_verify(source: Source, storage: Storage, catalog: dict[str, Source], plan_id: str) -> IntegrityReport:
    """Step 3: gather the chunks' results, quarantine what does not decode, check annotations and
    references, apply the thresholds, write the reports and the index; then drop the chunks.
    One report of a source at a time (the source's verification lease)."""
    prefix = chunks_prefix(source.id, plan_id)
    plan = storage.read_json(f"{prefix}/plan.json", default=None)
    if plan is None:
        raise IncompleteVerification(f"{source.id}: no verification plan at {prefix}/plan.json (plan_verify did not run for {plan_id})")
    report = msgspec.convert(plan["report"], IntegrityReport)
    read: dict[str, dict] = {}
    for chunk in plan["chunks"]:
        if not storage.exists(chunk["results"]):
            raise IncompleteVerification(f"{source.id}: {chunk['label']} has no results at {chunk['results']}: its check did not finish")
        read.update(storage.read_json(chunk["results"]))
    changes = plan.get("changes", True)
    seen = VerifiedImages.load(storage, f"{prefix}/{VERIFIED}" if changes else report_key(source.id, VERIFIED))
    for key, result in read.items():
        if not result.get("same"):  # a CRC-32 that still matches keeps the last result
            # A plan made before the record existed has no entry: no stamp, decoded again next time.
            listed = seen.images.get(key) or SeenImage(-1, "")
            seen.images[key] = SeenImage.decoded(listed.size, listed.stamp, result)
    manifest = Manifest(storage, source.id)
    report.images = _summarise_images(storage, seen.images, report, manifest)
    rotted = {key: result["rotted"] for key, result in read.items() if "rotted" in result}
    if rotted:
        report.warn(f"{len(rotted)} images changed on the storage without a write (same size and stamp as at the last verification, another CRC-32): bit rot; decoded again", sorted(rotted))
    _check_annotations(source, storage, catalog, manifest.artifacts(), report)
    _note_crawl(storage, report)
    _apply_thresholds(source, report)
    report.settle()
    current_guard()()
    if changes:  # broken images went to the quarantine: one put back (refetched) is decoded again
        VerifiedImages({key: image for key, image in seen.images.items() if image.ok}).save(storage, report_key(source.id, VERIFIED))
    save(storage, report_key(source.id), report)
    storage.write_bytes(report_key(source.id, "integrity.html"), render_html(report).encode())
    write_index(storage)
    storage.delete(prefix)
    decoded = sum(1 for result in read.values() if not result.get("same"))
    log.info("%s (mode %s): %d of %d images decoded this run, %d compared by CRC-32 unchanged", source.id, plan.get("mode", "full"), decoded, len(seen.images), len(read) - decoded)
    log.info(report.summary())
    return report


def _apply_thresholds(source: Source, report: IntegrityReport) -> None:
    """Beyond the source's thresholds a warning becomes a failure."""
    limits = source.integrity
    images = report.images
    if images.checked and images.broken_count / images.checked > limits.max_broken_images:
        report.fail(f"{images.broken_count} of {images.checked} images do not decode, above the threshold of {limits.max_broken_images:.2%}", sorted(images.broken), every="broken.json" if images.broken_count > len(images.broken) else None)
    for name, checked in report.annotations.items():
        if checked.records and checked.invalid / checked.records > limits.max_malformed_records:
            report.fail(f"{name}: {checked.invalid} of {checked.records} records malformed, above {limits.max_malformed_records:.2%}", [name])
    for name, refs in report.references.items():
        total = refs.resolved + refs.unresolved
        if total and refs.unresolved / total > limits.max_unresolved_references:
            report.fail(f"{name}: {refs.unresolved} of {total} referenced images unresolved, above {limits.max_unresolved_references:.2%}", [name])


def quarantine_key(source_id: str, key: str) -> str:
    return f"{STATE_PREFIX}/quarantine/{source_id}/{key}"


def _summarise_images(storage, results: dict[str, SeenImage], report: IntegrityReport, manifest: Manifest) -> ImageCheck:
    broken = {key: r.detail for key, r in results.items() if not r.ok}
    # Out of the training tree, never deleted: a loader must not trip on them. A report that
    # waited for another one of the same source finds some already moved.
    guard = current_guard()
    for key in broken:
        guard()
        if storage.exists(key) or not storage.exists(quarantine_key(report.source, key)):
            storage.move(key, quarantine_key(report.source, key))
    before = manifest.quarantined()
    quarantined = {**before, **broken}
    if quarantined != before:  # a re-run with nothing broken writes nothing (bench rerun)
        manifest.save_quarantined(quarantined)
    report.quarantined = len(quarantined)
    broken = quarantined
    mislabelled = {key: r.mislabelled for key, r in results.items() if r.mislabelled}
    formats: dict[str, int] = {}
    for r in results.values():
        if r.ok:
            formats[r.detail] = formats.get(r.detail, 0) + 1
    if storage.read_json(report_key(report.source, "broken.json"), default=None) != broken:
        storage.write_json(report_key(report.source, "broken.json"), broken)
    if broken:
        report.warn(f"{len(broken)} images do not decode: moved to {STATE_PREFIX}/quarantine/{report.source}/; mixtures drop their records", sorted(broken), every="broken.json")
    if mislabelled:
        report.warn(f"{len(mislabelled)} images are named with the wrong format (they decode; a loader that trusts the extension may not)", sorted(mislabelled))
    checked = len(set(results) | set(broken))
    return ImageCheck(
        checked=checked, ok=checked - len(broken), broken=dict(list(broken.items())[:MAX_EXAMPLES]), broken_count=len(broken),
        mislabelled=dict(sorted(mislabelled.items())[:MAX_EXAMPLES]), mislabelled_count=len(mislabelled), formats=formats,
    )


def _note_crawl(storage: Storage, report: IntegrityReport) -> None:
    """A crawled source (OCR-VQA): its crawl's counts and, bounded, the images it could not store
    (dead URLs, broken upstream) and the ones it converted; a warning when images are missing."""
    from .crawl import report_key as crawl_report_key  # requests, Pillow: not at DAG parse

    crawl = load(storage, crawl_report_key(report.source), CrawlReport)
    if crawl is None:
        return
    report.crawl = crawl.note()
    counts = crawl.counts
    if counts.missing:
        report.warn(f"{counts.missing} images of the list are not stored ({counts.dead} dead URLs, {counts.broken} broken upstream)", crawl.missing, every="crawl.json")


def _check_annotations(source, storage, catalog, records, report) -> None:
    annotated = [a for a in source.artifacts if a.annotation and a.name in records and records[a.name].complete]
    if not annotated:
        return
    images = ImageIndex.load(storage, catalog, sorted({source.id, *source.references} & set(catalog)))
    for artifact in annotated:
        placement = records[artifact.name].placement

        def checks(fast: bool, placement=placement, artifact=artifact) -> tuple[AnnotationCheck, References]:  # a record at a time (Records)
            with storage.open_read(placement.target) as handle:
                rows = Records.read(handle, artifact.name, size=placement.bytes or None, fast=fast)
            return msgspec.convert(check_records(rows), AnnotationCheck), check_references(rows, artifact.annotation, images)

        try:
            checked, refs = fast_or_json(checks, artifact.name)
        except AnnotationError as exc:
            report.fail(str(exc), [artifact.name])
            continue
        report.annotations[artifact.name], report.references[artifact.name] = checked, refs
        if checked.invalid:
            report.warn(f"{artifact.name}: {checked.invalid} of {checked.records} records are malformed", [artifact.name])
        if refs.unresolved:
            report.warn(f"{artifact.name}: {refs.unresolved} of {refs.resolved + refs.unresolved} referenced images are missing or broken", [artifact.name])


def render_html(report: IntegrityReport) -> str:
    """The report as a page a person reads: status and why, counts, every finding with its files."""
    return pages.render("integrity.html", report=report)


def write_index(storage: Storage) -> None:
    """``_vlmdata/reports/index.html``: every source's last status on one page."""
    reports = []
    for key, _size in storage.list(f"{STATE_PREFIX}/reports"):
        if key.endswith("/integrity.json"):
            reports.append(load(storage, key, IntegrityReport))
    page = pages.render("index.html", reports=sorted(reports, key=lambda r: r.source))
    storage.write_bytes(f"{STATE_PREFIX}/reports/index.html", page.encode())
