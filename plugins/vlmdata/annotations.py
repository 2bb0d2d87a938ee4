"""The LLaVA conversation format: loading and checking annotation files.

``[{"id": ..., "image": "rel/path.jpg", "conversations": [{"from": "human", "value":
"<image>\\n..."}, {"from": "gpt", "value": "..."}, ...]}, ...]``. Text-only records have no
``image``. The checks are the ones LLaVA's and ConvLLaVA's loaders rely on: a JSON list of
objects, roles alternating from ``human``, ``<image>`` in the first human turn exactly when
the record has an image, and image paths that stay inside the image folder.
"""

from __future__ import annotations

import functools
import json
import logging
import posixpath
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import IO, Any, TypeVar

import msgspec

log = logging.getLogger("vlmdata.annotations")
T = TypeVar("T")

IMAGE_TOKEN = "<image>"
ROLES = ("human", "gpt")


class AnnotationError(ValueError):
    """The file as a whole is not a LLaVA annotation file."""


class NotFast(Exception):
    """A record the fast decoder cannot vouch for (see :class:`Records`): read the file with
    :func:`load_records` instead, which gives the same records or the reference error."""


class JsonFloat(float):
    """A float from the fast decoder: equal to the float ``json`` parses from the same text,
    and encoded back as ``json.dumps`` writes it (msgspec's own float format differs: 1e16
    against 1e+16)."""

    __slots__ = ()


def _float_as_json(value: JsonFloat) -> msgspec.Raw:
    if value != value:
        return msgspec.Raw(b"NaN")
    if value in (float("inf"), float("-inf")):
        return msgspec.Raw(b"Infinity" if value > 0 else b"-Infinity")
    return msgspec.Raw(float.__repr__(value).encode())


# Fast path for the mixture build, needed_by planning and verify (bench `mixture` rows, 665K
# records, 1.05 GB: the build 10.3 s at 1.22x the file's size in peak RSS against json.load +
# json.dump's 21.5 s at 4.12x; needed_by 3.2 s at 1.09x against json.load's 9.5 s at 4.12x;
# the build took 40.6 s at 4.19x with json). The decoded values equal json.load's: floats go through float()
# as json's do, integers obey the same 4,300-digit limit, duplicate keys keep the last value
# in the first key's place; what msgspec refuses (NaN, a byte-order mark, lone surrogates)
# falls back to json. Hostile nesting both refuse, at limits some 1,000 levels deep that depend
# on the caller's stack and differ by a few levels (json's included, from one caller to another).
_SPLIT = msgspec.json.Decoder(list[msgspec.Raw])
_DECODE = msgspec.json.Decoder(float_hook=JsonFloat)
_FAST_ENCODER = msgspec.json.Encoder(enc_hook=_float_as_json)
_JSON_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def read_whole(stream: IO[bytes], size: int | None = None) -> bytes | bytearray:
    """Every byte of ``stream``. With ``size`` (what it should hold) the bytes are read straight
    into one buffer of that size: a 1.5 GB annotation file costs 1.5 GB of memory, not the 3 GB
    of chunks joined at the end that reading an S3 body whole can take."""
    if not size:
        return stream.read()
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    readinto = getattr(stream, "readinto", None)
    while got < size:
        if readinto:
            count = readinto(view[got:])
        else:
            chunk = stream.read(min(size - got, 8 << 20))
            count = len(chunk)
            view[got:got + count] = chunk
        if not count:
            break
        got += count
    view.release()
    del buffer[got:]  # shorter than said: what there is
    if got == size and (rest := stream.read()):  # longer than said: all of it all the same
        buffer += rest
    return buffer


class Records(Sequence):
    """The records of an annotation file, decoded one at a time as they are read.

    Fast (:meth:`read`): msgspec splits the file into the raw bytes of each record, views
    into the file's buffer (about 60 bytes per record), and decodes a record when it is read,
    so that a build holds the file once and one record at a time: peak memory about 1.1x the
    file, against 4-7x for ``json.load``'s objects. Reading a record the fast decoder refuses
    (bad UTF-8, an integer of thousands of digits, hostile nesting) raises :class:`NotFast`:
    the caller starts again with :meth:`read` and ``fast=False``, which loads the file with
    ``json`` (the reference: the same records, or the same :class:`AnnotationError`).
    """

    def __init__(self, items: list, fast: bool):
        self._items = items
        self.fast = fast

    @classmethod
    def read(cls, stream: IO[bytes], name: str, *, size: int | None = None, fast: bool = True) -> Records:
        if not fast:
            return cls(load_records(stream, name), False)
        data = read_whole(stream, size)
        try:
            return cls(_SPLIT.decode(data), True)
        except (msgspec.MsgspecError, RecursionError):  # not a list, or JSON msgspec refuses: json says which
            return cls(parse_records(data, name), False)

    def __len__(self) -> int:
        return len(self._items)

    def pick(self, indices: list[int]) -> Records:
        """These records (a sample), still undecoded."""
        return Records([self._items[i] for i in indices], self.fast)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return _decode(self._items[index]) if self.fast else self._items[index]

    def __iter__(self) -> Iterator:
        return self._decoded() if self.fast else iter(self._items)

    def _decoded(self) -> Iterator:
        try:
            yield from map(_DECODE.decode, self._items)  # no Python call per record
        except _REFUSED as exc:
            raise _not_fast(exc) from exc

    def encode(self, record) -> bytes:
        """``json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()``, the
        bytes the lock's sha256 pins, by msgspec for the records it decoded (same bytes, bench
        `mixture` row: several times faster than json's encoder)."""
        return _FAST_ENCODER.encode(record) if self.fast else json_bytes(record)


