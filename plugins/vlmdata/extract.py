"""Safe extraction of zip and tar archives into the data tree.

Every member is checked before a single byte is written, so a hostile archive leaves
nothing behind: no absolute paths or ``..``, no links or device files, a bounded member
count and total size, and a bounded compression ratio (zip and gzip bombs). Each member is
written through the storage's atomic write, and members already present with the right size
are skipped, so an extraction killed half-way resumes where it stopped.

Python's ``zipfile`` rather than ``unzip``: it is faster here (docs/facts.md, bench ``extraction``:
~900 vs 600 files/s), reads the central directory we must vet anyway, and stops at each member's
declared size and checks its CRC, so a lying header cannot make it write more.

Tars (SA-1B's shards) go through ``tarfile`` with the same vetting, which is at least as strict
as tarfile's ``data`` extraction filter (that filter allows links that stay inside the folder;
we allow none) and is followed by the filter itself as a second opinion. Members are read
with ``extractfile`` and written through the storage, never by ``tarfile.extract``. A tar has
no per-member checksum: its index entries carry ``None`` where a zip's carry the CRC-32.

A big zip (:data:`PARALLEL_MIN_MEMBERS` members or :data:`PARALLEL_MIN_BYTES` to write) is
extracted by one process per core (:func:`_write_zip_parallel`): its members are independent,
so each process opens the archive itself and writes a contiguous range of them, while this
process keeps what must stay single: the vetting of the whole central directory before any
write, the listing of what is already present, the lease, and the index (built from the plan,
so it is the serial one byte for byte). Within a process, and for tars (read in one stream),
the archive is read in one thread. On S3 small members are handed to writer threads
(:class:`_Writers`): each is a PUT, mostly waiting for the round trip. On a local disk they are
written in the reading thread: threads were measured no faster there (bench ``extraction``).
"""

from __future__ import annotations

import bz2
import fnmatch
import gzip
import logging
import lzma
import math
import multiprocessing
import os
import stat
import tarfile
import time
import zipfile
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .catalog import Extract
from .lease import LeaseLost, valid_until
from .progress import Progress
from .storage import Storage

log = logging.getLogger("vlmdata.extract")

_COMPRESSED = (gzip.GzipFile, bz2.BZ2File, lzma.LZMAFile)
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


class UnsafeArchive(ValueError):
    """The archive would write outside its folder, or is a bomb; nothing was extracted."""


class NotAnArchive(ValueError):
    """Neither a zip nor a tar (an HTML error page saved under the archive's name, say)."""


@dataclass(frozen=True)
class Limits:
    max_members: int = 5_000_000
    max_total_bytes: int = 2 * 1024**4  # 2 TiB: ten times the largest upstream archive
    max_ratio: float = 200.0  # uncompressed/compressed per member; JPEG archives are ~1.0
    # File systems refuse a name over 255 bytes, and a write goes through a temporary name
    # 26 bytes longer; S3 refuses a key over 1,024 bytes, and the root and folder come first.
    max_name_bytes: int = 255 - 26
    max_path_bytes: int = 768


@dataclass(frozen=True)
class Member:
    info: zipfile.ZipInfo | tarfile.TarInfo
    path: str  # relative to the extraction folder

    @property
    def name(self) -> str:
        return self.info.filename if isinstance(self.info, zipfile.ZipInfo) else self.info.name

    @property
    def size(self) -> int:
        return self.info.file_size if isinstance(self.info, zipfile.ZipInfo) else self.info.size


# What a member is, whatever the archive format: the vetting below decides on these.
FILE, DIR, SYMLINK, HARDLINK, SPECIAL = "file", "dir", "symbolic link", "hard link", "special file"


