"""Retraining through Dagster. `POST /datasets/{ds}/retrain` asks Dagster, through the GraphQL client Dagster
ships (dagster-graphql), for a run of the dataset's retrain chain, the same asset selection the live-metrics
sensor requests when live quality degrades; `GET /runs/{id}` reports a run's status and its steps. The API never
trains: Dagster queues, launches and records the run, and its UI shows it at `dagster_url`."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from urllib.parse import urlsplit

import requests
from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

from ml_platform.spec import DatasetSpec

router = APIRouter(tags=["retraining"])

TIMEOUT_SECONDS = 10
TAGS = {"ml_platform/requested_by": "api", "ml_platform/trigger": "api_retrain"}  # + ml_platform/dataset
# The retrain chain (CHAIN in sensors/live_metrics.py, plus one model per algorithm) that a new batch triggers, and
# that the live-metrics sensor runs directly for a dataset without a target (with one, it runs <ds>/feedback, whose
# landed batch triggers this chain). As names: importing the sensor module would load every Dagster resource
# (MLflow, boto3) into the API. tests/test_api_runs.py asserts both stay the same.
RETRAIN_LAYERS = ("training_set", "feature_pipeline", "stacked_model", "serving_deployment")
IMPLICIT_JOB = "__ASSET_JOB"  # the job Dagster builds over every asset of a code location

PREFLIGHT = """query Retrain($keys: [AssetKeyInput!]) {
  assetNodes(assetKeys: $keys) { assetKey { path } jobNames repository { name location { name } } }
  workspaceOrError { __typename ... on Workspace { locationEntries { name locationOrLoadError { __typename
    ... on PythonError { message errorChain { error { message } } } } } } ... on PythonError { message } }
}"""
RUN = """query Run($id: ID!) { runOrError(runId: $id) { __typename
  ... on Run { runId status startTime endTime stepKeysToExecute assetSelection { path }
               stepStats { stepKey status startTime endTime } }
  ... on Error { message } } }"""


class RetrainAccepted(BaseModel):
    run_id: str
    dataset: str
    asset_selection: list[str] = Field(description="the asset keys the run materializes")
    dagster_url: str = Field(description="the run in the Dagster UI")


class Step(BaseModel):
    key: str
    status: str = Field(description="NOT_STARTED (planned), IN_PROGRESS, SUCCESS, FAILURE or SKIPPED")
    started_at: str | None
    ended_at: str | None


class RunStatus(BaseModel):
    run_id: str
    status: str = Field(description="Dagster's run status: QUEUED, NOT_STARTED, STARTING, STARTED, SUCCESS, "
                                    "FAILURE, CANCELING, CANCELED")
    started_at: str | None
    ended_at: str | None
    asset_selection: list[str]
    steps: list[Step]
    dagster_url: str


class DagsterUnreachable(RuntimeError):
    pass


def retrain_keys(spec: DatasetSpec) -> list[list[str]]:
    return [[spec.name, layer] for layer in RETRAIN_LAYERS] + [[spec.name, f"model_{a}"] for a in spec.algorithms]


class Dagster:
    """Dagster's GraphQL API at one URL. A new client per call: gql's transport keeps one session and refuses a
    second caller while connected, and routes run on a thread pool."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def client(self):
        # imported on the first retrain: dagster_graphql imports all of dagster, seconds the API need not wait
        # for at start-up
        from dagster_graphql import DagsterGraphQLClient

        u = urlsplit(self.url)
        return DagsterGraphQLClient(u.hostname or "", port_number=u.port, use_https=u.scheme == "https",
                                    path_prefix=u.path.rstrip("/"), timeout=TIMEOUT_SECONDS)

    def query(self, query: str, variables: dict) -> dict:
        """A read the client has no method for (step stats, asset nodes): a plain POST to /graphql."""
        try:
            r = requests.post(f"{self.url}/graphql", json={"query": query, "variables": variables},
                              timeout=TIMEOUT_SECONDS)
        except (requests.ConnectionError, requests.Timeout) as e:
            raise DagsterUnreachable(self._down(e)) from None
        try:
            body = r.json()
            data = body["data"]
        except (ValueError, KeyError, TypeError):
            raise HTTPException(502, f"{self.url}/graphql answered HTTP {r.status_code} without GraphQL data: "
                                     f"{r.text[:300]!r}; is ML_PLATFORM_DAGSTER_URL a Dagster webserver?") from None
        if body.get("errors") or data is None:
            raise HTTPException(502, f"Dagster at {self.url} rejected the query: {str(body.get('errors'))[:500]}")
        return data

    def submit(self, job: str, location: str, repository: str, keys: list[list[str]]) -> str:
        from dagster_graphql import DagsterGraphQLClientError

        try:
            return self.client().submit_job_execution(job, repository_location_name=location,
                                                      repository_name=repository, asset_selection=keys,
                                                      tags=TAGS | {"ml_platform/dataset": keys[0][0]})
        except DagsterGraphQLClientError as e:
            if _connection_failed(e):
                raise DagsterUnreachable(self._down(e)) from None
            kind, said = (list(e.args) + ["", ""])[:2]
            status = 502 if kind == "PythonError" else 409
            raise HTTPException(status, f"Dagster refused the run ({kind}): {str(said)[:1000]}") from None
        except KeyError:
            # dagster-graphql 1.13 does not ask for the message of an InvalidSubsetError and fails reading it;
            # the preflight makes this a race with a code location reload
            raise HTTPException(409, f"Dagster refused the asset selection {_names(keys)} of job {job} in "
                                     f"{location}; it changed since it was checked, try again") from None

    def _down(self, e: Exception) -> str:
        return (f"Dagster is unreachable at {self.url} ({type(_root(e)).__name__}); is its webserver running "
                f"(`make run` starts it; ML_PLATFORM_DAGSTER_URL says where it is)?")