def json_bytes(record) -> bytes:
    """``json.dumps(record, ensure_ascii=False, separators=(",", ":"))`` in UTF-8: how a
    mixture writes a record (json's C encoder)."""
    return _JSON_ENCODER.encode(record).encode()


def fast_or_json(work: Callable[[bool], T], what: str = "") -> T:
    """``work(True)``: read annotation files the fast way; should one hold a record the fast
    decoder refuses, all of it again with ``work(False)`` (``json``, the reference)."""
    try:
        return work(True)
    except NotFast as exc:
        log.info("%s%s; reading with json instead", f"{what}: " if what else "", exc)
        return work(False)


_REFUSED = (msgspec.MsgspecError, ValueError, RecursionError)  # ValueError: bad UTF-8


def _decode(raw: msgspec.Raw):
    try:
        return _DECODE.decode(raw)
    except _REFUSED as exc:
        raise _not_fast(exc) from exc


def _not_fast(exc: Exception) -> NotFast:
    return NotFast(f"a record the fast decoder refuses ({type(exc).__name__}: {str(exc)[:100]})")


def load_records(stream: IO[bytes], name: str) -> list[dict[str, Any]]:
    """The records of an annotation file as ``json`` reads them (the reference :class:`Records`
    falls back to), or an :class:`AnnotationError` that says why the file is unreadable."""
    return parse_records(stream.read(), name)


def parse_records(data: bytes | bytearray, name: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(data)
    except RecursionError as exc:  # hostile nesting: the decoder recurses once per level
        raise AnnotationError(f"{name}: JSON nested too deeply to read") from exc
    except ValueError as exc:  # bad JSON, bad UTF-8, an integer of thousands of digits
        raise AnnotationError(f"{name}: not valid JSON: {str(exc)[:200]}") from exc
    if not isinstance(data, list):
        raise AnnotationError(f"{name}: expected a JSON list of records, got {type(data).__name__}")
    return data


def record_problem(record: Any) -> str | None:
    """Why a record is unusable for training, or None when it is fine."""
    if not isinstance(record, dict):
        return "not an object"
    if "id" not in record or not isinstance(record["id"], (str, int)):
        return "missing or invalid id"
    image = record.get("image")
    if "image" in record:  # LLaVA's loader tests `"image" in record`: a null path crashes it
        if not isinstance(image, str) or not image:
            return "image is not a path"
        # PurePosixPath(image).is_absolute() or ".." in its parts, as string tests (bench `mixture`
        # row, profile in bench/README.md: with pathlib record_problem took 25 us a record, 3 us now)
        if image[0] == "/" or (".." in image and ".." in image.split("/")):
            return "image path leaves the image folder"
    turns = record.get("conversations")
    if not isinstance(turns, list) or len(turns) < 2:
        return "conversations must be a list of at least two turns"
    elsewhere = False
    for number, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(value := turn.get("value"), str):
            return f"turn {number} is not {{'from', 'value'}}"
        if turn.get("from") != ROLES[number & 1]:
            return f"turn {number} is from {turn.get('from')!r}, expected {ROLES[number % 2]!r} (roles must alternate from human)"
        if number and IMAGE_TOKEN in value:
            elsewhere = True
    in_first = IMAGE_TOKEN in turns[0]["value"]
    if "image" in record and not in_first:
        return "has an image but the first human turn holds no <image>"
    if "image" not in record and (in_first or elsewhere):
        return "holds <image> but has no image"
    if elsewhere:
        return "<image> outside the first human turn"
    return None


def image_path(folder: str, image: str) -> str:
    """``posixpath.normpath(posixpath.join(folder, image))``: where a record's image lies
    relative to the data tree. A plain relative path (no empty, ``.`` or ``..`` part; nothing
    starting with a dot at all) under a normalised relative folder needs no normalising: join
    the strings (bench `mixture` rows, profile in bench/README.md: image_key's join and
    normpath were 5 s of the 665K build's 65 s)."""
    if image and image[0] not in "/." and image[-1] != "/" and "//" not in image and "/." not in image and _plain_folder(folder):
        return image if folder in ("", ".") else f"{folder}/{image}"
    return posixpath.normpath(posixpath.join(folder, image))


def image_paths(records: Iterable[Mapping], image_folder: str = "") -> list[str]:
    """The distinct image paths (relative to the data tree, in first-seen order) the records
    reference; a record's ``image`` may be one path or a list of them."""
    seen: dict[str, None] = {}
    for record in records:
        images = record.get("image") if type(record) is dict or isinstance(record, Mapping) else None
        for image in [images] if isinstance(images, str) else images if isinstance(images, list) else []:
            if isinstance(image, str) and image:
                seen[image_path(image_folder, image)] = None
    return list(seen)


@functools.lru_cache(maxsize=64)
def _plain_folder(folder: str) -> bool:
    return folder == "" or (folder == posixpath.normpath(folder) and not folder.startswith(("/", "..")))


def check_records(records: Sequence, max_examples: int = 20) -> dict:
    """Counts of good and bad records, bad ones by reason with a few example ids."""
    problems: dict[str, dict] = {}
    ids: set = set()
    duplicates = 0
    with_image = 0
    for position, record in enumerate(records):
        problem = record_problem(record)
        if problem:
            entry = problems.setdefault(problem, {"count": 0, "examples": []})
            entry["count"] += 1
            if len(entry["examples"]) < max_examples:
                entry["examples"].append(record.get("id", f"#{position}") if isinstance(record, dict) else f"#{position}")
            continue
        with_image += "image" in record
        key = str(record["id"])
        duplicates += key in ids
        ids.add(key)
    bad = sum(p["count"] for p in problems.values())
    return {"records": len(records), "valid": len(records) - bad, "with_image": with_image, "invalid": bad, "problems": problems, "duplicate_ids": duplicates}
