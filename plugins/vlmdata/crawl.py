"""URL-list crawl (OCR-VQA): plan shards, crawl each shard, merge the results.

Plain functions for three Airflow tasks:

* :func:`plan_shards` reads the URL list (OCR-VQA's ``dataset.json``: a dict keyed by image
  id with an ``imageURL``), drops the ids whose ``<into>/<id>.jpg`` is already stored (one
  listing of the folder, never a stat per file) and writes deterministic shards of
  ``[id, url]`` pairs to ``_vlmdata/crawl/<source>/shards/<n>.json``. It returns one small
  description per shard (the key, not the URLs: XCom stays small), at most
  :data:`MAX_SHARDS` of them (Airflow's ``max_map_length`` is 1024), growing the shard size
  when the list is long.
* :func:`crawl_shard` fetches one shard with a thread pool: one ``requests.Session`` per
  thread (kept-alive connections: docs/facts.md, "Crawling": a pool without them ran at about half
  img2dataset's rate, connection reuse being much of the gap), a per-host semaphore, retries
  of 429/5xx/connection errors with backoff honouring ``Retry-After`` (capped by the policy's
  ``max_wait``). Every body is fully decoded with Pillow: JPEGs are stored byte for byte,
  anything else (GIF, PNG, WEBP, ...) is converted to a real RGB JPEG (quality 95, first
  frame), because the annotations name ``<id>.jpg``. Dead URLs and undecodable bodies are
  recorded, never fatal. Results: ``_vlmdata/crawl/<source>/results/<n>.json``.
* :func:`finish` merges the shard results into ``_vlmdata/reports/<source>/crawl.json`` and
  records a pseudo-artifact ``images`` in the source's manifest, with an index of every
  stored image, so that verify (decode checks, ``ImageIndex``) sees the crawled images.

:func:`fill_from_archive` fills the ids the crawl could not fetch from a local copy of a
community mirror archive (zip or tar), converting as above; :func:`fill_from_mirrors` (a fourth
task) downloads the catalog's fallback mirror archives one after the other for it, skipping an
archive whose fill record shows it unchanged upstream and of no use for what is still missing.

``into`` is a storage key (``data/ocr_vqa/images``), as is the list's key.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import posixpath
import re
import tarfile
import threading
import time
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import msgspec
import requests
from PIL import Image

from . import extract
from .catalog import Extract
from .fetch.digest import Expected
from .fetch.policy import CRAWL_POLICY
from .fetch.http import RETRY_STATUS, TRANSIENT_ERRORS, FetchError, RetryPolicy, download, name_unresolved, parse_retry_after, probe, redact, same_fingerprint
from .images import check_image
from .lease import current_guard, exclusive
from .manifest import ArtifactRecord, Manifest, Placement, index_key, now
from .mirrors import Mirrors
from .progress import Progress
from .redaction import redact_text
from .reports import CrawlCounts, CrawlReport, FilledImage, MirrorOutcome, MissingIds, load, save
from .storage import DATA_PREFIX, STATE_PREFIX, Storage

log = logging.getLogger("vlmdata.crawl")

ARTIFACT = "images"  # the pseudo-artifact the crawled folder is recorded under
MAX_SHARDS = 1023  # below Airflow's default max_map_length (1024)
JPEG_QUALITY = 95
MAX_IMAGE_BYTES = 50 * 1024 * 1024  # a book cover is tens of KB; anything this big is not one
MAX_RESPONSE_SECONDS = 120.0  # a server trickling bytes must not pin a worker thread
USER_AGENT = "vlmdata-crawl/0.1 (LLaVA training data; +https://github.com/)"
JPEG_FORMATS = {"JPEG", "MPO"}  # MPO is a JPEG with extra pictures appended: every decoder reads it as JPEG

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


class CrawlError(RuntimeError):
    pass


class BrokenImage(ValueError):
    """A body (or archive member) that is not a usable image."""


# ------------------------------------------------------------------------------------- keys


def crawl_prefix(source_id: str) -> str:
    return f"{STATE_PREFIX}/crawl/{source_id}"


def plan_key(source_id: str) -> str:
    return f"{crawl_prefix(source_id)}/plan.json"


def shard_key(source_id: str, number: int) -> str:
    return f"{crawl_prefix(source_id)}/shards/{number:04d}.json"


def result_key(shard: str) -> str:
    """The results key of a shard key (``.../shards/0003.json`` -> ``.../results/0003.json``)."""
    head, name = posixpath.split(shard)
    folder, kind = posixpath.split(head)
    if kind != "shards":
        raise CrawlError(f"not a shard key: {shard!r}")
    return f"{folder}/results/{name}"


def report_key(source_id: str) -> str:
    return f"{STATE_PREFIX}/reports/{source_id}/crawl.json"


def image_key(into: str, image_id: str) -> str:
    return f"{into}/{image_id}.jpg"


def _present_ids(storage: Storage, into: str) -> dict[str, int]:
    """id -> size of every non-empty ``<into>/<id>.jpg``, from one listing of the folder."""
    present = {}
    prefix = into.rstrip("/") + "/"
    for key, size in storage.list(into):
        name = key[len(prefix):] if key.startswith(prefix) else None
        if name and "/" not in name and name.endswith(".jpg") and size > 0:
            present[name[:-4]] = size
    return present


def _valid_id(image_id: object) -> str | None:
    """Why an id cannot name a file, or None."""
    if not isinstance(image_id, str) or not _ID_RE.fullmatch(image_id) or ".." in image_id:
        return f"id {image_id!r} cannot name a file (letters, digits, '.', '_', '-' only)"
    return None


def _valid_url(url: object) -> str | None:
    if not isinstance(url, str) or not url.strip():
        return "no imageURL in the list"
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return f"imageURL {url!r} is not an http(s) URL"
    return None


# ------------------------------------------------------------------------------------- plan


def plan_shards(
    storage: Storage,
    list_key: str,
    into: str,
    shard_size: int = 2000,
    *,
    source_id: str = "ocr_vqa",
    max_shards: int = MAX_SHARDS,
) -> list[dict]:
    """Write the shards of what is still missing; return ``[{"shard", "key", "count", "source"}]``.

    Deterministic: ids sorted, fixed-size chunks. Shards and results of an earlier plan are
    removed first (their ids are planned again if still missing). An empty list means
    nothing to fetch.
    """
    if shard_size < 1 or max_shards < 1:
        raise ValueError("shard_size and max_shards must be positive")
    into = into.strip("/")
    listing = storage.read_json(list_key)
    if not isinstance(listing, dict):
        raise CrawlError(f"{list_key}: expected a JSON object keyed by image id, got {type(listing).__name__}")
    present = _present_ids(storage, into)
    pairs, dead, invalid = [], {}, {}
    for image_id, entry in listing.items():
        if problem := _valid_id(image_id):
            invalid[str(image_id)] = problem
            continue
        if image_id in present:
            continue
        url = entry.get("imageURL") if isinstance(entry, dict) else None
        if problem := _valid_url(url):
            dead[image_id] = problem  # still missing: a mirror archive may fill it
            continue
        pairs.append((image_id, url.strip()))
    pairs.sort()
    size = max(shard_size, math.ceil(len(pairs) / max_shards))
    prefix = crawl_prefix(source_id)
    for stale in ("shards", "results", "started"):
        storage.delete(f"{prefix}/{stale}")
    shards = []
    for number, start in enumerate(range(0, len(pairs), size)):
        chunk = pairs[start:start + size]
        key = shard_key(source_id, number)
        storage.write_json(key, {"source": source_id, "shard": number, "into": into, "items": [list(p) for p in chunk]})
        shards.append({"source": source_id, "shard": number, "key": key, "count": len(chunk)})
    storage.write_json(plan_key(source_id), {
        "source": source_id, "list_key": list_key, "into": into, "planned_at": now(),
        "listed": len(listing), "present": len(present), "planned": len(pairs),
        "shard_size": size, "shards": len(shards), "dead": dead, "invalid": invalid,
    })
    log.info("%s: %d listed, %d already stored, %d to fetch in %d shards of up to %d, %d without a usable URL, %d invalid ids",
             source_id, len(listing), len(present), len(pairs), len(shards), size, len(dead), len(invalid))
    return shards


# ------------------------------------------------------------------------------ conversion


def to_jpeg(data: bytes) -> tuple[bytes, str | None]:
    """``(jpeg bytes, None)`` for a JPEG (kept as it is), ``(jpeg bytes, "GIF->JPEG")`` after a
    conversion. Raises :class:`BrokenImage` for anything that does not fully decode."""
    # check_image turns Pillow's bomb warning into an error with warnings.catch_warnings, which
    # is not thread-safe: refuse oversized pictures from the header first, so that it never fires.
    try:
        with Image.open(io.BytesIO(data)) as header:
            pixels = header.width * header.height
    except Exception:  # noqa: BLE001 - check_image below names what is wrong
        pixels = 0
    if Image.MAX_IMAGE_PIXELS and pixels > Image.MAX_IMAGE_PIXELS:
        raise BrokenImage(f"{pixels} pixels, more than Pillow's decompression bomb guard allows")
    result = check_image(data, "image")  # the full decode: catches truncation
    if not result["ok"]:
        raise BrokenImage(result["error"])
    if result["width"] * result["height"] <= 1:
        raise BrokenImage("1x1 placeholder image (what image hosts send for a missing picture)")
    fmt = result["format"]
    if fmt in JPEG_FORMATS:
        return data, None
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.seek(0)  # the first frame of an animation
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                rgb = Image.new("RGB", rgba.size, (255, 255, 255))  # transparent parts on white
                rgb.paste(rgba, mask=rgba.getchannel("A"))
            else:
                rgb = image.convert("RGB")
            out = io.BytesIO()
            rgb.save(out, format="JPEG", quality=JPEG_QUALITY)
    except (OSError, ValueError, SyntaxError) as exc:
        raise BrokenImage(f"{fmt} does not convert to JPEG: {exc}") from exc
    return out.getvalue(), f"{fmt}->JPEG"


# ------------------------------------------------------------------------------------ crawl


class _HostLimiter:
    """At most ``per_host`` requests in flight to one host (host:port) across the pool."""

    def __init__(self, per_host: int):
        self.per_host = per_host
        self._lock = threading.Lock()
        self._semaphores: dict[str, threading.BoundedSemaphore] = {}

    @contextmanager
    def __call__(self, url: str) -> Iterator[None]:
        host = urlsplit(url).netloc.lower()
        with self._lock:
            semaphore = self._semaphores.setdefault(host, threading.BoundedSemaphore(self.per_host))
        with semaphore:
            yield


class _Sessions:
    """One kept-alive ``requests.Session`` per worker thread."""

    def __init__(self, pool_size: int):
        self.pool_size = pool_size
        self._local = threading.local()
        self._all: list[requests.Session] = []
        self._lock = threading.Lock()

    def get(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_connections=self.pool_size, pool_maxsize=self.pool_size, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.headers["User-Agent"] = USER_AGENT
            self._local.session = session
            with self._lock:
                self._all.append(session)
        return session

    def close(self) -> None:
        with self._lock:
            sessions, self._all = self._all, []
        for session in sessions:
            session.close()


class _Retry(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason, self.retry_after = reason, retry_after


class _Dead(Exception):
    pass


def _get_once(session: requests.Session, url: str, timeout: tuple[float, float]) -> bytes:
    start = time.monotonic()
    with session.get(url, timeout=timeout, stream=True) as response:
        status = response.status_code
        if status in RETRY_STATUS:
            raise _Retry(f"HTTP {status}", parse_retry_after(response.headers.get("Retry-After")))
        if status != 200:
            raise _Dead(f"HTTP {status}")
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() and "Content-Encoding" not in response.headers else None
        if expected is not None and expected > MAX_IMAGE_BYTES:
            raise _Dead(f"{expected} bytes, more than an image may have ({MAX_IMAGE_BYTES})")
        body = bytearray()
        for chunk in response.iter_content(1 << 16):
            body += chunk
            if len(body) > MAX_IMAGE_BYTES:
                raise _Dead(f"more than {MAX_IMAGE_BYTES} bytes, more than an image may have")
            if time.monotonic() - start > MAX_RESPONSE_SECONDS:
                raise _Retry(f"response took longer than {MAX_RESPONSE_SECONDS:.0f} s")
        if expected is not None and len(body) != expected:
            raise _Retry(f"connection closed after {len(body)} of {expected} bytes")
        return bytes(body)


def _fetch(url: str, sessions: _Sessions, limit: _HostLimiter, policy: RetryPolicy, timeout: tuple[float, float]) -> bytes:
    """The body of ``url``, or :class:`_Dead` with the reason."""
    reason = ""
    for attempt in range(1, policy.attempts + 1):
        retry_after = None
        try:
            with limit(url):  # held for the request only, never while backing off
                return _get_once(sessions.get(), url, timeout)
        except _Retry as exc:
            reason, retry_after = exc.reason, exc.retry_after
        except TRANSIENT_ERRORS as exc:
            if name_unresolved(exc):  # permanent, as for every download (see name_unresolved): recorded at once
                raise _Dead(f"the host name does not resolve: {_short(exc)}") from None
            reason = f"{type(exc).__name__}: {_short(exc)}"
        except requests.RequestException as exc:  # invalid URL, too many redirects, ...
            raise _Dead(f"{type(exc).__name__}: {_short(exc)}") from None
        if attempt < policy.attempts:
            time.sleep(policy.wait(attempt, retry_after))
    raise _Dead(f"{reason} (after {policy.attempts} attempts)")


def _short(exc: Exception, limit: int = 300) -> str:
    """An exception's text for a report: URLs without their query (a signed URL's credentials), clipped."""
    text = redact_text(str(exc))
    return text if len(text) <= limit else text[:limit] + "..."


class _Tally:
    def __init__(self, name: str, total: int, every: float):
        self.ok = self.done = self.stored_bytes = 0
        self.converted: dict[str, str] = {}
        self.dead: dict[str, str] = {}
        self.broken: dict[str, str] = {}
        self.start = time.monotonic()
        self._lock = threading.Lock()
        self.progress = Progress(name, total, every, log.info, unit="images", detail=self.counts)

    def add(self, image_id: str, kind: str, detail: str | int | None) -> None:
        with self._lock:
            self.done += 1
            if kind == "ok":
                self.ok += 1
                self.stored_bytes += int(detail or 0)
            elif kind == "dead":
                self.dead[image_id] = str(detail)
            else:
                self.broken[image_id] = str(detail)
            self.progress.update(self.done)

    def counts(self) -> str:
        return f"{self.ok} stored ({len(self.converted)} converted), {len(self.dead)} dead, {len(self.broken)} broken"

@exclusive(lambda storage, shard_key, *args, **kwargs: (storage, f"crawl/{shard_key}"))
def crawl_shard(
    storage: Storage,
    shard_key: str,
    into: str,
    *,
    mirrors: Mirrors | None = None,
    policy: RetryPolicy | None = None,
    workers: int = 16,
    per_host: int = 8,
    timeout: tuple[float, float] = (10, 30),
    progress_every: float = 10.0,
) -> dict:
    """Fetch, decode, convert and store every image of one shard; return a small summary.

    A shard whose results exist is not fetched again. A retried task whose first attempt
    died half-way skips (one ``size`` per image) what that attempt already stored. One writer
    of a shard at a time: a second waits, then finds the shard crawled.
    """
    guard = current_guard()
    into = into.strip("/")
    results_key = result_key(shard_key)
    if storage.exists(results_key):
        done = storage.read_json(results_key)
        log.info("%s: already crawled (%s); nothing to do", shard_key, results_key)
        return _shard_summary(done, results_key, skipped=True)
    shard = storage.read_json(shard_key)
    items = [(image_id, url) for image_id, url in shard["items"]]
    name = f"{shard.get('source', '?')} shard {shard.get('shard', '?')}"
    mirrors = mirrors or Mirrors()
    policy = policy or CRAWL_POLICY
    started_key = results_key.replace("/results/", "/started/")
    if storage.exists(started_key):  # an earlier attempt of this task stopped half-way
        before = len(items)
        items = [(i, u) for i, u in items if not storage.size(image_key(into, i))]
        log.info("%s: resuming an interrupted attempt; %d of %d images already stored", name, before - len(items), before)
    storage.write_bytes(started_key, now().encode())

    tally = _Tally(name, len(items), progress_every)
    sessions = _Sessions(pool_size=max(1, min(per_host, workers)))
    limit = _HostLimiter(max(1, per_host))

    def one(image_id: str, url: str) -> None:
        try:
            body = _fetch(mirrors.rewrite(url), sessions, limit, policy, timeout)
        except _Dead as exc:
            tally.add(image_id, "dead", str(exc))
            return
        try:
            jpeg, conversion = to_jpeg(body)
        except BrokenImage as exc:
            tally.add(image_id, "broken", f"{exc} ({_describe(body)})")
            return
        guard()
        storage.write_bytes(image_key(into, image_id), jpeg)  # atomic: never a partial file
        if conversion:
            with tally._lock:
                tally.converted[image_id] = conversion
        tally.add(image_id, "ok", len(jpeg))

    try:
        with ThreadPoolExecutor(max(1, workers), thread_name_prefix="crawl") as pool:
            futures = [pool.submit(one, image_id, url) for image_id, url in items]
            try:
                for future in as_completed(futures):
                    future.result()  # a storage error is fatal: the task fails and Airflow retries it
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    finally:
        sessions.close()
    tally.progress.update(tally.done, force=True)
    seconds = time.monotonic() - tally.start
    result = {
        "shard": shard.get("shard"), "source": shard.get("source"), "into": into,
        "total": len(shard["items"]), "attempted": len(items),
        "ok": tally.ok, "bytes": tally.stored_bytes, "seconds": round(seconds, 3),
        "images_per_second": round(tally.done / seconds, 1) if seconds > 0 else None,
        "converted": dict(sorted(tally.converted.items())),
        "dead": dict(sorted(tally.dead.items())),
        "broken": dict(sorted(tally.broken.items())),
        "finished_at": now(),
    }
    guard()
    storage.write_json(results_key, result)
    storage.delete(started_key)
    return _shard_summary(result, results_key)


def _describe(body: bytes) -> str:
    head = body[:64].lstrip().lower()
    kind = "HTML" if head.startswith((b"<!doctype html", b"<html")) else "body"
    return f"{kind} of {len(body)} bytes"


def _shard_summary(result: dict, key: str, skipped: bool = False) -> dict:
    return {
        "shard": result.get("shard"), "results": key, "ok": result.get("ok", 0),
        "converted": len(result.get("converted", {})), "dead": len(result.get("dead", {})),
        "broken": len(result.get("broken", {})), "images_per_second": result.get("images_per_second"),
        "skipped": skipped,
    }


# ----------------------------------------------------------------------------------- finish


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
    filled: dict[str, dict] = {}
    for key, _ in sorted(storage.list(f"{prefix}/filled")):
        fill = storage.read_json(key)
        for image_id, member in fill.get("filled", {}).items():
            filled[image_id] = {"archive": fill.get("archive"), "member": member, "conversion": fill.get("converted", {}).get(image_id)}

    present = _present_ids(storage, into)  # one listing: the truth about what is stored
    filled = {i: f for i, f in filled.items() if i in present}
    for image_id, entry in filled.items():
        entry["upstream"] = dead.get(image_id) or broken.get(image_id)
    missing = sorted({*dead, *broken, *unfinished_ids} - set(present))

    index = [[image_key(into, image_id), size, None] for image_id, size in sorted(present.items())]
    index_bytes = json.dumps(index, separators=(",", ":")).encode()
    total_bytes = sum(size for size in present.values())
    storage.write_bytes(index_key(source_id, ARTIFACT), index_bytes)
    manifest = Manifest(storage, source_id)
    list_key = plan.get("list_key")
    revision = next((r.revision for r in manifest.artifacts().values() if list_key and r.placement.target == list_key), None)
    record = ArtifactRecord(
        name=ARTIFACT,
        url=f"urllist:{list_key}" if list_key else f"urllist:{source_id}",
        size=total_bytes,
        sha256=hashlib.sha256(index_bytes).hexdigest(),
        fingerprint={"images": len(present), "missing": len(missing), "list": list_key},
        revision=revision,
        fetched_at=now(),
        placement=Placement(folder=into, images=True, members=len(present), bytes=total_bytes),
        complete=True,
    )
    manifest.save_artifact(record)  # after the index it points to

    still_dead = {i: r for i, r in sorted(dead.items()) if i not in present}
    still_broken = {i: r for i, r in sorted(broken.items()) if i not in present}
    counts = CrawlCounts(
        listed=plan.get("listed"), stored=len(present), fetched_this_run=fetched_ok, converted=len(converted),
        dead=len(still_dead), broken=len(still_broken), filled_from_mirror=len(filled),
        invalid=len(plan.get("invalid", {})), missing=len(missing), unfinished_shards=len(unfinished),
    )
    report = CrawlReport(
        source=source_id, into=into, list_key=list_key, finished_at=now(), counts=counts,
        converted=dict(sorted(converted.items())), dead=still_dead, broken=still_broken,
        filled_from_mirror={i: msgspec.convert(f, FilledImage) for i, f in sorted(filled.items())},
        invalid=plan.get("invalid", {}), unfinished_shards=unfinished, missing=missing,
        mirrors=msgspec.convert(storage.read_json(mirrors_key(source_id), default={}).get("mirrors", []), list[MirrorOutcome]),
    )
    save(storage, report_key(source_id), report)
    log.info("%s: %d images stored in %s (%d fetched this run, %d converted, %d filled from a mirror); %d missing (%d dead, %d broken, %d in unfinished shards)",
             source_id, len(present), into, fetched_ok, len(converted), len(filled), len(missing), counts.dead, counts.broken, len(unfinished))
    return {"source": source_id, "report": report_key(source_id), "index": index_key(source_id, ARTIFACT), **msgspec.to_builtins(counts)}


def missing_ids(storage: Storage, source_id: str) -> list[str]:
    """The ids the last :func:`finish` found missing (what a mirror archive should fill)."""
    report = load(storage, report_key(source_id), MissingIds)
    return report.missing if report else []


# ------------------------------------------------------------------------- mirror archives


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


_PREFERENCE = {".jpg": 0, ".jpeg": 0, ".png": 1, ".gif": 2, ".webp": 3}


def fill_record_key(source_id: str, archive_name: str) -> str:
    return f"{crawl_prefix(source_id)}/filled/{_safe_name(archive_name)}.json"


def mirrors_key(source_id: str) -> str:
    return f"{crawl_prefix(source_id)}/mirrors.json"


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
    (:func:`fill_record_key`), with every id the archive holds and ``upstream``, the archive's
    fingerprint where it was downloaded (what :func:`fill_from_mirrors` compares on a later
    run). When a crawl report exists, :func:`finish` runs again so that the report and the
    index include the filled images.
    """
    archive_path = Path(archive_path)
    into = into.strip("/")
    present = _present_ids(storage, into)
    wanted = {i for i in missing_ids if not _valid_id(i)} - set(present)
    filled: dict[str, str] = {}
    converted: dict[str, str] = {}
    broken: dict[str, str] = {}
    holds: set[str] = set()
    with _open_archive(archive_path) as members:
        chosen: dict[str, tuple[int, str, _ArchiveMember]] = {}
        for member in members:
            path = PurePosixPath(member.name)
            if not _valid_id(path.stem):
                holds.add(path.stem)
            rank = _PREFERENCE.get(path.suffix.lower(), 9)
            if path.stem in wanted and (rank, member.name) < chosen.get(path.stem, (99, "", None))[:2]:
                chosen[path.stem] = (rank, member.name, member)
        for image_id, (_rank, name, member) in sorted(chosen.items()):
            data = member.read()
            try:
                jpeg, conversion = to_jpeg(data)
            except BrokenImage as exc:
                broken[image_id] = f"{name}: {exc}"
                continue
            storage.write_bytes(image_key(into, image_id), jpeg)
            filled[image_id] = name
            if conversion:
                converted[image_id] = conversion
    not_found = sorted(wanted - set(chosen))
    _save_fill_record(storage, source_id, archive_path.name, wanted, upstream=upstream, filled=filled, converted=converted, broken=broken, not_in_archive=not_found, holds=sorted(holds))
    log.info("%s: filled %d of %d missing images from %s (%d converted, %d broken there, %d not in it)",
             source_id, len(filled), len(wanted), archive_path.name, len(converted), len(broken), len(not_found))
    summary = {"archive": archive_path.name, "wanted": len(wanted), "filled": len(filled), "converted": len(converted), "broken": len(broken), "not_in_archive": len(not_found)}
    if refresh_report and storage.exists(report_key(source_id)):
        summary["report"] = finish(storage, source_id, into)
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