def vet_member(name: str, kind: str, spec: Extract, detail: str = "") -> str | None:
    """Where a member lands (relative to the extraction folder), or None when it is skipped.

    The one vetting of member names and types for zip and tar alike. Raises UnsafeArchive for
    a backslash, an absolute path or drive letter, a ``..`` part, a link or a special file;
    folders and members that ``strip_components`` empties or ``include`` excludes are skipped.
    """
    if "\\" in name:
        raise UnsafeArchive(f"member {name!r}: backslash in a member name")
    path = PurePosixPath(name)
    if path.is_absolute() or (path.parts and ":" in path.parts[0]):
        raise UnsafeArchive(f"member {name!r}: absolute path")
    if ".." in path.parts:
        raise UnsafeArchive(f"member {name!r}: '..' would escape the extraction folder")
    if kind in (SYMLINK, HARDLINK, SPECIAL):
        raise UnsafeArchive(f"member {name!r}: {kind}{f' ({detail})' if detail else ''}")
    if kind == DIR:
        return None
    parts = path.parts[spec.strip_components:]  # PurePosixPath has already dropped '.' parts
    if not parts:
        return None
    if spec.flatten:
        parts = parts[-1:]
    relative = "/".join(parts)
    if spec.include and not any(fnmatch.fnmatch(relative, pattern) for pattern in spec.include):
        return None
    return relative


def _zip_kind(info: zipfile.ZipInfo) -> tuple[str, str]:
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return SYMLINK, ""
    kind = stat.S_IFMT(mode)  # many zip writers store permission bits only: no type is a file
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
        return SPECIAL, f"mode {oct(mode)}"
    return (DIR if info.is_dir() else FILE), ""


