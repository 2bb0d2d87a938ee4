"""Lineage of the steps: what each read and wrote, for OpenLineage events.

Built from what the step left on the storage (the manifest of a source, a verification report,
a layout report, a mixture's lock), so a retried or re-run task describes what is there. The
upstream is named by its URL without the query string (signed links carry credentials there),
with its revision (Hub or GitHub commit; else the sha256 of the bytes) as the dataset's
version; the storage by the same URIs as the assets (:func:`vlmdata.storage.location_uri`).

A data catalog follows a training file back to its upstream files through the events: a
mixture reads annotation files and integrity reports; a verification reads the files its
source placed (and those of the sources its annotations point into); a fetch reads the
upstream URL and writes the placed file or folder.

The functions return plain :class:`Lineage` values; :func:`to_openlineage` turns one into the
OpenLineage client's datasets and facets (imported only then: the library runs without it).
The operators hand that to Airflow's OpenLineage provider (:mod:`vlmdata.operators.lineage`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .catalog import Source
from .layout import Profile, report_key as layout_report_key
from .manifest import ArtifactRecord, Manifest, source_prefix
from .mix import latest_lock_key, lock_of
from .storage import Storage, location_uri
from .verify import report_key

FACET = "vlmdata"  # the run facet holding a step's counts


@dataclass(frozen=True)
class Data:
    """A dataset an event names: where it is, and what is known of it."""

    uri: str  # s3://bucket/key, file:///path or the upstream's http(s) URL (no query string)
    version: str | None = None  # upstream revision, or the sha256 of the bytes
    records: int | None = None
    bytes: int | None = None
    files: int | None = None


@dataclass(frozen=True)
class Lineage:
    inputs: list[Data] = field(default_factory=list)
    outputs: list[Data] = field(default_factory=list)
    counts: dict = field(default_factory=dict)  # the step's counts (scalars only): the run facet "vlmdata"


def dataset_name(uri: str) -> tuple[str, str]:
    """OpenLineage's (namespace, name) of a URI, as its naming conventions and Airflow's
    converters of asset URIs have it: ``s3://bucket`` + key, ``file`` + absolute path (a local
    root), ``https://host:port`` + path (credentials and query string dropped)."""
    parts = urlsplit(uri)
    if parts.scheme == "s3":
        return f"s3://{parts.netloc}", parts.path.lstrip("/")
    if parts.scheme == "file":
        return (f"file://{parts.netloc}" if parts.netloc else "file"), parts.path
    host = parts.hostname or ""
    authority = f"{host}:{parts.port}" if parts.port else host
    return f"{parts.scheme}://{authority}", parts.path or "/"


def upstream(record: ArtifactRecord) -> Data:
    """The file upstream, as the manifest recorded it (its URL is already redacted)."""
    url = record.url.split("?", 1)[0]
    return Data(url, version=record.revision or record.sha256, bytes=record.size)


def placed(storage: Storage, record: ArtifactRecord, version: str | None = None) -> Data:
    """What an artifact put on the storage: the file kept as it is, or the folder it was extracted into."""
    where = record.placement.target or record.placement.folder
    return Data(location_uri(storage.url, where), version=version or record.revision or record.sha256,
                bytes=record.placement.bytes or None, files=record.placement.members or (1 if record.placement.target else None))


def of_fetch(storage: Storage, source_id: str, artifact: str) -> Lineage:
    """A fetch: the upstream URL at its revision in, the placed file or folder out."""
    record = Manifest(storage, source_id).artifact(artifact)
    if record is None or not record.complete:
        return Lineage()  # not placed: nothing written that a catalog could follow
    counts = {"source": source_id, "artifact": artifact, "bytes": record.size, "sha256": record.sha256, "files": record.placement.members or 1, "revision": record.revision or ""}
    return Lineage([upstream(record)], [placed(storage, record)], counts)


def _placements(storage: Storage, source_id: str) -> list[Data]:
    return [placed(storage, r) for _, r in sorted(Manifest(storage, source_id).artifacts().items()) if r.complete]


def of_publish(storage: Storage, source_id: str) -> Lineage:
    """A publication: the source's placed files in, its record (the acquired asset) out."""
    manifest = Manifest(storage, source_id)
    records = [r for r in manifest.artifacts().values() if r.complete]
    source = manifest.source()
    counts = {"source": source_id, "artifacts": len(records), "bytes": sum(r.size for r in records), "revision": (source.revision if source else None) or ""}
    record = Data(location_uri(storage.url, source_prefix(source_id)), version=source.revision if source else None)
    return Lineage(_placements(storage, source_id), [record], counts)


