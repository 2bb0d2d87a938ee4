"""The slice through the library (no scheduler): COCO + LLaVA-Instruct-150K, acquired from
replicas on loopback, verified, laid out and mixed, on a local root and on S3."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass

import pytest

from vlmdata.replicas.http_server import reset_after
from vlmdata.replicas.slice import LLAVA_REPO, MISSING_FROM_COCO
from vlmdata import acquire as acq
from vlmdata.acquire import Context, LicenceNotAcknowledged, acquire
from vlmdata.catalog import load_catalog
from vlmdata.fetch.http import RetryPolicy
from vlmdata.layout import load_profiles, materialise
from vlmdata.manifest import Manifest
from vlmdata.mirrors import Mirrors
from vlmdata.mix import build, latest_lock_key, load_recipes, lock_of, output_key, rebuild
from vlmdata.storage import DiskFullError
from vlmdata.verify import verify_source

FAST = RetryPolicy(attempts=4, backoff=0.01)


def context(storage) -> Context:
    return Context(storage, mirrors=Mirrors.from_env(), policy=FAST)


# ------------------------------------------------------------------ the slice, stage by stage
# One scenario per backend, run once (module fixtures) and read by the tests below in the order of
# the file: acquire COCO and LLaVA-Instruct-150K, verify them, build the mixture, lay out both
# training trees. Each test reads its stage before a later fixture changes the storage (pytest
# runs a module's tests in file order, grouped by backend).


@dataclass
class Acquired:
    storage: object
    replica: object
    catalog: dict
    coco: dict  # what acquire() returned
    llava: dict


@pytest.fixture(scope="module")
def acquired(module_storage, module_upstream):
    replica, _http, _hub = module_upstream
    catalog = load_catalog()
    ctx = context(module_storage)
    return Acquired(module_storage, replica, catalog, acquire(catalog["coco_train2017"], ctx), acquire(catalog["llava_instruct_150k"], ctx))


def test_acquisition_names_what_changed_and_the_hub_revision(acquired):
    assert acquired.coco["changed"] == ["train2017.zip"] and len(acquired.llava["changed"]) == 6
    assert acquired.llava["revision"] == acquired.replica.commit


def test_acquisition_places_the_sharegpt4v_tree_without_the_archive(acquired):
    storage, replica = acquired.storage, acquired.replica
    assert len(dict(storage.list("data/coco/train2017"))) == len(replica.coco_members)
    assert storage.read_bytes("data/llava/llava_instruct_150k.json") == replica.llava_files["llava_instruct_150k.json"]
    assert not any(key.endswith(".zip") for key, _ in storage.list("data"))  # the archive is not kept


def test_acquisition_records_the_archive_checksums_and_what_it_placed(acquired):
    replica = acquired.replica
    record = Manifest(acquired.storage, "coco_train2017").artifact("train2017.zip")
    assert record.sha256 == hashlib.sha256(replica.coco_zip).hexdigest() and record.md5 == hashlib.md5(replica.coco_zip).hexdigest()
    assert record.complete and record.placement.members == len(replica.coco_members)


@dataclass
class Verified:
    acquired: Acquired
    coco: object  # the integrity reports
    llava: object


@pytest.fixture(scope="module")
def verified(acquired):
    catalog, storage = acquired.catalog, acquired.storage
    coco = verify_source(catalog["coco_train2017"], storage, catalog, workers=2)
    return Verified(acquired, coco, verify_source(catalog["llava_instruct_150k"], storage, catalog))


def test_integrity_names_exactly_the_planted_broken_images(verified):
    storage, replica = verified.acquired.storage, verified.acquired.replica
    assert set(json.loads(storage.read_bytes("_vlmdata/reports/coco_train2017/broken.json"))) == replica.broken_keys
    assert verified.coco.images.ok == len(replica.coco_members) - 2


def test_broken_images_leave_the_training_tree_for_the_quarantine(verified):
    storage, replica = verified.acquired.storage, verified.acquired.replica
    assert len(list(storage.list("data/coco/train2017"))) == len(replica.good_bare_names)
    assert {k.removeprefix("_vlmdata/quarantine/coco_train2017/") for k, _ in storage.list("_vlmdata/quarantine")} == replica.broken_keys


def test_annotation_references_name_each_missing_and_broken_image(verified):
    report, replica = verified.llava, verified.acquired.replica
    assert report.annotations["llava_instruct_150k.json"].invalid == 1
    refs = report.references["llava_instruct_150k.json"]
    assert refs.resolved == len(replica.good_bare_names)
    assert {r: v.count for r, v in refs.reasons.items()} == {
        "image missing": 2,
        "image broken: empty file": 1,
        **{r: 1 for r in refs.reasons if r.startswith("image broken: does not decode")},
    }
    assert report.references["llava_v1_5_mix665k.json"].reasons["image missing: source gqa not acquired"].count == 1


@dataclass
class Mixed:
    verified: Verified
    lock: object
    records: list  # of the mixture's output


@pytest.fixture(scope="module")
def mixed(verified):
    storage = verified.acquired.storage
    lock = build(load_recipes()["llava_instruct_150k"], storage, verified.acquired.catalog)
    return Mixed(verified, lock, json.loads(storage.read_bytes(output_key("llava_instruct_150k", "json"))))


def test_the_mixture_keeps_exactly_the_records_whose_images_decode(mixed):
    replica = mixed.verified.acquired.replica
    assert sorted(r["image"] for r in mixed.records) == sorted(f"coco/train2017/{n}" for n in replica.good_bare_names)
    reasons = [d.reason for d in mixed.lock.dropped]
    assert reasons.count("image missing") == len(MISSING_FROM_COCO) and reasons.count("image broken") == 2
    assert sum(r.startswith("malformed") for r in reasons) == 1


def test_the_lock_pins_the_input_revision_and_both_checksums(mixed):
    storage, replica, lock = mixed.verified.acquired.storage, mixed.verified.acquired.replica, mixed.lock
    assert lock.inputs[0].revision == replica.commit
    assert lock.inputs[0].sha256 == hashlib.sha256(replica.llava_files["llava_instruct_150k.json"]).hexdigest()
    assert lock.output.sha256 == hashlib.sha256(storage.read_bytes(output_key("llava_instruct_150k", "json"))).hexdigest()


def test_every_mixture_image_resolves_under_one_folder(mixed):
    for r in mixed.records:  # paths resolve under one image folder: <root>/data
        assert mixed.verified.acquired.storage.size(f"data/{r['image']}"), r["image"]


def test_the_same_inputs_build_the_same_bytes_with_their_locks(mixed):
    storage = mixed.verified.acquired.storage
    first = storage.read_bytes(output_key("llava_instruct_150k", "json"))
    # Same inputs, same bytes (forced: with nothing changed a build writes nothing).
    build(load_recipes()["llava_instruct_150k"], storage, mixed.verified.acquired.catalog, force=True)
    assert storage.read_bytes(output_key("llava_instruct_150k", "json")) == first
    assert storage.exists(lock_of(output_key("llava_instruct_150k", "json"))) and storage.exists(latest_lock_key("llava_instruct_150k"))


def test_a_recipe_without_filters_still_drops_the_malformed_record_and_so_does_its_rebuild(mixed):
    """With its reason in the lock."""
    storage, replica, catalog = mixed.verified.acquired.storage, mixed.verified.acquired.replica, mixed.verified.acquired.catalog
    bare = load_recipes()["llava_instruct_150k"].model_copy(update={"id": "no_filters", "filters": []})
    unfiltered = build(bare, storage, catalog)
    assert [d.reason for d in unfiltered.dropped] == ["malformed: " + d.reason.removeprefix("malformed: ") for d in mixed.lock.dropped if d.reason.startswith("malformed")]
    assert unfiltered.output.records == len(json.loads(replica.llava_files["llava_instruct_150k.json"])) - 1  # missing and broken images kept
    assert rebuild(unfiltered, storage, catalog, force=True).output.sha256 == unfiltered.output.sha256


def test_the_llava15_tree_links_what_is_there_and_names_what_is_missing(verified):
    storage, replica = verified.acquired.storage, verified.acquired.replica
    view = materialise(load_profiles()["llava15"], storage)
    assert "coco/train2017" not in view["missing"] and "gqa/images" in view["missing"]
    assert view["views"]["playground/data/coco/train2017"] == "data/coco/train2017"
    if storage.supports_links:
        linked = storage.local_path("playground/data/coco/train2017")
        assert linked.is_symlink() and not os.readlink(linked).startswith("/")
        assert len(list(linked.iterdir())) == len(replica.good_bare_names)
        assert (storage.local_path("playground/data/llava_v1_5_mix665k.json")).read_bytes() == replica.llava_files["llava_v1_5_mix665k.json"]
    else:
        assert storage.read_json("_vlmdata/layouts/llava15.json")["views"]["playground/data/coco/train2017"] == "data/coco/train2017"
        assert not list(storage.list("playground"))  # no duplicated objects on S3


def test_the_sharegpt4v_tree_names_what_is_missing(verified):
    tree = materialise(load_profiles()["sharegpt4v"], verified.acquired.storage)
    assert "coco/train2017" not in tree["missing"] and "llava/llava_v1_5_mix665k.json" not in tree["missing"]
    assert "sam/images" in tree["missing"]


def test_rerun_with_nothing_changed_downloads_nothing(storage, upstream):
    replica, http, hub = upstream
    catalog = load_catalog()
    ctx = context(storage)
    acquire(catalog["coco_train2017"], ctx)
    acquire(catalog["llava_instruct_150k"], ctx)
    downloads = [r for r in http.requests if r.method == "GET" and ("/resolve/" in r.path or r.path.endswith(".zip"))]
    again_coco = acquire(catalog["coco_train2017"], ctx)
    again_llava = acquire(catalog["llava_instruct_150k"], ctx)
    assert again_coco["changed"] == [] and again_llava["changed"] == []
    assert [r for r in http.requests if r.method == "GET" and ("/resolve/" in r.path or r.path.endswith(".zip"))] == downloads


def test_changed_upstream_fetches_only_what_changed(storage, upstream):
    replica, http, hub = upstream
    catalog = load_catalog()
    ctx = context(storage)
    acquire(catalog["llava_instruct_150k"], ctx)
    files = dict(replica.llava_files, **{"detail_23k.json": b"[]\n" + b" " * 2000})
    new_commit = hub.add_repo(LLAVA_REPO, files)
    result = acquire(catalog["llava_instruct_150k"], ctx)
    assert result["changed"] == ["detail_23k.json"] and result["revision"] == new_commit
    assert storage.read_bytes("data/llava/detail_23k.json") == files["detail_23k.json"]


def test_pinned_revision_stays_pinned(storage, upstream):
    replica, http, hub = upstream
    catalog = load_catalog()
    first = replica.commit
    hub.add_repo(LLAVA_REPO, dict(replica.llava_files, **{"detail_23k.json": b"[]" + b" " * 2000}))
    ctx = Context(storage, mirrors=Mirrors.from_env(), policy=FAST, revision=first)
    result = acquire(catalog["llava_instruct_150k"], ctx)
    assert result["revision"] == first
    assert storage.read_bytes("data/llava/detail_23k.json") == replica.llava_files["detail_23k.json"]


def test_changed_archive_replaces_its_members_and_removes_stale_ones(storage, upstream, tmp_path, monkeypatch):
    replica, http, hub = upstream
    from vlmdata.replicas.data import coco_like_zip

    catalog = load_catalog()
    ctx = context(storage)
    acquire(catalog["coco_train2017"], ctx)
    smaller, members = coco_like_zip(5)
    http.replace("/coco/zips/train2017.zip", smaller)
    overlay = tmp_path / "catalog" / "coco_train2017.yaml"
    overlay.write_text(overlay.read_text().replace(f"size: {len(replica.coco_zip)}", f"size: {len(smaller)}").replace(hashlib.md5(replica.coco_zip).hexdigest(), hashlib.md5(smaller).hexdigest()))
    result = acquire(load_catalog()["coco_train2017"], ctx)
    assert result["changed"] == ["train2017.zip"]
    assert sorted(k for k, _ in storage.list("data/coco/train2017")) == sorted(f"data/coco/{m}" for m in members)
    assert storage.read_bytes(f"data/coco/{members[0]}") == __import__("zipfile").ZipFile(__import__("io").BytesIO(smaller)).read(members[0])


def test_a_reset_during_a_hub_download_resumes(storage, upstream, monkeypatch):
    replica, http, hub = upstream
    monkeypatch.setattr(acq.download.__globals__["time"], "sleep", lambda s: None)
    hub.script_file(LLAVA_REPO, "llava_instruct_150k.json", reset_after(1000))
    acquire(load_catalog()["llava_instruct_150k"], context(storage))
    assert storage.read_bytes("data/llava/llava_instruct_150k.json") == replica.llava_files["llava_instruct_150k.json"]


def test_dry_run_reports_without_writing(storage, upstream):
    replica, http, hub = upstream
    result = acquire(load_catalog()["coco_train2017"], context(storage), dry_run=True)
    assert result["dry_run"] and result["fetch"][0]["size"] == len(replica.coco_zip)
    assert not list(storage.list("data"))


def test_not_enough_space_fails_before_downloading(tmp_path, upstream, monkeypatch):
    from vlmdata.storage import LocalStorage

    replica, http, hub = upstream
    storage = LocalStorage(tmp_path / "root")
    usage = shutil.disk_usage(tmp_path)
    full = usage._replace(used=usage.total - 1000, free=1000)  # the disk, as the OS reports it: 1 kB free
    monkeypatch.setattr(shutil, "disk_usage", lambda path: full)
    with pytest.raises(DiskFullError, match="free space"):
        acquire(load_catalog()["coco_train2017"], context(storage))
    assert http.count("GET", "/coco/zips/train2017.zip") == 0


def test_licence_needs_acknowledgement_once_and_is_recorded(storage, upstream, tmp_path):
    replica, http, hub = upstream
    overlay = tmp_path / "catalog" / "coco_train2017.yaml"
    overlay.write_text(overlay.read_text().replace("licence:\n", "licence:\n  acknowledge: true\n  notice: research use only\n", 1))
    source = load_catalog()["coco_train2017"]
    ctx = context(storage)
    with pytest.raises(LicenceNotAcknowledged, match="acknowledge_licence=true.*research use only"):
        acquire(source, ctx)
    assert http.count("GET", "/coco/zips/train2017.zip") == 0
    acquire(source, ctx, acknowledge=True, who="tester")
    ack = Manifest(storage, "coco_train2017").source().acknowledged
    assert ack.by == "tester" and "COCO" in ack.licence
    acquire(source, ctx)  # recorded: no need to say it again


def test_thresholds_turn_warnings_into_failures_and_the_report_reads_as_html(storage, upstream, tmp_path):
    replica, http, hub = upstream
    catalog = load_catalog()
    acquire(catalog["coco_train2017"], context(storage))
    report = verify_source(catalog["coco_train2017"], storage, catalog, workers=1)
    assert report.status == "warn"  # 2 of 12 broken, under the replica's threshold of 50%
    strict = catalog["coco_train2017"].model_copy(update={"integrity": catalog["coco_train2017"].integrity.model_copy(update={"max_broken_images": 0.1})})
    report = verify_source(strict, storage, catalog, workers=1)
    assert report.status == "fail" and any("above the threshold of 10.00%" in f.text for f in report.failures)
    (threshold,) = report.failures
    assert set(threshold.files) == replica.broken_keys and threshold.count == 2  # the finding names its files
    page = storage.read_bytes("_vlmdata/reports/coco_train2017/integrity.html").decode()
    assert "FAIL" in page and all(key in page for key in replica.broken_keys)
    index = storage.read_bytes("_vlmdata/reports/index.html").decode()
    assert "coco_train2017/integrity.html" in index


def test_quarantined_files_are_not_fetched_again_until_asked(storage, upstream):
    replica, http, hub = upstream
    catalog = load_catalog()
    ctx = context(storage)
    acquire(catalog["coco_train2017"], ctx)
    verify_source(catalog["coco_train2017"], storage, catalog, workers=1)
    assert acquire(catalog["coco_train2017"], context(storage))["changed"] == []  # a refresh does not re-download 19 GB
    again = verify_source(catalog["coco_train2017"], storage, catalog, workers=1)
    assert again.status == "warn" and again.images.broken_count == 2 and not any("missing" in f.text for f in again.failures)
    quarantined = Manifest(storage, "coco_train2017").quarantined()
    dry = acquire(catalog["coco_train2017"], context(storage), refetch_quarantined=True, dry_run=True)
    assert dry["fetch"] == [] and Manifest(storage, "coco_train2017").quarantined() == quarantined != {}  # a dry run changes nothing
    assert acquire(catalog["coco_train2017"], context(storage))["changed"] == []  # so a later refresh still leaves them
    refetched = acquire(catalog["coco_train2017"], context(storage), refetch_quarantined=True)
    assert refetched["changed"] == ["train2017.zip"]
    assert all(storage.exists(key) for key in replica.broken_keys)  # back in the tree, as upstream has them
    assert {k for k, _ in storage.list("_vlmdata/quarantine")}  # and the quarantined copies kept


def _verified(storage, caplog, mode: str) -> tuple[dict, int, int]:
    """COCO verified in ``mode``: the report (its time aside), and how many images the run
    decoded and how many it covered, as its log line says."""
    catalog = load_catalog()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vlmdata.verify"):
        report = verify_source(catalog["coco_train2017"], storage, catalog, workers=1, mode=mode)
    decoded, covered = map(int, re.search(rf"\(mode {mode}\): (\d+) of (\d+) images decoded this run", caplog.text).groups())
    return {**json.loads(storage.read_bytes("_vlmdata/reports/coco_train2017/integrity.json")), "checked_at": None, "status": report.status}, decoded, covered


def test_reverification_decodes_only_what_changed_and_the_report_stays_a_full_one(storage, upstream, caplog):
    replica, http, hub = upstream
    catalog = load_catalog()
    acquire(catalog["coco_train2017"], context(storage))
    first, decoded, covered = _verified(storage, caplog, "changed")
    good = len(replica.good_bare_names)
    assert (decoded, covered) == (len(replica.coco_members), len(replica.coco_members))

    again, decoded, covered = _verified(storage, caplog, "changed")  # an acquisition that changed nothing triggered it
    assert (decoded, covered) == (0, good) and again == first  # the broken ones are reported from the quarantine
    weekly, decoded, covered = _verified(storage, caplog, "crc")
    assert (decoded, covered) == (0, good) and weekly == first

    # The quarantined images fetched again are new to the record, and the files the refetch wrote
    # again have new stamps (mtime, ETag): those are decoded, the broken ones found broken again.
    stamps = {key: stamp for key, _size, stamp in storage.list_stamped("data/coco/train2017")}
    acquire(catalog["coco_train2017"], context(storage), refetch_quarantined=True)
    written = {key for key, _size, stamp in storage.list_stamped("data/coco/train2017") if stamps.get(key) != stamp}
    assert replica.broken_keys <= written
    refetched, decoded, covered = _verified(storage, caplog, "changed")
    assert (decoded, covered) == (len(written), len(replica.coco_members))
    assert set(json.loads(storage.read_bytes("_vlmdata/reports/coco_train2017/broken.json"))) == replica.broken_keys
    full, decoded, _ = _verified(storage, caplog, "full")
    assert decoded == good and full == refetched


def test_the_annotation_source_verifies_within_its_thresholds(storage, upstream):
    catalog = load_catalog()
    for source_id in ("coco_train2017", "llava_instruct_150k"):
        acquire(catalog[source_id], context(storage))
    verify_source(catalog["coco_train2017"], storage, catalog, workers=1)
    report = verify_source(catalog["llava_instruct_150k"], storage, catalog, workers=1)
    assert report.status == "warn", report.failures  # what the Airflow task would fail on


@pytest.mark.parametrize("hostile, why", [
    (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
    (b'[{"id": ' + b"9" * 5000 + b', "conversations": []}]', "not valid JSON"),
    (b'[{"id": "x", "conversations": "\xff\xfe"}]', "not valid JSON"),
], ids=["200,000 levels deep", "5,000-digit integer", "not UTF-8"])
def test_an_unreadable_annotation_file_is_a_recorded_failure_in_a_fresh_report(storage, upstream, hostile, why):
    """verify writes a new report naming the file (the old one must not pass for current), and
    a mixture of it fails with the same clear reason."""
    from vlmdata.mix import MixError
    from vlmdata.annotations import AnnotationError

    catalog = load_catalog()
    acquire(catalog["llava_instruct_150k"], context(storage))
    before = verify_source(catalog["llava_instruct_150k"], storage, catalog)
    storage.write_bytes("data/llava/llava_instruct_150k.json", hostile)
    after = verify_source(catalog["llava_instruct_150k"], storage, catalog)
    assert after.checked_at != before.checked_at and after.status == "fail"
    assert any("llava_instruct_150k.json" in f.text and why in f.text for f in after.failures), after.failures
    assert storage.read_json("_vlmdata/reports/llava_instruct_150k/integrity.json")["checked_at"] == after.checked_at
    with pytest.raises((AnnotationError, MixError), match=why):
        build(load_recipes()["llava_instruct_150k"], storage, catalog)
