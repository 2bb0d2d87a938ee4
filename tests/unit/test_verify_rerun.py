"""Nothing changed, nothing done: a verification decodes only new or changed images (mode
``changed``), the weekly one compares CRC-32s to catch bit rot (``crc``), ``full`` decodes all;
the report is the same whichever mode."""

from __future__ import annotations

import logging
import os
import zlib

import pytest

from tests.unit.test_verify_chunks import FOLDER, SOURCE, _acquired, _stored
from vlmdata.catalog import load_catalog
from vlmdata.manifest import index_key
from vlmdata.replicas.data import jpeg_bytes, truncated_jpeg_bytes
from vlmdata.verify import check_chunk, new_plan_id, plan_verify, report_verify, verify_source

GOOD = 21  # _acquired's 23 images but the two that do not decode (quarantined by the first run)


def verify(storage, mode: str) -> tuple[dict, dict]:
    """The DAG's three steps in ``mode``: what a user reads afterwards, and what the
    check_images tasks did (their summaries: images read, images decoded)."""
    catalog = load_catalog()
    plan_id = new_plan_id()
    summaries = [check_chunk(storage, chunk, workers=1) for chunk in plan_verify(catalog[SOURCE], storage, plan_id, max_images=8, mode=mode)]
    report = report_verify(catalog[SOURCE], storage, catalog, plan_id)
    work = {"read": sum(s["checked"] for s in summaries), "decoded": sum(s["decoded"] for s in summaries), "broken": report.images.broken_count}
    return _stored(storage), work


def _flip(data: bytes) -> bytes:
    """The same number of bytes, four of them changed: the JFIF header's pixel density (bytes
    14-17), so that the image still decodes and only its CRC-32 tells."""
    assert data[6:11] == b"JFIF\0"
    return data[:14] + bytes(b ^ 0x5A for b in data[14:18]) + data[18:]


def test_a_second_run_with_nothing_changed_decodes_nothing_and_reports_what_a_full_run_does(storage, caplog):
    _acquired(storage)
    first, work = verify(storage, "changed")  # no record yet: everything is new
    assert work == {"read": 23, "decoded": 23, "broken": 2}

    again, work = verify(storage, "changed")
    assert work == {"read": 0, "decoded": 0, "broken": 2}  # the broken two stay reported, from the quarantine
    assert again == first

    weekly, work = verify(storage, "crc")
    assert work == {"read": GOOD, "decoded": 0, "broken": 2}  # every image read, its CRC-32 unchanged
    assert weekly == first

    full, work = verify(storage, "full")
    assert work == {"read": GOOD, "decoded": GOOD, "broken": 2}
    assert full == first

    catalog = load_catalog()
    with caplog.at_level(logging.INFO, logger="vlmdata.verify"):
        verify_source(catalog[SOURCE], storage, catalog, workers=1)  # the CLI's default mode
    assert f"{SOURCE} (mode changed): 0 of {GOOD} images decoded this run" in caplog.text
    assert _stored(storage) == first


def test_a_changed_or_new_image_is_decoded_again_and_a_newly_broken_one_caught(storage):
    files = _acquired(storage)
    first, _ = verify(storage, "changed")
    truncated, rewritten, new = f"{FOLDER}/000000000003.jpg", f"{FOLDER}/000000000004.jpg", f"{FOLDER}/000000000200.jpg"
    storage.write_bytes(truncated, truncated_jpeg_bytes(27, 19, seed=3, keep=0.5))  # another size
    storage.write_bytes(rewritten, _flip(files[rewritten]))  # same size, written again: a new stamp
    storage.write_bytes(new, jpeg_bytes(30, 20, seed=9))
    # A new acquisition indexes what it placed: the truncated file as a member of that size.
    index = [[key, len(storage.read_bytes(key)), zlib.crc32(storage.read_bytes(key))] if key == truncated else [key, size, crc] for key, size, crc in storage.read_json(index_key(SOURCE, "train2017.zip"))]
    storage.write_json(index_key(SOURCE, "train2017.zip"), [*index, [new, len(storage.read_bytes(new)), zlib.crc32(storage.read_bytes(new))]])

    report, work = verify(storage, "changed")
    assert work == {"read": 3, "decoded": 3, "broken": 4}
    broken = report["broken"]
    assert broken[truncated].startswith("does not decode")
    assert broken[rewritten].startswith("bytes differ from the archive's")  # it may decode: its CRC-32 says it is not the member
    assert report["report"]["images"]["checked"] == 24 and new not in broken

    again, work = verify(storage, "changed")
    assert work["decoded"] == 0 and again == report
    assert verify(storage, "full")[0] == report


