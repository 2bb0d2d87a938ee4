"""Acquisition as three tasks: plan (probe upstream and pin it), fetch (mapped over the pins), publish.

``vlmdata.acquire`` (and through it the transports: requests, huggingface_hub, httpx) is imported
in ``execute``: the DAG files import this module at every parse, which needs none of it.
"""

from __future__ import annotations

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from .. import settings
from ..kinds import kind_named
from ..lineage import of_fetch, of_publish
from .events import emit
from .lineage import EmitsLineage
from .links import ManifestLink


def _source(source_id: str):
    return settings.catalog()[source_id]


def _who(context) -> str:
    run = context.get("dag_run")
    return f"airflow run {run.run_id}" if run else "airflow"


class PlanAcquisitionOperator(BaseOperator):
    """Compare upstream with the manifest; return a pin per artifact to fetch (none: the rest skips).

    Checks the licence acknowledgement and the free space first. With ``dry_run`` it logs
    what would be fetched and how big it is, and returns nothing; when upstream cannot be
    reached, it answers from the catalog's declared sizes and says so (``acquire.plan``).
    Its arguments are the DAG's params, templated (None or empty: the default).
    """

    template_fields = ("acknowledge_licence", "dry_run", "artifacts", "include_optional", "refetch_quarantined", "revision", "needed_by")
    ui_color = "#e8f1fb"

    def __init__(
        self, *, source_id: str, acknowledge_licence: bool | None = False, dry_run: bool | None = False, artifacts: list[str] | None = None,
        include_optional: bool | None = False, refetch_quarantined: bool | None = False, revision: str | None = None, needed_by: list[str] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.source_id, self.acknowledge_licence, self.dry_run, self.artifacts = source_id, acknowledge_licence, dry_run, artifacts
        self.include_optional, self.refetch_quarantined, self.revision, self.needed_by = include_optional, refetch_quarantined, revision, needed_by

    def execute(self, context) -> list[dict]:
        from .. import acquire
        from ..fetch.http import PermanentFetchError

        ctx = settings.from_airflow().context(revision=self.revision or None)
        try:
            the_plan = acquire.plan(
                _source(self.source_id), ctx,
                acknowledge=bool(self.acknowledge_licence), only=self.artifacts or None,
                include_optional=bool(self.include_optional), who=_who(context), dry_run=bool(self.dry_run),
                refetch_quarantined=bool(self.refetch_quarantined), needed_by=self.needed_by or None,
            )
        except PermanentFetchError as exc:
            raise AirflowFailException(str(exc)) from exc  # a 4xx, a name that does not resolve: retrying cannot help
        except acquire.LicenceNotAcknowledged as exc:
            run = context.get("dag_run")
            if run is not None and getattr(run.run_type, "value", run.run_type) == "scheduled":
                raise AirflowSkipException(f"scheduled refresh skipped: {exc}") from exc  # nobody to say yes
            raise AirflowFailException(str(exc)) from exc  # retrying cannot help
        self.log.info(the_plan.summary())
        if self.dry_run:
            self.log.info("dry run: nothing fetched")
            return []
        return [pin.to_dict() for pin in the_plan.pins]


class FetchArtifactOperator(EmitsLineage, BaseOperator):
    """Download, verify and place the version of one artifact that the plan pinned (mapped:
    one task instance per pin). Upstream moved since the plan: fails without retries."""

    ui_color = "#d6e9f8"
    operator_extra_links = (ManifestLink(),)

    def __init__(self, *, source_id: str, pin: dict, **kwargs):
        super().__init__(**kwargs)
        self.source_id, self.pin = source_id, pin

    def execute(self, context) -> dict:
        from .. import acquire
        from ..fetch.http import PermanentFetchError

        try:
            return acquire.fetch_artifact(_source(self.source_id), acquire.Pin.from_dict(self.pin), settings.from_airflow().context())
        except PermanentFetchError as exc:  # upstream moved, a 4xx, a name that does not resolve
            raise AirflowFailException(str(exc)) from exc  # a retry would meet the same upstream

    def read_lineage(self, storage):
        return of_fetch(storage, self.source_id, self.pin["name"])


class HfFetchOperator(FetchArtifactOperator):
    """A file of a Hugging Face repository at the resolved commit, sha256-checked against its LFS id."""

    ui_color = "#ffe9a8"


class HttpFetchOperator(FetchArtifactOperator):
    """A plain HTTP(S) archive, resumed with Range/If-Range and checked against the catalog."""

    ui_color = "#d9f2d0"


class GithubFetchOperator(FetchArtifactOperator):
    """A file of a GitHub repository at the resolved commit, checked against its git blob id."""

    ui_color = "#e1e4e8"


def fetch_operator_for(kind: str) -> type[FetchArtifactOperator]:
    """The operator class of a kind's ``fetch`` task, as vlmdata.kinds names it."""
    return globals()[kind_named(kind).fetch_operator]


class PublishSourceOperator(EmitsLineage, BaseOperator):
    """Record the acquisition; its success emits the source's asset event. ``artifacts`` and
    ``needed_by`` (the run's params) say what the run was asked for, when not the whole source."""

    ui_color = "#c7e3c1"

    def __init__(self, *, source_id: str, fetched, artifacts: list[str] | None = None, needed_by: list[str] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.source_id, self.fetched, self.artifacts, self.needed_by = source_id, fetched, artifacts, needed_by

    template_fields = ("fetched", "artifacts", "needed_by")

    def execute(self, context) -> dict:
        from .. import acquire

        selection = acquire.selection_of(self.artifacts or None, self.needed_by or None)
        summary = acquire.publish(_source(self.source_id), settings.from_airflow().context(), list(self.fetched or []), selection)
        emit(context, self.outlets, summary)
        self.log.info("published %s: %s", self.source_id, summary)
        return summary

    def read_lineage(self, storage):
        return of_publish(storage, self.source_id)