def _tar_kind(info: tarfile.TarInfo) -> tuple[str, str]:
    if info.issym():
        return SYMLINK, f"to {info.linkname!r}"
    if info.islnk():
        return HARDLINK, f"to {info.linkname!r}"
    if info.isdir():
        return DIR, ""
    if info.isreg():  # regular, contiguous and sparse files
        return FILE, ""
    kinds = {tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device", tarfile.FIFOTYPE: "fifo"}
    return SPECIAL, kinds.get(info.type, f"tar type {info.type!r}")


class _Planner:
    """Collects vetted members; refuses collisions, names too long to write and totals over the
    limits: everything that would otherwise fail half-way through the writes."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.members: list[Member] = []
        self.seen: dict[str, str] = {}
        self.folders: dict[str, str] = {}  # folder a member needs -> that member
        self.total = 0

    def add(self, info, name: str, relative: str | None, size: int) -> None:
        if relative is None:
            return
        if relative in self.seen:
            raise UnsafeArchive(f"members {self.seen[relative]!r} and {name!r} both land at {relative!r}")
        if relative in self.folders:
            raise UnsafeArchive(f"member {name!r} lands at {relative!r}, which member {self.folders[relative]!r} needs as a folder")
        self._check_length(name, relative)
        parts = relative.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if folder in self.seen:
                raise UnsafeArchive(f"member {name!r} needs {folder!r} as a folder, where member {self.seen[folder]!r} is a file")
            self.folders.setdefault(folder, name)
        self.seen[relative] = name
        self.total += size
        if self.total > self.limits.max_total_bytes:
            raise UnsafeArchive(f"uncompressed size exceeds the limit of {self.limits.max_total_bytes} bytes")
        self.members.append(Member(info, relative))

    def _check_length(self, name: str, relative: str) -> None:
        if len(relative.encode()) > self.limits.max_path_bytes:
            raise UnsafeArchive(f"member {name[:80]!r}...: its path is {len(relative.encode())} bytes, over the limit of {self.limits.max_path_bytes}")
        for part in relative.split("/"):
            if len(part.encode()) > self.limits.max_name_bytes:
                raise UnsafeArchive(f"member {name[:80]!r}...: a name of {len(part.encode())} bytes, over the limit of {self.limits.max_name_bytes} a file system allows")


def plan(archive: zipfile.ZipFile, spec: Extract, limits: Limits = Limits()) -> list[Member]:
    """Vet every zip member and decide where it lands. Raises UnsafeArchive before any write."""
    infos = archive.infolist()
    if len(infos) > limits.max_members:
        raise UnsafeArchive(f"{len(infos)} members, more than the limit of {limits.max_members}")
    planner = _Planner(limits)
    for info in infos:
        kind, detail = _zip_kind(info)
        relative = vet_member(info.filename, kind, spec, detail)
        if relative is not None and info.file_size > 1024 * 1024 and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            raise UnsafeArchive(f"member {info.filename!r}: compression ratio {info.file_size / max(info.compress_size, 1):.0f} looks like a zip bomb")
        planner.add(info, info.filename, relative, info.file_size)
    return planner.members


def plan_tar(archive: tarfile.TarFile, spec: Extract, limits: Limits = Limits(), *, archive_size: int | None = None) -> list[Member]:
    """Vet every tar member and decide where it lands. Raises UnsafeArchive before any write.

    Reads the headers one by one (a tar has no central directory), so the member-count limit
    stops a hostile archive before its whole list is in memory. ``archive_size`` (the file's
    size on disk) enables two more checks: a compressed tar whose declared contents exceed
    ``max_ratio`` times it is a bomb; an uncompressed tar whose members run past it is cut.
    """
    compressed = isinstance(archive.fileobj, _COMPRESSED)
    planner = _Planner(limits)
    count = declared = 0
    for info in _iter_tar(archive):
        count += 1
        if count > limits.max_members:
            raise UnsafeArchive(f"more than the limit of {limits.max_members} members")
        kind, detail = _tar_kind(info)
        relative = vet_member(info.name, kind, spec, detail)
        if kind == FILE:
            _data_filter(info)
            declared += info.size
            if archive_size is not None and compressed and declared > 1024 * 1024 and declared > limits.max_ratio * max(archive_size, 1):
                raise UnsafeArchive(f"member {info.name!r}: the members declare {declared} bytes from a {archive_size}-byte compressed archive: looks like a decompression bomb")
            if archive_size is not None and not compressed and not info.issparse() and info.offset_data + info.size > archive_size:
                raise tarfile.ReadError(f"member {info.name!r} ends past the end of the archive: the tar is cut")
        planner.add(info, info.name, relative, info.size)
    # tarfile takes a header cut short for the end of the archive: a whole tar ends with two
    # zero blocks after its last member, so fewer bytes left than that means it was cut.
    if archive_size is not None and not compressed and archive_size - archive.offset < 2 * tarfile.BLOCKSIZE:
        raise tarfile.ReadError(f"the tar is cut: {archive_size - archive.offset} bytes after the last whole member, "
                                f"where a complete archive has its {2 * tarfile.BLOCKSIZE}-byte end marker")
    return planner.members


def _iter_tar(archive: tarfile.TarFile) -> Iterable[tarfile.TarInfo]:
    try:
        yield from archive
    except (EOFError, OSError, zlib.error, lzma.LZMAError) as exc:  # a cut or corrupt compressed stream
        raise tarfile.ReadError(f"unreadable tar ({type(exc).__name__}: {exc})") from exc


def _data_filter(info: tarfile.TarInfo) -> None:
    """tarfile's own ``data`` filter as a second opinion (Python 3.11.4+); our vetting came first."""
    data_filter = getattr(tarfile, "data_filter", None)
    if data_filter is None:
        return
    try:
        data_filter(info, "/vlmdata-extraction-folder")  # a nominal folder: nothing is written there
    except tarfile.FilterError as exc:
        raise UnsafeArchive(f"member {info.name!r}: refused by tarfile's data filter: {exc}") from exc


class _Writers:
    """Writes members through ``storage.write_threads`` threads (S3: a PUT per member, which
    threads overlap; a local disk: one, the caller's), at most two writes per thread and
    ``max_pending`` bytes in flight, so reading stays just ahead of writing.

    A member up to ``inline_above`` bytes is read whole here, in the caller's thread (so a bad
    CRC or a cut archive still raises where the caller catches it), and written by a worker;
    a bigger one is streamed in the caller's thread. A worker's error is raised by the next
    :meth:`write` or on leaving the block. Leaving on an error drops the writes not started;
    leaving always waits for those running.
    """

    def __init__(self, storage: Storage, workers: int | None = None, inline_above: int = 16 << 20, max_pending: int = 256 << 20):
        workers = workers or storage.write_threads
        self.storage, self.inline_above, self.max_pending = storage, inline_above, max_pending
        self.max_queued = 2 * workers
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="extract-write") if workers > 1 else None
        self.pending: deque[tuple[Future, int]] = deque()
        self.pending_bytes = 0

    def __enter__(self) -> _Writers:
        return self

    def __exit__(self, kind, exc, tb) -> None:
        try:
            if kind is not None:
                for future, _size in self.pending:
                    future.cancel()
            while self.pending:
                self._wait_oldest(raise_error=kind is None)
        finally:
            if self.pool:
                self.pool.shutdown(wait=True, cancel_futures=True)

    def write(self, key: str, source, size: int) -> None:
        if self.pool is None or size > self.inline_above:
            self.storage.write_stream(key, source)
            return
        while self.pending and (self.pending[0][0].done() or len(self.pending) >= self.max_queued or self.pending_bytes + size > self.max_pending):
            self._wait_oldest()
        data = source.read()
        self.pending.append((self.pool.submit(self.storage.write_bytes, key, data), len(data)))
        self.pending_bytes += len(data)

    def _wait_oldest(self, raise_error: bool = True) -> None:
        future, size = self.pending.popleft()
        self.pending_bytes -= size
        error = None if future.cancelled() else future.exception()
        if error is not None and raise_error:
            raise error


