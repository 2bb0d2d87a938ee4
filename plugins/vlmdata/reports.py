"""The reports vlmdata writes to the storage, as typed models (msgspec structs) shared by their
writers (:mod:`vlmdata.verify`, :mod:`vlmdata.crawl`, :mod:`vlmdata.fetch.sa1b`) and their
readers (:mod:`vlmdata.status`, the pages, the CLI, the demo, the tests).

* :class:`IntegrityReport`: ``_vlmdata/reports/<source>/integrity.json``, a source's
  verification. Its lists are bounded (:data:`MAX_EXAMPLES`): it is the summary the UI reads;
  every broken image is in ``broken.json`` beside it, every crawl outcome in ``crawl.json``.
* :class:`CrawlReport`: ``_vlmdata/reports/<source>/crawl.json``, a URL-list crawl (OCR-VQA),
  every image id by outcome (hundreds of thousands at real scale: never read by the UI).
* :class:`VerifiedImages`: ``_vlmdata/reports/<source>/verified.msgpack``, what the last
  verification saw of every image (size, stamp, CRC-32, decode result), so that the next one
  decodes only what changed (msgpack: one entry for each of up to a million images).
* :class:`NeededTars`: ``_vlmdata/reports/<source>/needed_tars.json``, which SA-1B tars an
  annotation file's images need.

On the storage they are the JSON they always were (:func:`save` writes what
``Storage.write_json`` wrote for the dicts before); :func:`load` reads one, or None when absent.
A failure or warning of an integrity report (a :class:`Finding`) was a plain string in reports
written before findings named their files: those still read, as findings without files.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

import msgspec

from .storage import Storage

MAX_EXAMPLES = 50  # entries of a list a report keeps; the full list lives in a file beside it

Report = TypeVar("Report", bound=msgspec.Struct)


def load(storage: Storage, key: str, model: type[Report]) -> Report | None:
    """The report at ``key``, or None when there is none. A file that is not that report raises
    :class:`msgspec.ValidationError` or :class:`msgspec.DecodeError` (both ValueErrors), naming
    the key."""
    if not storage.exists(key):
        return None
    try:
        return msgspec.json.decode(storage.read_bytes(key), type=model)
    except msgspec.DecodeError as exc:
        raise type(exc)(f"{key} on {storage.url}: not a valid {model.__name__} ({exc})") from exc


def save(storage: Storage, key: str, report: msgspec.Struct) -> None:
    storage.write_json(key, msgspec.to_builtins(report))


class Sparse(msgspec.Struct, omit_defaults=True):
    """Fields left at their default are not written: the JSON of a dict that lacked them."""


# ---------------------------------------------------------------------------- integrity


class Finding(Sparse):
    """One failure or warning: what is wrong, in a sentence, and the files it concerns."""

    text: str
    files: list[str] = []  # the first MAX_EXAMPLES of them
    count: int = 0  # how many files in all
    every: str | None = None  # the file beside the report that names every one (broken.json, crawl.json)

    @classmethod
    def about(cls, text: str, files: list[str] | None = None, every: str | None = None) -> Finding:
        files = list(files or [])
        return cls(text, files[:MAX_EXAMPLES], len(files), every if len(files) > MAX_EXAMPLES else None)

    @property
    def more(self) -> int:
        """Files the report does not name (they are in :attr:`every`)."""
        return self.count - len(self.files)


def _findings(entries: list[Finding | str]) -> list[Finding]:
    return [Finding(e) if isinstance(e, str) else e for e in entries]


class Tally(msgspec.Struct):
    """Records or references sharing a reason: how many, and a few of them."""

    count: int = 0
    examples: list[Any] = []  # record ids (any JSON a record holds) or image paths


class ArtifactCheck(Sparse):
    sha256: str | None = None
    size: int | None = None
    revision: str | None = None
    checksum: Literal["ok", "mismatch"] | None = None  # a kept file, hashed again
    members: int | None = None  # an extracted archive: members in its index
    missing: int | None = None
    wrong_size: int | None = None


class AnnotationCheck(msgspec.Struct):
    """:func:`vlmdata.annotations.check_records` of one annotation file."""

    records: int = 0
    valid: int = 0
    with_image: int = 0
    invalid: int = 0
    problems: dict[str, Tally] = {}
    duplicate_ids: int = 0


class References(msgspec.Struct):
    """The images an annotation file references: resolve (present and decoding) or not, why."""

    resolved: int = 0
    unresolved: int = 0
    reasons: dict[str, Tally] = {}


class ImageCheck(msgspec.Struct):
    checked: int = 0
    ok: int = 0
    broken: dict[str, str] = {}  # storage key -> why, the first MAX_EXAMPLES (every one in broken.json)
    broken_count: int = 0
    mislabelled: dict[str, str] = {}  # the first MAX_EXAMPLES
    mislabelled_count: int | None = None  # None in reports written before it was counted
    formats: dict[str, int] = {}


class CrawlCounts(msgspec.Struct):
    listed: int | None = None
    stored: int = 0
    fetched_this_run: int = 0
    converted: int = 0
    dead: int = 0
    broken: int = 0
    filled_from_mirror: int = 0
    invalid: int = 0
    missing: int = 0
    unfinished_shards: int = 0


class CrawlNote(msgspec.Struct):
    """A crawl as its source's integrity report carries it: counts, and the first
    MAX_EXAMPLES images of each outcome (every one in crawl.json)."""

    finished_at: str
    counts: CrawlCounts
    dead: dict[str, str] = {}
    broken: dict[str, str] = {}
    converted: dict[str, str] = {}


Status = Literal["ok", "warn", "fail"]


class IntegrityReport(msgspec.Struct):
    source: str
    checked_at: str
    artifacts: dict[str, ArtifactCheck] = {}
    annotations: dict[str, AnnotationCheck] = {}
    references: dict[str, References] = {}
    failures: list[Finding | str] = []  # strings only in reports written before findings named files
    warnings: list[Finding | str] = []
    status: Status | None = None  # None while the verification runs
    images: ImageCheck = msgspec.field(default_factory=ImageCheck)
    quarantined: int = 0
    crawl: CrawlNote | None = None

    def __post_init__(self) -> None:
        self.failures, self.warnings = _findings(self.failures), _findings(self.warnings)

    def fail(self, text: str, files: list[str] | None = None, every: str | None = None) -> None:
        self.failures.append(Finding.about(text, files, every))

    def warn(self, text: str, files: list[str] | None = None, every: str | None = None) -> None:
        self.warnings.append(Finding.about(text, files, every))

    def settle(self) -> None:
        self.status = "fail" if self.failures else "warn" if self.warnings else "ok"

    @property
    def reasons(self) -> list[str]:
        """Why it is not ok, one line each: its failures, then its warnings."""
        return [f.text for f in [*self.failures, *self.warnings]]

    @property
    def missing(self) -> int:
        return sum(a.missing or 0 for a in self.artifacts.values())

    def summary(self) -> str:
        """A few lines for a log or a terminal."""
        parts = [f"{self.source}: {(self.status or 'unfinished').upper()}", f"{len(self.artifacts)} artifacts", f"{self.images.ok}/{self.images.checked} images decode"]
        parts += [f"{name}: {refs.resolved} references resolve, {refs.unresolved} do not" for name, refs in self.references.items()]
        return "; ".join(parts) + "".join(f"\n  - {line}" for line in self.reasons)


class SeenImage(msgspec.Struct, array_like=True, omit_defaults=True):
    """One image as the last verification saw it: a short array on the storage."""

    size: int
    stamp: str  # Storage.list_stamped's: the mtime in ns and the inode (local) or the ETag (S3)
    crc32: int | None = None  # of the bytes last read; None until they are
    ok: bool | None = None  # the decode's outcome; None until decoded
    detail: str = ""  # the format when it decodes, else why not
    width: int = 0
    height: int = 0
    mislabelled: str | None = None

    @classmethod
    def decoded(cls, size: int, stamp: str, result: dict) -> SeenImage:
        """From :func:`vlmdata.images.check_image`'s result (with the ``crc32`` of the bytes read)."""
        detail = result["format"] if result["ok"] else result["error"]
        return cls(size, stamp, result.get("crc32"), result["ok"], detail, result.get("width", 0), result.get("height", 0), result.get("mislabelled"))


