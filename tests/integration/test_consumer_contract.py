"""Mixtures load the way the training code loads them.

``load_like_llava`` restates what LLaVA's ``LazySupervisedDataset`` (and ConvLLaVA's
``SampleDataset``, built on it) does with a data file: ``json.load`` a list, join
``image_folder`` and the record's ``image`` with ``os.path.join``, open it with PIL and
convert to RGB, and hand the conversations to a preprocessor that expects ``<image>`` in
the first human turn exactly when there is an image and roles alternating from human.
"""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from vlmdata.replicas.hf_hub import FakeHfHub
from vlmdata.replicas.http_server import FakeHttpServer
from vlmdata.replicas.slice import SliceReplica
from vlmdata.acquire import Context, acquire
from vlmdata.catalog import load_catalog
from vlmdata.mirrors import Mirrors
from vlmdata.mix import build, load_recipes, output_key
from vlmdata.storage import LocalStorage
from vlmdata.verify import verify_source

# The recipes whose sources the slice replicas provide.
RECIPES = ["llava_instruct_150k", "llava_v1_5_mix665k", "convllava_stage3"]


def load_like_llava(data_path: str, image_folder: str) -> int:
    """What training does with every record; returns how many records carry an image."""
    with open(data_path) as handle:
        records = json.load(handle)
    assert isinstance(records, list)
    with_image = 0
    for record in records:
        turns = record["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2) and len(turns) % 2 == 0
        if "image" in record:
            image = Image.open(os.path.join(image_folder, record["image"])).convert("RGB")
            assert image.size[0] > 0
            assert "<image>" in turns[0]["value"]
            with_image += 1
        else:
            assert not any("<image>" in t["value"] for t in turns)
    return with_image


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    work = tmp_path_factory.mktemp("contract")
    storage = LocalStorage(work / "root")
    with FakeHttpServer() as http, FakeHfHub() as hub, pytest.MonkeyPatch.context() as patch:
        for key, value in SliceReplica().install(http, hub, work).items():
            patch.setenv(key, value)
        catalog = load_catalog()
        ctx = Context(storage, Mirrors.from_env())
        for source_id in ("coco_train2017", "llava_instruct_150k"):
            acquire(catalog[source_id], ctx)
        for source_id in ("coco_train2017", "llava_instruct_150k"):
            verify_source(catalog[source_id], storage, catalog, workers=1)
        locks = {recipe_id: build(load_recipes()[recipe_id], storage, catalog) for recipe_id in RECIPES}
    return storage, locks


@pytest.mark.parametrize("recipe_id", RECIPES)
def test_mixture_loads_like_llava_training(built, recipe_id):
    storage, locks = built
    lock = locks[recipe_id]
    data_path = storage.local_path(output_key(recipe_id, "json"))
    image_folder = storage.local_path(lock.image_folder)
    with_image = load_like_llava(str(data_path), str(image_folder))
    assert lock.output.records == len(json.loads(data_path.read_text()))
    assert with_image > 0


def test_text_only_records_survive_and_unreachable_images_are_dropped(built):
    storage, locks = built
    lock = locks["llava_v1_5_mix665k"]
    records = json.loads(storage.read_bytes(output_key("llava_v1_5_mix665k", "json")))
    assert any("image" not in r for r in records)  # LLaVA-1.5's text-only conversations stay
    dropped = {d.id: d.reason for d in lock.dropped}
    assert dropped["mix-gqa"] == "image missing"  # GQA is not acquired in this slice


def test_the_same_lock_rebuilds_byte_identical(built):
    storage, locks = built
    for recipe_id in RECIPES:
        before = storage.read_bytes(output_key(recipe_id, "json"))
        again = build(load_recipes()[recipe_id], storage, load_catalog(), seed=locks[recipe_id].seed)
        assert storage.read_bytes(output_key(recipe_id, "json")) == before
        assert again.output.sha256 == locks[recipe_id].output.sha256


def _recipe(**fields):
    from vlmdata.mix import Recipe

    base = {"id": "custom", "title": "custom", "components": [{"source": "llava_instruct_150k", "artifact": "conversation_58k.json"}, {"source": "llava_instruct_150k", "artifact": "detail_23k.json"}]}
    return Recipe.model_validate({**base, **fields})


def test_duplicate_id_policies(built):
    storage, _ = built
    catalog = load_catalog()
    # conversation_58k and detail_23k both name COCO images 1-3 (same ids); #3 is broken.
    keep = build(_recipe(), storage, catalog)
    drop = build(_recipe(duplicate_ids="drop"), storage, catalog)
    suffix = build(_recipe(duplicate_ids="suffix"), storage, catalog)
    assert keep.output.records == suffix.output.records == drop.output.records + 2
    assert [d.reason for d in drop.dropped].count("duplicate id") == 2
    ids = [r["id"] for r in json.loads(storage.read_bytes(output_key("custom", "json")))]
    assert len(ids) == len(set(ids)) and sum(i.endswith("#2") for i in ids) == 2


def test_turn_bound_sampling_and_jsonl(built):
    storage, _ = built
    catalog = load_catalog()
    bounded = build(_recipe(max_turns=1), storage, catalog)
    assert bounded.counts["llava_instruct_150k:conversation_58k.json"].dropped == {"too many turns": 4, "image broken": 1}
    half = build(_recipe(components=[{"source": "llava_instruct_150k", "artifact": "llava_instruct_80k.json", "take": 0.5}], format="jsonl"), storage, catalog, seed=7)
    assert half.output.key == "mixtures/custom/custom.seed7.jsonl"  # not the recipe's seed: named after its own
    lines = storage.read_bytes(half.output.key).decode().splitlines()
    counts = half.counts["llava_instruct_150k:llava_instruct_80k.json"]
    assert counts.available == 6 and counts.sampled == 3 and counts.kept == len(lines) == half.output.records
    again = build(_recipe(components=[{"source": "llava_instruct_150k", "artifact": "llava_instruct_80k.json", "take": 0.5}], format="jsonl"), storage, catalog, seed=7)
    assert again.output.sha256 == half.output.sha256  # the seed decides the sample
    assert storage.read_bytes("mixtures/custom/composition.svg").startswith(b"<svg")


def test_rebuild_from_a_lock_is_byte_identical_and_refuses_changed_inputs(built):
    from vlmdata.manifest import Manifest
    from vlmdata.mix import MixError, latest_lock_key, read_lock, rebuild

    storage, _ = built
    catalog = load_catalog()
    lock = read_lock(storage, latest_lock_key("llava_instruct_150k"))
    assert rebuild(lock, storage, catalog).output.sha256 == lock.output.sha256
    manifest = Manifest(storage, "llava_instruct_150k")
    record = manifest.artifact("llava_instruct_150k.json")
    manifest.save_artifact(record.model_copy(update={"sha256": "0" * 64}))
    try:
        with pytest.raises(MixError, match="the lock pins"):
            rebuild(lock, storage, catalog)
    finally:
        manifest.save_artifact(record)


def test_each_output_keeps_its_own_lock_and_rebuilds_exactly(built, capsys):
    """Builds with another seed or format write other outputs, each with its own lock; the
    earlier lock survives and rebuilds its own bytes, through the CLI too."""
    from vlmdata.cli import main
    from vlmdata.mix import latest_lock_key, lock_of, read_lock, rebuild

    storage, _ = built
    catalog = load_catalog()
    sampled = _recipe(id="sampled", components=[{"source": "llava_instruct_150k", "artifact": "llava_instruct_80k.json", "take": 0.5}])
    locks = [build(sampled, storage, catalog), build(sampled, storage, catalog, seed=7), build(sampled, storage, catalog, fmt="jsonl")]
    keys = [lock.output.key for lock in locks]
    assert keys == ["mixtures/sampled/sampled.json", "mixtures/sampled/sampled.seed7.json", "mixtures/sampled/sampled.jsonl"]
    assert locks[0].output.sha256 != locks[1].output.sha256  # the seeds sampled other records
    outputs = {key: storage.read_bytes(key) for key in keys}
    for lock in locks:
        kept = read_lock(storage, lock_of(lock.output.key))
        assert kept == lock and (kept.seed, kept.format) == (lock.seed, lock.format)
    assert read_lock(storage, latest_lock_key("sampled")) == locks[-1]  # the latest build's, at a stable key

    for lock in locks:  # rebuilt in another order: each gives its own bytes again
        storage.delete(lock.output.key)
        assert rebuild(read_lock(storage, lock_of(lock.output.key)), storage, catalog).output.sha256 == lock.output.sha256
        assert storage.read_bytes(lock.output.key) == outputs[lock.output.key]

    capsys.readouterr()
    storage.delete(keys[1])
    assert main(["--root", str(storage.root), "mix", "--from-lock", lock_of(keys[1])]) == 0  # a key on the storage
    printed = json.loads(capsys.readouterr().out)
    assert printed["output"]["sha256"] == locks[1].output.sha256 and printed["lock"] == lock_of(keys[1]) and printed["image_folder"] == "data"
    assert storage.read_bytes(keys[1]) == outputs[keys[1]]
    local_copy = storage.local_path(lock_of(keys[0]))
    assert main(["--root", str(storage.root), "mix", "--from-lock", str(local_copy)]) == 0  # a local file
    assert json.loads(capsys.readouterr().out)["output"]["sha256"] == locks[0].output.sha256


def test_a_file_that_is_no_lock_gets_a_clear_error(built, tmp_path, capsys):
    from vlmdata.cli import main

    storage, _ = built
    not_a_lock = tmp_path / "summary.json"
    not_a_lock.write_bytes(storage.read_bytes("mixtures/llava_instruct_150k/summary.json"))
    assert main(["--root", str(storage.root), "mix", "--from-lock", str(not_a_lock)]) == 1
    err = capsys.readouterr().err
    assert f"{not_a_lock} is not a mixture lock" in err and "Traceback" not in err
