"""Every DAG imports without errors and carries docs, tags and retries."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlmdata.catalog import load_catalog
from vlmdata.layout import load_profiles
from vlmdata.mix import load_recipes

DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    import os

    os.environ.setdefault("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow-home")))
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(str(DAGS))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


def test_expected_dags_exist(dagbag):
    catalog = load_catalog()
    expected = {f"acquire_{sid}" for sid in ("coco_train2017", "llava_instruct_150k")}
    expected |= {f"layout_{pid}" for pid in load_profiles()} | {f"mix_{rid}" for rid in load_recipes()}
    assert expected <= set(dagbag.dags)
    assert all(dag_id.split("_", 1)[1] in catalog for dag_id in dagbag.dags if dag_id.startswith(("acquire_", "verify_")))


def test_every_dag_has_docs_tags_and_retries(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.doc_md and len(dag.doc_md) > 80, dag_id
        assert "vlmdata" in dag.tags, dag_id
        for task in dag.tasks:
            assert task.retries >= 1, f"{dag_id}.{task.task_id}"


def test_every_param_is_documented(dagbag):
    for dag_id, dag in dagbag.dags.items():
        for name, param in dag.params.items():
            assert dag.params.get_param(name).description, f"{dag_id}: param {name} has no description"


def test_licence_acknowledgement_is_a_parameter_where_the_licence_demands_it(dagbag):
    for source in load_catalog().values():
        dag = dagbag.dags.get(f"acquire_{source.id}")
        if dag is not None:
            assert ("acknowledge_licence" in dag.params) == source.licence.acknowledge, source.id


def test_sa1b_and_sources_with_zips_over_http_choose_by_annotation_files(dagbag):
    choosers = {dag_id for dag_id, dag in dagbag.dags.items() if "needed_by" in dag.params}
    assert {"acquire_sa1b", "acquire_coco_train2017", "acquire_gqa", "acquire_allava_4v"} <= choosers  # SA-1B's tars; zips over HTTP and the Hub
    assert not {"acquire_llava_instruct_150k", "acquire_sharegpt4v_sam_9k", "acquire_ocr_vqa"} & choosers  # no zip; a zip on Drive; a crawl
    for dag_id in choosers:
        assert dagbag.dags[dag_id].params["needed_by"] == [], dag_id  # the whole source unless asked
    assert "Range requests" in dagbag.dags["acquire_coco_train2017"].params.get_param("needed_by").description


def scheduled_assets(condition) -> list:
    """The assets of a schedule's condition (an Asset, or AssetAny/AssetAll of them, nested)."""
    if hasattr(condition, "objects"):
        return [asset for inner in condition.objects for asset in scheduled_assets(inner)]
    return [condition]


def triggers(dag) -> set[str]:
    """Names of the assets a DAG is scheduled on."""
    return {asset.name for asset in scheduled_assets(dag.timetable.asset_condition)}


def test_assets_chain_acquire_to_verify_to_mix(dagbag):
    verify = dagbag.dags["verify_llava_instruct_150k"]
    mix = dagbag.dags["mix_llava_instruct_150k"]
    publish = dagbag.dags["acquire_llava_instruct_150k"].get_task("publish")
    emitted = {outlet.name for outlet in publish.outlets}
    assert emitted == {"vlmdata.acquired.llava_instruct_150k"}
    verify_triggers = triggers(verify)
    assert "vlmdata.acquired.llava_instruct_150k" in verify_triggers
    assert "vlmdata.verified.coco_train2017" in verify_triggers  # re-checked when its images change
    assert verify.timetable.timetable.expression == "0 3 * * 0"  # and weekly, for bit rot
    mix_triggers = triggers(mix)
    assert mix_triggers == {"vlmdata.verified.llava_instruct_150k"}
    convllava = triggers(dagbag.dags["mix_convllava_stage1"])
    assert convllava == {"vlmdata.verified.sharegpt4v", "vlmdata.verified.allava_4v"}  # never blocked by alternative image sources


def test_every_source_of_both_seed_pages_has_an_acquisition_dag(dagbag):
    assert {f"acquire_{sid}" for sid in load_catalog()} <= set(dagbag.dags)