class VerifiedImages(msgspec.Struct):
    """Every image of a source the last verification read: storage key -> :class:`SeenImage`."""

    images: dict[str, SeenImage] = {}

    @classmethod
    def load(cls, storage: Storage, key: str) -> VerifiedImages:
        """The record at ``key``; an empty one when there is none (every image is then decoded)."""
        if not storage.exists(key):
            return cls()
        return msgspec.msgpack.decode(storage.read_bytes(key), type=cls)

    def save(self, storage: Storage, key: str) -> None:
        storage.write_bytes(key, msgspec.msgpack.encode(self))


# -------------------------------------------------------------------------------- crawl


class FilledImage(msgspec.Struct):
    archive: str | None = None
    member: str | None = None
    conversion: str | None = None
    upstream: str | None = None  # why the crawl could not store it


class MirrorOutcome(Sparse):
    url: str
    archive: str
    outcome: Literal["filled", "skipped", "failed"]
    reason: str | None = None
    filled: int | None = None
    converted: int | None = None
    broken: int | None = None
    not_in_archive: int | None = None


class CrawlReport(msgspec.Struct):
    source: str
    into: str
    finished_at: str
    counts: CrawlCounts
    list_key: str | None = None
    converted: dict[str, str] = {}  # image id -> the conversion (GIF->JPEG, ...)
    dead: dict[str, str] = {}  # image id -> why (still missing)
    broken: dict[str, str] = {}
    filled_from_mirror: dict[str, FilledImage] = {}
    invalid: dict[str, str] = {}
    unfinished_shards: list[str] = []
    missing: list[str] = []
    mirrors: list[MirrorOutcome] = []

    def note(self) -> CrawlNote:
        """The bounded part an integrity report carries."""
        return CrawlNote(self.finished_at, self.counts, **{what: dict(list(getattr(self, what).items())[:MAX_EXAMPLES]) for what in ("dead", "broken", "converted")})


class MissingIds(msgspec.Struct):
    """The part of a crawl report a mirror fill reads (msgspec skips the rest while decoding)."""

    missing: list[str] = []


# ---------------------------------------------------------------------------- SA-1B tars


class NeededTars(msgspec.Struct):
    """Which SA-1B tars the SAM images of some annotation files need."""

    referenced: int
    present: int
    tars: dict[str, int]  # tar -> referenced images it holds that the storage lacks
    unaccounted: int
    summary: str
    unaccounted_examples: list[str] = []
    tars_searched: int | None = None  # every tar of the links file indexed: this many
    needed_by: list[str] = []  # the annotation files (data-tree paths)
    at: str | None = None
    examples_by_tar: dict[str, list[str]] = {}
