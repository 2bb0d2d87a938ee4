"""Upstream out of reach: permanent errors fail at once, a dry run answers from the catalog.

A host name that does not resolve is what "no network" and "a typo in the mirror map" look like.
Hosts under ``.invalid`` (RFC 2606) never resolve, so these tests meet the resolver's real answer
without reaching anything; a refused connection is a closed port on loopback.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import yaml

from vlmdata.acquire import DRY_RUN_POLICY, Context, acquire, plan
from vlmdata.catalog import load_catalog
from vlmdata.crawl import fill_from_mirrors, report_key
from vlmdata.fetch.http import HostNotFound, PermanentFetchError, RetryPolicy, Unreachable
from vlmdata.fetch.sa1b import shard_name
from vlmdata.localairflow import free_port
from vlmdata.mirrors import Mirrors
from vlmdata.storage import LocalStorage

# Every upstream host a source of the catalog names, sent where nothing resolves.
NOWHERE = {
    "http://images.cocodataset.org/": "http://coco.mirror.invalid/",
    "https://huggingface.co": "http://hub.mirror.invalid",
    "https://drive.google.com": "http://drive.mirror.invalid",
    "https://drive.usercontent.google.com": "http://drive.mirror.invalid",
    "https://api.github.com": "http://api.github.mirror.invalid",
    "https://raw.githubusercontent.com": "http://raw.github.mirror.invalid",
}
ACKNOWLEDGE = {"sharegpt4v_sam_9k", "sa1b", "webdata", "llava_cc3m_pretrain_595k"}


@pytest.fixture
def offline_env(tmp_path, monkeypatch):
    """The mirror map above, and an SA-1B links file whose signed links point nowhere."""
    mirrors = tmp_path / "mirrors.yaml"
    mirrors.write_text(yaml.safe_dump(NOWHERE))
    links = tmp_path / "sa1b_links.tsv"
    links.write_text("file_name\tcdn_link\n" + "".join(f"{shard_name(n)}\thttp://cdn.mirror.invalid/{shard_name(n)}?oh=s3cret&oe=1\n" for n in range(51)))
    env = {"VLMDATA_MIRRORS": str(mirrors), "VLMDATA_SA1B_LINKS": str(links)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    return env


def _cli(root, *args: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    import os

    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "vlmdata.cli", "--root", str(root), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})
    return done, time.monotonic() - start


@pytest.mark.parametrize(
    ("source", "host"),
    [("coco_train2017", "coco.mirror.invalid"), ("llava_instruct_150k", "hub.mirror.invalid"), ("sharegpt4v_sam_9k", "drive.mirror.invalid")],
)
def test_a_cli_dry_run_without_upstream_answers_from_the_catalog(tmp_path, offline_env, source, host):
    """HTTP, Hub and Drive: the dry run answers (exit 0) with the catalog's sizes, says they were
    not probed and which host could not be reached, and writes nothing but the licence's yes.
    It used to fail after about 2 minutes of retries."""
    root = tmp_path / "root"
    extra = ["--acknowledge-licence"] if source in ACKNOWLEDGE else []
    done, took = _cli(root, "acquire", source, "--dry-run", *extra, env=offline_env)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    catalog = load_catalog()[source]
    assert answer["dry_run"] and [item["name"] for item in answer["fetch"]] == [a.name for a in catalog.artifacts if not a.optional]
    assert answer["current"] == []
    assert host in answer["offline"]["unreachable"] and "does not resolve" in answer["offline"]["unreachable"]
    assert answer["offline"]["sizes"] == "declared in the catalog, not probed upstream"
    for item, artifact in zip(answer["fetch"], (a for a in catalog.artifacts if not a.optional)):
        if artifact.size is not None:
            assert (item["size"], item["size_is"]) == (artifact.size, "declared")
        elif artifact.approx_size is not None:
            assert (item["size"], item["size_is"]) == (int(artifact.approx_size), "approximate")
        else:
            assert (item["size"], item["size_is"]) == (None, "unknown")
            assert any(artifact.name in note for note in answer["offline"]["notes"])  # and the total leaves it out
    assert answer["bytes"] == sum(item["size"] or 0 for item in answer["fetch"])
    assert "DRY RUN WITHOUT UPSTREAM" in done.stderr and "not probed" in done.stderr
    assert not (root / "data").exists() and not (root / "_vlmdata" / "staging").exists()
    assert took < 60  # minutes before; a few seconds of interpreter start-up now, even on a busy machine


@pytest.mark.parametrize("source", ["coco_train2017", "llava_instruct_150k", "sharegpt4v_sam_9k", "ocr_vqa", "llava_gpt4_prompts", "sa1b", "webdata"])
def test_every_transport_fails_at_once_on_a_name_that_does_not_resolve(tmp_path, offline_env, waits, source):
    """An acquisition's plan fails at once (no retry, no wait: the operators make it an
    AirflowFailException, so no task retry either); the dry run of the same answers offline."""
    catalog = load_catalog()[source]
    ctx = Context(LocalStorage(tmp_path / "root"), Mirrors.from_env(), policy=RetryPolicy())
    with pytest.raises(HostNotFound, match="mirror.invalid' does not resolve") as failed:
        plan(catalog, ctx, acknowledge=True)
    assert isinstance(failed.value, PermanentFetchError) and "s3cret" not in str(failed.value)
    answer = acquire(catalog, ctx, acknowledge=True, dry_run=True)
    assert "does not resolve" in answer["offline"]["unreachable"] and "s3cret" not in json.dumps(answer)
    assert waits == []
    if source == "sa1b":  # the links file is local: its 51 tars, at the catalog's approximate size each
        assert len(answer["fetch"]) == 51 and {item["size_is"] for item in answer["fetch"]} == {"approximate"}
        assert answer["bytes"] == 51 * int(catalog.sa1b.approx_shard_size)
    if source in ("webdata", "llava_gpt4_prompts"):  # what the upstream listing holds is unknown offline
        assert answer["fetch"] == [] and any("listing could not be read" in note for note in answer["offline"]["notes"])


def test_mirror_fill_from_a_host_that_does_not_resolve_fails_at_once(tmp_path, waits):
    """OCR-VQA's fallback archives: the mirror is recorded as failed without a retry."""
    storage = LocalStorage(tmp_path / "root")
    storage.write_json(report_key("ocr_vqa"), {"missing": ["140031996X"]})  # what the crawl left missing
    result = fill_from_mirrors(storage, "ocr_vqa", "ocr_vqa/images", ["http://mirror.invalid/ocr_vqa.tar"], policy=RetryPolicy())
    (outcome,) = result["mirrors"]
    assert outcome["outcome"] == "failed" and "'mirror.invalid' does not resolve" in outcome["reason"]
    assert waits == []