def _write_members(archive_name: str, members: list[Member], open_member, checksum, storage: Storage, folder: str, skip_present: bool,
                   progress_every: float, data_errors: tuple, error_type: type[Exception], guard: Callable[[], None], report: bool = True) -> list[list]:
    """Write vetted members into ``folder``, skipping those already present with their size;
    return the index ``[[key, size, checksum], ...]``. A data error while reading a member
    becomes ``error_type`` naming the archive and the member. ``report``: progress and the count
    at the end (a worker process writing a range of the members leaves them to its parent)."""
    present = dict(storage.list(folder)) if skip_present else {}  # what an interrupted run already wrote
    index, written, skipped = [], 0, 0
    progress = Progress(archive_name, len(members), progress_every, log.info, unit="members", detail=lambda: f"{written} written, {skipped} already present") if report else None
    with progress or nullcontext(), _Writers(storage) as writers:
        for number, member in enumerate(members, 1):
            key = f"{folder}/{member.path}"
            if present.get(key) != member.size:
                guard()
                try:
                    with open_member(member.info) as source:
                        writers.write(key, source, member.size)
                except data_errors as exc:
                    raise error_type(f"{archive_name}: member {member.name!r}: {exc}") from exc
                written += 1
            else:
                skipped += 1
            index.append([key, member.size, checksum(member)])
            if progress:
                progress.update(number)
    if report:
        log.info("%s: extracted %d members into %s (%d written, %d already present)", archive_name, len(members), folder, written, skipped)
    return index


def extract_zip(archive_path: Path, storage: Storage, folder: str, spec: Extract, *, skip_present: bool = True, limits: Limits = Limits(), progress_every: float = 10.0,
                guard: Callable[[], None] = lambda: None, processes: int | None = None) -> list[list]:
    """Extract into ``folder`` (a storage key); return the index ``[[path, size, crc32], ...]``.

    Paths in the index are relative to the storage root. Corrupt members (bad CRC) raise
    ``zipfile.BadZipFile`` naming the member; what was written before stays valid and is
    skipped on the next run (``skip_present``; off when a new upstream version replaces an old one).
    A big archive is written by ``processes`` processes (default :func:`extract_processes`;
    1: in this one), with the same files, index and errors.
    """
    with open_zip(archive_path, archive_path.name) as archive:
        members = plan(archive, spec, limits)
        processes = extract_processes() if processes is None else processes
        if processes > 1 and (len(members) >= PARALLEL_MIN_MEMBERS or sum(member.size for member in members) >= PARALLEL_MIN_BYTES):
            return _write_zip_parallel(archive_path, members, storage, folder, processes, skip_present, progress_every, guard)
        return write_zip_members(archive_path.name, archive, members, storage, folder, skip_present=skip_present, progress_every=progress_every, guard=guard)


# Below these, one process: starting workers and reopening the archive in each costs more than
# a second core saves (bench ``extraction``: see docs/facts.md, "Extraction across processes").
PARALLEL_MIN_MEMBERS = 2_000
PARALLEL_MIN_BYTES = 256 << 20
# How often the parent renews what its workers may write under (the lease's deadline, a stop
# after a failure) and reports progress; a worker stops at the next member either way.
_RELAY_EVERY = 0.25


def extract_processes() -> int:
    """``VLMDATA_EXTRACT_PROCESSES`` (1: never in parallel), else the cores this process may use."""
    from .images import available_cores  # images imports Pillow: only when asked

    cores = available_cores()
    if cores == 1:  # one core, or a daemonic process (a Celery task): no children
        return 1
    return int(os.environ.get("VLMDATA_EXTRACT_PROCESSES") or 0) or cores


class _Stopped(Exception):
    """A worker stopped because its parent asked (another worker failed, or the parent is leaving)."""


