"""The report models: what goes to the storage reads back the same, reports written before the
models still read, and the pages rendered from them name every finding's files."""

from __future__ import annotations

import json

import msgspec
import pytest

from vlmdata import pages, verify
from vlmdata.reports import (
    MAX_EXAMPLES,
    CrawlCounts,
    CrawlReport,
    Finding,
    ImageCheck,
    IntegrityReport,
    MirrorOutcome,
    NeededTars,
    References,
    Tally,
    load,
    save,
)
from vlmdata.storage import LocalStorage

BROKEN = {f"data/coco/train2017/{n:012d}.jpg": "does not decode: truncated" for n in range(MAX_EXAMPLES + 7)}


def _report() -> IntegrityReport:
    report = IntegrityReport("coco_train2017", "2026-12-01T10:00:00+00:00", quarantined=len(BROKEN))
    report.images = ImageCheck(checked=100, ok=100 - len(BROKEN), broken=dict(list(BROKEN.items())[:MAX_EXAMPLES]), broken_count=len(BROKEN), formats={"JPEG": 43})
    report.references["llava.json"] = References(3, 2, {"image missing": Tally(2, ["a.jpg", "b.jpg"])})
    report.fail("train2017.zip: 2 extracted files missing", ["data/coco/train2017/x.jpg", "data/coco/train2017/y.jpg"])
    report.warn(f"{len(BROKEN)} images do not decode", sorted(BROKEN), every="broken.json")
    report.settle()
    return report


@pytest.fixture
def storage(tmp_path):
    return LocalStorage(tmp_path / "root")


def test_an_integrity_report_reads_back_as_it_was_written(storage):
    report = _report()
    save(storage, verify.report_key(report.source), report)
    assert load(storage, verify.report_key(report.source), IntegrityReport) == report
    assert load(storage, verify.report_key("gqa"), IntegrityReport) is None


def test_a_finding_keeps_a_bounded_list_of_its_files_and_says_where_every_one_is():
    few = Finding.about("2 files missing", ["a", "b"], every="broken.json")
    assert (few.files, few.count, few.more, few.every) == (["a", "b"], 2, 0, None)  # all named: no link needed
    many = Finding.about("57 images do not decode", sorted(BROKEN), every="broken.json")
    assert len(many.files) == MAX_EXAMPLES and many.count == len(BROKEN) and many.more == 7 and many.every == "broken.json"


def test_the_report_on_the_storage_is_the_json_readers_of_dicts_expect(storage):
    """Other tools (and older readers) read integrity.json as plain JSON: the keys they used stay."""
    report = _report()
    save(storage, verify.report_key(report.source), report)
    data = json.loads(storage.read_bytes(verify.report_key(report.source)))
    assert data["status"] == "fail" and data["images"]["broken_count"] == len(BROKEN) and data["images"]["formats"] == {"JPEG": 43}
    assert data["references"]["llava.json"] == {"resolved": 3, "unresolved": 2, "reasons": {"image missing": {"count": 2, "examples": ["a.jpg", "b.jpg"]}}}
    assert data["failures"] == [{"text": "train2017.zip: 2 extracted files missing", "files": ["data/coco/train2017/x.jpg", "data/coco/train2017/y.jpg"], "count": 2}]


def test_a_report_written_before_findings_named_files_still_reads(storage):
    old = {
        "source": "gqa", "checked_at": "2026-01-01T00:00:00+00:00", "status": "warn",
        "artifacts": {"images.zip": {"sha256": "ab", "size": 3, "revision": None, "members": 2, "missing": 0, "wrong_size": 0}},
        "annotations": {}, "references": {}, "failures": [], "warnings": ["1 images are named with the wrong format"],
        "images": {"checked": 2, "ok": 2, "broken": {}, "broken_count": 0, "mislabelled": {"x.jpg": "PNG"}, "formats": {"PNG": 2}},
        "quarantined": 0,
    }
    storage.write_json(verify.report_key("gqa"), old)
    report = load(storage, verify.report_key("gqa"), IntegrityReport)
    assert report.warnings == [Finding("1 images are named with the wrong format")] and report.reasons == ["1 images are named with the wrong format"]
    assert report.images.mislabelled_count is None and report.artifacts["images.zip"].members == 2 and report.crawl is None
    assert "1 images are named with the wrong format" in verify.render_html(report)


def test_a_file_that_is_not_the_report_is_an_error_naming_it(storage):
    storage.write_json(verify.report_key("gqa"), {"source": "gqa", "checked_at": 5})
    with pytest.raises(msgspec.ValidationError, match=r"_vlmdata/reports/gqa/integrity.json on .*: not a valid IntegrityReport"):
        load(storage, verify.report_key("gqa"), IntegrityReport)


