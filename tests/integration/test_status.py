"""The summary the UI's vlmdata page shows, gathered from a storage the library filled from the
replicas (local root and S3)."""

from __future__ import annotations

from vlmdata import status
from vlmdata.catalog import load_catalog
from vlmdata.layout import load_profiles
from vlmdata.mix import load_recipes
from vlmdata.replicas.slice import MISSING_FROM_COCO
from tests import slice_storage


def gather(storage, runs=None) -> status.Status:
    return status.gather(storage, load_catalog(), load_profiles(), load_recipes(), runs)


def test_the_page_summary_names_the_planted_faults(storage, upstream):
    replica, _http, _hub = upstream
    slice_storage.fill(storage)
    runs = {"mix_llava_instruct_150k": status.Run("mix_llava_instruct_150k", "manual__1", "success", "2026-12-01T10:00:00+00:00")}
    summary = gather(storage, runs)
    sources = {s.id: s for s in summary.sources}
    assert set(sources) == set(load_catalog())

    coco = sources["coco_train2017"]
    assert coco.acquired and coco.integrity == "warn" and not coco.stale
    assert (coco.ok, coco.broken, coco.missing, coco.quarantined) == (len(replica.good_bare_names), len(replica.broken_keys), 0, len(replica.broken_keys))
    assert coco.bytes == len(replica.coco_zip) and coco.artifacts == 1
    assert any("do not decode" in reason for reason in coco.reasons)
    assert storage.exists(coco.report) and storage.exists(coco.manifest)

    llava = sources["llava_instruct_150k"]
    assert llava.revision == replica.commit and llava.bytes == sum(len(b) for b in replica.llava_files.values())
    assert any("malformed" in reason for reason in llava.reasons)
    assert llava.references_resolved > 0 and llava.references_unresolved > 0 and llava.ok == 0  # its images are COCO's

    gqa = sources["gqa"]
    assert not gqa.acquired and gqa.integrity is None and gqa.bytes == 0

    layouts = {l.id: l for l in summary.layouts}
    assert layouts["llava15"].built_at and not layouts["llava15"].complete and "gqa/images" in layouts["llava15"].missing

    mixtures = {m.id: m for m in summary.mixtures}
    mixture = mixtures["llava_instruct_150k"]
    assert mixture.records == len(replica.good_bare_names) and mixture.run == runs["mix_llava_instruct_150k"]
    assert mixture.dropped["image missing"] == len(MISSING_FROM_COCO) and mixture.dropped["image broken"] == 2
    assert mixture.image_folder == "data" and storage.exists(mixture.composition) and storage.exists(mixture.lock)
    assert mixtures["sharegpt4v_pt"].built_at is None
    assert summary.index and storage.exists(summary.index)


def test_the_summary_never_reads_a_whole_lock(storage, upstream):
    """A lock lists every dropped record (millions in a large mixture): the page reads the
    summary written beside it, and still works when the lock cannot be parsed at all."""
    slice_storage.fill(storage)
    expected = {m.id: m for m in gather(storage).mixtures}["llava_instruct_150k"]
    storage.write_bytes("mixtures/llava_instruct_150k/lock.json", b"{not json")
    assert {m.id: m for m in gather(storage).mixtures}["llava_instruct_150k"] == expected


def test_a_mixture_built_before_summaries_is_read_from_its_lock(storage, upstream):
    slice_storage.fill(storage)
    expected = {m.id: m for m in gather(storage).mixtures}["llava_instruct_150k"]
    storage.delete("mixtures/llava_instruct_150k/summary.json")
    assert {m.id: m for m in gather(storage).mixtures}["llava_instruct_150k"] == expected


def test_every_task_link_opens_a_file_the_plugin_serves(storage, upstream):
    """The extra links of fetch, report and build tasks name files that exist and are served."""
    from urllib.parse import unquote

    from vlmdata.operators import BuildMixtureOperator, HttpFetchOperator, ReportVerifyOperator
    from vlmdata.operators.links import CompositionLink, IntegrityReportLink, LockLink, ManifestLink

    slice_storage.fill(storage)
    tasks = [
        (HttpFetchOperator(task_id="fetch", source_id="coco_train2017", pin={"name": "train2017.zip"}), ManifestLink()),
        (ReportVerifyOperator(task_id="report", source_id="coco_train2017"), IntegrityReportLink()),
        (BuildMixtureOperator(task_id="build", recipe_id="llava_instruct_150k"), CompositionLink()),
        (BuildMixtureOperator(task_id="build", recipe_id="llava_instruct_150k"), LockLink()),
    ]
    for operator, link in tasks:
        url = link.get_link(operator, ti_key=None)
        assert url.startswith("vlmdata/files/")  # relative to Airflow's base URL
        key = unquote(url.removeprefix("vlmdata/files/"))
        assert status.servable(key) and storage.exists(key), (link.name, key)


