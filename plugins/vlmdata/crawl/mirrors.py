"""Fill the images a crawl could not fetch from community mirror archives (``fill_from_mirrors``).

:func:`fill_from_archive` fills the ids the crawl could not fetch from a local copy of a mirror
archive (zip or tar), converting as the crawl does; :func:`fill_from_mirrors` downloads the
catalog's fallback mirror archives one after the other for it, skipping an archive whose fill
record shows it unchanged upstream and of no use for what is still missing, without listing the
image folder (finish's index says what is stored). Both add what they placed to the report
:func:`.report.finish` wrote (:func:`.report.add_fills`).
"""

from __future__ import annotations

import logging
import posixpath
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import requests

from .. import extract
from ..catalog import Extract
from ..fetch.digest import Expected
from ..fetch.http import FetchError, RetryPolicy, download, probe, redact, same_fingerprint
from ..images import BrokenImage, to_jpeg
from ..lease import current_guard, exclusive
from ..manifest import now
from ..mirrors import Mirrors
from ..redaction import redact_text
from ..reports import FilledImage
from ..storage import Storage
from .keys import CrawlError, fill_record_key, image_key, invalid_id, mirrors_key, present_ids, report_key
from .report import add_fills, indexed_ids, missing_ids

log = logging.getLogger("vlmdata.crawl")

_PREFERENCE = {".jpg": 0, ".jpeg": 0, ".png": 1, ".gif": 2, ".webp": 3}
# An archive unusable as it is upstream: recorded with its fingerprint, not fetched again until it changes.
_UNUSABLE_ARCHIVE = (extract.UnsafeArchive, extract.NotAnArchive, zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError)
# A mirror that did not hand out the file (404, 403, retries exhausted): tried again on the next run.
_UNREACHABLE = (FetchError, requests.RequestException)


@dataclass(frozen=True)
class _ArchiveMember:
    name: str  # as in the archive
    read: object  # () -> bytes


@contextmanager
def _open_archive(path: Path) -> Iterator[list[_ArchiveMember]]:
    """The vetted file members of a zip or tar (told apart by content: a mirror may name an HTML
    page ``.zip``); raises UnsafeArchive or NotAnArchive before anything is read."""
    spec, limits = Extract(into="mirror"), extract.Limits()
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            planned = extract.plan(archive, spec, limits)
            yield [_ArchiveMember(m.info.filename, lambda info=m.info: archive.read(info)) for m in planned]
    elif tarfile.is_tarfile(path):
        with tarfile.open(path) as archive:
            planned = extract.plan_tar(archive, spec, limits, archive_size=path.stat().st_size)
            yield [_ArchiveMember(m.info.name, lambda info=m.info: archive.extractfile(info).read()) for m in planned]
    else:
        raise extract.NotAnArchive(f"{path.name}: neither a zip nor a tar archive")


@dataclass
class _Fill:
    """What one archive did for the ids wanted from it."""

    archive: str
    wanted: set[str]
    filled: dict[str, str] = field(default_factory=dict)  # id -> member
    converted: dict[str, str] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)  # id -> bytes stored
    holds: set[str] = field(default_factory=set)  # every id the archive has a member for

    @property
    def not_in_archive(self) -> list[str]:
        return sorted(self.wanted - set(self.filled) - set(self.broken))

    def placed(self) -> dict[str, tuple[FilledImage, int]]:
        """What :func:`.report.add_fills` takes."""
        return {i: (FilledImage(archive=self.archive, member=m, conversion=self.converted.get(i)), self.sizes[i]) for i, m in self.filled.items()}

    def summary(self) -> dict:
        return {"archive": self.archive, "wanted": len(self.wanted), "filled": len(self.filled), "converted": len(self.converted),
                "broken": len(self.broken), "not_in_archive": len(self.not_in_archive)}


def _apply_archive(storage: Storage, archive_path: Path, into: str, wanted: set[str]) -> _Fill:
    """Store the ``wanted`` ids' images from the archive (see :func:`fill_from_archive`)."""
    fill = _Fill(archive_path.name, wanted)
    with _open_archive(archive_path) as members:
        chosen: dict[str, tuple[int, str, _ArchiveMember]] = {}
        for member in members:
            path = PurePosixPath(member.name)
            if not invalid_id(path.stem):
                fill.holds.add(path.stem)
            rank = _PREFERENCE.get(path.suffix.lower(), 9)
            if path.stem in wanted and (rank, member.name) < chosen.get(path.stem, (99, "", None))[:2]:
                chosen[path.stem] = (rank, member.name, member)
        for image_id, (_rank, name, member) in sorted(chosen.items()):
            data = member.read()
            try:
                jpeg, conversion = to_jpeg(data)
            except BrokenImage as exc:
                fill.broken[image_id] = f"{name}: {exc}"
                continue
            storage.write_bytes(image_key(into, image_id), jpeg)
            fill.filled[image_id], fill.sizes[image_id] = name, len(jpeg)
            if conversion:
                fill.converted[image_id] = conversion
    return fill


