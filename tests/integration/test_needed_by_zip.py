"""needed_by on zip archives over HTTP (issue 13, item 1): an acquisition that needs a tenth of
the COCO replica's images moves about a tenth of its bytes, passes integrity and the consumer
contract; a later run without needed_by fetches only the rest. On a local root and on S3."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

import pytest
import yaml

from vlmdata.acquire import Context, acquire, plan
from vlmdata.catalog import load_catalog
from vlmdata.fetch.http import RetryPolicy
from vlmdata.manifest import Manifest
from vlmdata.mirrors import Mirrors
from vlmdata.mix import Component, Recipe, build, output_key
from vlmdata.needed import annotation_files
from vlmdata.replicas.data import llava_record
from vlmdata.replicas.hf_hub import FakeHfHub
from vlmdata.replicas.http_server import FakeHttpServer, ignore_range
from vlmdata.replicas.slice import SliceReplica
from vlmdata.storage import LocalStorage
from vlmdata.verify import verify_source
from tests.integration.test_consumer_contract import load_like_llava

ZIP = "/coco/zips/train2017.zip"
IMAGES = 100
TENTH = "custom/tenth.json"
POLICY = RetryPolicy(attempts=3, backoff=0.05, max_wait=0.2)
# The first read of a partial fetch: one byte (the size), then the archive's last 16 KiB (the
# end of central directory record and, here, the whole directory).
END_OF_ARCHIVE = 16 * 1024 + 1


@pytest.fixture(scope="module")
def replica():
    return SliceReplica(images=IMAGES, image_size=(2048, 1536))  # ~20 KB a JPEG: the 9 images between two wanted ones are more than the 64 KiB a request reads past (Coalescing.max_gap; COCO JPEGs are ~160 KB)


@pytest.fixture
def upstream(replica, tmp_path, monkeypatch):
    """The COCO replica over HTTP and a source whose annotation file references every tenth of
    its good images (a custom recipe's file), with the catalog overlay a user would write."""
    with FakeHttpServer() as http, FakeHfHub() as hub:
        env = replica.install(http, hub, tmp_path)
        records = [llava_record(f"tenth-{i}", name) for i, name in enumerate(replica.good_bare_names[::10])]
        http.add("/custom/tenth.json", json.dumps(records).encode())
        source = {
            "id": "custom_tenth", "title": "A tenth of COCO", "kind": "http", "licence": {"name": "CC0"},
            "artifacts": [{"name": "tenth.json", "url": f"{http.url}/custom/tenth.json", "target": TENTH,
                           "annotation": {"image_folder": "coco/train2017", "references": ["coco_train2017"]}}],
        }
        (tmp_path / "catalog" / "custom_tenth.yaml").write_text(yaml.safe_dump(source, sort_keys=False))
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        yield http, records


def _ctx(storage) -> Context:
    """A command's context (each CLI command makes its own: its memo holds one step's listings)."""
    return Context(storage, Mirrors.from_env(), policy=POLICY)


def test_a_tenth_of_an_archive_moves_a_tenth_of_its_bytes_and_the_rest_comes_later(upstream, replica, storage):
    http, records = upstream
    catalog = load_catalog()
    coco, archive = catalog["coco_train2017"], len(replica.coco_zip)
    acquire(catalog["custom_tenth"], _ctx(storage))

    dry = acquire(coco, _ctx(storage), needed_by=[TENTH], dry_run=True)
    assert [(item["name"], item["members_wanted"]) for item in dry["fetch"]] == [("train2017.zip", len(records))]
    summary = acquire(coco, _ctx(storage), needed_by=[TENTH])  # what `vlmdata acquire coco_train2017 --needed-by custom/tenth.json` runs
    moved = http.bytes_sent(ZIP)
    wanted_bytes = _stored_bytes(replica, records)
    assert wanted_bytes < moved <= 1.1 * wanted_bytes + END_OF_ARCHIVE, (moved, wanted_bytes)
    assert moved < 0.12 * archive, f"{moved} of {archive} bytes for a tenth of the images"
    assert summary["changed"] == ["train2017.zip"] and summary["partial"] == {"train2017.zip": f"{len(records)} of {IMAGES} members"}

    record = Manifest(storage, "coco_train2017").artifact("train2017.zip")
    assert record.partial.members_present == len(records) and record.partial.bytes_moved == moved and record.sha256 == ""
    assert "crc32" in record.partial.checked
    report = verify_source(coco, storage, catalog, workers=1)
    assert report.status == "ok", report
    assert report.artifacts["train2017.zip"].members == len(records) and report.artifacts["train2017.zip"].sha256 is None
    recipe = Recipe(id="tenth", title="A tenth of COCO", components=[Component(source="custom_tenth", artifact="tenth.json")])
    lock = build(recipe, storage, catalog)
    assert lock.output.records == len(records) and lock.dropped == []
    if isinstance(storage, LocalStorage):  # the loader reads local paths
        assert load_like_llava(str(storage.local_path(output_key("tenth", "json"))), str(storage.local_path(lock.image_folder))) == len(records)

    again = acquire(coco, _ctx(storage), needed_by=[TENTH])  # nothing more needed: the directory is not even read
    assert again["changed"] == [] and http.bytes_sent(ZIP) == moved

    rest = acquire(coco, _ctx(storage))  # the whole source: only the members still missing
    assert rest["changed"] == ["train2017.zip"] and rest["partial"] == {"train2017.zip": f"{IMAGES} of {IMAGES} members"}  # never hashed whole
    total = http.bytes_sent(ZIP)
    assert Manifest(storage, "coco_train2017").artifact("train2017.zip").partial.members_fetched == IMAGES - len(records)  # the rest only
    # Both runs together cost about one download: members already present are read again only as
    # the short gaps a request reads past instead of making two (Coalescing.max_gap).
    assert total <= 1.1 * archive, (total, archive)
    assert len(Manifest(storage, "coco_train2017").index("train2017.zip")) == IMAGES
    assert verify_source(coco, storage, catalog, workers=1).artifacts["train2017.zip"].members == IMAGES
    assert acquire(coco, _ctx(storage))["changed"] == [] and http.bytes_sent(ZIP) == total  # current now


def _stored_bytes(replica: SliceReplica, records: list[dict]) -> int:
    """The bytes of the archive's members the records reference (local header and data)."""
    wanted = {f"train2017/{r['image']}" for r in records}
    with zipfile.ZipFile(io.BytesIO(replica.coco_zip)) as archive:
        return sum(30 + len(i.filename) + len(i.extra) + i.compress_size for i in archive.infolist() if i.filename in wanted)


def test_a_server_that_ignores_range_gets_the_whole_archive_saying_so(upstream, replica, tmp_path, caplog, capsys):
    from vlmdata.cli import main

    http, records = upstream
    catalog, storage = load_catalog(), LocalStorage(tmp_path / "root")
    ctx = _ctx(storage)
    acquire(catalog["custom_tenth"], ctx)
    capsys.readouterr()
    assert main(["--root", str(tmp_path / "root"), "acquire", "coco_train2017", "--dry-run", "--needed-by", TENTH]) == 0
    assert json.loads(capsys.readouterr().out)["fetch"][0]["members_wanted"] == len(records)
    http.script(ZIP, ignore_range())
    summary = acquire(catalog["coco_train2017"], ctx, needed_by=[TENTH])
    assert "train2017.zip" in summary["whole_instead"] and "whole" in summary["whole_instead"]["train2017.zip"]
    assert "downloading the whole archive instead" in caplog.text
    record = Manifest(storage, "coco_train2017").artifact("train2017.zip")
    assert record.partial is None and record.md5 == hashlib.md5(replica.coco_zip).hexdigest() and record.placement.members == IMAGES


def test_needed_by_names_a_recipe_or_a_file_and_refuses_what_it_cannot_choose(upstream, tmp_path):
    catalog = load_catalog()
    assert annotation_files(["recipe:llava_v1_5_mix665k", "/custom/tenth.json"], catalog) == [
        next(a.target for a in catalog["llava_instruct_150k"].artifacts if a.name == "llava_v1_5_mix665k.json"), TENTH,
    ]
    with pytest.raises(KeyError, match="no recipe 'nope'"):
        annotation_files(["recipe:nope"], catalog)
    storage = LocalStorage(tmp_path / "root")
    with pytest.raises(FileNotFoundError, match="custom/tenth.json is not in the data tree"):
        plan(catalog["coco_train2017"], _ctx(storage), needed_by=[TENTH])
    with pytest.raises(ValueError, match="without zip archives have no such choice"):
        plan(catalog["custom_tenth"], _ctx(storage), needed_by=[TENTH])


def test_a_recipe_chooses_the_members_and_quarantined_ones_are_not_fetched_again(upstream, replica, tmp_path):
    catalog, storage = load_catalog(), LocalStorage(tmp_path / "root")
    coco, manifest = catalog["coco_train2017"], Manifest(storage, "coco_train2017")
    acquire(catalog["llava_instruct_150k"], _ctx(storage))
    acquire(coco, _ctx(storage), needed_by=["recipe:llava_v1_5_mix665k"])  # its COCO records name the first four images
    assert sorted(key for key, _size in storage.list("data/coco/train2017")) == [f"data/coco/{member}" for member in replica.coco_members[:4]]
    broken = f"data/coco/{replica.coco_members[2]}"  # number 3, planted truncated
    storage.delete(broken)  # what verify does with it: out of the data tree, into the quarantine list
    manifest.save_quarantined({broken: "truncated"})
    acquire(coco, _ctx(storage))
    assert manifest.artifact("train2017.zip").partial.members_fetched == IMAGES - 4 and not storage.exists(broken)
    assert acquire(coco, _ctx(storage))["changed"] == []
