"""The URL-list crawl (OCR-VQA) as tasks: plan shards, crawl each (mapped), finish."""

from __future__ import annotations

from airflow.sdk import BaseOperator

from .. import crawl, settings
from .events import emit


def _crawl_settings(source_id: str) -> tuple[str, str]:
    return crawl.locations(source_id, settings.catalog())


class PlanCrawlOperator(BaseOperator):
    """Shard the images still missing (one listing of the folder); none missing: the rest skips."""

    ui_color = "#fff3d6"

    def __init__(self, *, source_id: str, shard_size: int = 2000, **kwargs):
        super().__init__(**kwargs)
        self.source_id, self.shard_size = source_id, shard_size

    def execute(self, context) -> list[dict]:
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
        _list_key, into = _crawl_settings(self.source_id)
        config = settings.from_airflow()
        return crawl.crawl_shard(config.storage(), self.shard["key"], into, mirrors=config.mirrors, workers=self.workers, per_host=self.per_host)


class FinishCrawlOperator(BaseOperator):
    """Merge the shards' results into the crawl report and the manifest; emits the asset event."""

    ui_color = "#c7e3c1"

    def __init__(self, *, source_id: str, **kwargs):
        super().__init__(**kwargs)
        self.source_id = source_id

    def execute(self, context) -> dict:
        _list_key, into = _crawl_settings(self.source_id)
        summary = crawl.finish(settings.from_airflow().storage(), self.source_id, into)
        emit(context, self.outlets, summary)
        self.log.info("crawl of %s: %s", self.source_id, summary)
        return summary
