"""The FastAPI application: `create_app(settings)`; `python -m api` serves it with uvicorn. Every route but
/health needs an API key (X-API-Key); /ready without one answers its status alone (for probes). Routes per
dataset live under /datasets/{dataset}."""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from api.guard import HEADER, BodyLimit, authorized
from api.platform import NotReady, Platform
from api.settings import ApiSettings
from api.web.session import COOKIE as SESSION_COOKIE
from ml_platform.serve.explain import METHOD, explanation, variants

UPLOAD_PATHS = ("/uploads/", "/predict/batch")
# what any keyed route may answer besides its own: documented so the schema says what a client can get
KEYED_RESPONSES = {400: {"description": "a body that is not what the route reads (e.g. malformed JSON)"},
                   401: {"description": "missing or unknown API key"},
                   413: {"description": "request body over the limit"},
                   429: {"description": "over the key's rate limit (see Retry-After)"}}


class Health(BaseModel):
    status: Literal["ok"]
    uptime_seconds: float


class DatasetReady(BaseModel):
    ready: bool
    model_version: str | None
    error: str | None = None


class Ready(BaseModel):
    ready: bool
    datasets: dict[str, DatasetReady] | None = None  # only for a caller with a key


class DatasetSummary(BaseModel):
    name: str
    task: str
    target: str
    ready: bool
    model_version: str | None


MAX_EXPLAIN = 10  # rows per call with explain: each costs one variant per feature field


