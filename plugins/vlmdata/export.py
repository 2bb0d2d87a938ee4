"""Mixture export: a built mixture's records and their images as WebDataset tar shards or as
Parquet files, for training stacks that stream from object storage.

:func:`export` takes the records as the mixture writes them (each record's JSON bytes, in
order) and the storage folder their image paths are relative to, and writes shards of bounded
size one at a time: each is written to the staging folder, hashed, then handed to the storage
(a rename, or an S3 upload), so memory holds one Parquet row group or one record's image, plus
the few images read ahead, whatever the mixture's size. The bytes depend only on the records,
the images and ``shard_bytes`` (for Parquet also on pyarrow's version, which the index
records): a rebuild from the lock gives the same shards, whose sha256 the lock lists.

In the folder the mixture's output key names (``mixtures/<id>/<id>.webdataset/``):

* ``<name>-000000.tar`` ...: per record ``<key>.json`` (the record's bytes, exactly as in the
  JSON mixture) and ``<key>.<ext>`` (the image's bytes under its own extension, lowercased);
  a text-only record has only its ``.json``. ``<key>`` is the record's position in the
  mixture and its id made safe (``000000042_GQA-1234``): unique, as ids need not be.
* ``<name>-000000.parquet`` ...: columns ``key``, ``id`` (as text), ``image`` (Hugging Face's
  Image feature: a struct of ``bytes`` and ``path``; null for a text-only record),
  ``conversations`` (a list of ``from``/``value``) and ``json`` (the record's exact bytes,
  every key kept); the schema carries the ``datasets`` features, so ``load_dataset("parquet")``
  gives ``image`` as a PIL image.
* ``_index.json``: every shard's file name, record count, size and sha256 (for WebDataset in
  the ``wids-shard-index-v1`` form that ``wids`` reads).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import msgspec

from .annotations import image_path
from .lease import current_guard
from .storage import Storage

FORMATS = ("webdataset", "parquet")
SHARD_BYTES = 512 << 20  # WebDataset advises 100 MB to a few GB a shard; the Hub's Parquet files are about 500 MB
INDEX = "_index.json"  # pyarrow, Spark and datasets skip names starting with "_" when reading a folder
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")  # WebDataset splits a member's name at its first dot
_EXTENSION = re.compile(r"[a-z0-9]{1,8}")


class ExportError(RuntimeError):
    pass


@dataclass(frozen=True)
class Shard:
    name: str  # the file's name in the export's folder
    records: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Exported:
    index: str  # the index's storage key
    index_sha256: str
    index_bytes: int
    records: int
    shards: list[Shard]

    def lock_entries(self) -> dict:
        """What the mixture's lock records: the index as its output, and every shard."""
        return {
            "output": {"key": self.index, "records": self.records, "sha256": self.index_sha256, "bytes": self.index_bytes},
            "shards": [asdict(shard) for shard in self.shards],
        }


@dataclass(frozen=True)
class Sample:
    """One record, ready for a shard."""

    key: str
    record: bytes  # its JSON, as the mixture writes it
    fields: dict  # the same, decoded
    image: bytes | None
    ext: str | None  # the image's extension