def test_ocr_vqa_fetches_its_list_crawls_fills_from_mirrors_and_only_the_last_step_emits_the_event(dagbag):
    from airflow.sdk import AssetAlias

    dag = dagbag.dags["acquire_ocr_vqa"]
    assert {t.task_id for t in dag.tasks} == {"plan", "fetch", "publish", "plan_crawl", "crawl", "finish_crawl", "fill_from_mirrors"}
    assert not dag.get_task("publish").outlets and not dag.get_task("finish_crawl").outlets
    fill = dag.get_task("fill_from_mirrors")
    # Through an alias: the event is sent only when the run changed something.
    assert [(type(o), o.name) for o in fill.outlets] == [(AssetAlias, "vlmdata.acquired.ocr_vqa.if_changed")]
    assert fill.asset.name == "vlmdata.acquired.ocr_vqa"
    assert fill.upstream_task_ids == {"finish_crawl", "publish"}  # publish: whether the list changed
    assert fill.pool == "vlmdata_huggingface_co"  # where both fallback mirrors live
    # A refresh retries missing images; with nothing left to crawl the report and the mirrors still run.
    assert {dag.get_task(t).trigger_rule for t in ("plan_crawl", "finish_crawl", "fill_from_mirrors")} == {"none_failed"}
    assert "fill_from_mirrors" in dag.doc_md and "vlmdata.acquired.ocr_vqa" in dag.doc_md
    verify = triggers(dagbag.dags["verify_ocr_vqa"])
    assert "vlmdata.acquired.ocr_vqa" in verify  # the asset the alias resolves to


def test_every_pool_a_task_uses_is_one_the_deployment_creates(dagbag):
    from vlmdata.pools import pools

    created = set(pools(load_catalog())) | {"default_pool"}
    used = {task.pool for dag in dagbag.dags.values() for task in dag.tasks}
    assert used <= created, used - created
    assert dagbag.dags["acquire_coco_train2017"].get_task("fetch").pool == "vlmdata_images_cocodataset_org"


def test_the_mix_form_offers_every_recipe(dagbag):
    dag = dagbag.dags["mix"]
    assert set(dag.params.get_param("recipe").schema["enum"]) == set(load_recipes())
    assert dag.params.get_param("format").schema["enum"] == ["json", "jsonl", "webdataset", "parquet"]


@pytest.mark.parametrize("dag_id, now, next_run", [
    # @monthly, a day after its tick (Airflow's 10% rule would give the Dec 1 run on unpause)
    ("acquire_coco_train2017", "2026-12-02T09:00:00+00:00", "2027-01-01T00:00:00+00:00"),
    ("acquire_coco_train2017", "2026-12-01T00:00:01+00:00", "2027-01-01T00:00:00+00:00"),
    # the weekly re-verification, two hours after Sunday 03:00
    ("verify_coco_train2017", "2026-12-06T05:00:00+00:00", "2026-12-13T03:00:00+00:00"),
])
def test_refresh_schedules_do_not_fire_on_unpause_just_after_a_tick(dagbag, monkeypatch, dag_id, now, next_run):
    """What the scheduler computes for a DAG that was never run, seen or unpaused at ``now``."""
    import airflow.timetables.trigger as trigger
    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.timetables.base import TimeRestriction
    from pendulum import parse

    monkeypatch.setattr(trigger, "utcnow", lambda: parse(now))
    timetable = coerce_to_core_timetable(dagbag.dags[dag_id].timetable)  # what the scheduler runs
    timetable = getattr(timetable, "timetable", timetable)  # the verify DAG's assets-or-time schedule
    info = timetable.next_dagrun_info(last_automated_data_interval=None, restriction=TimeRestriction(earliest=None, latest=None, catchup=False))
    assert info.run_after == parse(next_run)


