"""Every source of the catalog acquired in real Airflow from its loopback replica, then verified,
laid out and mixed by the asset-triggered DAGs: what ``python -m vlmdata.demo`` does, run by the
same functions (``vlmdata.demo.run_everything``), with the replicas' planted faults checked
against the integrity reports.

One Airflow run serves every test of the module (about 5 minutes on an idle 2-core machine).
"""

from __future__ import annotations

import json
import os
import time

import pytest

from vlmdata.airflow_client import AirflowClient
from vlmdata.catalog import load_catalog
from vlmdata.crawl import report_key as crawl_report_key
from vlmdata.demo import demo_airflow, run_everything
from vlmdata.fetch.sa1b import needed_report_key
from vlmdata.layout import load_profiles
from vlmdata.localairflow import free_port
from vlmdata.manifest import Manifest
from vlmdata.mix import load_recipes
from vlmdata.operators.acquire import fetch_operator_for
from vlmdata.replicas.sources import SA1B_SHARDS, Replicas
from vlmdata.reports import CrawlReport, IntegrityReport, NeededTars, load
from vlmdata.storage import LocalStorage
from vlmdata.verify import report_key

from tests.e2e.expected import dags_that_must_run, runs_that_went_wrong

pytestmark = pytest.mark.e2e

SOURCES = sorted(load_catalog())


def failure_logs(client: AirflowClient, runs: list[tuple[str, str]]) -> str:
    return "\n".join(client.task_logs(dag_id, run_id) for dag_id, run_id in runs)


@pytest.fixture(scope="module")
def everything(tmp_path_factory):
    work = tmp_path_factory.mktemp("every-source")
    started = time.monotonic()
    with Replicas(work / "replicas") as replicas:
        airflow = demo_airflow(replicas, work, port=free_port())
        with airflow:
            airflow.wait_ready(timeout=600)
            client = AirflowClient(airflow.url, airflow.user, airflow.admin_password)
            try:
                outcome = run_everything(client, timeout=1500, check=airflow.check_running)
            except BaseException:
                unfinished = [(d["dag_id"], r["dag_run_id"]) for d in client.dags() for r in client.runs(d["dag_id"]) if r["state"] != "success"]
                print(failure_logs(client, unfinished))
                raise
            print(f"\nAirflow up and every source settled in {time.monotonic() - started:.0f} s (runs: {outcome.seconds:.0f} s); logs in {airflow.log_dir}")
            yield client, replicas, outcome, LocalStorage(work / "data")


def test_every_dag_the_replicas_call_for_ran_and_its_last_run_succeeded(everything):
    client, replicas, _outcome, _storage = everything
    wrong = runs_that_went_wrong(client, dags_that_must_run(replicas))
    assert not wrong, (wrong, failure_logs(client, [(dag_id, run_id) for dag_id, runs in wrong.items() for run_id, _, state in runs if state != "success"]))


def test_every_triggered_acquisition_succeeded(everything):
    client, replicas, outcome, _storage = everything
    assert set(outcome.triggered) == {f"acquire_{source_id}" for source_id in replicas.spot_checks}
    states = {dag_id: client.run(dag_id, run_id)["state"] for dag_id, run_id in outcome.triggered.items()}
    assert set(states.values()) == {"success"}, states


