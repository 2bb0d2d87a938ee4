"""Every built-in recipe on the replicas of every source (the demo's), through the library:
it builds, loads the way the training code loads it, resolves in both training trees, and
rebuilds byte-identical from its lock."""

from __future__ import annotations

import io
import json
import os

import pytest
from PIL import Image

from tests.integration.test_consumer_contract import load_like_llava
from tests.integration.test_export import assert_matches_json, parquet_rows, shard_files, webdataset_rows
from vlmdata import crawl, export
from vlmdata.acquire import Context, acquire
from vlmdata.catalog import load_catalog
from vlmdata.layout import load_profiles, materialise
from vlmdata.mirrors import Mirrors
from vlmdata.mix import build, load_recipes, output_key, rebuild
from vlmdata.replicas.sources import Replicas
from vlmdata.reports import CrawlReport, load
from vlmdata.storage import LocalStorage
from vlmdata.verify import verify_source


@pytest.fixture(scope="module")
def everything(tmp_path_factory):
    work = tmp_path_factory.mktemp("every")
    replicas = Replicas(work / "replicas").start()
    storage = LocalStorage(work / "root")
    try:
        with pytest.MonkeyPatch.context() as patch:
            for key, value in replicas.env().items():
                patch.setenv(key, value)
            catalog = load_catalog()
            for source in catalog.values():
                acquire(source, Context(storage, Mirrors.from_env()), acknowledge=True)
            reports = {sid: verify_source(source, storage, catalog, workers=1) for sid, source in catalog.items()}
            profiles = {pid: materialise(profile, storage) for pid, profile in load_profiles().items()}
            locks = {rid: build(recipe, storage, catalog) for rid, recipe in load_recipes().items()}
            yield replicas, storage, catalog, reports, profiles, locks
    finally:
        replicas.stop()


def test_every_source_verifies_and_names_exactly_the_planted_broken_images(everything):
    replicas, storage, catalog, reports, _, _ = everything
    assert {sid: r.reasons for sid, r in reports.items() if r.status == "fail"} == {}
    for source_id, broken in replicas.expected_broken.items():
        named = set(storage.read_json(f"_vlmdata/reports/{source_id}/broken.json"))
        assert named == broken, source_id


def test_both_trees_have_what_the_replicas_provide(everything):
    _, _, _, _, profiles, _ = everything
    assert profiles["sharegpt4v"]["missing"] == []
    assert profiles["llava15"]["missing"] == []


@pytest.mark.parametrize("recipe_id", sorted(load_recipes()))
def test_every_recipe_loads_like_training_and_rebuilds_from_its_lock(everything, recipe_id):
    _, storage, catalog, _, _, locks = everything
    lock = locks[recipe_id]
    assert lock.output.records > 0
    data_path = storage.local_path(output_key(recipe_id, lock.format))
    assert load_like_llava(str(data_path), str(storage.local_path(lock.image_folder))) > 0
    before = data_path.read_bytes()
    assert rebuild(lock, storage, catalog).output.sha256 == lock.output.sha256
    assert data_path.read_bytes() == before


def test_llava_1_5_recipes_resolve_in_the_playground_view(everything):
    _, storage, _, _, _, locks = everything
    view = storage.local_path("playground/data")
    for recipe_id in ("llava_v1_5_mix665k", "convllava_stage3"):
        records = json.loads(storage.read_bytes(output_key(recipe_id, "json")))
        images = [r["image"] for r in records if "image" in r]
        assert images and all(os.path.exists(view / image) for image in images), recipe_id


