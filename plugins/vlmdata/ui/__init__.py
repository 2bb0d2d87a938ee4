"""vlmdata inside Airflow's UI: an Airflow plugin, registered through the package's
``airflow.plugins`` entry point (so every deployment that installs vlmdata has it).

* a FastAPI app under ``/vlmdata`` (:mod:`vlmdata.ui.app`): the vlmdata page, its data as JSON,
  and the reports, manifests, locks and charts from the storage, behind Airflow's own login;
* a navigation entry ("vlmdata", under Browse) that shows the page inside the UI;
* the operator extra links ("Integrity report", "Composition", "Lock", "Manifest"), which
  point into that app (:mod:`vlmdata.operators.links`).

Airflow imports plugins in every process (scheduler, workers, DAG processor); only the API
server serves the app, so it is built there, on its first request, with the API server's
modules.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from ..operators.links import LINKS

URL_PREFIX = "/vlmdata"


class _AppOnFirstRequest:
    """An ASGI app that builds :func:`vlmdata.ui.app.create_app` when first called."""

    def __init__(self) -> None:
        self._app = None

    async def __call__(self, scope, receive, send) -> None:
        if self._app is None:
            from .app import create_app

            self._app = create_app()
        await self._app(scope, receive, send)

    def __repr__(self) -> str:  # what Admin > Plugins shows
        return "vlmdata.ui.app:create_app"


class VlmdataPlugin(AirflowPlugin):
    name = "vlmdata"
    fastapi_apps = [{"app": _AppOnFirstRequest(), "url_prefix": URL_PREFIX, "name": "vlmdata"}]
    # A relative href: the UI resolves it against its base URL (a deployment under a path too).
    external_views = [{"name": "vlmdata", "href": "vlmdata/", "url_route": "vlmdata", "destination": "nav", "category": "browse"}]
    operator_extra_links = [link() for link in LINKS]
