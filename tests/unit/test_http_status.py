"""The one reading of HTTP statuses and headers every transport and the crawl share."""

from __future__ import annotations

import pytest
import requests
from requests.structures import CaseInsensitiveDict

from vlmdata.fetch.http import HttpStatusError, PermanentFetchError, Transient, body_length, content_range_start, content_range_total, raise_for_status


def answer(status: int, **headers: str) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response.headers = CaseInsensitiveDict({k.replace("_", "-"): v for k, v in headers.items()})
    return response


@pytest.mark.parametrize(("headers", "length"), [
    ({"Content-Length": "1234"}, 1234),
    ({}, None),
    ({"Content-Length": "12x"}, None),
    ({"Content-Length": "1234", "Content-Encoding": "gzip"}, None),  # the encoded size, not the bytes requests hands out
])
def test_body_length(headers, length):
    assert body_length(CaseInsensitiveDict(headers)) == length


@pytest.mark.parametrize(("value", "start", "total"), [
    ("bytes 100-199/1000", 100, 1000),
    ("bytes 0-0/*", 0, None),
    ("bytes */1000", None, 1000),  # what a 416 carries
    (None, None, None),
])
def test_content_range(value, start, total):
    assert (content_range_start(value), content_range_total(value)) == (start, total)


def test_throttling_and_server_errors_are_transient_with_the_servers_wait():
    with pytest.raises(Transient) as throttled:
        raise_for_status(answer(429, Retry_After="7"), "http://h/f", ok=(200,))
    assert (throttled.value.reason, throttled.value.retry_after) == ("HTTP 429", 7.0)
    with pytest.raises(Transient, match="HTTP 503"):
        raise_for_status(answer(503), "http://h/f")  # without ok as well


def test_a_refusal_is_permanent_and_says_what_to_do():
    with pytest.raises(HttpStatusError) as refused:
        raise_for_status(answer(403), "http://h/f?Signature=s3cret", ok=(200,))
    assert isinstance(refused.value, PermanentFetchError) and refused.value.status == 403
    assert "signed link may have expired" in str(refused.value) and "s3cret" not in str(refused.value)
    with pytest.raises(HttpStatusError, match="the CDN says no"):
        raise_for_status(answer(401), "http://h/f", ok=(206,), explain=lambda status, response: "the CDN says no")


def test_statuses_the_caller_reads_itself_pass():
    raise_for_status(answer(206), "http://h/f", ok=(200, 206))
    raise_for_status(answer(404), "http://h/f")  # no ok: only 429/5xx raise