def test_the_cli_acquisition_fills_the_crawl_gaps_from_the_mirror_replicas(everything):
    replicas, storage, _, _, _, _ = everything
    report = load(storage, crawl.report_key("ocr_vqa"), CrawlReport)
    expected = replicas.expected_crawl
    assert set(report.filled_from_mirror) == expected["filled"] and set(report.missing) == expected["missing"]
    assert {key.rsplit("/", 1)[1][:-4] for key, _ in storage.list("data/ocr_vqa/images")} == expected["stored"]
    for isbn in expected["converted"] | expected["filled"]:  # GIFs and PNGs, crawled or from a mirror (under .jpg names there too)
        with Image.open(io.BytesIO(storage.read_bytes(f"data/ocr_vqa/images/{isbn}.jpg"))) as image:
            assert image.format == "JPEG", isbn
    assert {isbn: entry.conversion for isbn, entry in report.filled_from_mirror.items()} == {"0005678901": "GIF->JPEG", "1437717772": "PNG->JPEG"}


@pytest.mark.parametrize("source_id", sorted(load_catalog()))
def test_integrity_report_names_exactly_the_planted_faults(everything, source_id):
    """The replicas' upstream shapes (Vision-Flan's flat folder of PNGs and JPEGs, OCR-VQA's
    9-digit and X-ending ids, SA-1B's "./" members behind unsorted signed links) verify with
    nothing but the planted faults named."""
    replicas, storage, _, reports, _, _ = everything
    report = reports[source_id]
    assert report.status in ("ok", "warn"), report.failures
    assert set(report.images.mislabelled) == replicas.expected_mislabelled.get(source_id, set())
    assert replicas.unresolved_in(report) == replicas.expected_missing_refs.get(source_id, {})


def test_every_replica_image_is_placed_where_the_trees_expect_it(everything):
    replicas, storage, _, _, _, _ = everything
    placed = {key[len("data/"):] for key, _ in storage.list("data") if key.rsplit(".", 1)[-1] in ("jpg", "jpeg", "png")}
    assert placed == {path for path, status in replicas.tree.items() if status != "broken"}
    assert all(storage.exists(f"data/{path}") for path in replicas.spot_checks.values())


def test_every_mixture_keeps_exactly_what_the_replicas_hold(everything):
    replicas, storage, _, _, _, locks = everything
    for recipe_id, recipe in load_recipes().items():
        lock = locks[recipe_id]
        for component in recipe.components:
            if component.take == "all":
                assert lock.counts[component.label].kept == replicas.expected_kept(component.source, component.artifact), (recipe_id, component.label)
        records = json.loads(storage.read_bytes(lock.output.key))
        folder = storage.local_path(f"data/{recipe.image_folder}")
        assert all(os.path.isfile(folder / r["image"]) for r in records if "image" in r), recipe_id


@pytest.mark.parametrize("fmt", export.FORMATS)
@pytest.mark.parametrize("recipe_id", ["convllava_stage2", "llava_v1_5_mix665k"])
def test_exports_match_the_json_mixture_record_for_record(everything, recipe_id, fmt, tmp_path):
    """The upstream shapes an export must carry (Vision-Flan's duplicate ids and PNGs among
    JPEGs, ALLaVA, mix665k's text-only records), read back with webdataset and datasets."""
    _, storage, catalog, _, _, locks = everything
    records = json.loads(storage.read_bytes(locks[recipe_id].output.key))
    shapes = {"convllava_stage2": lambda r: r.get("image", "").endswith(".png"), "llava_v1_5_mix665k": lambda r: "image" not in r}
    assert any(map(shapes[recipe_id], records)), "the shape this recipe is here for"
    # its own id: the built-in recipe's JSON mixture and lock stay as the other tests read them
    the_recipe = load_recipes()[recipe_id].model_copy(update={"id": f"{recipe_id}_{fmt}", "shard_bytes": 1 << 14})
    lock = build(the_recipe, storage, catalog, fmt=fmt).to_json()
    assert len(lock["shards"]) > 1
    paths = shard_files(storage, lock, tmp_path)
    rows = webdataset_rows(paths) if fmt == "webdataset" else parquet_rows(paths, tmp_path / "hf")
    assert_matches_json(rows, records, storage, locks[recipe_id].image_folder)