def of_verify(storage: Storage, source: Source) -> Lineage:
    """A verification: the files the source placed, and those of the sources its annotations
    point into, in; the integrity report out, with its counts."""
    report = storage.read_json(report_key(source.id), default=None)
    if report is None:
        return Lineage()
    inputs = [data for sid in (source.id, *source.references) for data in _placements(storage, sid)]
    images = report.get("images", {})
    references = report.get("references", {}).values()
    counts = {
        "source": source.id, "status": report.get("status", ""), "images_checked": images.get("checked", 0), "images_ok": images.get("ok", 0),
        "images_broken": images.get("broken_count", 0), "quarantined": report.get("quarantined", 0),
        "references_resolved": sum(r["resolved"] for r in references), "references_unresolved": sum(r["unresolved"] for r in references),
    }
    return Lineage(inputs, [Data(location_uri(storage.url, report_key(source.id)))], counts)


def of_layout(storage: Storage, profile: Profile) -> Lineage:
    """A layout: the data tree's folders in, the profile's view out (what is missing, counted)."""
    report = storage.read_json(layout_report_key(profile.id), default=None)
    if report is None:
        return Lineage()
    inputs = [Data(location_uri(storage.url, key)) for key in sorted(set(report["views"].values()))]
    view = Data(location_uri(storage.url, report["root"]), files=len(report["views"]))
    return Lineage(inputs, [view], {"profile": profile.id, "paths": len(report["views"]), "missing": len(report["missing"])})


def of_mixture(storage: Storage, recipe_id: str, catalog: dict[str, Source]) -> Lineage:
    """A mixture: every annotation file its lock pins (at the version it pins) and the integrity
    reports that decided which images are usable, in; the training file and the lock out."""
    lock = storage.read_json(latest_lock_key(recipe_id), default=None)  # the build that just ran
    if lock is None:
        return Lineage()
    inputs, reports = [], []
    for item in lock["inputs"]:
        record = Manifest(storage, item["source"]).artifact(item["artifact"])
        if record is not None:
            inputs.append(placed(storage, record, version=item["revision"] or item["sha256"]))  # as the lock pins it
        for sid in (item["source"], *(catalog[item["source"]].references if item["source"] in catalog else ())):
            if sid not in reports and storage.exists(report_key(sid)):
                reports.append(sid)
    inputs += [Data(location_uri(storage.url, report_key(sid))) for sid in reports]
    output = lock["output"]
    outputs = [
        Data(location_uri(storage.url, output["key"]), version=output["sha256"], records=output["records"], bytes=output.get("bytes"), files=1),
        Data(location_uri(storage.url, lock_of(output["key"])), files=1),
    ]
    counts = {"recipe": recipe_id, "records": output["records"], "dropped": len(lock["dropped"]), "seed": lock["seed"], "format": lock["format"], "sha256": output["sha256"]}
    return Lineage(inputs, outputs, counts)


@functools.cache
def _run_facet_class():
    """The run facet of a step's counts (an attrs class, as the OpenLineage client serialises them)."""
    import attr
    from openlineage.client.generated.base import RunFacet

    @attr.define
    class VlmdataRunFacet(RunFacet):
        counts: dict

    return VlmdataRunFacet


def to_openlineage(lineage: Lineage) -> tuple[list, list, dict]:
    """The OpenLineage client's input and output datasets and run facets of a lineage: a version
    facet where the version is known, output statistics (records, bytes, files) on outputs."""
    from openlineage.client.generated.base import InputDataset, OutputDataset
    from openlineage.client.generated.dataset_version_dataset import DatasetVersionDatasetFacet
    from openlineage.client.generated.output_statistics_output_dataset import OutputStatisticsOutputDatasetFacet

    def facets(data: Data) -> dict:
        return {"version": DatasetVersionDatasetFacet(datasetVersion=data.version)} if data.version else {}

    inputs = [InputDataset(*dataset_name(d.uri), facets=facets(d)) for d in lineage.inputs]
    outputs = []
    for d in lineage.outputs:
        stats = {"outputStatistics": OutputStatisticsOutputDatasetFacet(rowCount=d.records, size=d.bytes, fileCount=d.files)} if (d.records, d.bytes, d.files) != (None, None, None) else {}
        outputs.append(OutputDataset(*dataset_name(d.uri), facets=facets(d), outputFacets=stats))
    run_facets = {FACET: _run_facet_class()(counts=dict(lineage.counts))} if lineage.counts else {}
    return inputs, outputs, run_facets
