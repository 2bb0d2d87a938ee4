"""The mixture build reads annotation files the fast way (msgspec, one record at a time, issue 10
item 4) and must give the bytes the json way gave: the same output, the same lock, the same
dropped records with the same reasons, on both storage backends."""

from __future__ import annotations

import hashlib
import json
import zlib

import pytest

from vlmdata import mix
from vlmdata.annotations import AnnotationError, Records, load_records
from vlmdata.catalog import load_catalog
from vlmdata.manifest import ArtifactRecord, Manifest, Placement, index_key, now
from vlmdata.mix import Component, Recipe, build
from vlmdata.verify import image_key, report_key

SOURCE, ARTIFACT, IMAGES_SOURCE = "llava_instruct_150k", "llava_instruct_150k.json", "coco_train2017"
NAMES = [f"{i:012d}.jpg" for i in range(1, 13)]
MISSING, BROKEN = NAMES[10], NAMES[11]  # not in the index; in the index and listed broken


def turns(first: str, *more: str) -> str:
    roles = ["human", "gpt"]
    return json.dumps([{"from": roles[n % 2], "value": v} for n, v in enumerate((first, *more))])


def rec(head: str, *values: str) -> str:
    """A record's raw text: ``head`` (its other keys, as written) and alternating turns."""
    return "{" + head + ', "conversations": ' + turns(*values) + "}"


def img(name: str) -> str:
    return f'"image": "{name}"'


Q = "<image>\nWhat is it?"
# Raw text, not json.dumps of dicts: escapes, key order and number forms as real files have them.
RECORDS = [
    rec(f'"id": "a1", {img(NAMES[0])}', Q, "A cat."),
    rec(f'"id": "dup", {img(NAMES[1])}', Q, "A dog."),
    rec(f'"id": "dup", {img(NAMES[2])}', Q, "Two.", "More?", "Yes."),
    rec(f'"id": "dup", {img(NAMES[3])}', Q, "No."),
    # escapes json.dumps writes differently (\/, \u00e9, a surrogate pair), an int id
    f'{{"id": 7, {img(NAMES[4])}, "conversations": [{{"from": "human", "value": "<image>\\nCaf\\u00e9 \\/ \\ud83d\\ude00?"}}, '
    '{"from": "gpt", "value": "Tab\\there, quote \\" and \\\\ backslash, \\u001f."}]}',
    # extra keys in another order, floats of every form, a 30-digit integer, a key given twice
    "{" + img(NAMES[5]) + ', "score": 1e16, "tiny": 1E-5, "inf": 1e400, "neg": -0.0, "big": 123456789012345678901234567890, '
    '"id": "x1", "id": "x2", "conversations": ' + turns(Q, "3") + ', "meta": {"nested": [1, 2.50, null, true]}}',
    rec(f'"id": "./dot", {img("./" + NAMES[6])}', Q, "Dot."),
    rec(f'"id": "slash", {img(".//" + NAMES[7])}', Q, "Slash."),
    rec('"id": "text-only"', "Hello?", "Hi."),
    # malformed, each for its own reason
    rec(f'"id": "one-turn", {img(NAMES[8])}', Q),
    rec('"id": "null-image", "image": null', Q, "A."),
    rec(f'"id": "escape", {img("../" + NAMES[8])}', Q, "A."),
    rec(f'"id": "late-token", {img(NAMES[8])}', "Q?", "<image>"),
    f'{{"id": "roles", {img(NAMES[8])}, "conversations": [{{"from": "gpt", "value": "<image>"}}, {{"from": "human", "value": "?"}}]}}',
    '{"conversations": []}',
    '["not", "an", "object"]',
    '"a string"',
    "3.25",
    # images the storage lacks or holds broken
    rec(f'"id": "missing", {img(MISSING)}', Q, "A."),
    rec(f'"id": "broken", {img(BROKEN)}', Q, "A."),
    rec(f'"id": "dup", {img(NAMES[9])}', Q, "Last."),
]
BODY = ("[\n " + ",\n ".join(RECORDS) + "\n]\n").encode()


