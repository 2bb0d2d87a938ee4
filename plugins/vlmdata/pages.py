"""The HTML vlmdata writes and serves, rendered from the Jinja2 templates in ``templates/``
(Jinja2 comes with Airflow), in one style (``base.html``): the integrity report of a source and
the index of every report (written to the storage by the verification), and the UI's vlmdata
page (:mod:`vlmdata.ui`)."""

from __future__ import annotations

from datetime import datetime

from jinja2 import Environment, PackageLoader, select_autoescape

from .progress import human_bytes
from .reports import IntegrityReport


def when(iso: str | None) -> str:
    """An ISO time as a person reads it, to the second (UTC when it says so). Seconds, so that
    :mod:`vlmdata.treedigest` recognises it as a timestamp in a stored report."""
    if not iso:
        return ""
    moment = datetime.fromisoformat(iso)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment.utcoffset() is not None else moment.strftime("%Y-%m-%d %H:%M:%S")


def reason(report: IntegrityReport) -> str:
    """Why a report is not ok, in one line: its first failure, else its first warning."""
    return next(iter(report.reasons), "")


_templates = Environment(loader=PackageLoader("vlmdata", "templates"), autoescape=select_autoescape(["html", "svg"]))
_templates.filters.update(bytes=human_bytes, when=when, reason=reason)


def render(template: str, **context) -> str:
    return _templates.get_template(template).render(**context)
