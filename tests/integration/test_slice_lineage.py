"""Lineage of the slice read back from the storage the library wrote (local root and S3): what
each step's OpenLineage event names, and that a mixture leads back to every upstream file."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pytest

from tests import slice_storage
from tests.lineage_chain import roots
from vlmdata import lineage
from vlmdata.mix import lock_of
from vlmdata.catalog import load_catalog
from vlmdata.layout import load_profiles
from vlmdata.manifest import Manifest
from vlmdata.storage import LocalStorage


def on(storage, key: str) -> tuple[str, str]:
    """Where a key is, as OpenLineage names it: ``file`` + the absolute path, or ``s3://bucket`` + the object key."""
    if isinstance(storage, LocalStorage):
        return "file", str(storage.root / key)
    return f"s3://{storage.bucket}", f"{storage.prefix}/{key}"


def names(datasets) -> set[tuple[str, str]]:
    return {lineage.dataset_name(d.uri) for d in datasets}


@dataclass
class Slice:
    storage: object
    replica: object
    http: object
    catalog: dict


@pytest.fixture(scope="module")
def filled(module_storage, module_upstream):
    """The slice acquired, verified, laid out and mixed once per backend; the tests only read it."""
    replica, http, _hub = module_upstream
    slice_storage.fill(module_storage)
    return Slice(module_storage, replica, http, load_catalog())


def coco_fetch(s: Slice) -> lineage.Lineage:
    return lineage.of_fetch(s.storage, "coco_train2017", "train2017.zip")


def llava_fetches(s: Slice) -> list[lineage.Lineage]:
    return [lineage.of_fetch(s.storage, "llava_instruct_150k", name) for name in s.replica.llava_files]


def verifications(s: Slice) -> dict[str, lineage.Lineage]:
    return {sid: lineage.of_verify(s.storage, s.catalog[sid]) for sid in slice_storage.SOURCES}


def test_a_fetched_archive_names_its_url_its_bytes_and_the_folder_it_filled(filled):
    storage, replica = filled.storage, filled.replica
    coco = coco_fetch(filled)
    (zip_in,), (folder_out,) = coco.inputs, coco.outputs
    assert lineage.dataset_name(zip_in.uri) == (filled.http.url, "/coco/zips/train2017.zip")
    assert zip_in.version == hashlib.sha256(replica.coco_zip).hexdigest()  # no revision upstream: the bytes
    assert lineage.dataset_name(folder_out.uri) == on(storage, "data/coco")  # the zip holds train2017/...
    assert folder_out.files == len(replica.coco_members)
    assert coco.counts["bytes"] == len(replica.coco_zip) and coco.counts["files"] == len(replica.coco_members)


def test_a_fetched_hub_file_names_its_revision_and_where_it_landed(filled):
    replica = filled.replica
    for name, fetched in zip(replica.llava_files, llava_fetches(filled)):
        (file_in,), (file_out,) = fetched.inputs, fetched.outputs
        assert file_in.version == replica.commit and replica.commit in file_in.uri and file_in.uri.endswith(f"/{name}"), name
        assert lineage.dataset_name(file_out.uri) == on(filled.storage, f"data/llava/{name}")
        assert (file_out.bytes, file_out.files) == (len(replica.llava_files[name]), 1)


def test_publishing_names_the_source_record_and_its_files(filled):
    storage, replica = filled.storage, filled.replica
    published = lineage.of_publish(storage, "llava_instruct_150k")
    assert names(published.outputs) == {on(storage, "_vlmdata/sources/llava_instruct_150k")}
    assert names(published.inputs) == {on(storage, f"data/llava/{name}") for name in replica.llava_files}
    assert published.counts["revision"] == replica.commit and published.counts["artifacts"] == len(replica.llava_files)


def test_verification_names_its_report_what_it_read_and_its_counts(filled):
    storage, replica = filled.storage, filled.replica
    verified = verifications(filled)
    assert names(verified["coco_train2017"].outputs) == {on(storage, "_vlmdata/reports/coco_train2017/integrity.json")}
    assert names(verified["coco_train2017"].inputs) == {on(storage, "data/coco")}
    counts = verified["coco_train2017"].counts
    assert (counts["images_ok"], counts["images_broken"], counts["quarantined"]) == (len(replica.good_bare_names), 2, 2)
    # LLaVA's annotations point into COCO: its verification read COCO's images too.
    assert on(storage, "data/coco") in names(verified["llava_instruct_150k"].inputs)
    assert verified["llava_instruct_150k"].counts["references_resolved"] > 0


def test_a_layout_names_its_tree_and_the_folders_it_links(filled):
    layout = lineage.of_layout(filled.storage, load_profiles()["llava15"])
    assert names(layout.outputs) == {on(filled.storage, "playground/data")}
    assert on(filled.storage, "data/coco/train2017") in names(layout.inputs)


def test_a_mixture_names_its_output_its_lock_and_the_inputs_the_lock_pins(filled):
    storage, replica = filled.storage, filled.replica
    mixture = lineage.of_mixture(storage, slice_storage.RECIPE, filled.catalog)
    lock = storage.read_json("mixtures/llava_instruct_150k/lock.json")
    training, lock_file = mixture.outputs
    assert lineage.dataset_name(training.uri) == on(storage, "mixtures/llava_instruct_150k/llava_instruct_150k.json")
    assert (training.records, training.version) == (lock["output"]["records"], lock["output"]["sha256"])
    assert lineage.dataset_name(lock_file.uri) == on(storage, lock_of(lock["output"]["key"]))  # the build's own lock, not the latest's copy
    assert mixture.counts["dropped"] == len(lock["dropped"])
    annotation = on(storage, "data/llava/llava_instruct_150k.json")
    assert [d.version for d in mixture.inputs if lineage.dataset_name(d.uri) == annotation] == [lock["inputs"][0]["revision"]] == [replica.commit]
    assert names(mixture.inputs) == {annotation, *(on(storage, f"_vlmdata/reports/{sid}/integrity.json") for sid in slice_storage.SOURCES)}


def test_a_mixture_leads_back_to_every_upstream_file_and_nothing_else(filled):
    """The lock's annotation file directly; COCO's zip and LLaVA's other files through the
    integrity reports that decided which images are usable (a report reads every file of its
    source)."""
    storage = filled.storage
    fetches = [*llava_fetches(filled), coco_fetch(filled)]
    mixture = lineage.of_mixture(storage, slice_storage.RECIPE, filled.catalog)
    steps = [*fetches, *verifications(filled).values(), mixture]
    chain = [(names(step.inputs), names(step.outputs)) for step in steps]
    training = names(mixture.outputs[:1])
    lock = storage.read_json("mixtures/llava_instruct_150k/lock.json")
    pinned = {lineage.dataset_name(item["url"].split("?")[0]) for item in lock["inputs"]}
    assert pinned <= roots(chain, training)
    assert roots(chain, training) == {name for step in fetches for name in names(step.inputs)}
    assert len(roots(chain, training)) == len(filled.replica.llava_files) + 1


def test_nothing_acquired_names_nothing(storage):
    catalog = load_catalog()
    assert lineage.of_fetch(storage, "coco_train2017", "train2017.zip") == lineage.Lineage()
    assert lineage.of_verify(storage, catalog["coco_train2017"]) == lineage.Lineage()
    assert lineage.of_mixture(storage, "llava_instruct_150k", catalog) == lineage.Lineage()
    assert Manifest(storage, "coco_train2017").artifacts() == {}