def _root(e: BaseException) -> BaseException:
    while e.__cause__ is not None:
        e = e.__cause__
    return e


def _connection_failed(e: BaseException | None) -> bool:
    """The client's transport (gql over requests) wraps the connection error it met, once or twice."""
    while e is not None:
        if isinstance(e, requests.ConnectionError | requests.Timeout):
            return True
        e = e.__cause__
    return False


def _names(keys) -> list[str]:
    return ["/".join(k) for k in keys]


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _dagster(request: Request) -> Dagster:
    return Dagster(request.app.state.platform.settings.dagster_url)


@router.post("/datasets/{dataset}/retrain", status_code=202, response_model=RetrainAccepted,
             responses={404: {"description": "unknown dataset"},
                        409: {"description": "Dagster's code location does not have this dataset's assets, or "
                                             "Dagster refused the run (the detail says what Dagster said)"},
                        502: {"description": "Dagster answered with an error of its own"},
                        503: {"description": "Dagster is unreachable"}})
def retrain(dataset: str, request: Request):
    """Ask Dagster for a run of the dataset's retrain chain (training set, feature pipeline, one model per
    algorithm, stacking, serving deployment), tagged `ml_platform/requested_by=api`. The run is queued in
    Dagster; follow it with GET /runs/{run_id} or in the Dagster UI."""
    platform = request.app.state.platform
    spec = platform.specs.get(dataset)
    if spec is None:
        known = ", ".join(sorted(platform.specs)) or "none"
        raise HTTPException(404, f"unknown dataset {dataset!r}; served: {known}")
    dagster, keys = _dagster(request), retrain_keys(spec)
    try:
        data = dagster.query(PREFLIGHT, {"keys": [{"path": k} for k in keys]})
        job, location, repository = _target(dagster, dataset, keys, data)
        run_id = dagster.submit(job, location, repository, keys)
    except DagsterUnreachable as e:
        raise HTTPException(503, str(e)) from None
    return RetrainAccepted(run_id=run_id, dataset=dataset, asset_selection=_names(keys),
                           dagster_url=f"{dagster.url}/runs/{run_id}")