def export(fmt: str, records: Iterable[bytes], storage: Storage, image_folder: str, folder: str, name: str, *, shard_bytes: int = SHARD_BYTES) -> Exported:
    """Write the records (each one's JSON bytes) as ``fmt`` shards under ``folder``, then the
    index; remove what an earlier export left there beyond them (a larger mixture's last
    shards). Images are read from ``image_folder`` (a storage key prefix)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")
    shard_type = TarShard if fmt == "webdataset" else ParquetShard
    staging = storage.staging_dir() / "exports"
    staging.mkdir(parents=True, exist_ok=True)
    shards: list[Shard] = []
    current = None  # the shard being written
    try:
        for sample in samples(records, storage, image_folder):
            if current is not None and current.size_with(sample) > shard_bytes:
                shards.append(_place(current, storage, folder))
                current = None
            if current is None:
                current = shard_type(staging, f"{name}-{len(shards):06d}.{shard_type.EXTENSION}")
            current.add(sample)
        if current is not None:
            shards.append(_place(current, storage, folder))
            current = None
    finally:
        if current is not None:  # failed half-way: its staged file goes
            current.abandon()
    body = index_bytes(fmt, name, shards)
    index = f"{folder}/{INDEX}"
    current_guard()()
    storage.write_bytes(index, body)
    keep = {f"{folder}/{s.name}" for s in shards} | {index}
    for key, _ in list(storage.list(folder)):
        if key not in keep:
            storage.delete(key)
    return Exported(index, hashlib.sha256(body).hexdigest(), len(body), sum(s.records for s in shards), shards)


def _place(shard, storage: Storage, folder: str) -> Shard:
    """Close a shard, hash it and hand it to the storage."""
    try:
        shard.close()
        with shard.path.open("rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        done = Shard(shard.name, shard.records, shard.path.stat().st_size, digest)
        current_guard()()  # still this build's writer (its lease): only then replace a shard
        storage.put_file(shard.path, f"{folder}/{shard.name}")
        return done
    finally:
        shard.path.unlink(missing_ok=True)


def index_bytes(fmt: str, name: str, shards: list[Shard]) -> bytes:
    index = {
        "name": name,
        "format": fmt,
        "records": sum(s.records for s in shards),
        "shardlist": [{"url": s.name, "nsamples": s.records, "filesize": s.bytes, "sha256": s.sha256} for s in shards],
    }
    if fmt == "webdataset":
        index.update({"__kind__": "wids-shard-index-v1", "wids_version": 1})
    else:
        import pyarrow

        index["pyarrow"] = pyarrow.__version__  # Parquet's bytes depend on the writer's version
    return (json.dumps(index, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()


def jsonl_records(path: Path) -> Iterator[bytes]:
    """Each record's bytes from a JSONL file, one at a time (a record's JSON holds no raw
    newline: json and msgspec escape it)."""
    with path.open("rb") as handle:
        for line in handle:
            yield line.rstrip(b"\n")


# --- records to samples ----------------------------------------------------------------


def sample_key(position: int, record_id) -> str:
    """Unique (the position) and readable (the id, made safe: no dot, no slash, at most 80
    characters): WebDataset groups a tar's members by the name before the first dot."""
    safe = _UNSAFE.sub("-", str(record_id)).strip("-")[:80]
    return f"{position:09d}_{safe}" if safe else f"{position:09d}"


def image_extension(path: str) -> str:
    """The image's own extension, lowercased; ``bin`` when it has none a tar name can carry."""
    base = path.rsplit("/", 1)[-1]
    ext = base.rpartition(".")[2].lower() if "." in base else ""
    return ext if _EXTENSION.fullmatch(ext) else "bin"


def samples(records: Iterable[bytes], storage: Storage, image_folder: str, *, read_ahead: int | None = None) -> Iterator[Sample]:
    """The records with their images, in order. Images are read ahead by a few threads (on S3
    each read is a round trip: ``storage.write_threads``, the same reasoning as for writes),
    never more than ``read_ahead`` at a time: memory stays bounded by that many images."""
    threads = max(1, storage.write_threads)
    read_ahead = read_ahead or 2 * threads
    pending: deque[tuple[int, bytes, dict, Future | None]] = deque()
    with ThreadPoolExecutor(threads, thread_name_prefix="export-read") as pool:
        try:
            for position, raw in enumerate(records):
                fields = _decoded(raw)
                image = fields.get("image")
                future = pool.submit(_read_image, storage, image_path(image_folder, image), position, fields) if image is not None else None
                pending.append((position, raw, fields, future))
                if len(pending) > read_ahead:
                    yield _sample(*pending.popleft())
            while pending:
                yield _sample(*pending.popleft())
        finally:
            for *_, future in pending:
                if future is not None:
                    future.cancel()


def _decoded(raw: bytes) -> dict:
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError:  # NaN or Infinity in an extra key: json wrote them, msgspec refuses them
        return json.loads(raw)


def _sample(position: int, raw: bytes, fields: dict, future: Future | None) -> Sample:
    image = future.result() if future is not None else None
    return Sample(sample_key(position, fields["id"]), bytes(raw), fields, image, image_extension(fields["image"]) if future is not None else None)


def _read_image(storage: Storage, key: str, position: int, fields: dict) -> bytes:
    try:
        return storage.read_bytes(key)
    except FileNotFoundError:
        raise ExportError(
            f"record {position} (id {fields['id']!r}): its image {fields['image']} is not on the storage ({key}); an export carries "
            "every image: keep drop_missing_images in the recipe's filters, or acquire what is missing"
        ) from None


# --- shards ------------------------------------------------------------------------------


def _staged(staging: Path, name: str) -> Path:
    return staging / f"{name}.{uuid.uuid4().hex[:12]}"  # this build's own: two builds never share one