def test_fetch_is_mapped_over_the_plans_pins_and_named_after_each_artifact(dagbag):
    from vlmdata.acquire import Pin
    from vlmdata.fetch.digest import Expected

    dag = dagbag.dags["acquire_coco_train2017"]
    fetch = dag.get_task("fetch")
    assert set(fetch.expand_input.value) == {"pin"} and fetch.expand_input.value["pin"].operator.task_id == "plan"
    pin = Pin("train2017.zip", "http://images.cocodataset.org/zips/train2017.zip", Expected(size=10), {"etag": '"a"'}, None, "2026-01-01T00:00:00+00:00")
    # What Airflow does after the task ran: render the template with the mapped task's context.
    task = fetch.unmap({"pin": pin.to_dict()})
    assert dag.get_template_env().from_string(fetch.map_index_template).render({"task": task}) == "train2017.zip"


def test_verify_is_planned_mapped_over_image_chunks_in_the_decode_pool_and_reported(dagbag):
    from vlmdata.pools import DECODE_POOL, pools

    dag = dagbag.dags["verify_coco_train2017"]
    assert {t.task_id for t in dag.tasks} == {"plan_verify", "check_images", "report"}
    check = dag.get_task("check_images")
    assert check.is_mapped and check.pool == DECODE_POOL == "vlmdata_decode"
    assert check.map_index_template == "{{ task.chunk.label }}"  # "images 0-19999" in the UI
    assert pools(load_catalog())[DECODE_POOL]["slots"] >= 1
    report = dag.get_task("report")
    assert report.upstream_task_ids == {"plan_verify", "check_images"}
    # A source without images maps over nothing (check_images skips) and is still reported; one not
    # acquired yet skips plan_verify and so the report.
    assert report.trigger_rule == "none_failed_min_one_success"
    assert [o.name for o in report.outlets] == ["vlmdata.verified.coco_train2017"]
    assert not dag.get_task("plan_verify").outlets
    assert dag.params["chunk_images"] == 20_000 and dag.params["chunk_gib"] == 8
    mode = dag.params.get_param("mode").schema
    assert dag.params["mode"] == "auto" and mode["enum"] == ["auto", "changed", "crc", "full"] and mode["title"] == "Mode"


@pytest.mark.parametrize("asked, run_type, mode", [
    ("auto", "scheduled", "crc"),  # the weekly run: bit rot
    ("auto", "asset_triggered", "changed"),  # an acquisition or a referenced source changed
    ("auto", "manual", "changed"),
    (None, "scheduled", "crc"),
    ("full", "scheduled", "full"),  # asked for: whatever started the run
    ("crc", "manual", "crc"),
])
def test_the_verification_mode_is_the_one_asked_for_or_follows_what_started_the_run(asked, run_type, mode):
    from vlmdata.verify import verify_mode

    assert verify_mode(asked, run_type) == mode


def test_an_unknown_verification_mode_is_refused():
    from vlmdata.verify import verify_mode

    with pytest.raises(ValueError, match="one of auto, changed, crc, full"):
        verify_mode("fast", "manual")


def test_crawl_shards_are_named_after_their_shard(dagbag):
    from vlmdata.budgets import CRAWL_SHARD_IMAGES, CRAWL_THREADS

    dag = dagbag.dags["acquire_ocr_vqa"]
    crawl = dag.get_task("crawl")
    assert crawl.map_index_template == "shard {{ task.shard.shard }} ({{ task.shard.count }} images)"
    # The retry budget of the README is computed for the shards the DAG really plans.
    assert dag.get_task("plan_crawl").shard_size == CRAWL_SHARD_IMAGES and crawl.partial_kwargs["workers"] == CRAWL_THREADS


def test_every_task_of_every_dag_has_the_timeout_of_its_kind(dagbag):
    from vlmdata.budgets import KINDS, timeout_of

    seen = set()
    for dag_id, dag in dagbag.dags.items():
        for task in dag.tasks:
            assert task.execution_timeout is not None, f"{dag_id}.{task.task_id}"
            assert task.execution_timeout == timeout_of(task.task_id), f"{dag_id}.{task.task_id}"
            seen.add(task.task_id)
    assert seen == {t for kind in KINDS for t in kind.tasks}  # the README's table lists no task that does not exist