def test_a_refused_connection_is_retried_by_an_acquisition_and_briefly_by_a_dry_run(tmp_path, waits):
    """Refused may pass (a server or a balancer's backend restarting): an acquisition retries it
    with its full budget; a dry run makes DRY_RUN_POLICY's 3 attempts, then answers offline."""
    closed = f"http://127.0.0.1:{free_port()}/"
    ctx = Context(LocalStorage(tmp_path / "root"), Mirrors({"http://images.cocodataset.org/": closed}), policy=RetryPolicy())
    coco = load_catalog()["coco_train2017"]
    with pytest.raises(Unreachable, match="giving up after 8 attempts.*refused") as failed:
        plan(coco, ctx)
    assert not isinstance(failed.value, PermanentFetchError) and len(waits) == 7
    waits.clear()
    answer = acquire(coco, ctx, dry_run=True)
    assert len(waits) == DRY_RUN_POLICY.attempts - 1 and all(wait <= DRY_RUN_POLICY.max_wait for wait in waits)
    assert f"giving up after {DRY_RUN_POLICY.attempts} attempts" in answer["offline"]["unreachable"] and closed in answer["offline"]["unreachable"]
    assert answer["fetch"][0] | {"url": None} == {"name": "train2017.zip", "url": None, "size": coco.artifacts[0].size, "size_is": "declared", "revision": None}


