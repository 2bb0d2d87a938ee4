"""Mixture export (issue 13, item 2): a recipe built as WebDataset shards and as Parquet, on a
local root and on S3, read back with the consumers' own libraries (``webdataset``, Hugging
Face ``datasets``, pyarrow), every image decoded with Pillow and every record compared with
the JSON mixture of the same recipe; a rebuild from the lock gives the same bytes; shards
respect their bound; memory stays bounded whatever the mixture's size."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import random
import subprocess
import sys
import tarfile
import zlib

import pytest
from PIL import Image

from vlmdata import export, mix
from vlmdata.catalog import load_catalog
from vlmdata.manifest import ArtifactRecord, Manifest, Placement, index_key, now
from vlmdata.mix import Component, Recipe, build, rebuild
from vlmdata.storage import LocalStorage, S3Storage
from vlmdata.verify import image_key

SOURCE, ARTIFACT, IMAGES_SOURCE = "llava_instruct_150k", "llava_instruct_150k.json", "coco_train2017"
SHARD_BYTES = 48 << 10  # a few records a shard: several shards from a small mixture


def _image(number: int, fmt: str) -> bytes:
    """A small photo-like image (noise compresses badly: several KB each)."""
    rng = random.Random(number)
    image = Image.new("RGB", (40 + number, 30 + number % 7))
    image.putdata([(rng.randrange(256), rng.randrange(256), number * 5 % 256) for _ in range(image.width * image.height)])
    out = io.BytesIO()
    image.save(out, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return out.getvalue()


def _records() -> tuple[list[dict], dict[str, bytes]]:
    """Records with every shape an export must carry: duplicate ids (Vision-Flan's), ids with
    dots, slashes, spaces and non-ASCII text, an integer id, PNG and JPEG images, text-only
    records, extra keys, a multi-turn conversation."""
    images, records = {}, []
    for number in range(24):
        name = f"{number:012d}.png" if number % 5 == 0 else f"{number:012d}.jpg"
        images[name] = _image(number, "PNG" if name.endswith(".png") else "JPEG")
        record_id = ["dup", "a.b/c d", "é-ü 中", 7000 + number, f"GQA_{number}"][number % 5]
        turns = [{"from": "human", "value": f"<image>\nWhat is in picture {number}? «café»"}, {"from": "gpt", "value": f"Number {number}.\nDone."}]
        if number % 6 == 1:
            turns += [{"from": "human", "value": "And then?"}, {"from": "gpt", "value": "Nothing \"more\"."}]
        records.append({"id": record_id, "image": name, "conversations": turns, **({"model": "gpt-4v"} if number % 4 == 0 else {})})
        if number % 8 == 3:
            records.append({"id": "dup", "conversations": [{"from": "human", "value": f"Text only {number}?"}, {"from": "gpt", "value": "Yes."}]})
    return records, images


def lay_out(storage) -> list[dict]:
    """The storage as acquisition and verification leave it for one annotation file and COCO's
    images (real files, all of them verified): returns the records."""
    records, images = _records()
    catalog = load_catalog()
    annotation = catalog[SOURCE].artifact(ARTIFACT)
    body = json.dumps(records, ensure_ascii=False, indent=1).encode()
    target = f"data/{annotation.target}"
    storage.write_bytes(target, body)
    Manifest(storage, SOURCE).save_artifact(ArtifactRecord(
        name=ARTIFACT, url="http://127.0.0.1/a.json", size=len(body), sha256=hashlib.sha256(body).hexdigest(),
        revision="b" * 40, fetched_at=now(), placement=Placement(target=target, bytes=len(body)), complete=True,
    ))
    zip_artifact = next(a for a in catalog[IMAGES_SOURCE].artifacts if a.extract)
    index = []
    for name, data in images.items():
        key = image_key(annotation.annotation, name)
        storage.write_bytes(key, data)
        index.append([key, len(data), zlib.crc32(data)])
    Manifest(storage, IMAGES_SOURCE).save_artifact(ArtifactRecord(
        name=zip_artifact.name, url="http://127.0.0.1/train2017.zip", size=1, sha256="0" * 64, fetched_at=now(),
        placement=Placement(folder=f"data/{zip_artifact.extract.into}", images=True, members=len(index), bytes=sum(len(d) for d in images.values())), complete=True,
    ))
    storage.write_json(index_key(IMAGES_SOURCE, zip_artifact.name), index)
    return records


def recipe(**more) -> Recipe:
    return Recipe(id="export_mix", title="Export", components=[Component(source=SOURCE, artifact=ARTIFACT)], shard_bytes=SHARD_BYTES, **more)


def json_mixture(storage) -> tuple[list[bytes], list[dict], str]:
    """The JSON mixture of the same recipe: each record's bytes, the records, the image folder."""
    lock = build(recipe(), storage, load_catalog(), fmt="json").to_json()
    records = json.loads(storage.read_bytes(lock["output"]["key"]))
    return [mix.json_bytes(r) for r in records], records, lock["image_folder"]


def shard_files(storage, lock, tmp_path) -> list[str]:
    """The lock's shards as local files, as a consumer fetches them (from S3: a download),
    each checked against the sha256 the lock lists."""
    folder = lock["output"]["key"].rsplit("/", 1)[0]
    paths = []
    for shard in lock["shards"]:
        data = storage.read_bytes(f"{folder}/{shard['name']}")
        assert hashlib.sha256(data).hexdigest() == shard["sha256"] and len(data) == shard["bytes"]
        path = tmp_path / "fetched" / shard["name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        paths.append(str(path))
    return paths


def pixels(data_or_image) -> tuple:
    image = data_or_image if isinstance(data_or_image, Image.Image) else Image.open(io.BytesIO(data_or_image))
    rgb = image.convert("RGB")
    return rgb.size, rgb.tobytes()


def exported(storage, tmp_path, fmt: str):
    """The recipe built as JSON and as ``fmt`` on the laid-out storage; the export's index and
    shard bound checked; its shards fetched: (each JSON record's bytes, the records, the image
    folder, the export's lock, the shards' local paths)."""
    lay_out(storage)
    raw, records, image_folder = json_mixture(storage)
    lock = build(recipe(), storage, load_catalog(), fmt=fmt).to_json()
    assert lock["output"]["key"] == f"mixtures/export_mix/export_mix.{fmt}/_index.json"
    index = storage.read_json(lock["output"]["key"])
    assert hashlib.sha256(storage.read_bytes(lock["output"]["key"])).hexdigest() == lock["output"]["sha256"]
    assert [(s["url"], s["nsamples"], s["filesize"], s["sha256"]) for s in index["shardlist"]] == [(s["name"], s["records"], s["bytes"], s["sha256"]) for s in lock["shards"]]
    assert index["records"] == lock["output"]["records"] == sum(s["records"] for s in lock["shards"])
    assert len(lock["shards"]) >= 3, "the bound splits this mixture into several shards"
    assert all(s["bytes"] <= SHARD_BYTES or s["records"] == 1 for s in lock["shards"])
    assert [s["name"] for s in lock["shards"]] == [f"export_mix-{n:06d}.{'tar' if fmt == 'webdataset' else 'parquet'}" for n in range(len(lock["shards"]))]
    return raw, records, image_folder, lock, shard_files(storage, lock, tmp_path)


def webdataset_rows(paths: list[str]) -> list[tuple[str, dict, Image.Image | None]]:
    """(key, record, image) of every sample, as ``webdataset`` reads and decodes them; a sample
    holds its record and at most one image, under the image's own extension."""
    import webdataset as wds

    rows = []
    for sample in wds.WebDataset(paths, shardshuffle=False).decode("pil"):
        files = set(sample) - {"__key__", "__url__", "__local_path__"}
        images = files - {"json"}
        assert "json" in files and len(images) <= 1, files
        image = sample[images.pop()] if images else None
        if image is not None:
            assert sample["json"]["image"].rsplit(".", 1)[1].lower() in files
        rows.append((sample["__key__"], sample["json"], image))
    return rows


@contextlib.contextmanager
def offline(datasets):
    """``datasets`` without the network, for this call only: its offline flag is read at import,
    and other tests of the session need the Hub replicas."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_DATASETS_OFFLINE", "1")
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
        patch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
        yield


def parquet_rows(paths: list[str], cache) -> list[tuple[str, dict, Image.Image | None]]:
    """(key, record, image) of every row, as ``datasets`` loads them (the Image feature decodes
    ``image``); the typed columns agree with the record."""
    import datasets

    with offline(datasets):
        loaded = datasets.load_dataset("parquet", data_files=paths, split="train", cache_dir=str(cache))
    assert isinstance(loaded.features["image"], datasets.Image)
    rows = []
    for row in loaded:
        record = json.loads(row["json"])
        assert row["id"] == str(record["id"])
        assert row["conversations"] == [{"from": t["from"], "value": t["value"]} for t in record["conversations"]]
        rows.append((row["key"], record, row["image"]))
    return rows


def assert_matches_json(rows, records: list[dict], storage, image_folder: str) -> None:
    """Record for record the JSON mixture, every image decoded and equal to the stored one."""
    assert len(rows) == len(records)
    assert len({key for key, _, _ in rows}) == len(rows)  # unique, though ids need not be
    for (_, got, image), record in zip(rows, records):
        assert got == record
        if "image" in record:
            assert isinstance(image, Image.Image)
            assert pixels(image) == pixels(storage.read_bytes(f"{image_folder}/{record['image']}"))
        else:
            assert image is None


def test_webdataset_shards_read_back_with_webdataset_match_the_json_mixture(storage, tmp_path):
    raw, records, image_folder, lock, paths = exported(storage, tmp_path, "webdataset")
    assert storage.read_json(lock["output"]["key"])["__kind__"] == "wids-shard-index-v1"
    assert_matches_json(webdataset_rows(paths), records, storage, image_folder)
    if isinstance(storage, S3Storage):  # and straight from the bucket, as a training job streams it (curl, presigned URLs)
        folder = f"{storage.prefix}/{lock['output']['key'].rsplit('/', 1)[0]}"
        urls = [storage.client.generate_presigned_url("get_object", Params={"Bucket": storage.bucket, "Key": f"{folder}/{s['name']}"}) for s in lock["shards"]]
        assert_matches_json(webdataset_rows(urls), records, storage, image_folder)

    # The members' bytes: the JSON mixture's record, the stored image; headers carry nothing variable.
    members = [(member, tar.extractfile(member).read()) for path in paths for tar in [tarfile.open(path)] for member in tar.getmembers()]
    assert [data for member, data in members if member.name.endswith(".json")] == raw
    stored = [storage.read_bytes(f"{image_folder}/{r['image']}") for r in records if "image" in r]
    assert [data for member, data in members if not member.name.endswith(".json")] == stored
    assert all((m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode, m.type) == (0, 0, 0, "", "", 0o644, tarfile.REGTYPE) for m, _ in members)
    assert all("." not in m.name.rsplit(".", 1)[0] for m, _ in members)


def test_parquet_files_read_back_with_datasets_and_pyarrow_match_the_json_mixture(storage, tmp_path):
    import datasets
    import pyarrow.parquet as pq

    raw, records, image_folder, lock, paths = exported(storage, tmp_path, "parquet")

    assert_matches_json(parquet_rows(paths, tmp_path / "hf"), records, storage, image_folder)

    # pyarrow alone, and on S3 straight from the bucket, as a training job would read it.
    if isinstance(storage, S3Storage):
        from pyarrow import fs

        endpoint = storage.client.meta.endpoint_url
        s3 = fs.S3FileSystem(endpoint_override=endpoint.split("://", 1)[1], scheme="http", access_key="testing", secret_key="testing", region="us-east-1")
        folder = f"{storage.bucket}/{storage.prefix}/{lock['output']['key'].rsplit('/', 1)[0]}"
        table = pq.read_table([f"{folder}/{s['name']}" for s in lock["shards"]], filesystem=s3)
    else:
        table = pq.read_table(storage.local_path(lock["output"]["key"]).parent)  # the folder, _index.json beside the files
        with offline(datasets):
            assert len(datasets.load_dataset(str(storage.local_path(lock["output"]["key"]).parent), split="train", cache_dir=str(tmp_path / "hf2"))) == len(records)
    assert table.column("json").to_pylist() == [r.decode() for r in raw]
    images = table.column("image").to_pylist()
    assert [i["path"] if i else None for i in images] == [r.get("image") for r in records]
    assert all(pixels(i["bytes"]) for i in images if i)


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_a_rebuild_from_the_lock_gives_the_same_shards(storage, fmt):
    lay_out(storage)
    catalog = load_catalog()
    first = build(recipe(), storage, catalog, fmt=fmt).to_json()
    folder = first["output"]["key"].rsplit("/", 1)[0]
    before = {s["name"]: storage.read_bytes(f"{folder}/{s['name']}") for s in first["shards"]}
    storage.write_bytes(f"{folder}/export_mix-000999.{'tar' if fmt == 'webdataset' else 'parquet'}", b"left by a larger mixture")
    again = rebuild(mix.parse_lock(first), storage, catalog).to_json()
    assert again["shards"] == first["shards"] and again["output"] == first["output"]
    assert {s["name"]: storage.read_bytes(f"{folder}/{s['name']}") for s in again["shards"]} == before
    assert sorted(key for key, _ in storage.list(folder)) == sorted([f"{folder}/{name}" for name in before] + [f"{folder}/_index.json"])


def test_a_missing_image_fails_the_export_clearly_and_places_nothing(tmp_path):
    storage = LocalStorage(tmp_path / "root")
    records = lay_out(storage)
    gone = next(r["image"] for r in records if "image" in r and r["id"] == "a.b/c d")
    storage.delete(f"data/coco/train2017/{gone}")  # verified, then lost: the index still lists it
    with pytest.raises(export.ExportError, match=f"id 'a.b/c d'.*{gone} is not on the storage.*drop_missing_images"):
        build(recipe(), storage, load_catalog(), fmt="webdataset")
    assert not storage.exists("mixtures/export_mix/export_mix.webdataset/_index.json")
    assert not storage.exists(mix.latest_lock_key("export_mix"))
    assert [p for p in storage.staging_dir().rglob("*") if p.is_file()] == []


def test_keys_are_unique_safe_and_keep_the_id_readable():
    ids = ["dup", "dup", "a.b/c d", "é-ü 中", 7, "", "x" * 200, "../etc"]
    keys = [export.sample_key(n, i) for n, i in enumerate(ids)]
    assert keys == ["000000000_dup", "000000001_dup", "000000002_a-b-c-d", "000000003", "000000004_7", "000000005", "000000006_" + "x" * 80, "000000007_etc"]
    assert [export.image_extension(p) for p in ["a/b.JPG", "c.png", "d", "e.tar.gz", "f.we ird", "g."]] == ["jpg", "png", "bin", "gz", "bin", "bin"]


def test_the_export_pulls_records_one_shard_at_a_time(tmp_path):
    """Streaming: when a shard reaches the storage, the export has read no more records than
    that shard holds plus the images it reads ahead (a generator of a million records would
    never be in memory at once)."""
    storage = LocalStorage(tmp_path / "root")
    data = _image(3, "JPEG")
    for number in range(4):
        storage.write_bytes(f"data/img/{number}.jpg", data)
    pulled, placed = [0], []

    def records():
        for number in range(200):
            pulled[0] += 1
            yield mix.json_bytes({"id": number, "image": f"img/{number % 4}.jpg", "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]})

    put_file = storage.put_file

    def spy(path, key):
        placed.append(pulled[0])
        put_file(path, key)

    storage.put_file = spy
    done = export.export("webdataset", records(), storage, "data", "out", "s", shard_bytes=10 * len(data))
    per_shard = done.shards[0].records
    assert len(done.shards) > 10 and done.records == 200
    read_ahead = 2 * storage.write_threads
    assert all(got <= (n + 1) * per_shard + read_ahead + 1 for n, got in enumerate(placed[:-1]))


MEMORY_SCRIPT = """
import json, os, resource, sys
from vlmdata import export
from vlmdata.storage import LocalStorage
fmt, count, root = sys.argv[1], int(sys.argv[2]), sys.argv[3]
storage = LocalStorage(root)
for n in range(8):
    storage.write_bytes(f"data/img/{n}.jpg", os.urandom(256 << 10))
export.ParquetShard.ROW_GROUP_BYTES = 2 << 20  # row groups this test's small mixture holds several of
def records():
    for n in range(count):
        yield json.dumps({"id": n, "image": f"img/{n % 8}.jpg", "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x" * 500}]}).encode()
