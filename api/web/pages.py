"""The pages: login, datasets, new dataset (upload, then the spec editor), and one page per dataset (training
progress, results, try it, more data). Each page is rendered whole on the server; a source that is down (MLflow,
Dagster, Kafka) is named in the page and the rest still shows."""

from __future__ import annotations

import time
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from api.guard import known_key
from api.web import HERE, PREFIX
from api.web.create import Refused, check_upload_id, draft_of
from api.web.session import COOKIE, cookie_args
from api.web.views import chain, champions, dataset_view, headline, last_batch
from ml_platform.local.dagster_gql import DagsterError
from ml_platform.spec_draft import ALGORITHMS, DEFAULT_PICKS, EDITABLE_PARSES, SUPERVISED_TASKS, algorithms_for
from ml_platform.train.metrics import primary

router = APIRouter(prefix=PREFIX, include_in_schema=False)
templates = Jinja2Templates(directory=HERE / "templates")


def _session(request: Request):
    s = request.app.state.sessions.get(request.cookies.get(COOKIE), request.app.state.platform.settings.key_hashes)
    return s


def _page(request: Request, name: str, status: int = 200, **ctx) -> Response:
    session = _session(request)
    p = request.app.state.platform
    started = getattr(request.state, "t0", None)
    return templates.TemplateResponse(request, name, {
        "csrf": session.csrf if session else "", "prefix": PREFIX, "logged_in": session is not None,
        "dagster_url": p.settings.dagster_url.rstrip("/"), "mlflow_url": p.settings.tracking_uri.rstrip("/"),
        "rendered_ms": round((time.perf_counter() - started) * 1000) if started else None, **ctx},
        status_code=status, headers={"Cache-Control": "no-store"})


def _login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"{PREFIX}/login?next={quote(target, safe='')}", status_code=303)


def _safe_next(target: str | None) -> str:
    """Only a path inside the app: never another site (an open redirect)."""
    if not target or not target.startswith(f"{PREFIX}/") or target.startswith("//") or urlsplit(target).netloc:
        return f"{PREFIX}/"
    return target


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str | None = None):
    return _page(request, "login.html", next=_safe_next(next), error=None)


@router.post("/login", response_class=HTMLResponse)
def login(request: Request, key: str = Form(""), next: str = Form(f"{PREFIX}/")):
    p = request.app.state.platform
    h = known_key(key.strip(), p.settings.key_hashes)
    if not h:
        p.metrics.auth_failures.inc()
        return _page(request, "login.html", status=401, next=_safe_next(next),
                     error="That key is not accepted. Use an API key of this deployment (`make run` writes one to "
                           ".local/api-key).")
    token = request.app.state.sessions.open(h)
    r = RedirectResponse(_safe_next(next), status_code=303)
    r.set_cookie(value=token, **cookie_args(request.url.scheme == "https"))
    return r


@router.post("/logout")
def logout(request: Request):
    request.app.state.sessions.close(request.cookies.get(COOKIE))
    r = RedirectResponse(f"{PREFIX}/login", status_code=303)
    r.delete_cookie(COOKIE, path="/")
    return r


@router.get("/", response_class=HTMLResponse)
def datasets(request: Request):
    if _session(request) is None:
        return _login_redirect(request)
    p, state = request.app.state.platform, request.app.state
    request.state.t0 = time.perf_counter()
    specs = dict(p.specs)
    problems, models, progress_state, batches = [], {}, {}, {}
    try:
        models = champions(p.tracker().client, state.versions, list(specs))
    except Exception as e:
        problems.append(f"MLflow at {p.settings.tracking_uri} could not be read ({type(e).__name__}): champions are "
                        f"not shown")
    try:
        from api.web.progress import latest, state_of

        keys = [[ds, a] for ds, spec in specs.items() for a in chain(spec)]
        info = latest(p.settings.dagster_url, keys) if keys else {}
        for ds, spec in specs.items():
            progress_state[ds] = state_of({a: info[(ds, a)] for a in chain(spec) if (ds, a) in info})
    except DagsterError as e:
        problems.append(f"Dagster could not be read: {str(e)[:200]}")
    store = p.data_store()
    for ds, spec in specs.items():
        try:
            batches[ds] = last_batch(store, spec)
        except Exception as e:
            batches[ds] = {"error": f"{type(e).__name__}: {str(e)[:120]}"}
    rows = []
    for ds, spec in sorted(specs.items()):
        roles = models.get(ds, {})
        champ = roles.get("champion")
        server = p.servers.get(ds)
        rows.append({"name": ds, "task": spec.task, "target": spec.target, "champion": champ,
                     "headline": headline(spec, champ["holdout"]) if champ else None,
                     "serving": server.readiness()["model_version"] if server else None,
                     "batch": batches.get(ds), "training": progress_state.get(ds, "unknown"),
                     "live": state.live.latest.get(ds)})
    if state.live.error:
        problems.append(f"live metrics could not be read from Kafka: {state.live.error}")
    return _page(request, "datasets.html", rows=rows, problems=problems, spec_errors=p.spec_errors)


@router.get("/new", response_class=HTMLResponse)
def new_dataset(request: Request):
    if _session(request) is None:
        return _login_redirect(request)
    s = request.app.state.platform.settings
    return _page(request, "new.html", max_mb=s.max_upload_bytes / 1_048_576, max_bytes=s.max_upload_bytes)


@router.get("/new/{upload_id}", response_class=HTMLResponse)
def edit_spec(request: Request, upload_id: str):
    if _session(request) is None:
        return _login_redirect(request)
    p = request.app.state.platform
    try:
        d = draft_of(p.data_store(), check_upload_id(upload_id))
    except Refused as e:
        return _page(request, "new.html", status=e.status, error=str(e), max_mb=p.settings.max_upload_bytes / 1_048_576,
                     max_bytes=p.settings.max_upload_bytes)
    stem = "".join(ch if ch.isalnum() else "_" for ch in d.file.rsplit(".", 1)[0].lower()).strip("_") or "dataset"
    return _page(request, "edit.html", draft=d, upload_id=upload_id, parses=EDITABLE_PARSES,
                 suggested=stem if stem[0].isalpha() else f"d_{stem}",
                 algorithms={t: algorithms_for(t) for t in SUPERVISED_TASKS}, picks=DEFAULT_PICKS,
                 all_algorithms=ALGORITHMS)


@router.get("/datasets/{dataset}", response_class=HTMLResponse)
def dataset_page(request: Request, dataset: str):
    if _session(request) is None:
        return _login_redirect(request)
    request.state.t0 = time.perf_counter()
    p, state = request.app.state.platform, request.app.state
    if dataset not in p.servers:
        return _page(request, "missing.html", status=404, dataset=dataset, known=sorted(p.servers))
    spec = p.specs[dataset]
    metric, larger = primary(spec.task)
    view = dataset_view(p, state.versions, state.artifacts, spec)
    return _page(request, "dataset.html", spec=spec, metric=metric, larger=larger, assets=chain(spec),
                 batch=last_batch(p.data_store(), spec), live=state.live.latest.get(dataset),
                 max_bytes=p.settings.max_upload_bytes, max_mb=p.settings.max_upload_bytes / 1_048_576, **view)