class PredictRequest(BaseModel):
    """Rows with the columns of a Kafka request (raw text such as '35.1 in' is cleaned as in training). A row
    without `request_id` gets one (`rest-<uuid>`), a row without `event_time` gets the time of the call."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"rows": [{"request_id": "r-1", "mileage": "12,345"}]}]})
    rows: list[dict[str, Any]] = Field(min_length=1)
    explain: bool = Field(False, description=f"add an `explanation` to each scored row (at most {MAX_EXPLAIN} rows): "
                                            f"each feature field's contribution, {METHOD}")


class Scored(BaseModel):
    model_config = ConfigDict(extra="allow")
    status: Literal["scored"]
    request_id: str
    prediction: float | None
    probability: float | None
    model_name: str
    model_version: str
    event_time: str
    scored_at: str
    label: str | None = Field(None, description="multiclass: the predicted class's name")
    probabilities: dict[str, float] | None = Field(None, description="multiclass: every class's probability")


class Rejected(BaseModel):
    status: Literal["rejected"]
    request_id: str | None
    row: int
    reason: str
    dlq_record: dict[str, Any]


class PredictResponse(BaseModel):
    scored: int
    rejected: int
    results: list[Scored | Rejected]


def create_app(settings: ApiSettings, platform: Platform | None = None) -> FastAPI:
    platform = platform or Platform(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        platform.start()
        from api.web import start

        start(app)
        yield
        app.state.live.stop()
        platform.stop()

    app = FastAPI(title="ml-platform API", version="1",
                  description="Predictions on request, the prediction store, models, uploads and retraining. "
                              "Send an API key in the X-API-Key header (all routes but /health and a keyless /ready).",
                  lifespan=lifespan)
    app.state.platform = platform
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, exempt=UPLOAD_PATHS)

    @app.middleware("http")
    async def measure(request: Request, call_next):
        t0 = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception:  # nothing crashes the server: a bug is a 500 with no internals, and a counter
            route = _route(request)
            platform.metrics.errors.labels(route).inc()
            response = JSONResponse({"detail": "internal error; see the API's log"}, status_code=500)
        route = _route(request)
        platform.metrics.requests.labels(request.method, route, str(response.status_code)).inc()
        platform.metrics.latency.labels(request.method, route).observe(time.perf_counter() - t0)
        return response

    @app.get("/health", response_model=Health, tags=["service"])
    def health() -> Health:
        """The process is alive (no key needed)."""
        return Health(status="ok", uptime_seconds=round(time.time() - platform.started_at, 1))

    keyed = APIRouter(dependencies=[Depends(authorized)], responses=KEYED_RESPONSES)

    @app.get("/ready", response_model=Ready, tags=["service"], responses={
        503: {"model": Ready, "description": "some dataset has no loadable champion"},
        401: {"description": "an unknown API key (no key at all is allowed: the answer is then `ready` alone)"}})
    def ready(request: Request):
        """Per dataset: a champion is loaded, and the newest champion did not fail to load (the loaded one keeps
        serving meanwhile). 503 until every dataset is ready. Without a key (a load balancer's or Kubernetes'
        readiness probe) the answer is `ready` alone; with one, each dataset's model version and errors too."""
        per = {n: DatasetReady(**s.readiness()) for n, s in platform.servers.items()}
        body = Ready(ready=bool(per) and all(r.ready for r in per.values()), datasets=per)
        if request.headers.get(HEADER) or request.cookies.get(SESSION_COOKIE):
            authorized(request)
            content = body.model_dump()
        else:
            content = {"ready": body.ready}
        return JSONResponse(content, status_code=200 if body.ready else 503)

    @keyed.get("/metrics", response_class=PlainTextResponse, tags=["service"])
    def metrics():
        """Prometheus text format: requests, latency, predictions per model version, swaps, errors."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return PlainTextResponse(generate_latest(platform.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @keyed.get("/datasets", response_model=list[DatasetSummary], tags=["datasets"])
    def datasets():
        """The datasets this API serves, with the version serving each."""
        return [DatasetSummary(name=n, task=s.spec.task, target=s.spec.target, **{
            k: v for k, v in s.readiness().items() if k in ("ready", "model_version")})
            for n, s in platform.servers.items()]

    @keyed.post("/datasets/{dataset}/predict", response_model=PredictResponse, tags=["predictions"],
                responses={404: {"description": "unknown dataset"}, 413: {"description": "too many rows"},
                           503: {"description": "no champion loaded yet"}})
    async def predict(dataset: str, body: PredictRequest):
        """Score one row or many. Each result is the prediction (with its request_id and the model version that
        scored it) or, for a row that cannot be scored, the reason exactly as the DLQ record gives it."""
        server = dataset_server(platform, dataset)
        if body.explain and len(body.rows) > MAX_EXPLAIN:
            raise HTTPException(413, f"{len(body.rows)} rows; explain takes at most {MAX_EXPLAIN} per call")
        if len(body.rows) > settings.max_rows:
            raise HTTPException(413, f"{len(body.rows)} rows; at most {settings.max_rows} per call (use "
                                     f"/datasets/{dataset}/predict/batch for files)")
        rows = _with_ids(body.rows)
        try:  # awaited, not waited for in a thread: every request queued meanwhile joins the next Spark call
            outcome = await asyncio.wait_for(asyncio.wrap_future(server.submit(rows)), settings.wait_seconds)
        except NotReady as e:
            raise HTTPException(503, str(e)) from None
        except TimeoutError:
            raise HTTPException(503, f"scoring took over {settings.wait_seconds:.0f} s; try again") from None
        await run_in_threadpool(server.finish, outcome)
        results = [s.as_json() for s in outcome.rows]
        if body.explain:
            await _explain(server, rows, results, settings.wait_seconds)
        scored = sum(r["status"] == "scored" for r in results)
        return {"scored": scored, "rejected": len(results) - scored, "results": results}

    @keyed.get("/datasets/{dataset}/predictions/{request_id}", tags=["predictions"],
               responses={404: {"description": "unknown dataset or request_id"},
                          503: {"description": "the prediction store is unreachable"}})
    def prediction(dataset: str, request_id: str) -> dict[str, Any]:
        """What was predicted for a request (Kafka or REST), by which model version, from which input (its
        SHA-256), and the actual once it arrived."""
        dataset_server(platform, dataset)
        try:
            found = platform.store.lookup(dataset, request_id)
        except Exception as e:
            raise HTTPException(503, f"prediction store: {type(e).__name__}: {str(e)[:300]}") from None
        if found is None:
            raise HTTPException(404, f"no prediction stored for request_id {request_id!r} in {dataset}")
        return found

    @keyed.get("/datasets/{dataset}/recommendations/{user}", tags=["predictions"],
               responses={404: {"description": "unknown dataset"},
                          409: {"description": "the dataset is not a recommendation dataset"},
                          503: {"description": "no champion loaded yet"}})
    def recommendations(dataset: str, user: str, n: int | None = Query(None, ge=1, le=1000)) -> dict[str, Any]:
        """The champion's top n items (default: the spec's top_n) that `user` has not rated or used yet, best
        first, with their scores. A user the champion never saw gets the most popular items, with cold_start
        true."""
        server = dataset_server(platform, dataset)
        if server.spec.task != "recommendation":
            raise HTTPException(409, f"{dataset} is a {server.spec.task} dataset; recommendations are for task "
                                     f"recommendation (score a (user, item) pair with /predict)")
        cur = server.champion.current
        if cur is None:
            raise HTTPException(503, f"{dataset}: no champion loaded yet")
        from ml_platform.train.recommend import top_n_for_user

        version = platform.tracker().version_tags(dataset, cur.version).get("training_version")
        out = top_n_for_user(platform.spark, platform.data_store(), server.spec, version, user, n)
        return out | {"model_version": cur.version}

    app.include_router(keyed)
    from api.web import install

    install(app)
    for module in ("api.models", "api.uploads", "api.batch", "api.runs"):
        try:
            router = __import__(module, fromlist=["router"]).router
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            continue
        app.include_router(router, dependencies=[Depends(authorized)], responses=KEYED_RESPONSES)
    return app


def _route(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", "unmatched")


def dataset_server(platform: Platform, dataset: str):
    server = platform.servers.get(dataset)
    if server is None:
        known = ", ".join(sorted(platform.servers)) or "none"
        raise HTTPException(404, f"unknown dataset {dataset!r}; served: {known}")
    return server


async def _explain(server, rows: list[dict], results: list[dict], wait_seconds: float) -> None:
    """Each scored result gets its `explanation`: its variants (ml_platform.serve.explain) scored in one call
    through the same core. They are neither published nor counted: they are not predictions anyone asked for."""
    spec = server.spec
    medians = await run_in_threadpool(server.medians)
    sent = {r["request_id"]: r for r in rows}
    plans, batch = [], []
    for res in results:
        if res["status"] == "scored":
            pairs, skipped = variants(spec, sent[res["request_id"]], medians)
            plans.append((res, [f for f, _ in pairs], skipped, len(batch)))
            batch += [v for _, v in pairs]
    scored = []
    if batch:
        try:
            outcome = await asyncio.wait_for(asyncio.wrap_future(server.submit(batch)), wait_seconds)
        except (NotReady, TimeoutError) as e:  # the predictions stand; only their explanations are missing
            why = str(e) or f"scoring the variants took over {wait_seconds:.0f} s"
            for res, *_ in plans:
                res["explanation"] = {"error": f"not explained: {why}"}
            return
        scored = [s.as_json() for s in outcome.rows]
    for res, fields, skipped, start in plans:
        res["explanation"] = explanation(spec, res, fields, skipped, scored[start:start + len(fields)])


def _with_ids(rows: list[dict]) -> list[dict]:
    """Give rows without a request_id one, and rows without event_time the call's time; refuse an id given twice
    (each result is matched to its row by request_id)."""
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    out, seen = [], {}
    for i, r in enumerate(rows):
        r = dict(r)
        if r.get("request_id") is None:
            r["request_id"] = f"rest-{uuid.uuid4().hex}"
        if r.get("event_time") is None:
            r["event_time"] = now
        rid = r["request_id"]
        if isinstance(rid, str) and rid in seen:
            raise HTTPException(422, [{"loc": ["body", "rows", i, "request_id"],
                                       "msg": f"request_id {rid[:60]!r} also at row {seen[rid]}",
                                       "type": "value_error"}])
        if isinstance(rid, str):
            seen[rid] = i
        out.append(r)
    return out