def test_vlmdata_status_prints_what_the_page_shows(tmp_path, upstream, capsys):
    from vlmdata.cli import main
    from vlmdata.storage import LocalStorage

    replica, _http, _hub = upstream
    slice_storage.fill(LocalStorage(tmp_path / "root"))
    capsys.readouterr()
    assert main(["--root", str(tmp_path / "root"), "status"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]

    def line(name: str, last: bool = False) -> str:  # a source and a mixture share a name
        found = [line for line in lines if line.split()[0] == name]
        return found[-1 if last else 0]

    good, broken = len(replica.good_bare_names), len(replica.broken_keys)
    assert "warn" in line("coco_train2017") and f"{good}/{broken}/0/{broken}" in line("coco_train2017")
    assert replica.commit[:12] in line("llava_instruct_150k")
    assert "not acquired" in line("gqa") and "not verified" in line("gqa")
    assert "gqa/images" in line("llava15")
    mixture = line("llava_instruct_150k", last=True)
    assert f" {good} " in mixture and "json, seed 0" in mixture and f"image missing: {len(MISSING_FROM_COCO)}" in mixture
    train = line("llava_instruct_150k:", last=True)  # what the page's card says below the counts
    assert "--data_path <root>/mixtures/llava_instruct_150k/llava_instruct_150k.json --image_folder <root>/data" in train
    assert "lock mixtures/llava_instruct_150k/lock.json" in train
    assert line("coco_train2017:", last=True).strip() == "coco_train2017: report _vlmdata/reports/coco_train2017/integrity.html"
    assert "sharegpt4v_pt" in line("sharegpt4v_pt") and "not built" in line("sharegpt4v_pt")


def test_vlmdata_status_runs_come_from_airflows_database(tmp_path, upstream):
    """`vlmdata status --runs` reads the runs the page shows from Airflow's metadata database
    (a real one: migrated, the repository's DAGs serialised into it, a run triggered)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from vlmdata.storage import LocalStorage

    slice_storage.fill(LocalStorage(tmp_path / "root"))
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow"), "AIRFLOW__CORE__DAGS_FOLDER": str(repo / "dags"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "VLMDATA_ROOT": str(tmp_path / "root")}
    airflow = [str(Path(sys.executable).with_name("airflow"))]
    for command in (["db", "migrate"], ["dags", "reserialize"], ["dags", "trigger", "mix_llava_instruct_150k"]):
        subprocess.run(airflow + command, env=env, check=True, capture_output=True, timeout=600)
    shown = subprocess.run([sys.executable, "-m", "vlmdata.cli", "status", "--runs"], env=env, check=True, capture_output=True, text=True, timeout=300).stdout
    rows = {line.split()[0]: line for line in shown.splitlines() if line.strip()}  # the last row of a name: the mixture's
    assert rows["llava_instruct_150k"].endswith("queued")  # the run just triggered, not yet scheduled
    assert "never run (paused)" in rows["coco_train2017"]  # acquisitions start paused; verify_ does not
    assert "--runs adds" not in shown


def _page_app(storage):
    """The plugin's real FastAPI app on ``storage``, without Airflow's login and run history
    (tests/unit/test_ui.py checks the login; the browser test the rest)."""
    from fastapi.testclient import TestClient

    from vlmdata.ui.app import create_app

    return TestClient(create_app(storage=lambda: storage, runs=lambda dag_ids: {}, dependencies=[]))


def test_the_page_reads_summaries_never_the_whole_reports(storage):
    """Beside every summary lies the whole report it summarises (every broken image of each
    source, every dead URL of the crawl, every dropped record of each mixture), cut short so
    that it is not JSON: the page and the summary come from the summaries alone."""
    from vlmdata.replicas import large

    records = 50_000
    large.fill(storage, load_catalog(), load_recipes(), records, corrupt=True)
    assert storage.size("mixtures/llava_v1_5_mix665k/lock.json") > 2_000_000  # what the page must not read (cut short)
    summary = gather(storage)
    assert len(summary.sources) == 15 and len(summary.mixtures) == 9
    assert all(s.problem is None and s.integrity == "warn" and s.broken == records for s in summary.sources)
    assert all(m.problem is None and m.records == records and m.dropped == {"image missing": records} for m in summary.mixtures)

    page = _page_app(storage).get("/", headers={"accept": "text/html"})
    assert page.status_code == 200 and "unreadable" not in page.text
    assert all(f'id="source-{source_id}"' in page.text for source_id in load_catalog())
    assert all(f'id="mixture-{recipe_id}"' in page.text for recipe_id in load_recipes())


def test_a_corrupt_summary_marks_its_row_and_the_page_shows_the_rest(storage):
    from vlmdata.replicas import large

    large.fill(storage, load_catalog(), load_recipes(), 10)
    storage.write_bytes("_vlmdata/reports/gqa/integrity.json", b'{"source": "gqa", "checked_at": ')
    storage.write_bytes("mixtures/llava_v1_5_mix665k/summary.json", b'{"output": "not an object"}')
    summary = gather(storage)
    sources, mixtures = {s.id: s for s in summary.sources}, {m.id: m for m in summary.mixtures}
    assert "_vlmdata/reports/gqa/integrity.json" in sources["gqa"].problem and sources["gqa"].integrity is None
    assert mixtures["llava_v1_5_mix665k"].problem and mixtures["llava_v1_5_mix665k"].built_at is None
    assert [s.id for s in summary.sources if s.problem] == ["gqa"] and [m.id for m in summary.mixtures if m.problem] == ["llava_v1_5_mix665k"]

    client = _page_app(storage)
    page = client.get("/", headers={"accept": "text/html"})
    assert page.status_code == 200
    row = page.text.split('id="source-gqa"')[1].split("</tr>")[0]
    assert "unreadable" in row and "integrity.json" in row and "not a valid IntegrityReport" in row
    assert page.text.count('class="badge warn">warn') == 14  # the other sources, as they are
    data = client.get("/status.json").json()
    assert {s["id"]: s["problem"] for s in data["sources"] if s["problem"]}.keys() == {"gqa"}
