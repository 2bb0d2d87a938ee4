"""Resumable, verified HTTP downloads: the byte path every transport shares.

``download`` streams into ``<dest>.part``, hashing as it writes; after a dropped or reset
connection it resumes from the bytes on disk with ``Range`` + ``If-Range`` (so a changed
upstream answers 200 and we start over instead of splicing two versions); it retries
429/5xx with backoff that honours ``Retry-After``; and it renames to ``dest`` only once
size and checksums match. A worker killed mid-download leaves the ``.part`` and its
validator behind, and the next attempt picks them up. A large file goes over several
connections instead (:mod:`.segments`, with the same guarantees); this module is its single
stream and the fallback.

Written on ``requests`` rather than a download manager: none of the libraries we may use
resumes with If-Range and hashes in the same pass (huggingface_hub deletes the partial file on
a reset and checks only the size).
"""

from __future__ import annotations

import email.utils
import io
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import requests

from .. import progress
from ..redaction import redact_text
from ..storage import raise_if_disk_full
from .digest import Expected, IntegrityError, MultiHasher
from .policy import RetryPolicy

if TYPE_CHECKING:
    from .segments import Segmenting

log = logging.getLogger("vlmdata.fetch")

RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
TRANSIENT_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


class FetchError(RuntimeError):
    """A download that failed: retries exhausted, or a :class:`PermanentFetchError`.

    Its message names URLs without their query string (``?<redacted>``), however it was put
    together: the text of the library exception it quotes often holds the URL it could not
    reach (``Max retries exceeded with url: /path?Signature=...``), a signed redirect's among
    them, and the message travels into reports on the storage, XCom and Airflow's UI."""

    def __init__(self, message: object = "", *args: object):
        super().__init__(redact_text(str(message)), *args)


class RangeNotSupported(FetchError):
    """The server answered a ``Range`` request with the whole file (200): reading part of it
    (:class:`RangeReader`) is not possible there; the caller downloads the whole file instead."""


class PermanentFetchError(FetchError):
    """Retrying cannot help (a 4xx answer, a host name that does not resolve, upstream moved):
    fails at once, without the in-task retries nor Airflow's task retries."""


class Unreachable(FetchError):
    """Upstream gave no usable answer: its host name does not resolve (:class:`HostNotFound`), or
    every attempt met a transient failure (refused, reset, timeout, 429/5xx). A dry run then
    answers from the catalog (:func:`vlmdata.acquire.plan`); an acquisition fails.
    ``reason`` is the last failure's (``HTTP 503``), ``attempts`` how many were made."""

    reason: str = ""
    attempts: int = 0


class HostNotFound(Unreachable, PermanentFetchError):
    """The host name does not resolve: no network, or a typo in a URL or the mirror map."""


def name_unresolved(exc: BaseException) -> bool:
    """True when what failed is resolving a host name (no network, a typo in a mirror map).

    Permanent, unlike a refused connection. The resolver has already retried (glibc asks each
    name server ``attempts`` times, 2 by default, ``timeout`` 5 s each: resolv.conf(5)), so its
    "not known" (NXDOMAIN) or "temporary failure" (no name server answered) will not change in
    the next seconds; curl's ``--retry`` does not retry it either (exit code 6 is not transient).
    A refused connection (``ECONNREFUSED``) stays transient: on a real network it is a server or a
    load balancer's backend restarting, which curl (``--retry-connrefused``), pip (urllib3's
    connect retries) and huggingface_hub (``httpx.NetworkError`` in ``http_backoff``) all retry.
    A dry run does not wait for it: it probes with a short budget (``vlmdata.acquire``).
    """
    return _resolver_error(exc) is not None


def unresolved_error(what: str, exc: BaseException) -> HostNotFound:
    host, reason = _host_of(exc), _resolver_error(exc) or exc
    return HostNotFound(f"{what}: the host name {f'{host!r} ' if host else ''}does not resolve ({reason}): no network, or a typo in the URL "
                        "or the mirror map (VLMDATA_MIRRORS / the vlmdata_mirrors Variable); not retried")