def fill_from_archive(
    storage: Storage,
    archive_path: str | Path,
    into: str,
    missing_ids: Iterable[str],
    *,
    source_id: str = "ocr_vqa",
    refresh_report: bool = True,
    upstream: dict | None = None,
) -> dict:
    """Copy the images of ``missing_ids`` that are not stored yet from a local mirror archive.

    Members are matched by file stem (``images/<id>.jpg``, ``<id>.jpg``, ``x/<id>.png`` ...;
    a ``.jpg`` wins over other extensions of the same id), decoded, converted to JPEG where
    needed and stored as ``<into>/<id>.jpg``. What was filled goes to the fill record
    (:func:`.keys.fill_record_key`), with every id the archive holds and ``upstream``, the
    archive's fingerprint where it was downloaded (what :func:`fill_from_mirrors` compares on a
    later run). When a crawl report exists, the filled images are added to it and to the index.
    """
    archive_path = Path(archive_path)
    into = into.strip("/")
    wanted = {i for i in missing_ids if not invalid_id(i)} - set(present_ids(storage, into))
    fill = _apply_archive(storage, archive_path, into, wanted)
    summary = _record_fill(storage, source_id, fill, upstream)
    if refresh_report and storage.exists(report_key(source_id)):
        summary["report"] = add_fills(storage, source_id, into, fill.placed())
    return summary


def _record_fill(storage: Storage, source_id: str, fill: _Fill, upstream: dict | None) -> dict:
    """Write the fill record of what an archive did, log it; return its summary."""
    _save_fill_record(storage, source_id, fill.archive, fill.wanted, upstream=upstream, filled=fill.filled, converted=fill.converted,
                      broken=fill.broken, not_in_archive=fill.not_in_archive, holds=sorted(fill.holds))
    summary = fill.summary()
    log.info("%s: filled %d of %d missing images from %s (%d converted, %d broken there, %d not in it)",
             source_id, summary["filled"], summary["wanted"], fill.archive, summary["converted"], summary["broken"], summary["not_in_archive"])
    return summary


def _save_fill_record(storage: Storage, source_id: str, archive_name: str, wanted: set[str], *, upstream: dict | None, **outcome) -> None:
    """Write an archive's fill record; what earlier fills from it placed (ids not wanted now)
    stays in it, so the report keeps naming where those images came from."""
    key = fill_record_key(source_id, archive_name)
    previous = storage.read_json(key, default=None) or {}
    same_bytes = bool(upstream and previous.get("upstream")) and same_fingerprint(previous["upstream"], upstream)

    def earlier(field: str) -> dict:
        return {i: v for i, v in (previous.get(field) or {}).items() if i not in wanted}

    record = {"archive": archive_name, "filled_at": now(), "upstream": upstream, "refused": None, "holds": None, "not_in_archive": [], **outcome}
    record["filled"] = {**earlier("filled"), **outcome.get("filled", {})}
    record["converted"] = {**earlier("converted"), **outcome.get("converted", {})}
    # Broken members found earlier are still broken only in the same bytes.
    record["broken"] = {**(earlier("broken") if same_bytes else {}), **outcome.get("broken", {})}
    storage.write_json(key, record)


