"""The vlmdata page in a real browser: Debian's Chromium (installed when missing, as the servers
of the distributed tests are) driven by Playwright, against a real Airflow whose storage holds
what the library wrote from the slice's replicas, on a local root, then on S3: COCO with its
planted broken and missing images, LLaVA-Instruct-150K with its malformed record, both layouts,
a mixture.

A user logs in through Airflow's login page, opens "vlmdata" from the navigation, reads every
source's status and counts and the mixture's records, opens a report and a chart through their
links, follows the extra links of a verification's and a mixture's tasks, and builds a mixture
from the ``mix`` DAG's Trigger form, then finds it on the page. A screenshot per step
goes to ``<tmp>/screenshots`` (printed at the end). Anonymous requests to the plugin are refused.
"""

from __future__ import annotations

import json
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import boto3

import pytest
import requests
from playwright.sync_api import expect

from tests import slice_storage
from tests.conftest import free_port
from vlmdata.airflow_client import AirflowClient
from vlmdata.catalog import load_catalog
from vlmdata.localairflow import LocalAirflow
from vlmdata.replicas.hf_hub import FakeHfHub
from vlmdata.replicas.http_server import FakeHttpServer
from vlmdata.replicas.slice import MISSING_FROM_COCO, SliceReplica
from vlmdata.services import chromium_path, ensure_installed
from vlmdata.storage import LocalStorage, S3Options, S3Storage

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
RECIPE = "llava_instruct_150k"
MIX_DAG = f"mix_{RECIPE}"
VERIFY_DAG = "verify_coco_train2017"
# Playwright's waits: an API server on a loaded 2-core machine can take tens of seconds a page.
WAIT_MS = 120_000


