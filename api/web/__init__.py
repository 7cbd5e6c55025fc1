"""The web app for analysts, served by the API process under /app: log in with an API key, see every dataset and
its champion, create a dataset from a CSV, follow its training, compare its models, download one, try a prediction.

Server-rendered pages (Jinja2) with one small script (static/app.js) for what must not reload the page: upload
progress, the spec editor's target check, polling training progress, and the try-it form. No build step and no
framework: a page is one template and one request, and its first render is what the server sends. The pages read
and write through the same code as the REST API (its routes, called with the session cookie), so there is one
implementation of each operation."""

from __future__ import annotations

import threading
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
    app.state.warmed = threading.Event()


def start(app: FastAPI) -> None:
    """At the API's start: the live-metrics reader, and a warm-up of the caches of what never changes (each
    champion's metrics, each dataset's newest finished training), off the request path, so that the first visit
    of a page is as quick as the next ones. `app.state.warmed` is set when it is done (or gave up)."""
    app.state.live.start()
    threading.Thread(target=_warm, args=(app,), daemon=True, name="web-warm-up").start()


def _warm(app: FastAPI) -> None:
    from api.models import training_board
    from api.web.views import champions

    state, p = app.state, app.state.platform
    try:
        client = p.tracker().client
        champions(client, state.versions, list(p.specs))
        for spec in list(p.specs.values()):
            exp = state.artifacts.experiment(client, spec.name)
            board = training_board(client, spec, exp, None, state.artifacts.children) if exp else None
            if board is not None:
                state.artifacts.get(client, board.run_id, board.status == "finished")
    except Exception:  # MLflow is down or slow: the pages read it themselves, and say so
        pass
    finally:
        state.warmed.set()
