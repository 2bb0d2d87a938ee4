"""What a run of every DAG on the replicas must end with, read from the replicas and Airflow's
API, not from ``vlmdata.demo`` (the demo is a product under test: a bug in how it triggers or
judges runs must not hide a bug in the DAGs)."""

from __future__ import annotations

from vlmdata.airflow_client import AirflowClient
from vlmdata.layout import load_profiles
from vlmdata.mix import load_recipes
from vlmdata.replicas.sources import Replicas


def dags_that_must_run(replicas: Replicas) -> set[str]:
    """Every source the replicas serve is acquired and verified; every layout profile and every
    recipe is built from what they hold (each planted file has a place in some layout)."""
    sources = set(replicas.spot_checks)  # one planted file per source the replicas serve
    return (
        {f"acquire_{s}" for s in sources} | {f"verify_{s}" for s in sources}
        | {f"layout_{p}" for p in load_profiles()} | {f"mix_{r}" for r in load_recipes()}
    )


def runs_that_went_wrong(client: AirflowClient, dag_ids: set[str]) -> dict[str, list[tuple[str, str, str]]]:
    """Per DAG that did not end well: (run id, run type, state) of its runs. A DAG ends well when
    it ran and its last run succeeded; a failed run before a good last one counts only if a user
    or an asset set it off (a refresh schedule may fire when an acquisition is unpaused and fail
    before the licence is acknowledged: Airflow's doing, not the package's)."""
    wrong = {}
    for dag_id in sorted(dag_ids):
        runs = client.runs(dag_id)
        summary = [(r["dag_run_id"], r["run_type"], r["state"]) for r in runs]
        if not runs or runs[-1]["state"] != "success" or any(state == "failed" and kind != "scheduled" for _, kind, state in summary):
            wrong[dag_id] = summary
    return wrong
