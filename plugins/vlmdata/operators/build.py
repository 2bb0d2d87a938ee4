"""Integrity, layout and mixture steps."""

from __future__ import annotations

import re

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from airflow.sdk import BaseOperator

from .. import settings
from ..layout import load_profiles, materialise
from ..manifest import Manifest
from ..mix import build, load_recipes, lock_of
from ..verify import check_chunk, chunk_limits, plan_verify, report_verify, verify_mode
from ..lineage import of_layout, of_mixture, of_verify
from .events import emit
from .lineage import EmitsLineage
from .links import CompositionLink, IntegrityReportLink, LockLink


def plan_id_of(context) -> str:
    """The run's verification plan id: its run id made safe for a storage key (a retried or
    cleared task of the run finds the same chunks)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", context["run_id"])


class PlanVerifyOperator(BaseOperator):
    """Re-hashes kept files, checks extracted members, and splits the images to read into chunks
    (the params ``chunk_images`` and ``chunk_gib``, templated, bound them; None: the defaults);
    returns the chunks for ``check_images``. Which images it reads is the param ``mode``
    (templated; ``auto``: ``crc`` for the weekly schedule's run, ``changed`` for any other).

    Skips a source whose acquisition has not published yet: a referenced source's verification
    (or the weekly re-check) can trigger it while the first acquisition is still placing files,
    and that acquisition's own event triggers the verification once it is complete.
    """

    template_fields = ("chunk_images", "chunk_gib", "mode")
    ui_color = "#fde2cf"

    def __init__(self, *, source_id: str, chunk_images: int | None = None, chunk_gib: float | None = None, mode: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.source_id, self.chunk_images, self.chunk_gib, self.mode = source_id, chunk_images, chunk_gib, mode

    def execute(self, context) -> list[dict]:
        storage = settings.from_airflow().storage()
        acquired = Manifest(storage, self.source_id).source()
        if acquired is None or not acquired.published_at:
            raise AirflowSkipException(f"{self.source_id} is not acquired yet (acquire_{self.source_id} has not published): nothing to verify")
        mode = verify_mode(self.mode, context["dag_run"].run_type)
        self.log.info("mode %s (asked: %s, run type: %s)", mode, self.mode or "auto", context["dag_run"].run_type)
        chunks = plan_verify(settings.catalog()[self.source_id], storage, plan_id_of(context), mode=mode, **chunk_limits(self.chunk_images, self.chunk_gib))
        self.log.info("%d images to read in %d chunks", sum(c["count"] for c in chunks), len(chunks))
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
        self.log.info("%s: %d read, %d decoded, %d do not decode", result["label"], result["checked"], result["decoded"], result["broken"])
        return result


class ReportVerifyOperator(EmitsLineage, BaseOperator):
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
        self.log.info(report.summary())
        if report.status == "fail":
            raise AirflowFailException(report.summary())
        brief = {"source": self.source_id, "status": report.status, "images_ok": report.images.ok, "images_broken": report.images.broken_count}
        emit(context, self.outlets, brief)
        return brief

    def read_lineage(self, storage):
        return of_verify(storage, settings.catalog()[self.source_id])


class MaterialiseLayoutOperator(EmitsLineage, BaseOperator):
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

    def read_lineage(self, storage):
        return of_layout(storage, load_profiles()[self.profile_id])


class BuildMixtureOperator(EmitsLineage, BaseOperator):
    """Build a recipe's training file and lock; the recipe, ``seed`` and ``fmt`` are template
    fields, templated from the run's params (None or empty: the recipe's own seed and format)."""

    template_fields = ("recipe_id", "seed", "fmt")
    ui_color = "#f8d7e3"
    operator_extra_links = (CompositionLink(), LockLink())

    def __init__(self, *, recipe_id: str, seed: int | None = None, fmt: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.recipe_id, self.seed, self.fmt = recipe_id, seed, fmt

    def execute(self, context) -> dict:
        recipe_id, seed = self.recipe_id, self.seed
        lock = build(load_recipes()[recipe_id], settings.from_airflow().storage(), settings.catalog(), seed=None if seed in (None, "") else int(seed), fmt=self.fmt or None)
        brief = {"recipe": recipe_id, "output": lock.output.key, "lock": lock_of(lock.output.key), "records": lock.output.records, "dropped": len(lock.dropped), "sha256": lock.output.sha256}
        emit(context, self.outlets, brief)
        return brief

    def read_lineage(self, storage):
        return of_mixture(storage, self.recipe_id, settings.catalog())
