"""Mixture builds: the training JSON of a stage, from a recipe in ``include/recipes``.

A recipe names components (an annotation artifact of a source, all of it or a sample),
filters, and the image folder the output's paths are relative to. The build drops records
that are malformed or whose image is missing or broken (by the integrity reports, not by a
stat per file), writes the mixture and a lock file that pins every input (revision and
sha256), the counts per component and every dropped record with its reason. Sampling is
seeded and serialisation fixed, so the same inputs and seed give a byte-identical file.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import random
import uuid
from pathlib import Path
from typing import Any, Literal, get_args

import msgspec
from pydantic import BaseModel, ConfigDict, Field

from . import __version__, export
from .annotations import Records, fast_or_json, json_bytes, record_problem
from .catalog import DEFAULT_CATALOG, Annotation, Source, TreePath, load_models
from .lease import current_guard, exclusive
from .manifest import Manifest, now
from .storage import DATA_PREFIX, Storage
from .verify import ImageIndex, image_key

log = logging.getLogger("vlmdata.mix")

RECIPES_DIR = DEFAULT_CATALOG.parent / "recipes"
# "drop_malformed" is accepted but always in force: a malformed record cannot be written at all.
Filter = Literal["drop_malformed", "drop_missing_images", "drop_broken_images", "require_image"]
Format = Literal["json", "jsonl", "webdataset", "parquet"]  # the last two: export.FORMATS
FORMATS = get_args(Format)  # what the CLI and the DAGs' forms offer


def mixture_prefix(recipe_id: str) -> str:
    """The folder of a recipe's outputs: training files, locks, the composition chart."""
    return f"mixtures/{recipe_id}"


class MixError(RuntimeError):
    pass


