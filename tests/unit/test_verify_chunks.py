"""Verification split into chunks: bounded, complete, deterministic; chunk results on the storage."""

from __future__ import annotations

import random
import zlib

import msgspec
import pytest

from vlmdata.catalog import load_catalog
from vlmdata.manifest import ArtifactRecord, Manifest, Placement, SourceRecord, index_key
from vlmdata.replicas.data import jpeg_bytes, png_bytes, truncated_jpeg_bytes
from vlmdata.reports import IntegrityReport, load
from vlmdata.verify import (
    IncompleteVerification,
    check_chunk,
    chunk_images,
    chunks_prefix,
    plan_verify,
    report_key,
    report_verify,
    verify_source,
)


def _images(n: int, seed: int = 0) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    return [(f"data/x/{i:06d}.jpg", rng.randint(1, 5000)) for i in range(n)]


@pytest.mark.parametrize("n, max_images, max_bytes", [(0, 5, 10**9), (1, 1, 1), (10, 3, 10**9), (1000, 64, 40_000), (997, 1000, 10**9), (500, 10**6, 7_000)])
def test_chunks_are_bounded_cover_every_image_once_and_keep_the_order(n, max_images, max_bytes):
    images = _images(n, seed=n)
    chunks = chunk_images(images, max_images, max_bytes)
    assert [image for chunk in chunks for image in chunk] == images  # each once, in order
    for chunk in chunks:
        assert chunk and len(chunk) <= max_images
        assert sum(size for _, size in chunk) <= max_bytes or len(chunk) == 1  # only a lone image may exceed it
    for before, after in zip(chunks, chunks[1:]):  # a chunk closes only when the next image would not fit
        assert len(before) == max_images or sum(s for _, s in before) + after[0][1] > max_bytes
    assert chunk_images(images, max_images, max_bytes) == chunks  # deterministic


def test_an_image_larger_than_the_byte_bound_is_a_chunk_of_its_own():
    images = [("a.jpg", 10), ("big.jpg", 500), ("b.jpg", 10), ("c.jpg", 10)]
    assert chunk_images(images, max_images=10, max_bytes=100) == [[("a.jpg", 10)], [("big.jpg", 500)], [("b.jpg", 10), ("c.jpg", 10)]]


@pytest.mark.parametrize("max_images, max_bytes", [(0, 10), (10, 0)])
def test_a_chunk_must_hold_an_image(max_images, max_bytes):
    with pytest.raises(ValueError):
        chunk_images(_images(3), max_images, max_bytes)


def test_plan_ids_are_safe_storage_keys():
    assert chunks_prefix("coco_train2017", "manual__2026-12-03T07_00_00.1_00_00") == "_vlmdata/reports/coco_train2017/chunks/manual__2026-12-03T07_00_00.1_00_00"
    with pytest.raises(ValueError):
        chunks_prefix("coco_train2017", "../../data")


# ---------------------------------------------------------------- a small acquired source, made with Pillow

SOURCE = "coco_train2017"
FOLDER = "data/coco/train2017"


def _acquired(storage) -> dict[str, bytes]:
    """COCO as an acquisition would leave it: 23 images (two broken, one PNG named .jpg) under
    the manifest's index of train2017.zip, the source published."""
    files = {f"{FOLDER}/{i:012d}.jpg": jpeg_bytes(24 + i, 16 + i, seed=i) for i in range(20)}
    files[f"{FOLDER}/000000000100.jpg"] = truncated_jpeg_bytes(256, 192, seed=3, keep=0.5)
    files[f"{FOLDER}/000000000101.jpg"] = b""
    files[f"{FOLDER}/000000000102.jpg"] = png_bytes(20, 10, seed=5)
    for key, data in files.items():
        storage.write_bytes(key, data)
    storage.write_json(index_key(SOURCE, "train2017.zip"), [[key, len(data), zlib.crc32(data)] for key, data in files.items()])  # the members' CRC-32, as extraction records them
    manifest = Manifest(storage, SOURCE)
    manifest.save_artifact(ArtifactRecord(
        name="train2017.zip", url="http://127.0.0.1/train2017.zip", size=1, sha256="0" * 64, fetched_at="2026-01-01T00:00:00+00:00",
        placement=Placement(folder=FOLDER, images=True, members=len(files)), complete=True,
    ))
    manifest.save_source(SourceRecord(source=SOURCE, kind="http", published_at="2026-01-01T00:00:00+00:00"))
    return files


def _stored(storage) -> dict:
    """What a user reads after a verification, the check's time aside."""
    report = storage.read_json(f"_vlmdata/reports/{SOURCE}/integrity.json")
    report.pop("checked_at")
    return {
        "report": report,
        "broken": storage.read_json(f"_vlmdata/reports/{SOURCE}/broken.json"),
        "quarantine": sorted(key for key, _ in storage.list(f"_vlmdata/quarantine/{SOURCE}")),
        "data": sorted(key for key, _ in storage.list(FOLDER)),
        "html": storage.read_bytes(f"_vlmdata/reports/{SOURCE}/integrity.html").decode().split("Checked ")[0],
    }


def test_chunked_verification_reports_exactly_what_one_chunk_does(storage):
    catalog = load_catalog()
    _acquired(storage)
    whole = verify_source(catalog[SOURCE], storage, catalog, workers=1, max_images=10**6)
    as_one = _stored(storage)
    storage.delete("data")
    storage.delete("_vlmdata")

    _acquired(storage)
    chunked = verify_source(catalog[SOURCE], storage, catalog, workers=1, max_images=4, max_bytes=10**9)
    assert _stored(storage) == as_one
    assert msgspec.structs.replace(chunked, checked_at="") == msgspec.structs.replace(whole, checked_at="")
    assert chunked.images.checked == 23 and chunked.images.broken_count == 2
    assert set(chunked.images.mislabelled) == {f"{FOLDER}/000000000102.jpg"}
    assert not list(storage.list(f"_vlmdata/reports/{SOURCE}/chunks"))  # the chunks go once the report is written