def lay_out(storage, body: bytes = BODY) -> None:
    """The storage as acquire and verify leave it: the annotation file and its manifest record,
    COCO's record, file index (all names but MISSING) and broken.json (BROKEN)."""
    catalog = load_catalog()
    annotation = catalog[SOURCE].artifact(ARTIFACT)
    zip_artifact = next(a for a in catalog[IMAGES_SOURCE].artifacts if a.extract)
    target = f"data/{annotation.target}"
    storage.write_bytes(target, body)
    Manifest(storage, SOURCE).save_artifact(ArtifactRecord(
        name=ARTIFACT, url="http://127.0.0.1/a.json", size=len(body), sha256=hashlib.sha256(body).hexdigest(),
        revision="b" * 40, fetched_at=now(), placement=Placement(target=target, bytes=len(body)), complete=True,
    ))
    folder = f"data/{zip_artifact.extract.into}"
    index = [[image_key(annotation.annotation, name), 1000, zlib.crc32(name.encode())] for name in NAMES if name != MISSING]
    Manifest(storage, IMAGES_SOURCE).save_artifact(ArtifactRecord(
        name=zip_artifact.name, url="http://127.0.0.1/train2017.zip", size=1, sha256="0" * 64, fetched_at=now(),
        placement=Placement(folder=folder, images=True, members=len(index), bytes=1000 * len(index)), complete=True,
    ))
    storage.write_json(index_key(IMAGES_SOURCE, zip_artifact.name), index)
    storage.write_json(report_key(IMAGES_SOURCE, "broken.json"), {image_key(annotation.annotation, BROKEN): "does not decode: truncated"})


def recipe(duplicate_ids="keep", take="all", **more) -> Recipe:
    return Recipe(id="fast_mix", title="t", components=[Component(source=SOURCE, artifact=ARTIFACT, take=take)], duplicate_ids=duplicate_ids, **more)


def built(storage, the_recipe: Recipe, fast: bool, fmt: str = "json") -> tuple[bytes, dict]:
    lock = (build(the_recipe, storage, load_catalog(), fmt=fmt) if fast else mix._build(the_recipe, storage, load_catalog(), the_recipe.seed, fmt, fast=False)).to_json()
    lock.pop("built_at"), lock.pop("stamps")  # when and where it was written, not what
    return storage.read_bytes(mix.output_key(the_recipe.id, fmt)), lock


# sha256 of the output and of the lock's "dropped" list (json.dumps, sort_keys) as the build
# before the fast path (commit e7fd342, json.load and json's encoder) wrote them for this input.
BEFORE = {
    ("keep", "all", "json"): ("eacec8749851a12aad5ae441f6804fffb521792ec7f27268b5174cfc48f3bacb", "dfed96e753f8cecfcbf65d7327d0092230baf478f35de18828b3a9593cdcc454"),
    ("suffix", "all", "jsonl"): ("c6035d65b4a5a7d8ad1abe93b5cea487250c722a7da76a72be072a21e92ec34c", "dfed96e753f8cecfcbf65d7327d0092230baf478f35de18828b3a9593cdcc454"),
    ("drop", 0.6, "json"): ("fde1068de76c2b6c403505496c6707325ba050eb133678b9381fd209a7a7b594", "fec5dcf47869839171db46837bf03ce4307e74cc4fc309dccb54676a28dfda20"),
}


