"""The digest that compares two runs' storage trees (e.g. LocalExecutor against Celery)."""

from __future__ import annotations

import json

from vlmdata.pages import when
from vlmdata.storage import LocalStorage
from vlmdata.treedigest import differences, tree_digest


def tree(root, fetched_at: str, run: str, image: bytes = b"\xff\xd8\xff jpeg") -> LocalStorage:
    storage = LocalStorage(root)
    storage.write_bytes("data/coco/train2017/1.jpg", image)
    storage.write_bytes("data/notes/log.json", json.dumps({"at": fetched_at}).encode())
    # Run ids as Airflow and our client make them: a time and a random suffix.
    storage.write_json("_vlmdata/sources/coco/source.json", {"fetched_at": fetched_at, "by": f"airflow run manual__{fetched_at}__{run}", "sha256": "ab"})
    storage.write_json("_vlmdata/reports/coco/report.json", {"by": f"asset_triggered__{fetched_at.replace(':', '_')}_{run}Qw"})
    storage.write_json("mixtures/r/lock.json", {"built_at": fetched_at, "seed": 1})
    storage.write_json("mixtures/r/summary.json", {"built_at": fetched_at, "seed": 1})
    storage.write_bytes("_vlmdata/reports/coco/integrity.html", f"<p>Checked {when(fetched_at)}.</p>".encode())  # as a person reads it
    storage.write_json("_vlmdata/crawl/s/results/0000.json", {"ok": 3, "seconds": len(run) * 1.5, "images_per_second": len(run) * 2.0})
    storage.write_bytes("mixtures/r/r.json", b"[1, 2]")
    return storage


def test_runs_that_differ_only_in_when_have_one_digest(tmp_path):
    a = tree(tmp_path / "a", "2026-12-03T07:20:11.123456+00:00", "x")
    b = tree(tmp_path / "b", "2026-12-04T09:01:02.000001+00:00", "yyy")
    b.write_bytes("data/notes/log.json", a.read_bytes("data/notes/log.json"))  # data files: byte for byte
    assert differences(tree_digest(a), tree_digest(b)) == []
    assert set(tree_digest(a)) == {
        "data/coco/train2017/1.jpg", "data/notes/log.json", "_vlmdata/sources/coco/source.json", "mixtures/r/lock.json", "mixtures/r/r.json",
        "_vlmdata/crawl/s/results/0000.json", "_vlmdata/reports/coco/report.json", "mixtures/r/summary.json", "_vlmdata/reports/coco/integrity.html",
    }


def test_other_bytes_a_missing_file_and_an_extra_one_are_named(tmp_path):
    a = tree(tmp_path / "a", "2026-12-03T07:20:11+00:00", "x")
    b = tree(tmp_path / "b", "2026-12-03T07:20:11+00:00", "x", image=b"\xff\xd8\xff other")
    b.write_json("_vlmdata/sources/coco/source.json", {"fetched_at": "2026-12-03T07:20:11+00:00", "by": "airflow run manual__2026-12-03T07:20:11+00:00", "sha256": "cd"})
    b.write_bytes("data/notes/log.json", json.dumps({"at": "2026-12-05T00:00:00+00:00"}).encode())  # not masked in data/
    b.write_json("_vlmdata/crawl/s/results/0000.json", {"ok": 4, "seconds": 1.5, "images_per_second": 2.0})  # counts are not timings
    b.delete("mixtures/r/r.json")
    b.write_bytes("data/extra.txt", b"x")
    assert differences(tree_digest(a), tree_digest(b)) == [
        "missing: mixtures/r/r.json",
        "extra:   data/extra.txt",
        "differs: _vlmdata/crawl/s/results/0000.json",
        "differs: _vlmdata/sources/coco/source.json",
        "differs: data/coco/train2017/1.jpg",
        "differs: data/notes/log.json",
    ]
    assert "data/extra.txt" not in tree_digest(b, ignore=["data/extra"])


def test_leases_are_coordination_not_results(tmp_path):
    """Who held which lease differs between any two runs; the results do not."""
    from vlmdata.lease import hold

    a = tree(tmp_path / "a", "2026-12-03T07:20:11.123456+00:00", "x")
    b = tree(tmp_path / "b", "2026-12-03T07:20:11.123456+00:00", "x")
    with hold(a, "mixture/r", who="one run"):
        pass
    with hold(b, "mixture/r", who="another run"):
        pass
    assert differences(tree_digest(a), tree_digest(b)) == []
    assert not [key for key in tree_digest(a) if "leases" in key]