_worker: dict = {}  # in a worker process: its archive, storage and the parent's shared signals


def _init_zip_worker(archive_path: Path, storage_spec: tuple, deadline, stop, done) -> None:
    from .storage import open_storage

    _worker.update(archive=open_zip(archive_path, archive_path.name), storage=open_storage(*storage_spec), deadline=deadline, stop=stop, done=done)


def _write_zip_range(slot: int, members: list[Member], folder: str) -> int:
    """In a worker process: write ``members`` (a contiguous range of the plan) as the serial
    path does (:func:`_write_members`), checking before each that the parent still holds the lease."""
    archive, deadline, stop, done = _worker["archive"], _worker["deadline"], _worker["stop"], _worker["done"]
    name = Path(archive.filename).name

    def guard() -> None:
        if stop.value:
            raise _Stopped()
        if time.monotonic() > deadline.value:  # the parent's lease was lost, or not renewed in time
            raise LeaseLost(f"{name}: the lease of this extraction was not confirmed in time; the worker process stops")
        done[slot] += 1  # called once before each member written: the parent's progress

    _write_members(name, members, archive.open, lambda m: m.info.CRC, _worker["storage"], folder, False, math.inf,
                   _ZIP_DATA_ERRORS, zipfile.BadZipFile, guard, report=False)
    return len(members)


def _ranges(members: list[Member], count: int) -> list[list[Member]]:
    """``count`` contiguous ranges of about equal work: bytes plus a fixed cost per file (creating
    a file costs about as much as writing 64 KiB here: docs/facts.md)."""
    weights = [member.info.compress_size + 64 * 1024 for member in members]
    share, ranges, start, acc = sum(weights) / count, [], 0, 0.0
    for number, weight in enumerate(weights):
        acc += weight
        if acc >= share * (len(ranges) + 1) and len(ranges) < count - 1:
            ranges.append(members[start:number + 1])
            start = number + 1
    ranges.append(members[start:])
    return [part for part in ranges if part]


def _write_zip_parallel(archive_path: Path, members: list[Member], storage: Storage, folder: str, processes: int, skip_present: bool,
                        progress_every: float, guard: Callable[[], None]) -> list[list]:
    """:func:`write_zip_members` across ``processes`` worker processes, each writing one range of
    the members not yet present (as the serial path, ``skip_present``). The lease stays here: every ``_RELAY_EVERY``
    seconds this process checks it and publishes until when the workers may write
    (:func:`vlmdata.lease.valid_until`), so a worker stops as the serial path would. A failed
    worker stops the others; the error of the first failed range is raised, naming its
    member; atomic writes leave nothing partial at a final path."""
    name = archive_path.name
    present = dict(storage.list(folder)) if skip_present else {}  # what an interrupted run already wrote
    todo = [member for member in members if present.get(f"{folder}/{member.path}") != member.size]
    index = [[f"{folder}/{member.path}", member.size, member.info.CRC] for member in members]  # the serial path's, in archive order
    if not todo:
        log.info("%s: all %d members already present in %s", name, len(members), folder)
        return index
    context = multiprocessing.get_context()
    guard()
    deadline = context.Value("d", valid_until(guard), lock=False)
    stop = context.Value("b", 0, lock=False)
    ranges = _ranges(todo, min(processes, len(todo)))
    done = context.Array("q", len(ranges), lock=False)
    skipped = len(members) - len(todo)
    progress = Progress(name, len(members), progress_every, log.info, unit="members", detail=lambda: f"{sum(done)} written, {skipped} already present")
    with progress, ProcessPoolExecutor(len(ranges), context, initializer=_init_zip_worker, initargs=(archive_path, storage.spec, deadline, stop, done)) as pool:
        futures = [pool.submit(_write_zip_range, slot, part, folder) for slot, part in enumerate(ranges)]
        try:
            pending = set(futures)
            while pending and not any(future.done() and future.exception() for future in futures):
                _, pending = wait(pending, timeout=_RELAY_EVERY, return_when=FIRST_EXCEPTION)
                progress.update(skipped + sum(done))
                guard()
                deadline.value = valid_until(guard)
        finally:
            stop.value = 1  # a failure or an exception here (the lease lost, a kill): the workers stop at their next member
    errors = [future.exception() for future in futures if future.exception() and not isinstance(future.exception(), _Stopped)]
    if errors:
        if isinstance(errors[0], BrokenProcessPool):
            raise RuntimeError(f"{name}: an extraction process died ({errors[0]}); what it wrote is whole, the next run resumes") from errors[0]
        raise errors[0]
    log.info("%s: extracted %d members into %s in %d processes (%d written, %d already present)", name, len(members), folder, len(ranges), len(todo), skipped)
    return index