def _target(dagster: Dagster, dataset: str, keys: list[list[str]], data: dict) -> tuple[str, str, str]:
    """The job, code location and repository that hold every asset of the chain, or a 409 saying what Dagster
    has instead."""
    nodes = data.get("assetNodes") or []
    found = {tuple(n["assetKey"]["path"]) for n in nodes}
    missing = [k for k in keys if tuple(k) not in found]
    if missing:
        raise HTTPException(409, f"Dagster at {dagster.url} has no asset {', '.join(_names(missing))}: dataset "
                                 f"{dataset!r} is not in its code locations ({_locations(data)}); Dagster loads "
                                 f"the datasets named in its ML_PLATFORM_DATASETS")
    homes = {(n["repository"]["location"]["name"], n["repository"]["name"]) for n in nodes}
    jobs = set.intersection(*(set(n["jobNames"]) for n in nodes))
    implicit = sorted(j for j in jobs if j.startswith(IMPLICIT_JOB))
    if len(homes) != 1 or not implicit:
        raise HTTPException(409, f"the assets of {dataset!r} in Dagster are not in one job of one code location "
                                 f"(locations {sorted(homes)}, common jobs {sorted(jobs)})")
    location, repository = homes.pop()
    return implicit[0], location, repository


def _locations(data: dict) -> str:
    ws = data.get("workspaceOrError") or {}
    if ws.get("__typename") != "Workspace":
        return f"workspace error: {str(ws.get('message'))[:500]}"
    out = []
    for entry in ws.get("locationEntries") or []:
        loaded = entry.get("locationOrLoadError") or {}
        if loaded.get("__typename") == "PythonError":
            # the root cause is last in the chain; the outer message only says that loading failed
            chain = [c["error"]["message"] for c in loaded.get("errorChain") or []]
            said = (chain[-1] if chain else str(loaded.get("message"))).strip()[:500]
            out.append(f"{entry['name']}: failed to load: {said}")
        else:
            out.append(f"{entry['name']}: loaded" if loaded else f"{entry['name']}: loading")
    return "; ".join(out) or "none"


@router.get("/runs/{run_id}", response_model=RunStatus,
            responses={404: {"description": "no such run in Dagster"},
                       502: {"description": "Dagster answered with an error of its own"},
                       503: {"description": "Dagster is unreachable"}})
def run_status(run_id: str, request: Request):
    """A Dagster run's status and its steps: each planned step with its status and times (NOT_STARTED until it
    starts). Any run Dagster knows, not only those this API requested."""
    try:
        run_id = str(uuid.UUID(run_id))  # Dagster's own spelling: lower case with dashes
    except ValueError:
        raise HTTPException(404, f"no run {run_id[:100]!r}: Dagster run ids are UUIDs") from None
    dagster = _dagster(request)
    try:
        run = dagster.query(RUN, {"id": run_id})["runOrError"]
    except DagsterUnreachable as e:
        raise HTTPException(503, str(e)) from None
    if run["__typename"] == "RunNotFoundError":
        raise HTTPException(404, f"Dagster at {dagster.url} has no run {run_id}")
    if run["__typename"] != "Run":
        raise HTTPException(502, f"Dagster could not read run {run_id} ({run['__typename']}): "
                                 f"{str(run.get('message'))[:500]}")
    stats = {s["stepKey"]: s for s in run["stepStats"]}
    planned = run.get("stepKeysToExecute") or []  # in plan order; stats only have steps that started
    steps = [_step(k, stats.get(k)) for k in planned + [k for k in stats if k not in planned]]
    return RunStatus(run_id=run["runId"], status=run["status"], started_at=_iso(run["startTime"]),
                     ended_at=_iso(run["endTime"]), asset_selection=_names(a["path"] for a in
                                                                           run["assetSelection"] or []),
                     steps=steps, dagster_url=f"{dagster.url}/runs/{run['runId']}")


def _step(key: str, stat: dict | None) -> Step:
    if stat is None:
        return Step(key=key, status="NOT_STARTED", started_at=None, ended_at=None)
    return Step(key=key, status=stat["status"] or "IN_PROGRESS", started_at=_iso(stat["startTime"]),
                ended_at=_iso(stat["endTime"]))
