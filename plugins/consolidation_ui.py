"""Airflow 3 UI plugin: the latest nightly validation and the latest completion report, one click away.

Loaded by Airflow from the plugins folder (plugins/.airflowignore keeps the `consolidation`
engine package from being scanned as plugins; this top-level file is the plugin):

* `fastapi_apps`: a FastAPI sub-app mounted by the API server under /consolidation:
    /consolidation/                      index: links, the latest validations
    /consolidation/validation/latest     the latest nightly validation page
    /consolidation/validation/<run>      one run's page
    /consolidation/report/latest         the latest completion report (report_dir()/<run_id>/report.html)
    /consolidation/report/<run>/<file>   a file of a report folder (the report's own assets)
* `external_views`: two entries under "Consolidation" in the UI's navigation, rendered inside
  the Airflow UI (url_route) from those URLs.

The pages are files written by the runs under the state folder (consolidation.phases.nightly writes
state_dir()/nightly/<run>/index.html: inline CSS, no CDN; GX Data Docs are not served because
they load CSS/JS from CDNs). Responses carry a Content-Security-Policy that allows nothing
from other origins, so a page can never reach a CDN even if one links to it.

Access: the caller must be signed in to Airflow (the UI's JWT cookie or a bearer token) and
may read the DAG consolidation_nightly_validation - the pages show key values of failing rows.
"""
from __future__ import annotations

import html
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/consolidation"
DAG_ID = "consolidation_nightly_validation"
CSP = ("default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "script-src 'self' 'unsafe-inline'; connect-src 'self'; frame-ancestors 'self'")

_bearer = HTTPBearer(auto_error=False)


async def require_reader(request: Request,
                         bearer: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
    """Signed in to Airflow, and allowed to read the nightly validation DAG (lazy imports:
    the plugin module stays cheap for the Airflow components that load plugins)."""
    from airflow.api_fastapi.core_api import security

    user = await security.get_user(request, None, bearer)
    security.requires_access_dag("GET", param_dag_id=DAG_ID)(request, user)


def _headers() -> dict[str, str]:
    return {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    doc = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
           f"<title>{html.escape(title)}</title><style>"
           "body{font:14px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:1.5rem;color:#1f2328}"
           "h1{font-size:1.3rem}table{border-collapse:collapse}td,th{border:1px solid #d1d9e0;padding:.25rem .5rem}"
           ".ok{color:#1a7f37;font-weight:600}.bad{color:#cf222e;font-weight:600}"
           f"</style></head><body>{body}</body></html>")
    return HTMLResponse(doc, status_code=status, headers=_headers())


def _inside(base: Path, *parts: str) -> Path:
    """base/parts, refusing anything that would leave base (.., absolute parts, symlinks out)."""
    target = base.joinpath(*parts).resolve()
    root = base.resolve()
    if target != root and root not in target.parents:
        raise HTTPException(status_code=404, detail="not found")
    return target


def _latest_report() -> Path | None:
    from consolidation.core import config

    reports = [p for p in config.report_dir().glob("*/report.html") if p.is_file()]
    return max(reports, key=lambda p: p.stat().st_mtime) if reports else None


def create_app() -> FastAPI:
    app = FastAPI(title="Consolidation", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(require_reader)])

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        from consolidation.phases import nightly

        runs = nightly.latest_runs()
        report = _latest_report()
        rows = "".join(
            f"<tr><td><a href='{URL_PREFIX}/validation/{html.escape(r['folder'])}'>{html.escape(str(r.get('run_id')))}</a>"
            f"</td><td class='{'ok' if r.get('passed') else 'bad'}'>{'passed' if r.get('passed') else 'FAILED'}</td>"
            f"<td>{r.get('failed')} of {r.get('checks')} failed</td><td>{html.escape(str(r.get('finished_at')))}</td></tr>"
            for r in runs)
        body = (
            "<h1>Consolidation</h1><ul>"
            f"<li><a href='{URL_PREFIX}/validation/latest'>Latest nightly validation</a></li>"
            + (f"<li><a href='{URL_PREFIX}/report/latest'>Latest completion report</a> "
               f"({html.escape(report.parent.name)})</li>" if report else "<li>no completion report yet</li>")
            + "</ul><h2>Recent validations</h2>"
            + (f"<table><tr><th>run</th><th>verdict</th><th>checks</th><th>finished</th></tr>{rows}</table>"
               if runs else f"<p>No nightly validation has run yet: trigger <code>{DAG_ID}</code>.</p>"))
        return _page("Consolidation", body)

    @app.get("/validation/latest", response_class=HTMLResponse)
    def latest_validation():
        from consolidation.phases import nightly

        runs = nightly.latest_runs(limit=1)
        if not runs:
            return _page("No validation yet", f"<h1>No nightly validation has run yet</h1><p>Trigger the DAG "
                         f"<code>{DAG_ID}</code>, or run <code>python -m consolidation validate</code>.</p>", 404)
        return _serve_validation(runs[0]["folder"])

    @app.get("/validation/{run}", response_class=HTMLResponse)
    def validation(run: str):
        return _serve_validation(run)

    @app.get("/report/latest")
    def latest_report():
        report = _latest_report()
        if report is None:
            return _page("No report yet", "<h1>No completion report yet</h1><p>The completion report is "
                         "written when the consolidation completes.</p>", 404)
        return FileResponse(report, media_type="text/html", headers=_headers())

    @app.get("/report/{run}/{path:path}")
    def report_file(run: str, path: str):
        from consolidation.core import config

        target = _inside(config.report_dir(), run, path or "report.html")
        if not target.is_file():
            raise HTTPException(status_code=404, detail=f"no file {path} in report {run}")
        return FileResponse(target, headers=_headers())

    return app


def _serve_validation(run: str):
    from consolidation.phases import nightly

    page = _inside(nightly.nightly_dir(), run, "index.html")
    if not page.is_file():
        return _page("Not found", f"<h1>No validation page for run {html.escape(run)}</h1>"
                     f"<p><a href='{URL_PREFIX}/'>all validations</a></p>", 404)
    return FileResponse(page, media_type="text/html", headers=_headers())


app = create_app()


class ConsolidationUIPlugin(AirflowPlugin):
    name = "consolidation_ui"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "Consolidation pages"}]
    external_views = [
        {"name": "Nightly validation", "href": f"{URL_PREFIX}/validation/latest", "category": "Consolidation",
         "destination": "nav", "url_route": "consolidation-validation"},
        {"name": "Completion report", "href": f"{URL_PREFIX}/report/latest", "category": "Consolidation",
         "destination": "nav", "url_route": "consolidation-report"},
        {"name": "Consolidation pages", "href": f"{URL_PREFIX}/", "category": "Consolidation",
         "destination": "nav", "url_route": "consolidation"},
    ]
