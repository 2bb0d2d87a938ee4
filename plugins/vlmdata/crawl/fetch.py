"""Fetch one shard of a crawl (the mapped ``crawl`` task).

A thread pool with one kept-alive ``requests.Session`` per thread (docs/facts.md, "Crawling": a
pool without them ran at about half img2dataset's rate, connection reuse being much of the gap)
and at most ``per_host`` requests in flight to one host. Each GET goes through the shared retry
loop (:func:`vlmdata.fetch.http.with_retries`): 429/5xx and connection errors are retried with
backoff honouring ``Retry-After`` (capped by the policy's ``max_wait``). Every body is fully
decoded (:func:`vlmdata.images.to_jpeg`). Dead URLs and undecodable bodies are recorded, never
fatal. Results: ``_vlmdata/crawl/<source>/results/<n>.json``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from urllib.parse import urlsplit

import requests

from ..fetch.http import FetchError, HostNotFound, HttpStatusError, PermanentFetchError, RetryPolicy, Transient, Unreachable, body_length, raise_for_status, redact, with_retries
from ..fetch.policy import CRAWL_POLICY
from ..images import BrokenImage, to_jpeg
from ..lease import current_guard, exclusive
from ..manifest import now
from ..mirrors import Mirrors
from ..progress import Progress
from ..redaction import redact_text
from ..storage import Storage
from .keys import image_key, result_key

log = logging.getLogger("vlmdata.crawl")

MAX_IMAGE_BYTES = 50 * 1024 * 1024  # a book cover is tens of KB; anything this big is not one
MAX_RESPONSE_SECONDS = 120.0  # a server trickling bytes must not pin a worker thread
USER_AGENT = "vlmdata-crawl/0.1 (LLaVA training data; +https://github.com/)"


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


def _get_once(session: requests.Session, url: str, timeout: tuple[float, float]) -> bytes:
    start = time.monotonic()
    with session.get(url, timeout=timeout, stream=True) as response:
        raise_for_status(response, url, ok=(200,))
        expected = body_length(response.headers)
        if expected is not None and expected > MAX_IMAGE_BYTES:
            raise PermanentFetchError(f"{expected} bytes, more than an image may have ({MAX_IMAGE_BYTES})")
        body = bytearray()
        for chunk in response.iter_content(1 << 16):
            body += chunk
            if len(body) > MAX_IMAGE_BYTES:
                raise PermanentFetchError(f"more than {MAX_IMAGE_BYTES} bytes, more than an image may have")
            if time.monotonic() - start > MAX_RESPONSE_SECONDS:
                raise Transient(f"response took longer than {MAX_RESPONSE_SECONDS:.0f} s")
        if expected is not None and len(body) != expected:
            raise Transient(f"connection closed after {len(body)} of {expected} bytes")
        return bytes(body)


def fetch_image(url: str, sessions: _Sessions, limit: _HostLimiter, policy: RetryPolicy, timeout: tuple[float, float]) -> bytes:
    """The body of ``url``; a :class:`FetchError` or a ``requests`` error (:func:`dead_reason`) when there is none."""

    def attempt() -> bytes:
        with limit(url):  # held for the request only, never while backing off
            return _get_once(sessions.get(), url, timeout)

    # Retries log at DEBUG: a throttling host would otherwise write a line per image.
    return with_retries(redact(url), policy, attempt, log_level=logging.DEBUG)


def dead_reason(exc: FetchError | requests.RequestException) -> str:
    """Why an image URL gave no image, as the shard's results record it (short, no credentials)."""
    if isinstance(exc, HttpStatusError):
        return f"HTTP {exc.status}"
    if isinstance(exc, HostNotFound):  # permanent, as for every download (see name_unresolved): recorded at once
        return f"the host name does not resolve: {_short(exc.__cause__ or exc)}"
    if isinstance(exc, Unreachable):
        return f"{_short(exc.reason)} (after {exc.attempts} attempts)"
    if isinstance(exc, FetchError):
        return str(exc)
    return f"{type(exc).__name__}: {_short(exc)}"  # invalid URL, too many redirects, ...


def _short(what: object, limit: int = 300) -> str:
    """A failure's text for a report: URLs without their query (a signed URL's credentials), clipped."""
    text = redact_text(str(what))
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

    def add(self, image_id: str, kind: str, detail: str | int | None, conversion: str | None = None) -> None:
        with self._lock:
            self.done += 1
            if kind == "ok":
                self.ok += 1
                self.stored_bytes += int(detail or 0)
                if conversion:
                    self.converted[image_id] = conversion
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
            body = fetch_image(mirrors.rewrite(url), sessions, limit, policy, timeout)
        except (FetchError, requests.RequestException) as exc:
            tally.add(image_id, "dead", dead_reason(exc))
            return
        try:
            jpeg, conversion = to_jpeg(body)
        except BrokenImage as exc:
            tally.add(image_id, "broken", f"{exc} ({_describe(body)})")
            return
        guard()
        storage.write_bytes(image_key(into, image_id), jpeg)  # atomic: never a partial file
        tally.add(image_id, "ok", len(jpeg), conversion)

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
