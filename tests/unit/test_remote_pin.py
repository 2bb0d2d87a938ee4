"""A pin (what the plan resolved for an artifact) and the checks a fetch makes against it."""

from __future__ import annotations

import json

import pytest
import requests
from requests.structures import CaseInsensitiveDict

from vlmdata.fetch.digest import Expected
from vlmdata.fetch.remote import Pin, served_changes

PIN = Pin(
    name="train2017.zip", url="http://images.cocodataset.org/zips/train2017.zip", expected=Expected(size=1000, md5="ab" * 16),
    fingerprint={"etag": '"v1"', "last_modified": "Mon, 01 Jan 2024 00:01:00 GMT", "size": 1000}, revision=None, planned_at="2026-01-01T00:00:00+00:00",
)


def answer(status: int, headers: dict[str, str]) -> requests.Response:
    response = requests.Response()
    response.status_code, response.headers = status, CaseInsensitiveDict(headers)
    return response


def test_a_pin_survives_json_and_names_what_changed():
    assert Pin.from_dict(json.loads(json.dumps(PIN.to_dict()))) == PIN
    moved = Pin.from_dict({**PIN.to_dict(), "url": "http://mirror.example/train2017.zip", "fingerprint": {**PIN.fingerprint, "etag": '"v2"'}})
    assert PIN.changes(moved) == ["url: 'http://images.cocodataset.org/zips/train2017.zip' -> 'http://mirror.example/train2017.zip'", "etag: '\"v1\"' -> '\"v2\"'"]
    assert PIN.changes(moved, with_url=False) == ["etag: '\"v1\"' -> '\"v2\"'"]  # signed links: the file, not its link
    assert PIN.changes(PIN) == []


@pytest.mark.parametrize(
    ("status", "headers", "changes"),
    [
        (200, {"ETag": '"v1"', "Content-Length": "1000"}, []),
        (200, {"ETag": 'W/"v1"', "Content-Length": "1000"}, []),  # weakened on the way: the same version
        (206, {"ETag": '"v1"', "Content-Range": "bytes 500-999/1000", "Content-Length": "500"}, []),
        (200, {"Content-Length": "1000"}, []),  # no validator in the answer: nothing to tell by
        (200, {"ETag": '"v2"', "Content-Length": "1000"}, ["etag: '\"v1\"' -> '\"v2\"'"]),
        (200, {"Last-Modified": "Mon, 01 Jan 2024 00:02:00 GMT", "Content-Length": "1000"}, ["last_modified: 'Mon, 01 Jan 2024 00:01:00 GMT' -> 'Mon, 01 Jan 2024 00:02:00 GMT'"]),
        (206, {"Content-Range": "bytes 500-1199/1200", "Content-Length": "700"}, ["size: 1000 -> 1200"]),
        (200, {"Content-Length": "300", "Content-Encoding": "gzip"}, []),  # a compressed length says nothing
    ],
)
def test_an_answer_carrying_another_version_is_named(status, headers, changes):
    assert served_changes(PIN, answer(status, headers)) == changes