def test_acquisitions_start_paused_and_what_follows_them_does_not(dagbag):
    """After `make run` nothing downloads until a user unpauses an acquisition, and then verify,
    layout and mixture DAGs follow on their own (no 27 DAGs to unpause by hand)."""
    for dag_id, dag in dagbag.dags.items():
        if dag_id.startswith("acquire_"):
            assert dag.is_paused_upon_creation is True, dag_id
        elif dag_id.startswith(("verify_", "layout_", "mix_")) or dag_id == "mix":
            assert dag.is_paused_upon_creation is False, dag_id


def form_marks_required(schema: dict) -> bool:
    """Airflow 3.3's Trigger form (``isParamRequired.tsx``): a param is required when its schema
    has a type that does not admit null."""
    kind = schema.get("type")
    return bool(kind) and (not isinstance(kind, list) or "null" not in kind)


def test_every_param_has_a_title_and_none_is_marked_required(dagbag):
    """Every field of every Trigger form has a label, and a user can leave any of them alone."""
    for dag_id, dag in dagbag.dags.items():
        for name in dag.params:
            schema = dag.params.get_param(name).dump()["schema"]
            assert schema.get("title") and schema["title"] != name, f"{dag_id}: {name}"
            assert not form_marks_required(schema), f"{dag_id}: {name} shows as required"


def test_artifacts_are_a_choice_among_the_sources_artifacts(dagbag):
    from airflow.sdk.definitions.param import ParamValidationError

    listed_upstream = []
    for source in load_catalog().values():
        param = dagbag.dags[f"acquire_{source.id}"].params.get_param("artifacts")
        names = [a.name for a in source.artifacts]
        schema = param.dump()["schema"]
        if not names:  # a folder or a links file, listed at plan time: a free list of names
            assert "enum" not in schema["items"] and "examples" not in schema
            listed_upstream.append(source.id)
            continue
        assert schema["items"]["enum"] == names and schema["examples"] == names, source.id  # the form's multi-select lists examples
        assert param.resolve([names[-1]]) == [names[-1]] and param.resolve(None) is None and param.resolve([]) == []
        with pytest.raises(ParamValidationError):
            param.resolve(["not-an-artifact"])
    assert "sa1b" in listed_upstream and len(listed_upstream) < len(load_catalog()) // 2


def test_the_licence_acknowledgement_comes_first_in_the_form(dagbag):
    from airflow.serialization.serialized_objects import DagSerialization

    needing = [s for s in load_catalog().values() if s.licence.acknowledge]
    assert needing  # SA-1B at least
    for source in needing:
        # As the API server reads it (the serialized DAG), which orders the form.
        dag = DagSerialization.from_dict(DagSerialization.to_dict(dagbag.dags[f"acquire_{source.id}"]))
        assert next(iter(dag.params)) == "acknowledge_licence", source.id
        assert dag.params.get_param("acknowledge_licence").schema["title"] == "Accept the licence"


def _all_dags() -> dict:
    from vlmdata import dagfactory

    return {**dagfactory.acquisition_dags(), **dagfactory.verify_dags(), **dagfactory.layout_dags(), **dagfactory.mixture_dags()}


@pytest.mark.parametrize("root, prefix", [
    ("s3://lab-bucket/llava", "s3://lab-bucket/llava"),
    ("RELATIVE", None),  # a local root: file:// of its absolute path
])
def test_asset_uris_name_the_data_on_the_storage_and_match_across_schedules(monkeypatch, tmp_path, root, prefix):
    if root == "RELATIVE":
        monkeypatch.chdir(tmp_path)
        root, prefix = "shared data", (tmp_path / "shared data").as_uri()
    monkeypatch.setenv("VLMDATA_ROOT", root)
    dags = _all_dags()
    outlets = {}
    for dag in dags.values():
        for task in dag.tasks:
            for asset in [*task.outlets, *([task.asset] if hasattr(task, "asset") else [])]:
                if hasattr(asset, "uri"):
                    assert outlets.setdefault(asset.name, asset.uri) == asset.uri
    assert outlets["vlmdata.acquired.coco_train2017"] == f"{prefix}/_vlmdata/sources/coco_train2017"
    assert outlets["vlmdata.verified.coco_train2017"] == f"{prefix}/_vlmdata/reports/coco_train2017/integrity.json"
    assert outlets["vlmdata.layout.llava15"] == f"{prefix}/playground/data"
    assert outlets["vlmdata.mixture.llava_instruct_150k"] == f"{prefix}/mixtures/llava_instruct_150k"
    assert len(set(outlets.values())) == len(outlets)  # Airflow activates one asset per URI
    if prefix.startswith("file:"):
        assert "%20" in prefix  # a URI, percent-encoded
    # Every asset a DAG waits for is one a task emits: the same name and the same URI.
    for dag_id, dag in dags.items():
        for asset in scheduled_assets(dag.timetable.asset_condition) if dag.timetable.asset_condition else []:
            assert outlets.get(asset.name) == asset.uri, f"{dag_id} waits for {asset.name} at {asset.uri}"