@pytest.mark.parametrize("source_id", SOURCES)
def test_acquisition_ran_through_its_operator(everything, source_id):
    client, replicas, outcome, storage = everything
    source = load_catalog()[source_id]
    dag_id = f"acquire_{source_id}"
    run_id = outcome.triggered[dag_id]
    assert client.run(dag_id, run_id)["state"] == "success", failure_logs(client, [(dag_id, run_id)])
    # Every run of the DAG (a refresh schedule may have started one before ours, on some days).
    instances = [ti for run in client.runs(dag_id) for ti in client.task_instances(dag_id, run["dag_run_id"])]
    steps = {"plan", "fetch", "publish"} | ({"plan_crawl", "crawl", "finish_crawl", "fill_from_mirrors"} if source.kind == "urllist" else set())
    assert {ti["task_id"] for ti in instances} == steps
    fetched = [ti for ti in instances if ti["task_id"] == "fetch" and ti["state"] == "success"]
    assert all(ti["map_index"] >= 0 for ti in fetched), "fetch is mapped over the planned artifacts"
    assert {ti["operator"] for ti in fetched} == {fetch_operator_for(source.kind).__name__}
    assert len(fetched) == len(replicas.fetched_artifacts(source_id))
    assert {ti["rendered_map_index"] for ti in fetched} == replicas.fetched_artifacts(source_id)  # named after their artifact
    records = Manifest(storage, source_id).artifacts()
    assert replicas.fetched_artifacts(source_id) <= {name for name, r in records.items() if r.complete}
    assert Manifest(storage, source_id).source().published_at
    if source.licence.acknowledge:
        assert Manifest(storage, source_id).source().acknowledged is not None
    if source.kind == "hf":
        assert {r.revision for r in records.values()} == {replicas.commits[source.hf.repo]}
    if source.kind == "urllist":
        crawled = [ti for ti in instances if ti["task_id"] in ("crawl", "fill_from_mirrors")]
        assert {ti["task_id"] for ti in crawled} == {"crawl", "fill_from_mirrors"} and all(ti["state"] == "success" for ti in crawled)


@pytest.mark.parametrize("source_id", SOURCES)
def test_files_land_where_the_layout_expects_them(everything, source_id):
    _client, replicas, _outcome, storage = everything
    assert storage.exists(f"data/{replicas.spot_checks[source_id]}")


def test_every_replica_image_is_placed_and_the_broken_ones_quarantined(everything):
    _client, replicas, _outcome, storage = everything
    folders = {path.split("/")[0] for path in replicas.tree}
    placed = {key[len("data/"):] for folder in folders for key, _ in storage.list(f"data/{folder}")}
    images = {path for path in placed if path.rsplit(".", 1)[-1] in ("jpg", "jpeg", "png")}
    assert images == {path for path, status in replicas.tree.items() if status != "broken"}
    for source_id, keys in replicas.expected_broken.items():  # out of the training tree, kept aside
        assert {f"_vlmdata/quarantine/{source_id}/{key}" for key in keys} == {key for key, _ in storage.list(f"_vlmdata/quarantine/{source_id}")}


def test_views_resolve_through_their_links(everything):
    _client, replicas, _outcome, storage = everything
    root = storage.root
    view = root / "playground" / "data"
    for folder, name in (("coco/train2017", "000000000001.jpg"), ("gqa/images", "2354786.jpg"), ("vg/VG_100K_2", "2345678.jpg"), ("ocr_vqa/images", "0001234567.jpg"), ("LLaVA-Pretrain/images", "00453/004539375.jpg")):
        assert (view / folder).is_symlink() and (view / folder / name).is_file(), folder
    assert (view / "llava_v1_5_mix665k.json").read_bytes() == replicas.files["llava_instruct_150k"]["llava_v1_5_mix665k.json"]
    alias = root / "data" / "allava" / "allava_vflan" / "images" / "images_191task_1k"
    assert alias.is_symlink() and (alias / "PACS+guitar_image_category_classification_830_n03272010_10795-5.png").is_file()


@pytest.mark.parametrize("source_id", SOURCES)
def test_integrity_report_names_exactly_the_planted_faults(everything, source_id):
    _client, replicas, _outcome, storage = everything
    report = load(storage, report_key(source_id), IntegrityReport)
    assert report.status in ("ok", "warn"), report.failures
    assert set(storage.read_json(report_key(source_id, "broken.json"))) == replicas.expected_broken.get(source_id, set())
    assert set(report.images.mislabelled) == replicas.expected_mislabelled.get(source_id, set())
    assert replicas.unresolved_in(report) == replicas.expected_missing_refs.get(source_id, {})
    for artifact, checked in report.annotations.items():
        assert checked.invalid == replicas.malformed[(source_id, artifact)], artifact