# An archive unusable as it is upstream: recorded with its fingerprint, not fetched again until it changes.
_UNUSABLE_ARCHIVE = (extract.UnsafeArchive, extract.NotAnArchive, zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError)
# A mirror that did not hand out the file (404, 403, retries exhausted): tried again on the next run.
_UNREACHABLE = (FetchError, requests.RequestException)


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
    resumable core, applied with :func:`fill_from_archive` and deleted; the next URL gets the
    ids still missing. A mirror is skipped without downloading when a probe finds its archive
    unchanged since the last fill and the fill record says it holds none of the missing ids
    (or holds them broken, or was refused). A mirror that fails (404, 403, retries exhausted,
    not an archive, an unsafe archive) is logged as a warning and recorded, never fatal.
    Outcomes go to :func:`mirrors_key` (and the report's ``mirrors``); :func:`finish` runs at
    the end, so the report and the index include the filled images. Returns its counts plus
    ``filled_this_run`` and the per-mirror outcomes.
    """
    into = into.strip("/")
    mirrors = mirrors or Mirrors()
    urls = list(urls)
    names = [posixpath.basename(urlsplit(url).path) for url in urls]
    if len(set(names)) != len(names) or not all(names):
        raise CrawlError(f"{source_id}: every fallback mirror must end in its own archive file name (they name the fill records): {urls}")
    still = set(missing_ids(storage, source_id)) - set(_present_ids(storage, into))
    outcomes: list[dict] = []
    filled = 0
    for url, name in zip(urls, names):
        outcome: dict = {"url": redact(url), "archive": name}
        if not still:
            outcome |= {"outcome": "skipped", "reason": "nothing missing"}
        else:
            try:
                result, placed = _fill_from_mirror(storage, source_id, into, mirrors.rewrite(url), name, still, policy)
            except _UNREACHABLE as exc:
                log.warning("%s: mirror %s failed, trying the next one: %s", source_id, redact(url), exc)
                result, placed = {"outcome": "failed", "reason": redact_text(str(exc))}, set()
            outcome |= result
            still -= placed
            filled += len(placed)
        outcomes.append(outcome)
    storage.write_json(mirrors_key(source_id), {"source": source_id, "at": now(), "mirrors": outcomes})
    counts = finish(storage, source_id, into)
    log.info("%s: %d images filled from the mirrors this run; %d still missing (%s)", source_id, filled, counts["missing"],
             "; ".join(f"{o['archive']}: {o['outcome']}{' ' + str(o['filled']) if 'filled' in o else ''}{' (' + o['reason'] + ')' if o.get('reason') else ''}" for o in outcomes) or "no mirrors")
    return {**counts, "filled_this_run": filled, "mirrors": outcomes}


def _fill_from_mirror(storage: Storage, source_id: str, into: str, url: str, name: str, wanted: set[str], policy: RetryPolicy) -> tuple[dict, set[str]]:
    """One mirror: the outcome, and the ids it placed."""
    key = fill_record_key(source_id, name)
    previous = storage.read_json(key, default=None)
    if previous and previous.get("upstream"):
        if reason := _needless(previous, probe(url, policy=policy), wanted):
            log.info("%s: mirror archive %s not downloaded: %s", source_id, name, reason)
            return {"outcome": "skipped", "reason": reason}, set()
    staged = storage.staging_dir() / source_id / "mirrors" / name
    fetched = download(url, staged, Expected(), policy=policy, guard=current_guard())  # a FetchError keeps the .part: the next run resumes it
    upstream = {"etag": fetched.etag, "last_modified": fetched.last_modified, "size": fetched.size, "sha256": fetched.sha256}
    try:
        summary = fill_from_archive(storage, staged, into, wanted, source_id=source_id, refresh_report=False, upstream=upstream)
    except _UNUSABLE_ARCHIVE as exc:
        reason = f"{type(exc).__name__}: {exc}"
        _save_fill_record(storage, source_id, name, wanted, upstream=upstream, refused=reason)
        log.warning("%s: mirror archive %s refused, nothing placed from it: %s", source_id, name, reason)
        return {"outcome": "failed", "reason": reason}, set()
    finally:
        staged.unlink(missing_ok=True)
    placed = set(storage.read_json(key)["filled"]) & wanted
    return {"outcome": "filled", **{k: summary[k] for k in ("filled", "converted", "broken", "not_in_archive")}}, placed


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


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


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