def test_a_deleted_image_is_reported_missing_and_nothing_is_decoded(storage):
    _acquired(storage)
    verify(storage, "changed")
    storage.delete(f"{FOLDER}/000000000007.jpg")
    report, work = verify(storage, "changed")
    assert work["decoded"] == 0
    assert report["report"]["artifacts"]["train2017.zip"]["missing"] == 1
    assert [f["text"] for f in report["report"]["failures"]][0] == "train2017.zip: 1 extracted files missing"
    assert verify(storage, "full")[0] == report


@pytest.mark.parametrize("archive_crc", [True, False], ids=["zip member", "no archive CRC (tar, crawl)"])
def test_bit_rot_is_caught_by_the_weekly_crc_mode_and_not_by_the_changed_mode(tmp_path, archive_crc):
    """Bytes that change on a disk without a write keep the size and the mtime: only reading them
    tells. (Local storage: on S3 an object's bytes change only with a PUT, which changes its ETag.)"""
    from vlmdata.storage import LocalStorage

    storage = LocalStorage(tmp_path / "root")
    files = _acquired(storage)
    if not archive_crc:
        storage.write_json(index_key(SOURCE, "train2017.zip"), [[key, size, None] for key, size, _crc in storage.read_json(index_key(SOURCE, "train2017.zip"))])
    first, _ = verify(storage, "changed")
    rotted = f"{FOLDER}/000000000005.jpg"
    path = storage.local_path(rotted)
    stat = path.stat()
    path.write_bytes(_flip(files[rotted]))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    unaware, work = verify(storage, "changed")
    assert work["decoded"] == 0 and unaware == first

    weekly, work = verify(storage, "crc")
    assert work["read"] == GOOD and work["decoded"] == 1
    bit_rot = [f for f in weekly["report"]["warnings"] if "without a write" in f["text"]]
    assert len(bit_rot) == 1 and bit_rot[0]["files"] == [rotted]
    if archive_crc:  # it decodes, but it is not the archive's member any more
        assert weekly["broken"][rotted].startswith("bytes differ from the archive's")
        assert storage.exists(f"_vlmdata/quarantine/{SOURCE}/{rotted}")  # out of the training tree
    else:  # nothing says which bytes are right: it decodes, the warning names it
        assert rotted not in weekly["broken"] and weekly["report"]["images"]["broken_count"] == 2
    # Its CRC-32 is recorded: next week has one to compare with, and nothing to decode.
    assert verify(storage, "crc")[1]["decoded"] == 0


def test_a_verification_planned_before_the_record_existed_still_reports_every_image(storage):
    """A run planned by the previous version (plain keys, no record draft) and reported by this one."""
    from vlmdata.verify import VERIFIED, chunks_prefix

    _acquired(storage)
    catalog = load_catalog()
    chunks = plan_verify(catalog[SOURCE], storage, "old-run")
    prefix = chunks_prefix(SOURCE, "old-run")
    plan = storage.read_json(f"{prefix}/plan.json")
    storage.write_json(f"{prefix}/plan.json", {"report": plan["report"], "chunks": plan["chunks"]})
    storage.delete(f"{prefix}/{VERIFIED}")
    for chunk in chunks:
        storage.write_json(chunk["keys"], [key for key, _compare, _archive in storage.read_json(chunk["keys"])])
        check_chunk(storage, chunk, workers=1)
    report = report_verify(catalog[SOURCE], storage, catalog, "old-run")
    assert report.images.checked == 23 and report.images.broken_count == 2
    assert verify(storage, "changed")[1]["decoded"] == GOOD  # no stamps recorded: decoded again, once
    assert verify(storage, "changed")[1]["decoded"] == 0
