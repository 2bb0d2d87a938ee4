"""Fetch only the members of a remote zip that are needed, by HTTP Range requests.

A zip's central directory sits at its end and gives every member's offset, sizes and CRC-32,
so the members a recipe needs can be fetched alone (issue 13): :func:`fetch_members` reads
the end of the archive (the end of central directory record, zip64's included, and the
central directory: Python's ``zipfile`` parses them from a :class:`~.http.RangeReader`), vets
every member exactly as a full extraction does (``extract.plan``: paths, links, collisions,
bombs, limits), picks the wanted members the storage lacks, fetches them in coalesced ranges
(:class:`Coalescing`: neighbours closer than ``max_gap`` share a request; the request count
and the bytes read that nobody wanted are bounded) and writes them through
``extract.write_zip_members``: the writer of a whole extraction, so zipfile checks each
member's local header, CRC-32 and size against the central directory before the storage's
atomic write puts it at its final path.

The archive's own sha256 cannot be checked this way; :class:`PartialZip` says what was
(``manifest.PartialRead``). A later call with more wanted members fetches only those still
missing. A server that answers a Range request with the whole file raises
:class:`~.http.RangeNotSupported`: the caller downloads the whole archive instead.
"""

from __future__ import annotations

import io
import logging
import zipfile
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import requests

from ..annotations import image_paths
from ..catalog import Extract
from ..extract import Limits, Member, open_zip, plan, write_zip_members
from ..manifest import PartialRead
from ..storage import Storage
from .http import FetchError, RangeNotSupported, RangeReader, RetryPolicy, redact

__all__ = ["Coalescing", "PartialZip", "RangeNotSupported", "TooScattered", "coalesce", "fetch_members", "wanted_members"]

log = logging.getLogger("vlmdata.fetch")

# The first read: the end of central directory record (22 bytes), zip64's locator and record
# (20 + 56) and, for a small archive, the central directory too. A longer archive comment or
# directory costs one more request.
TAIL = 16 * 1024
_LOCAL_HEADER = 30  # bytes of a local file header before its name and extra field


class TooScattered(FetchError):
    """The wanted members lie so scattered that fetching them would break a :class:`Coalescing`
    bound: the caller downloads the whole archive instead."""


@dataclass(frozen=True)
class Coalescing:
    """How member byte ranges become requests.

    Neighbouring members closer than ``max_gap`` bytes are fetched in one request (on a real
    link a gap that small is cheaper to read than a round trip). When the ranges still number
    more than ``max_requests``, the smallest gaps are merged too, as long as the bytes read
    for nobody stay within ``max_over_read`` times the wanted members' bytes; if that is not
    enough, :class:`TooScattered`. A request holds at most ``max_range`` bytes in memory; a
    member longer than that streams in ``stream_chunk`` requests of its own. ``workers``
    requests run at once, fetching ahead of the writes (a request mostly waits for its round
    trip: bench ``partial_zip``), so at most ``workers + 1`` ranges are held at a time.
    """

    max_gap: int = 64 * 1024
    max_requests: int = 10_000
    max_over_read: float = 0.5
    max_range: int = 16 << 20
    stream_chunk: int = 8 << 20
    workers: int = 8


@dataclass(frozen=True)
class Span:
    """The bytes of one member in the archive: local header, data and any data descriptor."""

    start: int
    end: int  # exclusive: where the next member (or the central directory) begins
    member: Member


@dataclass
class Range:
    start: int
    end: int
    spans: list[Span] = field(default_factory=list)


def coalesce(spans: list[Span], rules: Coalescing = Coalescing()) -> list[Range]:
    """Group spans (sorted by offset) into the ranges to request, smallest gaps merged first."""
    if not spans:
        return []
    wanted = sum(span.end - span.start for span in spans)
    budget = rules.max_over_read * wanted
    # Groups of neighbours: the group starting at span g ends at span last[g]; group_of[e] is
    # the first span of the group ending at e. Gap i lies between the group ending at span i
    # and the one starting at span i + 1.
    last, group_of = list(range(len(spans))), list(range(len(spans)))
    count, over_read = len(spans), 0
    for i in sorted(range(len(spans) - 1), key=lambda i: spans[i + 1].start - spans[i].end):
        gap = spans[i + 1].start - spans[i].end
        if gap > rules.max_gap and count <= rules.max_requests:
            break  # every remaining gap is larger still
        left = group_of[i]
        if spans[last[i + 1]].end - spans[left].start > rules.max_range or over_read + gap > budget:
            continue
        last[left] = last[i + 1]
        group_of[last[left]] = left
        count -= 1
        over_read += gap
    if count > rules.max_requests:
        raise TooScattered(f"the {len(spans)} wanted members would take {count} requests, more than the limit of {rules.max_requests}, "
                           f"within an over-read of {rules.max_over_read:.0%} of their {wanted} bytes: download the whole archive instead")
    ranges, i = [], 0
    while i < len(spans):
        j = last[i]
        ranges.append(Range(spans[i].start, spans[j].end, spans[i : j + 1]))
        i = j + 1
    return ranges