class Component(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    source: str
    artifact: str
    take: Literal["all"] | int | float = Field("all", description="all records, a count, or a fraction (0-1)")
    name: str | None = None

    @property
    def label(self) -> str:
        return self.name or f"{self.source}:{self.artifact}"


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    title: str
    description: str = ""
    stage: str | None = None
    image_folder: TreePath | Literal["."] = Field(".", description="folder of the data tree the output's image paths are relative to")
    components: list[Component]
    filters: list[Filter] = ["drop_malformed", "drop_missing_images", "drop_broken_images"]
    max_turns: int | None = Field(None, ge=1, description="drop records with more human-gpt rounds than this")
    duplicate_ids: Literal["keep", "drop", "suffix"] = Field("keep", description="keep (LLaVA's loaders do not need unique ids), drop later ones, or suffix them #2, #3")
    seed: int = 0
    format: Format = "json"
    shard_bytes: int = Field(export.SHARD_BYTES, ge=1, description="webdataset and parquet: the most bytes a shard holds (one record may exceed it alone)")


def load_recipes(folder: Path = RECIPES_DIR) -> dict[str, Recipe]:
    return load_models(folder, Recipe)


def output_key(recipe_id: str, fmt: str, seed: int | None = None) -> str:
    """The training file of a build: ``<recipe>.<fmt>`` with the recipe's own seed,
    ``<recipe>.seed<N>.<fmt>`` with another (``seed``), so no build overwrites another's."""
    return f"mixtures/{recipe_id}/{recipe_id}{'' if seed is None else f'.seed{seed}'}.{fmt}"


def output_of(recipe: Recipe, seed: int, fmt: str) -> str:
    return output_key(recipe.id, fmt, None if seed == recipe.seed else seed)


def lock_of(output: str) -> str:
    """The lock of a built output (``<output>.lock.json``): one per output, so a build with
    another seed or format keeps the earlier output's lock. An export's output is its shards'
    index (``<folder>/_index.json``): its lock sits beside the folder, not among the shards."""
    folder, _, name = output.rpartition("/")
    return f"{folder if name == export.INDEX else output}.lock.json"


def latest_lock_key(recipe_id: str) -> str:
    """A copy of the lock of the recipe's latest build, at a stable key (the UI's Lock link)."""
    return f"mixtures/{recipe_id}/lock.json"


def summary_key(recipe_id: str) -> str:
    return f"mixtures/{recipe_id}/summary.json"


class LockInput(msgspec.Struct):
    """An annotation file a build read, pinned: a rebuild refuses it changed."""
    component: str
    source: str
    artifact: str
    revision: str | None
    sha256: str
    size: int | None
    url: str | None


class ComponentCount(msgspec.Struct):
    available: int
    sampled: int
    kept: int
    dropped: dict[str, int]  # reason -> records


class LockOutput(msgspec.Struct):
    key: str
    records: int
    sha256: str
    bytes: int


class LockShard(msgspec.Struct):
    """One shard of an exported mixture (webdataset, parquet), pinned by its sha256."""
    name: str  # beside the index (the lock's output)
    records: int
    bytes: int
    sha256: str


class DroppedRecord(msgspec.Struct):
    component: str
    id: Any  # the record's id as it was (a string, a number, or absent in a malformed one)
    image: Any
    reason: str


class Lock(msgspec.Struct, kw_only=True):
    """What a build read and wrote (``<output>.lock.json``): every input's revision and
    sha256, the recipe, seed and format, counts per component and every dropped record with
    its reason. :func:`rebuild` builds the same bytes again from it."""
    recipe: dict[str, Any]  # Recipe.model_dump()
    seed: int
    format: Format
    vlmdata: str
    built_at: str
    image_folder: str  # the data-tree folder the output's image paths are relative to: --image_folder
    inputs: list[LockInput]
    counts: dict[str, ComponentCount]
    output: LockOutput
    dropped: list[DroppedRecord]
    shards: list[LockShard] | None = None  # an exported mixture's shards (the output is their index)
    # What else the bytes depend on, for "nothing changed, nothing done" (:func:`unchanged`):
    # the image index the filters read and the catalog's placing of each component's images
    # (:func:`_basis`), and the storage stamp (size, then mtime+inode or ETag) of every file
    # written, so an output altered or replaced since is built again. None in older locks.
    basis: str | None = None
    stamps: dict[str, list] | None = None  # key -> [bytes, stamp]

    @property
    def recipe_id(self) -> str:
        return self.recipe["id"]

    def to_json(self) -> dict:
        return msgspec.to_builtins(self)


def parse_lock(data: bytes | dict, where: str = "the lock") -> Lock:
    """A lock read back (a file's bytes, or its JSON); a clear error if it is none."""
    try:
        if isinstance(data, dict):
            return msgspec.convert(data, Lock)
        return msgspec.json.decode(data, type=Lock)
    except msgspec.MsgspecError as exc:
        raise MixError(f"{where} is not a mixture lock: {exc}") from exc


def read_lock(storage: Storage, key: str) -> Lock:
    return parse_lock(storage.read_bytes(key), key)


def lock_summary(lock: Lock) -> dict:
    """The lock without its list of dropped records (millions in a large mixture), which it
    counts by reason instead: what the UI's status page reads."""
    dropped: dict[str, int] = {}
    for entry in lock.dropped:
        dropped[entry.reason] = dropped.get(entry.reason, 0) + 1
    summary = lock.to_json()
    summary["dropped"] = dropped
    summary["lock"] = lock_of(lock.output.key)
    return summary


def _sample(rows: Records, take, rng: random.Random) -> Records:
    if take == "all":
        return rows
    count = round(len(rows) * take) if isinstance(take, float) else min(take, len(rows))
    chosen = sorted(rng.sample(range(len(rows)), count))  # keep the upstream order
    return rows.pick(chosen)


@exclusive(lambda recipe, storage, *args, **kwargs: (storage, f"mixture/{recipe.id}"))
def build(recipe: Recipe, storage: Storage, catalog: dict[str, Source], *, seed: int | None = None, fmt: str | None = None, force: bool = False) -> Lock:
    """Build the mixture on the storage; return its lock. One build of a recipe at a time (a
    second waits for the first). With nothing changed since the last build of the same output
    (:func:`unchanged`) that build's lock is returned and nothing is written, unless ``force``.

    The annotation files are read the fast way (:class:`Records`: msgspec, a record at a time);
    should one hold a record msgspec refuses, the build starts again reading them with ``json``,
    which gives the same bytes or the reference error."""
    seed = recipe.seed if seed is None else seed
    fmt = fmt or recipe.format
    if fmt not in FORMATS:
        raise MixError(f"{recipe.id}: unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    if not force and (lock := unchanged(recipe, storage, catalog, seed, fmt)) is not None:
        log.info("%s: nothing changed since the build of %s (the same inputs, images, recipe, seed %d and format %s; %s intact): "
                 "its lock returned, nothing written (force=True builds it again)", recipe.id, lock.built_at, seed, fmt, lock.output.key)
        if storage.exists(latest_lock_key(recipe.id)) and read_lock(storage, latest_lock_key(recipe.id)).output.key != lock.output.key:
            _publish(recipe, storage, lock)  # another seed or format was built since: this one is the latest again
        return lock
    return fast_or_json(lambda fast: _build(recipe, storage, catalog, seed, fmt, fast=fast), recipe.id)


def unchanged(recipe: Recipe, storage: Storage, catalog: dict[str, Source], seed: int, fmt: str) -> Lock | None:
    """The lock of this output's last build when building again would write the same bytes
    (issue 10, item 5: a mixture re-triggered with nothing changed costs a few reads): the lock
    was written by this version of vlmdata for the same recipe, seed and format; every input's
    manifest record has the sha256 and revision the lock pins; the image index and the
    catalog's placing of the images are as they were (:func:`_basis`); and every file the build
    wrote has the size and storage stamp it had. None when anything differs or is missing."""
    key = lock_of(output_of(recipe, seed, fmt))
    if not storage.exists(key):
        return None
    try:
        lock = read_lock(storage, key)
    except MixError:
        return None
    if lock.basis is None or lock.stamps is None or (lock.vlmdata, lock.seed, lock.format) != (__version__, seed, fmt) \
            or lock.recipe != msgspec.to_builtins(recipe.model_dump()) or len(lock.inputs) != len(recipe.components):
        return None
    for item, component in zip(lock.inputs, recipe.components):
        if component.source not in catalog:
            return None
        record = Manifest(storage, component.source).artifact(catalog[component.source].artifact(component.artifact).name)
        if record is None or not record.complete or (item.component, item.sha256, item.revision) != (component.label, record.sha256, record.revision):
            return None
    listed = {k: [size, stamp] for k, size, stamp in storage.list_stamped(mixture_prefix(recipe.id))}
    folder = lock.output.key.rpartition("/")[0] + "/"
    strays = lock.shards is not None and any(k.startswith(folder) and k not in lock.stamps for k in listed)  # an export's folder: its shards alone
    if strays or {k: v for k, v in listed.items() if k in lock.stamps} != lock.stamps \
            or lock.basis != _basis(recipe, storage, catalog, _component_sources(recipe, catalog)):
        return None
    return lock


def _image_sources(sources: list[Source], catalog: dict[str, Source]) -> list[str]:
    """The sources whose images the components' records point to (their own and the referenced)."""
    return sorted({s for src in sources for s in (src.id, *src.references)} & set(catalog))


def _basis(recipe: Recipe, storage: Storage, catalog: dict[str, Source], sources: list[Source]) -> str:
    """A sha256 of what the output depends on beside its inputs, recipe, seed and format: the
    image index's files (:meth:`ImageIndex.state`) and how the catalog places each component's
    images (its annotation's image folder and links)."""
    placing = [catalog[c.source].artifact(c.artifact).annotation.model_dump(mode="json") for c in recipe.components]
    return hashlib.sha256(msgspec.json.encode([ImageIndex.state(storage, _image_sources(sources, catalog)), placing])).hexdigest()


def _build(recipe: Recipe, storage: Storage, catalog: dict[str, Source], seed: int, fmt: str, *, fast: bool) -> Lock:
    sources = _component_sources(recipe, catalog)
    basis = _basis(recipe, storage, catalog, sources)  # before reading: a change while building builds again next time
    images = ImageIndex.load(storage, catalog, _image_sources(sources, catalog))
    folder = posixpath.normpath(posixpath.join(DATA_PREFIX, recipe.image_folder))
    inputs, counts, dropped = [], {}, []
    seen_ids: dict[str, int] = {}
    staged = storage.staging_dir() / "mixtures" / f"{recipe.id}.{uuid.uuid4().hex[:12]}.{fmt}"  # this build's own
    try:
        exported = None
        # kept records go straight to the file: never all in memory (an export's, one a line, then become its shards)
        with RecordWriter(staged, "jsonl" if fmt in export.FORMATS else fmt) as output:
            for component in recipe.components:
                source = catalog[component.source]
                artifact = source.artifact(component.artifact)
                record = Manifest(storage, source.id).artifact(artifact.name)
                if record is None or not record.complete:
                    raise MixError(f"{recipe.id}: component {component.label} is not acquired yet: run acquire_{source.id}")
                with storage.open_read(record.placement.target) as handle:
                    rows = Records.read(handle, artifact.name, size=record.placement.bytes or None, fast=fast)
                inputs.append(LockInput(component=component.label, source=source.id, artifact=artifact.name, revision=record.revision, sha256=record.sha256, size=record.size, url=record.url))
                rng = random.Random(f"{seed}:{component.label}")
                chosen = _sample(rows, component.take, rng)
                tally = counts[component.label] = {"available": len(rows), "sampled": len(chosen), "kept": 0, "dropped": {}}
                annotation = artifact.annotation
                for row in chosen:
                    reason, key = _drop_reason(row, recipe.filters, annotation, images)
                    if reason is None and recipe.max_turns and len(row["conversations"]) // 2 > recipe.max_turns:
                        reason = "too many turns"
                    if reason is None:
                        reason = _apply_duplicate_policy(row, recipe.duplicate_ids, seen_ids)
                    if reason is None:
                        if key is not None:
                            row["image"] = _relative(key, folder)
                            if row["image"].startswith(".."):
                                raise MixError(f"{recipe.id}: image {row['image']} of {component.label} lies outside the image folder {recipe.image_folder!r}")
                        output.add(rows.encode(row))
                        tally["kept"] += 1
                    else:
                        tally["dropped"][reason] = tally["dropped"].get(reason, 0) + 1
                        dropped.append(DroppedRecord(component.label, row.get("id") if isinstance(row, dict) else None, row.get("image") if isinstance(row, dict) else None, reason))
                del rows, chosen  # one component's file in memory at a time
        current_guard()()
        # --- export formats (issue 13): the records with their images as shards ---
        if fmt in export.FORMATS:
            exported = export.export(fmt, export.jsonl_records(staged), storage, folder, output_of(recipe, seed, fmt), recipe.id, shard_bytes=recipe.shard_bytes)
        else:
            storage.put_file(staged, output_of(recipe, seed, fmt))
    finally:
        staged.unlink(missing_ok=True)
    lock = Lock(
        recipe=recipe.model_dump(), seed=seed, format=fmt, vlmdata=__version__, built_at=now(), image_folder=folder, inputs=inputs,
        counts={label: ComponentCount(**tally) for label, tally in counts.items()},
        output=LockOutput(key=output_of(recipe, seed, fmt), records=output.records, sha256=output.sha256, bytes=output.size),
        dropped=dropped, basis=basis,
    )
    if exported is not None:  # the output is the shards' index; the lock lists every shard's sha256
        entries = exported.lock_entries()
        lock.output = msgspec.convert(entries["output"], LockOutput)
        lock.shards = msgspec.convert(entries["shards"], list[LockShard])
    folder = lock.output.key.rpartition("/")[0]
    files = {lock.output.key, *(f"{folder}/{shard.name}" for shard in lock.shards or [])}
    lock.stamps = {key: [size, stamp] for key, size, stamp in storage.list_stamped(mixture_prefix(recipe.id)) if key in files}
    current_guard()()
    storage.write_json(lock_of(lock.output.key), lock.to_json())
    _publish(recipe, storage, lock)
    log.info("%s: %d records kept, %d dropped into %s; %s", recipe.id, output.records, len(dropped), lock.output.key, ", ".join(f"{k}: {v['kept']}/{v['sampled']}" for k, v in counts.items()))
    return lock


def _publish(recipe: Recipe, storage: Storage, lock: Lock) -> None:
    """The recipe's latest build, at stable keys: its lock, summary and composition chart."""
    storage.write_json(latest_lock_key(recipe.id), lock.to_json())
    storage.write_json(summary_key(recipe.id), lock_summary(lock))
    counts = {label: msgspec.to_builtins(count) for label, count in lock.counts.items()}
    storage.write_bytes(f"mixtures/{recipe.id}/composition.svg", composition_svg(recipe.title, counts).encode())


def _relative(key: str, folder: str) -> str:
    """``posixpath.relpath(key, folder)`` for a normalised key and folder. relpath makes both
    absolute, calling os.getcwd() twice per record (bench `mixture` row, profile in
    bench/README.md: 9.1 s of the 665K build's 65 s); a key inside the folder is its remainder."""
    if key.startswith(folder) and key[len(folder):len(folder) + 1] == "/":
        return key[len(folder) + 1:]
    return posixpath.relpath(key, folder)


def _component_sources(recipe: Recipe, catalog: dict[str, Source]) -> list[Source]:
    sources = []
    for component in recipe.components:
        if component.source not in catalog:
            raise MixError(f"{recipe.id}: unknown source {component.source!r}")
        artifact = catalog[component.source].artifact(component.artifact)
        if not artifact.annotation:
            raise MixError(f"{recipe.id}: {component.label} is not an annotation file")
        sources.append(catalog[component.source])
    return sources


def _apply_duplicate_policy(row: dict, policy: str, seen: dict[str, int]) -> str | None:
    """Count the record's id; suffix it in place (``suffix``) or say why it goes (``drop``)."""
    key = str(row["id"])
    seen[key] = number = seen.get(key, 0) + 1
    if number == 1 or policy == "keep":
        return None
    if policy == "drop":
        return "duplicate id"
    row["id"] = f"{row['id']}#{number}"
    return None


def _drop_reason(row, filters: list[str], annotation: Annotation, images: ImageIndex) -> tuple[str | None, str | None]:
    """Why the record goes (None: it stays), and the storage key of its image (None: no image)."""
    problem = record_problem(row)
    if problem:  # always: no loader survives a record without its id or conversations
        return f"malformed: {problem}", None
    if "image" not in row:
        return ("no image" if "require_image" in filters else None), None
    key = image_key(annotation, row["image"])
    status = images.status(key)
    if status is None:
        return None, key
    if status.startswith("image broken") and "drop_broken_images" in filters:
        return "image broken", key
    if status.startswith("image missing") and "drop_missing_images" in filters:
        return "image missing", key
    return None, key


class RecordWriter:
    """Records written to a local file as they come, hashed on the way: ``add`` takes each
    record's bytes (:meth:`Records.encode`). Fixed key order and separators: the same records
    always give the same bytes, those of ``json.dumps(records, ensure_ascii=False,
    separators=(",", ":"))`` and a newline (one record per line for jsonl), so a 1.5 GB
    mixture never sits in memory as one string or as its records. (Writing and hashing in a
    thread of its own was tried: 4.03 s against 4.13 s for the 665K records, not worth it.)"""

    FLUSH = 1 << 20  # write and hash in 1 MiB pieces, not per record

    def __init__(self, path: Path, fmt: str):
        self.path, self.fmt = path, fmt
        self.records = self.size = 0
        self.sha256 = ""
        self._digest = hashlib.sha256()
        self._pending = bytearray(b"" if fmt == "jsonl" else b"[")

    def __enter__(self) -> RecordWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._out = self.path.open("wb")
        return self

    def add(self, data: bytes) -> None:
        if self.fmt == "jsonl":
            self._pending += data
            self._pending += b"\n"
        else:
            if self.records:
                self._pending += b","
            self._pending += data
        self.records += 1
        if len(self._pending) >= self.FLUSH:
            self._flush()

    def _flush(self) -> None:
        self._out.write(self._pending)
        self._digest.update(self._pending)
        self.size += len(self._pending)
        self._pending.clear()

    def __exit__(self, kind, error, trace) -> None:
        try:
            if kind is None:
                self._pending += b"" if self.fmt == "jsonl" else b"]\n"
                self._flush()
                self.sha256 = self._digest.hexdigest()
        finally:
            self._out.close()


def write_records(path: Path, records: list, fmt: str) -> tuple[str, int]:
    """Write the records to a local file, hashing as it goes; return (sha256, bytes)."""
    with RecordWriter(path, fmt) as writer:
        for record in records:
            writer.add(json_bytes(record))
    return writer.sha256, writer.size


def rebuild(lock: Lock, storage: Storage, catalog: dict[str, Source], *, force: bool = False) -> Lock:
    """Build again from a lock; fails if an input changed since. Returns the new lock, whose
    output sha256 equals the old one's when nothing else changed (with nothing changed at all
    and the output intact, the lock on the storage without building: see :func:`build`)."""
    for item in lock.inputs:
        record = Manifest(storage, item.source).artifact(item.artifact)
        if record is None or record.sha256 != item.sha256:
            now_sha = record.sha256 if record else "absent"
            raise MixError(f"{item.component}: {item.artifact} is {now_sha} now, the lock pins {item.sha256} (revision {item.revision}): re-acquire that revision first")
    again = build(Recipe.model_validate(lock.recipe), storage, catalog, seed=lock.seed, fmt=lock.format, force=force)
    if again.output.sha256 != lock.output.sha256:
        log.warning("%s: rebuilt with different bytes (images changed since: %d records dropped now, %d then)", lock.recipe_id, len(again.dropped), len(lock.dropped))
    return again


def composition_svg(title: str, counts: dict[str, dict]) -> str:
    """The composition chart (``templates/composition.svg``): a bar per component, kept and
    dropped records with the kept share. Here only the geometry: bar lengths and label width."""
    from .pages import render

    char, bar_height, gap, bar_width = 7, 22, 8, 360  # char: the width of a 12 px sans-serif character, roughly
    label_width = 12 + char * max((len(name) for name in counts), default=10)
    total = max((c["kept"] + sum(c["dropped"].values()) for c in counts.values()), default=1) or 1
    bars = []
    for number, (name, c) in enumerate(counts.items()):
        dropped = sum(c["dropped"].values())
        bars.append({
            "name": name, "y": 60 + number * (bar_height + gap), "kept": c["kept"], "dropped": dropped,
            "share": c["kept"] / (c["kept"] + dropped) if c["kept"] + dropped else 0.0,
            "kept_width": c["kept"] * bar_width / total, "dropped_width": dropped * bar_width / total,
        })
    return render(
        "composition.svg", title=title, bars=bars, label_width=label_width, bar_width=bar_width, bar_height=bar_height,
        width=label_width + bar_width + 230, height=70 + len(counts) * (bar_height + gap),
    ) + "\n"


