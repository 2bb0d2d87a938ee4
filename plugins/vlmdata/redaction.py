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
from collections.abc import Iterable
from urllib.parse import urlsplit

from .airflow_task import in_airflow_task

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


def mask_in_airflow(urls: Iterable[str]) -> None:
    """Inside an Airflow task, register the query strings of signed URLs with Airflow's own
    secrets masker too: it masks them in whatever the task and its supervisor log, including
    exceptions Airflow formats itself. Elsewhere (CLI, tests, DAG parsing): nothing to do."""
    if not in_airflow_task():
        return
    from airflow.sdk.log import mask_secret

    for url in urls:
        if query := urlsplit(url).query:
            mask_secret(query)