def _host_of(exc: BaseException) -> str | None:
    """The host a failed request was for: requests' and httpx's errors carry their request."""
    try:
        url = exc.request.url  # httpx raises RuntimeError when the error has no request
    except (AttributeError, RuntimeError):
        return None
    return urlsplit(str(url)).hostname


def _resolver_error(exc: BaseException) -> socket.gaierror | None:
    """The resolver's own error (``[Errno -2] Name or service not known``) among the causes of
    ``exc`` (requests and httpx wrap it several times), if resolving a name is what failed."""
    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, socket.gaierror):
        seen = seen.__cause__ or seen.__context__
    return seen


@dataclass(frozen=True)
class Fetched:
    path: Path
    size: int
    sha256: str
    md5: str | None
    etag: str | None
    last_modified: str | None


def redact(url: str) -> str:
    """The URL without its query string: signed links (SA-1B) carry credentials there."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")) + ("?<redacted>" if parts.query else "")


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After is either seconds or an HTTP date."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def validator_of(headers: Mapping[str, str]) -> str | None:
    """What If-Range may carry: a strong ETag, else Last-Modified (RFC 9110 13.1.5)."""
    etag = headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return headers.get("Last-Modified")


class Progress(progress.Progress):
    """A download's bytes, rate and ETA: a bar on a terminal, else a line in the task log at
    most every ``every`` seconds (:class:`vlmdata.progress.Progress`, here logging as
    ``vlmdata.fetch``)."""

    def __init__(self, name: str, total: int | None, every: float = 10.0, sink: Callable[[str], None] | None = None):
        super().__init__(name, total, every, sink or log.info, unit=progress.BYTES, resumed=True)


def content_range_start(value: str | None) -> int | None:
    """The first byte a ``Content-Range`` (``bytes 100-199/1000``) says the body starts at."""
    if not value or not value.startswith("bytes "):
        return None
    try:
        return int(value[6:].split("-", 1)[0])
    except ValueError:
        return None


def content_range_total(value: str | None) -> int | None:
    """The whole file's size a ``Content-Range`` names (None for ``*`` or no header)."""
    if not value or "/" not in value:
        return None
    total = value.rsplit("/", 1)[1]
    return int(total) if total.isdigit() else None


def body_length(headers: Mapping[str, str]) -> int | None:
    """How many bytes the body will bring, from ``Content-Length``; None when it does not say, or
    when a ``Content-Encoding`` makes it the encoded size (requests hands out decoded bytes)."""
    length = headers.get("Content-Length")
    return int(length) if length and length.isdigit() and "Content-Encoding" not in headers else None


class _Partial:
    """``dest.part`` plus a sidecar naming the URL and validator its bytes came from: ``.part.json``
    for the single stream, ``.part.segments.json`` for a segmented download (:mod:`.segments`)."""

    def __init__(self, dest: Path):
        self.path = dest.with_name(dest.name + ".part")
        self.meta = dest.with_name(dest.name + ".part.json")
        self.segments = dest.with_name(dest.name + ".part.segments.json")

    def resumable_size(self, url: str) -> tuple[int, str | None]:
        """Bytes we may resume from, and the validator to send with If-Range."""
        try:
            meta = json.loads(self.meta.read_text())
            size = self.path.stat().st_size
        except (OSError, ValueError):
            self.discard()
            return 0, None
        if not meta.get("validator"):
            self.discard()  # without a validator a resume could splice two versions
            return 0, None
        # The URL may differ (a re-signed link, a new mirror): If-Range with the validator
        # makes the server send the whole file if the bytes are not the same version.
        return size, meta["validator"]

    def remember(self, url: str, validator: str | None) -> None:
        self.meta.write_text(json.dumps({"url": redact(url), "validator": validator}))

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self.forget()

    def forget(self) -> None:
        """Drop the sidecars (the bytes were renamed into place, or are being thrown away)."""
        self.meta.unlink(missing_ok=True)
        self.segments.unlink(missing_ok=True)

    def isolate(self) -> None:
        """Give the partial bytes a file of their own: a previous writer that may still be
        alive (frozen, its lease expired) keeps writing, if ever, into the old file, never ours."""
        if self.path.exists():
            copy = self.path.with_name(f"{self.path.name}.{os.getpid()}.copy")
            shutil.copyfile(self.path, copy)
            os.replace(copy, self.path)


