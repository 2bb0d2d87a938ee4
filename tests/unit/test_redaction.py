"""No query string reaches a log, at any level, from any library."""

from __future__ import annotations

import logging

from vlmdata.redaction import RedactQueryStrings, install, redact_text

TOKEN = "oh=00_AfPLANTEDSECRET&oe=6790abcd"


def test_urls_and_request_lines_lose_their_query_strings_and_prose_keeps_its_question_marks():
    assert redact_text(f"https://scontent.xx.fbcdn.net/m1/v/t6/An1.tar?ccb=10-5&{TOKEN}") == "https://scontent.xx.fbcdn.net/m1/v/t6/An1.tar?<redacted>"
    # urllib3 at DEBUG: the request line has no scheme
    assert redact_text(f'http://127.0.0.1:4321 "GET /m1/v/t6/An1.tar?{TOKEN} HTTP/1.1" 200 10') == 'http://127.0.0.1:4321 "GET /m1/v/t6/An1.tar?<redacted> HTTP/1.1" 200 10'
    assert redact_text(f"Max retries exceeded with url: /x.tar?{TOKEN} (Caused by ...)") == "Max retries exceeded with url: /x.tar?<redacted> (Caused by ...)"
    assert redact_text("is the file there? yes") == "is the file there? yes"


def test_every_library_logger_is_filtered_at_debug(caplog):
    root = logging.getLogger()
    handler = logging.StreamHandler()
    root.addHandler(handler)
    try:
        install()
        install()  # idempotent
        assert handler.filters.count(next(f for f in handler.filters if isinstance(f, RedactQueryStrings))) == 1
        records = []
        handler.emit = records.append
        for name in ("urllib3.connectionpool", "httpx", "httpcore.http11", "botocore.endpoint", "huggingface_hub.file_download", "vlmdata.fetch"):
            logger = logging.getLogger(name)
            logger.setLevel(logging.DEBUG)
            logger.debug('"GET /a.tar?%s HTTP/1.1" 200', TOKEN)
        assert len(records) == 6
        assert not [r for r in records if "PLANTEDSECRET" in r.getMessage()]
    finally:
        root.removeHandler(handler)


def test_a_fetch_error_never_carries_a_query_string_whoever_builds_it():
    """The text of a library exception quoted in a FetchError names the URL it failed on; the
    message goes into reports on the storage, not only into logs."""
    from vlmdata.fetch.http import FetchError, PermanentFetchError
    from vlmdata.fetch.sa1b import LinksFileError

    quoted = f"HTTPSConnectionPool(host='cdn-lfs.hf.co', port=443): Max retries exceeded with url: /repos/ab/cd/x?Expires=1&Signature=s3cret&{TOKEN} (Caused by ...)"
    for kind in (FetchError, PermanentFetchError, LinksFileError):
        message = str(kind(f"images.zip: giving up after 8 attempts: ConnectionError: {quoted}"))
        assert "s3cret" not in message and "00_AfPLANTEDSECRET" not in message
        assert "/repos/ab/cd/x?<redacted> (Caused by ...)" in message


def test_signed_links_reach_every_registered_masker_as_their_query_strings(monkeypatch):
    """Inside a task vlmdata.settings registers Airflow's secrets masker; the transports only
    call mask_secrets (and with no masker, as in the CLI, nothing else happens)."""
    from vlmdata import redaction

    monkeypatch.setattr(redaction, "_MASKERS", [])
    redaction.mask_secrets(["https://cdn.example/sa_000000.tar?oh=1&oe=2"])  # no masker: nothing to tell
    told: list[str] = []
    redaction.add_masker(told.append)
    redaction.add_masker(told.append)  # once only
    redaction.mask_secrets(["https://cdn.example/sa_000000.tar?oh=abc&oe=def", "https://plain.example/file.zip"])
    assert told == ["oh=abc&oe=def"]
