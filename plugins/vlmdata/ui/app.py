"""The vlmdata page and files, as a FastAPI app the Airflow API server mounts under ``/vlmdata``.

Thin: :mod:`vlmdata.status` gathers the summary from the storage (the same root the tasks
write: the ``vlmdata_root`` Variable and the ``aws_default`` connection, read from the metadata
database), the metadata database gives each DAG's last run, :mod:`vlmdata.pages` renders it.

Airflow does not authenticate a plugin's app (a mounted app inherits none of the API's
dependencies), so every route here depends on the API server's own check: a signed-in user
(the UI's session cookie or a bearer token) allowed to read DAGs, as Airflow's own DAG pages
require. Anonymous requests get 401, users without that permission 403.

Routes (relative to the mount):

* ``/``: the page (inside the UI through the "vlmdata" navigation entry);
* ``/status.json``: the same summary as JSON;
* ``/files/<storage key>``: a report, manifest, layout report, lock or chart from the storage
  (:func:`vlmdata.status.servable` says which keys; never the data tree).

When the storage cannot be read (an S3 endpoint down, a permission denied, a corrupt file) the
answer names the problem: a page for a browser, JSON otherwise, status 503 (502 for a file the
storage holds but cannot hand out), never a bare 500. A corrupt report of one source or mixture
only marks that row (:func:`vlmdata.status.gather`).
"""

from __future__ import annotations

import dataclasses
import logging
import mimetypes
from collections.abc import Callable
from pathlib import PurePosixPath
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from airflow.api_fastapi.core_api.security import requires_access_dag

from .. import pages, settings, status
from ..layout import load_profiles
from ..mix import load_recipes
from ..storage import Storage

log = logging.getLogger("vlmdata.ui")

CHUNK = 1024 * 1024


class StorageProblem(Exception):
    """The storage could not answer: shown to the user as a page (or JSON) that names why."""

    def __init__(self, status_code: int, title: str, detail: str):
        super().__init__(detail)
        self.status_code, self.title, self.detail = status_code, title, detail


def problem_response(request: Request, problem: StorageProblem) -> HTMLResponse | JSONResponse:
    log.warning("%s %s: %s", request.method, request.url.path, problem.detail)
    if request.url.path.endswith(".json") or "text/html" not in request.headers.get("accept", ""):
        return JSONResponse({"error": problem.title, "detail": problem.detail}, status_code=problem.status_code)
    home = str(request.scope.get("root_path", "")).rstrip("/") + "/"
    hint = "The page reads the storage the tasks write (the vlmdata_root Variable, the aws_default connection); it shows again once that storage answers."
    page = pages.render("error.html", title=problem.title, detail=problem.detail, status_code=problem.status_code, home=home, hint=hint)
    return HTMLResponse(page, status_code=problem.status_code)


def file_url(key: str) -> str:
    """Relative to the page (``/vlmdata/``): ``files/<key>``."""
    return "files/" + quote(key)


def run_url(run: status.Run) -> str:
    """The run's page in Airflow's UI, relative to the page (which sits one level under it)."""
    return f"../dags/{quote(run.dag_id)}/runs/{quote(run.run_id or '', safe=':+')}"


def dag_runs(dag_ids: list[str]) -> dict[str, status.Run]:
    """Each DAG's last run and next scheduled run, from Airflow's metadata database."""
    from sqlalchemy import func, select

    from airflow.models.dag import DagModel
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    def iso(moment) -> str | None:
        return moment.isoformat() if moment else None

    with create_session() as session:
        last_ids = select(func.max(DagRun.id)).where(DagRun.dag_id.in_(dag_ids)).group_by(DagRun.dag_id)
        last = {run.dag_id: run for run in session.scalars(select(DagRun).where(DagRun.id.in_(last_ids)))}
        runs = {}
        for dag in session.scalars(select(DagModel).where(DagModel.dag_id.in_(dag_ids))):
            run = last.get(dag.dag_id)
            runs[dag.dag_id] = status.Run(
                dag_id=dag.dag_id,
                run_id=run.run_id if run else None,
                state=str(run.state) if run else None,
                when=iso(run.start_date or run.run_after) if run else None,
                next_run=None if dag.is_paused else iso(dag.next_dagrun_create_after),
                paused=bool(dag.is_paused),
            )
        return runs


def airflow_storage() -> Storage:
    return settings.from_airflow_server().storage()


def create_app(
    *,
    storage: Callable[[], Storage] = airflow_storage,
    runs: Callable[[list[str]], dict[str, status.Run]] = dag_runs,
    dependencies: list | None = None,
) -> FastAPI:
    """The app; ``storage`` and ``runs`` default to what the API server's metadata database says,
    ``dependencies`` to Airflow's authentication (a test of the pages alone passes others)."""
    app = FastAPI(
        title="vlmdata",
        description="What vlmdata holds on its storage: sources, layouts, mixtures, and their reports.",
        dependencies=[Depends(requires_access_dag("GET"))] if dependencies is None else dependencies,
    )
    app.add_exception_handler(StorageProblem, problem_response)

    def gather() -> status.Status:
        catalog, profiles, recipes = settings.catalog(), load_profiles(), load_recipes()
        try:
            return status.gather(storage(), catalog, profiles, recipes, runs(status.dag_ids(catalog, profiles, recipes)))
        except status.Unreadable as exc:
            raise StorageProblem(503, "The storage cannot be read", str(exc)) from exc

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return pages.render("status.html", status=gather(), file_url=file_url, run_url=run_url)

    @app.get("/status.json")
    def status_json() -> dict:
        return dataclasses.asdict(gather())

    @app.get("/files/{key:path}")
    def file(key: str) -> StreamingResponse:
        if not status.servable(key):
            raise HTTPException(404, f"{key} is not a report, manifest, lock or chart")
        where = storage()
        try:
            handle = where.open_read(key)
        except (FileNotFoundError, IsADirectoryError):
            raise HTTPException(404, f"{key} is not on {where.url}") from None
        except Exception as exc:  # a permission denied, an endpoint down: botocore's errors, OSError, StorageError
            raise StorageProblem(502, f"{key} cannot be read", f"{key} on {where.url}: {type(exc).__name__}: {exc}") from exc

        def chunks():
            with handle:
                while data := handle.read(CHUNK):
                    yield data

        media_type = mimetypes.guess_type(PurePosixPath(key).name)[0] or "application/octet-stream"
        if media_type.startswith("text/") or media_type == "application/json":
            media_type += "; charset=utf-8"
        # Reports and charts are ours and hold no script; a browser must not run one either way.
        headers = {"Content-Security-Policy": "script-src 'none'", "X-Content-Type-Options": "nosniff"}
        return StreamingResponse(chunks(), media_type=media_type, headers=headers)

    return app
