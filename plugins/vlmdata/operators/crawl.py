"""The URL-list crawl (OCR-VQA) as tasks: plan shards, crawl each (mapped), finish, fill from mirrors.

``vlmdata.crawl`` (requests, Pillow) is imported when a task runs, not when a DAG file is parsed.
"""

from __future__ import annotations

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowSkipException

from .. import settings
from .events import emit_through


def _crawl_settings(source_id: str) -> tuple[str, str]:
    from .. import crawl

    return crawl.locations(source_id, settings.catalog())


def _skip_in_a_dry_run(dry_run: bool | None) -> None:
    # A dry run says what the list fetch would do; the crawl and the mirrors (GBs) wait for a real one.
    if dry_run:
        raise AirflowSkipException("dry run: no crawl, no mirror download")


class PlanCrawlOperator(BaseOperator):
    """Shard the images still missing (one listing of the folder); none missing: the rest skips.
    Skips in a dry run (``dry_run``: the run's param, templated), as do the tasks after it."""

    template_fields = ("dry_run",)
    ui_color = "#fff3d6"

    def __init__(self, *, source_id: str, shard_size: int = 2000, dry_run: bool | None = False, **kwargs):
        super().__init__(**kwargs)
        self.source_id, self.shard_size, self.dry_run = source_id, shard_size, dry_run

    def execute(self, context) -> list[dict]:
        from .. import crawl

        _skip_in_a_dry_run(self.dry_run)
        list_key, into = _crawl_settings(self.source_id)
        shards = crawl.plan_shards(settings.from_airflow().storage(), list_key, into, self.shard_size, source_id=self.source_id)
        self.log.info("%d shards, %d images to fetch", len(shards), sum(s["count"] for s in shards))
        return shards


class CrawlShardOperator(BaseOperator):
    """Fetch one shard's images: real JPEGs under <id>.jpg, dead URLs recorded, not fatal."""

    template_fields = ("shard",)
    ui_color = "#ffe8b0"

    def __init__(self, *, source_id: str, shard, workers: int = 16, per_host: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.source_id, self.shard, self.workers, self.per_host = source_id, shard, workers, per_host

    def execute(self, context) -> dict:
        from .. import crawl

        _list_key, into = _crawl_settings(self.source_id)
        config = settings.from_airflow()
        return crawl.crawl_shard(config.storage(), self.shard["key"], into, mirrors=config.mirrors, workers=self.workers, per_host=self.per_host)


class FinishCrawlOperator(BaseOperator):
    """Merge the shards' results into the crawl report and the manifest (also when nothing was
    planned: the report then says what is still missing, for the mirrors)."""

    template_fields = ("dry_run",)
    ui_color = "#c7e3c1"

    def __init__(self, *, source_id: str, dry_run: bool | None = False, **kwargs):
        super().__init__(**kwargs)
        self.source_id, self.dry_run = source_id, dry_run

    def execute(self, context) -> dict:
        from .. import crawl

        _skip_in_a_dry_run(self.dry_run)
        _list_key, into = _crawl_settings(self.source_id)
        summary = crawl.finish(settings.from_airflow().storage(), self.source_id, into)
        self.log.info("crawl of %s: %s", self.source_id, summary)
        return summary


class FillFromMirrorsOperator(BaseOperator):
    """Fill the images still missing from the catalog's fallback mirror archives (a dead mirror
    is a warning, not a failure); then emit ``asset`` through the ``outlets`` alias, unless this
    run changed nothing: no new list (``published``), nothing crawled, nothing filled."""

    template_fields = ("published", "dry_run")
    ui_color = "#b5dcae"

    def __init__(self, *, source_id: str, asset, published=None, dry_run: bool | None = False, **kwargs):
        super().__init__(**kwargs)
        self.source_id, self.asset, self.published, self.dry_run = source_id, asset, published, dry_run

    def execute(self, context) -> dict:
        from .. import crawl

        _skip_in_a_dry_run(self.dry_run)
        _list_key, into = _crawl_settings(self.source_id)
        config = settings.from_airflow()
        urls = settings.catalog()[self.source_id].crawl.fallback_mirrors
        summary = crawl.fill_from_mirrors(config.storage(), self.source_id, into, urls, mirrors=config.mirrors)
        list_changed = (self.published or {}).get("changed") or []
        if list_changed or summary["fetched_this_run"] or summary["filled_this_run"]:
            for alias in self.outlets:
                emit_through(context, alias, self.asset, {**summary, "list_changed": ", ".join(list_changed)})
        else:
            self.log.info("%s: list unchanged, nothing crawled or filled: no %s event", self.source_id, self.asset.name)
        self.log.info("mirrors of %s: %s", self.source_id, summary)
        return summary