@pytest.fixture(scope="module", params=["local", "s3"])
def deployment(request, tmp_path_factory):
    """Airflow over a storage the library filled, on a local root and on S3 (moto's server),
    the root set as a user sets it (VLMDATA_ROOT; on S3 the aws_default connection)."""
    ensure_installed(("chromium",))
    work = tmp_path_factory.mktemp("ui")
    with FakeHttpServer() as http, FakeHfHub() as hub, pytest.MonkeyPatch.context() as env:
        replica = SliceReplica()
        settings = replica.install(http, hub, work)
        for key, value in settings.items():
            env.setenv(key, value)
        if request.param == "local":
            storage = LocalStorage(work / "root")
        else:
            endpoint = request.getfixturevalue("s3_endpoint")
            bucket = f"ui-{uuid.uuid4().hex[:12]}"
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
            storage = S3Storage(f"s3://{bucket}/root", S3Options(endpoint_url=endpoint), staging=work / "staging")
            settings["AIRFLOW_CONN_AWS_DEFAULT"] = json.dumps({"conn_type": "aws", "login": "testing", "password": "testing", "extra": {"endpoint_url": endpoint}})
        slice_storage.fill(storage)
        settings.update({"VLMDATA_ROOT": storage.url, "VLMDATA_STAGING": str(work / "staging")})
        airflow = LocalAirflow(work / "airflow", REPO / "dags", port=free_port(), extra_env=settings, log_server_port=free_port())
        with airflow:
            airflow.wait_ready(timeout=300)
            client = AirflowClient(airflow.url, airflow.user, airflow.admin_password)
            yield airflow, client, replica, storage, work
            print(f"Airflow logs: {airflow.log_dir}")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # Debian's build, not a download; as root Chromium needs --no-sandbox.
        chromium = playwright.chromium.launch(executable_path=str(chromium_path()), headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def test_the_plugin_refuses_anonymous_requests(deployment):
    airflow, *_ = deployment
    for path in ("/vlmdata/", "/vlmdata/status.json", "/vlmdata/files/_vlmdata/reports/index.html"):
        response = requests.get(airflow.url + path, timeout=60)
        assert response.status_code == 401, (path, response.status_code, response.text[:200])
    # Airflow lists it among the plugins, with its navigation entry and links.
    client = deployment[1]
    (plugin,) = [p for p in client.list("plugins", "plugins") if p["name"] == "vlmdata"]
    assert [v["url_route"] for v in plugin["external_views"]] == ["vlmdata"]
    assert plugin["fastapi_apps"][0]["url_prefix"] == "/vlmdata"


@pytest.fixture(scope="module")
def pipeline_runs(deployment) -> dict[str, str]:
    """A verification of COCO, which the pipeline follows as it would after an acquisition: the
    verification of LLaVA-Instruct (whose records point into COCO), then the mixture. Their
    tasks carry the extra links; the page shows their runs. DAG -> run id."""
    _airflow, client, *_ = deployment
    runs = {VERIFY_DAG: client.trigger(VERIFY_DAG)}
    assert client.wait_for_run(VERIFY_DAG, runs[VERIFY_DAG], timeout=600) == "success", client.task_logs(VERIFY_DAG, runs[VERIFY_DAG])
    mixed = client.wait_until(lambda: [r for r in client.runs(MIX_DAG) if r["state"] in ("success", "failed")], timeout=900, interval=3)
    assert [r["state"] for r in mixed] == ["success"], client.task_logs(MIX_DAG, mixed[0]["dag_run_id"])
    runs[MIX_DAG] = mixed[0]["dag_run_id"]
    return runs


@dataclass
class Visit:
    page: object
    shots: Path  # a screenshot per step
    vlmdata_url: str  # the vlmdata page inside Airflow's UI

    @property
    def frame(self):
        return self.page.frame_locator("iframe[title=vlmdata]")

    @contextmanager
    def step(self):
        """A screenshot of the page when the step fails."""
        try:
            yield self.page
        except BaseException:
            try:
                self.page.screenshot(path=self.shots / "failure.png", full_page=True, timeout=30_000)
            except Exception as exc:  # the failure itself matters more
                print(f"no failure screenshot: {exc}")
            raise


@pytest.fixture(scope="module")
def visit(deployment, browser, pipeline_runs):
    """A user logged in through Airflow's login page who opened "vlmdata" from the navigation."""
    airflow, _client, _replica, _storage, work = deployment
    shots = work / "screenshots"
    shots.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.set_default_timeout(WAIT_MS)
    try:
        with Visit(page, shots, "").step():
            page.goto(airflow.url + "/")  # Airflow sends an anonymous visitor to its login page
            page.get_by_label("Username").fill(airflow.user)
            page.get_by_label("Password").fill(airflow.admin_password)
            page.screenshot(path=shots / "01-login.png")
            page.get_by_role("button", name="Sign in").click()
            page.get_by_role("button", name="Browse").click()
            page.screenshot(path=shots / "02-browse-menu.png")
            page.get_by_role("menuitem", name="vlmdata").click()
            page.wait_for_url("**/plugin/vlmdata/**")
        visit = Visit(page, shots, page.url)
        visit.frame.locator("#source-coco_train2017").wait_for()
        page.screenshot(path=shots / "03-vlmdata-page.png", full_page=True)
        yield visit
    finally:
        print(f"screenshots: {shots}")
        page.close()


def test_the_page_shows_cocos_planted_faults_and_its_verification_run(deployment, visit, pipeline_runs):
    replica = deployment[2]
    with visit.step():
        coco = visit.frame.locator("#source-coco_train2017")
        assert coco.locator(".integrity .badge").inner_text() == "warn"
        assert coco.locator("td.ok").inner_text() == str(len(replica.good_bare_names))
        assert coco.locator("td.broken").inner_text() == str(len(replica.broken_keys))
        assert coco.locator("td.missing").inner_text() == "0"
        assert coco.locator("td.quarantined").inner_text() == str(len(replica.broken_keys))
        assert coco.locator("td.verify-run .badge").inner_text() == "success"  # the run above
        assert unquote(coco.locator("td.verify-run a").get_attribute("href")).endswith(f"/runs/{pipeline_runs[VERIFY_DAG]}")


def test_the_page_lists_every_source_with_its_revision_and_what_is_not_acquired(deployment, visit):
    replica = deployment[2]
    with visit.step():
        llava = visit.frame.locator("#source-llava_instruct_150k")
        assert replica.commit[:12] in llava.inner_text() and "malformed" in llava.inner_text()
        assert "not acquired" in visit.frame.locator("#source-gqa").inner_text()
        assert visit.frame.locator("#sources tr[id^=source-]").count() == len(load_catalog())
        assert "incomplete" in visit.frame.locator("#layout-llava15").inner_text()


def test_the_page_shows_the_mixtures_records_why_others_were_dropped_and_its_chart(deployment, visit):
    replica = deployment[2]
    with visit.step():
        mixture = visit.frame.locator("#mixture-llava_instruct_150k")
        assert mixture.locator(".records").inner_text() == str(len(replica.good_bare_names))
        dropped = mixture.locator(".dropped").inner_text()
        assert f"image missing: {len(MISSING_FROM_COCO)}" in dropped and "image broken: 2" in dropped
        assert mixture.locator(".badge.success").count() == 1
        assert mixture.locator("img").evaluate("img => img.naturalWidth") > 0  # the chart loaded


def test_a_report_opens_through_its_link(visit):
    """After the tests that read the page: the frame moves on."""
    with visit.step() as page:
        if page.url != visit.vlmdata_url:
            page.goto(visit.vlmdata_url)
        visit.frame.locator("#source-coco_train2017").get_by_role("link", name="integrity report").click()
        expect(visit.frame.locator("h1")).to_contain_text("coco_train2017", timeout=WAIT_MS)  # once the frame has moved on
        page.screenshot(path=visit.shots / "04-integrity-report.png", full_page=True)


def test_a_verification_task_links_to_its_integrity_report(deployment, visit, pipeline_runs):
    airflow = deployment[0]
    with visit.step() as page:  # the task instance's Details tab
        page.goto(f"{airflow.url}/dags/{VERIFY_DAG}/runs/{pipeline_runs[VERIFY_DAG]}/tasks/report")
        page.get_by_role("link", name="Details").click()
        page.get_by_role("link", name="Integrity report").click()
        page.wait_for_url("**/vlmdata/files/_vlmdata/reports/coco_train2017/integrity.html")
        expect(page.locator("h1")).to_contain_text("coco_train2017")


def test_a_mixture_task_links_to_its_lock_and_its_chart(deployment, visit, pipeline_runs):
    airflow, replica = deployment[0], deployment[2]
    with visit.step() as page:
        page.goto(f"{airflow.url}/dags/{MIX_DAG}/runs/{pipeline_runs[MIX_DAG]}/tasks/build")
        page.get_by_role("link", name="Details").click()
        lock_link = page.get_by_role("link", name="Lock")
        lock_link.wait_for()
        page.screenshot(path=visit.shots / "05-task-extra-links.png")
        composition = page.get_by_role("link", name="Composition").get_attribute("href")
        lock_link.click()
        page.wait_for_url("**/vlmdata/files/mixtures/llava_instruct_150k/lock.json")
        lock = json.loads(page.locator("body").inner_text())
        assert lock["output"]["records"] == len(replica.good_bare_names)
        assert lock["inputs"][0]["revision"] == replica.commit
        page.screenshot(path=visit.shots / "06-lock.png")
        # (Chromium takes no screenshot of a bare SVG document: the page above shows the chart.)
        chart = page.goto(f"{airflow.url}/{composition}")
        assert chart.ok and chart.headers["content-type"] == "image/svg+xml"
        assert "llava_instruct_150k" in chart.text()


def test_a_mixture_built_from_the_mix_dags_form_shows_on_the_page(deployment, visit):
    """Another seed and format than the recipe's."""
    airflow, client, replica = deployment[0], deployment[1], deployment[2]
    with visit.step() as page:
        page.goto(f"{airflow.url}/dags/mix")
        page.get_by_role("button", name="Trigger").first.click()
        form = page.get_by_role("dialog")
        recipe, fmt = form.get_by_role("combobox").all()
        recipe.click()
        page.keyboard.type(RECIPE)
        page.keyboard.press("Enter")
        fmt.click()
        page.keyboard.type("jsonl")
        page.keyboard.press("Enter")
        form.get_by_role("spinbutton").fill("7")
        page.screenshot(path=visit.shots / "07-trigger-form.png")
        form.get_by_role("button", name="Trigger").click()
        page.wait_for_url("**/dags/mix/runs/**")
        (run,) = client.runs("mix")
        assert run["conf"] == {"recipe": RECIPE, "seed": 7, "format": "jsonl"}
        assert client.wait_for_run("mix", run["dag_run_id"], timeout=600) == "success", client.task_logs("mix", run["dag_run_id"])
        links = client.request("GET", f"dags/mix/dagRuns/{run['dag_run_id']}/taskInstances/build/links").json()["extra_links"]
        assert links["Lock"].endswith(f"mixtures/{RECIPE}/lock.json")  # the recipe chosen in the form
        page.goto(f"{airflow.url}/vlmdata/")
        mixture = page.locator(f"#mixture-{RECIPE}")
        assert "jsonl, seed 7" in mixture.inner_text()
        assert mixture.locator(".records").inner_text() == str(len(replica.good_bare_names))
        page.screenshot(path=visit.shots / "08-vlmdata-page-after-the-form.png", full_page=True)
