"""Segmented downloads: one large file over several connections at once.

Servers that limit each connection (CDNs, university file servers) give a single stream a
fraction of the link; ``aria2c -x8`` fetches such a file several times faster. Here a file of
known size at least :attr:`Segmenting.threshold` long, from a server that answers ``Range``
with a validator (strong ETag or Last-Modified), is fetched in *pieces* by
:attr:`Segmenting.connections` threads, each on its own connection, written in place
(``os.pwrite``) into the one ``<dest>.part``:

* pieces are handed out in file order, the first ones staggered in size so that they end one
  after the other, so the bytes written from offset 0 on without a hole (the *prefix*) grow
  steadily during the transfer. The calling thread hashes that prefix as it grows (reading it
  back from the page cache, where it just went), so the sha256 (and md5 where the manifest needs
  it: :class:`MultiHasher`) is ready a moment after the last byte, in file order. A connection
  with nothing left to take splits the largest piece still in flight and takes its second
  half, so one slow connection does not hold up the end;
* every request carries ``If-Range`` with the validator of the first answer: a file that
  changes upstream answers 200, and the download starts over from zero instead of splicing two
  versions. A piece that fails is retried on its own, resuming from its last written byte; the
  connections share one :class:`RetryPolicy` budget (its ``attempts`` failures in all), so the
  waits of a segmented download stay within those of the single stream;
* ``<dest>.part.segments.json`` records, about once a second and when the download stops, the
  pieces not finished yet (offset, end, bytes written) and where the untaken rest begins: a
  later attempt (another task try, a resumed CLI run) fetches only the missing bytes of each;
* the lease's ``guard`` is checked before every write, by every connection.

:func:`fetch` returns ``None`` when the file should go through the single stream instead
(small or of unknown size, a single-stream partial already on disk, a server ignoring ``Range``,
no length, no validator, an HTML page); :func:`vlmdata.fetch.http.download` then does as
before. Verification, the rename and the error messages stay in ``download``.
Measured in ``bench/`` (``segmented``: a per-connection-capped loopback server, against
``aria2c -x8 -s8``; ``download``: an uncapped one, against the single stream).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import requests

from ..storage import raise_if_disk_full
from .digest import Expected, MultiHasher
from .http import (
    FetchError,
    Progress,
    RetryPolicy,
    Transient,
    _Partial,
    body_length,
    content_range_start,
    content_range_total,
    raise_for_status,
    redact,
    validator_of,
    with_retries,
)

log = logging.getLogger("vlmdata.fetch")

MiB = 1 << 20
CHUNK = 1 << 18  # bytes per read: a dropped connection loses at most this much of a piece
SAVE_EVERY = 1.0  # seconds between two saves of the segment state
# Pieces per connection over a whole file: each one costs a request (a round trip without
# bytes), fewer leave more unhashed bytes at the end (bench/ `segmented`).
WAVES = 2
# ... but no piece larger than this: what is written beyond the hashed prefix (up to about one
# piece per connection) stays small enough to be hashed from the page cache, not the disk.
MAX_PIECE = 128 * MiB


@dataclass(frozen=True)
class Segmenting:
    """When and how a download is split (README: Settings)."""

    connections: int = 8  # VLMDATA_DOWNLOAD_CONNECTIONS: aria2c's -x/-s; 1 turns segmenting off
    threshold: int = 64 * MiB  # VLMDATA_SEGMENTED_FROM: smaller files take the single stream
    min_piece: int = 4 * MiB  # no request for less (each one costs a round trip)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Segmenting:
        env = os.environ if env is None else env
        connections = env.get("VLMDATA_DOWNLOAD_CONNECTIONS", "").strip()
        threshold = env.get("VLMDATA_SEGMENTED_FROM", "").strip()
        if connections and not (connections.isdigit() and 1 <= int(connections) <= 32):
            raise ValueError(f"VLMDATA_DOWNLOAD_CONNECTIONS must be a whole number from 1 to 32 (1: no segmented downloads), not {connections!r}")
        return cls(connections=int(connections) if connections else cls.connections,
                   threshold=parse_size(threshold, "VLMDATA_SEGMENTED_FROM") if threshold else cls.threshold)

    def applies(self, size: int | None) -> bool:
        return self.connections > 1 and size is not None and size >= max(self.threshold, 2 * self.min_piece)


_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": MiB, "mib": MiB, "g": 1 << 30, "gib": 1 << 30}


def parse_size(text: str, setting: str) -> int:
    """``64MiB``, ``64M``, ``1G``, ``67108864``: binary units, as aria2c reads them."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text.strip().lower())
    if not m or m[2] not in _UNITS:
        raise ValueError(f"{setting} must be a size such as 64MiB, 512M or 1G, not {text!r}")
    return int(float(m[1]) * _UNITS[m[2]])


