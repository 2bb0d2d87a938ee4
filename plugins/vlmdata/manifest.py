"""The per-source record on the storage: what was fetched, from which revision, placed where.

One small JSON per artifact (``_vlmdata/sources/<id>/artifacts/<name>.json``) so that mapped
tasks fetching different artifacts never rewrite the same object, plus ``source.json`` for
what concerns the whole source (licence acknowledgement, last publication), and for each
extracted archive an index of the files it placed (``index/<name>.json``).
"""

from __future__ import annotations

from datetime import datetime, timezone

from pydantic import BaseModel, ConfigDict, Field

from .storage import STATE_PREFIX, Storage


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")  # orders fetches within a second


def _safe(name: str) -> str:
    return name.replace("/", "__")


def source_prefix(source_id: str) -> str:
    return f"{STATE_PREFIX}/sources/{source_id}"


def index_key(source_id: str, artifact: str) -> str:
    return f"{source_prefix(source_id)}/index/{_safe(artifact)}.json"


def directory_key(source_id: str, artifact: str) -> str:
    """Every member path of an archive read in part (its central directory's, extraction-folder
    paths): what it holds, so a later plan knows a wanted image is in another archive."""
    return f"{source_prefix(source_id)}/directory/{_safe(artifact)}.json"


def artifact_key(source_id: str, artifact: str) -> str:
    """The record of one artifact (one small JSON each: mapped fetches never rewrite one object)."""
    return f"{source_prefix(source_id)}/artifacts/{_safe(artifact)}.json"


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Placement(_Record):
    target: str | None = None  # storage key of a file kept as it is
    folder: str | None = None  # storage key of the folder an archive was extracted into
    images: bool = False  # the extracted members are images to decode-check
    members: int = 0
    bytes: int = 0


class PartialRead(_Record):
    """An archive read in part over HTTP Range requests (``fetch/zip_members.py``): only some
    members were fetched, so the archive's own sha256 could not be checked. What was checked
    instead: every fetched member's CRC-32 and size against the central directory, its local
    header against its central directory entry, and the central directory itself (zipfile
    reads it whole and refuses one that does not add up); every member name was vetted as a
    full extraction vets it."""

    archive_size: int
    validator: str | None = None  # the ETag or Last-Modified every range request carried as If-Range
    members_in_archive: int = 0
    members_present: int = 0  # archive members now on the storage (the index lists them)
    members_fetched: int = 0  # by the last read
    bytes_moved: int = 0  # response bytes of the last read (central directory included)
    requests: int = 0  # range requests of the last read
    checked: str = "crc32 and size of every member against the central directory"


class ArtifactRecord(_Record):
    name: str
    url: str
    size: int
    sha256: str
    md5: str | None = None
    fingerprint: dict[str, str | int | None] = Field(default_factory=dict)
    revision: str | None = None
    fetched_at: str
    placement: Placement = Field(default_factory=Placement)
    complete: bool = False  # False while an archive is being extracted
    partial: PartialRead | None = None  # None: downloaded whole, its sha256 checked


class Acknowledgement(_Record):
    licence: str
    by: str
    at: str


class SourceRecord(_Record):
    source: str
    kind: str
    acknowledged: Acknowledgement | None = None
    revision: str | None = None  # the commit the last acquisition's plan resolved (one for every artifact)
    planned_at: str | None = None  # when that plan resolved it
    published_at: str | None = None
    # Catalog artifacts not current after the last acquisition: a selection (--artifact,
    # needed_by) acquired only part of the source. Empty: the whole source is current.
    not_acquired: list[str] = Field(default_factory=list)


class Manifest:
    def __init__(self, storage: Storage, source_id: str):
        self.storage, self.source_id = storage, source_id
        self.prefix = source_prefix(source_id)

    def artifact(self, name: str) -> ArtifactRecord | None:
        data = self.storage.read_json(artifact_key(self.source_id, name), default=None)
        return ArtifactRecord.model_validate(data) if data else None

    def artifacts(self) -> dict[str, ArtifactRecord]:
        records = {}
        for key, _ in self.storage.list(f"{self.prefix}/artifacts"):
            record = ArtifactRecord.model_validate(self.storage.read_json(key))
            records[record.name] = record
        return records

    def save_artifact(self, record: ArtifactRecord) -> None:
        self.storage.write_json(artifact_key(self.source_id, record.name), record.model_dump())

    def source(self) -> SourceRecord | None:
        data = self.storage.read_json(f"{self.prefix}/source.json", default=None)
        return SourceRecord.model_validate(data) if data else None

    def save_source(self, record: SourceRecord) -> None:
        self.storage.write_json(f"{self.prefix}/source.json", record.model_dump())

    def index(self, artifact: str) -> list[list]:
        return self.storage.read_json(index_key(self.source_id, artifact), default=[])

    def directory(self, artifact: str) -> list[str] | None:
        """The member paths of an archive read in part (:func:`directory_key`); None: not known."""
        return self.storage.read_json(directory_key(self.source_id, artifact), default=None)

    # Broken files verify moved out of the data tree: {original key: why}. Not "missing" for
    # a refresh (which would fetch the archive again every time); cleared to fetch them again.
    def quarantined(self) -> dict[str, str]:
        return self.storage.read_json(f"{self.prefix}/quarantine.json", default={})

    def save_quarantined(self, entries: dict[str, str]) -> None:
        self.storage.write_json(f"{self.prefix}/quarantine.json", entries)