def test_crawl_report_and_needed_tars_round_trip(storage):
    crawl = CrawlReport(
        "ocr_vqa", "data/ocr_vqa/images", "2026-12-01T10:00:00+00:00", CrawlCounts(listed=3, stored=1, dead=1, converted=1, missing=2),
        converted={"1": "GIF->JPEG"}, dead={"2": "HTTP 404"}, missing=["2", "3"],
        mirrors=[MirrorOutcome("http://127.0.0.1/m.zip", "m.zip", "skipped", reason="nothing missing")],
    )
    save(storage, "_vlmdata/reports/ocr_vqa/crawl.json", crawl)
    assert load(storage, "_vlmdata/reports/ocr_vqa/crawl.json", CrawlReport) == crawl
    assert json.loads(storage.read_bytes("_vlmdata/reports/ocr_vqa/crawl.json"))["mirrors"] == [{"url": "http://127.0.0.1/m.zip", "archive": "m.zip", "outcome": "skipped", "reason": "nothing missing"}]
    note = crawl.note()
    assert (note.dead, note.converted, note.counts.missing) == ({"2": "HTTP 404"}, {"1": "GIF->JPEG"}, 2)

    needed = NeededTars(referenced=3, present=1, tars={"sa_000001.tar": 1}, unaccounted=1, summary="3 SAM images referenced", needed_by=["sharegpt4v/pt.json"])
    save(storage, "_vlmdata/reports/sa1b/needed_tars.json", needed)
    assert load(storage, "_vlmdata/reports/sa1b/needed_tars.json", NeededTars) == needed


def test_the_integrity_page_names_every_findings_files_and_links_the_full_list():
    page = verify.render_html(_report())
    findings = page.split('<ul class="findings">')[1].split("</ul>")[0]
    assert "<code>data/coco/train2017/x.jpg</code>, <code>data/coco/train2017/y.jpg</code>" in findings
    assert f"<code>{sorted(BROKEN)[0]}</code>" in findings and f"<code>{sorted(BROKEN)[-1]}</code>" not in findings
    assert 'and 7 more: every one in <a href="broken.json">broken.json</a>' in findings
    assert "<b>Why:</b> train2017.zip: 2 extracted files missing" in page
    assert 'href="../index.html"' in page and 'href="integrity.json"' in page  # back to the index, and the JSON
    assert "JPEG 43" in page and "{'" not in page  # no Python dict printed as-is


def test_the_crawl_section_lists_dead_and_converted_images_and_links_the_crawl():
    report = IntegrityReport("ocr_vqa", "2026-12-01T10:00:00+00:00")
    dead = {f"{n:010d}": "HTTP 404" for n in range(MAX_EXAMPLES + 3)}
    crawl = CrawlReport("ocr_vqa", "data/ocr_vqa/images", "2026-12-01T09:00:00+00:00", CrawlCounts(listed=60, dead=len(dead), converted=1, missing=len(dead)), converted={"0000000099": "GIF->JPEG"}, dead=dead)
    report.crawl = crawl.note()
    report.warn(f"{len(dead)} images of the list are not stored", sorted(dead), every="crawl.json")
    report.settle()
    page = verify.render_html(report)
    dead_list = page.split('id="crawl-dead"')[1].split("</ul>")[0]
    assert "Dead URLs (53)" in page and "<code>0000000000</code>: HTTP 404" in dead_list
    assert "3 more in <a href=\"crawl.json\">crawl.json</a>" in page
    assert "<code>0000000099</code>: GIF-&gt;JPEG" in page.split('id="crawl-converted"')[1]
    assert "<b>Why:</b> 53 images of the list are not stored" in page


def test_the_index_gives_every_warn_or_fail_its_reason_and_links_each_page():
    ok = IntegrityReport("gqa", "2026-12-01T10:00:00+00:00")
    ok.settle()
    page = pages.render("index.html", reports=[_report(), ok])
    assert 'href="../../../"' in page  # served by the plugin under vlmdata/files/_vlmdata/reports/: the vlmdata page
    rows = page.split("<tr>")[2:]
    assert 'href="coco_train2017/integrity.html"' in rows[0] and "train2017.zip: 2 extracted files missing" in rows[0]
    assert f'href="coco_train2017/broken.json">{len(BROKEN)}</a>' in rows[0]
    assert 'href="gqa/integrity.html"' in rows[1] and '<td class="small"></td>' in rows[1]  # ok: nothing to explain
