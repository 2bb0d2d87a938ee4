"""A small client for Airflow's REST API (v2): what the demo and the end-to-end tests ask of
a running Airflow (DAGs, runs, task logs, variables, asset events sent and queued)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import requests

T = TypeVar("T")
FINISHED = {"success", "failed"}
IDEMPOTENT = {"GET", "PATCH", "PUT", "DELETE"}
RETRIES, RETRY_WAIT = 3, 5.0  # seconds, times the attempt number


class AirflowClient:
    def __init__(self, url: str, username: str, password: str):
        self.url = url.rstrip("/")
        self.session = requests.Session()
        response = self.session.post(
            f"{self.url}/auth/token", json={"username": username, "password": password}, timeout=30
        )
        response.raise_for_status()
        self.session.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

    # -- plumbing --------------------------------------------------------------------

    def request(self, method: str, path: str, *, idempotent: bool | None = None, **kwargs: Any) -> requests.Response:
        """Call /api/v2/<path>; raise with Airflow's explanation on an error status.

        A request that changes nothing when repeated (GET, PATCH, PUT, DELETE) is sent again,
        up to RETRIES times, when it times out or Airflow answers 5xx: on SQLite a busy machine
        makes the API server wait a minute for the database lock and then give up ("Database
        error"). A POST (a trigger) is sent once."""
        # On SQLite a write waits up to a minute for the database lock (SQLITE_CONNECT_ARGS);
        # on a busy machine an answer may take that long, and more.
        kwargs.setdefault("timeout", 120)
        url = f"{self.url}/api/v2/{path.lstrip('/')}"
        idempotent = method.upper() in IDEMPOTENT if idempotent is None else idempotent
        attempts = RETRIES + 1 if idempotent else 1
        for attempt in range(1, attempts + 1):
            try:
                response = self.session.request(method, url, **kwargs)
            except (requests.ConnectionError, requests.Timeout):
                if attempt == attempts:
                    raise
                time.sleep(RETRY_WAIT * attempt)
                continue
            if response.status_code < 500 or attempt == attempts:
                break
            time.sleep(RETRY_WAIT * attempt)
        if not response.ok:
            raise requests.HTTPError(
                f"{method} {path}: {response.status_code} {response.text}", response=response
            )
        return response

    def list(self, path: str, key: str, **params: Any) -> list[dict]:
        """All items of a paginated collection (``key`` names the list in the response)."""
        items: list[dict] = []
        while True:
            page = self.request("GET", path, params={**params, "limit": 100, "offset": len(items)}).json()
            items += page[key]
            if not page[key] or len(items) >= page["total_entries"]:
                return items

    @staticmethod
    def wait_until(predicate: Callable[[], T], timeout: float, interval: float = 1.0) -> T:
        """Call ``predicate`` until it returns something truthy, and return that."""
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met within {timeout} s: {predicate}")
            time.sleep(interval)

    # -- DAGs and runs ---------------------------------------------------------------

    def dags(self) -> list[dict]:
        return self.list("dags", "dags")

    def import_errors(self) -> list[dict]:
        return self.list("importErrors", "import_errors")

    def dag_details(self, dag_id: str) -> dict:
        """A DAG's details: ``params``, ``asset_expression`` (its asset schedule), ``is_paused`` ..."""
        return self.request("GET", f"dags/{dag_id}/details").json()

    def unpause(self, dag_id: str) -> None:
        self.set_paused(dag_id, False)

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self.request("PATCH", f"dags/{dag_id}", json={"is_paused": paused})

    def trigger(self, dag_id: str, conf: dict | None = None) -> str:
        """Trigger a run under a run id chosen here, so that sending it again (a timeout, a 5xx
        when SQLite gave up on its lock) cannot make two runs: a run that did get created answers
        the repeat with 409, which means done."""
        run_id = f"manual__{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime())}__{uuid.uuid4().hex[:8]}"
        body = {"dag_run_id": run_id, "logical_date": None, "conf": conf or {}}
        try:
            self.request("POST", f"dags/{dag_id}/dagRuns", json=body, idempotent=True)
        except requests.HTTPError as exc:
            if exc.response is None or exc.response.status_code != 409:
                raise
        return run_id

    def runs(self, dag_id: str) -> list[dict]:
        return self.list(f"dags/{dag_id}/dagRuns", "dag_runs", order_by="run_after")

    def run(self, dag_id: str, run_id: str) -> dict:
        return self.request("GET", f"dags/{dag_id}/dagRuns/{run_id}").json()

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 120) -> str:
        """Wait until the run has finished; return its final state ("success" or "failed")."""
        return self.wait_until(
            lambda: (state := self.run(dag_id, run_id)["state"]) in FINISHED and state, timeout
        )

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self.list(f"dags/{dag_id}/dagRuns/{run_id}/taskInstances", "task_instances")

    def all_task_instances(self, **filters: Any) -> list[dict]:
        """Task instances of every run of every DAG (filters: ``state``, ``hostname`` ...)."""
        return self.list("dags/~/dagRuns/~/taskInstances", "task_instances", **filters)

    def task_logs(self, dag_id: str, run_id: str) -> str:
        """The logs of every try of every task of a run, as text (to print when a test fails)."""
        parts = []
        for ti in sorted(self.task_instances(dag_id, run_id), key=lambda t: (t["task_id"], t["map_index"])):
            name = ti["task_id"] + (f"[{ti['map_index']}]" if ti["map_index"] >= 0 else "")
            for attempt in range(1, (ti["try_number"] or 0) + 1):
                parts.append(f"===== {dag_id} / {run_id} / {name} try {attempt} ({ti['state']}) =====")
                try:
                    response = self.request(
                        "GET",
                        f"dags/{dag_id}/dagRuns/{run_id}/taskInstances/{ti['task_id']}/logs/{attempt}",
                        params={"full_content": "true", "map_index": ti["map_index"]},
                        headers={"Accept": "application/json"},
                    )
                    parts.extend(_log_line(entry) for entry in response.json()["content"])
                except requests.RequestException as exc:
                    parts.append(f"(log not available: {exc})")
            if not ti["try_number"]:
                parts.append(f"===== {dag_id} / {run_id} / {name}: never ran ({ti['state']}) =====")
        return "\n".join(parts)

    # -- assets ----------------------------------------------------------------------

    def assets(self) -> list[dict]:
        return self.list("assets", "assets")

    def asset_events(self, **filters: Any) -> list[dict]:
        """Asset events sent so far (filters: ``asset_id``, ``source_dag_id``, ``source_task_id`` ...)."""
        return self.list("assets/events", "asset_events", **filters)

    def queued_events(self, dag_id: str) -> list[dict]:
        """Asset events waiting to trigger a run of this DAG (``asset_id``, ``created_at``)."""
        return self.request("GET", f"dags/{dag_id}/assets/queuedEvents").json()["queued_events"]

    # -- variables -------------------------------------------------------------------

    def set_variable(self, key: str, value: Any) -> None:
        """Create or update a variable (non-string values are stored as JSON)."""
        body = {"key": key, "value": value}
        try:
            self.request("POST", "variables", json=body)
        except requests.HTTPError as exc:
            if exc.response is None or exc.response.status_code != 409:
                raise
            self.request("PATCH", f"variables/{key}", json=body)


def _log_line(entry: dict | str) -> str:
    """One structured log entry (timestamp, level, event, extra fields) as a line of text."""
    if isinstance(entry, str):
        return entry
    entry = dict(entry)
    head = " ".join(str(entry.pop(k)) for k in ("timestamp", "level") if entry.get(k))
    event = entry.pop("event", "")
    extra = " ".join(f"{k}={v}" for k, v in entry.items())
    return " ".join(part for part in (head, str(event), extra) if part)