@pytest.mark.parametrize("source_id", SOURCES)
def test_verification_decoded_its_images_in_named_chunks(everything, source_id):
    client, _replicas, outcome, storage = everything
    dag_id = f"verify_{source_id}"
    report = load(storage, report_key(source_id), IntegrityReport)
    # A verification decodes the images that are new or changed since the last one: the run
    # that found them decoded each in a named chunk; a later run (another source verified that
    # this one's annotations point into) may decode none, and its report carries them over.
    decoding_runs = []
    for run in client.runs(dag_id):
        chunks = sorted((ti for ti in client.task_instances(dag_id, run["dag_run_id"]) if ti["task_id"] == "check_images" and ti["map_index"] >= 0), key=lambda ti: ti["map_index"])
        if run["state"] == "success" and chunks:
            decoding_runs.append(chunks)
    assert bool(decoding_runs) == bool(report.images.checked)
    for chunks in decoding_runs:
        first = 0
        for ti in chunks:  # "images 0-19999", "images 20000-...": every image in one chunk
            assert ti["state"] == "success" and ti["rendered_map_index"].startswith(f"images {first}-"), ti
            first = int(ti["rendered_map_index"].split("-")[1]) + 1
    assert not list(storage.list(f"_vlmdata/reports/{source_id}/chunks"))  # gone once reported


def test_crawl_shards_are_named_after_their_shard(everything):
    client, _replicas, outcome, _storage = everything
    run_id = outcome.triggered["acquire_ocr_vqa"]
    shards = [ti for ti in client.task_instances("acquire_ocr_vqa", run_id) if ti["task_id"] == "crawl"]
    assert shards and all(ti["rendered_map_index"] == f"shard {ti['map_index']} (" + ti["rendered_map_index"].split("(")[1] for ti in shards)
    assert all(ti["rendered_map_index"].endswith(" images)") for ti in shards)


def test_crawl_report_names_the_dead_and_broken_covers_and_what_the_mirrors_filled(everything):
    _client, replicas, _outcome, storage = everything
    crawl = load(storage, crawl_report_key("ocr_vqa"), CrawlReport)
    expected = replicas.expected_crawl
    assert set(crawl.dead) == expected["dead"] - expected["filled"]
    assert set(crawl.broken) == expected["broken"] - expected["filled"]
    assert set(crawl.converted) == expected["converted"]
    assert {i: entry.archive for i, entry in crawl.filled_from_mirror.items()} == {i: replicas.crawl[i]["filled_from"] for i in expected["filled"]}
    assert set(crawl.missing) == expected["missing"]
    assert [m.outcome for m in crawl.mirrors] == ["filled"] * len(replicas.mirror_archives)
    stored = {key.rsplit("/", 1)[1][:-4] for key, _ in storage.list("data/ocr_vqa/images")}
    assert stored == expected["stored"]
    for isbn in expected["converted"] | expected["filled"]:  # GIF and PNG covers stored as real JPEGs under <id>.jpg
        assert storage.read_bytes(f"data/ocr_vqa/images/{isbn}.jpg")[:3] == b"\xff\xd8\xff"


@pytest.mark.parametrize("profile", sorted(load_profiles()))
def test_layout_reports_nothing_missing(everything, profile):
    _client, _replicas, _outcome, storage = everything
    assert storage.read_json(f"_vlmdata/layouts/{profile}.json")["missing"] == []


@pytest.mark.parametrize("recipe_id", sorted(load_recipes()))
def test_mixture_is_built_from_what_the_replicas_hold(everything, recipe_id):
    _client, replicas, _outcome, storage = everything
    recipe = load_recipes()[recipe_id]
    lock = storage.read_json(f"mixtures/{recipe_id}/lock.json")
    records = json.loads(storage.read_bytes(lock["output"]["key"]))
    assert len(records) == lock["output"]["records"] > 0
    for component in recipe.components:
        counts = lock["counts"][component.label]
        assert counts["kept"] + sum(counts["dropped"].values()) == counts["sampled"]
        if component.take == "all":
            assert counts["kept"] == replicas.expected_kept(component.source, component.artifact), component.label
    image_root = storage.root / "data" / recipe.image_folder
    for record in records:
        if "image" in record:
            assert os.path.isfile(image_root / record["image"]), record["image"]