class TarShard:
    """A WebDataset shard: a POSIX (ustar) tar whose headers hold nothing but the name, the
    size and fixed values (mode 0644, mtime 0, uid/gid 0, no user or group names), so the same
    samples give the same bytes. Its size is known exactly before each sample is added."""

    EXTENSION = "tar"
    BLOCK, RECORD = tarfile.BLOCKSIZE, tarfile.RECORDSIZE  # members pad to blocks, the archive to records

    def __init__(self, staging: Path, name: str):
        self.path, self.name = _staged(staging, name), name
        self.records = self._content = 0
        self._file = self.path.open("wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)

    @classmethod
    def _member_bytes(cls, size: int) -> int:
        return cls.BLOCK + -(-size // cls.BLOCK) * cls.BLOCK

    def _sample_bytes(self, sample: Sample) -> int:
        return self._member_bytes(len(sample.record)) + (self._member_bytes(len(sample.image)) if sample.image is not None else 0)

    def size_with(self, sample: Sample) -> int:
        """The archive's size once closed, were ``sample`` added (two zero blocks end it)."""
        return -(-(self._content + self._sample_bytes(sample) + 2 * self.BLOCK) // self.RECORD) * self.RECORD

    def add(self, sample: Sample) -> None:
        if sample.image is not None:
            self._member(f"{sample.key}.{sample.ext}", sample.image)
        self._member(f"{sample.key}.json", sample.record)
        self._content += self._sample_bytes(sample)
        self.records += 1

    def _member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self._tar.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        self._tar.close()
        self._file.close()

    def abandon(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


class ParquetShard:
    """A Parquet file in Hugging Face's layout for images, written a row group at a time (at
    most ``ROW_GROUP_ROWS`` rows, the Hub's choice for image datasets, or ``ROW_GROUP_BYTES``)
    with fixed writer options. Its size is bounded by an estimate that counts every byte once
    per column plus room for the footer: images are already compressed, the text only shrinks."""

    EXTENSION = "parquet"
    ROW_GROUP_ROWS, ROW_GROUP_BYTES = 100, 32 << 20
    FOOTER = 64 << 10  # room kept for the footer, schema and page headers
    PER_ROW = 64  # lengths, offsets and levels per row, generously

    def __init__(self, staging: Path, name: str):
        import pyarrow.parquet as pq

        self.path, self.name = _staged(staging, name), name
        self.records = self._estimate = self._pending_bytes = 0
        self._rows: list[dict] = []
        # Fixed options: what a future pyarrow might change by default does not change the bytes.
        self._writer = pq.ParquetWriter(
            str(self.path), parquet_schema(), version="2.6", compression="zstd", compression_level=3,
            use_dictionary=False, write_statistics=False, data_page_version="1.0",
        )

    @classmethod
    def _row_bytes(cls, sample: Sample) -> int:
        image = len(sample.image) + len(sample.fields["image"].encode()) if sample.image is not None else 0
        # the record's text twice (``json`` and ``conversations``), the key and id once
        return image + 2 * len(sample.record) + len(sample.key) + len(str(sample.fields["id"]).encode()) + cls.PER_ROW

    def size_with(self, sample: Sample) -> int:
        return self._estimate + self._row_bytes(sample) + self.FOOTER

    def add(self, sample: Sample) -> None:
        fields = sample.fields
        self._rows.append({
            "key": sample.key,
            "id": str(fields["id"]),
            "image": {"bytes": sample.image, "path": fields["image"]} if sample.image is not None else None,
            "conversations": [{"from": turn["from"], "value": turn["value"]} for turn in fields["conversations"]],
            "json": sample.record.decode(),
        })
        size = self._row_bytes(sample)
        self._estimate += size
        self._pending_bytes += size
        self.records += 1
        if len(self._rows) >= self.ROW_GROUP_ROWS or self._pending_bytes >= self.ROW_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self._rows:
            self._writer.write_table(pa.Table.from_pylist(self._rows, schema=parquet_schema()), row_group_size=len(self._rows))
        self._rows.clear()
        self._pending_bytes = 0

    def close(self) -> None:
        self._flush()
        self._writer.close()

    def abandon(self) -> None:
        self._rows.clear()
        self._writer.close()
        self.path.unlink(missing_ok=True)


# The ``datasets`` features of the Parquet files (the schema's "huggingface" metadata, which
# load_dataset reads): a list of a dict is how every datasets version spells a list of structs.
_STRING = {"dtype": "string", "_type": "Value"}
HF_FEATURES = {"key": _STRING, "id": _STRING, "image": {"_type": "Image"}, "conversations": [{"from": _STRING, "value": _STRING}], "json": _STRING}


def parquet_schema():
    import pyarrow as pa

    turn = pa.struct([("from", pa.string()), ("value", pa.string())])
    return pa.schema(
        [("key", pa.string()), ("id", pa.string()), ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
         ("conversations", pa.list_(turn)), ("json", pa.string())],
        metadata={"huggingface": json.dumps({"info": {"features": HF_FEATURES}})},
    )