def test_an_offline_dry_run_says_what_is_on_the_storage(storage, upstream, waits, monkeypatch, tmp_path):
    """What is placed is local: the offline answer lists it as current (not compared with
    upstream), and an artifact whose placed file went missing as one to fetch."""
    catalog = load_catalog()
    ctx = Context(storage, Mirrors.from_env(), policy=RetryPolicy(attempts=4, backoff=0.01))
    acquire(catalog["coco_train2017"], ctx)
    acquire(catalog["llava_instruct_150k"], ctx)
    storage.delete("data/llava/detail_23k.json")
    nowhere = tmp_path / "nowhere.yaml"
    nowhere.write_text(yaml.safe_dump(NOWHERE))
    monkeypatch.setenv("VLMDATA_MIRRORS", str(nowhere))
    offline = Context(storage, Mirrors.from_env(), policy=RetryPolicy())
    waits.clear()
    coco = acquire(catalog["coco_train2017"], offline, dry_run=True)
    assert coco["current"] == ["train2017.zip"] and coco["fetch"] == [] and coco["bytes"] == 0 and "offline" in coco
    llava = acquire(catalog["llava_instruct_150k"], offline, dry_run=True)
    assert sorted(llava["current"]) == sorted(a.name for a in catalog["llava_instruct_150k"].artifacts if a.name != "detail_23k.json")
    assert llava["fetch"] == [{"name": "detail_23k.json", "url": None, "size": 20_500_000, "size_is": "approximate", "revision": None}]
    assert waits == []


def test_the_readme_states_the_dry_run_budget():
    """The numbers the README gives for a dry run's retrying are the code's."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = " ".join(readme.split("## Dry runs", 1)[1].split("\n## ", 1)[0].split())
    policy = DRY_RUN_POLICY
    assert f"{policy.attempts} attempts" in section
    assert f"at most {policy.max_wait:.0f} s" in section and f"{policy.connect_timeout:.0f} s to connect" in section
    assert f"{policy.read_timeout:.0f} s for an answer" in section


def test_the_acquisition_dags_document_the_offline_dry_run():
    from vlmdata.dagfactory import acquisition_dag

    dag = acquisition_dag(load_catalog()["coco_train2017"])
    assert "DRY RUN WITHOUT UPSTREAM" in dag.doc_md and f"{DRY_RUN_POLICY.attempts} attempts" in dag.doc_md
    assert "declared sizes" in dag.params.get_param("dry_run").description


def test_a_crawled_image_whose_host_does_not_resolve_is_recorded_dead_at_once(tmp_path, waits):
    """One try per image, not the crawl's 4 attempts: the image is missing, for the mirrors to fill."""
    from vlmdata.crawl import crawl_shard, plan_shards, result_key

    storage = LocalStorage(tmp_path / "root")
    listing = {f"00000000{n}": {"imageURL": f"http://covers.mirror.invalid/{n}.jpg"} for n in range(1, 4)}
    storage.write_json("data/ocr_vqa/dataset.json", listing)
    (shard,) = plan_shards(storage, "data/ocr_vqa/dataset.json", "data/ocr_vqa/images", shard_size=10)
    summary = crawl_shard(storage, shard["key"], "data/ocr_vqa/images", policy=RetryPolicy(attempts=4), workers=2)
    dead = storage.read_json(result_key(shard["key"]))["dead"]
    assert summary["ok"] == 0 and set(dead) == set(listing)
    assert all("does not resolve" in reason for reason in dead.values()) and waits == []


@pytest.mark.parametrize(("source", "upstream"), [("coco_train2017", "http://images.cocodataset.org/"), ("llava_instruct_150k", "https://huggingface.co")])
def test_a_dry_run_against_a_silent_host_answers_after_its_attempts(tmp_path, waits, source, upstream):
    """A host that accepts connections and never answers (the kernel completes the handshake of
    a socket nobody accepts on): each attempt times out, the Hub client's too (it had no timeout
    and waited forever); after DRY_RUN_POLICY's attempts the dry run answers offline."""
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}" + ("/" if upstream.endswith("/") else "")
        ctx = Context(LocalStorage(tmp_path / "root"), Mirrors({upstream: url}), policy=RetryPolicy(read_timeout=0.5))
        answer = _within(120, lambda: acquire(load_catalog()[source], ctx, dry_run=True))
    assert "Timeout" in answer["offline"]["unreachable"] and f"giving up after {DRY_RUN_POLICY.attempts} attempts" in answer["offline"]["unreachable"]
    assert len(waits) == DRY_RUN_POLICY.attempts - 1 and answer["fetch"][0]["size_is"] in ("declared", "approximate")


def _within(seconds: float, call):
    """``call()``'s result, or a failure after ``seconds`` (a hung call must fail the test, not hold it)."""
    import threading

    result: dict = {}

    def run() -> None:
        try:
            result["value"] = call()
        except BaseException as exc:  # raised again in the test's thread
            result["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    if "error" in result:
        raise result["error"]
    assert "value" in result, f"no answer within {seconds} s"
    return result["value"]