def download(
    url: str,
    dest: Path,
    expected: Expected = Expected(),
    *,
    headers: Mapping[str, str] | None = None,
    session: requests.Session | None = None,
    policy: RetryPolicy = RetryPolicy(),
    progress_every: float = 10.0,
    # Small enough that a broken connection loses little (requests drops the chunk it was
    # reading), large enough to keep Python's per-chunk cost far below the link's speed.
    chunk_size: int = 1 << 16,
    guard: Callable[[], None] = lambda: None,
    segmenting: Segmenting | None = None,
) -> Fetched:
    """Fetch ``url`` to ``dest`` (a local path), resuming and verifying. See the module doc.

    ``guard`` is called before every write and raises to stop it (a lease that was lost:
    :meth:`vlmdata.lease.Lease.check`); the partial file is kept for whoever holds the lease now.
    A large file goes over several connections (:mod:`.segments`; ``segmenting``, default from
    the environment: ``VLMDATA_DOWNLOAD_CONNECTIONS``, ``VLMDATA_SEGMENTED_FROM``).
    """
    from . import segments  # it builds on this module's pieces

    segmenting = segmenting or segments.Segmenting.from_env()
    dest.parent.mkdir(parents=True, exist_ok=True)
    session = session or requests.Session()
    partial = _Partial(dest)
    # One fresh start after a checksum mismatch: a flipped byte in transit should not fail
    # the task, but a file that is wrong upstream must not loop forever.
    for verify_round in (1, 2):
        fetched = segments.fetch(url, partial, expected, headers or {}, session, policy, progress_every, guard, segmenting)
        hasher, response_headers = fetched or _fetch_bytes(url, partial, expected, headers or {}, session, policy, progress_every, chunk_size, guard)
        problems = hasher.problems()
        on_disk = partial.path.stat().st_size
        if on_disk != hasher.count:  # someone else wrote into the file: what we hashed is not what is there
            problems = [*problems, f"the partial file holds {on_disk} bytes, {hasher.count} were received and hashed"]
        if not problems:
            guard()
            partial.path.replace(dest)
            partial.forget()
            return Fetched(dest, hasher.count, hasher.sha256, hasher.md5, response_headers.get("ETag"), response_headers.get("Last-Modified"))
        partial.discard()
        log.warning("%s: downloaded bytes do not verify (%s)%s", redact(url), "; ".join(problems), ", fetching again" if verify_round == 1 else "")
    raise IntegrityError(f"{redact(url)}: {'; '.join(problems)}. Nothing was kept; if upstream changed on purpose, update the catalog.")


def isolate_partial(dest: Path) -> None:
    """See :meth:`_Partial.isolate`: for a writer that took over from one that may still be alive."""
    _Partial(dest).isolate()