def test_chunk_results_travel_through_the_storage_and_the_steps_run_anywhere(storage):
    catalog = load_catalog()
    files = _acquired(storage)
    chunks = plan_verify(catalog[SOURCE], storage, "run-1", max_images=10, max_bytes=10**9)
    assert [(c["label"], c["count"]) for c in chunks] == [("images 0-9", 10), ("images 10-19", 10), ("images 20-22", 3)]
    assert [c["bytes"] for c in chunks] == [sum(len(files[k]) for k in list(files)[i:i + 10]) for i in (0, 10, 20)]
    assert all(len(repr(c)) < 400 for c in chunks)  # what XCom carries: keys and counts, never the results

    summaries = {c["number"]: check_chunk(storage, c, workers=2) for c in (chunks[2], chunks[0])}  # any order, any worker
    with pytest.raises(IncompleteVerification, match="images 10-19 has no results"):
        report_verify(catalog[SOURCE], storage, catalog, "run-1")
    summaries[1] = check_chunk(storage, chunks[1], workers=1)
    assert [(summaries[n]["checked"], summaries[n]["broken"]) for n in range(3)] == [(10, 0), (10, 0), (3, 2)]
    assert storage.read_json(chunks[2]["results"])[0][0] == f"{FOLDER}/000000000100.jpg"  # [key, result] pairs, in order

    # A retried chunk whose results were written decodes nothing again.
    storage.write_bytes(f"{FOLDER}/000000000000.jpg", b"")
    assert check_chunk(storage, chunks[0])["broken"] == 0

    report = report_verify(catalog[SOURCE], storage, catalog, "run-1")
    assert report.images.broken_count == 2
    assert report.status == "fail" and [f.text for f in report.failures] == ["2 of 23 images do not decode, above the threshold of 1.00%"]  # the catalog's threshold, applied to every chunk's results
    assert load(storage, report_key(SOURCE), IntegrityReport).images == report.images
    with pytest.raises(IncompleteVerification, match="no verification plan"):
        report_verify(catalog[SOURCE], storage, catalog, "run-1")  # the plan is gone with its chunks


def test_a_source_without_images_has_no_chunk(storage):
    catalog = load_catalog()
    Manifest(storage, "llava_instruct_150k").save_source(SourceRecord(source="llava_instruct_150k", kind="hf", published_at="2026-01-01T00:00:00+00:00"))
    assert plan_verify(catalog["llava_instruct_150k"], storage, "run-2") == []
    report = report_verify(catalog["llava_instruct_150k"], storage, catalog, "run-2")
    assert report.images.checked == 0 and report.status == "fail"  # nothing acquired: every artifact is missing


def test_chunks_of_a_verification_never_reported_are_dropped_after_a_week(storage):
    from datetime import datetime, timedelta, timezone

    catalog = load_catalog()
    _acquired(storage)
    plan_verify(catalog[SOURCE], storage, "failed-run", max_images=10)
    plan_verify(catalog[SOURCE], storage, "running", max_images=10)
    old = storage.read_json(f"{chunks_prefix(SOURCE, 'failed-run')}/plan.json")
    old["report"]["checked_at"] = (datetime.now(timezone.utc) - timedelta(days=8)).isoformat()
    storage.write_json(f"{chunks_prefix(SOURCE, 'failed-run')}/plan.json", old)

    plan_verify(catalog[SOURCE], storage, "next", max_images=10)
    plans = {key.split("/")[-2] for key, _ in storage.list(f"_vlmdata/reports/{SOURCE}/chunks")}
    assert plans == {"running", "next"}


def test_two_verifications_of_one_source_at_once_report_one_after_the_other(storage):
    """Two runs planned at once (a CLI check beside the weekly one): their reports take the
    source's lease in turn, the second finds the broken images already in the quarantine."""
    import threading

    from vlmdata.lease import hold

    _acquired(storage)
    catalog = load_catalog()
    plans = {run: plan_verify(catalog[SOURCE], storage, run) for run in ("run_a", "run_b")}
    for chunks in plans.values():
        for chunk in chunks:
            check_chunk(storage, chunk, workers=1)
    reports = {}
    with hold(storage, f"verify/{SOURCE}", who="a report in progress"):
        threads = [threading.Thread(target=lambda run=run: reports.setdefault(run, report_verify(catalog[SOURCE], storage, catalog, run))) for run in plans]
        for thread in threads:
            thread.start()
        threads[0].join(1.0)
        assert not reports, "a report must wait while another report of the source is written"
    for thread in threads:
        thread.join(60)
    assert set(reports) == {"run_a", "run_b"}
    broken = {f"{FOLDER}/000000000100.jpg", f"{FOLDER}/000000000101.jpg"}
    for report in reports.values():
        assert report.quarantined == 2 and report.images.broken_count == 2
    assert {k.rsplit(f"{SOURCE}/", 1)[1] for k, _ in storage.list(f"_vlmdata/quarantine/{SOURCE}")} == broken
    assert not any(storage.exists(key) for key in broken)
    assert storage.read_json(f"_vlmdata/reports/{SOURCE}/integrity.json")["images"]["broken_count"] == 2
