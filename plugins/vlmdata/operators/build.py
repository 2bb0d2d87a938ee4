"""Integrity, layout and mixture steps."""

from __future__ import annotations

import re

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from airflow.sdk import BaseOperator

from .. import settings
from ..layout import load_profiles, materialise
from ..manifest import Manifest
from ..mix import build, load_recipes, lock_of
from ..verify import check_chunk, plan_verify, report_verify, summary
from .events import emit
from .links import CompositionLink, IntegrityReportLink, LockLink


def plan_id_of(context) -> str:
    """The run's verification plan id: its run id made safe for a storage key (a retried or
    cleared task of the run finds the same chunks)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", context["run_id"])


class PlanVerifyOperator(BaseOperator):
    """Re-hashes kept files, checks extracted members, and splits the images into chunks (the
    params ``chunk_images`` and ``chunk_gib`` bound them); returns the chunks for ``check_images``.

    Skips a source whose acquisition has not published yet: a referenced source's verification
    (or the weekly re-check) can trigger it while the first acquisition is still placing files,
    and that acquisition's own event triggers the verification once it is complete.
    """

    ui_color = "#fde2cf"

    def __init__(self, *, source_id: str, **kwargs):
        super().__init__(**kwargs)
        self.source_id = source_id

    def execute(self, context) -> list[dict]:
        storage = settings.from_airflow().storage()
        acquired = Manifest(storage, self.source_id).source()
        if acquired is None or not acquired.published_at:
            raise AirflowSkipException(f"{self.source_id} is not acquired yet (acquire_{self.source_id} has not published): nothing to verify")
        params = context["params"]  # the DAG's form validates both
        max_bytes = int(float(params["chunk_gib"]) * 1024**3)
        chunks = plan_verify(settings.catalog()[self.source_id], storage, plan_id_of(context), max_images=int(params["chunk_images"]), max_bytes=max_bytes)
        self.log.info("%d images in %d chunks", sum(c["count"] for c in chunks), len(chunks))
        return chunks


class CheckImageChunkOperator(BaseOperator):
    """Decodes one chunk's images with one process per core of the worker; the results go to
    the storage, only a summary to XCom."""

    template_fields = ("chunk",)
    ui_color = "#fbd0b0"

    def __init__(self, *, chunk: dict, **kwargs):
        super().__init__(**kwargs)
        self.chunk = chunk

    def execute(self, context) -> dict:
        result = check_chunk(settings.from_airflow().storage(), self.chunk)
        self.log.info("%s: %d checked, %d do not decode", result["label"], result["checked"], result["broken"])
        return result


class ReportVerifyOperator(BaseOperator):
    """Gathers the chunks' results, quarantines broken images, checks annotations and their
    references, writes the reports and emits ``verified``.

    Fails (without retrying) when an artifact is missing or its bytes changed; broken images
    and unresolved references are warnings: the report lists them and mixtures drop them.
    """

    ui_color = "#fde2cf"
    operator_extra_links = (IntegrityReportLink(),)

    def __init__(self, *, source_id: str, **kwargs):
        super().__init__(**kwargs)
        self.source_id = source_id

    def execute(self, context) -> dict:
        catalog = settings.catalog()
        report = report_verify(catalog[self.source_id], settings.from_airflow().storage(), catalog, plan_id_of(context))
        self.log.info(summary(report))
        if report["status"] == "fail":
            raise AirflowFailException(summary(report))
        brief = {"source": self.source_id, "status": report["status"], "images_ok": report["images"]["ok"], "images_broken": report["images"]["broken_count"]}
        emit(context, self.outlets, brief)
        return brief


class MaterialiseLayoutOperator(BaseOperator):
    """Build a profile's view (symlinks on POSIX, a path map on S3) and report what is missing."""

    ui_color = "#e5dbf3"

    def __init__(self, *, profile_id: str, **kwargs):
        super().__init__(**kwargs)
        self.profile_id = profile_id

    def execute(self, context) -> dict:
        report = materialise(load_profiles()[self.profile_id], settings.from_airflow().storage())
        brief = {"profile": self.profile_id, "paths": len(report["views"]), "missing": report["missing"]}
        emit(context, self.outlets, brief)
        return brief


class BuildMixtureOperator(BaseOperator):
    """Build a recipe's training file and lock; ``seed`` and ``format`` come from the run's
    params, and so may the recipe (``recipe_id="{{ params.recipe }}"``: a template field)."""

    template_fields = ("recipe_id",)
    ui_color = "#f8d7e3"
    operator_extra_links = (CompositionLink(), LockLink())

    def __init__(self, *, recipe_id: str, **kwargs):
        super().__init__(**kwargs)
        self.recipe_id = recipe_id

    def execute(self, context) -> dict:
        params = context["params"]
        recipe_id = self.recipe_id
        seed = params.get("seed")
        lock = build(load_recipes()[recipe_id], settings.from_airflow().storage(), settings.catalog(), seed=None if seed in (None, "") else int(seed), fmt=params.get("format") or None)
        brief = {"recipe": recipe_id, "output": lock.output.key, "lock": lock_of(lock.output.key), "records": lock.output.records, "dropped": len(lock.dropped), "sha256": lock.output.sha256}
        emit(context, self.outlets, brief)
        return brief