def _rendered(dag, task_id: str, params: dict) -> dict:
    """What the task's Rendered Template view shows for a run given ``params`` (the fields that
    come from params: the others are XCom results)."""
    task = dag.get_task(task_id)
    context = {"params": {**dag.params.dump(), **params}}
    fields = [f for f in task.template_fields if f not in ("fetched", "published")]
    return {f: task.render_template(getattr(task, f), context, jinja_env=dag.get_template_env()) for f in fields}


def test_operator_arguments_are_rendered_from_the_params_as_values(dagbag):
    acquire = dagbag.dags["acquire_llava_instruct_150k"]
    plan = _rendered(acquire, "plan", {"dry_run": True, "artifacts": ["detail_23k.json"], "revision": "1.10"})
    assert plan == {
        "dry_run": True, "artifacts": ["detail_23k.json"], "include_optional": False, "refetch_quarantined": False, "revision": "1.10",  # text, not 1.1
        "acknowledge_licence": False, "needed_by": None,  # not params of this source: the operator's defaults
    }
    assert _rendered(acquire, "plan", {"revision": None})["revision"] == ""  # empty: the catalog's pin
    publish = _rendered(acquire, "publish", {"artifacts": None})
    assert publish["artifacts"] is None
    sa1b = _rendered(dagbag.dags["acquire_sa1b"], "plan", {"acknowledge_licence": True, "needed_by": ["sharegpt4v/a.json"]})
    assert sa1b["acknowledge_licence"] is True and sa1b["needed_by"] == ["sharegpt4v/a.json"]
    crawl = _rendered(dagbag.dags["acquire_ocr_vqa"], "plan_crawl", {"dry_run": True})
    assert crawl == {"dry_run": True}
    verify = _rendered(dagbag.dags["verify_coco_train2017"], "plan_verify", {"chunk_images": 5, "chunk_gib": None})
    assert verify == {"chunk_images": 5, "chunk_gib": None, "mode": "auto"}
    assert _rendered(dagbag.dags["verify_coco_train2017"], "plan_verify", {"mode": "full"})["mode"] == "full"
    build = _rendered(dagbag.dags["mix"], "build", {"recipe": "sharegpt4v_pt", "seed": 7, "format": "jsonl"})
    assert build == {"recipe_id": "sharegpt4v_pt", "seed": 7, "fmt": "jsonl"}


def test_empty_chunk_bounds_are_the_defaults():
    from vlmdata.verify import CHUNK_BYTES, CHUNK_IMAGES, chunk_limits

    assert chunk_limits(None, None) == {"max_images": CHUNK_IMAGES, "max_bytes": CHUNK_BYTES}
    assert chunk_limits(5, 0.5) == {"max_images": 5, "max_bytes": 512 * 1024**2}


def test_every_mapped_task_is_named_after_what_it_maps_over(dagbag):
    mapped = {(dag_id, task.task_id): task.map_index_template for dag_id, dag in dagbag.dags.items() for task in dag.tasks if task.is_mapped}
    assert {task_id for _dag_id, task_id in mapped} == {"fetch", "crawl", "check_images"}
    assert all(mapped.values()), [key for key, template in mapped.items() if not template]