class _Piece:
    """Bytes ``[start, end)`` of the file, ``done`` of them written. ``end`` only ever shrinks
    (another connection took the rest), and never below ``start + done + CHUNK`` while a
    connection is on it, so a write in flight always stays inside."""

    __slots__ = ("start", "end", "done", "busy")

    def __init__(self, start: int, end: int, done: int = 0):
        self.start, self.end, self.done, self.busy = start, end, done, False

    @property
    def position(self) -> int:
        return self.start + self.done

    @property
    def left(self) -> int:
        return self.end - self.position


class _Plan:
    """Which bytes are written, which are being fetched, which nobody has taken yet. Shared by
    the connections (under ``changed``'s lock) and saved as the segment state."""

    def __init__(self, size: int, validator: str, pieces: list[_Piece], untaken: int):
        self.size, self.validator = size, validator
        self.pieces = sorted(pieces, key=lambda p: p.start)  # unfinished ones only
        self.untaken = untaken  # bytes from here to the end belong to no piece yet
        self.handed = 0  # pieces taken from the untaken bytes by this attempt
        self.changed = threading.Condition()

    # -- state file ---------------------------------------------------------------------
    def encode(self, url: str) -> str:
        with self.changed:
            pieces = [[p.start, p.end, p.done] for p in self.pieces]
        return json.dumps({"url": redact(url), "validator": self.validator, "size": self.size, "untaken": self.untaken, "pieces": pieces})

    @classmethod
    def load(cls, path, size_on_disk: int) -> _Plan | None:
        """The saved plan, or None if there is none or it does not describe the file on disk."""
        try:
            raw = json.loads(path.read_text())
            size, untaken, validator = int(raw["size"]), int(raw["untaken"]), raw["validator"]
            pieces = [_Piece(int(s), int(e), int(d)) for s, e, d in raw["pieces"]]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not validator or size != size_on_disk or not 0 <= untaken <= size or any(not 0 <= p.start <= p.position <= p.end <= untaken for p in pieces):
            return None
        return cls(size, validator, pieces, untaken)

    # -- progress -----------------------------------------------------------------------
    def prefix(self) -> int:
        """Bytes written from offset 0 on, without a hole: what may be hashed."""
        return min((p.position for p in self.pieces), default=self.untaken)

    def written(self) -> int:
        return self.untaken - sum(p.left for p in self.pieces)

    def complete(self) -> bool:
        return self.untaken == self.size and not self.pieces

    # -- handing out work ---------------------------------------------------------------
    def claim(self, connections: int, min_piece: int) -> _Piece | None:
        """The next piece for an idle connection: an unfinished one nobody is on (lowest first,
        so the prefix grows), else a new one from the untaken rest, else the second half of
        the largest piece in flight; None when there is nothing worth taking."""
        with self.changed:
            for piece in self.pieces:
                if not piece.busy and piece.left > 0:
                    piece.busy = True
                    return piece
            if self.untaken < self.size:
                # Pieces of 1/(connections * WAVES) of the file; the first `connections` grow
                # from 1/connections of that to all of it, so that they end one after the other
                # and from then on a piece ends, in file order, every piece/connections bytes;
                # the last ones shrink, so that the connections finish together.
                steady = min(MAX_PIECE, self.size // (connections * WAVES))
                if self.handed < connections:
                    steady = steady * (self.handed + 1) // connections
                length = max(min_piece, min(steady, (self.size - self.untaken) // connections))
                if self.size - self.untaken < length + min_piece:
                    length = self.size - self.untaken  # no crumb left at the end
                piece = _Piece(self.untaken, self.untaken + length)
                self.untaken += length
                self.handed += 1
            else:
                largest = max(self.pieces, key=lambda p: p.left, default=None)
                if largest is None or largest.left <= max(min_piece, 4 * CHUNK):  # each half worth a round trip
                    return None
                cut = max(largest.position + CHUNK, largest.end - largest.left // 2)
                piece = _Piece(cut, largest.end)
                largest.end = cut
            piece.busy = True
            self.pieces.append(piece)
            self.pieces.sort(key=lambda p: p.start)
            return piece

    def room(self, piece: _Piece, length: int) -> int:
        """How many of ``length`` bytes at the piece's position are still the piece's to write."""
        with self.changed:
            return max(0, min(length, piece.left))

    def advance(self, piece: _Piece, length: int) -> bool:
        """Record ``length`` bytes written; True when the piece is finished."""
        with self.changed:
            piece.done += length
            finished = piece.left <= 0
            if finished:
                self.pieces.remove(piece)
            self.changed.notify_all()
            return finished

    def release(self, piece: _Piece) -> None:
        with self.changed:
            piece.busy = False
            self.changed.notify_all()


class _Restart(Exception):
    """Upstream answered with another version (200 to If-Range): every byte so far is void."""


class _Stopped(Exception):
    """Another connection failed, or the download is being stopped: leave quietly."""


def fetch(url: str, partial: _Partial, expected: Expected, headers: Mapping[str, str], session: requests.Session, policy: RetryPolicy,
          progress_every: float, guard: Callable[[], None], settings: Segmenting) -> tuple[MultiHasher, Mapping[str, str]] | None:
    """Fetch into ``partial`` over several connections; the hasher of the whole file and the
    first answer's headers, or None to use the single stream (see the module doc)."""
    if partial.meta.exists():
        return None  # a single-stream partial: finish it the way it was started
    failures = itertools.count(1).__next__  # one retry budget for every connection and restart
    for _ in range(policy.attempts):
        plan = _Plan.load(partial.segments, _size_of(partial.path)) if partial.segments.exists() else None
        if plan is None:
            if partial.segments.exists():
                partial.discard()  # a state that does not describe the file on disk
            if not settings.applies(expected.size):
                return None
        try:
            return _Download(url, partial, expected, dict(headers), session, policy, progress_every, guard, settings, failures).run(plan)
        except _Restart as exc:
            log.info("%s: %s: starting over", redact(url), exc)
            partial.discard()
        except _SingleStream as exc:
            log.info("%s: %s: one stream instead of %d connections", redact(url), exc, settings.connections)
            partial.discard()
            return None
    raise FetchError(f"{redact(url)}: upstream kept changing during the download ({policy.attempts} attempts)")


class _SingleStream(Exception):
    """The server cannot serve pieces (no Range, no length, no validator, a page)."""


def _make_room(session: requests.Session, connections: int) -> None:
    """requests keeps 10 connections per host: with more, each piece would open a connection
    and throw it away (urllib3's "pool is full" warning)."""
    for scheme in ("http://", "https://"):
        if getattr(session.get_adapter(scheme), "_pool_maxsize", connections) < connections:
            session.mount(scheme, requests.adapters.HTTPAdapter(pool_maxsize=connections))


def _size_of(path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


class _Download:
    """One segmented attempt: the connections' threads, and the calling thread hashing."""

    def __init__(self, url, partial, expected, headers, session, policy, progress_every, guard, settings: Segmenting, failures: Callable[[], int]):
        self.url, self.partial, self.expected, self.headers = url, partial, expected, headers
        self.session, self.policy, self.guard, self.settings = session, policy, guard, settings
        _make_room(session, settings.connections)
        self.progress_every = progress_every
        self.stop = threading.Event()
        self.failures = failures
        self.errors: list[BaseException] = []
        self.open_responses: set[requests.Response] = set()
        self.lock = threading.Lock()
        self.plan: _Plan
        self.fd = -1

    # -- the calling thread -------------------------------------------------------------
    def run(self, plan: _Plan | None) -> tuple[MultiHasher, Mapping[str, str]]:
        self.guard()
        resumed = plan is not None
        first: tuple[_Piece | None, requests.Response | None] = (None, None)
        if plan is None or not plan.complete():
            plan = plan or _Plan(self.expected.size, "", [], 0)
            piece = plan.claim(self.settings.connections, self.settings.min_piece)
            first = (piece, with_retries(redact(self.url), self.policy, lambda: self._open_first(plan, piece), hint=self._kept, failures=self.failures))
        else:  # every byte is on disk already (stopped between the last write and the rename)
            self.first_headers = {"ETag" if plan.validator.startswith('"') else "Last-Modified": plan.validator}
        self.plan = plan
        self.progress = Progress(self.partial.path.name.removesuffix(".part"), plan.size, self.progress_every)
        self.fd = os.open(self.partial.path, os.O_RDWR | os.O_CREAT | (0 if resumed else os.O_TRUNC), 0o644)
        threads: list[threading.Thread] = []
        try:
            if not resumed:
                os.ftruncate(self.fd, plan.size)  # sparse: the pieces fill it in place
            self._save()
            if first[0] is not None:
                # The first connection goes on with the first answer; the others take pieces.
                threads = [threading.Thread(target=self._connection, args=first if n == 0 else (None, None), name=f"vlmdata-segment-{n}", daemon=True)
                           for n in range(self.settings.connections)]
                first = (None, None)
                for thread in threads:
                    thread.start()
            return self._hash_while(threads), self.first_headers
        finally:
            if first[1] is not None:
                first[1].close()
            self._halt(threads)
            os.close(self.fd)
            if not any(isinstance(e, _Restart) for e in self.errors):
                self._save(final=True)

    def _open_first(self, plan: _Plan, piece: _Piece) -> requests.Response:
        """The first request tells whether the server serves pieces; its answer then feeds the
        first connection, so it costs no extra round trip."""
        response = self._request(piece, plan.validator or None)
        try:
            raise_for_status(response, self.url)
            status, h = response.status_code, response.headers
            if status == 200:
                if plan.validator:
                    raise _Restart("the server sent the whole file for a resumed piece (upstream changed, or Range is no longer honoured)")
                raise _SingleStream("the server does not answer Range requests")
            if status != 206:
                raise _SingleStream(f"HTTP {status} to a Range request")
            validator = validator_of(h)
            if h.get("Content-Type", "").startswith("text/html") or body_length(h) is None:
                raise _SingleStream("the answer is not the file's plain bytes (an HTML page, an encoding or no length)")
            if not validator:
                raise _SingleStream("no ETag or Last-Modified to keep the pieces one version")
            if plan.validator and validator != plan.validator:
                raise _Restart("another version upstream")
            if content_range_start(h.get("Content-Range")) != piece.position or content_range_total(h.get("Content-Range")) != plan.size:
                if plan.validator:
                    raise _Restart(f"the answer's range {h.get('Content-Range')!r} is not the file on disk")
                raise _SingleStream(f"the answer's range {h.get('Content-Range')!r} does not match the expected size {plan.size}")
        except BaseException:
            response.close()
            raise
        plan.validator = validator
        self.first_headers = h
        return response

    def _hash_while(self, threads: list[threading.Thread]) -> MultiHasher:
        """Hash the prefix as the connections extend it; save the state now and then."""
        hasher = MultiHasher(self.expected)
        buffer = bytearray(1 << 20)
        view = memoryview(buffer)
        saved = time.monotonic()
        plan = self.plan
        while True:
            with plan.changed:
                plan.changed.wait_for(lambda: plan.prefix() > hasher.count or not any(t.is_alive() for t in threads), timeout=0.5)
                ready, written = plan.prefix(), plan.written()
            while hasher.count < ready:
                n = os.preadv(self.fd, [view[: min(len(buffer), ready - hasher.count)]], hasher.count)
                if n <= 0:
                    raise FetchError(f"{self.partial.path}: the partial file is shorter than the bytes written into it")
                hasher.update(view[:n])
            self.progress.update(written)
            if self.errors:
                raise self.errors[0]
            if hasher.count == plan.size:
                self.progress.update(written, force=True)
                return hasher
            if not any(t.is_alive() for t in threads) and plan.prefix() == hasher.count:
                raise FetchError(f"{redact(self.url)}: the connections stopped with {plan.size - plan.written()} bytes missing")
            if time.monotonic() - saved >= SAVE_EVERY:
                self._save()
                saved = time.monotonic()

    def _save(self, final: bool = False) -> None:
        """Write the state atomically; never after the lease is lost (someone else's now)."""
        try:
            self.guard()
        except Exception:
            if final:
                return
            raise
        temporary = self.partial.segments.with_name(f"{self.partial.segments.name}.{uuid.uuid4().hex}.tmp")  # unique, even across hosts
        temporary.write_text(self.plan.encode(self.url))
        os.replace(temporary, self.partial.segments)

    def _halt(self, threads: list[threading.Thread]) -> None:
        """Stop every connection and wait for it: a stalled read is cut short by shutting the
        socket down (closing it would not wake the reading thread)."""
        self.stop.set()
        with self.lock:
            responses = list(self.open_responses)
        for response in responses:
            sock = getattr(getattr(response.raw, "connection", None), "sock", None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        for thread in threads:
            thread.join()

    # -- the connections ----------------------------------------------------------------
    def _connection(self, piece: _Piece | None, response: requests.Response | None) -> None:
        try:
            while not self.stop.is_set():
                if piece is None:
                    piece = self.plan.claim(self.settings.connections, self.settings.min_piece)
                    if piece is None:
                        return
                handed = [response] if response is not None else []
                response = None
                what = f"{redact(self.url)} bytes {piece.position}-{piece.end - 1}"
                try:
                    with_retries(what, self.policy, lambda p=piece, h=handed: self._fetch_piece(p, h.pop() if h else None), hint=self._kept, sleep=self._pause, failures=self.failures)
                finally:
                    self.plan.release(piece)
                    for r in handed:
                        r.close()
                piece = None
        except _Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread, which raises it
            with self.lock:
                self.errors.append(exc)
            self.stop.set()
        finally:
            with self.plan.changed:
                self.plan.changed.notify_all()  # the calling thread watches the connections end

    def _kept(self) -> str:
        """The end of a giving-up message: what is left on disk."""
        if self.partial.segments.exists():
            return ". The partial file and its segment state are kept; re-running resumes each piece."
        return ". Nothing was downloaded."

    def _pause(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            raise _Stopped

    def _request(self, piece: _Piece, validator: str | None) -> requests.Response:
        headers = {**self.headers, "Range": f"bytes={piece.position}-{piece.end - 1}"}
        if validator:
            headers["If-Range"] = validator
        return self.session.get(self.url, headers=headers, stream=True, timeout=(self.policy.connect_timeout, self.policy.read_timeout))

    def _fetch_piece(self, piece: _Piece, response: requests.Response | None) -> None:
        if self.stop.is_set():
            raise _Stopped
        self.guard()
        response = response or self._request(piece, self.plan.validator)
        with self.lock:
            self.open_responses.add(response)
        try:
            with response:
                self._check(piece, response)
                for chunk in response.iter_content(CHUNK):
                    if self.stop.is_set():
                        raise _Stopped
                    self.guard()
                    length = self.plan.room(piece, len(chunk))
                    self._write(chunk, length, piece.position)
                    if self.plan.advance(piece, length) or piece.left <= 0:
                        return  # finished, or the rest was split off to another connection
                if piece.left > 0:
                    raise Transient(f"connection closed {piece.left} bytes before the end of the piece")
        except requests.RequestException:
            if self.stop.is_set():
                raise _Stopped from None  # we cut it short ourselves
            raise
        finally:
            with self.lock:
                self.open_responses.discard(response)

    def _check(self, piece: _Piece, response: requests.Response) -> None:
        status, h = response.status_code, response.headers
        if status in (200, 416):
            raise _Restart(f"HTTP {status} to If-Range with {self.plan.validator}: upstream changed during the download")
        raise_for_status(response, self.url, ok=(206,))
        if h.get("Content-Type", "").startswith("text/html"):
            raise Transient("an HTML page instead of the file's bytes")
        if content_range_total(h.get("Content-Range")) != self.plan.size:
            raise _Restart(f"the file is now {content_range_total(h.get('Content-Range'))} bytes long, not {self.plan.size}")
        if content_range_start(h.get("Content-Range")) != piece.position:
            raise FetchError(f"{redact(self.url)}: asked for bytes from {piece.position}, got {h.get('Content-Range')!r}")

    def _write(self, chunk: bytes, length: int, offset: int) -> None:
        view = memoryview(chunk)[:length]
        try:
            while view:
                written = os.pwrite(self.fd, view, offset)
                view, offset = view[written:], offset + written
        except OSError as exc:
            raise_if_disk_full(exc, str(self.partial.path), partial_kept=True)
            raise