done = export.export(fmt, records(), storage, "data", "out", "m", shard_bytes=8 << 20)
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "records": done.records, "shards": len(done.shards)}))
"""


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_peak_memory_does_not_grow_with_the_mixture(tmp_path, fmt):
    """50 records (12.5 MiB of images) and 400 (100 MiB): the same peak RSS, within what a few
    row groups and read-ahead images take."""
    peaks = {}
    for count in (50, 400):
        answer = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, fmt, str(count), str(tmp_path / f"root{count}")], capture_output=True, text=True, timeout=600)
        assert answer.returncode == 0, answer.stderr
        result = json.loads(answer.stdout)
        assert result["records"] == count
        peaks[count] = result["peak_mb"]
    assert peaks[400] - peaks[50] < 20, peaks  # holding the mixture would add about 87 MiB


def test_a_record_with_infinity_exports_as_written(tmp_path):
    """json writes Infinity (a record's extra key may hold it, and the mixture keeps it); the
    export reads such a record too, and carries its bytes unchanged."""
    storage = LocalStorage(tmp_path / "root")
    record = mix.json_bytes({"id": 1, "score": float("inf"), "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]})
    assert b"Infinity" in record
    done = export.export("webdataset", [record], storage, "data", "out", "s")
    with tarfile.open(storage.local_path(f"out/{done.shards[0].name}")) as tar:
        assert [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()] == [("000000000_1.json", record)]


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_an_empty_mixture_exports_an_empty_index_and_clears_the_old_shards(tmp_path, fmt):
    storage = LocalStorage(tmp_path / "root")
    storage.write_bytes("out/s-000000.tar", b"an earlier export's")
    done = export.export(fmt, [], storage, "data", "out", "s")
    assert (done.records, done.shards) == (0, [])
    assert storage.read_json("out/_index.json")["shardlist"] == [] and [key for key, _ in storage.list("out")] == ["out/_index.json"]


def test_an_unknown_format_is_refused_before_anything_is_written(tmp_path):
    storage = LocalStorage(tmp_path / "root")
    lay_out(storage)
    with pytest.raises(mix.MixError, match="unknown format 'tfrecord'; known: json, jsonl, webdataset, parquet"):
        build(recipe(), storage, load_catalog(), fmt="tfrecord")
    assert list(storage.list("mixtures")) == []
