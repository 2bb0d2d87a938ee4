"""Operator extra links: buttons on a task instance that open what the task wrote, served by the
vlmdata UI plugin (:mod:`vlmdata.ui`) from the storage, so they work on S3 as on a local root.

A link is computed by the worker when the task ends and kept as an XCom (Airflow 3); it is a
URL relative to the UI's base URL (no leading slash), which the UI resolves whatever path
Airflow is served under.
"""

from __future__ import annotations

from urllib.parse import quote

from airflow.sdk import BaseOperatorLink

from ..manifest import artifact_key
from ..mix import latest_lock_key
from ..verify import report_key


def file_url(key: str) -> str:
    """The UI plugin's URL of a storage key (relative to Airflow's base URL)."""
    return "vlmdata/files/" + quote(key)


class IntegrityReportLink(BaseOperatorLink):
    """On a verification's ``report`` task: the source's integrity page."""

    name = "Integrity report"

    def get_link(self, operator, *, ti_key) -> str:
        return file_url(report_key(operator.source_id, "integrity.html"))


class ManifestLink(BaseOperatorLink):
    """On a ``fetch`` task: the record of the artifact it fetched (what, from where, sha256)."""

    name = "Manifest"

    def get_link(self, operator, *, ti_key) -> str:
        return file_url(artifact_key(operator.source_id, operator.pin["name"]))  # a mapped fetch's own pin


class CompositionLink(BaseOperatorLink):
    """On a mixture's ``build`` task: the chart of what each component kept and dropped."""

    name = "Composition"

    def get_link(self, operator, *, ti_key) -> str:
        return file_url(f"mixtures/{operator.recipe_id}/composition.svg")


class LockLink(BaseOperatorLink):
    """On a mixture's ``build`` task: the lock of the recipe's latest build (inputs, seed,
    counts, every dropped record); the task's return value names its own output's lock."""

    name = "Lock"

    def get_link(self, operator, *, ti_key) -> str:
        return file_url(latest_lock_key(operator.recipe_id))


LINKS = (IntegrityReportLink, ManifestLink, CompositionLink, LockLink)
