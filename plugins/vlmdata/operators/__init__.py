"""Airflow operators: thin shells over the library, one per step and per source kind."""

from .acquire import FetchArtifactOperator, HfFetchOperator, HttpFetchOperator, PlanAcquisitionOperator, PublishSourceOperator, fetch_operator_for
from .build import BuildMixtureOperator, MaterialiseLayoutOperator, VerifySourceOperator

__all__ = [
    "BuildMixtureOperator",
    "FetchArtifactOperator",
    "HfFetchOperator",
    "HttpFetchOperator",
    "MaterialiseLayoutOperator",
    "PlanAcquisitionOperator",
    "PublishSourceOperator",
    "VerifySourceOperator",
    "fetch_operator_for",
]
