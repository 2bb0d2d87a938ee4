"""Airflow operators: thin shells over the library, one per step and per source kind."""

from .acquire import FetchArtifactOperator, HfFetchOperator, HttpFetchOperator, PlanAcquisitionOperator, PublishSourceOperator, fetch_operator_for
from .build import BuildMixtureOperator, CheckImageChunkOperator, MaterialiseLayoutOperator, PlanVerifyOperator, ReportVerifyOperator
from .crawl import CrawlShardOperator, FillFromMirrorsOperator, FinishCrawlOperator, PlanCrawlOperator

__all__ = [
    "BuildMixtureOperator",
    "CheckImageChunkOperator",
    "CrawlShardOperator",
    "FetchArtifactOperator",
    "FillFromMirrorsOperator",
    "FinishCrawlOperator",
    "HfFetchOperator",
    "HttpFetchOperator",
    "MaterialiseLayoutOperator",
    "PlanAcquisitionOperator",
    "PlanCrawlOperator",
    "PlanVerifyOperator",
    "PublishSourceOperator",
    "ReportVerifyOperator",
    "fetch_operator_for",
]