class _ArchiveReader(RangeReader):
    """A :class:`RangeReader` that also reads to the end when that is near (``zipfile`` reads
    the end of central directory record and a comment that way), never the whole archive."""

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            remaining = (self.size or 0) - self._pos
            if remaining > TAIL + (1 << 16):  # the largest comment zipfile searches
                raise io.UnsupportedOperation(f"refusing to read {remaining} bytes to the end of a remote archive")
            size = remaining
        return super().read(size)

    def hold(self, start: int, data: bytes) -> None:
        """Serve the reads within ``start`` to ``start + len(data) - 1`` from ``data`` (fetched
        by :class:`_RangesAhead`)."""
        self._buffer, self._buffer_start = data, start


class _RangesAhead:
    """Fetches the ranges, in order, ``workers`` requests at a time, ahead of the reader that
    zipfile reads: :meth:`load` hands a range's bytes to it when the writes reach it.

    Each request is a :class:`RangeReader` of its own carrying the archive's validator as
    If-Range, so a file that changes meanwhile fails the read as it does in one reader.
    """

    def __init__(self, reader: _ArchiveReader, ranges: list[Range], rules: Coalescing, session: requests.Session, policy: RetryPolicy):
        self.reader, self.session, self.policy = reader, session, policy
        self.waiting = deque(r for r in ranges if r.end - r.start <= rules.max_range)  # longer ones stream through the reader
        self.pending: deque[tuple[Range, Future]] = deque()
        self.pool = ThreadPoolExecutor(max(1, rules.workers), thread_name_prefix="zip-ranges")
        self.workers, self.max_range = max(1, rules.workers), rules.max_range
        self.requests = self.received = 0
        self.held: Range | None = None

    def __enter__(self) -> _RangesAhead:
        return self

    def __exit__(self, *exc) -> None:
        for _range, future in self.pending:
            future.cancel()
        self.pool.shutdown(wait=True, cancel_futures=True)

    def load(self, r: Range) -> None:
        if r is self.held or r.end - r.start > self.max_range:  # held already, or streams through the reader
            return
        self._submit()
        head, future = self.pending.popleft()
        assert head is r, "ranges are loaded in the order they were planned"
        data, requests_made, received = future.result()
        self.requests += requests_made
        self.received += received
        self.reader.hold(r.start, data)
        self.held = r
        self._submit()

    def _submit(self) -> None:
        while self.waiting and len(self.pending) < self.workers:
            r = self.waiting.popleft()
            self.pending.append((r, self.pool.submit(self._fetch, r)))

    def _fetch(self, r: Range) -> tuple[bytes, int, int]:
        part = RangeReader(self.reader.url, session=self.session, policy=self.policy)
        part.size, part.validator = self.reader.size, self.reader.validator
        part.seek(r.start)
        data = part.read(r.end - r.start)
        return data, part.requests, part.received


@dataclass
class PartialZip:
    """What :func:`fetch_members` did. ``index`` (``[[key, size, crc32], ...]``, the format of a
    full extraction's) lists every member of the archive now on the storage."""

    url: str
    archive_size: int
    validator: str | None
    members_in_archive: int
    wanted: int
    not_in_archive: list[str]  # wanted paths the archive does not hold (another archive may)
    fetched: int
    requests: int
    bytes_moved: int
    index: list[list]
    paths: list[str] = field(default_factory=list)  # every member of the archive (extraction-folder paths): what it holds

    def record(self) -> PartialRead:
        """The manifest's account of this read (``ArtifactRecord.partial``)."""
        return PartialRead(archive_size=self.archive_size, validator=self.validator, members_in_archive=self.members_in_archive,
                           members_present=len(self.index), members_fetched=self.fetched, bytes_moved=self.bytes_moved, requests=self.requests)