def open_zip(file, name: str) -> zipfile.ZipFile:
    """``zipfile.ZipFile(file)`` (a path or a seekable file, a remote one included), or
    ``zipfile.BadZipFile`` naming the archive."""
    try:
        return zipfile.ZipFile(file)
    except zipfile.BadZipFile as exc:
        raise zipfile.BadZipFile(f"{name}: not a readable zip archive ({exc})") from exc


_ZIP_DATA_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError)  # bad CRC, corrupt deflate stream, cut data


def write_zip_members(archive_name: str, archive: zipfile.ZipFile, members: list[Member], storage: Storage, folder: str, *, skip_present: bool = True,
                      progress_every: float = 10.0, guard: Callable[[], None] = lambda: None, open_member: Callable | None = None) -> list[list]:
    """Write vetted zip members (:func:`plan`) into ``folder``; return the index ``[[path, size, crc32], ...]``.

    The one writer of a whole zip (:func:`extract_zip`) and of members read remotely
    (``fetch/zip_members.py``, whose ``open_member`` fetches a member's bytes before opening
    it). zipfile checks each member's CRC-32 and size as it is read: a bad one raises
    ``zipfile.BadZipFile`` naming the member before its file reaches its final path.
    """
    return _write_members(archive_name, members, open_member or archive.open, lambda m: m.info.CRC, storage, folder, skip_present, progress_every,
                          _ZIP_DATA_ERRORS, zipfile.BadZipFile, guard)


_TAR_DATA_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError)


def extract_tar(archive_path: Path, storage: Storage, folder: str, spec: Extract, *, skip_present: bool = True, limits: Limits = Limits(), progress_every: float = 10.0,
                guard: Callable[[], None] = lambda: None) -> list[list]:
    """Extract a tar (plain, gzip, bzip2 or xz) into ``folder``; return the index ``[[path, size, None], ...]``.

    The same guarantees as :func:`extract_zip`: every member vetted before the first write,
    atomic writes through the storage, members already present with their size skipped
    (``skip_present``). A tar has no per-member checksum, so the index's third field is None.
    A cut or corrupt archive raises ``tarfile.ReadError`` naming the archive (and the member,
    once writing started); what was written before stays valid and is skipped on the next run.
    """
    try:
        archive = tarfile.open(archive_path, "r:*")
    except _TAR_DATA_ERRORS as exc:
        raise tarfile.ReadError(f"{archive_path.name}: not a readable tar archive ({exc})") from exc
    with archive:
        try:
            members = plan_tar(archive, spec, limits, archive_size=archive_path.stat().st_size)
        except _TAR_DATA_ERRORS as exc:
            raise tarfile.ReadError(f"{archive_path.name}: {exc}") from exc
        # extractfile reads exactly the declared size, or raises; a tar has no per-member checksum
        return _write_members(archive_path.name, members, archive.extractfile, lambda m: None, storage, folder, skip_present, progress_every, _TAR_DATA_ERRORS, tarfile.ReadError, guard)


def archive_format(archive_path: Path) -> str:
    """``"zip"`` or ``"tar"``: by the name (.zip; .tar, .tar.gz, .tgz ...), else by the content."""
    name = archive_path.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith(TAR_SUFFIXES):
        return "tar"
    if zipfile.is_zipfile(archive_path):  # first: is_tarfile is lenient enough to accept some zips
        return "zip"
    if tarfile.is_tarfile(archive_path):
        return "tar"
    raise NotAnArchive(f"{archive_path.name}: neither a zip nor a tar archive; nothing was extracted")


def extract_archive(archive_path: Path, storage: Storage, folder: str, spec: Extract, **options) -> list[list]:
    """:func:`extract_zip` or :func:`extract_tar`, whichever the archive is (see :func:`archive_format`)."""
    extract = extract_zip if archive_format(archive_path) == "zip" else extract_tar
    return extract(archive_path, storage, folder, spec, **options)