def test_a_refresh_that_changes_nothing_fetches_no_mirror_and_sends_no_event(everything):
    """Near the end of the module: it runs acquire_ocr_vqa once more on the settled storage."""
    client, replicas, outcome, storage = everything
    dag_id = "acquire_ocr_vqa"
    events = client.asset_events(source_dag_id=dag_id)
    assert [(e["source_task_id"], e["source_run_id"]) for e in events] == [("fill_from_mirrors", outcome.triggered[dag_id])]
    assert events[0]["extra"]["filled_this_run"] == len(replicas.expected_crawl["filled"])
    archives = [url[len("https://huggingface.co"):] for url in replicas.mirror_archives]
    downloads = {path: replicas.hub.server.count("GET", path) for path in archives}
    assert set(downloads.values()) == {1}
    probes = {path: replicas.hub.server.count("HEAD", path) for path in archives}

    run_id = client.trigger(dag_id)
    assert client.wait_for_run(dag_id, run_id, timeout=300) == "success", failure_logs(client, [(dag_id, run_id)])
    states = {ti["task_id"]: ti["state"] for ti in client.task_instances(dag_id, run_id)}
    assert states["publish"] == "skipped" and states["fill_from_mirrors"] == "success"  # the list is unchanged
    assert {path: replicas.hub.server.count("GET", path) for path in archives} == downloads  # nothing downloaded
    assert {path: replicas.hub.server.count("HEAD", path) for path in archives} == {path: n + 1 for path, n in probes.items()}  # only probed
    mirrors = load(storage, crawl_report_key("ocr_vqa"), CrawlReport).mirrors
    assert [m.outcome for m in mirrors] == ["skipped"] * len(archives), mirrors
    assert client.asset_events(source_dag_id=dag_id) == events  # no event: verify_ocr_vqa is not triggered again


def test_sa1b_fetches_the_tars_a_sharegpt4v_file_needs(everything):
    """Last in the module: the run it triggers changes the SAM folder the tests above checked."""
    client, replicas, _outcome, storage = everything
    needed_by = "sharegpt4v/share-captioner_coco_lcs_sam_1246k_1107.json"
    sam = {ref.tree for ref in replicas.annotations["sharegpt4v"][needed_by.split("/")[1]] if ref and ref.tree.startswith("sam/images/")}
    holding = {tar for tar, numbers in SA1B_SHARDS.items() if any(f"sam/images/sa_{n}.jpg" in sam for n in numbers)}
    missing_tars = holding - replicas.fetched_artifacts("sa1b")
    assert missing_tars and not all(storage.exists(f"data/{path}") for path in sam)  # the range did not cover them

    run_id = client.trigger("acquire_sa1b", {"needed_by": [needed_by]})
    assert client.wait_for_run("acquire_sa1b", run_id, timeout=300) == "success", failure_logs(client, [("acquire_sa1b", run_id)])
    fetched = [ti for ti in client.task_instances("acquire_sa1b", run_id) if ti["task_id"] == "fetch" and ti["state"] == "success"]
    assert len(fetched) == len(missing_tars)  # only the tars outside the range that hold referenced images
    report = load(storage, needed_report_key("sa1b"), NeededTars)
    assert set(report.tars) == missing_tars and report.unaccounted == 0
    assert all(storage.exists(f"data/{path}") for path in sam)


def test_no_signed_link_token_in_any_task_log_or_file(everything):
    """The SA-1B links' signatures (credentials) appear in no task log of any run, at the
    level Airflow logs at, nor in any file on the storage."""
    client, replicas, _outcome, storage = everything
    tokens = replicas.sa1b_cdn.signatures()
    logs = "\n".join(client.task_logs(dag_id, run["dag_run_id"]) for dag_id in {d["dag_id"] for d in client.dags()} for run in client.runs(dag_id))
    assert "sa_000000.tar" in logs  # the logs are there...
    assert not [t for t in tokens if t in logs]  # ...without the signatures
    assert not [p for p in storage.root.rglob("*") if p.is_file() and any(t.encode() in p.read_bytes() for t in tokens)]