def fetch_members(url: str, wanted: Iterable[str] | None, storage: Storage, folder: str, spec: Extract, *, skip_present: bool = True, limits: Limits = Limits(),
                  coalescing: Coalescing = Coalescing(), session: requests.Session | None = None, policy: RetryPolicy = RetryPolicy(),
                  guard: Callable[[], None] = lambda: None, name: str | None = None) -> PartialZip:
    """Fetch the ``wanted`` members of the zip at ``url`` into ``folder`` (a storage key).

    ``wanted`` are paths relative to the extraction folder, where ``spec`` (strip_components,
    flatten, include) puts members: :func:`wanted_members` derives them from annotation
    records; None: every member (the rest of an archive read in part before). Members already on the storage with their size are not fetched again
    (``skip_present``; off when the upstream archive changed since they were written).
    Raises :class:`RangeNotSupported` or :class:`TooScattered` (download the whole archive
    instead), ``extract.UnsafeArchive`` when any member of the archive, wanted or not, would
    be refused by a full extraction, and ``zipfile.BadZipFile`` for a corrupt directory or
    member (a bad CRC-32 or size names the member; no file reaches its final path).
    """
    name = name or urlsplit(url).path.rsplit("/", 1)[-1] or "archive.zip"
    session = session or requests.Session()
    reader = _ArchiveReader(url, session=session, policy=policy)
    reader.seek(0, io.SEEK_END)  # one byte asked: the answer says the size
    reader.prefetch(max(0, reader.size - TAIL), min(TAIL, reader.size))
    with open_zip(reader, name) as archive:
        members = plan(archive, spec, limits)
        by_path = {member.path: member for member in members}
        wanted = set(by_path) if wanted is None else set(wanted)
        present = dict(storage.list(folder)) if skip_present else {}
        missing = [by_path[path] for path in wanted if path in by_path and present.get(f"{folder}/{path}") != by_path[path].size]
        ranges = coalesce(_spans(archive, missing), coalescing)
        log.info("%s: %d of %d members wanted, %d missing: %d requests for %d bytes", name, len(wanted), len(members), len(missing),
                 len(ranges), sum(r.end - r.start for r in ranges))
        range_of = {span.member.info: r for r in ranges for span in r.spans}
        reader.readahead = coalescing.stream_chunk  # a member larger than max_range streams in chunks
        with _RangesAhead(reader, ranges, coalescing, session, policy) as ahead:

            def open_member(info: zipfile.ZipInfo):
                ahead.load(range_of[info])
                return archive.open(info)

            order = [span.member for r in ranges for span in r.spans]
            fetched = write_zip_members(name, archive, order, storage, folder, skip_present=False, guard=guard, open_member=open_member)
    on_storage = {key for key, _size, _crc in fetched} | {f"{folder}/{m.path}" for m in members if present.get(f"{folder}/{m.path}") == m.size}
    index = [[f"{folder}/{m.path}", m.size, m.info.CRC] for m in members if f"{folder}/{m.path}" in on_storage]
    result = PartialZip(redact(url), reader.size, reader.validator, len(members), len(wanted), sorted(wanted - by_path.keys()), len(fetched),
                        reader.requests + ahead.requests, reader.received + ahead.received, index, [m.path for m in members])
    log.info("%s: fetched %d members (%d bytes in %d requests); %d of %d members on the storage", name, result.fetched, result.bytes_moved,
             result.requests, len(index), len(members))
    return result


def _spans(archive: zipfile.ZipFile, members: list[Member]) -> list[Span]:
    """Each member's bytes: from its local header to the next member's (or the central
    directory), so the local header's real length (read from the data by zipfile) and a data
    descriptor after the data are inside, whatever the central directory says of them."""
    starts = sorted({info.header_offset for info in archive.infolist()} | {archive.start_dir})
    following = dict(zip(starts, starts[1:]))
    spans = []
    for member in sorted(members, key=lambda m: m.info.header_offset):
        start = member.info.header_offset
        end = following.get(start, archive.start_dir)
        if end - start < _LOCAL_HEADER + member.info.compress_size:
            raise zipfile.BadZipFile(f"member {member.name!r}: its {member.info.compress_size} bytes overlap the next member or the central directory")
        spans.append(Span(start, end, member))
    return spans


def wanted_members(records: Iterable[Mapping], image_folder: str, into: str, links: Mapping[str, str] | None = None) -> list[str]:
    """The paths, relative to the extraction folder ``into`` (both folders of the data tree),
    of the images annotation records reference: the ``wanted`` of :func:`fetch_members`.

    ``image_folder`` is what the records' paths are relative to; ``links`` (an annotation's
    ``{folder the records expect: folder holding the files}``) maps them first. Images
    elsewhere are left out.
    """
    prefix = into.rstrip("/") + "/"
    found = {}
    for path in image_paths(records, image_folder):
        for expected, actual in (links or {}).items():
            if path.startswith(expected.rstrip("/") + "/"):
                path = actual.rstrip("/") + path[len(expected.rstrip("/")):]
                break
        if path.startswith(prefix):
            found[path[len(prefix):]] = None
    return list(found)