@exclusive(lambda storage, source_id, *args, **kwargs: (storage, f"fill/{source_id}"))
def fill_from_mirrors(
    storage: Storage,
    source_id: str,
    into: str,
    urls: Iterable[str],
    *,
    mirrors: Mirrors | None = None,
    policy: RetryPolicy = RetryPolicy(),
) -> dict:
    """Fill the images the crawl left missing from community mirror archives, one URL after the other.

    Each URL (through the mirror map) is downloaded to the staging folder with the shared
    resumable core, applied with :func:`fill_from_archive`'s steps and deleted; the next URL gets
    the ids still missing. A mirror is skipped without downloading when a probe finds its archive
    unchanged since the last fill and the fill record says it holds none of the missing ids
    (or holds them broken, or was refused). A mirror that fails (404, 403, retries exhausted,
    not an archive, an unsafe archive) is logged as a warning and recorded, never fatal.
    Outcomes go to :func:`.keys.mirrors_key` and, with what was placed, to the report
    :func:`.report.finish` wrote and its index (finish itself runs only where there is no report
    yet). What is missing comes from that report and what is stored from its index: the image
    folder is not listed. Returns the report's counts plus ``filled_this_run`` and the
    per-mirror outcomes.
    """
    into = into.strip("/")
    mirrors = mirrors or Mirrors()
    urls = list(urls)
    names = [posixpath.basename(urlsplit(url).path) for url in urls]
    if len(set(names)) != len(names) or not all(names):
        raise CrawlError(f"{source_id}: every fallback mirror must end in its own archive file name (they name the fill records): {urls}")
    present = indexed_ids(storage, source_id, into)
    if present is None:  # no finish yet: list the folder
        present = present_ids(storage, into)
    still = set(missing_ids(storage, source_id)) - set(present)
    outcomes: list[dict] = []
    placed: dict[str, tuple[FilledImage, int]] = {}
    for url, name in zip(urls, names):
        outcome: dict = {"url": redact(url), "archive": name}
        if not still:
            outcome |= {"outcome": "skipped", "reason": "nothing missing"}
        else:
            try:
                result, fill = _fill_from_mirror(storage, source_id, into, mirrors.rewrite(url), name, still, policy)
            except _UNREACHABLE as exc:
                log.warning("%s: mirror %s failed, trying the next one: %s", source_id, redact(url), exc)
                result, fill = {"outcome": "failed", "reason": redact_text(str(exc))}, None
            outcome |= result
            if fill:
                placed |= fill.placed()
                still -= set(fill.filled)
        outcomes.append(outcome)
    storage.write_json(mirrors_key(source_id), {"source": source_id, "at": now(), "mirrors": outcomes})
    counts = add_fills(storage, source_id, into, placed, mirrors=outcomes)
    log.info("%s: %d images filled from the mirrors this run; %d still missing (%s)", source_id, len(placed), counts["missing"],
             "; ".join(f"{o['archive']}: {o['outcome']}{' ' + str(o['filled']) if 'filled' in o else ''}{' (' + o['reason'] + ')' if o.get('reason') else ''}" for o in outcomes) or "no mirrors")
    return {**counts, "filled_this_run": len(placed), "mirrors": outcomes}


def _fill_from_mirror(storage: Storage, source_id: str, into: str, url: str, name: str, wanted: set[str], policy: RetryPolicy) -> tuple[dict, _Fill | None]:
    """One mirror: the outcome, and what it placed."""
    key = fill_record_key(source_id, name)
    previous = storage.read_json(key, default=None)
    if previous and previous.get("upstream"):
        if reason := _needless(previous, probe(url, policy=policy), wanted):
            log.info("%s: mirror archive %s not downloaded: %s", source_id, name, reason)
            return {"outcome": "skipped", "reason": reason}, None
    staged = storage.staging_dir() / source_id / "mirrors" / name
    fetched = download(url, staged, Expected(), policy=policy, guard=current_guard())  # a FetchError keeps the .part: the next run resumes it
    upstream = {"etag": fetched.etag, "last_modified": fetched.last_modified, "size": fetched.size, "sha256": fetched.sha256}
    try:
        fill = _apply_archive(storage, staged, into, wanted)
    except _UNUSABLE_ARCHIVE as exc:
        reason = f"{type(exc).__name__}: {exc}"
        _save_fill_record(storage, source_id, name, wanted, upstream=upstream, refused=reason)
        log.warning("%s: mirror archive %s refused, nothing placed from it: %s", source_id, name, reason)
        return {"outcome": "failed", "reason": reason}, None
    finally:
        staged.unlink(missing_ok=True)
    summary = _record_fill(storage, source_id, fill, upstream)
    return {"outcome": "filled", **{k: summary[k] for k in ("filled", "converted", "broken", "not_in_archive")}}, fill


def _needless(previous: dict, probed: dict, wanted: set[str]) -> str | None:
    """Why downloading an archive again cannot fill anything, or None."""
    if not same_fingerprint(previous["upstream"], probed):
        return None  # changed upstream, or no validator to tell: fetch it
    if previous.get("refused"):
        return f"unchanged upstream since it was refused ({previous['refused']})"
    if previous.get("holds") is None:
        return None
    held = wanted & set(previous["holds"])
    if held - set(previous.get("broken") or {}):
        return None
    if held:
        return f"unchanged upstream; the {len(held)} missing images it holds are broken in it"
    return f"unchanged upstream; it holds none of the {len(wanted)} missing images"
