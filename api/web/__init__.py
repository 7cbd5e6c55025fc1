"""The web app for analysts, served by the API process under /app: log in with an API key, see every dataset and
its champion, create a dataset from a CSV, follow its training, compare its models, download one, try a prediction.

Server-rendered pages (Jinja2) with one small script (static/app.js) for what must not reload the page: upload
progress, the spec editor's target check, polling training progress, and the try-it form. No build step and no
framework: a page is one template and one request, and its first render is what the server sends. The pages read
and write through the same code as the REST API (its routes, called with the session cookie), so there is one
implementation of each operation."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from api.web.session import Sessions
from api.web.views import ArtifactCache, LiveCache, VersionCache

HERE = Path(__file__).resolve().parent
PREFIX = "/app"


def install(app: FastAPI) -> None:
    from api.web import actions, pages

    platform = app.state.platform
    app.state.sessions = Sessions()
    app.state.versions = VersionCache()
    app.state.artifacts = ArtifactCache()
    app.state.live = LiveCache(platform.settings.bootstrap, lambda: list(platform.specs))
    app.mount(f"{PREFIX}/static", StaticFiles(directory=HERE / "static"), name="static")
    app.add_api_route("/", lambda: RedirectResponse(f"{PREFIX}/", status_code=307), include_in_schema=False)
    app.include_router(pages.router)
    app.include_router(actions.router)
