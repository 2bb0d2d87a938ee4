"""Query strings never reach a log, whatever the level and whichever library logs.

Signed URLs carry their credentials in the query string (SA-1B's links: ``oh=``, ``oe=``; any
signed mirror). Our own messages redact URLs (:func:`vlmdata.fetch.http.redact`), but at DEBUG
urllib3 logs every request line (``"GET /path?oh=... HTTP/1.1"``), and botocore, httpx, httpcore
and huggingface_hub log URLs too. :func:`install` puts one filter on every handler of the root
logger, so every record that reaches a handler (ours, a library's, in the CLI and in an Airflow
task's log) leaves with its query strings replaced by ``?<redacted>``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

# A query string inside a URL or a request line: from "?" up to whitespace or a quote. Only
# strings with a key=value pair, so an ordinary question mark in prose is left alone.
_QUERY = re.compile(r"\?(?=[^\s\"'<>]*=)[^\s\"'<>]+")


def redact_text(text: str) -> str:
    return _QUERY.sub("?<redacted>", text)


class RedactQueryStrings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to the handler to report
            return True
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


_FILTER = RedactQueryStrings()


def install(logger: logging.Logger | None = None) -> None:
    """Add the filter to every handler of ``logger`` (the root logger by default); idempotent.
    Call it after the handlers exist (after ``logging.basicConfig``; in a task, at execute)."""
    logger = logger or logging.getLogger()
    for handler in logger.handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)


# Where a secret is also registered: inside an Airflow task, Airflow's own secrets masker
# (vlmdata.settings adds it; the library does not import Airflow).
_MASKERS: list[Callable[[str], None]] = []


def add_masker(masker: Callable[[str], None]) -> None:
    """Register a function that is told every secret from now on (idempotent)."""
    if masker not in _MASKERS:
        _MASKERS.append(masker)


def mask_secrets(urls: Iterable[str]) -> None:
    """Tell the registered maskers the query strings of signed URLs. Airflow's masks them in
    whatever the task and its supervisor log, including exceptions Airflow formats itself.
    Without a masker (CLI, tests, DAG parsing) the log filter above is all there is."""
    for url in urls:
        if query := urlsplit(url).query:
            for masker in _MASKERS:
                masker(query)