class Transient(Exception):
    """An attempt that may succeed later: retried with backoff (or the server's Retry-After)."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason, self.retry_after = reason, retry_after


def with_retries(what: str, policy: RetryPolicy, attempt: Callable[[], object], on_retry: Callable[[], str] = lambda: "", hint: str | Callable[[], str] = "",
                 sleep: Callable[[float], None] | None = None, failures: Callable[[], int] | None = None, log_level: int = logging.WARNING):
    """Run ``attempt`` until it returns; :class:`Transient` and connection errors are retried.
    ``hint`` ends the message when retries run out (what the user can do next; a callable is
    asked then, so it can say what is left on disk). ``sleep`` waits between attempts
    (``time.sleep``; a segmented download's connections wait on their stop flag instead).
    ``failures`` numbers each failure from 1 (``itertools.count(1).__next__``): loops that share
    one give up together after ``policy.attempts`` failures in all, so their waits add up to one
    loop's at most (a segmented download's connections: README, Task timeouts). ``log_level``
    of the line each retry logs (the crawl's thousands of small GETs retry at DEBUG)."""
    reason, number = "", 0
    while True:
        retry_after = None
        try:
            return attempt()
        except Transient as exc:
            reason, retry_after = exc.reason, exc.retry_after
        except TRANSIENT_ERRORS as exc:
            if name_unresolved(exc):
                raise unresolved_error(what, exc) from exc
            reason = f"{type(exc).__name__}: {exc}"
        number = failures() if failures else number + 1
        if number >= policy.attempts:
            break
        wait = policy.wait(number, retry_after)
        log.log(log_level, "%s: %s; retry %d/%d in %.1f s%s", what, reason, number, policy.attempts - 1, wait, on_retry())
        (sleep or time.sleep)(wait)
    error = Unreachable(f"{what}: giving up after {policy.attempts} attempts: {reason}{hint() if callable(hint) else hint}")
    error.reason, error.attempts = redact_text(reason), policy.attempts
    raise error


class HttpStatusError(PermanentFetchError):
    """An answer whose status retrying cannot change (404, 403, ...); ``status`` is it."""

    def __init__(self, message: object, status: int):
        super().__init__(message)
        self.status = status


def raise_for_status(response: requests.Response, url: str, *, ok: Container[int] | None = None,
                     explain: Callable[[int, requests.Response], str] | None = None) -> None:
    """The one reading of an HTTP status: 408/425/429/5xx raise :class:`Transient` (with the
    server's ``Retry-After``); any other status not in ``ok`` raises :class:`HttpStatusError`
    with :func:`explain_status`'s message (or ``explain(status, response)``'s for a 4xx). Without
    ``ok`` only the retried statuses raise: the caller reads the others itself."""
    status = response.status_code
    if status in RETRY_STATUS:
        raise Transient(f"HTTP {status}", parse_retry_after(response.headers.get("Retry-After")))
    if ok is not None and status not in ok:
        message = explain(status, response) if explain and 400 <= status < 500 else explain_status(url, status, response)
        raise HttpStatusError(message, status)


def _fetch_bytes(url, partial, expected, headers, session, policy, progress_every, chunk_size, guard):
    state = {"hasher": MultiHasher(expected)}
    progress = Progress(partial.path.name.removesuffix(".part"), expected.size, progress_every)

    def attempt():
        guard()
        offset, validator = partial.resumable_size(url)
        request_headers = dict(headers)
        if offset:
            request_headers["Range"] = f"bytes={offset}-"
            request_headers["If-Range"] = validator
        with session.get(url, headers=request_headers, stream=True, timeout=(policy.connect_timeout, policy.read_timeout)) as response:
            status = response.status_code
            if status == 416 and offset and content_range_total(response.headers.get("Content-Range")) == offset:
                state["hasher"] = _rehash(state["hasher"], partial, offset)  # the partial already holds every byte
                return state["hasher"], response.headers
            if status == 416:
                partial.discard()
                raise Transient("HTTP 416 for our Range: starting over")
            raise_for_status(response, url, ok=(200, 206))
            if offset and status == 200 and response.headers.get("Content-Type", "").startswith("text/html"):
                # An HTML page in answer to a resume (Drive's quota page) is not the file:
                # keep the partial bytes and try again later.
                raise Transient("an HTML page instead of the file's bytes")
            if status == 206 and content_range_start(response.headers.get("Content-Range")) == offset:
                state["hasher"] = hasher = _rehash(state["hasher"], partial, offset)
                mode = "ab"
            else:
                if offset:
                    log.info("%s: server sent the whole file (Range ignored or upstream changed): starting over", redact(url))
                state["hasher"] = hasher = MultiHasher(expected)
                offset, mode = 0, "wb"
            partial.remember(url, validator_of(response.headers))
            length = body_length(response.headers)
            expected_end = offset + length if length is not None else None
            if progress.total is None and expected_end:
                progress.total = expected_end
            try:
                with partial.path.open(mode) as out:
                    for chunk in response.iter_content(chunk_size):
                        guard()
                        out.write(chunk)
                        hasher.update(chunk)
                        progress.update(hasher.count)
            except OSError as exc:
                raise_if_disk_full(exc, str(partial.path), partial_kept=True)
                raise
            if expected_end is not None and hasher.count != expected_end:
                raise Transient(f"connection closed after {hasher.count} of {expected_end} bytes")
            progress.update(hasher.count, force=True)
            return hasher, response.headers

    def resuming_from() -> str:
        return f" (resuming from {partial.path.stat().st_size} bytes)" if partial.path.exists() else ""

    def kept() -> str:
        return ". The partial file is kept; re-running resumes it." if partial.path.exists() and partial.path.stat().st_size else ". Nothing was downloaded."

    return with_retries(redact(url), policy, attempt, resuming_from, hint=kept)


def _rehash(hasher: MultiHasher, partial: _Partial, offset: int) -> MultiHasher:
    """Bring the running hash to ``offset``: free when this process wrote those bytes."""
    if hasher.count != offset:
        hasher = MultiHasher(hasher.expected)
        hasher.update_from_file(partial.path, offset)
    return hasher


def explain_status(url: str, status: int, response: requests.Response) -> str:
    """What a refused answer means for the user (a 403 on a signed link: it expired)."""
    signed = bool(urlsplit(url).query)  # a signed link (SA-1B's) carries its credentials there
    hint = {
        401: "the upstream wants credentials (a token, or accepting the dataset's terms)",
        403: "access denied; the signed link may have expired: refresh the links file" if signed
        else "access denied: give a token with access (for the Hub, accept the dataset's terms first)",
        404: "not found upstream; the URL may have moved: check the catalog or set a mirror",
        410: "gone upstream; set a mirror",
    }.get(status, "unexpected answer")
    code = response.headers.get("X-Error-Code")
    return f"{redact(url)}: HTTP {status}{f' ({code})' if code else ''}: {hint}"


class RangeReader(io.RawIOBase):
    """A remote file as a seekable, read-only file: each read outside the buffer is one
    ``Range`` request of at least ``readahead`` bytes. A parser that seeks (``tarfile``
    hopping from member header to member header) then reads only the bytes it looks at.

    After the first answer every request carries ``If-Range`` with its validator: a file
    that changes while it is read answers 200 and fails the read instead of mixing versions.
    A server that ignores ``Range`` is an error too: the point is not to fetch the file.
    ``refused(status, response)`` may give the message for 4xx answers (a signed link's).
    """

    def __init__(self, url: str, *, session: requests.Session | None = None, policy: RetryPolicy = RetryPolicy(), readahead: int = 2048, refused: Callable[[int, requests.Response], str] | None = None):
        super().__init__()
        self.url, self.policy, self.readahead, self.refused = url, policy, readahead, refused
        self.session = session or requests.Session()
        self.size: int | None = None
        self.validator: str | None = None
        self.requests = 0  # how many ranges were fetched: the cost of what was read
        self.received = 0  # body bytes those requests brought
        self._pos = 0
        self._buffer, self._buffer_start = b"", 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_END:
            if self.size is None:
                self._fill(0, 1)  # the first answer says the size
            offset += self.size
        elif whence == io.SEEK_CUR:
            offset += self._pos
        if offset < 0:
            raise ValueError(f"negative seek position {offset}")
        self._pos = offset
        return offset

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            raise io.UnsupportedOperation("RangeReader reads bounded ranges only")
        if self.size is not None and self._pos >= self.size or size == 0:
            return b""
        offset = self._pos - self._buffer_start
        if 0 <= offset < len(self._buffer) < offset + size:  # the start is held: fetch only the rest
            head = self._buffer[offset:]
            self._pos += len(head)
            return head + self.read(size - len(head))
        if offset < 0 or offset + size > len(self._buffer):
            self._fill(self._pos, max(size, self.readahead))
            offset = 0
        data = self._buffer[offset : offset + size]
        self._pos += len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def prefetch(self, start: int, length: int) -> None:
        """Fetch bytes ``start`` to ``start + length - 1`` in one request (unless already held)
        and keep them: the reads that follow within them cost no request."""
        held = self._buffer_start <= start and start + length <= self._buffer_start + len(self._buffer)
        if not held:
            self._fill(start, length)

    def _fill(self, start: int, length: int) -> None:
        if self.size is not None:
            length = min(length, self.size - start)
            if length <= 0:
                self._buffer, self._buffer_start = b"", start
                return
        headers = {"Range": f"bytes={start}-{start + length - 1}"}
        if self.validator:
            headers["If-Range"] = self.validator

        def attempt() -> bytes:
            self.requests += 1
            with self.session.get(self.url, headers=headers, stream=True, allow_redirects=True, timeout=(self.policy.connect_timeout, self.policy.read_timeout)) as response:
                status = response.status_code
                if status == 416:  # at or past the end
                    self.size = content_range_total(response.headers.get("Content-Range")) or start
                    return b""
                if status == 200:
                    whole = f"{redact(self.url)}: the server sent the whole file instead of bytes {start}-{start + length - 1}"
                    if not self.validator:
                        raise RangeNotSupported(f"{whole}: it does not answer Range requests; download the whole file instead")
                    raise FetchError(f"{whole}: the file changed while it was being read")
                raise_for_status(response, self.url, ok=(206,), explain=self.refused)
                if content_range_start(response.headers.get("Content-Range")) != start:
                    raise FetchError(f"{redact(self.url)}: asked for bytes from {start}, got {response.headers.get('Content-Range')!r}")
                self.size = content_range_total(response.headers.get("Content-Range")) or self.size
                self.validator = self.validator or validator_of(response.headers)
                chunks, received = [], 0
                for chunk in response.iter_content(1 << 16):  # never more than asked, whatever is sent
                    chunks.append(chunk)
                    received += len(chunk)
                    if received >= length:
                        break
                data = b"".join(chunks)[:length]
                self.received += len(data)
                if len(data) < min(length, (self.size or start + length) - start):
                    raise Transient(f"connection closed after {len(data)} of {length} bytes")
                return data

        self._buffer = with_retries(f"{redact(self.url)} bytes {start}-{start + length - 1}", self.policy, attempt)
        self._buffer_start = start


def same_fingerprint(recorded: Mapping[str, object], probed: Mapping[str, object]) -> bool:
    """Upstream unchanged: every validator the probe saw matches the recorded one (no validator:
    nothing to tell by, so changed)."""
    keys = [k for k, v in probed.items() if v is not None]
    return bool(keys) and all(recorded.get(k) == probed[k] for k in keys)


def probe(url: str, *, headers: Mapping[str, str] | None = None, session: requests.Session | None = None, policy: RetryPolicy = RetryPolicy()) -> dict[str, str | int | None]:
    """HEAD the URL (following redirects): what a refresh compares with the manifest."""
    session = session or requests.Session()

    def attempt():
        response = session.head(url, headers=dict(headers or {}), allow_redirects=True, timeout=(policy.connect_timeout, policy.read_timeout))
        raise_for_status(response, url, ok=(200,))
        return {
            "etag": response.headers.get("ETag"),
            "last_modified": response.headers.get("Last-Modified"),
            "size": body_length(response.headers),
        }

    return with_retries(redact(url), policy, attempt)