@pytest.mark.parametrize("policy, take, fmt", [("keep", "all", "json"), ("suffix", "all", "jsonl"), ("drop", 0.6, "json")])
def test_the_fast_build_writes_the_bytes_of_the_json_build(storage, policy, take, fmt):
    lay_out(storage)
    the_recipe = recipe(policy, take)
    fast_bytes, fast_lock = built(storage, the_recipe, True, fmt)
    json_bytes, json_lock = built(storage, the_recipe, False, fmt)
    assert fast_bytes == json_bytes and fast_lock == json_lock
    assert fast_lock["output"]["sha256"] == hashlib.sha256(fast_bytes).hexdigest()
    if take == "all":
        reasons = {d["reason"] for d in fast_lock["dropped"]}
        assert {"image missing", "image broken", "malformed: not an object", "malformed: image is not a path",
                "malformed: image path leaves the image folder", "malformed: has an image but the first human turn holds no <image>"} <= reasons
    dropped = json.dumps(fast_lock["dropped"], sort_keys=True).encode()
    assert (hashlib.sha256(fast_bytes).hexdigest(), hashlib.sha256(dropped).hexdigest()) == BEFORE[policy, take, fmt]


def test_the_fast_reader_is_the_one_used_and_agrees_with_json():
    rows = Records.read(__import__("io").BytesIO(BODY), ARTIFACT, size=len(BODY))
    assert rows.fast
    assert list(rows) == json.loads(BODY) and len(rows) == len(RECORDS)
    for decoded, reference in zip(rows, json.loads(BODY)):
        assert rows.encode(decoded) == json.dumps(reference, ensure_ascii=False, separators=(",", ":")).encode()


@pytest.mark.parametrize("body", [
    b'[{"id": "n", "score": NaN, "conversations": []}]',  # json reads NaN, msgspec does not
    b'\xef\xbb\xbf[{"id": "bom", "conversations": []}]',  # a UTF-8 byte-order mark
    b'[{"id": "lone \\ud800 surrogate", "conversations": []}]',
], ids=["NaN", "byte-order mark", "lone surrogate"])
def test_what_msgspec_refuses_is_read_by_json(body):
    rows = Records.read(__import__("io").BytesIO(body), "x.json", size=len(body))
    assert not rows.fast
    assert list(rows) == load_records(__import__("io").BytesIO(body), "x.json")


@pytest.mark.parametrize("record, why", [
    (b'{"id": ' + b"9" * 5000 + b', "conversations": []}', "not valid JSON"),
    (b'{"id": "x", "conversations": "\xff\xfe"}', "not valid JSON"),
    (b"[" * 5000 + b"]" * 5000, "nested too deeply"),
], ids=["5,000-digit integer", "not UTF-8", "5,000 levels deep"])
def test_a_record_the_fast_reader_refuses_gives_the_reference_error(tmp_path, record, why):
    """msgspec splits these files into records; reading the bad one falls back to json, whose
    error the build reports as it always did."""
    from vlmdata.storage import LocalStorage

    storage = LocalStorage(tmp_path / "root")
    lay_out(storage, b"[" + RECORDS[0].encode() + b", " + record + b"]")
    with pytest.raises(AnnotationError, match=why):
        build(recipe(), storage, load_catalog())
    assert not storage.exists(mix.output_key("fast_mix", "json"))


def test_the_string_path_checks_agree_with_posixpath_and_pathlib():
    """image_path and record_problem's path check replace posixpath.normpath(join()) and
    PurePosixPath with string tests: the same answers on every path built from awkward parts."""
    import itertools
    import posixpath
    from pathlib import PurePosixPath

    from vlmdata.annotations import image_path, record_problem

    for count in range(1, 5):
        for parts in itertools.product(["a", ".", "..", "", ".h", "x.jpg"], repeat=count):
            for image in ("/".join(parts), "/" + "/".join(parts), "/".join(parts) + "/"):
                if not image:
                    continue
                for folder in ("", ".", "coco/train2017", "coco/", "/abs", "..", "a/./b", "a//b"):
                    assert image_path(folder, image) == posixpath.normpath(posixpath.join(folder, image)), (folder, image)
                record = {"id": "1", "image": image, "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "a"}]}
                leaves = PurePosixPath(image).is_absolute() or ".." in PurePosixPath(image).parts
                assert (record_problem(record) == "image path leaves the image folder") == leaves, image
